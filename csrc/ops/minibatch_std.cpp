// Contract of gan_kernels::minibatch_std, minibatch_std_backward and minibatch_std_double_backward:
// schemas, checks, output and workspace allocation, and the CPU/CUDA registrations. Autograd and
// fake kernels: gan_kernels/ops/minibatch_std.py.
#include "cpu/minibatch_std.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "ops/common.h"

#ifdef WITH_CUDA
#include "cuda/minibatch_std.h"
#endif

namespace gan_kernels {
namespace {

// channels_last inputs give channels_last outputs (and gradients); every other layout, NCHW-contiguous.
at::MemoryFormat output_format(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous() ? at::MemoryFormat::ChannelsLast
                                                                               : at::MemoryFormat::Contiguous;
}

// A device: the scratch its kernels need for a launch, and how it runs one on the device of `ref`.
struct Device {
  size_t (*workspace_bytes)(const MinibatchStdParams& p);
  void (*run)(const MinibatchStdParams& p, const at::Tensor& ref);
};

constexpr Device kCpu{minibatch_std_cpu_workspace_bytes,
                      [](const MinibatchStdParams& p, const at::Tensor&) { minibatch_std_cpu(p); }};
#ifdef WITH_CUDA
constexpr Device kCuda{minibatch_std_cuda_workspace_bytes, [](const MinibatchStdParams& p, const at::Tensor& ref) {
                         launch_on_cuda(ref, [&](cudaStream_t stream) { return launch_minibatch_std(p, stream); });
                       }};
#endif

// The checks of gan_kernels/ops/minibatch_std.py, with the same messages; returns the launch's shape.
MinibatchStdParams check_args(const at::Tensor& x, int64_t group_size, int64_t num_channels) {
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
  MinibatchStdParams p{};
  p.groups = g == 0 ? 0 : n / g;
  p.group_size = g;
  p.features = num_channels;
  p.channels = c;
  p.pixels = pixels;
  p.channels_last = channels_last;
  p.dtype = kernel_dtype(x.scalar_type());
  return p;
}

// Runs `mode` of the launch `p` with the given tensors (undefined where the mode has none) and the
// device's scratch.
void run(const Device& device, MinibatchStdParams p, MinibatchStdMode mode, const at::Tensor& x, const at::Tensor& grad,
         const at::Tensor& upstream, at::Tensor& y_out, at::Tensor& x_out) {
  p.mode = mode;
  p.x = x.const_data_ptr();
  p.grad = grad.defined() ? grad.const_data_ptr() : nullptr;
  p.upstream = upstream.defined() ? upstream.const_data_ptr() : nullptr;
  p.y_out = y_out.defined() ? y_out.mutable_data_ptr() : nullptr;
  p.x_out = x_out.defined() ? x_out.mutable_data_ptr() : nullptr;
  const at::Tensor workspace = at::empty({int64_t(device.workspace_bytes(p))}, x.options().dtype(at::kByte));
  p.workspace = workspace.mutable_data_ptr();
  device.run(p, x);
}

std::vector<int64_t> output_shape(const at::Tensor& x, int64_t num_channels) {
  return {x.size(0), x.size(1) + num_channels, x.size(2), x.size(3)};
}

void check_like(const at::Tensor& t, const char* arg, const at::Tensor& x, at::IntArrayRef shape, const char* what) {
  check_same_device(t, x, arg, "x");
  check_same_dtype(t, x, arg, "x");
  TORCH_CHECK_VALUE(t.sizes() == shape, arg, " has shape ", t.sizes(), " but ", what, " has shape ", shape);
}

template <const Device& device> at::Tensor forward(const at::Tensor& x, int64_t group_size, int64_t num_channels) {
  const MinibatchStdParams shape = check_args(x, group_size, num_channels);
  const at::MemoryFormat format = output_format(x);
  const at::Tensor xd = x.contiguous(format);
  at::Tensor out = new_output(output_shape(x, num_channels), x.options(), format);
  if (out.numel() == 0) return out;
  at::Tensor none;
  run(device, shape, MinibatchStdMode::Forward, xd, none, none, out, none);
  return out;
}

template <const Device& device>
at::Tensor backward(const at::Tensor& grad, const at::Tensor& x, int64_t group_size, int64_t num_channels) {
  const MinibatchStdParams shape = check_args(x, group_size, num_channels);
  check_like(grad, "grad", x, output_shape(x, num_channels), "the output of minibatch_std");
  const at::MemoryFormat format = output_format(x);
  const at::Tensor xd = x.contiguous(format);
  const at::Tensor gd = grad.contiguous(format);
  at::Tensor grad_x = new_output(x.sizes(), x.options(), format);
  if (grad_x.numel() == 0) return grad_x;
  at::Tensor none;
  run(device, shape, MinibatchStdMode::Backward, xd, gd, none, none, grad_x);
  return grad_x;
}

template <const Device& device>
std::tuple<at::Tensor, at::Tensor> double_backward(const at::Tensor& upstream, const at::Tensor& grad,
                                                   const at::Tensor& x, int64_t group_size, int64_t num_channels) {
  const MinibatchStdParams shape = check_args(x, group_size, num_channels);
  check_like(upstream, "upstream", x, x.sizes(), "x");
  check_like(grad, "grad", x, output_shape(x, num_channels), "the output of minibatch_std");
  const at::MemoryFormat format = output_format(x);
  const at::Tensor xd = x.contiguous(format);
  const at::Tensor gd = grad.contiguous(format);
  const at::Tensor ud = upstream.contiguous(format);
  at::Tensor grad_grad = new_output(grad.sizes(), x.options(), format);
  at::Tensor grad_x = new_output(x.sizes(), x.options(), format);
  if (grad_x.numel() == 0) return {grad_grad.zero_(), grad_x};
  run(device, shape, MinibatchStdMode::DoubleBackward, xd, gd, ud, grad_grad, grad_x);
  return {grad_grad, grad_x};
}

// The forward's autograd in C++ (a Python register_autograd node costs about 100 us per call). The
// backward calls the *_backward op through the dispatcher, so that op's own register_autograd
// (gan_kernels/ops/minibatch_std.py) carries the double backward.
class MinibatchStd : public torch::autograd::Function<MinibatchStd> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, int64_t group_size,
                            int64_t num_channels) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<at::Tensor(const at::Tensor&, int64_t, int64_t)>("gan_kernels::minibatch_std");
    ctx->save_for_backward({x});
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["num_channels"] = num_channels;
    return op.call(x, group_size, num_channels);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t)>(
        "gan_kernels::minibatch_std_backward");
    at::Tensor grad_x = op.call(grads[0], ctx->get_saved_variables()[0], ctx->saved_data["group_size"].toInt(),
                                ctx->saved_data["num_channels"].toInt());
    return {grad_x, at::Tensor(), at::Tensor()};
  }
};

at::Tensor forward_autograd(const at::Tensor& x, int64_t group_size, int64_t num_channels) {
  return MinibatchStd::apply(x, group_size, num_channels);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gan_kernels, m) {
  m.def("minibatch_std(Tensor x, int group_size, int num_channels) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("minibatch_std_backward(Tensor grad, Tensor x, int group_size, int num_channels) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "minibatch_std_double_backward(Tensor upstream, Tensor grad, Tensor x, int group_size, int num_channels) -> "
      "(Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

#ifndef GAN_KERNELS_CUDA_EMULATION
TORCH_LIBRARY_IMPL(gan_kernels, CPU, m) {
  m.impl("minibatch_std", &forward<kCpu>);
  m.impl("minibatch_std_backward", &backward<kCpu>);
  m.impl("minibatch_std_double_backward", &double_backward<kCpu>);
}
#endif

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gan_kernels, GAN_KERNELS_CUDA_KEY, m) {
  m.impl("minibatch_std", &forward<kCuda>);
  m.impl("minibatch_std_backward", &backward<kCuda>);
  m.impl("minibatch_std_double_backward", &double_backward<kCuda>);
}
#endif

TORCH_LIBRARY_IMPL(gan_kernels, Autograd, m) { m.impl("minibatch_std", &forward_autograd); }

}  // namespace gan_kernels
