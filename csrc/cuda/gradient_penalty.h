// The per-sample gradient penalty on the GPU, torch-free: the launcher of the kernels in cuda/gradient_penalty.cu.
#pragma once

#include <cuda_runtime.h>

#include "common/gradient_penalty.h"

namespace gan_kernels {

// The chunk the CUDA kernels reduce a sample in (GradientPenaltyParams::chunk).
constexpr int64_t kCudaGradientPenaltyChunk = 8192;

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
// The reduction is deterministic: fixed per-block order, chunk sums added in chunk order, no atomics.
cudaError_t launch_gradient_penalty(const GradientPenaltyParams& p, cudaStream_t stream);

}  // namespace gan_kernels
