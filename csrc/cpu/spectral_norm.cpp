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

template <typename acc_t, typename scalar_t> acc_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
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

// Items per thread task when the work of one layer is split: each task touches at least
// kElementsPerTask elements (an item being `elements_per_item` of them), so that small layers run on
// one thread. A layer's threads only ever split independent outputs, never a sum, so its results do
// not depend on the thread count.
constexpr int64_t kElementsPerTask = 32768;
inline int64_t grain(int64_t elements_per_item) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, elements_per_item));
}

// Runs layer(index) for every layer of the launch: one thread task per layer, or for a single layer
// (the per-layer path) on the calling thread, whose own at::parallel_for may then use every thread
// (inside a task it runs inline).
template <typename F> void for_each_layer(int count, const F& layer) {
  if (count == 1) {
    layer(0);
    return;
  }
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) layer(index);
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

  explicit Layer(const SpectralLayerView& l)
      : w(static_cast<const scalar_t*>(l.weight)),
        u(static_cast<scalar_t*>(l.u)),
        v(static_cast<scalar_t*>(l.v)),
        outer(l.outer),
        rows(l.rows),
        inner(l.inner) {}

  const scalar_t* row(int64_t o, int64_t r) const { return w + (o * rows + r) * inner; }

  // out[r] = sum_c W[r, c] v[c], the column blocks o accumulated in order. Rows are independent, so
  // splitting them over threads leaves every sum as it is.
  void mv(acc_t* out) const {
    at::parallel_for(0, rows, grain(outer * inner), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        acc_t sum = 0;
        for (int64_t o = 0; o < outer; ++o) sum += dot<acc_t>(row(o, r), v + o * inner, inner);
        out[r] = sum;
      }
    });
  }

  // out[c] = sum_r W[r, c] u[r], rows accumulated in order; columns split over threads.
  void mtv(acc_t* out) const {
    at::parallel_for(0, outer * inner, grain(rows), [&](int64_t begin, int64_t end) {
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
  for_each_layer(p.count, [&](int64_t index) {
    const Layer<scalar_t> layer(p.layers[index]);
    acc_t* wv = static_cast<acc_t*>(p.workspace) + p.layers[index].workspace_offset;
    acc_t* wtu = wv + layer.rows;
    for (int64_t step = 0; step < p.n_power_iterations; ++step) {
      layer.mv(wv);
      normalize_into(layer.u, wv, layer.rows, p.eps);
      layer.mtv(wtu);
      normalize_into(layer.v, wtu, layer.outer * layer.inner, p.eps);
    }
    // sigma = u . (W v), in the accumulator type throughout, rounded once.
    layer.mv(wv);
    acc_t sigma = 0;
    for (int64_t r = 0; r < layer.rows; ++r) sigma += acc_t(layer.u[r]) * wv[r];
    sigmas[index] = scalar_t(sigma);
  });
}

template <typename scalar_t> void normalize(const SpectralParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool backward = p.mode == SpectralMode::NormalizeBackward;
  const auto* sigmas = static_cast<const scalar_t*>(p.sigmas);
  for_each_layer(p.count, [&](int64_t index) {
    const Layer<scalar_t> layer(p.layers[index]);
    const acc_t sigma = acc_t(sigmas[index]);
    auto* o = static_cast<scalar_t*>(p.layers[index].out);
    const int64_t numel = layer.outer * layer.rows * layer.inner;
    if (!backward) {
      at::parallel_for(0, numel, grain(1), [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) o[k] = scalar_t(acc_t(layer.w[k]) / sigma);
      });
      return;
    }
    // d(W / sigma)/dW with sigma = u^T W v: G / sigma - <G, W> / sigma^2 u v^T.
    const auto* g = static_cast<const scalar_t*>(p.layers[index].grad);
    const acc_t k_uv = dot<acc_t>(g, layer.w, numel) / (sigma * sigma);
    at::parallel_for(0, layer.outer * layer.rows, grain(layer.inner), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t base = row * layer.inner;
        const acc_t ku = k_uv * acc_t(layer.u[row % layer.rows]);
        const scalar_t* vo = layer.v + row / layer.rows * layer.inner;
        for (int64_t i = 0; i < layer.inner; ++i) {
          o[base + i] = scalar_t(acc_t(g[base + i]) / sigma - ku * acc_t(vo[i]));
        }
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
