// The Python module gan_kernels._C: loading it registers every op with the dispatcher; pybind11
// carries the build facts and the CPU output memory's settings and statistics.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/ScalarType.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "activation_table.h"
#include "build_info.h"
#include "common/dtype.h"
#include "cpu/capability.h"
#include "cpu/output_memory.h"

// Each op defines its own schemas beside its contract, in csrc/ops/<op>.cpp, as fragments.
TORCH_LIBRARY(gan_kernels, m) {}

namespace {

std::vector<std::string> split_archs(const std::string& archs) {
  std::vector<std::string> out;
  std::stringstream stream(archs);
  for (std::string arch; std::getline(stream, arch, ';');) {
    if (!arch.empty()) out.push_back(arch);
  }
  return out;
}

std::vector<std::string> registered_ops() {
  std::vector<std::string> names;
  for (const auto& op : c10::Dispatcher::singleton().getAllOpNames()) {
    if (op.name.rfind("gan_kernels::", 0) == 0) names.push_back(op.name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The activation table the kernels were built with: (name, default alpha, default gain, piecewise linear).
std::vector<std::tuple<std::string, double, double, bool>> activations() {
  return {
#define GAN_KERNELS_ACTIVATION_ROW(enumerator, name, alpha, gain, piecewise_linear) \
  {name, alpha, gain, piecewise_linear},
      GAN_KERNELS_FOR_EACH_ACTIVATION(GAN_KERNELS_ACTIVATION_ROW)
#undef GAN_KERNELS_ACTIVATION_ROW
  };
}

// The dtypes the kernels take, as Python names them (float32, ...).
std::vector<std::string> dtypes() {
  return {
#define GAN_KERNELS_DTYPE_ROW(name, scalar_type, cpu_type, cuda_type) \
  std::string(c10::getDtypeNames(c10::ScalarType::scalar_type).first),
      GAN_KERNELS_FOR_EACH_DTYPE(GAN_KERNELS_DTYPE_ROW)
#undef GAN_KERNELS_DTYPE_ROW
  };
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gan_kernels compiled ops (registered with the PyTorch dispatcher under torch.ops.gan_kernels)";
  m.attr("__version__") = GAN_KERNELS_VERSION;
  m.attr("torch_version") = GAN_KERNELS_TORCH_VERSION;
#ifdef WITH_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
  m.attr("cuda_archs") = split_archs(GAN_KERNELS_CUDA_ARCHS);
  m.def("ops", &registered_ops, "Names of the gan_kernels ops registered with the dispatcher.");
  m.attr("activations") = activations();
  m.attr("activation_constants") = std::vector<std::tuple<std::string, double>>{
#define GAN_KERNELS_ACTIVATION_CONSTANT_ROW(name, value) {#name, value},
      GAN_KERNELS_FOR_EACH_ACTIVATION_CONSTANT(GAN_KERNELS_ACTIVATION_CONSTANT_ROW)
#undef GAN_KERNELS_ACTIVATION_CONSTANT_ROW
  };
  m.attr("dtypes") = dtypes();
  m.def(
      "cpu_capability", [] { return gan_kernels::cpu_capability_name(gan_kernels::cpu_capability()); },
      "The build of the vectorised CPU kernels that runs: default, avx2 or avx512.");
  m.def("set_huge_page_outputs", &gan_kernels::set_huge_page_outputs,
        "Whether new CPU output blocks of 4 MiB or more ask for transparent huge pages (GAN_KERNELS_HUGE_PAGES).");
  m.def("huge_page_outputs", &gan_kernels::huge_page_outputs);
  m.def("set_output_cache_limit", &gan_kernels::set_output_cache_limit,
        "The most bytes of freed CPU output blocks kept for reuse (GAN_KERNELS_CPU_CACHE_MB).");
  m.def("output_cache_stats", [] {
    const gan_kernels::OutputCacheStats stats = gan_kernels::output_cache_stats();
    return std::make_tuple(stats.live_bytes, stats.held_bytes, stats.limit_bytes);
  });
  m.def("empty_output_cache", &gan_kernels::empty_output_cache);
}
