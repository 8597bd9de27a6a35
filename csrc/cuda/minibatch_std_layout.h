// What the CPU and CUDA minibatch-stddev kernels share: the formulas, the modes and the memory
// layout of a feature block. Plain C++, so the CPU kernel and nvcc both include it.
#pragma once

#include <cstdint>

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
enum class MinibatchStdMode { Forward, Backward, DoubleBackward };

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

inline MinibatchStdLayout minibatch_std_layout(int64_t channels, int64_t features, int64_t pixels,
                                               bool channels_last) {
  const int64_t c = channels / features;
  const int64_t x_sample = channels * pixels;
  const int64_t y_sample = (channels + features) * pixels;
  if (channels_last) {
    return {pixels, c, c, channels, channels + features, x_sample, y_sample, channels, 1, channels + features};
  }
  return {c, pixels, c * pixels, pixels, pixels, x_sample, y_sample, channels * pixels, pixels, 1};
}

}  // namespace gan_kernels
