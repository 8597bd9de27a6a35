// Minibatch discrimination's pairwise part on the GPU, torch-free (formulas:
// common/minibatch_discrimination.h): o [N, B] from M [N, B, C], its gradient and double backward.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/dtype.h"

namespace gan_kernels {

// Element strides of a [N, B, C] tensor; [N, B] tensors leave `dim` unused.
struct MinibatchDiscriminationStrides {
  int64_t sample;
  int64_t kernel;
  int64_t dim;
};

// Every tensor may have any strides, all of the same dtype. The mode is set by which inputs are
// given: m alone, the forward; grad too, the backward; grad and upstream, the double backward.
struct MinibatchDiscriminationParams {
  void* scalar_out;       // [N, B]: o (forward) or dL/dgrad (double backward)
  void* vector_out;       // [N, B, C]: dL/dM (backward, double backward)
  const void* m;          // [N, B, C]
  const void* grad;       // [N, B]: dL/do
  const void* upstream;   // [N, B, C]: dL/d(dL/dM)
  MinibatchDiscriminationStrides scalar_out_strides;
  MinibatchDiscriminationStrides vector_out_strides;
  MinibatchDiscriminationStrides m_strides;
  MinibatchDiscriminationStrides grad_strides;
  MinibatchDiscriminationStrides upstream_strides;
  int64_t samples;  // N
  int64_t kernels;  // B
  int64_t dims;     // C
  DType dtype;
};

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable).
cudaError_t launch_minibatch_discrimination(const MinibatchDiscriminationParams& p, cudaStream_t stream);

}  // namespace gan_kernels
