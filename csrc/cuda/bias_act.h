// bias_act on the GPU, torch-free: the launcher of the kernels in cuda/bias_act.cu.
#pragma once

#include <cuda_runtime.h>

#include "common/bias_act.h"

namespace gan_kernels {

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
cudaError_t launch_bias_act(const BiasActParams& p, cudaStream_t stream);

}  // namespace gan_kernels
