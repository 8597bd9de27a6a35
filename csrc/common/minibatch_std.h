// What the CPU and CUDA minibatch-stddev kernels share: the launch description, the formulas, the
// modes and the memory layout of a feature block. Torch-free.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"
#include "common/mode.h"

namespace gan_kernels {

// StyleGAN2 adds it to the variance inside the sqrt; not a parameter of the layer.
constexpr double kMinibatchStdEps = 1e-8;

// Per (group, feature) block and position, over the G members: d = x - mean(x), s = sqrt(mean(d^2) + eps).
// The gradients use d - mean(d) for d (mean(d) is the rounding error of mean(x)), as autograd's chain
// through StyleGAN's y - y.mean() does: far more accurate for data with a large mean.
// Forward: y = [x, sum(s) / K] with K = C/F*H*W positions per block.
// Backward (dy given): dx = dy[:, :C] + a d / s, a = sum of dy over the block's stddev channel / (K G).
// Double backward (dy, u = dL/d(dx) given): dL/ddy = [u, sum(u d / s) / (K G)] and
// dL/dx = a ((u - mean(u)) / s - sum(u d) d / (G s^3)).
enum class MinibatchStdMode { Forward, Backward, DoubleBackward, Count };

// x is [N, C, H, W] with N = groups * group_size; sample n is member n / groups of group n % groups,
// and its C channels split into `features` blocks of C / features channels. Every tensor is dense,
// NCHW or (channels_last) NHWC, all in the same memory order. Pointers a mode does not use are nullptr.
struct MinibatchStdParams {
  void* y_out;           // [N, C+F, H, W]: forward output [x, stddev]; double backward dL/dgrad
  void* x_out;           // [N, C, H, W]: backward dL/dx; double backward dL/dx
  const void* x;         // [N, C, H, W]
  const void* grad;      // [N, C+F, H, W]: dL/dy of the forward (backward, double backward)
  const void* upstream;  // [N, C, H, W]: dL/d(backward's dL/dx) (double backward)
  void* workspace;       // the device's minibatch_std_*_workspace_bytes(*this), allocated by the caller
  int64_t groups;
  int64_t group_size;
  int64_t features;
  int64_t channels;
  int64_t pixels;  // H * W
  bool channels_last;
  MinibatchStdMode mode;
  DType dtype;
};

// A feature block of one sample seen as rows x cols with contiguous rows: NCHW gives rows = C/F
// channels of H*W pixels, NHWC gives rows = H*W pixels of C/F channels. "x" tensors are
// [N, C, H, W] (x, dx, u), "y" tensors [N, C+F, H, W] (the forward output, dy, dL/ddy).
struct MinibatchStdLayout {
  int64_t rows;
  int64_t cols;
  int64_t feature_stride;  // between the feature blocks of a sample, in x and y alike
  int64_t x_row_stride;
  int64_t y_row_stride;
  int64_t x_sample_stride;
  int64_t y_sample_stride;
  int64_t stat_offset;  // of channel C, pixel 0 within a sample of y
  int64_t stat_feature_stride;
  int64_t stat_pixel_stride;
};

inline MinibatchStdLayout minibatch_std_layout(const MinibatchStdParams& p) {
  const int64_t c = p.channels / p.features;
  const int64_t x_sample = p.channels * p.pixels;
  const int64_t y_sample = (p.channels + p.features) * p.pixels;
  if (p.channels_last) {
    return {p.pixels, c,        c,          p.channels, p.channels + p.features,
            x_sample, y_sample, p.channels, 1,          p.channels + p.features};
  }
  return {c, p.pixels, c * p.pixels, p.pixels, p.pixels, x_sample, y_sample, p.channels * p.pixels, p.pixels, 1};
}

}  // namespace gan_kernels
