/* kvcache/step.h — the KV side of one engine step: the runtime's per-layer hooks, implemented
 * over the pool and the policies.
 *
 * Every (row, layer, head) holds its own tokens in its own pages. A layer's new K,V are written
 * into pages only when every head of the layer keeps every token this scale: before the layer's
 * attention such rows get pages for them in each head and the attention op stores them; after it
 * they are committed. A row in which some head compresses at this scale reads its new K,V from
 * the step's qkv during the attention (no pages for them), then each head keeps its own capacity
 * (from scores of the observation window) out of its cached plus new tokens, a head whose
 * capacity allows keeping all; after the last scale the layer is released entirely: nothing reads
 * it again. So a job's peak is its compressed cache, never the cache plus a scale's new tokens
 * (vs_kv_policy_peak_pages_per_row). The per-head decision (store, compress, release) is
 * vs_kv_policy_flow, which that simulation follows too; within a compressing layer every head
 * that grows draws its pages before any head shrinks, as the simulation counts.
 *
 * Compression runs in the backend, next to the pages: after a layer's attention the hooks ask
 * each compressing head's policy for its plan (runtime/kv_compact.h: what it keeps, in counts the
 * host knows), reserve the pages heads grow into, hand the whole layer's plans to the backend's
 * kv_compact op in one call (one launch on a GPU: scores, top-k and compaction on the device, no
 * K/V over the bus, no host wait), then shrink the heads to what their plans kept. The pool never
 * touches page memory. Calibration statistics (vs_kv_attn_stats) are the one thing computed on
 * the host, from copies of the pages and qkv. Engine thread. */
#ifndef VS_KV_STEP_H
#define VS_KV_STEP_H

#include "kvcache/policy.h"
#include "kvcache/pool.h"
#include "runtime/var.h"

/* Optional attention statistics for calibration (accumulated by after_attn): ScaleKV's per
 * (scale, layer) masses, and HACK's per (layer, head) column unevenness. */
typedef struct {
    int depth, n_scales, heads, top_history; /* K′: history tokens counted per query */
    double *cur_mass;  /* [n_scales][depth] Σ over queries of attention mass on the current scale */
    double *hist_mass; /* [n_scales][depth] Σ over queries of the top-K′ history tokens' mass */
    double *count;     /* [n_scales][depth] queries accumulated */
    /* [depth][heads] Σ over (row, scale ≥ 1) of n_new · U, with U = ln(n·Σ_j m_j²) / ln n the
     * unevenness of the mean attention row m = mean_q a_q over the n keys (the column sums of the
     * attention map): 0 when every key gets the same mass, 1 when all of it goes to one column
     * (HACK's vertical maps are uneven, its diagonal ones even); head_weight the Σ n_new */
    double *head_uneven, *head_weight;
} vs_kv_attn_stats;

typedef struct {
    vs_kv_row **rows;                   /* [n_rows] in the runtime's row order */
    const int *scale;                   /* [n_rows] the scale each row computes */
    const vs_kv_policy *const *policy;  /* [n_rows]; NULL entries mean full */
    int n_rows;
    const vs_rt_config *cfg;
    float attn_scale;                   /* softmax scale of the model (for stats) */
    vs_kv_attn_stats *stats;            /* NULL: no statistics */
    vs_rt_backend *be;                  /* the backend whose memory holds the pages and qkv */
    int page_tokens;                    /* the pool's */
    float *scratch;                     /* host, vs_kv_step_scratch_floats(cfg, page_tokens) */
    vs_rt_kv_plan *plans;               /* host [vs_kv_step_jobs(cfg, n_rows)]: a layer's plans */
    vs_rt_kv_job *jobs;                 /* host [vs_kv_step_jobs(cfg, n_rows)]: a layer's jobs */
    double seconds;                     /* out: wall time spent in the hooks (KV bookkeeping,
                                         * selection, compaction), added to by every call */
} vs_kv_step;

size_t vs_kv_step_scratch_floats(const vs_rt_config *c, int page_tokens);
/* Entries of the plans and jobs tables for n_rows rows: one per (row, head). */
size_t vs_kv_step_jobs(const vs_rt_config *c, int n_rows);

/* Hooks for vs_rt_step with ctx = s, which must live through the step (kvcache/session builds
 * both for a set of images). */
vs_rt_hooks vs_kv_step_hooks(vs_kv_step *s);

#endif
