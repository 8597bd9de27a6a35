// The element types every kernel takes, one row each. The enum, the torch dtype each maps to and
// each device's C++ type all come from this table, so adding a dtype is one row here (and its
// tests). Torch-free: the columns name types only where a device's header expands them.
#pragma once

// X(enumerator, at::ScalarType enumerator, CPU element type, CUDA element type)
#define GAN_KERNELS_FOR_EACH_DTYPE(X) \
  X(Float64, Double, double, double)  \
  X(Float32, Float, float, float)     \
  X(Float16, Half, c10::Half, __half) \
  X(BFloat16, BFloat16, c10::BFloat16, __nv_bfloat16)

namespace gan_kernels {

enum class DType {
#define GAN_KERNELS_DTYPE_ENUMERATOR(name, scalar_type, cpu_type, cuda_type) name,
  GAN_KERNELS_FOR_EACH_DTYPE(GAN_KERNELS_DTYPE_ENUMERATOR)
#undef GAN_KERNELS_DTYPE_ENUMERATOR
};

// Calls f(T{}) with T the element type `dtype` names on a device: `Elements` is that device's
// column of the table (CpuElements in cpu/dispatch.h, CudaElements in cuda/common.cuh).
template <typename Elements, typename F> decltype(auto) dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
#define GAN_KERNELS_DTYPE_CASE(name, scalar_type, cpu_type, cuda_type) \
  case DType::name: return f(typename Elements::name{});
    GAN_KERNELS_FOR_EACH_DTYPE(GAN_KERNELS_DTYPE_CASE)
#undef GAN_KERNELS_DTYPE_CASE
  }
  __builtin_unreachable();  // every enumerator has its case
}

}  // namespace gan_kernels
