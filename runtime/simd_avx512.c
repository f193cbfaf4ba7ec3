/* runtime/simd_avx512.c — runtime/simd_body.h for AVX-512 (F, BW, DQ, VL: Skylake-SP and later,
 * Zen 4), 512-bit vectors (runtime/simd.h: chosen at run time, bit-identical to the scalar path).
 * x86-64 only; empty elsewhere. */
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")
#define SIMD_TABLE vs_rt_simd_avx512
#define SIMD_NAME "avx512"
#include "runtime/simd_body.h"
#else
typedef int vs_rt_simd_avx512_unused; /* ISO C wants a declaration in every file */
#endif
