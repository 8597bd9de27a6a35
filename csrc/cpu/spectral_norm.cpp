#include "cpu/spectral_norm.h"

namespace gan_kernels {

void spectral_norm_cpu(const SpectralParams& p) {
  static const auto kernel = GAN_KERNELS_CPU_KERNEL(spectral_norm_cpu_kernel);
  kernel(p);
}

}  // namespace gan_kernels
