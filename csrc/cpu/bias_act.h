#pragma once

#include <ATen/ATen.h>

#include "cuda/bias_act_math.h"
#include "ops/common.h"

namespace gan_kernels {

// Writes one BiasActMode of bias_act into `out` (see cuda/bias_act_math.h). `ref` is x, or y for
// GradFromY; `grad` is dL/dy (undefined in Forward); `upstream` is used by Grad2 only; `bias`
// (optional) is a contiguous [view.channels] tensor. ref, grad, upstream and out are dense with the
// same strides and indexed by `view`; the channel of an element is its index in view.channels.
void bias_act_cpu(BiasActMode mode, Activation act, at::Tensor& out, const at::Tensor& ref, const at::Tensor& grad,
                  const at::Tensor& upstream, const at::Tensor& bias, ChannelView view,
                  const BiasActScalars<double>& scalars);

}  // namespace gan_kernels
