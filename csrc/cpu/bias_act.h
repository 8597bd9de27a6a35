// bias_act on the CPU: the kernel of cpu/bias_act_kernel.h, in a default and an AVX2 build.
#pragma once

#include <cstdint>

// GCC on x86-64 builds cpu/bias_act_avx2.cpp; elsewhere only the default build exists.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GAN_KERNELS_HAVE_AVX2_KERNELS 1
#else
#define GAN_KERNELS_HAVE_AVX2_KERNELS 0
#endif

namespace gan_kernels {

struct BiasActParams;  // common/bias_act.h

// Runs the launch `p` in parallel, with the widest build of the kernel that ATen itself uses on this CPU.
void bias_act_cpu(const BiasActParams& p);

// Writes elements [begin, end) (in memory order) of the launch `p`, one entry point per instruction set.
// Declarations only (no templates or inline functions), so that cpu/bias_act_avx2.cpp can include
// this before choosing its target: whatever that file defines after the target pragma is built for AVX2.
void bias_act_cpu_range_default(const BiasActParams& p, int64_t begin, int64_t end);
#if GAN_KERNELS_HAVE_AVX2_KERNELS
void bias_act_cpu_range_avx2(const BiasActParams& p, int64_t begin, int64_t end);
#endif

}  // namespace gan_kernels
