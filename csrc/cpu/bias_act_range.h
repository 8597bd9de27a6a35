// The entry points of the CPU bias_act kernel (cpu/bias_act_kernel.h), one per instruction set.
// Declarations only, so that cpu/bias_act_avx2.cpp can include it before choosing its target:
// whatever that file defines after the target pragma is built for AVX2.
#pragma once

#include <cstdint>

// GCC on x86-64 builds cpu/bias_act_avx2.cpp; elsewhere only the default build exists.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GAN_KERNELS_HAVE_AVX2_KERNELS 1
#else
#define GAN_KERNELS_HAVE_AVX2_KERNELS 0
#endif

namespace gan_kernels {

struct BiasActParams;  // cuda/bias_act_math.h

// Writes elements [begin, end) (in memory order) of the bias_act launch `p`.
void bias_act_cpu_range_default(const BiasActParams& p, int64_t begin, int64_t end);
#if GAN_KERNELS_HAVE_AVX2_KERNELS
void bias_act_cpu_range_avx2(const BiasActParams& p, int64_t begin, int64_t end);
#endif

}  // namespace gan_kernels
