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

namespace gan_kernels {
namespace {

template <typename T> using Vec = at::vec::Vectorized<T>;

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
};

}  // namespace
}  // namespace gan_kernels
