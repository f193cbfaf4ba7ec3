/* runtime/simd_conv_avx512_copied.c — the direct convolution from copies (runtime/simd_conv_body.h)
 * on AVX-512 vectors: 16 pixels × 8 output channels a vector row (24 accumulators of the 32
 * registers), a range's last partial vector masked on the output. The same bits as the in-place
 * kernel of simd_conv_avx512.c; backend_cpu.c runs this one where the copies pay (3×3 convs over
 * large maps). x86-64 only (elsewhere a definition for the linker that no CPU reaches). Any thread
 * (no state). */
#include "runtime/simd.h"

#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
#include <immintrin.h>

#define CONV_FN vs_rt_conv_copied_avx512
#define V __m512
#define VW 16
#define COT 8
#define FOR_CO(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define FOR_CO_AT(X, i) X(0, i) X(1, i) X(2, i) X(3, i) X(4, i) X(5, i) X(6, i) X(7, i)
#define VMASK __mmask16
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_loadu_ps(p)
#define VBCAST(p) _mm512_set1_ps(*(p))
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VSET1(f) _mm512_set1_ps(f)
#define VMASK_N(n) ((n) >= 16 ? (__mmask16)0xFFFF : (n) <= 0 ? (__mmask16)0 : (__mmask16)((1u << (n)) - 1))
#define VLOADY(m, p) _mm512_maskz_loadu_ps(m, p)
#define VSTOREY(p, m, v) _mm512_mask_storeu_ps(p, m, v)
#include "runtime/simd_conv_body.h"
#else
#include <stdlib.h>

void vs_rt_conv_copied_avx512(float *y, const float *x, const float *w, const float *bias, int cin,
                              int H, int W, int cout, int k, int p0, int p1, const int *kend,
                              int nblk, float *scratch)
{
    (void)y, (void)x, (void)w, (void)bias, (void)cin, (void)H, (void)W, (void)cout, (void)k;
    (void)p0, (void)p1, (void)kend, (void)nblk, (void)scratch;
    abort();
}
#endif
