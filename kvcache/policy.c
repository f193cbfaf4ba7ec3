/* kvcache/policy.c — see policy.h: the registry, and what every policy shares (creation, the
 * capacity table, the flow, the peak pages). What is particular to a policy is in its own file
 * (policy_full.c, policy_scalekv.c, policy_window.c), reached through its vs_kv_policy_def.
 * Capacities are tabulated per (scale, layer, head) at creation; the selection works on one head's
 * scores at a time, on the host. */
#include "kvcache/policy_impl.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/calibrate.h"

/* The registry: the one list of policies, in vs_kv_policy_kind order. */
static const vs_kv_policy_def *const registry[VS_KV_POLICY_COUNT] = {
    [VS_KV_POLICY_FULL] = &vs_kv_policy_full_def,
    [VS_KV_POLICY_SCALEKV] = &vs_kv_policy_scalekv_def,
    [VS_KV_POLICY_SNAPKV] = &vs_kv_policy_snapkv_def,
    [VS_KV_POLICY_PYRAMIDKV] = &vs_kv_policy_pyramidkv_def,
    [VS_KV_POLICY_SLIDING] = &vs_kv_policy_sliding_def,
    [VS_KV_POLICY_STREAMINGLLM] = &vs_kv_policy_streamingllm_def,
    [VS_KV_POLICY_HACK] = &vs_kv_policy_hack_def,
};

const vs_kv_policy_def *const *vs_kv_policy_defs(int *n)
{
    if (n)
        *n = VS_KV_POLICY_COUNT;
    return registry;
}

const vs_kv_policy_def *vs_kv_policy_def_of(vs_kv_policy_kind k)
{
    return (unsigned)k < VS_KV_POLICY_COUNT ? registry[k] : NULL;
}

const vs_kv_policy_def *vs_kv_policy_lookup(const char *name)
{
    for (int i = 0; name && i < VS_KV_POLICY_COUNT; i++)
        if (strcmp(name, registry[i]->name) == 0)
            return registry[i];
    return NULL;
}

const char *vs_kv_policy_name(vs_kv_policy_kind k)
{
    const vs_kv_policy_def *d = vs_kv_policy_def_of(k);
    return d ? d->name : "unknown";
}

int vs_kv_policy_parse(const char *s, vs_kv_policy_kind *out)
{
    const vs_kv_policy_def *d = vs_kv_policy_lookup(s);
    if (!d)
        return -1;
    *out = d->kind;
    return 0;
}

int vs_kv_policy_names(char *out, size_t cap, const char *sep, const char *last_sep)
{
    int len = 0;
    for (int i = 0; i < VS_KV_POLICY_COUNT; i++) {
        const char *s = i == 0 ? "" : i == VS_KV_POLICY_COUNT - 1 ? last_sep : sep;
        int n = snprintf(out ? out + len : NULL, out && (size_t)len < cap ? cap - (size_t)len : 0, "%s%s", s,
                         registry[i]->name);
        len += n;
        if (out && (size_t)len >= cap)
            out = NULL, cap = 0; /* truncated: count the rest */
    }
    return len;
}

static char choices[256];
static pthread_once_t choices_once = PTHREAD_ONCE_INIT;
static void make_choices(void) { vs_kv_policy_names(choices, sizeof choices, "|", "|"); }

const char *vs_kv_policy_choices(void)
{
    pthread_once(&choices_once, make_choices);
    return choices;
}

const char *vs_kv_policy_budget_file(vs_kv_policy_kind k, const char *model_path, const char *configured,
                                     char *buf, size_t cap)
{
    const vs_kv_policy_def *d = vs_kv_policy_def_of(k);
    if (!d || d->budget_file == VS_KV_BUDGET_FILE_NONE)
        return NULL;
    if (configured && configured[0]) {
        snprintf(buf, cap, "%s", configured);
        return buf;
    }
    return model_path && vs_kv_budget_path_for(model_path, d->budget_file, buf, cap) ? buf : NULL;
}

const char *vs_kv_budget_file_suffix(vs_kv_budget_file_kind k)
{
    static const char *const suffix[VS_KV_BUDGET_FILE_KINDS] = {
        [VS_KV_BUDGET_FILE_SCALEKV] = ".budgets.json",
        [VS_KV_BUDGET_FILE_HACK] = ".hack.json",
    };
    return (unsigned)k < VS_KV_BUDGET_FILE_KINDS ? suffix[k] : NULL;
}

/* Index of (layer, head, scale) in the capacity table [n_scales][depth][num_heads]. */
static size_t cap_at(const vs_kv_policy *p, int layer, int head, int scale)
{
    return ((size_t)scale * p->depth + (size_t)layer) * p->num_heads + (size_t)head;
}

/* p->held from p->cap: every head followed through the scales from an empty cache, in the flow
 * (tokens only, so the peak pages for any page size read it). Called whenever cap changes. */
static void tabulate_held(vs_kv_policy *p)
{
    for (int l = 0; l < p->depth; l++)
        for (int h = 0; h < p->num_heads; h++) {
            int tokens = 0;
            for (int s = 0; s < p->n_scales; s++) {
                int n = p->patch_nums[s] * p->patch_nums[s];
                tokens = vs_kv_policy_flow(p, p->n_scales, l, h, s, tokens, n).after;
                p->held[cap_at(p, l, h, s)] = tokens;
            }
        }
}

int vs_kv_at_least_window(double v)
{
    long r = lround(v);
    return r < VS_KV_WINDOW ? VS_KV_WINDOW : (int)r;
}

vs_status vs_kv_policy_new(vs_kv_policy_kind kind, double budget, const vs_rt_config *c,
                           const char *budget_file, vs_kv_policy **out, vs_err *err)
{
    const vs_kv_policy_def *d = vs_kv_policy_def_of(kind);
    if (!d)
        return vs_err_set(err, VS_ERR_INVALID, "unknown KV policy %d", (int)kind);
    if (d->compresses && !(budget > 0 && budget <= 1))
        return vs_err_set(err, VS_ERR_INVALID,
                          "kv_budget must be a fraction of the full cache in (0, 1] (got %g)", budget);
    if (c->depth < 1 || c->num_heads < 1 || c->n_scales < 1)
        return vs_err_set(err, VS_ERR_INVALID,
                          "a KV policy needs a model with layers, heads and scales (got depth %d, "
                          "%d heads, %d scales)",
                          c->depth, c->num_heads, c->n_scales);
    vs_kv_policy *p = calloc(1, sizeof *p);
    if (!p)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    p->def = d;
    p->kind = kind;
    p->budget = d->compresses ? budget : 1.0;
    p->depth = c->depth;
    p->n_scales = c->n_scales;
    p->num_heads = c->num_heads;
    for (int s = 0; s < c->n_scales; s++) {
        p->patch_nums[s] = c->patch_nums[s];
        p->cum[s] = c->scale_offset[s + 1];
    }
    p->total = c->scale_offset[c->n_scales];
    p->sinks = p->cum[c->n_scales > 1 ? 1 : 0];
    snprintf(p->source, sizeof p->source, "default");
    size_t n = (size_t)p->n_scales * p->depth;
    p->cap = malloc(n * (size_t)p->num_heads * sizeof *p->cap);
    p->held = malloc(n * (size_t)p->num_heads * sizeof *p->held);
    p->drafter = calloc(n, 1);
    p->contextual = calloc((size_t)p->depth * (p->num_heads > 0 ? p->num_heads : 1), 1);
    if (!p->cap || !p->held || !p->drafter || !p->contextual) {
        vs_kv_policy_free(p);
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    }
    p->B = p->budget * p->total;
    p->base = vs_kv_at_least_window(p->B);
    const char *file = d->budget_file != VS_KV_BUDGET_FILE_NONE ? budget_file : NULL;
    if (d->prepare) {
        vs_status st = d->prepare(p, file, err);
        if (st != VS_OK) {
            vs_kv_policy_free(p);
            return st;
        }
    }
    if (file)
        snprintf(p->source, sizeof p->source, "%s", file); /* it was read: the policy's source */
    for (int s = 0; s < p->n_scales; s++)
        for (int l = 0; l < p->depth; l++)
            for (int h = 0; h < p->num_heads; h++)
                p->cap[cap_at(p, l, h, s)] = d->cap(p, l, h, s);
    tabulate_held(p);
    *out = p;
    return VS_OK;
}

vs_status vs_kv_policy_new_caps(const vs_rt_config *c, vs_kv_policy_kind selection,
                                const int32_t *caps, vs_kv_policy **out, vs_err *err)
{
    const vs_kv_policy_def *d = vs_kv_policy_def_of(selection);
    if (!d || !d->compresses)
        return vs_err_set(err, VS_ERR_INVALID,
                          "a capacity table needs a compressing policy's selection (got %s)",
                          vs_kv_policy_name(selection));
    size_t n = (size_t)c->n_scales * c->depth * c->num_heads;
    double kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (caps[i] < VS_KV_WINDOW)
            return vs_err_set(err, VS_ERR_INVALID,
                              "capacity table entry %zu is %d; a head keeps at least the "
                              "observation window (%d tokens)",
                              i, (int)caps[i], VS_KV_WINDOW);
        kept += caps[i] < c->scale_offset[c->n_scales] ? caps[i] : c->scale_offset[c->n_scales];
    }
    double budget = kept / (double)n / c->scale_offset[c->n_scales];
    vs_status st = vs_kv_policy_new(selection, budget, c, NULL, out, err);
    if (st != VS_OK)
        return st;
    vs_kv_policy *p = *out;
    memcpy(p->cap, caps, n * sizeof *caps);
    p->base = 0; /* the table applies from the first scale */
    tabulate_held(p);
    snprintf(p->source, sizeof p->source, "capacity table");
    return VS_OK;
}

vs_status vs_kv_policy_new_probe(const vs_rt_config *c, int layer, vs_kv_policy **out, vs_err *err)
{
    if (layer < 0 || layer >= c->depth)
        return vs_err_set(err, VS_ERR_INVALID, "probe layer %d is outside 0..%d", layer, c->depth - 1);
    double budget = (double)VS_KV_WINDOW / c->scale_offset[c->n_scales];
    vs_status st = vs_kv_policy_new(VS_KV_POLICY_SNAPKV, budget > 1 ? 1 : budget, c, NULL, out, err);
    if (st != VS_OK)
        return st;
    vs_kv_policy *p = *out;
    for (int s = 0; s < p->n_scales; s++)
        for (int l = 0; l < p->depth; l++)
            for (int h = 0; h < p->num_heads; h++)
                if (l != layer)
                    p->cap[cap_at(p, l, h, s)] = VS_KV_KEEP_ALL;
    tabulate_held(p);
    snprintf(p->source, sizeof p->source, "probe of layer %d", layer);
    return VS_OK;
}

void vs_kv_policy_free(vs_kv_policy *p)
{
    if (!p)
        return;
    free(p->cap);
    free(p->held);
    free(p->drafter);
    free(p->contextual);
    free(p);
}

vs_kv_policy_kind vs_kv_policy_kind_of(const vs_kv_policy *p) { return p->kind; }
double vs_kv_policy_budget(const vs_kv_policy *p) { return p->budget; }
const char *vs_kv_policy_source(const vs_kv_policy *p) { return p->source; }

int vs_kv_policy_capacity(const vs_kv_policy *p, int layer, int head, int scale, int tokens)
{
    if (scale >= p->n_scales - 1)
        return 0;
    /* the cache is left alone until it first grows past the base capacity (ScaleKV's rule; the
     * full cache length after `scale` is when that first happens) */
    if (p->cum[scale] <= p->base)
        return VS_KV_KEEP_ALL;
    int32_t cap = p->cap[cap_at(p, layer, head, scale)];
    return tokens <= cap ? VS_KV_KEEP_ALL : cap;
}

int vs_kv_policy_is_drafter(const vs_kv_policy *p, int layer, int scale)
{
    return p->drafter[(size_t)scale * p->depth + layer] != 0; /* zero unless scalekv */
}

int vs_kv_window(int side, int n_tokens, int n_new, int32_t *slots)
{
    int start = n_tokens - n_new;
    if (side >= 4) {
        int h = side / 4, k = 0;
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
                slots[k++] = start + (i * h + (h - 1) / 2) * side + j * h + (h - 1) / 2;
        return k;
    }
    int n = n_tokens < VS_KV_WINDOW ? n_tokens : VS_KV_WINDOW;
    for (int i = 0; i < n; i++)
        slots[i] = n_tokens - n + i;
    return n;
}

_Static_assert(VS_KV_WINDOW <= VS_RT_KV_PLAN_QUERIES && VS_KV_WINDOW <= VS_RT_KV_PLAN_RANGES,
               "a plan lists the observation window's queries and slots");

void vs_kv_policy_plan_head(const vs_kv_policy *p, int layer, int head, int scale_side, int n_tokens,
                            int n_new, int cap, vs_rt_kv_plan *out)
{
    memset(out, 0, sizeof *out);
    if (cap >= n_tokens) { /* keeps all: one forced range */
        out->n_ranges = 1;
        out->hi[0] = n_tokens;
    } else {
        p->def->plan(p, layer, head, scale_side, n_tokens, n_new, cap, out);
    }
    out->n = n_tokens;
    out->kept = vs_rt_kv_plan_count(out);
    if (vs_rt_kv_plan_needs_scores(out)) {
        int32_t win[VS_KV_WINDOW];
        int nw = vs_kv_window(scale_side, n_tokens, n_new, win), hist = n_tokens - n_new;
        for (int w = 0; w < nw; w++)
            out->q[w] = win[w] > hist ? win[w] - hist : 0;
        out->n_queries = nw;
    }
}

int vs_kv_policy_select_head(const vs_kv_policy *p, int layer, int head, int scale_side,
                             int n_tokens, int n_new, const float *scores, int cap, int32_t *keep,
                             float *tmp)
{
    vs_rt_kv_plan pl;
    vs_kv_policy_plan_head(p, layer, head, scale_side, n_tokens, n_new, cap, &pl);
    return vs_rt_kv_plan_keep(&pl, scores, keep, tmp);
}

static size_t pages_for(int tokens, int page_tokens)
{
    return (size_t)(tokens + page_tokens - 1) / (size_t)page_tokens;
}

vs_kv_flow vs_kv_policy_flow(const vs_kv_policy *p, int n_scales, int layer, int head, int scale,
                             int held, int n_new)
{
    vs_kv_flow f;
    int n = held + n_new;
    if (scale >= n_scales - 1) {
        f.op = VS_KV_FLOW_RELEASE; /* attends from qkv, then the layer is released */
        f.cap = 0;
        f.peak = held;
        f.after = 0;
        return f;
    }
    f.cap = p ? vs_kv_policy_capacity(p, layer, head, scale, n) : VS_KV_KEEP_ALL;
    if (f.cap >= n) {
        f.op = VS_KV_FLOW_STORE; /* the attention stores the new tokens */
        f.cap = VS_KV_KEEP_ALL;
        f.peak = n;
        f.after = n;
    } else {
        /* selection: pages grow to the capacity (if the cache was shorter), then shrink */
        f.op = VS_KV_FLOW_COMPRESS;
        f.peak = f.cap > held ? f.cap : held;
        f.after = f.cap;
    }
    return f;
}

vs_kv_flow_op vs_kv_policy_layer_op(const vs_kv_policy *p, int n_scales, int layer, int heads,
                                    int scale, const int *held, int n_new)
{
    if (scale >= n_scales - 1)
        return VS_KV_FLOW_RELEASE;
    for (int h = 0; h < heads; h++)
        if (vs_kv_policy_flow(p, n_scales, layer, h, scale, held[h], n_new).op == VS_KV_FLOW_COMPRESS)
            return VS_KV_FLOW_COMPRESS;
    return VS_KV_FLOW_STORE;
}

size_t vs_kv_policy_peak_pages_per_row(const vs_kv_policy *p, int page_tokens)
{
    size_t peak = 0, held = 0; /* held = Σ pages of every head's cached tokens */
    for (int s = 0; s < p->n_scales; s++) {
        int n = p->patch_nums[s] * p->patch_nums[s];
        for (int l = 0; l < p->depth; l++) {
            size_t before = 0, during = 0, after = 0;
            for (int h = 0; h < p->num_heads; h++) {
                int t = s > 0 ? p->held[cap_at(p, l, h, s - 1)] : 0;
                vs_kv_flow f = vs_kv_policy_flow(p, p->n_scales, l, h, s, t, n);
                before += pages_for(t, page_tokens);
                during += pages_for(f.peak, page_tokens);
                after += pages_for(f.after, page_tokens);
            }
            size_t now = held - before + during;
            peak = now > peak ? now : peak;
            held = held - before + after;
        }
    }
    return peak;
}

size_t vs_kv_policy_peak_pages_per_image(const vs_kv_policy *p, int page_tokens)
{
    return VS_KV_ROWS_PER_IMAGE * vs_kv_policy_peak_pages_per_row(p, page_tokens);
}

double vs_kv_policy_mean_tokens(const vs_kv_policy *p)
{
    int s = p->n_scales - 2;
    if (s < 0)
        return 0;
    /* tokens each head holds after the second-to-last scale, then the last scale adds p² */
    double sum = 0;
    for (int l = 0; l < p->depth; l++)
        for (int h = 0; h < p->num_heads; h++)
            sum += p->held[cap_at(p, l, h, s)];
    return sum / ((double)p->depth * p->num_heads);
}
