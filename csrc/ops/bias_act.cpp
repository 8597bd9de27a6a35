// Contract of gan_kernels::bias_act, bias_act_grad and bias_act_grad2: schemas, checks, output
// allocation, the CPU/CUDA registrations and bias_act's autograd. The other two ops' autograd (the
// second and higher derivatives) and the fake kernels: gan_kernels/ops/bias_act.py.
#include "common/bias_act.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "cpu/bias_act.h"
#include "ops/common.h"

#ifdef WITH_CUDA
#include "cuda/bias_act.h"
#endif

namespace gan_kernels {
namespace {

// "linear, relu, ...": the activations of the table, as the checks list them.
std::string activation_names() {
  std::string names;
  const char* separator = "";
#define GAN_KERNELS_ACTIVATION_NAME(enumerator, name, alpha, gain, piecewise_linear) \
  names += separator + std::string(name);                                            \
  separator = ", ";
  GAN_KERNELS_FOR_EACH_ACTIVATION(GAN_KERNELS_ACTIVATION_NAME)
#undef GAN_KERNELS_ACTIVATION_NAME
  return names;
}

Activation parse_activation(c10::string_view act) {
#define GAN_KERNELS_ACTIVATION_MATCH(enumerator, name, alpha, gain, piecewise_linear) \
  if (act == name) return Activation::enumerator;
  GAN_KERNELS_FOR_EACH_ACTIVATION(GAN_KERNELS_ACTIVATION_MATCH)
#undef GAN_KERNELS_ACTIVATION_MATCH
  TORCH_CHECK_VALUE(false, "act must be one of ", activation_names(), ", got '", std::string(act), "'");
}

// The arguments every mode shares, checked once; returns the wrapped dim.
struct Checked {
  Activation act;
  int64_t dim;
  BiasActScalars<double> scalars;
  at::Tensor bias;  // contiguous, or undefined
};

Checked check_args(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act,
                   double alpha, double gain, std::optional<double> clamp, double scale) {
  check_floating(x, "x");
  const Activation activation = parse_activation(act);
  dim = wrap_dim(dim, x, "dim");
  check_finite(alpha, "alpha");
  check_finite(gain, "gain");
  check_finite(scale, "scale");
  if (clamp) check_nonnegative(*clamp, "clamp");
  at::Tensor bias;
  if (b && b->defined()) {
    check_same_device(*b, x, "b", "x");
    check_same_dtype(*b, x, "b", "x");
    TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == x.size(dim), "b must be a 1-D tensor of length x.shape[", dim,
                      "] = ", x.size(dim), ", got shape ", b->sizes());
    bias = b->contiguous();
  }
  return {activation, dim, {alpha, gain, clamp ? *clamp : -1.0, scale}, bias};
}

// Whether the sign of y alone gives act'(v), so that the backward can keep y (which the next layer
// keeps anyway) instead of x. A clamp needs x: an output at +-clamp may or may not have been clipped.
bool gradient_from_output(Activation act, double alpha, double gain, std::optional<double> clamp) {
  return piecewise_linear(act) && alpha >= 0 && gain != 0 && !clamp;
}

// Every kernel takes the same torch-free description of its launch; `ref` names the device.
using Kernel = void (*)(const BiasActParams& params, const at::Tensor& ref);

// `ref` is x, or y for GradFromY; `grad` is dL/dy (undefined in Forward); `upstream` is used by
// Grad2 only. ref, grad, upstream and out are dense with the same strides.
BiasActParams make_params(BiasActMode mode, Activation act, at::Tensor& out, const at::Tensor& ref,
                          const at::Tensor& grad, const at::Tensor& upstream, const at::Tensor& bias,
                          const ChannelView& view, const BiasActScalars<double>& scalars) {
  const bool grad2 = mode == BiasActMode::Grad2;
  BiasActParams params{};
  params.out = out.mutable_data_ptr();
  params.ref = ref.const_data_ptr();
  params.g1 = grad2 ? upstream.const_data_ptr() : (grad.defined() ? grad.const_data_ptr() : nullptr);
  params.g2 = grad2 ? grad.const_data_ptr() : nullptr;
  params.bias = bias.defined() ? bias.const_data_ptr() : nullptr;
  params.numel = ref.numel();
  params.channels = view.channels;
  params.inner = view.inner;
  params.scalars = scalars;
  if (act == Activation::Linear) params.scalars.alpha = 1;  // linear runs as lrelu (see act_value)
  params.act = act;
  params.mode = mode;
  params.dtype = kernel_dtype(ref.scalar_type());
  return params;
}

void on_cpu(const BiasActParams& params, const at::Tensor&) { bias_act_cpu(params); }

#ifdef WITH_CUDA
void on_cuda(const BiasActParams& params, const at::Tensor& ref) {
  launch_on_cuda(ref, [&](cudaStream_t stream) { return launch_bias_act(params, stream); });
}
#endif

template <Kernel kernel> at::Tensor forward(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim,
                                            c10::string_view act, double alpha, double gain,
                                            std::optional<double> clamp, double scale) {
  const Checked c = check_args(x, b, dim, act, alpha, gain, clamp, scale);
  const at::Tensor xd = dense_input(x);
  at::Tensor out = at::empty_like(xd);
  if (x.numel() > 0) {
    kernel(make_params(BiasActMode::Forward, c.act, out, xd, at::Tensor(), at::Tensor(), c.bias,
                       channel_view(xd, c.dim), c.scalars),
           xd);
  }
  return out;
}

template <Kernel kernel> at::Tensor grad(const at::Tensor& grad, const at::Tensor& ref,
                                         const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act,
                                         double alpha, double gain, std::optional<double> clamp, double scale,
                                         bool ref_is_y) {
  const char* ref_name = ref_is_y ? "y" : "x";
  check_floating(ref, ref_name);
  const Checked c = check_args(ref, b, dim, act, alpha, gain, clamp, scale);
  check_same(grad, ref, "grad", ref_name);
  TORCH_CHECK_VALUE(!ref_is_y || gradient_from_output(c.act, alpha, gain, clamp),
                    "ref_is_y needs act linear, relu or lrelu with alpha >= 0, gain != 0 and clamp None");
  const at::Tensor rd = dense_input(ref);
  const at::Tensor gd = same_layout(grad, rd);
  at::Tensor out = at::empty_like(rd);
  if (ref.numel() > 0) {
    kernel(make_params(ref_is_y ? BiasActMode::GradFromY : BiasActMode::GradFromX, c.act, out, rd, gd, at::Tensor(),
                       c.bias, channel_view(rd, c.dim), c.scalars),
           rd);
  }
  return out;
}

template <Kernel kernel> at::Tensor grad2(const at::Tensor& upstream, const at::Tensor& grad, const at::Tensor& x,
                                          const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act,
                                          double alpha, double gain, std::optional<double> clamp, double scale) {
  const Checked c = check_args(x, b, dim, act, alpha, gain, clamp, scale);
  check_same(upstream, x, "upstream", "x");
  check_same(grad, x, "grad", "x");
  const at::Tensor xd = dense_input(x);
  at::Tensor out = at::empty_like(xd);
  if (piecewise_linear(c.act)) return out.zero_();  // act'' = 0 wherever it exists
  if (x.numel() > 0) {
    kernel(make_params(BiasActMode::Grad2, c.act, out, xd, same_layout(grad, xd), same_layout(upstream, xd), c.bias,
                       channel_view(xd, c.dim), c.scalars),
           xd);
  }
  return out;
}

// dL/db: dL/dv summed over every dim but `dim`.
at::Tensor sum_to_dim(const at::Tensor& grad_v, int64_t dim) {
  std::vector<int64_t> others;
  for (int64_t d = 0; d < grad_v.dim(); ++d) {
    if (d != dim) others.push_back(d);
  }
  return others.empty() ? grad_v : grad_v.sum(others);  // sum over no dims would sum everything
}

// bias_act's autograd in C++: a Python register_autograd node costs about 100 us per call, and a
// StyleGAN network calls bias_act after every layer. The backward calls bias_act_grad through the
// dispatcher, so that op's own register_autograd carries the second derivative.
class BiasAct : public torch::autograd::Function<BiasAct> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act, double alpha,
                            double gain, std::optional<double> clamp, double scale) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op =
        find_op<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, int64_t, c10::string_view, double,
                           double, std::optional<double>, double)>("gan_kernels::bias_act");
    at::Tensor y = op.call(x, b, dim, act, alpha, gain, clamp, scale);
    const Activation activation = parse_activation(act);
    // What the backward needs: nothing for a plain linear (dL/dv = gain dL/dy), y where its sign
    // gives act'(v), else x and b.
    const bool needs_nothing = activation == Activation::Linear && !clamp;
    const bool ref_is_y = !needs_nothing && gradient_from_output(activation, alpha, gain, clamp);
    if (!needs_nothing) ctx->save_for_backward({ref_is_y ? y : x, ref_is_y || !b ? at::Tensor() : *b});
    ctx->saved_data["has_bias"] = b.has_value() && b->defined();
    ctx->saved_data["needs_nothing"] = needs_nothing;
    ctx->saved_data["ref_is_y"] = ref_is_y;
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["act"] = std::string(act);
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["gain"] = gain;
    ctx->saved_data["clamp"] = clamp ? c10::IValue(*clamp) : c10::IValue();
    ctx->saved_data["scale"] = scale;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    static const auto op =
        find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                           c10::string_view, double, double, std::optional<double>, double, bool)>(
            "gan_kernels::bias_act_grad");
    const auto& data = ctx->saved_data;
    const double gain = data.at("gain").toDouble();
    const double scale = data.at("scale").toDouble();
    const int64_t dim = data.at("dim").toInt();
    at::Tensor grad_v;
    if (data.at("needs_nothing").toBool()) {
      grad_v = gain != 1 ? grads[0] * gain : grads[0];
    } else {
      const torch::autograd::variable_list saved = ctx->get_saved_variables();
      const std::optional<at::Tensor> b = saved[1].defined() ? std::optional<at::Tensor>(saved[1]) : std::nullopt;
      const std::optional<double> clamp =
          data.at("clamp").isNone() ? std::nullopt : std::optional<double>(data.at("clamp").toDouble());
      grad_v = op.call(grads[0], saved[0], b, dim, data.at("act").toStringRef(), data.at("alpha").toDouble(), gain,
                       clamp, scale, data.at("ref_is_y").toBool());
    }
    at::Tensor grad_x;
    at::Tensor grad_b;
    if (ctx->needs_input_grad(0)) grad_x = scale != 1 ? grad_v * scale : grad_v;
    // b has an input edge (index 1) only when it is a tensor.
    if (data.at("has_bias").toBool() && ctx->needs_input_grad(1))
      grad_b = sum_to_dim(grad_v, at::maybe_wrap_dim(dim, grad_v.dim()));
    return {grad_x, grad_b, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor forward_autograd(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act,
                            double alpha, double gain, std::optional<double> clamp, double scale) {
  return BiasAct::apply(x, b, dim, act, alpha, gain, clamp, scale);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gan_kernels, m) {
  m.def("bias_act(Tensor x, Tensor? b, int dim, str act, float alpha, float gain, float? clamp, float scale) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "bias_act_grad(Tensor grad, Tensor ref, Tensor? b, int dim, str act, float alpha, float gain, float? clamp, "
      "float scale, bool ref_is_y) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "bias_act_grad2(Tensor upstream, Tensor grad, Tensor x, Tensor? b, int dim, str act, float alpha, float gain, "
      "float? clamp, float scale) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(gan_kernels, CPU, m) {
  m.impl("bias_act", &forward<on_cpu>);
  m.impl("bias_act_grad", &grad<on_cpu>);
  m.impl("bias_act_grad2", &grad2<on_cpu>);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gan_kernels, CUDA, m) {
  m.impl("bias_act", &forward<on_cuda>);
  m.impl("bias_act_grad", &grad<on_cuda>);
  m.impl("bias_act_grad2", &grad2<on_cuda>);
}
#endif

TORCH_LIBRARY_IMPL(gan_kernels, Autograd, m) { m.impl("bias_act", &forward_autograd); }

}  // namespace gan_kernels
