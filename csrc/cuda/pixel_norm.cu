#include "cuda/common.cuh"
#include "cuda/pixel_norm.h"

namespace gan_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
// A block may use 48 KiB of shared memory, static and dynamic together, without an opt-in attribute
// on any architecture. Tiles whose channels fit in what the reduction's static arrays leave of it
// are kept in shared memory between the reduction and the write, so each element crosses DRAM once.
constexpr size_t kSharedBytesPerBlock = 48 * 1024;

// inner == 1 (channels_last, or the last dim): a warp per row of contiguous channels, V-wide loads.
template <typename T, int V, bool kBackward> __global__ void __launch_bounds__(kThreads)
    pixel_norm_rows(PixelNormParams p) {
  using A = acc_t<T>;
  using VecT = Vec<T, V>;
  const int lane = threadIdx.x % 32;
  const int64_t channels = p.channels;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; row < p.outer; row += warps) {
    const T* x = static_cast<const T*>(p.x) + row * channels;
    const T* g = kBackward ? static_cast<const T*>(p.grad) + row * channels : nullptr;
    T* out = static_cast<T*>(p.out) + row * channels;
    A sum_xx = 0;
    A sum_gx = 0;
    for (int64_t c = int64_t(lane) * V; c < channels; c += 32 * V) {
      const VecT xv = *reinterpret_cast<const VecT*>(x + c);
      VecT gv{};
      if (kBackward) gv = *reinterpret_cast<const VecT*>(g + c);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const A xa = to_acc(xv.v[j]);
        sum_xx += xa * xa;
        if (kBackward) sum_gx += to_acc(gv.v[j]) * xa;
      }
    }
    sum_xx = warp_sum(sum_xx);
    if (kBackward) sum_gx = warp_sum(sum_gx);
    const PixelNormScales<A> s = pixel_norm_scales(sum_xx, sum_gx, channels, A(p.eps));
    // The warp has just read this row, so the second read is served by L1, not DRAM.
    for (int64_t c = int64_t(lane) * V; c < channels; c += 32 * V) {
      const VecT xv = *reinterpret_cast<const VecT*>(x + c);
      VecT gv{};
      if (kBackward) gv = *reinterpret_cast<const VecT*>(g + c);
      VecT ov;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        ov.v[j] = from_acc<T>(pixel_norm_apply<A, kBackward ? PixelNormMode::Backward : PixelNormMode::Forward>(
            to_acc(xv.v[j]), kBackward ? to_acc(gv.v[j]) : A(0), s));
      }
      store_vec(out + c, ov);
    }
  }
}

// Static shared memory of pixel_norm_tiles: one accumulator per thread for sum(x^2), and in the
// backward one more for sum(g x). The launcher subtracts it from the 48 KiB before sizing the cache.
template <typename T, bool kBackward> __host__ __device__ constexpr size_t tile_static_shared_bytes() {
  return size_t(kBackward ? 2 : 1) * kThreads * sizeof(acc_t<T>);
}

// inner > 1 (NCHW): a block owns a tile of kTile neighbouring inner positions (one 32-byte sector
// per channel) across all channels; threads stride the channels and reduce through shared memory.
template <typename T, bool kBackward, bool kCached> __global__ void __launch_bounds__(kThreads)
    pixel_norm_tiles(PixelNormParams p) {
  using A = acc_t<T>;
  constexpr int kTile = 32 / sizeof(T);
  constexpr int kRows = kThreads / kTile;
  extern __shared__ __align__(16) unsigned char tile_cache[];
  T* cache_x = reinterpret_cast<T*>(tile_cache);
  T* cache_g = cache_x + p.channels * kTile;
  __shared__ A partials[kBackward ? 2 : 1][kRows][kTile];  // [0]: sum(x^2), [1]: sum(g x)
  static_assert(sizeof(partials) == tile_static_shared_bytes<T, kBackward>(), "the launcher's budget is off");

  const T* x = static_cast<const T*>(p.x);
  const T* g = static_cast<const T*>(p.grad);
  T* out = static_cast<T*>(p.out);
  const int tx = threadIdx.x % kTile;
  const int ty = threadIdx.x / kTile;
  const int64_t channels = p.channels;
  const int64_t inner = p.inner;
  const int64_t tiles_per_outer = (inner + kTile - 1) / kTile;
  const int64_t tiles = p.outer * tiles_per_outer;

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t o = tile / tiles_per_outer;
    const int64_t i = (tile % tiles_per_outer) * kTile + tx;
    const bool active = i < inner;
    const int64_t base = o * channels * inner + i;
    A sum_xx = 0;
    A sum_gx = 0;
    if (active) {
      for (int64_t c = ty; c < channels; c += kRows) {
        const T xv = x[base + c * inner];
        const T gv = kBackward ? g[base + c * inner] : T();
        if (kCached) {
          cache_x[c * kTile + tx] = xv;
          if (kBackward) cache_g[c * kTile + tx] = gv;
        }
        const A xa = to_acc(xv);
        sum_xx += xa * xa;
        if (kBackward) sum_gx += to_acc(gv) * xa;
      }
    }
    partials[0][ty][tx] = sum_xx;
    if constexpr (kBackward) partials[1][ty][tx] = sum_gx;
    __syncthreads();
    sum_xx = 0;
    sum_gx = 0;
#pragma unroll 8
    for (int r = 0; r < kRows; ++r) {
      sum_xx += partials[0][r][tx];
      if constexpr (kBackward) sum_gx += partials[1][r][tx];
    }
    const PixelNormScales<A> s = pixel_norm_scales(sum_xx, sum_gx, channels, A(p.eps));
    if (active) {
      // Each thread reads back only the cache entries it wrote itself: no barrier needed here.
      for (int64_t c = ty; c < channels; c += kRows) {
        const T xv = kCached ? cache_x[c * kTile + tx] : x[base + c * inner];
        const T gv = kBackward ? (kCached ? cache_g[c * kTile + tx] : g[base + c * inner]) : T();
        out[base + c * inner] =
            from_acc<T>(pixel_norm_apply<A, kBackward ? PixelNormMode::Backward : PixelNormMode::Forward>(
                to_acc(xv), to_acc(gv), s));
      }
    }
    __syncthreads();  // the next tile reuses partials
  }
}

template <typename T, bool kBackward> cudaError_t launch_typed(const PixelNormParams& p, cudaStream_t stream) {
  if (p.inner == 1) {
    constexpr int V = 16 / sizeof(T);
    const bool vectorised =
        p.channels % V == 0 && aligned_to(p.x, 16) && aligned_to(p.out, 16) && aligned_to(p.grad, 16);
    const int64_t blocks = std::min(ceil_div(p.outer, kWarpsPerBlock), kMaxBlocks);
    if (vectorised) {
      pixel_norm_rows<T, V, kBackward><<<blocks, kThreads, 0, stream>>>(p);
    } else {
      pixel_norm_rows<T, 1, kBackward><<<blocks, kThreads, 0, stream>>>(p);
    }
  } else {
    constexpr int kTile = 32 / sizeof(T);
    const int64_t blocks = std::min(p.outer * ceil_div(p.inner, kTile), kMaxBlocks);
    const size_t cache_bytes = size_t(p.channels) * kTile * sizeof(T) * (kBackward ? 2 : 1);
    if (cache_bytes <= kSharedBytesPerBlock - tile_static_shared_bytes<T, kBackward>()) {
      pixel_norm_tiles<T, kBackward, true><<<blocks, kThreads, cache_bytes, stream>>>(p);
    } else {
      pixel_norm_tiles<T, kBackward, false><<<blocks, kThreads, 0, stream>>>(p);
    }
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_pixel_norm(const PixelNormParams& p, cudaStream_t stream) {
  if (p.outer == 0 || p.channels == 0 || p.inner == 0) return cudaSuccess;
  return dispatch_dtype<CudaElements>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    return p.mode == PixelNormMode::Backward ? launch_typed<T, true>(p, stream) : launch_typed<T, false>(p, stream);
  });
}

}  // namespace gan_kernels
