/* runtime/simd_conv_avx2.c — the decoder's convolution as a direct AVX2 + FMA kernel for CPUs
 * without AVX-512: the arithmetic of runtime/simd_conv_avx512.c, so the same bits lane for lane
 * (runtime/simd.h states the order; backend_cpu.c says when each kernel runs).
 *
 * Design: a band of output rows at a time. Its input rows and the k/2 rows around them are first
 * copied into scratch once per column tap kx, shifted by kx, with the zero padding written out
 * (layout at copy_stride). That is a third of an im2col for a 3×3 conv, and it is what makes the
 * kernel fast on the decoder's maps:
 * - read in place, the planes are powers of two apart (64 K floats at 256²), so a tile's taps put
 *   every channel's row in the same L1 and L2 sets; the copies are a line more than a multiple of
 *   a row apart;
 * - every load of a tap is then as aligned as the scratch (W is a multiple of 8), where reading
 *   taps kx = 0 and 2 in place splits half the loads across cache lines;
 * - and no load needs a mask.
 * (bench/RESULTS.md, "A direct convolution for AVX2 CPUs", one thread of a Zen 3 at 32→32 over
 * 256²: 34 GFLOP/s in place with masks, 44–47 from one padded copy, 49–68 from the shifted
 * copies.)
 *
 * A tile is 3 vectors of 8 consecutive output pixels × 4 output channels: 12 accumulators, 3
 * inputs and one broadcast weight fill the 16 registers. Each tap t of the im2col order is one
 * load per vector and one FMA per accumulator, so every output is the chain
 * acc = fma(x_t, w_t, acc) from +0 over each K block, added to the output (bias first) once per
 * block. A padding tap is an FMA on a zero like any other, as in the AVX-512 kernel (whose masked
 * lanes load +0) and the sgemm's im2col: the same operations, so the same bits. x86-64 only
 * (elsewhere definitions for the linker that no CPU reaches). Any thread (no state). */
#if defined(__x86_64__)
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "runtime/simd.h"

#define XV 3   /* vectors of 8 pixels per tile */
#define COT 4  /* output channels per tile */

typedef struct {
    float *y;
    const float *xp, *w, *bias;
    int K, kk, HW;
    size_t plane;    /* floats from one input channel's copies to the next's */
    const int *kend;
    int nblk;
    int off[9];      /* tap (ky, kx) → its row in copy kx of the channel */
} cctx;

/* named accumulators, not an array: GCC keeps named vectors in registers but spills an array of
 * them around every tap */
#define FOR_CO(X) X(0) X(1) X(2) X(3)
#define DECL(co) \
    __m256 a##co##0 = _mm256_setzero_ps(), a##co##1 = a##co##0, a##co##2 = a##co##0; \
    const float *w##co = c->w + (size_t)(co0 + (co < CO ? co : 0)) * c->K;
#define ZERO(co) if (co < CO) { a##co##0 = a##co##1 = a##co##2 = _mm256_setzero_ps(); }
#define FMA(co) FMA_AT(co, 0)
#define FMA_AT(co, i) if (co < CO) { __m256 wv = _mm256_broadcast_ss(w##co + t + (i)); \
        a##co##0 = _mm256_fmadd_ps(in0, wv, a##co##0); \
        if (NV > 1) a##co##1 = _mm256_fmadd_ps(in1, wv, a##co##1); \
        if (NV > 2) a##co##2 = _mm256_fmadd_ps(in2, wv, a##co##2); }
/* tap i of a whole channel */
#define TAP(i) { const float *s = plane + c->off[i] + src; \
        __m256 in0 = _mm256_loadu_ps(s); \
        __m256 in1 = NV > 1 ? _mm256_loadu_ps(s + 8) : in0; \
        __m256 in2 = NV > 2 ? _mm256_loadu_ps(s + 16) : in0; \
        FOR_CO_AT(FMA_AT, i) }
#define FOR_CO_AT(X, i) X(0, i) X(1, i) X(2, i) X(3, i)
#define STORE1(co, v) { float *yv = c->y + (size_t)(co0 + co) * c->HW + p + 8 * v; \
        __m256 prev = blk == 0 ? _mm256_set1_ps(c->bias ? c->bias[co0 + co] : 0.0f) \
                               : _mm256_loadu_ps(yv); \
        _mm256_storeu_ps(yv, _mm256_add_ps(prev, a##co##v)); }
#define STORE(co) if (co < CO) { STORE1(co, 0) if (NV > 1) STORE1(co, 1) if (NV > 2) STORE1(co, 2) }

/* output pixels p + [0, 8·NV) (src: the first one's place in the band) × channels co0 + [0, CO) */
static inline __attribute__((always_inline)) void tile(const cctx *c, int co0, const int CO,
                                                      const int NV, int p, ptrdiff_t src)
{
    FOR_CO(DECL)
    int t = 0, tap = 0;
    const float *plane = c->xp;
    for (int blk = 0; blk < c->nblk; blk++) {
        FOR_CO(ZERO)
        int ke = c->kend[blk];
        if (c->kk == 9) /* whole 3×3 channels unrolled */
            for (; tap == 0 && t + 9 <= ke; t += 9, plane += c->plane) {
                TAP(0) TAP(1) TAP(2) TAP(3) TAP(4) TAP(5) TAP(6) TAP(7) TAP(8)
            }
        for (; t < ke; t++) {
            const float *s = plane + c->off[tap] + src;
            __m256 in0 = _mm256_loadu_ps(s);
            __m256 in1 = NV > 1 ? _mm256_loadu_ps(s + 8) : in0;
            __m256 in2 = NV > 2 ? _mm256_loadu_ps(s + 16) : in0;
            FOR_CO(FMA)
            if (++tap == c->kk) {
                tap = 0;
                plane += c->plane;
            }
        }
        FOR_CO(STORE)
    }
}

/* one specialisation per (vectors, channels): a band's last, shorter tile, and cout mod 4 */
#define TAILS(NV) \
    static void tail##NV(const cctx *c, int co0, int CO, int p, ptrdiff_t src) \
    { \
        switch (CO) { \
        case 1: tile(c, co0, 1, NV, p, src); break; \
        case 2: tile(c, co0, 2, NV, p, src); break; \
        case 3: tile(c, co0, 3, NV, p, src); break; \
        default: tile(c, co0, 4, NV, p, src); break; \
        } \
    }
TAILS(1)
TAILS(2)
TAILS(3)

/* Scratch layout: per input channel, per column tap kx, the band's rows and the pad rows around
 * them, each row the W values that output column xx reads at tap kx (zero where that is padding):
 * a tap (ky, kx) of the im2col order is then a row offset into copy kx, and every vector load is
 * as aligned as the scratch. Copies and channels are a cache line more than a multiple of the row
 * apart, so they never share L1 sets at power-of-two strides. */
static size_t copy_stride(int W, int k, int rows)
{
    return (size_t)(rows + 2 * (k / 2)) * W + 16;
}

size_t vs_rt_conv_direct_avx2_scratch(int cin, int W, int k, int rows)
{
    return (size_t)cin * k * copy_stride(W, k, rows) + 8; /* + 8: room to align to 32 bytes */
}

void vs_rt_conv_direct_avx2(float *y, const float *x, const float *w, const float *bias, int cin,
                            int H, int W, int cout, int k, int y0, int y1, const int *kend,
                            int nblk, float *scratch)
{
    int pad = k / 2, rows = y1 - y0 + 2 * pad;
    size_t cs = copy_stride(W, k, y1 - y0);
    float *xs = (float *)(((uintptr_t)scratch + 31) & ~(uintptr_t)31);
    for (int ci = 0; ci < cin; ci++)
        for (int kx = 0; kx < k; kx++) {
            float *d = xs + ((size_t)ci * k + kx) * cs;
            int dx = kx - pad, xb = dx < 0 ? -dx : 0, xe = dx > 0 ? W - dx : W;
            for (int r = 0; r < rows; r++) {
                int sy = y0 - pad + r;
                float *dr = d + (size_t)r * W;
                if (sy < 0 || sy >= H) {
                    memset(dr, 0, (size_t)W * sizeof *dr);
                    continue;
                }
                for (int i = 0; i < xb; i++)
                    dr[i] = 0.0f;
                memcpy(dr + xb, x + ((size_t)ci * H + sy) * W + xb + dx, (size_t)(xe - xb) * sizeof *dr);
                for (int i = xe; i < W; i++)
                    dr[i] = 0.0f;
            }
        }
    cctx c = {y, xs, w, bias, cin * k * k, k * k, H * W, (size_t)k * cs, kend, nblk, {0}};
    for (int ky = 0; ky < k; ky++)
        for (int kx = 0; kx < k; kx++)
            c.off[ky * k + kx] = (int)((size_t)kx * cs) + ky * W;
    for (int p = y0 * W; p < y1 * W; p += 8 * XV) {
        ptrdiff_t src = p - y0 * W;
        int nv = (y1 * W - p) / 8, co0 = 0;
        if (nv >= XV)
            for (; co0 + COT <= cout; co0 += COT)
                tile(&c, co0, COT, XV, p, src);
        for (; co0 < cout; co0 += COT) {
            int n = cout - co0 < COT ? cout - co0 : COT;
            if (nv == 1)
                tail1(&c, co0, n, p, src);
            else if (nv == 2)
                tail2(&c, co0, n, p, src);
            else
                tail3(&c, co0, n, p, src);
        }
    }
}
#else
#include <stdlib.h>

#include "runtime/simd.h"

/* no CPU off x86-64 runs AVX2 (vs_rt_simd_by_name says so), so the CPU backend never calls these */
size_t vs_rt_conv_direct_avx2_scratch(int cin, int W, int k, int rows)
{
    (void)cin, (void)W, (void)k, (void)rows;
    abort();
}

void vs_rt_conv_direct_avx2(float *y, const float *x, const float *w, const float *bias, int cin,
                            int H, int W, int cout, int k, int y0, int y1, const int *kend,
                            int nblk, float *scratch)
{
    (void)y, (void)x, (void)w, (void)bias, (void)cin, (void)H, (void)W, (void)cout, (void)k;
    (void)y0, (void)y1, (void)kend, (void)nblk, (void)scratch;
    abort();
}
#endif
