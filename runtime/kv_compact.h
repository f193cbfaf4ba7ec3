/* runtime/kv_compact.h — a head's KV compression as data: which of its candidates it keeps, and
 * the backend op that applies a layer's worth of them where the pages live.
 *
 * kvcache/'s policies do not select tokens themselves: each describes its selection rule for one
 * head as a plan (vs_rt_kv_plan), built on the host from what the host knows (capacities, scale
 * geometry, token counts; never the K/V values). A backend's kv_compact op then scores, ranks
 * and compacts every planned head of a layer in one call, next to the pages: on a GPU no K or V
 * crosses the bus and the host does not wait, because the only data-dependent part (the scores
 * and the top-k over them) runs on the device and the counts it produces were known in advance.
 * vs_rt_kv_plan_keep is the rule's one host implementation (the CPU backend runs it, the tests
 * compare the device against it); the CUDA kernel (k_kv_compact) computes the same set.
 *
 * The rule. A head holds `hist` cached tokens (slots 0..hist) and the step adds its row's n_new
 * new ones, so it has n = hist + n_new candidates, numbered in token order (candidate j >= hist is
 * new token j - hist of the row, read from the step's qkv). It keeps
 *   - every candidate of the forced ranges [lo[i], hi[i]) (ascending, disjoint), and
 *   - of the ranked candidates (those in [rank_from, rank_to) outside the forced ranges), the best
 *     `want` by score, descending, ties to the lower index (a total order: deterministic), where a
 *     candidate's score is s_j = (Σ_w q_w) · k_j over the plan's queries w (new tokens of the row;
 *     sums in the listed order, then the dot in dimension order, no contraction) and, when
 *     pool_radius > 0, the max of s over the ranked candidates within pool_radius of j;
 * and packs the kept ones, in ascending order, into slots 0..kept of its pages. Scores are only
 * computed when want is smaller than the number of ranked candidates. */
#ifndef VS_RT_KV_COMPACT_H
#define VS_RT_KV_COMPACT_H

#include <stdint.h>

#define VS_RT_KV_PLAN_RANGES 16  /* forced ranges of one plan, at most */
#define VS_RT_KV_PLAN_QUERIES 16 /* score queries of one plan, at most */

typedef struct {
    int32_t n;                   /* candidates: hist cached + the row's new tokens */
    int32_t kept;                /* how many the plan keeps (vs_rt_kv_plan_count) */
    int32_t rank_from, rank_to;  /* the ranked candidates' span, forced ones excluded */
    int32_t want;                /* ranked candidates kept */
    int32_t pool_radius;         /* 0: raw scores; r: max over the ranked ones within ±r */
    int32_t n_ranges;            /* forced ranges used */
    int32_t n_queries;           /* score queries used */
    int32_t lo[VS_RT_KV_PLAN_RANGES], hi[VS_RT_KV_PLAN_RANGES];
    int32_t q[VS_RT_KV_PLAN_QUERIES]; /* new-token index (0..n_new) of each score query */
} vs_rt_kv_plan;

/* One head of a layer to compact: row and head of the batch, and its plan (an index into the
 * op's plan list: rows at the same scale under the same policy share plans). The head's view
 * (b->rows[row].kv[layer][head]) holds hist = n_tokens cached tokens and lists pages for
 * max(hist, kept) slots when the op is called; kvcache/ shrinks the view afterwards. */
typedef struct {
    int32_t row, head, plan;
} vs_rt_kv_job;

/* Tokens the plan keeps: the forced ones plus min(want, ranked ones). */
int vs_rt_kv_plan_count(const vs_rt_kv_plan *p);
/* Candidates the ranking considers (the ranked span outside the forced ranges). */
int vs_rt_kv_plan_ranked(const vs_rt_kv_plan *p);
/* 1 when the plan reads scores (it keeps fewer ranked candidates than there are). */
int vs_rt_kv_plan_needs_scores(const vs_rt_kv_plan *p);
/* NULL when the plan is well formed (counts in range, ranges ascending and disjoint within
 * 0..n, queries within 0..n_new), else what is wrong, for an error message. */
const char *vs_rt_kv_plan_check(const vs_rt_kv_plan *p, int n_new);

/* Scratch floats vs_rt_kv_plan_keep needs for n candidates. */
#define VS_RT_KV_KEEP_TMP_FLOATS(n) (3 * (size_t)(n))

/* The plan's kept candidates, ascending, into keep[0..]; returns how many (vs_rt_kv_plan_count).
 * scores[j] for j in the ranked span (unread when the plan needs none; may be NULL then);
 * tmp: VS_RT_KV_KEEP_TMP_FLOATS(p->n) floats. */
int vs_rt_kv_plan_keep(const vs_rt_kv_plan *p, const float *scores, int32_t *keep, float *tmp);

#endif
