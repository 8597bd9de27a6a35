// StyleGAN2's minibatch standard deviation on the GPU, torch-free: forward [x, stddev] and its gradient.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/dtype.h"

namespace gan_kernels {

// x is [N, C, H, W] with N = groups * group_size; sample n is member n / groups of group n % groups.
// x, out and grad are dense, NCHW or (channels_last) NHWC, all in the same memory order.
struct MinibatchStdParams {
  void* out;         // forward: [N, C+F, H, W] = [x, stddev]; backward: dL/dx, [N, C, H, W]
  const void* x;
  const void* grad;  // dL/dout, [N, C+F, H, W]; nullptr selects the forward
  void* workspace;   // minibatch_std_workspace_bytes(*this) bytes, allocated by the caller
  int64_t groups;
  int64_t group_size;
  int64_t features;
  int64_t channels;
  int64_t pixels;  // H * W
  bool channels_last;
  DType dtype;
};

// Scratch the launcher needs: per-tile partial sums (forward) or per-(group, feature) coefficients (backward).
size_t minibatch_std_workspace_bytes(const MinibatchStdParams& p);

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
cudaError_t launch_minibatch_std(const MinibatchStdParams& p, cudaStream_t stream);

}  // namespace gan_kernels
