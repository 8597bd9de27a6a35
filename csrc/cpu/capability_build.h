// The first include of every per-capability source that setup.py generates: it defines one of
// GAN_KERNELS_BUILD_DEFAULT, _AVX2, _AVX512, then includes this and a csrc/cpu/<op>_kernel.h.
// Here it sets what ATen's build sets for that capability: the instruction set (as a target pragma,
// since setuptools gives every source the same flags), the macros -m<isa> would define (the pragma
// enables the instructions but defines none of them, and sleef.h declares its 256- and 512-bit
// functions only under them), and CPU_CAPABILITY / CPU_CAPABILITY_<name>, which select ATen's
// Vectorized specialisations and name the namespace the kernel's entry point lives in.
// Where the build cannot be made (cpu/capability.h), CPU_CAPABILITY stays undefined and the
// source compiles to nothing.
#pragma once

#include "cpu/capability.h"

#if defined(GAN_KERNELS_BUILD_DEFAULT)
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#elif GAN_KERNELS_CPU_VECTOR_BUILDS && defined(GAN_KERNELS_BUILD_AVX2)
#pragma GCC target("avx2,fma,f16c")
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#elif GAN_KERNELS_CPU_VECTOR_BUILDS && defined(GAN_KERNELS_BUILD_AVX512)
// ATen's AVX512 capability: AVX-512 F, BW, VL, DQ and FMA (F16C comes with every such CPU).
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
// GCC 12's avx512fintrin.h starts _mm512_undefined_* from a deliberately uninitialised variable,
// which -Wall reports wherever Vectorized or c10::Half's scalar conversion uses one.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
