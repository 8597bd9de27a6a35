// Which build of a vectorised CPU kernel runs: one build per CPU capability of ATen (DEFAULT, AVX2,
// AVX512), the one ATen itself runs at on this CPU (`at::get_cpu_capability()`, which
// ATEN_CPU_CAPABILITY can change), lowered to what the CPU has. Torch-free, so a per-capability source can include an op's entry
// header (which declares its builds with GAN_KERNELS_DECLARE_CPU_KERNEL) before choosing its target.
//
// A kernel joins by defining `gan_kernels::CPU_CAPABILITY::<name>` in csrc/cpu/<op>_kernel.h:
// setup.py compiles that header once per capability (cpu/capability_build.h sets the target).
#pragma once

// The AVX2 and AVX512 builds need GCC's target pragma on x86-64; elsewhere only DEFAULT exists.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GAN_KERNELS_CPU_VECTOR_BUILDS 1
#else
#define GAN_KERNELS_CPU_VECTOR_BUILDS 0
#endif

#if GAN_KERNELS_CPU_VECTOR_BUILDS
#define GAN_KERNELS_DECLARE_CPU_KERNEL(result, name, parameters) \
  namespace DEFAULT {                                            \
  result name parameters;                                        \
  }                                                              \
  namespace AVX2 {                                               \
  result name parameters;                                        \
  }                                                              \
  namespace AVX512 {                                             \
  result name parameters;                                        \
  }
// The build of `name` (declared above) for the capability ATen runs at.
#define GAN_KERNELS_CPU_KERNEL(name) ::gan_kernels::for_cpu_capability(&DEFAULT::name, &AVX2::name, &AVX512::name)
#else
#define GAN_KERNELS_DECLARE_CPU_KERNEL(result, name, parameters) \
  namespace DEFAULT {                                            \
  result name parameters;                                        \
  }
#define GAN_KERNELS_CPU_KERNEL(name) (&DEFAULT::name)
#endif

namespace gan_kernels {

enum class CpuCapability { Default, Avx2, Avx512 };

// ATen's choice within what the CPU has, read once (cpu/capability.cpp).
CpuCapability cpu_capability();

// As ATEN_CPU_CAPABILITY names it: "default", "avx2", "avx512".
const char* cpu_capability_name(CpuCapability capability);

template <typename F> F* for_cpu_capability(F* default_build, F* avx2_build, F* avx512_build) {
  switch (cpu_capability()) {
    case CpuCapability::Avx512: return avx512_build;
    case CpuCapability::Avx2: return avx2_build;
    case CpuCapability::Default: break;
  }
  return default_build;
}

}  // namespace gan_kernels
