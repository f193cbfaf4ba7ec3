/* tests/check_session.c — kvcache/session: an image's reservation, rows and state from start to
 * end, and a step over images at different scales under different policies, on the tiny model
 * (tests/fixtures/tiny) and the CPU backend. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/policy.h"
#include "kvcache/pool.h"
#include "kvcache/session.h"
#include "runtime/backend.h"
#include "runtime/blas.h"
#include "runtime/var.h"

#define MODEL "tests/fixtures/tiny/model.safetensors"
#define PT VS_KV_PAGE_TOKENS

static vs_rt_model *g_model;
static vs_rt_backend *g_be;
static vs_rt_engine *g_e;

static void setup(void)
{
    vs_err err = {0};
    ck_assert_msg(vs_rt_model_load(MODEL, &g_model, &err) == VS_OK, "%s", err.msg);
    ck_assert_msg(vs_rt_backend_cpu_new(1, &g_be, &err) == VS_OK, "%s", err.msg);
    ck_assert_msg(vs_rt_engine_new(g_model, g_be, 2, &g_e, &err) == VS_OK, "%s", err.msg);
}

static void teardown(void)
{
    vs_rt_engine_free(g_e);
    vs_rt_backend_free(g_be);
    vs_rt_model_free(g_model);
    g_e = NULL;
    g_be = NULL;
    g_model = NULL;
}

static vs_kv_pool *pool_of(size_t pages)
{
    const vs_rt_config *c = &g_model->cfg;
    vs_err err = {0};
    vs_kv_pool *pool = NULL;
    ck_assert_msg(vs_kv_pool_init(pages * vs_kv_page_bytes(vs_kv_geometry_of(c, PT, 4)), vs_kv_geometry_of(c, PT, 4),
                                  NULL, &pool, &err) == VS_OK,
                  "%s", err.msg);
    return pool;
}

static vs_kv_policy *policy(vs_kv_policy_kind kind, double budget)
{
    vs_err err = {0};
    vs_kv_policy *p = NULL;
    ck_assert_msg(vs_kv_policy_new(kind, budget, &g_model->cfg, NULL, &p, &err) == VS_OK, "%s", err.msg);
    return p;
}

static void assert_pool_whole(const vs_kv_pool *pool)
{
    vs_kv_stats ks;
    vs_kv_pool_stats(pool, &ks);
    ck_assert_uint_eq(ks.pages_free, ks.pages_total);
    ck_assert_uint_eq(ks.pages_reserved, 0);
    ck_assert_uint_eq(ks.pages_used, 0);
    ck_assert_uint_eq(ks.reservations, 0);
}

START_TEST(an_image_started_and_ended_returns_every_page)
{
    const vs_rt_config *c = &g_model->cfg;
    vs_err err = {0};
    vs_kv_policy *full = policy(VS_KV_POLICY_FULL, 1);
    size_t per_image = vs_kv_policy_peak_pages_per_image(full, PT);
    ck_assert_uint_eq(per_image, VS_KV_ROWS_PER_IMAGE * vs_kv_policy_peak_pages_per_row(full, PT));
    vs_kv_pool *pool = pool_of(per_image);
    vs_kv_session *s = NULL;
    ck_assert_msg(vs_kv_session_new(g_e, pool, 2, &s, &err) == VS_OK, "%s", err.msg);
    vs_kv_image_req req = {3, 11, 1.5f, 900, 0.96f};
    /* ended right after its reservation, then after its start, then after running to the end */
    for (int run = 0; run < 3; run++) {
        vs_kv_image im;
        ck_assert_int_eq(vs_kv_image_reserve(s, &im, full), VS_KV_OK);
        ck_assert_uint_eq(im.pages, per_image);
        vs_kv_stats ks;
        vs_kv_pool_stats(pool, &ks);
        ck_assert_uint_eq(ks.pages_reserved, per_image);
        ck_assert_uint_eq(ks.reservations, 1);
        if (run > 0) {
            ck_assert_msg(vs_kv_image_start(s, &im, &req, &err) == VS_OK, "%s", err.msg);
            ck_assert_int_eq(im.img.label, 3);
            ck_assert_uint_eq(im.img.seed, 11);
            ck_assert_int_eq(im.img.top_k, 900);
            for (int r = 0; r < VS_KV_ROWS_PER_IMAGE; r++)
                ck_assert_ptr_eq(im.img.kv[r], vs_kv_row_heads(im.rows[r]));
        }
        if (run > 1) {
            vs_kv_image *ip = &im;
            for (int k = 0; k < c->n_scales; k++)
                ck_assert_msg(vs_kv_session_step(s, &ip, 1, NULL, NULL, &err) == VS_OK, "%s", err.msg);
            ck_assert_int_eq(im.img.scale, c->n_scales);
            for (int t = 0; t < c->scale_offset[c->n_scales]; t++)
                ck_assert(im.img.tokens[t] >= 0 && im.img.tokens[t] < c->vocab_size);
        }
        vs_kv_image_end(s, &im);
        ck_assert_ptr_null(im.resv);
        ck_assert_ptr_null(im.img.tokens);
        assert_pool_whole(pool);
    }
    vs_kv_session_free(s);
    vs_kv_pool_free(pool);
    vs_kv_policy_free(full);
}
END_TEST

START_TEST(reservations_answer_later_and_never_and_leave_nothing_behind)
{
    vs_err err = {0};
    vs_kv_policy *full = policy(VS_KV_POLICY_FULL, 1);
    size_t per_image = vs_kv_policy_peak_pages_per_image(full, PT);
    vs_kv_pool *small = pool_of(per_image - 1), *one = pool_of(per_image);
    vs_kv_session *s = NULL, *t = NULL;
    ck_assert(vs_kv_session_new(g_e, small, 1, &s, &err) == VS_OK);
    vs_kv_image a, b;
    ck_assert_int_eq(vs_kv_image_reserve(s, &a, full), VS_KV_NEVER);
    ck_assert_ptr_null(a.resv);
    vs_kv_image_end(s, &a); /* holds nothing: a no-op */
    assert_pool_whole(small);
    vs_kv_session_free(s);
    ck_assert(vs_kv_session_new(g_e, one, 1, &t, &err) == VS_OK);
    ck_assert_int_eq(vs_kv_image_reserve(t, &a, full), VS_KV_OK);
    ck_assert_int_eq(vs_kv_image_reserve(t, &b, full), VS_KV_LATER);
    ck_assert_ptr_null(b.resv);
    vs_kv_image_end(t, &a);
    ck_assert_int_eq(vs_kv_image_reserve(t, &b, full), VS_KV_OK);
    vs_kv_image_end(t, &b);
    assert_pool_whole(one);
    ck_assert_int_eq(vs_kv_session_new(g_e, one, 0, &s, &err), VS_ERR_INVALID);
    ck_assert_ptr_null(s);
    vs_kv_session_free(t);
    vs_kv_pool_free(small);
    vs_kv_pool_free(one);
    vs_kv_policy_free(full);
}
END_TEST

/* The tokens layer l of a row holds after computing scale s from `held` tokens under pol: what
 * kvcache/step keeps (docs/ALGORITHMS.md §2). */
static int held_after(const vs_kv_policy *pol, int l, int s, int held)
{
    const vs_rt_config *c = &g_model->cfg;
    int n = held + c->patch_nums[s] * c->patch_nums[s];
    if (s == c->n_scales - 1)
        return 0;
    int cap = vs_kv_policy_capacity(pol, l, 0, s, n);
    return cap < n ? cap : n;
}

START_TEST(a_step_of_images_at_different_scales_gives_each_row_its_policys_capacity)
{
    const vs_rt_config *c = &g_model->cfg;
    vs_err err = {0};
    vs_kv_policy *snap = policy(VS_KV_POLICY_SNAPKV, 0.3), *full = policy(VS_KV_POLICY_FULL, 1);
    size_t pa = vs_kv_policy_peak_pages_per_image(snap, PT), pb = vs_kv_policy_peak_pages_per_image(full, PT);
    ck_assert_uint_lt(pa, pb);
    vs_kv_pool *pool = pool_of(pa + pb);
    vs_kv_session *s = NULL;
    ck_assert(vs_kv_session_new(g_e, pool, 2, &s, &err) == VS_OK);
    vs_kv_image ims[2];
    vs_kv_image *both[2] = {&ims[0], &ims[1]};
    const vs_kv_policy *pols[2] = {snap, full};
    vs_kv_image_req reqs[2] = {{2, 5, 1.5f, 900, 0.96f}, {7, 6, 1.5f, 900, 0.96f}};
    int held[2][VS_KV_ROWS_PER_IMAGE][8] = {{{0}}};
    ck_assert_int_le(c->depth, 8);
    /* image 0 runs 3 scales alone, then image 1 joins it at scale 0 */
    const int head_start = 3;
    ck_assert_int_eq(vs_kv_image_reserve(s, &ims[0], snap), VS_KV_OK);
    ck_assert(vs_kv_image_start(s, &ims[0], &reqs[0], &err) == VS_OK);
    int steps = 0, compressed = 0;
    while (ims[0].img.scale < c->n_scales || (steps > head_start && ims[1].img.scale < c->n_scales)) {
        if (steps == head_start) {
            ck_assert_int_eq(vs_kv_image_reserve(s, &ims[1], full), VS_KV_OK);
            ck_assert(vs_kv_image_start(s, &ims[1], &reqs[1], &err) == VS_OK);
        }
        /* the running images, in order */
        vs_kv_image *run[2];
        int idx[2], n = 0;
        for (int i = 0; i < 2; i++)
            if ((i == 0 || steps >= head_start) && ims[i].img.scale < c->n_scales) {
                idx[n] = i;
                run[n++] = both[i];
            }
        int at[2];
        for (int k = 0; k < n; k++)
            at[k] = run[k]->img.scale;
        double kv_s = -1;
        ck_assert_msg(vs_kv_session_step(s, run, n, NULL, &kv_s, &err) == VS_OK, "%s", err.msg);
        ck_assert(kv_s >= 0);
        for (int k = 0; k < n; k++) {
            int i = idx[k];
            ck_assert_int_eq(ims[i].img.scale, at[k] + 1);
            for (int r = 0; r < VS_KV_ROWS_PER_IMAGE; r++)
                for (int l = 0; l < c->depth; l++) {
                    int want = held_after(pols[i], l, at[k], held[i][r][l]);
                    int n_new = c->patch_nums[at[k]] * c->patch_nums[at[k]];
                    compressed += at[k] < c->n_scales - 1 && want < held[i][r][l] + n_new;
                    held[i][r][l] = want;
                    ck_assert_int_eq(vs_kv_row_tokens(ims[i].rows[r], l, 0), want);
                }
        }
        /* pages drawn or still promised are exactly the images' reservations */
        vs_kv_stats ks;
        vs_kv_pool_stats(pool, &ks);
        size_t promised = pa + (steps >= head_start ? pb : 0);
        ck_assert_uint_eq(ks.pages_used + ks.pages_reserved, promised);
        steps++;
    }
    ck_assert_int_eq(steps, head_start + c->n_scales);
    ck_assert_int_gt(compressed, 0); /* the snapkv rows were compressed at some scale */
    for (int i = 0; i < 2; i++)
        vs_kv_image_end(s, &ims[i]);
    assert_pool_whole(pool);
    vs_kv_session_free(s);
    vs_kv_pool_free(pool);
    vs_kv_policy_free(snap);
    vs_kv_policy_free(full);
}
END_TEST

static Suite *session_suite(void)
{
    Suite *s = suite_create("session");
    TCase *tc = tcase_create("images");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, an_image_started_and_ended_returns_every_page);
    tcase_add_test(tc, reservations_answer_later_and_never_and_leave_nothing_behind);
    tcase_add_test(tc, a_step_of_images_at_different_scales_gives_each_row_its_policys_capacity);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    SRunner *sr = srunner_create(session_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
