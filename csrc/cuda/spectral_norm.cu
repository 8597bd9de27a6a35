#include "cuda/common.cuh"
#include "cuda/spectral_norm.h"

namespace gan_kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

// Sum over the block in a fixed order (warp shuffles, then warp totals in warp order): deterministic.
// Every thread gets the total. `scratch` holds kWarps values.
template <typename A> __device__ A block_sum(A value, A* scratch) {
  value = warp_sum(value);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  A total = 0;
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  return total;
}

template <typename T> struct LayerRef {
  using A = acc_t<T>;
  const T* w;
  int64_t outer;
  int64_t rows;
  int64_t inner;

  __device__ explicit LayerRef(const SpectralLayerView& l)
      : w(static_cast<const T*>(l.weight)), outer(l.outer), rows(l.rows), inner(l.inner) {}

  __device__ int64_t cols() const { return outer * inner; }

  // out[r] = sum_c W[r, c] x[c]: a warp per row, lanes along the contiguous inner positions.
  __device__ void mv(const T* x, A* out) const {
    const int lane = threadIdx.x % 32;
    for (int64_t r = threadIdx.x / 32; r < rows; r += kWarps) {
      A acc = 0;
      for (int64_t o = 0; o < outer; ++o) {
        const T* wr = w + (o * rows + r) * inner;
        const T* xo = x + o * inner;
        for (int64_t i = lane; i < inner; i += 32) acc += to_acc(wr[i]) * to_acc(xo[i]);
      }
      acc = warp_sum(acc);
      if (lane == 0) out[r] = acc;
    }
  }

  // out[c] = sum_r W[r, c] y[r]: a thread per column, neighbouring threads on neighbouring addresses.
  __device__ void mtv(const T* y, A* out) const {
    const int64_t n = cols();
    for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
      const int64_t o = c / inner;
      const int64_t i = c % inner;
      const T* wc = w + o * rows * inner + i;
      A acc = 0;
      for (int64_t r = 0; r < rows; ++r) acc += to_acc(wc[r * inner]) * to_acc(y[r]);
      out[c] = acc;
    }
  }
};

// dst = src / max(||src||, eps), as torch.nn.functional.normalize. Ends with a barrier so the
// block reads dst afterwards.
template <typename T, typename A> __device__ void normalize_into(T* dst, const A* src, int64_t n, A eps, A* scratch) {
  A sum_sq = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) sum_sq += src[k] * src[k];
  const A denom = max(sqrt(block_sum(sum_sq, scratch)), eps);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) dst[k] = from_acc<T>(src[k] / denom);
  __syncthreads();
}

template <typename T> __global__ void __launch_bounds__(kThreads) power_iteration_kernel(SpectralParams p) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarps];
  const SpectralLayerView& view = p.layers[blockIdx.x];
  const LayerRef<T> layer(view);
  T* u = static_cast<T*>(view.u);
  T* v = static_cast<T*>(view.v);
  A* wv = static_cast<A*>(p.workspace) + view.workspace_offset;
  A* wtu = wv + layer.rows;
  const A eps = A(p.eps);
  for (int64_t step = 0; step < p.n_power_iterations; ++step) {
    layer.mv(v, wv);
    __syncthreads();
    normalize_into(u, wv, layer.rows, eps, scratch);
    layer.mtv(u, wtu);
    __syncthreads();
    normalize_into(v, wtu, layer.cols(), eps, scratch);
  }
  layer.mv(v, wv);
  __syncthreads();
  A partial = 0;
  for (int64_t r = threadIdx.x; r < layer.rows; r += blockDim.x) partial += to_acc(u[r]) * wv[r];
  const A sigma = block_sum(partial, scratch);
  if (threadIdx.x == 0) static_cast<T*>(p.sigmas)[blockIdx.x] = from_acc<T>(sigma);
}

// The blocks of its grid row that layer blockIdx.y uses: a function of its own size (see the header).
__device__ int layer_blocks(const SpectralLayerView& view) {
  return spectral_normalize_blocks(view.outer * view.rows * view.inner);
}

// Backward, first pass: partials[layer * blocks_per_layer + block] = this block's share of <G, W>.
template <typename T> __global__ void __launch_bounds__(kThreads) grad_dot_kernel(SpectralParams p) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarps];
  const SpectralLayerView& view = p.layers[blockIdx.y];
  const int blocks = layer_blocks(view);
  if (int(blockIdx.x) >= blocks) return;  // uniform across the block: block_sum's barriers stay safe
  const T* w = static_cast<const T*>(view.weight);
  const T* g = static_cast<const T*>(view.grad);
  const int64_t numel = view.outer * view.rows * view.inner;
  const int64_t stride = int64_t(blocks) * blockDim.x;
  A partial = 0;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < numel; e += stride) {
    partial += to_acc(g[e]) * to_acc(w[e]);
  }
  const A total = block_sum(partial, scratch);
  if (threadIdx.x == 0) static_cast<A*>(p.workspace)[int64_t(blockIdx.y) * p.blocks_per_layer + blockIdx.x] = total;
}

// out = W / sigma, or in the backward (G - <G, W> / sigma u v^T) / sigma.
template <typename T> __global__ void __launch_bounds__(kThreads) normalize_kernel(SpectralParams p) {
  using A = acc_t<T>;
  const SpectralLayerView& view = p.layers[blockIdx.y];
  const T* w = static_cast<const T*>(view.weight);
  T* out = static_cast<T*>(view.out);
  const int blocks = layer_blocks(view);
  if (int(blockIdx.x) >= blocks) return;
  const A sigma = to_acc(static_cast<const T*>(p.sigmas)[blockIdx.y]);
  const int64_t numel = view.outer * view.rows * view.inner;
  const int64_t stride = int64_t(blocks) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p.mode == SpectralMode::Normalize) {
    for (int64_t e = first; e < numel; e += stride) out[e] = from_acc<T>(to_acc(w[e]) / sigma);
    return;
  }
  // Every block sums the same partials in the same order, so all agree on the coefficient.
  const A* partials = static_cast<const A*>(p.workspace) + int64_t(blockIdx.y) * p.blocks_per_layer;
  A dot = 0;
  for (int b = 0; b < blocks; ++b) dot += partials[b];
  const A k_uv = dot / (sigma * sigma);
  const T* g = static_cast<const T*>(view.grad);
  const T* u = static_cast<const T*>(view.u);
  const T* v = static_cast<const T*>(view.v);
  const int64_t rows_inner = view.rows * view.inner;
  for (int64_t e = first; e < numel; e += stride) {
    const int64_t o = e / rows_inner;
    const int64_t r = (e % rows_inner) / view.inner;
    const int64_t i = e % view.inner;
    out[e] = from_acc<T>(to_acc(g[e]) / sigma - k_uv * to_acc(u[r]) * to_acc(v[o * view.inner + i]));
  }
}

bool valid(const SpectralParams& p) { return p.count > 0 && p.count <= kMaxSpectralLayers; }

// Every layer's blocks fit in its grid row and workspace row.
bool covers_every_layer(const SpectralParams& p) {
  for (int l = 0; l < p.count; ++l) {
    const SpectralLayerView& view = p.layers[l];
    if (spectral_normalize_blocks(view.outer * view.rows * view.inner) > p.blocks_per_layer) return false;
  }
  return true;
}

cudaError_t launch_power_iteration(const SpectralParams& p, cudaStream_t stream) {
  return dispatch_dtype<CudaElements>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    power_iteration_kernel<T><<<p.count, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

cudaError_t launch_normalize(const SpectralParams& p, cudaStream_t stream) {
  if (!covers_every_layer(p)) return cudaErrorInvalidValue;
  const dim3 grid(p.blocks_per_layer, p.count);
  return dispatch_dtype<CudaElements>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (p.mode == SpectralMode::NormalizeBackward) {
      grad_dot_kernel<T><<<grid, kThreads, 0, stream>>>(p);
      const cudaError_t error = cudaGetLastError();
      if (error != cudaSuccess) return error;
    }
    normalize_kernel<T><<<grid, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t launch_spectral_norm(const SpectralParams& p, cudaStream_t stream) {
  if (p.count == 0) return cudaSuccess;
  if (!valid(p)) return cudaErrorInvalidValue;
  return p.mode == SpectralMode::PowerIteration ? launch_power_iteration(p, stream) : launch_normalize(p, stream);
}

}  // namespace gan_kernels
