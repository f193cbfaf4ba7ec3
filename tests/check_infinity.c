/* tests/check_infinity.c — the Infinity family's parts against FoundationVision/Infinity on the
 * infinity-tiny fixture (tests/fixtures/infinity-tiny/README.md). So far: the bitwise tokens'
 * codes and the feedback between scales (runtime/bsq.h), given the reference's bits: every
 * scale's next input and the summed latent of the generation and of the decoder-only case, within
 * the fixture's 1e-5; the BSQ VAE decoder (runtime/infinity.h on runtime/vae.c, the CPU
 * backend): the reference's images from its latents within 1/255, two images decoded together as
 * each alone, and the loader's refusals; and the transformer (runtime/infinity.h): a greedy
 * generation of the fixture's two prompts at cfg 3, bit for bit, with every intermediate the
 * reference recorded within its tolerance, and its images. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/backend.h"
#include "runtime/blas.h"
#include "runtime/bsq.h"
#include "runtime/infinity.h"
#include "runtime/philox.h"
#include "runtime/sample.h"
#include "runtime/vae.h"
#include "tests/st_read.h"

#define GOLDEN "tests/fixtures/infinity-tiny/golden.safetensors"
#define MODEL "tests/fixtures/infinity-tiny/model.safetensors"
#define TOL 1e-5 /* the fixture's tolerance for next_input and summed_codes, given exact bits */
#define D 32     /* bits a token */

static st_file g_gold;
static int g_sched[7][3]; /* (t, h, w) a scale */

static void setup(void)
{
    ck_assert_int_eq(st_open(&g_gold, GOLDEN), 0);
    size_t n;
    const int32_t *s = st_get(&g_gold, "scale_schedule", &n);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(n, 21);
    memcpy(g_sched, s, sizeof g_sched);
}

static void teardown(void) { st_close(&g_gold); }

/* a U8 golden tensor's bytes (st_get counts 4-byte words) */
static const uint8_t *gold_u8(const char *name)
{
    const uint8_t *p = st_get(&g_gold, name, NULL);
    ck_assert_msg(p != NULL, "golden tensor %s", name);
    return p;
}

static const float *gold_f32(const char *name, size_t n)
{
    size_t got;
    const float *p = st_get(&g_gold, name, &got);
    ck_assert_msg(p != NULL, "golden tensor %s", name);
    ck_assert_msg(got == n, "%s has %zu floats, expected %zu", name, got, n);
    return p;
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        m = d > m ? d : m;
    }
    return m;
}

/* runs the feedback over every scale for image `img` of `prefix` (gen or vae, `batch` images),
 * checking next inputs when `check_next`; returns the summed latent's error */
static double run_scales(const char *prefix, int batch, int img, int check_next)
{
    enum { H = 16, W = 16 };
    static float summed[D * H * W], next[H * W * D], scratch[D * (H * W + H * W)];
    memset(summed, 0, sizeof summed);
    for (int s = 0; s < 7; s++) {
        int h = g_sched[s][1], w = g_sched[s][2];
        char name[64];
        snprintf(name, sizeof name, "%s.bits.%d", prefix, s);
        const uint8_t *bits = gold_u8(name) + (size_t)img * h * w * D;
        int last = s == 6, hn = last ? 0 : g_sched[s + 1][1], wn = last ? 0 : g_sched[s + 1][2];
        vs_rt_bsq_feedback(bits, h, w, D, summed, H, W, next, check_next ? hn : 0, check_next ? wn : 0, scratch);
        if (check_next && !last) {
            snprintf(name, sizeof name, "%s.next_input.%d", prefix, s);
            size_t per = (size_t)hn * wn * D;
            const float *want = gold_f32(name, batch * per) + (size_t)img * per;
            double e = max_diff(next, want, per);
            ck_assert_msg(e <= TOL, "%s image %d: scale %d's next input off by %g", prefix, img, s, e);
        }
    }
    char name[64];
    snprintf(name, sizeof name, "%s.summed_codes", prefix);
    return max_diff(summed, gold_f32(name, (size_t)batch * D * H * W) + (size_t)img * D * H * W, (size_t)D * H * W);
}

START_TEST(next_inputs_and_the_summed_latent_match_the_reference_given_its_bits)
{
    double worst = 0;
    for (int img = 0; img < 2; img++) {
        double e = run_scales("gen", 2, img, 1);
        worst = e > worst ? e : worst;
    }
    double e = run_scales("vae", 1, 0, 0);
    fprintf(stderr, "infinity-tiny summed_codes: max |error| %.3g (generation), %.3g (decoder-only case)\n", worst,
            e);
    ck_assert_msg(worst <= TOL, "the generation's summed latent off by %g", worst);
    ck_assert_msg(e <= TOL, "the decoder-only case's summed latent off by %g", e);
}
END_TEST

START_TEST(codes_are_unit_vectors_of_plus_or_minus_one_over_root_d)
{
    uint8_t bits[2 * D];
    for (int j = 0; j < 2 * D; j++)
        bits[j] = (uint8_t)((j * 7 + 3) % 5 < 2);
    float codes[2 * D];
    vs_rt_bsq_codes(bits, 1, 2, D, codes); /* [d][1][2] */
    for (int t = 0; t < 2; t++) {
        double n2 = 0;
        for (int j = 0; j < D; j++) {
            float c = codes[j * 2 + t];
            ck_assert_msg(fabs(fabs(c) - 1.0 / sqrt(D)) < 1e-7, "bit %d: %g", j, (double)c);
            ck_assert_int_eq(c > 0, bits[t * D + j]);
            n2 += (double)c * c;
        }
        ck_assert(fabs(n2 - 1.0) < 1e-6);
    }
}
END_TEST

START_TEST(resize_follows_pytorchs_half_pixel_rule)
{
    /* 1×2 → 1×4 (a hand computation of align_corners=False): a, ¾a + ¼b, ¼a + ¾b, b; and an
     * unchanged size is a copy */
    const float src[2] = {1.0f, 5.0f};
    float dst[4];
    vs_rt_bsq_resize(src, 1, 1, 2, dst, 1, 4);
    ck_assert_float_eq(dst[0], 1.0f);
    ck_assert_float_eq(dst[1], 2.0f);
    ck_assert_float_eq(dst[2], 4.0f);
    ck_assert_float_eq(dst[3], 5.0f);
    const float sq[4] = {0.1f, -0.2f, 0.3f, 7.0f};
    float same[4];
    vs_rt_bsq_resize(sq, 1, 2, 2, same, 2, 2);
    ck_assert_int_eq(memcmp(sq, same, sizeof sq), 0);
    /* 4 → 2 averages neighbours: src index 2o + ½ → ½·(x[2o] + x[2o+1]) */
    const float four[4] = {1.0f, 3.0f, 10.0f, 20.0f};
    float two[2];
    vs_rt_bsq_resize(four, 1, 1, 4, two, 1, 2);
    ck_assert_float_eq(two[0], 2.0f);
    ck_assert_float_eq(two[1], 15.0f);
}
END_TEST

/* ---- the decoder -------------------------------------------------------------------------------- */

/* decodes n latents [32][16][16] on a CPU backend of `threads` into unit [n][3][256][256] */
static void decode(const vs_rt_infinity *iv, const float *const *lat, int n, int threads, float **unit)
{
    vs_rt_backend *be = NULL;
    vs_rt_vae *v = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_backend_cpu_new(threads, &be, &err) == VS_OK, "%s", err.msg);
    ck_assert_msg(vs_rt_vae_new(&iv->dec, be, &iv->w, n, &v, &err) == VS_OK, "%s", err.msg);
    size_t fsz = (size_t)D * 16 * 16 * sizeof(float);
    float *dev[2];
    for (int i = 0; i < n; i++) {
        dev[i] = be->ops->alloc(be, fsz);
        ck_assert_ptr_nonnull(dev[i]);
        be->ops->upload(be, dev[i], lat[i], fsz);
    }
    ck_assert_msg(vs_rt_vae_decode(v, (const float *const *)dev, n, NULL, unit, &err) == VS_OK, "%s", err.msg);
    for (int i = 0; i < n; i++)
        be->ops->free(be, dev[i]);
    vs_rt_vae_free(v);
    vs_rt_backend_free(be);
}

START_TEST(the_decoder_gives_the_reference_images_from_its_latents)
{
    enum { HW = 256 * 256 };
    vs_rt_infinity *iv = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_infinity_load(MODEL, &iv, &err) == VS_OK, "load: %s", err.msg);
    ck_assert_int_eq(iv->dec.image_size, 256);
    ck_assert_int_eq(iv->dec.n_levels, 5);
    ck_assert_ptr_null(iv->w.post_quant_conv.w);
    ck_assert_ptr_null(iv->w.mid_attn.norm.w);
    ck_assert_ptr_null(iv->w.head_w); /* VAR's transformer fields stay empty */
    const float *gl = gold_f32("gen.summed_codes", 2 * D * 16 * 16), *vl = gold_f32("vae.summed_codes", D * 16 * 16);
    const float *gi = gold_f32("gen.image", 2 * 3 * HW), *vi = gold_f32("vae.image", 3 * HW);
    float *unit[2] = {malloc(3 * HW * sizeof(float)), malloc(3 * HW * sizeof(float))};
    float *alone = malloc(3 * HW * sizeof(float));
    /* the generation's two latents, decoded together */
    const float *lat[2] = {gl, gl + D * 16 * 16};
    decode(iv, lat, 2, 2, unit);
    double worst = 0;
    for (int i = 0; i < 2; i++)
        worst = fmax(worst, max_diff(unit[i], gi + (size_t)i * 3 * HW, 3 * HW));
    /* the second alone, on one thread: the same bits */
    decode(iv, &lat[1], 1, 1, &alone);
    ck_assert_int_eq(memcmp(alone, unit[1], 3 * HW * sizeof(float)), 0);
    /* the decoder-only case */
    decode(iv, &vl, 1, 2, &alone);
    double wv = max_diff(alone, vi, 3 * HW);
    fprintf(stderr, "infinity-tiny decoder: max |pixel error| %.3g (generation), %.3g (decoder-only case)\n", worst,
            wv);
    ck_assert_msg(worst <= 1.0 / 255, "the generation's images differ by %g (limit 1/255)", worst);
    ck_assert_msg(wv <= 1.0 / 255, "the decoder-only image differs by %g (limit 1/255)", wv);
    free(unit[0]);
    free(unit[1]);
    free(alone);
    vs_rt_infinity_free(iv);
}
END_TEST

/* ---- the transformer ------------------------------------------------------------------------------- */

/* what the probe saw: name → copy */
typedef struct {
    char name[64][24];
    float *data[64];
    size_t n[64];
    int count;
} seen;

static void keep(void *ctx, const char *name, const float *data, int rows, int cols)
{
    seen *sn = ctx;
    ck_assert_int_lt(sn->count, 64);
    int i = sn->count++;
    snprintf(sn->name[i], sizeof sn->name[i], "%s", name);
    sn->n[i] = (size_t)rows * cols;
    sn->data[i] = malloc(sn->n[i] * sizeof(float));
    memcpy(sn->data[i], data, sn->n[i] * sizeof(float));
}

/* the largest |ours − reference| of probe `name` against golden `gold`, over its max |reference| */
static double rel_err(const seen *sn, const char *name, const char *gold)
{
    for (int i = 0; i < sn->count; i++)
        if (strcmp(sn->name[i], name) == 0) {
            const float *want = gold_f32(gold, sn->n[i]);
            double ref = 0;
            for (size_t e = 0; e < sn->n[i]; e++)
                ref = fmax(ref, fabs(want[e]));
            return max_diff(sn->data[i], want, sn->n[i]) / fmax(ref, 1.0);
        }
    ck_abort_msg("the probe never saw %s", name);
    return 0;
}

START_TEST(a_greedy_generation_matches_the_reference_bit_for_bit)
{
    enum { B = 2, S = 7 };
    vs_rt_infinity *m = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_infinity_load(MODEL, &m, &err) == VS_OK, "load: %s", err.msg);
    ck_assert_int_eq(m->cfg.n_scales, S);
    ck_assert_int_eq(m->cfg.rope_h, 64);
    /* the RoPE table */
    ck_assert_msg(max_diff(m->rope, gold_f32("rope_cache", 2 * 521 * 32), 2 * 521 * 32) <= 1e-6, "RoPE table off");
    size_t n;
    const float *text = st_get(&g_gold, "text.kv_compact", &n);
    ck_assert_uint_eq(n, 14 * 256);
    const int32_t *lens = st_get(&g_gold, "text.lens", NULL);
    float cfg[S], tau[S];
    for (int s = 0; s < S; s++) {
        cfg[s] = 3.0f;
        tau[s] = 0.5f;
    }
    seen sn = {0};
    vs_rt_infinity_gen *g = NULL;
    const vs_rt_infinity_sampling greedy = {1, 0.0f, NULL};
    ck_assert_msg(vs_rt_infinity_gen_new(m, text, lens, B, cfg, tau, &greedy, keep, &sn, &g, &err) == VS_OK, "%s",
                  err.msg);
    static uint8_t bits[B * 16 * 16 * D];
    static float logits[B * 16 * 16 * D * 2];
    double worst_logit = 0;
    int flipped = 0;
    for (int s = 0; s < S; s++) {
        ck_assert_int_eq(vs_rt_infinity_gen_scale(g, bits, logits), s);
        int l = g_sched[s][1] * g_sched[s][2];
        char name[32];
        snprintf(name, sizeof name, "gen.logits.%d", s);
        worst_logit = fmax(worst_logit, max_diff(logits, gold_f32(name, (size_t)B * l * D * 2), (size_t)B * l * D * 2));
        snprintf(name, sizeof name, "gen.bits.%d", s);
        const uint8_t *want = gold_u8(name);
        for (size_t e = 0; e < (size_t)B * l * D; e++)
            flipped += bits[e] != want[e];
    }
    ck_assert_int_eq(vs_rt_infinity_gen_scale(g, bits, NULL), -1);
    struct {
        const char *ours, *gold;
        double tol;
    } cmp[] = {{"text_norm", "loc.text_norm", 1e-4},     {"cond_BD", "loc.cond_BD", 1e-4},
               {"ca_kv", "loc.ca_kv", 1e-4},             {"cond_gss", "loc.cond_gss", 1e-4},
               {"block_in.0", "loc.block_in.scale0", 1e-4}, {"block_in.1", "loc.block_in.scale1", 1e-4},
               {"block0.0", "loc.block0.scale0", 1e-4},  {"block2.0", "loc.block2.scale0", 1e-4},
               {"block0.1", "loc.block0.scale1", 1e-4},  {"block1.1", "loc.block1.scale1", 1e-4},
               {"block2.1", "loc.block2.scale1", 1e-4},  {"head_raw.0", "gen.head_raw.0", 1e-4},
               {"head_raw.2", "gen.head_raw.2", 1e-4}};
    for (size_t i = 0; i < sizeof cmp / sizeof cmp[0]; i++) {
        double e = rel_err(&sn, cmp[i].ours, cmp[i].gold);
        ck_assert_msg(e <= cmp[i].tol, "%s: relative error %g (limit %g)", cmp[i].ours, e, cmp[i].tol);
    }
    double lat = 0;
    const float *gl = gold_f32("gen.summed_codes", (size_t)B * D * 256);
    for (int b = 0; b < B; b++)
        lat = fmax(lat, max_diff(vs_rt_infinity_gen_latent(g, b), gl + (size_t)b * D * 256, (size_t)D * 256));
    fprintf(stderr, "infinity-tiny generation: %d of %d bits differ, guided logits within %.3g, latent within %.3g, "
                    "block 2 at scale 1 within %.3g (relative)\n",
            flipped, B * 521 * D, worst_logit, lat, rel_err(&sn, "block2.1", "loc.block2.scale1"));
    ck_assert_int_eq(flipped, 0);
    ck_assert_msg(worst_logit <= 1e-3, "guided logits off by %g", worst_logit);
    ck_assert_msg(lat <= TOL, "latent off by %g", lat);
    /* and the images: bits to pixels with nothing of the reference's in between */
    float *unit[2] = {malloc(3 * 65536 * sizeof(float)), malloc(3 * 65536 * sizeof(float))};
    const float *mine[2] = {vs_rt_infinity_gen_latent(g, 0), vs_rt_infinity_gen_latent(g, 1)};
    decode(m, mine, 2, 2, unit);
    const float *gi = gold_f32("gen.image", 2 * 3 * 65536);
    double px = fmax(max_diff(unit[0], gi, 3 * 65536), max_diff(unit[1], gi + 3 * 65536, 3 * 65536));
    ck_assert_msg(px <= 1.0 / 255, "images differ by %g (limit 1/255)", px);
    free(unit[0]);
    free(unit[1]);
    for (int i = 0; i < sn.count; i++)
        free(sn.data[i]);
    vs_rt_infinity_gen_free(g);
    vs_rt_infinity_free(m);
}
END_TEST


/* all bits of a generation of the fixture's prompts under `smp` into bits[S][B·l·d], logits alike */
static void generate(const vs_rt_infinity *m, const vs_rt_infinity_sampling *smp, uint8_t *bits, float *logits)
{
    enum { B = 2, S = 7 };
    const float *text = st_get(&g_gold, "text.kv_compact", NULL);
    const int32_t *lens = st_get(&g_gold, "text.lens", NULL);
    float cfg[S], tau[S];
    for (int s = 0; s < S; s++) {
        cfg[s] = 3.0f;
        tau[s] = 0.5f;
    }
    vs_rt_infinity_gen *g = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_infinity_gen_new(m, text, lens, B, cfg, tau, smp, NULL, NULL, &g, &err) == VS_OK, "%s",
                  err.msg);
    size_t at = 0;
    for (int s = 0; s < S; s++) {
        ck_assert_int_eq(vs_rt_infinity_gen_scale(g, bits + at, logits + 2 * at), s);
        at += (size_t)B * g_sched[s][1] * g_sched[s][2] * D;
    }
    vs_rt_infinity_gen_free(g);
}

START_TEST(sampled_bits_follow_the_seed_and_the_rule_on_each_pair_of_logits)
{
    enum { N = 2 * 521 * D };
    vs_rt_infinity *m = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_infinity_load(MODEL, &m, &err) == VS_OK, "%s", err.msg);
    static uint8_t a[N], b[N], c[N];
    static float la[2 * N], lb[2 * N], lc[2 * N];
    const uint64_t s1[2] = {11, 12}, s2[2] = {11, 99};
    const vs_rt_infinity_sampling x1 = {2, 0.0f, s1}, x2 = {2, 0.0f, s2};
    generate(m, &x1, a, la);
    generate(m, &x1, b, lb);
    generate(m, &x2, c, lc);
    /* the same seeds give the same bits; image 0 keeps its seed in both runs, image 1 does not */
    ck_assert_int_eq(memcmp(a, b, N), 0);
    size_t img0 = 0, img1 = 0, at = 0, draws_against = 0;
    for (int s = 0; s < 7; s++) {
        size_t per = (size_t)g_sched[s][1] * g_sched[s][2] * D;
        for (size_t e = 0; e < per; e++) /* an image's bits never depend on its batch-mate */
            img0 += a[at + e] != c[at + e];
        for (size_t e = per; e < 2 * per; e++)
            img1 += a[at + e] != c[at + e];
        /* each bit is the rule's draw on its pair with its uniform */
        for (int im = 0; im < 2; im++)
            for (size_t e = 0; e < per; e++) {
                size_t k = at + (size_t)im * per + e;
                uint64_t sw[2 * VS_RT_SAMPLE_SCRATCH_WORDS(2)];
                vs_rt_sample_scratch ss = {sw};
                float u = vs_philox_uniform(s1[im], s, (int)e);
                ck_assert_int_eq(a[k], vs_rt_sample_token(la + 2 * k, 2, 2, 0.0f, u, &ss));
                draws_against += a[k] != (la[2 * k + 1] > la[2 * k]);
            }
        at += 2 * per;
    }
    ck_assert_uint_eq(img0, 0);
    ck_assert_uint_gt(img1, 0);
    ck_assert_uint_gt(draws_against, 0); /* top-k 2 samples: some bits go against the larger logit */
    /* top_p 0.97 with top-k 2: a bit whose loser has probability ≤ 0.03 is never drawn against */
    const vs_rt_infinity_sampling x3 = {2, 0.97f, s1};
    generate(m, &x3, c, lc);
    for (size_t k = 0; k < N; k++) {
        double pl = 1.0 / (1.0 + exp(fabs((double)lc[2 * k + 1] - lc[2 * k])));
        if (pl <= 0.03)
            ck_assert_int_eq(c[k], lc[2 * k + 1] > lc[2 * k]);
    }
    vs_rt_infinity_free(m);
}
END_TEST

START_TEST(the_decoder_loader_names_what_is_wrong)
{
    char path[] = "/tmp/check_infinity.XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    vs_rt_infinity *iv = NULL;
    vs_err err = {0};
    ck_assert_int_eq(st_write_variant(MODEL, path, "vae_patch_size", "8", NULL), 0);
    ck_assert_int_eq(vs_rt_infinity_load(path, &iv, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "vae_patch_size 8 disagrees"), "%s", err.msg);
    ck_assert_int_eq(st_write_variant(MODEL, path, "vae_base_ch", "64", NULL), 0);
    ck_assert_int_eq(vs_rt_infinity_load(path, &iv, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "vae.decoder.conv_in.conv.weight' has shape (64, 32, 3, 3) but the config "
                                  "implies (128, 32, 3, 3)"),
                  "%s", err.msg);
    ck_assert_int_eq(st_write_variant(MODEL, path, "scale_schedule", "[[1, 1, 1], [1, 2, 3]]", NULL), 0);
    ck_assert_int_eq(vs_rt_infinity_load(path, &iv, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "scale_schedule"), "%s", err.msg);
    /* a transformer tensor left out of the header */
    ck_assert_int_eq(st_write_variant(MODEL, path, NULL, NULL, "infinity.head.weight"), 0);
    ck_assert_int_eq(vs_rt_infinity_load(path, &iv, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "'infinity.head.weight' is missing"), "%s", err.msg);
    ck_assert_int_eq(st_write_variant(MODEL, path, "cos_attn", "false", NULL), 0);
    ck_assert_int_eq(vs_rt_infinity_load(path, &iv, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "'cos_attn' must be 1"), "%s", err.msg);
    ck_assert_int_eq(st_write_variant(MODEL, path, NULL, NULL, "vae.decoder.norm_out.norm.bias"), 0);
    ck_assert_int_eq(vs_rt_infinity_load(path, &iv, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "vae.decoder.norm_out.norm.bias"), "%s", err.msg);
    ck_assert_ptr_null(iv);
    unlink(path);
}
END_TEST

static int load_for_sweep(const char *path, char *msg, size_t cap)
{
    vs_rt_infinity *m = NULL;
    vs_err err = {0};
    if (vs_rt_infinity_load(path, &m, &err) == VS_OK) {
        vs_rt_infinity_free(m);
        return 0;
    }
    snprintf(msg, cap, "%s", err.msg);
    return 1;
}

START_TEST(corrupted_files_are_refused_with_a_message_or_load_never_crash)
{
    /* random header bytes and truncations (st_corruption_sweep): each refused with one line
     * naming what is wrong, or loaded (a byte inside a string value, say); under ASan/UBSan in
     * make test nothing may read out of bounds */
    int bad = 0, status = 0;
    int refused = st_corruption_sweep(MODEL, load_for_sweep, &bad, &status);
    ck_assert_int_eq(status, 0);
    ck_assert_msg(bad < 0, "case %d: an empty or multi-line message", bad);
    ck_assert_int_ge(refused, 60);
}
END_TEST

static Suite *infinity_suite(void)
{
    Suite *s = suite_create("infinity");
    TCase *b = tcase_create("bsq");
    tcase_add_checked_fixture(b, setup, teardown);
    tcase_add_test(b, next_inputs_and_the_summed_latent_match_the_reference_given_its_bits);
    tcase_add_test(b, codes_are_unit_vectors_of_plus_or_minus_one_over_root_d);
    tcase_add_test(b, resize_follows_pytorchs_half_pixel_rule);
    suite_add_tcase(s, b);
    TCase *dec = tcase_create("decoder");
    tcase_add_checked_fixture(dec, setup, teardown);
    tcase_set_timeout(dec, 120);
    tcase_add_test(dec, the_decoder_gives_the_reference_images_from_its_latents);
    tcase_add_test(dec, the_decoder_loader_names_what_is_wrong);
    tcase_add_test(dec, corrupted_files_are_refused_with_a_message_or_load_never_crash);
    tcase_add_test(dec, a_greedy_generation_matches_the_reference_bit_for_bit);
    tcase_add_test(dec, sampled_bits_follow_the_seed_and_the_rule_on_each_pair_of_logits);
    suite_add_tcase(s, dec);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    SRunner *sr = srunner_create(infinity_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
