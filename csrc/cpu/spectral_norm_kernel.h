// The CPU kernel of batched spectral normalisation in ATen's Vectorized, built once per CPU
// capability (cpu/capability_build.h).
//
// Each pass over the weights of a launch is cut into pieces of about kElementsPerTask weight
// elements, each inside one layer and made of whole outputs (rows of W v, columns of W^T u, elements
// of W / sigma and of its backward, fixed chunks of <G, W>); the pieces of all layers run as one
// parallel loop. A batch of unequal layers so keeps every thread busy (one task per layer left the
// largest layers on one thread), and a single large layer is split as PyTorch's matrix-vector
// products are. Every sum runs in a fixed order (cpu/vec_step.h's lanes; <G, W> as fixed chunks
// added in order) and never across pieces, so a layer's bits do not depend on the build, the thread
// count, nor on which other layers share its launch.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/spectral_norm.h"
#include "cpu/dispatch.h"
#include "cpu/spectral_norm.h"
#include "cpu/vec_step.h"

namespace gan_kernels {
namespace {

// The pieces of one pass: layer l has items[l] outputs, and its pieces are first[l] .. first[l + 1] - 1,
// each an equal share of those outputs. Depends on the layers' shapes only.
struct Pieces {
  std::array<int64_t, kMaxSpectralLayers> items{};
  std::array<int64_t, kMaxSpectralLayers + 1> first{};
  int64_t elements = 0;  // weight elements the pass touches, all layers together

  // items_of(l): layer l's outputs; item_cost(l): the weight elements each one touches.
  template <typename Items, typename Cost>
  Pieces(const SpectralParams& p, const Items& items_of, const Cost& item_cost) {
    for (int l = 0; l < p.count; ++l) {
      items[l] = items_of(l);
      const int64_t cost = std::max<int64_t>(1, item_cost(l));
      const int64_t per_piece = std::max<int64_t>(1, kElementsPerTask / cost);
      first[l + 1] = first[l] + ceil_div(items[l], per_piece);
      elements += items[l] * cost;
    }
  }

  // body(layer, begin, end) for every piece, in parallel unless the whole pass is one task's worth.
  template <typename Body> void run(int count, const Body& body) const {
    auto piece = [&](int64_t index) {
      const int l =
          static_cast<int>(std::upper_bound(first.begin(), first.begin() + count + 1, index) - first.begin()) - 1;
      const int64_t share = index - first[l];
      const int64_t shares = first[l + 1] - first[l];
      body(l, items[l] * share / shares, items[l] * (share + 1) / shares);
    };
    const int64_t total = first[count];
    at::parallel_for(0, total, elements <= kElementsPerTask ? total : 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) piece(index);
    });
  }
};

// Chunks of <G, W>: fixed by the layer's size alone, so the sum's order is too.
constexpr int64_t kDotChunk = kElementsPerTask;

template <typename scalar_t> struct Layer {
  using S = Step<scalar_t>;
  using acc_t = typename S::acc_t;
  using AccVec = typename S::AccVec;
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

  int64_t cols() const { return outer * inner; }
  int64_t numel() const { return outer * rows * inner; }
  const scalar_t* row(int64_t o, int64_t r) const { return w + (o * rows + r) * inner; }

  // out[r] = sum_c W[r, c] v[c] for the rows [begin, end), the column blocks o accumulated in order.
  void mv(acc_t* out, int64_t begin, int64_t end) const {
    std::fill(out + begin, out + end, acc_t(0));
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t r = begin; r < end; ++r) out[r] += dot(row(o, r), v + o * inner, inner);
    }
  }

  // out[c] = sum_r W[r, c] u[r] for the columns [begin, end), rows accumulated in order; a range may
  // start and end inside a block o.
  void mtv(acc_t* out, int64_t begin, int64_t end) const {
    std::fill(out + begin, out + end, acc_t(0));
    for (int64_t c = begin; c < end;) {
      const int64_t o = c / inner;
      const int64_t first = c - o * inner;
      const int64_t last = std::min(inner, first + (end - c));
      for (int64_t r = 0; r < rows; ++r) add_scaled(out + o * inner, row(o, r), acc_t(u[r]), first, last);
      c += last - first;
    }
  }

  // out[i] += w[i] * a for i in [first, last).
  static void add_scaled(acc_t* out, const scalar_t* w, acc_t a, int64_t first, int64_t last) {
    const AccVec factor(a);
    for (int64_t i = first; i < last; i += S::kSize) {
      const int64_t count = std::min(S::kSize, last - i);
      const typename S::Parts parts = S::load(w + i, count);
      for (int part = 0; part < S::kParts; ++part) {
        const int64_t at = i + part * AccVec::size();
        const int64_t n = std::min<int64_t>(AccVec::size(), last - at);
        if (n <= 0) break;
        (AccVec::loadu(out + at, n) + parts[part] * factor).store(out + at, n);
      }
    }
  }
};

// dst = src / max(||src||, eps), as torch.nn.functional.normalize.
template <typename scalar_t, typename acc_t>
void normalize_into(scalar_t* dst, const acc_t* src, int64_t n, double eps) {
  const acc_t denom = std::max(std::sqrt(dot(src, src, n)), acc_t(eps));
  for (int64_t k = 0; k < n; ++k) dst[k] = scalar_t(src[k] / denom);
}

template <typename scalar_t> void power_iteration(const SpectralParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  auto layer = [&](int l) { return Layer<scalar_t>(p.layers[l]); };
  // Layer l's accumulators: W v (rows), then W^T u (cols).
  auto wv = [&](int l) { return static_cast<acc_t*>(p.workspace) + p.layers[l].workspace_offset; };
  auto wtu = [&](int l) { return wv(l) + p.layers[l].rows; };
  const Pieces rows(p, [&](int l) { return layer(l).rows; }, [&](int l) { return layer(l).cols(); });
  const Pieces cols(p, [&](int l) { return layer(l).cols(); }, [&](int l) { return layer(l).rows; });
  auto mv = [&](int l, int64_t begin, int64_t end) { layer(l).mv(wv(l), begin, end); };
  for (int64_t step = 0; step < p.n_power_iterations; ++step) {
    rows.run(p.count, mv);
    for (int l = 0; l < p.count; ++l) normalize_into(layer(l).u, wv(l), layer(l).rows, p.eps);
    cols.run(p.count, [&](int l, int64_t begin, int64_t end) { layer(l).mtv(wtu(l), begin, end); });
    for (int l = 0; l < p.count; ++l) normalize_into(layer(l).v, wtu(l), layer(l).cols(), p.eps);
  }
  if (p.n_power_iterations == 0) rows.run(p.count, mv);
  // sigma = u . (W v) = (W^T u) . v, the same sum in another order, for the same u and v. After a
  // step, W^T u of the stored u is at hand and v is stored, so sigma costs no third pass over W.
  // In the accumulator type throughout, rounded once.
  auto* sigmas = static_cast<scalar_t*>(p.sigmas);
  for (int l = 0; l < p.count; ++l) {
    const Layer<scalar_t> L = layer(l);
    sigmas[l] = scalar_t(p.n_power_iterations > 0 ? dot(wtu(l), L.v, L.cols()) : dot(wv(l), L.u, L.rows));
  }
}

template <typename scalar_t> void normalize(const SpectralParams& p) {
  using S = Step<scalar_t>;
  using acc_t = typename S::acc_t;
  using AccVec = typename S::AccVec;
  const auto* sigmas = static_cast<const scalar_t*>(p.sigmas);
  auto layer = [&](int l) { return Layer<scalar_t>(p.layers[l]); };
  const Pieces elements(p, [&](int l) { return layer(l).numel(); }, [](int) { return int64_t(1); });
  if (p.mode == SpectralMode::Normalize) {
    elements.run(p.count, [&](int l, int64_t begin, int64_t end) {
      const AccVec sigma(acc_t(sigmas[l]));
      const scalar_t* w = layer(l).w;
      auto* o = static_cast<scalar_t*>(p.layers[l].out);
      for (int64_t k = begin; k < end; k += S::kSize) {
        const int64_t count = std::min(S::kSize, end - k);
        typename S::Parts parts = S::load(w + k, count);
        for (auto& part : parts) part = part / sigma;
        S::store(o + k, parts, count);
      }
    });
    return;
  }
  // d(W / sigma)/dW with sigma = u^T W v: G / sigma - <G, W> / sigma^2 u v^T. <G, W> first, as fixed
  // chunks of each layer, added in chunk order.
  auto grad = [&](int l) { return static_cast<const scalar_t*>(p.layers[l].grad); };
  const Pieces chunks(p, [&](int l) { return ceil_div(layer(l).numel(), kDotChunk); }, [](int) { return kDotChunk; });
  std::array<int64_t, kMaxSpectralLayers + 1> first_chunk{};
  for (int l = 0; l < p.count; ++l) first_chunk[l + 1] = first_chunk[l] + chunks.items[l];
  std::vector<acc_t> partials(first_chunk[p.count]);
  chunks.run(p.count, [&](int l, int64_t begin, int64_t end) {
    const Layer<scalar_t> L = layer(l);
    for (int64_t c = begin; c < end; ++c) {
      const int64_t start = c * kDotChunk;
      const int64_t len = std::min(kDotChunk, L.numel() - start);
      partials[first_chunk[l] + c] = dot(grad(l) + start, L.w + start, len);
    }
  });
  std::array<acc_t, kMaxSpectralLayers> k_uv{};
  for (int l = 0; l < p.count; ++l) {
    acc_t g_dot_w = 0;
    for (int64_t c = first_chunk[l]; c < first_chunk[l + 1]; ++c) g_dot_w += partials[c];
    const acc_t sigma = acc_t(sigmas[l]);
    k_uv[l] = g_dot_w / (sigma * sigma);
  }
  // Element k is W[r, c] of line k / inner (= o * rows + r) at i = k % inner (c = o * inner + i).
  elements.run(p.count, [&](int l, int64_t begin, int64_t end) {
    const Layer<scalar_t> L = layer(l);
    const AccVec sigma(acc_t(sigmas[l]));
    const scalar_t* g = grad(l);
    auto* o = static_cast<scalar_t*>(p.layers[l].out);
    for (int64_t k = begin; k < end;) {
      const int64_t line = k / L.inner;
      const int64_t base = line * L.inner;
      const int64_t first = k - base;
      const int64_t last = std::min(L.inner, first + (end - k));
      const AccVec ku(k_uv[l] * acc_t(L.u[line % L.rows]));
      const scalar_t* vo = L.v + line / L.rows * L.inner;
      for (int64_t i = first; i < last; i += S::kSize) {
        const int64_t count = std::min(S::kSize, last - i);
        typename S::Parts out = S::load(g + base + i, count);
        const typename S::Parts vs = S::load(vo + i, count);
        for (int part = 0; part < S::kParts; ++part) out[part] = out[part] / sigma - ku * vs[part];
        S::store(o + base + i, out, count);
      }
      k += last - first;
    }
  });
}

}  // namespace

namespace CPU_CAPABILITY {

void spectral_norm_cpu_kernel(const SpectralParams& p) {
  dispatch_dtype<CpuElements>(p.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    if (p.mode == SpectralMode::PowerIteration) {
      power_iteration<scalar_t>(p);
    } else {
      normalize<scalar_t>(p);
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace gan_kernels
