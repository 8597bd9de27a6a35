// Contract of gan_kernels::pixel_norm and gan_kernels::pixel_norm_backward: schemas, checks, output
// allocation and the CPU/CUDA registrations. Autograd and fake kernels: gan_kernels/ops/pixel_norm.py.
#include "cpu/pixel_norm.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/common.h"

#ifdef WITH_CUDA
#include "cuda/pixel_norm.h"
#endif

namespace gan_kernels {
namespace {

using Kernel = void (*)(const PixelNormParams& p, const at::Tensor& ref);

void on_cpu(const PixelNormParams& p, const at::Tensor&) { pixel_norm_cpu(p); }

#ifdef WITH_CUDA
void on_cuda(const PixelNormParams& p, const at::Tensor& ref) {
  launch_on_cuda(ref, [&](cudaStream_t stream) { return launch_pixel_norm(p, stream); });
}
#endif

int64_t check_args(const at::Tensor& x, int64_t dim, double eps) {
  check_floating(x, "x");
  check_nonnegative(eps, "eps");
  return wrap_dim(dim, x, "dim");
}

// out, x and grad (undefined in the forward) are dense with the same strides.
PixelNormParams make_params(PixelNormMode mode, at::Tensor& out, const at::Tensor& x, const at::Tensor& grad,
                            int64_t dim, double eps) {
  const ChannelView view = channel_view(x, dim);
  return {out.mutable_data_ptr(),
          x.const_data_ptr(),
          grad.defined() ? grad.const_data_ptr() : nullptr,
          view.outer,
          view.channels,
          view.inner,
          eps,
          mode,
          kernel_dtype(x.scalar_type())};
}

template <Kernel kernel> at::Tensor forward(const at::Tensor& x, int64_t dim, double eps) {
  dim = check_args(x, dim, eps);
  const at::Tensor xd = dense_input(x);
  at::Tensor out = at::empty_like(xd);
  if (x.numel() > 0) kernel(make_params(PixelNormMode::Forward, out, xd, at::Tensor(), dim, eps), xd);
  return out;
}

template <Kernel kernel> at::Tensor backward(const at::Tensor& grad, const at::Tensor& x, int64_t dim, double eps) {
  dim = check_args(x, dim, eps);
  check_same(grad, x, "grad", "x");
  const at::Tensor xd = dense_input(x);
  const at::Tensor gd = same_layout(grad, xd);
  at::Tensor out = at::empty_like(xd);
  if (x.numel() > 0) kernel(make_params(PixelNormMode::Backward, out, xd, gd, dim, eps), xd);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gan_kernels, m) {
  m.def("pixel_norm(Tensor x, int dim, float eps) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("pixel_norm_backward(Tensor grad, Tensor x, int dim, float eps) -> Tensor", {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(gan_kernels, CPU, m) {
  m.impl("pixel_norm", &forward<on_cpu>);
  m.impl("pixel_norm_backward", &backward<on_cpu>);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gan_kernels, CUDA, m) {
  m.impl("pixel_norm", &forward<on_cuda>);
  m.impl("pixel_norm_backward", &backward<on_cuda>);
}
#endif

}  // namespace gan_kernels
