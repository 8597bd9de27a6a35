// Contract of gan_kernels::gradient_penalty and gan_kernels::gradient_penalty_backward: schemas, checks,
// output allocation and the CPU/CUDA registrations. Autograd and fake kernels: gan_kernels/ops/gradient_penalty.py.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>

#include "cpu/gradient_penalty.h"
#include "ops/common.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/gradient_penalty.h"
#endif

namespace gan_kernels {
namespace {

using Kernel = void (*)(at::Tensor& out, const at::Tensor& g, const at::Tensor& grad, SampleView view, double center);

void check_args(const at::Tensor& g, double center) {
  check_floating(g, "g");
  TORCH_CHECK_VALUE(g.dim() >= 1, "g must have a batch dimension, got a 0-dimensional tensor");
  TORCH_CHECK_VALUE(std::isfinite(center) && center >= 0, "center must be a finite number >= 0, got ", center);
}

// The kernels see sample i as the i-th block of per_sample consecutive elements. A dense tensor whose
// batch stride is the sample size is laid out that way (channels_last included); anything else is copied.
at::Tensor samples_in_blocks(const at::Tensor& g) {
  const int64_t samples = g.size(0);
  const bool blocks = g.is_non_overlapping_and_dense() && (samples <= 1 || g.stride(0) * samples == g.numel());
  return blocks ? g : g.contiguous();
}

SampleView sample_view(const at::Tensor& g) {
  const int64_t samples = g.size(0);
  return {samples, samples == 0 ? 0 : g.numel() / samples};
}

// The penalties of fp16/bf16 gradients are returned in float32, the type they are summed in:
// (||g|| - c)^2 passes fp16's 65504 at |g| of about 256.
at::ScalarType penalty_dtype(const at::Tensor& g) { return at::toOpMathType(g.scalar_type()); }

template <Kernel kernel> at::Tensor forward(const at::Tensor& g, double center) {
  check_args(g, center);
  const at::Tensor gd = samples_in_blocks(g);
  at::Tensor out = at::empty({g.size(0)}, g.options().dtype(penalty_dtype(g)));
  if (g.numel() > 0) {
    kernel(out, gd, at::Tensor(), sample_view(gd), center);
  } else {
    out.fill_(center * center);  // samples with no elements have norm 0
  }
  return out;
}

template <Kernel kernel> at::Tensor backward(const at::Tensor& grad, const at::Tensor& g, double center) {
  check_args(g, center);
  TORCH_CHECK_VALUE(grad.device() == g.device(), "grad is on ", grad.device(), " but g is on ", g.device());
  TORCH_CHECK_TYPE(grad.scalar_type() == penalty_dtype(g), "grad has dtype ", grad.scalar_type(),
                   " but the penalty of g (", g.scalar_type(), ") has dtype ", penalty_dtype(g));
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == g.size(0), "grad has shape ", grad.sizes(),
                    " but expected [", g.size(0), "], one value per sample of g");
  const at::Tensor gd = samples_in_blocks(g);
  const at::Tensor grad_c = grad.contiguous();
  // The output is allocated like g (what the fake kernel promises); when that layout is not one the
  // kernel can index, the kernel writes a block-ordered buffer that is copied over.
  at::Tensor out = at::empty_like(g);
  if (g.numel() == 0) return out;
  if (out.strides() == gd.strides()) {
    kernel(out, gd, grad_c, sample_view(gd), center);
  } else {
    at::Tensor blocks = at::empty_like(gd);
    kernel(blocks, gd, grad_c, sample_view(gd), center);
    out.copy_(blocks);
  }
  return out;
}

#ifdef WITH_CUDA
void gradient_penalty_cuda(at::Tensor& out, const at::Tensor& g, const at::Tensor& grad, SampleView view,
                           double center) {
  const c10::cuda::CUDAGuard guard(g.device());
  const bool backward = grad.defined();
  // Per-chunk partial sums, reduced in a fixed order by the second kernel: deterministic, no atomics.
  // The centre-0 backward needs no norm, hence no workspace.
  at::Tensor partials;
  if (!backward || center != 0) {
    partials = at::empty({view.samples * gradient_penalty_chunks(view.per_sample)},
                         g.options().dtype(penalty_dtype(g)));
  }
  const GradientPenaltyParams params{out.data_ptr(),
                                     g.const_data_ptr(),
                                     backward ? grad.const_data_ptr() : nullptr,
                                     partials.defined() ? partials.data_ptr() : nullptr,
                                     view.samples,
                                     view.per_sample,
                                     center,
                                     kernel_dtype(g.scalar_type())};
  C10_CUDA_CHECK(launch_gradient_penalty(params, c10::cuda::getCurrentCUDAStream()));
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(gan_kernels, m) {
  m.def("gradient_penalty(Tensor g, float center) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("gradient_penalty_backward(Tensor grad, Tensor g, float center) -> Tensor", {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(gan_kernels, CPU, m) {
  m.impl("gradient_penalty", &forward<gradient_penalty_cpu>);
  m.impl("gradient_penalty_backward", &backward<gradient_penalty_cpu>);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gan_kernels, CUDA, m) {
  m.impl("gradient_penalty", &forward<gradient_penalty_cuda>);
  m.impl("gradient_penalty_backward", &backward<gradient_penalty_cuda>);
}
#endif

}  // namespace gan_kernels
