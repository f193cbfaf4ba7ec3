/* kvcache/step.h — the KV side of one engine step: the runtime's per-layer hooks, implemented
 * over the pool and the policies.
 *
 * Before a layer's attention, each row gets pages for its new tokens in that layer; after it, the
 * tokens are committed and the policy compacts the layer to its capacity (per head, from scores of
 * the observation window), or, after the last scale, releases the layer entirely: nothing reads it
 * again. Pages freed go back to the job's reservation, so a job's peak is one layer's new tokens
 * above the compressed cache (vs_kv_policy_peak_pages_per_row).
 *
 * Compression reads K and queries on the host: host-memory backends only for now. Engine thread. */
#ifndef VS_KV_STEP_H
#define VS_KV_STEP_H

#include "kvcache/policy.h"
#include "kvcache/pool.h"
#include "runtime/var.h"

/* Optional attention statistics for ScaleKV calibration (accumulated by after_attn). */
typedef struct {
    int depth, n_scales, top_history; /* K′: history tokens counted per query */
    double *cur_mass;  /* [n_scales][depth] Σ over queries of attention mass on the current scale */
    double *hist_mass; /* [n_scales][depth] Σ over queries of the top-K′ history tokens' mass */
    double *count;     /* [n_scales][depth] queries accumulated */
} vs_kv_attn_stats;

typedef struct {
    vs_kv_row **rows;                   /* [n_rows] in the runtime's row order */
    const int *scale;                   /* [n_rows] the scale each row computes */
    const vs_kv_policy *const *policy;  /* [n_rows]; NULL entries mean full */
    int n_rows;
    const vs_rt_config *cfg;
    float attn_scale;                   /* softmax scale of the model (for stats) */
    vs_kv_attn_stats *stats;            /* NULL: no statistics */
    float *scratch;                     /* host, vs_kv_step_scratch_floats(cfg) */
} vs_kv_step;

size_t vs_kv_step_scratch_floats(const vs_rt_config *c);

/* Hooks for vs_rt_engine_set_hooks with ctx = a vs_kv_step that lives through the step. */
vs_rt_hooks vs_kv_step_hooks(vs_kv_step *s);

#endif
