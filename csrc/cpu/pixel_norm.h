// Pixel norm on the CPU: the kernel of cpu/pixel_norm_kernel.h, one build per CPU capability (cpu/capability.h).
#pragma once

#include "common/pixel_norm.h"
#include "cpu/capability.h"

namespace gan_kernels {

// Runs the launch `p` on the CPU, in parallel, with the build for the capability ATen runs at.
void pixel_norm_cpu(const PixelNormParams& p);

GAN_KERNELS_DECLARE_CPU_KERNEL(void, pixel_norm_cpu_kernel, (const PixelNormParams& p))

}  // namespace gan_kernels
