/* runtime/simd_conv_avx512.c — the decoder's convolution as a direct AVX-512 kernel that adds
 * every output's products in the order OpenBLAS's sgemm does (runtime/simd.h says when it is
 * used and how that order is established).
 *
 * Design: no im2col matrix. A tile is 3 vectors of 16 consecutive output pixels (a plane is
 * flattened, so a vector may span rows) × 8 output channels: 24 accumulators (a range's last
 * tile takes only the vectors it needs). Each tap t of the im2col order (t = (ci·k + ky)·k + kx)
 * is one masked load per vector (lanes whose source pixel lies in the zero padding, or past the
 * range, read 0; masked lanes are never accessed) and one FMA per accumulator, so every
 * output is the chain acc = fma(x_t, w_t, acc) from +0 over each K block, added to the output
 * (bias first) once per block — OpenBLAS's SKYLAKEX kernel's arithmetic exactly. A padding tap
 * is an FMA on a zero like any other (masked lanes load +0), as the sgemm's im2col holds zeros
 * there: the same operations, so the same bits. x86-64 only (elsewhere a definition for the
 * linker that no CPU reaches). Any thread (no state). On large maps the backend runs the kernel
 * from copies instead (simd_conv_avx512_copied.c: the same bits, no cache-set collisions). */
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
#include <immintrin.h>
#include <stddef.h>

#include "runtime/simd.h"

#define XV 3   /* vectors of 16 pixels per tile */
#define COT 8  /* output channels per tile */

typedef struct {
    float *y;
    const float *x, *w, *bias;
    int K, kk, HW;
    const int *kend;
    int nblk;
    int off[9];      /* tap → source offset from the output pixel: dy·W + dx */
} cctx;

/* The accumulators are named variables, not an array: GCC keeps 24 named vectors in registers
 * but spills an array of them to the stack around every tap. */
#define FOR_CO(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define DECL(co) \
    __m512 a##co##0 = _mm512_setzero_ps(), a##co##1 = a##co##0, a##co##2 = a##co##0; \
    const float *w##co = c->w + (size_t)(co0 + (co < CO ? co : 0)) * c->K;
#define ZERO(co) if (co < CO) { a##co##0 = a##co##1 = a##co##2 = _mm512_setzero_ps(); }
#define FMA(co) if (co < CO) { __m512 wv = _mm512_set1_ps(w##co[t]); \
        a##co##0 = _mm512_fmadd_ps(in0, wv, a##co##0); \
        if (NV > 1) a##co##1 = _mm512_fmadd_ps(in1, wv, a##co##1); \
        if (NV > 2) a##co##2 = _mm512_fmadd_ps(in2, wv, a##co##2); }
#define STORE1(co, v) { float *yv = c->y + (size_t)(co0 + co) * c->HW + p + 16 * v; \
        __m512 prev = blk == 0 ? _mm512_set1_ps(c->bias ? c->bias[co0 + co] : 0.0f) \
                               : _mm512_maskz_loadu_ps(sm[v], yv); \
        _mm512_mask_storeu_ps(yv, sm[v], _mm512_add_ps(prev, a##co##v)); }
#define STORE(co) if (co < CO) { STORE1(co, 0) if (NV > 1) STORE1(co, 1) if (NV > 2) STORE1(co, 2) }

static inline __attribute__((always_inline)) void tile(const cctx *c, int co0, const int CO,
                                                      const int NV, int p, const __mmask16 *mk,
                                                      const __mmask16 *sm)
{
    FOR_CO(DECL)
    int t = 0, tap = 0;
    const float *plane = c->x + p;
    for (int blk = 0; blk < c->nblk; blk++) {
        FOR_CO(ZERO)
        for (int ke = c->kend[blk]; t < ke; t++) {
            const float *src = plane + c->off[tap];
            const __mmask16 *m = mk + tap * XV;
            __m512 in0 = _mm512_maskz_loadu_ps(m[0], src);
            __m512 in1 = NV > 1 ? _mm512_maskz_loadu_ps(m[1], src + 16) : in0;
            __m512 in2 = NV > 2 ? _mm512_maskz_loadu_ps(m[2], src + 32) : in0;
            FOR_CO(FMA)
            if (++tap == c->kk) {
                tap = 0;
                plane += c->HW;
            }
        }
        FOR_CO(STORE)
    }
}

/* NV vectors (a range's last, shorter tile) or the last output channels (cout mod 8): one
 * specialisation per count */
#define TAILS(NV) \
    static void tail##NV(const cctx *c, int co0, int CO, int p, const __mmask16 *mk, \
                         const __mmask16 *sm) \
    { \
        switch (CO) { \
        case 1: tile(c, co0, 1, NV, p, mk, sm); break; \
        case 2: tile(c, co0, 2, NV, p, mk, sm); break; \
        case 3: tile(c, co0, 3, NV, p, mk, sm); break; \
        case 4: tile(c, co0, 4, NV, p, mk, sm); break; \
        case 5: tile(c, co0, 5, NV, p, mk, sm); break; \
        case 6: tile(c, co0, 6, NV, p, mk, sm); break; \
        case 7: tile(c, co0, 7, NV, p, mk, sm); break; \
        default: tile(c, co0, 8, NV, p, mk, sm); break; \
        } \
    }
TAILS(1)
TAILS(2)
TAILS(3)

void vs_rt_conv_direct_avx512(float *y, const float *x, const float *w, const float *bias, int cin,
                              int H, int W, int cout, int k, int p0, int p1, const int *kend,
                              int nblk)
{
    int pad = k / 2;
    cctx c = {y, x, w, bias, cin * k * k, k * k, H * W, kend, nblk, {0}};
    for (int ky = 0; ky < k; ky++)
        for (int kx = 0; kx < k; kx++)
            c.off[ky * k + kx] = (ky - pad) * W + (kx - pad);
    /* a lane's tap is inside the map when its row and its column are: one mask per (vector, ky)
     * and per (vector, kx), ANDed per tap, so a tile's masks cost 48 lanes × 2k tests */
    int yy = p0 / W, xx = p0 % W; /* the next lane's pixel */
    for (int p = p0; p < p1; p += 16 * XV) {
        __mmask16 mk[9 * XV], sm[XV], rowm[3 * XV], colm[3 * XV];
        for (int i = 0; i < 3 * XV; i++)
            rowm[i] = colm[i] = 0;
        for (int v = 0; v < XV; v++) {
            sm[v] = 0;
            for (int l = 0; l < 16 && p + 16 * v + l < p1; l++) {
                __mmask16 bit = (__mmask16)(1u << l);
                sm[v] |= bit;
                for (int d = 0; d < k; d++) {
                    int sy = yy + d - pad, sx = xx + d - pad;
                    if (sy >= 0 && sy < H)
                        rowm[d * XV + v] |= bit;
                    if (sx >= 0 && sx < W)
                        colm[d * XV + v] |= bit;
                }
                if (++xx == W) {
                    xx = 0;
                    yy++;
                }
            }
        }
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++)
                for (int v = 0; v < XV; v++)
                    mk[(ky * k + kx) * XV + v] = rowm[ky * XV + v] & colm[kx * XV + v];
        int nv = (p1 - p + 15) / 16, co0 = 0;
        if (nv >= XV)
            for (; co0 + COT <= cout; co0 += COT)
                tile(&c, co0, COT, XV, p, mk, sm);
        for (; co0 < cout; co0 += COT) {
            int n = cout - co0 < COT ? cout - co0 : COT;
            if (nv == 1)
                tail1(&c, co0, n, p, mk, sm);
            else if (nv == 2)
                tail2(&c, co0, n, p, mk, sm);
            else
                tail3(&c, co0, n, p, mk, sm);
        }
    }
}
#else
#include <stdlib.h>

#include "runtime/simd.h"

/* no CPU off x86-64 runs AVX-512 (vs_rt_simd_by_name says so), so the CPU backend never calls this */
void vs_rt_conv_direct_avx512(float *y, const float *x, const float *w, const float *bias, int cin,
                              int H, int W, int cout, int k, int p0, int p1, const int *kend,
                              int nblk)
{
    (void)y, (void)x, (void)w, (void)bias, (void)cin, (void)H, (void)W, (void)cout, (void)k;
    (void)p0, (void)p1, (void)kend, (void)nblk;
    abort();
}
#endif
