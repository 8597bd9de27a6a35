#include "cpu/minibatch_std.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace gan_kernels {
namespace {

// StyleGAN2 adds it to the variance inside the sqrt; not a parameter of the layer.
constexpr double kEps = 1e-8;
// Enough elements per parallel task to amortise the thread hand-off.
constexpr int64_t kElementsPerTask = 32768;
// Positions whose group statistics are computed together: wide enough to vectorise, small enough
// that the G rows of a chunk stay in L1 between the mean, the variance and the write.
constexpr int64_t kChunk = 64;

// A feature block of one sample seen as rows x cols with contiguous rows: NCHW gives rows = C/F
// channels of H*W pixels, NHWC gives rows = H*W pixels of C/F channels. `y` is the [N, C+F, H, W]
// tensor: the output of the forward, the incoming gradient of the backward.
struct Layout {
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

Layout make_layout(const MinibatchStdShape& s) {
  const int64_t c = s.channels / s.features;
  const int64_t x_sample = s.channels * s.pixels;
  const int64_t y_sample = (s.channels + s.features) * s.pixels;
  if (s.channels_last) {
    return {s.pixels, c, c, s.channels, s.channels + s.features, x_sample, y_sample, s.channels, 1,
            s.channels + s.features};
  }
  return {c, s.pixels, c * s.pixels, s.pixels, s.pixels, x_sample, y_sample, s.channels * s.pixels, s.pixels, 1};
}

// One task per (group, feature, row): the group mean and biased variance of every position of the
// row, over the G members. Forward: copies the rows of x into y and stores sum(sqrt(var + eps)) of
// the row in per_task[task]. Backward: dx = dy + coef (x - mean) / sqrt(var + eps), with
// coef = per_task[group, feature] = sum(dy of the stddev channel) / (K G), K = C/F * H * W.
template <typename scalar_t, bool kBackward>
void group_rows(scalar_t* out, const scalar_t* x, const scalar_t* grad, at::opmath_type<scalar_t>* per_task,
                const MinibatchStdShape& s, const Layout& l) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t G = s.group_size;
  const int64_t M = s.groups;
  const int64_t tasks = M * s.features * l.rows;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (G * l.cols));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    acc_t mean[kChunk];
    acc_t scale[kChunk];  // variance, then the backward's coef / std
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task % l.rows;
      const int64_t group_feature = task / l.rows;
      const int64_t f = group_feature % s.features;
      const int64_t m = group_feature / s.features;
      const int64_t x_base = f * l.feature_stride + row * l.x_row_stride;
      const int64_t y_base = f * l.feature_stride + row * l.y_row_stride;
      const acc_t coef = kBackward ? per_task[group_feature] : acc_t(0);
      acc_t std_sum = 0;
      for (int64_t col0 = 0; col0 < l.cols; col0 += kChunk) {
        const int64_t width = std::min(kChunk, l.cols - col0);
        std::fill(mean, mean + width, acc_t(0));
        for (int64_t g = 0; g < G; ++g) {
          const int64_t n = g * M + m;
          const scalar_t* xr = x + n * l.x_sample_stride + x_base + col0;
          if (!kBackward) std::copy(xr, xr + width, out + n * l.y_sample_stride + y_base + col0);
          for (int64_t j = 0; j < width; ++j) mean[j] += acc_t(xr[j]);
        }
        for (int64_t j = 0; j < width; ++j) mean[j] /= acc_t(G);
        std::fill(scale, scale + width, acc_t(0));
        for (int64_t g = 0; g < G; ++g) {
          const scalar_t* xr = x + (g * M + m) * l.x_sample_stride + x_base + col0;
          for (int64_t j = 0; j < width; ++j) {
            const acc_t d = acc_t(xr[j]) - mean[j];
            scale[j] += d * d;
          }
        }
        for (int64_t j = 0; j < width; ++j) {
          const acc_t std = std::sqrt(scale[j] / acc_t(G) + acc_t(kEps));
          if (kBackward) {
            scale[j] = coef / std;
          } else {
            std_sum += std;
          }
        }
        if (kBackward) {
          for (int64_t g = 0; g < G; ++g) {
            const int64_t n = g * M + m;
            const scalar_t* xr = x + n * l.x_sample_stride + x_base + col0;
            const scalar_t* gr = grad + n * l.y_sample_stride + y_base + col0;
            scalar_t* outr = out + n * l.x_sample_stride + x_base + col0;
            for (int64_t j = 0; j < width; ++j) {
              outr[j] = scalar_t(acc_t(gr[j]) + scale[j] * (acc_t(xr[j]) - mean[j]));
            }
          }
        }
      }
      if (!kBackward) per_task[task] = std_sum;
    }
  });
}

template <typename scalar_t>
void forward(scalar_t* out, const scalar_t* x, at::opmath_type<scalar_t>* partials, const MinibatchStdShape& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout l = make_layout(s);
  group_rows<scalar_t, false>(out, x, nullptr, partials, s, l);
  const acc_t block_size = acc_t(l.rows * l.cols);
  for (int64_t group_feature = 0; group_feature < s.groups * s.features; ++group_feature) {
    // Summed in row order whatever the thread count: the result is deterministic.
    acc_t total = 0;
    for (int64_t row = 0; row < l.rows; ++row) total += partials[group_feature * l.rows + row];
    const scalar_t stat = scalar_t(total / block_size);
    const int64_t f = group_feature % s.features;
    const int64_t m = group_feature / s.features;
    for (int64_t g = 0; g < s.group_size; ++g) {
      scalar_t* y = out + (g * s.groups + m) * l.y_sample_stride + l.stat_offset + f * l.stat_feature_stride;
      for (int64_t p = 0; p < s.pixels; ++p) y[p * l.stat_pixel_stride] = stat;
    }
  }
}

template <typename scalar_t>
void backward(scalar_t* grad_x, const scalar_t* grad, const scalar_t* x, at::opmath_type<scalar_t>* coefs,
              const MinibatchStdShape& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout l = make_layout(s);
  const acc_t scale = acc_t(1) / (acc_t(l.rows * l.cols) * acc_t(s.group_size));
  for (int64_t group_feature = 0; group_feature < s.groups * s.features; ++group_feature) {
    const int64_t f = group_feature % s.features;
    const int64_t m = group_feature / s.features;
    acc_t total = 0;
    for (int64_t g = 0; g < s.group_size; ++g) {
      const scalar_t* gy = grad + (g * s.groups + m) * l.y_sample_stride + l.stat_offset + f * l.stat_feature_stride;
      for (int64_t p = 0; p < s.pixels; ++p) total += acc_t(gy[p * l.stat_pixel_stride]);
    }
    coefs[group_feature] = total * scale;
  }
  group_rows<scalar_t, true>(grad_x, x, grad, coefs, s, l);
}

}  // namespace

void minibatch_std_cpu(at::Tensor& out, const at::Tensor& x, at::Tensor& partials, const MinibatchStdShape& shape) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_std_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward<scalar_t>(out.mutable_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                      partials.mutable_data_ptr<acc_t>(), shape);
  });
}

void minibatch_std_backward_cpu(at::Tensor& grad_x, const at::Tensor& grad, const at::Tensor& x, at::Tensor& coefs,
                                const MinibatchStdShape& shape) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "minibatch_std_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward<scalar_t>(grad_x.mutable_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                       x.const_data_ptr<scalar_t>(), coefs.mutable_data_ptr<acc_t>(), shape);
  });
}

}  // namespace gan_kernels
