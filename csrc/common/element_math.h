// The primitives the shared formulas (common/bias_act.h, common/pixel_norm.h) call on their element
// type A: a float or double in the CUDA kernels and the CPU kernels' scalar paths, a SIMD vector of
// them in the CPU kernels, which specialise ElementMath for their vectors (cpu/vec_step.h). Each
// formula is then written once for both. Free of torch and of the CUDA runtime.
#pragma once

#include <cmath>

#include "common/host_device.h"

namespace gan_kernels {

// A comparison of two A is a bool for scalars and a lane mask for vectors; select takes either.
template <typename A> struct ElementMath {
  template <typename T> static GAN_KERNELS_HD T select(bool condition, T if_true, T if_false) {
    return condition ? if_true : if_false;
  }
  static GAN_KERNELS_HD bool both(bool a, bool b) { return a && b; }
  static GAN_KERNELS_HD A sqrt(A v) {
    using std::sqrt;
    return sqrt(v);
  }
  static GAN_KERNELS_HD A exp(A v) {
    using std::exp;
    return exp(v);
  }
  static GAN_KERNELS_HD A expm1(A v) {
    using std::expm1;
    return expm1(v);
  }
  static GAN_KERNELS_HD A log1p(A v) {
    using std::log1p;
    return log1p(v);
  }
  static GAN_KERNELS_HD A tanh(A v) {
    using std::tanh;
    return tanh(v);
  }
};

}  // namespace gan_kernels
