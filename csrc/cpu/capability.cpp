#include "cpu/capability.h"

#include <ATen/Version.h>

#include <string>

namespace gan_kernels {

CpuCapability cpu_capability() {
  static const CpuCapability capability = [] {
#if GAN_KERNELS_CPU_VECTOR_BUILDS
    // ATen names its x86 capabilities DEFAULT, AVX2, AVX512 (and AVX512_VNNI-like refinements of it).
    // ATen takes ATEN_CPU_CAPABILITY at its word, also where the CPU lacks the instructions (AVX512
    // asked for on an AVX2 CPU): a build runs here only where the CPU has what its Vectorized needs,
    // else the next lower one, instead of dying of an illegal instruction.
    const std::string name = at::get_cpu_capability();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (name.rfind("AVX512", 0) == 0 && avx512) return CpuCapability::Avx512;
    if ((name.rfind("AVX512", 0) == 0 || name.rfind("AVX2", 0) == 0) && avx2) return CpuCapability::Avx2;
#endif
    return CpuCapability::Default;
  }();
  return capability;
}

const char* cpu_capability_name(CpuCapability capability) {
  switch (capability) {
    case CpuCapability::Avx512: return "avx512";
    case CpuCapability::Avx2: return "avx2";
    case CpuCapability::Default: break;
  }
  return "default";
}

}  // namespace gan_kernels
