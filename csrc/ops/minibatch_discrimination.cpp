// Contract of gan_kernels::minibatch_discrimination, minibatch_discrimination_backward and
// minibatch_discrimination_double_backward: schemas, checks, output allocation and the CPU/CUDA
// registrations. Autograd and fake kernels: gan_kernels/ops/minibatch_discrimination.py.
#include "cpu/minibatch_discrimination.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <tuple>

#include "ops/common.h"

#ifdef WITH_CUDA
#include "cuda/minibatch_discrimination.h"
#endif

namespace gan_kernels {
namespace {

// The checks of gan_kernels/ops/minibatch_discrimination.py, with the same messages.
void check_m(const at::Tensor& m) {
  check_floating(m, "m");
  TORCH_CHECK_VALUE(m.dim() == 3, "m must be a 3-D tensor [N, B, C] (samples, kernels, kernel dims), got shape ",
                    m.sizes());
}

void check_grad(const at::Tensor& grad, const at::Tensor& m) {
  check_same_device(grad, m, "grad", "m");
  check_same_dtype(grad, m, "grad", "m");
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == m.size(0) && grad.size(1) == m.size(1), "grad has shape ",
                    grad.sizes(), " but the output of minibatch_discrimination has shape [", m.size(0), ", ", m.size(1),
                    "]");
}

at::Tensor per_row(const at::Tensor& m) { return at::empty({m.size(0), m.size(1)}, m.options()); }

bool has_rows(const at::Tensor& m) { return m.size(0) > 0 && m.size(1) > 0; }

// How a device runs a launch on the device of `ref`.
using Kernel = void (*)(const MinibatchDiscriminationParams& p, const at::Tensor& ref);

void on_cpu(const MinibatchDiscriminationParams& p, const at::Tensor&) { minibatch_discrimination_cpu(p); }

#ifdef WITH_CUDA
void on_cuda(const MinibatchDiscriminationParams& p, const at::Tensor& ref) {
  launch_on_cuda(ref, [&](cudaStream_t stream) { return launch_minibatch_discrimination(p, stream); });
}
#endif

MinibatchDiscriminationStrides strides_of(const at::Tensor& t) {
  if (!t.defined()) return {};
  return {t.stride(0), t.stride(1), t.dim() == 3 ? t.stride(2) : 0};
}

// Undefined tensors are the ones the mode does not use.
template <Kernel kernel> void run(MinibatchDiscriminationMode mode, const at::Tensor& scalar_out,
                                  const at::Tensor& vector_out, const at::Tensor& m, const at::Tensor& grad,
                                  const at::Tensor& upstream) {
  const MinibatchDiscriminationParams params{scalar_out.defined() ? scalar_out.mutable_data_ptr() : nullptr,
                                             vector_out.defined() ? vector_out.mutable_data_ptr() : nullptr,
                                             m.const_data_ptr(),
                                             grad.defined() ? grad.const_data_ptr() : nullptr,
                                             upstream.defined() ? upstream.const_data_ptr() : nullptr,
                                             strides_of(scalar_out),
                                             strides_of(vector_out),
                                             strides_of(m),
                                             strides_of(grad),
                                             strides_of(upstream),
                                             m.size(0),
                                             m.size(1),
                                             m.size(2),
                                             mode,
                                             kernel_dtype(m.scalar_type())};
  kernel(params, m);
}

// The kernels read every input through its strides: no layout copies.
template <Kernel kernel> at::Tensor forward(const at::Tensor& m) {
  check_m(m);
  at::Tensor o = per_row(m);
  if (!has_rows(m)) return o;
  run<kernel>(MinibatchDiscriminationMode::Forward, o, at::Tensor(), m, at::Tensor(), at::Tensor());
  return o;
}

template <Kernel kernel> at::Tensor backward(const at::Tensor& grad, const at::Tensor& m) {
  check_m(m);
  check_grad(grad, m);
  at::Tensor grad_m = new_output_like(m);  // m's strides where m is dense, else contiguous: as the fake kernel
  if (grad_m.numel() == 0) return grad_m;
  run<kernel>(MinibatchDiscriminationMode::Backward, at::Tensor(), grad_m, m, grad, at::Tensor());
  return grad_m;
}

template <Kernel kernel> std::tuple<at::Tensor, at::Tensor> double_backward(const at::Tensor& upstream,
                                                                            const at::Tensor& grad,
                                                                            const at::Tensor& m) {
  check_m(m);
  check_grad(grad, m);
  check_same(upstream, m, "upstream", "m");
  at::Tensor grad_grad = per_row(m);
  at::Tensor grad_m = new_output_like(m);
  if (!has_rows(m)) return {grad_grad, grad_m};
  run<kernel>(MinibatchDiscriminationMode::DoubleBackward, grad_grad, grad_m, m, grad, upstream);
  return {grad_grad, grad_m};
}

// The forward's autograd in C++ (a Python register_autograd node costs about 100 us per call). The
// backward calls the *_backward op through the dispatcher, so that op's own register_autograd
// (gan_kernels/ops/minibatch_discrimination.py) carries the double backward.
class MinibatchDiscrimination : public torch::autograd::Function<MinibatchDiscrimination> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& m) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<at::Tensor(const at::Tensor&)>("gan_kernels::minibatch_discrimination");
    ctx->save_for_backward({m});
    return op.call(m);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    static const auto op =
        find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("gan_kernels::minibatch_discrimination_backward");
    return {op.call(grads[0], ctx->get_saved_variables()[0])};
  }
};

at::Tensor forward_autograd(const at::Tensor& m) { return MinibatchDiscrimination::apply(m); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(gan_kernels, m) {
  m.def("minibatch_discrimination(Tensor m) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("minibatch_discrimination_backward(Tensor grad, Tensor m) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("minibatch_discrimination_double_backward(Tensor upstream, Tensor grad, Tensor m) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
}

#ifndef GAN_KERNELS_CUDA_EMULATION
TORCH_LIBRARY_IMPL(gan_kernels, CPU, m) {
  m.impl("minibatch_discrimination", &forward<on_cpu>);
  m.impl("minibatch_discrimination_backward", &backward<on_cpu>);
  m.impl("minibatch_discrimination_double_backward", &double_backward<on_cpu>);
}
#endif

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gan_kernels, GAN_KERNELS_CUDA_KEY, m) {
  m.impl("minibatch_discrimination", &forward<on_cuda>);
  m.impl("minibatch_discrimination_backward", &backward<on_cuda>);
  m.impl("minibatch_discrimination_double_backward", &double_backward<on_cuda>);
}
#endif

TORCH_LIBRARY_IMPL(gan_kernels, Autograd, m) { m.impl("minibatch_discrimination", &forward_autograd); }

}  // namespace gan_kernels
