/* kvcache/policy_impl.h — what the policy files (kvcache/policy*.c) share: the policy object and
 * the common helpers. Not for use outside kvcache/policy*.c. */
#ifndef VS_KV_POLICY_IMPL_H
#define VS_KV_POLICY_IMPL_H

#include "kvcache/policy.h"

struct vs_kv_policy {
    const vs_kv_policy_def *def;
    vs_kv_policy_kind kind;
    double budget;
    int depth, n_scales, num_heads;
    int patch_nums[VS_RT_MAX_SCALES];
    int cum[VS_RT_MAX_SCALES];   /* tokens after each scale (full cache) */
    int total;                   /* L */
    double B;                    /* budget · L: the mean tokens per layer the budget allows */
    int base;                    /* no compression while the cache is at most this long */
    int sinks;                   /* streamingllm: tokens of the first two scales */
    int32_t *cap;                /* [n_scales][depth][num_heads] tokens kept after the scale */
    int32_t *held;               /* [n_scales][depth][num_heads] tokens held after the scale, in the
                                  * flow from an empty cache (the peak and mean read it) */
    uint8_t *drafter;            /* [n_scales][depth] (scalekv; zero for every other policy) */
    uint8_t *contextual;         /* [depth][num_heads] 1 = contextual head (hack; zero otherwise) */
    double contextual_share;     /* hack: a contextual head's capacity over the mean budget B */
    char source[512];
};

/* round(v), at least the observation window */
int vs_kv_at_least_window(double v);

/* The window-score plan (snapkv's rule, shared by scalekv, snapkv and pyramidkv): the observation
 * window kept, and the rest ranked by max-pooled window scores. */
void vs_kv_plan_scored(const vs_kv_policy *p, int layer, int head, int scale_side, int n_tokens,
                       int n_new, int cap, vs_rt_kv_plan *out);

/* Appends the forced range [lo, hi) to a plan (empty ranges are skipped; the caller keeps them
 * ascending and disjoint, and within VS_RT_KV_PLAN_RANGES). */
void vs_kv_plan_force(vs_rt_kv_plan *out, int lo, int hi);

/* The definitions, one per policy file. */
extern const vs_kv_policy_def vs_kv_policy_full_def;    /* policy_full.c */
extern const vs_kv_policy_def vs_kv_policy_scalekv_def; /* policy_scalekv.c */
extern const vs_kv_policy_def vs_kv_policy_snapkv_def;  /* policy_window.c, and the three below */
extern const vs_kv_policy_def vs_kv_policy_pyramidkv_def;
extern const vs_kv_policy_def vs_kv_policy_sliding_def;
extern const vs_kv_policy_def vs_kv_policy_streamingllm_def;
extern const vs_kv_policy_def vs_kv_policy_hack_def;    /* policy_hack.c */

#endif
