/* server/cmd.c — see cmd.h. Main thread only. */
#include "server/cmd.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "config/config.h"

int vs_srv_cli_bad(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "varserve: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 2;
}

/* The configuration's built-in defaults: the commands' options share the key table of
 * config/config.c (defaults, ranges, messages) with `serve`. */
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

vs_srv_cli_opts vs_srv_cli_defaults(void)
{
    const vs_cfg *d = cfg_defaults();
    vs_srv_cli_opts o = {d->model,         d->backend, d->kv_policy, d->default_cfg, d->default_top_p,
                         d->kv_budget,     d->default_top_k, d->threads, 0, 0, 0, 0};
    return o;
}

/* Values are checked by the config key each option sets (--cfg: default_cfg, ...). */
int vs_srv_cli_opt(vs_srv_cli_opts *o, int argc, char **argv, int *i)
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
        vs_srv_cli_bad("option %s needs a value%s", k, "");
        return -1;
    }
    const char *v = argv[++*i];
    static const char *const key[] = {"model",   "default_cfg", "default_top_k", "default_top_p", "threads",
                                      "backend", "kv_policy",   "kv_budget",     NULL};
    vs_cfg c = *cfg_defaults();
    vs_err err = {0};
    if (key[which] && vs_cfg_set(&c, key[which], v, k, &err) != VS_OK)
        return vs_srv_cli_bad("%s", err.msg), -1;
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
            return vs_srv_cli_bad("--precision must be bf16 or fp32 (got '%s')%s", v, ""), -1;
        o->fp32 = strcmp(v, "fp32") == 0;
        return 1;
    }
}

static int listed(const char *const *names, const char *k)
{
    for (; *names; names++)
        if (strcmp(*names, k) == 0)
            return 1;
    return 0;
}

int vs_srv_cli_next(vs_srv_cli_opts *o, const char *cmd, const char *const *flags,
                    const char *const *valued, int argc, char **argv, int *i, const char **k,
                    const char **v)
{
    int r = vs_srv_cli_opt(o, argc, argv, i);
    if (r != 0)
        return r < 0 ? -1 : 0;
    *k = argv[*i];
    if (listed(flags, *k))
        return 1;
    if (!listed(valued, *k)) {
        vs_srv_cli_bad("unknown option '%s' for %s (see varserve %s --help)", *k, cmd, cmd);
        return -1;
    }
    if (*i + 1 >= argc) {
        vs_srv_cli_bad("option %s needs a value", *k);
        return -1;
    }
    *v = argv[++*i];
    return 2;
}

/* The policy the options name; scalekv reads MODEL.budgets.json when it exists. */
int vs_srv_cli_policy(const vs_srv_cli_opts *o, const vs_rt_model *m, const char *kind_name,
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

void vs_srv_cli_close(vs_srv_cli_engine *ce)
{
    vs_kv_pool_free(ce->pool);
    vs_rt_engine_free(ce->e);
    vs_rt_backend_free(ce->be);
    vs_rt_model_free(ce->m);
}

/* Loads the model and starts a backend and an engine into ce (close_engine frees what was made,
 * also after a failure). Prints the error; returns 1 on failure. */
int vs_srv_cli_open(vs_srv_cli_opts *o, int max_images, vs_srv_cli_engine *ce)
{
    vs_err err = {0};
    vs_rt_backend_kind kind;
    if (vs_rt_backend_parse(o->backend, &kind) != 0)
        return vs_srv_cli_bad("--backend must be auto, cpu or cuda (got '%s')%s", o->backend, "");
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
size_t vs_srv_cli_page_bytes(const vs_rt_config *c, int elem_bytes)
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
vs_kv_pool *vs_srv_cli_pool_for(const vs_rt_model *m, vs_rt_backend *be, const vs_kv_policy *pol,
                            int images, vs_err *err)
{
    size_t per_image = vs_kv_policy_peak_pages_per_image(pol, VS_KV_PAGE_TOKENS);
    return pool_pages(m, be, per_image * (size_t)images, err);
}
