// The CPU kernel of minibatch stddev in SIMD vectors of at::vec::Vectorized, built once per CPU
// capability (cpu/capability_build.h). Everything below lives in an anonymous namespace or in the
// CPU_CAPABILITY namespace, so that each build has its own copy.
//
// Each mode moves its tensors once: a strip of consecutive positions is read from the G members of
// the group together, and the further passes over them that the two-pass variance and the
// gradients need find the strip in L1. Only the stddev channels, 1/(C/F) of the data, are touched
// in a second, separate pass (their value needs the whole block).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16-math.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/mode.h"
#include "cpu/dispatch.h"
#include "cpu/minibatch_std.h"

namespace gan_kernels {
namespace {

using Mode = MinibatchStdMode;
template <typename scalar_t> using acc_t = at::opmath_type<scalar_t>;

// 2 Vectorized<acc_t>::size() consecutive positions: as many as one vector of Half or BFloat16
// holds, so that those convert to and from two float vectors without a partial load or store.
template <typename scalar_t> struct Strip {
  using A = acc_t<scalar_t>;
  using V = at::vec::Vectorized<A>;
  static constexpr int64_t kWidth = 2 * V::size();
  V lo, hi;

  explicit Strip(A value) : lo(value), hi(value) {}
  Strip(const V& lo_, const V& hi_) : lo(lo_), hi(hi_) {}
  static Strip load(const scalar_t* p) {
    if constexpr (c10::is_reduced_floating_point_v<scalar_t>) {
      V lo, hi;
      at::vec::load_to_float<scalar_t>(p, lo, hi);
      return {lo, hi};
    } else {
      return {V::loadu(p), V::loadu(p + V::size())};
    }
  }
  void store(scalar_t* p) const {
    if constexpr (c10::is_reduced_floating_point_v<scalar_t>) {
      at::vec::convert_from_float<scalar_t>(lo, hi).store(p);
    } else {
      lo.store(p);
      hi.store(p + V::size());
    }
  }
  // The strip's elements as they are, for the forward's copy of x into y: bf16 and fp16 need no
  // round trip through float (whose conversion back costs more than the rest of the forward's
  // arithmetic per element, and would make a NaN's payload canonical where torch.cat keeps it).
  static void copy(const scalar_t* from, scalar_t* to) {
    if constexpr (c10::is_reduced_floating_point_v<scalar_t>) {
      static_assert(at::vec::Vectorized<scalar_t>::size() == kWidth, "one vector of scalar_t per strip");
      at::vec::Vectorized<scalar_t>::loadu(from).store(to);
    } else {
      V::loadu(from).store(to);
      V::loadu(from + V::size()).store(to + V::size());
    }
  }
  // Correctly rounded, as std::sqrt is: the tail of a unit (Single) gets the same bits.
  Strip sqrt() const { return {lo.sqrt(), hi.sqrt()}; }
  // The lanes in lane order, so that the sum depends on the vector width only, not on the threads.
  A sum() const {
    A lanes[kWidth];
    lo.store(lanes);
    hi.store(lanes + V::size());
    A total = 0;
    for (int64_t j = 0; j < kWidth; ++j) total += lanes[j];
    return total;
  }
  // Members, not hidden friends: GCC builds a friend defined in a class template without the
  // translation unit's target pragma, and then inlines neither it nor the vector operators it calls.
  Strip operator+(const Strip& b) const { return {lo + b.lo, hi + b.hi}; }
  Strip operator-(const Strip& b) const { return {lo - b.lo, hi - b.hi}; }
  Strip operator*(const Strip& b) const { return {lo * b.lo, hi * b.hi}; }
  Strip operator/(const Strip& b) const { return {lo / b.lo, hi / b.hi}; }
};

// One position, with Strip's interface: the tail of a unit shorter than a strip.
template <typename scalar_t> struct Single {
  using A = acc_t<scalar_t>;
  static constexpr int64_t kWidth = 1;
  A v;

  explicit Single(A value) : v(value) {}
  static Single load(const scalar_t* p) { return Single(A(*p)); }
  static void copy(const scalar_t* from, scalar_t* to) { *to = *from; }
  void store(scalar_t* p) const { *p = scalar_t(v); }
  Single sqrt() const { return Single(std::sqrt(v)); }
  A sum() const { return v; }
  Single operator+(Single b) const { return Single(v + b.v); }
  Single operator-(Single b) const { return Single(v - b.v); }
  Single operator*(Single b) const { return Single(v * b.v); }
  Single operator/(Single b) const { return Single(v / b.v); }
};

template <typename scalar_t> struct Launch {
  scalar_t* y_out;  // forward output, dL/ddy
  scalar_t* x_out;  // dx, dL/dx
  const scalar_t* x;
  const scalar_t* y_in;       // dy
  const scalar_t* x_in;       // u
  acc_t<scalar_t>* partials;  // per unit: sum(s) (forward) or sum(u d / s) (double backward)
  acc_t<scalar_t>* coefs;     // per (group, feature) block: a
  int64_t group_size;
  int64_t x_member_stride;  // from one member of a group to the next: `groups` samples
  int64_t y_member_stride;
};

// The strip of S::kWidth positions from offset xo of the group's first member in x (yo in y):
// writes the mode's outputs there and returns what the unit sums over its positions.
template <typename scalar_t, Mode kMode, typename S>
S strip(const Launch<scalar_t>& t, int64_t xo, int64_t yo, S coef) {
  using A = acc_t<scalar_t>;
  const int64_t G = t.group_size;
  // Means multiply by 1/G, as ATen's mean does: a vector division costs many multiplications.
  const S inv_count{A(1) / A(G)};
  auto x_of = [&](int64_t g) { return S::load(t.x + xo + g * t.x_member_stride); };
  S mean{A(0)};
  for (int64_t g = 0; g < G; ++g) {
    if constexpr (kMode == Mode::Forward)
      S::copy(t.x + xo + g * t.x_member_stride, t.y_out + yo + g * t.y_member_stride);
    mean = mean + x_of(g);
  }
  mean = mean * inv_count;
  S sum_sq{A(0)};
  S d_sum{A(0)};
  for (int64_t g = 0; g < G; ++g) {
    const S d = x_of(g) - mean;
    sum_sq = sum_sq + d * d;
    if constexpr (kMode != Mode::Forward) d_sum = d_sum + d;
  }
  const S s = (sum_sq * inv_count + S(A(kMinibatchStdEps))).sqrt();
  if constexpr (kMode == Mode::Forward) {
    return s;
  } else {
    const S r = S(A(1)) / s;
    // The gradients' d, centred again as autograd's chain through x - mean(x) centres it: mean(d)
    // is the rounding error of mean(x), which 1/s would amplify.
    const S d_mean = d_sum * inv_count;
    auto centred = [&](int64_t g) { return (x_of(g) - mean) - d_mean; };
    if constexpr (kMode == Mode::Backward) {
      const S scale = coef * r;
      for (int64_t g = 0; g < G; ++g) {
        const S dy = S::load(t.y_in + yo + g * t.y_member_stride);
        (dy + scale * centred(g)).store(t.x_out + xo + g * t.x_member_stride);
      }
      return S(A(0));
    } else {
      auto u_of = [&](int64_t g) { return S::load(t.x_in + xo + g * t.x_member_stride); };
      S u_mean{A(0)};
      S u_dot_d{A(0)};
      for (int64_t g = 0; g < G; ++g) {
        const S u = u_of(g);
        u.store(t.y_out + yo + g * t.y_member_stride);
        u_mean = u_mean + u;
        u_dot_d = u_dot_d + u * centred(g);
      }
      u_mean = u_mean * inv_count;
      const S scale = coef * r;
      for (int64_t g = 0; g < G; ++g) {
        const S dx = scale * ((u_of(g) - u_mean) - u_dot_d * centred(g) * r * r * inv_count);
        dx.store(t.x_out + xo + g * t.x_member_stride);
      }
      return u_dot_d * r;
    }
  }
}

// Every unit of the plan, in parallel; each writes its partial sum.
template <typename scalar_t, Mode kMode>
void units(const Launch<scalar_t>& launch, const MinibatchStdParams& p, const MinibatchStdCpuPlan& plan) {
  using A = acc_t<scalar_t>;
  using S = Strip<scalar_t>;
  constexpr bool kSums = kMode != Mode::Backward;
  const MinibatchStdLayout& l = plan.layout;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (p.group_size * plan.segment));
  at::parallel_for(0, plan.units, grain, [&](int64_t begin, int64_t end) {
    // The task's own copy: the compiler cannot tell that the stores through its pointers leave a
    // Launch seen by reference alone, and loaded pointers and strides again after every store.
    const Launch<scalar_t> t = launch;
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t segment = unit % plan.segments;
      const int64_t row = unit / plan.segments % l.rows;
      const int64_t block = unit / (plan.segments * l.rows);
      const int64_t f = block % p.features;
      const int64_t m = block / p.features;
      const int64_t begin_col = segment * plan.segment;
      const int64_t end_col = std::min(begin_col + plan.segment, l.cols);
      const int64_t xo = m * l.x_sample_stride + f * l.feature_stride + row * l.x_row_stride;
      const int64_t yo = m * l.y_sample_stride + f * l.feature_stride + row * l.y_row_stride;
      const A coef = kMode == Mode::Forward ? A(0) : t.coefs[block];
      S strips{A(0)};
      int64_t col = begin_col;
      for (; col + S::kWidth <= end_col; col += S::kWidth) {
        const S sums = strip<scalar_t, kMode>(t, xo + col, yo + col, S(coef));
        if constexpr (kSums) strips = strips + sums;
      }
      A partial = kSums ? strips.sum() : A(0);
      for (; col < end_col; ++col) {
        partial += strip<scalar_t, kMode>(t, xo + col, yo + col, Single<scalar_t>(coef)).sum();
      }
      if constexpr (kSums) t.partials[unit] = partial;
    }
  });
}

// Blocks (group, feature) per parallel task when each costs `elements`.
inline int64_t block_grain(int64_t elements) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, elements));
}

// Channel C + f of every member of group m gets the (m, f) block's partials, summed in unit order,
// times `scale`.
template <typename scalar_t> void write_stats(const Launch<scalar_t>& t, acc_t<scalar_t> scale,
                                              const MinibatchStdParams& p, const MinibatchStdCpuPlan& plan) {
  const MinibatchStdLayout& l = plan.layout;
  const int64_t per_block = plan.units / (p.groups * p.features);
  const int64_t G = p.group_size;
  at::parallel_for(0, p.groups * p.features, block_grain(G * p.pixels + per_block), [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      acc_t<scalar_t> total = 0;
      for (int64_t unit = 0; unit < per_block; ++unit) total += t.partials[block * per_block + unit];
      const scalar_t stat = scalar_t(total * scale);
      const int64_t f = block % p.features;
      const int64_t m = block / p.features;
      for (int64_t g = 0; g < G; ++g) {
        scalar_t* y =
            t.y_out + m * l.y_sample_stride + g * t.y_member_stride + l.stat_offset + f * l.stat_feature_stride;
        for (int64_t q = 0; q < p.pixels; ++q) y[q * l.stat_pixel_stride] = stat;
      }
    }
  });
}

// coefs[m, f] = a = sum of dy over the stddev channel f of group m's members / (K G).
template <typename scalar_t>
void reduce_stat_grad(const Launch<scalar_t>& t, const MinibatchStdParams& p, const MinibatchStdCpuPlan& plan) {
  using A = acc_t<scalar_t>;
  const MinibatchStdLayout& l = plan.layout;
  const int64_t G = p.group_size;
  const A scale = A(1) / (A(l.rows * l.cols) * A(G));
  at::parallel_for(0, p.groups * p.features, block_grain(G * p.pixels), [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t f = block % p.features;
      const int64_t m = block / p.features;
      A total = 0;
      for (int64_t g = 0; g < G; ++g) {
        const scalar_t* dy =
            t.y_in + m * l.y_sample_stride + g * t.y_member_stride + l.stat_offset + f * l.stat_feature_stride;
        for (int64_t q = 0; q < p.pixels; ++q) total += A(dy[q * l.stat_pixel_stride]);
      }
      t.coefs[block] = total * scale;
    }
  });
}

template <typename scalar_t, Mode kMode> void run(const MinibatchStdParams& p, const MinibatchStdCpuPlan& plan) {
  using A = acc_t<scalar_t>;
  const MinibatchStdLayout& l = plan.layout;
  A* partials = static_cast<A*>(p.workspace);
  const Launch<scalar_t> t{static_cast<scalar_t*>(p.y_out),
                           static_cast<scalar_t*>(p.x_out),
                           static_cast<const scalar_t*>(p.x),
                           static_cast<const scalar_t*>(p.grad),
                           static_cast<const scalar_t*>(p.upstream),
                           partials,
                           partials + plan.units,
                           p.group_size,
                           p.groups * l.x_sample_stride,
                           p.groups * l.y_sample_stride};
  if constexpr (kMode != Mode::Forward) reduce_stat_grad(t, p, plan);
  units<scalar_t, kMode>(t, p, plan);
  const A positions = A(l.rows * l.cols);
  if constexpr (kMode == Mode::Forward) write_stats(t, A(1) / positions, p, plan);
  if constexpr (kMode == Mode::DoubleBackward) write_stats(t, A(1) / (positions * A(p.group_size)), p, plan);
}

}  // namespace

namespace CPU_CAPABILITY {

void minibatch_std_cpu_kernel(const MinibatchStdParams& p, const MinibatchStdCpuPlan& plan) {
  dispatch_dtype<CpuElements>(p.dtype, [&](auto tag) {
    dispatch_mode(p.mode, [&](auto mode) { run<decltype(tag), decltype(mode)::value>(p, plan); });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace gan_kernels
