#include "cpu/bias_act.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <string>

// The default build runs the scalar formulas, which GCC turns into vector loops (bar the
// transcendental functions) only when it may assume that floating-point operations do not trap:
// nothing here relies on FP traps. Placed after the torch headers so only the kernel is affected.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "cpu/bias_act_kernel.h"

namespace gan_kernels {
namespace {

using RangeKernel = void (*)(const BiasActParams&, int64_t, int64_t);

// ATen's own choice of instruction set (which ATEN_CPU_CAPABILITY can lower), read once.
RangeKernel choose_range_kernel() {
#if GAN_KERNELS_HAVE_AVX2_KERNELS
  const std::string capability = at::get_cpu_capability();
  if (capability.rfind("AVX2", 0) == 0 || capability.rfind("AVX512", 0) == 0) return &bias_act_cpu_range_avx2;
#endif
  return &bias_act_cpu_range_default;
}

}  // namespace

void bias_act_cpu_range_default(const BiasActParams& p, int64_t begin, int64_t end) {
  range_any_dtype<false>(p, begin, end);
}

void bias_act_cpu(const BiasActParams& params) {
  static const RangeKernel range_kernel = choose_range_kernel();
  at::parallel_for(0, params.numel, kElementsPerTask,
                   [&](int64_t begin, int64_t end) { range_kernel(params, begin, end); });
}

}  // namespace gan_kernels
