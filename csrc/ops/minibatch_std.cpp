// Contract of gan_kernels::minibatch_std and gan_kernels::minibatch_std_backward: schemas, checks,
// output and workspace allocation, and the CPU/CUDA registrations. Autograd and fake kernels:
// gan_kernels/ops/minibatch_std.py.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu/minibatch_std.h"
#include "ops/common.h"

#ifdef WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/minibatch_std.h"
#endif

namespace gan_kernels {
namespace {

// channels_last inputs give channels_last outputs (and gradients); every other layout, NCHW-contiguous.
at::MemoryFormat output_format(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous() ? at::MemoryFormat::ChannelsLast
                                                                                : at::MemoryFormat::Contiguous;
}

// The checks of gan_kernels/ops/minibatch_std.py, with the same messages.
MinibatchStdShape check_args(const at::Tensor& x, int64_t group_size, int64_t num_channels) {
  check_floating(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be a 4-D tensor [N, C, H, W], got shape ", x.sizes());
  TORCH_CHECK_VALUE(group_size >= 1, "group_size must be >= 1, got ", group_size);
  TORCH_CHECK_VALUE(num_channels >= 1, "num_channels must be >= 1, got ", num_channels);
  const int64_t n = x.size(0);
  const int64_t c = x.size(1);
  TORCH_CHECK_VALUE(c > 0 && c % num_channels == 0, "the number of channels C=", c,
                    " of x is not a positive multiple of num_channels F=", num_channels,
                    "; use a num_channels that divides C");
  const int64_t g = std::min(group_size, n);
  TORCH_CHECK_VALUE(n == 0 || n % g == 0, "batch size N=", n, " is not divisible by group size G=", g,
                    "; use a batch size that is a multiple of ", g, " or a group_size that divides ", n);
  const int64_t pixels = x.size(2) * x.size(3);
  // With one pixel NCHW and NHWC are the same memory; the NHWC view gives the kernels long rows.
  const bool channels_last = output_format(x) == at::MemoryFormat::ChannelsLast || pixels == 1;
  return {g == 0 ? 0 : n / g, g, num_channels, c, pixels, channels_last};
}

#ifdef WITH_CUDA
MinibatchStdParams cuda_params(void* out, const at::Tensor& x, const at::Tensor& grad, const MinibatchStdShape& s) {
  const void* grad_ptr = grad.defined() ? grad.const_data_ptr() : nullptr;
  return {out,        x.const_data_ptr(), grad_ptr, /*workspace=*/nullptr, s.groups, s.group_size,
          s.features, s.channels,         s.pixels, s.channels_last,         cuda_dtype(x.scalar_type())};
}

void launch(MinibatchStdParams params, const at::Tensor& x) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor workspace =
      at::empty({int64_t(minibatch_std_workspace_bytes(params))}, x.options().dtype(at::kByte));
  params.workspace = workspace.mutable_data_ptr();
  C10_CUDA_CHECK(launch_minibatch_std(params, at::cuda::getCurrentCUDAStream()));
}
#endif

at::Tensor accumulators(const at::Tensor& x, int64_t count) {
  return at::empty({count}, x.options().dtype(at::toOpMathType(x.scalar_type())));
}

at::Tensor forward(const at::Tensor& x, int64_t group_size, int64_t num_channels) {
  const MinibatchStdShape shape = check_args(x, group_size, num_channels);
  const at::MemoryFormat format = output_format(x);
  const at::Tensor xd = x.contiguous(format);
  at::Tensor out = at::empty({x.size(0), x.size(1) + num_channels, x.size(2), x.size(3)},
                             x.options().memory_format(format));
  if (out.numel() == 0) return out;
#ifdef WITH_CUDA
  if (x.is_cuda()) {
    launch(cuda_params(out.mutable_data_ptr(), xd, at::Tensor(), shape), xd);
    return out;
  }
#endif
  at::Tensor partials = accumulators(xd, shape.groups * shape.features * minibatch_std_rows(shape));
  minibatch_std_cpu(out, xd, partials, shape);
  return out;
}

at::Tensor backward(const at::Tensor& grad, const at::Tensor& x, int64_t group_size, int64_t num_channels) {
  const MinibatchStdShape shape = check_args(x, group_size, num_channels);
  TORCH_CHECK_VALUE(grad.device() == x.device(), "grad is on ", grad.device(), " but x is on ", x.device());
  TORCH_CHECK_TYPE(grad.scalar_type() == x.scalar_type(), "grad has dtype ", grad.scalar_type(),
                   " but x has dtype ", x.scalar_type());
  const std::vector<int64_t> out_shape{x.size(0), x.size(1) + num_channels, x.size(2), x.size(3)};
  TORCH_CHECK_VALUE(grad.sizes() == at::IntArrayRef(out_shape), "grad has shape ", grad.sizes(),
                    " but the output of minibatch_std has shape ", at::IntArrayRef(out_shape));
  const at::MemoryFormat format = output_format(x);
  const at::Tensor xd = x.contiguous(format);
  const at::Tensor gd = grad.contiguous(format);
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(format));
  if (grad_x.numel() == 0) return grad_x;
#ifdef WITH_CUDA
  if (x.is_cuda()) {
    launch(cuda_params(grad_x.mutable_data_ptr(), xd, gd, shape), xd);
    return grad_x;
  }
#endif
  at::Tensor coefs = accumulators(xd, shape.groups * shape.features);
  minibatch_std_backward_cpu(grad_x, gd, xd, coefs, shape);
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gan_kernels, m) {
  m.def("minibatch_std(Tensor x, int group_size, int num_channels) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("minibatch_std_backward(Tensor grad, Tensor x, int group_size, int num_channels) -> Tensor",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(gan_kernels, CPU, m) {
  m.impl("minibatch_std", &forward);
  m.impl("minibatch_std_backward", &backward);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gan_kernels, CUDA, m) {
  m.impl("minibatch_std", &forward);
  m.impl("minibatch_std_backward", &backward);
}
#endif

}  // namespace gan_kernels
