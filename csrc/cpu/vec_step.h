// A vector step of ATen's Vectorized for the CPU kernels built per capability (cpu/<op>_kernel.h):
// included only after cpu/capability_build.h has set the instruction set, and in an anonymous
// namespace, so each build has its own copy.
#pragma once

#include <ATen/OpMathType.h>
// functional.h: the reduced-float convert_to_float/convert_from_float specialisations (without it
// they link as undefined symbols).
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <array>
#include <cstdint>
#include <type_traits>

#include "common/element_math.h"

namespace gan_kernels {
namespace {

template <typename T> using Vec = at::vec::Vectorized<T>;

}  // namespace

// The shared formulas' primitives on this build's vectors: comparisons give lane masks, select
// blends by them. Vectorized's sqrt is correctly rounded, as std::sqrt is, so vector and scalar
// paths agree to the bit.
template <typename T> struct ElementMath<Vec<T>> {
  using V = Vec<T>;
  static V select(const V& mask, const V& if_true, const V& if_false) { return V::blendv(if_false, if_true, mask); }
  static V both(const V& a, const V& b) { return a & b; }
  static V sqrt(const V& v) { return v.sqrt(); }
  static V exp(const V& v) { return v.exp(); }
  static V expm1(const V& v) { return v.expm1(); }
  static V log1p(const V& v) { return v.log1p(); }
  static V tanh(const V& v) { return v.tanh(); }
};

namespace {

// One step is a vector of the element type, computed as kParts vectors of its accumulator type
// (float for Half and BFloat16: converted a vector at a time).
template <typename scalar_t> struct Step {
  using acc_t = at::opmath_type<scalar_t>;
  using AccVec = Vec<acc_t>;
  static constexpr int64_t kSize = Vec<scalar_t>::size();
  static constexpr int kParts = static_cast<int>(kSize / AccVec::size());
  using Parts = std::array<AccVec, kParts>;

  // `count` < kSize loads only that many elements (the rest are zero) and stores only that many.
  static Parts load(const scalar_t* p, int64_t count = kSize) {
    const Vec<scalar_t> v = count == kSize ? Vec<scalar_t>::loadu(p) : Vec<scalar_t>::loadu(p, count);
    if constexpr (kParts == 1) {
      return {v};
    } else {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(v);
      return {lo, hi};
    }
  }
  static void store(scalar_t* p, const Parts& v, int64_t count = kSize) {
    Vec<scalar_t> out;
    if constexpr (kParts == 1) {
      out = v[0];
    } else {
      out = at::vec::convert_from_float<scalar_t>(v[0], v[1]);
    }
    if (count == kSize) {
      out.store(p);
    } else {
      out.store(p, count);
    }
  }
  // A step's worth (kSize) of accumulators, as kParts vectors in element order.
  static Parts load_acc(const acc_t* p) {
    Parts v;
    for (int k = 0; k < kParts; ++k) v[k] = AccVec::loadu(p + k * AccVec::size());
    return v;
  }
  static void store_acc(acc_t* p, const Parts& v) {
    for (int k = 0; k < kParts; ++k) v[k].store(p + k * AccVec::size());
  }
};

// Fixed-order sums: element i of a sum goes to lane i % kSumLanes, each lane adds in increasing i, and
// the lanes are added last, in lane order. kSumLanes is a whole number of vector steps in every build,
// so every build and every split of the outputs over threads gives the same bits, and the independent
// lanes keep the adds pipelined.
constexpr int64_t kSumLanes = 32;

// The kSumLanes elements from p, as accumulator vectors in element order.
template <typename scalar_t> struct SumBlock {
  using S = Step<scalar_t>;
  static_assert(kSumLanes % S::kSize == 0, "a lane block is a whole number of steps");
  static constexpr int kVectors = static_cast<int>(kSumLanes / S::AccVec::size());
  using Vectors = std::array<typename S::AccVec, kVectors>;

  static Vectors load(const scalar_t* p) {
    Vectors block;
    for (int64_t step = 0; step < kSumLanes / S::kSize; ++step) {
      const typename S::Parts parts = S::load(p + step * S::kSize);
      for (int part = 0; part < S::kParts; ++part) block[step * S::kParts + part] = parts[part];
    }
    return block;
  }
};

// A running sum of products in the fixed order above, fed a lane block at a time from the start of
// the data; `total` adds the elements past the last whole block and then the lanes.
template <typename acc_t> struct LaneSum {
  using AccVec = Vec<acc_t>;
  static constexpr int kVectors = static_cast<int>(kSumLanes / AccVec::size());
  std::array<AccVec, kVectors> lanes;

  LaneSum() { lanes.fill(AccVec(acc_t(0))); }

  template <typename Vectors> void add(const Vectors& a, const Vectors& b) {
    for (int v = 0; v < kVectors; ++v) lanes[v] = lanes[v] + a[v] * b[v];
  }

  // `tail` is [from, n) with `from` a multiple of kSumLanes; product(i) is element i's product.
  template <typename Product> acc_t total(int64_t from, int64_t n, Product product) const {
    acc_t flat[kSumLanes];
    for (int v = 0; v < kVectors; ++v) lanes[v].store(flat + v * AccVec::size());
    for (int64_t i = from; i < n; ++i) flat[i % kSumLanes] += product(i);
    acc_t sum = 0;
    for (int64_t l = 0; l < kSumLanes; ++l) sum += flat[l];
    return sum;
  }
};

// sum_i a[i] * b[i] in the accumulator type, in the fixed order above. a and b may differ in type
// when their accumulator types agree (float with Half or BFloat16).
template <typename a_t, typename b_t, typename acc_t = at::opmath_type<a_t>>
acc_t dot(const a_t* a, const b_t* b, int64_t n) {
  static_assert(std::is_same_v<acc_t, at::opmath_type<b_t>>, "one accumulator type");
  LaneSum<acc_t> sum;
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes) sum.add(SumBlock<a_t>::load(a + i), SumBlock<b_t>::load(b + i));
  return sum.total(i, n, [&](int64_t j) { return acc_t(a[j]) * acc_t(b[j]); });
}

// sum_i a[i]^2, as dot(a, a, n) gives it, loading each element once.
template <typename a_t, typename acc_t = at::opmath_type<a_t>> acc_t sum_squares(const a_t* a, int64_t n) {
  LaneSum<acc_t> sum;
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes) {
    const auto block = SumBlock<a_t>::load(a + i);
    sum.add(block, block);
  }
  return sum.total(i, n, [&](int64_t j) { return acc_t(a[j]) * acc_t(a[j]); });
}

}  // namespace
}  // namespace gan_kernels
