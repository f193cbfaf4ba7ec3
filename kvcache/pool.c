/* kvcache/pool.c — the KV page pool: one arena, fixed-size pages, a free list, reservations.
 *
 * Design: the arena is allocated once at init (host aligned_alloc, or the caller's allocator, e.g.
 * device memory of a backend) and split into pages of [2][page_tokens][head_dim] elements of
 * g.elem_bytes (FP32 or BF16), one head each; page i starts i * page_bytes into the arena.
 * Unused page ids sit on a stack (the free list).
 * Admission is pure accounting: a reservation promises pages (pages_reserved) without taking
 * them, and rows draw pages off the free list against that promise one at a time. Pages a row
 * gives back (compaction) return to the free list but stay promised to the same job, so a running
 * job can never be starved by a newcomer. The pool never reads or writes page memory (it may be a
 * device's): the forward pass and the KV step do, through the backend. Each row keeps, per
 * (layer, head), a page table preallocated for its worst case (the pages of max_tokens, or the
 * whole reservation when that is smaller), so growing and compacting a row never calls malloc on
 * the per-step path. Accounting is in pages whatever head they hold.
 *
 * Threads: engine thread only; nothing here locks. vs_kv_pool_stats is a set of plain loads that
 * a metrics reader may see slightly stale. */
#include "kvcache/pool.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* Cache-line alignment for the host arena; device allocators choose their own. */
#define VS_KV_ARENA_ALIGN_BYTES 64

/* A broken invariant is a bug in the caller (engine or policy): say what and stop. Always on,
 * unlike assert(), because a wrong page id silently corrupts another job's image. */
#define VS_KV_CHECK(cond, ...)                                                                     \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            vs_log_write(VS_LOG_ERROR, "kvcache", __VA_ARGS__);                                    \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

struct vs_kv_pool {
    float *base;              /* [pages_total][2][page_tokens][head_dim] elements of g.elem_bytes;
                               * immutable after init */
    size_t arena_bytes;       /* what was allocated for base */
    vs_kv_allocator alloc;    /* alloc.alloc == NULL: host aligned_alloc / free */
    vs_kv_geometry g;         /* immutable after init */
    size_t page_bytes;        /* immutable after init */
    size_t pages_total;       /* immutable after init */
    int32_t *free_pages;      /* [pages_total] stack of unused page ids; engine only */
    size_t pages_free;        /* entries on free_pages; engine only */
    size_t pages_reserved;    /* promised to reservations, not drawn; engine only */
    size_t reservations;      /* live reservations; engine only */
};

struct vs_kv_resv {
    vs_kv_pool *pool;
    size_t pages_granted;     /* what vs_kv_reserve promised; bounds every row's page tables */
    size_t pages_left;        /* promised and not drawn (includes pages rows gave back) */
    vs_kv_row *rows;          /* singly linked through row->next */
};

struct vs_kv_row {
    vs_kv_resv *resv;
    vs_kv_row *next;
    vs_rt_kv_head *heads;     /* [layers][heads] the view handed to runtime; pages point into tables */
    int32_t *tables;          /* [layers][heads][table_cap_pages] page ids, in token order */
    size_t table_cap_pages;   /* min(pages of max_tokens, resv->pages_granted), at least 1 */
};

static int32_t *row_table(const vs_kv_row *row, size_t head_index)
{
    return row->tables + head_index * row->table_cap_pages;
}

/* The (layer, head) entries a call names: [*first, *end) of the row's [layers][heads] view. */
static void heads_of(const vs_kv_pool *pool, int layer, int head, size_t *first, size_t *end)
{
    VS_KV_CHECK(layer >= 0 && layer < pool->g.layers, "kv row: layer %d out of 0..%d", layer,
                pool->g.layers - 1);
    VS_KV_CHECK(head == VS_KV_ALL_HEADS || (head >= 0 && head < pool->g.heads),
                "kv row: head %d out of 0..%d", head, pool->g.heads - 1);
    size_t base = (size_t)layer * (size_t)pool->g.heads;
    *first = head == VS_KV_ALL_HEADS ? base : base + (size_t)head;
    *end = head == VS_KV_ALL_HEADS ? base + (size_t)pool->g.heads : *first + 1;
}

/* Draws one page for `resv` off the free list; the caller checked pages_left. */
static int32_t draw_page(vs_kv_resv *resv)
{
    vs_kv_pool *pool = resv->pool;
    VS_KV_CHECK(resv->pages_left > 0 && pool->pages_reserved > 0 && pool->pages_free > 0,
                "kv pool: drawing a page with pages_left=%zu reserved=%zu free=%zu",
                resv->pages_left, pool->pages_reserved, pool->pages_free);
    resv->pages_left--;
    pool->pages_reserved--;
    return pool->free_pages[--pool->pages_free];
}

static void push_free(vs_kv_pool *pool, int32_t page)
{
    VS_KV_CHECK(page >= 0 && (size_t)page < pool->pages_total &&
                    pool->pages_free < pool->pages_total,
                "kv pool: returning page %d with %zu of %zu pages free (double release?)",
                (int)page, pool->pages_free, pool->pages_total);
    pool->free_pages[pool->pages_free++] = page;
}

vs_kv_geometry vs_kv_geometry_of(const vs_rt_config *c, int page_tokens, int elem_bytes)
{
    vs_kv_geometry g = {page_tokens, c->depth, c->num_heads, c->head_dim,
                        c->scale_offset[c->n_scales], elem_bytes};
    return g;
}

vs_status vs_kv_pool_init(size_t bytes, vs_kv_geometry g, const vs_kv_allocator *alloc,
                          vs_kv_pool **out, vs_err *err)
{
    vs_kv_pool *pool = NULL;
    vs_status st;
    int page_tokens = g.page_tokens, head_dim = g.head_dim;

    *out = NULL;
    if (page_tokens <= 0 || g.layers <= 0 || g.heads <= 0 || head_dim <= 0 || g.max_tokens <= 0)
        return vs_err_set(err, VS_ERR_INVALID,
                          "kv pool: page_tokens, layers, heads, head_dim and max_tokens must be "
                          "positive (got %d, %d, %d, %d, %d)",
                          page_tokens, g.layers, g.heads, head_dim, g.max_tokens);
    if (g.elem_bytes != 2 && g.elem_bytes != 4)
        return vs_err_set(err, VS_ERR_INVALID,
                          "kv pool: elements of %d bytes; the backend's kv_elem_bytes must be 4 "
                          "(FP32) or 2 (BF16)",
                          g.elem_bytes);
    if ((size_t)page_tokens > SIZE_MAX / 2 / (size_t)g.elem_bytes / (size_t)head_dim)
        return vs_err_set(err, VS_ERR_INVALID,
                          "kv pool: a page of %d tokens x %d elements x 2 does not fit in size_t",
                          page_tokens, head_dim);
    if (alloc && alloc->alloc && !alloc->free)
        return vs_err_set(err, VS_ERR_INVALID,
                          "kv pool: the allocator has alloc but no free callback; give both");

    size_t page_bytes = vs_kv_page_bytes(g);
    size_t pages_total = bytes / page_bytes;
    if (pages_total == 0)
        return vs_err_set(err, VS_ERR_INVALID,
                          "kv pool: %zu bytes hold no page of %zu bytes (%d tokens x %d elements x "
                          "2 x %d bytes); give at least %zu bytes",
                          bytes, page_bytes, page_tokens, head_dim, g.elem_bytes, page_bytes);
    if (pages_total > (size_t)INT32_MAX)
        return vs_err_set(err, VS_ERR_INVALID,
                          "kv pool: %zu bytes make %zu pages, more than page ids can name (%d); "
                          "use larger pages or a smaller pool",
                          bytes, pages_total, (int)INT32_MAX);

    pool = calloc(1, sizeof *pool);
    if (!pool) {
        st = vs_err_set(err, VS_ERR_NOMEM, "kv pool: out of host memory for the pool record");
        goto fail;
    }
    pool->g = g;
    pool->page_bytes = page_bytes;
    pool->pages_total = pages_total;
    if (alloc)
        pool->alloc = *alloc;

    pool->free_pages = malloc(pages_total * sizeof *pool->free_pages);
    if (!pool->free_pages) {
        st = vs_err_set(err, VS_ERR_NOMEM,
                        "kv pool: out of host memory for a free list of %zu pages", pages_total);
        goto fail;
    }

    pool->arena_bytes = pages_total * page_bytes;
    if (pool->alloc.alloc) {
        pool->base = pool->alloc.alloc(pool->alloc.ctx, pool->arena_bytes);
    } else {
        size_t rounded = (pool->arena_bytes + VS_KV_ARENA_ALIGN_BYTES - 1) &
                         ~(size_t)(VS_KV_ARENA_ALIGN_BYTES - 1);
        pool->base = rounded >= pool->arena_bytes ? aligned_alloc(VS_KV_ARENA_ALIGN_BYTES, rounded)
                                                  : NULL;
    }
    if (!pool->base) {
        st = vs_err_set(err, VS_ERR_NOMEM,
                        "kv pool: could not allocate the arena of %zu bytes (%zu pages of %zu "
                        "bytes); lower the pool size",
                        pool->arena_bytes, pages_total, page_bytes);
        goto fail;
    }

    /* Pushed high to low so the first draws are pages 0, 1, 2, ...: low addresses first. */
    for (size_t i = 0; i < pages_total; i++)
        pool->free_pages[i] = (int32_t)(pages_total - 1 - i);
    pool->pages_free = pages_total;

    *out = pool;
    return VS_OK;

fail:
    if (pool)
        free(pool->free_pages);
    free(pool);
    return st;
}

void vs_kv_pool_free(vs_kv_pool *pool)
{
    if (!pool)
        return;
    VS_KV_CHECK(pool->reservations == 0,
                "kv pool: freed with %zu live reservations; release them first",
                pool->reservations);
    if (pool->alloc.alloc)
        pool->alloc.free(pool->alloc.ctx, pool->base);
    else
        free(pool->base);
    free(pool->free_pages);
    free(pool);
}

void vs_kv_pool_stats(const vs_kv_pool *pool, vs_kv_stats *out)
{
    out->page_bytes = pool->page_bytes;
    out->elem_bytes = (size_t)pool->g.elem_bytes;
    out->pages_total = pool->pages_total;
    out->pages_free = pool->pages_free;
    out->pages_reserved = pool->pages_reserved;
    out->pages_used = pool->pages_total - pool->pages_free;
    out->reservations = pool->reservations;
}

size_t vs_kv_page_bytes(vs_kv_geometry g)
{
    return 2 * (size_t)g.page_tokens * (size_t)g.head_dim * (size_t)g.elem_bytes;
}

float *vs_kv_pool_base(const vs_kv_pool *pool) { return pool->base; }

int vs_kv_pool_elem_bytes(const vs_kv_pool *pool) { return pool->g.elem_bytes; }

int vs_kv_pool_page_tokens(const vs_kv_pool *pool) { return pool->g.page_tokens; }

int vs_kv_pool_heads(const vs_kv_pool *pool) { return pool->g.heads; }

size_t vs_kv_pages_for_tokens(const vs_kv_pool *pool, size_t tokens)
{
    size_t pt = (size_t)pool->g.page_tokens;
    return tokens / pt + (tokens % pt != 0);
}

vs_kv_admit vs_kv_reserve(vs_kv_pool *pool, size_t pages, vs_kv_resv **out)
{
    *out = NULL;
    if (pages > pool->pages_total)
        return VS_KV_NEVER;
    /* pages_free >= pages_reserved always: promised pages are free pages not yet drawn. */
    if (pages > pool->pages_free - pool->pages_reserved)
        return VS_KV_LATER;
    vs_kv_resv *resv = calloc(1, sizeof *resv);
    if (!resv)
        return VS_KV_LATER; /* a few bytes of host memory; retrying later is the only remedy */
    resv->pool = pool;
    resv->pages_granted = pages;
    resv->pages_left = pages;
    pool->pages_reserved += pages;
    pool->reservations++;
    *out = resv;
    return VS_KV_OK;
}

vs_status vs_kv_row_new(vs_kv_resv *resv, vs_kv_row **out, vs_err *err)
{
    const vs_kv_pool *pool = resv->pool;
    vs_kv_row *row = NULL;
    vs_status st;
    size_t n_heads = (size_t)pool->g.layers * (size_t)pool->g.heads;

    *out = NULL;
    row = calloc(1, sizeof *row);
    if (!row) {
        st = vs_err_set(err, VS_ERR_NOMEM, "kv row: out of host memory for the row record");
        goto fail;
    }
    row->resv = resv;
    size_t most = vs_kv_pages_for_tokens(pool, (size_t)pool->g.max_tokens);
    row->table_cap_pages = resv->pages_granted < most ? resv->pages_granted : most;
    if (row->table_cap_pages == 0)
        row->table_cap_pages = 1;
    row->heads = calloc(n_heads, sizeof *row->heads);
    if (!row->heads) {
        st = vs_err_set(err, VS_ERR_NOMEM, "kv row: out of host memory for %zu head views", n_heads);
        goto fail;
    }
    if (row->table_cap_pages > SIZE_MAX / sizeof(int32_t) / n_heads) {
        st = vs_err_set(err, VS_ERR_NOMEM, "kv row: page tables of %zu heads x %zu pages overflow",
                        n_heads, row->table_cap_pages);
        goto fail;
    }
    row->tables = malloc(n_heads * row->table_cap_pages * sizeof *row->tables);
    if (!row->tables) {
        st = vs_err_set(err, VS_ERR_NOMEM,
                        "kv row: out of host memory for page tables of %zu heads x %zu pages",
                        n_heads, row->table_cap_pages);
        goto fail;
    }
    for (size_t i = 0; i < n_heads; i++)
        row->heads[i].pages = row_table(row, i);

    row->next = resv->rows;
    resv->rows = row;
    *out = row;
    return VS_OK;

fail:
    if (row) {
        free(row->heads);
        free(row->tables);
    }
    free(row);
    return st;
}

vs_status vs_kv_row_reserve_tokens(vs_kv_row *row, int layer, int head, int n_new, vs_err *err)
{
    vs_kv_resv *resv = row->resv;
    const vs_kv_pool *pool = resv->pool;
    size_t first, end, more_pages = 0;
    heads_of(pool, layer, head, &first, &end);
    for (size_t i = first; i < end; i++) {
        const vs_rt_kv_head *kh = &row->heads[i];
        VS_KV_CHECK(n_new >= 0 && (size_t)n_new <= (size_t)INT32_MAX - (size_t)kh->n_tokens,
                    "kv row: layer %d head %zu: %d new tokens on top of %d", layer, i - first, n_new,
                    kh->n_tokens);
        size_t need = vs_kv_pages_for_tokens(pool, (size_t)kh->n_tokens + (size_t)n_new);
        /* past the table of a small reservation: the reservation check below refuses it */
        VS_KV_CHECK(need <= vs_kv_pages_for_tokens(pool, (size_t)pool->g.max_tokens),
                    "kv row: layer %d head %zu: %d + %d tokens exceed the %d a head can hold",
                    layer, i - first, kh->n_tokens, n_new, pool->g.max_tokens);
        more_pages += need > (size_t)kh->n_pages ? need - (size_t)kh->n_pages : 0;
    }
    if (more_pages == 0)
        return VS_OK;
    if (more_pages > resv->pages_left)
        return vs_err_set(err, VS_ERR_KV_FULL,
                          "kv row: layer %d needs %zu more pages for %d new tokens per head but its "
                          "reservation of %zu pages has %zu left: the job's peak page estimate is "
                          "too small (a bug in the caller)",
                          layer, more_pages, n_new, resv->pages_granted, resv->pages_left);
    for (size_t i = first; i < end; i++) {
        vs_rt_kv_head *kh = &row->heads[i];
        size_t need = vs_kv_pages_for_tokens(pool, (size_t)kh->n_tokens + (size_t)n_new);
        int32_t *table = row_table(row, i);
        while ((size_t)kh->n_pages < need)
            table[kh->n_pages++] = draw_page(resv);
    }
    return VS_OK;
}

void vs_kv_row_commit(vs_kv_row *row, int layer, int head, int n_new)
{
    const vs_kv_pool *pool = row->resv->pool;
    size_t first, end;
    heads_of(pool, layer, head, &first, &end);
    for (size_t i = first; i < end; i++) {
        vs_rt_kv_head *kh = &row->heads[i];
        VS_KV_CHECK(n_new >= 0 &&
                        (size_t)kh->n_tokens + (size_t)n_new <=
                            (size_t)kh->n_pages * (size_t)pool->g.page_tokens,
                    "kv row: layer %d head %zu: committing %d tokens on top of %d with room for "
                    "%d pages; call vs_kv_row_reserve_tokens first",
                    layer, i - first, n_new, kh->n_tokens, kh->n_pages);
        kh->n_tokens += n_new;
    }
}

void vs_kv_row_resize(vs_kv_row *row, int layer, int head, int n)
{
    vs_kv_resv *resv = row->resv;
    vs_kv_pool *pool = resv->pool;
    size_t first, end;
    heads_of(pool, layer, head, &first, &end);
    for (size_t i = first; i < end; i++) {
        vs_rt_kv_head *kh = &row->heads[i];
        VS_KV_CHECK(n >= 0 && (long)n <= (long)kh->n_pages * pool->g.page_tokens,
                    "kv resize: layer %d head %zu to %d tokens with room for %d pages (reserve "
                    "them first)",
                    layer, i - first, n, kh->n_pages);
        /* Pages past the kept tokens go back to the free list, still promised to this job. */
        int32_t *table = row_table(row, i);
        int keep_pages = (int)vs_kv_pages_for_tokens(pool, (size_t)n);
        while (kh->n_pages > keep_pages) {
            push_free(pool, table[--kh->n_pages]);
            pool->pages_reserved++;
            resv->pages_left++;
        }
        kh->n_tokens = n;
    }
}

int vs_kv_row_tokens(const vs_kv_row *row, int layer, int head)
{
    size_t first, end;
    VS_KV_CHECK(head != VS_KV_ALL_HEADS, "kv row: the token count of one head, not of all");
    heads_of(row->resv->pool, layer, head, &first, &end);
    return row->heads[first].n_tokens;
}

size_t vs_kv_row_pages(const vs_kv_row *row)
{
    const vs_kv_pool *pool = row->resv->pool;
    size_t n = 0;
    for (size_t i = 0; i < (size_t)pool->g.layers * (size_t)pool->g.heads; i++)
        n += (size_t)row->heads[i].n_pages;
    return n;
}

const vs_rt_kv_head *vs_kv_row_heads(const vs_kv_row *row) { return row->heads; }

void vs_kv_release(vs_kv_resv *resv)
{
    if (!resv)
        return;
    vs_kv_pool *pool = resv->pool;
    vs_kv_row *row = resv->rows;
    while (row) {
        vs_kv_row *next = row->next;
        for (size_t i = 0; i < (size_t)pool->g.layers * (size_t)pool->g.heads; i++) {
            const int32_t *table = row_table(row, i);
            for (int p = 0; p < row->heads[i].n_pages; p++)
                push_free(pool, table[p]);
        }
        free(row->heads);
        free(row->tables);
        free(row);
        row = next;
    }
    VS_KV_CHECK(pool->pages_reserved >= resv->pages_left && pool->reservations > 0,
                "kv release: pool has %zu pages reserved but the reservation holds %zu",
                pool->pages_reserved, resv->pages_left);
    pool->pages_reserved -= resv->pages_left;
    pool->reservations--;
    free(resv);
}
