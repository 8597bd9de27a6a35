// Batched spectral normalisation's launch description, shared by the CPU and CUDA kernels: the power
// iteration of many weights, and W / sigma with its backward for many weights, per call. Per-layer
// pointers and shapes travel by value in a fixed-size table; the torch glue splits longer lists
// into chunks of kMaxSpectralLayers. Torch-free.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/host_device.h"

namespace gan_kernels {

// 32 layers of 72 bytes keep the params well under the 4 KiB kernel-argument limit of older toolkits,
// with room for the CUDA power iteration's per-layer block ranges (2.7 KB in all, cuda/spectral_norm.cu).
constexpr int kMaxSpectralLayers = 32;

// Blocks the CUDA normalisation gives a layer of `numel` elements: enough to fill the GPU for a
// large weight, few enough that the backward's per-block partial sums stay a short fixed-order loop.
// A function of the layer's own size only, so a layer's summation order (and its bits) do not depend
// on which other layers share its launch.
constexpr int kSpectralNormalizeThreads = 512;  // a CUDA normalisation block
constexpr int64_t kSpectralElementsPerBlock = kSpectralNormalizeThreads * 8;
constexpr int64_t kSpectralMaxBlocksPerLayer = 256;
GAN_KERNELS_HD int spectral_normalize_blocks(int64_t numel) {
  const int64_t blocks = ceil_div(numel, kSpectralElementsPerBlock);
  return static_cast<int>(blocks < 1 ? 1 : blocks > kSpectralMaxBlocksPerLayer ? kSpectralMaxBlocksPerLayer : blocks);
}

// Counters the CUDA power iteration's launches order their blocks by (cuda/spectral_norm.cu): per
// step, one for the tickets drawn and two per layer, its W v and its W^T u blocks done.
GAN_KERNELS_HD int64_t spectral_iteration_counters(int count, int64_t n_power_iterations) {
  return (1 + 2 * int64_t(count)) * (n_power_iterations > 0 ? n_power_iterations : 1);
}

enum class SpectralMode { PowerIteration, Normalize, NormalizeBackward };

// A weight seen as PyTorch's spectral-norm matrix: contiguous, row r and column o * inner + i at
// o * rows * inner + r * inner + i.
struct SpectralLayerView {
  const void* weight;
  void* u;           // [rows]; written by the power iteration, read by the normalisation
  void* v;           // [outer * inner]; likewise
  const void* grad;  // dL/d(W / sigma) in NormalizeBackward, else nullptr
  void* out;         // W / sigma, or dL/dW in NormalizeBackward; nullptr in PowerIteration
  int64_t outer;
  int64_t rows;
  int64_t inner;
  int64_t workspace_offset;  // PowerIteration: start of this layer's rows + cols accumulators
};

struct SpectralParams {
  SpectralLayerView layers[kMaxSpectralLayers];
  int count;
  void* sigmas;        // [count] in the weights' dtype: written by the power iteration, read by the normalisation
  unsigned* counters;  // CUDA PowerIteration: spectral_iteration_counters words, owned by the caller,
                       // zeroed by the launcher; else nullptr
  void* workspace;     // accumulator-typed scratch (float; double for float64), owned by the caller:
                       // PowerIteration, sum over the layers of rows + cols; NormalizeBackward on CUDA,
                       // count * blocks_per_layer partial sums
  int64_t n_power_iterations;
  double eps;
  int blocks_per_layer;  // CUDA normalisation: max of spectral_normalize_blocks over the layers
  SpectralMode mode;
  DType dtype;
};

}  // namespace gan_kernels
