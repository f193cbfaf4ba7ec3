/* tests/check_t5.c — the T5 encoder (runtime/t5.h) against Hugging Face's T5EncoderModel on the
 * t5-tiny fixture (tests/fixtures/t5-tiny/README.md): the position buckets and the bias table
 * exactly, last_hidden_state within the fixture's FP32 tolerance, valid rows unchanged by padding
 * and batching (up to the GEMMs' summation order),
 * the tokenizer's ids for the fixture's prompts (spaces, full-width letters, unknown characters,
 * the empty prompt, truncation), and the refusals of the loaders, the encoder and the tokenizer. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/blas.h"
#include "runtime/t5.h"
#include "runtime/t5_tok.h"
#include "tests/st_read.h"

#define MODEL "tests/fixtures/t5-tiny/model.safetensors"
#define GOLDEN "tests/fixtures/t5-tiny/golden.safetensors"
#define SPIECE "tests/fixtures/t5-tiny/spiece.model"
#define TOL 1e-4 /* the fixture's tolerance for hidden states (values are O(1)) */

static vs_rt_t5 *g_t5;
static st_file g_gold;

static void setup(void)
{
    vs_err err = {0};
    ck_assert_msg(vs_rt_t5_load(MODEL, &g_t5, &err) == VS_OK, "load: %s", err.msg);
    ck_assert_int_eq(st_open(&g_gold, GOLDEN), 0);
}

static void teardown(void)
{
    vs_rt_t5_free(g_t5);
    g_t5 = NULL;
    st_close(&g_gold);
}

/* an I64 golden tensor as int32 (values are small); its element count in *n */
static int32_t *gold_i64(const char *name, size_t *n)
{
    size_t words;
    const unsigned char *p = st_get(&g_gold, name, &words);
    ck_assert_msg(p != NULL, "golden tensor %s", name);
    *n = words / 2;
    int32_t *v = malloc(*n * sizeof *v);
    for (size_t i = 0; i < *n; i++) {
        int64_t x;
        memcpy(&x, p + 8 * i, 8);
        v[i] = (int32_t)x;
    }
    return v;
}

static const float *gold_f32(const char *name, size_t *n)
{
    const float *p = st_get(&g_gold, name, n);
    ck_assert_msg(p != NULL, "golden tensor %s", name);
    return p;
}

START_TEST(config_and_weights_load_as_the_fixture_declares)
{
    const vs_rt_t5_config *c = &g_t5->cfg;
    ck_assert_int_eq(c->d_model, 64);
    ck_assert_int_eq(c->d_kv, 16);
    ck_assert_int_eq(c->num_heads, 4);
    ck_assert_int_eq(c->d_ff, 128);
    ck_assert_int_eq(c->num_layers, 2);
    ck_assert_int_eq(c->vocab_size, 500);
    ck_assert_int_eq(c->rel_buckets, 32);
    ck_assert_int_eq(c->rel_max_distance, 128);
    ck_assert(fabs(c->eps - 1e-6) < 1e-12);
    /* 500·64 + 64 + 32·4 + 2 · (64 + 4·64·64 + 64 + 3·128·64) */
    ck_assert_uint_eq(g_t5->n_params, 500 * 64 + 64 + 32 * 4 + 2 * (64 + 4 * 64 * 64 + 64 + 3 * 128 * 64));
}
END_TEST

START_TEST(buckets_equal_the_reference_for_every_offset_of_a_512_token_prompt)
{
    size_t n, m;
    int32_t *rel = gold_i64("rel_bucket.relative_position", &n);
    int32_t *want = gold_i64("rel_bucket.bucket", &m);
    ck_assert_uint_eq(n, 1023);
    ck_assert_uint_eq(m, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(vs_rt_t5_bucket(&g_t5->cfg, rel[i]) == want[i], "offset %d: bucket %d, reference %d", rel[i],
                      vs_rt_t5_bucket(&g_t5->cfg, rel[i]), want[i]);
    free(rel);
    free(want);
}
END_TEST

START_TEST(the_position_bias_table_equals_the_reference)
{
    size_t n;
    const float *pb = gold_f32("layer0.position_bias", &n); /* (1, heads, query, key) */
    int H = g_t5->cfg.num_heads, L = 32;
    ck_assert_uint_eq(n, (size_t)H * L * L);
    for (int h = 0; h < H; h++)
        for (int i = 0; i < L; i++)
            for (int j = 0; j < L; j++) {
                int b = vs_rt_t5_bucket(&g_t5->cfg, j - i);
                ck_assert_float_eq(g_t5->rel_bias[b * H + h], pb[((size_t)h * L + i) * L + j]);
            }
}
END_TEST

/* the golden batch: 4 prompts padded to 32 */
static void encode_golden_batch(float *out, int32_t **ids_out, int lens[4])
{
    size_t n, nl;
    int32_t *ids = gold_i64("input_ids", &n);
    const int32_t *gl = st_get(&g_gold, "lens", &nl);
    ck_assert_uint_eq(n, 4 * 32);
    ck_assert_uint_eq(nl, 4);
    for (int s = 0; s < 4; s++)
        lens[s] = gl[s];
    vs_err err = {0};
    ck_assert_msg(vs_rt_t5_encode(g_t5, ids, lens, 4, 32, out, &err) == VS_OK, "%s", err.msg);
    *ids_out = ids;
}

START_TEST(last_hidden_state_matches_the_reference_within_its_tolerance)
{
    enum { N = 4, L = 32, D = 64 };
    static float out[N * L * D];
    int lens[N];
    int32_t *ids;
    encode_golden_batch(out, &ids, lens);
    size_t n;
    const float *want = gold_f32("last_hidden_state", &n);
    ck_assert_uint_eq(n, (size_t)N * L * D);
    double worst_valid = 0, worst_pad = 0;
    for (int s = 0; s < N; s++)
        for (int i = 0; i < L; i++)
            for (int d = 0; d < D; d++) {
                size_t e = ((size_t)s * L + i) * D + d;
                double diff = fabs((double)out[e] - want[e]);
                if (i < lens[s])
                    worst_valid = diff > worst_valid ? diff : worst_valid;
                else
                    worst_pad = diff > worst_pad ? diff : worst_pad;
            }
    fprintf(stderr, "t5-tiny last_hidden_state: max |error| %.3g on the valid rows, %.3g on padding\n",
            worst_valid, worst_pad);
    ck_assert_msg(worst_valid <= TOL, "valid rows off by %g", worst_valid);
    ck_assert_msg(worst_pad <= TOL, "padding rows off by %g", worst_pad);
    free(ids);
}
END_TEST

/* Rows the same up to the GEMMs' summation order: OpenBLAS's AVX2 kernels (Haswell, Zen) add a
 * dot product in an order that depends on where the row falls in the matrix, so a row of a
 * different-sized batch can differ in its last bits (SkylakeX's: not at all). A padding key that
 * leaked into attention would move a row by far more. */
#define SAME_ROWS 1e-5

static double rows_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

START_TEST(valid_rows_do_not_depend_on_padding_or_the_batch)
{
    /* prompt 0 alone padded to 512, as Infinity tokenizes, against its rows of the batch of 32 and
     * the reference's 512-position run */
    enum { L = 512, D = 64 };
    static float out512[L * D], batch[4 * 32 * D];
    int lens[4];
    int32_t *ids;
    encode_golden_batch(batch, &ids, lens);
    size_t n;
    int32_t *ids512 = gold_i64("p0_512.input_ids", &n);
    ck_assert_uint_eq(n, L);
    int len0 = lens[0];
    vs_err err = {0};
    ck_assert_msg(vs_rt_t5_encode(g_t5, ids512, &len0, 1, L, out512, &err) == VS_OK, "%s", err.msg);
    ck_assert_msg(rows_diff(out512, batch, (size_t)len0 * D) <= SAME_ROWS, "padded to 512: rows moved by %g",
                  rows_diff(out512, batch, (size_t)len0 * D));
    const float *want = gold_f32("p0_512.last_hidden_state", &n);
    ck_assert_uint_eq(n, (size_t)L * D);
    for (size_t e = 0; e < (size_t)len0 * D; e++)
        ck_assert_msg(fabs((double)out512[e] - want[e]) <= TOL, "element %zu: %g, reference %g", e,
                      (double)out512[e], (double)want[e]);
    /* prompt 1 alone, padded to 32: its rows of the batch */
    static float one[32 * D];
    ck_assert_int_eq(vs_rt_t5_encode(g_t5, ids + 32, &lens[1], 1, 32, one, &err), VS_OK);
    ck_assert_msg(rows_diff(one, batch + 32 * D, (size_t)lens[1] * D) <= SAME_ROWS, "alone: rows moved by %g",
                  rows_diff(one, batch + 32 * D, (size_t)lens[1] * D));
    free(ids);
    free(ids512);
}
END_TEST

START_TEST(encode_refuses_ids_outside_the_vocabulary_and_bad_lengths)
{
    float out[4 * 64];
    int32_t ids[4] = {4, 44, 500, 1};
    int len = 4;
    vs_err err = {0};
    ck_assert_int_eq(vs_rt_t5_encode(g_t5, ids, &len, 1, 4, out, &err), VS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "token id 500 at sequence 0 position 2"));
    ids[2] = 3;
    len = 0;
    ck_assert_int_eq(vs_rt_t5_encode(g_t5, ids, &len, 1, 4, out, &err), VS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "sequence 0 has 0 tokens"));
    len = 5;
    ck_assert_int_eq(vs_rt_t5_encode(g_t5, ids, &len, 1, 4, out, &err), VS_ERR_INVALID);
}
END_TEST


START_TEST(load_refuses_another_feed_forward_or_a_shape_the_config_does_not_imply)
{
    char path[] = "/tmp/check_t5.XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    vs_rt_t5 *t = NULL;
    vs_err err = {0};
    ck_assert_int_eq(st_write_variant(MODEL, path, "feed_forward_proj", "\"relu\"", NULL), 0);
    ck_assert_int_eq(vs_rt_t5_load(path, &t, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "feed_forward_proj") && strstr(err.msg, "gated-gelu"), "%s", err.msg);
    ck_assert_int_eq(st_write_variant(MODEL, path, "d_ff", "256", NULL), 0);
    ck_assert_int_eq(vs_rt_t5_load(path, &t, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "wi_0.weight' has shape (128, 64) but the config implies (256, 64)"), "%s",
                  err.msg);
    ck_assert_int_eq(st_write_variant(MODEL, path, "relative_attention_num_buckets", "31", NULL), 0);
    ck_assert_int_eq(vs_rt_t5_load(path, &t, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "relative_attention_num_buckets (31) must be even"), "%s", err.msg);
    ck_assert_int_eq(st_write_variant(MODEL, path, "num_layers", "3", NULL), 0);
    ck_assert_int_eq(vs_rt_t5_load(path, &t, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "encoder.block.2.layer.0.layer_norm.weight' is missing"), "%s", err.msg);
    ck_assert_ptr_null(t);
    unlink(path);
}
END_TEST

/* the fixture's prompts (tests/fixtures/t5-tiny/README.md), UTF-8 */
static const char *const PROMPTS[4] = {
    "a photo of a Fluffy cat sitting on a wooden table, 4k",
    /* "  ＡＮ oil painting   of a 猫 on the moon — “glowing”!  " */
    "  \xEF\xBC\xA1\xEF\xBC\xAE oil painting   of a \xE7\x8C\xAB on the moon \xE2\x80\x94 \xE2\x80\x9C"
    "glowing\xE2\x80\x9D!  ",
    "",
    "Cinematic shot of three golden dragons flying over an ancient castle at sunset, misty mountains, a "
    "quiet village by the sea, soft light, sharp focus, 35mm, award-winning photo in the style of Van Gogh",
};

START_TEST(the_tokenizer_gives_the_reference_ids_for_every_prompt)
{
    vs_rt_t5_tok *tok = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_t5_tok_load(SPIECE, &tok, &err) == VS_OK, "%s", err.msg);
    ck_assert_int_eq(vs_rt_t5_tok_size(tok), 500);
    size_t n, nl;
    int32_t *want = gold_i64("input_ids", &n);
    const int32_t *lens = st_get(&g_gold, "lens", &nl);
    for (int p = 0; p < 4; p++) {
        int32_t ids[32];
        int valid = -1;
        ck_assert_msg(vs_rt_t5_tokenize(tok, PROMPTS[p], strlen(PROMPTS[p]), 32, ids, &valid, &err) == VS_OK, "%s",
                      err.msg);
        ck_assert_int_eq(valid, lens[p]);
        for (int i = 0; i < 32; i++)
            ck_assert_msg(ids[i] == want[p * 32 + i], "prompt %d position %d: id %d, reference %d", p, i, ids[i],
                          want[p * 32 + i]);
    }
    /* prompt 0 padded to 512, as Infinity tokenizes */
    static int32_t ids512[512];
    int valid;
    int32_t *want512 = gold_i64("p0_512.input_ids", &n);
    ck_assert_int_eq(vs_rt_t5_tokenize(tok, PROMPTS[0], strlen(PROMPTS[0]), 512, ids512, &valid, &err), VS_OK);
    ck_assert_int_eq(memcmp(ids512, want512, sizeof ids512), 0);
    ck_assert_int_eq(valid, 27);
    /* room for </s> alone */
    int32_t one[1];
    ck_assert_int_eq(vs_rt_t5_tokenize(tok, PROMPTS[0], strlen(PROMPTS[0]), 1, one, &valid, &err), VS_OK);
    ck_assert_int_eq(one[0], 1);
    ck_assert_int_eq(valid, 1);
    free(want);
    free(want512);
    vs_rt_t5_tok_free(tok);
}
END_TEST

START_TEST(the_tokenizer_refuses_invalid_utf8_naming_the_byte_and_a_file_that_is_not_a_model)
{
    vs_rt_t5_tok *tok = NULL;
    vs_err err = {0};
    ck_assert_int_eq(vs_rt_t5_tok_load(SPIECE, &tok, &err), VS_OK);
    int32_t ids[8];
    int valid;
    const char *cut = "a cat \xE7\x8C"; /* a character cut short */
    ck_assert_int_eq(vs_rt_t5_tokenize(tok, cut, strlen(cut), 8, ids, &valid, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "not valid UTF-8 at byte 6"), "%s", err.msg);
    const char *sur = "\xED\xA0\x80"; /* a surrogate */
    ck_assert_int_eq(vs_rt_t5_tokenize(tok, sur, 3, 8, ids, &valid, &err), VS_ERR_INVALID);
    ck_assert_int_eq(vs_rt_t5_tokenize(tok, "a", 1, 0, ids, &valid, &err), VS_ERR_INVALID);
    vs_rt_t5_tok_free(tok);
    vs_rt_t5_tok *bad = NULL;
    ck_assert_int_eq(vs_rt_t5_tok_load(MODEL, &bad, &err), VS_ERR_INVALID); /* a safetensors file */
    ck_assert_msg(strstr(err.msg, "cannot load the T5 tokenizer"), "%s", err.msg);
    ck_assert_int_eq(vs_rt_t5_tok_load("tests/fixtures/t5-tiny/no-such.model", &bad, &err), VS_ERR_IO);
    ck_assert_ptr_null(bad);
}
END_TEST

START_TEST(encoding_prompts_keeps_each_ones_valid_rows_in_order)
{
    /* Infinity's encode_prompt: tokenize, encode, keep lens rows each, concatenated */
    enum { D = 64 };
    vs_rt_t5_tok *tok = NULL;
    vs_err err = {0};
    ck_assert_int_eq(vs_rt_t5_tok_load(SPIECE, &tok, &err), VS_OK);
    float *text = NULL, *one = NULL;
    int lens[4], len0;
    ck_assert_msg(vs_rt_t5_encode_prompts(g_t5, tok, PROMPTS, 4, 32, &text, lens, &err) == VS_OK, "%s", err.msg);
    size_t n;
    const float *want = gold_f32("last_hidden_state", &n);
    const int32_t *gl = st_get(&g_gold, "lens", NULL);
    size_t at = 0;
    for (int p = 0; p < 4; p++) {
        ck_assert_int_eq(lens[p], gl[p]);
        for (int i = 0; i < lens[p]; i++, at++)
            for (int d = 0; d < D; d++)
                ck_assert_msg(fabs((double)text[at * D + d] - want[((size_t)p * 32 + i) * D + d]) <= TOL,
                              "prompt %d row %d", p, i);
    }
    /* padded to 512 as Infinity pads: the same rows */
    ck_assert_int_eq(vs_rt_t5_encode_prompts(g_t5, tok, PROMPTS, 1, 512, &one, &len0, &err), VS_OK);
    ck_assert_int_eq(len0, lens[0]);
    ck_assert_msg(rows_diff(one, text, (size_t)len0 * D) <= SAME_ROWS, "padded to 512: rows moved by %g",
                  rows_diff(one, text, (size_t)len0 * D));
    /* a bad prompt is named */
    const char *bad[2] = {"a cat", "a \xE7"};
    free(one);
    one = NULL;
    ck_assert_int_eq(vs_rt_t5_encode_prompts(g_t5, tok, bad, 2, 32, &one, lens, &err), VS_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "prompt 1") && strstr(err.msg, "UTF-8"), "%s", err.msg);
    ck_assert_ptr_null(one);
    free(text);
    vs_rt_t5_tok_free(tok);
}
END_TEST

static int load_for_sweep(const char *path, char *msg, size_t cap)
{
    vs_rt_t5 *m = NULL;
    vs_err err = {0};
    if (vs_rt_t5_load(path, &m, &err) == VS_OK) {
        vs_rt_t5_free(m);
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

static Suite *t5_suite(void)
{
    Suite *s = suite_create("t5");
    TCase *ref = tcase_create("reference");
    tcase_add_checked_fixture(ref, setup, teardown);
    tcase_add_test(ref, config_and_weights_load_as_the_fixture_declares);
    tcase_add_test(ref, buckets_equal_the_reference_for_every_offset_of_a_512_token_prompt);
    tcase_add_test(ref, the_position_bias_table_equals_the_reference);
    tcase_add_test(ref, last_hidden_state_matches_the_reference_within_its_tolerance);
    tcase_add_test(ref, valid_rows_do_not_depend_on_padding_or_the_batch);
    tcase_add_test(ref, encode_refuses_ids_outside_the_vocabulary_and_bad_lengths);
    tcase_add_test(ref, the_tokenizer_gives_the_reference_ids_for_every_prompt);
    tcase_add_test(ref, the_tokenizer_refuses_invalid_utf8_naming_the_byte_and_a_file_that_is_not_a_model);
    tcase_add_test(ref, encoding_prompts_keeps_each_ones_valid_rows_in_order);
    suite_add_tcase(s, ref);
    TCase *ld = tcase_create("load");
    tcase_add_test(ld, load_refuses_another_feed_forward_or_a_shape_the_config_does_not_imply);
    tcase_add_test(ld, corrupted_files_are_refused_with_a_message_or_load_never_crash);
    suite_add_tcase(s, ld);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    SRunner *sr = srunner_create(t5_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
