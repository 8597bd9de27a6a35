// Pixel norm on the GPU, torch-free: the launcher of the kernels in cuda/pixel_norm.cu.
#pragma once

#include <cuda_runtime.h>

#include "common/pixel_norm.h"

namespace gan_kernels {

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
cudaError_t launch_pixel_norm(const PixelNormParams& p, cudaStream_t stream);

}  // namespace gan_kernels
