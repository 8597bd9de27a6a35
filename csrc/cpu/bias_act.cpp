#include "cpu/bias_act.h"

#include <ATen/Parallel.h>

#include "common/bias_act.h"
#include "cpu/dispatch.h"

namespace gan_kernels {

void bias_act_cpu(const BiasActParams& params) {
  static const auto range_kernel = GAN_KERNELS_CPU_KERNEL(bias_act_cpu_range);
  at::parallel_for(0, params.numel, kElementsPerTask,
                   [&](int64_t begin, int64_t end) { range_kernel(params, begin, end); });
}

}  // namespace gan_kernels
