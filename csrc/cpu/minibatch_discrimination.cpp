// Before every include, so that all code in this file, ATen's inline functions included, is built
// alike: with GCC's default -ftrapping-math its vectoriser refuses the selects of exp_nonpositive (an
// ordered compare may raise an FP exception) and the exp loop, most of this kernel's time, stays
// scalar. No result changes: FP exceptions are masked, and nothing here reads their flags.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "cpu/minibatch_discrimination.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/minibatch_discrimination.h"
#include "cpu/dispatch.h"

namespace gan_kernels {
namespace {

using Mode = MinibatchDiscriminationMode;

// Independent partial sums over a row's partners, so the adds pipeline and vectorise; their order is
// fixed, so every output has the same bits whatever the thread count.
constexpr int64_t kLanes = 8;

template <typename T> struct Strided {
  T* data;
  int64_t sample_stride;
  int64_t kernel_stride;
  int64_t dim_stride;

  T& operator()(int64_t i, int64_t b, int64_t c = 0) const {
    return data[i * sample_stride + b * kernel_stride + c * dim_stride];
  }
};

template <typename T, typename Pointer> Strided<T> strided(Pointer data, const MinibatchDiscriminationStrides& s) {
  return {static_cast<T*>(data), s.sample, s.kernel, s.dim};
}

// exp(x) for x <= 0 or NaN, within 1 ulp of std::exp, written so that a loop over it vectorises
// (std::exp is a call per element). x = k ln2 + r with |r| <= ln2/2 (ln2 split so that k ln2_high is
// exact), e^r by its Taylor polynomial of degree 7 (truncation error < 6e-9, 0.05 ulp), 2^k put
// into the exponent bits. Below ln(FLT_MIN) the result, a subnormal below 1.2e-38, is flushed to 0.
inline float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2High = 0.693145751953125f;
  constexpr float kLn2Low = 1.42860676533018708e-6f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  constexpr float kSmallest = -87.33654f;
  const float clamped = x < kSmallest ? kSmallest : x;
  const float k = (clamped * kLog2e + kRound) - kRound;
  const float r = (clamped - k * kLn2High) - k * kLn2Low;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t exponent_bits = (int32_t(k) + 127) << 23;
  float two_to_k;
  std::memcpy(&two_to_k, &exponent_bits, sizeof(two_to_k));
  const float e = p * two_to_k;
  const float flushed = x < kSmallest ? 0.0f : e;
  return x == x ? flushed : x;
}

inline float similarity(float l1_distance) { return exp_nonpositive(-l1_distance); }
inline double similarity(double l1_distance) { return pair_similarity(l1_distance); }

// sum_{j in [begin, end)} term(j) in kLanes interleaved partial sums, added in lane order.
template <typename A, typename Term> A sum_range(int64_t begin, int64_t end, const Term& term) {
  A lanes[kLanes] = {};
  int64_t j = begin;
  for (; j + kLanes <= end; j += kLanes) {
    for (int64_t lane = 0; lane < kLanes; ++lane) lanes[lane] += term(j + lane);
  }
  for (int64_t lane = 0; j < end; ++j, ++lane) lanes[lane] += term(j);
  A sum = 0;
  for (const A lane : lanes) sum += lane;
  return sum;
}

// One kernel b's columns in the accumulator type, [C][N] (each pass over partners reads contiguous
// memory), and its output sums.
template <typename A> struct KernelBuffers {
  std::vector<A> x, u, g;                                      // M[:, b, :], U[:, b, :] and dL/do[:, b]
  std::vector<A> scalar_sums;                                  // [N]: o or dL/dgrad
  std::vector<A> vector_sums;                                  // [C][N]: dL/dM
  std::vector<A> distance, t, terms, weights, signed_weights;  // [N]: one row's pairs
};

// Every pair (i, j > i) of kernel b once: e_ij = e_ji, t_ij = t_ji and (g_i + g_j) are symmetric,
// s_ij = -s_ji, so the pair's terms go to both rows (the vector ones with opposite signs). Row i's
// sums are fixed in order: the terms of pairs (k < i, i) in ascending k, then its own pairs in lanes.
template <Mode kMode, typename A> void pair_sums(KernelBuffers<A>& buf, int64_t n, int64_t dims) {
  constexpr bool kHasGrad = kMode != Mode::Forward;
  constexpr bool kHasUpstream = kMode == Mode::DoubleBackward;
  constexpr bool kHasScalarOut = kMode != Mode::Backward;
  constexpr bool kHasVectorOut = kMode != Mode::Forward;
  A* distance = buf.distance.data();
  A* t = buf.t.data();
  A* terms = buf.terms.data();
  A* weights = buf.weights.data();
  A* signed_weights = buf.signed_weights.data();
  const A* g = buf.g.data();
  std::fill(buf.scalar_sums.begin(), buf.scalar_sums.end(), A(0));
  std::fill(buf.vector_sums.begin(), buf.vector_sums.end(), A(0));
  for (int64_t i = 0; i + 1 < n; ++i) {
    const int64_t first = i + 1;
    std::fill(distance + first, distance + n, A(0));
    if (kHasUpstream) std::fill(t + first, t + n, A(0));
    for (int64_t c = 0; c < dims; ++c) {
      const A* xc = buf.x.data() + c * n;
      const A xi = xc[i];
      const A* uc = kHasUpstream ? buf.u.data() + c * n : nullptr;
      const A ui = kHasUpstream ? uc[i] : A(0);
      for (int64_t j = first; j < n; ++j) {
        const A d = xi - xc[j];
        distance[j] += std::abs(d);
        if (kHasUpstream) t[j] += tie_sign(d) * (ui - uc[j]);
      }
    }
    const A g_i = kHasGrad ? g[i] : A(0);
    for (int64_t j = first; j < n; ++j) {
      const PairTerms<A> pair =
          pair_terms<kMode, A>(similarity(distance[j]), kHasUpstream ? t[j] : A(0), kHasGrad ? g_i + g[j] : A(0));
      if (kHasScalarOut) terms[j] = pair.scalar;
      if (kHasVectorOut) weights[j] = pair.vector_weight;
    }
    if (kHasScalarOut) {
      A* sums = buf.scalar_sums.data();
      sums[i] += sum_range<A>(first, n, [&](int64_t j) { return terms[j]; });
      for (int64_t j = first; j < n; ++j) sums[j] += terms[j];
    }
    if (kHasVectorOut) {
      for (int64_t c = 0; c < dims; ++c) {
        const A* xc = buf.x.data() + c * n;
        const A xi = xc[i];
        for (int64_t j = first; j < n; ++j) signed_weights[j] = weights[j] * tie_sign(xi - xc[j]);
        A* sums = buf.vector_sums.data() + c * n;
        sums[i] += sum_range<A>(first, n, [&](int64_t j) { return signed_weights[j]; });
        for (int64_t j = first; j < n; ++j) sums[j] -= signed_weights[j];
      }
    }
  }
}

// The kernels b are the parallel tasks: each is one pass over its N(N-1)/2 pairs.
template <typename scalar_t, Mode kMode> void run(const MinibatchDiscriminationParams& p) {
  using A = at::opmath_type<scalar_t>;
  constexpr bool kHasGrad = kMode != Mode::Forward;
  constexpr bool kHasUpstream = kMode == Mode::DoubleBackward;
  constexpr bool kHasScalarOut = kMode != Mode::Backward;
  constexpr bool kHasVectorOut = kMode != Mode::Forward;
  const int64_t n = p.samples;
  const int64_t kernels = p.kernels;
  const int64_t dims = p.dims;
  const auto m_at = strided<const scalar_t>(p.m, p.m_strides);
  const auto grad_at = strided<const scalar_t>(p.grad, p.grad_strides);
  const auto upstream_at = strided<const scalar_t>(p.upstream, p.upstream_strides);
  const auto scalar_at = strided<scalar_t>(p.scalar_out, p.scalar_out_strides);
  const auto vector_at = strided<scalar_t>(p.vector_out, p.vector_out_strides);
  at::parallel_for(0, kernels, 1, [&](int64_t begin, int64_t end) {
    KernelBuffers<A> buf{std::vector<A>(dims * n),
                         std::vector<A>(kHasUpstream ? dims * n : 0),
                         std::vector<A>(kHasGrad ? n : 0),
                         std::vector<A>(kHasScalarOut ? n : 0),
                         std::vector<A>(kHasVectorOut ? dims * n : 0),
                         std::vector<A>(n),
                         std::vector<A>(kHasUpstream ? n : 0),
                         std::vector<A>(kHasScalarOut ? n : 0),
                         std::vector<A>(kHasVectorOut ? n : 0),
                         std::vector<A>(kHasVectorOut ? n : 0)};
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t c = 0; c < dims; ++c) {
          buf.x[c * n + j] = A(m_at(j, b, c));
          if (kHasUpstream) buf.u[c * n + j] = A(upstream_at(j, b, c));
        }
        if (kHasGrad) buf.g[j] = A(grad_at(j, b));
      }
      pair_sums<kMode, A>(buf, n, dims);
      for (int64_t i = 0; i < n; ++i) {
        if (kHasScalarOut) scalar_at(i, b) = scalar_t(buf.scalar_sums[i]);
        if (kHasVectorOut) {
          for (int64_t c = 0; c < dims; ++c) vector_at(i, b, c) = scalar_t(buf.vector_sums[c * n + i]);
        }
      }
    }
  });
}

}  // namespace

void minibatch_discrimination_cpu(const MinibatchDiscriminationParams& p) {
  dispatch_dtype<CpuElements>(p.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    dispatch_mode(p.mode, [&](auto mode) { run<scalar_t, decltype(mode)::value>(p); });
  });
}

}  // namespace gan_kernels
