// Input checks, dtype mapping and layout helpers shared by every op's contract (csrc/ops/<op>.cpp).
// Messages name the argument and the value as the Python checks in gan_kernels/_checks.py do, dtypes
// as Python prints them (torch.float32), so both backends raise the same text.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/OpMathType.h>
#include <ATen/WrapDimUtilsMulti.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/CPUAllocator.h>

#include <charconv>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/host_device.h"
#include "cpu/output_memory.h"

#ifdef GAN_KERNELS_CUDA_EMULATION
#include <cuda_runtime.h>  // tests/cuda_emulation's stand-in
#elif defined(WITH_CUDA)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace gan_kernels {

// The kernels' DType of a torch dtype, if they have one.
inline std::optional<DType> kernel_dtype_of(at::ScalarType type) {
  switch (type) {
#define GAN_KERNELS_DTYPE_FROM_SCALAR_TYPE(name, scalar_type, cpu_type, cuda_type) \
  case at::ScalarType::scalar_type: return DType::name;
    GAN_KERNELS_FOR_EACH_DTYPE(GAN_KERNELS_DTYPE_FROM_SCALAR_TYPE)
#undef GAN_KERNELS_DTYPE_FROM_SCALAR_TYPE
    default: return std::nullopt;
  }
}

// As Python prints it: torch.float32.
inline std::string dtype_name(at::ScalarType type) { return "torch." + std::string(c10::getDtypeNames(type).first); }

// "float64, float32, float16 or bfloat16": the dtypes of the table, as the checks list them.
inline std::string kernel_dtype_names() {
  std::string names;
  const char* separator = "";
#define GAN_KERNELS_DTYPE_NAME(name, scalar_type, cpu_type, cuda_type)                     \
  names += separator + std::string(c10::getDtypeNames(at::ScalarType::scalar_type).first); \
  separator = ", ";
  GAN_KERNELS_FOR_EACH_DTYPE(GAN_KERNELS_DTYPE_NAME)
#undef GAN_KERNELS_DTYPE_NAME
  const size_t last = names.rfind(", ");
  return last == std::string::npos ? names : names.replace(last, 2, " or ");
}

inline void check_floating(const at::Tensor& t, const char* arg) {
  TORCH_CHECK_TYPE(kernel_dtype_of(t.scalar_type()).has_value(), arg, " must be ", kernel_dtype_names(), ", got ",
                   dtype_name(t.scalar_type()));
}

// Only for tensors check_floating accepted.
inline DType kernel_dtype(at::ScalarType type) { return *kernel_dtype_of(type); }

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* arg, const char* ref_arg) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), arg, " is on ", t.device(), " but ", ref_arg, " is on ", ref.device());
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* arg, const char* ref_arg) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), arg, " has dtype ", dtype_name(t.scalar_type()), " but ",
                   ref_arg, " has dtype ", dtype_name(ref.scalar_type()));
}

inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* arg, const char* ref_arg) {
  check_same_device(t, ref, arg, ref_arg);
  check_same_dtype(t, ref, arg, ref_arg);
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), arg, " has shape ", t.sizes(), " but ", ref_arg, " has shape ",
                    ref.sizes());
}

inline int64_t wrap_dim(int64_t dim, const at::Tensor& t, const char* arg) {
  const int64_t ndim = t.dim();
  TORCH_CHECK_INDEX(ndim > 0 && dim >= -ndim && dim < ndim, arg, "=", dim, " is out of range for a tensor with ", ndim,
                    " dimensions (expected ", -ndim, " <= ", arg, " < ", ndim, ")");
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

// Elements per chunk of thread_invariant_sum, as reference.ROW_CHUNK: below ATen's parallel grain, so
// one thread sums each chunk.
constexpr int64_t kSumChunk = 16384;

// t.sum(dims, keepdim), the same bits whatever the number of threads. ATen splits a CPU sum with
// several outputs by its outputs, each summed whole by one thread, but a sum to a single element of
// 32K elements or more in per-thread shares, so its last bits depend on the thread count. Such a sum
// runs here in fixed chunks, then over the chunk sums, accumulating in the op-math type as torch's
// sum does. Aten ops, so it is differentiable.
inline at::Tensor thread_invariant_sum(const at::Tensor& t, at::IntArrayRef dims, bool keepdim) {
  const auto reduced = at::dim_list_to_bitset(dims, t.dim());
  std::vector<int64_t> shape;
  int64_t outputs = 1;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (!reduced[d]) {
      outputs *= t.size(d);
      shape.push_back(t.size(d));
    } else if (keepdim) {
      shape.push_back(1);
    }
  }
  if (!t.is_cpu() || outputs != 1 || t.numel() <= kSumChunk) return t.sum(dims, keepdim);
  const at::ScalarType accumulate = at::toOpMathType(t.scalar_type());
  at::Tensor partial = t.reshape({-1});
  while (partial.numel() > kSumChunk) {
    const int64_t chunks = ceil_div(partial.numel(), kSumChunk);
    partial = at::constant_pad_nd(partial, {0, chunks * kSumChunk - partial.numel()})
                  .view({chunks, kSumChunk})
                  .sum(1, /*keepdim=*/false, accumulate);
  }
  return partial.sum(accumulate).to(t.scalar_type()).reshape(shape);
}

// The allocator of our large CPU outputs: blocks of cpu/output_memory.h's cache, reported to the
// profiler as c10's CPU allocator reports its own. Smaller requests, and every request while the
// cache's limit is 0, go to the allocator at::empty uses (c10::GetCPUAllocator()).
class OutputAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    OutputBlock* block = cached(bytes) ? acquire_output_block(bytes) : nullptr;
    if (block == nullptr) return c10::GetCPUAllocator()->allocate(bytes);
    report(block->data, static_cast<int64_t>(bytes));
    return {block->data, block, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

  static bool cached(size_t bytes) { return bytes >= kCachedOutputBytes && output_cache_limit() > 0; }

 private:
  static void release(void* context) {
    auto* block = static_cast<OutputBlock*>(context);
    report(block->data, -static_cast<int64_t>(block->bytes));
    release_output_block(block);
  }

  static void report(void* data, int64_t bytes) {
    const OutputCacheStats stats = output_cache_stats();
    c10::reportMemoryUsageToProfiler(data, bytes, stats.live_bytes, stats.live_bytes + stats.held_bytes,
                                     c10::Device(c10::DeviceType::CPU));
  }
};

inline OutputAllocator& output_allocator() {
  static OutputAllocator allocator;
  return allocator;
}

// An op's output, which its kernel writes entirely, as at::empty(sizes, options, format) gives it; on
// the CPU a large one comes from the output cache (cpu/output_memory.h), so that its first write is
// not mostly page faults.
inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                             at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  if (!options.device().is_cpu() ||
      !OutputAllocator::cached(static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize())) {
    return at::empty(sizes, options.memory_format(format));
  }
  return at::detail::empty_generic(sizes, &output_allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   options.dtype().toScalarType(), format);
}

// As at::empty_like(t) gives it (t's strides where t is dense), from the output cache as new_output.
inline at::Tensor new_output_like(const at::Tensor& t) {
  if (!t.is_cpu() || !OutputAllocator::cached(t.nbytes())) return at::empty_like(t);
  const at::Tensor layout = t.is_non_overlapping_and_dense() ? t : at::empty_like(t, t.options().device(at::kMeta));
  return at::detail::empty_strided_generic(layout.sizes(), layout.strides(), &output_allocator(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU), t.scalar_type());
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

// As Python prints a float (repr): the shortest text that reads back as `value`, with ".0" on integers.
inline std::string python_float(double value) {
  char text[32];
  const auto end = std::to_chars(text, text + sizeof(text), value).ptr;
  std::string out(text, end);
  return out.find_first_of(".ein") == std::string::npos ? out + ".0" : out;
}

inline void check_finite(double value, const char* arg) {
  TORCH_CHECK_VALUE(std::isfinite(value), arg, " must be a finite number, got ", python_float(value));
}

inline void check_nonnegative(double value, const char* arg) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value >= 0, arg, " must be a finite number >= 0, got ",
                    python_float(value));
}

// Every op registers one function template per dispatch key, instantiated with the device's kernel
// runner: kernel(params, ref) runs a launch on the device of `ref`.
//
// The CUDA emulation build (tests/cuda_emulation) runs the CUDA kernels on the host, on CPU tensors:
// there the CUDA launchers register under the CPU key, and the CPU kernels are not registered.
#ifdef GAN_KERNELS_CUDA_EMULATION
#define GAN_KERNELS_CUDA_KEY CPU
// The emulated launch runs to completion; its error (a bad configuration) becomes a c10::Error.
template <typename Launch> void launch_on_cuda(const at::Tensor&, Launch&& launch) {
  const cudaError_t error = launch(cudaStream_t{});
  TORCH_CHECK(error == cudaSuccess, "CUDA error: ", cudaGetErrorString(error));
}
#elif defined(WITH_CUDA)
#define GAN_KERNELS_CUDA_KEY CUDA
// Launches on the current stream of ref's device; a launch error becomes a c10::Error.
template <typename Launch> void launch_on_cuda(const at::Tensor& ref, Launch&& launch) {
  const c10::cuda::CUDAGuard guard(ref.device());
  C10_CUDA_CHECK(launch(c10::cuda::getCurrentCUDAStream()));
}
#endif

// One of our ops as the dispatcher has it, for the C++ autograd kernels that call an op (so that the
// call dispatches again: to the device kernel, or to that op's own autograd).
template <typename Sig> c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

}  // namespace gan_kernels
