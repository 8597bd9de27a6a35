// Contract of the batched spectral-norm ops: gan_kernels::spectral_norm_power_iteration_ (updates every
// u, v in place and returns the sigmas), gan_kernels::spectral_norm_normalize (W / sigma for every
// weight) and gan_kernels::spectral_norm_normalize_backward. Each takes whole lists, so the work of
// all the spectrally normalised layers of a model is a constant number of kernel calls.
// Autograd and fake kernels: gan_kernels/ops/spectral_norm.py.
#include "cpu/spectral_norm.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
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

// How a device runs a launch on the device of `ref`, and whether its normalisation backward needs
// the per-block partial sums of <G, W> as scratch.
struct Device {
  void (*run)(const SpectralParams& p, const at::Tensor& ref);
  bool normalize_backward_scratch;
};

constexpr Device kCpu{[](const SpectralParams& p, const at::Tensor&) { spectral_norm_cpu(p); }, false};
#ifdef WITH_CUDA
constexpr Device kCuda{[](const SpectralParams& p, const at::Tensor& ref) {
                         launch_on_cuda(ref, [&](cudaStream_t stream) { return launch_spectral_norm(p, stream); });
                       },
                       true};
#endif

// One weight seen as PyTorch's spectral norm sees it: the matrix with `dim` moved first. For a
// contiguous weight, row r and column o * inner + i live at o * rows * inner + r * inner + i
// (ChannelView with channels = rows), so no permuted copy is needed.
struct SpectralLayer {
  at::Tensor weight;  // contiguous
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
void check_vectors_do_not_overlap(const at::TensorList us, const at::TensorList vs) {
  struct Range {
    uintptr_t begin;
    uintptr_t end;
    std::string arg;
  };
  std::vector<Range> ranges;
  ranges.reserve(us.size() + vs.size());
  for (const auto& [list, name] : {std::pair{us, "us"}, std::pair{vs, "vs"}}) {
    for (size_t l = 0; l < list.size(); ++l) {
      if (list[l].numel() == 0) continue;  // an empty vector has no memory to share
      const auto begin = reinterpret_cast<uintptr_t>(list[l].const_data_ptr());
      ranges.push_back({begin, begin + list[l].nbytes(), item(name, l)});
    }
  }
  // Stable, so that for equal starts the message names the entries in argument order.
  std::stable_sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t k = 1; k < ranges.size(); ++k) {
    TORCH_CHECK_VALUE(ranges[k].begin >= ranges[k - 1].end, ranges[k - 1].arg, " and ", ranges[k].arg,
                      " share memory; the power iteration updates each in place, so every layer needs its own u "
                      "and v tensors (clone one of them)");
  }
}

// Checks the lists and describes each weight as the matrix PyTorch's spectral norm uses.
std::vector<SpectralLayer> layers_of(const at::TensorList weights, const at::TensorList us, const at::TensorList vs,
                                     const at::IntArrayRef dims) {
  const size_t count = weights.size();
  TORCH_CHECK_VALUE(us.size() == count, "us has ", us.size(), " tensors but weights has ", count);
  TORCH_CHECK_VALUE(vs.size() == count, "vs has ", vs.size(), " tensors but weights has ", count);
  TORCH_CHECK_VALUE(dims.size() == count, "dims has ", dims.size(), " entries but weights has ", count);
  std::vector<SpectralLayer> layers;
  layers.reserve(count);
  for (size_t l = 0; l < count; ++l) {
    const at::Tensor& w = weights[l];
    const std::string arg = item("weights", l);
    check_floating(w, arg.c_str());
    TORCH_CHECK_VALUE(w.dim() >= 2, arg, " must have at least 2 dimensions, got shape ", w.sizes());
    if (l > 0) {
      check_same_device(w, weights[0], arg.c_str(), "weights[0]");
      check_same_dtype(w, weights[0], arg.c_str(), "weights[0]");
    }
    const int64_t dim = wrap_dim(dims[l], w, item("dims", l).c_str());
    int64_t outer = 1;
    int64_t inner = 1;
    for (int64_t d = 0; d < dim; ++d) outer *= w.size(d);
    for (int64_t d = dim + 1; d < w.dim(); ++d) inner *= w.size(d);
    const int64_t rows = w.size(dim);
    check_vector(us[l], w, rows, item("us", l), arg);
    check_vector(vs[l], w, outer * inner, item("vs", l), arg);
    layers.push_back({w.contiguous(), us[l], vs[l], {outer, rows, inner}});
  }
  return layers;
}

void check_sigmas(const at::Tensor& sigmas, const at::TensorList weights) {
  TORCH_CHECK_VALUE(sigmas.dim() == 1 && sigmas.size(0) == static_cast<int64_t>(weights.size()),
                    "sigmas must have shape [", weights.size(), "] (one per weight), got ", sigmas.sizes());
  if (!weights.empty()) check_vector(sigmas, weights[0], sigmas.size(0), "sigmas", "weights[0]");
}

at::Tensor empty_sigmas(const at::TensorList weights) {
  return weights.empty() ? at::empty({0}, at::kFloat)
                         : at::empty({static_cast<int64_t>(weights.size())}, weights[0].options());
}

std::vector<at::Tensor> empty_outputs(const std::vector<SpectralLayer>& layers) {
  std::vector<at::Tensor> out;
  out.reserve(layers.size());
  for (const SpectralLayer& l : layers) out.push_back(at::empty_like(l.weight, at::MemoryFormat::Contiguous));
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
// rows + cols accumulators per layer, or the device's normalisation-backward partial sums.
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
    device.run(p, sigmas);
  }
}

template <const Device& device> at::Tensor power_iteration(at::TensorList weights, at::TensorList us, at::TensorList vs,
                                                           at::IntArrayRef dims, int64_t n_power_iterations,
                                                           double eps) {
  const std::vector<SpectralLayer> layers = layers_of(weights, us, vs, dims);
  check_vectors_do_not_overlap(us, vs);
  TORCH_CHECK_VALUE(n_power_iterations >= 0, "n_power_iterations must be >= 0, got ", n_power_iterations);
  check_positive(eps, "eps");
  at::Tensor sigmas = empty_sigmas(weights);
  if (layers.empty()) return sigmas;
  std::vector<at::Tensor> none;
  run(device, SpectralMode::PowerIteration, layers, none, none, sigmas, n_power_iterations, eps);
  return sigmas;
}

template <const Device& device> std::vector<at::Tensor> normalize(at::TensorList weights, at::TensorList us,
                                                                  at::TensorList vs, const at::Tensor& sigmas,
                                                                  at::IntArrayRef dims) {
  const std::vector<SpectralLayer> layers = layers_of(weights, us, vs, dims);
  check_sigmas(sigmas, weights);
  std::vector<at::Tensor> out = empty_outputs(layers);
  if (!layers.empty()) run(device, SpectralMode::Normalize, layers, {}, out, sigmas.contiguous());
  return out;
}

template <const Device& device>
std::vector<at::Tensor> normalize_backward(at::TensorList grads, at::TensorList weights, at::TensorList us,
                                           at::TensorList vs, const at::Tensor& sigmas, at::IntArrayRef dims) {
  const std::vector<SpectralLayer> layers = layers_of(weights, us, vs, dims);
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
}

TORCH_LIBRARY_IMPL(gan_kernels, CPU, m) {
  m.impl("spectral_norm_power_iteration_", &power_iteration<kCpu>);
  m.impl("spectral_norm_normalize", &normalize<kCpu>);
  m.impl("spectral_norm_normalize_backward", &normalize_backward<kCpu>);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(gan_kernels, CUDA, m) {
  m.impl("spectral_norm_power_iteration_", &power_iteration<kCuda>);
  m.impl("spectral_norm_normalize", &normalize<kCuda>);
  m.impl("spectral_norm_normalize_backward", &normalize_backward<kCuda>);
}
#endif

}  // namespace gan_kernels
