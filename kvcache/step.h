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
 * Compression runs on the host over copies: a compressing head's cached pages and the row's new
 * tokens' qkv are copied out through the backend (a memcpy on the CPU, a download from a GPU),
 * scored and selected, composed into whole pages, and copied back over the head's pages from the
 * first page that changes (a head that keeps all copies only the partly filled page its new
 * tokens start in). So every backend compresses with the same code, and the pool never touches
 * page memory. Engine thread. */
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
    double seconds;                     /* out: wall time spent in the hooks (KV bookkeeping,
                                         * selection, compaction), added to by every call */
} vs_kv_step;

size_t vs_kv_step_scratch_floats(const vs_rt_config *c, int page_tokens);

/* Hooks for vs_rt_step with ctx = s, which must live through the step (kvcache/session builds
 * both for a set of images). */
vs_rt_hooks vs_kv_step_hooks(vs_kv_step *s);

#endif
