#include "common/spectral_norm_partition.h"
#include "cuda/common.cuh"
#include "cuda/spectral_norm.h"

namespace gan_kernels {
namespace {

// Sum over a block of kBlockWarps warps in a fixed order (warp shuffles, then warp totals in warp
// order): deterministic. Every thread gets the total. `scratch` holds kBlockWarps values.
template <int kBlockWarps, typename A> __device__ A block_sum(A value, A* scratch) {
  value = warp_sum(value);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  A total = 0;
  for (int w = 0; w < kBlockWarps; ++w) total += scratch[w];
  return total;
}

// ---- power iteration: a launch per step, each layer's W v, W^T u, v and sigma chained in it -------

constexpr int kIterationThreads = kSpectralThreads;
// W v and W^T u promise 4 resident blocks per SM, i.e. allow 64 registers: without the promise ptxas
// held W^T u to 32 registers, issued W's loads two at a time and spilled in bf16 (seen in the SASS).
constexpr int kStreamingBlocksPerSm = 4;
template <typename T> constexpr int kWidest = 16 / sizeof(T);
// Loads of W each thread has in flight in the streaming loops: 64 bytes, or 8 scalar loads.
template <typename T, int V> constexpr int kBatch = std::min(8, int(64 / (sizeof(T) * V)));

// A load through the read-only data path: W, v and u do not change while a phase reads them.
template <typename T, int V> __device__ __forceinline__ Vec<T, V> load_ro(const T* src) {
  if constexpr (sizeof(Vec<T, V>) == sizeof(uint4)) {
    const uint4 bits = __ldg(reinterpret_cast<const uint4*>(src));
    Vec<T, V> out;
    memcpy(&out, &bits, sizeof(bits));
    return out;
  } else {
    return load_vec<T, V>(src);
  }
}

// acc + a . b, element by element in order.
template <typename T, int V>
__device__ __forceinline__ acc_t<T> dot_add(acc_t<T> acc, const Vec<T, V>& a, const Vec<T, V>& b) {
#pragma unroll
  for (int e = 0; e < V; ++e) acc += to_acc(a.v[e]) * to_acc(b.v[e]);
  return acc;
}

// acc[e] += a[e] * s.
template <typename T, int V> __device__ __forceinline__ void axpy(acc_t<T> (&acc)[V], const Vec<T, V>& a, acc_t<T> s) {
#pragma unroll
  for (int e = 0; e < V; ++e) acc[e] += to_acc(a.v[e]) * s;
}

// A step's launch: the layers' table, where each segment's blocks start in ticket order
// (spectral_chain_segment), and each layer's access width (elements). 2.7 KB, under the 4 KiB
// kernel-argument limit.
struct IterationLaunch {
  SpectralParams p;
  int segment_first[2 * kMaxSpectralLayers + 1];
  int8_t vec[kMaxSpectralLayers];
};
static_assert(sizeof(IterationLaunch) <= 4096, "kernel arguments are limited to 4 KiB");

// What the block that finishes a layer computes: v = normalize(W^T u), and sigma on the last step; or,
// without a step, sigma = u . (W v).
enum class Finish { V, VAndSigma, SigmaOfU };

template <typename T> struct Layer {
  using A = acc_t<T>;
  const T* __restrict__ w;
  int64_t rows;
  int64_t inner;
  int64_t cols;
  A* wv;   // [rows] accumulators, then
  A* wtu;  // [cols]

  __device__ Layer(const SpectralParams& p, int l)
      : w(static_cast<const T*>(p.layers[l].weight)),
        rows(p.layers[l].rows),
        inner(p.layers[l].inner),
        cols(p.layers[l].outer * p.layers[l].inner),
        wv(static_cast<A*>(p.workspace) + p.layers[l].workspace_offset),
        wtu(wv + rows) {}
};

// wv[r] = sum_c W[r, c] v[c] for the block's rows: each warp sums its slice of a row (lanes along the
// columns, then a warp sum), then the slices meet in order (all in a fixed order). v is not loaded
// through the read-only path: the block that finishes the layer overwrites it later in the launch.
template <typename T, int V>
__device__ void mv_rows(const Layer<T>& layer, const T* __restrict__ v, int64_t block, acc_t<T>* partial) {
  using A = acc_t<T>;
  constexpr int kB = kBatch<T, V>;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int slices = spectral_mv_slices(layer.cols, V);
  const int slice = warp % slices;
  const int64_t r = spectral_mv_row(block, warp, slices);
  A acc = 0;
  if (r < layer.rows) {
    const int64_t steps = spectral_mv_steps(layer.cols, V, slices, slice, lane);
    const T* __restrict__ wr = layer.w + r * layer.inner;
    SpectralColumnWalk walk(layer.rows, layer.inner, spectral_mv_column(0, slices, slice, lane, V), 32 * slices * V);
    int64_t k = 0;
    // kB steps' loads first, then their products in step order: written as one loop, ptxas issued
    // each load of W only after the products of the previous one (seen in the SASS); so it keeps 2-4
    // in flight.
    for (; k + kB <= steps; k += kB) {
      Vec<T, V> a[kB];
      Vec<T, V> b[kB];
#pragma unroll
      for (int q = 0; q < kB; ++q, walk.advance()) {
        a[q] = load_ro<T, V>(wr + walk.at);
        b[q] = load_vec<T, V>(v + spectral_mv_column(k + q, slices, slice, lane, V));
      }
#pragma unroll
      for (int q = 0; q < kB; ++q) acc = dot_add(acc, a[q], b[q]);
    }
#pragma unroll 1
    for (; k < steps; ++k, walk.advance()) {
      acc =
          dot_add(acc, load_ro<T, V>(wr + walk.at), load_vec<T, V>(v + spectral_mv_column(k, slices, slice, lane, V)));
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  const int rows_per_block = kSpectralWarps / slices;
  const int64_t row = block * rows_per_block + threadIdx.x;
  if (int(threadIdx.x) < rows_per_block && row < layer.rows) {
    A total = 0;
    for (int s = 0; s < slices; ++s) total += partial[threadIdx.x * slices + s];
    layer.wv[row] = total;
  }
}

// The block's kSpectralMtvLanes * V columns of W^T u, with u = normalize(wv) staged in shared memory a
// tile of rows at a time; the block numbered 0 of the layer also writes u. wv, written by other blocks
// of the launch, is read from L2 (__ldcg), never from a line an SM's L1 may hold.
template <typename T, int V> __device__ void mtv_columns(const Layer<T>& layer, int64_t block, acc_t<T> denom, T* u,
                                                         acc_t<T>* u_tile,
                                                         acc_t<T> (*partial)[kSpectralMtvLanes * kWidest<T>]) {
  using A = acc_t<T>;
  constexpr int kB = kBatch<T, V>;
  const int lane = threadIdx.x % kSpectralMtvLanes;
  const int group = threadIdx.x / kSpectralMtvLanes;
  const int64_t c0 = spectral_mtv_column(block, lane, V);
  const bool active = c0 < layer.cols;
  // The lane's columns are neighbours in one row segment (V divides inner), so each row adds `inner`.
  const T* __restrict__ wc = layer.w + (active ? spectral_element(layer.rows, layer.inner, 0, c0) : 0);
  const int64_t row_step = kSpectralRowGroups * layer.inner;
  A acc[V] = {};
  for (int64_t t0 = 0; t0 < layer.rows; t0 += kSpectralRowTile) {
    const int64_t tile_rows = min(layer.rows - t0, int64_t(kSpectralRowTile));
    __syncthreads();  // the previous tile's u is no longer read
    for (int k = threadIdx.x; k < tile_rows; k += blockDim.x) {
      const T uk = from_acc<T>(__ldcg(layer.wv + t0 + k) / denom);
      if (block == 0) u[t0 + k] = uk;
      u_tile[k] = to_acc(uk);
    }
    __syncthreads();
    if (!active) continue;
    const int64_t n = spectral_mtv_group_rows(tile_rows, group);
    const T* __restrict__ wt = wc + (t0 + group) * layer.inner;  // the group's first row of the tile
    int64_t j = 0;
    for (; j + kB <= n; j += kB) {  // loads first, as in mv_rows
      Vec<T, V> a[kB];
#pragma unroll
      for (int q = 0; q < kB; ++q) a[q] = load_ro<T, V>(wt + (j + q) * row_step);
#pragma unroll
      for (int q = 0; q < kB; ++q) axpy(acc, a[q], u_tile[group + (j + q) * kSpectralRowGroups]);
    }
#pragma unroll 1
    for (; j < n; ++j) axpy(acc, load_ro<T, V>(wt + j * row_step), u_tile[group + j * kSpectralRowGroups]);
  }
#pragma unroll
  for (int e = 0; e < V; ++e) partial[group][lane * V + e] = acc[e];
  __syncthreads();
  const int t = threadIdx.x;
  const int64_t c = spectral_mtv_column(block, 0, V) + t;
  if (t < kSpectralMtvLanes * V && c < layer.cols) {
    A total = 0;
    for (int g = 0; g < kSpectralRowGroups; ++g) total += partial[g][t];
    layer.wtu[c] = total;
  }
}

// Counts the block's part of a phase in `done` once its writes are visible to every block. True in the
// block that arrives last of `blocks`, which then sees all of their writes.
__device__ bool arrive(unsigned* done, unsigned blocks, unsigned* shared_last) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) *shared_last = atomicAdd(done, 1u) + 1 == blocks;
  __syncthreads();
  const bool last = *shared_last != 0;
  if (last) __threadfence();
  return last;
}

// Polls after which a wait gives up: each poll is an atomic at L2 (a fraction of a microsecond) and a
// sleep, so this is seconds, where a wait that can end takes microseconds.
constexpr unsigned kMaxPolls = 1u << 25;

// Waits until `blocks` blocks have arrived at `done`, and sees their writes. Those blocks took earlier
// tickets, so they have started, and they wait for nothing: no deadlock, whatever order the GPU starts
// blocks in. Should a wait still not end, the kernel traps rather than hang the process: the error
// ("unspecified launch failure") surfaces at the next synchronising CUDA call, possibly another op's,
// and stays set, so every later CUDA call of the process fails and it must restart.
__device__ void wait_for(unsigned* done, unsigned blocks) {
  if (threadIdx.x == 0) {
    for (unsigned polls = 0; atomicAdd(done, 0u) < blocks; ++polls) {
      if (polls == kMaxPolls) __trap();
      __nanosleep(256);
    }
    __threadfence();
  }
  __syncthreads();
}

// Run by the block that finished a layer: v = normalize(W^T u), and sigma = u . (W v) as (W^T u) . v,
// which is the same sum regrouped (the same u and v, v as stored), so it needs no third pass over W.
// SigmaOfU (no step): sigma = u . (W v) from the W v just computed.
template <typename T>
__device__ void finish_layer(const SpectralParams& p, const Layer<T>& layer, int l, Finish finish, acc_t<T>* scratch) {
  using A = acc_t<T>;
  A partial = 0;
  if (finish == Finish::SigmaOfU) {
    const T* u = static_cast<const T*>(p.layers[l].u);
    for (int64_t r = threadIdx.x; r < layer.rows; r += blockDim.x) partial += to_acc(u[r]) * __ldcg(layer.wv + r);
  } else {
    A sum_sq = 0;
    for (int64_t c = threadIdx.x; c < layer.cols; c += blockDim.x) {
      const A x = __ldcg(layer.wtu + c);
      sum_sq += x * x;
    }
    const A denom = max(sqrt(block_sum<kSpectralWarps>(sum_sq, scratch)), A(p.eps));
    T* v = static_cast<T*>(p.layers[l].v);
    for (int64_t c = threadIdx.x; c < layer.cols; c += blockDim.x) {
      const A x = __ldcg(layer.wtu + c);
      const T vc = from_acc<T>(x / denom);
      v[c] = vc;
      partial += x * to_acc(vc);
    }
    if (finish == Finish::V) return;
  }
  const A sigma = block_sum<kSpectralWarps>(partial, scratch);
  if (threadIdx.x == 0) static_cast<T*>(p.sigmas)[l] = from_acc<T>(sigma);
}

// One power-iteration step of every layer (or, with SigmaOfU, W v and sigma). A block takes a ticket and
// does that place of the schedule (spectral_chain_segment): W v blocks of a layer write their rows and
// arrive; its W^T u blocks wait for all of them, then write their columns and arrive; the last to
// arrive finishes the layer. A layer's sums run in the same order whichever blocks, and however many
// other layers, share the launch: its bits are the same batched and alone. counters: this launch's
// spectral_iteration_counters(count, 1) words, zero at the start.
template <typename T> __global__ void __launch_bounds__(kIterationThreads, kStreamingBlocksPerSm)
    power_step_kernel(IterationLaunch launch, Finish finish, unsigned* counters) {
  using A = acc_t<T>;
  __shared__ A scratch[kSpectralWarps];
  __shared__ A u_tile[kSpectralRowTile];
  __shared__ A partial[kSpectralRowGroups][kSpectralMtvLanes * kWidest<T>];
  __shared__ unsigned ticket;
  __shared__ unsigned last;
  const int count = launch.p.count;
  unsigned* const mv_done = counters + 1;
  unsigned* const mtv_done = mv_done + count;
  if (threadIdx.x == 0) ticket = atomicAdd(counters, 1u);
  __syncthreads();
  const bool step = finish != Finish::SigmaOfU;
  const int s = spectral_segment_of_block(launch.segment_first, spectral_chain_segments(count, step), ticket);
  const SpectralChainSegment segment = spectral_chain_segment(count, step, s);
  const int64_t block = int64_t(ticket) - launch.segment_first[s];
  const int l = segment.layer;
  const Layer<T> layer(launch.p, l);
  const int vec = launch.vec[l];
  const auto mv_blocks = unsigned(spectral_chain_mv_blocks(layer.rows, layer.cols, vec));
  if (!segment.mtv) {
    const T* v = static_cast<const T*>(launch.p.layers[l].v);
    if (vec > 1) {
      mv_rows<T, kWidest<T>>(layer, v, block, scratch);
    } else {
      mv_rows<T, 1>(layer, v, block, scratch);
    }
    if (arrive(mv_done + l, mv_blocks, &last) && !step) finish_layer(launch.p, layer, l, finish, scratch);
    return;
  }
  wait_for(mv_done + l, mv_blocks);
  // Every block of the layer computes ||W v|| alike (same values, same order), so all agree on u.
  A sum_sq = 0;
  for (int64_t r = threadIdx.x; r < layer.rows; r += blockDim.x) {
    const A x = __ldcg(layer.wv + r);
    sum_sq += x * x;
  }
  const A denom = max(sqrt(block_sum<kSpectralWarps>(sum_sq, scratch)), A(launch.p.eps));
  T* u = static_cast<T*>(launch.p.layers[l].u);
  if (vec > 1) {
    mtv_columns<T, kWidest<T>>(layer, block, denom, u, u_tile, partial);
  } else {
    mtv_columns<T, 1>(layer, block, denom, u, u_tile, partial);
  }
  const auto mtv_blocks = unsigned(spectral_mtv_blocks(layer.cols, vec));
  if (arrive(mtv_done + l, mtv_blocks, &last)) finish_layer(launch.p, layer, l, finish, scratch);
}

// ---- normalisation and its backward -------------------------------------------------------------

constexpr int kNormalizeThreads = kSpectralNormalizeThreads;
constexpr int kNormalizeWarps = kNormalizeThreads / 32;
// Loads each thread issues before the stores or sums of the first of them: 2 of 16 bytes, or 4 scalars.
template <int V> constexpr int kNormalizeBatch = V > 1 ? 2 : 4;
// normalize_kernel promises 2 resident blocks per SM (64 registers): left free, ptxas gave the fp16
// and bf16 backward 65 and 74 registers, so one block of 512 threads per SM, 16 KB of G's loads in
// flight where the floor needs 16-22 KB; with two, 32 KB. Not in float64 (gradcheck's type, not a
// speed path; 80 registers), whose divisions and register pairs spilled in 64.
template <typename T> constexpr int kNormalizeBlocksPerSm = sizeof(T) == 8 ? 1 : 2;

// A launch over every layer's grid row: the layers' table and each layer's access width (elements),
// which the host picks per launch from what that launch reads and writes.
struct NormalizeLaunch {
  SpectralParams p;
  int8_t vec[kMaxSpectralLayers];
};
static_assert(sizeof(NormalizeLaunch) <= 4096, "kernel arguments are limited to 4 KiB");

__host__ __device__ int64_t layer_numel(const SpectralLayerView& view) { return view.outer * view.rows * view.inner; }

// The blocks of its grid row that a layer uses: a function of its own size (see the header).
__host__ __device__ int layer_blocks(const SpectralLayerView& view) {
  return spectral_normalize_blocks(layer_numel(view));
}

// A load L2 may evict first: the backward's last read of W (by <G, W>) and of G (by the formula), so
// that the lines of G the formula has yet to re-read stay longer.
template <typename T, int V> __device__ __forceinline__ Vec<T, V> load_last(const T* src) {
  Vec<T, V> out;
  if constexpr (sizeof(Vec<T, V>) == sizeof(uint4)) {
    const uint4 bits = __ldcs(reinterpret_cast<const uint4*>(src));
    memcpy(&out, &bits, sizeof(bits));
  } else {
    static_assert(V == 1, "an access is 16 bytes or one element");
    out.v[0] = __ldcs(src);
  }
  return out;
}

// This thread's share of the layer's <G, W>, its accesses summed in order.
template <typename T, int V> __device__ acc_t<T> grad_dot_partial(const SpectralLayerView& view, int blocks) {
  using A = acc_t<T>;
  constexpr int kB = kNormalizeBatch<V>;
  const T* __restrict__ g = static_cast<const T*>(view.grad);
  const T* __restrict__ w = static_cast<const T*>(view.weight);
  const int64_t first = spectral_normalize_first(blockIdx.x, threadIdx.x);
  const int64_t steps = spectral_normalize_steps(layer_numel(view) / V, blocks, first);
  const int64_t stride = int64_t(blocks) * kNormalizeThreads * V;
  int64_t at = first * V;
  A acc = 0;
  int64_t k = 0;
  for (; k + kB <= steps; k += kB) {  // loads first, as in mv_rows
    Vec<T, V> a[kB];
    Vec<T, V> b[kB];
#pragma unroll
    for (int q = 0; q < kB; ++q, at += stride) {
      a[q] = load_ro<T, V>(g + at);
      b[q] = load_last<T, V>(w + at);
    }
#pragma unroll
    for (int q = 0; q < kB; ++q) acc = dot_add(acc, a[q], b[q]);
  }
#pragma unroll 1
  for (; k < steps; ++k, at += stride) acc = dot_add(acc, load_ro<T, V>(g + at), load_last<T, V>(w + at));
  return acc;
}

// Backward, first pass: workspace[layer * blocks_per_layer + block] = the block's share of <G, W>.
template <typename T> __global__ void __launch_bounds__(kNormalizeThreads) grad_dot_kernel(NormalizeLaunch launch) {
  using A = acc_t<T>;
  __shared__ A scratch[kNormalizeWarps];
  const int l = blockIdx.y;
  const SpectralLayerView& view = launch.p.layers[l];
  const int blocks = layer_blocks(view);
  if (int(blockIdx.x) >= blocks) return;  // uniform across the block: block_sum's barriers stay safe
  const A partial =
      launch.vec[l] > 1 ? grad_dot_partial<T, kWidest<T>>(view, blocks) : grad_dot_partial<T, 1>(view, blocks);
  const A total = block_sum<kNormalizeWarps>(partial, scratch);
  if (threadIdx.x == 0) {
    static_cast<A*>(launch.p.workspace)[int64_t(l) * launch.p.blocks_per_layer + blockIdx.x] = total;
  }
}

// <G, W> from the layer's block partials: lane j adds partials j, j + 32, ... in order, then the lanes
// meet in warp_sum's fixed tree. Every warp of every block of the layer computes it alike, so all
// agree on the coefficient without a barrier.
template <typename A> __device__ A layer_dot(const A* partials, int blocks) {
  A sum = 0;
  for (int b = threadIdx.x % 32; b < blocks; b += 32) sum += partials[b];
  return warp_sum(sum);
}

template <typename T, int V> __device__ __forceinline__ Vec<T, V> divided(const Vec<T, V>& w, acc_t<T> sigma) {
  Vec<T, V> out;
#pragma unroll
  for (int e = 0; e < V; ++e) out.v[e] = from_acc<T>(to_acc(w.v[e]) / sigma);
  return out;
}

// (G - <G, W> / sigma u v^T) / sigma for one access of G: a row's u and V of v's columns.
template <typename T, int V> __device__ __forceinline__ Vec<T, V> scaled_grad(const Vec<T, V>& g, acc_t<T> u,
                                                                              const Vec<T, V>& v, acc_t<T> sigma,
                                                                              acc_t<T> k_uv) {
  Vec<T, V> out;
#pragma unroll
  for (int e = 0; e < V; ++e) out.v[e] = from_acc<T>(to_acc(g.v[e]) / sigma - k_uv * u * to_acc(v.v[e]));
  return out;
}

// out = W / sigma over the thread's accesses.
template <typename T, int V>
__device__ void normalize_layer(const SpectralLayerView& view, int blocks, acc_t<T> sigma) {
  constexpr int kB = kNormalizeBatch<V>;
  const T* __restrict__ w = static_cast<const T*>(view.weight);
  T* __restrict__ out = static_cast<T*>(view.out);
  const int64_t first = spectral_normalize_first(blockIdx.x, threadIdx.x);
  const int64_t steps = spectral_normalize_steps(layer_numel(view) / V, blocks, first);
  const int64_t stride = int64_t(blocks) * kNormalizeThreads * V;
  int64_t at = first * V;
  int64_t k = 0;
  for (; k + kB <= steps; k += kB) {  // loads first: stores would otherwise hold each next load back
    Vec<T, V> a[kB];
#pragma unroll
    for (int q = 0; q < kB; ++q) a[q] = load_ro<T, V>(w + at + q * stride);
#pragma unroll
    for (int q = 0; q < kB; ++q, at += stride) store_vec(out + at, divided(a[q], sigma));
  }
#pragma unroll 1
  for (; k < steps; ++k, at += stride) store_vec(out + at, divided(load_ro<T, V>(w + at), sigma));
}

// The backward's formula over the thread's accesses, row and column from the walk.
template <typename T, int V>
__device__ void normalize_layer_backward(const SpectralLayerView& view, int blocks, acc_t<T> sigma, acc_t<T> k_uv) {
  using A = acc_t<T>;
  constexpr int kB = kNormalizeBatch<V>;
  const T* __restrict__ u = static_cast<const T*>(view.u);
  const T* __restrict__ v = static_cast<const T*>(view.v);
  const int64_t first = spectral_normalize_first(blockIdx.x, threadIdx.x);
  int64_t steps = spectral_normalize_steps(layer_numel(view) / V, blocks, first);
  if (steps == 0) return;  // the walk divides by rows and inner
  const int stride = blocks * kNormalizeThreads * V;
  SpectralElementWalk walk(view.rows, view.inner, first * V, stride);
  const T* __restrict__ g = static_cast<const T*>(view.grad) + first * V;
  T* __restrict__ out = static_cast<T*>(view.out) + first * V;
  // G's loads of a batch first; u and v, read by every row and column of the layer, mostly hit L1,
  // so each is loaded just before its use.
  for (; steps >= kB; steps -= kB) {
    Vec<T, V> gq[kB];
#pragma unroll
    for (int q = 0; q < kB; ++q) gq[q] = load_last<T, V>(g + q * stride);
#pragma unroll
    for (int q = 0; q < kB; ++q, walk.advance(), g += stride, out += stride) {
      const A uk = to_acc(load_ro<T, 1>(u + walk.r).v[0]);
      store_vec(out, scaled_grad(gq[q], uk, load_ro<T, V>(v + walk.c), sigma, k_uv));
    }
  }
#pragma unroll 1
  for (; steps > 0; --steps, walk.advance(), g += stride, out += stride) {
    const A uk = to_acc(load_ro<T, 1>(u + walk.r).v[0]);
    store_vec(out, scaled_grad(load_last<T, V>(g), uk, load_ro<T, V>(v + walk.c), sigma, k_uv));
  }
}

// out = W / sigma, or in the backward (G - <G, W> / sigma u v^T) / sigma. Grid row y works on layer
// count - 1 - y: blocks start about in grid order, and the launch before this one read the layers in
// order (W^T u before W / sigma; <G, W> before the backward's formula, whose G is then re-read), so
// this one starts with the layers L2 most likely still holds.
template <typename T, SpectralMode mode> __global__ void __launch_bounds__(kNormalizeThreads, kNormalizeBlocksPerSm<T>)
    normalize_kernel(NormalizeLaunch launch) {
  using A = acc_t<T>;
  const int l = launch.p.count - 1 - int(blockIdx.y);
  const SpectralLayerView& view = launch.p.layers[l];
  const int blocks = layer_blocks(view);
  if (int(blockIdx.x) >= blocks) return;
  const A sigma = to_acc(static_cast<const T*>(launch.p.sigmas)[l]);
  const bool wide = launch.vec[l] > 1;
  if constexpr (mode == SpectralMode::Normalize) {
    if (wide) {
      normalize_layer<T, kWidest<T>>(view, blocks, sigma);
    } else {
      normalize_layer<T, 1>(view, blocks, sigma);
    }
  } else {
    const A* partials = static_cast<const A*>(launch.p.workspace) + int64_t(l) * launch.p.blocks_per_layer;
    const A k_uv = layer_dot(partials, blocks) / (sigma * sigma);
    if (wide) {
      normalize_layer_backward<T, kWidest<T>>(view, blocks, sigma, k_uv);
    } else {
      normalize_layer_backward<T, 1>(view, blocks, sigma, k_uv);
    }
  }
}

bool valid(const SpectralParams& p) { return p.count > 0 && p.count <= kMaxSpectralLayers; }

// Every layer's blocks fit in its grid row and workspace row.
bool covers_every_layer(const SpectralParams& p) {
  for (int l = 0; l < p.count; ++l) {
    if (layer_blocks(p.layers[l]) > p.blocks_per_layer) return false;
  }
  return true;
}

// Fills in each layer's access width and the segments' block ranges; false when the grid would pass
// INT_MAX blocks.
template <typename T> bool plan_iteration(IterationLaunch& launch, bool step) {
  for (int l = 0; l < launch.p.count; ++l) {
    const SpectralLayerView& view = launch.p.layers[l];
    const bool aligned = aligned_to(view.weight, 16) && aligned_to(view.v, 16);
    launch.vec[l] = int8_t(spectral_vector_width(view.inner, sizeof(T), aligned));
  }
  const int segments = spectral_chain_segments(launch.p.count, step);
  int64_t blocks = 0;
  for (int s = 0; s < segments; ++s) {
    launch.segment_first[s] = int(blocks);
    const SpectralChainSegment segment = spectral_chain_segment(launch.p.count, step, s);
    const SpectralLayerView& view = launch.p.layers[segment.layer];
    const int64_t cols = view.outer * view.inner;
    const int vec = launch.vec[segment.layer];
    blocks += segment.mtv ? spectral_mtv_blocks(cols, vec) : spectral_chain_mv_blocks(view.rows, cols, vec);
    if (blocks > INT32_MAX) return false;
  }
  launch.segment_first[segments] = int(blocks);
  return true;
}

// The counters zeroed, then a launch per step (the last one also writing sigma); with no step, one
// launch for W v and sigma = u . (W v).
cudaError_t launch_power_iteration(const SpectralParams& p, cudaStream_t stream) {
  if (p.counters == nullptr) return cudaErrorInvalidValue;
  return dispatch_dtype<CudaElements>(p.dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    const bool step = p.n_power_iterations > 0;
    IterationLaunch launch{};
    launch.p = p;
    if (!plan_iteration<T>(launch, step)) return cudaErrorInvalidValue;
    const int grid = launch.segment_first[spectral_chain_segments(p.count, step)];
    const size_t counter_bytes = sizeof(unsigned) * spectral_iteration_counters(p.count, p.n_power_iterations);
    cudaError_t error = cudaMemsetAsync(p.counters, 0, counter_bytes, stream);
    if (error != cudaSuccess) return error;
    if (!step) {
      power_step_kernel<T><<<grid, kIterationThreads, 0, stream>>>(launch, Finish::SigmaOfU, p.counters);
      return cudaGetLastError();
    }
    const int64_t per_step = spectral_iteration_counters(p.count, 1);
    for (int64_t k = 0; k < p.n_power_iterations; ++k) {
      const Finish finish = k + 1 == p.n_power_iterations ? Finish::VAndSigma : Finish::V;
      power_step_kernel<T><<<grid, kIterationThreads, 0, stream>>>(launch, finish, p.counters + k * per_step);
      error = cudaGetLastError();
      if (error != cudaSuccess) return error;
    }
    return cudaSuccess;
  });
}

// Each layer's access width for one launch: 16 bytes where `run(view)` elements, the run an access must
// stay within, are a whole number of them and the tensors `aligned(view)` checks allow it.
template <typename T, typename Run, typename Aligned>
void set_widths(NormalizeLaunch& launch, Run run, Aligned aligned) {
  for (int l = 0; l < launch.p.count; ++l) {
    const SpectralLayerView& view = launch.p.layers[l];
    launch.vec[l] = int8_t(spectral_vector_width(run(view), sizeof(T), aligned(view)));
  }
}

int64_t row_segment(const SpectralLayerView& view) { return view.inner; }

// W / sigma: one launch. Backward: <G, W> in per-block partials, then the formula, a second pass over G
// (see benchmarks/NOTES.md on why not one).
cudaError_t launch_normalize(const SpectralParams& p, cudaStream_t stream) {
  if (!covers_every_layer(p)) return cudaErrorInvalidValue;
  const dim3 grid(p.blocks_per_layer, p.count);
  return dispatch_dtype<CudaElements>(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    NormalizeLaunch launch{};
    launch.p = p;
    if (p.mode == SpectralMode::Normalize) {
      set_widths<T>(launch, layer_numel, [](const SpectralLayerView& view) {
        return aligned_to(view.weight, 16) && aligned_to(view.out, 16);
      });
      normalize_kernel<T, SpectralMode::Normalize><<<grid, kNormalizeThreads, 0, stream>>>(launch);
      return cudaGetLastError();
    }
    set_widths<T>(launch, layer_numel, [](const SpectralLayerView& view) {
      return aligned_to(view.grad, 16) && aligned_to(view.weight, 16);
    });
    grad_dot_kernel<T><<<grid, kNormalizeThreads, 0, stream>>>(launch);
    const cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) return error;
    // u is read an element at a time.
    set_widths<T>(launch, row_segment, [](const SpectralLayerView& view) {
      return aligned_to(view.grad, 16) && aligned_to(view.v, 16) && aligned_to(view.out, 16);
    });
    normalize_kernel<T, SpectralMode::NormalizeBackward><<<grid, kNormalizeThreads, 0, stream>>>(launch);
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
