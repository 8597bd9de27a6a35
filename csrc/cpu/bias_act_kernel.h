// The CPU kernel of bias_act over a range of elements, one element at a time or in SIMD vectors of
// at::vec::Vectorized.
//
// Built once per CPU capability (cpu/capability_build.h): DEFAULT runs scalar loops, which the
// compiler vectorises for the default instruction set except for the transcendental functions;
// AVX2 and AVX512 run Vectorized, whose exp, tanh, ... are the SLEEF vector functions in
// libtorch_cpu. Everything below lives in an anonymous namespace, or is specialised on the
// translation unit's own vector types, or lives in the capability's namespace, so that each build
// has its own copy for its own instruction set.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/bias_act.h"
#include "cpu/bias_act.h"
#include "cpu/dispatch.h"
#include "cpu/vec_step.h"

// The scalar loops of the DEFAULT build vectorise only where GCC may assume that floating-point
// operations do not trap: nothing here relies on FP traps. After the torch headers, so only the
// kernel is affected.
#if defined(CPU_CAPABILITY_DEFAULT) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

namespace gan_kernels {
namespace {

// float and double compute in their own type, Half and BFloat16 in float: one value at a time
// (kVectors false) or a vector of them (cpu/vec_step.h: a vector of Half or BFloat16 is two of float).
template <typename scalar_t> using acc_t = at::vec::vec_scalar_t<scalar_t>;
template <typename scalar_t, bool kVectors> using compute_t =
    std::conditional_t<kVectors, Vec<acc_t<scalar_t>>, acc_t<scalar_t>>;

template <typename scalar_t> struct Operands {
  scalar_t* out;
  const scalar_t* ref;
  const scalar_t* g1;
  const scalar_t* g2;
};

// `n` consecutive elements from `offset`. With kBiasPerElement the bias of element j is bias[j]
// (channels innermost); otherwise every element adds `bias_value`. The operands and scalars come by
// value: through a reference they could alias `out`, and the compiler loaded them again after every
// store (which also stops vectorisation of the scalar loops).
template <typename scalar_t, Activation kAct, BiasActMode kMode, bool kBiasPerElement, typename A>
void span(const Operands<scalar_t> p, int64_t offset, int64_t n, const scalar_t* bias, acc_t<scalar_t> bias_value,
          const BiasActScalars<A> s, bool clamped, bool gain_positive) {
  constexpr bool kUsesG1 = kMode != BiasActMode::Forward;
  constexpr bool kUsesG2 = kMode == BiasActMode::Grad2;
  if constexpr (std::is_arithmetic_v<A>) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = offset + j;
      const A b = kBiasPerElement ? A(bias[j]) : bias_value;
      p.out[i] = scalar_t(bias_act_element<kAct, kMode>(A(p.ref[i]), b, kUsesG1 ? A(p.g1[i]) : A(0),
                                                        kUsesG2 ? A(p.g2[i]) : A(0), s, clamped, gain_positive));
    }
  } else {
    using S = Step<scalar_t>;
    for (int64_t j = 0; j < n; j += S::kSize) {
      const int64_t count = std::min(S::kSize, n - j);
      const int64_t i = offset + j;
      const typename S::Parts r = S::load(p.ref + i, count);
      // Vectorized's default constructor leaves its lanes undefined.
      typename S::Parts g1, g2, b;
      g1.fill(A(0));
      g2.fill(A(0));
      b.fill(A(bias_value));
      if constexpr (kUsesG1) g1 = S::load(p.g1 + i, count);
      if constexpr (kUsesG2) g2 = S::load(p.g2 + i, count);
      if constexpr (kBiasPerElement) b = S::load(bias + j, count);
      typename S::Parts out;
      for (int k = 0; k < S::kParts; ++k) {
        out[k] = bias_act_element<kAct, kMode>(r[k], b[k], g1[k], g2[k], s, clamped, gain_positive);
      }
      S::store(p.out + i, out, count);
    }
  }
}

// Splits [begin, end) into spans of one bias layout: no bias, a run of `inner` elements sharing one
// channel, or (inner == 1) a row of consecutive channels.
template <typename scalar_t, Activation kAct, BiasActMode kMode, bool kVectors>
void range(const BiasActParams& params, int64_t begin, int64_t end) {
  using acc = acc_t<scalar_t>;
  using A = compute_t<scalar_t, kVectors>;
  const Operands<scalar_t> p{static_cast<scalar_t*>(params.out), static_cast<const scalar_t*>(params.ref),
                             static_cast<const scalar_t*>(params.g1), static_cast<const scalar_t*>(params.g2)};
  const auto& sc = params.scalars;
  const BiasActScalars<A> s{A(acc(sc.alpha)), A(acc(sc.gain)), A(acc(sc.clamp)), A(acc(sc.scale))};
  const bool clamped = sc.clamp >= 0;
  const bool gain_positive = sc.gain > 0;
  const auto* bias = static_cast<const scalar_t*>(params.bias);
  if (bias == nullptr || params.channels == 1) {
    const acc bias_value = bias == nullptr ? acc(0) : acc(bias[0]);
    span<scalar_t, kAct, kMode, false>(p, begin, end - begin, nullptr, bias_value, s, clamped, gain_positive);
  } else if (params.inner == 1) {
    for (int64_t i = begin; i < end;) {
      const int64_t channel = i % params.channels;
      const int64_t n = std::min(end - i, params.channels - channel);
      span<scalar_t, kAct, kMode, true>(p, i, n, bias + channel, acc(0), s, clamped, gain_positive);
      i += n;
    }
  } else {
    for (int64_t i = begin; i < end;) {
      const int64_t run = i / params.inner;
      const int64_t n = std::min(end, (run + 1) * params.inner) - i;
      const acc bias_value = acc(bias[run % params.channels]);
      span<scalar_t, kAct, kMode, false>(p, i, n, nullptr, bias_value, s, clamped, gain_positive);
      i += n;
    }
  }
}

// Instantiates only the (act, mode) pairs the ops call: 24 per dtype.
template <typename scalar_t, bool kVectors> void range_for_dtype(const BiasActParams& p, int64_t begin, int64_t end) {
  using M = BiasActMode;
  dispatch_mode(p.mode, [&](auto mode_tag) {
    constexpr M kMode = decltype(mode_tag)::value;
    with_activation(p.act, [&](auto act_tag) {
      constexpr Activation kAct = decltype(act_tag)::value;
      if constexpr (kMode == M::Grad2 ? !piecewise_linear(kAct) : kMode != M::GradFromY || piecewise_linear(kAct)) {
        range<scalar_t, kAct, kMode, kVectors>(p, begin, end);
      }
    });
  });
}

// kVectors: at::vec::Vectorized, which pays off where it has real SIMD (and SLEEF) behind it;
// otherwise one element at a time, in loops the compiler vectorises itself where it can.
template <bool kVectors> void range_any_dtype(const BiasActParams& p, int64_t begin, int64_t end) {
  dispatch_dtype<CpuElements>(p.dtype, [&](auto tag) { range_for_dtype<decltype(tag), kVectors>(p, begin, end); });
}

}  // namespace

namespace CPU_CAPABILITY {

void bias_act_cpu_range(const BiasActParams& p, int64_t begin, int64_t end) {
#ifdef CPU_CAPABILITY_DEFAULT
  range_any_dtype<false>(p, begin, end);
#else
  range_any_dtype<true>(p, begin, end);
#endif
}

}  // namespace CPU_CAPABILITY
}  // namespace gan_kernels
