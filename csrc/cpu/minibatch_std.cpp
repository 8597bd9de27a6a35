#include "cpu/minibatch_std.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>

#include "cpu/dispatch.h"

namespace gan_kernels {
namespace {

// Positions whose group statistics are computed together: wide enough to vectorise, small enough
// that the G rows of a chunk stay in L1 between the passes over them.
constexpr int64_t kChunk = 64;

using Mode = MinibatchStdMode;
using Layout = MinibatchStdLayout;
constexpr double kEps = kMinibatchStdEps;

template <typename scalar_t> struct Tensors {
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* y_out;  // forward output, dL/ddy
  scalar_t* x_out;  // dx, dL/dx
  const scalar_t* x;
  const scalar_t* y_in;  // dy
  const scalar_t* x_in;  // u
  acc_t* partials;       // per task: sum(s) (forward) or sum(u d / s) (double backward) of the row
  const acc_t* coefs;    // per (group, feature): a
};

// One task per (group, feature, row).
// sqrt(sum_sq / G + eps) in place. Vectorised explicitly: std::sqrt may set errno, so the compiler
// keeps it scalar. Both are correctly rounded, so every position gets the same bits either way.
template <typename acc_t> void group_std(acc_t* sum_sq, int64_t width, int64_t G) {
  using Vec = at::vec::Vectorized<acc_t>;
  int64_t j = 0;
  for (; j + Vec::size() <= width; j += Vec::size()) {
    (Vec::loadu(sum_sq + j) / Vec(acc_t(G)) + Vec(acc_t(kEps))).sqrt().store(sum_sq + j);
  }
  for (; j < width; ++j) sum_sq[j] = std::sqrt(sum_sq[j] / acc_t(G) + acc_t(kEps));
}

template <typename scalar_t, Mode kMode>
void group_rows(const Tensors<scalar_t>& t, const MinibatchStdParams& s, const Layout& l) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kCopies = kMode != Mode::Backward;  // y_out[:, :C] is x or u
  const int64_t G = s.group_size;
  const int64_t M = s.groups;
  const int64_t tasks = M * s.features * l.rows;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (G * l.cols));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    acc_t mean[kChunk];
    acc_t inv_std[kChunk];  // first the sum of d^2, then the std
    acc_t d_mean[kChunk];   // mean(d): 0 but for the rounding of mean(x), which the gradients remove
    acc_t u_mean[kChunk];
    acc_t u_dot_d[kChunk];
    acc_t row_sums[kChunk];  // per column lane, summed in lane order at the end of the row
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task % l.rows;
      const int64_t group_feature = task / l.rows;
      const int64_t f = group_feature % s.features;
      const int64_t m = group_feature / s.features;
      const int64_t x_base = f * l.feature_stride + row * l.x_row_stride;
      const int64_t y_base = f * l.feature_stride + row * l.y_row_stride;
      const acc_t coef = kMode == Mode::Forward ? acc_t(0) : t.coefs[group_feature];
      std::fill(row_sums, row_sums + kChunk, acc_t(0));
      for (int64_t col0 = 0; col0 < l.cols; col0 += kChunk) {
        const int64_t width = std::min(kChunk, l.cols - col0);
        auto x_row = [&](int64_t g) { return t.x + (g * M + m) * l.x_sample_stride + x_base + col0; };
        std::fill(mean, mean + width, acc_t(0));
        for (int64_t g = 0; g < G; ++g) {
          const scalar_t* xr = x_row(g);
          if (kMode == Mode::Forward) {
            std::copy(xr, xr + width, t.y_out + (g * M + m) * l.y_sample_stride + y_base + col0);
          }
          for (int64_t j = 0; j < width; ++j) mean[j] += acc_t(xr[j]);
        }
        for (int64_t j = 0; j < width; ++j) mean[j] /= acc_t(G);
        std::fill(inv_std, inv_std + width, acc_t(0));
        std::fill(d_mean, d_mean + width, acc_t(0));
        for (int64_t g = 0; g < G; ++g) {
          const scalar_t* xr = x_row(g);
          for (int64_t j = 0; j < width; ++j) {
            const acc_t d = acc_t(xr[j]) - mean[j];
            inv_std[j] += d * d;
            if (kMode != Mode::Forward) d_mean[j] += d;
          }
        }
        group_std(inv_std, width, G);
        if (kMode != Mode::Forward) {
          for (int64_t j = 0; j < width; ++j) d_mean[j] /= acc_t(G);
        }
        // The gradients' d, centred again as autograd's chain through x - mean(x) centres it.
        auto centred = [&](const scalar_t* xr, int64_t j) { return (acc_t(xr[j]) - mean[j]) - d_mean[j]; };
        if (kMode == Mode::Forward) {
          for (int64_t j = 0; j < width; ++j) row_sums[j] += inv_std[j];
        } else {
          for (int64_t j = 0; j < width; ++j) inv_std[j] = acc_t(1) / inv_std[j];
        }
        if (kMode == Mode::Backward) {
          for (int64_t g = 0; g < G; ++g) {
            const int64_t n = g * M + m;
            const scalar_t* xr = x_row(g);
            const scalar_t* dy = t.y_in + n * l.y_sample_stride + y_base + col0;
            scalar_t* dx = t.x_out + n * l.x_sample_stride + x_base + col0;
            for (int64_t j = 0; j < width; ++j) {
              dx[j] = scalar_t(acc_t(dy[j]) + coef * inv_std[j] * centred(xr, j));
            }
          }
        }
        if (kMode == Mode::DoubleBackward) {
          std::fill(u_mean, u_mean + width, acc_t(0));
          std::fill(u_dot_d, u_dot_d + width, acc_t(0));
          for (int64_t g = 0; g < G; ++g) {
            const int64_t n = g * M + m;
            const scalar_t* xr = x_row(g);
            const scalar_t* ur = t.x_in + n * l.x_sample_stride + x_base + col0;
            std::copy(ur, ur + width, t.y_out + n * l.y_sample_stride + y_base + col0);
            for (int64_t j = 0; j < width; ++j) {
              const acc_t u = acc_t(ur[j]);
              u_mean[j] += u;
              u_dot_d[j] += u * centred(xr, j);
            }
          }
          for (int64_t j = 0; j < width; ++j) {
            u_mean[j] /= acc_t(G);
            row_sums[j] += u_dot_d[j] * inv_std[j];
          }
          for (int64_t g = 0; g < G; ++g) {
            const int64_t n = g * M + m;
            const scalar_t* xr = x_row(g);
            const scalar_t* ur = t.x_in + n * l.x_sample_stride + x_base + col0;
            scalar_t* dx = t.x_out + n * l.x_sample_stride + x_base + col0;
            for (int64_t j = 0; j < width; ++j) {
              const acc_t r = inv_std[j];
              dx[j] =
                  scalar_t(coef * r * ((acc_t(ur[j]) - u_mean[j]) - u_dot_d[j] * centred(xr, j) * r * r / acc_t(G)));
            }
          }
        }
      }
      if (kCopies) {
        acc_t row_sum = 0;
        for (int64_t j = 0; j < std::min(kChunk, l.cols); ++j) row_sum += row_sums[j];
        t.partials[task] = row_sum;
      }
    }
  });
}

// Channel C + f of every member of group m gets sum(partials of the (m, f) block) * scale; the
// partials are summed in row order whatever the thread count, so the result is deterministic.
template <typename scalar_t> void write_stats(scalar_t* y, const at::opmath_type<scalar_t>* partials,
                                              at::opmath_type<scalar_t> scale, const MinibatchStdParams& s,
                                              const Layout& l) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t group_feature = 0; group_feature < s.groups * s.features; ++group_feature) {
    acc_t total = 0;
    for (int64_t row = 0; row < l.rows; ++row) total += partials[group_feature * l.rows + row];
    const scalar_t stat = scalar_t(total * scale);
    const int64_t f = group_feature % s.features;
    const int64_t m = group_feature / s.features;
    for (int64_t g = 0; g < s.group_size; ++g) {
      scalar_t* yg = y + (g * s.groups + m) * l.y_sample_stride + l.stat_offset + f * l.stat_feature_stride;
      for (int64_t p = 0; p < s.pixels; ++p) yg[p * l.stat_pixel_stride] = stat;
    }
  }
}

// coefs[m, f] = a = sum of dy over the stddev channel f of group m's members / (K G).
template <typename scalar_t> void reduce_stat_grad(at::opmath_type<scalar_t>* coefs, const scalar_t* dy,
                                                   const MinibatchStdParams& s, const Layout& l) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = acc_t(1) / (acc_t(l.rows * l.cols) * acc_t(s.group_size));
  for (int64_t group_feature = 0; group_feature < s.groups * s.features; ++group_feature) {
    const int64_t f = group_feature % s.features;
    const int64_t m = group_feature / s.features;
    acc_t total = 0;
    for (int64_t g = 0; g < s.group_size; ++g) {
      const scalar_t* dyg = dy + (g * s.groups + m) * l.y_sample_stride + l.stat_offset + f * l.stat_feature_stride;
      for (int64_t p = 0; p < s.pixels; ++p) total += acc_t(dyg[p * l.stat_pixel_stride]);
    }
    coefs[group_feature] = total * scale;
  }
}

// The workspace holds the per-row partials, then the coefficients.
template <typename acc_t> acc_t* partials_of(const MinibatchStdParams& p) { return static_cast<acc_t*>(p.workspace); }
template <typename acc_t> acc_t* coefs_of(const MinibatchStdParams& p) {
  return partials_of<acc_t>(p) + p.groups * p.features * minibatch_std_layout(p).rows;
}

template <typename scalar_t, Mode kMode> void run(const MinibatchStdParams& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const Layout l = minibatch_std_layout(s);
  const Tensors<scalar_t> t{static_cast<scalar_t*>(s.y_out),
                            static_cast<scalar_t*>(s.x_out),
                            static_cast<const scalar_t*>(s.x),
                            static_cast<const scalar_t*>(s.grad),
                            static_cast<const scalar_t*>(s.upstream),
                            partials_of<acc_t>(s),
                            coefs_of<acc_t>(s)};
  if (kMode != Mode::Forward) reduce_stat_grad<scalar_t>(coefs_of<acc_t>(s), t.y_in, s, l);
  group_rows<scalar_t, kMode>(t, s, l);
  const acc_t positions = acc_t(l.rows * l.cols);
  if (kMode == Mode::Forward) write_stats<scalar_t>(t.y_out, t.partials, acc_t(1) / positions, s, l);
  if (kMode == Mode::DoubleBackward) {
    write_stats<scalar_t>(t.y_out, t.partials, acc_t(1) / (positions * acc_t(s.group_size)), s, l);
  }
}

}  // namespace

size_t minibatch_std_cpu_workspace_bytes(const MinibatchStdParams& p) {
  const int64_t entries = p.groups * p.features * (minibatch_std_layout(p).rows + 1);
  return size_t(entries) *
         dispatch_dtype<CpuElements>(p.dtype, [](auto tag) { return sizeof(at::opmath_type<decltype(tag)>); });
}

void minibatch_std_cpu(const MinibatchStdParams& p) {
  dispatch_dtype<CpuElements>(p.dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    dispatch_mode(p.mode, [&](auto mode) { run<scalar_t, decltype(mode)::value>(p); });
  });
}

}  // namespace gan_kernels
