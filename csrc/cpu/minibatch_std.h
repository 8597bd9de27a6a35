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
  bool channels_last;  // x, the output and grad in NHWC memory order, else NCHW
};

// Forward: writes [x, stddev] ([N, C+F, H, W]) into `out`; `partials` holds one accumulator per
// (group, feature, row of the feature block).
void minibatch_std_cpu(at::Tensor& out, const at::Tensor& x, at::Tensor& partials, const MinibatchStdShape& shape);

// Backward: writes dL/dx into `grad_x` from grad = dL/dout; `coefs` holds one accumulator per
// (group, feature).
void minibatch_std_backward_cpu(at::Tensor& grad_x, const at::Tensor& grad, const at::Tensor& x, at::Tensor& coefs,
                                const MinibatchStdShape& shape);

// Rows of a feature block in memory order (each row a contiguous run): the partials per (group, feature).
inline int64_t minibatch_std_rows(const MinibatchStdShape& s) {
  return s.channels_last ? s.pixels : s.channels / s.features;
}

}  // namespace gan_kernels
