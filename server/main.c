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

#include "common/log.h"
#include "kvcache/pool.h"
#include "runtime/backend.h"
#include "runtime/model.h"
#include "runtime/var.h"
#include "server/cli.h"
#include "server/gen.h"
#include "server/png.h"

#define DEFAULT_MODEL "models/mnist-var.safetensors"

static int usage(FILE *f)
{
    fprintf(f,
            "usage: varserve <command> [options]\n"
            "commands:\n"
            "  generate  --model M --labels 3,7 [--seed S] [--cfg X] [--top-k K] [--top-p P]\n"
            "            [--threads N] [--backend auto|cpu|cuda] --out PREFIX [--tokens-out FILE.json]\n"
            "  bench     --model M [--batch 1,8] [--reps 3] [--cfg X] [--top-k K] [--top-p P] [--threads N]\n"
            "  inspect   MODEL\n"
            "  serve     [--config FILE] [--model M] [--host H] [--port P]\n");
    return 2;
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
    const char *model, *backend;
    double cfg, top_p;
    long top_k, threads;
    int have_cfg, have_top_k, have_top_p;
} common_opts;

/* Consumes one of the common options at argv[*i]; 1 consumed, 0 not ours, -1 error (printed). */
static int common_opt(common_opts *o, int argc, char **argv, int *i)
{
    const char *k = argv[*i];
    const char *names[] = {"--model", "--cfg", "--top-k", "--top-p", "--threads", "--backend"};
    int which = -1;
    for (int j = 0; j < 6; j++)
        if (strcmp(k, names[j]) == 0)
            which = j;
    if (which < 0)
        return 0;
    if (*i + 1 >= argc) {
        bad("option %s needs a value%s", k, "");
        return -1;
    }
    const char *v = argv[++*i];
    switch (which) {
    case 0:
        o->model = v;
        return 1;
    case 1:
        if (vs_cli_double(v, 0, 100, &o->cfg) != 0)
            return bad("--cfg must be a number 0..100 (got '%s')%s", v, ""), -1;
        o->have_cfg = 1;
        return 1;
    case 2:
        if (vs_cli_long(v, 0, 1L << 24, &o->top_k) != 0)
            return bad("--top-k must be an integer >= 0, 0 = off (got '%s')%s", v, ""), -1;
        o->have_top_k = 1;
        return 1;
    case 3:
        if (vs_cli_double(v, 0, 1, &o->top_p) != 0)
            return bad("--top-p must be a number 0..1, 0 = off (got '%s')%s", v, ""), -1;
        o->have_top_p = 1;
        return 1;
    case 4:
        if (vs_cli_long(v, 0, 256, &o->threads) != 0)
            return bad("--threads must be 0..256, 0 = all cores (got '%s')%s", v, ""), -1;
        return 1;
    default:
        o->backend = v;
        return 1;
    }
}

/* Loads the model and starts a backend and an engine. Prints the error; returns 1 on failure. */
static int open_engine(common_opts *o, int max_images, vs_rt_model **m, vs_rt_backend **be,
                       vs_rt_engine **e)
{
    vs_err err = {0};
    vs_rt_backend_kind kind;
    if (vs_rt_backend_parse(o->backend, &kind) != 0)
        return bad("--backend must be auto, cpu or cuda (got '%s')%s", o->backend, "");
    if (vs_rt_model_load(o->model, m, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        return 1;
    }
    const vs_rt_config *c = &(*m)->cfg;
    if (!o->have_cfg)
        o->cfg = c->default_cfg >= 0 ? c->default_cfg : 1.5;
    if (!o->have_top_k)
        o->top_k = c->default_top_k >= 0 ? c->default_top_k : 900;
    if (!o->have_top_p)
        o->top_p = c->default_top_p >= 0 ? c->default_top_p : 0.96;
    if (o->top_k > c->vocab_size)
        o->top_k = c->vocab_size;
    if (vs_rt_backend_new(kind, (int)o->threads, be, &err) != VS_OK ||
        vs_rt_engine_new(*m, *be, max_images, e, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static vs_kv_pool *pool_for(const vs_rt_model *m, int images, vs_err *err)
{
    const vs_rt_config *c = &m->cfg;
    size_t page_bytes = (size_t)2 * 16 * c->embed_dim * sizeof(float);
    size_t pages = 2 * (size_t)c->depth * (((size_t)c->scale_offset[c->n_scales] + 15) / 16);
    vs_kv_pool *pool = NULL;
    if (vs_kv_pool_init(pages * (size_t)images * page_bytes, 16, c->depth, c->embed_dim, NULL, &pool,
                        err) != VS_OK)
        return NULL;
    return pool;
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
    char *txt = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    FILE *f = txt ? fopen(path, "w") : NULL;
    int ok = f && fputs(txt, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0)
        ok = 0;
    free(txt);
    if (!ok) {
        fprintf(stderr, "varserve: cannot write '%s': %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

static int cmd_generate(int argc, char **argv)
{
    common_opts o = {DEFAULT_MODEL, "auto", 0, 0, 0, 0, 0, 0, 0};
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
            return bad("unknown option '%s' for generate (see varserve --help)%s", k, "");
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
    vs_rt_model *m = NULL;
    vs_rt_backend *be = NULL;
    vs_rt_engine *e = NULL;
    vs_kv_pool *pool = NULL;
    vs_srv_gen_req *reqs = calloc((size_t)n, sizeof *reqs);
    uint8_t **rgb = calloc((size_t)n, sizeof *rgb);
    int32_t **toks = calloc((size_t)n, sizeof *toks);
    int rc = 1;
    vs_err err = {0};
    if ((rc = open_engine(&o, n, &m, &be, &e)) != 0)
        goto done;
    rc = 2;
    const vs_rt_config *c = &m->cfg;
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
    if (!(pool = pool_for(m, n, &err))) {
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
    if (vs_srv_gen_run(e, pool, reqs, n, rgb, toks, NULL, &err) != VS_OK) {
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
    vs_kv_pool_free(pool);
    vs_rt_engine_free(e);
    vs_rt_backend_free(be);
    vs_rt_model_free(m);
    return rc;
}

/* ---- inspect --------------------------------------------------------------------------------------- */

static int cmd_inspect(int argc, char **argv)
{
    if (argc != 3 || argv[2][0] == '-')
        return bad("usage: varserve inspect MODEL%s%s", "", "");
    vs_err err = {0};
    vs_rt_model *m = NULL;
    if (vs_rt_model_load(argv[2], &m, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        return 1;
    }
    const vs_rt_config *c = &m->cfg;
    printf("model:            %s\n", m->path);
    printf("file:             %.2f MB, stored as %s\n", (double)m->file_bytes / 1e6, m->dtype);
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
    if (c->default_cfg >= 0 || c->default_top_k >= 0 || c->default_top_p >= 0)
        printf("defaults:         cfg %g, top_k %d, top_p %g\n", c->default_cfg, c->default_top_k,
               c->default_top_p);
    vs_rt_model_free(m);
    return 0;
}

/* ---- bench ------------------------------------------------------------------------------------------ */

static int cmd_bench(int argc, char **argv)
{
    common_opts o = {DEFAULT_MODEL, "auto", 0, 0, 0, 0, 0, 0, 0};
    const char *batches = "1,8";
    long reps = 3;
    for (int i = 2; i < argc; i++) {
        int r = common_opt(&o, argc, argv, &i);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        const char *k = argv[i];
        if (strcmp(k, "--batch") != 0 && strcmp(k, "--reps") != 0)
            return bad("unknown option '%s' for bench (see varserve --help)%s", k, "");
        if (i + 1 >= argc)
            return bad("option %s needs a value%s", k, "");
        const char *v = argv[++i];
        if (strcmp(k, "--batch") == 0)
            batches = v;
        else if (vs_cli_long(v, 1, 1000, &reps) != 0)
            return bad("--reps must be 1..1000 (got '%s')%s", v, "");
    }
    long bs[32];
    int nb = 0, maxb = 0;
    char *copy = strdup(batches);
    for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (nb == 32 || vs_cli_long(t, 1, 1024, &bs[nb]) != 0) {
            free(copy);
            return bad("--batch must be a list of batch sizes 1..1024, e.g. 1,8 (got '%s')%s", batches, "");
        }
        if (bs[nb] > maxb)
            maxb = (int)bs[nb];
        nb++;
    }
    free(copy);
    vs_rt_model *m = NULL;
    vs_rt_backend *be = NULL;
    vs_rt_engine *e = NULL;
    vs_kv_pool *pool = NULL;
    vs_err err = {0};
    int rc = 1;
    if ((rc = open_engine(&o, maxb, &m, &be, &e)) != 0)
        goto done;
    rc = 1;
    if (!(pool = pool_for(m, maxb, &err))) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    const vs_rt_config *c = &m->cfg;
    printf("model %s: %d layers, width %d, %dx%d, %zu params; backend %s, %d threads\n", m->path,
           c->depth, c->embed_dim, c->image_size, c->image_size, m->n_params, be->ops->name, be->threads);
    printf("sampling: cfg %g, top_k %ld, top_p %g; kv per image %.2f MB (full cache)\n", o.cfg,
           o.top_k, o.top_p, (double)vs_rt_full_kv_bytes(c) / 1e6);
    printf("%6s %10s %14s %14s %14s\n", "batch", "images/s", "transformer_s", "decoder_s", "total_s");
    for (int bi = 0; bi < nb; bi++) {
        int n = (int)bs[bi];
        vs_srv_gen_req *reqs = calloc((size_t)n, sizeof *reqs);
        uint8_t **rgb = calloc((size_t)n, sizeof *rgb);
        int okb = reqs && rgb;
        for (int k = 0; okb && k < n; k++)
            okb = (rgb[k] = malloc((size_t)c->image_size * c->image_size * 3)) != NULL;
        double best_t = 0, sum_tr = 0, sum_dec = 0;
        for (int rep = 0; okb && rep <= reps; rep++) { /* rep 0 warms up */
            for (int k = 0; k < n; k++)
                reqs[k] = (vs_srv_gen_req){k % c->num_classes, (uint64_t)(1000 * rep + k), (float)o.cfg,
                                           (int)o.top_k, (float)o.top_p};
            vs_srv_gen_times t;
            if (vs_srv_gen_run(e, pool, reqs, n, rgb, NULL, &t, &err) != VS_OK) {
                fprintf(stderr, "varserve: %s\n", err.msg);
                okb = 0;
                break;
            }
            if (rep > 0) {
                sum_tr += t.transformer_s;
                sum_dec += t.decode_s;
                (void)best_t;
            }
        }
        for (int k = 0; rgb && k < n; k++)
            free(rgb[k]);
        free(rgb);
        free(reqs);
        if (!okb)
            goto done;
        double tr = sum_tr / reps, dec = sum_dec / reps;
        printf("%6d %10.3f %14.4f %14.4f %14.4f\n", n, n / (tr + dec), tr, dec, tr + dec);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak RSS: %.1f MB\n", (double)ru.ru_maxrss / 1024.0);
    rc = 0;
done:
    vs_kv_pool_free(pool);
    vs_rt_engine_free(e);
    vs_rt_backend_free(be);
    vs_rt_model_free(m);
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
    if (strcmp(cmd, "generate") == 0)
        return cmd_generate(argc, argv);
    if (strcmp(cmd, "inspect") == 0)
        return cmd_inspect(argc, argv);
    if (strcmp(cmd, "bench") == 0)
        return cmd_bench(argc, argv);
    if (strcmp(cmd, "serve") == 0)
        return vs_srv_serve_main(argc, argv);
    fprintf(stderr, "varserve: unknown command '%s' (commands: serve, generate, bench, inspect)\n", cmd);
    return 2;
}
