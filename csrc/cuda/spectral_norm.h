// Batched spectral normalisation on the GPU, torch-free: the power iteration of many weights in one
// launch, and W / sigma with its backward for many weights in one (forward) or two (backward)
// launches. Per-layer pointers and shapes travel by value in a fixed-size table inside the params;
// the torch glue splits longer lists into chunks of kMaxSpectralLayers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/dtype.h"

namespace gan_kernels {

// 32 layers of 72 bytes keep the params well under the 4 KiB kernel-argument limit of older toolkits.
constexpr int kMaxSpectralLayers = 32;

// A weight seen as PyTorch's spectral-norm matrix: contiguous, row r and column o * inner + i at
// o * rows * inner + r * inner + i.
struct SpectralLayerView {
  const void* weight;
  void* u;           // [rows]; written by the power iteration, read by the normalisation
  void* v;           // [outer * inner]; likewise
  const void* grad;  // dL/d(W / sigma) in the backward, else nullptr
  void* out;         // W / sigma, or dL/dW in the backward
  int64_t outer;
  int64_t rows;
  int64_t inner;
  int64_t workspace_offset;  // power iteration: start of this layer's rows + cols accumulators
};

struct SpectralParams {
  SpectralLayerView layers[kMaxSpectralLayers];
  int count;
  void* sigmas;     // [count] in the weights' dtype: written by the power iteration, read by the normalisation
  void* workspace;  // accumulator-typed scratch (float, or double for float64), owned by the caller
  int64_t n_power_iterations;
  double eps;
  int blocks_per_layer;  // normalisation grid width; the backward's workspace holds count * this partial sums
  bool backward;
  DType dtype;
};

// One block per layer runs the whole iteration; workspace: sum over layers of (rows + cols) accumulators.
cudaError_t launch_spectral_power_iteration(const SpectralParams& p, cudaStream_t stream);
// Forward: one launch. Backward: two (per-layer <G, W> partial sums, then the elementwise formula);
// workspace: count * blocks_per_layer accumulators.
cudaError_t launch_spectral_normalize(const SpectralParams& p, cudaStream_t stream);

}  // namespace gan_kernels
