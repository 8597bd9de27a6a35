#include "cpu/pixel_norm.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace gan_kernels {
namespace {

// Enough elements per parallel task to amortise the thread hand-off.
constexpr int64_t kElementsPerTask = 32768;
// Inner positions reduced together: wide enough to vectorise, narrow enough that the
// [channels, kChunk] block stays in cache between the reduction and the write.
constexpr int64_t kChunk = 64;
// Independent partial sums for a contiguous row, so the reduction pipelines (fixed order: deterministic).
constexpr int64_t kLanes = 8;

// With r = rsqrt(mean(x^2) + eps): forward y = x r; backward dx = r g - k x, k = r^3 mean(g x).
template <typename acc_t> struct Scales {
  acc_t r;
  acc_t k;
};

template <typename acc_t> Scales<acc_t> make_scales(acc_t sum_xx, acc_t sum_gx, int64_t channels, double eps) {
  const acc_t r = acc_t(1) / std::sqrt(sum_xx / acc_t(channels) + acc_t(eps));
  return {r, r * r * r * sum_gx / acc_t(channels)};
}

template <typename scalar_t, bool kBackward>
void rows(scalar_t* out, const scalar_t* x, const scalar_t* g, ChannelView v, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = v.channels;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / channels);
  at::parallel_for(0, v.outer, grain, [&](int64_t begin, int64_t end) {
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
      const Scales<acc_t> s = make_scales(sum_xx, sum_gx, channels, eps);
      for (int64_t c = 0; c < channels; ++c) {
        const acc_t xa = acc_t(xr[c]);
        outr[c] = scalar_t(kBackward ? s.r * acc_t(gr[c]) - s.k * xa : xa * s.r);
      }
    }
  });
}

template <typename scalar_t, bool kBackward>
void chunks(scalar_t* out, const scalar_t* x, const scalar_t* g, ChannelView v, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = v.channels;
  const int64_t inner = v.inner;
  const int64_t chunks_per_outer = (inner + kChunk - 1) / kChunk;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (channels * std::min(inner, kChunk)));
  at::parallel_for(0, v.outer * chunks_per_outer, grain, [&](int64_t begin, int64_t end) {
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
        const Scales<acc_t> s = make_scales(r[j], k[j], channels, eps);
        r[j] = s.r;
        k[j] = s.k;
      }
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* xr = x + base + c * inner;
        const scalar_t* gr = kBackward ? g + base + c * inner : nullptr;
        scalar_t* outr = out + base + c * inner;
        for (int64_t j = 0; j < width; ++j) {
          const acc_t xa = acc_t(xr[j]);
          outr[j] = scalar_t(kBackward ? r[j] * acc_t(gr[j]) - k[j] * xa : xa * r[j]);
        }
      }
    }
  });
}

template <typename scalar_t, bool kBackward>
void run(scalar_t* out, const scalar_t* x, const scalar_t* g, ChannelView v, double eps) {
  if (v.inner == 1) {
    rows<scalar_t, kBackward>(out, x, g, v, eps);
  } else {
    chunks<scalar_t, kBackward>(out, x, g, v, eps);
  }
}

}  // namespace

void pixel_norm_cpu(at::Tensor& out, const at::Tensor& x, const at::Tensor& grad, ChannelView view, double eps) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pixel_norm_cpu", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    if (grad.defined()) {
      run<scalar_t, true>(o, xp, grad.const_data_ptr<scalar_t>(), view, eps);
    } else {
      run<scalar_t, false>(o, xp, nullptr, view, eps);
    }
  });
}

}  // namespace gan_kernels
