/* runtime/simd_avx2.c — runtime/simd_body.h for AVX2 + FMA (runtime/simd.h: chosen at run time,
 * bit-identical to the scalar path). x86-64 only; empty elsewhere. */
#if defined(__x86_64__)
#pragma GCC target("avx2,fma")
#define SIMD_TABLE vs_rt_simd_avx2
#define SIMD_NAME "avx2"
#include "runtime/simd_body.h"
#else
typedef int vs_rt_simd_avx2_unused; /* ISO C wants a declaration in every file */
#endif
