#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

// GCC will not turn the activations' selects (v > 0 ? v : alpha * v, the clamp) into vector blends
// while it must assume floating-point operations can trap; nothing here relies on FP traps, and
// without it the elementwise loops stay scalar (2.5x slower than a plain add). Placed after the torch
// headers so that only our kernels (and the math header below) are affected.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "cpu/bias_act.h"

namespace gan_kernels {
namespace {

// Enough elements per parallel task to amortise the thread hand-off.
constexpr int64_t kElementsPerTask = 32768;

template <typename scalar_t> struct Pointers {
  scalar_t* out;
  const scalar_t* ref;
  const scalar_t* g1;    // grad; upstream in Grad2
  const scalar_t* g2;    // grad in Grad2
  const scalar_t* bias;  // nullptr: no bias
};

// `n` consecutive elements from `offset`; Bias is one value for the whole span or a pointer to one
// value per element. Kept free of branches on the mode so that it vectorises.
template <typename scalar_t, Activation kAct, BiasActMode kMode, typename Bias>
void span(const Pointers<scalar_t>& p, int64_t offset, int64_t n, Bias bias,
          // By value: a reference could alias `out`, and reloading it every element stops vectorisation.
          const BiasActScalars<at::opmath_type<scalar_t>> s) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kUsesG1 = kMode != BiasActMode::Forward;
  constexpr bool kUsesG2 = kMode == BiasActMode::Grad2;
  scalar_t* out = p.out + offset;
  const scalar_t* ref = p.ref + offset;
  const scalar_t* g1 = kUsesG1 ? p.g1 + offset : nullptr;
  const scalar_t* g2 = kUsesG2 ? p.g2 + offset : nullptr;
  for (int64_t j = 0; j < n; ++j) {
    acc_t b;
    if constexpr (std::is_pointer_v<Bias>) {
      b = acc_t(bias[j]);
    } else {
      b = bias;
    }
    out[j] = scalar_t(bias_act_element<kAct, kMode>(acc_t(ref[j]), b, kUsesG1 ? acc_t(g1[j]) : acc_t(0),
                                                      kUsesG2 ? acc_t(g2[j]) : acc_t(0), s));
  }
}

template <typename scalar_t, Activation kAct, BiasActMode kMode>
void run(const Pointers<scalar_t>& p, ChannelView v, const BiasActScalars<double>& scalars) {
  using acc_t = at::opmath_type<scalar_t>;
  const BiasActScalars<acc_t> s{acc_t(scalars.alpha), acc_t(scalars.gain), acc_t(scalars.clamp),
                                acc_t(scalars.scale)};
  const int64_t numel = v.outer * v.channels * v.inner;
  if (p.bias == nullptr || v.channels == 1) {
    const acc_t bias = p.bias == nullptr ? acc_t(0) : acc_t(p.bias[0]);
    at::parallel_for(0, numel, kElementsPerTask, [&](int64_t begin, int64_t end) {
      span<scalar_t, kAct, kMode>(p, begin, end - begin, bias, s);
    });
  } else if (v.inner == 1) {
    // Channels innermost (channels_last, or dim last): each row of channels adds the bias vector.
    const int64_t grain = std::max<int64_t>(1, kElementsPerTask / v.channels);
    at::parallel_for(0, v.outer, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        span<scalar_t, kAct, kMode>(p, row * v.channels, v.channels, p.bias, s);
      }
    });
  } else {
    // Each run of `inner` elements belongs to one channel and adds one bias value.
    const int64_t grain = std::max<int64_t>(1, kElementsPerTask / v.inner);
    at::parallel_for(0, v.outer * v.channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        span<scalar_t, kAct, kMode>(p, row * v.inner, v.inner, acc_t(p.bias[row % v.channels]), s);
      }
    });
  }
}

// Only the (act, mode) pairs the ops call are instantiated: 21 per dtype.
template <typename scalar_t>
void dispatch(BiasActMode mode, Activation act, const Pointers<scalar_t>& p, ChannelView v,
              const BiasActScalars<double>& s) {
  using A = Activation;
  using M = BiasActMode;
  if (mode == M::GradFromY) {
    TORCH_CHECK(act == A::Linear || act == A::Relu || act == A::Lrelu, "GradFromY needs a piecewise-linear act");
    return run<scalar_t, A::Lrelu, M::GradFromY>(p, v, s);
  }
  auto with_act = [&](auto mode_tag) {
    constexpr M kMode = decltype(mode_tag)::value;
    switch (act) {
      case A::Linear:
      case A::Relu:
      case A::Lrelu:
        if constexpr (kMode != M::Grad2) return run<scalar_t, A::Lrelu, kMode>(p, v, s);
        break;
      case A::Tanh: return run<scalar_t, A::Tanh, kMode>(p, v, s);
      case A::Sigmoid: return run<scalar_t, A::Sigmoid, kMode>(p, v, s);
      case A::Elu: return run<scalar_t, A::Elu, kMode>(p, v, s);
      case A::Selu: return run<scalar_t, A::Selu, kMode>(p, v, s);
      case A::Softplus: return run<scalar_t, A::Softplus, kMode>(p, v, s);
      case A::Swish: return run<scalar_t, A::Swish, kMode>(p, v, s);
    }
    TORCH_CHECK(false, "bias_act: no kernel for this activation and mode");
  };
  switch (mode) {
    case M::Forward: return with_act(std::integral_constant<M, M::Forward>{});
    case M::GradFromX: return with_act(std::integral_constant<M, M::GradFromX>{});
    case M::Grad2: return with_act(std::integral_constant<M, M::Grad2>{});
    case M::GradFromY: break;
  }
}

}  // namespace

void bias_act_cpu(BiasActMode mode, Activation act, at::Tensor& out, const at::Tensor& ref, const at::Tensor& grad,
                  const at::Tensor& upstream, const at::Tensor& bias, ChannelView view,
                  const BiasActScalars<double>& scalars) {
  BiasActScalars<double> s = scalars;
  // Linear and relu run as lrelu (see act_value).
  if (act == Activation::Linear) s.alpha = 1;
  if (act == Activation::Relu) s.alpha = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ref.scalar_type(), "bias_act_cpu", [&] {
    const bool grad2 = mode == BiasActMode::Grad2;
    const Pointers<scalar_t> p{out.mutable_data_ptr<scalar_t>(), ref.const_data_ptr<scalar_t>(),
                               grad2 ? upstream.const_data_ptr<scalar_t>()
                                     : (grad.defined() ? grad.const_data_ptr<scalar_t>() : nullptr),
                               grad2 ? grad.const_data_ptr<scalar_t>() : nullptr,
                               bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr};
    dispatch<scalar_t>(mode, act, p, view, s);
  });
}

}  // namespace gan_kernels
