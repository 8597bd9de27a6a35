// The element types every kernel takes. The enum, the torch dtype each maps to and each device's
// C++ type all come from one table, gan_kernels/_dtypes.py, which Python's checks read too
// (dtype_table.h is generated from it at build time): adding a dtype is one row there (and its
// tests). Torch-free: the columns name types only where a device's header expands them.
#pragma once

#include "dtype_table.h"

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
