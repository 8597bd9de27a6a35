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
  // The <cmath> functions, through `using std::name`: std's overloads, or those argument-dependent
  // lookup finds for A.
#define GAN_KERNELS_ELEMENT_FUNCTION(name) \
  static GAN_KERNELS_HD A name(A v) {      \
    using std::name;                       \
    return name(v);                        \
  }
  GAN_KERNELS_ELEMENT_FUNCTION(sqrt)
  GAN_KERNELS_ELEMENT_FUNCTION(exp)
  GAN_KERNELS_ELEMENT_FUNCTION(expm1)
  GAN_KERNELS_ELEMENT_FUNCTION(log1p)
  GAN_KERNELS_ELEMENT_FUNCTION(tanh)
#undef GAN_KERNELS_ELEMENT_FUNCTION
};

}  // namespace gan_kernels
