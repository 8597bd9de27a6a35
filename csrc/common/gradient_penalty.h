// The per-sample gradient penalty's launch description and formulas, shared by the CPU and CUDA
// kernels: out[i] = (||g_i|| - center)^2 (exactly sum(g_i^2) for center == 0) and its gradient.
// Torch-free.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/dtype.h"
#include "common/host_device.h"

namespace gan_kernels {

enum class GradientPenaltyMode { Forward, Backward };

// Sample i of g is the i-th block of per_sample consecutive elements. The forward reduces each
// sample in chunks of `chunk` elements whose sums are added in chunk order: the chunking is the
// device's constant, so the result depends neither on the thread count nor on the GPU. The forward
// also returns each sample's sum of squares, so the backward reads g once (one pass, no reduction).
struct GradientPenaltyParams {
  void* out;  // Forward: [samples] penalties in the accumulator type (float; double for
              // float64). Backward: dL/dg, laid out like g
  const void* g;
  const void* grad;   // Backward: [samples] dL/dout in the accumulator type; else nullptr
  void* sum_squares;  // [samples] sum(g_i^2) in the accumulator type: written by the forward, read
                      // by the backward
  void* partials;     // Forward: gradient_penalty_partials(*this) chunk sums in the accumulator
                      // type; nullptr in the backward
  int64_t samples;
  int64_t per_sample;  // > 0
  int64_t chunk;
  double center;
  GradientPenaltyMode mode;
  DType dtype;
};

GAN_KERNELS_HD int64_t gradient_penalty_chunks(const GradientPenaltyParams& p) {
  return ceil_div(p.per_sample, p.chunk);
}

// The scratch a launch needs: one sum of squares per (sample, chunk) in the forward.
GAN_KERNELS_HD int64_t gradient_penalty_partials(const GradientPenaltyParams& p) {
  return p.mode == GradientPenaltyMode::Forward ? p.samples * gradient_penalty_chunks(p) : 0;
}

template <typename A> GAN_KERNELS_HD A gradient_penalty_value(A sum_squares, A center) {
  using std::sqrt;
  const A distance = sqrt(sum_squares) - center;
  return center == A(0) ? sum_squares : distance * distance;
}

// d/dg (||g|| - c)^2 = 2 (1 - c / ||g||) g; the centre-0 case 2 g needs no norm. Undefined at
// ||g|| = 0 when c != 0: 0 there, as torch.linalg.vector_norm's backward does. A sample whose sum
// of squares is NaN or infinite (a diverged sample) gets NaN: g / ||g|| has no value there.
template <typename A> GAN_KERNELS_HD A gradient_penalty_scale(A sum_squares, A grad, A center) {
  using std::isfinite;
  using std::sqrt;
  if (center == A(0)) return A(2) * grad;
  if (sum_squares == A(0)) return A(0);
  if (!isfinite(sum_squares)) return A(NAN);
  return A(2) * grad * (A(1) - center / sqrt(sum_squares));
}

}  // namespace gan_kernels
