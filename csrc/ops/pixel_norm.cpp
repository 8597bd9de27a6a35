// Contract of gan_kernels::pixel_norm and gan_kernels::pixel_norm_backward: schemas, checks, output
// allocation, the CPU/CUDA registrations and both ops' autograd. Fake kernels: gan_kernels/ops/pixel_norm.py.
#include "cpu/pixel_norm.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/csrc/autograd/custom_function.h>
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
  at::Tensor out = new_output_like(xd);
  if (x.numel() > 0) kernel(make_params(PixelNormMode::Forward, out, xd, at::Tensor(), dim, eps), xd);
  return out;
}

template <Kernel kernel> at::Tensor backward(const at::Tensor& grad, const at::Tensor& x, int64_t dim, double eps) {
  dim = check_args(x, dim, eps);
  check_same(grad, x, "grad", "x");
  const at::Tensor xd = dense_input(x);
  const at::Tensor gd = same_layout(grad, xd);
  at::Tensor out = new_output_like(xd);
  if (x.numel() > 0) kernel(make_params(PixelNormMode::Backward, out, xd, gd, dim, eps), xd);
  return out;
}

// The autograd of both ops, in C++: a Python autograd kernel (register_autograd) costs about 100 us
// per node, which made an R1 step of a small StyleGAN-like D with three pixel norms slower than the
// same step in eager PyTorch. Each backward calls ops through the dispatcher, so the double backward
// runs our kernel again and every further derivative is recorded.
using ForwardOp = at::Tensor(const at::Tensor&, int64_t, double);
using BackwardOp = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double);

const c10::TypedOperatorHandle<BackwardOp>& backward_op() {
  static const auto op = find_op<BackwardOp>("gan_kernels::pixel_norm_backward");
  return op;
}

// d/dx <u, J(x) g>, with J(x) g = r g - r^3 x mean(g x), r = rsqrt(mean(x^2) + eps), in aten ops so
// that it is differentiable in turn (third and higher derivatives).
at::Tensor backward_grad_x(const at::Tensor& upstream, const at::Tensor& grad, const at::Tensor& x, int64_t dim,
                           double eps) {
  const at::ScalarType compute = at::toOpMathType(x.scalar_type());
  const at::Tensor u = upstream.to(compute);
  const at::Tensor g = grad.to(compute);
  const at::Tensor xc = x.to(compute);
  const auto mean = [dim](const at::Tensor& t) { return thread_invariant_sum(t, dim, /*keepdim=*/true) / t.size(dim); };
  const at::Tensor r = (mean(xc.square()) + eps).rsqrt();
  const at::Tensor m_ug = mean(u * g);
  const at::Tensor m_ux = mean(u * xc);
  const at::Tensor m_gx = mean(g * xc);
  const at::Tensor grad_x = -r.pow(3) * (m_ug * xc + u * m_gx + g * m_ux - 3 * r.square() * xc * m_ux * m_gx);
  return grad_x.to(x.scalar_type());
}

class PixelNorm : public torch::autograd::Function<PixelNorm> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, int64_t dim, double eps) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<ForwardOp>("gan_kernels::pixel_norm");
    ctx->save_for_backward({x});
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["eps"] = eps;
    return op.call(x, dim, eps);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    return {backward_op().call(grads[0], x, ctx->saved_data["dim"].toInt(), ctx->saved_data["eps"].toDouble()),
            at::Tensor(), at::Tensor()};
  }
};

class PixelNormBackward : public torch::autograd::Function<PixelNormBackward> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& x,
                            int64_t dim, double eps) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({grad, x});
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["eps"] = eps;
    return backward_op().call(grad, x, dim, eps);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const int64_t dim = ctx->saved_data["dim"].toInt();
    const double eps = ctx->saved_data["eps"].toDouble();
    // The Jacobian of pixel norm is symmetric, so the backward is linear in grad with that same Jacobian.
    at::Tensor grad_grad = ctx->needs_input_grad(0) ? backward_op().call(grads[0], saved[1], dim, eps) : at::Tensor();
    at::Tensor grad_x =
        ctx->needs_input_grad(1) ? backward_grad_x(grads[0], saved[0], saved[1], dim, eps) : at::Tensor();
    return {grad_grad, grad_x, at::Tensor(), at::Tensor()};
  }
};

at::Tensor forward_autograd(const at::Tensor& x, int64_t dim, double eps) { return PixelNorm::apply(x, dim, eps); }

at::Tensor backward_autograd(const at::Tensor& grad, const at::Tensor& x, int64_t dim, double eps) {
  return PixelNormBackward::apply(grad, x, dim, eps);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gan_kernels, m) {
  m.def("pixel_norm(Tensor x, int dim, float eps) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("pixel_norm_backward(Tensor grad, Tensor x, int dim, float eps) -> Tensor", {at::Tag::pt2_compliant_tag});
}

#ifndef GAN_KERNELS_CUDA_EMULATION
TORCH_LIBRARY_IMPL(gan_kernels, CPU, m) {
  m.impl("pixel_norm", &forward<on_cpu>);
  m.impl("pixel_norm_backward", &backward<on_cpu>);
}
#endif

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gan_kernels, GAN_KERNELS_CUDA_KEY, m) {
  m.impl("pixel_norm", &forward<on_cuda>);
  m.impl("pixel_norm_backward", &backward<on_cuda>);
}
#endif

TORCH_LIBRARY_IMPL(gan_kernels, Autograd, m) {
  m.impl("pixel_norm", &forward_autograd);
  m.impl("pixel_norm_backward", &backward_autograd);
}

}  // namespace gan_kernels
