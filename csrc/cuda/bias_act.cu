#include "cuda/bias_act.h"
#include "cuda/common.cuh"

namespace gan_kernels {
namespace {

constexpr int kThreads = 256;

// The activation is a runtime switch, uniform across the grid, rather than a template parameter:
// the kernel is memory-bound, and 4 modes x 4 dtypes x 2 widths stay quick to compile.
template <BiasActMode kMode, typename A>
__device__ __forceinline__ A element(Activation act, A r, A b, A g1, A g2, const BiasActScalars<A>& s) {
  const bool clamped = s.clamp >= A(0);
  const bool gain_positive = s.gain > A(0);
  return with_activation(act, [&](auto act_tag) {
    constexpr Activation kAct = decltype(act_tag)::value;
    // Grad2 of a piecewise-linear act is 0; GradFromY of a smooth one is never launched.
    if constexpr (kMode == BiasActMode::Grad2 ? piecewise_linear(kAct)
                                              : kMode == BiasActMode::GradFromY && !piecewise_linear(kAct)) {
      return A(0);
    } else {
      return bias_act_element<kAct, kMode>(r, b, g1, g2, s, clamped, gain_positive);
    }
  });
}

// Each thread handles groups of V consecutive elements with V-wide loads. V > 1 only when every
// group lies in one channel (inner % V == 0) or spans V consecutive channels (inner == 1,
// channels % V == 0), so one division per group finds the channels.
template <typename T, BiasActMode kMode, int V> __global__ void __launch_bounds__(kThreads)
    bias_act_kernel(BiasActParams p, BiasActScalars<acc_t<T>> s) {
  using A = acc_t<T>;
  using VecT = Vec<T, V>;
  constexpr bool kUsesG1 = kMode != BiasActMode::Forward;
  constexpr bool kUsesG2 = kMode == BiasActMode::Grad2;
  const T* ref = static_cast<const T*>(p.ref);
  const T* g1 = static_cast<const T*>(p.g1);
  const T* g2 = static_cast<const T*>(p.g2);
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
  const int64_t groups = p.numel / V;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t group = int64_t(blockIdx.x) * kThreads + threadIdx.x; group < groups; group += stride) {
    const int64_t i0 = group * V;
    const VecT rv = load_vec<T, V>(ref + i0);
    VecT g1v{};
    VecT g2v{};
    if (kUsesG1) g1v = load_vec<T, V>(g1 + i0);
    if (kUsesG2) g2v = load_vec<T, V>(g2 + i0);
    const int64_t c0 = bias != nullptr ? (i0 / p.inner) % p.channels : 0;
    const bool channel_per_element = p.inner == 1 && p.channels > 1;
    VecT ov;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const A b = bias != nullptr ? to_acc(bias[channel_per_element ? c0 + j : c0]) : A(0);
      ov.v[j] = from_acc<T>(element<kMode>(p.act, to_acc(rv.v[j]), b, kUsesG1 ? to_acc(g1v.v[j]) : A(0),
                                           kUsesG2 ? to_acc(g2v.v[j]) : A(0), s));
    }
    store_vec(out + i0, ov);
  }
}

template <typename T, BiasActMode kMode> cudaError_t launch_mode(const BiasActParams& p, cudaStream_t stream) {
  using A = acc_t<T>;
  const BiasActScalars<A> s{A(p.scalars.alpha), A(p.scalars.gain), A(p.scalars.clamp), A(p.scalars.scale)};
  constexpr int V = 16 / sizeof(T);
  const bool groups_share_channels =
      p.bias == nullptr || p.channels == 1 || p.inner % V == 0 || (p.inner == 1 && p.channels % V == 0);
  const bool vectorised = p.numel % V == 0 && groups_share_channels && aligned_to(p.out, 16) && aligned_to(p.ref, 16) &&
                          aligned_to(p.g1, 16) && aligned_to(p.g2, 16);
  if (vectorised) {
    const int64_t blocks = std::min(ceil_div(p.numel / V, kThreads), kMaxBlocks);
    bias_act_kernel<T, kMode, V><<<blocks, kThreads, 0, stream>>>(p, s);
  } else {
    const int64_t blocks = std::min(ceil_div(p.numel, kThreads), kMaxBlocks);
    bias_act_kernel<T, kMode, 1><<<blocks, kThreads, 0, stream>>>(p, s);
  }
  return cudaGetLastError();
}

template <typename T> cudaError_t launch_typed(const BiasActParams& p, cudaStream_t stream) {
  return dispatch_mode(p.mode, [&](auto mode) { return launch_mode<T, decltype(mode)::value>(p, stream); });
}

}  // namespace

cudaError_t launch_bias_act(const BiasActParams& params, cudaStream_t stream) {
  if (params.numel == 0) return cudaSuccess;
  if (params.mode == BiasActMode::GradFromY && !piecewise_linear(params.act)) {
    return cudaErrorInvalidValue;
  }
  return dispatch_dtype<CudaElements>(params.dtype,
                                      [&](auto tag) { return launch_typed<decltype(tag)>(params, stream); });
}

}  // namespace gan_kernels
