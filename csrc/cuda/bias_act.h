// bias_act on the GPU, torch-free: y = clamp(act(x * scale + b) * gain) and its gradients.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/bias_act_math.h"

namespace gan_kernels {

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
cudaError_t launch_bias_act(const BiasActParams& p, cudaStream_t stream);

}  // namespace gan_kernels
