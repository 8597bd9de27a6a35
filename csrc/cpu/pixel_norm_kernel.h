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
  // NCHW sums: a row of at least kLongRow vector steps is added one channel at a time, in one
  // sequential stream per input. A shorter row adds kChannelRun channels in registers before the
  // sums go back to memory: one at a time, each add waited for the store of the same sum by the
  // previous channel, only a few steps earlier. Runs on long rows read 8 or 16 streams at once; at
  // [32,512,32,32] (2-core Zen 3 VM, min of 5 processes) they made the backward slower (fp32 7.6 ->
  // 8.5 ms, bf16 5.0 -> 7.2 ms) and the bf16 forward (3.5 -> 4.0 ms), the fp32 forward faster
  // (6.2 -> 5.0 ms).
  static constexpr int64_t kLongRow = 16;
  static constexpr int64_t kChannelRun = 8;

  const PixelNormParams& p;
  const scalar_t* x = static_cast<const scalar_t*>(p.x);
  const scalar_t* g = static_cast<const scalar_t*>(p.grad);
  scalar_t* out = static_cast<scalar_t*>(p.out);
  acc_t eps = acc_t(p.eps);

  // inner == 1: each row of `channels` consecutive elements is summed in vec_step.h's fixed lane
  // order (the same bits from every build), then written.
  void rows() const {
    const int64_t channels = p.channels;
    const int64_t full = channels - channels % kSize;
    at::parallel_for(0, p.outer, std::max<int64_t>(1, kElementsPerTask / channels), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t base = row * channels;
        // Both sums in one pass, each in vec_step.h's fixed lane order.
        LaneSum<acc_t> xx;
        LaneSum<acc_t> gx;
        int64_t summed = 0;
        for (; summed + kSumLanes <= channels; summed += kSumLanes) {
          const auto xv = SumBlock<scalar_t>::load(x + base + summed);
          xx.add(xv, xv);
          if constexpr (kBackward) gx.add(SumBlock<scalar_t>::load(g + base + summed), xv);
        }
        const acc_t sum_xx =
            xx.total(summed, channels, [&](int64_t i) { return acc_t(x[base + i]) * acc_t(x[base + i]); });
        const acc_t sum_gx =
            kBackward ? gx.total(summed, channels, [&](int64_t i) { return acc_t(g[base + i]) * acc_t(x[base + i]); })
                      : acc_t(0);
        const PixelNormScales<acc_t> s = pixel_norm_scales(sum_xx, sum_gx, channels, eps);
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

  // inner > 1: blocks of `width` positions of one outer index, each a task of block() below.
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
        const int64_t base = (task / per_outer) * channels * inner + i0;
        block(x + base, kBackward ? g + base : nullptr, out + base, channels, inner, std::min(width, inner - i0), eps,
              r, k);
      }
    });
  }

  // One block: `w` positions of `channels` rows `stride` elements apart, from x, g and out at the
  // block's first position of channel 0; r and k hold the per-position sums, then the scales.
  // Per position the sums run over the channels in order, a product and an add each (never a fused
  // multiply-add, which the default build lacks), so results do not depend on the block width or
  // the build. Everything arrives as a parameter, so the compiler knows the stores through `out`
  // change none of it (it reloaded members and captured variables after every store).
  static void block(const scalar_t* x, const scalar_t* g, scalar_t* out, int64_t channels, int64_t stride, int64_t w,
                    acc_t eps, acc_t* r, acc_t* k) {
    // Up to whole vectors: lanes past `w` are computed (never stored), from zeros.
    std::fill(r, r + ceil_div(w, kSize) * kSize, acc_t(0));
    if constexpr (kBackward) std::fill(k, k + ceil_div(w, kSize) * kSize, acc_t(0));
    // Sums of channels [c0, c0 + run) into r and k, the run's adds in registers.
    auto add_run = [&](int64_t c0, auto run) {
      steps(w, [&](int64_t j, auto count) {
        typename S::Parts sum_xx = S::load_acc(r + j);
        typename S::Parts sum_gx{};
        if constexpr (kBackward) sum_gx = S::load_acc(k + j);
        for (int64_t c = c0; c < c0 + run; ++c) {
          const auto xv = S::load(x + c * stride + j, count);
          typename S::Parts gv{};
          if constexpr (kBackward) gv = S::load(g + c * stride + j, count);
          for (int q = 0; q < kParts; ++q) {
            sum_xx[q] = sum_xx[q] + xv[q] * xv[q];
            if constexpr (kBackward) sum_gx[q] = sum_gx[q] + gv[q] * xv[q];
          }
        }
        S::store_acc(r + j, sum_xx);
        if constexpr (kBackward) S::store_acc(k + j, sum_gx);
      });
    };
    auto add_all = [&](auto run) {
      int64_t c0 = 0;
      for (; c0 + run <= channels; c0 += run) add_run(c0, run);
      if (c0 < channels) add_run(c0, channels - c0);
    };
    if (ceil_div(w, kSize) >= kLongRow) {
      add_all(std::integral_constant<int64_t, 1>{});
    } else {
      add_all(std::integral_constant<int64_t, kChannelRun>{});
    }
    // The scales, a vector at a time (r and k hold whole vectors): one at a time, a division and a
    // square root per position cost more than the channels' loads where they are few (C = 16).
    const AccVec eps_v(eps);
    // The forward has no g: its k stays unread and unwritten.
    for (int64_t j = 0; j < w; j += kSize) {
      const typename S::Parts sum_xx = S::load_acc(r + j);
      typename S::Parts sum_gx{};
      if constexpr (kBackward) sum_gx = S::load_acc(k + j);
      typename S::Parts rv;
      typename S::Parts kv;
      for (int q = 0; q < kParts; ++q) {
        const PixelNormScales<AccVec> scales =
            pixel_norm_scales(sum_xx[q], kBackward ? sum_gx[q] : AccVec(acc_t(0)), channels, eps_v);
        rv[q] = scales.r;
        kv[q] = scales.k;
      }
      S::store_acc(r + j, rv);
      if constexpr (kBackward) S::store_acc(k + j, kv);
    }
    for (int64_t c = 0; c < channels; ++c) {
      steps(w, [&](int64_t j, auto count) {
        const auto xv = S::load(x + c * stride + j, count);
        typename S::Parts gv{};
        if constexpr (kBackward) gv = S::load(g + c * stride + j, count);
        const typename S::Parts rv = S::load_acc(r + j);
        typename S::Parts kv{};
        if constexpr (kBackward) kv = S::load_acc(k + j);
        typename S::Parts ov;
        for (int q = 0; q < kParts; ++q) ov[q] = pixel_norm_apply<AccVec, kMode>(xv[q], gv[q], {rv[q], kv[q]});
        S::store(out + c * stride + j, ov, count);
      });
    }
  }

  // f(j, count) for each vector step over `w` positions: `count` is the constant kSize for whole
  // steps, so that their loads and stores compile without the partial-step branch, and the number
  // left for a last partial step.
  template <typename F> static void steps(int64_t w, const F& f) {
    int64_t j = 0;
    for (; j + kSize <= w; j += kSize) f(j, std::integral_constant<int64_t, kSize>{});
    if (j < w) f(j, w - j);
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
