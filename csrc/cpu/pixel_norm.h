#pragma once

#include <ATen/ATen.h>

#include "ops/common.h"

namespace gan_kernels {

// Writes y = x * rsqrt(mean(x^2) + eps) into `out`, or dL/dx when `grad` (dL/dy) is defined.
// All tensors are dense with the same strides and indexed by `view`.
void pixel_norm_cpu(at::Tensor& out, const at::Tensor& x, const at::Tensor& grad, ChannelView view, double eps);

}  // namespace gan_kernels
