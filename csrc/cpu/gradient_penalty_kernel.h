// The CPU kernel of the per-sample gradient penalty in ATen's Vectorized, built once per CPU
// capability (cpu/capability_build.h). Each chunk's sum of squares runs in cpu/vec_step.h's fixed
// lane order and the chunks add in order, so all builds and thread counts give the same bits.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/gradient_penalty.h"
#include "cpu/dispatch.h"
#include "cpu/gradient_penalty.h"
#include "cpu/vec_step.h"

namespace gan_kernels {
namespace {

// out[i] = k * g[i] over [begin, end), converted a vector at a time.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void scale_range(scalar_t* out, const scalar_t* g, acc_t k, int64_t begin, int64_t end) {
  using S = Step<scalar_t>;
  const typename S::AccVec factor(k);
  for (int64_t i = begin; i < end; i += S::kSize) {
    const int64_t count = std::min(S::kSize, end - i);
    typename S::Parts parts = S::load(g + i, count);
    for (auto& part : parts) part = part * factor;
    S::store(out + i, parts, count);
  }
}

// Chunks per parallel task: about kElementsPerTask elements, so that a small g runs inline instead of
// paying for a parallel region (several us, more than its work) as it did with one chunk per task.
inline int64_t chunk_grain(const GradientPenaltyParams& p) {
  return std::max<int64_t>(1, kElementsPerTask / std::min(p.chunk, p.per_sample));
}

// p.partials[sample * chunks + chunk] = the chunk's sum of squares; a chunk is the unit of work.
template <typename scalar_t, typename acc_t> void chunk_sum_squares(const GradientPenaltyParams& p) {
  const auto* g = static_cast<const scalar_t*>(p.g);
  auto* partials = static_cast<acc_t*>(p.partials);
  const int64_t chunks = gradient_penalty_chunks(p);
  at::parallel_for(0, p.samples * chunks, chunk_grain(p), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = (task % chunks) * p.chunk;
      const int64_t len = std::min(p.chunk, p.per_sample - first);
      const scalar_t* x = g + (task / chunks) * p.per_sample + first;
      partials[task] = sum_squares(x, len);
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
  auto* sum_squares = static_cast<acc_t*>(p.sum_squares);
  for (int64_t s = 0; s < p.samples; ++s) {
    sum_squares[s] = sample_sum<acc_t>(p, s);
    out[s] = gradient_penalty_value(sum_squares[s], acc_t(p.center));
  }
}

// One pass over g: the per-sample scales come from the forward's sums of squares.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>> void backward(const GradientPenaltyParams& p) {
  const auto* grad = static_cast<const acc_t*>(p.grad);
  const auto* sum_squares = static_cast<const acc_t*>(p.sum_squares);
  std::vector<acc_t> scale(p.samples);
  for (int64_t s = 0; s < p.samples; ++s) {
    scale[s] = gradient_penalty_scale(sum_squares[s], grad[s], acc_t(p.center));
  }
  const auto* g = static_cast<const scalar_t*>(p.g);
  auto* out = static_cast<scalar_t*>(p.out);
  const int64_t chunks = gradient_penalty_chunks(p);
  at::parallel_for(0, p.samples * chunks, chunk_grain(p), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = (task / chunks) * p.per_sample + (task % chunks) * p.chunk;
      const int64_t len = std::min(p.chunk, p.per_sample - (task % chunks) * p.chunk);
      scale_range<scalar_t>(out, g, scale[task / chunks], first, first + len);
    }
  });
}

}  // namespace

namespace CPU_CAPABILITY {

void gradient_penalty_cpu_kernel(const GradientPenaltyParams& p) {
  dispatch_dtype<CpuElements>(p.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    if (p.mode == GradientPenaltyMode::Backward) {
      backward<scalar_t>(p);
    } else {
      forward<scalar_t>(p);
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace gan_kernels
