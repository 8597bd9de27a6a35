// What lets one function serve the CPU and the CUDA kernels: the host/device qualifier, and the
// small integer helpers every launcher and kernel uses.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GAN_KERNELS_HD __host__ __device__ __forceinline__
#else
#define GAN_KERNELS_HD inline
#endif

namespace gan_kernels {

GAN_KERNELS_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace gan_kernels
