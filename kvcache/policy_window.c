/* kvcache/policy_window.c — the policies with one capacity rule over the budget and no budget
 * file: `snapkv` (one capacity for all layers, window-score selection), `pyramidkv` (capacity
 * shrinking linearly with depth, the same selection), `sliding` (the most recent tokens) and
 * `streamingllm` (the first two scales as sinks plus the most recent tokens). Also the window-score
 * selection itself, which scalekv shares. */
#include "kvcache/policy_impl.h"

#include <math.h>

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

void vs_kv_plan_force(vs_rt_kv_plan *out, int lo, int hi)
{
    if (hi <= lo)
        return;
    int k = out->n_ranges;
    if (k > 0 && out->hi[k - 1] == lo) { /* adjacent: one range */
        out->hi[k - 1] = hi;
        return;
    }
    out->lo[k] = lo;
    out->hi[k] = hi;
    out->n_ranges = k + 1;
}

void vs_kv_plan_scored(const vs_kv_policy *p, int layer, int head, int scale_side, int n_tokens,
                       int n_new, int cap, vs_rt_kv_plan *out)
{
    (void)p, (void)layer, (void)head;
    int32_t win[VS_KV_WINDOW];
    int nw = vs_kv_window(scale_side, n_tokens, n_new, win);
    for (int w = 0; w < nw; w++)
        vs_kv_plan_force(out, win[w], win[w] + 1);
    out->rank_from = 0;
    out->rank_to = n_tokens;
    out->want = cap - nw;
    out->pool_radius = VS_KV_POOL_KERNEL / 2;
}

static void plan_recent(const vs_kv_policy *p, int layer, int head, int scale_side, int n_tokens,
                        int n_new, int cap, vs_rt_kv_plan *out)
{
    (void)p, (void)layer, (void)head, (void)scale_side, (void)n_new;
    vs_kv_plan_force(out, n_tokens - cap, n_tokens);
}

static void plan_sinks_recent(const vs_kv_policy *p, int layer, int head, int scale_side,
                              int n_tokens, int n_new, int cap, vs_rt_kv_plan *out)
{
    (void)layer, (void)head, (void)scale_side, (void)n_new;
    int sinks = p->sinks < cap / 2 ? p->sinks : cap / 2;
    vs_kv_plan_force(out, 0, sinks);
    vs_kv_plan_force(out, n_tokens - (cap - sinks), n_tokens);
}

const vs_kv_policy_def vs_kv_policy_snapkv_def = {
    .kind = VS_KV_POLICY_SNAPKV,
    .name = "snapkv",
    .doc = "every layer keeps max(16, B) tokens, chosen by the observation window's scores",
    .compresses = 1,
    .budget_file = VS_KV_BUDGET_FILE_NONE,
    .cap = budget_cap,
    .plan = vs_kv_plan_scored,
};

const vs_kv_policy_def vs_kv_policy_pyramidkv_def = {
    .kind = VS_KV_POLICY_PYRAMIDKV,
    .name = "pyramidkv",
    .doc = "capacity shrinks with depth, 1.5 B at the first layer to 0.5 B at the last; snapkv's selection",
    .compresses = 1,
    .budget_file = VS_KV_BUDGET_FILE_NONE,
    .cap = pyramid_cap,
    .plan = vs_kv_plan_scored,
};

const vs_kv_policy_def vs_kv_policy_sliding_def = {
    .kind = VS_KV_POLICY_SLIDING,
    .name = "sliding",
    .doc = "every layer keeps its max(16, B) most recent tokens (no scores)",
    .compresses = 1,
    .budget_file = VS_KV_BUDGET_FILE_NONE,
    .cap = budget_cap,
    .plan = plan_recent,
};

const vs_kv_policy_def vs_kv_policy_streamingllm_def = {
    .kind = VS_KV_POLICY_STREAMINGLLM,
    .name = "streamingllm",
    .doc = "the first two scales as sinks plus the most recent tokens, max(16, B) in all (no scores)",
    .compresses = 1,
    .budget_file = VS_KV_BUDGET_FILE_NONE,
    .cap = budget_cap,
    .plan = plan_sinks_recent,
};
