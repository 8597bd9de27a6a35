// cpu/bias_act_kernel.h built for AVX2 + FMA + F16C, as ATen builds its own per-instruction-set
// kernels; cpu/bias_act.cpp calls it only when ATen itself runs at AVX2 or above. Only the
// torch-free entry header comes before the target pragma and the capability macros, so every vector
// type and torch inline function in this file is the AVX2 build.
#include "cpu/bias_act.h"

#if GAN_KERNELS_HAVE_AVX2_KERNELS
#pragma GCC target("avx2,fma,f16c")
// What -mavx2 -mfma -mf16c would define: the pragma enables the instructions but not the macros,
// and sleef.h declares its 256-bit functions only under them.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2

#include "cpu/bias_act_kernel.h"

namespace gan_kernels {

void bias_act_cpu_range_avx2(const BiasActParams& p, int64_t begin, int64_t end) {
  range_any_dtype<true>(p, begin, end);
}

}  // namespace gan_kernels
#endif
