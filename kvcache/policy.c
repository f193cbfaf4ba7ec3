/* kvcache/policy.c — see policy.h. Capacities are tabulated per (scale, layer) at creation; the
 * selection works on one head's scores at a time, on the host. */
#include "kvcache/policy.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct vs_kv_policy {
    vs_kv_policy_kind kind;
    double budget;
    int depth, n_scales;
    int patch_nums[VS_RT_MAX_SCALES];
    int cum[VS_RT_MAX_SCALES];   /* tokens after each scale (full cache) */
    int total;                   /* L */
    int base;                    /* no compression while the cache is at most this long */
    int sinks;                   /* streamingllm: tokens of the first two scales */
    int32_t *cap;                /* [n_scales][depth] tokens kept after the scale */
    uint8_t *drafter;            /* [n_scales][depth] (scalekv) */
    char source[512];
};

static const char *names[VS_KV_POLICY_COUNT] = {"full", "scalekv", "snapkv", "pyramidkv", "sliding",
                                                "streamingllm"};

const char *vs_kv_policy_name(vs_kv_policy_kind k)
{
    return (unsigned)k < VS_KV_POLICY_COUNT ? names[k] : "unknown";
}

int vs_kv_policy_parse(const char *s, vs_kv_policy_kind *out)
{
    for (int i = 0; i < VS_KV_POLICY_COUNT; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (vs_kv_policy_kind)i;
            return 0;
        }
    return -1;
}

static int at_least_window(double v)
{
    long r = lround(v);
    return r < VS_KV_WINDOW ? VS_KV_WINDOW : (int)r;
}

/* Reads drafter marks from a budget file written by `varserve calibrate`. */
static vs_status load_budget_file(vs_kv_policy *p, const char *path, vs_err *err)
{
    vs_status st = VS_OK;
    char *text = NULL;
    cJSON *root = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return vs_err_set(err, VS_ERR_IO, "cannot open budget file '%s': %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (len < 0 || len > (16 << 20)) {
        fclose(f);
        return vs_err_set(err, VS_ERR_INVALID, "budget file '%s' is not a budget file (size)", path);
    }
    text = malloc((size_t)len + 1);
    if (!text || fread(text, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        free(text);
        return vs_err_set(err, VS_ERR_IO, "cannot read budget file '%s'", path);
    }
    fclose(f);
    text[len] = 0;
    root = cJSON_ParseWithLengthOpts(text, (size_t)len, NULL, 0);
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *depth = cJSON_GetObjectItemCaseSensitive(root, "depth");
    const cJSON *scales = cJSON_GetObjectItemCaseSensitive(root, "scales");
    if (!root || !cJSON_IsString(fmt) || strcmp(fmt->valuestring, "varserve-scalekv-budget") != 0) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "budget file '%s': field 'format' must be \"varserve-scalekv-budget\"", path);
        goto fail;
    }
    if (!cJSON_IsNumber(depth) || depth->valueint != p->depth) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "budget file '%s': field 'depth' must be the model's depth %d (the file was "
                        "calibrated for another model)",
                        path, p->depth);
        goto fail;
    }
    if (!cJSON_IsArray(scales)) {
        st = vs_err_set(err, VS_ERR_INVALID, "budget file '%s': field 'scales' must be a list", path);
        goto fail;
    }
    const cJSON *sc;
    cJSON_ArrayForEach(sc, scales)
    {
        const cJSON *si = cJSON_GetObjectItemCaseSensitive(sc, "scale");
        const cJSON *dr = cJSON_GetObjectItemCaseSensitive(sc, "drafters");
        if (!cJSON_IsNumber(si) || si->valueint < 0 || si->valueint >= p->n_scales ||
            !cJSON_IsArray(dr)) {
            st = vs_err_set(err, VS_ERR_INVALID,
                            "budget file '%s': each item of 'scales' needs 'scale' (0..%d) and a "
                            "'drafters' list",
                            path, p->n_scales - 1);
            goto fail;
        }
        uint8_t *row = p->drafter + (size_t)si->valueint * p->depth;
        memset(row, 0, (size_t)p->depth);
        const cJSON *l;
        cJSON_ArrayForEach(l, dr)
        {
            if (!cJSON_IsNumber(l) || l->valueint < 0 || l->valueint >= p->depth) {
                st = vs_err_set(err, VS_ERR_INVALID,
                                "budget file '%s': scale %d lists drafter layer outside 0..%d",
                                path, si->valueint, p->depth - 1);
                goto fail;
            }
            row[l->valueint] = 1;
        }
    }
fail:
    cJSON_Delete(root);
    free(text);
    return st;
}

vs_status vs_kv_policy_new(vs_kv_policy_kind kind, double budget, const vs_rt_config *c,
                           const char *budget_file, vs_kv_policy **out, vs_err *err)
{
    if ((unsigned)kind >= VS_KV_POLICY_COUNT)
        return vs_err_set(err, VS_ERR_INVALID, "unknown KV policy %d", (int)kind);
    if (kind != VS_KV_POLICY_FULL && !(budget > 0 && budget <= 1))
        return vs_err_set(err, VS_ERR_INVALID,
                          "kv_budget must be a fraction of the full cache in (0, 1] (got %g)", budget);
    vs_kv_policy *p = calloc(1, sizeof *p);
    if (!p)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    p->kind = kind;
    p->budget = kind == VS_KV_POLICY_FULL ? 1.0 : budget;
    p->depth = c->depth;
    p->n_scales = c->n_scales;
    for (int s = 0; s < c->n_scales; s++) {
        p->patch_nums[s] = c->patch_nums[s];
        p->cum[s] = c->scale_offset[s + 1];
    }
    p->total = c->scale_offset[c->n_scales];
    p->sinks = p->cum[c->n_scales > 1 ? 1 : 0];
    snprintf(p->source, sizeof p->source, "default");
    size_t n = (size_t)p->n_scales * p->depth;
    p->cap = malloc(n * sizeof *p->cap);
    p->drafter = calloc(n, 1);
    if (!p->cap || !p->drafter) {
        vs_kv_policy_free(p);
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    }
    double B = p->budget * p->total;
    p->base = at_least_window(B);
    if (kind == VS_KV_POLICY_SCALEKV) {
        for (int s = 0; s < p->n_scales; s++)
            p->drafter[(size_t)s * p->depth] = 1; /* default: the first layer drafts */
        if (budget_file) {
            vs_status st = load_budget_file(p, budget_file, err);
            if (st != VS_OK) {
                vs_kv_policy_free(p);
                return st;
            }
            snprintf(p->source, sizeof p->source, "%s", budget_file);
        }
    }
    for (int s = 0; s < p->n_scales; s++)
        for (int l = 0; l < p->depth; l++) {
            int32_t cap = VS_KV_KEEP_ALL;
            switch (kind) {
            case VS_KV_POLICY_FULL:
                break;
            case VS_KV_POLICY_SCALEKV: {
                const uint8_t *row = p->drafter + (size_t)s * p->depth;
                int nd = 0;
                for (int k = 0; k < p->depth; k++)
                    nd += row[k];
                int nr = p->depth - nd;
                /* drafters keep the whole cache when the budget affords it (as in the paper's
                 * budget files), else what is left once every refiner has its window */
                double mx = p->cum[s];
                if (nd > 0 && nr > 0 && B * p->depth - (double)nr * VS_KV_WINDOW < (double)nd * mx)
                    mx = (B * p->depth - (double)nr * VS_KV_WINDOW) / nd;
                if (row[l]) {
                    if (mx < p->cum[s])
                        cap = at_least_window(mx);
                } else if (nr > 0) {
                    /* refiners share what the drafters leave of depth·B */
                    cap = at_least_window((B * p->depth - (double)nd * mx) / nr);
                }
                break;
            }
            case VS_KV_POLICY_SNAPKV:
            case VS_KV_POLICY_SLIDING:
            case VS_KV_POLICY_STREAMINGLLM:
                cap = at_least_window(B);
                break;
            case VS_KV_POLICY_PYRAMIDKV: {
                double f = p->depth > 1 ? 1.5 - (double)l / (p->depth - 1) : 1.0;
                cap = at_least_window(B * f);
                break;
            }
            default:
                break;
            }
            p->cap[(size_t)s * p->depth + l] = cap;
        }
    /* scalekv: a refiner never keeps more than it will at a later scale. Otherwise refiners still
     * hold an earlier scale's larger share while the drafters already grow for the next one, and
     * an image would peak above its budget (VAR-d16 at 0.1: 87 pages a row instead of 72). */
    for (int l = 0; kind == VS_KV_POLICY_SCALEKV && l < p->depth; l++) {
        int32_t later = VS_KV_KEEP_ALL;
        for (int s = p->n_scales - 2; s >= 0; s--) {
            int32_t *cap = &p->cap[(size_t)s * p->depth + l];
            if (p->drafter[(size_t)s * p->depth + l] || *cap == VS_KV_KEEP_ALL)
                continue;
            if (*cap > later)
                *cap = later;
            later = *cap;
        }
    }
    *out = p;
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
            if (l != layer)
                p->cap[(size_t)s * p->depth + l] = VS_KV_KEEP_ALL;
    snprintf(p->source, sizeof p->source, "probe of layer %d", layer);
    return VS_OK;
}

void vs_kv_policy_free(vs_kv_policy *p)
{
    if (!p)
        return;
    free(p->cap);
    free(p->drafter);
    free(p);
}

vs_kv_policy_kind vs_kv_policy_kind_of(const vs_kv_policy *p) { return p->kind; }
double vs_kv_policy_budget(const vs_kv_policy *p) { return p->budget; }
const char *vs_kv_policy_source(const vs_kv_policy *p) { return p->source; }

int vs_kv_policy_capacity(const vs_kv_policy *p, int layer, int scale, int tokens)
{
    if (scale >= p->n_scales - 1)
        return 0;
    /* the cache is left alone until it first grows past the base capacity (ScaleKV's rule; the
     * full cache length after `scale` is when that first happens) */
    if (p->cum[scale] <= p->base)
        return VS_KV_KEEP_ALL;
    int32_t cap = p->cap[(size_t)scale * p->depth + layer];
    return tokens <= cap ? VS_KV_KEEP_ALL : cap;
}

int vs_kv_policy_is_drafter(const vs_kv_policy *p, int layer, int scale)
{
    return p->kind == VS_KV_POLICY_SCALEKV && p->drafter[(size_t)scale * p->depth + layer];
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

typedef struct {
    float score;
    int32_t slot;
} scored;

/* descending score, then ascending slot: a total order, so selection is deterministic */
static int cmp_scored(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score > y->score)
        return -1;
    if (x->score < y->score)
        return 1;
    return (x->slot > y->slot) - (x->slot < y->slot);
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

int vs_kv_policy_select_head(const vs_kv_policy *p, int scale_side, int n_tokens, int n_new,
                             const float *scores, int cap, int32_t *keep, float *tmp)
{
    if (cap >= n_tokens) {
        for (int i = 0; i < n_tokens; i++)
            keep[i] = i;
        return n_tokens;
    }
    if (p->kind == VS_KV_POLICY_SLIDING) {
        for (int i = 0; i < cap; i++)
            keep[i] = n_tokens - cap + i;
        return cap;
    }
    if (p->kind == VS_KV_POLICY_STREAMINGLLM) {
        int sinks = p->sinks < cap / 2 ? p->sinks : cap / 2, k = 0;
        for (int i = 0; i < sinks; i++)
            keep[k++] = i;
        for (int i = n_tokens - (cap - sinks); i < n_tokens; i++)
            keep[k++] = i;
        return k;
    }
    int32_t win[VS_KV_WINDOW];
    int nw = vs_kv_window(scale_side, n_tokens, n_new, win);
    float *masked = tmp, *pooled = tmp + n_tokens;
    for (int i = 0; i < n_tokens; i++)
        masked[i] = scores[i];
    for (int w = 0; w < nw; w++)
        masked[win[w]] = -INFINITY;
    const int half = VS_KV_POOL_KERNEL / 2;
    for (int i = 0; i < n_tokens; i++) {
        float m = -INFINITY;
        for (int k = i - half; k <= i + half; k++)
            if (k >= 0 && k < n_tokens && masked[k] > m)
                m = masked[k];
        pooled[i] = m;
    }
    for (int w = 0; w < nw; w++)
        pooled[win[w]] = -INFINITY;
    /* non-window tokens have a finite pooled score (their own score is in their pool), window
     * tokens −∞: rank the finite ones */
    scored *list = (scored *)(tmp + 2 * (size_t)n_tokens);
    int m = 0, k = 0;
    for (int i = 0; i < n_tokens; i++)
        if (pooled[i] != -INFINITY)
            list[m++] = (scored){pooled[i], i};
    qsort(list, (size_t)m, sizeof *list, cmp_scored);
    int want = cap - nw < m ? cap - nw : m;
    for (int i = 0; i < want; i++)
        keep[k++] = list[i].slot;
    for (int w = 0; w < nw; w++)
        keep[k++] = win[w];
    qsort(keep, (size_t)k, sizeof *keep, cmp_i32);
    return k;
}

static size_t pages_for(int tokens, int page_tokens)
{
    return (size_t)(tokens + page_tokens - 1) / (size_t)page_tokens;
}

size_t vs_kv_policy_peak_pages_per_row(const vs_kv_policy *p, int page_tokens)
{
    int tok[1024];
    int depth = p->depth < 1024 ? p->depth : 1024;
    memset(tok, 0, sizeof tok);
    size_t peak = 0, held = 0; /* held = Σ pages of every layer's cached tokens */
    for (int s = 0; s < p->n_scales; s++) {
        int n = p->patch_nums[s] * p->patch_nums[s];
        for (int l = 0; l < depth; l++) {
            size_t before = pages_for(tok[l], page_tokens), during = before;
            int cap = vs_kv_policy_capacity(p, l, s, tok[l] + n);
            if (s == p->n_scales - 1) {
                tok[l] = 0; /* attends from qkv, then the layer is released */
            } else if (cap >= tok[l] + n) {
                tok[l] += n; /* the attention stores the new tokens */
                during = pages_for(tok[l], page_tokens);
            } else {
                /* selection: pages grow to the capacity (if the cache was shorter), then shrink */
                size_t c = pages_for(cap, page_tokens);
                during = c > before ? c : before;
                tok[l] = cap;
            }
            size_t now = held - before + during;
            peak = now > peak ? now : peak;
            held = held - before + pages_for(tok[l], page_tokens);
        }
    }
    return peak;
}

double vs_kv_policy_mean_tokens(const vs_kv_policy *p)
{
    int s = p->n_scales - 2;
    if (s < 0)
        return 0;
    /* tokens each layer holds after the second-to-last scale, then the last scale adds p² */
    double sum = 0;
    for (int l = 0; l < p->depth; l++) {
        int tokens = p->cum[s];
        int cap = VS_KV_KEEP_ALL;
        for (int k = 0; k <= s; k++) { /* follow the layer through the scales */
            tokens = k == 0 ? p->cum[0] : tokens + p->patch_nums[k] * p->patch_nums[k];
            cap = vs_kv_policy_capacity(p, l, k, tokens);
            if (cap < tokens)
                tokens = cap;
        }
        sum += tokens;
    }
    return sum / p->depth;
}
