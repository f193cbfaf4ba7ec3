/* tests/check_parity.c — the engine against the public VAR reference (tests/fixtures/tiny) and the
 * properties serving relies on: batching and thread count never change an image.
 *
 * The golden file was computed by FoundationVision/VAR (see tests/fixtures/tiny/README.md):
 * greedy tokens of labels 3 and 7 at cfg 1.5, guided logits of the first six scales, the final
 * f_hat and image, and a decoder-only case. Also: the CPU backend's threads flush subnormals
 * (runtime/fpenv.h), which is what keeps Intel cores out of denormal assists. */
#include <check.h>
#include <float.h>
#include <stdio.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/pool.h"
#include "runtime/blas.h"
#include "runtime/fpenv.h"
#include "runtime/philox.h"
#include "runtime/sample.h"
#include "runtime/threads.h"
#include "runtime/var.h"
#include "server/gen.h"
#include "server/png.h"
#include "tests/st_read.h"

#define MODEL "tests/fixtures/tiny/model.safetensors"
#define GOLDEN "tests/fixtures/tiny/golden.safetensors"

static vs_rt_model *g_model;
static st_file g_gold;

static void setup(void)
{
    vs_err err = {0};
    ck_assert_msg(vs_rt_model_load(MODEL, &g_model, &err) == VS_OK, "%s", err.msg);
    ck_assert_int_eq(st_open(&g_gold, GOLDEN), 0);
}

static void teardown(void)
{
    vs_rt_model_free(g_model);
    g_model = NULL;
    st_close(&g_gold);
}

typedef struct {
    vs_rt_backend *be;
    vs_rt_engine *e;
    vs_kv_pool *pool;
} rig;

static rig rig_of(const vs_rt_model *m, int threads, int max_images)
{
    rig r = {0};
    vs_err err = {0};
    const vs_rt_config *c = &m->cfg;
    ck_assert_msg(vs_rt_backend_cpu_new(threads, &r.be, &err) == VS_OK, "%s", err.msg);
    ck_assert_msg(vs_rt_engine_new(m, r.be, max_images, &r.e, &err) == VS_OK, "%s", err.msg);
    size_t page_bytes = (size_t)2 * 16 * c->embed_dim * 4;
    ck_assert(vs_kv_pool_init(page_bytes * 400 * (size_t)max_images, vs_kv_geometry_of(c, 16, 4), NULL,
                              &r.pool, &err) == VS_OK);
    vs_rt_engine_set_kv(r.e, vs_kv_pool_base(r.pool), 16);
    return r;
}

static rig rig_new(int threads, int max_images) { return rig_of(g_model, threads, max_images); }

static void rig_free(rig *r)
{
    vs_kv_pool_free(r->pool);
    vs_rt_engine_free(r->e);
    vs_rt_backend_free(r->be);
}

/* ---- reference parity -------------------------------------------------------------------------- */

START_TEST(greedy_tokens_logits_fhat_and_image_match_the_reference)
{
    const vs_rt_config *c = &g_model->cfg;
    rig r = rig_new(2, 2);
    vs_err err = {0};
    vs_kv_resv *resv = NULL;
    ck_assert_int_eq(vs_kv_reserve(r.pool, 2 * vs_srv_full_cache_pages(c, r.pool), &resv), VS_KV_OK);
    const int32_t *labels = st_get(&g_gold, "labels", NULL);
    vs_rt_image img[2] = {{0}};
    vs_rt_image *ptrs[2] = {&img[0], &img[1]};
    vs_kv_row *rows[4];
    int V = c->vocab_size;
    float *glog[2];
    for (int i = 0; i < 2; i++) {
        ck_assert(vs_rt_image_init(r.e, &img[i], &err) == VS_OK);
        img[i].label = labels[i];
        img[i].cfg = 1.5f;
        img[i].top_k = 1;
        img[i].top_p = 0;
        img[i].seed = (uint64_t)i;
        glog[i] = malloc((size_t)256 * V * sizeof(float));
        for (int k = 0; k < 2; k++)
            ck_assert(vs_kv_row_new(resv, &rows[2 * i + k], &err) == VS_OK);
    }
    for (int s = 0; s < c->n_scales; s++) {
        int nt = c->patch_nums[s] * c->patch_nums[s];
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < c->depth; l++)
                ck_assert(vs_kv_row_reserve_tokens(rows[k], l, VS_KV_ALL_HEADS, nt, &err) == VS_OK);
        for (int i = 0; i < 2; i++) {
            img[i].kv[0] = vs_kv_row_heads(rows[2 * i]);
            img[i].kv[1] = vs_kv_row_heads(rows[2 * i + 1]);
            img[i].guided_logits = glog[i];
        }
        ck_assert_msg(vs_rt_step(r.e, ptrs, 2, NULL, &err) == VS_OK, "%s", err.msg);
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < c->depth; l++)
                vs_kv_row_commit(rows[k], l, VS_KV_ALL_HEADS, nt);
        char name[32];
        snprintf(name, sizeof name, "tokens.%d", s);
        const int32_t *gt = st_get(&g_gold, name, NULL);
        for (int i = 0; i < 2; i++)
            for (int t = 0; t < nt; t++)
                ck_assert_msg(img[i].tokens[c->scale_offset[s] + t] == gt[i * nt + t],
                              "image %d scale %d token %d: %d, reference %d", i, s, t,
                              img[i].tokens[c->scale_offset[s] + t], gt[i * nt + t]);
        snprintf(name, sizeof name, "logits.%d", s);
        const float *gl = st_get(&g_gold, name, NULL);
        if (gl) {
            double worst = 0;
            for (int i = 0; i < 2; i++)
                for (size_t k = 0; k < (size_t)nt * V; k++) {
                    double dd = fabs(glog[i][k] - gl[(size_t)i * nt * V + k]);
                    worst = dd > worst ? dd : worst;
                }
            ck_assert_msg(worst <= 1e-3, "scale %d guided logits differ by %g (limit 1e-3)", s, worst);
        }
    }
    const float *gf = st_get(&g_gold, "f_hat", NULL);
    const float *gi = st_get(&g_gold, "image", NULL);
    int P = c->patch_nums[c->n_scales - 1], HW = c->image_size * c->image_size;
    float *fh = malloc((size_t)c->z_channels * P * P * sizeof(float));
    float *unit[2] = {malloc((size_t)3 * HW * sizeof(float)), malloc((size_t)3 * HW * sizeof(float))};
    ck_assert(vs_rt_decode(r.e, ptrs, 2, NULL, unit, &err) == VS_OK);
    for (int i = 0; i < 2; i++) {
        vs_rt_image_fhat(r.e, &img[i], fh);
        double wf = 0, wi = 0;
        for (int k = 0; k < c->z_channels * P * P; k++)
            wf = fmax(wf, fabs(fh[k] - gf[(size_t)i * c->z_channels * P * P + k]));
        for (int k = 0; k < 3 * HW; k++)
            wi = fmax(wi, fabs(unit[i][k] - gi[(size_t)i * 3 * HW + k]));
        ck_assert_msg(wf <= 1e-4, "image %d f_hat differs by %g (limit 1e-4)", i, wf);
        ck_assert_msg(wi <= 1.0 / 255, "image %d pixels differ by %g (limit 1/255)", i, wi);
        vs_rt_image_free(r.e, &img[i]);
        free(glog[i]);
        free(unit[i]);
    }
    free(fh);
    vs_kv_release(resv);
    rig_free(&r);
}
END_TEST

START_TEST(decoder_alone_matches_the_reference_image)
{
    const vs_rt_config *c = &g_model->cfg;
    rig r = rig_new(2, 1);
    vs_err err = {0};
    int L = c->scale_offset[c->n_scales], HW = c->image_size * c->image_size;
    int32_t *tok = malloc((size_t)L * sizeof *tok);
    for (int s = 0; s < c->n_scales; s++) {
        char name[32];
        snprintf(name, sizeof name, "vae_tokens.%d", s);
        const int32_t *t = st_get(&g_gold, name, NULL);
        memcpy(tok + c->scale_offset[s], t, (size_t)c->patch_nums[s] * c->patch_nums[s] * 4);
    }
    vs_rt_image img = {0};
    vs_rt_image *ptr = &img;
    ck_assert(vs_rt_image_init(r.e, &img, &err) == VS_OK);
    ck_assert_msg(vs_rt_image_set_tokens(r.e, &img, tok, &err) == VS_OK, "%s", err.msg);
    float *unit = malloc((size_t)3 * HW * sizeof(float));
    ck_assert(vs_rt_decode(r.e, &ptr, 1, NULL, &unit, &err) == VS_OK);
    const float *gi = st_get(&g_gold, "vae_image", NULL);
    double wi = 0;
    for (int k = 0; k < 3 * HW; k++)
        wi = fmax(wi, fabs(unit[k] - gi[k]));
    ck_assert_msg(wi <= 1.0 / 255, "decoded pixels differ by %g (limit 1/255)", wi);
    /* a token outside the vocabulary is refused, not read out of bounds */
    tok[5] = c->vocab_size;
    ck_assert_int_eq(vs_rt_image_set_tokens(r.e, &img, tok, &err), VS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "vocabulary"));
    vs_rt_image_free(r.e, &img);
    free(unit);
    free(tok);
    rig_free(&r);
}
END_TEST

/* ---- batching and threads never change an image -------------------------------------------------- */

static void gen(rig *r, const vs_srv_gen_req *reqs, int n, uint8_t **rgb, int32_t **tok)
{
    vs_err err = {0};
    ck_assert_msg(vs_srv_gen_run(r->e, r->pool, reqs, n, rgb, tok, NULL, &err) == VS_OK, "%s", err.msg);
}

static vs_srv_gen_req sampled(int label, uint64_t seed)
{
    return (vs_srv_gen_req){label, seed, 1.5f, 900, 0.96f};
}

START_TEST(each_image_of_a_batch_equals_the_image_generated_alone)
{
    const vs_rt_config *c = &g_model->cfg;
    rig r = rig_new(2, 4);
    int n = 4, L = c->scale_offset[c->n_scales], B = c->image_size * c->image_size * 3;
    vs_srv_gen_req reqs[4] = {sampled(3, 11), sampled(7, 12), sampled(3, 13), sampled(0, 14)};
    uint8_t *rgb[4], *one_rgb = malloc((size_t)B);
    int32_t *tok[4], *one_tok = malloc((size_t)L * 4);
    for (int i = 0; i < n; i++) {
        rgb[i] = malloc((size_t)B);
        tok[i] = malloc((size_t)L * 4);
    }
    gen(&r, reqs, n, rgb, tok);
    /* images 0 and 2 share a label but not a seed: they must differ */
    ck_assert(memcmp(tok[0], tok[2], (size_t)L * 4) != 0);
    for (int i = 0; i < n; i++) {
        gen(&r, &reqs[i], 1, &one_rgb, &one_tok);
        ck_assert_msg(memcmp(tok[i], one_tok, (size_t)L * 4) == 0, "image %d tokens differ alone", i);
        ck_assert_msg(memcmp(rgb[i], one_rgb, (size_t)B) == 0, "image %d pixels differ alone", i);
        free(rgb[i]);
        free(tok[i]);
    }
    free(one_rgb);
    free(one_tok);
    rig_free(&r);
}
END_TEST

/* The bundled model's small decoder decodes 15 images per group (runtime/vae.c): 20 images
 * are two groups, the second partly full; each image's pixels equal its decode alone. */
START_TEST(images_decoded_together_equal_each_decoded_alone)
{
    vs_rt_model *m = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_model_load("models/mnist-var.safetensors", &m, &err) == VS_OK, "%s", err.msg);
    enum { N = 20 };
    rig r = rig_of(m, 2, N);
    size_t B = (size_t)m->cfg.image_size * m->cfg.image_size * 3;
    vs_srv_gen_req reqs[N];
    uint8_t *rgb[N], *one = malloc(B);
    for (int i = 0; i < N; i++) {
        reqs[i] = (vs_srv_gen_req){i % 10, (uint64_t)(100 + i), 1.5f, 50, 0.9f};
        rgb[i] = malloc(B);
    }
    gen(&r, reqs, N, rgb, NULL);
    ck_assert(memcmp(rgb[0], rgb[10], B) != 0); /* same label, other seed: not the same image */
    for (int i = 0; i < N; i++) {
        gen(&r, &reqs[i], 1, &one, NULL);
        ck_assert_msg(memcmp(rgb[i], one, B) == 0, "image %d of %d pixels differ decoded alone", i, N);
        free(rgb[i]);
    }
    free(one);
    rig_free(&r);
    vs_rt_model_free(m);
}
END_TEST

/* Advances img[first..last] by one scale in one step, with the KV bookkeeping around it. */
static void step_images(rig *r, vs_rt_image *img, vs_kv_row **rows, int first, int last)
{
    const vs_rt_config *c = &g_model->cfg;
    vs_err err = {0};
    vs_rt_image *run[3] = {NULL, NULL, NULL};
    int nt[3] = {0, 0, 0};
    for (int i = first; i <= last; i++) {
        nt[i] = c->patch_nums[img[i].scale] * c->patch_nums[img[i].scale];
        for (int rr = 0; rr < 2; rr++) {
            for (int l = 0; l < c->depth; l++)
                ck_assert(vs_kv_row_reserve_tokens(rows[2 * i + rr], l, VS_KV_ALL_HEADS, nt[i], &err) == VS_OK);
            img[i].kv[rr] = vs_kv_row_heads(rows[2 * i + rr]);
        }
        run[i - first] = &img[i];
    }
    ck_assert_msg(vs_rt_step(r->e, run, last - first + 1, NULL, &err) == VS_OK, "%s", err.msg);
    for (int i = first; i <= last; i++)
        for (int rr = 0; rr < 2; rr++)
            for (int l = 0; l < c->depth; l++)
                vs_kv_row_commit(rows[2 * i + rr], l, VS_KV_ALL_HEADS, nt[i]);
}

/* Continuous batching: an image that joins while others are at a later scale. */
/* Reserves the full cache for n images in one reservation and sets them up from reqs, with
 * their cond/uncond rows in rows[2i], rows[2i+1]; the caller releases the reservation. */
static vs_kv_resv *start_images(rig *r, const vs_srv_gen_req *reqs, int n, vs_rt_image *img,
                                vs_kv_row **rows)
{
    const vs_rt_config *c = &g_model->cfg;
    vs_err err = {0};
    vs_kv_resv *resv = NULL;
    ck_assert_int_eq(vs_kv_reserve(r->pool, (size_t)n * vs_srv_full_cache_pages(c, r->pool), &resv),
                     VS_KV_OK);
    for (int i = 0; i < n; i++) {
        ck_assert(vs_rt_image_init(r->e, &img[i], &err) == VS_OK);
        img[i].label = reqs[i].label;
        img[i].seed = reqs[i].seed;
        img[i].cfg = reqs[i].cfg;
        img[i].top_k = reqs[i].top_k;
        img[i].top_p = reqs[i].top_p;
        ck_assert(vs_kv_row_new(resv, &rows[2 * i], &err) == VS_OK);
        ck_assert(vs_kv_row_new(resv, &rows[2 * i + 1], &err) == VS_OK);
    }
    return resv;
}

/* Images 0 and 1 start together and image 2 joins after 3 steps: its steps hold a group of two
 * images at one scale beside one at another (the quantiser runs per group). */
START_TEST(an_image_joining_a_running_batch_at_another_scale_is_unchanged)
{
    const vs_rt_config *c = &g_model->cfg;
    rig r = rig_new(1, 3);
    int L = c->scale_offset[c->n_scales];
    vs_srv_gen_req reqs[3] = {sampled(5, 101), sampled(2, 202), sampled(7, 303)};
    int32_t *alone[3];
    for (int i = 0; i < 3; i++) {
        alone[i] = malloc((size_t)L * 4);
        ck_assert_ptr_nonnull(alone[i]);
        gen(&r, &reqs[i], 1, NULL, &alone[i]);
    }

    vs_rt_image img[3] = {{0}};
    vs_kv_row *rows[6];
    vs_kv_resv *resv = start_images(&r, reqs, 3, img, rows);
    for (int step = 0; img[1].scale < c->n_scales || img[2].scale < c->n_scales; step++) {
        int first = img[0].scale < c->n_scales ? 0 : 2;
        int last = step >= 3 && img[2].scale < c->n_scales ? 2 : 1;
        step_images(&r, img, rows, first, last);
    }
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(memcmp(img[i].tokens, alone[i], (size_t)L * 4) == 0,
                      "image %d changed when batched at a different scale", i);
        vs_rt_image_free(r.e, &img[i]);
        free(alone[i]);
    }
    vs_kv_release(resv);
    rig_free(&r);
}
END_TEST

START_TEST(the_same_seed_gives_the_same_png_bytes_on_one_and_two_threads)
{
    const vs_rt_config *c = &g_model->cfg;
    int B = c->image_size * c->image_size * 3;
    vs_srv_gen_req reqs[2] = {sampled(1, 77), sampled(8, 78)};
    unsigned char *png[2][2];
    size_t len[2][2];
    for (int t = 0; t < 2; t++) {
        rig r = rig_new(t + 1, 2);
        uint8_t *rgb[2] = {malloc((size_t)B), malloc((size_t)B)};
        gen(&r, reqs, 2, rgb, NULL);
        vs_err err = {0};
        for (int i = 0; i < 2; i++) {
            ck_assert(vs_srv_png_encode(rgb[i], c->image_size, c->image_size, &png[t][i], &len[t][i],
                                        &err) == VS_OK);
            free(rgb[i]);
        }
        rig_free(&r);
    }
    for (int i = 0; i < 2; i++) {
        ck_assert_uint_eq(len[0][i], len[1][i]);
        ck_assert(memcmp(png[0][i], png[1][i], len[0][i]) == 0);
        free(png[0][i]);
        free(png[1][i]);
    }
}
END_TEST

START_TEST(a_batch_the_pool_cannot_hold_is_refused_with_kv_full)
{
    const vs_rt_config *c = &g_model->cfg;
    vs_err err = {0};
    vs_rt_backend *be = NULL;
    vs_rt_engine *e = NULL;
    vs_kv_pool *pool = NULL;
    ck_assert(vs_rt_backend_cpu_new(1, &be, &err) == VS_OK);
    ck_assert(vs_rt_engine_new(g_model, be, 2, &e, &err) == VS_OK);
    size_t page_bytes = (size_t)2 * 16 * c->embed_dim * 4;
    ck_assert(vs_kv_pool_init(page_bytes * 200, vs_kv_geometry_of(c, 16, 4), NULL, &pool, &err) == VS_OK);
    vs_srv_gen_req reqs[2] = {sampled(1, 1), sampled(2, 2)};
    ck_assert_int_eq(vs_srv_gen_run(e, pool, reqs, 2, NULL, NULL, NULL, &err), VS_ERR_KV_FULL);
    ck_assert_ptr_nonnull(strstr(err.msg, "pages"));
    /* one image (172 pages) fits, and the pool is whole again afterwards */
    ck_assert_int_eq(vs_srv_gen_run(e, pool, reqs, 1, NULL, NULL, NULL, &err), VS_OK);
    vs_kv_stats ks;
    vs_kv_pool_stats(pool, &ks);
    ck_assert_uint_eq(ks.pages_free, ks.pages_total);
    ck_assert_uint_eq(ks.pages_reserved, 0);
    vs_kv_pool_free(pool);
    vs_rt_engine_free(e);
    vs_rt_backend_free(be);
}
END_TEST


/* ---- KV policies through the per-layer hooks ------------------------------------------------------ */

START_TEST(the_per_layer_full_cache_gives_the_same_images_with_fewer_pages)
{
    /* the same two images driven step by step with every layer reserved before each step and
     * committed after it (no hooks), against the driver's per-layer hooks */
    const vs_rt_config *c = &g_model->cfg;
    rig r = rig_new(2, 2);
    vs_err err = {0};
    int L = c->scale_offset[c->n_scales];
    vs_srv_gen_req reqs[2] = {sampled(4, 5), sampled(9, 6)};
    vs_rt_image img[2] = {{0}};
    vs_kv_row *rows[4];
    vs_kv_resv *resv = start_images(&r, reqs, 2, img, rows);
    while (img[0].scale < c->n_scales)
        step_images(&r, img, rows, 0, 1);
    vs_kv_release(resv);
    int32_t *b[2] = {malloc((size_t)L * 4), malloc((size_t)L * 4)};
    vs_srv_gen_opts o = {0};
    ck_assert_msg(vs_srv_gen_run_opts(r.e, r.pool, reqs, 2, NULL, b, NULL, &o, &err) == VS_OK, "%s",
                  err.msg);
    for (int i = 0; i < 2; i++) {
        ck_assert(memcmp(img[i].tokens, b[i], (size_t)L * 4) == 0);
        vs_rt_image_free(r.e, &img[i]);
        free(b[i]);
    }
    /* storing a scale's tokens only where they are kept (never the last scale's) needs exactly
     * every head of every layer holding the 424 tokens before the last scale: 2 rows x 2 layers
     * x heads x 27 pages */
    ck_assert_uint_lt(o.peak_pages_per_image, vs_srv_full_cache_pages(c, r.pool));
    ck_assert_uint_eq(o.peak_pages_per_image, 2 * 2 * (size_t)c->num_heads * 27);
    vs_kv_stats ks;
    vs_kv_pool_stats(r.pool, &ks);
    ck_assert_uint_eq(ks.pages_free, ks.pages_total);
    rig_free(&r);
}
END_TEST

START_TEST(compressing_policies_reserve_less_and_return_every_page)
{
    const vs_rt_config *c = &g_model->cfg;
    rig r = rig_new(2, 1);
    vs_err err = {0};
    int L = c->scale_offset[c->n_scales];
    vs_srv_gen_req req = sampled(2, 42);
    int32_t *full_tok = malloc((size_t)L * 4), *tok = malloc((size_t)L * 4);
    vs_srv_gen_opts o = {0};
    ck_assert(vs_srv_gen_run_opts(r.e, r.pool, &req, 1, NULL, &full_tok, NULL, &o, &err) == VS_OK);
    size_t full_pages = o.peak_pages_per_image;
    for (int k = VS_KV_POLICY_SCALEKV; k < VS_KV_POLICY_COUNT; k++) {
        vs_kv_policy *p = NULL;
        ck_assert(vs_kv_policy_new((vs_kv_policy_kind)k, 0.1, c, NULL, &p, &err) == VS_OK);
        vs_srv_gen_opts po = {.policy = p};
        ck_assert_msg(vs_srv_gen_run_opts(r.e, r.pool, &req, 1, NULL, &tok, NULL, &po, &err) == VS_OK,
                      "%s: %s", vs_kv_policy_name((vs_kv_policy_kind)k), err.msg);
        ck_assert_msg(po.peak_pages_per_image < full_pages, "%s reserves %zu pages, full %zu",
                      vs_kv_policy_name((vs_kv_policy_kind)k), po.peak_pages_per_image, full_pages);
        /* the first scales fit the budget untouched: their tokens cannot change */
        ck_assert(memcmp(tok, full_tok, (size_t)c->scale_offset[5] * 4) == 0);
        for (int t = 0; t < L; t++)
            ck_assert(tok[t] >= 0 && tok[t] < c->vocab_size);
        vs_kv_stats ks;
        vs_kv_pool_stats(r.pool, &ks);
        ck_assert_uint_eq(ks.pages_free, ks.pages_total);
        ck_assert_uint_eq(ks.pages_reserved, 0);
        vs_kv_policy_free(p);
    }
    free(full_tok);
    free(tok);
    rig_free(&r);
}
END_TEST

/* ---- sampling rule and generator ------------------------------------------------------------------- */

START_TEST(top_k_and_top_p_keep_exactly_what_the_reference_rule_keeps)
{
    /* logits 0..9 = 0,1,...,9 (distinct). softmax ascending cumsums are known in closed form. */
    enum { V = 10 };
    float lg[V];
    uint64_t buf[(VS_RT_SAMPLE_SCRATCH_WORDS(V) + 1) / 2]; /* 8-aligned */
    uint8_t keep[V];
    vs_rt_sample_scratch s = {buf};
    for (int i = 0; i < V; i++)
        lg[i] = (float)i;
    /* top-k 3 keeps 7, 8, 9 */
    ck_assert_int_eq(vs_rt_sample_filter(lg, V, 3, 0, keep, &s), 3);
    for (int i = 0; i < V; i++)
        ck_assert_int_eq(keep[i], i >= 7);
    /* top-p 0.5 over all: p(9) = 0.632 > 0.5 alone; cumsum of the rest = 0.368 <= 0.5 → only 9 */
    ck_assert_int_eq(vs_rt_sample_filter(lg, V, 0, 0.5f, keep, &s), 1);
    ck_assert_int_eq(keep[9], 1);
    /* top-p 0.8: drop while cumsum <= 0.2; cumsum through 7 is 0.1353 (kept out), through 8 is
     * 0.3679 > 0.2 → keep 8 and 9 */
    ck_assert_int_eq(vs_rt_sample_filter(lg, V, 0, 0.8f, keep, &s), 2);
    ck_assert(keep[8] && keep[9] && !keep[7]);
    /* top-p 0.9: drop while cumsum <= 0.1: through 6 is 0.0498, through 7 is 0.1353 → keep 7.. */
    ck_assert_int_eq(vs_rt_sample_filter(lg, V, 0, 0.9f, keep, &s), 3);
    ck_assert(keep[7] && !keep[6]);
    /* top-k 2 then top-p 0.9 renormalised over {8, 9}: p(8) = 0.269 > 0.1 → both kept */
    ck_assert_int_eq(vs_rt_sample_filter(lg, V, 2, 0.9f, keep, &s), 2);
    /* ties at the k-th value are kept, as the reference's "< k-th largest" mask does */
    float tie[V] = {5, 5, 5, 1, 0, 0, 0, 0, 0, 0};
    ck_assert_int_eq(vs_rt_sample_filter(tie, V, 2, 0, keep, &s), 3);
    ck_assert(keep[0] && keep[1] && keep[2] && !keep[3]);
    /* sampling only ever returns kept tokens; greedy is the argmax */
    for (int k = 0; k < 200; k++) {
        float u = vs_philox_uniform(9, 1, k);
        int32_t t = vs_rt_sample_token(lg, V, 3, 0.9f, u, &s);
        ck_assert(t >= 7 && t <= 9);
    }
    ck_assert_int_eq(vs_rt_sample_token(lg, V, 1, 0, 0.99f, &s), 9);
}
END_TEST

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

START_TEST(top_k_keeps_every_logit_at_or_above_the_sorted_kth_on_random_logits)
{
    /* the selection (radix on float keys) against a sort: negative, positive, ±0, many ties */
    enum { V = 4096 };
    static float lg[V], sorted[V];
    static uint64_t buf[(VS_RT_SAMPLE_SCRATCH_WORDS(V) + 1) / 2]; /* 8-aligned */
    static uint8_t keep[V];
    vs_rt_sample_scratch s = {buf};
    srand(7);
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < V; i++) {
            int r = rand();
            lg[i] = round % 2 ? (float)(r % 41 - 20) * 0.5f : ((float)r / (float)RAND_MAX - 0.5f) * 40.0f;
            if (r % 97 == 0)
                lg[i] = (r / 97) % 2 ? 0.0f : -0.0f;
        }
        memcpy(sorted, lg, sizeof lg);
        qsort(sorted, V, sizeof *sorted, cmp_desc);
        int ks[] = {1, 2, 50, 900, 2048, V - 1};
        for (size_t q = 0; q < sizeof ks / sizeof ks[0]; q++) {
            float kth = sorted[ks[q] - 1];
            int want = 0;
            for (int i = 0; i < V; i++)
                want += lg[i] >= kth;
            ck_assert_int_eq(vs_rt_sample_filter(lg, V, ks[q], 0, keep, &s), want);
            for (int i = 0; i < V; i++)
                ck_assert_int_eq(keep[i], lg[i] >= kth);
        }
    }
}
END_TEST

/* The rule written plainly, as runtime/sample.h states it: keep ≥ the sorted k-th largest; sort
 * the kept ascending by (value, −0 below +0, then index); drop while the softmax cumsum (double,
 * from max-subtracted expf weights) stays ≤ 1 − top_p, keeping the largest; then walk from the
 * largest until the running weight passes u × their total. */
typedef struct {
    float v;
    int i;
} ref_cand;

static uint32_t ref_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static int ref_cand_cmp(const void *a, const void *b)
{
    const ref_cand *x = a, *y = b;
    uint32_t kx = ref_key(x->v), ky = ref_key(y->v);
    if (kx != ky)
        return kx < ky ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

static int ref_index_cmp(const void *a, const void *b)
{
    const ref_cand *x = a, *y = b;
    return (x->i > y->i) - (x->i < y->i);
}

static int ref_rule(const float *lg, int V, int top_k, float top_p, float u, ref_cand *c, int *n_kept)
{
    int n = 0;
    for (int i = 0; i < V; i++)
        c[n++] = (ref_cand){lg[i], i};
    qsort(c, (size_t)n, sizeof *c, ref_cand_cmp);
    if (top_k > 0 && top_k < V) {
        float kth = c[V - top_k].v;
        int first = 0;
        while (!(c[first].v >= kth))
            first++;
        memmove(c, c + first, (size_t)(n - first) * sizeof *c);
        n -= first;
    }
    if (top_p > 0 && n > 1) {
        double total = 0, cum = 0;
        for (int i = 0; i < n; i++)
            total += expf(c[i].v - c[n - 1].v);
        int drop = 0;
        for (int i = 0; i < n - 1; i++) {
            cum += expf(c[i].v - c[n - 1].v);
            if (cum <= (1.0 - (double)top_p) * total)
                drop = i + 1;
            else
                break;
        }
        memmove(c, c + drop, (size_t)(n - drop) * sizeof *c);
        n -= drop;
    } else {
        qsort(c, (size_t)n, sizeof *c, ref_index_cmp); /* unsorted candidates are in index order */
    }
    *n_kept = n;
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        mx = c[i].v > mx ? c[i].v : mx;
    double total = 0, acc = 0;
    for (int i = 0; i < n; i++)
        total += expf(c[i].v - mx);
    for (int i = n - 1; i >= 0; i--) {
        acc += expf(c[i].v - mx);
        if (acc > (double)u * total)
            return c[i].i;
    }
    return c[n - 1].i;
}

START_TEST(sampled_tokens_equal_the_rule_written_plainly_on_every_kind_of_logits)
{
    /* the radix selection and the radix sort of packed (key, index) words, and the weights the
     * top-p pass hands to the draw, against the plain rule on logits of every shape: spread,
     * tied, ±0, an outlier at ±3e38, infinities, all equal, subnormal, the whole float range */
    enum { V = 1024 };
    static float lg[V];
    static ref_cand cand[V];
    static uint64_t buf[(VS_RT_SAMPLE_SCRATCH_WORDS(V) + 1) / 2];
    static uint8_t keep[V];
    vs_rt_sample_scratch s = {buf};
    srand(11);
    const char *kinds[] = {"gaussian-like", "ties and zeros", "one huge outlier", "infinities",
                           "all equal", "a subnormal range", "the full float range"};
    const int nk = (int)(sizeof kinds / sizeof kinds[0]);
    const int ks[] = {0, 2, 50, 900};
    const float ps[] = {0, 0.5f, 0.96f};
    for (int round = 0; round < 3 * nk; round++) {
        int kind = round % nk;
        for (int i = 0; i < V; i++) {
            float r = (float)rand() / (float)RAND_MAX;
            float g = (r + (float)rand() / (float)RAND_MAX + (float)rand() / (float)RAND_MAX - 1.5f) * 6.0f;
            switch (kind) {
            case 0: lg[i] = g; break;
            case 1: lg[i] = rand() % 7 == 0 ? (rand() % 2 ? 0.0f : -0.0f) : (float)(rand() % 9 - 4); break;
            case 2: lg[i] = i == 17 ? 3e38f : i == 400 ? -3e38f : g; break;
            case 3: lg[i] = i % 97 == 5 ? -INFINITY : i == 300 && round >= nk ? INFINITY : g; break;
            case 4: lg[i] = 1.25f; break;
            case 5: lg[i] = r * 1e-39f; break;
            default: lg[i] = (rand() % 2 ? 1.0f : -1.0f) * r * 3.4e38f; break;
            }
        }
        for (size_t a = 0; a < sizeof ks / sizeof ks[0]; a++)
            for (size_t b = 0; b < sizeof ps / sizeof ps[0]; b++) {
                if (kind == 3 && ps[b] > 0)
                    continue; /* softmax over ±inf is NaN in the reference too: top-k only */
                for (int t = 0; t < 8; t++) {
                    float u = vs_philox_uniform(5, round, t);
                    int n_ref;
                    int want = ref_rule(lg, V, ks[a], ps[b], u, cand, &n_ref);
                    int got = vs_rt_sample_token(lg, V, ks[a], ps[b], u, &s);
                    ck_assert_msg(got == want, "%s, top_k %d, top_p %.2f, u %.4f: token %d, rule %d", kinds[kind],
                                  ks[a], (double)ps[b], (double)u, got, want);
                    ck_assert_int_eq(vs_rt_sample_filter(lg, V, ks[a], ps[b], keep, &s), n_ref);
                    for (int i = 0; i < n_ref; i++)
                        ck_assert_msg(keep[cand[i].i], "%s: token %d not kept", kinds[kind], cand[i].i);
                }
            }
    }
}
END_TEST

START_TEST(sampling_frequencies_follow_the_kept_softmax)
{
    enum { V = 4 };
    float lg[V] = {0, 1, 2, (float)log(3.0) + 2}; /* kept with top-k 2: 2 and 3, p = 1/4, 3/4 */
    uint64_t buf[(VS_RT_SAMPLE_SCRATCH_WORDS(V) + 1) / 2]; /* 8-aligned */
    vs_rt_sample_scratch s = {buf};
    int count[V] = {0};
    for (int k = 0; k < 20000; k++)
        count[vs_rt_sample_token(lg, V, 2, 0, vs_philox_uniform(1234, 3, k), &s)]++;
    ck_assert_int_eq(count[0] + count[1], 0);
    ck_assert_msg(abs(count[3] - 15000) < 400, "token 3 drawn %d of 20000 times (expect ~15000)", count[3]);
}
END_TEST

START_TEST(philox_matches_the_published_known_answers)
{
    uint32_t out[4];
    const uint32_t z[4] = {0, 0, 0, 0}, zk[2] = {0, 0};
    vs_philox4x32_10(z, zk, out);
    ck_assert_uint_eq(out[0], 0x6627e8d5u);
    ck_assert_uint_eq(out[1], 0xe169c58du);
    ck_assert_uint_eq(out[2], 0xbc57ac4cu);
    ck_assert_uint_eq(out[3], 0x9b00dbd8u);
    const uint32_t f[4] = {~0u, ~0u, ~0u, ~0u}, fk[2] = {~0u, ~0u};
    vs_philox4x32_10(f, fk, out);
    ck_assert_uint_eq(out[0], 0x408f276du);
    ck_assert_uint_eq(out[1], 0x41c83b0eu);
    ck_assert_uint_eq(out[2], 0xa20bc7c6u);
    ck_assert_uint_eq(out[3], 0x6d5451fdu);
    const uint32_t p[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u};
    const uint32_t pk[2] = {0xa4093822u, 0x299f31d0u};
    vs_philox4x32_10(p, pk, out);
    ck_assert_uint_eq(out[0], 0xd16cfe09u);
    ck_assert_uint_eq(out[1], 0x94fdccebu);
    ck_assert_uint_eq(out[2], 0x5001e420u);
    ck_assert_uint_eq(out[3], 0x24126ea1u);
}
END_TEST

/* ---- floating-point mode of the backend's threads ------------------------------------------------ */

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* 1 (after a printed reason) where this architecture keeps IEEE gradual underflow */
static int fp_env_unsupported(void)
{
    if (vs_rt_fp_env_flushing() >= 0)
        return 0;
    printf("skipped: no flush-to-zero mode on this architecture (runtime/fpenv.c is a no-op)\n");
    return 1;
}

START_TEST(creating_a_cpu_backend_makes_it_and_every_worker_flush_subnormals)
{
    if (fp_env_unsupported())
        return;
    vs_rt_fp_env_reset(); /* as a fresh thread starts: IEEE gradual underflow */
    ck_assert_int_eq(vs_rt_fp_env_flushing(), 0);
    vs_rt_backend *be = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_backend_cpu_new(3, &be, &err) == VS_OK, "%s", err.msg);
    ck_assert_int_eq(vs_rt_fp_env_flushing(), 1);
    /* y += x split across the 3 workers (65536 floats each): an even element's exact sum
     * 1.5e-38 − 1.4e-38 is subnormal, FTZ makes it +0; an odd element adds a subnormal (2^-140)
     * to FLT_MIN, and DAZ reads it as 0, leaving FLT_MIN. Compared as bits: this thread reads
     * subnormals as 0 too. */
    size_t n = 3 * 65536;
    float *y = be->ops->alloc(be, n * sizeof *y), *x = be->ops->alloc(be, n * sizeof *x);
    for (size_t i = 0; i < n; i++) {
        y[i] = i % 2 ? float_of(0x200u) : 1.5e-38f;
        x[i] = i % 2 ? FLT_MIN : -1.4e-38f;
    }
    be->ops->add(be, y, x, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(bits_of(y[i]) == (i % 2 ? bits_of(FLT_MIN) : 0u),
                      "element %zu (worker %zu's chunk): bits %#x, %s", i, i / 65536,
                      (unsigned)bits_of(y[i]),
                      i % 2 ? "a subnormal input was not read as 0 (DAZ)"
                            : "a subnormal result was not flushed (FTZ)");
    be->ops->free(be, y);
    be->ops->free(be, x);
    vs_rt_backend_free(be);
}
END_TEST

typedef struct {
    int flushing[8];
    uint32_t product[8];
    atomic_int arrived;
} fp_probe;

static void probe_task(void *ctx, size_t b, size_t e, int worker)
{
    fp_probe *p = ctx;
    (void)b;
    (void)e;
    /* each thread holds its unit until all four have one: the pool hands units to whichever
     * thread runs, so only this makes every worker take part */
    atomic_fetch_add(&p->arrived, 1);
    while (atomic_load(&p->arrived) < 4)
        sched_yield();
    volatile float tiny = 1e-20f;
    p->flushing[worker] = vs_rt_fp_env_flushing();
    p->product[worker] = bits_of(tiny * tiny); /* 1e-40: subnormal, or +0 when flushed */
}

START_TEST(pool_workers_flush_subnormals_whatever_the_creating_thread_does)
{
    if (fp_env_unsupported())
        return;
    vs_rt_fp_env_reset(); /* the workers must not depend on inheriting the creator's mode */
    vs_rt_tpool *tp = vs_rt_tpool_new(4);
    ck_assert_ptr_nonnull(tp);
    ck_assert_int_eq(vs_rt_tpool_size(tp), 4);
    fp_probe p;
    memset(&p, 0xff, sizeof p);
    atomic_init(&p.arrived, 0);
    vs_rt_parallel_for(tp, 4, probe_task, &p);
    for (int w = 1; w < 4; w++) {
        ck_assert_msg(p.flushing[w] == 1, "worker %d: MXCSR/FPCR flush bits not set (%d)", w,
                      p.flushing[w]);
        ck_assert_msg(p.product[w] == 0u, "worker %d: 1e-20² gave bits %#x, not +0", w,
                      (unsigned)p.product[w]);
    }
    /* the pool leaves its caller's mode alone: vs_rt_backend_cpu_new sets that one */
    ck_assert_int_eq(p.flushing[0], 0);
    vs_rt_tpool_free(tp);
}
END_TEST

static Suite *parity_suite(void)
{
    Suite *s = suite_create("parity");
    TCase *ref = tcase_create("reference");
    tcase_add_checked_fixture(ref, setup, teardown);
    tcase_set_timeout(ref, 600);
    tcase_add_test(ref, greedy_tokens_logits_fhat_and_image_match_the_reference);
    tcase_add_test(ref, decoder_alone_matches_the_reference_image);
    suite_add_tcase(s, ref);
    TCase *bat = tcase_create("batching");
    tcase_add_checked_fixture(bat, setup, teardown);
    tcase_set_timeout(bat, 600);
    tcase_add_test(bat, each_image_of_a_batch_equals_the_image_generated_alone);
    tcase_add_test(bat, images_decoded_together_equal_each_decoded_alone);
    tcase_add_test(bat, an_image_joining_a_running_batch_at_another_scale_is_unchanged);
    tcase_add_test(bat, the_same_seed_gives_the_same_png_bytes_on_one_and_two_threads);
    tcase_add_test(bat, a_batch_the_pool_cannot_hold_is_refused_with_kv_full);
    tcase_add_test(bat, the_per_layer_full_cache_gives_the_same_images_with_fewer_pages);
    tcase_add_test(bat, compressing_policies_reserve_less_and_return_every_page);
    suite_add_tcase(s, bat);
    TCase *smp = tcase_create("sampling");
    tcase_add_test(smp, top_k_and_top_p_keep_exactly_what_the_reference_rule_keeps);
    tcase_add_test(smp, top_k_keeps_every_logit_at_or_above_the_sorted_kth_on_random_logits);
    tcase_add_test(smp, sampled_tokens_equal_the_rule_written_plainly_on_every_kind_of_logits);
    tcase_add_test(smp, sampling_frequencies_follow_the_kept_softmax);
    tcase_add_test(smp, philox_matches_the_published_known_answers);
    suite_add_tcase(s, smp);
    TCase *fp = tcase_create("fp_env");
    tcase_add_test(fp, creating_a_cpu_backend_makes_it_and_every_worker_flush_subnormals);
    tcase_add_test(fp, pool_workers_flush_subnormals_whatever_the_creating_thread_does);
    suite_add_tcase(s, fp);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    SRunner *sr = srunner_create(parity_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
