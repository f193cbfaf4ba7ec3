/* tests/check_simd.c — the vector kernels (runtime/simd.h): every path this CPU runs computes the
 * same bits as the scalar one, on lengths that exercise the 16-lane body and the tails, on values
 * that reach the exp clamps; and VARSERVE_CPU_SIMD forces a path or fails with a message. Both
 * direct convolutions (AVX-512 and AVX2) are, bit for bit, their stated FMA chain per K block, and
 * the CPU backend's conv2d (direct or im2col + sgemm, backend_cpu.c) is the convolution, with the
 * same bits whichever path VARSERVE_CPU_SIMD forces. The backend's fused ops (linear_gelu,
 * gated_add_adaln) give their two ops' bits. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/backend.h"
#include "runtime/blas.h"
#include "runtime/simd.h"

static const char *const PATHS[] = {"avx2", "avx512"};
static const size_t LENS[] = {1, 7, 16, 33, 1023, 1024, 1025, 5000};

static float *random_floats(size_t n, unsigned seed, float lo, float hi)
{
    float *x = malloc(n * sizeof *x);
    srand(seed);
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * (float)rand() / (float)RAND_MAX;
    return x;
}

/* out = kernel op applied to x by table t, for the elementwise ops; returns a fresh buffer */
static float *apply(const vs_rt_simd *t, int op, const float *x, const float *x2, size_t n)
{
    float *y = malloc(n * sizeof *y);
    memcpy(y, x, n * sizeof *y);
    switch (op) {
    case 0: t->silu(y, x, n); break;
    case 1: t->gelu_tanh(y, n); break;
    case 2: t->add(y, x2, n); break;
    case 3: t->to_unit(y, n); break;
    case 4: t->affine(y, x, n, 0.37f, -1.25f, 1); break;
    case 5: t->affine(y, x, n, 0.37f, -1.25f, 0); break;
    default: t->exp_shift(y, n, t->max(x, n)); break;
    }
    return y;
}

START_TEST(every_path_computes_the_scalar_paths_bits)
{
    const vs_rt_simd *s = vs_rt_simd_by_name("scalar");
    ck_assert_ptr_nonnull(s);
    int tried = 0;
    for (size_t p = 0; p < sizeof PATHS / sizeof PATHS[0]; p++) {
        const vs_rt_simd *t = vs_rt_simd_by_name(PATHS[p]);
        if (!t)
            continue; /* this CPU does not run it */
        tried++;
        for (size_t li = 0; li < sizeof LENS / sizeof LENS[0]; li++) {
            size_t n = LENS[li];
            float *x = random_floats(n, (unsigned)(n * 7 + p), -100.0f, 100.0f);
            float *x2 = random_floats(n, (unsigned)(n * 7 + p + 1), -3.0f, 3.0f);
            for (int op = 0; op <= 6; op++) {
                float *a = apply(s, op, x, x2, n), *b = apply(t, op, x, x2, n);
                ck_assert_msg(memcmp(a, b, n * sizeof *a) == 0, "%s op %d n %zu differs from scalar",
                              t->name, op, n);
                free(a);
                free(b);
            }
            for (int sq = 0; sq < 2; sq++) {
                double ds = s->sum_sq_dev(x, n, 0.5f, sq), dt = t->sum_sq_dev(x, n, 0.5f, sq);
                ck_assert_msg(memcmp(&ds, &dt, sizeof ds) == 0, "%s sum (sq %d) n %zu", t->name, sq, n);
            }
            float mx = s->max(x, n);
            ck_assert(t->max(x, n) == mx);
            int32_t *ia = malloc(n * sizeof *ia), *ib = malloc(n * sizeof *ib);
            int na = s->select_ge(x, (int)n, 20.0f, ia), nb = t->select_ge(x, (int)n, 20.0f, ib);
            ck_assert_int_eq(na, nb);
            ck_assert(memcmp(ia, ib, (size_t)na * sizeof *ia) == 0);
            for (int i = 0; i < na; i++)
                ck_assert(x[ia[i]] >= 20.0f && (i == 0 || ia[i] > ia[i - 1]));
            free(ia);
            free(ib);
            free(x);
            free(x2);
        }
    }
    if (!tried)
        fprintf(stderr, "check_simd: this CPU runs only the scalar path: nothing to compare\n");
}
END_TEST

START_TEST(select_ge_keeps_exactly_the_values_at_or_above_the_threshold)
{
    const vs_rt_simd *s = vs_rt_simd_table();
    float x[40];
    for (int i = 0; i < 40; i++)
        x[i] = (float)(i % 5);
    int32_t idx[40];
    int n = s->select_ge(x, 40, 3.0f, idx);
    ck_assert_int_eq(n, 16); /* values 3 and 4: two of every five */
    for (int i = 0; i < n; i++)
        ck_assert(x[idx[i]] >= 3.0f);
    ck_assert_int_eq(idx[0], 3);
    ck_assert_int_eq(idx[n - 1], 39);
}
END_TEST

/* x[cin][H][W]'s conv2d at pixel q of channel co as simd.h states it: bias, then per K block an
 * fmaf chain from +0 over the im2col order, padding read as 0 */
static float conv_chain(const float *x, const float *w, const float *bias, int cin, int H, int W,
                        int k, int co, int q, const int *kend, int nblk)
{
    int K = cin * k * k, pad = k / 2, yy = q / W, xx = q % W;
    float out = bias ? bias[co] : 0.0f;
    for (int b = 0, t = 0; b < nblk; b++) {
        float acc = 0.0f;
        for (; t < kend[b]; t++) {
            int ci = t / (k * k), ky = t / k % k, kx = t % k, sy = yy + ky - pad, sx = xx + kx - pad;
            float v = sy >= 0 && sy < H && sx >= 0 && sx < W ? x[((size_t)ci * H + sy) * W + sx] : 0.0f;
            acc = fmaf(v, w[(size_t)co * K + t], acc);
        }
        out = out + acc;
    }
    return out;
}

/* One case of a direct kernel ("avx512" in place, "avx512-copied", "avx2"): outputs [p0, p1) are
 * conv_chain's bits, the others untouched. The AVX2 kernel takes whole vectors, so its cases'
 * ranges are multiples of 8 pixels. */
typedef struct {
    int cin, cout, k, H, W, p0, p1, nblk, kend[3];
} conv_case;

static void check_direct_case(const char *kernel, const conv_case *cc, unsigned seed, int with_bias)
{
    int cin = cc->cin, cout = cc->cout, k = cc->k, H = cc->H, W = cc->W;
    size_t in = (size_t)cin * H * W, out = (size_t)cout * H * W, K = (size_t)cin * k * k;
    float *x = random_floats(in, seed + 1, -2.0f, 2.0f);
    float *w = random_floats((size_t)cout * K, seed + 100, -0.5f, 0.5f);
    float *b = random_floats((size_t)cout, seed + 200, -1.0f, 1.0f), *bias = with_bias ? b : NULL;
    float *y = malloc(out * sizeof *y);
    for (size_t i = 0; i < out; i++)
        y[i] = 12345.0f; /* outside [p0, p1) must stay */
    if (strcmp(kernel, "avx512") == 0) {
        vs_rt_conv_direct_avx512(y, x, w, bias, cin, H, W, cout, k, cc->p0, cc->p1, cc->kend, cc->nblk);
    } else {
        /* exactly the floats the kernel asks for, so that ASan sees a read past them */
        int rows = (cc->p1 - 1) / W - cc->p0 / W + 1;
        float *scratch = malloc(vs_rt_conv_copied_scratch(cin, W, k, rows) * sizeof *scratch);
        if (strcmp(kernel, "avx2") == 0) {
            ck_assert(cc->p0 % 8 == 0 && cc->p1 % 8 == 0);
            vs_rt_conv_copied_avx2(y, x, w, bias, cin, H, W, cout, k, cc->p0, cc->p1, cc->kend,
                                   cc->nblk, scratch);
        } else {
            vs_rt_conv_copied_avx512(y, x, w, bias, cin, H, W, cout, k, cc->p0, cc->p1, cc->kend,
                                     cc->nblk, scratch);
        }
        free(scratch);
    }
    for (int co = 0; co < cout; co++)
        for (int q = 0; q < H * W; q++) {
            float got = y[(size_t)co * H * W + q], want = 12345.0f;
            if (q >= cc->p0 && q < cc->p1)
                want = conv_chain(x, w, bias, cin, H, W, k, co, q, cc->kend, cc->nblk);
            ck_assert_msg(memcmp(&got, &want, sizeof got) == 0, "%s case seed %u channel %d pixel %d: %a, want %a",
                          kernel, seed, co, q, got, want);
        }
    free(x);
    free(w);
    free(b);
    free(y);
}

START_TEST(direct_conv_is_the_fma_chain_of_each_k_block_in_im2col_order)
{
    if (!vs_rt_simd_by_name("avx512"))
        return; /* this CPU does not run it */
    static const conv_case cases[] = {
        {5, 11, 3, 7, 9, 9, 54, 2, {20, 45}},       /* rows of 9: vectors span rows; 2 blocks mid-channel */
        {3, 3, 1, 5, 5, 0, 25, 1, {3}},             /* 1×1, a 25-pixel plane */
        {16, 8, 3, 16, 16, 64, 128, 1, {144}},      /* a band inside the map */
        {130, 9, 3, 4, 20, 0, 80, 3, {448, 800, 1170}}, /* K = 1170 in three blocks, two mid-channel */
        {2, 17, 3, 33, 40, 1280, 1320, 1, {18}},    /* the last band: a vector past p1 */
        {4, 10, 3, 3, 5, 0, 15, 1, {36}},           /* one vector, 8 channels and 2 */
        {8, 9, 3, 20, 24, 30, 130, 1, {72}},        /* a range from mid-row to mid-row */
        {32, 3, 3, 9, 32, 0, 288, 2, {144, 288}},   /* the decoder's last conv: 3 channels */
    };
    /* both AVX-512 kernels, in place and from copies, on every case */
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        check_direct_case("avx512", &cases[ci], (unsigned)ci, ci % 2 == 0);
        check_direct_case("avx512-copied", &cases[ci], (unsigned)ci, ci % 2 == 1);
    }
}
END_TEST

/* The AVX2 kernel on ranges of whole vectors: the AVX-512 kernels' rule, so they agree bit for bit
 * wherever both run. */
START_TEST(direct_avx2_conv_is_the_same_fma_chain_on_whole_vectors)
{
    if (!vs_rt_simd_by_name("avx2"))
        return; /* this CPU does not run it */
    static const conv_case cases[] = {
        {5, 11, 3, 7, 16, 16, 64, 2, {20, 45}},     /* 2 vectors a row: tiles span rows; 2 blocks mid-channel */
        {3, 3, 1, 5, 8, 0, 40, 1, {3}},             /* 1×1, the whole map */
        {16, 8, 3, 16, 16, 64, 128, 1, {144}},      /* a band inside the map */
        {130, 9, 3, 4, 24, 0, 96, 3, {448, 800, 1170}}, /* K = 1170 in three blocks, two mid-channel */
        {2, 17, 3, 33, 40, 1280, 1320, 1, {18}},    /* the last row: 5 vectors, a 2-vector tail */
        {4, 10, 3, 3, 8, 0, 24, 1, {36}},           /* one vector a row, 4 + 4 + 2 channels */
        {7, 6, 3, 5, 8, 8, 16, 1, {63}},            /* one row inside the map: a 1-vector tile */
        {32, 3, 3, 9, 32, 0, 288, 2, {144, 288}},   /* the decoder's last conv: 3 channels */
        {6, 5, 3, 6, 24, 40, 104, 1, {54}},         /* whole vectors from mid-row to mid-row */
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
        check_direct_case("avx2", &cases[ci], (unsigned)ci + 50, ci % 2 == 0);
}
END_TEST

START_TEST(cpu_conv2d_is_the_convolution_and_each_image_is_computed_alone)
{
    vs_rt_backend *be = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_backend_new(VS_RT_BACKEND_CPU, 2, &be, &err) == VS_OK, "%s", err.msg);
    /* the decoder's kinds: one K block, OpenBLAS's split K (128·9), 1×1, few output channels */
    static const int shapes[][5] = {{32, 32, 3, 40, 40}, {128, 64, 3, 16, 16}, {64, 32, 1, 24, 24},
                                    {32, 3, 3, 48, 48}, {3, 5, 3, 7, 9}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int cin = shapes[s][0], cout = shapes[s][1], k = shapes[s][2], H = shapes[s][3], W = shapes[s][4];
        int N = 3, pad = k / 2, K = cin * k * k;
        size_t in = (size_t)cin * H * W, out = (size_t)cout * H * W;
        float *x = random_floats(N * in, (unsigned)s + 7, -2.0f, 2.0f);
        float *w = random_floats((size_t)cout * K, (unsigned)s + 70, -0.2f, 0.2f);
        float *b = random_floats((size_t)cout, (unsigned)s + 700, -1.0f, 1.0f);
        float *y = malloc(N * out * sizeof *y), *y1 = malloc(out * sizeof *y1);
        be->ops->conv2d(be, y, x, w, b, N, cin, H, W, cout, k);
        for (int n = 0; n < N; n++) {
            be->ops->conv2d(be, y1, x + n * in, w, b, 1, cin, H, W, cout, k);
            ck_assert_msg(memcmp(y1, y + n * out, out * sizeof *y1) == 0, "shape %zu image %d", s, n);
        }
        for (int co = 0; co < cout; co++)
            for (int q = 0; q < H * W; q++) {
                double ref = b[co], mag = fabs(b[co]);
                for (int t = 0; t < K; t++) {
                    int c = t / (k * k), sy = q / W + t / k % k - pad, sx = q % W + t % k - pad;
                    if (sy < 0 || sy >= H || sx < 0 || sx >= W)
                        continue;
                    double p = (double)x[2 * in + ((size_t)c * H + sy) * W + sx] * w[(size_t)co * K + t];
                    ref += p;
                    mag += fabs(p);
                }
                double got = y[2 * out + (size_t)co * H * W + q];
                ck_assert_msg(fabs(got - ref) <= 1e-6 * mag + 1e-30, "shape %zu channel %d pixel %d: %g, want %g",
                              s, co, q, got, ref);
            }
        free(x);
        free(w);
        free(b);
        free(y);
        free(y1);
    }
    vs_rt_backend_free(be);
}
END_TEST

/* In a child process: the choice is made once per process. Exit 0 when the table is want (or when
 * want is bad, when the check fails naming the variable), 1 otherwise. */
static int child_forced(const char *env, const char *want_name, int want_ok)
{
    pid_t pid = fork();
    if (pid == 0) {
        setenv("VARSERVE_CPU_SIMD", env, 1);
        vs_err err = {0};
        vs_status st = vs_rt_simd_check(&err);
        if (!want_ok)
            _exit(st == VS_ERR_INVALID && strstr(err.msg, "VARSERVE_CPU_SIMD") &&
                          strstr(err.msg, "scalar") ? 0 : 1);
        _exit(st == VS_OK && strcmp(vs_rt_simd_table()->name, want_name) == 0 ? 0 : 1);
    }
    int ws = 0;
    waitpid(pid, &ws, 0);
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : 2;
}

/* On a CPU with AVX2 and no AVX-512 the backend's conv2d takes the AVX2 kernel unchecked for
 * these shapes (W a multiple of 8), and with K at most 448 its K blocks are one (backend_cpu.c's
 * sgemm_kblocks): conv2d is then conv_chain with one block, bit for bit, whatever the bands. (On
 * AVX-512 CPUs each shape is checked against the sgemm at run time instead.) */
START_TEST(conv2d_is_one_fma_chain_where_k_fits_one_block)
{
    if (!vs_rt_simd_by_name("avx2") || vs_rt_simd_by_name("avx512"))
        return; /* the AVX2 kernel does not run unchecked here */
    vs_rt_backend *be = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_backend_new(VS_RT_BACKEND_CPU, 2, &be, &err) == VS_OK, "%s", err.msg);
    static const int shapes[][5] = {{32, 32, 3, 16, 16}, {40, 5, 3, 24, 8}, {16, 8, 1, 8, 24},
                                    {49, 6, 3, 40, 32}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int cin = shapes[si][0], cout = shapes[si][1], k = shapes[si][2], H = shapes[si][3], W = shapes[si][4];
        int N = 2, K = cin * k * k, kend[1] = {K};
        size_t in = (size_t)cin * H * W, out = (size_t)cout * H * W;
        float *x = random_floats(N * in, (unsigned)si + 11, -2.0f, 2.0f);
        float *w = random_floats((size_t)cout * K, (unsigned)si + 110, -0.3f, 0.3f);
        float *b = random_floats((size_t)cout, (unsigned)si + 1100, -1.0f, 1.0f);
        float *y = malloc(N * out * sizeof *y);
        be->ops->conv2d(be, y, x, w, b, N, cin, H, W, cout, k);
        for (int n = 0; n < N; n++)
            for (int co = 0; co < cout; co++)
                for (int q = 0; q < H * W; q++) {
                    float got = y[n * out + (size_t)co * H * W + q];
                    float want = conv_chain(x + n * in, w, b, cin, H, W, k, co, q, kend, 1);
                    ck_assert_msg(memcmp(&got, &want, sizeof got) == 0,
                                  "shape %zu image %d channel %d pixel %d: %a, want %a", si, n, co, q, got, want);
                }
        free(x);
        free(w);
        free(b);
        free(y);
    }
    vs_rt_backend_free(be);
}
END_TEST

/* The CPU backend's fused linear_gelu is its linear followed by its gelu_tanh, bit for bit, for
 * row counts that split the GEMM by columns (M < 64), by 64-row and by 256-row blocks. */
START_TEST(cpu_linear_gelu_is_linear_then_gelu)
{
    vs_rt_backend *be = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_backend_new(VS_RT_BACKEND_CPU, 2, &be, &err) == VS_OK, "%s", err.msg);
    ck_assert(be->ops->linear_gelu != NULL);
    static const int shapes[][3] = {{5, 200, 64}, {100, 96, 40}, {700, 130, 32}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        float *x = random_floats((size_t)M * K, (unsigned)si + 21, -2.0f, 2.0f);
        float *w = random_floats((size_t)N * K, (unsigned)si + 210, -0.5f, 0.5f);
        float *b = random_floats((size_t)N, (unsigned)si + 2100, -1.0f, 1.0f);
        float *y1 = malloc((size_t)M * N * sizeof *y1), *y2 = malloc((size_t)M * N * sizeof *y2);
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            be->ops->linear(be, y1, x, w, with_bias ? b : NULL, M, N, K);
            be->ops->gelu_tanh(be, y1, (size_t)M * N);
            be->ops->linear_gelu(be, y2, x, w, with_bias ? b : NULL, M, N, K);
            ck_assert_msg(memcmp(y1, y2, (size_t)M * N * sizeof *y1) == 0, "M %d N %d K %d bias %d", M, N, K,
                          with_bias);
        }
        free(x);
        free(w);
        free(b);
        free(y1);
        free(y2);
    }
    vs_rt_backend_free(be);
}
END_TEST

/* The CPU backend's fused gated_add_adaln is gated_add then adaln, bit for bit: tokens of two
 * rows (each its own modulation row), counts that leave a partial group of four rows. */
START_TEST(cpu_gated_add_adaln_is_gated_add_then_adaln)
{
    vs_rt_backend *be = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_backend_new(VS_RT_BACKEND_CPU, 2, &be, &err) == VS_OK, "%s", err.msg);
    ck_assert(be->ops->gated_add_adaln != NULL);
    for (int T = 1; T <= 23; T += 11) {
        int C = 96;
        int32_t tok_row[23];
        for (int t = 0; t < T; t++)
            tok_row[t] = t < T / 2 ? 0 : 1;
        vs_rt_batch b = {0};
        b.n_tok = T;
        b.tok_row = tok_row;
        float *x1 = random_floats((size_t)T * C, (unsigned)T, -3.0f, 3.0f), *x2 = malloc((size_t)T * C * sizeof *x2);
        float *y = random_floats((size_t)T * C, (unsigned)T + 1, -1.0f, 1.0f);
        float *mod = random_floats((size_t)2 * 6 * C, (unsigned)T + 2, -0.5f, 0.5f);
        float *n1 = malloc((size_t)T * C * sizeof *n1), *n2 = malloc((size_t)T * C * sizeof *n2);
        memcpy(x2, x1, (size_t)T * C * sizeof *x2);
        be->ops->gated_add(be, x1, y, mod, 6 * C, C, &b, C);
        be->ops->adaln(be, n1, x1, mod, 6 * C, 3 * C, 4 * C, &b, C, 1e-6f);
        be->ops->gated_add_adaln(be, x2, y, mod, 6 * C, C, n2, mod, 6 * C, 3 * C, 4 * C, &b, C, 1e-6f);
        ck_assert_msg(memcmp(x1, x2, (size_t)T * C * sizeof *x1) == 0, "T %d: x", T);
        ck_assert_msg(memcmp(n1, n2, (size_t)T * C * sizeof *n1) == 0, "T %d: xn", T);
        free(x1);
        free(x2);
        free(y);
        free(mod);
        free(n1);
        free(n2);
    }
    vs_rt_backend_free(be);
}
END_TEST

/* In a child with VARSERVE_CPU_SIMD=env ("" leaves it unset): a 64-bit FNV-1a hash of the bits
 * the CPU backend's conv2d gives on fixed inputs, over shapes of both direct kernels' kinds and one
 * whose width no AVX2 tile divides; 0 when the child failed. */
static uint64_t child_conv_hash(const char *env)
{
    int fd[2];
    if (pipe(fd) != 0)
        return 0;
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        if (*env)
            setenv("VARSERVE_CPU_SIMD", env, 1);
        else
            unsetenv("VARSERVE_CPU_SIMD");
        vs_rt_backend *be = NULL;
        vs_err err = {0};
        if (vs_rt_backend_new(VS_RT_BACKEND_CPU, 2, &be, &err) != VS_OK)
            _exit(1);
        static const int shapes[][5] = {{32, 32, 3, 16, 16}, {130, 16, 3, 8, 24}, {16, 8, 1, 8, 24},
                                        {8, 3, 3, 12, 12}};
        uint64_t h = 1469598103934665603ull;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            int cin = shapes[si][0], cout = shapes[si][1], k = shapes[si][2], H = shapes[si][3], W = shapes[si][4];
            size_t in = (size_t)2 * cin * H * W, out = (size_t)2 * cout * H * W;
            float *x = random_floats(in, (unsigned)si + 3, -2.0f, 2.0f);
            float *w = random_floats((size_t)cout * cin * k * k, (unsigned)si + 30, -0.3f, 0.3f);
            float *b = random_floats((size_t)cout, (unsigned)si + 300, -1.0f, 1.0f);
            float *y = malloc(out * sizeof *y);
            be->ops->conv2d(be, y, x, w, b, 2, cin, H, W, cout, k);
            const unsigned char *bytes = (const unsigned char *)y;
            for (size_t i = 0; i < out * sizeof *y; i++)
                h = (h ^ bytes[i]) * 1099511628211ull;
            free(x);
            free(w);
            free(b);
            free(y);
        }
        vs_rt_backend_free(be);
        _exit(write(fd[1], &h, sizeof h) == (ssize_t)sizeof h ? 0 : 1);
    }
    close(fd[1]);
    uint64_t h = 0;
    if (read(fd[0], &h, sizeof h) != (ssize_t)sizeof h)
        h = 0;
    close(fd[0]);
    int ws = 0;
    waitpid(pid, &ws, 0);
    return WIFEXITED(ws) && WEXITSTATUS(ws) == 0 ? h : 0;
}

/* Forcing a vector path never changes a convolution's bits: the elementwise tables agree by
 * construction, and where avx2 is forced on an AVX-512 CPU the AVX2 conv kernel runs in the
 * AVX-512 one's order (backend_cpu.c). */
START_TEST(conv2d_gives_the_same_bits_whatever_path_is_forced)
{
    uint64_t want = child_conv_hash("");
    ck_assert(want != 0);
    ck_assert_msg(child_conv_hash("scalar") == want, "scalar");
    for (size_t p = 0; p < sizeof PATHS / sizeof PATHS[0]; p++)
        if (vs_rt_simd_by_name(PATHS[p]))
            ck_assert_msg(child_conv_hash(PATHS[p]) == want, "%s", PATHS[p]);
}
END_TEST

START_TEST(the_environment_forces_a_path_or_is_refused_with_the_choices)
{
    ck_assert_int_eq(child_forced("scalar", "scalar", 1), 0);
    for (size_t p = 0; p < sizeof PATHS / sizeof PATHS[0]; p++)
        if (vs_rt_simd_by_name(PATHS[p]))
            ck_assert_int_eq(child_forced(PATHS[p], PATHS[p], 1), 0);
    ck_assert_int_eq(child_forced("sse9", NULL, 0), 0);
}
END_TEST

static Suite *simd_suite(void)
{
    Suite *s = suite_create("simd");
    TCase *tc = tcase_create("paths");
    tcase_add_test(tc, every_path_computes_the_scalar_paths_bits);
    tcase_add_test(tc, select_ge_keeps_exactly_the_values_at_or_above_the_threshold);
    tcase_add_test(tc, the_environment_forces_a_path_or_is_refused_with_the_choices);
    suite_add_tcase(s, tc);
    TCase *conv = tcase_create("conv");
    tcase_set_timeout(conv, 60);
    tcase_add_test(conv, direct_conv_is_the_fma_chain_of_each_k_block_in_im2col_order);
    tcase_add_test(conv, direct_avx2_conv_is_the_same_fma_chain_on_whole_vectors);
    tcase_add_test(conv, conv2d_gives_the_same_bits_whatever_path_is_forced);
    tcase_add_test(conv, conv2d_is_one_fma_chain_where_k_fits_one_block);
    tcase_add_test(conv, cpu_linear_gelu_is_linear_then_gelu);
    tcase_add_test(conv, cpu_gated_add_adaln_is_gated_add_then_adaln);
    tcase_add_test(conv, cpu_conv2d_is_the_convolution_and_each_image_is_computed_alone);
    suite_add_tcase(s, conv);
    return s;
}

/* check_simd --runs PATH: exit 0 when this CPU runs PATH (make test forces each such path). */
int main(int argc, char **argv)
{
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    if (argc == 3 && strcmp(argv[1], "--runs") == 0)
        return vs_rt_simd_by_name(argv[2]) ? EXIT_SUCCESS : EXIT_FAILURE;
    SRunner *sr = srunner_create(simd_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
