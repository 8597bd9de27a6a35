// Minibatch discrimination (Salimans et al. 2016): the pairwise formulas the CPU and CUDA kernels
// share. Torch-free and free of CUDA headers: the host compiler builds them into the CPU kernel,
// nvcc into the device code.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/dtype.h"
#include "common/host_device.h"
#include "common/mode.h"

namespace gan_kernels {

// For M [N, B, C], each kernel b and each pair of samples i != j: d_c = M[i,b,c] - M[j,b,c],
// s_c = sign(d_c), e = exp(-sum_c |d_c|). With g = dL/do [N, B] and U = dL/d(dL/dM) [N, B, C]:
//   Forward          o[i]      =  sum_{j != i} e
//   Backward         dM[i, c]  = -sum_{j != i} (g_i + g_j) e s_c
//   DoubleBackward   t = sum_c s_c (U_ic - U_jc), the change of -sum_c |d_c| along U;
//                    dg[i]     = -sum_{j != i} e t            (the forward's derivative along U)
//                    dM[i, c]  =  sum_{j != i} (g_i + g_j) e t s_c
// (g_i + g_j) appears because e_ij = e_ji reaches both o_i and o_j. s_c has derivative 0, so the
// double backward's dM only differentiates e. Every sum runs over j in ascending order, skipping i.
enum class MinibatchDiscriminationMode { Forward, Backward, DoubleBackward, Count };

// Element strides of a [N, B, C] tensor; [N, B] tensors leave `dim` unused.
struct MinibatchDiscriminationStrides {
  int64_t sample;
  int64_t kernel;
  int64_t dim;
};

// Every tensor may have any strides, all of the same dtype. Pointers the mode does not use are nullptr.
struct MinibatchDiscriminationParams {
  void* scalar_out;      // [N, B]: o (forward) or dL/dgrad (double backward)
  void* vector_out;      // [N, B, C]: dL/dM (backward, double backward)
  const void* m;         // [N, B, C]
  const void* grad;      // [N, B]: dL/do (backward, double backward)
  const void* upstream;  // [N, B, C]: dL/d(dL/dM) (double backward)
  MinibatchDiscriminationStrides scalar_out_strides;
  MinibatchDiscriminationStrides vector_out_strides;
  MinibatchDiscriminationStrides m_strides;
  MinibatchDiscriminationStrides grad_strides;
  MinibatchDiscriminationStrides upstream_strides;
  int64_t samples;  // N
  int64_t kernels;  // B
  int64_t dims;     // C
  MinibatchDiscriminationMode mode;
  DType dtype;
};

// The derivative of |d|: sign(0) = 0 at a tie (as torch.abs's gradient), NaN stays NaN. Written
// without branches on the sign: the signs of pair differences are random, and a mispredicted branch
// per term made the CPU backward four times slower.
template <typename A> GAN_KERNELS_HD A tie_sign(A d) {
  const A sign = A(d > A(0)) - A(d < A(0));
  return d == d ? sign : d;
}

// c_b(i, j) from the L1 distance of the two rows.
template <typename A> GAN_KERNELS_HD A pair_similarity(A l1_distance) {
  using std::exp;
  return exp(-l1_distance);
}

// What the pair (i, j) adds to row i's scalar output (o, or dg) and the weight of its s_c in the
// vector output (dM), given e, t (DoubleBackward only) and g_i + g_j (the backwards only).
template <typename A> struct PairTerms {
  A scalar;
  A vector_weight;
};

template <MinibatchDiscriminationMode kMode, typename A>
GAN_KERNELS_HD PairTerms<A> pair_terms(A similarity, A t, A grad_sum) {
  if constexpr (kMode == MinibatchDiscriminationMode::Forward) {
    return {similarity, A(0)};
  } else if constexpr (kMode == MinibatchDiscriminationMode::Backward) {
    return {A(0), -grad_sum * similarity};
  } else {
    const A similarity_t = similarity * t;
    return {-similarity_t, grad_sum * similarity_t};
  }
}

}  // namespace gan_kernels
