// Minibatch discrimination's pairwise part on the GPU, torch-free: the launcher of the kernels in
// cuda/minibatch_discrimination.cu (formulas: common/minibatch_discrimination.h).
#pragma once

#include <cuda_runtime.h>

#include "common/minibatch_discrimination.h"

namespace gan_kernels {

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
cudaError_t launch_minibatch_discrimination(const MinibatchDiscriminationParams& p, cudaStream_t stream);

}  // namespace gan_kernels
