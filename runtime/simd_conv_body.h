/* runtime/simd_conv_body.h — the direct convolution kernel, written once for both vector widths:
 * simd_conv_avx2.c and simd_conv_avx512.c include it after defining the vector type and its
 * operations (below). runtime/simd.h states the arithmetic; backend_cpu.c says when it runs.
 *
 * Design: a range of output pixels [p0, p1) at a time (a band of rows, or any range of a plane).
 * The input rows it reads, k/2 rows on each side included, are first copied into scratch once
 * per column tap kx, shifted by kx, with the zero padding written out (layout at copy_stride).
 * That is a third of an im2col for a 3×3 conv, and it is what makes the kernel fast on the
 * decoder's maps:
 * - read in place, the planes are powers of two apart (64 K floats at 256²), so a tile's taps put
 *   every channel's row in the same L1 and L2 sets; the copies are a line more than a multiple of
 *   a row apart;
 * - every load of a tap is then as aligned as the scratch when W is a multiple of the vector,
 *   where reading taps kx = 0 and 2 in place splits most loads across cache lines;
 * - and no load needs a mask (a last, partial vector reads the copy's slack; its lanes past p1
 *   are never stored).
 * (bench/RESULTS.md: "A direct convolution for AVX2 CPUs" for the measurements on a Zen 3, "The
 * direct convolution from copies on AVX-512" for a Zen 4.)
 *
 * A tile is XV = 3 vectors of VW consecutive output pixels (a plane is flattened, so a vector may
 * span rows) × COT output channels: 3·COT accumulators, 3 inputs and one broadcast weight fit the
 * register file (16 for AVX2's COT 4, 32 for AVX-512's COT 8). Each tap t of the im2col order
 * (t = (ci·k + ky)·k + kx) is one load per vector and one FMA per accumulator, so every output is
 * the chain acc = fma(x_t, w_t, acc) from +0 over each K block, added to the output (bias first)
 * once per block. A padding tap is an FMA on a zero like any other, as the sgemm's im2col holds
 * zeros there: the same operations, so the same bits.
 *
 * The includer defines: CONV_FN (the function's name), V (the vector type), VW (its lanes), COT,
 * FOR_CO(X) (X(0) … X(COT − 1)), FOR_CO_AT(X, i) (the same with a second argument), VMASK (a lane
 * mask type), VZERO(), VLOAD(p) (unaligned), VBCAST(p) (*p in every lane), VFMA(a, b, c) (a·b + c
 * rounded once), VADD(a, b), VSET1(f), VMASK_N(n) (the first n lanes), VLOADY(m, p) and
 * VSTOREY(p, m, v) (lanes in m only: the output's read and write); and CONV_SCRATCH_FN in one
 * includer (the scratch size, which both widths share). */

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define XV 3 /* vectors per tile */

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
#define DECL(co) \
    V a##co##0 = VZERO(), a##co##1 = a##co##0, a##co##2 = a##co##0; \
    const float *w##co = c->w + (size_t)(co0 + (co < CO ? co : 0)) * c->K;
#define ZERO(co) if (co < CO) { a##co##0 = a##co##1 = a##co##2 = VZERO(); }
#define FMA(co) FMA_AT(co, 0)
#define FMA_AT(co, i) if (co < CO) { V wv = VBCAST(w##co + t + (i)); \
        a##co##0 = VFMA(in0, wv, a##co##0); \
        if (NV > 1) a##co##1 = VFMA(in1, wv, a##co##1); \
        if (NV > 2) a##co##2 = VFMA(in2, wv, a##co##2); }
/* tap i of a whole channel */
#define TAP(i) { const float *s = plane + c->off[i] + src; \
        V in0 = VLOAD(s); \
        V in1 = NV > 1 ? VLOAD(s + VW) : in0; \
        V in2 = NV > 2 ? VLOAD(s + 2 * VW) : in0; \
        FOR_CO_AT(FMA_AT, i) }
#define STORE1(co, v) { float *yv = c->y + (size_t)(co0 + co) * c->HW + p + VW * v; \
        V prev = blk == 0 ? VSET1(c->bias ? c->bias[co0 + co] : 0.0f) : VLOADY(sm[v], yv); \
        VSTOREY(yv, sm[v], VADD(prev, a##co##v)); }
#define STORE(co) if (co < CO) { STORE1(co, 0) if (NV > 1) STORE1(co, 1) if (NV > 2) STORE1(co, 2) }

/* output pixels p + [0, VW·NV) (src: the first one's place in the copies) × channels co0 + [0, CO);
 * sm: the lanes of each vector that are outputs */
static inline __attribute__((always_inline)) void tile(const cctx *c, int co0, const int CO,
                                                      const int NV, int p, ptrdiff_t src,
                                                      const VMASK *sm)
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
            V in0 = VLOAD(s);
            V in1 = NV > 1 ? VLOAD(s + VW) : in0;
            V in2 = NV > 2 ? VLOAD(s + 2 * VW) : in0;
            FOR_CO(FMA)
            if (++tap == c->kk) {
                tap = 0;
                plane += c->plane;
            }
        }
        FOR_CO(STORE)
    }
}

/* one specialisation per (vectors, channels): a range's last, shorter tile, and cout mod COT */
#define TCASE(co) case co + 1: tile(c, co0, co + 1, NV, p, src, sm); break;
static inline __attribute__((always_inline)) void tails(const cctx *c, int co0, int CO,
                                                       const int NV, int p, ptrdiff_t src,
                                                       const VMASK *sm)
{
    switch (CO) {
    FOR_CO(TCASE)
    default: break;
    }
}
#define TAILS(NV) \
    static void tail##NV(const cctx *c, int co0, int CO, int p, ptrdiff_t src, const VMASK *sm) \
    { \
        tails(c, co0, CO, NV, p, src, sm); \
    }
TAILS(1)
TAILS(2)
TAILS(3)

/* Scratch layout: per input channel, per column tap kx, the range's rows and the pad rows around
 * them, each row the W values that output column xx reads at tap kx (zero where that is padding):
 * a tap (ky, kx) of the im2col order is then a row offset into copy kx, and every vector load is
 * as aligned as the scratch when W is a multiple of VW. Copies and channels are 16 floats (a
 * cache line, and a partial vector's slack) more than a multiple of the row apart, so they never
 * share L1 sets at power-of-two strides. */
static size_t copy_stride(int W, int k, int rows)
{
    return (size_t)(rows + 2 * (k / 2)) * W + 16;
}

#ifdef CONV_SCRATCH_FN
size_t CONV_SCRATCH_FN(int cin, int W, int k, int rows)
{
    return (size_t)cin * k * copy_stride(W, k, rows) + 16; /* + 16: room to align to 64 bytes */
}
#endif

void CONV_FN(float *y, const float *x, const float *w, const float *bias, int cin, int H, int W,
             int cout, int k, int p0, int p1, const int *kend, int nblk, float *scratch)
{
    int pad = k / 2, y0 = p0 / W, y1 = (p1 + W - 1) / W, rows = y1 - y0 + 2 * pad;
    size_t cs = copy_stride(W, k, y1 - y0);
    float *xs = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
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
            memset(d + (size_t)rows * W, 0, 16 * sizeof *d); /* the slack a partial vector reads */
        }
    cctx c = {y, xs, w, bias, cin * k * k, k * k, H * W, (size_t)k * cs, kend, nblk, {0}};
    for (int ky = 0; ky < k; ky++)
        for (int kx = 0; kx < k; kx++)
            c.off[ky * k + kx] = (int)((size_t)kx * cs) + ky * W;
    for (int p = p0; p < p1; p += VW * XV) {
        ptrdiff_t src = p - (ptrdiff_t)y0 * W;
        int left = p1 - p, nv = (left + VW - 1) / VW, co0 = 0;
        VMASK sm[XV];
        for (int v = 0; v < XV; v++)
            sm[v] = VMASK_N(left - VW * v);
        if (nv >= XV)
            for (; co0 + COT <= cout; co0 += COT)
                tile(&c, co0, COT, XV, p, src, sm);
        for (; co0 < cout; co0 += COT) {
            int n = cout - co0 < COT ? cout - co0 : COT;
            if (nv == 1)
                tail1(&c, co0, n, p, src, sm);
            else if (nv == 2)
                tail2(&c, co0, n, p, src, sm);
            else
                tail3(&c, co0, n, p, src, sm);
        }
    }
}
