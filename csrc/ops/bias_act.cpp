// Contract of gan_kernels::bias_act, bias_act_grad and bias_act_grad2: schemas, checks, output
// allocation, the CPU/CUDA registrations and the autograd of all three (that of the two backward ops
// gives the second and higher derivatives). The fake kernels: gan_kernels/ops/bias_act.py.
#include "common/bias_act.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
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
  at::Tensor out = new_output_like(xd);
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
  at::Tensor out = new_output_like(rd);
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
  at::Tensor out = new_output_like(xd);
  if (piecewise_linear(c.act)) return out.zero_();  // act'' = 0 wherever it exists
  if (x.numel() > 0) {
    kernel(make_params(BiasActMode::Grad2, c.act, out, xd, same_layout(grad, xd), same_layout(upstream, xd), c.bias,
                       channel_view(xd, c.dim), c.scalars),
           xd);
  }
  return out;
}

// The three ops as the dispatcher has them. The autograd kernels below call them through it, so that
// each call dispatches again: to the device kernel, or (when building a graph) to that op's own
// autograd kernel, which is what makes any order of derivative work.
using ForwardOp = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, int64_t, c10::string_view, double,
                             double, std::optional<double>, double);
using GradOp = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                          c10::string_view, double, double, std::optional<double>, double, bool);
using Grad2Op = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           int64_t, c10::string_view, double, double, std::optional<double>, double);

// The arguments besides the tensors that the three ops share, as a backward reads them back from
// saved_data, with b when it was saved (nullopt without a bias, or where the backward needs none).
struct SavedArguments {
  bool has_bias;  // whether b has an input edge
  std::optional<at::Tensor> b;
  int64_t dim;
  std::string act;
  Activation activation;
  double alpha;
  double gain;
  std::optional<double> clamp;
  double scale;
};

void save_arguments(torch::autograd::AutogradContext* ctx, const std::optional<at::Tensor>& b, int64_t dim,
                    c10::string_view act, double alpha, double gain, std::optional<double> clamp, double scale) {
  ctx->saved_data["has_bias"] = b.has_value() && b->defined();
  ctx->saved_data["dim"] = dim;
  ctx->saved_data["act"] = std::string(act);
  ctx->saved_data["alpha"] = alpha;
  ctx->saved_data["gain"] = gain;
  ctx->saved_data["clamp"] = clamp ? c10::IValue(*clamp) : c10::IValue();
  ctx->saved_data["scale"] = scale;
}

// `saved_b` is the bias as saved for backward: undefined where there is none or it was not saved.
SavedArguments saved_arguments(const torch::autograd::AutogradContext* ctx, const at::Tensor& saved_b) {
  const auto& data = ctx->saved_data;
  std::string act = data.at("act").toStringRef();
  const Activation activation = parse_activation(act);
  return {data.at("has_bias").toBool(),
          saved_b.defined() ? std::optional<at::Tensor>(saved_b) : std::nullopt,
          data.at("dim").toInt(),
          std::move(act),
          activation,
          data.at("alpha").toDouble(),
          data.at("gain").toDouble(),
          data.at("clamp").isNone() ? std::nullopt : std::optional<double>(data.at("clamp").toDouble()),
          data.at("scale").toDouble()};
}

at::Tensor call_grad(const at::Tensor& grad, const at::Tensor& ref, const SavedArguments& a, bool ref_is_y) {
  static const auto op = find_op<GradOp>("gan_kernels::bias_act_grad");
  return op.call(grad, ref, a.b, a.dim, a.act, a.alpha, a.gain, a.clamp, a.scale, ref_is_y);
}

at::Tensor call_grad2(const at::Tensor& upstream, const at::Tensor& grad, const at::Tensor& x,
                      const SavedArguments& a) {
  static const auto op = find_op<Grad2Op>("gan_kernels::bias_act_grad2");
  return op.call(upstream, grad, x, a.b, a.dim, a.act, a.alpha, a.gain, a.clamp, a.scale);
}

// dL/db: dL/dv summed over every dim but `dim`.
at::Tensor sum_to_dim(const at::Tensor& grad_v, int64_t dim) {
  std::vector<int64_t> others;
  for (int64_t d = 0; d < grad_v.dim(); ++d) {
    if (d != dim) others.push_back(d);
  }
  return others.empty() ? grad_v : thread_invariant_sum(grad_v, others, /*keepdim=*/false);  // no dims: everything
}

// The three ops take x and b only through v = x * scale + b, so a gradient dL/dv gives dL/dx (times
// scale) and dL/db (summed to b's dim). Sets those whose input edges (x_edge, b_edge) need them; b
// has an edge only when it is a tensor.
void set_x_and_b_grads(const torch::autograd::AutogradContext* ctx, const at::Tensor& grad_v, const SavedArguments& a,
                       size_t x_edge, size_t b_edge, at::Tensor& grad_x, at::Tensor& grad_b) {
  if (ctx->needs_input_grad(x_edge)) grad_x = a.scale != 1 ? grad_v * a.scale : grad_v;
  if (a.has_bias && ctx->needs_input_grad(b_edge)) grad_b = sum_to_dim(grad_v, at::maybe_wrap_dim(a.dim, grad_v.dim()));
}

// The autograd of all three ops is C++: a Python register_autograd node costs about 100 us per call,
// a StyleGAN network calls bias_act after every layer, and an R1 or WGAN-GP step calls both backward
// ops in every layer.
class BiasAct : public torch::autograd::Function<BiasAct> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act, double alpha,
                            double gain, std::optional<double> clamp, double scale) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<ForwardOp>("gan_kernels::bias_act");
    at::Tensor y = op.call(x, b, dim, act, alpha, gain, clamp, scale);
    const Activation activation = parse_activation(act);
    // What the backward needs: nothing for a plain linear (dL/dv = gain dL/dy), y where its sign
    // gives act'(v), else x and b.
    const bool needs_nothing = activation == Activation::Linear && !clamp;
    const bool ref_is_y = !needs_nothing && gradient_from_output(activation, alpha, gain, clamp);
    if (!needs_nothing) ctx->save_for_backward({ref_is_y ? y : x, ref_is_y || !b ? at::Tensor() : *b});
    save_arguments(ctx, b, dim, act, alpha, gain, clamp, scale);
    ctx->saved_data["needs_nothing"] = needs_nothing;
    ctx->saved_data["ref_is_y"] = ref_is_y;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    const bool needs_nothing = ctx->saved_data.at("needs_nothing").toBool();
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const SavedArguments a = saved_arguments(ctx, needs_nothing ? at::Tensor() : saved[1]);
    const at::Tensor grad_v = needs_nothing ? (a.gain != 1 ? grads[0] * a.gain : grads[0])
                                            : call_grad(grads[0], saved[0], a, ctx->saved_data.at("ref_is_y").toBool());
    torch::autograd::variable_list input_grads(8);  // one per argument: x, b, then the non-tensors'
    set_x_and_b_grads(ctx, grad_v, a, 0, 1, input_grads[0], input_grads[1]);
    return input_grads;
  }
};

// bias_act_grad = grad * gain * act'(v) * mask: linear in grad, and for a smooth act a function of v
// whose derivative is bias_act_grad2.
class BiasActGrad : public torch::autograd::Function<BiasActGrad> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& ref,
                            const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act, double alpha,
                            double gain, std::optional<double> clamp, double scale, bool ref_is_y) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<GradOp>("gan_kernels::bias_act_grad");
    at::Tensor grad_v = op.call(grad, ref, b, dim, act, alpha, gain, clamp, scale, ref_is_y);
    // Only the second-order term reads grad, and the piecewise-linear acts have none.
    const bool second_order = !piecewise_linear(parse_activation(act));
    ctx->save_for_backward({ref, b ? *b : at::Tensor(), second_order ? grad : at::Tensor()});
    save_arguments(ctx, b, dim, act, alpha, gain, clamp, scale);
    ctx->saved_data["ref_is_y"] = ref_is_y;
    return grad_v;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    const at::Tensor& upstream = grads[0];
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor& ref = saved[0];
    const at::Tensor& grad = saved[2];
    const SavedArguments a = saved_arguments(ctx, saved[1]);
    torch::autograd::variable_list input_grads(10);  // one per argument: grad, ref, b, then the non-tensors'
    // Linear in grad with a diagonal Jacobian: grad's gradient is the op applied to upstream.
    if (ctx->needs_input_grad(0)) {
      input_grads[0] = call_grad(upstream, ref, a, ctx->saved_data.at("ref_is_y").toBool());
    }
    // Piecewise-linear acts (the only ones saving y) have no second-order term, so y and x get none.
    if (!piecewise_linear(a.activation) && (ctx->needs_input_grad(1) || (a.has_bias && ctx->needs_input_grad(2)))) {
      set_x_and_b_grads(ctx, call_grad2(upstream, grad, ref, a), a, 1, 2, input_grads[1], input_grads[2]);
    }
    return input_grads;
  }
};

// act'''(v) of a smooth act, in differentiable aten ops, so that the term it gives has derivatives
// of its own (any order). at::rsub(t, 1) is 1 - t in one op, as Python's 1 - t.
at::Tensor act_third_derivative(const at::Tensor& v, Activation act) {
  if (act == Activation::Tanh) {
    const at::Tensor t = v.tanh();
    return at::rsub(t.square(), 1) * (t.square() * 6 - 2);
  }
  const at::Tensor s = v.sigmoid();
  const at::Tensor ds = s * at::rsub(s, 1);
  switch (act) {
    case Activation::Sigmoid: return ds * (at::rsub(s * 6, 1) + s.square() * 6);
    case Activation::Elu: return at::where(v.ge(0), 0.0, v.exp());
    case Activation::Selu: return at::where(v.ge(0), 0.0, v.exp() * (kSeluScale * kSeluAlpha));
    case Activation::Softplus: return at::where(v.ge(kSoftplusThreshold), 0.0, ds * at::rsub(s * 2, 1));
    case Activation::Swish: return ds * 3 * at::rsub(s * 2, 1) + v * ds * (at::rsub(s * 6, 1) + s.square() * 6);
    default: TORCH_INTERNAL_ASSERT(false, "the piecewise-linear acts have no act'''");
  }
}

// act(v) of a smooth act by the aten ops the reference uses: the clamp's mask compares it.
at::Tensor smooth_act_value(const at::Tensor& v, Activation act) {
  switch (act) {
    case Activation::Tanh: return v.tanh();
    case Activation::Sigmoid: return v.sigmoid();
    case Activation::Elu: return at::elu(v);
    case Activation::Selu: return at::selu(v);
    case Activation::Softplus: return at::softplus(v, 1, kSoftplusThreshold);
    case Activation::Swish: return v.sigmoid() * v;
    default: TORCH_INTERNAL_ASSERT(false, "only the smooth acts have a second-order term");
  }
}

// d/dv of <w, bias_act_grad2(upstream, grad, x, b)> = w * upstream * grad * gain * act'''(v) * mask,
// computed in float for fp16/bf16 (at::toOpMathType, which is reference._compute_dtype for every
// dtype the ops take) and returned in x's dtype.
at::Tensor grad2_grad_v(const at::Tensor& w, const at::Tensor& upstream, const at::Tensor& grad, const at::Tensor& x,
                        const SavedArguments& a) {
  const at::ScalarType compute = at::toOpMathType(x.scalar_type());
  at::Tensor v = x.to(compute) * a.scale;
  if (a.b) {
    std::vector<int64_t> bias_shape(x.dim(), 1);
    bias_shape[at::maybe_wrap_dim(a.dim, x.dim())] = -1;
    v = v + a.b->to(compute).reshape(bias_shape);
  }
  at::Tensor d_v =
      w.to(compute) * upstream.to(compute) * grad.to(compute) * (act_third_derivative(v, a.activation) * a.gain);
  if (a.clamp) {
    const at::Tensor pre_clamp = smooth_act_value(v, a.activation) * a.gain;
    d_v = at::where(pre_clamp.ge(-*a.clamp) & pre_clamp.le(*a.clamp), d_v, 0.0);
  }
  return d_v.to(x.scalar_type());
}

// bias_act_grad2 = upstream * grad * gain * act''(v) * mask.
class BiasActGrad2 : public torch::autograd::Function<BiasActGrad2> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& upstream, const at::Tensor& grad,
                            const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act,
                            double alpha, double gain, std::optional<double> clamp, double scale) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<Grad2Op>("gan_kernels::bias_act_grad2");
    at::Tensor out = op.call(upstream, grad, x, b, dim, act, alpha, gain, clamp, scale);
    ctx->save_for_backward({upstream, grad, x, b ? *b : at::Tensor()});
    save_arguments(ctx, b, dim, act, alpha, gain, clamp, scale);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    const at::Tensor& w = grads[0];
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor& upstream = saved[0];
    const at::Tensor& grad = saved[1];
    const at::Tensor& x = saved[2];
    const SavedArguments a = saved_arguments(ctx, saved[3]);
    torch::autograd::variable_list input_grads(10);  // one per argument: upstream, grad, x, b, then the non-tensors'
    // Linear in upstream and in grad: the gradient of each is the op with the other.
    if (ctx->needs_input_grad(0)) input_grads[0] = call_grad2(w, grad, x, a);
    if (ctx->needs_input_grad(1)) input_grads[1] = call_grad2(w, upstream, x, a);
    if (!piecewise_linear(a.activation) && (ctx->needs_input_grad(2) || (a.has_bias && ctx->needs_input_grad(3)))) {
      set_x_and_b_grads(ctx, grad2_grad_v(w, upstream, grad, x, a), a, 2, 3, input_grads[2], input_grads[3]);
    }
    return input_grads;
  }
};

at::Tensor forward_autograd(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act,
                            double alpha, double gain, std::optional<double> clamp, double scale) {
  return BiasAct::apply(x, b, dim, act, alpha, gain, clamp, scale);
}

at::Tensor grad_autograd(const at::Tensor& grad, const at::Tensor& ref, const std::optional<at::Tensor>& b, int64_t dim,
                         c10::string_view act, double alpha, double gain, std::optional<double> clamp, double scale,
                         bool ref_is_y) {
  return BiasActGrad::apply(grad, ref, b, dim, act, alpha, gain, clamp, scale, ref_is_y);
}

at::Tensor grad2_autograd(const at::Tensor& upstream, const at::Tensor& grad, const at::Tensor& x,
                          const std::optional<at::Tensor>& b, int64_t dim, c10::string_view act, double alpha,
                          double gain, std::optional<double> clamp, double scale) {
  return BiasActGrad2::apply(upstream, grad, x, b, dim, act, alpha, gain, clamp, scale);
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

#ifndef GAN_KERNELS_CUDA_EMULATION
TORCH_LIBRARY_IMPL(gan_kernels, CPU, m) {
  m.impl("bias_act", &forward<on_cpu>);
  m.impl("bias_act_grad", &grad<on_cpu>);
  m.impl("bias_act_grad2", &grad2<on_cpu>);
}
#endif

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gan_kernels, GAN_KERNELS_CUDA_KEY, m) {
  m.impl("bias_act", &forward<on_cuda>);
  m.impl("bias_act_grad", &grad<on_cuda>);
  m.impl("bias_act_grad2", &grad2<on_cuda>);
}
#endif

TORCH_LIBRARY_IMPL(gan_kernels, Autograd, m) {
  m.impl("bias_act", &forward_autograd);
  m.impl("bias_act_grad", &grad_autograd);
  m.impl("bias_act_grad2", &grad2_autograd);
}

}  // namespace gan_kernels
