/* server/main.c — the varserve binary: subcommands serve, generate, bench, inspect.
 *
 * Only main exits, and only before any port opens. Bad arguments get one line naming the option
 * and what to change, and exit code 2; runtime failures exit 1. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/json_file.h"
#include "common/log.h"
#include "kvcache/calibrate.h"
#include "kvcache/policy.h"
#include "kvcache/pool.h"
#include "runtime/backend.h"
#include "runtime/model.h"
#include "runtime/simd.h"
#include "runtime/var.h"
#include "common/parse.h"
#include "config/config.h"
#include "server/gen.h"
#include "server/png.h"
#include "server/quality.h"


/* Each command's usage, written once: `varserve --help` prints them all, `varserve CMD --help` its
 * own (serve's --help, in serve.c, adds its configuration keys). */
static const struct {
    const char *name, *args;
} commands[] = {
    {"generate", "--model M --labels 3,7 [--seed S] [--cfg X] [--top-k K] [--top-p P]\n"
                 "            [--threads N] [--backend auto|cpu|cuda] [--precision bf16|fp32]\n"
                 "            [--kv-policy P] [--kv-budget B]\n"
                 "            --out PREFIX [--tokens-out FILE.json]\n"},
    {"bench", "--model M [--batch 1,8] [--reps 3] [--kv-policy P] [--kv-budget B]\n"
              "            [--pool-mb MB] [--json] [sampling and backend options as for generate]\n"
              "            --json: one JSON object per batch size (images/s, phase times, device\n"
              "            counters per engine step) instead of the table\n"},
    {"calibrate", "--model M [--images 16] [--method asi|sensitivity|hack] [--top-history 32]\n"
                  "            [--out M.budgets.json, or M.hack.json for hack] [--backend auto|cpu|cuda]\n"
                  "            asi, sensitivity: ScaleKV's drafter layers; hack: HACK's head map\n"},
    {"fidelity", "--model M --kv-policy P --kv-budget B [--images 16] [--seed S] [--json]\n"
                 "            [--backend auto|cpu|cuda] [--precision bf16|fp32]\n"},
    {"inspect", "[--verify] MODEL\n"
                "            --verify: exit 1 unless the file carries a data checksum and it matches\n"},
    {"serve", "[--config FILE] [--print-config] [--KEY VALUE ...], e.g. --model M --port P\n"
              "            (varserve serve --help lists the keys)\n"},
};
#define N_COMMANDS ((int)(sizeof commands / sizeof commands[0]))

static void usage_of(FILE *f, int i) { fprintf(f, "  %-9s %s", commands[i].name, commands[i].args); }

/* The KV policies P may name, from the registry (kvcache/policy.h). */
static void policies_help(FILE *f)
{
    int n;
    const vs_kv_policy_def *const *defs = vs_kv_policy_defs(&n);
    fprintf(f, "KV policies (--kv-policy P, config key kv_policy, request field kv_policy):\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "  %-13s %s\n", defs[i]->name, defs[i]->doc);
}

static int usage(FILE *f)
{
    fprintf(f, "usage: varserve <command> [options]\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++)
        usage_of(f, i);
    policies_help(f);
    return 2;
}

/* `varserve CMD ... --help` (or -h): CMD's usage on stdout. */
static int command_help(int argc, char **argv)
{
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            for (int c = 0; c < N_COMMANDS; c++)
                if (strcmp(argv[1], commands[c].name) == 0) {
                    printf("usage: varserve %s %s", commands[c].name, commands[c].args);
                    if (strstr(commands[c].args, "--kv-policy"))
                        policies_help(stdout);
                    return 1;
                }
    return 0;
}

static int bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int bad(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "varserve: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 2;
}

/* ---- shared sampling options -------------------------------------------------------------------- */

typedef struct {
    const char *model, *backend, *kv_policy;
    double cfg, top_p, kv_budget;
    long top_k, threads;
    int have_cfg, have_top_k, have_top_p;
    int fp32; /* --precision fp32: the CUDA backend in strict FP32 (the CPU is always FP32) */
} common_opts;

/* The configuration's built-in defaults: the commands' options share the key table of
 * config/config.c (defaults, ranges, messages) with `serve`. Main thread only. */
static const vs_cfg *cfg_defaults(void)
{
    static vs_cfg d;
    static int done;
    if (!done) {
        vs_cfg_defaults(&d);
        done = 1;
    }
    return &d;
}

static common_opts common_defaults(void)
{
    const vs_cfg *d = cfg_defaults();
    common_opts o = {d->model, d->backend, d->kv_policy, d->default_cfg, d->default_top_p, d->kv_budget,
                     d->default_top_k, d->threads, 0, 0, 0, 0};
    return o;
}

#define COMMON_DEFAULTS common_defaults()

/* Consumes one of the common options at argv[*i]; 1 consumed, 0 not ours, -1 error (printed).
 * Values are checked by the config key each option sets (--cfg: default_cfg, ...). */
static int common_opt(common_opts *o, int argc, char **argv, int *i)
{
    const char *k = argv[*i];
    const char *names[] = {"--model", "--cfg", "--top-k", "--top-p", "--threads", "--backend",
                           "--kv-policy", "--kv-budget", "--precision"};
    int which = -1;
    for (int j = 0; j < 9; j++)
        if (strcmp(k, names[j]) == 0)
            which = j;
    if (which < 0)
        return 0;
    if (*i + 1 >= argc) {
        bad("option %s needs a value%s", k, "");
        return -1;
    }
    const char *v = argv[++*i];
    static const char *const key[] = {"model",   "default_cfg", "default_top_k", "default_top_p", "threads",
                                      "backend", "kv_policy",   "kv_budget",     NULL};
    vs_cfg c = *cfg_defaults();
    vs_err err = {0};
    if (key[which] && vs_cfg_set(&c, key[which], v, k, &err) != VS_OK)
        return bad("%s", err.msg), -1;
    switch (which) {
    case 0: o->model = v; return 1;
    case 1: o->cfg = c.default_cfg; o->have_cfg = 1; return 1;
    case 2: o->top_k = c.default_top_k; o->have_top_k = 1; return 1;
    case 3: o->top_p = c.default_top_p; o->have_top_p = 1; return 1;
    case 4: o->threads = c.threads; return 1;
    case 5: o->backend = v; return 1;
    case 6: o->kv_policy = v; return 1;
    case 7: o->kv_budget = c.kv_budget; return 1;
    default:
        if (strcmp(v, "fp32") != 0 && strcmp(v, "bf16") != 0)
            return bad("--precision must be bf16 or fp32 (got '%s')%s", v, ""), -1;
        o->fp32 = strcmp(v, "fp32") == 0;
        return 1;
    }
}

/* The policy the options name; scalekv reads MODEL.budgets.json when it exists. */
static int make_policy(const common_opts *o, const vs_rt_model *m, const char *kind_name,
                       vs_kv_policy **out)
{
    vs_kv_policy_kind kind;
    vs_kv_policy_parse(kind_name, &kind);
    char path[4096];
    const char *file = vs_kv_policy_budget_file(kind, m->path, NULL, path, sizeof path);
    vs_err err = {0};
    if (vs_kv_policy_new(kind, o->kv_budget, &m->cfg, file, out, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        return 1;
    }
    return 0;
}

/* What a command runs on: the model, a backend, an engine and, once made, a KV pool. */
typedef struct {
    vs_rt_model *m;
    vs_rt_backend *be;
    vs_rt_engine *e;
    vs_kv_pool *pool;
} cli_engine;

static void close_engine(cli_engine *ce)
{
    vs_kv_pool_free(ce->pool);
    vs_rt_engine_free(ce->e);
    vs_rt_backend_free(ce->be);
    vs_rt_model_free(ce->m);
}

/* Loads the model and starts a backend and an engine into ce (close_engine frees what was made,
 * also after a failure). Prints the error; returns 1 on failure. */
static int open_engine(common_opts *o, int max_images, cli_engine *ce)
{
    vs_err err = {0};
    vs_rt_backend_kind kind;
    if (vs_rt_backend_parse(o->backend, &kind) != 0)
        return bad("--backend must be auto, cpu or cuda (got '%s')%s", o->backend, "");
    if (vs_rt_model_load(o->model, &ce->m, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        return 1;
    }
    const vs_rt_config *c = &ce->m->cfg;
    const vs_cfg *d = cfg_defaults(); /* the model's defaults first, else the configuration's */
    if (!o->have_cfg)
        o->cfg = c->default_cfg >= 0 ? c->default_cfg : d->default_cfg;
    if (!o->have_top_k)
        o->top_k = c->default_top_k >= 0 ? c->default_top_k : d->default_top_k;
    if (!o->have_top_p)
        o->top_p = c->default_top_p >= 0 ? c->default_top_p : d->default_top_p;
    if (o->top_k > c->vocab_size)
        o->top_k = c->vocab_size;
    if (vs_rt_backend_new_precision(kind, (int)o->threads, o->fp32, &ce->be, &err) != VS_OK ||
        vs_rt_engine_new(ce->m, ce->be, max_images, &ce->e, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        return 1;
    }
    return 0;
}

/* Bytes of one page of the CLI's pools for model c with elements of elem_bytes (a backend's
 * kv_elem_bytes). */
static size_t page_bytes_of(const vs_rt_config *c, int elem_bytes)
{
    return vs_kv_page_bytes(vs_kv_geometry_of(c, VS_KV_PAGE_TOKENS, elem_bytes));
}

/* A pool of `pages` pages of VS_KV_PAGE_TOKENS tokens, in the backend's memory. */
static vs_kv_pool *pool_pages(const vs_rt_model *m, vs_rt_backend *be, size_t pages, vs_err *err)
{
    const vs_rt_config *c = &m->cfg;
    vs_kv_geometry g = vs_kv_geometry_of(c, VS_KV_PAGE_TOKENS, be->kv_elem_bytes);
    vs_kv_allocator a = {be, vs_rt_backend_alloc_raw, vs_rt_backend_free_raw};
    vs_kv_pool *pool = NULL;
    if (vs_kv_pool_init(pages * vs_kv_page_bytes(g), g, be->host_memory ? NULL : &a, &pool, err) !=
        VS_OK)
        return NULL;
    return pool;
}

/* A pool that holds `images` images under `pol`. */
static vs_kv_pool *pool_for(const vs_rt_model *m, vs_rt_backend *be, const vs_kv_policy *pol,
                            int images, vs_err *err)
{
    size_t per_image = vs_kv_policy_peak_pages_per_image(pol, VS_KV_PAGE_TOKENS);
    return pool_pages(m, be, per_image * (size_t)images, err);
}

/* ---- generate ------------------------------------------------------------------------------------- */

static int write_tokens_json(const char *path, const vs_rt_config *c, const vs_srv_gen_req *reqs,
                             int32_t *const *toks, int n)
{
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "images");
    for (int i = 0; i < n; i++) {
        cJSON *img = cJSON_CreateObject();
        cJSON_AddNumberToObject(img, "label", reqs[i].label);
        cJSON_AddNumberToObject(img, "seed", (double)reqs[i].seed);
        cJSON *scales = cJSON_AddArrayToObject(img, "tokens");
        for (int s = 0; s < c->n_scales; s++)
            cJSON_AddItemToArray(scales, cJSON_CreateIntArray(toks[i] + c->scale_offset[s],
                                                              c->patch_nums[s] * c->patch_nums[s]));
        cJSON_AddItemToArray(arr, img);
    }
    if (vs_json_write_file(root, path, 0) != 0) {
        fprintf(stderr, "varserve: cannot write '%s': %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

static int cmd_generate(int argc, char **argv)
{
    common_opts o = COMMON_DEFAULTS;
    o.fp32 = 1; /* generate reproduces the reference exactly unless --precision bf16 is asked */
    const char *labels = NULL, *out = NULL, *tokens_out = NULL;
    unsigned long long seed = 0;
    for (int i = 2; i < argc; i++) {
        int r = common_opt(&o, argc, argv, &i);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        const char *k = argv[i];
        if (strcmp(k, "--labels") != 0 && strcmp(k, "--seed") != 0 && strcmp(k, "--out") != 0 &&
            strcmp(k, "--tokens-out") != 0)
            return bad("unknown option '%s' for generate (see varserve generate --help)%s", k, "");
        if (i + 1 >= argc)
            return bad("option %s needs a value%s", k, "");
        const char *v = argv[++i];
        if (strcmp(k, "--labels") == 0)
            labels = v;
        else if (strcmp(k, "--out") == 0)
            out = v;
        else if (strcmp(k, "--tokens-out") == 0)
            tokens_out = v;
        else if (vs_cli_u64(v, &seed) != 0)
            return bad("--seed must be an integer 0..2^64-1 (got '%s')%s", v, "");
    }
    if (!labels)
        return bad("generate needs --labels, e.g. --labels 3,7%s%s", "", "");
    if (!out)
        return bad("generate needs --out PREFIX (images are written to PREFIX-<i>.png)%s%s", "", "");
    char *lab = strdup(labels);
    int n = 0;
    for (char *p = lab; p; p = strchr(p, ','), p = p ? p + 1 : NULL)
        n++;
    if (n > 256) {
        free(lab);
        return bad("--labels takes at most 256 labels (got %s)%s", "more", "");
    }
    cli_engine ce = {0};
    vs_kv_policy *pol = NULL;
    vs_srv_gen_req *reqs = calloc((size_t)n, sizeof *reqs);
    uint8_t **rgb = calloc((size_t)n, sizeof *rgb);
    int32_t **toks = calloc((size_t)n, sizeof *toks);
    int rc = 1;
    vs_err err = {0};
    if ((rc = open_engine(&o, n, &ce)) != 0)
        goto done;
    rc = 2;
    const vs_rt_config *c = &ce.m->cfg;
    int i = 0;
    for (char *save = NULL, *tok = strtok_r(lab, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int cls = vs_rt_class_lookup(c, tok);
        if (cls < 0) {
            char range[32];
            snprintf(range, sizeof range, "0..%d", c->num_classes - 1);
            bad("--labels: unknown class '%s' (use a class index %s or a class name)", tok, range);
            goto done;
        }
        reqs[i].label = cls;
        reqs[i].seed = seed + (unsigned long long)i;
        reqs[i].cfg = (float)o.cfg;
        reqs[i].top_k = (int)o.top_k;
        reqs[i].top_p = (float)o.top_p;
        i++;
    }
    if (i != n) {
        bad("--labels must be a comma-separated list with no empty items (got '%s')%s", labels, "");
        goto done;
    }
    rc = 1;
    if (make_policy(&o, ce.m, o.kv_policy, &pol) != 0)
        goto done;
    if (!(ce.pool = pool_for(ce.m, ce.be, pol, n, &err))) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    int S = c->image_size, L = c->scale_offset[c->n_scales];
    for (int k = 0; k < n; k++) {
        rgb[k] = malloc((size_t)S * S * 3);
        toks[k] = malloc((size_t)L * sizeof(int32_t));
        if (!rgb[k] || !toks[k]) {
            fprintf(stderr, "varserve: out of memory\n");
            goto done;
        }
    }
    vs_srv_gen_opts go = {.policy = pol};
    if (vs_srv_gen_run_opts(ce.e, ce.pool, reqs, n, rgb, toks, NULL, &go, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    for (int k = 0; k < n; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s-%d.png", out, k);
        if (vs_srv_png_write(path, rgb[k], S, S, &err) != VS_OK) {
            fprintf(stderr, "varserve: %s\n", err.msg);
            goto done;
        }
    }
    if (tokens_out && write_tokens_json(tokens_out, c, reqs, toks, n) != 0)
        goto done;
    rc = 0;
done:
    if (rgb)
        for (int k = 0; k < n; k++)
            free(rgb[k]);
    if (toks)
        for (int k = 0; k < n; k++)
            free(toks[k]);
    free(rgb);
    free(toks);
    free(reqs);
    free(lab);
    vs_kv_policy_free(pol);
    close_engine(&ce);
    return rc;
}

/* ---- inspect --------------------------------------------------------------------------------------- */

static int cmd_inspect(int argc, char **argv)
{
    int verify = argc == 4 && strcmp(argv[2], "--verify") == 0;
    if (argc != 3 + verify || argv[2 + verify][0] == '-')
        return bad("inspect takes [--verify] and the model file (see varserve inspect --help)%s%s", "", "");
    vs_err err = {0};
    vs_rt_model *m = NULL;
    /* loading checks everything, the checksum too when the file has one */
    if (vs_rt_model_load(argv[2 + verify], &m, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        return 1;
    }
    if (verify && !m->has_checksum) {
        fprintf(stderr, "varserve: %s has no data_crc32 in its metadata, so its data cannot be verified: "
                        "convert it again with tools/convert_var.py\n", m->path);
        vs_rt_model_free(m);
        return 1;
    }
    const vs_rt_config *c = &m->cfg;
    printf("model:            %s\n", m->path);
    printf("file:             %.2f MB, stored as %s\n", (double)m->file_bytes / 1e6, m->dtype);
    printf("checksum:         %s\n", m->has_checksum ? "data CRC-32 matches the metadata's data_crc32"
                                                      : "none (files from older converters)");
    printf("parameters:       %zu (%.2f M)\n", m->n_params, (double)m->n_params / 1e6);
    printf("transformer:      depth %d, width %d, %d heads of %d, ffn %d, shared_aln %s, attn_l2_norm %s\n",
           c->depth, c->embed_dim, c->num_heads, c->head_dim, c->ffn_dim, c->shared_aln ? "yes" : "no",
           c->attn_l2_norm ? "yes" : "no");
    printf("classes:          %d%s\n", c->num_classes, c->class_names ? " (named)" : "");
    printf("scales:           ");
    for (int s = 0; s < c->n_scales; s++)
        printf("%s%d", s ? "," : "", c->patch_nums[s]);
    printf(" (%d tokens)\n", c->scale_offset[c->n_scales]);
    printf("vocabulary:       %d codes of %d channels\n", c->vocab_size, c->z_channels);
    printf("decoder:          ch %d, mult ", c->vae_ch);
    for (int i = 0; i < c->n_levels; i++)
        printf("%s%d", i ? "," : "", c->vae_ch_mult[i]);
    printf(", %d res blocks per level\n", c->vae_num_res_blocks + 1);
    printf("image:            %dx%d RGB\n", c->image_size, c->image_size);
    printf("weights in memory: %.2f MB (F32)\n", (double)m->data_bytes / 1e6);
    printf("kv per image:     %.2f MB at full cache (2 rows x %d layers x %d tokens, F32)\n",
           (double)vs_rt_full_kv_bytes(c) / 1e6, c->depth, c->scale_offset[c->n_scales]);
    vs_kv_policy *full = NULL;
    if (vs_kv_policy_new(VS_KV_POLICY_FULL, 1, c, NULL, &full, &err) == VS_OK) {
        /* the pool's peak in pages; their element type is the backend's (fp32 on the CPU and in
         * CUDA's --precision fp32, bf16 in CUDA's default mode) */
        size_t pages = vs_kv_policy_peak_pages_per_image(full, VS_KV_PAGE_TOKENS);
        printf("kv pool per image: %zu pages at full cache: %.2f MB as fp32, %.2f MB as bf16\n",
               pages, (double)(pages * page_bytes_of(c, 4)) / 1e6,
               (double)(pages * page_bytes_of(c, 2)) / 1e6);
        vs_kv_policy_free(full);
    }
    if (c->default_cfg >= 0 || c->default_top_k >= 0 || c->default_top_p >= 0)
        printf("defaults:         cfg %g, top_k %d, top_p %g\n", c->default_cfg, c->default_top_k,
               c->default_top_p);
    vs_rt_model_free(m);
    return 0;
}

/* ---- bench ------------------------------------------------------------------------------------------ */

static int parse_list(const char *s, long *out, int max, long lo, long hi)
{
    int n = 0;
    char *copy = strdup(s);
    for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n == max || vs_cli_long(t, lo, hi, &out[n]) != 0) {
            free(copy);
            return -1;
        }
        n++;
    }
    free(copy);
    return n;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

/* bench --json: one line for batch size n. tr, kv, dec: mean seconds per run; dev: the device
 * counters summed over the `steps` steps of each of the `reps` timed runs (NULL: no device). */
static int bench_json_line(const cli_engine *ce, const common_opts *o, const vs_kv_policy *pol,
                           int n, long reps, double tr, double kv, double dec, int steps,
                           const vs_rt_counters *dev, const vs_rt_counters *dec_dev)
{
    vs_kv_policy_kind kind = vs_kv_policy_kind_of(pol);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", ce->m->path);
    cJSON_AddStringToObject(j, "backend", ce->be->ops->name);
    cJSON_AddNumberToObject(j, "threads", ce->be->threads);
    if (ce->be->simd)
        cJSON_AddStringToObject(j, "simd", ce->be->simd);
    cJSON_AddStringToObject(j, "kv_policy", vs_kv_policy_name(kind));
    cJSON_AddStringToObject(j, "kv_dtype", vs_rt_kv_dtype_name(ce->be->kv_elem_bytes));
    cJSON_AddNumberToObject(j, "kv_bytes_per_image",
                            (double)(vs_kv_policy_peak_pages_per_image(pol, VS_KV_PAGE_TOKENS) *
                                     page_bytes_of(&ce->m->cfg, ce->be->kv_elem_bytes)));
    if (!vs_kv_policy_def_of(kind)->compresses)
        cJSON_AddNullToObject(j, "kv_budget");
    else
        cJSON_AddNumberToObject(j, "kv_budget", o->kv_budget);
    cJSON_AddNumberToObject(j, "batch", n);
    cJSON_AddNumberToObject(j, "reps", (double)reps);
    cJSON_AddNumberToObject(j, "steps", steps);
    cJSON_AddNumberToObject(j, "images_per_s", n / (tr + dec));
    cJSON_AddNumberToObject(j, "transformer_s", tr);
    cJSON_AddNumberToObject(j, "of_which_kv_s", kv);
    cJSON_AddNumberToObject(j, "decoder_s", dec);
    cJSON_AddNumberToObject(j, "total_s", tr + dec);
    cJSON_AddNumberToObject(j, "peak_rss_mb", peak_rss_mb());
    if (dev) {
        double per = (double)reps * steps;
        cJSON *d = cJSON_AddObjectToObject(j, "device");
        cJSON_AddNumberToObject(d, "launches", (double)dev->launches / per);
        cJSON_AddNumberToObject(d, "syncs", (double)dev->syncs / per);
        cJSON_AddNumberToObject(d, "h2d_bytes", (double)dev->h2d_bytes / per);
        cJSON_AddNumberToObject(d, "d2h_bytes", (double)dev->d2h_bytes / per);
        cJSON_AddNumberToObject(d, "kv_h2d_bytes", (double)dev->kv_h2d_bytes / per);
        cJSON_AddNumberToObject(d, "kv_d2h_bytes", (double)dev->kv_d2h_bytes / per);
        cJSON_AddNumberToObject(d, "allocated_bytes", (double)dev->allocated_peak_bytes);
        /* per decode of the whole batch (not per image): independent of n when it is batched */
        cJSON *dd = cJSON_AddObjectToObject(j, "decoder_device");
        cJSON_AddNumberToObject(dd, "launches", (double)dec_dev->launches / (double)reps);
        cJSON_AddNumberToObject(dd, "syncs", (double)dec_dev->syncs / (double)reps);
        cJSON_AddNumberToObject(dd, "h2d_bytes", (double)dec_dev->h2d_bytes / (double)reps);
        cJSON_AddNumberToObject(dd, "d2h_bytes", (double)dec_dev->d2h_bytes / (double)reps);
    } else {
        cJSON_AddNullToObject(j, "device");
        cJSON_AddNullToObject(j, "decoder_device");
    }
    char *txt = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!txt) {
        fprintf(stderr, "varserve: out of memory\n");
        return 1;
    }
    printf("%s\n", txt);
    fflush(stdout);
    free(txt);
    return 0;
}

/* bench's text header: the model and settings, and each policy's KV capacity in a pool_mb pool. */
static void bench_header(const cli_engine *ce, const common_opts *o, const vs_kv_policy *pol,
                         double pool_mb)
{
    const vs_rt_config *c = &ce->m->cfg;
    vs_err err = {0};
    size_t page_bytes = page_bytes_of(c, ce->be->kv_elem_bytes);
    printf("model %s: %d layers, width %d, %dx%d, %zu params; backend %s, %d threads", ce->m->path,
           c->depth, c->embed_dim, c->image_size, c->image_size, ce->m->n_params, ce->be->ops->name,
           ce->be->threads);
    if (ce->be->simd) /* the vector path, and how to force another */
        printf(", simd %s (of %s; VARSERVE_CPU_SIMD)", ce->be->simd, vs_rt_simd_available());
    printf("\n");
    printf("sampling: cfg %g, top_k %ld, top_p %g; kv policy %s", o->cfg, o->top_k, o->top_p,
           vs_kv_policy_name(vs_kv_policy_kind_of(pol)));
    if (vs_kv_policy_def_of(vs_kv_policy_kind_of(pol))->compresses)
        printf(" at budget %g (%s)", o->kv_budget, vs_kv_policy_source(pol));
    printf("\n");
    /* capacity: KV bytes each image reserves and how many fit in a pool of pool_mb, per policy */
    size_t pool_pages = (size_t)(pool_mb * 1e6 / (double)page_bytes);
    printf("kv per image (peak reserved, %d-token %s pages of %.1f KB) and images in a %.0f MB "
           "pool:\n",
           VS_KV_PAGE_TOKENS, vs_rt_kv_dtype_name(ce->be->kv_elem_bytes), (double)page_bytes / 1e3,
           pool_mb);
    size_t full_pages = 0;
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++) {
        vs_kv_policy *p = NULL;
        char path[4096];
        const char *file = vs_kv_policy_budget_file((vs_kv_policy_kind)k, ce->m->path, NULL, path, sizeof path);
        if (vs_kv_policy_new((vs_kv_policy_kind)k, o->kv_budget, c, file, &p, &err) != VS_OK)
            continue;
        size_t pages = vs_kv_policy_peak_pages_per_image(p, VS_KV_PAGE_TOKENS);
        if (k == VS_KV_POLICY_FULL)
            full_pages = pages;
        printf("  %-13s %9.3f MB  %6zu images  %5.2fx full\n", vs_kv_policy_name((vs_kv_policy_kind)k),
               (double)(pages * page_bytes) / 1e6, pool_pages / pages,
               full_pages ? (double)full_pages / (double)pages : 0.0);
        vs_kv_policy_free(p);
    }
    printf("  (the classic full cache, every layer holding all %d tokens: %.3f MB)\n",
           c->scale_offset[c->n_scales], (double)vs_rt_full_kv_bytes(c) / 1e6);
    printf("%6s %10s %14s %14s %14s %14s\n", "batch", "images/s", "transformer_s", "of_which_kv_s",
           "decoder_s", "total_s");
}

static int cmd_bench(int argc, char **argv)
{
    common_opts o = COMMON_DEFAULTS;
    const char *batches = "1,8";
    long reps = 3;
    double pool_mb = 256;
    int json = 0;
    for (int i = 2; i < argc; i++) {
        int r = common_opt(&o, argc, argv, &i);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        const char *k = argv[i];
        if (strcmp(k, "--json") == 0) {
            json = 1;
            continue;
        }
        if (strcmp(k, "--batch") != 0 && strcmp(k, "--reps") != 0 && strcmp(k, "--pool-mb") != 0)
            return bad("unknown option '%s' for bench (see varserve bench --help)", k);
        if (i + 1 >= argc)
            return bad("option %s needs a value", k);
        const char *v = argv[++i];
        if (strcmp(k, "--batch") == 0)
            batches = v;
        else if (strcmp(k, "--pool-mb") == 0) {
            if (vs_cli_double(v, 0.001, 1e7, &pool_mb) != 0)
                return bad("--pool-mb must be a size in MB > 0 (got '%s')", v);
        } else if (vs_cli_long(v, 1, 1000, &reps) != 0)
            return bad("--reps must be 1..1000 (got '%s')", v);
    }
    long bs[32];
    int nb = parse_list(batches, bs, 32, 1, 1024), maxb = 0;
    if (nb <= 0)
        return bad("--batch must be a list of batch sizes 1..1024, e.g. 1,8 (got '%s')", batches);
    for (int i = 0; i < nb; i++)
        maxb = bs[i] > maxb ? (int)bs[i] : maxb;
    cli_engine ce = {0};
    vs_kv_policy *pol = NULL;
    vs_err err = {0};
    int rc = 1;
    if ((rc = open_engine(&o, maxb, &ce)) != 0)
        goto done;
    rc = 1;
    if (make_policy(&o, ce.m, o.kv_policy, &pol) != 0)
        goto done;
    if (!(ce.pool = pool_for(ce.m, ce.be, pol, maxb, &err))) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    const vs_rt_config *c = &ce.m->cfg;
    if (!json) /* --json: JSON Lines, one object per batch size and nothing else on stdout */
        bench_header(&ce, &o, pol, pool_mb);
    for (int bi = 0; bi < nb; bi++) {
        int n = (int)bs[bi];
        vs_srv_gen_req *reqs = calloc((size_t)n, sizeof *reqs);
        uint8_t **rgb = calloc((size_t)n, sizeof *rgb);
        int okb = reqs && rgb;
        for (int k = 0; okb && k < n; k++)
            okb = (rgb[k] = malloc((size_t)c->image_size * c->image_size * 3)) != NULL;
        double sum_tr = 0, sum_dec = 0, sum_kv = 0;
        vs_rt_counters dev = {0}; /* the timed runs' steps: sums, allocated as after the last */
        vs_rt_counters dec_dev = {0}; /* the timed runs' decodes: sums */
        int have_dev = 0, steps = 0;
        for (int rep = 0; okb && rep <= reps; rep++) { /* rep 0 warms up */
            for (int k = 0; k < n; k++)
                reqs[k] = (vs_srv_gen_req){k % c->num_classes, (uint64_t)(1000 * rep + k), (float)o.cfg,
                                           (int)o.top_k, (float)o.top_p};
            vs_srv_gen_times t;
            vs_srv_gen_opts go = {.policy = pol};
            if (vs_srv_gen_run_opts(ce.e, ce.pool, reqs, n, rgb, NULL, &t, &go, &err) != VS_OK) {
                fprintf(stderr, "varserve: %s\n", err.msg);
                okb = 0;
                break;
            }
            if (rep > 0) {
                sum_tr += t.transformer_s;
                sum_dec += t.decode_s;
                sum_kv += t.kv_s;
                have_dev = t.have_device;
                steps = t.steps;
                dev.launches += t.device.launches;
                dev.syncs += t.device.syncs;
                dev.h2d_bytes += t.device.h2d_bytes;
                dev.d2h_bytes += t.device.d2h_bytes;
                dev.kv_h2d_bytes += t.device.kv_h2d_bytes;
                dev.kv_d2h_bytes += t.device.kv_d2h_bytes;
                dev.allocated_peak_bytes = t.device.allocated_peak_bytes;
                dec_dev.launches += t.decode_device.launches;
                dec_dev.syncs += t.decode_device.syncs;
                dec_dev.h2d_bytes += t.decode_device.h2d_bytes;
                dec_dev.d2h_bytes += t.decode_device.d2h_bytes;
            }
        }
        for (int k = 0; rgb && k < n; k++)
            free(rgb[k]);
        free(rgb);
        free(reqs);
        if (!okb)
            goto done;
        double tr = sum_tr / reps, dec = sum_dec / reps, kv = sum_kv / reps;
        if (json) {
            if (bench_json_line(&ce, &o, pol, n, reps, tr, kv, dec, steps, have_dev ? &dev : NULL,
                                have_dev ? &dec_dev : NULL) != 0)
                goto done;
        } else {
            printf("%6d %10.3f %14.4f %14.4f %14.4f %14.4f\n", n, n / (tr + dec), tr, kv, dec, tr + dec);
        }
    }
    if (!json)
        printf("peak RSS: %.1f MB\n", peak_rss_mb());
    rc = 0;
done:
    vs_kv_policy_free(pol);
    close_engine(&ce);
    return rc;
}

/* ---- calibrate --------------------------------------------------------------------------------------- */

static int cmd_calibrate(int argc, char **argv)
{
    common_opts o = COMMON_DEFAULTS;
    const char *out = NULL, *method = "asi";
    long images = 16, top_hist = 32;
    for (int i = 2; i < argc; i++) {
        int r = common_opt(&o, argc, argv, &i);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        const char *k = argv[i];
        if (strcmp(k, "--out") != 0 && strcmp(k, "--images") != 0 && strcmp(k, "--top-history") != 0 &&
            strcmp(k, "--method") != 0)
            return bad("unknown option '%s' for calibrate (see varserve calibrate --help)", k);
        if (i + 1 >= argc)
            return bad("option %s needs a value", k);
        const char *v = argv[++i];
        if (strcmp(k, "--out") == 0)
            out = v;
        else if (strcmp(k, "--method") == 0) {
            if (strcmp(v, "asi") != 0 && strcmp(v, "sensitivity") != 0 && strcmp(v, "hack") != 0)
                return bad("--method must be asi, sensitivity or hack (got '%s')", v);
            method = v;
        } else if (strcmp(k, "--images") == 0) {
            if (vs_cli_long(v, 1, 100000, &images) != 0)
                return bad("--images must be 1..100000 (got '%s')", v);
        } else if (vs_cli_long(v, 1, 1 << 20, &top_hist) != 0)
            return bad("--top-history must be 1..1048576 tokens (got '%s')", v);
    }
    int batch = images < 8 ? (int)images : 8;
    cli_engine ce = {0};
    vs_kv_policy *full = NULL;
    vs_kv_attn_stats stats = {0};
    vs_err err = {0};
    char path[4096];
    int rc = open_engine(&o, batch, &ce);
    if (rc != 0)
        goto done;
    rc = 1;
    int hack = strcmp(method, "hack") == 0;
    if (!out) {
        vs_kv_budget_path_for(ce.m->path, hack ? VS_KV_BUDGET_FILE_HACK : VS_KV_BUDGET_FILE_SCALEKV, path,
                              sizeof path);
        out = path;
    }
    const vs_rt_config *c = &ce.m->cfg;
    if (make_policy(&o, ce.m, "full", &full) != 0 || !(ce.pool = pool_for(ce.m, ce.be, full, batch, &err)) ||
        vs_kv_stats_init(&stats, c, (int)top_hist, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg[0] ? err.msg : "cannot start calibration");
        goto done;
    }
    int sens = strcmp(method, "sensitivity") == 0, L = c->scale_offset[c->n_scales];
    vs_srv_gen_req reqs[8];
    int32_t *tok = sens ? malloc((size_t)16 * L * sizeof *tok) : NULL; /* [ref 8][probe 8] */
    double *damage = sens ? calloc((size_t)c->depth, sizeof *damage) : NULL;
    if (sens && (!tok || !damage)) {
        fprintf(stderr, "varserve: out of memory\n");
        goto calib_done;
    }
    for (long done_n = 0; done_n < images; done_n += batch) {
        int n = images - done_n < batch ? (int)(images - done_n) : batch;
        int32_t *ref[8], *probe[8];
        for (int k = 0; k < n; k++) {
            reqs[k] = (vs_srv_gen_req){(int)((done_n + k) % c->num_classes), (uint64_t)(done_n + k),
                                       (float)o.cfg, (int)o.top_k, (float)o.top_p};
            ref[k] = sens ? tok + (size_t)k * L : NULL;
            probe[k] = sens ? tok + (size_t)(8 + k) * L : NULL;
        }
        vs_srv_gen_opts go = {.policy = full, .stats = sens ? NULL : &stats};
        if (vs_srv_gen_run_opts(ce.e, ce.pool, reqs, n, NULL, sens ? ref : NULL, NULL, &go, &err) != VS_OK) {
            fprintf(stderr, "varserve: %s\n", err.msg);
            goto calib_done;
        }
        /* sensitivity: the same images with one layer at a time cut to the observation window */
        for (int l = 0; sens && l < c->depth; l++) {
            vs_kv_policy *probe_pol = NULL;
            vs_srv_gen_opts po = {0};
            vs_status pst = vs_kv_policy_new_probe(c, l, &probe_pol, &err);
            po.policy = probe_pol;
            if (pst == VS_OK)
                pst = vs_srv_gen_run_opts(ce.e, ce.pool, reqs, n, NULL, probe, NULL, &po, &err);
            vs_kv_policy_free(probe_pol);
            if (pst != VS_OK) {
                fprintf(stderr, "varserve: %s\n", err.msg);
                goto calib_done;
            }
            for (int k = 0; k < n; k++)
                for (int t = 0; t < L; t++)
                    damage[l] += (ref[k][t] != probe[k][t]) / ((double)L * (double)images);
        }
    }
    if ((sens   ? vs_kv_calibrate_write_sensitivity(damage, c, ce.m->path, (int)images, out, &err)
         : hack ? vs_kv_calibrate_write_hack(&stats, c, ce.m->path, (int)images, out, &err)
                : vs_kv_calibrate_write(&stats, c, ce.m->path, (int)images, out, &err)) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto calib_done;
    }
    if (hack)
        printf("wrote %s: HACK head map (contextual/structural) for %d layers x %d heads from %ld images\n",
               out, c->depth, c->num_heads, images);
    else
        printf("wrote %s: ScaleKV drafter/refiner marks (%s) for %d scales x %d layers from %ld images\n",
               out, method, c->n_scales - 1, c->depth, images);
    rc = 0;
calib_done:
    free(tok);
    free(damage);
done:
    vs_kv_stats_free(&stats);
    vs_kv_policy_free(full);
    close_engine(&ce);
    return rc;
}

/* ---- fidelity ---------------------------------------------------------------------------------------- */

static int cmd_fidelity(int argc, char **argv)
{
    common_opts o = COMMON_DEFAULTS;
    o.kv_policy = "scalekv";
    long images = 16;
    unsigned long long seed = 0;
    int json = 0;
    const char *dump = NULL;
    for (int i = 2; i < argc; i++) {
        int r = common_opt(&o, argc, argv, &i);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        const char *k = argv[i];
        if (strcmp(k, "--json") == 0) {
            json = 1;
            continue;
        }
        if (strcmp(k, "--images") != 0 && strcmp(k, "--seed") != 0 && strcmp(k, "--out") != 0 &&
            strcmp(k, "--policy") != 0 && strcmp(k, "--budget") != 0)
            return bad("unknown option '%s' for fidelity (see varserve fidelity --help)", k);
        if (i + 1 >= argc)
            return bad("option %s needs a value", k);
        const char *v = argv[++i];
        if (strcmp(k, "--policy") == 0 || strcmp(k, "--budget") == 0) {
            /* --policy / --budget are the spelling of --kv-policy / --kv-budget */
            char name[16];
            snprintf(name, sizeof name, "%s", strcmp(k, "--policy") == 0 ? "--kv-policy" : "--kv-budget");
            char *fake[2] = {name, (char *)v};
            int j = 0;
            if (common_opt(&o, 2, fake, &j) < 0)
                return 2;
        } else if (strcmp(k, "--images") == 0) {
            if (vs_cli_long(v, 1, 100000, &images) != 0)
                return bad("--images must be 1..100000 (got '%s')", v);
        } else if (strcmp(k, "--out") == 0) {
            dump = v;
        } else if (vs_cli_u64(v, &seed) != 0) {
            return bad("--seed must be an integer 0..2^64-1 (got '%s')", v);
        }
    }
    int batch = images < 8 ? (int)images : 8;
    cli_engine ce = {0};
    vs_kv_policy *full = NULL, *pol = NULL;
    vs_err err = {0};
    uint8_t *rgb[2][8] = {{0}};
    int32_t *tok[2][8] = {{0}};
    int rc = open_engine(&o, batch, &ce);
    if (rc != 0)
        goto done;
    rc = 1;
    const vs_rt_config *c = &ce.m->cfg;
    int S = c->image_size, L = c->scale_offset[c->n_scales];
    if (make_policy(&o, ce.m, "full", &full) != 0 || make_policy(&o, ce.m, o.kv_policy, &pol) != 0 ||
        !(ce.pool = pool_for(ce.m, ce.be, full, batch, &err))) {
        fprintf(stderr, "varserve: %s\n", err.msg[0] ? err.msg : "cannot start");
        goto done;
    }
    for (int v = 0; v < 2; v++)
        for (int k = 0; k < batch; k++)
            if (!(rgb[v][k] = malloc((size_t)S * S * 3)) || !(tok[v][k] = malloc((size_t)L * 4))) {
                fprintf(stderr, "varserve: out of memory\n");
                goto done;
            }
    double psnr_sum = 0, ssim_sum = 0, same = 0, identical = 0;
    size_t pages[2] = {0, 0};
    vs_srv_gen_req reqs[8];
    for (long done_n = 0; done_n < images; done_n += batch) {
        int n = images - done_n < batch ? (int)(images - done_n) : batch;
        for (int k = 0; k < n; k++)
            reqs[k] = (vs_srv_gen_req){(int)((done_n + k) % c->num_classes), seed + (uint64_t)(done_n + k),
                                       (float)o.cfg, (int)o.top_k, (float)o.top_p};
        for (int v = 0; v < 2; v++) {
            vs_srv_gen_opts go = {.policy = v == 0 ? full : pol};
            if (vs_srv_gen_run_opts(ce.e, ce.pool, reqs, n, rgb[v], tok[v], NULL, &go, &err) != VS_OK) {
                fprintf(stderr, "varserve: %s\n", err.msg);
                goto done;
            }
            pages[v] = go.peak_pages_per_image;
        }
        for (int k = 0; k < n; k++) {
            double p = vs_srv_psnr(rgb[0][k], rgb[1][k], S * S * 3);
            identical += isinf(p);
            psnr_sum += isinf(p) ? 100.0 : p; /* identical images count as 100 dB */
            ssim_sum += vs_srv_ssim(rgb[0][k], rgb[1][k], S, S);
            int eq = 0;
            for (int t = 0; t < L; t++)
                eq += tok[0][k][t] == tok[1][k][t];
            same += (double)eq / L;
            if (dump) {
                char fn[4096];
                snprintf(fn, sizeof fn, "%s-%ld-full.png", dump, done_n + k);
                vs_srv_png_write(fn, rgb[0][k], S, S, &err);
                snprintf(fn, sizeof fn, "%s-%ld-%s.png", dump, done_n + k, o.kv_policy);
                vs_srv_png_write(fn, rgb[1][k], S, S, &err);
            }
        }
    }
    size_t page_bytes = page_bytes_of(c, ce.be->kv_elem_bytes);
    double kv_full = (double)(pages[0] * page_bytes), kv_pol = (double)(pages[1] * page_bytes);
    if (json)
        printf("{\"model\":\"%s\",\"policy\":\"%s\",\"budget\":%g,\"images\":%ld,\"psnr_db\":%.3f,"
               "\"ssim\":%.4f,\"tokens_unchanged\":%.4f,\"identical_images\":%.0f,"
               "\"kv_bytes_per_image\":%.0f,\"kv_bytes_per_image_full\":%.0f,\"budget_source\":\"%s\"}\n",
               ce.m->path, o.kv_policy, o.kv_budget, images, psnr_sum / images, ssim_sum / images,
               same / images, identical, kv_pol, kv_full, vs_kv_policy_source(pol));
    else
        printf("%s at budget %g over %ld images: PSNR %.2f dB, SSIM %.4f, tokens unchanged %.1f%%, "
               "KV per image %.3f MB (full %.3f MB, %.1fx less)\n",
               o.kv_policy, o.kv_budget, images, psnr_sum / images, ssim_sum / images,
               100 * same / images, kv_pol / 1e6, kv_full / 1e6, kv_full / kv_pol);
    rc = 0;
done:
    for (int v = 0; v < 2; v++)
        for (int k = 0; k < 8; k++) {
            free(rgb[v][k]);
            free(tok[v][k]);
        }
    vs_kv_policy_free(full);
    vs_kv_policy_free(pol);
    close_engine(&ce);
    return rc;
}

int vs_srv_serve_main(int argc, char **argv);

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage(stderr);
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "serve") == 0)
        return vs_srv_serve_main(argc, argv); /* its --help adds the configuration keys */
    if (command_help(argc, argv))
        return 0;
    if (strcmp(cmd, "generate") == 0)
        return cmd_generate(argc, argv);
    if (strcmp(cmd, "inspect") == 0)
        return cmd_inspect(argc, argv);
    if (strcmp(cmd, "bench") == 0)
        return cmd_bench(argc, argv);
    if (strcmp(cmd, "calibrate") == 0)
        return cmd_calibrate(argc, argv);
    if (strcmp(cmd, "fidelity") == 0)
        return cmd_fidelity(argc, argv);
    fprintf(stderr, "varserve: unknown command '%s' (commands:", cmd);
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(stderr, "%s %s", i ? "," : "", commands[i].name);
    fprintf(stderr, ")\n");
    return 2;
}
