// Minibatch standard deviation on the GPU, torch-free: the launcher of the kernels in cuda/minibatch_std.cu.
#pragma once

#include <cuda_runtime.h>

#include "common/minibatch_std.h"

namespace gan_kernels {

// Scratch the launcher needs: per-tile partial sums (forward, double backward) and per-(group,
// feature) coefficients (backward, double backward).
size_t minibatch_std_cuda_workspace_bytes(const MinibatchStdParams& p);

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
cudaError_t launch_minibatch_std(const MinibatchStdParams& p, cudaStream_t stream);

}  // namespace gan_kernels
