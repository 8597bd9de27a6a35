#pragma once

#include <ATen/ATen.h>

namespace gan_kernels {

// Minibatch discrimination on M [N, B, C] (formulas: common/minibatch_discrimination.h). Every tensor
// may have any strides; all have M's dtype.
// o [N, B] = sum over the other samples of exp(-L1 distance).
void minibatch_discrimination_forward_cpu(at::Tensor& o, const at::Tensor& m);
// grad_m [N, B, C] = dL/dM from grad = dL/do [N, B].
void minibatch_discrimination_backward_cpu(at::Tensor& grad_m, const at::Tensor& grad, const at::Tensor& m);
// The derivatives of <upstream, dL/dM> by grad (grad_grad [N, B]) and by M (grad_m [N, B, C]).
void minibatch_discrimination_double_backward_cpu(at::Tensor& grad_grad, at::Tensor& grad_m,
                                                  const at::Tensor& upstream, const at::Tensor& grad,
                                                  const at::Tensor& m);

}  // namespace gan_kernels
