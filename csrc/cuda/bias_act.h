// bias_act on the GPU, torch-free: y = clamp(act(x * scale + b) * gain) and its gradients.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/bias_act_math.h"
#include "cuda/dtype.h"

namespace gan_kernels {

// All element tensors are dense with the same strides; element i (in memory order) belongs to
// channel (i / inner) % channels (see ChannelView in ops/common.h).
struct BiasActParams {
  void* out;         // y, dL/dv or the Grad2 term, by mode
  const void* ref;   // x; y in GradFromY
  const void* g1;    // dL/dy; upstream in Grad2; nullptr in Forward
  const void* g2;    // dL/dy in Grad2, else nullptr
  const void* bias;  // [channels], or nullptr
  int64_t numel;
  int64_t channels;
  int64_t inner;
  BiasActScalars<double> scalars;  // clamp < 0: none
  Activation act;
  BiasActMode mode;
  DType dtype;
};

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
cudaError_t launch_bias_act(const BiasActParams& p, cudaStream_t stream);

}  // namespace gan_kernels
