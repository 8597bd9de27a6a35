#include "cpu/gradient_penalty.h"

namespace gan_kernels {

void gradient_penalty_cpu(const GradientPenaltyParams& p) {
  static const auto kernel = GAN_KERNELS_CPU_KERNEL(gradient_penalty_cpu_kernel);
  kernel(p);
}

}  // namespace gan_kernels
