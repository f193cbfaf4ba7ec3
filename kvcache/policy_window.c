/* kvcache/policy_window.c — the policies with one capacity rule over the budget and no budget
 * file: `snapkv` (one capacity for all layers, window-score selection), `pyramidkv` (capacity
 * shrinking linearly with depth, the same selection), `sliding` (the most recent tokens) and
 * `streamingllm` (the first two scales as sinks plus the most recent tokens). Also the window-score
 * selection itself, which scalekv shares. */
#include "kvcache/policy_impl.h"

#include <math.h>
#include <stdlib.h>

static int32_t budget_cap(const vs_kv_policy *p, int layer, int head, int scale)
{
    (void)layer, (void)head, (void)scale;
    return vs_kv_at_least_window(p->B);
}

static int32_t pyramid_cap(const vs_kv_policy *p, int layer, int head, int scale)
{
    (void)head, (void)scale;
    double f = p->depth > 1 ? 1.5 - (double)layer / (p->depth - 1) : 1.0;
    return vs_kv_at_least_window(p->B * f);
}

/* descending score, then ascending slot: a total order, so selection is deterministic */
static int cmp_scored(const void *a, const void *b)
{
    const vs_kv_scored *x = a, *y = b;
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

int vs_kv_keep_best(vs_kv_scored *list, int m, int want, int32_t *keep, int k)
{
    qsort(list, (size_t)m, sizeof *list, cmp_scored);
    for (int i = 0; i < want && i < m; i++)
        keep[k++] = list[i].slot;
    return k;
}

void vs_kv_max_pool(const float *in, int from, int to, float *out)
{
    const int half = VS_KV_POOL_KERNEL / 2;
    for (int i = from; i < to; i++) {
        float m = -INFINITY;
        for (int j = i - half; j <= i + half; j++)
            if (j >= from && j < to && in[j] > m)
                m = in[j];
        out[i] = m;
    }
}

void vs_kv_sort_slots(int32_t *keep, int k) { qsort(keep, (size_t)k, sizeof *keep, cmp_i32); }

int vs_kv_select_scored(const vs_kv_policy *p, int layer, int head, int scale_side, int n_tokens,
                        int n_new, const float *scores, int cap, int32_t *keep, float *tmp)
{
    (void)p, (void)layer, (void)head;
    int32_t win[VS_KV_WINDOW];
    int nw = vs_kv_window(scale_side, n_tokens, n_new, win);
    float *masked = tmp, *pooled = tmp + n_tokens;
    for (int i = 0; i < n_tokens; i++)
        masked[i] = scores[i];
    for (int w = 0; w < nw; w++)
        masked[win[w]] = -INFINITY;
    vs_kv_max_pool(masked, 0, n_tokens, pooled);
    for (int w = 0; w < nw; w++)
        pooled[win[w]] = -INFINITY;
    /* non-window tokens have a finite pooled score (their own score is in their pool), window
     * tokens −∞: rank the finite ones */
    vs_kv_scored *list = (vs_kv_scored *)(tmp + 2 * (size_t)n_tokens);
    int m = 0;
    for (int i = 0; i < n_tokens; i++)
        if (pooled[i] != -INFINITY)
            list[m++] = (vs_kv_scored){pooled[i], i};
    int k = vs_kv_keep_best(list, m, cap - nw, keep, 0);
    for (int w = 0; w < nw; w++)
        keep[k++] = win[w];
    vs_kv_sort_slots(keep, k);
    return k;
}

static int select_recent(const vs_kv_policy *p, int layer, int head, int scale_side, int n_tokens,
                         int n_new, const float *scores, int cap, int32_t *keep, float *tmp)
{
    (void)p, (void)layer, (void)head, (void)scale_side, (void)n_new, (void)scores, (void)tmp;
    for (int i = 0; i < cap; i++)
        keep[i] = n_tokens - cap + i;
    return cap;
}

static int select_sinks_recent(const vs_kv_policy *p, int layer, int head, int scale_side,
                               int n_tokens, int n_new, const float *scores, int cap, int32_t *keep,
                               float *tmp)
{
    (void)layer, (void)head, (void)scale_side, (void)n_new, (void)scores, (void)tmp;
    int sinks = p->sinks < cap / 2 ? p->sinks : cap / 2, k = 0;
    for (int i = 0; i < sinks; i++)
        keep[k++] = i;
    for (int i = n_tokens - (cap - sinks); i < n_tokens; i++)
        keep[k++] = i;
    return k;
}

const vs_kv_policy_def vs_kv_policy_snapkv_def = {
    .kind = VS_KV_POLICY_SNAPKV,
    .name = "snapkv",
    .doc = "every layer keeps max(16, B) tokens, chosen by the observation window's scores",
    .compresses = 1,
    .needs_scores = 1,
    .budget_file = VS_KV_BUDGET_FILE_NONE,
    .cap = budget_cap,
    .select = vs_kv_select_scored,
};

const vs_kv_policy_def vs_kv_policy_pyramidkv_def = {
    .kind = VS_KV_POLICY_PYRAMIDKV,
    .name = "pyramidkv",
    .doc = "capacity shrinks with depth, 1.5 B at the first layer to 0.5 B at the last; snapkv's selection",
    .compresses = 1,
    .needs_scores = 1,
    .budget_file = VS_KV_BUDGET_FILE_NONE,
    .cap = pyramid_cap,
    .select = vs_kv_select_scored,
};

const vs_kv_policy_def vs_kv_policy_sliding_def = {
    .kind = VS_KV_POLICY_SLIDING,
    .name = "sliding",
    .doc = "every layer keeps its max(16, B) most recent tokens (no scores)",
    .compresses = 1,
    .needs_scores = 0,
    .budget_file = VS_KV_BUDGET_FILE_NONE,
    .cap = budget_cap,
    .select = select_recent,
};

const vs_kv_policy_def vs_kv_policy_streamingllm_def = {
    .kind = VS_KV_POLICY_STREAMINGLLM,
    .name = "streamingllm",
    .doc = "the first two scales as sinks plus the most recent tokens, max(16, B) in all (no scores)",
    .compresses = 1,
    .needs_scores = 0,
    .budget_file = VS_KV_BUDGET_FILE_NONE,
    .cap = budget_cap,
    .select = select_sinks_recent,
};
