#include "cpu/capability.h"

#include <ATen/Version.h>

#include <string>

namespace gan_kernels {

CpuCapability cpu_capability() {
  static const CpuCapability capability = [] {
#if GAN_KERNELS_CPU_VECTOR_BUILDS
    // ATen names its x86 capabilities DEFAULT, AVX2, AVX512 (and AVX512_VNNI-like refinements of it).
    const std::string name = at::get_cpu_capability();
    if (name.rfind("AVX512", 0) == 0) return CpuCapability::Avx512;
    if (name.rfind("AVX2", 0) == 0) return CpuCapability::Avx2;
#endif
    return CpuCapability::Default;
  }();
  return capability;
}

}  // namespace gan_kernels
