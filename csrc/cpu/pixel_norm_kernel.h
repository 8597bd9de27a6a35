// The CPU kernel of pixel norm in ATen's Vectorized, built once per CPU capability
// (cpu/capability_build.h). Each element is read from memory once and written once: a row of
// channels (inner == 1), or a block of channels x inner positions (NCHW), is reduced and then
// written while it is still in cache. Everything lives in an anonymous namespace or in the
// capability's namespace, so each build has its own copy for its own instruction set.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

#include "common/pixel_norm.h"
#include "cpu/dispatch.h"
#include "cpu/pixel_norm.h"
#include "cpu/vec_step.h"

namespace gan_kernels {
namespace {

template <typename scalar_t, PixelNormMode kMode> struct Kernel {
  static constexpr bool kBackward = kMode == PixelNormMode::Backward;
  using S = Step<scalar_t>;
  using acc_t = typename S::acc_t;
  using AccVec = typename S::AccVec;
  static constexpr int64_t kSize = S::kSize;
  static constexpr int kParts = S::kParts;
  // Block widths (inner positions) stay within this many elements, so the two accumulator rows
  // (16 KiB in float) stay in L1.
  static constexpr int64_t kMaxWidth = 2048;
  // The inputs of one NCHW block stay within this many bytes, so the second pass finds them in L2
  // or L3. Wide blocks win over narrow ones that fit L2 alone: each channel's run of a block is
  // contiguous, and short runs at a large stride defeat the hardware prefetcher. Measured at
  // [32,512,32,32] fp32 (Xeon with 2 MiB L2, one thread, time / clone time): forward 1.13 at
  // 4 MiB (whole 2 MiB rows of channels) against 1.51 at 256 KiB, backward 1.37 against 2.01;
  // with two threads 1.21 against 1.41 and 1.45 against 1.82.
  static constexpr int64_t kBlockBytes = 4 * 1024 * 1024;

  const PixelNormParams& p;
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const scalar_t* g = static_cast<const scalar_t*>(p.grad);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  acc_t eps = acc_t(p.eps);

  // inner == 1: each row of `channels` consecutive elements is reduced across vector lanes, in a
  // fixed order (deterministic), then written.
  void rows() const {
    const int64_t channels = p.channels;
    const int64_t full = channels - channels % kSize;
    at::parallel_for(0, p.outer, std::max<int64_t>(1, kElementsPerTask / channels), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t base = row * channels;
        AccVec sum_xx(0);
        AccVec sum_gx(0);
        auto accumulate = [&](int64_t c, int64_t count) {
          const auto xv = S::load(x + base + c, count);
          for (int k = 0; k < kParts; ++k) sum_xx = at::vec::fmadd(xv[k], xv[k], sum_xx);
          if constexpr (kBackward) {
            const auto gv = S::load(g + base + c, count);
            for (int k = 0; k < kParts; ++k) sum_gx = at::vec::fmadd(gv[k], xv[k], sum_gx);
          }
        };
        for (int64_t c = 0; c < full; c += kSize) accumulate(c, kSize);
        if (full < channels) accumulate(full, channels - full);
        const auto add = [](const AccVec& a, const AccVec& b) { return a + b; };
        const PixelNormScales<acc_t> s =
            pixel_norm_scales(at::vec::vec_reduce_all<acc_t>(add, sum_xx),
                              kBackward ? at::vec::vec_reduce_all<acc_t>(add, sum_gx) : acc_t(0), channels, eps);
        const PixelNormScales<AccVec> sv{AccVec(s.r), AccVec(s.k)};
        auto write = [&](int64_t c, int64_t count) {
          const auto xv = S::load(x + base + c, count);
          typename S::Parts gv{};
          if constexpr (kBackward) gv = S::load(g + base + c, count);
          typename S::Parts ov;
          for (int k = 0; k < kParts; ++k) ov[k] = pixel_norm_apply<AccVec, kMode>(xv[k], gv[k], sv);
          S::store(out + base + c, ov, count);
        };
        for (int64_t c = 0; c < full; c += kSize) write(c, kSize);
        if (full < channels) write(full, channels - full);
      }
    });
  }

  // inner > 1: blocks of `width` positions of one outer index; per position the sums run over
  // the channels in order, so results do not depend on the block width or the build.
  void blocks() const {
    const int64_t channels = p.channels;
    const int64_t inner = p.inner;
    const int64_t inputs = kBackward ? 2 : 1;
    const int64_t fitting = kBlockBytes / (channels * inputs * int64_t(sizeof(scalar_t)));
    const int64_t width =
        std::min({kMaxWidth, std::max(kSize, fitting - fitting % kSize), ceil_div(inner, kSize) * kSize});
    const int64_t per_outer = ceil_div(inner, width);
    const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (channels * std::min(inner, width)));
    at::parallel_for(0, p.outer * per_outer, grain, [&](int64_t begin, int64_t end) {
      alignas(64) acc_t r[kMaxWidth];
      alignas(64) acc_t k[kMaxWidth];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t i0 = (task % per_outer) * width;
        const int64_t w = std::min(width, inner - i0);
        const int64_t base = (task / per_outer) * channels * inner + i0;
        // Up to whole vectors: lanes past `w` are computed (never stored) and must be numbers.
        std::fill(r, r + ceil_div(w, kSize) * kSize, acc_t(0));
        std::fill(k, k + ceil_div(w, kSize) * kSize, acc_t(0));
        // Sums of x^2 (and g x) per position, accumulated in r and k.
        for (int64_t c = 0; c < channels; ++c) {
          const int64_t row = base + c * inner;
          for (int64_t j = 0; j < w; j += kSize) {
            const int64_t count = std::min(kSize, w - j);
            const auto xv = S::load(x + row + j, count);
            typename S::Parts gv{};
            if constexpr (kBackward) gv = S::load(g + row + j, count);
            for (int q = 0; q < kParts; ++q) {
              acc_t* rq = r + j + q * AccVec::size();
              at::vec::fmadd(xv[q], xv[q], AccVec::loadu(rq)).store(rq);
              if constexpr (kBackward) {
                acc_t* kq = k + j + q * AccVec::size();
                at::vec::fmadd(gv[q], xv[q], AccVec::loadu(kq)).store(kq);
              }
            }
          }
        }
        for (int64_t j = 0; j < w; ++j) {
          const PixelNormScales<acc_t> s = pixel_norm_scales(r[j], k[j], channels, eps);
          r[j] = s.r;
          k[j] = s.k;
        }
        for (int64_t c = 0; c < channels; ++c) {
          const int64_t row = base + c * inner;
          for (int64_t j = 0; j < w; j += kSize) {
            const int64_t count = std::min(kSize, w - j);
            const auto xv = S::load(x + row + j, count);
            typename S::Parts gv{};
            if constexpr (kBackward) gv = S::load(g + row + j, count);
            typename S::Parts ov;
            for (int q = 0; q < kParts; ++q) {
              const int64_t at = j + q * AccVec::size();
              ov[q] = pixel_norm_apply<AccVec, kMode>(xv[q], gv[q], {AccVec::loadu(r + at), AccVec::loadu(k + at)});
            }
            S::store(out + row + j, ov, count);
          }
        }
      }
    });
  }
};

}  // namespace

namespace CPU_CAPABILITY {

void pixel_norm_cpu_kernel(const PixelNormParams& p) {
  dispatch_dtype<CpuElements>(p.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    auto run = [&](auto kernel) {
      if (p.inner == 1) {
        kernel.rows();
      } else {
        kernel.blocks();
      }
    };
    if (p.mode == PixelNormMode::Backward) {
      run(Kernel<scalar_t, PixelNormMode::Backward>{p});
    } else {
      run(Kernel<scalar_t, PixelNormMode::Forward>{p});
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace gan_kernels
