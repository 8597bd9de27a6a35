#include "cuda/common.cuh"
#include "cuda/minibatch_std.h"
#include "cuda/minibatch_std_tiles.h"

namespace gan_kernels {
namespace {

constexpr int kThreads = kMinibatchStdThreads;
constexpr int kWarps = kThreads / 32;

using Mode = MinibatchStdMode;
constexpr double kEps = kMinibatchStdEps;
using Layout = MinibatchStdTiles;

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

// What one access (V neighbouring positions of a (group, feature) block) needs besides the tensors.
struct Position {
  int64_t x_at;  // of member 0 in x; member g adds g * x_step
  int64_t y_at;
  int64_t x_step;
  int64_t y_step;
};

// The G members of a group (G = kG, known at compile time) held in registers: each element of x, dy and
// u is read once, 16 bytes at a time along the columns where V > 1. Returns the access's share of
// the tile's partial sum (forward: sum(s); double backward: sum(u d / s)).
template <typename T, Mode kMode, int kG, int V>
__device__ __forceinline__ acc_t<T> fixed_group(const T* __restrict__ x, const T* __restrict__ grad,
                                                const T* __restrict__ upstream, T* __restrict__ y_out,
                                                T* __restrict__ x_out, Position at, acc_t<T> coef) {
  using A = acc_t<T>;
  Vec<T, V> xs[kG];
#pragma unroll
  for (int g = 0; g < kG; ++g) xs[g] = load_vec<T, V>(x + at.x_at + g * at.x_step);
  if (kMode == Mode::Forward) {
#pragma unroll
    for (int g = 0; g < kG; ++g) store_vec(y_out + at.y_at + g * at.y_step, xs[g]);
  }
  A mean[V];
  A d_mean[V];  // 0 but for the rounding of mean, which the gradients remove
  A inv_std[V];
  A partial = 0;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    mean[j] = 0;
#pragma unroll
    for (int g = 0; g < kG; ++g) mean[j] += to_acc(xs[g].v[j]);
    mean[j] /= A(kG);
    A var = 0;
    d_mean[j] = 0;
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      const A d = to_acc(xs[g].v[j]) - mean[j];
      var += d * d;
      d_mean[j] += d;
    }
    d_mean[j] /= A(kG);
    const A std = sqrt(var / A(kG) + A(kEps));
    inv_std[j] = A(1) / std;
    if (kMode == Mode::Forward) partial += std;
  }
  // The gradients' d, centred again as autograd's chain through x - mean(x) centres it.
  auto centred = [&](int g, int j) { return (to_acc(xs[g].v[j]) - mean[j]) - d_mean[j]; };
  if (kMode == Mode::Backward) {
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      const Vec<T, V> dy = load_vec<T, V>(grad + at.y_at + g * at.y_step);
      Vec<T, V> dx;
#pragma unroll
      for (int j = 0; j < V; ++j) dx.v[j] = from_acc<T>(to_acc(dy.v[j]) + coef * inv_std[j] * centred(g, j));
      store_vec(x_out + at.x_at + g * at.x_step, dx);
    }
  }
  if (kMode == Mode::DoubleBackward) {
    Vec<T, V> us[kG];
#pragma unroll
    for (int g = 0; g < kG; ++g) us[g] = load_vec<T, V>(upstream + at.x_at + g * at.x_step);
#pragma unroll
    for (int g = 0; g < kG; ++g) store_vec(y_out + at.y_at + g * at.y_step, us[g]);
    A u_mean[V];
    A u_dot_d[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      u_mean[j] = 0;
      u_dot_d[j] = 0;
#pragma unroll
      for (int g = 0; g < kG; ++g) {
        u_mean[j] += to_acc(us[g].v[j]);
        u_dot_d[j] += to_acc(us[g].v[j]) * centred(g, j);
      }
      u_mean[j] /= A(kG);
      partial += u_dot_d[j] * inv_std[j];
    }
#pragma unroll
    for (int g = 0; g < kG; ++g) {
      Vec<T, V> dx;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        dx.v[j] = from_acc<T>(
            coef * inv_std[j] *
            ((to_acc(us[g].v[j]) - u_mean[j]) - u_dot_d[j] * centred(g, j) * inv_std[j] * inv_std[j] / A(kG)));
      }
      store_vec(x_out + at.x_at + g * at.x_step, dx);
    }
  }
  return partial;
}

// Any G, one element per access: the members are loaded again for each pass over them (from L1
// after the first), as their number has no bound to size registers by.
template <typename T, Mode kMode>
__device__ __forceinline__ acc_t<T> any_group(const MinibatchStdParams& p, const T* __restrict__ x,
                                              const T* __restrict__ grad, const T* __restrict__ upstream,
                                              T* __restrict__ y_out, T* __restrict__ x_out, Position at,
                                              acc_t<T> coef) {
  using A = acc_t<T>;
  const int64_t G = p.group_size;
  A partial = 0;
  A mean = 0;
  for (int64_t g = 0; g < G; ++g) {
    const T v = x[at.x_at + g * at.x_step];
    if (kMode == Mode::Forward) y_out[at.y_at + g * at.y_step] = v;
    mean += to_acc(v);
  }
  mean /= A(G);
  A var = 0;
  A d_mean = 0;  // 0 but for the rounding of mean, which the gradients remove
  for (int64_t g = 0; g < G; ++g) {
    const A d = to_acc(x[at.x_at + g * at.x_step]) - mean;
    var += d * d;
    d_mean += d;
  }
  d_mean /= A(G);
  // The gradients' d, centred again as autograd's chain through x - mean(x) centres it.
  auto centred = [&](int64_t g) { return (to_acc(x[at.x_at + g * at.x_step]) - mean) - d_mean; };
  const A std = sqrt(var / A(G) + A(kEps));
  const A inv_std = A(1) / std;
  if (kMode == Mode::Forward) partial += std;
  if (kMode == Mode::Backward) {
    for (int64_t g = 0; g < G; ++g) {
      x_out[at.x_at + g * at.x_step] = from_acc<T>(to_acc(grad[at.y_at + g * at.y_step]) + coef * inv_std * centred(g));
    }
  }
  if (kMode == Mode::DoubleBackward) {
    A u_mean = 0;
    A u_dot_d = 0;
    for (int64_t g = 0; g < G; ++g) {
      const T u = upstream[at.x_at + g * at.x_step];
      y_out[at.y_at + g * at.y_step] = u;
      u_mean += to_acc(u);
      u_dot_d += to_acc(u) * centred(g);
    }
    u_mean /= A(G);
    partial += u_dot_d * inv_std;
    for (int64_t g = 0; g < G; ++g) {
      const A u = to_acc(upstream[at.x_at + g * at.x_step]);
      x_out[at.x_at + g * at.x_step] =
          from_acc<T>(coef * inv_std * ((u - u_mean) - u_dot_d * centred(g) * inv_std * inv_std / A(G)));
    }
  }
  return partial;
}

// One block per tile of rows of one (group, feature) block (partition in cuda/minibatch_std_tiles.h);
// each thread owns accesses of V positions of the tile and the G members of each (see Mode). kG is G
// where it is 2, 4 or 8, else 0 (any G, V = 1). The forward and the double backward reduce the
// tile's sum(s) or sum(u d / s) into its partial.
template <typename T, Mode kMode, int kG, int V> __global__ void __launch_bounds__(kThreads)
    group_positions(MinibatchStdParams p, Layout l) {
  using A = acc_t<T>;
  __shared__ A scratch[kWarps];
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ grad = static_cast<const T*>(p.grad);
  const T* __restrict__ upstream = static_cast<const T*>(p.upstream);
  T* __restrict__ y_out = static_cast<T*>(p.y_out);
  T* __restrict__ x_out = static_cast<T*>(p.x_out);
  const int64_t tiles = p.groups * p.features * l.tiles_per_feature;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const MinibatchStdTile t = minibatch_std_tile(l, p.features, tile);
    const int64_t group_feature = tile / l.tiles_per_feature;
    const A coef = kMode == Mode::Forward ? A(0) : coefs_of<A>(p)[group_feature];
    A tile_sum = 0;
    for (int64_t i = threadIdx.x; i < t.accesses; i += kThreads) {
      const MinibatchStdAccess a = minibatch_std_access(l, t, i);
      // Member g of the group is sample g * groups + group.
      const Position at{a.x_at + t.group * l.x_sample_stride, a.y_at + t.group * l.y_sample_stride,
                        p.groups * l.x_sample_stride, p.groups * l.y_sample_stride};
      if constexpr (kG > 0) {
        tile_sum += fixed_group<T, kMode, kG, V>(x, grad, upstream, y_out, x_out, at, coef);
      } else {
        static_assert(V == 1, "any G is read one element at a time");
        tile_sum += any_group<T, kMode>(p, x, grad, upstream, y_out, x_out, at, coef);
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

// The tile pass of `kMode`: the 16-byte instance where the group size is fixed and every pointer and
// row allows it, else one element per access. The tiles are laid out for the instance's access width:
// any other G, laid out for 16 bytes, would read one element of every 16 bytes.
template <typename T, Mode kMode>
void launch_group_positions(const MinibatchStdParams& p, int64_t blocks, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const bool fixed_group = p.group_size == 2 || p.group_size == 4 || p.group_size == 8;
  const bool aligned = aligned_to(p.x, 16) && aligned_to(p.grad, 16) && aligned_to(p.upstream, 16) &&
                       aligned_to(p.y_out, 16) && aligned_to(p.x_out, 16);
  const Layout l = minibatch_std_tiles(p, fixed_group && aligned ? V : 1);
  auto launch = [&](auto kernel) { kernel<<<blocks, kThreads, 0, stream>>>(p, l); };
  const bool wide = l.vec == V;
  switch (p.group_size) {
    case 2: return wide ? launch(group_positions<T, kMode, 2, V>) : launch(group_positions<T, kMode, 2, 1>);
    case 4: return wide ? launch(group_positions<T, kMode, 4, V>) : launch(group_positions<T, kMode, 4, 1>);
    case 8: return wide ? launch(group_positions<T, kMode, 8, V>) : launch(group_positions<T, kMode, 8, 1>);
    default: return launch(group_positions<T, kMode, 0, 1>);
  }
}

template <typename T> cudaError_t launch_typed(const MinibatchStdParams& p, cudaStream_t stream) {
  const Layout l = minibatch_std_tiles(p, 1);
  const int64_t group_features = p.groups * p.features;
  const int64_t main_blocks = std::min(group_features * l.tiles_per_feature, kMaxBlocks);
  const int64_t small_blocks = std::min(group_features, kMaxBlocks);
  const double positions = double(l.rows * l.cols);
  if (p.mode == Mode::Forward) {
    launch_group_positions<T, Mode::Forward>(p, main_blocks, stream);
    write_stats<T><<<small_blocks, kThreads, 0, stream>>>(p, l, 1.0 / positions);
  } else if (p.mode == Mode::Backward) {
    reduce_stat_grad<T><<<small_blocks, kThreads, 0, stream>>>(p, l);
    launch_group_positions<T, Mode::Backward>(p, main_blocks, stream);
  } else {
    reduce_stat_grad<T><<<small_blocks, kThreads, 0, stream>>>(p, l);
    launch_group_positions<T, Mode::DoubleBackward>(p, main_blocks, stream);
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
  const int64_t entries = p.groups * p.features * (1 + minibatch_std_tiles(p, 1).tiles_per_feature);
  return size_t(entries) * dispatch_dtype<CudaElements>(p.dtype, [](auto tag) { return sizeof(acc_t<decltype(tag)>); });
}

cudaError_t launch_minibatch_std(const MinibatchStdParams& p, cudaStream_t stream) {
  if (empty(p)) return cudaSuccess;
  return dispatch_dtype<CudaElements>(p.dtype, [&](auto tag) { return launch_typed<decltype(tag)>(p, stream); });
}

}  // namespace gan_kernels
