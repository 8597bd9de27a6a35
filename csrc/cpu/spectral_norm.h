#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "ops/common.h"

namespace gan_kernels {

// One weight seen as PyTorch's spectral norm sees it: the matrix with `dim` moved first. For a
// contiguous weight, row r and column o * inner + i live at o * rows * inner + r * inner + i
// (ChannelView with channels = rows), so no permuted copy is needed.
struct SpectralLayer {
  at::Tensor weight;  // contiguous
  at::Tensor u;       // [rows], contiguous, mutated by the power iteration
  at::Tensor v;       // [outer * inner], contiguous, mutated by the power iteration
  ChannelView view;
};

// n_power_iterations steps of u = normalize(W v), v = normalize(W^T u) on every layer, then
// sigmas[l] = u . (W v). normalize(x) = x / max(||x||, eps).
void spectral_power_iteration_cpu(const std::vector<SpectralLayer>& layers, at::Tensor& sigmas,
                                  int64_t n_power_iterations, double eps);

// out[l] = W / sigma, or with grads defined, (G - <G, W/sigma> u v^T) / sigma.
void spectral_normalize_cpu(const std::vector<SpectralLayer>& layers, const std::vector<at::Tensor>& grads,
                            const at::Tensor& sigmas, std::vector<at::Tensor>& out);

}  // namespace gan_kernels
