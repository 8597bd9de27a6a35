// The first include of each kernel build that tests/avx512_emulation/build.py makes: csrc/cpu/<op>_kernel.h
// with ATen's AVX512 Vectorized, whose AVX-512 intrinsics come from SIMDe (Debian's libsimde-dev) and
// run on AVX2, so that our AVX512 kernels' code runs on a CPU without AVX-512. The build fills the
// AVX2 slot of the CPU dispatch (CPU_CAPABILITY AVX2, with ATen's AVX512 vectors): under
// ATEN_CPU_CAPABILITY=avx2 the ops run it, while ATen's own kernels stay AVX2.
#pragma once

// GCC's intrinsics first: SIMDe's native aliases are macros, which then rename every later use.
#include <immintrin.h>
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>

#include <cmath>
#include <cstdint>

// ---- AVX-512 intrinsics ATen uses that SIMDe 0.7.4 lacks, built from the ones it has or lane by lane.

static inline float gk_mm512_cvtss_f32(simde__m512 a) { return simde_mm_cvtss_f32(simde_mm512_castps512_ps128(a)); }

static inline simde__m512 gk_mm512_cvtph_ps(simde__m256i a) {
  const simde__m256 lo = simde_mm256_cvtph_ps(simde_mm256_castsi256_si128(a));
  const simde__m256 hi = simde_mm256_cvtph_ps(simde_mm256_extracti128_si256(a, 1));
  return simde_mm512_insertf32x8(simde_mm512_castps256_ps512(lo), hi, 1);
}

static inline simde__m512i gk_mm512_cvtepu16_epi32(simde__m256i a) {
  const simde__m256i lo = simde_mm256_cvtepu16_epi32(simde_mm256_castsi256_si128(a));
  const simde__m256i hi = simde_mm256_cvtepu16_epi32(simde_mm256_extracti128_si256(a, 1));
  return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(lo), hi, 1);
}

// A macro: the rounding is an immediate.
#define gk_mm512_cvtps_ph(a, rounding)                                                                                 \
  simde_mm256_set_m128i(                                                                                               \
      simde_mm256_cvtps_ph(simde_mm256_castpd_ps(simde_mm512_extractf64x4_pd(simde_mm512_castps_pd(a), 1)), rounding), \
      simde_mm256_cvtps_ph(simde_mm512_castps512_ps256(a), rounding))

#define _mm512_cvtss_f32(a) gk_mm512_cvtss_f32(a)
#define _mm512_cvtph_ps(a) gk_mm512_cvtph_ps(a)
#define _mm512_cvtepu16_epi32(a) gk_mm512_cvtepu16_epi32(a)
#define _mm512_cvtps_ph(a, rounding) gk_mm512_cvtps_ph(a, rounding)
#define _mm512_extracti32x8_epi32(a, imm) simde_mm512_extracti64x4_epi64(a, imm)

// Masked loads and stores touch only the lanes their mask selects, as AVX-512's do (ATen loads and
// stores a tail through them, up to the end of a tensor).
#define GK_MASKED_ACCESS(suffix, vec, lanes_t, field, n, mask_t)                     \
  static inline vec gk_mm512_maskz_loadu_##suffix(mask_t k, const void* p) {         \
    vec##_private r;                                                                 \
    const lanes_t* from = static_cast<const lanes_t*>(p);                            \
    for (int i = 0; i < n; ++i) r.field[i] = ((k >> i) & 1) ? from[i] : lanes_t(0);  \
    return vec##_from_private(r);                                                    \
  }                                                                                  \
  static inline vec gk_mm512_mask_loadu_##suffix(vec src, mask_t k, const void* p) { \
    vec##_private r = vec##_to_private(src);                                         \
    const lanes_t* from = static_cast<const lanes_t*>(p);                            \
    for (int i = 0; i < n; ++i)                                                      \
      if ((k >> i) & 1) r.field[i] = from[i];                                        \
    return vec##_from_private(r);                                                    \
  }                                                                                  \
  static inline void gk_mm512_mask_storeu_##suffix(void* p, mask_t k, vec a) {       \
    const vec##_private r = vec##_to_private(a);                                     \
    lanes_t* to = static_cast<lanes_t*>(p);                                          \
    for (int i = 0; i < n; ++i)                                                      \
      if ((k >> i) & 1) to[i] = r.field[i];                                          \
  }
GK_MASKED_ACCESS(ps, simde__m512, float, f32, 16, simde__mmask16)
GK_MASKED_ACCESS(pd, simde__m512d, double, f64, 8, simde__mmask8)
GK_MASKED_ACCESS(epi8, simde__m512i, int8_t, i8, 64, simde__mmask64)
GK_MASKED_ACCESS(epi16, simde__m512i, int16_t, i16, 32, simde__mmask32)
GK_MASKED_ACCESS(epi32, simde__m512i, int32_t, i32, 16, simde__mmask16)
GK_MASKED_ACCESS(epi64, simde__m512i, int64_t, i64, 8, simde__mmask8)
#define _mm512_maskz_loadu_ps gk_mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_pd gk_mm512_maskz_loadu_pd
#define _mm512_maskz_loadu_epi8 gk_mm512_maskz_loadu_epi8
#define _mm512_maskz_loadu_epi16 gk_mm512_maskz_loadu_epi16
#define _mm512_mask_loadu_ps gk_mm512_mask_loadu_ps
#define _mm512_mask_loadu_pd gk_mm512_mask_loadu_pd
#define _mm512_mask_loadu_epi8 gk_mm512_mask_loadu_epi8
#define _mm512_mask_loadu_epi16 gk_mm512_mask_loadu_epi16
#define _mm512_mask_loadu_epi32 gk_mm512_mask_loadu_epi32
#define _mm512_mask_loadu_epi64 gk_mm512_mask_loadu_epi64
#define _mm512_mask_storeu_ps gk_mm512_mask_storeu_ps
#define _mm512_mask_storeu_pd gk_mm512_mask_storeu_pd
#define _mm512_mask_storeu_epi8 gk_mm512_mask_storeu_epi8
#define _mm512_mask_storeu_epi16 gk_mm512_mask_storeu_epi16
#define _mm512_mask_storeu_epi32 gk_mm512_mask_storeu_epi32
#define _mm512_mask_storeu_epi64 gk_mm512_mask_storeu_epi64

// Integer comparisons into a mask, by _MM_CMPINT_*: EQ 0, LT 1, LE 2, FALSE 3, NE 4, NLT 5, NLE 6, TRUE 7.
template <typename T> static inline bool gk_compare(T a, T b, int predicate) {
  switch (predicate & 7) {
    case 0: return a == b;
    case 1: return a < b;
    case 2: return a <= b;
    case 3: return false;
    case 4: return a != b;
    case 5: return !(a < b);
    case 6: return !(a <= b);
  }
  return true;
}
#define GK_COMPARE_INTO_MASK(suffix, field, n, mask_t)                                               \
  static inline mask_t gk_mm512_cmp_##suffix##_mask(simde__m512i a, simde__m512i b, int predicate) { \
    const simde__m512i_private x = simde__m512i_to_private(a), y = simde__m512i_to_private(b);       \
    mask_t k = 0;                                                                                    \
    for (int i = 0; i < n; ++i)                                                                      \
      if (gk_compare(x.field[i], y.field[i], predicate)) k |= mask_t(1) << i;                        \
    return k;                                                                                        \
  }
GK_COMPARE_INTO_MASK(epi8, i8, 64, simde__mmask64)
GK_COMPARE_INTO_MASK(epu8, u8, 64, simde__mmask64)
GK_COMPARE_INTO_MASK(epi16, i16, 32, simde__mmask32)
GK_COMPARE_INTO_MASK(epi32, i32, 16, simde__mmask16)
GK_COMPARE_INTO_MASK(epu32, u32, 16, simde__mmask16)
GK_COMPARE_INTO_MASK(epi64, i64, 8, simde__mmask8)
#define _mm512_cmp_epi8_mask gk_mm512_cmp_epi8_mask
#define _mm512_cmp_epu8_mask gk_mm512_cmp_epu8_mask
#define _mm512_cmp_epi16_mask gk_mm512_cmp_epi16_mask
#define _mm512_cmp_epi32_mask gk_mm512_cmp_epi32_mask
#define _mm512_cmp_epi64_mask gk_mm512_cmp_epi64_mask
#define _mm512_cmpeq_epi16_mask(a, b) gk_mm512_cmp_epi16_mask(a, b, 0)
#define _mm512_cmplt_epi16_mask(a, b) gk_mm512_cmp_epi16_mask(a, b, 1)
#define _mm512_cmpgt_epi16_mask(a, b) gk_mm512_cmp_epi16_mask(a, b, 6)
#define _mm512_cmpneq_epi16_mask(a, b) gk_mm512_cmp_epi16_mask(a, b, 4)
#define _mm512_cmplt_epi32_mask(a, b) gk_mm512_cmp_epi32_mask(a, b, 1)
#define _mm512_cmpneq_epi32_mask(a, b) gk_mm512_cmp_epi32_mask(a, b, 4)
#define _mm512_cmpgt_epu32_mask(a, b) gk_mm512_cmp_epu32_mask(a, b, 6)
#define _mm512_cmplt_epu32_mask(a, b) gk_mm512_cmp_epu32_mask(a, b, 1)

// ---- SLEEF: its AVX-512 functions in libtorch would run AVX-512 instructions. These compute each lane
// with libm instead (within an ulp, as SLEEF's _u10 functions are, though not to the same bits), under
// the names sleef.h declares, renamed so that no call reaches libtorch's.
#define Sleef_expf16_u10 gk_sleef_expf16_u10
#define Sleef_expm1f16_u10 gk_sleef_expm1f16_u10
#define Sleef_log1pf16_u10 gk_sleef_log1pf16_u10
#define Sleef_tanhf16_u10 gk_sleef_tanhf16_u10
#define Sleef_expd8_u10 gk_sleef_expd8_u10
#define Sleef_expm1d8_u10 gk_sleef_expm1d8_u10
#define Sleef_log1pd8_u10 gk_sleef_log1pd8_u10
#define Sleef_tanhd8_u10 gk_sleef_tanhd8_u10

// What -mavx512f -mavx512bw -mavx512vl -mavx512dq would define: sleef.h and ATen's headers read them.
// After SIMDe, which would otherwise take AVX-512 for native.
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#include <sleef.h>

// Weak: each kernel's build defines them, one copy is kept.
#define GK_LANEWISE(name, vec, field, n, function)                         \
  extern "C" __attribute__((weak, visibility("hidden"))) vec name(vec a) { \
    vec##_private r = vec##_to_private(a);                                 \
    for (int i = 0; i < n; ++i) r.field[i] = function(r.field[i]);         \
    return vec##_from_private(r);                                          \
  }
GK_LANEWISE(gk_sleef_expf16_u10, simde__m512, f32, 16, std::exp)
GK_LANEWISE(gk_sleef_expm1f16_u10, simde__m512, f32, 16, std::expm1)
GK_LANEWISE(gk_sleef_log1pf16_u10, simde__m512, f32, 16, std::log1p)
GK_LANEWISE(gk_sleef_tanhf16_u10, simde__m512, f32, 16, std::tanh)
GK_LANEWISE(gk_sleef_expd8_u10, simde__m512d, f64, 8, std::exp)
GK_LANEWISE(gk_sleef_expm1d8_u10, simde__m512d, f64, 8, std::expm1)
GK_LANEWISE(gk_sleef_log1pd8_u10, simde__m512d, f64, 8, std::log1p)
GK_LANEWISE(gk_sleef_tanhd8_u10, simde__m512d, f64, 8, std::tanh)

// ATen's AVX512 vectors (CPU_CAPABILITY_AVX512) in the AVX2 slot's namespace (CPU_CAPABILITY): the
// names of libtorch's AVX2 Vectorized, hence the build's hidden visibility.
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX512
