// Contract of the batched spectral-norm ops: gan_kernels::spectral_norm_power_iteration_ (updates every
// u, v in place and returns the sigmas), gan_kernels::spectral_norm_normalize (W / sigma for every
// weight) and gan_kernels::spectral_norm_normalize_backward. Each takes whole lists, so the work of
// all the spectrally normalised layers of a model is a constant number of kernel calls.
// The *_one ops are the same kernels for one weight, for the per-layer path: a call with lists costs
// more than a small layer's arithmetic. Fake kernels and the backward ops' autograd:
// gan_kernels/ops/spectral_norm.py; the normalisations' autograd is here (NormalizeList, NormalizeOne).
#include "cpu/spectral_norm.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ops/common.h"

#ifdef WITH_CUDA
#include "cuda/spectral_norm.h"
#endif

namespace gan_kernels {
namespace {

// How a device runs a launch on the device of `ref`; whether its normalisation backward needs the
// per-block partial sums of <G, W> as scratch, and its power iteration counters to order its blocks.
struct Device {
  void (*run)(const SpectralParams& p, const at::Tensor& ref);
  bool normalize_backward_scratch;
  bool power_iteration_counters;
};

constexpr Device kCpu{[](const SpectralParams& p, const at::Tensor&) { spectral_norm_cpu(p); }, false, false};
#ifdef WITH_CUDA
constexpr Device kCuda{[](const SpectralParams& p, const at::Tensor& ref) {
                         launch_on_cuda(ref, [&](cudaStream_t stream) { return launch_spectral_norm(p, stream); });
                       },
                       true, true};
#endif

// How a mode reads a weight: as PyTorch's matrix (the power iteration, the normalisation backward),
// which needs the contiguous order, or element by element (W / sigma), which takes any dense order
// and keeps it, so that a channels_last weight gives a channels_last W / sigma, as PyTorch's does.
enum class WeightOrder { Matrix, Elementwise };

// One weight seen as PyTorch's spectral norm sees it: the matrix with `dim` moved first. For a
// contiguous weight, row r and column o * inner + i live at o * rows * inner + r * inner + i
// (ChannelView with channels = rows), so no permuted copy is needed.
struct SpectralLayer {
  at::Tensor weight;  // contiguous (WeightOrder::Matrix), or dense in any order (Elementwise)
  at::Tensor u;       // [rows], contiguous, mutated by the power iteration
  at::Tensor v;       // [outer * inner], contiguous, mutated by the power iteration
  ChannelView view;
};

std::string item(const char* list, size_t index) { return std::string(list) + "[" + std::to_string(index) + "]"; }

void check_vector(const at::Tensor& t, const at::Tensor& weight, int64_t length, const std::string& arg,
                  const std::string& weight_arg) {
  check_same_device(t, weight, arg.c_str(), weight_arg.c_str());
  check_same_dtype(t, weight, arg.c_str(), weight_arg.c_str());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == length, arg, " must have shape [", length, "] to match ", weight_arg,
                    ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), arg, " must be contiguous");
}

// The power iteration writes every u and v, so two entries sharing memory (one buffer passed for two
// layers) would race. All are contiguous and on one device, so each is the address range
// [data, data + nbytes): sorted by start, any overlap shows up between neighbours.
void check_vectors_do_not_overlap(const std::vector<std::pair<at::Tensor, std::string>>& vectors) {
  struct Range {
    uintptr_t begin;
    uintptr_t end;
    const std::string* arg;
  };
  std::vector<Range> ranges;
  ranges.reserve(vectors.size());
  for (const auto& [t, name] : vectors) {
    if (t.numel() == 0) continue;  // an empty vector has no memory to share
    const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
    ranges.push_back({begin, begin + t.nbytes(), &name});
  }
  // Stable, so that for equal starts the message names the entries in argument order.
  std::stable_sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t k = 1; k < ranges.size(); ++k) {
    TORCH_CHECK_VALUE(ranges[k].begin >= ranges[k - 1].end, *ranges[k - 1].arg, " and ", *ranges[k].arg,
                      " share memory; the power iteration updates each in place, so every layer needs its own u "
                      "and v tensors (clone one of them)");
  }
}

// What the checks call a layer's arguments: "weights[3]" in a list op, "weight" in a *_one op.
struct LayerArgs {
  std::string weight;
  std::string u;
  std::string v;
  std::string dim;
};

LayerArgs list_args(size_t l) { return {item("weights", l), item("us", l), item("vs", l), item("dims", l)}; }

const LayerArgs kOneArgs{"weight", "u", "v", "dim"};

// Checks one layer and describes its weight as the matrix PyTorch's spectral norm uses. `first`: the
// list's weights[0], which every later weight must match in device and dtype.
SpectralLayer layer_of(const at::Tensor& w, const at::Tensor& u, const at::Tensor& v, int64_t dim_arg,
                       const LayerArgs& args, WeightOrder order, const at::Tensor* first = nullptr) {
  check_floating(w, args.weight.c_str());
  TORCH_CHECK_VALUE(w.dim() >= 2, args.weight, " must have at least 2 dimensions, got shape ", w.sizes());
  if (first != nullptr) {
    check_same_device(w, *first, args.weight.c_str(), "weights[0]");
    check_same_dtype(w, *first, args.weight.c_str(), "weights[0]");
  }
  const int64_t dim = wrap_dim(dim_arg, w, args.dim.c_str());
  int64_t outer = 1;
  int64_t inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= w.size(d);
  for (int64_t d = dim + 1; d < w.dim(); ++d) inner *= w.size(d);
  const int64_t rows = w.size(dim);
  check_vector(u, w, rows, args.u, args.weight);
  check_vector(v, w, outer * inner, args.v, args.weight);
  return {order == WeightOrder::Matrix ? w.contiguous() : dense_input(w), u, v, {outer, rows, inner}};
}

// Checks the lists and describes each weight as the matrix PyTorch's spectral norm uses.
std::vector<SpectralLayer> layers_of(const at::TensorList weights, const at::TensorList us, const at::TensorList vs,
                                     const at::IntArrayRef dims, WeightOrder order) {
  const size_t count = weights.size();
  TORCH_CHECK_VALUE(us.size() == count, "us has ", us.size(), " tensors but weights has ", count);
  TORCH_CHECK_VALUE(vs.size() == count, "vs has ", vs.size(), " tensors but weights has ", count);
  TORCH_CHECK_VALUE(dims.size() == count, "dims has ", dims.size(), " entries but weights has ", count);
  std::vector<SpectralLayer> layers;
  layers.reserve(count);
  for (size_t l = 0; l < count; ++l) {
    layers.push_back(layer_of(weights[l], us[l], vs[l], dims[l], list_args(l), order, l > 0 ? &weights[0] : nullptr));
  }
  return layers;
}

void check_sigmas(const at::Tensor& sigmas, const at::TensorList weights) {
  TORCH_CHECK_VALUE(sigmas.dim() == 1 && sigmas.size(0) == static_cast<int64_t>(weights.size()),
                    "sigmas must have shape [", weights.size(), "] (one per weight), got ", sigmas.sizes());
  if (!weights.empty()) check_vector(sigmas, weights[0], sigmas.size(0), "sigmas", "weights[0]");
}

// A *_one op's sigma: a 0-d tensor like its weight.
void check_sigma(const at::Tensor& sigma, const at::Tensor& weight) {
  check_same_device(sigma, weight, "sigma", "weight");
  check_same_dtype(sigma, weight, "sigma", "weight");
  TORCH_CHECK_VALUE(sigma.dim() == 0, "sigma must be a 0-d tensor, got shape ", sigma.sizes());
}

void check_power_iteration_args(int64_t n_power_iterations, double eps) {
  TORCH_CHECK_VALUE(n_power_iterations >= 0, "n_power_iterations must be >= 0, got ", n_power_iterations);
  check_finite(eps, "eps");
}

at::Tensor empty_sigmas(const at::TensorList weights) {
  return weights.empty() ? at::empty({0}, at::kFloat)
                         : at::empty({static_cast<int64_t>(weights.size())}, weights[0].options());
}

std::vector<at::Tensor> empty_outputs(const std::vector<SpectralLayer>& layers) {
  std::vector<at::Tensor> out;
  out.reserve(layers.size());
  for (const SpectralLayer& l : layers) out.push_back(new_output_like(l.weight));  // the weight's order
  return out;
}

at::ScalarType accumulator_type(const at::Tensor& t) { return at::toOpMathType(t.scalar_type()); }

// The layers [begin, end) as a launch's table; grads and out may be empty (the power iteration).
SpectralParams make_params(SpectralMode mode, const std::vector<SpectralLayer>& layers, size_t begin, size_t end,
                           const std::vector<at::Tensor>& grads, std::vector<at::Tensor>& out,
                           const at::Tensor& sigmas) {
  SpectralParams p{};
  p.mode = mode;
  p.count = static_cast<int>(end - begin);
  p.dtype = kernel_dtype(layers[begin].weight.scalar_type());
  p.sigmas = static_cast<char*>(sigmas.data_ptr()) + begin * sigmas.element_size();
  p.blocks_per_layer = 1;
  int64_t offset = 0;
  for (size_t l = begin; l < end; ++l) {
    const SpectralLayer& layer = layers[l];
    p.layers[l - begin] = {layer.weight.const_data_ptr(),
                           layer.u.data_ptr(),
                           layer.v.data_ptr(),
                           grads.empty() ? nullptr : grads[l].const_data_ptr(),
                           out.empty() ? nullptr : out[l].data_ptr(),
                           layer.view.outer,
                           layer.view.channels,
                           layer.view.inner,
                           offset};
    offset += layer.view.channels + layer.view.outer * layer.view.inner;
    // Each layer runs on its own block count; the grid and the scratch rows fit the largest.
    p.blocks_per_layer = std::max(p.blocks_per_layer, spectral_normalize_blocks(layer.weight.numel()));
  }
  return p;
}

// Runs `mode` over every layer, kMaxSpectralLayers per launch. The scratch: the power iteration's
// rows + cols accumulators per layer (and the device's counters), or the device's
// normalisation-backward partial sums.
void run(const Device& device, SpectralMode mode, const std::vector<SpectralLayer>& layers,
         const std::vector<at::Tensor>& grads, std::vector<at::Tensor>& out, const at::Tensor& sigmas,
         int64_t n_power_iterations = 0, double eps = 0) {
  for (size_t begin = 0; begin < layers.size(); begin += kMaxSpectralLayers) {
    const size_t end = std::min(layers.size(), begin + kMaxSpectralLayers);
    SpectralParams p = make_params(mode, layers, begin, end, grads, out, sigmas);
    p.n_power_iterations = n_power_iterations;
    p.eps = eps;
    int64_t scratch = 0;
    if (mode == SpectralMode::PowerIteration) {
      for (size_t l = begin; l < end; ++l)
        scratch += layers[l].view.channels + layers[l].view.outer * layers[l].view.inner;
    } else if (mode == SpectralMode::NormalizeBackward && device.normalize_backward_scratch) {
      scratch = int64_t(p.count) * p.blocks_per_layer;
    }
    const at::Tensor workspace = at::empty({scratch}, sigmas.options().dtype(accumulator_type(sigmas)));
    p.workspace = scratch > 0 ? workspace.data_ptr() : nullptr;
    at::Tensor counters;
    if (mode == SpectralMode::PowerIteration && device.power_iteration_counters) {
      counters =
          at::empty({spectral_iteration_counters(p.count, n_power_iterations)}, sigmas.options().dtype(at::kInt));
      p.counters = static_cast<unsigned*>(counters.data_ptr());
    }
    device.run(p, sigmas);
  }
}

template <const Device& device> at::Tensor power_iteration(at::TensorList weights, at::TensorList us, at::TensorList vs,
                                                           at::IntArrayRef dims, int64_t n_power_iterations,
                                                           double eps) {
  const std::vector<SpectralLayer> layers = layers_of(weights, us, vs, dims, WeightOrder::Matrix);
  std::vector<std::pair<at::Tensor, std::string>> vectors;
  for (size_t l = 0; l < us.size(); ++l) vectors.emplace_back(us[l], item("us", l));
  for (size_t l = 0; l < vs.size(); ++l) vectors.emplace_back(vs[l], item("vs", l));
  check_vectors_do_not_overlap(vectors);
  check_power_iteration_args(n_power_iterations, eps);
  at::Tensor sigmas = empty_sigmas(weights);
  if (layers.empty()) return sigmas;
  std::vector<at::Tensor> none;
  run(device, SpectralMode::PowerIteration, layers, none, none, sigmas, n_power_iterations, eps);
  return sigmas;
}

template <const Device& device> std::vector<at::Tensor> normalize(at::TensorList weights, at::TensorList us,
                                                                  at::TensorList vs, const at::Tensor& sigmas,
                                                                  at::IntArrayRef dims) {
  const std::vector<SpectralLayer> layers = layers_of(weights, us, vs, dims, WeightOrder::Elementwise);
  check_sigmas(sigmas, weights);
  std::vector<at::Tensor> out = empty_outputs(layers);
  if (!layers.empty()) run(device, SpectralMode::Normalize, layers, {}, out, sigmas.contiguous());
  return out;
}

template <const Device& device>
std::vector<at::Tensor> normalize_backward(at::TensorList grads, at::TensorList weights, at::TensorList us,
                                           at::TensorList vs, const at::Tensor& sigmas, at::IntArrayRef dims) {
  const std::vector<SpectralLayer> layers = layers_of(weights, us, vs, dims, WeightOrder::Matrix);
  check_sigmas(sigmas, weights);
  TORCH_CHECK_VALUE(grads.size() == weights.size(), "grads has ", grads.size(), " tensors but weights has ",
                    weights.size());
  std::vector<at::Tensor> dense_grads;
  dense_grads.reserve(grads.size());
  for (size_t l = 0; l < grads.size(); ++l) {
    check_same(grads[l], weights[l], item("grads", l).c_str(), item("weights", l).c_str());
    dense_grads.push_back(grads[l].contiguous());
  }
  std::vector<at::Tensor> out = empty_outputs(layers);
  if (!layers.empty()) run(device, SpectralMode::NormalizeBackward, layers, dense_grads, out, sigmas.contiguous());
  return out;
}

// The *_one ops: one layer through the same launch as a list of one, so the per-layer and batched
// paths give the same bits. sigma is a 0-d tensor.
template <const Device& device> at::Tensor power_iteration_one(const at::Tensor& weight, at::Tensor& u, at::Tensor& v,
                                                               int64_t dim, int64_t n_power_iterations, double eps) {
  const std::vector<SpectralLayer> layers{layer_of(weight, u, v, dim, kOneArgs, WeightOrder::Matrix)};
  check_vectors_do_not_overlap({{u, "u"}, {v, "v"}});
  check_power_iteration_args(n_power_iterations, eps);
  at::Tensor sigma = at::empty({}, weight.options());
  std::vector<at::Tensor> none;
  run(device, SpectralMode::PowerIteration, layers, none, none, sigma, n_power_iterations, eps);
  return sigma;
}

template <const Device& device> at::Tensor normalize_one(const at::Tensor& weight, const at::Tensor& u,
                                                         const at::Tensor& v, const at::Tensor& sigma, int64_t dim) {
  const std::vector<SpectralLayer> layers{layer_of(weight, u, v, dim, kOneArgs, WeightOrder::Elementwise)};
  check_sigma(sigma, weight);
  std::vector<at::Tensor> out = empty_outputs(layers);
  run(device, SpectralMode::Normalize, layers, {}, out, sigma);
  return out[0];
}

template <const Device& device> at::Tensor normalize_one_backward(const at::Tensor& grad, const at::Tensor& weight,
                                                                  const at::Tensor& u, const at::Tensor& v,
                                                                  const at::Tensor& sigma, int64_t dim) {
  const std::vector<SpectralLayer> layers{layer_of(weight, u, v, dim, kOneArgs, WeightOrder::Matrix)};
  check_sigma(sigma, weight);
  check_same(grad, weight, "grad", "weight");
  std::vector<at::Tensor> out = empty_outputs(layers);
  run(device, SpectralMode::NormalizeBackward, layers, {grad.contiguous()}, out, sigma);
  return out[0];
}

// The autograd of spectral_norm_normalize and spectral_norm_normalize_one, in C++: a Python autograd
// kernel (register_autograd) costs about 50 us per forward and per backward for one weight and
// grows with the list (0.7 ms each way for the 11 weights of an SNGAN D, measured), more than
// PyTorch's whole spectral norm of small layers. The backward runs the *_backward op through the
// dispatcher, so that op's own register_autograd (gan_kernels/ops/spectral_norm.py) carries the
// double backward.

class NormalizeOne : public torch::autograd::Function<NormalizeOne> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& u,
                            const at::Tensor& v, const at::Tensor& sigma, int64_t dim) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op =
        find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>(
            "gan_kernels::spectral_norm_normalize_one");
    ctx->save_for_backward({weight, u, v, sigma});
    ctx->saved_data["dim"] = dim;
    return op.call(weight, u, v, sigma, dim);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    static const auto op =
        find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, int64_t)>("gan_kernels::spectral_norm_normalize_one_backward");
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    // grads[0] is defined: the context materialises an unused output's gradient as zeros.
    at::Tensor grad_weight = op.call(grads[0], saved[0], saved[1], saved[2], saved[3], ctx->saved_data["dim"].toInt());
    return {grad_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class NormalizeList : public torch::autograd::Function<NormalizeList> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::TensorList weights,
                                                at::TensorList us, at::TensorList vs, const at::Tensor& sigmas,
                                                at::IntArrayRef dims) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op =
        find_op<std::vector<at::Tensor>(at::TensorList, at::TensorList, at::TensorList, const at::Tensor&,
                                        at::IntArrayRef)>("gan_kernels::spectral_norm_normalize");
    torch::autograd::variable_list saved;
    saved.reserve(3 * weights.size() + 1);
    for (const at::TensorList list : {weights, us, vs}) saved.insert(saved.end(), list.begin(), list.end());
    saved.push_back(sigmas);
    ctx->save_for_backward(saved);
    ctx->saved_data["dims"] = dims.vec();
    // An output the loss does not use (a layer the model's forward skipped) then reaches the backward
    // undefined instead of as zeros, so that its weight gets no gradient.
    ctx->set_materialize_grads(false);
    return op.call(weights, us, vs, sigmas, dims);
  }

  // One gradient per forward input: the weights', then none for every u, v, sigmas and dims.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
    static const auto op = find_op<std::vector<at::Tensor>(at::TensorList, at::TensorList, at::TensorList,
                                                           at::TensorList, const at::Tensor&, at::IntArrayRef)>(
        "gan_kernels::spectral_norm_normalize_backward");
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const auto count = static_cast<int64_t>(grads.size());
    const std::vector<int64_t> dims = ctx->saved_data["dims"].toIntVector();
    torch::autograd::variable_list out(3 * count + 2);
    // As PyTorch's per-layer spectral norm, a weight whose W / sigma the loss did not use gets no
    // gradient (None), not zeros: Adam's momentum and weight decay would still move a zero-gradient
    // weight. The backward op runs on the used layers only.
    std::vector<int64_t> used;
    for (int64_t l = 0; l < count; ++l)
      if (grads[l].defined()) used.push_back(l);
    if (used.empty()) return out;
    if (static_cast<int64_t>(used.size()) == count) {
      const at::TensorList all(saved);
      const std::vector<at::Tensor> grad_weights =
          op.call(grads, all.slice(0, count), all.slice(count, count), all.slice(2 * count, count), saved.back(), dims);
      std::copy(grad_weights.begin(), grad_weights.end(), out.begin());
      return out;
    }
    std::vector<at::Tensor> used_grads, used_weights, used_us, used_vs, used_sigmas;
    std::vector<int64_t> used_dims;
    for (const int64_t l : used) {
      used_grads.push_back(grads[l]);
      used_weights.push_back(saved[l]);
      used_us.push_back(saved[count + l]);
      used_vs.push_back(saved[2 * count + l]);
      used_sigmas.push_back(saved.back().select(0, l));
      used_dims.push_back(dims[l]);
    }
    const std::vector<at::Tensor> grad_weights =
        op.call(used_grads, used_weights, used_us, used_vs, at::stack(used_sigmas), used_dims);
    for (size_t i = 0; i < used.size(); ++i) out[used[i]] = grad_weights[i];
    return out;
  }
};

at::Tensor normalize_one_autograd(const at::Tensor& weight, const at::Tensor& u, const at::Tensor& v,
                                  const at::Tensor& sigma, int64_t dim) {
  return NormalizeOne::apply(weight, u, v, sigma, dim);
}

std::vector<at::Tensor> normalize_autograd(at::TensorList weights, at::TensorList us, at::TensorList vs,
                                           const at::Tensor& sigmas, at::IntArrayRef dims) {
  return NormalizeList::apply(weights, us, vs, sigmas, dims);
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(gan_kernels, m) {
  m.def(
      "spectral_norm_power_iteration_(Tensor[] weights, Tensor(a!)[] us, Tensor(b!)[] vs, int[] dims, "
      "int n_power_iterations, float eps) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def("spectral_norm_normalize(Tensor[] weights, Tensor[] us, Tensor[] vs, Tensor sigmas, int[] dims) -> Tensor[]",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "spectral_norm_normalize_backward(Tensor[] grads, Tensor[] weights, Tensor[] us, Tensor[] vs, Tensor sigmas, "
      "int[] dims) -> Tensor[]",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "spectral_norm_power_iteration_one_(Tensor weight, Tensor(a!) u, Tensor(b!) v, int dim, "
      "int n_power_iterations, float eps) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def("spectral_norm_normalize_one(Tensor weight, Tensor u, Tensor v, Tensor sigma, int dim) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "spectral_norm_normalize_one_backward(Tensor grad, Tensor weight, Tensor u, Tensor v, Tensor sigma, int dim) "
      "-> Tensor",
      {at::Tag::pt2_compliant_tag});
}

#ifndef GAN_KERNELS_CUDA_EMULATION
TORCH_LIBRARY_IMPL(gan_kernels, CPU, m) {
  m.impl("spectral_norm_power_iteration_", &power_iteration<kCpu>);
  m.impl("spectral_norm_normalize", &normalize<kCpu>);
  m.impl("spectral_norm_normalize_backward", &normalize_backward<kCpu>);
  m.impl("spectral_norm_power_iteration_one_", &power_iteration_one<kCpu>);
  m.impl("spectral_norm_normalize_one", &normalize_one<kCpu>);
  m.impl("spectral_norm_normalize_one_backward", &normalize_one_backward<kCpu>);
}
#endif

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gan_kernels, GAN_KERNELS_CUDA_KEY, m) {
  m.impl("spectral_norm_power_iteration_", &power_iteration<kCuda>);
  m.impl("spectral_norm_normalize", &normalize<kCuda>);
  m.impl("spectral_norm_normalize_backward", &normalize_backward<kCuda>);
  m.impl("spectral_norm_power_iteration_one_", &power_iteration_one<kCuda>);
  m.impl("spectral_norm_normalize_one", &normalize_one<kCuda>);
  m.impl("spectral_norm_normalize_one_backward", &normalize_one_backward<kCuda>);
}
#endif

TORCH_LIBRARY_IMPL(gan_kernels, Autograd, m) {
  m.impl("spectral_norm_normalize", &normalize_autograd);
  m.impl("spectral_norm_normalize_one", &normalize_one_autograd);
}

}  // namespace gan_kernels
