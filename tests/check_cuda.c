/* tests/check_cuda.c — the CUDA backend against the CPU backend, op by op, and the tiny reference
 * fixture token for token through the driver the CLI uses; then BF16 mode against FP32.
 *
 * Tolerances (elementwise, gpu against cpu):
 *   FP32 arithmetic ops   |gpu − cpu| ≤ 1e-4 · max(|cpu|, rms(cpu))  (relative; the array's RMS
 *                         is the floor, so values near zero are judged at the array's scale)
 *   copies, gathers, KV page writes, guided logits (mixed with the CPU's rounding)   exact
 *   sampled tokens        exact: greedy (top_k 1) and top-k/top-p draws on identical logits
 *   tiny fixture          tokens exact; RGB within 1 of round(255 · reference image)
 * BF16 mode (vs_rt_backend_cuda_new(0), weights declared through gemm_weights):
 *   linear vs the CPU on the same inputs rounded to BF16   1e-4 as above (only the inputs round)
 *   attention (head_dim a multiple of 16: the tensor-core kernel) vs the CPU in FP32 over the
 *                         same BF16 pages   elementwise within a bound derived from the BF16
 *                         rounding of q, the new k and v, and p (expect_bf16_attention)
 *   linear vs the CPU in FP32   RMS error ≤ 1e-2 · RMS(cpu), elementwise ≤ 3e-2 · max(|cpu|, rms)
 *                         (two BF16 roundings give about 2.3e-3 RMS; the elementwise bound is
 *                         ~13 standard deviations, so 10^5 outputs never trip it by chance)
 *   the tiny fixture and the bundled model, teacher-forced (the BF16 run takes the FP32 run's
 *                         tokens): guided logits per scale within limits derived from BF16's
 *                         precision, greedy argmax flips only within precision, pixels valid
 *                         (see bf16_teacher_forced). Not PSNR of sampled images: one token drawn
 *                         differently changes the rest of the image, whatever the precision.
 *
 * CUDA does not survive fork: the suite runs with CK_NOFORK (and `make test` sets CK_FORK=no).
 * Without a device, or in a build without CUDA, it prints "check_cuda: no CUDA device, skipped"
 * and exits 0. CHECK_CUDA_SELFTEST=1 puts a second CPU backend in the GPU's place, which checks the
 * suite itself on a machine without a GPU. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/pool.h"
#include "runtime/backend.h"
#include "runtime/blas.h"
#include "runtime/infinity.h"
#include "runtime/model.h"
#include "runtime/vae.h"
#include "runtime/var.h"
#include "server/gen.h"
#include "tests/kvstep_case.h"
#include "tests/st_read.h"

#define MODEL "tests/fixtures/tiny/model.safetensors"
#define GOLDEN "tests/fixtures/tiny/golden.safetensors"
#define INF_MODEL "tests/fixtures/infinity-tiny/model.safetensors"
#define INF_GOLDEN "tests/fixtures/infinity-tiny/golden.safetensors"
#define BUNDLED "models/mnist-var.safetensors"
#define TOL 1e-4
#define BF16_RMS_TOL 1e-2
#define BF16_ELEM_TOL 3e-2

static vs_rt_backend *g_ref; /* CPU backend: the reference */
static vs_rt_backend *g_dut; /* the CUDA backend (a CPU backend with CHECK_CUDA_SELFTEST=1) */
static int g_self;

/* ---- helpers ---------------------------------------------------------------------------------- */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

/* uniform in [-1, 1) */
static float frand(void)
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    uint64_t r = g_rng * 0x2545F4914F6CDD1Dull;
    return (float)((double)(r >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static int irand(int n) { return (int)((frand() + 1.0f) * 0.5f * (float)n) % n; }

/* The same buffer on both backends. */
typedef struct {
    float *ref, *dut;
    size_t n; /* floats */
} buf2;

#define P(b) (side_ ? (b).dut : (b).ref)
/* Runs backend op OP on both backends; P(buf) names the buffer of the running side. */
#define BOTH(OP, ...)                                                                              \
    do {                                                                                           \
        for (int side_ = 0; side_ < 2; side_++) {                                                  \
            vs_rt_backend *be_ = side_ ? g_dut : g_ref;                                            \
            be_->ops->OP(be_, __VA_ARGS__);                                                        \
        }                                                                                          \
    } while (0)

static buf2 b2_new(size_t n)
{
    buf2 b = {g_ref->ops->alloc(g_ref, n * sizeof(float)),
              g_dut->ops->alloc(g_dut, n * sizeof(float)), n};
    ck_assert_ptr_nonnull(b.ref);
    ck_assert_ptr_nonnull(b.dut);
    return b;
}

static buf2 b2_from(const float *host, size_t n)
{
    buf2 b = b2_new(n);
    g_ref->ops->upload(g_ref, b.ref, host, n * sizeof(float));
    g_dut->ops->upload(g_dut, b.dut, host, n * sizeof(float));
    return b;
}

/* Uniform in [offset − scale, offset + scale). */
static buf2 b2_rand(size_t n, float scale, float offset)
{
    float *h = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(h);
    for (size_t i = 0; i < n; i++)
        h[i] = offset + scale * frand();
    buf2 b = b2_from(h, n);
    free(h);
    return b;
}

static void b2_free(buf2 *b)
{
    g_ref->ops->free(g_ref, b->ref);
    g_dut->ops->free(g_dut, b->dut);
    b->ref = b->dut = NULL;
}

static void sync_ok(void)
{
    vs_err err = {0};
    ck_assert_msg(g_ref->ops->sync(g_ref, &err) == VS_OK, "cpu: %s", err.msg);
    ck_assert_msg(g_dut->ops->sync(g_dut, &err) == VS_OK, "dut: %s", err.msg);
}

/* Downloads both copies of the first n floats of b and checks them (tol 0: bit-exact). */
static void expect_n(const buf2 *b, size_t n, double tol, const char *what)
{
    sync_ok();
    float *r = malloc(n * sizeof(float)), *d = malloc(n * sizeof(float));
    ck_assert(r && d);
    g_ref->ops->download(g_ref, r, b->ref, n * sizeof(float));
    g_dut->ops->download(g_dut, d, b->dut, n * sizeof(float));
    sync_ok();
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (double)r[i] * r[i];
    double rms = n ? sqrt(ss / (double)n) : 0;
    for (size_t i = 0; i < n; i++) {
        double bound = tol * fmax(fabs(r[i]), rms);
        int ok = tol == 0 ? memcmp(&r[i], &d[i], sizeof(float)) == 0 || r[i] == d[i]
                          : fabs((double)d[i] - r[i]) <= bound;
        if (!ok) {
            double rr = r[i], dd = d[i];
            free(r);
            free(d);
            ck_abort_msg("%s: element %zu of %zu is %.9g on the device, %.9g on the CPU (|diff| "
                         "%.3g, limit %.3g)",
                         what, i, n, dd, rr, fabs(dd - rr), bound);
        }
    }
    free(r);
    free(d);
}

static void expect(const buf2 *b, double tol, const char *what) { expect_n(b, b->n, tol, what); }

/* ---- memory ------------------------------------------------------------------------------------ */

START_TEST(upload_copy_zero_and_download_are_exact)
{
    enum { N = 1000 };
    float h[N], back[N];
    for (int i = 0; i < N; i++)
        h[i] = frand();
    float *a = g_dut->ops->alloc(g_dut, N * sizeof(float)),
          *b = g_dut->ops->alloc(g_dut, N * sizeof(float));
    ck_assert(a && b);
    g_dut->ops->upload(g_dut, a, h, sizeof h);
    g_dut->ops->zero(g_dut, b, sizeof h);
    g_dut->ops->copy(g_dut, b + 100, a + 200, 500 * sizeof(float));
    g_dut->ops->zero(g_dut, b + 150, 50 * sizeof(float));
    g_dut->ops->download(g_dut, back, b, sizeof back);
    sync_ok();
    for (int i = 0; i < N; i++) {
        float want = i >= 100 && i < 600 && !(i >= 150 && i < 200) ? h[i + 100] : 0.0f;
        ck_assert_msg(back[i] == want, "float %d is %g, want %g", i, back[i], want);
    }
    g_dut->ops->free(g_dut, a);
    g_dut->ops->free(g_dut, b);
    g_dut->ops->free(g_dut, NULL);
}
END_TEST

/* copy_many: every copy of the list lands, whole words and a byte tail alike (an odd length, an
 * address off the word grid), and nothing outside the copies is touched. */
START_TEST(copy_many_makes_every_copy_of_its_list)
{
    enum { N = 4096 };
    unsigned char h[N], back[N];
    for (int i = 0; i < N; i++)
        h[i] = (unsigned char)(i * 37 + 11);
    unsigned char *a = g_dut->ops->alloc(g_dut, N), *b = g_dut->ops->alloc(g_dut, N);
    ck_assert(a && b);
    g_dut->ops->upload(g_dut, a, h, N);
    g_dut->ops->zero(g_dut, b, N);
    /* (dst offset, src offset, bytes): words, one unaligned end, odd lengths, an empty copy */
    static const int L[][3] = {{0, 400, 1024}, {1100, 3, 97}, {1300, 1300, 5}, {2000, 17, 1},
                               {2100, 0, 0},   {2200, 2600, 1496}};
    enum { NC = sizeof L / sizeof L[0] };
    vs_rt_copy list[NC];
    for (int i = 0; i < NC; i++)
        list[i] = (vs_rt_copy){b + L[i][0], a + L[i][1], (size_t)L[i][2]};
    vs_rt_counters c0 = {0}, c1 = {0};
    if (!g_self)
        g_dut->ops->counters(g_dut, &c0);
    g_dut->ops->copy_many(g_dut, list, NC);
    if (!g_self)
        g_dut->ops->counters(g_dut, &c1);
    g_dut->ops->download(g_dut, back, b, N);
    sync_ok();
    for (int i = 0; i < N; i++) {
        int want = 0;
        for (int k = 0; k < NC; k++)
            if (i >= L[k][0] && i < L[k][0] + L[k][2])
                want = h[i - L[k][0] + L[k][1]];
        ck_assert_msg(back[i] == want, "byte %d is %d, want %d", i, back[i], want);
    }
    if (!g_self) { /* one launch for the list, no copy one by one, the list up the bus */
        ck_assert_uint_eq(c1.launches - c0.launches, 1);
        ck_assert_uint_eq(c1.copies - c0.copies, 0);
        ck_assert_uint_eq(c1.h2d_bytes - c0.h2d_bytes, sizeof list);
    }
    g_dut->ops->free(g_dut, a);
    g_dut->ops->free(g_dut, b);
}
END_TEST

/* The counters op counts what each op issues: bytes across the bus (and the part inside the KV
 * arena named by batch_begin), launches (a kernel, a cuBLAS GEMM), host waits, device memory. */
START_TEST(counters_count_copies_launches_syncs_and_memory)
{
    if (g_self) {
        ck_assert_ptr_null(g_dut->ops->counters); /* the CPU backend has no device */
        return;
    }
    ck_assert_ptr_nonnull(g_dut->ops->counters);
    enum { N = 1000 };
    float h[N];
    for (int i = 0; i < N; i++)
        h[i] = frand();
    vs_rt_counters a, b;
    g_dut->ops->counters(g_dut, &a);
    float *x = g_dut->ops->alloc(g_dut, N * sizeof(float)), *arena = g_dut->ops->alloc(g_dut, 4096);
    ck_assert(x && arena);
    g_dut->ops->counters(g_dut, &b);
    ck_assert_uint_eq(b.allocated_bytes - a.allocated_bytes, N * sizeof(float) + 4096);
    ck_assert_uint_ge(b.allocated_peak_bytes, b.allocated_bytes);

    /* an empty batch names the KV arena (its scratch may grow: memory is not judged here) */
    vs_rt_kv_head kl = {0};
    vs_rt_row row = {0, 0, &kl};
    vs_rt_batch bt = {0, 0, &row, NULL, arena + 16, 16, 1, NULL, NULL};
    vs_err err = {0};
    ck_assert_msg(g_dut->ops->batch_begin(g_dut, &bt, &err) == VS_OK, "%s", err.msg);
    sync_ok(); /* the staging ring starts empty: the uploads below wait for nothing */
    g_dut->ops->counters(g_dut, &a);
    g_dut->ops->upload(g_dut, x, h, sizeof h);
    g_dut->ops->upload(g_dut, arena + 100, h, 400);
    g_dut->ops->download(g_dut, h, arena, 1024);
    g_dut->ops->download(g_dut, h, x, 40);
    g_dut->ops->counters(g_dut, &b);
    ck_assert_uint_eq(b.h2d_bytes - a.h2d_bytes, sizeof h + 400);
    ck_assert_uint_eq(b.kv_h2d_bytes - a.kv_h2d_bytes, 400);
    ck_assert_uint_eq(b.d2h_bytes - a.d2h_bytes, 1024 + 40);
    ck_assert_uint_eq(b.kv_d2h_bytes - a.kv_d2h_bytes, 1024);
    ck_assert_uint_eq(b.syncs - a.syncs, 2); /* each download waits */
    ck_assert_uint_eq(b.launches, a.launches);
    ck_assert_uint_eq(b.copies, a.copies);
    g_dut->ops->copy(g_dut, x + 500, x, 100 * sizeof(float)); /* one copy each, no launch */
    g_dut->ops->zero(g_dut, x + 900, 100 * sizeof(float));
    g_dut->ops->copy(g_dut, x, x, 40); /* onto itself: nothing to issue */
    g_dut->ops->counters(g_dut, &a);
    ck_assert_uint_eq(a.copies - b.copies, 2);
    ck_assert_uint_eq(a.launches, b.launches);
    b = a;

    g_dut->ops->silu(g_dut, x, x, N);                                 /* one kernel */
    g_dut->ops->linear(g_dut, x + 500, x, x + 100, NULL, 10, 10, 10); /* one GEMM, no bias */
    sync_ok();
    g_dut->ops->counters(g_dut, &a);
    ck_assert_uint_eq(a.launches - b.launches, 2);
    ck_assert_uint_eq(a.syncs - b.syncs, 1);

    g_dut->ops->free(g_dut, arena); /* the arena goes: nothing is KV any more */
    g_dut->ops->upload(g_dut, x, h, 400);
    g_dut->ops->free(g_dut, x);
    sync_ok();
    g_dut->ops->counters(g_dut, &b);
    ck_assert_uint_eq(b.kv_h2d_bytes, a.kv_h2d_bytes);
    ck_assert_uint_eq(a.allocated_bytes - b.allocated_bytes, N * sizeof(float) + 4096);
}
END_TEST

START_TEST(an_allocation_too_big_for_the_device_returns_null_and_the_backend_goes_on)
{
    if (g_self)
        return; /* the CPU backend's allocator is not under test (and ASan aborts on 1 PB) */
    void *p = g_dut->ops->alloc(g_dut, (size_t)1 << 50); /* 1 PB */
    ck_assert_ptr_null(p);
    sync_ok();
    buf2 x = b2_rand(64, 1, 0), y = b2_new(64);
    BOTH(silu, P(y), P(x), 64);
    expect(&y, TOL, "silu after a failed allocation");
    b2_free(&x);
    b2_free(&y);
}
END_TEST

/* ---- dense ops ---------------------------------------------------------------------------------- */

START_TEST(linear_matches_cpu)
{
    static const int shapes[][3] = {{1, 70, 129}, {37, 70, 129}, {130, 300, 64}, {5, 4096, 128}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        buf2 x = b2_rand((size_t)M * K, 1, 0), w = b2_rand((size_t)N * K, 0.2f, 0),
             bias = b2_rand((size_t)N, 1, 0), y = b2_new((size_t)M * N);
        BOTH(linear, P(y), P(x), P(w), P(bias), M, N, K);
        expect(&y, TOL, "linear with bias");
        BOTH(linear, P(y), P(x), P(w), NULL, M, N, K);
        expect(&y, TOL, "linear without bias");
        /* the fused form against the CPU's linear + gelu_tanh (it has no fused op) */
        for (int side = 0; side < 2; side++)
            vs_rt_backend_linear_gelu(side ? g_dut : g_ref, side ? y.dut : y.ref,
                                      side ? x.dut : x.ref, side ? w.dut : w.ref,
                                      side ? bias.dut : bias.ref, M, N, K);
        expect(&y, TOL, "linear + gelu_tanh");
        if (!g_self) { /* one cuBLASLt call each: the bias and GELU in its epilogue */
            vs_rt_counters a, b;
            g_dut->ops->counters(g_dut, &a);
            g_dut->ops->linear(g_dut, y.dut, x.dut, w.dut, bias.dut, M, N, K);
            vs_rt_backend_linear_gelu(g_dut, y.dut, x.dut, w.dut, bias.dut, M, N, K);
            g_dut->ops->counters(g_dut, &b);
            ck_assert_uint_eq(b.launches - a.launches, 2);
        }
        b2_free(&x);
        b2_free(&w);
        b2_free(&bias);
        b2_free(&y);
    }
}
END_TEST

START_TEST(elementwise_ops_match_cpu)
{
    size_t n = 10007;
    buf2 x = b2_rand(n, 6, 0), y = b2_new(n), z = b2_rand(n, 2, 0);
    BOTH(silu, P(y), P(x), n);
    expect(&y, TOL, "silu");
    BOTH(gelu_tanh, P(x), n);
    expect(&x, TOL, "gelu_tanh");
    BOTH(add, P(x), P(z), n);
    expect(&x, TOL, "add");
    BOTH(to_unit, P(z), n);
    expect(&z, TOL, "to_unit");
    buf2 m = b2_rand(33 * 77, 1, 0), b = b2_rand(77, 1, 0);
    BOTH(add_bias_rows, P(m), P(b), 33, 77);
    expect(&m, TOL, "add_bias_rows");
    BOTH(phi_add, P(x), P(y), P(z), 0.5f, n);
    expect(&x, TOL, "phi_add");
    b2_free(&x);
    b2_free(&y);
    b2_free(&z);
    b2_free(&m);
    b2_free(&b);
}
END_TEST

START_TEST(gather_rows_and_embed_chw_are_exact)
{
    enum { ROWS = 50, C = 48, T = 33 };
    int32_t idx[T];
    for (int t = 0; t < T; t++)
        idx[t] = irand(ROWS);
    buf2 table = b2_rand((size_t)ROWS * C, 1, 0), y = b2_rand((size_t)T * C, 1, 0);
    BOTH(gather_rows, P(y), P(table), idx, T, C, 1);
    for (int t = 0; t < T; t++)
        idx[t] = 0; /* the op must have taken its own copy of idx */
    expect(&y, 0, "gather_rows accumulate");
    for (int t = 0; t < T; t++)
        idx[t] = irand(ROWS);
    BOTH(gather_rows, P(y), P(table), idx, T, C, 0);
    expect(&y, 0, "gather_rows");
    buf2 h = b2_new((size_t)T * C);
    BOTH(embed_chw, P(h), P(table), idx, 1, T, C);
    expect(&h, 0, "embed_chw");
    BOTH(embed_chw, P(h), P(table), idx, 3, T / 3, C); /* three images of 11 codes */
    expect(&h, 0, "embed_chw of three images");
    b2_free(&table);
    b2_free(&y);
    b2_free(&h);
}
END_TEST

/* ---- a ragged batch with paged KV -------------------------------------------------------------- */

#define TB_ROWS 6
#define TB_DEPTH 2
#define TB_PT 4 /* small pages (by default): every row crosses page boundaries */

static const int tb_new[TB_ROWS] = {1, 4, 9, 17, 33, 100};
static const int tb_old[TB_DEPTH][TB_ROWS] = {{0, 3, 8, 16, 40, 7}, {0, 5, 16, 31, 64, 1400}};

#define TB_MAX_HEADS 4

typedef struct {
    int H, d, C, n_tok, n_pages, PT;
    vs_rt_row rows[TB_ROWS];
    vs_rt_kv_head kv[TB_ROWS][TB_DEPTH * TB_MAX_HEADS]; /* [row][layer][head] */
    int32_t *pages; /* all tables, one allocation */
    int32_t *tok_row;
    uint8_t store[TB_ROWS]; /* rows whose new K,V the attention writes to pages: a mix */
    buf2 arena; /* [page][2][PT][d], random, the same on both sides */
    vs_rt_batch b[2];
} tbatch;

/* Cached tokens of (row, layer, head): tb_old, or with `unequal` 1 a different count per head
 * (head h of H holds (h + 1)/H of it: some empty, some ending mid-page), with 2 none (a step's
 * first scale: only its new keys). */
static int tb_tokens(int r, int l, int h, int H, int unequal)
{
    return unequal == 2 ? 0 : unequal ? tb_old[l][r] * (h + 1) / H : tb_old[l][r];
}

/* The batch on pages of PT tokens. */
static void tb_init_pages(tbatch *t, int H, int d, int unequal, int PT)
{
    memset(t, 0, sizeof *t);
    ck_assert_int_le(H, TB_MAX_HEADS);
    t->H = H;
    t->d = d;
    t->C = H * d;
    t->PT = PT;
    int need[TB_ROWS][TB_DEPTH * TB_MAX_HEADS];
    for (int r = 0; r < TB_ROWS; r++) {
        t->rows[r].tok_start = t->n_tok;
        t->rows[r].n_new = tb_new[r];
        t->rows[r].kv = t->kv[r];
        t->store[r] = r % 3 != 1;
        t->n_tok += tb_new[r];
        for (int i = 0; i < TB_DEPTH * H; i++) {
            int old = tb_tokens(r, i / H, i % H, H, unequal);
            need[r][i] = (old + tb_new[r] + PT - 1) / PT + 1; /* one spare page */
            t->n_pages += need[r][i];
        }
    }
    t->pages = malloc((size_t)t->n_pages * sizeof(int32_t));
    t->tok_row = malloc((size_t)t->n_tok * sizeof(int32_t));
    ck_assert(t->pages && t->tok_row);
    for (int i = 0; i < t->n_pages; i++)
        t->pages[i] = i;
    for (int i = t->n_pages - 1; i > 0; i--) { /* pages scattered over the arena */
        int j = irand(i + 1);
        int32_t tmp = t->pages[i];
        t->pages[i] = t->pages[j];
        t->pages[j] = tmp;
    }
    int off = 0;
    for (int r = 0; r < TB_ROWS; r++) {
        for (int i = 0; i < tb_new[r]; i++)
            t->tok_row[t->rows[r].tok_start + i] = r;
        for (int i = 0; i < TB_DEPTH * H; i++) {
            t->kv[r][i].n_tokens = tb_tokens(r, i / H, i % H, H, unequal);
            t->kv[r][i].n_pages = need[r][i];
            t->kv[r][i].pages = t->pages + off;
            off += need[r][i];
        }
    }
    t->arena = b2_rand((size_t)t->n_pages * 2 * PT * t->d, 1, 0);
    for (int s = 0; s < 2; s++) {
        vs_rt_batch b = {TB_ROWS, t->n_tok, t->rows, t->tok_row, s ? t->arena.dut : t->arena.ref,
                         PT,      TB_DEPTH, t->store, NULL};
        t->b[s] = b;
        vs_rt_backend *be = s ? g_dut : g_ref;
        vs_err err = {0};
        ck_assert_msg(be->ops->batch_begin(be, &t->b[s], &err) == VS_OK, "batch_begin: %s",
                      err.msg);
    }
}

static void tb_init_heads(tbatch *t, int H, int d, int unequal)
{
    tb_init_pages(t, H, d, unequal, TB_PT);
}

static void tb_init(tbatch *t, int H, int d) { tb_init_heads(t, H, d, 0); }

static void tb_free(tbatch *t)
{
    b2_free(&t->arena);
    free(t->pages);
    free(t->tok_row);
}

#define PB(t) (&(t).b[side_])
#define PB1(t) (&(t).b[1]) /* the device's */

START_TEST(adaln_and_gated_add_match_cpu)
{
    tbatch t;
    tb_init(&t, 4, 32);
    int C = t.C, T = t.n_tok;
    buf2 x = b2_rand((size_t)T * C, 1, 3), y = b2_new((size_t)T * C),
         mod = b2_rand((size_t)TB_ROWS * 6 * C, 0.5f, 0);
    BOTH(adaln, P(y), P(x), P(mod), 6 * C, 2 * C, 4 * C, PB(t), C, 1e-6f);
    expect(&y, TOL, "adaln");
    BOTH(gated_add, P(x), P(y), P(mod), 6 * C, C, PB(t), C);
    expect(&x, TOL, "gated_add");
    b2_free(&x);
    b2_free(&y);
    b2_free(&mod);
    tb_free(&t);
}
END_TEST

/* The fused residual update and LayerNorm (gated_add_adaln) gives the bits of gated_add then
 * adaln on the device, in one launch where they take two, and matches the CPU (which runs the two
 * ops: vs_rt_backend_gated_add_adaln without a fused op). The norm's modulation comes from another
 * matrix than the gate's, with its own stride, as the engine passes the next layer's or the head's. */
START_TEST(gated_add_adaln_is_gated_add_then_adaln_in_one_launch)
{
    tbatch t;
    tb_init(&t, 4, 32);
    int C = t.C, T = t.n_tok;
    size_t n = (size_t)T * C;
    buf2 x = b2_rand(n, 1, 3), y = b2_rand(n, 1, 0), xn = b2_new(n), x2 = b2_new(n), xn2 = b2_new(n),
         gmod = b2_rand((size_t)TB_ROWS * 6 * C, 0.5f, 0), nmod = b2_rand((size_t)TB_ROWS * 2 * C, 0.5f, 0);
    g_dut->ops->copy(g_dut, x2.dut, x.dut, n * sizeof(float));
    vs_rt_counters a, b;
    for (int side_ = 0; side_ < 2; side_++) {
        vs_rt_backend *be = side_ ? g_dut : g_ref;
        if (side_)
            ck_assert(vs_rt_backend_counters(be, &a) || g_self);
        vs_rt_backend_gated_add_adaln(be, P(x), P(y), P(gmod), 6 * C, C, P(xn), P(nmod), 2 * C, 0,
                                      C, PB(t), C, 1e-6f);
        if (side_)
            ck_assert(vs_rt_backend_counters(be, &b) || g_self);
    }
    expect(&x, TOL, "gated_add_adaln's x");
    expect(&xn, TOL, "gated_add_adaln's xn");
    g_dut->ops->gated_add(g_dut, x2.dut, y.dut, gmod.dut, 6 * C, C, PB1(t), C);
    g_dut->ops->adaln(g_dut, xn2.dut, x2.dut, nmod.dut, 2 * C, 0, C, PB1(t), C, 1e-6f);
    sync_ok();
    float *h[4];
    const float *d[4] = {x.dut, x2.dut, xn.dut, xn2.dut};
    for (int i = 0; i < 4; i++) {
        h[i] = malloc(n * sizeof(float));
        ck_assert_ptr_nonnull(h[i]);
        g_dut->ops->download(g_dut, h[i], d[i], n * sizeof(float));
    }
    ck_assert_msg(memcmp(h[0], h[1], n * sizeof(float)) == 0, "the fused x differs from gated_add's");
    ck_assert_msg(memcmp(h[2], h[3], n * sizeof(float)) == 0, "the fused xn differs from adaln's");
    if (!g_self)
        ck_assert_uint_eq(b.launches - a.launches, 1);
    for (int i = 0; i < 4; i++)
        free(h[i]);
    buf2 *all[] = {&x, &y, &xn, &x2, &xn2, &gmod, &nmod};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        b2_free(all[i]);
    tb_free(&t);
}
END_TEST

START_TEST(qk_norm_matches_cpu)
{
    static const int hd[][2] = {{3, 16}, {4, 64}, {2, 40}};
    for (size_t s = 0; s < sizeof hd / sizeof hd[0]; s++) {
        int H = hd[s][0], d = hd[s][1], T = 21;
        float sm_host[4] = {0.5f, 6.0f /* over ln 100: clamped */, -1.0f, 2.0f};
        buf2 qkv = b2_rand((size_t)T * 3 * H * d, 2, 0.1f), sm = b2_from(sm_host, (size_t)H);
        BOTH(qk_norm, P(qkv), T, H, d, P(sm));
        expect(&qkv, TOL, "qk_norm");
        b2_free(&qkv);
        b2_free(&sm);
    }
}
END_TEST

static vs_rt_backend *bf16_backend(void);

/* BF16 pages: the arena's values rounded to BF16, as FP32 on the CPU and through kv_upload (as
 * BF16) on the device. */
static void round_pages(const buf2 *arena)
{
    size_t n = arena->n;
    float *h = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(h);
    g_ref->ops->download(g_ref, h, arena->ref, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h[i] = bf16_round(h[i]);
    g_ref->ops->upload(g_ref, arena->ref, h, n * sizeof(float));
    vs_rt_backend_kv_upload(g_dut, arena->dut, 0, h, n);
    free(h);
}

/* BF16 pages: every element of the device's pages (read through kv_download, which widens
 * exactly) is the CPU's FP32 element rounded to nearest even. */
static void expect_bf16_pages(const buf2 *arena, const char *what)
{
    size_t n = arena->n;
    float *h = malloc(n * sizeof(float)), *d = malloc(n * sizeof(float));
    ck_assert(h && d);
    sync_ok();
    g_ref->ops->download(g_ref, h, arena->ref, n * sizeof(float));
    vs_rt_backend_kv_download(g_dut, d, arena->dut, 0, n);
    sync_ok();
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(d[i] == bf16_round(h[i]),
                      "%s: page element %zu is %.9g on the device, want the CPU's %.9g rounded "
                      "to BF16 (%.9g)",
                      what, i, (double)d[i], (double)h[i], (double)bf16_round(h[i]));
    free(h);
    free(d);
}

/* BF16-mode attention on tensor cores (k_attention_tc, head_dim a multiple of 16) against the
 * CPU's FP32 attention over the same pages. The device rounds q, the new keys' k and v (cached K
 * and V are BF16 already, on both sides) and the probabilities p to BF16 (u = 2^-8 each) and
 * computes in FP32 otherwise. The bound, per output element (query i, dimension j):
 *   the score of key k moves by δ_k = scale·(q̃·k̃ − q·k), computed here exactly (double) from the
 *   rounded values, plus FP32 accumulation (d·2^-24·scale·Σ|q||k|); p̃_k = e^(s̃_k − m)·(1 + ρ),
 *   |ρ| ≤ u, so every ratio p̃_k / p_k lies within e^(±a), a = max_k |δ_k| + u(1 + u);
 *   the normalised weights w̃_k = p̃_k / Σ p̃ then lie within e^(±2a) of w_k, and since both sum to
 *   1, |Σ (w̃_k − w_k) v_kj| ≤ (e^(2a) − 1) · (max_k v_kj − min_k v_kj) / 2;
 *   ṽ of a new key errs by at most u·|v_kj|: u · max over new keys |v_kj|;
 *   both sides' FP32 sums over n keys: 4 (n + d) 2^-24 · max_k |v_kj|.
 * The sum of those is the limit; a wrong key, page, scale or block is off by far more. (A row of
 * one key outputs ṽ itself, whose error can come within a hair of u·|v|: the worst ratio printed
 * is near 1 by construction, not by luck.) Returns the
 * worst error relative to 1e-4 of max(|cpu|, rms), FP32's tolerance (TOL), so a caller can tell the
 * rounded path from the FP32 one. */
static double expect_bf16_attention(const tbatch *t, const buf2 *qkv, const buf2 *out, int layer,
                                    float scale, const char *what)
{
    const double u = 1.0 / 256, e24 = 1.0 / 16777216.0;
    int H = t->H, d = t->d, C = t->C, PT = t->PT;
    sync_ok();
    float *q = malloc(qkv->n * sizeof(float)), *kv = malloc(t->arena.n * sizeof(float));
    float *r = malloc(out->n * sizeof(float)), *g = malloc(out->n * sizeof(float));
    const float **kp = malloc((size_t)(1500 + 128) * 2 * sizeof(*kp));
    ck_assert(q && kv && r && g && kp);
    g_ref->ops->download(g_ref, q, qkv->ref, qkv->n * sizeof(float));
    g_ref->ops->download(g_ref, kv, t->arena.ref, t->arena.n * sizeof(float));
    g_ref->ops->download(g_ref, r, out->ref, out->n * sizeof(float));
    g_dut->ops->download(g_dut, g, out->dut, out->n * sizeof(float));
    sync_ok();
    double ss = 0;
    for (size_t i = 0; i < out->n; i++)
        ss += (double)r[i] * r[i];
    double rms = sqrt(ss / (double)out->n), worst = 0, worst_fp32 = 0;
    for (int row = 0; row < TB_ROWS; row++)
        for (int h = 0; h < H; h++) {
            const vs_rt_kv_head *kh = &t->rows[row].kv[layer * H + h];
            int nc = kh->n_tokens, nn = t->rows[row].n_new, n = nc + nn, ts = t->rows[row].tok_start;
            ck_assert_int_le(n, 1500 + 128);
            const float **vp = kp + n;
            for (int k = 0; k < n; k++) { /* key k's K and V rows: a page slot, or qkv */
                if (k < nc) {
                    size_t at = ((size_t)kh->pages[k / PT] * 2 * PT + k % PT) * d;
                    kp[k] = kv + at;
                    vp[k] = kv + at + (size_t)PT * d;
                } else {
                    kp[k] = q + (size_t)(ts + k - nc) * 3 * C + C + (size_t)h * d;
                    vp[k] = kp[k] + C;
                }
            }
            for (int i = 0; i < nn; i++) {
                const float *qi = q + (size_t)(ts + i) * 3 * C + (size_t)h * d;
                double a = 0;
                for (int k = 0; k < n; k++) {
                    double exact = 0, rounded = 0, mag = 0;
                    for (int j = 0; j < d; j++) {
                        double kj = kp[k][j], kr = k < nc ? kj : bf16_round(kp[k][j]);
                        exact += (double)qi[j] * kj;
                        rounded += (double)bf16_round(qi[j]) * kr;
                        mag += fabs((double)qi[j] * kj);
                    }
                    a = fmax(a, scale * (fabs(rounded - exact) + (d + 2) * e24 * mag));
                }
                a += u * (1 + u);
                for (int j = 0; j < d; j++) {
                    double lo = INFINITY, hi = -INFINITY, vmax = 0, vnew = 0;
                    for (int k = 0; k < n; k++) {
                        double v = vp[k][j];
                        lo = fmin(lo, v);
                        hi = fmax(hi, v);
                        vmax = fmax(vmax, fabs(v));
                        if (k >= nc)
                            vnew = fmax(vnew, fabs(v));
                    }
                    double lim = expm1(2 * a) * (hi - lo) / 2 + u * vnew + 4.0 * (n + d) * e24 * vmax;
                    size_t o = (size_t)(ts + i) * C + (size_t)h * d + j;
                    double err = fabs((double)g[o] - r[o]);
                    ck_assert_msg(err <= lim,
                                  "%s: row %d head %d query %d dim %d is %.9g on the device, %.9g "
                                  "on the CPU (|diff| %.3g, limit %.3g from BF16 rounding)",
                                  what, row, h, i, j, (double)g[o], (double)r[o], err, lim);
                    worst = fmax(worst, err / lim);
                    worst_fp32 = fmax(worst_fp32, err / (TOL * fmax(fabs(r[o]), rms)));
                }
            }
        }
    printf("check_cuda: %s (head_dim %d, pages of %d): worst error at %.3f of the BF16 limit, "
           "%.1f times FP32's\n",
           what, d, PT, worst, worst_fp32);
    free(q);
    free(kv);
    free(r);
    free(g);
    free(kp);
    return worst_fp32;
}

/* Every (layer, head) has its own page table; with `unequal` the heads of a layer hold different
 * counts, as under a head-aware policy. With `bf16_pages` the device under test is the BF16-mode
 * backend: its cached K and V are the random values rounded to BF16 (FP32 on the CPU), so both
 * attend over the same pages; the output is within the limit of expect_bf16_attention (head_dim a
 * multiple of 16: the tensor-core kernel) or FP32 rounding (TOL, k_attention's FP32 arithmetic on
 * BF16 pages: a page read as anything but BF16 is off by O(1)), and the new K and V the attention
 * writes must be exactly the CPU's rounded to nearest even (k_kv_write). */
static void attention_case(int unequal, int bf16_pages)
{
    vs_rt_backend *keep = g_dut, *bf = bf16_pages ? bf16_backend() : NULL;
    if (bf) {
        ck_assert_int_eq(bf->kv_elem_bytes, g_self ? 4 : 2);
        g_dut = bf; /* the buffers and batches below on the BF16-mode backend */
    }
    static const int hd[][2] = {{4, 32}, {2, 64}, {2, 40}};
    for (size_t s = 0; s < sizeof hd / sizeof hd[0]; s++) {
        if (!bf && hd[s][1] == 40)
            continue; /* FP32 mode: the two above cover k_attention */
        tbatch t;
        tb_init_heads(&t, hd[s][0], hd[s][1], unequal);
        if (bf)
            round_pages(&t.arena);
        int C = t.C, T = t.n_tok;
        buf2 qkv = b2_rand((size_t)T * 3 * C, 1, 0), out = b2_new((size_t)T * C);
        for (int l = 0; l < TB_DEPTH; l++) {
            float scale = l == 0 ? 0.25f / sqrtf((float)t.d) : 1.0f;
            BOTH(attention, P(out), P(qkv), PB(t), l, t.H, t.d, scale);
            if (bf && t.d % 16 == 0)
                expect_bf16_attention(&t, &qkv, &out, l, scale, "BF16 attention output");
            else
                expect(&out, TOL, "attention output");
            if (bf)
                expect_bf16_pages(&t.arena, "BF16 KV pages after attention");
            else
                expect(&t.arena, 0, "KV pages after attention");
        }
        b2_free(&qkv);
        b2_free(&out);
        tb_free(&t);
    }
    g_dut = keep;
    vs_rt_backend_free(bf);
}

/* kv_compact on the device against the CPU's (the host rule, runtime/kv_compact.c): every head of
 * every row of the tbatch (heads holding different counts, up to 1500 candidates, so a block's
 * threads scan several candidates each and the top-k sorts 2048 keys) gets one of three plans —
 * window-scored with pooling, top raw scores, keep all — and afterwards every page element must
 * be bit-identical on the two backends (FP32 pages; the scores' products and sums are in one
 * order on both). */
START_TEST(kv_compact_on_the_device_keeps_and_packs_what_the_cpu_does)
{
    tbatch t;
    tb_init_heads(&t, 4, 32, 1);
    int C = t.C, T = t.n_tok;
    buf2 qkv = b2_rand((size_t)T * 3 * C, 1, 0);
    vs_rt_kv_plan plans[TB_ROWS * TB_MAX_HEADS];
    vs_rt_kv_job jobs[TB_ROWS * TB_MAX_HEADS];
    for (int l = 0; l < TB_DEPTH; l++) {
        int nj = 0;
        for (int r = 0; r < TB_ROWS; r++)
            for (int h = 0; h < t.H; h++) {
                int hist = t.kv[r][l * t.H + h].n_tokens, n_new = t.rows[r].n_new, n = hist + n_new;
                vs_rt_kv_plan *p = &plans[nj];
                memset(p, 0, sizeof *p);
                p->n = n;
                int kind = (r + h + l) % 3;
                if (kind == 2) { /* keep all */
                    p->n_ranges = 1;
                    p->hi[0] = n;
                } else {
                    p->rank_to = n;
                    p->want = n / 3;
                    if (kind == 0) { /* the newest token and every 7th one forced, pooled scores */
                        p->pool_radius = 2;
                        for (int j = 0; j < n && p->n_ranges < VS_RT_KV_PLAN_RANGES - 1; j += 7) {
                            p->lo[p->n_ranges] = j;
                            p->hi[p->n_ranges++] = j + 1;
                        }
                        if (p->hi[p->n_ranges - 1] < n) {
                            p->lo[p->n_ranges] = n - 1;
                            p->hi[p->n_ranges++] = n;
                        }
                    }
                    p->n_queries = VS_RT_KV_PLAN_QUERIES;
                    for (int w = 0; w < p->n_queries; w++)
                        p->q[w] = (w * 5) % n_new;
                }
                p->kept = vs_rt_kv_plan_count(p);
                ck_assert_ptr_null(vs_rt_kv_plan_check(p, n_new));
                jobs[nj] = (vs_rt_kv_job){r, h, nj};
                nj++;
            }
        BOTH(kv_compact, P(qkv), PB(t), l, t.H, t.d, plans, nj, jobs, nj);
        expect(&t.arena, 0, "KV pages after kv_compact");
    }
    b2_free(&qkv);
    tb_free(&t);
}
END_TEST

START_TEST(attention_writes_the_new_kv_into_pages_and_matches_cpu)
{
    attention_case(0, 0);
}
END_TEST

START_TEST(attention_over_heads_holding_different_counts_matches_cpu)
{
    attention_case(1, 0);
}
END_TEST

/* The page tables are final only at each layer's attention (kvcache/ grows them just before), so
 * the attention op checks them: a row whose table is short of pages for its new tokens is
 * refused there, and sync names the row and layer. (A fresh backend: the error is its own.) */
START_TEST(a_batch_without_room_for_the_new_tokens_is_refused_at_the_attention)
{
    if (g_self)
        return; /* the CPU backend trusts its caller */
    vs_rt_backend *be = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_backend_cuda_new(1, &be, &err) == VS_OK, "%s", err.msg);
    vs_rt_backend *keep = g_dut;
    g_dut = be; /* the batch and its buffers on this backend */
    tbatch t;
    tb_init(&t, 2, 16);
    buf2 qkv = b2_rand((size_t)t.n_tok * 3 * t.C, 1, 0), out = b2_new((size_t)t.n_tok * t.C);
    t.kv[3][0].n_pages = 1; /* row 3 head 0 holds 16 tokens and adds 17: it needs 9 pages of 4 */
    be->ops->attention(be, out.dut, qkv.dut, &t.b[1], 0, t.H, t.d, 1.0f);
    vs_status st = be->ops->sync(be, &err);
    b2_free(&qkv);
    b2_free(&out);
    tb_free(&t);
    g_dut = keep;
    vs_rt_backend_free(be);
    ck_assert_int_eq(st, VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "row 3 layer 0") && strstr(err.msg, "lists 1"), "%s", err.msg);
}
END_TEST

START_TEST(a_failed_op_makes_sync_return_the_error_and_where_it_happened)
{
    if (g_self)
        return;
    vs_rt_backend *be = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_backend_cuda_new(1, &be, &err) == VS_OK, "%s", err.msg);
    tbatch t;
    tb_init(&t, 2, 16); /* prepared on g_dut; this backend sees an unprepared batch */
    float *buf = be->ops->alloc(be, (size_t)t.n_tok * 3 * t.C * sizeof(float));
    ck_assert_ptr_nonnull(buf);
    vs_rt_batch b = t.b[1];
    b.dev = NULL;
    be->ops->attention(be, buf, buf, &b, 0, t.H, t.d, 1.0f);
    ck_assert_int_ne(be->ops->sync(be, &err), VS_OK);
    ck_assert_ptr_nonnull(strstr(err.msg, "batch_begin"));
    ck_assert_ptr_nonnull(strstr(err.msg, "backend_cuda.cu:"));
    ck_assert_int_eq(be->ops->sync(be, &err), VS_OK); /* reported once: the device is fine */
    be->ops->free(be, buf);
    vs_rt_backend_free(be);
    tb_free(&t);
}
END_TEST

/* ---- guidance and sampling ---------------------------------------------------------------------- */

typedef struct {
    int top_k;
    float top_p;
} rule;

/* Logits of n_req images × per tokens (cond rows then uncond rows per image), the requests, and a
 * comparison of the guided logits (bit-exact) and the sampled tokens (exact). */
static void sample_case(int V, const rule *rules, int n_req, int per, float guidance, int ties,
                        const char *what)
{
    int T = 2 * n_req * per;
    float *h = malloc((size_t)T * V * sizeof(float));
    ck_assert_ptr_nonnull(h);
    for (size_t i = 0; i < (size_t)T * V; i++) {
        float v = 4.0f * frand();
        h[i] = ties ? roundf(v * 2.0f) / 2.0f : v;
    }
    buf2 lg = b2_from(h, (size_t)T * V);
    vs_rt_sample_req *rq[2];
    int32_t *tok[2];
    for (int s = 0; s < 2; s++) {
        rq[s] = calloc((size_t)n_req, sizeof *rq[s]);
        tok[s] = calloc((size_t)n_req * per, sizeof *tok[s]);
        ck_assert(rq[s] && tok[s]);
        for (int r = 0; r < n_req; r++) {
            vs_rt_sample_req *q = &rq[s][r];
            q->cond_tok = 2 * r * per;
            q->uncond_tok = 2 * r * per + per;
            q->n = per;
            q->guidance = guidance * (float)r / (float)(n_req > 1 ? n_req - 1 : 1);
            q->top_k = rules[r].top_k;
            q->top_p = rules[r].top_p;
            q->seed = 1000003ull * (uint64_t)(r + 1) + ((uint64_t)r << 40);
            q->scale = r % 10;
            q->out = tok[s] + (size_t)r * per;
        }
    }
    g_ref->ops->cfg_sample(g_ref, lg.ref, V, rq[0], n_req);
    g_dut->ops->cfg_sample(g_dut, lg.dut, V, rq[1], n_req);
    expect(&lg, 0, what);
    for (int r = 0; r < n_req; r++)
        for (int i = 0; i < per; i++)
            ck_assert_msg(tok[0][r * per + i] == tok[1][r * per + i],
                          "%s: V %d, top_k %d, top_p %g, token %d: device drew %d, CPU %d", what, V,
                          rules[r].top_k, (double)rules[r].top_p, i, tok[1][r * per + i],
                          tok[0][r * per + i]);
    for (int s = 0; s < 2; s++) {
        free(rq[s]);
        free(tok[s]);
    }
    b2_free(&lg);
    free(h);
}

START_TEST(greedy_tokens_and_guided_logits_equal_cpu)
{
    rule g[3] = {{1, 0}, {1, 0}, {1, 0.9f}};
    sample_case(4096, g, 3, 20, 1.5f, 0, "greedy V 4096");
    sample_case(1000, g, 3, 5, 3.0f, 1, "greedy with tied logits");
}
END_TEST

START_TEST(top_k_and_top_p_draws_equal_cpu)
{
    static const int Vs[] = {4096, 1000, 40000 /* over shared memory: the global-memory path */};
    for (size_t i = 0; i < sizeof Vs / sizeof Vs[0]; i++) {
        int V = Vs[i];
        rule r[8] = {{50, 0},   {0, 0.9f},  {100, 0.8f}, {0, 0},
                     {V, 0.5f}, {V - 1, 0}, {2, 0.99f},  {900, 0.96f}};
        char what[64];
        snprintf(what, sizeof what, "sampling V %d", V);
        sample_case(V, r, 8, 16, 1.0f, 0, what);
        snprintf(what, sizeof what, "sampling V %d, tied logits", V);
        sample_case(V, r, 8, 4, 1.0f, 1, what);
    }
}
END_TEST

/* ---- quantiser and decoder ops ------------------------------------------------------------------- */

START_TEST(upsample_downsample_and_transpose_match_cpu)
{
    static const int sz[][4] = {
        {4, 4, 16, 16}, {1, 1, 16, 16}, {13, 13, 16, 16}, {16, 16, 16, 16}, {5, 7, 12, 9}};
    for (size_t s = 0; s < sizeof sz / sizeof sz[0]; s++) {
        int hi = sz[s][0], wi = sz[s][1], ho = sz[s][2], wo = sz[s][3], planes = 5;
        buf2 src = b2_rand((size_t)planes * hi * wi, 1, 0), dst = b2_new((size_t)planes * ho * wo);
        BOTH(upsample_bicubic, P(dst), P(src), planes, hi, wi, ho, wo);
        expect(&dst, TOL, "upsample_bicubic");
        buf2 down = b2_new((size_t)planes * hi * wi);
        BOTH(area_downsample, P(down), P(dst), planes, ho, wo, hi, wi);
        expect(&down, TOL, "area_downsample");
        buf2 tr = b2_new((size_t)planes * ho * wo);
        BOTH(transpose, P(tr), P(dst), 1, planes, ho * wo);
        expect(&tr, 0, "transpose");
        BOTH(transpose, P(tr), P(dst), planes, ho, wo); /* each plane on its own */
        expect(&tr, 0, "transpose of planes");
        BOTH(upsample_nearest2x, P(dst), P(src), 1, hi, wi);
        expect_n(&dst, (size_t)4 * hi * wi, 0, "upsample_nearest2x");
        b2_free(&src);
        b2_free(&dst);
        b2_free(&down);
        b2_free(&tr);
    }
    buf2 src = b2_rand(3 * 16 * 16, 1, 0), d1 = b2_new(3 * 7 * 3);
    BOTH(area_downsample, P(d1), P(src), 3, 16, 16, 7, 3);
    expect(&d1, TOL, "area_downsample 16x16 to 7x3");
    b2_free(&src);
    b2_free(&d1);
}
END_TEST

START_TEST(conv2d_matches_cpu)
{
    static const int cs[][6] = {/* N, cin, H, W, cout, k */
                                {2, 5, 9, 11, 7, 3},
                                {2, 5, 9, 11, 7, 1},
                                {1, 64, 32, 32, 32, 3},
                                {1, 32, 64, 48, 3, 3},
                                {1, 3, 1, 1, 4, 3}};
    for (size_t s = 0; s < sizeof cs / sizeof cs[0]; s++) {
        int N = cs[s][0], cin = cs[s][1], H = cs[s][2], W = cs[s][3], cout = cs[s][4], k = cs[s][5];
        buf2 x = b2_rand((size_t)N * cin * H * W, 1, 0),
             w = b2_rand((size_t)cout * cin * k * k, 0.3f, 0), b = b2_rand((size_t)cout, 1, 0),
             y = b2_new((size_t)N * cout * H * W);
        BOTH(conv2d, P(y), P(x), P(w), P(b), N, cin, H, W, cout, k);
        expect(&y, TOL, "conv2d with bias");
        BOTH(conv2d, P(y), P(x), P(w), NULL, N, cin, H, W, cout, k);
        expect(&y, TOL, "conv2d without bias");
        b2_free(&x);
        b2_free(&w);
        b2_free(&b);
        b2_free(&y);
    }
}
END_TEST

START_TEST(group_norm_matches_cpu)
{
    static const int gs[][3] = {{2, 64, 50}, {1, 32, 4096}, {1, 96, 256}};
    for (size_t s = 0; s < sizeof gs / sizeof gs[0]; s++) {
        int N = gs[s][0], C = gs[s][1], HW = gs[s][2];
        buf2 x = b2_rand((size_t)N * C * HW, 2, 1.5f), y = b2_new((size_t)N * C * HW),
             g = b2_rand((size_t)C, 1, 1), b = b2_rand((size_t)C, 1, 0);
        for (int silu = 0; silu < 2; silu++) {
            BOTH(group_norm, P(y), P(x), P(g), P(b), N, C, HW, 32, 1e-6f, silu);
            expect(&y, TOL, silu ? "group_norm + silu" : "group_norm");
        }
        b2_free(&x);
        b2_free(&y);
        b2_free(&g);
        b2_free(&b);
    }
}
END_TEST

START_TEST(spatial_attention_matches_cpu)
{
    static const int as[][3] = {{2, 32, 64}, {1, 64, 256}, {1, 8, 3}};
    for (size_t s = 0; s < sizeof as / sizeof as[0]; s++) {
        int N = as[s][0], C = as[s][1], HW = as[s][2];
        buf2 qkv = b2_rand((size_t)N * 3 * C * HW, 1, 0), out = b2_new((size_t)N * C * HW);
        BOTH(spatial_attention, P(out), P(qkv), N, C, HW);
        expect(&out, TOL, "spatial_attention");
        b2_free(&qkv);
        b2_free(&out);
    }
}
END_TEST

/* Launches the device made for one call of the decoder's ops (run by `run` on g_dut). */
static uint64_t launches_of(void (*run)(int N, void *ctx), int N, void *ctx)
{
    vs_rt_counters a, b;
    g_dut->ops->counters(g_dut, &a);
    run(N, ctx);
    sync_ok();
    g_dut->ops->counters(g_dut, &b);
    return b.launches - a.launches;
}

typedef struct {
    buf2 x, w, b, y, qkv, out;
    int cin, H, W, cout, k, bias;
} dec_args;

static void run_conv(int N, void *ctx)
{
    dec_args *a = ctx;
    g_dut->ops->conv2d(g_dut, a->y.dut, a->x.dut, a->w.dut, a->bias ? a->b.dut : NULL, N, a->cin,
                       a->H, a->W, a->cout, a->k);
}

static void run_attn(int N, void *ctx)
{
    dec_args *a = ctx;
    g_dut->ops->spatial_attention(g_dut, a->out.dut, a->qkv.dut, N, a->cin, a->H * a->W);
}

static void run_gn(int N, void *ctx)
{
    dec_args *a = ctx;
    g_dut->ops->group_norm(g_dut, a->y.dut, a->x.dut, a->b.dut, a->b.dut, N, a->cin, a->H * a->W,
                           a->cin / 2, 1e-6f, 1);
}

/* The decoder's ops take all the images that finish in a step in one call, and the device work
 * they issue does not grow with that number: one cuDNN call per convolution (two at most, when
 * its algorithm cannot fuse the bias), three launches per spatial attention, one GroupNorm+SiLU.
 * The results for N images are those of N = 1 applied to each (conv2d_matches_cpu checks them
 * against the CPU). */
START_TEST(decoder_ops_launch_the_same_work_for_one_image_or_many)
{
    if (g_self)
        return; /* counters: a device only */
    enum { NMAX = 5 };
    static const int cs[][5] = {{8, 6, 7, 4, 3}, {8, 6, 7, 4, 1}}; /* cin, H, W, cout, k */
    for (size_t s = 0; s < sizeof cs / sizeof cs[0]; s++) {
        dec_args a = {0};
        a.cin = cs[s][0], a.H = cs[s][1], a.W = cs[s][2], a.cout = cs[s][3], a.k = cs[s][4];
        size_t HW = (size_t)a.H * a.W;
        a.x = b2_rand(NMAX * a.cin * HW, 1, 0);
        a.w = b2_rand((size_t)a.cout * a.cin * a.k * a.k, 0.3f, 0);
        a.b = b2_rand((size_t)(a.cout > a.cin ? a.cout : a.cin), 1, 0);
        a.y = b2_new(NMAX * (a.cout > a.cin ? a.cout : a.cin) * HW);
        a.qkv = b2_rand(NMAX * 3 * a.cin * HW, 1, 0);
        a.out = b2_new(NMAX * a.cin * HW);
        for (a.bias = 0; a.bias < 2; a.bias++) {
            uint64_t one = launches_of(run_conv, 1, &a), many = launches_of(run_conv, NMAX, &a);
            ck_assert_msg(one == many && one >= 1 && one <= 2,
                          "conv2d k %d%s: %llu launches for 1 image, %llu for %d", a.k,
                          a.bias ? " with bias" : "", (unsigned long long)one,
                          (unsigned long long)many, NMAX);
        }
        uint64_t one = launches_of(run_attn, 1, &a), many = launches_of(run_attn, NMAX, &a);
        ck_assert_msg(one == 3 && many == 3, "spatial_attention: %llu launches for 1 image, %llu for %d",
                      (unsigned long long)one, (unsigned long long)many, NMAX);
        one = launches_of(run_gn, 1, &a), many = launches_of(run_gn, NMAX, &a);
        ck_assert_msg(one == 1 && many == 1, "group_norm + silu: %llu launches for 1 image, %llu for %d",
                      (unsigned long long)one, (unsigned long long)many, NMAX);
        /* N images in one call equal N calls of one image, bit for bit */
        size_t per = (size_t)a.cout * HW;
        float *all = malloc(NMAX * per * sizeof(float)), *each = malloc(per * sizeof(float));
        ck_assert(all && each);
        run_conv(NMAX, &a);
        sync_ok();
        g_dut->ops->download(g_dut, all, a.y.dut, NMAX * per * sizeof(float));
        for (int n = 0; n < NMAX; n++) {
            g_dut->ops->conv2d(g_dut, a.y.dut, a.x.dut + (size_t)n * a.cin * HW, a.w.dut, a.b.dut,
                               1, a.cin, a.H, a.W, a.cout, a.k);
            g_dut->ops->download(g_dut, each, a.y.dut, per * sizeof(float));
            ck_assert_msg(memcmp(each, all + n * per, per * sizeof(float)) == 0,
                          "conv2d k %d: image %d of a batch of %d differs from its own decode", a.k,
                          n, NMAX);
        }
        free(all);
        free(each);
        buf2 *bs[] = {&a.x, &a.w, &a.b, &a.y, &a.qkv, &a.out};
        for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++)
            b2_free(bs[i]);
    }
}
END_TEST

/* ---- whole models through the CLI's driver -------------------------------------------------- */

/* What one run of n images produced: 8-bit RGB [H·W·3], tokens [L], unit floats [3·H·W], and
 * its phase times and device counters. */
typedef struct {
    int n, side, L;
    uint8_t *rgb[16];
    int32_t *tok[16];
    float *unit[16];
    vs_srv_gen_times times;
} gen_out;

static void gen_out_free(gen_out *o)
{
    for (int i = 0; i < o->n; i++) {
        free(o->rgb[i]);
        free(o->tok[i]);
        free(o->unit[i]);
    }
    memset(o, 0, sizeof *o);
}

/* Runs reqs[0..n) on `be` under `pol` (NULL: the full cache) in a KV pool in the backend's memory
 * that holds the full cache; logits (NULL, or [n] host [L][V]) receive every scale's guided
 * logits, forced (NULL, or [n] host [L]) forces the tokens. */
static void gen_run(vs_rt_backend *be, const vs_rt_model *m, const vs_srv_gen_req *reqs, int n,
                    const vs_kv_policy *pol, float *const *logits, const int32_t *const *forced,
                    int decode, gen_out *o)
{
    const vs_rt_config *c = &m->cfg;
    vs_err err = {0};
    ck_assert_int_le(n, 16);
    memset(o, 0, sizeof *o);
    o->n = n;
    o->side = c->image_size;
    o->L = c->scale_offset[c->n_scales];
    size_t HW = (size_t)o->side * o->side;
    for (int i = 0; i < n; i++) {
        o->rgb[i] = malloc(3 * HW);
        o->tok[i] = malloc((size_t)o->L * sizeof(int32_t));
        o->unit[i] = malloc(3 * HW * sizeof(float));
        ck_assert(o->rgb[i] && o->tok[i] && o->unit[i]);
    }
    vs_rt_engine *e = NULL;
    ck_assert_msg(vs_rt_engine_new(m, be, n, &e, &err) == VS_OK, "%s", err.msg);
    vs_kv_allocator al = {be, vs_rt_backend_alloc_raw, vs_rt_backend_free_raw};
    /* pages in the backend's KV type (BF16 in BF16 mode); a page per head of each layer */
    vs_kv_geometry g = vs_kv_geometry_of(c, 16, be->kv_elem_bytes);
    size_t page_bytes = vs_kv_page_bytes(g) * (size_t)c->num_heads;
    size_t pages = 2 * (size_t)c->depth * (((size_t)o->L + 15) / 16); /* one image, full cache */
    vs_kv_pool *pool = NULL;
    ck_assert_msg(vs_kv_pool_init(pages * (size_t)n * page_bytes, g,
                                  be->host_memory ? NULL : &al, &pool, &err) == VS_OK,
                  "%s", err.msg);
    vs_srv_gen_opts go = {.policy = pol, .unit = decode ? o->unit : NULL, .logits = logits,
                          .forced_tokens = forced};
    ck_assert_msg(vs_srv_gen_run_opts(e, pool, reqs, n, decode ? o->rgb : NULL, o->tok, &o->times,
                                      &go, &err) == VS_OK,
                  "%s", err.msg);
    vs_kv_pool_free(pool);
    vs_rt_engine_free(e);
}

static void gen_on(vs_rt_backend *be, const vs_rt_model *m, const vs_srv_gen_req *reqs, int n,
                   gen_out *o)
{
    gen_run(be, m, reqs, n, NULL, NULL, NULL, 1, o);
}

/* The KV step's compression with the pages and qkv in device memory (tests/kvstep_case.h). */
START_TEST(kv_compression_leaves_each_heads_selected_tokens_in_device_pages)
{
    kvstep_run(g_dut);
}
END_TEST

START_TEST(a_row_with_unequal_heads_draws_exactly_its_simulated_peak_of_device_pages)
{
    kvstep_peak_is_exact(g_dut);
}
END_TEST

/* KV compression runs on the device (kv_compact): under every compressing policy the engine's
 * steps wait for the device no more often than under full (2 per step: the sampled tokens and the
 * step's end) and no K or V crosses the bus; the compaction launches show it ran. */
START_TEST(device_compression_adds_no_sync_and_moves_no_kv_bytes)
{
    if (!g_dut->ops->counters)
        return; /* CHECK_CUDA_SELFTEST: the CPU backend has no device */
    vs_err err = {0};
    vs_rt_model *m = NULL;
    ck_assert_msg(vs_rt_model_load(MODEL, &m, &err) == VS_OK, "%s", err.msg);
    vs_srv_gen_req reqs[2] = {{1, 7, 1.5f, 900, 0.96f}, {4, 8, 1.5f, 1, 0.0f}};
    gen_out full;
    gen_run(g_dut, m, reqs, 2, NULL, NULL, NULL, 0, &full); /* tokens only: the steps' counters */
    const vs_rt_counters *f = &full.times.device;
    ck_assert_int_gt(full.times.steps, 0);
    ck_assert_uint_le(f->syncs, 2 * (uint64_t)full.times.steps);
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++) {
        if (!vs_kv_policy_def_of((vs_kv_policy_kind)k)->compresses)
            continue;
        char path[4096];
        const char *file = vs_kv_policy_budget_file((vs_kv_policy_kind)k, MODEL, NULL, path, sizeof path);
        vs_kv_policy *pol = NULL;
        ck_assert_msg(vs_kv_policy_new((vs_kv_policy_kind)k, 0.2, &m->cfg, file, &pol, &err) == VS_OK,
                      "%s", err.msg);
        gen_out o;
        gen_run(g_dut, m, reqs, 2, pol, NULL, NULL, 0, &o);
        const vs_rt_counters *d = &o.times.device;
        printf("check_cuda: %s 0.2, 2 images: %.1f syncs and %.1f launches per step (full: %.1f, "
               "%.1f), KV bytes %llu to and %llu from the device\n",
               vs_kv_policy_name((vs_kv_policy_kind)k), (double)d->syncs / o.times.steps,
               (double)d->launches / o.times.steps, (double)f->syncs / full.times.steps,
               (double)f->launches / full.times.steps, (unsigned long long)d->kv_h2d_bytes,
               (unsigned long long)d->kv_d2h_bytes);
        ck_assert_int_eq(o.times.steps, full.times.steps);
        ck_assert_uint_eq(d->syncs, f->syncs);
        ck_assert_uint_eq(d->kv_h2d_bytes, 0);
        ck_assert_uint_eq(d->kv_d2h_bytes, 0);
        ck_assert_uint_gt(d->launches, f->launches); /* the compactions */
        gen_out_free(&o);
        vs_kv_policy_free(pol);
    }
    gen_out_free(&full);
    vs_rt_model_free(m);
}
END_TEST

/* ScaleKV and HACK end to end on the tiny fixture: the GPU (FP32) and the CPU compress the same
 * way (the same plans; scores with the same products and sums). The attention before it sums in
 * another order, so a near tie may keep another token; at least 90% of the tokens must agree (a
 * broken compaction keeps garbage K/V and agrees on about 1/vocab of them). */
START_TEST(tiny_fixture_under_scalekv_and_hack_gives_the_cpus_tokens)
{
    vs_err err = {0};
    vs_rt_model *m = NULL;
    ck_assert_msg(vs_rt_model_load(MODEL, &m, &err) == VS_OK, "%s", err.msg);
    const vs_rt_config *c = &m->cfg;
    const vs_kv_policy_kind kinds[2] = {VS_KV_POLICY_SCALEKV, VS_KV_POLICY_HACK};
    for (int k = 0; k < 2; k++) {
        char path[4096];
        const char *file = vs_kv_policy_budget_file(kinds[k], MODEL, NULL, path, sizeof path);
        vs_kv_policy *pol = NULL;
        ck_assert_msg(vs_kv_policy_new(kinds[k], 0.2, c, file, &pol, &err) == VS_OK, "%s", err.msg);
        vs_srv_gen_req reqs[2] = {{1, 7, 1.5f, 1, 0.0f}, {4, 8, 1.5f, 1, 0.0f}};
        gen_out gpu, cpu;
        gen_run(g_dut, m, reqs, 2, pol, NULL, NULL, 0, &gpu);
        gen_run(g_ref, m, reqs, 2, pol, NULL, NULL, 0, &cpu);
        int same = 0, L = c->scale_offset[c->n_scales];
        for (int i = 0; i < 2; i++)
            for (int t = 0; t < L; t++)
                same += gpu.tok[i][t] == cpu.tok[i][t];
        printf("check_cuda: %s 0.2 on the tiny fixture: %d of %d tokens as on the CPU\n",
               vs_kv_policy_name(kinds[k]), same, 2 * L);
        ck_assert_msg(same >= 0.9 * 2 * L, "only %d of %d tokens equal the CPU's under %s", same,
                      2 * L, vs_kv_policy_name(kinds[k]));
        gen_out_free(&gpu);
        gen_out_free(&cpu);
        vs_kv_policy_free(pol);
    }
    vs_rt_model_free(m);
}
END_TEST

START_TEST(tiny_fixture_greedy_tokens_and_image_match_the_reference_in_fp32)
{
    vs_err err = {0};
    vs_rt_model *m = NULL;
    st_file gold;
    ck_assert_msg(vs_rt_model_load(MODEL, &m, &err) == VS_OK, "%s", err.msg);
    ck_assert_int_eq(st_open(&gold, GOLDEN), 0);
    const vs_rt_config *c = &m->cfg;
    const int32_t *labels = st_get(&gold, "labels", NULL);
    ck_assert_ptr_nonnull(labels);
    vs_srv_gen_req reqs[2];
    for (int i = 0; i < 2; i++)
        reqs[i] = (vs_srv_gen_req){labels[i], (uint64_t)i, 1.5f, 1, 0.0f};
    gen_out o;
    gen_on(g_dut, m, reqs, 2, &o);
    int HW = o.side * o.side;
    for (int s = 0; s < c->n_scales; s++) {
        char name[32];
        snprintf(name, sizeof name, "tokens.%d", s);
        const int32_t *gt = st_get(&gold, name, NULL);
        ck_assert_ptr_nonnull(gt);
        int nt = c->patch_nums[s] * c->patch_nums[s];
        for (int i = 0; i < 2; i++)
            for (int t = 0; t < nt; t++)
                ck_assert_msg(o.tok[i][c->scale_offset[s] + t] == gt[i * nt + t],
                              "image %d scale %d token %d: %d, reference %d", i, s, t,
                              o.tok[i][c->scale_offset[s] + t], gt[i * nt + t]);
    }
    const float *gi = st_get(&gold, "image", NULL);
    ck_assert_ptr_nonnull(gi);
    for (int i = 0; i < 2; i++) {
        int worst = 0;
        for (int p = 0; p < HW; p++)
            for (int ch = 0; ch < 3; ch++) {
                int want = (int)lrintf(255.0f * gi[((size_t)i * 3 + ch) * HW + p]);
                int d = abs((int)o.rgb[i][(size_t)p * 3 + ch] - want);
                worst = d > worst ? d : worst;
            }
        ck_assert_msg(worst <= 1,
                      "image %d: a pixel differs by %d/255 from the reference (limit 1)", i, worst);
    }
    gen_out_free(&o);
    st_close(&gold);
    vs_rt_model_free(m);
}
END_TEST

/* Infinity's BSQ VAE decoder (runtime/infinity.h) on the device, its weights uploaded and rebased
 * as an engine does: the fixture's two latents, decoded together, give the reference's images
 * within 1/255 and the CPU backend's within FP32 rounding. */
START_TEST(infinity_decoder_on_the_device_gives_the_references_images)
{
    enum { HW = 256 * 256, LAT = 32 * 16 * 16 };
    vs_err err = {0};
    vs_rt_infinity *m = NULL;
    st_file gold;
    ck_assert_msg(vs_rt_infinity_load(INF_MODEL, &m, &err) == VS_OK, "%s", err.msg);
    ck_assert_int_eq(st_open(&gold, INF_GOLDEN), 0);
    float *arena = g_dut->ops->alloc(g_dut, m->data_bytes);
    ck_assert_ptr_nonnull(arena);
    g_dut->ops->upload(g_dut, arena, m->data, m->data_bytes);
    vs_rt_weights w = m->w;
    vs_rt_vae_rebase(&m->dec, &w, m->data, arena);
    const float *lat = st_get(&gold, "gen.summed_codes", NULL), *gi = st_get(&gold, "gen.image", NULL);
    ck_assert(lat && gi);
    float *unit[2][2];
    vs_rt_backend *side[2] = {g_dut, g_ref};
    for (int k = 0; k < 2; k++) {
        vs_rt_backend *be = side[k];
        vs_rt_vae *v = NULL;
        ck_assert_msg(vs_rt_vae_new(&m->dec, be, k ? &m->w : &w, 2, &v, &err) == VS_OK, "%s", err.msg);
        float *dl[2];
        for (int i = 0; i < 2; i++) {
            unit[k][i] = malloc(3 * HW * sizeof(float));
            dl[i] = be->ops->alloc(be, LAT * sizeof(float));
            be->ops->upload(be, dl[i], lat + (size_t)i * LAT, LAT * sizeof(float));
        }
        ck_assert_msg(vs_rt_vae_decode(v, (const float *const *)dl, 2, NULL, unit[k], &err) == VS_OK, "%s", err.msg);
        for (int i = 0; i < 2; i++)
            be->ops->free(be, dl[i]);
        vs_rt_vae_free(v);
    }
    double ref = 0, cpu = 0;
    for (int i = 0; i < 2; i++)
        for (int e = 0; e < 3 * HW; e++) {
            ref = fmax(ref, fabs(unit[0][i][e] - gi[(size_t)i * 3 * HW + e]));
            cpu = fmax(cpu, fabs(unit[0][i][e] - unit[1][i][e]));
        }
    ck_assert_msg(ref <= 1.0 / 255, "the device's images differ from the reference's by %g (limit 1/255)", ref);
    ck_assert_msg(cpu <= 1e-4, "the device's images differ from the CPU's by %g", cpu);
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 2; i++)
            free(unit[k][i]);
    g_dut->ops->free(g_dut, arena);
    st_close(&gold);
    vs_rt_infinity_free(m);
}
END_TEST

/* ---- BF16 mode ------------------------------------------------------------------------------------ */

/* The backend in BF16 mode: CUDA with fp32 = 0 (with CHECK_CUDA_SELFTEST, a CPU backend, which
 * has no gemm_weights and stays FP32: the checks then test themselves). */
static vs_rt_backend *bf16_backend(void)
{
    vs_rt_backend *be = NULL;
    vs_err err = {0};
    vs_status st =
        g_self ? vs_rt_backend_cpu_new(2, &be, &err) : vs_rt_backend_cuda_new(0, &be, &err);
    ck_assert_msg(st == VS_OK, "the BF16-mode backend did not start: %s", err.msg);
    return be;
}

/* BF16 KV pages: attention_case on the BF16-mode backend (see there). */
START_TEST(bf16_pages_attention_matches_cpu_and_kv_write_rounds_to_nearest_even)
{
    attention_case(0, 1);
    attention_case(1, 1);
}
END_TEST

/* The tensor-core attention of BF16 mode over head_dim 16, 32 and 64, pages of 4 and 16 tokens,
 * heads holding different counts (empty, partial pages, up to 1400 keys), six rows of 1 to 100
 * queries (partial tiles of queries and keys), and a batch with no cached keys (a first scale):
 * within expect_bf16_attention's limit everywhere, and beyond FP32's tolerance somewhere (the
 * rounded kernel is the one that ran: k_attention would be within it). */
START_TEST(bf16_attention_on_tensor_cores_is_within_bf16_rounding_of_fp32)
{
    vs_rt_backend *keep = g_dut;
    g_dut = bf16_backend();
    static const int cases[][4] = {/* H, d, PT, cached (tb_tokens' unequal) */
                                   {4, 16, 16, 1}, {2, 32, 16, 0}, {2, 64, 16, 1},
                                   {3, 32, 4, 1},  {2, 64, 16, 2}, {1, 16, 4, 2}};
    for (size_t s = 0; s < sizeof cases / sizeof cases[0]; s++) {
        tbatch t;
        tb_init_pages(&t, cases[s][0], cases[s][1], cases[s][3], cases[s][2]);
        round_pages(&t.arena);
        int C = t.C, T = t.n_tok;
        buf2 qkv = b2_rand((size_t)T * 3 * C, 1, 0), out = b2_new((size_t)T * C);
        for (int l = 0; l < TB_DEPTH; l++) {
            float scale = l == 0 ? 1.0f / sqrtf((float)t.d) : 0.5f;
            BOTH(attention, P(out), P(qkv), PB(t), l, t.H, t.d, scale);
            double fp32 = expect_bf16_attention(&t, &qkv, &out, l, scale, "BF16 attention");
            if (!g_self)
                ck_assert_msg(fp32 > 1, "BF16 attention (head_dim %d) is within FP32's tolerance: "
                              "the tensor-core kernel did not run", t.d);
        }
        b2_free(&qkv);
        b2_free(&out);
        tb_free(&t);
    }
    vs_rt_backend_free(g_dut);
    g_dut = keep;
}
END_TEST

/* The KV step's compression on BF16 device pages (tests/kvstep_case.h: the selection scores the
 * rounded cached keys, and every slot holds exactly its token's K and V rounded to BF16). */
START_TEST(kv_compression_leaves_each_heads_selected_tokens_in_bf16_device_pages)
{
    vs_rt_backend *bf = bf16_backend();
    ck_assert_int_eq(bf->kv_elem_bytes, g_self ? 4 : 2);
    kvstep_run(bf);
    kvstep_peak_is_exact(bf);
    vs_rt_backend_free(bf);
}
END_TEST

/* A page of the BF16-mode backend is half the FP32 one's, so every policy's bytes per image on
 * the tiny fixture halve (the pages per image do not depend on the element type). */
START_TEST(bf16_pages_halve_the_kv_bytes_per_image_of_every_policy)
{
    vs_err err = {0};
    vs_rt_model *m = NULL;
    ck_assert_msg(vs_rt_model_load(MODEL, &m, &err) == VS_OK, "%s", err.msg);
    const vs_rt_config *c = &m->cfg;
    vs_rt_backend *bf = bf16_backend();
    size_t fp32_page = vs_kv_page_bytes(vs_kv_geometry_of(c, 16, g_dut->kv_elem_bytes));
    size_t bf16_page = vs_kv_page_bytes(vs_kv_geometry_of(c, 16, bf->kv_elem_bytes));
    ck_assert_int_eq(g_dut->kv_elem_bytes, 4);
    ck_assert_uint_eq(fp32_page, (size_t)2 * 16 * c->head_dim * sizeof(float));
    ck_assert_uint_eq(bf16_page * (g_self ? 1 : 2), fp32_page);
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++) {
        vs_kv_policy *p = NULL;
        char path[4096];
        const char *file = vs_kv_policy_budget_file((vs_kv_policy_kind)k, MODEL, NULL, path, sizeof path);
        if (vs_kv_policy_new((vs_kv_policy_kind)k, 0.2, c, file, &p, &err) != VS_OK)
            continue; /* a policy that needs a calibration file the fixture lacks */
        size_t pages = vs_kv_policy_peak_pages_per_image(p, 16);
        ck_assert_uint_gt(pages, 0);
        ck_assert_uint_eq(pages * bf16_page * (g_self ? 1 : 2), pages * fp32_page);
        vs_kv_policy_free(p);
    }
    vs_rt_backend_free(bf);
    vs_rt_model_free(m);
}
END_TEST

/* y = x·wᵀ + bias on the CPU backend from host arrays, into host y. */
static void cpu_linear_host(float *y, const float *x, const float *w, const float *bias, int M,
                            int N, int K)
{
    buf2 bx = b2_from(x, (size_t)M * K), bw = b2_from(w, (size_t)N * K),
         bb = b2_from(bias, (size_t)N), by = b2_new((size_t)M * N);
    g_ref->ops->linear(g_ref, by.ref, bx.ref, bw.ref, bb.ref, M, N, K);
    sync_ok();
    g_ref->ops->download(g_ref, y, by.ref, (size_t)M * N * sizeof(float));
    b2_free(&bx);
    b2_free(&bw);
    b2_free(&bb);
    b2_free(&by);
}

/* y = x·wᵀ + bias on `be` with w placed at a 256-byte offset inside its own allocation (the
 * engine's weights sit inside one arena); declared to gemm_weights when `declare`. The arena is
 * freed before returning, which must drop the BF16 copy. */
static void be_linear_host(vs_rt_backend *be, float *y, const float *x, const float *w,
                           const float *bias, int M, int N, int K, int declare)
{
    size_t nw = (size_t)N * K;
    float *arena = be->ops->alloc(be, (nw + 64) * sizeof(float));
    float *dx = be->ops->alloc(be, (size_t)M * K * sizeof(float));
    float *db = be->ops->alloc(be, (size_t)N * sizeof(float));
    float *dy = be->ops->alloc(be, (size_t)M * N * sizeof(float));
    ck_assert(arena && dx && db && dy);
    const float *dw = arena + 64;
    be->ops->upload(be, arena + 64, w, nw * sizeof(float));
    be->ops->upload(be, dx, x, (size_t)M * K * sizeof(float));
    be->ops->upload(be, db, bias, (size_t)N * sizeof(float));
    if (declare && be->ops->gemm_weights)
        be->ops->gemm_weights(be, arena, &dw, &nw, 1);
    be->ops->linear(be, dy, dx, dw, db, M, N, K);
    vs_err err = {0};
    ck_assert_msg(be->ops->sync(be, &err) == VS_OK, "%s", err.msg);
    be->ops->download(be, y, dy, (size_t)M * N * sizeof(float));
    be->ops->free(be, arena);
    be->ops->free(be, dx);
    be->ops->free(be, db);
    be->ops->free(be, dy);
    ck_assert_msg(be->ops->sync(be, &err) == VS_OK, "%s", err.msg);
}

typedef struct {
    double rms_err, rms_ref, worst; /* worst: max |d − r| / max(|r|, rms_ref) */
} diff_stats;

static diff_stats compare(const float *d, const float *r, size_t n)
{
    double se = 0, sr = 0;
    for (size_t i = 0; i < n; i++) {
        se += ((double)d[i] - r[i]) * ((double)d[i] - r[i]);
        sr += (double)r[i] * r[i];
    }
    diff_stats st = {sqrt(se / (double)n), sqrt(sr / (double)n), 0};
    for (size_t i = 0; i < n; i++) {
        double q = fabs((double)d[i] - r[i]) / fmax(fabs(r[i]), st.rms_ref);
        st.worst = q > st.worst ? q : st.worst;
    }
    return st;
}

START_TEST(bf16_linear_of_declared_weights_is_within_1e_2_of_fp32)
{
    static const int shapes[][3] = {
        {1, 70, 129}, {37, 300, 64}, {130, 1024, 256}, {64, 4096, 128}, {200, 512, 2048}};
    vs_rt_backend *bf = bf16_backend();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        size_t nx = (size_t)M * K, nw = (size_t)N * K, ny = (size_t)M * N;
        float *x = malloc(nx * sizeof(float)), *w = malloc(nw * sizeof(float)),
              *b = malloc((size_t)N * sizeof(float)), *xr = malloc(nx * sizeof(float)),
              *wr = malloc(nw * sizeof(float)), *y32 = malloc(ny * sizeof(float)),
              *yr = malloc(ny * sizeof(float)), *ybf = malloc(ny * sizeof(float));
        ck_assert(x && w && b && xr && wr && y32 && yr && ybf);
        for (size_t i = 0; i < nx; i++)
            xr[i] = bf16_round(x[i] = frand());
        for (size_t i = 0; i < nw; i++)
            wr[i] = bf16_round(w[i] = 0.2f * frand());
        for (int i = 0; i < N; i++)
            b[i] = frand();
        cpu_linear_host(y32, x, w, b, M, N, K);
        cpu_linear_host(yr, xr, wr, b, M, N, K);
        be_linear_host(bf, ybf, x, w, b, M, N, K, 1);

        diff_stats to32 = compare(ybf, y32, ny);
        printf("check_cuda: BF16 linear %dx%dx%d: RMS error %.2e of RMS %.3g (limit %.0e), worst "
               "element %.2e (limit %.0e)\n",
               M, N, K, to32.rms_err / to32.rms_ref, to32.rms_ref, BF16_RMS_TOL, to32.worst,
               BF16_ELEM_TOL);
        ck_assert_msg(to32.rms_err <= BF16_RMS_TOL * to32.rms_ref,
                      "BF16 linear %dx%dx%d: RMS error %.3g of RMS %.3g (limit %.0e)", M, N, K,
                      to32.rms_err, to32.rms_ref, BF16_RMS_TOL);
        ck_assert_msg(to32.worst <= BF16_ELEM_TOL,
                      "BF16 linear %dx%dx%d: an element is off by %.3g of max(|cpu|, rms) "
                      "(limit %.0e)",
                      M, N, K, to32.worst, BF16_ELEM_TOL);
        if (!g_self) {
            /* only the inputs round: against the CPU on BF16-rounded inputs it is FP32-exact */
            diff_stats tor = compare(ybf, yr, ny);
            ck_assert_msg(tor.worst <= TOL,
                          "BF16 linear %dx%dx%d is not the FP32 product of the BF16-rounded "
                          "inputs: worst element off by %.3g (limit %.0e); was the BF16 copy "
                          "used?",
                          M, N, K, tor.worst, TOL);
        }

        /* a new allocation (likely at the same address) with other weights, not declared: the
         * copy went with the freed arena, so linear uses these FP32 weights (TF32 allowed) */
        for (size_t i = 0; i < nw; i++)
            w[i] = -w[i] + 0.05f * frand();
        cpu_linear_host(y32, x, w, b, M, N, K);
        be_linear_host(bf, ybf, x, w, b, M, N, K, 0);
        diff_stats und = compare(ybf, y32, ny);
        ck_assert_msg(und.rms_err <= BF16_RMS_TOL * und.rms_ref && und.worst <= BF16_ELEM_TOL,
                      "undeclared weights after a freed arena %dx%dx%d: RMS error %.3g of %.3g, "
                      "worst %.3g: a stale BF16 copy was used?",
                      M, N, K, und.rms_err, und.rms_ref, und.worst);
        free(x);
        free(w);
        free(b);
        free(xr);
        free(wr);
        free(y32);
        free(yr);
        free(ybf);
    }
    vs_rt_backend_free(bf);
}
END_TEST

/* Teacher forcing: the FP32 run (g_dut) draws its tokens; the BF16 run is forced to the same
 * tokens (vs_rt_image.forced_tokens), so every scale of both runs sees identical inputs and the
 * guided logits differ only by BF16 arithmetic. The limits follow from BF16's precision:
 *   u = 2^-8, BF16's unit roundoff (8 significant bits, round to nearest);
 *   one rounding errs uniformly within half a unit in the last place: a relative RMS of
 *   u/√3 · 0.736 (0.736² = E[1/m²] over mantissas m log-uniform in [1, 2)) = 1.66e-3; a GEMM
 *   with both operands rounded has √2 times that, 2.35e-3 (the linear test above measures
 *   1.4–2.2e-3);
 *   the logits pass through 5·depth + 3 GEMMs with declared (BF16) weights, and each layer's
 *   attention in BF16 mode runs on tensor cores (k_attention_tc: both models' head_dim is a
 *   multiple of 16, asserted below), rounding q and k for Q·Kᵀ and p and v for P·V: two GEMMs
 *   with both operands rounded, so G = 5·depth + 3 + 2·depth (5·depth + 3 under
 *   CHECK_CUDA_SELFTEST, whose FP32 stand-in keeps FP32 pages and attention);
 *   fc1's bias, added in BF16 where fc1 writes its BF16 output, errs by at most the rounding of
 *   that output (which fc2 made anyway), so it stays within fc1's and fc2's share;
 *   independent roundings add in quadrature, so the expected relative RMS error is √G · 2.35e-3;
 *   BF16_GAIN = 2 allows for amplification through the normalisations and the residual stream.
 * Per scale: RMS(Δ) ≤ BF16_GAIN·√G·√(2/3)·u · RMS(fp32 logits), and every element within
 * BF16_ELEM_SIGMAS times that bound (a tail, not a typical error). With greedy FP32 draws, a
 * token whose BF16 argmax differs must have had an FP32 margin within twice the elementwise
 * bound: a wider margin flipped is an ordering error beyond precision. Every BF16 pixel must be
 * finite and in [0, 1]. A BF16 path multiplying the wrong weights or inputs is off by O(1). */
#define BF16_U (1.0 / 256.0)
#define BF16_GAIN 2.0
#define BF16_ELEM_SIGMAS 6.0

typedef struct {
    double worst_rms, worst_elem; /* relative to the limits: ≤ 1 passes */
    int flips, greedy_tokens;
} bf16_report;

static bf16_report bf16_teacher_forced(const char *path, const vs_srv_gen_req *reqs, int n)
{
    vs_err err = {0};
    vs_rt_model *m = NULL;
    ck_assert_msg(vs_rt_model_load(path, &m, &err) == VS_OK, "%s", err.msg);
    const vs_rt_config *c = &m->cfg;
    vs_rt_backend *bf = bf16_backend();
    int L = c->scale_offset[c->n_scales], V = c->vocab_size;
    if (!g_self)
        ck_assert_msg(c->head_dim % 16 == 0, "%s: head_dim %d is no multiple of 16, so its BF16 "
                      "attention is not the tensor-core kernel these limits count", path,
                      c->head_dim);
    int G = 5 * c->depth + 3 + (bf->kv_elem_bytes == 2 ? 2 * c->depth : 0);
    double rms_limit = BF16_GAIN * sqrt((double)G) * sqrt(2.0 / 3.0) * 0.736 * BF16_U;
    double elem_limit = BF16_ELEM_SIGMAS * rms_limit;
    float *lg32[16], *lgbf[16];
    for (int i = 0; i < n; i++) {
        lg32[i] = malloc((size_t)L * V * sizeof(float));
        lgbf[i] = malloc((size_t)L * V * sizeof(float));
        ck_assert(lg32[i] && lgbf[i]);
    }
    gen_out a, b;
    gen_run(g_dut, m, reqs, n, NULL, lg32, NULL, 1, &a);
    gen_run(bf, m, reqs, n, NULL, lgbf, (const int32_t *const *)a.tok, 1, &b);
    bf16_report rep = {0, 0, 0, 0};
    size_t npix = (size_t)3 * b.side * b.side;
    for (int i = 0; i < n; i++) {
        for (size_t p = 0; p < npix; p++)
            ck_assert_msg(isfinite(b.unit[i][p]) && b.unit[i][p] >= 0.0f && b.unit[i][p] <= 1.0f,
                          "%s, BF16 image %d: value %zu is %g (want finite, in [0, 1])", path, i,
                          p, (double)b.unit[i][p]);
        for (int t = 0; t < L; t++)
            ck_assert_msg(b.tok[i][t] == a.tok[i][t], "%s image %d: token %d was not forced", path,
                          i, t);
        for (int s = 0; s < c->n_scales; s++) {
            size_t o = (size_t)c->scale_offset[s] * V, cnt = (size_t)c->patch_nums[s] * c->patch_nums[s] * V;
            const float *r = lg32[i] + o, *d = lgbf[i] + o;
            double sr = 0, se = 0, worst = 0;
            for (size_t k = 0; k < cnt; k++) {
                sr += (double)r[k] * r[k];
                se += ((double)d[k] - r[k]) * ((double)d[k] - r[k]);
                worst = fmax(worst, fabs((double)d[k] - r[k]));
            }
            double rms = sqrt(sr / (double)cnt), erms = sqrt(se / (double)cnt);
            ck_assert_msg(rms > 0 && isfinite(erms), "%s image %d scale %d: logits RMS %g, error %g",
                          path, i, s, rms, erms);
            rep.worst_rms = fmax(rep.worst_rms, erms / (rms_limit * rms));
            rep.worst_elem = fmax(rep.worst_elem, worst / (elem_limit * rms));
            ck_assert_msg(erms <= rms_limit * rms,
                          "%s image %d scale %d: BF16 logits off by RMS %.3g of RMS %.3g (limit "
                          "%.3g relative)",
                          path, i, s, erms, rms, rms_limit);
            ck_assert_msg(worst <= elem_limit * rms,
                          "%s image %d scale %d: a BF16 logit is off by %.3g, logits RMS %.3g "
                          "(limit %.3g relative)",
                          path, i, s, worst, rms, elem_limit);
            if (reqs[i].top_k != 1)
                continue;
            for (int t = 0; t < c->patch_nums[s] * c->patch_nums[s]; t++) {
                const float *rt = r + (size_t)t * V, *dt = d + (size_t)t * V;
                int want = a.tok[i][c->scale_offset[s] + t], got = 0;
                for (int v = 1; v < V; v++)
                    got = dt[v] > dt[got] ? v : got;
                rep.greedy_tokens++;
                if (got == want)
                    continue;
                rep.flips++;
                double margin = (double)rt[want] - rt[got];
                ck_assert_msg(margin <= 2 * elem_limit * rms,
                              "%s image %d scale %d token %d: BF16 picks %d over FP32's %d, whose "
                              "FP32 margin %.3g is beyond BF16 precision (%.3g)",
                              path, i, s, t, got, want, margin, 2 * elem_limit * rms);
            }
        }
    }
    printf("check_cuda: %s, BF16 vs FP32 teacher-forced logits: worst scale at %.2f of the RMS "
           "limit (%.3g relative), worst element at %.2f of its limit; greedy argmax flipped %d "
           "of %d tokens, each within precision\n",
           path, rep.worst_rms, rms_limit, rep.worst_elem, rep.flips, rep.greedy_tokens);
    gen_out_free(&a);
    gen_out_free(&b);
    for (int i = 0; i < n; i++) {
        free(lg32[i]);
        free(lgbf[i]);
    }
    vs_rt_backend_free(bf);
    vs_rt_model_free(m);
    return rep;
}

/* The BF16-mode backend with gemm_inputs hidden: every linear converts its x to BF16 in a launch of
 * its own, as before the engine's GEMM inputs were held in BF16. */
static vs_rt_backend_ops g_nodecl_ops;

static vs_rt_backend *bf16_backend_converting(void)
{
    vs_rt_backend *be = bf16_backend();
    g_nodecl_ops = *be->ops;
    g_nodecl_ops.gemm_inputs = NULL;
    be->ops = &g_nodecl_ops;
    return be;
}

/* GEMM inputs held in BF16 (gemm_inputs: silu, adaln, attention and fc1 write them, the linears
 * read them) are what converting each linear's FP32 x gives: the same round to nearest even of
 * the same FP32 values. With fc1's biases exact in BF16 (the one bias that is rounded: a linear
 * into BF16 activations adds the BF16 copy) the teacher-forced logits agree with the converting
 * backend's to far below BF16 precision (a buffer read as the wrong type or stale is off by
 * O(1)); the emulated device gives the same bits, a GPU's cuBLASLt may pick another kernel for a
 * BF16 output, so 1/64 of the BF16 limit is allowed. */
START_TEST(bf16_gemm_inputs_give_the_logits_of_converting_each_linears_input)
{
    vs_err err = {0};
    vs_rt_model *m = NULL;
    ck_assert_msg(vs_rt_model_load(MODEL, &m, &err) == VS_OK, "%s", err.msg);
    const vs_rt_config *c = &m->cfg;
    for (int l = 0; l < c->depth; l++)
        for (int i = 0; i < c->ffn_dim; i++)
            m->w.blocks[l].fc1_b[i] = bf16_round(m->w.blocks[l].fc1_b[i]);
    vs_rt_backend *held = bf16_backend(), *conv = bf16_backend_converting();
    int L = c->scale_offset[c->n_scales], V = c->vocab_size;
    vs_srv_gen_req reqs[2] = {{3, 0, 1.5f, 1, 0.0f}, {6, 5, 1.5f, 900, 0.96f}};
    float *lh[2], *lc[2];
    for (int i = 0; i < 2; i++) {
        lh[i] = malloc((size_t)L * V * sizeof(float));
        lc[i] = malloc((size_t)L * V * sizeof(float));
        ck_assert(lh[i] && lc[i]);
    }
    gen_out a, b;
    gen_run(held, m, reqs, 2, NULL, lh, NULL, 0, &a);
    gen_run(conv, m, reqs, 2, NULL, lc, (const int32_t *const *)a.tok, 0, &b);
    size_t same = 0, all = (size_t)2 * L * V;
    double worst = 0, sr = 0;
    for (int i = 0; i < 2; i++)
        for (size_t k = 0; k < (size_t)L * V; k++) {
            same += lh[i][k] == lc[i][k];
            worst = fmax(worst, fabs((double)lh[i][k] - lc[i][k]));
            sr += (double)lc[i][k] * lc[i][k];
        }
    double rms = sqrt(sr / (double)all);
    double limit = BF16_GAIN * sqrt(5.0 * c->depth + 3) * sqrt(2.0 / 3.0) * 0.736 * BF16_U / 64;
    printf("check_cuda: BF16 GEMM inputs vs converting each linear's x: %zu of %zu logits "
           "identical, worst difference %.3g of RMS %.3g (limit %.3g relative)\n",
           same, all, worst, rms, limit);
    ck_assert_msg(rms > 0 && worst <= limit * rms,
                  "GEMM inputs held in BF16 change a logit by %.3g (RMS %.3g, limit %.3g relative)",
                  worst, rms, limit);
    gen_out_free(&a);
    gen_out_free(&b);
    for (int i = 0; i < 2; i++) {
        free(lh[i]);
        free(lc[i]);
    }
    vs_rt_backend_free(held);
    vs_rt_backend_free(conv);
    vs_rt_model_free(m);
}
END_TEST

/* The declared GEMM inputs are the backend's own: a copy or download of one is refused (recorded,
 * returned by sync) and the backend goes on; an undeclared buffer next to them is not affected. */
START_TEST(bf16_gemm_inputs_refuse_copies_and_downloads)
{
    if (g_self)
        return; /* the CPU backend has no gemm_inputs */
    vs_rt_backend *bf = bf16_backend();
    vs_err err = {0};
    enum { N = 8, K = 16 };
    float *w = bf->ops->alloc(bf, N * K * sizeof(float)), *act = bf->ops->alloc(bf, K * sizeof(float));
    float *other = bf->ops->alloc(bf, K * sizeof(float)), host[K];
    ck_assert(w && act && other);
    const float *wl[1] = {w}, *al[1] = {act};
    size_t wn[1] = {N * K}, an[1] = {K};
    bf->ops->gemm_weights(bf, w, wl, wn, 1);
    bf->ops->gemm_inputs(bf, al, an, 1);
    for (int i = 0; i < K; i++)
        host[i] = (float)i;
    bf->ops->upload(bf, other, host, sizeof host);
    bf->ops->download(bf, host, other, sizeof host);
    ck_assert_int_eq(bf->ops->sync(bf, &err), VS_OK);
    bf->ops->copy(bf, act, other, sizeof host);
    ck_assert_int_eq(bf->ops->sync(bf, &err), VS_ERR_INTERNAL);
    ck_assert_msg(strstr(err.msg, "BF16 activations"), "%s", err.msg);
    bf->ops->download(bf, host, act + 2, 4 * sizeof(float));
    ck_assert_int_eq(bf->ops->sync(bf, &err), VS_ERR_INTERNAL);
    bf->ops->free(bf, act); /* the declaration goes with the block */
    bf->ops->free(bf, other);
    bf->ops->free(bf, w);
    ck_assert_int_eq(bf->ops->sync(bf, &err), VS_OK);
    vs_rt_backend_free(bf);
}
END_TEST

START_TEST(bf16_logits_on_the_tiny_fixture_are_within_bf16_precision_of_fp32)
{
    vs_srv_gen_req reqs[2] = {{3, 0, 1.5f, 1, 0.0f}, {5, 3, 1.5f, 900, 0.96f}};
    bf16_teacher_forced(MODEL, reqs, 2);
}
END_TEST

START_TEST(bf16_logits_on_the_bundled_model_are_within_bf16_precision_of_fp32)
{
    vs_err err = {0};
    vs_rt_model *m = NULL;
    ck_assert_msg(vs_rt_model_load(BUNDLED, &m, &err) == VS_OK, "%s", err.msg);
    const vs_rt_config *c = &m->cfg;
    float cfg = c->default_cfg >= 0 ? (float)c->default_cfg : 1.5f;
    int top_k = c->default_top_k >= 0 ? c->default_top_k : 900;
    float top_p = c->default_top_p >= 0 ? (float)c->default_top_p : 0.96f;
    vs_srv_gen_req reqs[6];
    for (int i = 0; i < 6; i++) /* half greedy, half with the model's sampling */
        reqs[i] = (vs_srv_gen_req){i % c->num_classes, (uint64_t)(100 + i), cfg,
                                   i % 2 ? top_k : 1, i % 2 ? top_p : 0.0f};
    vs_rt_model_free(m);
    bf16_report r = bf16_teacher_forced(BUNDLED, reqs, 6);
    ck_assert_int_gt(r.greedy_tokens, 0);
}
END_TEST

/* ---- recovery and memory: what a failed op leaves, what a step allocates ------------------------ */

/* The attention refuses a row whose page table is short of its new tokens (upload_layer's check):
 * that work fails, sync() says why once, and the same backend then runs the same attention as the
 * CPU does. A lost device is tested against a server (tests/test_cuda_emu_server.py): the
 * emulator's fault injection lasts for the life of the process. */
START_TEST(a_refused_page_table_fails_that_work_once_and_the_backend_goes_on)
{
    if (g_self)
        return; /* the CPU backend trusts its caller */
    tbatch t;
    tb_init(&t, 2, 16);
    int C = t.C, T = t.n_tok;
    buf2 qkv = b2_rand((size_t)T * 3 * C, 1, 0), out = b2_new((size_t)T * C);
    int keep = t.kv[3][t.H].n_pages; /* layer 1, head 0 */
    t.kv[3][t.H].n_pages = 1;
    vs_err err = {0};
    g_dut->ops->attention(g_dut, out.dut, qkv.dut, &t.b[1], 1, t.H, t.d, 1.0f);
    ck_assert_int_eq(g_dut->ops->sync(g_dut, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "row 3 layer 1") != NULL, "%s", err.msg);
    ck_assert_msg(g_dut->ops->sync(g_dut, &err) == VS_OK, "the error stayed: %s", err.msg);
    t.kv[3][t.H].n_pages = keep;
    BOTH(attention, P(out), P(qkv), PB(t), 1, t.H, t.d, 1.0f);
    expect(&out, TOL, "attention after a refused page table");
    expect(&t.arena, 0, "KV pages after a refused page table");
    b2_free(&qkv);
    b2_free(&out);
    tb_free(&t);
}
END_TEST

/* Scratch larger than any device (spatial attention's HW² scores) is out of memory for that op
 * only: sync() returns VS_ERR_NOMEM naming the fix once, then the backend works. */
START_TEST(scratch_that_does_not_fit_fails_that_op_once_and_the_backend_goes_on)
{
    if (g_self)
        return;
    vs_err err = {0};
    int HW = 1 << 20; /* 4 TiB of scores */
    buf2 qkv = b2_rand((size_t)3 * HW, 1, 0), out = b2_new((size_t)HW);
    g_dut->ops->spatial_attention(g_dut, out.dut, qkv.dut, 1, 1, HW);
    ck_assert_int_eq(g_dut->ops->sync(g_dut, &err), VS_ERR_NOMEM);
    ck_assert_msg(strstr(err.msg, "lower the batch size") != NULL, "%s", err.msg);
    ck_assert_msg(g_dut->ops->sync(g_dut, &err) == VS_OK, "the error stayed: %s", err.msg);
    b2_free(&qkv);
    b2_free(&out);
    buf2 x = b2_rand(4096, 2, 0), y = b2_new(4096);
    BOTH(silu, P(y), P(x), 4096);
    expect(&y, TOL, "silu after scratch ran out");
    b2_free(&x);
    b2_free(&y);
}
END_TEST

/* The tiny fixture on `be`: *m, an engine *e for n images and a KV pool *pool in the backend's
 * memory that holds n images' full cache (a page per head of each layer). */
static void tiny_engine(vs_rt_backend *be, int n, vs_rt_model **m, vs_rt_engine **e,
                        vs_kv_pool **pool)
{
    vs_err err = {0};
    ck_assert_msg(vs_rt_model_load(MODEL, m, &err) == VS_OK, "%s", err.msg);
    const vs_rt_config *c = &(*m)->cfg;
    ck_assert_msg(vs_rt_engine_new(*m, be, n, e, &err) == VS_OK, "%s", err.msg);
    vs_kv_allocator al = {be, vs_rt_backend_alloc_raw, vs_rt_backend_free_raw};
    vs_kv_geometry g = vs_kv_geometry_of(c, 16, be->kv_elem_bytes);
    size_t page_bytes = vs_kv_page_bytes(g) * (size_t)c->num_heads;
    size_t pages = 2 * (size_t)c->depth * (((size_t)c->scale_offset[c->n_scales] + 15) / 16);
    ck_assert_msg(vs_kv_pool_init(pages * (size_t)n * page_bytes, g, be->host_memory ? NULL : &al,
                                  pool, &err) == VS_OK,
                  "%s", err.msg);
}

/* Runs n images of the tiny fixture on `be` (an engine for n images, the full cache), without
 * decoding, then one more with its decode; checks the backend made no device allocation and
 * that its free memory did not move from before the first image started to after the last. */
static void max_batch_allocates_nothing(vs_rt_backend *be, int n, int decode, const char *what)
{
    vs_err err = {0};
    vs_rt_model *m = NULL;
    vs_rt_engine *e = NULL;
    vs_kv_pool *pool = NULL;
    tiny_engine(be, n, &m, &e, &pool);
    const vs_rt_config *c = &m->cfg;
    vs_srv_gen_req reqs[16];
    ck_assert_int_le(n, 16);
    for (int i = 0; i < n; i++) /* greedy and top-k/top-p: both sampling paths */
        reqs[i] = (vs_srv_gen_req){i % 10, (uint64_t)(7 + i), 1.5f, i % 2 ? 1 : 900,
                                   i % 2 ? 0.0f : 0.96f};
    vs_rt_mem_info before, after;
    vs_rt_counters c0, c1;
    ck_assert_msg(be->ops->mem_info(be, &before, &err) == VS_OK, "%s", err.msg);
    ck_assert(vs_rt_backend_counters(be, &c0));
    vs_srv_gen_opts go;
    memset(&go, 0, sizeof go); /* full cache, no outputs but the tokens */
    ck_assert_msg(vs_srv_gen_run_opts(e, pool, reqs, n, NULL, NULL, NULL, &go, &err) == VS_OK,
                  "%s: %s", what, err.msg);
    if (decode) {
        size_t HW = (size_t)c->image_size * c->image_size;
        uint8_t *rgb = malloc(3 * HW);
        ck_assert_ptr_nonnull(rgb);
        ck_assert_msg(vs_srv_gen_run_opts(e, pool, reqs, 1, &rgb, NULL, NULL, &go, &err) == VS_OK,
                      "%s: %s", what, err.msg);
        free(rgb);
    }
    ck_assert_msg(be->ops->mem_info(be, &after, &err) == VS_OK, "%s", err.msg);
    ck_assert(vs_rt_backend_counters(be, &c1));
    size_t allocs = (size_t)(c1.allocations - c0.allocations);
    printf("check_cuda: %s: %d images at once%s: %zu device allocations, free memory %+.0f bytes\n",
           what, n, decode ? " and a decode" : "", allocs,
           (double)after.free - (double)before.free);
    ck_assert_msg(after.free == before.free,
                  "%s: free device memory went from %zu to %zu bytes while %d images ran at once",
                  what, before.free, after.free, n);
    ck_assert_msg(allocs == 0,
                  "%s: %zu device allocations while %d images ran at once (want none after start-up)",
                  what, allocs, n);
    vs_kv_pool_free(pool);
    vs_rt_engine_free(e);
    vs_rt_model_free(m);
}

START_TEST(steps_and_decode_at_the_max_batch_allocate_no_device_memory)
{
    if (!g_dut->ops->mem_info)
        return; /* CHECK_CUDA_SELFTEST: host memory */
    max_batch_allocates_nothing(g_dut, 4, 1, "FP32");
    vs_rt_backend *bf = bf16_backend();
    max_batch_allocates_nothing(bf, 4, 0, "BF16 mode");
    vs_rt_backend_free(bf);
}
END_TEST

/* Issue 14's launch goal: per engine step the device work grows with layers and scales, not with
 * the images (the quantiser and the scale-0 rows take a scale's images in one call), and a
 * decode's launches and syncs do not grow with the images that finish together (on a device the
 * decoder's group holds the engine's max images). One engine for 4 images runs 1, then 4 images
 * (all at the same scales in each step) with their decode; image 0 is the same request both times,
 * so its tokens and pixels must not change with the company either. */
START_TEST(launches_and_syncs_per_step_and_per_decode_do_not_grow_with_the_images)
{
    if (g_self)
        return; /* counters: a device only */
    enum { N = 4 };
    vs_err err = {0};
    vs_rt_model *m = NULL;
    vs_rt_engine *e = NULL;
    vs_kv_pool *pool = NULL;
    tiny_engine(g_dut, N, &m, &e, &pool);
    const vs_rt_config *c = &m->cfg;
    int L = c->scale_offset[c->n_scales];
    size_t HW = (size_t)c->image_size * c->image_size;
    uint8_t *rgb[2][N];
    int32_t *tok[2][N];
    vs_srv_gen_times t[2];
    vs_srv_gen_req reqs[N];
    for (int i = 0; i < N; i++) /* one sampling setting: its launches are those of any image */
        reqs[i] = (vs_srv_gen_req){(3 * i + 1) % 10, (uint64_t)(11 + i), 1.5f, 1, 0.0f};
    for (int r = 0; r < 2; r++) {
        int n = r ? N : 1;
        for (int i = 0; i < N; i++) {
            rgb[r][i] = malloc(3 * HW);
            tok[r][i] = malloc((size_t)L * sizeof(int32_t));
            ck_assert(rgb[r][i] && tok[r][i]);
        }
        vs_srv_gen_opts go;
        memset(&go, 0, sizeof go);
        ck_assert_msg(vs_srv_gen_run_opts(e, pool, reqs, n, rgb[r], tok[r], &t[r], &go, &err) == VS_OK,
                      "%d images: %s", n, err.msg);
        ck_assert(t[r].have_device && t[r].steps == c->n_scales);
        printf("check_cuda: %d image(s): %.1f launches, %.1f copies and %.1f syncs per step; the "
               "decode %llu launches, %llu copies, %llu syncs\n",
               n, (double)t[r].device.launches / t[r].steps, (double)t[r].device.copies / t[r].steps,
               (double)t[r].device.syncs / t[r].steps,
               (unsigned long long)t[r].decode_device.launches,
               (unsigned long long)t[r].decode_device.copies,
               (unsigned long long)t[r].decode_device.syncs);
    }
    ck_assert_msg(t[1].device.launches == t[0].device.launches,
                  "the %d steps issued %llu launches for 1 image but %llu for %d at the same scales",
                  c->n_scales, (unsigned long long)t[0].device.launches,
                  (unsigned long long)t[1].device.launches, N);
    ck_assert_msg(t[1].device.copies == t[0].device.copies,
                  "the steps made %llu copies one by one for 1 image but %llu for %d",
                  (unsigned long long)t[0].device.copies, (unsigned long long)t[1].device.copies, N);
    ck_assert_msg(t[1].device.syncs == t[0].device.syncs,
                  "the steps waited %llu times for 1 image but %llu times for %d",
                  (unsigned long long)t[0].device.syncs, (unsigned long long)t[1].device.syncs, N);
    ck_assert_msg(t[1].decode_device.launches == t[0].decode_device.launches &&
                      t[1].decode_device.copies == t[0].decode_device.copies &&
                      t[1].decode_device.syncs == t[0].decode_device.syncs,
                  "decoding 1 image: %llu launches, %llu syncs; %d images: %llu launches, %llu syncs",
                  (unsigned long long)t[0].decode_device.launches,
                  (unsigned long long)t[0].decode_device.syncs, N,
                  (unsigned long long)t[1].decode_device.launches,
                  (unsigned long long)t[1].decode_device.syncs);
    ck_assert_msg(memcmp(tok[0][0], tok[1][0], (size_t)L * sizeof(int32_t)) == 0,
                  "image 0's tokens changed when it ran beside %d others", N - 1);
    ck_assert_msg(memcmp(rgb[0][0], rgb[1][0], 3 * HW) == 0,
                  "image 0's pixels changed when it was decoded beside %d others", N - 1);
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < N; i++) {
            free(rgb[r][i]);
            free(tok[r][i]);
        }
    vs_kv_pool_free(pool);
    vs_rt_engine_free(e);
    vs_rt_model_free(m);
}
END_TEST

/* In BF16 mode a step launches exactly what it launches in FP32: the GEMM inputs are held in
 * BF16 by the ops that write them (gemm_inputs), so no linear converts its x. The converting
 * backend (gemm_inputs hidden) shows what that saves: one conversion per declared linear, i.e.
 * per step the shared AdaLN (when shared), per layer its AdaLN (when not shared), qkv, proj, fc1
 * and fc2, then the head's AdaLN and the head. */
START_TEST(bf16_steps_launch_no_conversion_of_a_gemm_input)
{
    if (g_self)
        return; /* counters: a device only */
    vs_err err = {0};
    vs_rt_model *m = NULL;
    ck_assert_msg(vs_rt_model_load(MODEL, &m, &err) == VS_OK, "%s", err.msg);
    const vs_rt_config *c = &m->cfg;
    vs_rt_backend *bf = bf16_backend(), *conv = bf16_backend_converting();
    vs_srv_gen_req req = {4, 9, 1.5f, 1, 0.0f};
    gen_out f, h, v;
    gen_run(g_dut, m, &req, 1, NULL, NULL, NULL, 0, &f);
    gen_run(bf, m, &req, 1, NULL, NULL, NULL, 0, &h);
    gen_run(conv, m, &req, 1, NULL, NULL, NULL, 0, &v);
    ck_assert(f.times.have_device && f.times.steps == c->n_scales && h.times.steps == c->n_scales &&
              v.times.steps == c->n_scales);
    uint64_t per_step = (uint64_t)(c->shared_aln ? 1 : 0) +
                        (uint64_t)c->depth * (c->shared_aln ? 4 : 5) + 2;
    uint64_t lf = f.times.device.launches, lh = h.times.device.launches,
             lv = v.times.device.launches;
    printf("check_cuda: launches per step: FP32 %.1f, BF16 %.1f, BF16 converting each linear's x "
           "%.1f (%llu conversions a step)\n",
           (double)lf / c->n_scales, (double)lh / c->n_scales, (double)lv / c->n_scales,
           (unsigned long long)per_step);
    ck_assert_msg(lh == lf, "BF16 mode launched %llu times over the %d steps, FP32 mode %llu",
                  (unsigned long long)lh, c->n_scales, (unsigned long long)lf);
    ck_assert_msg(lv == lf + per_step * (uint64_t)c->n_scales,
                  "converting each linear's x: %llu launches over %d steps, want FP32's %llu + %llu "
                  "conversions a step",
                  (unsigned long long)lv, c->n_scales, (unsigned long long)lf,
                  (unsigned long long)per_step);
    gen_out_free(&f);
    gen_out_free(&h);
    gen_out_free(&v);
    vs_rt_backend_free(bf);
    vs_rt_backend_free(conv);
    vs_rt_model_free(m);
}
END_TEST

/* In BF16 mode only the declared GEMM weights are BF16 and only the decoder TF32: the quantiser
 * (f_hat over every scale: embedding lookup, bicubic, φ convolutions) and an undeclared linear
 * (the word embedding's kind) equal strict FP32 (the emulated device rounds TF32 inputs, which
 * is ~1e-3 off). */
#define FP32_SAME 1e-5

START_TEST(bf16_mode_runs_the_quantiser_and_undeclared_linears_in_fp32)
{
    vs_err err = {0};
    vs_rt_model *m = NULL;
    ck_assert_msg(vs_rt_model_load(MODEL, &m, &err) == VS_OK, "%s", err.msg);
    const vs_rt_config *c = &m->cfg;
    ck_assert_msg(m->w.phi[0].w && m->w.phi[0].k == 3, "the fixture has no 3x3 phi convolution");
    vs_rt_backend *bf = bf16_backend();
    int L = c->scale_offset[c->n_scales], P = c->patch_nums[c->n_scales - 1];
    size_t nf = (size_t)c->z_channels * P * P;
    int32_t *tok = malloc((size_t)L * sizeof *tok);
    float *f32 = malloc(nf * sizeof(float)), *fbf = malloc(nf * sizeof(float));
    ck_assert(tok && f32 && fbf);
    for (int i = 0; i < L; i++)
        tok[i] = irand(c->vocab_size);
    vs_rt_backend *side[2] = {g_dut, bf};
    float *fh[2] = {f32, fbf};
    for (int k = 0; k < 2; k++) {
        vs_rt_engine *e = NULL;
        vs_rt_image img;
        memset(&img, 0, sizeof img);
        ck_assert_msg(vs_rt_engine_new(m, side[k], 1, &e, &err) == VS_OK, "%s", err.msg);
        ck_assert_msg(vs_rt_image_init(e, &img, &err) == VS_OK, "%s", err.msg);
        ck_assert_msg(vs_rt_image_set_tokens(e, &img, tok, &err) == VS_OK, "%s", err.msg);
        vs_rt_image_fhat(e, &img, fh[k]);
        vs_rt_image_free(e, &img);
        vs_rt_engine_free(e);
    }
    diff_stats q = compare(fbf, f32, nf);
    printf("check_cuda: BF16 mode quantiser: f_hat worst element %.2e of max(|fp32|, rms) "
           "(limit %.0e)\n", q.worst, FP32_SAME);
    ck_assert_msg(q.worst <= FP32_SAME,
                  "BF16 mode: f_hat is off the FP32 backend's by %.3g of max(|fp32|, rms) (limit "
                  "%.0e): the quantiser did not run in FP32 (TF32 phi convolutions?)",
                  q.worst, FP32_SAME);

    int M = 200, N = c->embed_dim, K = c->z_channels; /* the word embedding's shape */
    float *x = malloc((size_t)M * K * sizeof(float)), *w = malloc((size_t)N * K * sizeof(float)),
          *b = malloc((size_t)N * sizeof(float)), *y32 = malloc((size_t)M * N * sizeof(float)),
          *ybf = malloc((size_t)M * N * sizeof(float));
    ck_assert(x && w && b && y32 && ybf);
    for (int i = 0; i < M * K; i++)
        x[i] = frand();
    for (int i = 0; i < N * K; i++)
        w[i] = 0.3f * frand();
    for (int i = 0; i < N; i++)
        b[i] = frand();
    be_linear_host(g_dut, y32, x, w, b, M, N, K, 0);
    be_linear_host(bf, ybf, x, w, b, M, N, K, 0);
    diff_stats l = compare(ybf, y32, (size_t)M * N);
    ck_assert_msg(l.worst <= FP32_SAME,
                  "BF16 mode: an undeclared linear is off FP32 by %.3g of max(|fp32|, rms) (limit "
                  "%.0e): TF32?",
                  l.worst, FP32_SAME);
    free(x);
    free(w);
    free(b);
    free(y32);
    free(ybf);
    free(tok);
    free(f32);
    free(fbf);
    vs_rt_backend_free(bf);
    vs_rt_model_free(m);
}
END_TEST

static Suite *cuda_suite(void)
{
    Suite *s = suite_create("cuda");
    TCase *tc = tcase_create("backend_ops");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, upload_copy_zero_and_download_are_exact);
    tcase_add_test(tc, copy_many_makes_every_copy_of_its_list);
    tcase_add_test(tc, an_allocation_too_big_for_the_device_returns_null_and_the_backend_goes_on);
    tcase_add_test(tc, counters_count_copies_launches_syncs_and_memory);
    tcase_add_test(tc, linear_matches_cpu);
    tcase_add_test(tc, elementwise_ops_match_cpu);
    tcase_add_test(tc, gather_rows_and_embed_chw_are_exact);
    tcase_add_test(tc, adaln_and_gated_add_match_cpu);
    tcase_add_test(tc, gated_add_adaln_is_gated_add_then_adaln_in_one_launch);
    tcase_add_test(tc, qk_norm_matches_cpu);
    tcase_add_test(tc, attention_writes_the_new_kv_into_pages_and_matches_cpu);
    tcase_add_test(tc, kv_compact_on_the_device_keeps_and_packs_what_the_cpu_does);
    tcase_add_test(tc, attention_over_heads_holding_different_counts_matches_cpu);
    tcase_add_test(tc, a_batch_without_room_for_the_new_tokens_is_refused_at_the_attention);
    tcase_add_test(tc, a_failed_op_makes_sync_return_the_error_and_where_it_happened);
    tcase_add_test(tc, greedy_tokens_and_guided_logits_equal_cpu);
    tcase_add_test(tc, top_k_and_top_p_draws_equal_cpu);
    tcase_add_test(tc, upsample_downsample_and_transpose_match_cpu);
    tcase_add_test(tc, conv2d_matches_cpu);
    tcase_add_test(tc, group_norm_matches_cpu);
    tcase_add_test(tc, spatial_attention_matches_cpu);
    tcase_add_test(tc, decoder_ops_launch_the_same_work_for_one_image_or_many);
    suite_add_tcase(s, tc);
    TCase *tf = tcase_create("tiny_fixture");
    tcase_add_test(tf, infinity_decoder_on_the_device_gives_the_references_images);
    tcase_set_timeout(tf, 600);
    tcase_add_test(tf, tiny_fixture_greedy_tokens_and_image_match_the_reference_in_fp32);
    tcase_add_test(tf, kv_compression_leaves_each_heads_selected_tokens_in_device_pages);
    tcase_add_test(tf, device_compression_adds_no_sync_and_moves_no_kv_bytes);
    tcase_add_test(tf, a_row_with_unequal_heads_draws_exactly_its_simulated_peak_of_device_pages);
    tcase_add_test(tf, tiny_fixture_under_scalekv_and_hack_gives_the_cpus_tokens);
    suite_add_tcase(s, tf);
    TCase *tb = tcase_create("bf16");
    tcase_set_timeout(tb, 600);
    tcase_add_test(tb, bf16_linear_of_declared_weights_is_within_1e_2_of_fp32);
    tcase_add_test(tb, bf16_pages_attention_matches_cpu_and_kv_write_rounds_to_nearest_even);
    tcase_add_test(tb, bf16_attention_on_tensor_cores_is_within_bf16_rounding_of_fp32);
    tcase_add_test(tb, kv_compression_leaves_each_heads_selected_tokens_in_bf16_device_pages);
    tcase_add_test(tb, bf16_pages_halve_the_kv_bytes_per_image_of_every_policy);
    tcase_add_test(tb, bf16_logits_on_the_tiny_fixture_are_within_bf16_precision_of_fp32);
    tcase_add_test(tb, bf16_logits_on_the_bundled_model_are_within_bf16_precision_of_fp32);
    tcase_add_test(tb, bf16_gemm_inputs_give_the_logits_of_converting_each_linears_input);
    tcase_add_test(tb, bf16_gemm_inputs_refuse_copies_and_downloads);
    suite_add_tcase(s, tb);
    TCase *tr = tcase_create("recovery");
    tcase_set_timeout(tr, 600);
    tcase_add_test(tr, a_refused_page_table_fails_that_work_once_and_the_backend_goes_on);
    tcase_add_test(tr, scratch_that_does_not_fit_fails_that_op_once_and_the_backend_goes_on);
    tcase_add_test(tr, steps_and_decode_at_the_max_batch_allocate_no_device_memory);
    tcase_add_test(tr, bf16_mode_runs_the_quantiser_and_undeclared_linears_in_fp32);
    suite_add_tcase(s, tr);
    TCase *tl = tcase_create("launches");
    tcase_set_timeout(tl, 600);
    tcase_add_test(tl, launches_and_syncs_per_step_and_per_decode_do_not_grow_with_the_images);
    tcase_add_test(tl, bf16_steps_launch_no_conversion_of_a_gemm_input);
    suite_add_tcase(s, tl);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    vs_err err = {0};
    const char *self = getenv("CHECK_CUDA_SELFTEST");
    g_self = self && *self && strcmp(self, "0") != 0;
    vs_status st =
        g_self ? vs_rt_backend_cpu_new(2, &g_dut, &err) : vs_rt_backend_cuda_new(1, &g_dut, &err);
    if (st == VS_ERR_UNSUPPORTED) {
        printf("check_cuda: no CUDA device, skipped\n");
        fprintf(stderr, "check_cuda: %s\n", err.msg);
        return 0;
    }
    if (st != VS_OK) {
        fprintf(stderr, "check_cuda: the CUDA backend did not start: %s\n", err.msg);
        return 1;
    }
    if (vs_rt_backend_cpu_new(3, &g_ref, &err) != VS_OK) {
        fprintf(stderr, "check_cuda: the CPU backend did not start: %s\n", err.msg);
        vs_rt_backend_free(g_dut);
        return 1;
    }
    SRunner *sr = srunner_create(cuda_suite());
    srunner_set_fork_status(sr, CK_NOFORK); /* CUDA does not survive fork */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    vs_rt_backend_free(g_ref);
    vs_rt_backend_free(g_dut);
    return failed ? 1 : 0;
}
