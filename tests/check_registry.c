/* tests/check_registry.c — the KV policy registry (kvcache/policy.h) drives every place that names
 * policies: config validation, request validation, CLI parsing, --help and the metrics labels
 * accept exactly the registered names, and an unknown name's error lists exactly them. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "kvcache/policy.h"
#include "runtime/blas.h"
#include "server/api.h"
#include "server/metrics.h"

static const char *bin(void)
{
    const char *b = getenv("VARSERVE_BIN");
    return b && b[0] ? b : "build/varserve";
}

/* The registry's names joined by sep, last_sep: what every error message must list. */
static void expected(char *out, size_t cap, const char *sep, const char *last_sep)
{
    int n;
    const vs_kv_policy_def *const *defs = vs_kv_policy_defs(&n);
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        size_t at = strlen(out);
        snprintf(out + at, cap - at, "%s%s", i == 0 ? "" : i == n - 1 ? last_sep : sep, defs[i]->name);
    }
}

START_TEST(the_registry_is_consistent)
{
    int n;
    const vs_kv_policy_def *const *defs = vs_kv_policy_defs(&n);
    ck_assert_int_eq(n, VS_KV_POLICY_COUNT);
    for (int i = 0; i < n; i++) {
        const vs_kv_policy_def *d = defs[i];
        ck_assert_ptr_nonnull(d);
        ck_assert_int_eq((int)d->kind, i);
        ck_assert_ptr_eq(vs_kv_policy_def_of(d->kind), d);
        ck_assert_ptr_eq(vs_kv_policy_lookup(d->name), d);
        ck_assert_str_eq(vs_kv_policy_name(d->kind), d->name);
        ck_assert_msg(d->name[0] && d->doc && d->doc[0], "policy %d has a name and a doc line", i);
        ck_assert_msg(strlen(d->name) < sizeof(((vs_cfg *)0)->kv_policy), "%s fits the config key", d->name);
        ck_assert_msg(d->cap && d->plan, "%s has a capacity and a selection rule", d->name);
        for (int j = 0; j < i; j++)
            ck_assert_str_ne(defs[j]->name, d->name);
    }
    ck_assert_ptr_null(vs_kv_policy_lookup("no-such-policy"));
    ck_assert_ptr_null(vs_kv_policy_def_of(VS_KV_POLICY_COUNT));
    char want[512], got[512];
    expected(want, sizeof want, "|", "|");
    ck_assert_str_eq(vs_kv_policy_choices(), want);
    expected(want, sizeof want, ", ", " or ");
    ck_assert_int_eq(vs_kv_policy_names(got, sizeof got, ", ", " or "), (int)strlen(want));
    ck_assert_str_eq(got, want);
    /* truncation still reports the whole length, as snprintf */
    char small[8];
    ck_assert_int_eq(vs_kv_policy_names(small, sizeof small, ", ", " or "), (int)strlen(want));
    ck_assert_int_eq((int)strlen(small), (int)sizeof small - 1);
}
END_TEST

START_TEST(config_accepts_every_registered_name_and_lists_them_for_others)
{
    int n;
    const vs_kv_policy_def *const *defs = vs_kv_policy_defs(&n);
    vs_cfg c;
    vs_err err = {0};
    vs_cfg_defaults(&c);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(vs_cfg_set(&c, "kv_policy", defs[i]->name, "test", &err) == VS_OK, "%s", err.msg);
        ck_assert_str_eq(c.kv_policy, defs[i]->name);
    }
    ck_assert(vs_cfg_set(&c, "kv_policy", "no-such-policy", "test", &err) == VS_ERR_INVALID);
    char want[512], msg[600];
    expected(want, sizeof want, "|", "|");
    snprintf(msg, sizeof msg, "must be one of %s (got 'no-such-policy')", want);
    ck_assert_msg(strstr(err.msg, msg), "'%s' lists the registry: %s", err.msg, msg);
    /* --help shows the same choices */
    char *help = vs_cfg_help();
    ck_assert_ptr_nonnull(help);
    ck_assert_msg(strstr(help, want), "serve --help lists %s", want);
    free(help);
}
END_TEST

START_TEST(requests_accept_every_registered_name_and_list_them_for_others)
{
    int n;
    const vs_kv_policy_def *const *defs = vs_kv_policy_defs(&n);
    vs_rt_config mc;
    memset(&mc, 0, sizeof mc);
    mc.num_classes = 10;
    vs_srv_api_limits lim = {.mc = &mc, .cfg = 1.5f, .top_k = 900, .top_p = 0.96f, .default_timeout_ms = 1000,
                             .max_timeout_ms = 2000, .kv_policy = 0, .kv_budget = 0.25, .backend = "cpu"};
    vs_srv_gen_params p;
    vs_srv_api_error e;
    char body[256];
    for (int i = 0; i < n; i++) {
        memset(&e, 0, sizeof e);
        snprintf(body, sizeof body, "{\"class_label\": 3, \"kv_policy\": \"%s\"}", defs[i]->name);
        ck_assert_msg(vs_srv_api_parse_generate(body, strlen(body), &lim, 1, &p, &e) == 0, "%s: %s",
                      defs[i]->name, e.msg);
        ck_assert_int_eq(p.kv_policy, (int)defs[i]->kind);
        ck_assert(p.kv_budget == (defs[i]->compresses ? 0.25 : 1.0));
    }
    snprintf(body, sizeof body, "{\"class_label\": 3, \"kv_policy\": \"no-such-policy\"}");
    ck_assert_int_ne(vs_srv_api_parse_generate(body, strlen(body), &lim, 1, &p, &e), 0);
    char want[512], msg[600];
    expected(want, sizeof want, ", ", ", ");
    snprintf(msg, sizeof msg, "kv_policy must be one of %s (got", want);
    ck_assert_msg(strstr(e.msg, msg), "'%s' lists the registry: %s", e.msg, msg);
}
END_TEST

/* stderr and stdout of `varserve ARGS` */
static char *run(const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", bin(), args);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    size_t cap = 1 << 16, len = 0;
    char *out = malloc(cap);
    ck_assert_ptr_nonnull(out);
    size_t got;
    while ((got = fread(out + len, 1, cap - 1 - len, f)) > 0)
        len += got;
    out[len] = 0;
    pclose(f);
    return out;
}

START_TEST(the_cli_accepts_every_registered_name_and_lists_them_for_others)
{
    int n;
    const vs_kv_policy_def *const *defs = vs_kv_policy_defs(&n);
    char args[512], want[512], msg[600];
    for (int i = 0; i < n; i++) {
        /* a model that does not exist: the options parse, then loading fails */
        snprintf(args, sizeof args, "generate --model /nonexistent/m.safetensors --labels 1 --kv-policy %s --out /tmp/x",
                 defs[i]->name);
        char *out = run(args);
        ck_assert_msg(!strstr(out, "'kv_policy'"), "%s is accepted: %s", defs[i]->name, out);
        free(out);
    }
    char *out = run("generate --model /nonexistent/m.safetensors --labels 1 --kv-policy no-such-policy --out /tmp/x");
    expected(want, sizeof want, "|", "|"); /* the config key's message: --kv-policy sets kv_policy */
    snprintf(msg, sizeof msg, "config key 'kv_policy' (from --kv-policy) must be one of %s (got 'no-such-policy')",
             want);
    ck_assert_msg(strstr(out, msg), "'%s' lists the registry: %s", out, msg);
    free(out);
    /* --help lists every policy with its doc line */
    out = run("--help");
    for (int i = 0; i < n; i++) {
        snprintf(msg, sizeof msg, "  %-13s %s\n", defs[i]->name, defs[i]->doc);
        ck_assert_msg(strstr(out, msg), "--help lists %s", defs[i]->name);
    }
    free(out);
}
END_TEST

START_TEST(metrics_label_every_registered_policy)
{
    int n;
    const vs_kv_policy_def *const *defs = vs_kv_policy_defs(&n);
    vs_srv_metrics *m = NULL;
    vs_err err = {0};
    ck_assert(vs_srv_metrics_new(&m, &err) == VS_OK);
    size_t len = 0;
    char *text = vs_srv_metrics_render(m, 0, &len);
    ck_assert_ptr_nonnull(text);
    char want[128];
    for (int i = 0; i < n; i++) {
        snprintf(want, sizeof want, "varserve_kv_policy_images_total{policy=\"%s\"} 0\n", defs[i]->name);
        ck_assert_msg(strstr(text, want), "metrics label %s", defs[i]->name);
    }
    free(text);
    vs_srv_metrics_free(m);
}
END_TEST

/* A config shaped like the tiny fixture: 10 scales up to 16x16 (L = 680), 4 layers, 4 heads. */
static vs_rt_config tiny_cfg(void)
{
    vs_rt_config c;
    memset(&c, 0, sizeof c);
    int pn[] = {1, 2, 3, 4, 5, 6, 8, 10, 13, 16};
    c.depth = 4;
    c.num_heads = 4;
    c.n_scales = 10;
    for (int s = 0; s < 10; s++) {
        c.patch_nums[s] = pn[s];
        c.scale_offset[s + 1] = c.scale_offset[s] + pn[s] * pn[s];
    }
    return c;
}

/* vs_kv_policy_flow, the one description of the per-(layer, head) flow: store while the capacity
 * allows, compress to it otherwise, release at the last scale; the peak pages follow it, counted
 * per head. */
START_TEST(the_flow_stores_compresses_and_releases_as_the_capacity_says)
{
    vs_rt_config c = tiny_cfg();
    double budgets[] = {0.05, 0.1, 0.4, 1.0};
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++)
        for (int b = 0; b < 4; b++) {
            vs_kv_policy *p = NULL;
            vs_err err = {0};
            ck_assert_msg(vs_kv_policy_new((vs_kv_policy_kind)k, budgets[b], &c, NULL, &p, &err) == VS_OK, "%s",
                          err.msg);
            size_t peak = 0, held = 0;
            int tok[4][4] = {{0}};
            for (int s = 0; s < c.n_scales; s++)
                for (int l = 0; l < c.depth; l++) {
                    int n = c.patch_nums[s] * c.patch_nums[s];
                    size_t before = 0, during = 0, after = 0;
                    for (int h = 0; h < c.num_heads; h++) {
                        int *t = &tok[l][h];
                        vs_kv_flow f = vs_kv_policy_flow(p, c.n_scales, l, h, s, *t, n);
                        int cap = vs_kv_policy_capacity(p, l, h, s, *t + n);
                        if (s == c.n_scales - 1) {
                            ck_assert_int_eq(f.op, VS_KV_FLOW_RELEASE);
                            ck_assert_int_eq(f.after, 0);
                        } else if (cap >= *t + n) {
                            ck_assert_int_eq(f.op, VS_KV_FLOW_STORE);
                            ck_assert_int_eq(f.after, *t + n);
                            ck_assert_int_eq(f.peak, *t + n);
                        } else {
                            ck_assert_int_eq(f.op, VS_KV_FLOW_COMPRESS);
                            ck_assert_int_eq(f.cap, cap);
                            ck_assert_int_eq(f.after, cap);
                            ck_assert_int_eq(f.peak, cap > *t ? cap : *t);
                        }
                        if (!vs_kv_policy_def_of((vs_kv_policy_kind)k)->compresses)
                            ck_assert_int_ne(f.op, VS_KV_FLOW_COMPRESS);
                        before += (size_t)(*t + 15) / 16;
                        during += (size_t)(f.peak + 15) / 16;
                        *t = f.after;
                        after += (size_t)(*t + 15) / 16;
                    }
                    peak = held - before + during > peak ? held - before + during : peak;
                    held = held - before + after;
                }
            ck_assert_uint_eq(vs_kv_policy_peak_pages_per_row(p, 16), peak);
            ck_assert_uint_eq(vs_kv_policy_peak_pages_per_image(p, 16), VS_KV_ROWS_PER_IMAGE * peak);
            vs_kv_policy_free(p);
        }
    /* no policy (the step's NULL entries) is full */
    vs_kv_flow f = vs_kv_policy_flow(NULL, c.n_scales, 0, 0, 3, 30, 16);
    ck_assert_int_eq(f.op, VS_KV_FLOW_STORE);
    ck_assert_int_eq(f.after, 46);
}
END_TEST

/* The one budget-file lookup: the configured file, else MODEL + the kind's suffix when it exists,
 * and only for policies that read one (scalekv: MODEL.budgets.json, hack: MODEL.hack.json). */
START_TEST(the_budget_file_lookup_is_per_policy_kind)
{
    char dir[] = "/tmp/check_registry_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char model[256], files[VS_KV_BUDGET_FILE_KINDS][256], buf[512];
    snprintf(model, sizeof model, "%s/m.safetensors", dir);
    ck_assert_ptr_null(vs_kv_budget_file_suffix(VS_KV_BUDGET_FILE_NONE));
    ck_assert_str_eq(vs_kv_budget_file_suffix(VS_KV_BUDGET_FILE_SCALEKV), ".budgets.json");
    ck_assert_str_eq(vs_kv_budget_file_suffix(VS_KV_BUDGET_FILE_HACK), ".hack.json");
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++) {
        const vs_kv_policy_def *d = vs_kv_policy_def_of((vs_kv_policy_kind)k);
        const char *got = vs_kv_policy_budget_file(d->kind, model, NULL, buf, sizeof buf);
        ck_assert_ptr_null(got); /* no file next to the model yet */
        got = vs_kv_policy_budget_file(d->kind, model, "/etc/other.json", buf, sizeof buf);
        if (d->budget_file == VS_KV_BUDGET_FILE_NONE)
            ck_assert_ptr_null(got);
        else
            ck_assert_str_eq(got, "/etc/other.json");
    }
    for (int b = VS_KV_BUDGET_FILE_SCALEKV; b < VS_KV_BUDGET_FILE_KINDS; b++) {
        snprintf(files[b], sizeof files[b], "%s/m%s", dir, vs_kv_budget_file_suffix((vs_kv_budget_file_kind)b));
        FILE *f = fopen(files[b], "w");
        ck_assert_ptr_nonnull(f);
        fputs("{}", f);
        fclose(f);
    }
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++) {
        const vs_kv_policy_def *d = vs_kv_policy_def_of((vs_kv_policy_kind)k);
        const char *got = vs_kv_policy_budget_file(d->kind, model, "", buf, sizeof buf);
        if (d->budget_file == VS_KV_BUDGET_FILE_NONE)
            ck_assert_ptr_null(got);
        else
            ck_assert_str_eq(got, files[d->budget_file]);
    }
    for (int b = VS_KV_BUDGET_FILE_SCALEKV; b < VS_KV_BUDGET_FILE_KINDS; b++)
        unlink(files[b]);
    rmdir(dir);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("registry");
    TCase *tc = tcase_create("registry");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, the_registry_is_consistent);
    tcase_add_test(tc, config_accepts_every_registered_name_and_lists_them_for_others);
    tcase_add_test(tc, requests_accept_every_registered_name_and_list_them_for_others);
    tcase_add_test(tc, the_cli_accepts_every_registered_name_and_lists_them_for_others);
    tcase_add_test(tc, metrics_label_every_registered_policy);
    tcase_add_test(tc, the_budget_file_lookup_is_per_policy_kind);
    tcase_add_test(tc, the_flow_stores_compresses_and_releases_as_the_capacity_says);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
