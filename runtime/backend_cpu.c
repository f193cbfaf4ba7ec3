/* runtime/backend_cpu.c — the CPU backend: FP32, OpenBLAS for GEMMs, a pthread pool for the rest.
 *
 * Design: OpenBLAS runs single-threaded and our pool splits every op (GEMMs by rows or columns,
 * convolutions by output bands, attention by (row, head, query block)), so one pool owns the cores
 * and nothing oversubscribes them. Each output element is computed in exactly one place with the
 * same arithmetic whatever the split, so results do not depend on the thread count. Scratch is
 * grow-only per worker, so steady-state steps do not allocate. Engine thread only.
 *
 * Subnormals are flushed to zero (FTZ/DAZ) on every thread that runs this backend's arithmetic:
 * vs_rt_backend_cpu_new sets it on the creating thread, the pool's workers on themselves
 * (runtime/fpenv.h: why, and why results do not change). On Intel cores the SiLU after GroupNorm
 * spent most of its time in subnormal assists before (bench/RESULTS.md "Denormals").
 *
 * The elementwise and normalisation loops call runtime/simd.h's table (SSE2, AVX2 or AVX-512,
 * chosen once; the same bits on every path). im2col is rows of memcpy, which glibc already
 * dispatches by CPU at load time.
 *
 * conv2d is im2col + sgemm per band of output rows, or a direct kernel with no im2col matrix
 * (runtime/simd.h; the decoder's 3×3 convs ran at about a third of sgemm's rate, half their time
 * spent copying the im2col matrix and packing it again inside sgemm). The direct kernels sum in
 * the order of OpenBLAS's SKYLAKEX sgemm (sgemm_kblocks), so pixels do not depend on the path:
 * - AVX-512 CPUs run that sgemm (runtime/blas.h pins it), and each conv shape is first run both
 *   ways on random inputs: only a bit-identical shape takes the direct path (conv_direct_ok),
 *   whatever the BLAS. Their kernels are AVX-512's (from copies of the input rows on large maps,
 *   in place elsewhere: conv_copies_pay), or the AVX2 one (the same bits) when
 *   VARSERVE_CPU_SIMD=avx2.
 * - AVX2 CPUs run OpenBLAS's Haswell or Zen sgemm, which splits a sum into two FMA chains in some
 *   micro-tiles and not in others, so no direct kernel could follow it; there every k 1 or 3 conv
 *   whose W is a multiple of 8 and whose K fits 64 blocks of 448 takes the AVX2 kernel unchecked.
 *   Its pixels are then an AVX-512 machine's wherever that machine's check passes for the shape
 *   (the decoder's shapes on the Xeons measured, bench/RESULTS.md): the same chain, lane for
 *   lane. The other shapes keep im2col + sgemm, in the Haswell or Zen order. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "runtime/backend.h"
#include "runtime/blas.h"
#include "runtime/fpenv.h"
#include "runtime/philox.h"
#include "runtime/sample.h"
#include "runtime/simd.h"
#include "runtime/threads.h"

void openblas_set_num_threads(int num_threads);

typedef struct {
    float *p;
    size_t cap; /* floats */
} scratch;

/* one conv2d shape's verdict on the direct kernel (conv_direct_ok) */
typedef struct {
    int cin, cout, k, H, W, direct;
} conv_verdict;

#define CONV_VERDICTS 128 /* shapes remembered; later ones are checked at every call */

typedef struct {
    vs_rt_backend base;
    vs_rt_tpool *tp;
    const vs_rt_simd *simd; /* the vector kernels (runtime/simd.h): immutable after init */
    int nw;
    scratch *ws; /* [nw] per-worker scratch */
    /* the direct conv kernel this CPU runs (runtime/simd.h): immutable after init */
    enum { CONV_SGEMM, CONV_AVX512, CONV_AVX2 } conv_direct_kind;
    int conv_check; /* the sgemm may sum in the kernels' order: check each shape (conv_direct_ok) */
    conv_verdict verdicts[CONV_VERDICTS]; /* engine only */
    int n_verdicts;
} cpu_backend;

static cpu_backend *cpu(vs_rt_backend *be) { return (cpu_backend *)be; }

/* Grows every worker's scratch to at least n floats. Returns 0 on success. */
static int ensure_scratch(cpu_backend *c, size_t n)
{
    for (int i = 0; i < c->nw; i++) {
        if (c->ws[i].cap >= n)
            continue;
        float *p = realloc(c->ws[i].p, n * sizeof(float));
        if (!p)
            return -1;
        c->ws[i].p = p;
        c->ws[i].cap = n;
    }
    return 0;
}

/* ---- memory ---------------------------------------------------------------------------------- */

static void cpu_destroy(vs_rt_backend *be)
{
    cpu_backend *c = cpu(be);
    vs_rt_tpool_free(c->tp);
    for (int i = 0; i < c->nw; i++)
        free(c->ws[i].p);
    free(c->ws);
    free(c);
}

static void *cpu_alloc(vs_rt_backend *be, size_t bytes)
{
    (void)be;
    size_t n = (bytes + 63) & ~(size_t)63;
    return aligned_alloc(64, n ? n : 64);
}

static void cpu_free(vs_rt_backend *be, void *p)
{
    (void)be;
    free(p);
}

static void cpu_copy(vs_rt_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes)
        memmove(dst, src, bytes);
}

static void cpu_copy_many(vs_rt_backend *be, const vs_rt_copy *list, int n)
{
    for (int i = 0; i < n; i++)
        cpu_copy(be, list[i].dst, list[i].src, list[i].bytes);
}

static void cpu_zero(vs_rt_backend *be, void *dst, size_t bytes)
{
    (void)be;
    memset(dst, 0, bytes);
}

static vs_status cpu_sync(vs_rt_backend *be, vs_err *err)
{
    (void)be;
    (void)err;
    return VS_OK;
}

static vs_status cpu_batch_begin(vs_rt_backend *be, vs_rt_batch *b, vs_err *err)
{
    (void)be;
    (void)err;
    b->dev = NULL;
    return VS_OK;
}

/* ---- dense ------------------------------------------------------------------------------------- */

typedef struct {
    float *y;
    const float *x, *w, *bias;
    int M, N, K, by_rows, blk;
    const vs_rt_simd *gelu; /* not NULL: gelu_tanh each block's outputs while they are in cache */
} linear_job;

/* One unit = one sgemm call over a fixed block of rows (or columns). The blocks depend only on
 * the shape, never on the thread count, so every element is computed by the same call shape. */
static void linear_task(void *p, size_t b, size_t e, int worker)
{
    (void)worker;
    linear_job *j = p;
    for (size_t u = b; u < e; u++) {
        if (j->by_rows) {
            int m0 = (int)u * j->blk, m1 = m0 + j->blk < j->M ? m0 + j->blk : j->M;
            float *y = j->y + (size_t)m0 * j->N;
            if (j->bias)
                for (int m = m0; m < m1; m++)
                    memcpy(j->y + (size_t)m * j->N, j->bias, (size_t)j->N * sizeof(float));
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m1 - m0, j->N, j->K, 1.0f,
                        j->x + (size_t)m0 * j->K, j->K, j->w, j->K, j->bias ? 1.0f : 0.0f, y, j->N);
            if (j->gelu)
                j->gelu->gelu_tanh(y, (size_t)(m1 - m0) * j->N);
        } else {
            int n0 = (int)u * j->blk, n1 = n0 + j->blk < j->N ? n0 + j->blk : j->N;
            if (j->bias)
                for (int m = 0; m < j->M; m++)
                    memcpy(j->y + (size_t)m * j->N + n0, j->bias + n0,
                           (size_t)(n1 - n0) * sizeof(float));
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->M, n1 - n0, j->K, 1.0f, j->x,
                        j->K, j->w + (size_t)n0 * j->K, j->K, j->bias ? 1.0f : 0.0f, j->y + n0, j->N);
            if (j->gelu)
                for (int m = 0; m < j->M; m++)
                    j->gelu->gelu_tanh(j->y + (size_t)m * j->N + n0, (size_t)(n1 - n0));
        }
    }
}

static void run_linear(cpu_backend *c, float *y, const float *x, const float *w, const float *bias,
                       int M, int N, int K, const vs_rt_simd *gelu)
{
    /* OpenBLAS packs the weights again for every call: 256-row blocks amortise that when there
     * are rows enough to keep every worker busy (a step's T is up to thousands of rows) */
    linear_job j = {y, x, w, bias, M, N, K, M >= 64, M >= 512 ? 256 : 64, gelu};
    size_t units = j.by_rows ? (size_t)(M + j.blk - 1) / (size_t)j.blk
                             : (size_t)(N + j.blk - 1) / (size_t)j.blk;
    vs_rt_parallel_for(c->tp, units, linear_task, &j);
}

static void cpu_linear(vs_rt_backend *be, float *y, const float *x, const float *w,
                       const float *bias, int M, int N, int K)
{
    run_linear(cpu(be), y, x, w, bias, M, N, K, NULL);
}

/* linear, then gelu_tanh on each block of outputs as its sgemm finishes (the same elementwise
 * kernel as cpu_gelu, so the same bits), instead of a second pass over all of y */
static void cpu_linear_gelu(vs_rt_backend *be, float *y, const float *x, const float *w,
                            const float *bias, int M, int N, int K)
{
    run_linear(cpu(be), y, x, w, bias, M, N, K, cpu(be)->simd);
}

typedef struct {
    float *y;
    const float *x;
    int op; /* 0 silu, 1 gelu_tanh (in place), 2 add, 3 to_unit */
    const vs_rt_simd *k;
} ew_job;

static void ew_task(void *p, size_t b, size_t e, int worker)
{
    (void)worker;
    ew_job *j = p;
    switch (j->op) {
    case 0:
        j->k->silu(j->y + b, j->x + b, e - b);
        break;
    case 1:
        j->k->gelu_tanh(j->y + b, e - b);
        break;
    case 2:
        j->k->add(j->y + b, j->x + b, e - b);
        break;
    default:
        j->k->to_unit(j->y + b, e - b);
        break;
    }
}

static void run_ew(vs_rt_backend *be, float *y, const float *x, size_t n, int op)
{
    ew_job j = {y, x, op, cpu(be)->simd};
    if (n < 65536)
        ew_task(&j, 0, n, 0);
    else
        vs_rt_parallel_for(cpu(be)->tp, n, ew_task, &j);
}

static void cpu_silu(vs_rt_backend *be, float *y, const float *x, size_t n) { run_ew(be, y, x, n, 0); }
static void cpu_gelu(vs_rt_backend *be, float *x, size_t n) { run_ew(be, x, NULL, n, 1); }
static void cpu_add(vs_rt_backend *be, float *y, const float *x, size_t n) { run_ew(be, y, x, n, 2); }
static void cpu_to_unit(vs_rt_backend *be, float *x, size_t n) { run_ew(be, x, NULL, n, 3); }

static void cpu_add_bias_rows(vs_rt_backend *be, float *y, const float *b, int M, int N)
{
    (void)be;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++)
            y[(size_t)m * N + n] += b[n];
}

static void cpu_gather_rows(vs_rt_backend *be, float *y, const float *table, const int32_t *idx,
                            int T, int C, int accumulate)
{
    (void)be;
    for (int t = 0; t < T; t++) {
        const float *src = table + (size_t)idx[t] * C;
        float *dst = y + (size_t)t * C;
        if (accumulate)
            for (int i = 0; i < C; i++)
                dst[i] += src[i];
        else
            memcpy(dst, src, (size_t)C * sizeof(float));
    }
}

typedef struct {
    float *y;
    const float *x, *mod;
    int mod_stride, off_a, off_b, C;
    const int32_t *tok_row;
    float eps;
} adaln_job;

/* mean and variance of R rows of C (double sums, each row's in index order): the rows' chains are
 * interleaved, which hides the add latency of one row's sequential sum without reordering it */
#define LN_ROWS 4
static void ln_stats(const float *const *x, int R, int C, double *mean, double *var)
{
    double m[LN_ROWS] = {0}, v[LN_ROWS] = {0};
    for (int i = 0; i < C; i++)
        for (int r = 0; r < R; r++)
            m[r] += x[r][i];
    for (int r = 0; r < R; r++)
        m[r] /= C;
    for (int i = 0; i < C; i++)
        for (int r = 0; r < R; r++) {
            double d = x[r][i] - m[r];
            v[r] += d * d;
        }
    for (int r = 0; r < R; r++) {
        mean[r] = m[r];
        var[r] = v[r] / C;
    }
}

/* The gated residual of token t: x[t] += branch[t] · gamma of its row (j: y = x, in/out; x = the
 * branch output; off_a = gamma) */
static void gated_row(const adaln_job *j, size_t t)
{
    int C = j->C;
    float *x = j->y + t * (size_t)C;
    const float *br = j->x + t * (size_t)C;
    const float *g = j->mod + (size_t)j->tok_row[t] * (size_t)j->mod_stride + j->off_a;
    for (int i = 0; i < C; i++)
        x[i] += br[i] * g[i];
}

/* y = LN(x) · (1 + scale) + shift over tokens [b, e), LN_ROWS at a time; with gate, each row of x
 * first gets its gated residual (gated_row) */
static void adaln_rows(const adaln_job *j, const adaln_job *gate, size_t b, size_t e)
{
    int C = j->C;
    for (size_t t0 = b; t0 < e; t0 += LN_ROWS) {
        int R = e - t0 < LN_ROWS ? (int)(e - t0) : LN_ROWS;
        const float *xs[LN_ROWS];
        double mean[LN_ROWS], var[LN_ROWS];
        for (int r = 0; r < R; r++) {
            size_t t = t0 + r;
            xs[r] = j->x + t * (size_t)C;
            if (gate)
                gated_row(gate, t);
        }
        ln_stats(xs, R, C, mean, var);
        for (int r = 0; r < R; r++) {
            size_t t = t0 + r;
            const float *x = xs[r];
            float *y = j->y + t * (size_t)C;
            const float *mrow = j->mod + (size_t)j->tok_row[t] * (size_t)j->mod_stride;
            const float *sc = mrow + j->off_a, *sh = mrow + j->off_b;
            float rstd = (float)(1.0 / sqrt(var[r] + j->eps)), fm = (float)mean[r];
            for (int i = 0; i < C; i++)
                y[i] = (x[i] - fm) * rstd * (1.0f + sc[i]) + sh[i];
        }
    }
}

static void adaln_task(void *p, size_t b, size_t e, int worker)
{
    (void)worker;
    adaln_rows(p, NULL, b, e);
}

static void cpu_adaln(vs_rt_backend *be, float *y, const float *x, const float *mod, int mod_stride,
                      int scale_off, int shift_off, const vs_rt_batch *b, int C, float eps)
{
    adaln_job j = {y, x, mod, mod_stride, scale_off, shift_off, C, b->tok_row, eps};
    vs_rt_parallel_for(cpu(be)->tp, (size_t)b->n_tok, adaln_task, &j);
}

static void gated_task(void *p, size_t b, size_t e, int worker)
{
    (void)worker;
    for (size_t t = b; t < e; t++)
        gated_row(p, t);
}

static void cpu_gated_add(vs_rt_backend *be, float *x, const float *y, const float *mod,
                          int mod_stride, int gamma_off, const vs_rt_batch *b, int C)
{
    adaln_job j = {x, y, mod, mod_stride, gamma_off, 0, C, b->tok_row, 0};
    vs_rt_parallel_for(cpu(be)->tp, (size_t)b->n_tok, gated_task, &j);
}

typedef struct {
    adaln_job gate, norm;
} gated_adaln_job;

static void gated_adaln_task(void *p, size_t b, size_t e, int worker)
{
    (void)worker;
    gated_adaln_job *j = p;
    adaln_rows(&j->norm, &j->gate, b, e);
}

/* gated_add then adaln, a row at a time while it is in cache: each token's row is both ops'
 * unit, so the result is the two ops' */
static void cpu_gated_add_adaln(vs_rt_backend *be, float *x, const float *y, const float *gmod,
                                int gmod_stride, int gamma_off, float *xn, const float *nmod,
                                int nmod_stride, int scale_off, int shift_off, const vs_rt_batch *b,
                                int C, float eps)
{
    gated_adaln_job j = {{x, y, gmod, gmod_stride, gamma_off, 0, C, b->tok_row, 0},
                         {xn, x, nmod, nmod_stride, scale_off, shift_off, C, b->tok_row, eps}};
    vs_rt_parallel_for(cpu(be)->tp, (size_t)b->n_tok, gated_adaln_task, &j);
}

typedef struct {
    float *qkv;
    int H, d;
    const float *mul; /* [H]: exp of the clamped scale_mul, the queries' factor */
} qk_job;

static void qk_task(void *p, size_t b, size_t e, int worker)
{
    (void)worker;
    qk_job *j = p;
    int C = j->H * j->d;
    for (size_t t = b; t < e; t++)
        for (int part = 0; part < 2; part++)
            for (int h = 0; h < j->H; h++) {
                float *v = j->qkv + t * 3 * (size_t)C + (size_t)part * C + (size_t)h * j->d;
                double ss = 0;
                for (int i = 0; i < j->d; i++)
                    ss += (double)v[i] * v[i];
                float nrm = (float)sqrt(ss);
                float inv = 1.0f / (nrm > 1e-12f ? nrm : 1e-12f);
                if (part == 0)
                    inv *= j->mul[h];
                for (int i = 0; i < j->d; i++)
                    v[i] *= inv;
            }
}

static void cpu_qk_norm(vs_rt_backend *be, float *qkv, int T, int H, int d, const float *scale_mul)
{
    const float max_mul = logf(100.0f);
    float stack[64], *mul = H <= 64 ? stack : malloc((size_t)H * sizeof *mul);
    if (!mul)
        abort(); /* H floats */
    for (int h = 0; h < H; h++)
        mul[h] = expf(scale_mul[h] < max_mul ? scale_mul[h] : max_mul);
    qk_job j = {qkv, H, d, mul};
    vs_rt_parallel_for(cpu(be)->tp, (size_t)T, qk_task, &j);
    if (mul != stack)
        free(mul);
}

/* ---- attention over pages ---------------------------------------------------------------------- */

typedef struct {
    float *out;
    const float *qkv;
    const vs_rt_batch *b;
    int layer, H, d;
    float scale;
    /* work units: (row, head, query block) flattened */
    const int *unit_row_start; /* [n_rows+1] prefix of units per row */
    cpu_backend *c;
} attn_job;

static void kv_write_task(void *p, size_t b, size_t e, int worker)
{
    (void)worker;
    attn_job *j = p;
    const vs_rt_batch *bt = j->b;
    int H = j->H, d = j->d, C = H * d;
    vs_rt_kv_view view = {bt->kv_base, bt->page_tokens, d};
    for (size_t r = b; r < e; r++) {
        const vs_rt_row *row = &bt->rows[r];
        if (bt->kv_store && !bt->kv_store[r])
            continue; /* kvcache/ takes this row's new tokens from qkv after the attention */
        for (int h = 0; h < H; h++) {
            const vs_rt_kv_head *kh = &row->kv[(size_t)j->layer * H + h];
            for (int i = 0; i < row->n_new; i++) {
                const float *src = j->qkv + (size_t)(row->tok_start + i) * 3 * C + (size_t)h * d;
                int slot = kh->n_tokens + i;
                memcpy(bt->kv_base + vs_rt_kv_offset(&view, kh, slot, 0), src + C, (size_t)d * 4);
                memcpy(bt->kv_base + vs_rt_kv_offset(&view, kh, slot, 1), src + 2 * C, (size_t)d * 4);
            }
        }
    }
}

/* One unit = (row, head, block of up to 64 queries): gather the head's keys and values (cached
 * ones from its own pages, each page PT contiguous keys then PT values; new ones from qkv) into
 * contiguous scratch, then scores = Q·Kᵀ (one GEMM), row softmax, out = P·V
 * (one GEMM). Block shapes depend only on the row, never on the thread count. */
#define ATTN_QBLK 64

static void attn_task(void *p, size_t ub, size_t ue, int worker)
{
    attn_job *j = p;
    const vs_rt_batch *bt = j->b;
    int H = j->H, d = j->d, C = H * d, PT = bt->page_tokens;
    cpu_backend *c = j->c;
    int r = 0;
    for (size_t u = ub; u < ue; u++) {
        while ((size_t)j->unit_row_start[r + 1] <= u)
            r++;
        const vs_rt_row *row = &bt->rows[r];
        int nq_blocks = (row->n_new + ATTN_QBLK - 1) / ATTN_QBLK;
        int local = (int)(u - (size_t)j->unit_row_start[r]);
        int h = local / nq_blocks, qb = local % nq_blocks;
        const vs_rt_kv_head *kh = &row->kv[(size_t)j->layer * H + h];
        int q0 = qb * ATTN_QBLK, nq = row->n_new - q0 < ATTN_QBLK ? row->n_new - q0 : ATTN_QBLK;
        int nc = kh->n_tokens, nk = nc + row->n_new;
        float *kg = c->ws[worker].p, *vg = kg + (size_t)nk * d, *sc = vg + (size_t)nk * d;
        for (int pg = 0, k = 0; k < nc; pg++) {
            const float *kp = bt->kv_base + (size_t)kh->pages[pg] * 2 * PT * d;
            int n = nc - k < PT ? nc - k : PT;
            memcpy(kg + (size_t)k * d, kp, (size_t)n * d * sizeof(float));
            memcpy(vg + (size_t)k * d, kp + (size_t)PT * d, (size_t)n * d * sizeof(float));
            k += n;
        }
        for (int k = nc; k < nk; k++) {
            const float *src = j->qkv + (size_t)(row->tok_start + k - nc) * 3 * C + (size_t)h * d;
            memcpy(kg + (size_t)k * d, src + C, (size_t)d * sizeof(float));
            memcpy(vg + (size_t)k * d, src + 2 * C, (size_t)d * sizeof(float));
        }
        const float *q = j->qkv + (size_t)(row->tok_start + q0) * 3 * C + (size_t)h * d;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, d, j->scale, q, 3 * C, kg, d,
                    0.0f, sc, nk);
        for (int i = 0; i < nq; i++) {
            float *sr = sc + (size_t)i * nk, sum = 0;
            c->simd->exp_shift(sr, (size_t)nk, c->simd->max(sr, (size_t)nk));
            for (int k = 0; k < nk; k++) /* in order: the sum's rounding is the fixtures' */
                sum += sr[k];
            float inv = 1.0f / sum;
            for (int k = 0; k < nk; k++)
                sr[k] *= inv;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, d, nk, 1.0f, sc, nk, vg, d, 0.0f,
                    j->out + (size_t)(row->tok_start + q0) * C + (size_t)h * d, C);
    }
}

static void cpu_attention(vs_rt_backend *be, float *out, const float *qkv, const vs_rt_batch *b,
                          int layer, int H, int d, float scale)
{
    cpu_backend *c = cpu(be);
    attn_job j = {out, qkv, b, layer, H, d, scale, NULL, c};
    vs_rt_parallel_for(c->tp, (size_t)b->n_rows, kv_write_task, &j);
    int starts[b->n_rows + 1], max_nk = 0;
    starts[0] = 0;
    for (int r = 0; r < b->n_rows; r++) {
        starts[r + 1] = starts[r] + H * ((b->rows[r].n_new + ATTN_QBLK - 1) / ATTN_QBLK);
        for (int h = 0; h < H; h++) {
            int nk = b->rows[r].kv[(size_t)layer * H + h].n_tokens + b->rows[r].n_new;
            max_nk = nk > max_nk ? nk : max_nk;
        }
    }
    if (ensure_scratch(c, (size_t)max_nk * (2 * (size_t)d + ATTN_QBLK)) != 0)
        abort(); /* bounded by the longest row: a few MB */
    j.unit_row_start = starts;
    vs_rt_parallel_for(c->tp, (size_t)starts[b->n_rows], attn_task, &j);
}

/* ---- KV compression ---------------------------------------------------------------------------- */

typedef struct {
    const float *qkv;
    const vs_rt_batch *b;
    int layer, H, d;
    const vs_rt_kv_plan *plans;
    const vs_rt_kv_job *jobs;
    cpu_backend *c;
} compact_job;

/* Key (kv 0) or value (kv 1) of candidate j of a head holding hist cached tokens. */
static const float *compact_cand(const compact_job *j, const vs_rt_row *row,
                                 const vs_rt_kv_head *kh, int h, int cand, int kv)
{
    int C = j->H * j->d;
    if (cand < kh->n_tokens) {
        vs_rt_kv_view view = {j->b->kv_base, j->b->page_tokens, j->d};
        return j->b->kv_base + vs_rt_kv_offset(&view, kh, cand, kv);
    }
    return j->qkv + (size_t)(row->tok_start + cand - kh->n_tokens) * 3 * C + (size_t)(1 + kv) * C +
           (size_t)h * j->d;
}

/* One job per unit: the window scores (Σ_w q_w, then the dot in dimension order, as
 * kv_compact.h says), the plan's selection on the host (vs_rt_kv_plan_keep), then slot i of the
 * head's pages gets candidate keep[i] in ascending i: keep[i] >= i, so a slot is read before any
 * write reaches it. */
static void compact_task(void *p, size_t ub, size_t ue, int worker)
{
    compact_job *j = p;
    int d = j->d, C = j->H * d;
    vs_rt_kv_view view = {j->b->kv_base, j->b->page_tokens, d};
    for (size_t u = ub; u < ue; u++) {
        const vs_rt_kv_job *jb = &j->jobs[u];
        const vs_rt_kv_plan *pl = &j->plans[jb->plan];
        const vs_rt_row *row = &j->b->rows[jb->row];
        const vs_rt_kv_head *kh = &row->kv[(size_t)j->layer * j->H + jb->head];
        int n = pl->n, h = jb->head;
        float *scores = j->c->ws[worker].p, *tmp = scores + n, *qsum = tmp + VS_RT_KV_KEEP_TMP_FLOATS(n);
        int32_t *keep = (int32_t *)(qsum + d);
        if (vs_rt_kv_plan_needs_scores(pl)) {
            memset(qsum, 0, (size_t)d * sizeof *qsum);
            for (int w = 0; w < pl->n_queries; w++) {
                const float *qv = j->qkv + (size_t)(row->tok_start + pl->q[w]) * 3 * C + (size_t)h * d;
                for (int i = 0; i < d; i++)
                    qsum[i] += qv[i];
            }
            for (int c = pl->rank_from; c < pl->rank_to; c++) {
                const float *kv = compact_cand(j, row, kh, h, c, 0);
                float acc = 0;
                for (int i = 0; i < d; i++)
                    acc += qsum[i] * kv[i];
                scores[c] = acc;
            }
        }
        int kept = vs_rt_kv_plan_keep(pl, scores, keep, tmp);
        for (int i = 0; i < kept; i++) {
            if (keep[i] == i && i < kh->n_tokens)
                continue; /* already in its slot */
            for (int kv = 0; kv < 2; kv++)
                memcpy(j->b->kv_base + vs_rt_kv_offset(&view, kh, i, kv),
                       compact_cand(j, row, kh, h, keep[i], kv), (size_t)d * sizeof(float));
        }
    }
}

static void cpu_kv_compact(vs_rt_backend *be, const float *qkv, const vs_rt_batch *b, int layer,
                           int H, int d, const vs_rt_kv_plan *plans, int n_plans,
                           const vs_rt_kv_job *jobs, int n_jobs)
{
    cpu_backend *c = cpu(be);
    int max_n = 0;
    for (int i = 0; i < n_plans; i++)
        max_n = plans[i].n > max_n ? plans[i].n : max_n;
    /* scores, the selection's scratch, qsum and keep: bounded by the longest head, a few KB */
    if (ensure_scratch(c, 2 * (size_t)max_n + VS_RT_KV_KEEP_TMP_FLOATS(max_n) + (size_t)d) != 0)
        abort();
    compact_job j = {qkv, b, layer, H, d, plans, jobs, c};
    vs_rt_parallel_for(c->tp, (size_t)n_jobs, compact_task, &j);
}

/* ---- guidance and sampling --------------------------------------------------------------------- */

typedef struct {
    float *logits;
    int V;
    const vs_rt_sample_req *reqs;
    const int *req_start; /* prefix of tokens per request */
    int n;
    cpu_backend *c;
} sample_job;

static void sample_task(void *p, size_t b, size_t e, int worker)
{
    sample_job *j = p;
    int V = j->V;
    vs_rt_sample_scratch s = {j->c->ws[worker].p};
    int r = 0;
    for (size_t u = b; u < e; u++) {
        while ((size_t)j->req_start[r + 1] <= u)
            r++;
        const vs_rt_sample_req *q = &j->reqs[r];
        int i = (int)(u - (size_t)j->req_start[r]);
        float *lc = j->logits + (size_t)(q->cond_tok + i) * V;
        const float *lu = j->logits + (size_t)(q->uncond_tok + i) * V;
        float t = q->guidance;
        for (int v = 0; v < V; v++)
            lc[v] = (1.0f + t) * lc[v] - t * lu[v];
        float uni = vs_philox_uniform(q->seed, q->scale, i);
        q->out[i] = vs_rt_sample_token(lc, V, q->top_k, q->top_p, uni, &s);
    }
}

static void cpu_cfg_sample(vs_rt_backend *be, float *logits, int V, const vs_rt_sample_req *reqs, int n)
{
    cpu_backend *c = cpu(be);
    if (ensure_scratch(c, VS_RT_SAMPLE_SCRATCH_WORDS(V)) != 0)
        abort(); /* a few KB per worker; failure here is not recoverable mid-step */
    int starts[n + 1];
    starts[0] = 0;
    for (int r = 0; r < n; r++)
        starts[r + 1] = starts[r] + reqs[r].n;
    sample_job j = {logits, V, reqs, starts, n, c};
    vs_rt_parallel_for(c->tp, (size_t)starts[n], sample_task, &j);
}

/* ---- quantiser ---------------------------------------------------------------------------------- */

static void cpu_embed_chw(vs_rt_backend *be, float *h, const float *emb, const int32_t *idx, int N,
                          int n, int C)
{
    (void)be;
    for (int g = 0; g < N; g++, h += (size_t)C * n, idx += n)
        for (int i = 0; i < n; i++)
            for (int c = 0; c < C; c++)
                h[(size_t)c * n + i] = emb[(size_t)idx[i] * C + c];
}

static float cubic1(float x, float A) { return ((A + 2) * x - (A + 3)) * x * x + 1; }
static float cubic2(float x, float A) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; }

static void cubic_coeffs(int out, int in, int o, int *i0, float w[4])
{
    const float A = -0.75f;
    float scale = (float)in / (float)out;
    float real = scale * ((float)o + 0.5f) - 0.5f;
    float fl = floorf(real);
    float t = real - fl;
    *i0 = (int)fl;
    w[0] = cubic2(t + 1.0f, A);
    w[1] = cubic1(t, A);
    w[2] = cubic1(1.0f - t, A);
    w[3] = cubic2(2.0f - t, A);
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

static void cpu_upsample_bicubic(vs_rt_backend *be, float *dst, const float *src, int planes, int hi,
                                 int wi, int ho, int wo)
{
    (void)be;
    if (hi == ho && wi == wo) {
        memcpy(dst, src, (size_t)planes * hi * wi * sizeof(float));
        return;
    }
    for (int p = 0; p < planes; p++) {
        const float *s = src + (size_t)p * hi * wi;
        float *d = dst + (size_t)p * ho * wo;
        for (int y = 0; y < ho; y++) {
            int y0;
            float wy[4];
            cubic_coeffs(ho, hi, y, &y0, wy);
            for (int x = 0; x < wo; x++) {
                int x0;
                float wx[4];
                cubic_coeffs(wo, wi, x, &x0, wx);
                float rows[4];
                for (int k = 0; k < 4; k++) {
                    const float *sr = s + (size_t)clampi(y0 - 1 + k, 0, hi - 1) * wi;
                    rows[k] = sr[clampi(x0 - 1, 0, wi - 1)] * wx[0] + sr[clampi(x0, 0, wi - 1)] * wx[1] +
                              sr[clampi(x0 + 1, 0, wi - 1)] * wx[2] + sr[clampi(x0 + 2, 0, wi - 1)] * wx[3];
                }
                d[(size_t)y * wo + x] = rows[0] * wy[0] + rows[1] * wy[1] + rows[2] * wy[2] + rows[3] * wy[3];
            }
        }
    }
}

static void cpu_area_downsample(vs_rt_backend *be, float *dst, const float *src, int planes, int hi,
                                int wi, int ho, int wo)
{
    (void)be;
    for (int p = 0; p < planes; p++) {
        const float *s = src + (size_t)p * hi * wi;
        float *d = dst + (size_t)p * ho * wo;
        for (int y = 0; y < ho; y++) {
            int y0 = (y * hi) / ho, y1 = ((y + 1) * hi + ho - 1) / ho;
            for (int x = 0; x < wo; x++) {
                int x0 = (x * wi) / wo, x1 = ((x + 1) * wi + wo - 1) / wo;
                float acc = 0;
                for (int yy = y0; yy < y1; yy++)
                    for (int xx = x0; xx < x1; xx++)
                        acc += s[(size_t)yy * wi + xx];
                d[(size_t)y * wo + x] = acc / (float)((y1 - y0) * (x1 - x0));
            }
        }
    }
}

static void cpu_phi_add(vs_rt_backend *be, float *f, const float *h, const float *ch, float r, size_t n)
{
    (void)be;
    for (size_t i = 0; i < n; i++)
        f[i] += h[i] * (1.0f - r) + ch[i] * r;
}

static void cpu_transpose(vs_rt_backend *be, float *dst, const float *src, int N, int rows, int cols)
{
    (void)be;
    size_t mat = (size_t)rows * cols;
    for (int g = 0; g < N; g++, dst += mat, src += mat)
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
}

/* ---- decoder -------------------------------------------------------------------------------------- */

typedef struct {
    float *y;
    const float *x, *w, *b;
    int N, cin, H, W, cout, k, band, nbands, direct;
    int copied; /* the direct path from copies of the input rows (conv_copies_pay) */
    int chunk; /* > 0: the direct path in ranges of this many pixels, not by bands */
    cpu_backend *c;
} conv_job;

/* The K blocks [kend[i-1], kend[i]) whose products OpenBLAS 0.3.21's SKYLAKEX sgemm adds as one
 * FMA chain each before adding it to C, for the column-major m×n×K product that our row-major
 * conv GEMM (cout × cols × K) is to it (m = cols, n = cout): one block when the small-matrix
 * kernel takes the call (m·n·K ≤ 100³), else driver/level3.c's split with GEMM_Q 448 and
 * GEMM_UNROLL_M 16. Returns the count. Whether this is the running library's order is checked
 * on the shape itself (conv_direct_ok), never assumed. */
static int sgemm_kblocks(int m, int n, int K, int *kend)
{
    if ((double)m * n * K <= 100.0 * 100.0 * 100.0) {
        kend[0] = K;
        return 1;
    }
    int nb = 0;
    for (int ls = 0, ml; ls < K; ls += ml) {
        ml = K - ls;
        if (ml >= 2 * 448)
            ml = 448;
        else if (ml > 448)
            ml = (ml / 2 + 15) / 16 * 16;
        kend[nb++] = ls + ml;
    }
    return nb;
}

/* One band of output rows of image n: im2col of the band, then one GEMM. */
static void conv_band_sgemm(const conv_job *j, int n, int bi, float *col)
{
    int k = j->k, pad = k / 2, H = j->H, W = j->W, KK = j->cin * k * k;
    int y0 = bi * j->band, y1 = y0 + j->band < H ? y0 + j->band : H, cols = (y1 - y0) * W;
    const float *x = j->x + (size_t)n * j->cin * H * W;
    float *y = j->y + (size_t)n * j->cout * H * W;
    const float *bmat;
    if (k == 1) {
        bmat = x + (size_t)y0 * W; /* rows of x are the columns we need, stride H*W */
    } else {
        for (int ci = 0; ci < j->cin; ci++)
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    float *dst = col + ((size_t)(ci * k + ky) * k + kx) * cols;
                    const float *src = x + (size_t)ci * H * W;
                    for (int yy = y0; yy < y1; yy++) {
                        int sy = yy + ky - pad;
                        float *drow = dst + (size_t)(yy - y0) * W;
                        if (sy < 0 || sy >= H) {
                            memset(drow, 0, (size_t)W * sizeof(float));
                            continue;
                        }
                        const float *srow = src + (size_t)sy * W;
                        int dx = kx - pad;
                        int xs = dx < 0 ? -dx : 0, xe = dx > 0 ? W - dx : W;
                        for (int xx = 0; xx < xs; xx++)
                            drow[xx] = 0;
                        memcpy(drow + xs, srow + xs + dx, (size_t)(xe - xs) * sizeof(float));
                        for (int xx = xe; xx < W; xx++)
                            drow[xx] = 0;
                    }
                }
        bmat = col;
    }
    for (int co = 0; co < j->cout; co++) {
        float *yr = y + (size_t)co * H * W + (size_t)y0 * W;
        float bv = j->b ? j->b[co] : 0.0f;
        for (int i = 0; i < cols; i++)
            yr[i] = bv;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->cout, cols, KK, 1.0f, j->w, KK, bmat,
                k == 1 ? H * W : cols, 1.0f, y + (size_t)y0 * W, H * W);
}

/* Pixels [p0, p1) of image n by the direct kernel the job takes, summed in the K blocks kend */
static void conv_direct_range(const conv_job *j, int n, int p0, int p1, const int *kend, int nb,
                              int worker)
{
    int H = j->H, W = j->W;
    float *y = j->y + (size_t)n * j->cout * H * W;
    const float *x = j->x + (size_t)n * j->cin * H * W;
    if (!j->copied)
        vs_rt_conv_direct_avx512(y, x, j->w, j->b, j->cin, H, W, j->cout, j->k, p0, p1, kend, nb);
    else if (j->c->conv_direct_kind == CONV_AVX2)
        vs_rt_conv_copied_avx2(y, x, j->w, j->b, j->cin, H, W, j->cout, j->k, p0, p1, kend, nb,
                               j->c->ws[worker].p);
    else
        vs_rt_conv_copied_avx512(y, x, j->w, j->b, j->cin, H, W, j->cout, j->k, p0, p1, kend, nb,
                                 j->c->ws[worker].p);
}

/* The same band, the same bits, without the im2col matrix (runtime/simd.h). */
static void conv_band_direct(const conv_job *j, int n, int bi, int worker)
{
    int W = j->W, KK = j->cin * j->k * j->k;
    int y0 = bi * j->band, y1 = y0 + j->band < j->H ? y0 + j->band : j->H;
    int kend[64];
    int nb = sgemm_kblocks((y1 - y0) * W, j->cout, KK, kend);
    conv_direct_range(j, n, y0 * W, y1 * W, kend, nb, worker);
}

/* Pixels [p0, p1) of image n when every band sums in the same K blocks (cpu_conv2d decides):
 * then the direct kernel need not follow the bands, and ranges of whole 48-pixel tiles waste
 * fewer lanes on small maps (an 8×8 map's bands are 16 pixels). */
static void conv_chunk_direct(const conv_job *j, int n, int p0, int p1, int worker)
{
    int kend[64];
    int nb = sgemm_kblocks(j->band * j->W, j->cout, j->cin * j->k * j->k, kend);
    conv_direct_range(j, n, p0, p1, kend, nb, worker);
}

/* one unit = one band of output rows of one image, or (chunk > 0) one range of its pixels */
static void conv_task(void *p, size_t ub, size_t ue, int worker)
{
    conv_job *j = p;
    for (size_t u = ub; u < ue; u++) {
        if (j->chunk) {
            int per = (j->H * j->W + j->chunk - 1) / j->chunk;
            int n = (int)(u / (size_t)per), p0 = (int)(u % (size_t)per) * j->chunk;
            int p1 = p0 + j->chunk < j->H * j->W ? p0 + j->chunk : j->H * j->W;
            conv_chunk_direct(j, n, p0, p1, worker);
            continue;
        }
        int n = (int)(u / (size_t)j->nbands), bi = (int)(u % (size_t)j->nbands);
        if (j->direct)
            conv_band_direct(j, n, bi, worker);
        else
            conv_band_sgemm(j, n, bi, j->c->ws[worker].p);
    }
}

/* the most pixels a chunk of the direct path holds (cpu_conv2d): 16 tiles of 48 */
#define CONV_CHUNK_MAX (16 * 48)

/* Whether the direct path reads its input from copies (runtime/simd_conv_body.h) rather than in
 * place: always on AVX2 (its only kernel); on AVX-512 for 3×3 convs over maps of 64² pixels and
 * more, where the planes' power-of-two strides make in-place reads collide in the caches. On
 * smaller maps and 1×1 convs the copies cost more than they save (bench/RESULTS.md, "The direct
 * convolution from copies on AVX-512", a Zen 4). Either way the same bits. */
static int conv_copies_pay(const cpu_backend *c, int k, int H, int W)
{
    return c->conv_direct_kind == CONV_AVX2 || (k == 3 && (size_t)H * W >= 64 * 64);
}

/* the most output rows one unit of a direct job meets: a band, or a chunk anywhere in a plane */
static int conv_direct_rows(const conv_job *j)
{
    int chunk_rows = (CONV_CHUNK_MAX + j->W - 2) / j->W + 1;
    if (chunk_rows > j->H)
        chunk_rows = j->H; /* a small map's chunk is at most the whole map */
    return j->band > chunk_rows ? j->band : chunk_rows;
}

/* Whether a shape takes the direct kernel: on AVX2-only CPUs, by its shape (see the top of this
 * file); on AVX-512 ones, whether the kernel gives this conv shape's sgemm bits, decided once per
 * shape (the summation order depends on the shape alone): on random inputs and the call's
 * weights, its first and last bands (the two GEMM shapes a conv call makes) computed both ways
 * must match bit for bit. Anything else (another BLAS, another kernel, no memory for the check or
 * the scratch, a CPU with neither kernel) keeps the sgemm path. */
static int conv_direct_ok(cpu_backend *c, const conv_job *j)
{
    /* k 1 or 3 (the kernel's taps); K within the 64 blocks the callers' kend arrays hold */
    if (c->conv_direct_kind == CONV_SGEMM || (j->k != 1 && j->k != 3) ||
        j->cin * j->k * j->k > 64 * 448)
        return 0;
    if (c->conv_direct_kind == CONV_AVX2 && j->W % 8 != 0)
        return 0;
    if (j->copied &&
        ensure_scratch(c, vs_rt_conv_copied_scratch(j->cin, j->W, j->k, conv_direct_rows(j))) != 0)
        return 0;
    if (!c->conv_check)
        return 1; /* no sgemm here sums in this order: see the top of this file */
    for (int i = 0; i < c->n_verdicts; i++) {
        const conv_verdict *v = &c->verdicts[i];
        if (v->cin == j->cin && v->cout == j->cout && v->k == j->k &&
            v->H == j->H && v->W == j->W)
            return v->direct;
    }
    size_t in = (size_t)j->cin * j->H * j->W, out = (size_t)j->cout * j->H * j->W;
    float *buf = malloc((in + 2 * out) * sizeof(float));
    int ok = buf != NULL;
    if (ok) {
        uint32_t r = 0x9e3779b9u;
        for (size_t i = 0; i < in; i++) {
            r = r * 1664525u + 1013904223u;
            buf[i] = (float)(int32_t)r * (1.0f / 2147483648.0f);
        }
        conv_job a = *j, b = *j;
        a.x = b.x = buf;
        a.y = buf + in;
        b.y = buf + in + out;
        a.N = b.N = 1;
        int last = j->nbands - 1;
        conv_band_sgemm(&a, 0, 0, c->ws[0].p);
        conv_band_sgemm(&a, 0, last, c->ws[0].p);
        conv_band_direct(&b, 0, 0, 0);
        conv_band_direct(&b, 0, last, 0);
        size_t e0 = (size_t)(j->band < j->H ? j->band : j->H) * j->W, s1 = (size_t)last * j->band * j->W;
        for (int co = 0; co < j->cout && ok; co++) {
            const float *pa = a.y + (size_t)co * j->H * j->W, *pb = b.y + (size_t)co * j->H * j->W;
            ok = memcmp(pa, pb, e0 * sizeof(float)) == 0 &&
                 memcmp(pa + s1, pb + s1, ((size_t)j->H * j->W - s1) * sizeof(float)) == 0;
        }
        free(buf);
    }
    if (c->n_verdicts < CONV_VERDICTS)
        c->verdicts[c->n_verdicts++] = (conv_verdict){j->cin, j->cout, j->k, j->H, j->W, ok};
    return ok;
}

static void cpu_conv2d(vs_rt_backend *be, float *y, const float *x, const float *w, const float *b,
                       int N, int cin, int H, int W, int cout, int k)
{
    cpu_backend *c = cpu(be);
    size_t per_row = (size_t)cin * k * k * W;
    int band = (int)((1u << 18) / (per_row ? per_row : 1));
    if (band < 1)
        band = 1;
    if (band > H)
        band = H;
    /* the band depends only on the shape (never on the thread count): same GEMM calls, same
     * results; at least 4 bands when the map allows, so workers share small maps too */
    while (band > 1 && (H + band - 1) / band < 4)
        band = (band + 1) / 2;
    if (k > 1 && ensure_scratch(c, per_row * (size_t)band) != 0)
        abort(); /* scratch is bounded (about 1 MB per worker) */
    conv_job j = {y, x, w, b, N, cin, H, W, cout, k, band, (H + band - 1) / band, 0, 0, 0, c};
    j.copied = conv_copies_pay(c, k, H, W);
    j.direct = conv_direct_ok(c, &j);
    size_t units = (size_t)N * j.nbands;
    if (j.direct && c->conv_direct_kind == CONV_AVX512) {
        int full[64], last[64], K = cin * k * k, HW = H * W;
        int nf = sgemm_kblocks(band * W, cout, K, full);
        int nl = sgemm_kblocks((H - (j.nbands - 1) * band) * W, cout, K, last);
        if (nf == nl && memcmp(full, last, (size_t)nf * sizeof *full) == 0) {
            /* 48-pixel tiles, at most 16 a unit, at least 4 units a worker where the maps allow */
            int want = (int)(((size_t)N * HW + 4 * (size_t)c->nw - 1) / (4 * (size_t)c->nw));
            int tiles = (want + 47) / 48;
            j.chunk = 48 * (tiles < 1 ? 1 : tiles > CONV_CHUNK_MAX / 48 ? CONV_CHUNK_MAX / 48 : tiles);
            if (j.chunk > HW)
                j.chunk = HW;
            units = (size_t)N * ((HW + j.chunk - 1) / j.chunk);
        }
    }
    vs_rt_parallel_for(c->tp, units, conv_task, &j);
}

typedef struct {
    float *y;
    const float *x, *gamma, *beta;
    int C, HW, groups, silu;
    float eps;
    const vs_rt_simd *k;
} gn_job;

static void gn_task(void *p, size_t b, size_t e, int worker)
{
    (void)worker;
    gn_job *j = p;
    int cpg = j->C / j->groups;
    size_t gsize = (size_t)cpg * j->HW;
    for (size_t u = b; u < e; u++) {
        int g = (int)(u % (size_t)j->groups);
        const float *x = j->x + u * gsize;
        float *y = j->y + u * gsize;
        double mean = j->k->sum_sq_dev(x, gsize, 0.0f, 0) / (double)gsize;
        double var = j->k->sum_sq_dev(x, gsize, (float)mean, 1) / (double)gsize;
        float rstd = (float)(1.0 / sqrt(var + j->eps)), fm = (float)mean;
        for (int c = 0; c < cpg; c++) {
            int ch = g * cpg + c;
            float a = rstd * j->gamma[ch], bb = j->beta[ch] - fm * rstd * j->gamma[ch];
            j->k->affine(y + (size_t)c * j->HW, x + (size_t)c * j->HW, (size_t)j->HW, a, bb, j->silu);
        }
    }
}

static void cpu_group_norm(vs_rt_backend *be, float *y, const float *x, const float *gamma,
                           const float *beta, int N, int C, int HW, int groups, float eps, int silu)
{
    gn_job j = {y, x, gamma, beta, C, HW, groups, silu, eps, cpu(be)->simd};
    vs_rt_parallel_for(cpu(be)->tp, (size_t)N * groups, gn_task, &j);
}

typedef struct {
    float *dst;
    const float *src;
    int h, w;
} up_job;

/* one unit = one plane: each source row written twice as wide, then that row copied below it */
static void up_task(void *p, size_t b, size_t e, int worker)
{
    (void)worker;
    up_job *j = p;
    int h = j->h, w = j->w;
    for (size_t pl = b; pl < e; pl++) {
        const float *s = j->src + pl * (size_t)h * w;
        float *d = j->dst + pl * (size_t)4 * h * w;
        for (int y = 0; y < h; y++) {
            const float *sr = s + (size_t)y * w;
            float *dr = d + (size_t)y * 4 * w;
            for (int x = 0; x < w; x++)
                dr[2 * x] = dr[2 * x + 1] = sr[x];
            memcpy(dr + 2 * w, dr, (size_t)2 * w * sizeof(float));
        }
    }
}

static void cpu_upsample_nearest2x(vs_rt_backend *be, float *dst, const float *src, int planes, int h, int w)
{
    up_job j = {dst, src, h, w};
    vs_rt_parallel_for(cpu(be)->tp, (size_t)planes, up_task, &j);
}

static void cpu_spatial_attention(vs_rt_backend *be, float *out, const float *qkv, int N, int C, int HW)
{
    cpu_backend *c = cpu(be);
    if (ensure_scratch(c, (size_t)HW * HW) != 0)
        abort();
    float *w = c->ws[0].p; /* [HW q][HW k] */
    float sc = 1.0f / sqrtf((float)C);
    for (int n = 0; n < N; n++) {
        const float *q = qkv + (size_t)n * 3 * C * HW, *k = q + (size_t)C * HW, *v = k + (size_t)C * HW;
        /* w[i][j] = Σ_c q[c][i] k[c][j] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, HW, HW, C, sc, q, HW, k, HW, 0.0f, w, HW);
        for (int i = 0; i < HW; i++) {
            float *r = w + (size_t)i * HW, sum = 0;
            c->simd->exp_shift(r, (size_t)HW, c->simd->max(r, (size_t)HW));
            for (int jx = 0; jx < HW; jx++) /* in order: the sum's rounding is the fixtures' */
                sum += r[jx];
            for (int jx = 0; jx < HW; jx++)
                r[jx] /= sum;
        }
        /* out[c][i] = Σ_j v[c][j] w[i][j] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, C, HW, HW, 1.0f, v, HW, w, HW, 0.0f,
                    out + (size_t)n * C * HW, HW);
    }
}

static const vs_rt_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .copy_many = cpu_copy_many,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .batch_begin = cpu_batch_begin,
    .linear = cpu_linear,
    .linear_gelu = cpu_linear_gelu,
    .gated_add_adaln = cpu_gated_add_adaln,
    .silu = cpu_silu,
    .gelu_tanh = cpu_gelu,
    .add = cpu_add,
    .add_bias_rows = cpu_add_bias_rows,
    .gather_rows = cpu_gather_rows,
    .adaln = cpu_adaln,
    .gated_add = cpu_gated_add,
    .qk_norm = cpu_qk_norm,
    .attention = cpu_attention,
    .kv_compact = cpu_kv_compact,
    .cfg_sample = cpu_cfg_sample,
    .embed_chw = cpu_embed_chw,
    .upsample_bicubic = cpu_upsample_bicubic,
    .area_downsample = cpu_area_downsample,
    .phi_add = cpu_phi_add,
    .transpose = cpu_transpose,
    .conv2d = cpu_conv2d,
    .group_norm = cpu_group_norm,
    .upsample_nearest2x = cpu_upsample_nearest2x,
    .spatial_attention = cpu_spatial_attention,
    .to_unit = cpu_to_unit,
    .counters = NULL, /* no device: nothing to count (bench --json prints "device": null) */
};

vs_status vs_rt_backend_cpu_new(int threads, vs_rt_backend **out, vs_err *err)
{
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    if (threads > 256)
        return vs_err_set(err, VS_ERR_INVALID, "threads must be 1..256 (got %d)", threads);
    vs_status st = vs_rt_simd_check(err);
    if (st != VS_OK)
        return st;
    vs_rt_fp_env_init(); /* the creating thread runs the ops (and chunks of each): no subnormals */
    cpu_backend *c = calloc(1, sizeof *c);
    if (!c)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    c->simd = vs_rt_simd_table();
    /* the widest kernel the CPU runs, but AVX2's where VARSERVE_CPU_SIMD=avx2 forces that path
     * (the same bits, so an AVX-512 machine's tests cover AVX2's band logic too); checked against
     * the sgemm wherever that is SkylakeX's (every AVX-512 CPU, runtime/blas.h) */
    int avx512 = vs_rt_simd_by_name("avx512") != NULL, avx2_forced = strcmp(c->simd->name, "avx2") == 0;
    c->conv_direct_kind = avx512 && !avx2_forced ? CONV_AVX512
                          : vs_rt_simd_by_name("avx2") ? CONV_AVX2 : CONV_SGEMM;
    c->conv_check = avx512;
    c->tp = vs_rt_tpool_new(threads);
    c->nw = c->tp ? vs_rt_tpool_size(c->tp) : 0;
    c->ws = calloc((size_t)(c->nw ? c->nw : 1), sizeof *c->ws);
    if (!c->tp || !c->ws) {
        vs_rt_tpool_free(c->tp);
        free(c->ws);
        free(c);
        return vs_err_set(err, VS_ERR_NOMEM, "cannot start %d CPU worker threads", threads);
    }
    openblas_set_num_threads(1);
    c->base.ops = &cpu_ops;
    c->base.threads = c->nw;
    c->base.host_memory = 1;
    c->base.kv_elem_bytes = 4;
    c->base.simd = c->simd->name;
    c->base.blas = vs_rt_blas_describe();
    vs_log(VS_LOG_INFO, "runtime", "backend cpu: %d threads, simd %s, %s", c->nw, c->simd->name,
           c->base.blas);
    *out = &c->base;
    return VS_OK;
}
