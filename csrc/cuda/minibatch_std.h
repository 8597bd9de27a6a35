// StyleGAN2's minibatch standard deviation on the GPU, torch-free: forward [x, stddev] and its gradient.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/dtype.h"

namespace gan_kernels {

// x is [N, C, H, W] with N = groups * group_size; sample n is member n / groups of group n % groups.
// Every tensor is dense, NCHW or (channels_last) NHWC, all in the same memory order. The mode is set
// by which inputs are given: x alone, the forward; grad, the backward; grad and upstream, the
// backward of the backward.
struct MinibatchStdParams {
  void* y_out;           // [N, C+F, H, W]: forward output [x, stddev]; double backward dL/dgrad
  void* x_out;           // [N, C, H, W]: backward dL/dx; double backward dL/dx
  const void* x;         // [N, C, H, W]
  const void* grad;      // [N, C+F, H, W]: dL/dy of the forward
  const void* upstream;  // [N, C, H, W]: dL/d(backward's dL/dx)
  void* workspace;       // minibatch_std_workspace_bytes(*this) bytes, allocated by the caller
  int64_t groups;
  int64_t group_size;
  int64_t features;
  int64_t channels;
  int64_t pixels;  // H * W
  bool channels_last;
  DType dtype;
};

// Scratch the launcher needs: per-tile partial sums (forward, double backward) and per-(group,
// feature) coefficients (backward, double backward).
size_t minibatch_std_workspace_bytes(const MinibatchStdParams& p);

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
cudaError_t launch_minibatch_std(const MinibatchStdParams& p, cudaStream_t stream);

}  // namespace gan_kernels
