/* tests/check_hack.c — the `hack` KV policy: its head map, asymmetric capacities whose mean over
 * heads is the budget, and the two selection rules. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvcache/policy.h"
#include "runtime/blas.h"

enum { DEPTH = 2, HEADS = 4 };

/* Shaped like the tiny fixture: 10 scales up to 16x16 (L = 680), 2 layers of 4 heads. */
static vs_rt_config cfg(void)
{
    vs_rt_config c;
    memset(&c, 0, sizeof c);
    int pn[] = {1, 2, 3, 4, 5, 6, 8, 10, 13, 16};
    c.depth = DEPTH;
    c.num_heads = HEADS;
    c.head_dim = 8;
    c.embed_dim = HEADS * 8;
    c.n_scales = 10;
    for (int s = 0; s < 10; s++) {
        c.patch_nums[s] = pn[s];
        c.scale_offset[s + 1] = c.scale_offset[s] + pn[s] * pn[s];
    }
    return c;
}

static char dir[64];

/* Writes text into a head-map file in the test's directory and returns its path. */
static const char *head_map(const char *text)
{
    static char path[128];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/vs_hack_XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(dir));
    }
    snprintf(path, sizeof path, "%s/m.hack.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void cleanup(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/m.hack.json", dir);
    unlink(path);
    rmdir(dir);
    dir[0] = 0;
}

static vs_status try_make(double budget, const char *file, vs_kv_policy **p, vs_err *err)
{
    vs_rt_config c = cfg();
    return vs_kv_policy_new(VS_KV_POLICY_HACK, budget, &c, file, p, err);
}

static vs_kv_policy *make(double budget, const char *file)
{
    vs_kv_policy *p = NULL;
    vs_err err = {0};
    ck_assert_msg(try_make(budget, file, &p, &err) == VS_OK, "%s", err.msg);
    return p;
}

#define MAP(m0, m1, extra)                                                                           \
    "{\"format\":\"varserve-hack-heads\",\"depth\":2,\"heads\":4,\"map\":[\"" m0 "\",\"" m1 "\"]" extra "}"

START_TEST(without_a_head_map_every_head_is_structural_with_the_budget)
{
    vs_kv_policy *p = make(0.2, NULL);
    ck_assert_ptr_nonnull(strstr(vs_kv_policy_source(p), "every head structural"));
    /* B = 0.2 * 680 = 136 for every head, in whole 16-token pages: 144 */
    for (int l = 0; l < DEPTH; l++)
        for (int h = 0; h < HEADS; h++)
            ck_assert_int_eq(vs_kv_policy_capacity(p, l, h, 8, 424), 144);
    vs_kv_policy_free(p);
}
END_TEST

START_TEST(a_bad_head_map_is_refused_naming_the_field)
{
    vs_kv_policy *p = NULL;
    vs_err err = {0};
    ck_assert_int_eq(try_make(0.2, head_map("{\"format\":\"varserve-scalekv-budget\"}"), &p, &err), VS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "'format'"));
    ck_assert_int_eq(try_make(0.2, head_map(MAP("CCSS", "SSCX", "")), &p, &err), VS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "layer 1 of 'map'"));
    ck_assert_int_eq(try_make(0.2, head_map(MAP("CCS", "SSCC", "")), &p, &err), VS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "4 letters"));
    ck_assert_int_eq(
        try_make(0.2, head_map("{\"format\":\"varserve-hack-heads\",\"depth\":3,\"heads\":4,\"map\":[]}"), &p, &err),
        VS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "another model"));
    ck_assert_int_eq(try_make(0.2, head_map(MAP("CCSS", "SSCC", ",\"contextual_share\":1.5")), &p, &err),
                     VS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "contextual_share"));
    ck_assert_int_eq(try_make(0.2, head_map("{not json"), &p, &err), VS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "not JSON"));
    ck_assert_int_eq(try_make(0.2, "/nonexistent/m.hack.json", &p, &err), VS_ERR_IO);
    ck_assert_ptr_null(p);
    cleanup();
}
END_TEST

START_TEST(contextual_heads_keep_their_top_scored_columns)
{
    /* every head contextual: one capacity, the contextual rule */
    vs_kv_policy *p = make(0.2, head_map(MAP("CCCC", "CCCC", "")));
    enum { N = 80, NEW = 64 };
    float scores[N], tmp[4 * N];
    int32_t keep[N];
    for (int i = 0; i < N; i++)
        scores[i] = (float)(i % 7) * 0.01f; /* small, distinct enough */
    int top[] = {2, 9, 33, 34, 70};
    for (int i = 0; i < 5; i++)
        scores[top[i]] = 10.0f + (float)i;
    int n = vs_kv_policy_select_head(p, 1, 2, 8, N, NEW, scores, 5, keep, tmp);
    ck_assert_int_eq(n, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(keep[i], top[i]); /* exactly the five columns, ascending; nothing forced in */
    vs_kv_policy_free(p);
    cleanup();
}
END_TEST

START_TEST(structural_heads_keep_the_first_scales_the_current_scale_and_attended_middle_tokens)
{
    vs_kv_policy *p = make(0.2, NULL);
    /* 5 sink tokens (scales 0, 1), middle 5..29, the current scale (25 tokens) at 30..54 */
    enum { N = 55, NEW = 25, CAP = 40 };
    float scores[N], tmp[4 * N];
    int32_t keep[N];
    for (int i = 0; i < N; i++)
        scores[i] = 0;
    scores[12] = 9; /* pooled over 10..14 */
    scores[2] = 100; /* a sink: kept anyway, and its score must not lift the middle's 5..6 */
    scores[40] = 100; /* current scale: kept anyway, must not lift 28..29 */
    int n = vs_kv_policy_select_head(p, 0, 0, 5, N, NEW, scores, CAP, keep, tmp);
    ck_assert_int_eq(n, CAP);
    int has[N] = {0};
    for (int i = 0; i < n; i++) {
        has[keep[i]] = 1;
        if (i)
            ck_assert_int_lt(keep[i - 1], keep[i]);
    }
    for (int i = 0; i < 5; i++)
        ck_assert_msg(has[i], "sink %d dropped", i);
    for (int i = 30; i < N; i++)
        ck_assert_msg(has[i], "current-scale token %d dropped", i);
    for (int i = 10; i <= 14; i++)
        ck_assert_msg(has[i], "middle token %d (pooled 9) dropped", i);
    /* CAP - 5 - 25 - 5 = 5 more middle tokens of pooled score 0: the lowest slots (ties by slot) */
    for (int i = 5; i <= 9; i++)
        ck_assert_msg(has[i], "middle token %d (lowest tie) dropped", i);
    ck_assert(!has[15] && !has[29]);
    vs_kv_policy_free(p);
}
END_TEST

START_TEST(a_structural_head_whose_current_scale_does_not_fit_keeps_sinks_and_recent)
{
    vs_kv_policy *p = make(0.2, NULL);
    enum { N = 80, NEW = 64, CAP = 20 };
    float scores[N], tmp[4 * N];
    int32_t keep[N];
    for (int i = 0; i < N; i++)
        scores[i] = (float)i;
    ck_assert_int_eq(vs_kv_policy_select_head(p, 0, 0, 8, N, NEW, scores, CAP, keep, tmp), CAP);
    /* sinks = min(5, CAP/4) = 5, then the 15 most recent */
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(keep[i], i);
    for (int i = 5; i < CAP; i++)
        ck_assert_int_eq(keep[i], N - CAP + i);
    vs_kv_policy_free(p);
}
END_TEST

START_TEST(capacities_are_asymmetric_and_their_mean_over_heads_is_the_budget)
{
    /* 3 contextual of 8 heads; B = 0.5 * 680 = 340, in whole 16-token pages: cap_c = 16 *
     * round(170 / 16) = 176, cap_s = 16 * round((8*340 - 3*176) / 5 / 16) = 432 */
    vs_kv_policy *p = make(0.5, head_map(MAP("CSSS", "SCSC", "")));
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 0, 8, 600), 176);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 1, 1, 8, 600), 176);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 1, 3, 8, 600), 176);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 1, 8, 600), 432);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 1, 2, 8, 600), 432);
    double sum = 0;
    for (int l = 0; l < DEPTH; l++)
        for (int h = 0; h < HEADS; h++) {
            int cap = vs_kv_policy_capacity(p, l, h, 8, 600);
            ck_assert_int_eq(cap % 16, 0); /* whole pages */
            sum += cap;
        }
    ck_assert_double_le(fabs(sum / (DEPTH * HEADS) - 340), 8); /* the mean is B to half a page */
    /* a structural head holding fewer tokens than its capacity keeps them all */
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 1, 8, 424), VS_KV_KEEP_ALL);
    /* no compression anywhere while the cache is within the base, B: scale 6 ends at 155 tokens */
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 0, 6, 155), VS_KV_KEEP_ALL);
    vs_kv_policy_free(p);
    /* the share comes from the file */
    p = make(0.5, head_map(MAP("CSSS", "SCSC", ",\"contextual_share\":0.25")));
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 0, 8, 600), 80);
    vs_kv_policy_free(p);
    cleanup();
}
END_TEST

static Suite *hack_suite(void)
{
    Suite *s = suite_create("hack");
    TCase *tc = tcase_create("hack");
    tcase_add_test(tc, without_a_head_map_every_head_is_structural_with_the_budget);
    tcase_add_test(tc, a_bad_head_map_is_refused_naming_the_field);
    tcase_add_test(tc, contextual_heads_keep_their_top_scored_columns);
    tcase_add_test(tc, structural_heads_keep_the_first_scales_the_current_scale_and_attended_middle_tokens);
    tcase_add_test(tc, a_structural_head_whose_current_scale_does_not_fit_keeps_sinks_and_recent);
    tcase_add_test(tc, capacities_are_asymmetric_and_their_mean_over_heads_is_the_budget);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    SRunner *sr = srunner_create(hack_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
