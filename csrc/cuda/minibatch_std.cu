#include "cuda/common.cuh"
#include "cuda/minibatch_std.h"

namespace gan_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Positions (each read G times) per block of the main pass: 2048 gives ~1000 blocks at
// [64, 512, 16, 16], enough to fill an H100 while keeping the per-tile partials few.
constexpr int64_t kTilePositions = 2048;

using Mode = MinibatchStdMode;
constexpr double kEps = kMinibatchStdEps;

// The shared block layout plus this kernel's split of a block's rows into tiles.
struct Layout : MinibatchStdLayout {
  int64_t rows_per_tile;
  int64_t tiles_per_feature;
};

Layout make_layout(const MinibatchStdParams& p) {
  Layout l{minibatch_std_layout(p), 0, 0};
  l.rows_per_tile = std::max<int64_t>(1, kTilePositions / std::max<int64_t>(l.cols, 1));
  l.tiles_per_feature = ceil_div(l.rows, l.rows_per_tile);
  return l;
}

// The workspace holds the coefficients a (one per (group, feature)), then the per-tile partials.
template <typename A> __host__ __device__ A* coefs_of(const MinibatchStdParams& p) {
  return static_cast<A*>(p.workspace);
}
template <typename A> __host__ __device__ A* partials_of(const MinibatchStdParams& p) {
  return static_cast<A*>(p.workspace) + p.groups * p.features;
}

// Sum over the block, in a fixed order (deterministic); the result is valid in thread 0.
// Starts and ends with the scratch free, so callers may loop.
template <typename A> __device__ A block_sum(A v, A* scratch) {
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kWarps ? scratch[threadIdx.x] : A(0);
    v = warp_sum(v);
  }
  __syncthreads();
  return v;
}

// One block per tile of rows of one (group, feature) block; each thread owns positions of the
// tile and loops over the G members (see Mode). The forward and the double backward reduce the
// tile's sum(s) or sum(u d / s) into its partial. Reads of x after the first hit the cache lines
// the first read brought in, so x crosses DRAM once.
template <typename T, Mode kMode> __global__ void __launch_bounds__(kThreads)
    group_positions(MinibatchStdParams p, Layout l) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarps];
  const T* x = static_cast<const T*>(p.x);
  const T* grad = static_cast<const T*>(p.grad);
  const T* upstream = static_cast<const T*>(p.upstream);
  T* y_out = static_cast<T*>(p.y_out);
  T* x_out = static_cast<T*>(p.x_out);
  const int64_t G = p.group_size;
  const int64_t M = p.groups;
  const int64_t tiles = M * p.features * l.tiles_per_feature;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t group_feature = tile / l.tiles_per_feature;
    const int64_t row0 = (tile % l.tiles_per_feature) * l.rows_per_tile;
    const int64_t f = group_feature % p.features;
    const int64_t m = group_feature / p.features;
    const int64_t positions = min(l.rows_per_tile, l.rows - row0) * l.cols;
    const A coef = kMode == Mode::Forward ? A(0) : coefs_of<A>(p)[group_feature];
    A tile_sum = 0;
    for (int64_t i = threadIdx.x; i < positions; i += kThreads) {
      const int64_t row = row0 + i / l.cols;
      const int64_t col = i % l.cols;
      const int64_t x_at = f * l.feature_stride + row * l.x_row_stride + col;
      const int64_t y_at = f * l.feature_stride + row * l.y_row_stride + col;
      A mean = 0;
      for (int64_t g = 0; g < G; ++g) {
        const int64_t n = g * M + m;
        const T v = x[n * l.x_sample_stride + x_at];
        if (kMode == Mode::Forward) y_out[n * l.y_sample_stride + y_at] = v;
        mean += to_acc(v);
      }
      mean /= A(G);
      A var = 0;
      A d_mean = 0;  // 0 but for the rounding of mean, which the gradients remove
      for (int64_t g = 0; g < G; ++g) {
        const A d = to_acc(x[(g * M + m) * l.x_sample_stride + x_at]) - mean;
        var += d * d;
        d_mean += d;
      }
      d_mean /= A(G);
      // The gradients' d, centred again as autograd's chain through x - mean(x) centres it.
      auto centred = [&](int64_t n) { return (to_acc(x[n * l.x_sample_stride + x_at]) - mean) - d_mean; };
      const A std = sqrt(var / A(G) + A(kEps));
      const A inv_std = A(1) / std;
      if (kMode == Mode::Forward) tile_sum += std;
      if (kMode == Mode::Backward) {
        for (int64_t g = 0; g < G; ++g) {
          const int64_t n = g * M + m;
          x_out[n * l.x_sample_stride + x_at] =
              from_acc<T>(to_acc(grad[n * l.y_sample_stride + y_at]) + coef * inv_std * centred(n));
        }
      }
      if (kMode == Mode::DoubleBackward) {
        A u_mean = 0;
        A u_dot_d = 0;
        for (int64_t g = 0; g < G; ++g) {
          const int64_t n = g * M + m;
          const T u = upstream[n * l.x_sample_stride + x_at];
          y_out[n * l.y_sample_stride + y_at] = u;
          u_mean += to_acc(u);
          u_dot_d += to_acc(u) * centred(n);
        }
        u_mean /= A(G);
        tile_sum += u_dot_d * inv_std;
        for (int64_t g = 0; g < G; ++g) {
          const int64_t n = g * M + m;
          const A u = to_acc(upstream[n * l.x_sample_stride + x_at]);
          x_out[n * l.x_sample_stride + x_at] =
              from_acc<T>(coef * inv_std * ((u - u_mean) - u_dot_d * centred(n) * inv_std * inv_std / A(G)));
        }
      }
    }
    if (kMode != Mode::Backward) {
      tile_sum = block_sum(tile_sum, scratch);
      if (threadIdx.x == 0) partials_of<A>(p)[tile] = tile_sum;
    }
  }
}

// One block per (group, feature): sum(partials of its tiles) * scale, written to channel C + f of
// every pixel of the G members of the group.
template <typename T> __global__ void __launch_bounds__(kThreads)
    write_stats(MinibatchStdParams p, Layout l, double scale) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarps];
  __shared__ A stat;
  const A* partials = partials_of<A>(p);
  T* y_out = static_cast<T*>(p.y_out);
  for (int64_t group_feature = blockIdx.x; group_feature < p.groups * p.features; group_feature += gridDim.x) {
    A total = 0;
    for (int64_t t = threadIdx.x; t < l.tiles_per_feature; t += kThreads) {
      total += partials[group_feature * l.tiles_per_feature + t];
    }
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) stat = total * A(scale);
    __syncthreads();
    const T value = from_acc<T>(stat);
    const int64_t f = group_feature % p.features;
    const int64_t m = group_feature / p.features;
    for (int64_t i = threadIdx.x; i < p.group_size * p.pixels; i += kThreads) {
      const int64_t n = (i / p.pixels) * p.groups + m;
      y_out[n * l.y_sample_stride + l.stat_offset + f * l.stat_feature_stride + (i % p.pixels) * l.stat_pixel_stride] =
          value;
    }
    __syncthreads();  // `stat` is rewritten by the next (group, feature)
  }
}

// One block per (group, feature): a = sum of dL/dy over the stddev channel of the G members / (K G).
template <typename T> __global__ void __launch_bounds__(kThreads) reduce_stat_grad(MinibatchStdParams p, Layout l) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarps];
  const T* grad = static_cast<const T*>(p.grad);
  A* coefs = coefs_of<A>(p);
  const A scale = A(1) / (A(l.rows * l.cols) * A(p.group_size));
  for (int64_t group_feature = blockIdx.x; group_feature < p.groups * p.features; group_feature += gridDim.x) {
    const int64_t f = group_feature % p.features;
    const int64_t m = group_feature / p.features;
    A total = 0;
    for (int64_t i = threadIdx.x; i < p.group_size * p.pixels; i += kThreads) {
      const int64_t n = (i / p.pixels) * p.groups + m;
      const int64_t at = n * l.y_sample_stride + l.stat_offset + f * l.stat_feature_stride;
      total += to_acc(grad[at + (i % p.pixels) * l.stat_pixel_stride]);
    }
    total = block_sum(total, scratch);
    if (threadIdx.x == 0) coefs[group_feature] = total * scale;
  }
}

template <typename T> cudaError_t launch_typed(const MinibatchStdParams& p, cudaStream_t stream) {
  const Layout l = make_layout(p);
  const int64_t group_features = p.groups * p.features;
  const int64_t main_blocks = std::min(group_features * l.tiles_per_feature, kMaxBlocks);
  const int64_t small_blocks = std::min(group_features, kMaxBlocks);
  const double positions = double(l.rows * l.cols);
  if (p.mode == Mode::Forward) {
    group_positions<T, Mode::Forward><<<main_blocks, kThreads, 0, stream>>>(p, l);
    write_stats<T><<<small_blocks, kThreads, 0, stream>>>(p, l, 1.0 / positions);
  } else if (p.mode == Mode::Backward) {
    reduce_stat_grad<T><<<small_blocks, kThreads, 0, stream>>>(p, l);
    group_positions<T, Mode::Backward><<<main_blocks, kThreads, 0, stream>>>(p, l);
  } else {
    reduce_stat_grad<T><<<small_blocks, kThreads, 0, stream>>>(p, l);
    group_positions<T, Mode::DoubleBackward><<<main_blocks, kThreads, 0, stream>>>(p, l);
    write_stats<T><<<small_blocks, kThreads, 0, stream>>>(p, l, 1.0 / (positions * double(p.group_size)));
  }
  return cudaGetLastError();
}

bool empty(const MinibatchStdParams& p) {
  return p.groups == 0 || p.group_size == 0 || p.features == 0 || p.channels == 0 || p.pixels == 0;
}

}  // namespace

size_t minibatch_std_cuda_workspace_bytes(const MinibatchStdParams& p) {
  if (empty(p)) return 0;
  // Always room for both parts: a few bytes more than one mode needs keeps the layout simple.
  const int64_t entries = p.groups * p.features * (1 + make_layout(p).tiles_per_feature);
  return size_t(entries) * dispatch_dtype<CudaElements>(p.dtype, [](auto tag) { return sizeof(acc_t<decltype(tag)>); });
}

cudaError_t launch_minibatch_std(const MinibatchStdParams& p, cudaStream_t stream) {
  if (empty(p)) return cudaSuccess;
  return dispatch_dtype<CudaElements>(p.dtype, [&](auto tag) { return launch_typed<decltype(tag)>(p, stream); });
}

}  // namespace gan_kernels
