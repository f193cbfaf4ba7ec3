/* runtime/simd_conv_avx2.c — the direct convolution for CPUs without AVX-512: the kernel of
 * runtime/simd_conv_body.h on AVX2 + FMA vectors, 8 pixels × 4 output channels a vector row
 * (12 accumulators, 3 inputs and one broadcast weight fill the 16 registers). Its bits are the
 * AVX-512 kernels' lane for lane (runtime/simd.h states the order). It takes whole vectors only:
 * the callers' ranges are multiples of 8 pixels, so no mask is needed. x86-64 only (elsewhere
 * definitions for the linker that no CPU reaches). Any thread (no state). */
#include "runtime/simd.h"

#if defined(__x86_64__)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#define CONV_FN vs_rt_conv_copied_avx2
#define V __m256
#define VW 8
#define COT 4
#define FOR_CO(X) X(0) X(1) X(2) X(3)
#define FOR_CO_AT(X, i) X(0, i) X(1, i) X(2, i) X(3, i)
#define VMASK int /* unused: every vector is whole */
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_loadu_ps(p)
#define VBCAST(p) _mm256_broadcast_ss(p)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VSET1(f) _mm256_set1_ps(f)
#define VMASK_N(n) ((void)(n), 0)
#define VLOADY(m, p) ((void)(m), _mm256_loadu_ps(p))
#define VSTOREY(p, m, v) ((void)(m), _mm256_storeu_ps(p, v))
#define CONV_SCRATCH_FN vs_rt_conv_copied_scratch
#include "runtime/simd_conv_body.h"
#else
#include <stdlib.h>

/* no CPU off x86-64 runs AVX2 (vs_rt_simd_by_name says so), so the CPU backend never calls these */
size_t vs_rt_conv_copied_scratch(int cin, int W, int k, int rows)
{
    (void)cin, (void)W, (void)k, (void)rows;
    abort();
}

void vs_rt_conv_copied_avx2(float *y, const float *x, const float *w, const float *bias, int cin,
                            int H, int W, int cout, int k, int p0, int p1, const int *kend,
                            int nblk, float *scratch)
{
    (void)y, (void)x, (void)w, (void)bias, (void)cin, (void)H, (void)W, (void)cout, (void)k;
    (void)p0, (void)p1, (void)kend, (void)nblk, (void)scratch;
    abort();
}
#endif
