#include "cpu/pixel_norm.h"

namespace gan_kernels {

void pixel_norm_cpu(const PixelNormParams& p) {
  static const auto kernel = GAN_KERNELS_CPU_KERNEL(pixel_norm_cpu_kernel);
  kernel(p);
}

}  // namespace gan_kernels
