/* runtime/kv_view.h — how the forward pass sees a row's KV cache: a plain paged view.
 *
 * The pages themselves belong to kvcache/ (one arena, fixed-size pages). runtime never allocates
 * or frees them; it writes the new tokens' K and V into the slots the view names and reads the
 * cached ones. Page layout in the arena: [page][2 (K,V)][page_tokens][kv_dim] floats, where
 * kv_dim = num_heads * head_dim. Within a page, slot t of head h may hold a different source
 * token than slot t of another head (after per-head compaction): keys carry no position. */
#ifndef VS_RT_KV_VIEW_H
#define VS_RT_KV_VIEW_H

#include <stdint.h>

typedef struct {
    int n_tokens;          /* tokens cached in this layer before the step (same count per head) */
    int n_pages;           /* pages listed; room for n_tokens + the step's new tokens */
    const int32_t *pages;  /* page ids, in token order */
} vs_rt_kv_layer;

typedef struct {
    float *base;            /* the pool arena (device memory of the backend) */
    int page_tokens;        /* tokens per page (16) */
    int kv_dim;             /* floats per token for K (and again for V) */
    vs_rt_kv_layer *layers; /* [depth]; owned by kvcache/ */
} vs_rt_kv_view;

/* Float offset of slot `slot_in_page` of K (kv = 0) or V (kv = 1) of page `page`, in any array of
 * whole pages laid out as above (the arena, or a copy of some pages). */
static inline long vs_rt_kv_page_offset(int page_tokens, int kv_dim, long page, int slot_in_page, int kv)
{
    return ((page * 2 + kv) * page_tokens + slot_in_page) * (long)kv_dim;
}

/* Float offset of token slot `slot` of K (kv = 0) or V (kv = 1) in the arena. */
static inline long vs_rt_kv_offset(const vs_rt_kv_view *v, const vs_rt_kv_layer *l, int slot, int kv)
{
    return vs_rt_kv_page_offset(v->page_tokens, v->kv_dim, l->pages[slot / v->page_tokens],
                                slot % v->page_tokens, kv);
}

#endif
