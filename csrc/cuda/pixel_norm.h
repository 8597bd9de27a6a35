// Pixel norm on the GPU, torch-free: y = x * rsqrt(mean(x^2 over channels) + eps) and its gradient.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/dtype.h"

namespace gan_kernels {

// Tensors are dense and indexed as [outer, channels, inner] (see ChannelView in ops/common.h).
struct PixelNormParams {
  void* out;         // y in the forward, dL/dx in the backward
  const void* x;
  const void* grad;  // dL/dy; nullptr selects the forward
  int64_t outer;
  int64_t channels;
  int64_t inner;
  double eps;
  DType dtype;
};

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
cudaError_t launch_pixel_norm(const PixelNormParams& p, cudaStream_t stream);

}  // namespace gan_kernels
