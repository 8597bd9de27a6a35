// Contract of gan_kernels::gradient_penalty and gan_kernels::gradient_penalty_backward: schemas, checks,
// output allocation and the CPU/CUDA registrations. Autograd and fake kernels: gan_kernels/ops/gradient_penalty.py.
#include "cpu/gradient_penalty.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "ops/common.h"

#ifdef WITH_CUDA
#include "cuda/gradient_penalty.h"
#endif

namespace gan_kernels {
namespace {

// A device: the chunk its kernels reduce a sample in, and how it runs a launch on the device of `ref`.
struct Device {
  int64_t chunk;
  void (*run)(const GradientPenaltyParams& p, const at::Tensor& ref);
};

constexpr Device kCpu{kCpuGradientPenaltyChunk,
                      [](const GradientPenaltyParams& p, const at::Tensor&) { gradient_penalty_cpu(p); }};
#ifdef WITH_CUDA
constexpr Device kCuda{kCudaGradientPenaltyChunk, [](const GradientPenaltyParams& p, const at::Tensor& ref) {
                         launch_on_cuda(ref, [&](cudaStream_t stream) { return launch_gradient_penalty(p, stream); });
                       }};
#endif

void check_args(const at::Tensor& g, double center) {
  check_floating(g, "g");
  TORCH_CHECK_VALUE(g.dim() >= 1, "g must have a batch dimension, got a 0-dimensional tensor");
  check_nonnegative(center, "center");
}

// The kernels see sample i as the i-th block of per_sample consecutive elements. A dense tensor whose
// batch stride is the sample size is laid out that way (channels_last included); anything else is copied.
at::Tensor samples_in_blocks(const at::Tensor& g) {
  const int64_t samples = g.size(0);
  const bool blocks = g.is_non_overlapping_and_dense() && (samples <= 1 || g.stride(0) * samples == g.numel());
  return blocks ? g : g.contiguous();
}

// The penalties of fp16/bf16 gradients are returned in float32, the type they are summed in:
// (||g|| - c)^2 passes fp16's 65504 at |g| of about 256.
at::ScalarType penalty_dtype(const at::Tensor& g) { return at::toOpMathType(g.scalar_type()); }

// A [samples] vector the backward takes beside g (its upstream gradient, the forward's sums of
// squares): on g's device, in the penalty's dtype, one value per sample.
void check_per_sample(const at::Tensor& t, const char* name, const at::Tensor& g) {
  check_same_device(t, g, name, "g");
  TORCH_CHECK_TYPE(t.scalar_type() == penalty_dtype(g), name, " has dtype ", dtype_name(t.scalar_type()),
                   " but the penalty of g (", dtype_name(g.scalar_type()), ") has dtype ",
                   dtype_name(penalty_dtype(g)));
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == g.size(0), name, " has shape ", t.sizes(), " but expected [",
                    g.size(0), "], one value per sample of g");
}

// Runs `device`'s kernels on g (samples in blocks, numel > 0) with the scratch the launch needs.
void run(const Device& device, GradientPenaltyMode mode, at::Tensor& out, const at::Tensor& g, const at::Tensor& grad,
         const at::Tensor& sum_squares, double center) {
  GradientPenaltyParams p{};
  p.out = out.mutable_data_ptr();
  p.g = g.const_data_ptr();
  p.grad = grad.defined() ? grad.const_data_ptr() : nullptr;
  // Written by the forward, only read by the backward (mutable_data_ptr would materialise a
  // copy-on-write input there).
  p.sum_squares = mode == GradientPenaltyMode::Forward ? sum_squares.mutable_data_ptr()
                                                       : const_cast<void*>(sum_squares.const_data_ptr());
  p.samples = g.size(0);
  p.per_sample = g.numel() / p.samples;
  p.chunk = device.chunk;
  p.center = center;
  p.mode = mode;
  p.dtype = kernel_dtype(g.scalar_type());
  // Per-chunk partial sums, added in a fixed order: deterministic, no atomics.
  const at::Tensor partials = at::empty({gradient_penalty_partials(p)}, g.options().dtype(penalty_dtype(g)));
  p.partials = partials.numel() > 0 ? partials.mutable_data_ptr() : nullptr;
  device.run(p, g);
}

// The penalties and each sample's sum of squares, which the backward takes instead of recomputing the
// norms from g. A sample with no elements has sum 0 and penalty center^2.
template <const Device& device> std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& g, double center) {
  check_args(g, center);
  const at::Tensor gd = samples_in_blocks(g);
  at::Tensor out = at::empty({g.size(0)}, g.options().dtype(penalty_dtype(g)));
  at::Tensor sum_squares = at::empty_like(out);
  if (g.numel() > 0) {
    run(device, GradientPenaltyMode::Forward, out, gd, at::Tensor(), sum_squares, center);
  } else {
    sum_squares.zero_();
    out.fill_(center * center);
  }
  return {out, sum_squares};
}

template <const Device& device>
at::Tensor backward(const at::Tensor& grad, const at::Tensor& g, const at::Tensor& sum_squares, double center) {
  check_args(g, center);
  check_per_sample(grad, "grad", g);
  check_per_sample(sum_squares, "sum_squares", g);
  const at::Tensor gd = samples_in_blocks(g);
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor sum_squares_c = sum_squares.contiguous();
  // The output is allocated like g (what the fake kernel promises); when that layout is not one the
  // kernel can index, the kernel writes a block-ordered buffer that is copied over.
  at::Tensor out = new_output_like(g);
  if (g.numel() == 0) return out;
  if (out.strides() == gd.strides()) {
    run(device, GradientPenaltyMode::Backward, out, gd, grad_c, sum_squares_c, center);
  } else {
    at::Tensor blocks = new_output_like(gd);
    run(device, GradientPenaltyMode::Backward, blocks, gd, grad_c, sum_squares_c, center);
    out.copy_(blocks);
  }
  return out;
}

// The forward's autograd in C++ (a Python register_autograd node costs about 100 us per call). The
// backward calls the *_backward op through the dispatcher, so that op's own register_autograd
// (gan_kernels/ops/gradient_penalty.py) carries the double backward.
class GradientPenalty : public torch::autograd::Function<GradientPenalty> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& g,
                                                double center) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op =
        find_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double)>("gan_kernels::gradient_penalty");
    auto [penalty, sum_squares] = op.call(g, center);
    ctx->mark_non_differentiable({sum_squares});
    ctx->save_for_backward({g, sum_squares});
    ctx->saved_data["center"] = center;
    return {penalty, sum_squares};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>(
        "gan_kernels::gradient_penalty_backward");
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    return {op.call(grads[0], saved[0], saved[1], ctx->saved_data["center"].toDouble()), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> forward_autograd(const at::Tensor& g, double center) {
  const torch::autograd::variable_list out = GradientPenalty::apply(g, center);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gan_kernels, m) {
  m.def("gradient_penalty(Tensor g, float center) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  m.def("gradient_penalty_backward(Tensor grad, Tensor g, Tensor sum_squares, float center) -> Tensor",
        {at::Tag::pt2_compliant_tag});
}

#ifndef GAN_KERNELS_CUDA_EMULATION
TORCH_LIBRARY_IMPL(gan_kernels, CPU, m) {
  m.impl("gradient_penalty", &forward<kCpu>);
  m.impl("gradient_penalty_backward", &backward<kCpu>);
}
#endif

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gan_kernels, GAN_KERNELS_CUDA_KEY, m) {
  m.impl("gradient_penalty", &forward<kCuda>);
  m.impl("gradient_penalty_backward", &backward<kCuda>);
}
#endif

TORCH_LIBRARY_IMPL(gan_kernels, Autograd, m) { m.impl("gradient_penalty", &forward_autograd); }

}  // namespace gan_kernels
