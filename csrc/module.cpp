// The Python module gan_kernels._C: loading it registers every op with the dispatcher; pybind11
// carries only the build facts.
#include <ATen/core/dispatch/Dispatcher.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "build_info.h"

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
}
