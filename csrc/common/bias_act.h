// bias_act's launch description, and its activations with their first and second derivatives,
// shared by the CPU and CUDA kernels so both compute the same formulas. Free of torch and of the
// CUDA runtime: the CPU build includes it without a CUDA toolkit. The activations' names, defaults
// and constants come from the table in gan_kernels/_activations.py (activation_table.h is generated
// from it at build time).
//
// The formulas are written once for any element type A with arithmetic operators: a float or double
// here and in the CUDA kernels, a SIMD vector of them in the CPU kernels. What differs between the
// two (selects, transcendental functions) goes through ElementMath<A> (common/element_math.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "activation_table.h"
#include "common/dtype.h"
#include "common/element_math.h"
#include "common/host_device.h"
#include "common/mode.h"

namespace gan_kernels {

enum class Activation : int32_t {
#define GAN_KERNELS_ACTIVATION_ENUMERATOR(enumerator, name, alpha, gain, piecewise_linear) enumerator,
  GAN_KERNELS_FOR_EACH_ACTIVATION(GAN_KERNELS_ACTIVATION_ENUMERATOR)
#undef GAN_KERNELS_ACTIVATION_ENUMERATOR
};

// What a bias_act kernel writes, with v = x * scale + b and y = clamp(act(v) * gain):
//   Forward    y
//   GradFromX  dL/dv = grad * gain * act'(v) * [|act(v) * gain| <= clamp]
//   GradFromY  dL/dv of a piecewise-linear act without clamp, from the sign of the saved output y
//   Grad2      upstream * grad * gain * act''(v) * [|act(v) * gain| <= clamp]  (d/dv of GradFromX)
enum class BiasActMode : int32_t { Forward, GradFromX, GradFromY, Grad2, Count };

// act'' = 0 wherever it exists: no Grad2 kernel; and only these can take the gradient from y.
GAN_KERNELS_HD constexpr bool piecewise_linear(Activation act) {
  switch (act) {
#define GAN_KERNELS_ACTIVATION_PIECEWISE(enumerator, name, alpha, gain, piecewise_linear) \
  case Activation::enumerator: return piecewise_linear;
    GAN_KERNELS_FOR_EACH_ACTIVATION(GAN_KERNELS_ACTIVATION_PIECEWISE)
#undef GAN_KERNELS_ACTIVATION_PIECEWISE
  }
  return false;
}

// The kernel that computes an activation: linear runs as lrelu with alpha 1 (see act_value), one
// kernel fewer to compile.
GAN_KERNELS_HD constexpr Activation kernel_activation(Activation act) {
  return act == Activation::Linear ? Activation::Lrelu : act;
}

template <Activation kAct> using ActTag = std::integral_constant<Activation, kAct>;

// Calls f(ActTag<kernel_activation(act)>{}).
template <typename F> GAN_KERNELS_HD auto with_activation(Activation act, F&& f) {
  switch (act) {
#define GAN_KERNELS_ACTIVATION_CASE(enumerator, name, alpha, gain, piecewise_linear) \
  case Activation::enumerator: return f(ActTag<kernel_activation(Activation::enumerator)>{});
    GAN_KERNELS_FOR_EACH_ACTIVATION(GAN_KERNELS_ACTIVATION_CASE)
#undef GAN_KERNELS_ACTIVATION_CASE
  }
  return f(ActTag<Activation::Lrelu>{});  // unreachable: every enumerator has its case
}

template <typename A> GAN_KERNELS_HD A sigmoid_of(A v) { return A(1) / (A(1) + ElementMath<A>::exp(A(0) - v)); }

// Linear runs as lrelu with alpha 1: same results, one kernel fewer to compile. Relu does not run
// as lrelu with alpha 0, whose -inf * 0 would make relu(-inf) NaN.
template <Activation kAct, typename A> GAN_KERNELS_HD A act_value(A v, A alpha) {
  using M = ElementMath<A>;
  if constexpr (kAct == Activation::Lrelu) {
    return M::select(v > A(0), v, v * alpha);
  } else if constexpr (kAct == Activation::Relu) {
    return M::select(v < A(0), A(0), v);  // keeps NaN and -0.0, as torch.relu
  } else if constexpr (kAct == Activation::Tanh) {
    return M::tanh(v);
  } else if constexpr (kAct == Activation::Sigmoid) {
    return sigmoid_of(v);
  } else if constexpr (kAct == Activation::Elu) {
    return M::select(v > A(0), v, M::expm1(v));
  } else if constexpr (kAct == Activation::Selu) {
    return M::select(v > A(0), A(kSeluScale) * v, A(kSeluScale * kSeluAlpha) * M::expm1(v));
  } else if constexpr (kAct == Activation::Softplus) {
    return M::select(v > A(kSoftplusThreshold), v, M::log1p(M::exp(v)));
  } else {
    static_assert(kAct == Activation::Swish, "linear runs as lrelu");
    return v * sigmoid_of(v);
  }
}

// Branches at 0 follow PyTorch's backward formulas (the reference is differentiated by autograd).
// Its first derivatives of elu, selu and softplus take the lower piece at the kink (v <= 0, v <=
// threshold), its second derivatives the upper one (a mask v < 0, v < threshold): act''(0) is 0.
// At a NaN v every derivative is NaN, the piecewise-linear ones included (torch.relu's backward
// would pass the gradient there): a diverged sample must stay visible in a gradient penalty.
template <Activation kAct, typename A> GAN_KERNELS_HD A act_first_derivative(A v, A alpha) {
  using M = ElementMath<A>;
  if constexpr (kAct == Activation::Lrelu) {
    return M::select(v > A(0), A(1), M::select(v <= A(0), alpha, v));
  } else if constexpr (kAct == Activation::Relu) {
    return M::select(v > A(0), A(1), M::select(v <= A(0), A(0), v));
  } else if constexpr (kAct == Activation::Tanh) {
    const A t = M::tanh(v);
    return A(1) - t * t;
  } else if constexpr (kAct == Activation::Sigmoid) {
    const A s = sigmoid_of(v);
    return s * (A(1) - s);
  } else if constexpr (kAct == Activation::Elu) {
    return M::select(v > A(0), A(1), M::exp(v));
  } else if constexpr (kAct == Activation::Selu) {
    return M::select(v > A(0), A(kSeluScale), A(kSeluScale * kSeluAlpha) * M::exp(v));
  } else if constexpr (kAct == Activation::Softplus) {
    return M::select(v > A(kSoftplusThreshold), A(1), sigmoid_of(v));
  } else {
    static_assert(kAct == Activation::Swish, "linear runs as lrelu");
    const A s = sigmoid_of(v);
    return s * (A(1) + v * (A(1) - s));
  }
}

// Only the smooth activations have one; the piecewise-linear ones have act'' = 0 and no Grad2 kernel.
template <Activation kAct, typename A> GAN_KERNELS_HD A act_second_derivative(A v) {
  using M = ElementMath<A>;
  if constexpr (kAct == Activation::Tanh) {
    const A t = M::tanh(v);
    return A(-2) * t * (A(1) - t * t);
  } else if constexpr (kAct == Activation::Sigmoid) {
    const A s = sigmoid_of(v);
    return s * (A(1) - s) * (A(1) - A(2) * s);
  } else if constexpr (kAct == Activation::Elu) {
    return M::select(v >= A(0), A(0), M::exp(v));
  } else if constexpr (kAct == Activation::Selu) {
    return M::select(v >= A(0), A(0), A(kSeluScale * kSeluAlpha) * M::exp(v));
  } else if constexpr (kAct == Activation::Softplus) {
    const A s = sigmoid_of(v);
    return M::select(v >= A(kSoftplusThreshold), A(0), s * (A(1) - s));
  } else {
    static_assert(kAct == Activation::Swish, "the piecewise-linear acts have no second derivative");
    const A s = sigmoid_of(v);
    return s * (A(1) - s) * (A(2) + v * (A(1) - A(2) * s));
  }
}

// The per-element scalars of every mode, in the accumulator type A (broadcast, for vectors).
template <typename A> struct BiasActScalars {
  A alpha;
  A gain;
  A clamp;  // < 0: no clamp
  A scale;
};

// One output element of `kMode` from the saved tensor's element `r` (x, or y for GradFromY), the
// bias `b` of its channel, and the incoming gradients g1 (grad; upstream in Grad2) and g2 (grad in
// Grad2). `clamped` and `gain_positive` restate s.clamp >= 0 and s.gain > 0 as plain bools.
template <Activation kAct, BiasActMode kMode, typename A>
GAN_KERNELS_HD A bias_act_element(A r, A b, A g1, A g2, const BiasActScalars<A>& s, bool clamped, bool gain_positive) {
  using M = ElementMath<A>;
  if constexpr (kMode == BiasActMode::GradFromY) {
    // y = act(v) * gain of a piecewise-linear act with alpha >= 0: v > 0 exactly when y has gain's
    // sign, v <= 0 when it has the other sign or is 0, and v is NaN when y is (NaN derivative).
    const auto positive = gain_positive ? r > A(0) : r < A(0);
    const auto not_positive = gain_positive ? r <= A(0) : r >= A(0);
    const A slope_not_positive = kAct == Activation::Relu ? A(0) : s.alpha;
    return g1 * s.gain * M::select(positive, A(1), M::select(not_positive, slope_not_positive, r));
  } else {
    const A v = r * s.scale + b;
    const A y = act_value<kAct>(v, s.alpha) * s.gain;
    const A neg_clamp = A(-1) * s.clamp;  // -0.0 for clamp 0, as torch.clamp returns
    if constexpr (kMode == BiasActMode::Forward) {
      // Written so that NaN propagates, as torch.clamp does.
      return clamped ? M::select(y < neg_clamp, neg_clamp, M::select(y > s.clamp, s.clamp, y)) : y;
    } else {
      // torch.clamp's gradient passes where -clamp <= y <= clamp, bounds included. It is zeroed
      // before the activation's derivative multiplies it, so that a NaN derivative (at a NaN v, or
      // an infinite one for swish) still gives NaN.
      const A g = clamped ? M::select(M::both(y >= neg_clamp, y <= s.clamp), g1, A(0)) : g1;
      if constexpr (kMode == BiasActMode::GradFromX) {
        return g * s.gain * act_first_derivative<kAct>(v, s.alpha);
      } else {
        return g * g2 * s.gain * act_second_derivative<kAct>(v);
      }
    }
  }
}

// One bias_act launch, torch-free: the CUDA launcher takes it whole, the CPU kernels a range of it.
// All element tensors are dense with the same strides; element i (in memory order) belongs to
// channel (i / inner) % channels (the ChannelView of the torch glue).
struct BiasActParams {
  void* out;         // y, dL/dv or the Grad2 term, by mode
  const void* ref;   // x; y in GradFromY
  const void* g1;    // dL/dy; upstream in Grad2; nullptr in Forward
  const void* g2;    // dL/dy in Grad2, else nullptr
  const void* bias;  // [channels], or nullptr
  int64_t numel;
  int64_t channels;
  int64_t inner;
  BiasActScalars<double> scalars;  // clamp < 0: none; alpha 1 for linear, which runs as lrelu
  Activation act;
  BiasActMode mode;
  DType dtype;
};

}  // namespace gan_kernels
