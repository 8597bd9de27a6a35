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

// Blocks the normalisation gives a layer of `numel` elements: enough to fill the GPU for a large
// weight, few enough that the backward's per-block partial sums stay a short fixed-order loop.
// A function of the layer's own size only, so a layer's summation order (and its bits) do not depend
// on which other layers share its launch.
constexpr int64_t kSpectralElementsPerBlock = 512 * 8;
constexpr int64_t kSpectralMaxBlocksPerLayer = 256;
#if defined(__CUDACC__)
__host__ __device__
#endif
inline int spectral_normalize_blocks(int64_t numel) {
  const int64_t blocks = (numel + kSpectralElementsPerBlock - 1) / kSpectralElementsPerBlock;
  return static_cast<int>(blocks < 1 ? 1 : blocks > kSpectralMaxBlocksPerLayer ? kSpectralMaxBlocksPerLayer : blocks);
}

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
  int blocks_per_layer;  // max of spectral_normalize_blocks over the layers: the grid width, and the stride
                         // of the backward's workspace of count * blocks_per_layer partial sums
  bool backward;
  DType dtype;
};

// One block per layer runs the whole iteration; workspace: sum over layers of (rows + cols) accumulators.
cudaError_t launch_spectral_power_iteration(const SpectralParams& p, cudaStream_t stream);
// Forward: one launch. Backward: two (per-layer <G, W> partial sums, then the elementwise formula);
// workspace: count * blocks_per_layer accumulators. Layer l runs on spectral_normalize_blocks(its
// numel) of the blocks_per_layer blocks of its grid row; the rest return at once.
cudaError_t launch_spectral_normalize(const SpectralParams& p, cudaStream_t stream);

}  // namespace gan_kernels
