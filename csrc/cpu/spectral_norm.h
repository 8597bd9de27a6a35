#pragma once

#include "common/spectral_norm.h"

namespace gan_kernels {

// Runs the launch `p` on the CPU: a launch of several layers as one parallel task per layer, a launch
// of one layer with a large layer's passes split over threads. No sum is split, so a layer's bits do
// not depend on the thread count nor on which other layers share the call. PowerIteration:
// n_power_iterations steps of u = normalize(W v), v = normalize(W^T u), then sigma = u . (W v), with
// normalize(x) = x / max(||x||, eps). Normalize: W / sigma. NormalizeBackward:
// (G - <G, W/sigma> u v^T) / sigma.
void spectral_norm_cpu(const SpectralParams& p);

}  // namespace gan_kernels
