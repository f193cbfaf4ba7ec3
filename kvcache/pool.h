/* kvcache/pool.h — the one global KV memory pool: an arena of fixed-size pages.
 *
 * Design: a page holds `page_tokens` (16) tokens of K and V of ONE head of one layer:
 * [2][page_tokens][head_dim] elements (runtime/kv_view.h) of the backend's KV element type
 * (vs_rt_backend.kv_elem_bytes: FP32, or BF16 on the CUDA backend's BF16 mode). The geometry
 * carries the element size, and every page size derives from it (vs_kv_page_bytes). Pages come from one arena allocated once
 * (host memory, or device memory through a backend's alloc), handed out from a free list. A job
 * reserves its peak page count at admission (vs_kv_reserve → OK / LATER / NEVER), so a running
 * job never runs out: its rows draw pages only from its reservation. Rows keep one page table per
 * (layer, head), and every (layer, head) may hold its own number of tokens (ScaleKV keeps much in
 * drafter layers, little in refiners; a head-aware policy keeps few tokens, so few pages, in some
 * heads). Release returns every page and the unused part of the reservation.
 *
 * Threads: the pool is owned by the engine thread; no function here locks. The counters read by
 * metrics (vs_kv_pool_stats) are plain loads a reader may see slightly stale.
 *
 * Bugs abort: a layer or head out of range, a commit past the reserved room, keep indices that are
 * not ascending committed slots, or a page returned twice are logged, then abort(). */
#ifndef VS_KV_POOL_H
#define VS_KV_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "runtime/kv_view.h"
#include "runtime/model.h"

typedef struct vs_kv_pool vs_kv_pool;
typedef struct vs_kv_resv vs_kv_resv; /* one job's reservation, owning its rows */
typedef struct vs_kv_row vs_kv_row;   /* one sequence's cache (one CFG row of one image) */

typedef enum {
    VS_KV_OK = 0, /* reserved */
    VS_KV_LATER,  /* not now: pages in use by others will come back */
    VS_KV_NEVER,  /* more pages than the whole pool has */
} vs_kv_admit;

typedef struct {
    size_t page_bytes;
    size_t elem_bytes;     /* bytes of one K or V element: 4 (FP32) or 2 (BF16) */
    size_t pages_total;
    size_t pages_free;     /* on the free list */
    size_t pages_reserved; /* promised to jobs, not yet drawn */
    size_t pages_used;     /* held by rows */
    size_t reservations;   /* live reservations */
} vs_kv_stats;

/* Allocator for the arena: host malloc when alloc is NULL. `ctx` is passed through (a backend). */
typedef struct {
    void *ctx;
    void *(*alloc)(void *ctx, size_t bytes); /* returns NULL on failure */
    void (*free)(void *ctx, void *p);
} vs_kv_allocator;

/* The page size the server and the CLI use: one attention tile. */
#define VS_KV_PAGE_TOKENS 16

/* `head` argument meaning every head of the layer (each gets the same change). */
#define VS_KV_ALL_HEADS (-1)

/* The shape a pool holds: every row has layers × heads page tables of tokens of head_dim
 * elements of elem_bytes each (the backend's kv_elem_bytes: 4 or 2); max_tokens bounds the tokens
 * one (layer, head) ever holds (the model's full sequence length L), which sizes each row's page
 * tables. */
typedef struct {
    int page_tokens, layers, heads, head_dim, max_tokens, elem_bytes;
} vs_kv_geometry;

/* The geometry of a model's cache with pages of page_tokens tokens of elem_bytes elements. */
vs_kv_geometry vs_kv_geometry_of(const vs_rt_config *c, int page_tokens, int elem_bytes);

/* Bytes of one page of g: K and V of page_tokens tokens of one head,
 * 2 * page_tokens * head_dim * elem_bytes. */
size_t vs_kv_page_bytes(vs_kv_geometry g);

/* Carves floor(bytes / vs_kv_page_bytes(g)) pages.
 * Errors: VS_ERR_INVALID (a zero or negative size or shape field, elem_bytes other than 2 or 4,
 * fewer than one page), VS_ERR_NOMEM. */
vs_status vs_kv_pool_init(size_t bytes, vs_kv_geometry g, const vs_kv_allocator *alloc,
                          vs_kv_pool **out, vs_err *err);
void vs_kv_pool_free(vs_kv_pool *pool); /* NULL ok; all reservations must be released first */

void vs_kv_pool_stats(const vs_kv_pool *pool, vs_kv_stats *out);
float *vs_kv_pool_base(const vs_kv_pool *pool); /* elements of vs_kv_pool_elem_bytes, not floats when 2 */
int vs_kv_pool_elem_bytes(const vs_kv_pool *pool);
int vs_kv_pool_page_tokens(const vs_kv_pool *pool);
int vs_kv_pool_heads(const vs_kv_pool *pool);

/* Pages needed to hold `tokens` tokens in one (layer, head). */
size_t vs_kv_pages_for_tokens(const vs_kv_pool *pool, size_t tokens);

/* Reserves `pages` for one job. On VS_KV_OK *out is a new reservation (release with
 * vs_kv_release). LATER: pages_free - pages_reserved < pages now (also, with *out NULL, when the
 * host can not allocate the small reservation record). NEVER: pages > pages_total. */
vs_kv_admit vs_kv_reserve(vs_kv_pool *pool, size_t pages, vs_kv_resv **out);

/* A new empty row drawing from resv. Rows die with their reservation. VS_ERR_NOMEM only. */
vs_status vs_kv_row_new(vs_kv_resv *resv, vs_kv_row **out, vs_err *err);

/* In the three calls below `head` is 0..heads-1 or VS_KV_ALL_HEADS (each head of the layer). */

/* Makes room for n_new more tokens in (layer, head) (grows the page tables from the
 * reservation); does not change the token counts. VS_ERR_KV_FULL when the reservation is
 * exhausted: the reservation was computed too small (a bug in the caller's peak estimate,
 * reported, not aborted); then no page was drawn. */
vs_status vs_kv_row_reserve_tokens(vs_kv_row *row, int layer, int head, int n_new, vs_err *err);
/* After the forward pass wrote n_new tokens to (layer, head): the count grows by n_new. */
void vs_kv_row_commit(vs_kv_row *row, int layer, int head, int n_new);

/* (layer, head) now holds n tokens in slots 0..n-1, which the caller wrote (or will write) into
 * its pages; n may be below or above the count (compaction, or tokens selected from outside the
 * pages) but at most its room (vs_kv_row_reserve_tokens first). Pages past n go back to the free
 * list, still promised to this job. n = 0 gives back every page. The pool never touches page
 * memory. */
void vs_kv_row_resize(vs_kv_row *row, int layer, int head, int n);

/* Tokens (layer, head) holds; head 0..heads-1. */
int vs_kv_row_tokens(const vs_kv_row *row, int layer, int head);
/* Pages the row holds now, over every layer and head. */
size_t vs_kv_row_pages(const vs_kv_row *row);
/* The row's paged view for the forward pass: [layers][heads]; valid until the next call that
 * changes the row. */
const vs_rt_kv_head *vs_kv_row_heads(const vs_kv_row *row);

/* Returns every page of every row of the reservation and its unused pages; frees resv. NULL ok. */
void vs_kv_release(vs_kv_resv *resv);

#endif
