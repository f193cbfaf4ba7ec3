/* tests/check_policy.c — KV compression policies: capacities, windows, selection, peak pages. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvcache/policy.h"
#include "runtime/blas.h"

/* A config shaped like the tiny fixture: 10 scales up to 16x16 (L = 680), 4 layers. */
static vs_rt_config tiny_cfg(int depth)
{
    vs_rt_config c;
    memset(&c, 0, sizeof c);
    int pn[] = {1, 2, 3, 4, 5, 6, 8, 10, 13, 16};
    c.depth = depth;
    c.num_heads = 2;
    c.n_scales = 10;
    c.scale_offset[0] = 0;
    for (int s = 0; s < 10; s++) {
        c.patch_nums[s] = pn[s];
        c.scale_offset[s + 1] = c.scale_offset[s] + pn[s] * pn[s];
    }
    return c;
}

static vs_kv_policy *make(vs_kv_policy_kind k, double budget, int depth, const char *file)
{
    vs_rt_config c = tiny_cfg(depth);
    vs_kv_policy *p = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_kv_policy_new(k, budget, &c, file, &p, &err) == VS_OK, "%s", err.msg);
    return p;
}

START_TEST(policy_names_round_trip_and_unknown_names_are_refused)
{
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++) {
        vs_kv_policy_kind got;
        ck_assert_int_eq(vs_kv_policy_parse(vs_kv_policy_name((vs_kv_policy_kind)k), &got), 0);
        ck_assert_int_eq(got, k);
    }
    vs_kv_policy_kind got;
    ck_assert_int_eq(vs_kv_policy_parse("h2o", &got), -1);
}
END_TEST

START_TEST(a_budget_outside_zero_to_one_is_refused_with_the_value)
{
    vs_rt_config c = tiny_cfg(4);
    vs_kv_policy *p = NULL;
    vs_err err = {0};
    ck_assert_int_eq(vs_kv_policy_new(VS_KV_POLICY_SCALEKV, 1.5, &c, NULL, &p, &err), VS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "kv_budget"));
    ck_assert_ptr_nonnull(strstr(err.msg, "1.5"));
    ck_assert_int_eq(vs_kv_policy_new(VS_KV_POLICY_SNAPKV, 0, &c, NULL, &p, &err), VS_ERR_INVALID);
    ck_assert_ptr_null(p);
}
END_TEST

START_TEST(full_never_compresses_and_releases_after_the_last_scale)
{
    vs_kv_policy *p = make(VS_KV_POLICY_FULL, 0, 4, NULL);
    for (int s = 0; s < 9; s++)
        for (int l = 0; l < 4; l++)
            ck_assert_int_eq(vs_kv_policy_capacity(p, l, 0, s, 680), VS_KV_KEEP_ALL);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 0, 9, 680), 0);
    vs_kv_policy_free(p);
}
END_TEST

START_TEST(scalekv_refiners_share_what_the_drafter_leaves_of_the_budget)
{
    /* budget 0.2 of 680 = 136 tokens per layer on average; default drafter: layer 0 */
    vs_kv_policy *p = make(VS_KV_POLICY_SCALEKV, 0.2, 4, NULL);
    int s = 8; /* 13x13: 424 tokens after it */
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 0, s, 424), VS_KV_KEEP_ALL);
    int mn = vs_kv_policy_capacity(p, 1, 0, s, 424);
    ck_assert_int_eq(mn, (int)lround((136.0 * 4 - 424) / 3)); /* = 40 */
    ck_assert_int_eq(vs_kv_policy_capacity(p, 3, 0, s, 424), mn);
    ck_assert(vs_kv_policy_is_drafter(p, 0, s) && !vs_kv_policy_is_drafter(p, 1, s));
    /* below the base capacity (the budget, 136 tokens) nothing is compressed */
    ck_assert_int_eq(vs_kv_policy_capacity(p, 1, 0, 5, 91), VS_KV_KEEP_ALL); /* 91 <= 136 */
    /* 8x8: 155 > 136, so compression starts; its share (136·4 − 155) / 3 = 130 is cut to the 40
     * a refiner keeps after scale 8, so refiners never shrink while the drafter grows */
    ck_assert_int_eq(vs_kv_policy_capacity(p, 1, 0, 6, 155), 40);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 0, 6, 155), VS_KV_KEEP_ALL); /* the drafter keeps all */
    /* a layer already under its capacity is left alone */
    ck_assert_int_eq(vs_kv_policy_capacity(p, 1, 0, 6, 40), VS_KV_KEEP_ALL);
    vs_kv_policy_free(p);
    /* at 0.1 (68 tokens per layer) a whole-cache drafter (424) would eat the budget of 4 layers:
     * the refiners keep the window and the drafter 4 x 68 - 3 x 16 = 224, so the mean is 68 */
    p = make(VS_KV_POLICY_SCALEKV, 0.1, 4, NULL);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 0, s, 424), 224);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 1, 0, s, 424), VS_KV_WINDOW);
    ck_assert(vs_kv_policy_mean_tokens(p) <= 0.1 * 680 + 0.5);
    vs_kv_policy_free(p);
}
END_TEST

START_TEST(a_probe_compresses_one_layer_to_the_window)
{
    vs_rt_config c = tiny_cfg(4);
    vs_kv_policy *p = NULL;
    vs_err err = {0};
    ck_assert_int_eq(vs_kv_policy_new_probe(&c, 2, &p, &err), VS_OK);
    for (int l = 0; l < 4; l++)
        ck_assert_int_eq(vs_kv_policy_capacity(p, l, 0, 8, 424), l == 2 ? VS_KV_WINDOW : VS_KV_KEEP_ALL);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 0, 9, 680), 0); /* the last scale still releases */
    vs_kv_policy_free(p);
    p = NULL;
    ck_assert_int_eq(vs_kv_policy_new_probe(&c, 4, &p, &err), VS_ERR_INVALID);
    ck_assert_ptr_null(p);
    ck_assert_ptr_nonnull(strstr(err.msg, "probe layer 4"));
}
END_TEST

START_TEST(capacities_never_fall_below_the_observation_window)
{
    vs_kv_policy *p = make(VS_KV_POLICY_SNAPKV, 0.01, 2, NULL); /* 6.8 tokens asked */
    ck_assert_int_eq(vs_kv_policy_capacity(p, 1, 0, 8, 424), VS_KV_WINDOW);
    vs_kv_policy_free(p);
    p = make(VS_KV_POLICY_PYRAMIDKV, 0.2, 5, NULL);
    int first = vs_kv_policy_capacity(p, 0, 0, 8, 424), last = vs_kv_policy_capacity(p, 4, 0, 8, 424);
    ck_assert_int_eq(first, (int)lround(136 * 1.5));
    ck_assert_int_eq(last, (int)lround(136 * 0.5));
    vs_kv_policy_free(p);
}
END_TEST

START_TEST(the_window_is_the_centres_of_a_four_by_four_grid)
{
    int32_t w[VS_KV_WINDOW];
    /* side 8, patches of 2: centres at rows/cols 0,2,4,6; the scale starts at slot 100 */
    ck_assert_int_eq(vs_kv_window(8, 164, 64, w), 16);
    ck_assert_int_eq(w[0], 100 + 0);
    ck_assert_int_eq(w[1], 100 + 2);
    ck_assert_int_eq(w[4], 100 + 2 * 8);
    ck_assert_int_eq(w[15], 100 + 6 * 8 + 6);
    /* side 13, patches of 3: centres at 1, 4, 7, 10 */
    ck_assert_int_eq(vs_kv_window(13, 169, 169, w), 16);
    ck_assert_int_eq(w[0], 1 * 13 + 1);
    ck_assert_int_eq(w[15], 10 * 13 + 10);
    /* side 3 (< 4): the last 16 slots, reaching into earlier scales */
    ck_assert_int_eq(vs_kv_window(3, 14, 9, w), 14);
    ck_assert_int_eq(vs_kv_window(3, 30, 9, w), 16);
    ck_assert_int_eq(w[0], 14);
    ck_assert_int_eq(w[15], 29);
}
END_TEST

START_TEST(selection_keeps_the_window_and_the_top_pooled_tokens_in_order)
{
    vs_kv_policy *p = make(VS_KV_POLICY_SNAPKV, 0.2, 2, NULL);
    enum { N = 80, NEW = 64 }; /* 16 older tokens (slots 0..15) + an 8x8 scale at 16..79 */
    float scores[N], tmp[4 * N];
    int32_t keep[N];
    for (int i = 0; i < N; i++)
        scores[i] = 0;
    scores[3] = 10;  /* its pool (width 5) lifts slots 1..5 to 10 */
    scores[40] = 5;  /* not a window slot: pools 38..42 to 5 (unless a window slot) */
    int n = vs_kv_policy_select_head(p, 0, 0, 8, N, NEW, scores, 16 + 7, keep, tmp);
    ck_assert_int_eq(n, 23);
    int32_t w[VS_KV_WINDOW];
    vs_kv_window(8, N, NEW, w);
    for (int i = 1; i < n; i++)
        ck_assert_int_lt(keep[i - 1], keep[i]); /* ascending, no duplicates */
    int has[N] = {0};
    for (int i = 0; i < n; i++)
        has[keep[i]] = 1;
    for (int k = 0; k < VS_KV_WINDOW; k++)
        ck_assert_msg(has[w[k]], "window slot %d dropped", w[k]);
    /* 7 more: slots 1..5 (pooled 10), then the best of pooled 5: 38, 39 (ties: lower slot) */
    for (int i = 1; i <= 5; i++)
        ck_assert_msg(has[i], "slot %d (pooled 10) not kept", i);
    ck_assert(!has[0] && !has[6]);
    int extra = 0;
    for (int i = 36; i <= 44; i++)
        extra += has[i] && !(i == w[0] || i == w[1] || i == w[2] || i == w[3] || i == w[4] ||
                             i == w[5] || i == w[6] || i == w[7] || i == w[8] || i == w[9] ||
                             i == w[10] || i == w[11] || i == w[12] || i == w[13] || i == w[14] ||
                             i == w[15]);
    ck_assert_int_eq(extra, 2);
    vs_kv_policy_free(p);
}
END_TEST

START_TEST(sliding_keeps_the_most_recent_and_streamingllm_adds_the_sinks)
{
    int32_t keep[100];
    vs_kv_policy *p = make(VS_KV_POLICY_SLIDING, 0.1, 2, NULL);
    ck_assert_int_eq(vs_kv_policy_select_head(p, 0, 0, 8, 100, 64, NULL, 20, keep, NULL), 20);
    ck_assert_int_eq(keep[0], 80);
    ck_assert_int_eq(keep[19], 99);
    vs_kv_policy_free(p);
    p = make(VS_KV_POLICY_STREAMINGLLM, 0.1, 2, NULL);
    ck_assert_int_eq(vs_kv_policy_select_head(p, 0, 0, 8, 100, 64, NULL, 20, keep, NULL), 20);
    ck_assert_int_eq(keep[0], 0); /* sinks: the 5 tokens of scales 0 and 1 */
    ck_assert_int_eq(keep[4], 4);
    ck_assert_int_eq(keep[5], 85);
    ck_assert_int_eq(keep[19], 99);
    vs_kv_policy_free(p);
}
END_TEST

START_TEST(peak_pages_follow_the_budget_and_full_holds_everything_before_the_last_scale)
{
    vs_kv_policy *full = make(VS_KV_POLICY_FULL, 0, 4, NULL);
    vs_kv_policy *skv = make(VS_KV_POLICY_SCALEKV, 0.1, 4, NULL);
    size_t pf = vs_kv_policy_peak_pages_per_row(full, 16);
    size_t ps = vs_kv_policy_peak_pages_per_row(skv, 16);
    /* full: after the second-to-last scale every layer holds 424 tokens; the last scale's 256
     * new tokens are attended from qkv and never stored */
    ck_assert_uint_eq(pf, 4 * 2 * 27); /* 4 layers x 2 heads x pages(424) = 27 */
    ck_assert_uint_lt(ps, pf);
    ck_assert_uint_gt(ps, 0);
    vs_kv_policy_free(full);
    vs_kv_policy_free(skv);
}
END_TEST

/* A capacity table whose heads differ: each head keeps its own count, the layer compresses when
 * one head does, and the peak counts each head's pages. */
START_TEST(a_capacity_table_gives_each_head_its_own_count_and_pages)
{
    vs_rt_config c = tiny_cfg(2);
    int32_t caps[10 * 2 * 2];
    for (int s = 0; s < 10; s++) {
        caps[(s * 2 + 0) * 2 + 0] = 32; /* layer 0: head 0 keeps 32, head 1 all */
        caps[(s * 2 + 0) * 2 + 1] = VS_KV_KEEP_ALL;
        caps[(s * 2 + 1) * 2 + 0] = 16; /* layer 1: both 16 */
        caps[(s * 2 + 1) * 2 + 1] = 16;
    }
    vs_kv_policy *p = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_kv_policy_new_caps(&c, VS_KV_POLICY_SNAPKV, caps, &p, &err) == VS_OK, "%s", err.msg);
    ck_assert_int_eq(vs_kv_policy_kind_of(p), VS_KV_POLICY_SNAPKV);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 0, 3, 40), 32);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 1, 3, 40), VS_KV_KEEP_ALL);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 0, 3, 30), VS_KV_KEEP_ALL); /* fits */
    ck_assert_int_eq(vs_kv_policy_capacity(p, 1, 1, 3, 40), 16);
    int held[2] = {20, 20};
    /* scale 3 adds 16: head 0 of layer 0 (36 > 32) compresses, head 1 keeps all: the layer compresses */
    ck_assert_int_eq(vs_kv_policy_layer_op(p, 10, 0, 2, 3, held, 16), VS_KV_FLOW_COMPRESS);
    held[0] = 10; /* 26 fits in 32 */
    ck_assert_int_eq(vs_kv_policy_layer_op(p, 10, 0, 2, 3, held, 16), VS_KV_FLOW_STORE);
    ck_assert_int_eq(vs_kv_policy_layer_op(p, 10, 0, 2, 9, held, 256), VS_KV_FLOW_RELEASE);
    /* the peak by hand: before the last scale layer 0 holds 32 and 424 tokens (2 + 27 pages),
     * layer 1 16 and 16 (1 + 1 page); then layer 0 is released first */
    ck_assert_uint_eq(vs_kv_policy_peak_pages_per_row(p, 16), 2 + 27 + 1 + 1);
    /* the mean over (layer, head) after the second-to-last scale */
    ck_assert_double_eq_tol(vs_kv_policy_mean_tokens(p), (32 + 424 + 16 + 16) / 4.0, 1e-9);
    vs_kv_policy_free(p);
    caps[5] = 15;
    ck_assert_int_eq(vs_kv_policy_new_caps(&c, VS_KV_POLICY_SNAPKV, caps, &p, &err), VS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "15"));
    caps[5] = 16;
    ck_assert_int_eq(vs_kv_policy_new_caps(&c, VS_KV_POLICY_FULL, caps, &p, &err), VS_ERR_INVALID);
}
END_TEST

START_TEST(a_budget_file_sets_the_drafters_and_a_wrong_one_is_named)
{
    char dir[] = "/tmp/vs_policy_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/b.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"format\":\"varserve-scalekv-budget\",\"depth\":4,\"scales\":[{\"scale\":8,\"drafters\":[2,3]}]}", f);
    fclose(f);
    vs_kv_policy *p = make(VS_KV_POLICY_SCALEKV, 0.2, 4, path);
    ck_assert(vs_kv_policy_is_drafter(p, 2, 8) && vs_kv_policy_is_drafter(p, 3, 8));
    ck_assert(!vs_kv_policy_is_drafter(p, 0, 8));
    ck_assert(vs_kv_policy_is_drafter(p, 0, 7)); /* scales the file omits keep the default */
    ck_assert_str_eq(vs_kv_policy_source(p), path);
    /* two whole-cache drafters (2 x 424) would exceed the 4 x 136 budget: the refiners get the
     * window and the drafters what is left, (544 - 2 x 16) / 2 = 256 */
    ck_assert_int_eq(vs_kv_policy_capacity(p, 0, 0, 8, 424), VS_KV_WINDOW);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 2, 0, 8, 424), 256);
    ck_assert_int_eq(vs_kv_policy_capacity(p, 3, 0, 8, 424), 256);
    vs_kv_policy_free(p);
    f = fopen(path, "w");
    fputs("{\"format\":\"varserve-scalekv-budget\",\"depth\":7,\"scales\":[]}", f);
    fclose(f);
    vs_rt_config c = tiny_cfg(4);
    vs_err err = {0};
    ck_assert_int_eq(vs_kv_policy_new(VS_KV_POLICY_SCALEKV, 0.2, &c, path, &p, &err), VS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "depth"));
    unlink(path);
    rmdir(dir);
}
END_TEST

static Suite *policy_suite(void)
{
    Suite *s = suite_create("policy");
    TCase *tc = tcase_create("policy");
    tcase_add_test(tc, policy_names_round_trip_and_unknown_names_are_refused);
    tcase_add_test(tc, a_capacity_table_gives_each_head_its_own_count_and_pages);
    tcase_add_test(tc, a_budget_outside_zero_to_one_is_refused_with_the_value);
    tcase_add_test(tc, full_never_compresses_and_releases_after_the_last_scale);
    tcase_add_test(tc, a_probe_compresses_one_layer_to_the_window);
    tcase_add_test(tc, scalekv_refiners_share_what_the_drafter_leaves_of_the_budget);
    tcase_add_test(tc, capacities_never_fall_below_the_observation_window);
    tcase_add_test(tc, the_window_is_the_centres_of_a_four_by_four_grid);
    tcase_add_test(tc, selection_keeps_the_window_and_the_top_pooled_tokens_in_order);
    tcase_add_test(tc, sliding_keeps_the_most_recent_and_streamingllm_adds_the_sinks);
    tcase_add_test(tc, peak_pages_follow_the_budget_and_full_holds_everything_before_the_last_scale);
    tcase_add_test(tc, a_budget_file_sets_the_drafters_and_a_wrong_one_is_named);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    SRunner *sr = srunner_create(policy_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
