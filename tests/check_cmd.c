/* tests/check_cmd.c — what the commands run, below their option parsing: opening a model through
 * the common options (server/cmd.h), the calibration run (server/calibrate.h) and the fidelity
 * comparison (server/fidelity.h), on the tiny fixture and the CPU backend. tests/test_cli.py
 * checks the commands' output and exit codes from outside. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/blas.h"
#include "server/calibrate.h"
#include "server/cmd.h"
#include "server/fidelity.h"
#include "server/gen.h"
#include "server/quality.h"

#define MODEL "tests/fixtures/tiny/model.safetensors"

static vs_srv_cli_opts g_o;
static vs_srv_cli_engine g_ce;
static vs_kv_policy *g_full;
static char g_dir[64];

/* An engine for 8 images and a pool that holds 8 under the full cache, as calibrate and
 * fidelity make them. */
static void setup(void)
{
    vs_err err = {0};
    g_o = vs_srv_cli_defaults();
    g_o.model = MODEL;
    g_o.backend = "cpu";
    g_o.threads = 2;
    ck_assert_int_eq(vs_srv_cli_open(&g_o, 8, &g_ce), 0);
    ck_assert_int_eq(vs_srv_cli_policy(&g_o, g_ce.m, "full", &g_full), 0);
    g_ce.pool = vs_srv_cli_pool_for(g_ce.m, g_ce.be, g_full, 8, &err);
    ck_assert_msg(g_ce.pool != NULL, "%s", err.msg);
    snprintf(g_dir, sizeof g_dir, "/tmp/vs_cmd_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    ck_assert_int_eq(system(cmd), 0);
    vs_kv_policy_free(g_full);
    g_full = NULL;
    vs_srv_cli_close(&g_ce);
    memset(&g_ce, 0, sizeof g_ce);
}

static vs_kv_policy *policy(vs_kv_policy_kind kind, double budget, const char *file)
{
    vs_kv_policy *p = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_kv_policy_new(kind, budget, &g_ce.m->cfg, file, &p, &err) == VS_OK, "%s", err.msg);
    return p;
}

START_TEST(open_takes_the_models_sampling_defaults_unless_an_option_set_them)
{
    const vs_rt_config *c = &g_ce.m->cfg;
    ck_assert(g_o.top_k <= c->vocab_size);
    if (c->default_cfg >= 0)
        ck_assert_double_eq(g_o.cfg, c->default_cfg);
    vs_srv_cli_opts o = vs_srv_cli_defaults();
    char *argv[] = {"--model", MODEL, "--cfg", "2.5", "--backend", "cpu", "--top-k", "7"};
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq(vs_srv_cli_opt(&o, 8, argv, &i), 1);
    vs_srv_cli_engine ce = {0};
    ck_assert_int_eq(vs_srv_cli_open(&o, 1, &ce), 0);
    ck_assert_double_eq(o.cfg, 2.5);
    ck_assert_int_eq(o.top_k, 7);
    vs_srv_cli_close(&ce);
}
END_TEST

START_TEST(an_option_out_of_range_or_missing_its_value_is_refused)
{
    vs_srv_cli_opts o = vs_srv_cli_defaults();
    char *argv[] = {"--cfg", "35", "--top-p", "--precision", "fp16", "--labels"};
    int i = 0;
    ck_assert_int_eq(vs_srv_cli_opt(&o, 2, argv, &i), -1);
    i = 2;
    ck_assert_int_eq(vs_srv_cli_opt(&o, 3, argv, &i), -1); /* --top-p is the last word */
    i = 3;
    ck_assert_int_eq(vs_srv_cli_opt(&o, 5, argv, &i), -1);
    i = 5;
    ck_assert_int_eq(vs_srv_cli_opt(&o, 6, argv, &i), 0); /* not a common option */
    vs_srv_cli_engine ce = {0};
    o.backend = "gpu";
    ck_assert_int_eq(vs_srv_cli_open(&o, 1, &ce), 2);
    vs_srv_cli_close(&ce);
}
END_TEST

START_TEST(fidelity_of_the_full_policy_against_itself_is_identical)
{
    vs_srv_fidelity_opts fo = {3, 0, (float)g_o.cfg, (int)g_o.top_k, (float)g_o.top_p, NULL, NULL};
    vs_srv_fidelity_result r;
    vs_err err = {0};
    ck_assert_msg(vs_srv_fidelity_run(g_ce.e, g_ce.pool, g_full, g_full, &g_ce.m->cfg, &fo, &r, &err) == VS_OK,
                  "%s", err.msg);
    ck_assert_int_eq(r.identical_images, 3);
    ck_assert_double_eq(r.psnr_db, 100.0);
    ck_assert_double_eq_tol(r.ssim, 1.0, 1e-12);
    ck_assert_double_eq(r.tokens_unchanged, 1.0);
    ck_assert_uint_eq(r.pages_per_image, r.pages_per_image_full);
}
END_TEST

/* The means over 9 images (two batches) against each image generated on its own. */
START_TEST(fidelity_is_the_mean_over_the_images_of_full_against_the_policy)
{
    const vs_rt_config *c = &g_ce.m->cfg;
    vs_kv_policy *pol = policy(VS_KV_POLICY_SLIDING, 0.3, NULL);
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s/d", g_dir);
    enum { N = 9 };
    vs_srv_fidelity_opts fo = {N, 5, (float)g_o.cfg, (int)g_o.top_k, (float)g_o.top_p, prefix, "sliding"};
    vs_srv_fidelity_result r;
    vs_err err = {0};
    ck_assert_msg(vs_srv_fidelity_run(g_ce.e, g_ce.pool, g_full, pol, c, &fo, &r, &err) == VS_OK, "%s",
                  err.msg);
    int S = c->image_size, L = c->scale_offset[c->n_scales];
    uint8_t *rgb[2] = {malloc((size_t)S * S * 3), malloc((size_t)S * S * 3)};
    int32_t *tok[2] = {malloc((size_t)L * 4), malloc((size_t)L * 4)};
    double psnr = 0, same = 0;
    for (int i = 0; i < N; i++) {
        vs_srv_gen_req q = {i % c->num_classes, 5 + (uint64_t)i, fo.cfg, fo.top_k, fo.top_p};
        for (int v = 0; v < 2; v++) {
            vs_srv_gen_opts go = {.policy = v ? pol : g_full};
            ck_assert(vs_srv_gen_run_opts(g_ce.e, g_ce.pool, &q, 1, &rgb[v], &tok[v], NULL, &go, &err) == VS_OK);
        }
        double p = vs_srv_psnr(rgb[0], rgb[1], S * S * 3);
        psnr += isinf(p) ? 100.0 : p;
        int eq = 0;
        for (int t = 0; t < L; t++)
            eq += tok[0][t] == tok[1][t];
        same += (double)eq / L;
        char fn[256];
        snprintf(fn, sizeof fn, "%s-%d-full.png", prefix, i);
        ck_assert_int_eq(access(fn, R_OK), 0);
        snprintf(fn, sizeof fn, "%s-%d-sliding.png", prefix, i);
        ck_assert_int_eq(access(fn, R_OK), 0);
    }
    ck_assert_double_eq_tol(r.psnr_db, psnr / N, 1e-9);
    ck_assert_double_eq_tol(r.tokens_unchanged, same / N, 1e-12);
    ck_assert(r.tokens_unchanged < 1.0);
    ck_assert(r.ssim < 1.0 && r.ssim > 0.0);
    ck_assert_uint_lt(r.pages_per_image, r.pages_per_image_full);
    for (int v = 0; v < 2; v++) {
        free(rgb[v]);
        free(tok[v]);
    }
    vs_kv_policy_free(pol);
}
END_TEST

/* Each method's file is the one its policy reads. */
static void calibrate_to(vs_srv_calibrate_method method, long images, const char *name)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    vs_srv_calibrate_opts co = {method, images, 32, (float)g_o.cfg, (int)g_o.top_k, (float)g_o.top_p};
    vs_err err = {0};
    ck_assert_msg(vs_srv_calibrate_run(g_ce.e, g_ce.pool, g_full, g_ce.m, &co, path, &err) == VS_OK, "%s",
                  err.msg);
    vs_kv_policy *p =
        policy(method == VS_SRV_CALIBRATE_HACK ? VS_KV_POLICY_HACK : VS_KV_POLICY_SCALEKV, 0.3, path);
    ck_assert_str_eq(vs_kv_policy_source(p), path);
    vs_kv_policy_free(p);
}

START_TEST(calibration_by_attention_statistics_writes_a_budget_file_scalekv_reads)
{
    calibrate_to(VS_SRV_CALIBRATE_ASI, 9, "asi.budgets.json");
}
END_TEST

START_TEST(calibration_by_layer_probes_writes_a_budget_file_scalekv_reads)
{
    calibrate_to(VS_SRV_CALIBRATE_SENSITIVITY, 2, "sens.budgets.json");
}
END_TEST

START_TEST(calibration_for_hack_writes_a_head_map_hack_reads)
{
    calibrate_to(VS_SRV_CALIBRATE_HACK, 3, "m.hack.json");
}
END_TEST

START_TEST(calibration_to_an_unwritable_path_fails_with_an_io_error)
{
    vs_srv_calibrate_opts co = {VS_SRV_CALIBRATE_ASI, 1, 32, (float)g_o.cfg, (int)g_o.top_k, (float)g_o.top_p};
    vs_err err = {0};
    ck_assert_int_eq(vs_srv_calibrate_run(g_ce.e, g_ce.pool, g_full, g_ce.m, &co, "/nonexistent/x.json", &err),
                     VS_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/x.json"));
}
END_TEST

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    Suite *s = suite_create("cmd");
    TCase *tc = tcase_create("cmd");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 600); /* the sanitizers run it several times slower */
    tcase_add_test(tc, open_takes_the_models_sampling_defaults_unless_an_option_set_them);
    tcase_add_test(tc, an_option_out_of_range_or_missing_its_value_is_refused);
    tcase_add_test(tc, fidelity_of_the_full_policy_against_itself_is_identical);
    tcase_add_test(tc, fidelity_is_the_mean_over_the_images_of_full_against_the_policy);
    tcase_add_test(tc, calibration_by_attention_statistics_writes_a_budget_file_scalekv_reads);
    tcase_add_test(tc, calibration_by_layer_probes_writes_a_budget_file_scalekv_reads);
    tcase_add_test(tc, calibration_for_hack_writes_a_head_map_hack_reads);
    tcase_add_test(tc, calibration_to_an_unwritable_path_fails_with_an_io_error);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
