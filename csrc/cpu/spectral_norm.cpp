#include "cpu/spectral_norm.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "cpu/dispatch.h"

namespace gan_kernels {
namespace {

// Independent partial sums for a contiguous dot product, so the reduction pipelines
// (fixed order: deterministic, and the same whatever the other layers in the batch).
constexpr int64_t kLanes = 8;

template <typename acc_t, typename a_t, typename b_t> acc_t dot(const a_t* a, const b_t* b, int64_t n) {
  acc_t part[kLanes] = {};
  // Element k goes to lane k % kLanes, each lane in increasing k. Written as whole blocks of kLanes
  // (not part[k % kLanes]) so that the compiler keeps the lanes in vector registers: the same sums,
  // about 3x faster (one thread, 512x4608 and 128x1152 weights).
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) part[l] += acc_t(a[k + l]) * acc_t(b[k + l]);
  }
  for (int64_t l = 0; k + l < n; ++l) part[l] += acc_t(a[k + l]) * acc_t(b[k + l]);
  acc_t sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) sum += part[l];
  return sum;
}

// A launch of one layer (the per-layer path) splits each pass over a large weight between threads,
// as PyTorch's matrix-vector products do; a launch of several runs one layer per task. A split only
// ever divides independent outputs (rows of W v, columns of W^T u, elements of W / sigma and of its
// backward), never a sum, so a layer's bits do not depend on the thread count nor on whether it runs
// alone or in a batch. Each task of a split gets at least kElementsPerTask weight elements, so small
// layers stay on the calling thread. A training forward with one power step opens three parallel
// regions (W v, W^T u, W / sigma; the normalisations of u and v and sigma are short serial loops
// between them): each waits for all its threads, which stalls while other jobs hold the cores (the
// split of a766545, reverted in c8aea06, also split a third pass for sigma).

// body(begin, end) over the items [0, n), each touching `item_elements` weight elements: on the
// calling thread, or split over threads when `split`.
template <typename F> void for_items(bool split, int64_t n, int64_t item_elements, const F& body) {
  if (!split) {
    body(int64_t(0), n);
    return;
  }
  at::parallel_for(0, n, std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, item_elements)), body);
}

// layer(index, split) for every layer of a launch: a single layer on the calling thread, free to split
// its passes (inside a task of a parallel_for, a nested parallel_for runs inline), else one task each.
template <typename F> void for_each_layer(int count, const F& layer) {
  if (count == 1) {
    layer(int64_t(0), true);
    return;
  }
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) layer(index, false);
  });
}

template <typename scalar_t> struct Layer {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* w;
  scalar_t* u;
  scalar_t* v;
  int64_t outer;
  int64_t rows;
  int64_t inner;
  bool split;

  Layer(const SpectralLayerView& l, bool split)
      : w(static_cast<const scalar_t*>(l.weight)),
        u(static_cast<scalar_t*>(l.u)),
        v(static_cast<scalar_t*>(l.v)),
        outer(l.outer),
        rows(l.rows),
        inner(l.inner),
        split(split) {}

  int64_t cols() const { return outer * inner; }
  int64_t numel() const { return outer * rows * inner; }
  const scalar_t* row(int64_t o, int64_t r) const { return w + (o * rows + r) * inner; }

  // out[r] = sum_c W[r, c] v[c], the column blocks o accumulated in order; a task takes a range of
  // rows, which within each block o lie next to each other in memory.
  void mv(acc_t* out) const {
    for_items(split, rows, cols(), [&](int64_t begin, int64_t end) {
      std::fill(out + begin, out + end, acc_t(0));
      for (int64_t o = 0; o < outer; ++o) {
        for (int64_t r = begin; r < end; ++r) out[r] += dot<acc_t>(row(o, r), v + o * inner, inner);
      }
    });
  }

  // out[c] = sum_r W[r, c] u[r], rows accumulated in order; a task takes a range of columns, which
  // may start and end inside a block o.
  void mtv(acc_t* out) const {
    for_items(split, cols(), rows, [&](int64_t begin, int64_t end) {
      std::fill(out + begin, out + end, acc_t(0));
      for (int64_t c = begin; c < end;) {
        const int64_t o = c / inner;
        const int64_t first = c - o * inner;
        const int64_t last = std::min(inner, first + (end - c));
        acc_t* out_o = out + o * inner;
        for (int64_t r = 0; r < rows; ++r) {
          const scalar_t* wr = row(o, r);
          const acc_t ur = acc_t(u[r]);
          for (int64_t i = first; i < last; ++i) out_o[i] += acc_t(wr[i]) * ur;
        }
        c += last - first;
      }
    });
  }
};

// dst = src / max(||src||, eps), as torch.nn.functional.normalize.
template <typename scalar_t, typename acc_t>
void normalize_into(scalar_t* dst, const acc_t* src, int64_t n, double eps) {
  acc_t sum_sq = 0;
  for (int64_t k = 0; k < n; ++k) sum_sq += src[k] * src[k];
  const acc_t denom = std::max(std::sqrt(sum_sq), acc_t(eps));
  for (int64_t k = 0; k < n; ++k) dst[k] = scalar_t(src[k] / denom);
}

template <typename scalar_t> void power_iteration(const SpectralParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  auto* sigmas = static_cast<scalar_t*>(p.sigmas);
  for_each_layer(p.count, [&](int64_t index, bool split) {
    const Layer<scalar_t> layer(p.layers[index], split);
    acc_t* wv = static_cast<acc_t*>(p.workspace) + p.layers[index].workspace_offset;
    acc_t* wtu = wv + layer.rows;
    for (int64_t step = 0; step < p.n_power_iterations; ++step) {
      layer.mv(wv);
      normalize_into(layer.u, wv, layer.rows, p.eps);
      layer.mtv(wtu);
      normalize_into(layer.v, wtu, layer.cols(), p.eps);
    }
    // sigma = u . (W v) = (W^T u) . v, the same sum in another order, for the same u and v. After a
    // step, wtu holds W^T u for the stored u and v is stored, so sigma costs no third pass over W.
    // In the accumulator type throughout, rounded once.
    acc_t sigma = 0;
    if (p.n_power_iterations > 0) {
      sigma = dot<acc_t>(wtu, layer.v, layer.cols());
    } else {
      layer.mv(wv);
      sigma = dot<acc_t>(wv, layer.u, layer.rows);
    }
    sigmas[index] = scalar_t(sigma);
  });
}

template <typename scalar_t> void normalize(const SpectralParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool backward = p.mode == SpectralMode::NormalizeBackward;
  const auto* sigmas = static_cast<const scalar_t*>(p.sigmas);
  for_each_layer(p.count, [&](int64_t index, bool split) {
    const Layer<scalar_t> layer(p.layers[index], split);
    const acc_t sigma = acc_t(sigmas[index]);
    auto* o = static_cast<scalar_t*>(p.layers[index].out);
    if (!backward) {
      for_items(split, layer.numel(), 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) o[k] = scalar_t(acc_t(layer.w[k]) / sigma);
      });
      return;
    }
    // d(W / sigma)/dW with sigma = u^T W v: G / sigma - <G, W> / sigma^2 u v^T.
    const auto* g = static_cast<const scalar_t*>(p.layers[index].grad);
    const acc_t k_uv = dot<acc_t>(g, layer.w, layer.numel()) / (sigma * sigma);
    // Element k is W[r, c] of line k / inner (= o * rows + r) at i = k % inner (c = o * inner + i).
    for_items(split, layer.numel(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end;) {
        const int64_t line = k / layer.inner;
        const int64_t first = k - line * layer.inner;
        const int64_t last = std::min(layer.inner, first + (end - k));
        const acc_t ku = k_uv * acc_t(layer.u[line % layer.rows]);
        const scalar_t* vo = layer.v + line / layer.rows * layer.inner;
        const int64_t base = line * layer.inner;
        for (int64_t i = first; i < last; ++i) o[base + i] = scalar_t(acc_t(g[base + i]) / sigma - ku * acc_t(vo[i]));
        k += last - first;
      }
    });
  });
}

}  // namespace

void spectral_norm_cpu(const SpectralParams& p) {
  dispatch_dtype<CpuElements>(p.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    if (p.mode == SpectralMode::PowerIteration) {
      power_iteration<scalar_t>(p);
    } else {
      normalize<scalar_t>(p);
    }
  });
}

}  // namespace gan_kernels
