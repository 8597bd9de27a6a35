#include "cpu/pixel_norm.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "cpu/dispatch.h"

namespace gan_kernels {
namespace {

// Inner positions reduced together: wide enough to vectorise, narrow enough that the
// [channels, kChunk] block stays in cache between the reduction and the write.
constexpr int64_t kChunk = 64;
// Independent partial sums for a contiguous row, so the reduction pipelines (fixed order: deterministic).
constexpr int64_t kLanes = 8;

template <typename scalar_t, PixelNormMode kMode> void rows(const PixelNormParams& p) {
  constexpr bool kBackward = kMode == PixelNormMode::Backward;
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* g = static_cast<const scalar_t*>(p.grad);
  auto* out = static_cast<scalar_t*>(p.out);
  const double eps = p.eps;
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = p.channels;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / channels);
  at::parallel_for(0, p.outer, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* xr = x + row * channels;
      const scalar_t* gr = kBackward ? g + row * channels : nullptr;
      scalar_t* outr = out + row * channels;
      acc_t part_xx[kLanes] = {};
      acc_t part_gx[kLanes] = {};
      for (int64_t c = 0; c < channels; ++c) {
        const acc_t xa = acc_t(xr[c]);
        part_xx[c % kLanes] += xa * xa;
        if (kBackward) part_gx[c % kLanes] += acc_t(gr[c]) * xa;
      }
      acc_t sum_xx = 0;
      acc_t sum_gx = 0;
      for (int64_t l = 0; l < kLanes; ++l) {
        sum_xx += part_xx[l];
        sum_gx += part_gx[l];
      }
      const PixelNormScales<acc_t> s = pixel_norm_scales(sum_xx, sum_gx, channels, acc_t(eps));
      for (int64_t c = 0; c < channels; ++c) {
        const acc_t xa = acc_t(xr[c]);
        outr[c] = scalar_t(pixel_norm_apply<acc_t, kMode>(xa, kBackward ? acc_t(gr[c]) : acc_t(0), s));
      }
    }
  });
}

template <typename scalar_t, PixelNormMode kMode> void chunks(const PixelNormParams& p) {
  constexpr bool kBackward = kMode == PixelNormMode::Backward;
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* g = static_cast<const scalar_t*>(p.grad);
  auto* out = static_cast<scalar_t*>(p.out);
  const double eps = p.eps;
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = p.channels;
  const int64_t inner = p.inner;
  const int64_t chunks_per_outer = ceil_div(inner, kChunk);
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (channels * std::min(inner, kChunk)));
  at::parallel_for(0, p.outer * chunks_per_outer, grain, [&](int64_t begin, int64_t end) {
    acc_t r[kChunk];
    acc_t k[kChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i0 = (task % chunks_per_outer) * kChunk;
      const int64_t width = std::min(kChunk, inner - i0);
      const int64_t base = (task / chunks_per_outer) * channels * inner + i0;
      std::fill(r, r + width, acc_t(0));
      std::fill(k, k + width, acc_t(0));
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* xr = x + base + c * inner;
        const scalar_t* gr = kBackward ? g + base + c * inner : nullptr;
        for (int64_t j = 0; j < width; ++j) {
          const acc_t xa = acc_t(xr[j]);
          r[j] += xa * xa;
          if (kBackward) k[j] += acc_t(gr[j]) * xa;
        }
      }
      for (int64_t j = 0; j < width; ++j) {
        const PixelNormScales<acc_t> s = pixel_norm_scales(r[j], k[j], channels, acc_t(eps));
        r[j] = s.r;
        k[j] = s.k;
      }
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* xr = x + base + c * inner;
        const scalar_t* gr = kBackward ? g + base + c * inner : nullptr;
        scalar_t* outr = out + base + c * inner;
        for (int64_t j = 0; j < width; ++j) {
          const acc_t xa = acc_t(xr[j]);
          outr[j] = scalar_t(pixel_norm_apply<acc_t, kMode>(xa, kBackward ? acc_t(gr[j]) : acc_t(0), {r[j], k[j]}));
        }
      }
    }
  });
}

template <typename scalar_t, PixelNormMode kMode> void run(const PixelNormParams& p) {
  if (p.inner == 1) {
    rows<scalar_t, kMode>(p);
  } else {
    chunks<scalar_t, kMode>(p);
  }
}

}  // namespace

void pixel_norm_cpu(const PixelNormParams& p) {
  dispatch_dtype<CpuElements>(p.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    if (p.mode == PixelNormMode::Backward) {
      run<scalar_t, PixelNormMode::Backward>(p);
    } else {
      run<scalar_t, PixelNormMode::Forward>(p);
    }
  });
}

}  // namespace gan_kernels
