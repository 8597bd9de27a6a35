#include "cuda/common.cuh"
#include "cuda/gradient_penalty.h"

namespace gan_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ int64_t chunk_length(const GradientPenaltyParams& p, int64_t first) {
  return p.per_sample - first < p.chunk ? p.per_sample - first : p.chunk;
}

// Sum over the block in a fixed order (warp butterflies, then the warps in index order); the total is
// valid in thread 0. Ends with a barrier so the caller may call it again at once.
template <typename A> __device__ A block_sum(A v) {
  __shared__ A warp_sums[kWarps];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  A total = 0;
  if (threadIdx.x < 32) {
    total = threadIdx.x < kWarps ? warp_sums[threadIdx.x] : A(0);
    total = warp_sum(total);
  }
  __syncthreads();
  return total;
}

// A sample's sum of squares from its chunk sums, by one whole warp: lane l adds chunks l, l + 32, ...
// (independent loads, so the latency is paid once), then a fixed butterfly: the same order on every run.
template <typename A> __device__ A warp_sample_sum(const A* partials, int64_t sample, int64_t chunks) {
  A sum = 0;
  for (int64_t c = threadIdx.x % 32; c < chunks; c += 32) sum += partials[sample * chunks + c];
  return warp_sum(sum);
}

// Pass 1 of the forward: one block per (sample, chunk) task writes the chunk's sum of squares. V-wide loads; V divides per_sample and the chunk (see the launcher).
template <typename T, int V> __global__ void __launch_bounds__(kThreads) chunk_sum_squares(GradientPenaltyParams p) {
  using A = acc_t<T>;
  using VecT = Vec<T, V>;
  const int64_t chunks = gradient_penalty_chunks(p);
  const int64_t tasks = p.samples * chunks;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t first = (task % chunks) * p.chunk;
    const int64_t len = chunk_length(p, first);
    const T* x = static_cast<const T*>(p.g) + (task / chunks) * p.per_sample + first;
    A sum = 0;
#pragma unroll 4
    for (int64_t i = int64_t(threadIdx.x) * V; i < len; i += int64_t(kThreads) * V) {
      const VecT xv = load_vec<T, V>(x + i);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const A a = to_acc(xv.v[j]);
        sum += a * a;
      }
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) static_cast<A*>(p.partials)[task] = sum;
  }
}

// Pass 2 of the forward: a warp per sample adds its chunk sums, and keeps the sum for the backward.
template <typename T> __global__ void __launch_bounds__(kThreads) finish_penalty(GradientPenaltyParams p) {
  using A = acc_t<T>;
  const int64_t chunks = gradient_penalty_chunks(p);
  const A center = A(p.center);
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t s = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; s < p.samples; s += warps) {
    const A sum = warp_sample_sum(static_cast<const A*>(p.partials), s, chunks);
    if (threadIdx.x % 32 == 0) {
      static_cast<A*>(p.sum_squares)[s] = sum;
      static_cast<A*>(p.out)[s] = gradient_penalty_value(sum, center);
    }
  }
}

// The backward: dL/dg = scale_i * g in one pass, one block per (sample, chunk) task. Each thread
// forms the sample's scale from the forward's sum of squares (the same two addresses across the
// block: broadcast loads, no barrier).
template <typename T, int V> __global__ void __launch_bounds__(kThreads) scale_samples(GradientPenaltyParams p) {
  using A = acc_t<T>;
  using VecT = Vec<T, V>;
  const int64_t chunks = gradient_penalty_chunks(p);
  const int64_t tasks = p.samples * chunks;
  const A center = A(p.center);
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t sample = task / chunks;
    const A scale = gradient_penalty_scale(static_cast<const A*>(p.sum_squares)[sample],
                                           static_cast<const A*>(p.grad)[sample], center);
    const int64_t first = (task % chunks) * p.chunk;
    const int64_t len = chunk_length(p, first);
    const int64_t base = sample * p.per_sample + first;
    const T* x = static_cast<const T*>(p.g) + base;
    T* out = static_cast<T*>(p.out) + base;
#pragma unroll 4
    for (int64_t i = int64_t(threadIdx.x) * V; i < len; i += int64_t(kThreads) * V) {
      const VecT xv = load_vec<T, V>(x + i);
      VecT ov;
#pragma unroll
      for (int j = 0; j < V; ++j) ov.v[j] = from_acc<T>(scale * to_acc(xv.v[j]));
      store_vec(out + i, ov);
    }
  }
}

template <typename T, int V> cudaError_t launch_typed(const GradientPenaltyParams& p, cudaStream_t stream) {
  const int64_t blocks = std::min(p.samples * gradient_penalty_chunks(p), kMaxBlocks);
  if (p.mode == GradientPenaltyMode::Backward) {
    scale_samples<T, V><<<blocks, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  }
  chunk_sum_squares<T, V><<<blocks, kThreads, 0, stream>>>(p);
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return error;
  finish_penalty<T><<<std::min(ceil_div(p.samples, kWarps), kMaxBlocks), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_gradient_penalty(const GradientPenaltyParams& p, cudaStream_t stream) {
  if (p.samples == 0 || p.per_sample == 0) return cudaSuccess;
  return dispatch_dtype<CudaElements>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    // V divides per_sample and the chunk, so chunks stay aligned.
    const bool vectorised = p.per_sample % V == 0 && p.chunk % V == 0 && aligned_to(p.g, 16) && aligned_to(p.out, 16);
    return vectorised ? launch_typed<T, V>(p, stream) : launch_typed<T, 1>(p, stream);
  });
}

}  // namespace gan_kernels
