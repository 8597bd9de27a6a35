// The activations of bias_act and their first and second derivatives, shared by the CPU and CUDA
// kernels so both compute the same formulas. Free of torch and of the CUDA runtime: the CPU build
// includes it without a CUDA toolkit.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GAN_KERNELS_HD __host__ __device__ __forceinline__
#else
#define GAN_KERNELS_HD inline
#endif

namespace gan_kernels {

// Order and names as in StyleGAN's bias_act.activation_funcs.
enum class Activation : int32_t { Linear, Relu, Lrelu, Tanh, Sigmoid, Elu, Selu, Softplus, Swish };

// What a bias_act kernel writes, with v = x * scale + b and y = clamp(act(v) * gain):
//   Forward    y
//   GradFromX  dL/dv = grad * gain * act'(v) * [|act(v) * gain| <= clamp]
//   GradFromY  dL/dv of a piecewise-linear act without clamp, from the sign of the saved output y
//   Grad2      upstream * grad * gain * act''(v) * [|act(v) * gain| <= clamp]  (d/dv of GradFromX)
enum class BiasActMode : int32_t { Forward, GradFromX, GradFromY, Grad2 };

// torch.nn.functional.selu's constants.
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSeluScale = 1.0507009873554804934193349852946;
// torch.nn.functional.softplus's default threshold: above it softplus(v) = v exactly.
constexpr double kSoftplusThreshold = 20.0;

template <typename A> GAN_KERNELS_HD A sigmoid_of(A v) {
  using std::exp;
  return A(1) / (A(1) + exp(-v));
}

// Linear and relu run as lrelu with alpha 1 and 0: same results, one kernel fewer to compile.
template <Activation kAct, typename A> GAN_KERNELS_HD A act_value(A v, A alpha) {
  using std::exp;
  using std::expm1;
  using std::log1p;
  using std::tanh;
  if constexpr (kAct == Activation::Lrelu) {
    return v > A(0) ? v : v * alpha;
  } else if constexpr (kAct == Activation::Tanh) {
    return tanh(v);
  } else if constexpr (kAct == Activation::Sigmoid) {
    return sigmoid_of(v);
  } else if constexpr (kAct == Activation::Elu) {
    return v > A(0) ? v : expm1(v);
  } else if constexpr (kAct == Activation::Selu) {
    return v > A(0) ? A(kSeluScale) * v : A(kSeluScale * kSeluAlpha) * expm1(v);
  } else if constexpr (kAct == Activation::Softplus) {
    return v > A(kSoftplusThreshold) ? v : log1p(exp(v));
  } else {
    static_assert(kAct == Activation::Swish, "linear and relu run as lrelu");
    return v * sigmoid_of(v);
  }
}

// Branches at 0 follow PyTorch's backward formulas (the reference is differentiated by autograd).
template <Activation kAct, typename A> GAN_KERNELS_HD A act_first_derivative(A v, A alpha) {
  using std::exp;
  using std::tanh;
  if constexpr (kAct == Activation::Lrelu) {
    return v > A(0) ? A(1) : alpha;
  } else if constexpr (kAct == Activation::Tanh) {
    const A t = tanh(v);
    return A(1) - t * t;
  } else if constexpr (kAct == Activation::Sigmoid) {
    const A s = sigmoid_of(v);
    return s * (A(1) - s);
  } else if constexpr (kAct == Activation::Elu) {
    return v > A(0) ? A(1) : exp(v);
  } else if constexpr (kAct == Activation::Selu) {
    return v > A(0) ? A(kSeluScale) : A(kSeluScale * kSeluAlpha) * exp(v);
  } else if constexpr (kAct == Activation::Softplus) {
    return v > A(kSoftplusThreshold) ? A(1) : sigmoid_of(v);
  } else {
    static_assert(kAct == Activation::Swish, "linear and relu run as lrelu");
    const A s = sigmoid_of(v);
    return s * (A(1) + v * (A(1) - s));
  }
}

// Only the smooth activations have one; the piecewise-linear ones have act'' = 0 and no Grad2 kernel.
template <Activation kAct, typename A> GAN_KERNELS_HD A act_second_derivative(A v, A alpha) {
  using std::exp;
  using std::tanh;
  (void)alpha;
  if constexpr (kAct == Activation::Tanh) {
    const A t = tanh(v);
    return A(-2) * t * (A(1) - t * t);
  } else if constexpr (kAct == Activation::Sigmoid) {
    const A s = sigmoid_of(v);
    return s * (A(1) - s) * (A(1) - A(2) * s);
  } else if constexpr (kAct == Activation::Elu) {
    return v > A(0) ? A(0) : exp(v);
  } else if constexpr (kAct == Activation::Selu) {
    return v > A(0) ? A(0) : A(kSeluScale * kSeluAlpha) * exp(v);
  } else if constexpr (kAct == Activation::Softplus) {
    const A s = sigmoid_of(v);
    return v > A(kSoftplusThreshold) ? A(0) : s * (A(1) - s);
  } else {
    static_assert(kAct == Activation::Swish, "the piecewise-linear acts have no second derivative");
    const A s = sigmoid_of(v);
    return s * (A(1) - s) * (A(2) + v * (A(1) - A(2) * s));
  }
}

// torch.clamp's gradient passes where -clamp <= value <= clamp, bounds included.
template <typename A> GAN_KERNELS_HD bool inside_clamp(A value, A clamp) { return value >= -clamp && value <= clamp; }

template <typename A> GAN_KERNELS_HD A clamp_to(A value, A clamp) {
  // Written so that NaN propagates, as torch.clamp does.
  return value < -clamp ? -clamp : (value > clamp ? clamp : value);
}

// The per-element scalars of every mode, in the accumulator type A.
template <typename A> struct BiasActScalars {
  A alpha;
  A gain;
  A clamp;  // < 0: no clamp
  A scale;
};

// One output element of `kMode` from the saved tensor's element `r` (x, or y for GradFromY), the
// bias `b` of its channel, and the incoming gradients g1 (grad; upstream in Grad2) and g2 (grad in Grad2).
template <Activation kAct, BiasActMode kMode, typename A>
GAN_KERNELS_HD A bias_act_element(A r, A b, A g1, A g2, const BiasActScalars<A>& s) {
  if constexpr (kMode == BiasActMode::GradFromY) {
    // y = act(v) * gain of a piecewise-linear act with alpha >= 0: v > 0 exactly when y has gain's sign.
    const bool positive = s.gain > A(0) ? r > A(0) : r < A(0);
    return g1 * s.gain * (positive ? A(1) : s.alpha);
  } else {
    const A v = r * s.scale + b;
    const bool clamped = s.clamp >= A(0);
    if constexpr (kMode == BiasActMode::Forward) {
      const A y = act_value<kAct>(v, s.alpha) * s.gain;
      return clamped ? clamp_to(y, s.clamp) : y;
    } else {
      if (clamped && !inside_clamp(act_value<kAct>(v, s.alpha) * s.gain, s.clamp)) return A(0);
      if constexpr (kMode == BiasActMode::GradFromX) {
        return g1 * s.gain * act_first_derivative<kAct>(v, s.alpha);
      } else {
        return g1 * g2 * s.gain * act_second_derivative<kAct>(v, s.alpha);
      }
    }
  }
}

}  // namespace gan_kernels
