// Batched spectral normalisation on the CPU: the kernel of cpu/spectral_norm_kernel.h, one build per
// CPU capability (cpu/capability.h).
#pragma once

#include "common/spectral_norm.h"
#include "cpu/capability.h"

namespace gan_kernels {

// Runs the launch `p` on the CPU, in parallel, with the build for the capability ATen runs at.
// PowerIteration: n_power_iterations steps of u = normalize(W v), v = normalize(W^T u), then
// sigma = u . (W v), with normalize(x) = x / max(||x||, eps). Normalize: W / sigma.
// NormalizeBackward: (G - <G, W/sigma> u v^T) / sigma. A layer's bits do not depend on the build,
// the thread count, nor on which other layers share the launch.
void spectral_norm_cpu(const SpectralParams& p);

GAN_KERNELS_DECLARE_CPU_KERNEL(void, spectral_norm_cpu_kernel, (const SpectralParams& p))

}  // namespace gan_kernels
