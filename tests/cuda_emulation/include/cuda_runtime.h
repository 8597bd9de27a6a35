// The CUDA emulation build's stand-in for the CUDA runtime header (see ../README.md): what the kernels
// of csrc/cuda use of CUDA, for a host compiler. Each CUDA thread of a block is a fiber on the calling
// CPU thread (runtime.cpp); blocks run one after another, so a `static` is one block's shared memory.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// No __shared__: build.py rewrites every declaration (below, static_shared), so one it missed fails
// to compile instead of becoming a static that keeps the previous block's values.

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;

cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream);

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

namespace gan_kernels_emulation {

// The CUDA thread a fiber runs.
struct ThreadPlace {
  uint3 thread;
  uint3 block;
  dim3 block_dim;
  dim3 grid_dim;
};
// The emulation's per-CPU-thread state, in the initial-exec TLS model: each threadIdx would otherwise
// be a __tls_get_addr call, which AddressSanitizer intercepts (a sixth of the emulation's time).
#define GAN_KERNELS_EMULATION_THREAD_LOCAL thread_local __attribute__((tls_model("initial-exec")))
extern GAN_KERNELS_EMULATION_THREAD_LOCAL const ThreadPlace* current_place;

void sync_block();
uint64_t shuffle_xor(unsigned mask, uint64_t bits, int lane_mask, int width);
void* dynamic_shared();
// Called after each declaration of a `__shared__` variable, which build.py turns into a static: the
// first thread of a block to reach it fills it with garbage, as a GPU block's shared memory starts,
// rather than leaving the previous block's values (or zeros) for a read before the first write.
void static_shared(void* data, size_t bytes);
// Runs `body` once per thread of every block of the grid; a bad configuration is recorded as the
// launch's error (cudaGetLastError), as the CUDA runtime does, and nothing runs.
void run_grid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, void (*body)(void*), void* context);

// kernel<<<grid, block, shared, stream>>>(args...): the arguments are converted to the kernel's
// parameter types and copied once, as a launch copies them to the device.
template <typename... Params, typename... Args>
void launch(dim3 grid, dim3 block, size_t shared, cudaStream_t, void (*kernel)(Params...), Args&&... args) {
  struct Context {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  } context{kernel, {std::forward<Args>(args)...}};
  run_grid(
      grid, block, shared,
      [](void* c) {
        auto* context = static_cast<Context*>(c);
        std::apply(context->kernel, context->params);
      },
      &context);
}

}  // namespace gan_kernels_emulation

#define threadIdx (::gan_kernels_emulation::current_place->thread)
#define blockIdx (::gan_kernels_emulation::current_place->block)
#define blockDim (::gan_kernels_emulation::current_place->block_dim)
#define gridDim (::gan_kernels_emulation::current_place->grid_dim)

inline void __syncthreads() { ::gan_kernels_emulation::sync_block(); }

template <typename T> T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "a shuffle moves at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = ::gan_kernels_emulation::shuffle_xor(mask, bits, lane_mask, width);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// Cache hints change nothing on the host.
template <typename T> T __ldg(const T* p) { return *p; }
template <typename T> T __ldcg(const T* p) { return *p; }
template <typename T> T __ldcs(const T* p) { return *p; }
template <typename T> void __stwb(T* p, T value) { *p = value; }

// One grid at a time, its blocks one after another on one CPU thread: an atomic is a plain update,
// and every write of an earlier block is seen.
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  const unsigned old = *address;
  *address = old + value;
  return old;
}
inline void __threadfence() {}
// A block waits (spins with __nanosleep) only for blocks that started before it, which here have
// finished: one that still has to wait waits for a block that has not started, which on a GPU can
// deadlock. The runtime stops the process there.
void __nanosleep(unsigned nanoseconds);
// Stops the process, where a GPU would end the launch with an error.
[[noreturn]] void __trap();

// CUDA's device min and max: fmin/fmax for floating types (a NaN loses to a number), else the
// comparison, in the type both convert to.
namespace gan_kernels_emulation {
template <bool kLarger, typename A, typename B> std::common_type_t<A, B> pick(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) {
    return kLarger ? std::fmax(C(a), C(b)) : std::fmin(C(a), C(b));
  } else {
    return (C(a) < C(b)) == kLarger ? C(b) : C(a);
  }
}
}  // namespace gan_kernels_emulation
template <typename A, typename B> std::common_type_t<A, B> min(A a, B b) {
  return ::gan_kernels_emulation::pick<false>(a, b);
}
template <typename A, typename B> std::common_type_t<A, B> max(A a, B b) {
  return ::gan_kernels_emulation::pick<true>(a, b);
}

// The device math library's overloads, found unqualified as in device code.
using std::exp;
using std::fabs;
using std::isfinite;
using std::sqrt;
using std::tanh;
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
