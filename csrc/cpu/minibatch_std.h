#pragma once

#include <ATen/ATen.h>

namespace gan_kernels {

// The grouping of StyleGAN2's minibatch stddev over x of shape [N, C, H, W]: sample n is member
// n / groups of group n % groups (G = group_size members each), and its C channels split into
// `features` blocks of C / features channels.
struct MinibatchStdShape {
  int64_t groups;      // M = N / G
  int64_t group_size;  // G
  int64_t features;    // F
  int64_t channels;    // C of x; the output of the forward has C + F
  int64_t pixels;      // H * W
  bool channels_last;  // every tensor in NHWC memory order, else NCHW
};

// Forward: writes [x, stddev] ([N, C+F, H, W]) into `out`. `partials`: minibatch_std_partials(shape)
// accumulators (scratch).
void minibatch_std_cpu(at::Tensor& out, const at::Tensor& x, at::Tensor& partials, const MinibatchStdShape& shape);

// Backward: writes dL/dx into `grad_x` from grad = dL/dout. `coefs`: groups * features accumulators.
void minibatch_std_backward_cpu(at::Tensor& grad_x, const at::Tensor& grad, const at::Tensor& x, at::Tensor& coefs,
                                const MinibatchStdShape& shape);

// Backward of the backward: for dx = backward(grad, x) and upstream = dL/d(dx), writes dL/dgrad into
// `grad_grad` and dL/dx into `grad_x`. Scratch: `partials` and `coefs` as above.
void minibatch_std_double_backward_cpu(at::Tensor& grad_grad, at::Tensor& grad_x, const at::Tensor& upstream,
                                       const at::Tensor& grad, const at::Tensor& x, at::Tensor& partials,
                                       at::Tensor& coefs, const MinibatchStdShape& shape);

// Accumulators for one partial sum per row of each (group, feature) block, rows being contiguous runs.
inline int64_t minibatch_std_partials(const MinibatchStdShape& s) {
  return s.groups * s.features * (s.channels_last ? s.pixels : s.channels / s.features);
}

}  // namespace gan_kernels
