// Batched spectral normalisation on the GPU, torch-free: the launcher of the kernels in cuda/spectral_norm.cu.
#pragma once

#include <cuda_runtime.h>

#include "common/spectral_norm.h"

namespace gan_kernels {

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
// PowerIteration: p.counters zeroed (a memset), then one launch per step over all layers, in which each
// layer's W v (by rows), W^T u (by columns), v and on the last step sigma follow one another, each
// layer split by common/spectral_norm_partition.h from its own shape; no step: one launch, W v and
// sigma. Normalize: one launch.
// NormalizeBackward: two (per-layer <G, W> partial sums, then the elementwise formula); layer l runs
// on spectral_normalize_blocks(its numel) of the blocks_per_layer blocks of a grid row of its own.
cudaError_t launch_spectral_norm(const SpectralParams& p, cudaStream_t stream);

}  // namespace gan_kernels
