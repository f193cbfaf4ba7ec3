/* tests/check_simd.c — the vector kernels (runtime/simd.h): every path this CPU runs computes the
 * same bits as the scalar one, on lengths that exercise the 16-lane body and the tails, on values
 * that reach the exp clamps; and VARSERVE_CPU_SIMD forces a path or fails with a message. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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
    return s;
}

/* check_simd --runs PATH: exit 0 when this CPU runs PATH (make test forces each such path). */
int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--runs") == 0)
        return vs_rt_simd_by_name(argv[2]) ? EXIT_SUCCESS : EXIT_FAILURE;
    SRunner *sr = srunner_create(simd_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
