#include "cpu/gradient_penalty.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/dispatch.h"

namespace gan_kernels {
namespace {

// Independent partial sums within a chunk: enough for several SIMD accumulators, so the adds pipeline
// (fixed order: deterministic).
constexpr int64_t kLanes = 32;

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

// p.partials[sample * chunks + chunk] = the chunk's sum of squares; one parallel task per chunk.
template <typename scalar_t, typename acc_t> void chunk_sum_squares(const GradientPenaltyParams& p) {
  const auto* g = static_cast<const scalar_t*>(p.g);
  auto* partials = static_cast<acc_t*>(p.partials);
  const int64_t chunks = gradient_penalty_chunks(p);
  at::parallel_for(0, p.samples * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = (task % chunks) * p.chunk;
      const int64_t len = std::min(p.chunk, p.per_sample - first);
      partials[task] = sum_squares<scalar_t, acc_t>(g + (task / chunks) * p.per_sample + first, len);
    }
  });
}

// A sample's sum of squares: its chunk sums added in chunk order.
template <typename acc_t> acc_t sample_sum(const GradientPenaltyParams& p, int64_t sample) {
  const auto* partials = static_cast<const acc_t*>(p.partials);
  const int64_t chunks = gradient_penalty_chunks(p);
  acc_t sum = 0;
  for (int64_t c = 0; c < chunks; ++c) sum += partials[sample * chunks + c];
  return sum;
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>> void forward(const GradientPenaltyParams& p) {
  chunk_sum_squares<scalar_t, acc_t>(p);
  auto* out = static_cast<acc_t*>(p.out);
  for (int64_t s = 0; s < p.samples; ++s) out[s] = gradient_penalty_value(sample_sum<acc_t>(p, s), acc_t(p.center));
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>> void backward(const GradientPenaltyParams& p) {
  const bool normed = gradient_penalty_partials(p) > 0;
  if (normed) chunk_sum_squares<scalar_t, acc_t>(p);
  const auto* grad = static_cast<const acc_t*>(p.grad);
  std::vector<acc_t> scale(p.samples);
  for (int64_t s = 0; s < p.samples; ++s) {
    scale[s] = gradient_penalty_scale(normed ? sample_sum<acc_t>(p, s) : acc_t(0), grad[s], acc_t(p.center));
  }
  const auto* g = static_cast<const scalar_t*>(p.g);
  auto* out = static_cast<scalar_t*>(p.out);
  const int64_t chunks = gradient_penalty_chunks(p);
  at::parallel_for(0, p.samples * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = (task / chunks) * p.per_sample + (task % chunks) * p.chunk;
      const int64_t len = std::min(p.chunk, p.per_sample - (task % chunks) * p.chunk);
      const acc_t k = scale[task / chunks];
      for (int64_t i = first; i < first + len; ++i) out[i] = scalar_t(k * acc_t(g[i]));
    }
  });
}

}  // namespace

void gradient_penalty_cpu(const GradientPenaltyParams& p) {
  dispatch_dtype<CpuElements>(p.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    if (p.mode == GradientPenaltyMode::Backward) {
      backward<scalar_t>(p);
    } else {
      forward<scalar_t>(p);
    }
  });
}

}  // namespace gan_kernels
