// Input checks and layout helpers shared by every op's contract (csrc/ops/<op>.cpp).
// Messages name the argument and the value, and match the Python checks in gan_kernels/_checks.py.
#pragma once

#include <ATen/ATen.h>

#include "cuda/dtype.h"

namespace gan_kernels {

inline void check_floating(const at::Tensor& t, const char* arg) {
  TORCH_CHECK_TYPE(
      t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble || t.scalar_type() == at::kHalf ||
          t.scalar_type() == at::kBFloat16,
      arg, " must be float64, float32, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* arg, const char* ref_arg) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), arg, " is on ", t.device(), " but ", ref_arg, " is on ", ref.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), arg, " has dtype ", t.scalar_type(), " but ", ref_arg,
                   " has dtype ", ref.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), arg, " has shape ", t.sizes(), " but ", ref_arg, " has shape ",
                    ref.sizes());
}

inline int64_t wrap_dim(int64_t dim, const at::Tensor& t, const char* arg) {
  const int64_t ndim = t.dim();
  TORCH_CHECK_INDEX(ndim > 0 && dim >= -ndim && dim < ndim, arg, "=", dim, " is out of range for a tensor with ",
                    ndim, " dimensions (expected ", -ndim, " <= ", arg, " < ", ndim, ")");
  return dim < 0 ? dim + ndim : dim;
}

// A non-overlapping dense tensor seen in memory order as [outer, channels, inner] around one dim:
// element (o, c, i) lives at o * channels * inner + c * inner + i. NCHW with dim 1 gives inner = H*W,
// channels_last gives inner = 1, so one kernel serves both without a layout copy.
struct ChannelView {
  int64_t outer;
  int64_t channels;
  int64_t inner;
};

inline ChannelView channel_view(const at::Tensor& dense, int64_t dim) {
  const int64_t channels = dense.size(dim);
  if (channels <= 1) {
    return {dense.numel(), 1, 1};
  }
  const int64_t inner = dense.stride(dim);
  return {dense.numel() / (channels * inner), channels, inner};
}

// The input itself when it is already dense, else a dense copy with the strides empty_like gives,
// so outputs allocated by empty_like(input) share its memory order.
inline at::Tensor dense_input(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : at::empty_like(t).copy_(t);
}

// `t` laid out exactly like the dense tensor `ref`, copying only when the strides differ.
inline at::Tensor same_layout(const at::Tensor& t, const at::Tensor& ref) {
  return t.strides() == ref.strides() ? t : at::empty_like(ref).copy_(t);
}

// The torch-free kernels (the CUDA launchers, the CPU bias_act kernel) name element types by DType.
inline DType kernel_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK_TYPE(false, "no kernel for dtype ", type);
  }
}

}  // namespace gan_kernels
