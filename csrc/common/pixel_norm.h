// Pixel norm's launch description and formula, shared by the CPU and CUDA kernels:
// y = x * rsqrt(mean(x^2 over channels) + eps) and its gradient. Torch-free.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/dtype.h"
#include "common/element_math.h"
#include "common/host_device.h"

namespace gan_kernels {

enum class PixelNormMode { Forward, Backward };

// Tensors are dense and indexed as [outer, channels, inner]: element (o, c, i) at
// o * channels * inner + c * inner + i.
struct PixelNormParams {
  void* out;  // y in the forward, dL/dx in the backward
  const void* x;
  const void* grad;  // dL/dy in the backward, else nullptr
  int64_t outer;
  int64_t channels;
  int64_t inner;
  double eps;
  PixelNormMode mode;
  DType dtype;
};

// With r = rsqrt(mean(x^2) + eps): forward y = x r; backward dx = r g - k x, k = r^3 mean(g x).
template <typename A> struct PixelNormScales {
  A r;
  A k;
};

template <typename A> GAN_KERNELS_HD PixelNormScales<A> pixel_norm_scales(A sum_xx, A sum_gx, int64_t channels, A eps) {
  const A r = A(1) / ElementMath<A>::sqrt(sum_xx / A(channels) + eps);
  return {r, r * r * r * sum_gx / A(channels)};
}

template <typename A, PixelNormMode kMode> GAN_KERNELS_HD A pixel_norm_apply(A x, A g, PixelNormScales<A> s) {
  return kMode == PixelNormMode::Backward ? s.r * g - s.k * x : x * s.r;
}

}  // namespace gan_kernels
