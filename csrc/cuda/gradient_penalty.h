// Per-sample gradient penalty on the GPU, torch-free: out[i] = (||g_i|| - center)^2 (sum(g_i^2) for
// center == 0) and its gradient.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/dtype.h"

namespace gan_kernels {

// Elements of one sample reduced by one block. A constant, so the summation order (and the result)
// is the same on every GPU.
constexpr int64_t kGradientPenaltyChunk = 8192;

inline int64_t gradient_penalty_chunks(int64_t per_sample) {
  return (per_sample + kGradientPenaltyChunk - 1) / kGradientPenaltyChunk;
}

// Sample i of g is the i-th block of per_sample consecutive elements (see SampleView).
struct GradientPenaltyParams {
  void* out;          // [samples] penalty in the forward, in the accumulator type (float; double for
                      // float64); dL/dg, laid out like g, in the backward
  const void* g;
  const void* grad;   // [samples] dL/dout in the accumulator type; nullptr selects the forward
  void* partials;     // workspace of samples * gradient_penalty_chunks(per_sample) sums of squares, float
                      // (double for float64); unused (may be nullptr) in the backward when center == 0
  int64_t samples;
  int64_t per_sample;  // > 0
  double center;
  DType dtype;
};

// Launches on `stream`, allocates nothing and never synchronises (CUDA-graph capturable). The
// reduction is deterministic: fixed per-block order, chunk sums added in chunk order, no atomics.
cudaError_t launch_gradient_penalty(const GradientPenaltyParams& p, cudaStream_t stream);

}  // namespace gan_kernels
