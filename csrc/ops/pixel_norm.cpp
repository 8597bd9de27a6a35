// Contract of gan_kernels::pixel_norm and gan_kernels::pixel_norm_backward: schemas, checks, output
// allocation and the CPU/CUDA registrations. Autograd and fake kernels: gan_kernels/ops/pixel_norm.py.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "cpu/pixel_norm.h"
#include "ops/common.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/pixel_norm.h"
#endif

namespace gan_kernels {
namespace {

using Kernel = void (*)(at::Tensor& out, const at::Tensor& x, const at::Tensor& grad, ChannelView view, double eps);

int64_t check_args(const at::Tensor& x, int64_t dim, double eps) {
  check_floating(x, "x");
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps must be a finite number >= 0, got ", eps);
  return wrap_dim(dim, x, "dim");
}

template <Kernel kernel> at::Tensor forward(const at::Tensor& x, int64_t dim, double eps) {
  dim = check_args(x, dim, eps);
  const at::Tensor xd = dense_input(x);
  at::Tensor out = at::empty_like(xd);
  if (x.numel() > 0) kernel(out, xd, at::Tensor(), channel_view(xd, dim), eps);
  return out;
}

template <Kernel kernel> at::Tensor backward(const at::Tensor& grad, const at::Tensor& x, int64_t dim, double eps) {
  dim = check_args(x, dim, eps);
  check_same(grad, x, "grad", "x");
  const at::Tensor xd = dense_input(x);
  const at::Tensor gd = same_layout(grad, xd);
  at::Tensor out = at::empty_like(xd);
  if (x.numel() > 0) kernel(out, xd, gd, channel_view(xd, dim), eps);
  return out;
}

#ifdef WITH_CUDA
void pixel_norm_cuda(at::Tensor& out, const at::Tensor& x, const at::Tensor& grad, ChannelView view, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  const PixelNormParams params{out.data_ptr(),  x.const_data_ptr(), grad.defined() ? grad.const_data_ptr() : nullptr,
                               view.outer,      view.channels,      view.inner,
                               eps,             kernel_dtype(x.scalar_type())};
  C10_CUDA_CHECK(launch_pixel_norm(params, c10::cuda::getCurrentCUDAStream()));
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(gan_kernels, m) {
  m.def("pixel_norm(Tensor x, int dim, float eps) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("pixel_norm_backward(Tensor grad, Tensor x, int dim, float eps) -> Tensor", {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(gan_kernels, CPU, m) {
  m.impl("pixel_norm", &forward<pixel_norm_cpu>);
  m.impl("pixel_norm_backward", &backward<pixel_norm_cpu>);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gan_kernels, CUDA, m) {
  m.impl("pixel_norm", &forward<pixel_norm_cuda>);
  m.impl("pixel_norm_backward", &backward<pixel_norm_cuda>);
}
#endif

}  // namespace gan_kernels
