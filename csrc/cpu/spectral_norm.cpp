#include "cpu/spectral_norm.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace gan_kernels {
namespace {

// Independent partial sums for a contiguous dot product, so the reduction pipelines
// (fixed order: deterministic, and the same whatever the other layers in the batch).
constexpr int64_t kLanes = 8;

template <typename acc_t, typename scalar_t>
acc_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  acc_t part[kLanes] = {};
  for (int64_t k = 0; k < n; ++k) part[k % kLanes] += acc_t(a[k]) * acc_t(b[k]);
  acc_t sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) sum += part[l];
  return sum;
}

// Each layer is one parallel task: a layer's arithmetic never depends on how the list is split.
template <typename scalar_t> struct Layer {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* w;
  scalar_t* u;
  scalar_t* v;
  int64_t outer;
  int64_t rows;
  int64_t inner;

  explicit Layer(const SpectralLayer& l)
      : w(l.weight.const_data_ptr<scalar_t>()),
        u(l.u.data_ptr<scalar_t>()),
        v(l.v.data_ptr<scalar_t>()),
        outer(l.view.outer),
        rows(l.view.channels),
        inner(l.view.inner) {}

  const scalar_t* row(int64_t o, int64_t r) const { return w + (o * rows + r) * inner; }

  // out[r] = sum_c W[r, c] v[c]
  void mv(std::vector<acc_t>& out) const {
    std::fill(out.begin(), out.end(), acc_t(0));
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t r = 0; r < rows; ++r) out[r] += dot<acc_t>(row(o, r), v + o * inner, inner);
    }
  }

  // out[c] = sum_r W[r, c] u[r], rows accumulated in order
  void mtv(std::vector<acc_t>& out) const {
    std::fill(out.begin(), out.end(), acc_t(0));
    for (int64_t o = 0; o < outer; ++o) {
      acc_t* out_o = out.data() + o * inner;
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* wr = row(o, r);
        const acc_t ur = acc_t(u[r]);
        for (int64_t i = 0; i < inner; ++i) out_o[i] += acc_t(wr[i]) * ur;
      }
    }
  }
};

// dst = src / max(||src||, eps), as torch.nn.functional.normalize.
template <typename scalar_t, typename acc_t>
void normalize_into(scalar_t* dst, const std::vector<acc_t>& src, double eps) {
  acc_t sum_sq = 0;
  for (const acc_t x : src) sum_sq += x * x;
  const acc_t denom = std::max(std::sqrt(sum_sq), acc_t(eps));
  for (size_t k = 0; k < src.size(); ++k) dst[k] = scalar_t(src[k] / denom);
}

template <typename scalar_t>
void power_iteration(const std::vector<SpectralLayer>& layers, scalar_t* sigmas, int64_t n_power_iterations,
                     double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, static_cast<int64_t>(layers.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const Layer<scalar_t> layer(layers[index]);
      std::vector<acc_t> wv(layer.rows);
      std::vector<acc_t> wtu(layer.outer * layer.inner);
      for (int64_t step = 0; step < n_power_iterations; ++step) {
        layer.mv(wv);
        normalize_into(layer.u, wv, eps);
        layer.mtv(wtu);
        normalize_into(layer.v, wtu, eps);
      }
      // sigma = u . (W v), in the accumulator type throughout, rounded once.
      layer.mv(wv);
      acc_t sigma = 0;
      for (int64_t r = 0; r < layer.rows; ++r) sigma += acc_t(layer.u[r]) * wv[r];
      sigmas[index] = scalar_t(sigma);
    }
  });
}

template <typename scalar_t>
void normalize(const std::vector<SpectralLayer>& layers, const std::vector<at::Tensor>& grads,
               const scalar_t* sigmas, std::vector<at::Tensor>& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool backward = !grads.empty();
  at::parallel_for(0, static_cast<int64_t>(layers.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const Layer<scalar_t> layer(layers[index]);
      const acc_t sigma = acc_t(sigmas[index]);
      scalar_t* o = out[index].data_ptr<scalar_t>();
      const int64_t numel = layer.outer * layer.rows * layer.inner;
      if (!backward) {
        for (int64_t k = 0; k < numel; ++k) o[k] = scalar_t(acc_t(layer.w[k]) / sigma);
        continue;
      }
      // d(W / sigma)/dW with sigma = u^T W v: G / sigma - <G, W> / sigma^2 u v^T.
      const scalar_t* g = grads[index].const_data_ptr<scalar_t>();
      const acc_t k_uv = dot<acc_t>(g, layer.w, numel) / (sigma * sigma);
      for (int64_t oi = 0; oi < layer.outer; ++oi) {
        for (int64_t r = 0; r < layer.rows; ++r) {
          const int64_t base = (oi * layer.rows + r) * layer.inner;
          const acc_t ku = k_uv * acc_t(layer.u[r]);
          const scalar_t* vo = layer.v + oi * layer.inner;
          for (int64_t i = 0; i < layer.inner; ++i) {
            o[base + i] = scalar_t(acc_t(g[base + i]) / sigma - ku * acc_t(vo[i]));
          }
        }
      }
    }
  });
}

}  // namespace

void spectral_power_iteration_cpu(const std::vector<SpectralLayer>& layers, at::Tensor& sigmas,
                                  int64_t n_power_iterations, double eps) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sigmas.scalar_type(), "spectral_power_iteration_cpu", [&] {
    power_iteration<scalar_t>(layers, sigmas.data_ptr<scalar_t>(), n_power_iterations, eps);
  });
}

void spectral_normalize_cpu(const std::vector<SpectralLayer>& layers, const std::vector<at::Tensor>& grads,
                            const at::Tensor& sigmas, std::vector<at::Tensor>& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sigmas.scalar_type(), "spectral_normalize_cpu", [&] {
    normalize<scalar_t>(layers, grads, sigmas.const_data_ptr<scalar_t>(), out);
  });
}

}  // namespace gan_kernels
