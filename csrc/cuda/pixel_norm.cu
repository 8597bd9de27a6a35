#include "cuda/common.cuh"
#include "cuda/pixel_norm.h"
#include "cuda/pixel_norm_tiles.h"

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
      const VecT xv = load_vec<T, V>(x + c);
      VecT gv{};
      if (kBackward) gv = load_vec<T, V>(g + c);
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
      const VecT xv = load_vec<T, V>(x + c);
      VecT gv{};
      if (kBackward) gv = load_vec<T, V>(g + c);
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

// Static shared memory of pixel_norm_tiles: the partial sums of sum(x^2), and in the backward of
// sum(g x). The launcher subtracts it from the 48 KiB before sizing the cache.
template <typename T, bool kBackward> __host__ __device__ constexpr size_t tile_static_shared_bytes() {
  return size_t(kBackward ? 2 : 1) * kPixelNormPartials<sizeof(T)> * sizeof(acc_t<T>);
}

// inner > 1 (NCHW): tiles of up to 128 bytes of inner positions across all channels (geometry and
// partition in cuda/pixel_norm_tiles.h). Each thread sums its V positions over its channels, the
// rows of a tile meet by xor shuffles and then, across warps, in shared memory, all in a fixed order.
template <typename T, int V, bool kBackward, bool kCached> __global__ void __launch_bounds__(kThreads)
    pixel_norm_tiles(PixelNormParams p, PixelNormTiles t) {
  using A = acc_t<T>;
  using VecT = Vec<T, V>;
  constexpr int kPartials = kPixelNormPartials<sizeof(T)>;
  static_assert(kThreads == kPixelNormTileThreads, "the geometry is sized for this block");
  extern __shared__ __align__(16) unsigned char tile_cache[];
  __shared__ __align__(16) A partials[kBackward ? 2 : 1][kPartials];  // [0]: sum(x^2), [1]: sum(g x)
  static_assert(sizeof(partials) == tile_static_shared_bytes<T, kBackward>(), "the launcher's budget is off");

  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ g = static_cast<const T*>(p.grad);
  T* __restrict__ out = static_cast<T*>(p.out);
  const int64_t channels = p.channels;
  const int64_t inner = p.inner;
  const PixelNormTileThread th = pixel_norm_tile_thread(t, threadIdx.x);
  const int rows_per_warp = pixel_norm_rows_per_warp(t);
  const int groups = pixel_norm_row_groups(t);
  // The cache holds the slot's tiles channel-major, t.lanes vectors per channel; it is under 48 KiB
  // (when used), so int indexes it. This thread's vector of its first channel, and the step to its next:
  const int cache_first = (th.slot * int(channels) + th.row) * t.lanes + th.lane;
  const int cache_step = t.rows * t.lanes;
  VecT* cache_x = reinterpret_cast<VecT*>(tile_cache);
  VecT* cache_g = cache_x + t.slots * int(channels) * t.lanes;
  const int64_t step = t.rows * inner;  // between a thread's channels in the tensors

  for (int64_t block_tile = blockIdx.x; block_tile < t.block_tiles; block_tile += gridDim.x) {
    const int64_t start = pixel_norm_tile_start(t, th, block_tile, channels, inner);
    A sum_xx[V] = {};
    A sum_gx[V] = {};
    const int64_t first = start + th.row * inner;
    if (start >= 0) {
      int cached_at = cache_first;
      // Unrolled so that several loads are in flight per thread (fp16/bf16 had one per iteration without).
#pragma unroll 4
      for (int64_t c = th.row, at = first; c < channels; c += t.rows, at += step, cached_at += cache_step) {
        const VecT xv = load_vec<T, V>(x + at);
        VecT gv{};
        if (kBackward) gv = load_vec<T, V>(g + at);
        if (kCached) {
          cache_x[cached_at] = xv;
          if (kBackward) cache_g[cached_at] = gv;
        }
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const A xa = to_acc(xv.v[j]);
          sum_xx[j] += xa * xa;
          if (kBackward) sum_gx[j] += to_acc(gv.v[j]) * xa;
        }
      }
    }
    // Every thread takes part, those past the tensor with zeros: the shuffles need the whole warp.
    for (int offset = t.lanes; offset < t.lanes * rows_per_warp; offset *= 2) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        sum_xx[j] += __shfl_xor_sync(0xffffffffu, sum_xx[j], offset);
        if (kBackward) sum_gx[j] += __shfl_xor_sync(0xffffffffu, sum_gx[j], offset);
      }
    }
    if (groups > 1) {  // the same for the whole block
      if (th.row % rows_per_warp == 0) {
        const int at = pixel_norm_partial_index(t, th, th.row / rows_per_warp);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          partials[0][at + j] = sum_xx[j];
          if (kBackward) partials[kBackward ? 1 : 0][at + j] = sum_gx[j];
        }
      }
      __syncthreads();
#pragma unroll
      for (int j = 0; j < V; ++j) {
        sum_xx[j] = 0;
        sum_gx[j] = 0;
      }
      for (int group = 0; group < groups; ++group) {
        const int at = pixel_norm_partial_index(t, th, group);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          sum_xx[j] += partials[0][at + j];
          if (kBackward) sum_gx[j] += partials[kBackward ? 1 : 0][at + j];
        }
      }
      __syncthreads();  // the next block tile rewrites the partials
    }
    PixelNormScales<A> s[V];
#pragma unroll
    for (int j = 0; j < V; ++j) s[j] = pixel_norm_scales(sum_xx[j], sum_gx[j], channels, A(p.eps));
    if (start >= 0) {
      // Each thread reads back only the cache entries it wrote itself: no barrier needed here.
      int cached_at = cache_first;
      for (int64_t c = th.row, at = first; c < channels; c += t.rows, at += step, cached_at += cache_step) {
        const VecT xv = kCached ? cache_x[cached_at] : load_vec<T, V>(x + at);
        VecT gv{};
        if (kBackward) gv = kCached ? cache_g[cached_at] : load_vec<T, V>(g + at);
        VecT ov;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          ov.v[j] = from_acc<T>(pixel_norm_apply<A, kBackward ? PixelNormMode::Backward : PixelNormMode::Forward>(
              to_acc(xv.v[j]), to_acc(gv.v[j]), s[j]));
        }
        store_vec(out + at, ov);
      }
    }
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
    constexpr int V = 16 / sizeof(T);
    const bool vectorised = p.inner % V == 0 && aligned_to(p.x, 16) && aligned_to(p.out, 16) && aligned_to(p.grad, 16);
    const PixelNormTiles t =
        pixel_norm_tiles_geometry(p.outer, p.channels, p.inner, sizeof(T), vectorised ? V : 1, kBackward ? 2 : 1,
                                  kSharedBytesPerBlock - tile_static_shared_bytes<T, kBackward>());
    const int64_t blocks = std::min(t.block_tiles, kMaxBlocks);
    auto launch = [&](auto kernel) { kernel<<<blocks, kThreads, t.cache_bytes, stream>>>(p, t); };
    if (vectorised) {
      t.cached ? launch(pixel_norm_tiles<T, V, kBackward, true>) : launch(pixel_norm_tiles<T, V, kBackward, false>);
    } else {
      t.cached ? launch(pixel_norm_tiles<T, 1, kBackward, true>) : launch(pixel_norm_tiles<T, 1, kBackward, false>);
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
