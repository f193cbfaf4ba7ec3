/* runtime/kv_view.h — how the forward pass sees a row's KV cache: a plain paged view, per head.
 *
 * The pages themselves belong to kvcache/ (one arena, fixed-size pages). runtime never allocates
 * or frees them; it writes the new tokens' K and V into the slots the view names and reads the
 * cached ones. A page holds ONE head of one layer: [page][2 (K,V)][page_tokens][head_dim] elements
 * of the backend's KV type (kv_elem_bytes: FP32, or BF16 on a GPU; offsets below are in elements),
 * so a head's page is page_tokens contiguous keys, then as many values (one attention tile), and
 * a head that keeps few tokens holds few pages. Each (layer, head) of a row has its own count and
 * page table: heads of one layer may keep different numbers of tokens, and slot t of one head may
 * hold a different source token than slot t of another (keys carry no position). */
#ifndef VS_RT_KV_VIEW_H
#define VS_RT_KV_VIEW_H

#include <stdint.h>

/* One (layer, head) of a row. A row's view is [depth][num_heads] of these, layer-major, so one
 * layer's heads are adjacent (a backend packs all rows' tables of a layer in one upload). */
typedef struct {
    int n_tokens;          /* tokens this head holds before the step */
    int n_pages;           /* pages listed; room for n_tokens + the step's new tokens if stored */
    const int32_t *pages;  /* page ids, in token order */
} vs_rt_kv_head;

typedef struct {
    float *base;            /* the pool arena (backend memory); read as floats only on FP32 pages
                             * (the CPU backend): on BF16 pages only the offsets are used */
    int page_tokens;        /* tokens per page (16) */
    int head_dim;           /* elements per token of one head for K (and again for V) */
} vs_rt_kv_view;

/* Element offset of slot `slot_in_page` of K (kv = 0) or V (kv = 1) of page `page`, in any array of
 * whole pages laid out as above (the arena, or a copy of some pages). */
static inline long vs_rt_kv_page_offset(int page_tokens, int head_dim, long page, int slot_in_page,
                                        int kv)
{
    return ((page * 2 + kv) * page_tokens + slot_in_page) * (long)head_dim;
}

/* Element offset of token slot `slot` of K (kv = 0) or V (kv = 1) of one head in the arena. */
static inline long vs_rt_kv_offset(const vs_rt_kv_view *v, const vs_rt_kv_head *h, int slot, int kv)
{
    return vs_rt_kv_page_offset(v->page_tokens, v->head_dim, h->pages[slot / v->page_tokens],
                                slot % v->page_tokens, kv);
}

#endif
