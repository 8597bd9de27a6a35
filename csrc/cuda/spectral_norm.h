// Batched spectral normalisation on the GPU, torch-free: the launcher of the kernels in cuda/spectral_norm.cu.
#pragma once

#include <cuda_runtime.h>

#include "common/spectral_norm.h"

namespace gan_kernels {

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
// PowerIteration: per step three launches over all layers (W v by rows, W^T u by columns, then v and
// on the last step sigma, a block per layer), each layer split by common/spectral_norm_partition.h
// from its own shape; no step: W v and sigma, two. Normalize: one launch.
// NormalizeBackward: two (per-layer <G, W> partial sums, then the elementwise formula); layer l runs
// on spectral_normalize_blocks(its numel) of the blocks_per_layer blocks of a grid row of its own.
cudaError_t launch_spectral_norm(const SpectralParams& p, cudaStream_t stream);

}  // namespace gan_kernels
