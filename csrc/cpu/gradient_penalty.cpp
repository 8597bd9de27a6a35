#include "cpu/gradient_penalty.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace gan_kernels {
namespace {

// Each sample is reduced in chunks of this many elements, in parallel, and the chunk sums are added
// in chunk order. The chunking is a constant, so the result does not depend on the thread count.
constexpr int64_t kChunk = 16384;
// Independent partial sums within a chunk: enough for several SIMD accumulators, so the adds pipeline
// (fixed order: deterministic).
constexpr int64_t kLanes = 32;

int64_t chunks_per_sample(SampleView v) { return (v.per_sample + kChunk - 1) / kChunk; }

template <typename scalar_t, typename acc_t> acc_t sum_squares(const scalar_t* x, int64_t n) {
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const acc_t a = acc_t(x[i + l]);
      lanes[l] += a * a;
    }
  }
  for (; i < n; ++i) {
    const acc_t a = acc_t(x[i]);
    lanes[i % kLanes] += a * a;
  }
  acc_t sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

template <typename scalar_t, typename acc_t>
std::vector<acc_t> per_sample_sum_squares(const scalar_t* g, SampleView v) {
  const int64_t chunks = chunks_per_sample(v);
  std::vector<acc_t> partial(v.samples * chunks);
  at::parallel_for(0, v.samples * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = (task % chunks) * kChunk;
      const int64_t len = std::min(kChunk, v.per_sample - first);
      partial[task] = sum_squares<scalar_t, acc_t>(g + (task / chunks) * v.per_sample + first, len);
    }
  });
  std::vector<acc_t> sums(v.samples, acc_t(0));
  for (int64_t s = 0; s < v.samples; ++s) {
    for (int64_t c = 0; c < chunks; ++c) sums[s] += partial[s * chunks + c];
  }
  return sums;
}

// d/dg (||g|| - c)^2 = 2 (1 - c / ||g||) g; the centre-0 case 2 g needs no norm. A sample whose
// sum of squares is NaN or infinite (a diverged sample) gets NaN: g / ||g|| has no value there.
template <typename acc_t> acc_t gradient_scale(acc_t sum_squares, acc_t grad, double center) {
  if (center == 0) return acc_t(2) * grad;
  if (sum_squares == 0) return acc_t(0);
  if (!std::isfinite(sum_squares)) return std::numeric_limits<acc_t>::quiet_NaN();
  return acc_t(2) * grad * (acc_t(1) - acc_t(center) / std::sqrt(sum_squares));
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void forward(acc_t* out, const scalar_t* g, SampleView v, double center) {
  const std::vector<acc_t> sums = per_sample_sum_squares<scalar_t, acc_t>(g, v);
  for (int64_t s = 0; s < v.samples; ++s) {
    const acc_t distance = std::sqrt(sums[s]) - acc_t(center);
    out[s] = center == 0 ? sums[s] : distance * distance;
  }
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void backward(scalar_t* out, const scalar_t* g, const acc_t* grad, SampleView v, double center) {
  std::vector<acc_t> scale(v.samples);
  if (center == 0) {
    for (int64_t s = 0; s < v.samples; ++s) scale[s] = gradient_scale(acc_t(0), grad[s], center);
  } else {
    const std::vector<acc_t> sums = per_sample_sum_squares<scalar_t, acc_t>(g, v);
    for (int64_t s = 0; s < v.samples; ++s) scale[s] = gradient_scale(sums[s], grad[s], center);
  }
  const int64_t chunks = chunks_per_sample(v);
  at::parallel_for(0, v.samples * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = (task / chunks) * v.per_sample + (task % chunks) * kChunk;
      const int64_t len = std::min(kChunk, v.per_sample - (task % chunks) * kChunk);
      const acc_t k = scale[task / chunks];
      for (int64_t i = first; i < first + len; ++i) out[i] = scalar_t(k * acc_t(g[i]));
    }
  });
}

}  // namespace

void gradient_penalty_cpu(at::Tensor& out, const at::Tensor& g, const at::Tensor& grad, SampleView view,
                          double center) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    if (grad.defined()) {
      backward<scalar_t>(out.mutable_data_ptr<scalar_t>(), gp, grad.const_data_ptr<acc_t>(), view, center);
    } else {
      forward<scalar_t>(out.mutable_data_ptr<acc_t>(), gp, view, center);
    }
  });
}

}  // namespace gan_kernels
