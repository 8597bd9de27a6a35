// Device helpers shared by every kernel: accumulator types, conversions, warp reductions.
// CUDA headers only, so nvcc compiles it without torch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/dtype.h"
#include "common/host_device.h"

namespace gan_kernels {

// fp16/bf16 accumulate in float, float64 in double.
template <typename T> struct Acc {
  using type = float;
};
template <> struct Acc<double> {
  using type = double;
};
template <typename T> using acc_t = typename Acc<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// N elements moved as one aligned load or store.
template <typename T, int N> struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N> __device__ __forceinline__ Vec<T, N> load_vec(const T* src) {
  return *reinterpret_cast<const Vec<T, N>*>(src);
}

// Writes a Vec with one store of its size. A 16-byte Vec assigned member-wise may be split by the
// compiler into 2- or 4-byte stores (seen in pixel_norm_rows' SASS, scripts/sass_audit.py); a uint4
// store through the store intrinsic stays one 16-byte store.
template <typename T, int N> __device__ __forceinline__ void store_vec(T* dst, const Vec<T, N>& v) {
  if constexpr (sizeof(Vec<T, N>) == sizeof(uint4)) {
    uint4 bits;
    memcpy(&bits, &v, sizeof(bits));
    __stwb(reinterpret_cast<uint4*>(dst), bits);
  } else {
    *reinterpret_cast<Vec<T, N>*>(dst) = v;
  }
}

inline bool aligned_to(const void* p, std::uintptr_t bytes) {
  return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// The CUDA column of the dtype table (common/dtype.h), for dispatch_dtype<CudaElements>.
struct CudaElements {
#define GAN_KERNELS_CUDA_ELEMENT(name, scalar_type, cpu_type, cuda_type) using name = cuda_type;
  GAN_KERNELS_FOR_EACH_DTYPE(GAN_KERNELS_CUDA_ELEMENT)
#undef GAN_KERNELS_CUDA_ELEMENT
};

// The most blocks a launcher starts; grid-stride loops cover the rest. The CUDA emulation build
// (tests/cuda_emulation) starts at most 8, so that its small tests reach those loops.
#ifdef GAN_KERNELS_CUDA_EMULATION
constexpr int64_t kMaxBlocks = 8;
#else
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
#endif

}  // namespace gan_kernels
