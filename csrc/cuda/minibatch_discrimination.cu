#include "common/minibatch_discrimination.h"
#include "cuda/common.cuh"
#include "cuda/minibatch_discrimination.h"

namespace gan_kernels {
namespace {

using Mode = MinibatchDiscriminationMode;

constexpr int kThreads = 128;
// dL/dM accumulators a thread keeps in registers. A row with more dims is split over several
// threads, each of which recomputes the pairs' distances (C of them per pair).
constexpr int kDimsPerThread = 8;

__host__ __device__ int64_t dim_chunks(Mode mode, int64_t dims) {
  // The forward has no per-dim output; the double backward's scalar output needs a thread even at C = 0.
  return mode == Mode::Forward || dims == 0 ? 1 : ceil_div(dims, kDimsPerThread);
}

// One thread per (row i, kernel b, chunk of dims); it sums over the partners j in ascending order
// (deterministic, no atomics) and writes its outputs. Consecutive threads take consecutive rows of
// one kernel, so a warp reads each partner's values at one address, a broadcast from L1. No pair
// tensor exists anywhere: a pair's distance is recomputed where it is needed.
template <typename T, Mode kMode> __global__ void __launch_bounds__(kThreads)
    pair_sums(MinibatchDiscriminationParams p) {
  using A = acc_t<T>;
  constexpr bool kHasGrad = kMode != Mode::Forward;
  constexpr bool kHasUpstream = kMode == Mode::DoubleBackward;
  constexpr bool kHasScalarOut = kMode != Mode::Backward;
  constexpr bool kHasVectorOut = kMode != Mode::Forward;
  const T* m = static_cast<const T*>(p.m);
  const T* grad = static_cast<const T*>(p.grad);
  const T* upstream = static_cast<const T*>(p.upstream);
  const MinibatchDiscriminationStrides ms = p.m_strides;
  const MinibatchDiscriminationStrides gs = p.grad_strides;
  const MinibatchDiscriminationStrides us = p.upstream_strides;
  const int64_t n = p.samples;
  const int64_t dims = p.dims;
  const int64_t rows = n * p.kernels;
  const int64_t tasks = rows * dim_chunks(kMode, dims);
  for (int64_t task = int64_t(blockIdx.x) * kThreads + threadIdx.x; task < tasks;
       task += int64_t(gridDim.x) * kThreads) {
    const int64_t sample_kernel = task / n;  // consecutive tasks: consecutive rows i of one kernel
    const int64_t i = task - sample_kernel * n;
    const int64_t chunk = sample_kernel / p.kernels;
    const int64_t b = sample_kernel - chunk * p.kernels;
    const int64_t first_dim = chunk * kDimsPerThread;
    const T* m_b = m + b * ms.kernel;
    const T* m_i = m_b + i * ms.sample;
    const T* u_b = kHasUpstream ? upstream + b * us.kernel : nullptr;
    const T* u_i = kHasUpstream ? u_b + i * us.sample : nullptr;
    const A g_i = kHasGrad ? to_acc(grad[i * gs.sample + b * gs.kernel]) : A(0);
    A own[kDimsPerThread];  // M[i, b, first_dim + k]
#pragma unroll
    for (int k = 0; k < kDimsPerThread; ++k) {
      own[k] = kHasVectorOut && first_dim + k < dims ? to_acc(m_i[(first_dim + k) * ms.dim]) : A(0);
    }
    A scalar_sum = 0;
    A vector_sums[kDimsPerThread] = {};
    for (int64_t j = 0; j < n; ++j) {
      if (j == i) continue;
      const T* m_j = m_b + j * ms.sample;
      const T* u_j = kHasUpstream ? u_b + j * us.sample : nullptr;
      A distance = 0;
      A t = 0;
      for (int64_t c = 0; c < dims; ++c) {
        const A d = to_acc(m_i[c * ms.dim]) - to_acc(m_j[c * ms.dim]);
        distance += fabs(d);
        if (kHasUpstream) t += tie_sign(d) * (to_acc(u_i[c * us.dim]) - to_acc(u_j[c * us.dim]));
      }
      const A g_sum = kHasGrad ? g_i + to_acc(grad[j * gs.sample + b * gs.kernel]) : A(0);
      const PairTerms<A> terms = pair_terms<kMode, A>(pair_similarity(distance), t, g_sum);
      if (kHasScalarOut) scalar_sum += terms.scalar;
      if (kHasVectorOut) {
#pragma unroll
        for (int k = 0; k < kDimsPerThread; ++k) {
          if (first_dim + k < dims) {
            vector_sums[k] += terms.vector_weight * tie_sign(own[k] - to_acc(m_j[(first_dim + k) * ms.dim]));
          }
        }
      }
    }
    if (kHasScalarOut && chunk == 0) {
      const MinibatchDiscriminationStrides os = p.scalar_out_strides;
      static_cast<T*>(p.scalar_out)[i * os.sample + b * os.kernel] = from_acc<T>(scalar_sum);
    }
    if (kHasVectorOut) {
      const MinibatchDiscriminationStrides os = p.vector_out_strides;
      T* out_i = static_cast<T*>(p.vector_out) + i * os.sample + b * os.kernel;
#pragma unroll
      for (int k = 0; k < kDimsPerThread; ++k) {
        if (first_dim + k < dims) out_i[(first_dim + k) * os.dim] = from_acc<T>(vector_sums[k]);
      }
    }
  }
}

template <typename T, Mode kMode>
cudaError_t launch_typed(const MinibatchDiscriminationParams& p, cudaStream_t stream) {
  const int64_t tasks = p.samples * p.kernels * dim_chunks(kMode, p.dims);
  const int64_t blocks = std::min(ceil_div(tasks, kThreads), kMaxBlocks);
  pair_sums<T, kMode><<<blocks, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_minibatch_discrimination(const MinibatchDiscriminationParams& p, cudaStream_t stream) {
  if (p.samples == 0 || p.kernels == 0) return cudaSuccess;
  return dispatch_dtype<CudaElements>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_mode(p.mode, [&](auto mode) { return launch_typed<T, decltype(mode)::value>(p, stream); });
  });
}

}  // namespace gan_kernels
