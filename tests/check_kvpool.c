/* tests/check_kvpool.c — libcheck suite for kvcache/pool: accounting, reservations, rows and
 * compaction.
 *
 * Pools here are small host pools (4-token pages; one head of 8 floats per token, or 2 heads of 4
 * for the per-head cases) so every page can be counted and every float checked. Data goes in and out through vs_rt_kv_offset, the same view
 * the forward pass uses, so a layout mismatch between pool.c and runtime/kv_view.h fails here. */
#include <check.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/pool.h"
#include "runtime/blas.h"

#define PT 4     /* page_tokens */
#define LAYERS 3
#define KV_DIM 8 /* floats per token of the one head of g_pool */
#define PAGE_BYTES ((size_t)2 * PT * KV_DIM * sizeof(float))
#define POOL_PAGES 10
#define MAX_TOKENS 1000 /* far above any test's reservation: the tables never bound it */
#define GEOM(page_tokens, layers, head_dim) \
    ((vs_kv_geometry){(page_tokens), (layers), 1, (head_dim), MAX_TOKENS, 4})

static vs_kv_pool *g_pool; /* POOL_PAGES pages; made by setup, freed by teardown */

static void setup(void)
{
    vs_err err = {0};
    /* One byte short of an 11th page: init must round down. */
    vs_status st = vs_kv_pool_init(POOL_PAGES * PAGE_BYTES + PAGE_BYTES - 1, GEOM(PT, LAYERS, KV_DIM),
                                   NULL, &g_pool, &err);
    ck_assert_msg(st == VS_OK, "pool init: %s", err.msg);
}

static void teardown(void)
{
    vs_kv_pool_free(g_pool);
    g_pool = NULL;
}

static vs_kv_stats stats_of(const vs_kv_pool *pool)
{
    vs_kv_stats s;
    vs_kv_pool_stats(pool, &s);
    return s;
}

static vs_kv_resv *reserve_ok(vs_kv_pool *pool, size_t pages)
{
    vs_kv_resv *resv = NULL;
    ck_assert_int_eq(vs_kv_reserve(pool, pages, &resv), VS_KV_OK);
    ck_assert_ptr_nonnull(resv);
    return resv;
}

static vs_kv_row *row_ok(vs_kv_resv *resv)
{
    vs_err err = {0};
    vs_kv_row *row = NULL;
    ck_assert_msg(vs_kv_row_new(resv, &row, &err) == VS_OK, "row_new: %s", err.msg);
    ck_assert_ptr_nonnull(row);
    return row;
}

/* Reserves room for and commits n tokens in `layer`. */
static void grow(vs_kv_row *row, int layer, int n)
{
    vs_err err = {0};
    ck_assert_msg(vs_kv_row_reserve_tokens(row, layer, VS_KV_ALL_HEADS, n, &err) == VS_OK, "reserve_tokens: %s",
                  err.msg);
    vs_kv_row_commit(row, layer, VS_KV_ALL_HEADS, n);
}

static vs_rt_kv_view view_of(const vs_kv_pool *pool)
{
    vs_rt_kv_view v = {vs_kv_pool_base(pool), vs_kv_pool_page_tokens(pool), KV_DIM};
    return v;
}

/* A value no other (tag, slot, kv, d) shares: tag names the row and layer. */
static float token_value(int tag, int slot, int kv, int d)
{
    return (float)(tag * 100000 + slot * 100 + kv * 10 + d);
}

static void write_slot(const vs_kv_pool *pool, const vs_rt_kv_head *l, int slot, int tag)
{
    vs_rt_kv_view v = view_of(pool);
    for (int kv = 0; kv < 2; kv++) {
        float *p = v.base + vs_rt_kv_offset(&v, l, slot, kv);
        for (int d = 0; d < KV_DIM; d++)
            p[d] = token_value(tag, slot, kv, d);
    }
}

static float read_float(const vs_kv_pool *pool, const vs_rt_kv_head *l, int slot, int kv, int d)
{
    vs_rt_kv_view v = view_of(pool);
    return v.base[vs_rt_kv_offset(&v, l, slot, kv) + d];
}

/* ---- init ---------------------------------------------------------------------------------- */

START_TEST(init_carves_floor_of_bytes_over_page_bytes)
{
    vs_kv_stats s = stats_of(g_pool);
    ck_assert_uint_eq(s.page_bytes, PAGE_BYTES);
    ck_assert_uint_eq(s.pages_total, POOL_PAGES);
    ck_assert_uint_eq(s.pages_free, POOL_PAGES);
    ck_assert_uint_eq(s.pages_reserved, 0);
    ck_assert_uint_eq(s.pages_used, 0);
    ck_assert_uint_eq(s.reservations, 0);
    ck_assert_ptr_nonnull(vs_kv_pool_base(g_pool));
    ck_assert_int_eq(vs_kv_pool_page_tokens(g_pool), PT);
}
END_TEST

START_TEST(pages_for_tokens_rounds_up_to_whole_pages)
{
    ck_assert_uint_eq(vs_kv_pages_for_tokens(g_pool, 0), 0);
    ck_assert_uint_eq(vs_kv_pages_for_tokens(g_pool, 1), 1);
    ck_assert_uint_eq(vs_kv_pages_for_tokens(g_pool, PT), 1);
    ck_assert_uint_eq(vs_kv_pages_for_tokens(g_pool, PT + 1), 2);
    ck_assert_uint_eq(vs_kv_pages_for_tokens(g_pool, 10 * PT), 10);
}
END_TEST

static void expect_invalid(size_t bytes, int page_tokens, int layers, int kv_dim,
                           const vs_kv_allocator *alloc, const char *what)
{
    vs_err err = {0};
    vs_kv_pool *pool = (vs_kv_pool *)&err; /* must be overwritten with NULL */
    vs_status st = vs_kv_pool_init(bytes, GEOM(page_tokens, layers, kv_dim), alloc, &pool, &err);
    ck_assert_msg(st == VS_ERR_INVALID, "%s: status %s", what, vs_status_name(st));
    ck_assert_int_eq(err.code, VS_ERR_INVALID);
    ck_assert_ptr_null(pool);
    ck_assert_msg(strlen(err.msg) > 10, "%s: no message", what);
    ck_assert_msg(strstr(err.msg, "kv pool") != NULL, "%s: message does not say what: %s", what,
                  err.msg);
}

static void *count_alloc(void *ctx, size_t bytes);
static void count_free(void *ctx, void *p);

START_TEST(init_rejects_invalid_sizes_with_a_message)
{
    expect_invalid(0, PT, LAYERS, KV_DIM, NULL, "zero bytes");
    expect_invalid(PAGE_BYTES - 1, PT, LAYERS, KV_DIM, NULL, "less than one page");
    expect_invalid(PAGE_BYTES, 0, LAYERS, KV_DIM, NULL, "zero page_tokens");
    expect_invalid(PAGE_BYTES, -4, LAYERS, KV_DIM, NULL, "negative page_tokens");
    expect_invalid(PAGE_BYTES, PT, 0, KV_DIM, NULL, "zero layers");
    expect_invalid(PAGE_BYTES, PT, LAYERS, -1, NULL, "negative kv_dim");
    vs_kv_allocator no_free = {NULL, count_alloc, NULL};
    expect_invalid(PAGE_BYTES, PT, LAYERS, KV_DIM, &no_free, "allocator without free");

    /* The message names the value seen and the fix. */
    vs_err err = {0};
    vs_kv_pool *pool = NULL;
    vs_kv_pool_init(100, GEOM(PT, LAYERS, KV_DIM), NULL, &pool, &err);
    ck_assert_msg(strstr(err.msg, "100 bytes") && strstr(err.msg, "256"), "message: %s", err.msg);
}
END_TEST

typedef struct {
    int allocs, frees;
    size_t bytes;
    void *last;
    int fail;
} alloc_counter;

static void *count_alloc(void *ctx, size_t bytes)
{
    alloc_counter *c = ctx;
    if (c->fail)
        return NULL;
    c->allocs++;
    c->bytes = bytes;
    c->last = malloc(bytes);
    return c->last;
}

static void count_free(void *ctx, void *p)
{
    alloc_counter *c = ctx;
    ck_assert_ptr_eq(p, c->last);
    c->frees++;
    free(p);
}

START_TEST(init_takes_the_arena_from_the_given_allocator)
{
    alloc_counter c = {0};
    vs_kv_allocator a = {&c, count_alloc, count_free};
    vs_err err = {0};
    vs_kv_pool *pool = NULL;
    ck_assert_int_eq(vs_kv_pool_init(3 * PAGE_BYTES + 7, GEOM(PT, LAYERS, KV_DIM), &a, &pool, &err),
                     VS_OK);
    ck_assert_int_eq(c.allocs, 1);
    ck_assert_uint_eq(c.bytes, 3 * PAGE_BYTES); /* the pages, not the slack */
    ck_assert_ptr_eq(vs_kv_pool_base(pool), c.last);
    vs_kv_pool_free(pool);
    ck_assert_int_eq(c.frees, 1);

    /* An allocator whose alloc is NULL means host memory: the callbacks are never called. */
    alloc_counter unused = {0};
    vs_kv_allocator host = {&unused, NULL, count_free};
    ck_assert_int_eq(vs_kv_pool_init(PAGE_BYTES, GEOM(PT, LAYERS, KV_DIM), &host, &pool, &err), VS_OK);
    ck_assert_ptr_nonnull(vs_kv_pool_base(pool));
    vs_kv_pool_free(pool);
    ck_assert_int_eq(unused.allocs + unused.frees, 0);
}
END_TEST

START_TEST(init_reports_nomem_when_the_allocator_fails)
{
    alloc_counter c = {.fail = 1};
    vs_kv_allocator a = {&c, count_alloc, count_free};
    vs_err err = {0};
    vs_kv_pool *pool = (vs_kv_pool *)&c;
    ck_assert_int_eq(vs_kv_pool_init(4 * PAGE_BYTES, GEOM(PT, LAYERS, KV_DIM), &a, &pool, &err),
                     VS_ERR_NOMEM);
    ck_assert_ptr_null(pool);
    ck_assert_msg(strstr(err.msg, "1024 bytes") != NULL, "message: %s", err.msg);
    ck_assert_int_eq(c.frees, 0);
}
END_TEST

/* ---- reservations -------------------------------------------------------------------------- */

START_TEST(reserve_within_free_pages_returns_ok_and_counts_the_promise)
{
    vs_kv_resv *a = reserve_ok(g_pool, 4);
    vs_kv_stats s = stats_of(g_pool);
    ck_assert_uint_eq(s.pages_reserved, 4);
    ck_assert_uint_eq(s.pages_free, POOL_PAGES); /* promised, not drawn */
    ck_assert_uint_eq(s.pages_used, 0);
    ck_assert_uint_eq(s.reservations, 1);
    vs_kv_resv *b = reserve_ok(g_pool, 0);
    ck_assert_uint_eq(stats_of(g_pool).reservations, 2);
    vs_kv_release(a);
    vs_kv_release(b);
    s = stats_of(g_pool);
    ck_assert_uint_eq(s.pages_reserved, 0);
    ck_assert_uint_eq(s.reservations, 0);
}
END_TEST

START_TEST(reserve_when_pool_full_returns_later)
{
    vs_kv_resv *a = reserve_ok(g_pool, 6);
    vs_kv_resv *b = (vs_kv_resv *)g_pool;
    ck_assert_int_eq(vs_kv_reserve(g_pool, 5, &b), VS_KV_LATER);
    ck_assert_ptr_null(b);
    ck_assert_uint_eq(stats_of(g_pool).pages_reserved, 6); /* a refusal promises nothing */
    b = reserve_ok(g_pool, 4);
    ck_assert_int_eq(vs_kv_reserve(g_pool, 1, &(vs_kv_resv *){NULL}), VS_KV_LATER);

    /* Once a finishes, its pages are available again. */
    vs_kv_release(a);
    vs_kv_resv *c = reserve_ok(g_pool, 6);
    vs_kv_release(b);
    vs_kv_release(c);
}
END_TEST

START_TEST(reserve_when_pages_are_drawn_by_others_returns_later)
{
    vs_kv_resv *a = reserve_ok(g_pool, 6);
    vs_kv_row *r = row_ok(a);
    grow(r, 0, 3 * PT); /* 3 pages drawn: free 7, reserved 3, available 4 */
    vs_kv_stats s = stats_of(g_pool);
    ck_assert_uint_eq(s.pages_free, 7);
    ck_assert_uint_eq(s.pages_reserved, 3);
    ck_assert_uint_eq(s.pages_used, 3);
    vs_kv_resv *b = NULL;
    ck_assert_int_eq(vs_kv_reserve(g_pool, 5, &b), VS_KV_LATER);
    b = reserve_ok(g_pool, 4);
    vs_kv_release(a);
    vs_kv_release(b);
}
END_TEST

START_TEST(reserve_more_than_the_pool_returns_never)
{
    vs_kv_resv *a = NULL;
    ck_assert_int_eq(vs_kv_reserve(g_pool, POOL_PAGES + 1, &a), VS_KV_NEVER);
    ck_assert_ptr_null(a);
    ck_assert_int_eq(vs_kv_reserve(g_pool, SIZE_MAX, &a), VS_KV_NEVER);
    a = reserve_ok(g_pool, POOL_PAGES); /* exactly the pool fits */
    /* NEVER wins over LATER: it can not fit even once the pool drains. */
    vs_kv_resv *b = NULL;
    ck_assert_int_eq(vs_kv_reserve(g_pool, POOL_PAGES + 1, &b), VS_KV_NEVER);
    vs_kv_release(a);
}
END_TEST

START_TEST(reserve_tokens_beyond_the_reservation_returns_kv_full)
{
    vs_kv_resv *a = reserve_ok(g_pool, 3);
    vs_kv_row *r = row_ok(a);
    grow(r, 0, PT);           /* 1 page */
    vs_err err = {0};
    ck_assert_int_eq(vs_kv_row_reserve_tokens(r, 1, VS_KV_ALL_HEADS, 3 * PT, &err), VS_ERR_KV_FULL);
    ck_assert_int_eq(err.code, VS_ERR_KV_FULL);
    ck_assert_msg(strstr(err.msg, "reservation") && strstr(err.msg, "layer 1"), "message: %s",
                  err.msg);
    /* The refused call drew nothing: the 2 pages left can still be used. */
    ck_assert_int_eq(vs_kv_row_heads(r)[1].n_pages, 0);
    ck_assert_uint_eq(stats_of(g_pool).pages_used, 1);
    ck_assert_uint_eq(stats_of(g_pool).pages_reserved, 2);
    grow(r, 1, 2 * PT);
    ck_assert_int_eq(vs_kv_row_reserve_tokens(row_ok(a), 2, VS_KV_ALL_HEADS, 1, &err), VS_ERR_KV_FULL);
    vs_kv_release(a);
}
END_TEST

START_TEST(reserve_tokens_makes_room_without_changing_the_count)
{
    vs_kv_resv *a = reserve_ok(g_pool, 5);
    vs_kv_row *r = row_ok(a);
    vs_err err = {0};
    const vs_rt_kv_head *l = &vs_kv_row_heads(r)[2];
    ck_assert_int_eq(vs_kv_row_reserve_tokens(r, 2, VS_KV_ALL_HEADS, PT + 1, &err), VS_OK);
    ck_assert_int_eq(l->n_pages, 2);
    ck_assert_int_eq(l->n_tokens, 0);
    ck_assert_int_eq(vs_kv_row_tokens(r, 2, 0), 0);
    /* Asking again for the same room draws nothing more. */
    ck_assert_int_eq(vs_kv_row_reserve_tokens(r, 2, VS_KV_ALL_HEADS, PT + 1, &err), VS_OK);
    ck_assert_int_eq(l->n_pages, 2);
    ck_assert_uint_eq(stats_of(g_pool).pages_used, 2);
    vs_kv_row_commit(r, 2, VS_KV_ALL_HEADS, PT + 1);
    ck_assert_int_eq(vs_kv_row_tokens(r, 2, 0), PT + 1);
    ck_assert_int_eq(l->n_tokens, PT + 1);
    ck_assert_int_eq(vs_kv_row_reserve_tokens(r, 2, VS_KV_ALL_HEADS, PT - 1, &err), VS_OK); /* fits page 2 */
    ck_assert_int_eq(l->n_pages, 2);
    ck_assert_int_eq(vs_kv_row_reserve_tokens(r, 2, VS_KV_ALL_HEADS, PT, &err), VS_OK);
    ck_assert_int_eq(l->n_pages, 3);
    /* Other layers are untouched. */
    ck_assert_int_eq(vs_kv_row_heads(r)[0].n_pages, 0);
    ck_assert_int_eq(vs_kv_row_tokens(r, 1, 0), 0);
    vs_kv_release(a);
}
END_TEST

/* ---- release ------------------------------------------------------------------------------- */

/* Draws every page of the pool into one layer and checks each id appears exactly once. */
static void assert_all_pages_drawable_once(vs_kv_pool *pool, size_t pages_total)
{
    vs_kv_resv *all = reserve_ok(pool, pages_total);
    vs_kv_row *r = row_ok(all);
    grow(r, 0, (int)pages_total * PT);
    const vs_rt_kv_head *l = &vs_kv_row_heads(r)[0];
    ck_assert_int_eq(l->n_pages, (int)pages_total);
    unsigned char *seen = calloc(pages_total, 1);
    ck_assert_ptr_nonnull(seen);
    for (int p = 0; p < l->n_pages; p++) {
        ck_assert_int_ge(l->pages[p], 0);
        ck_assert_int_lt(l->pages[p], (int)pages_total);
        ck_assert_msg(!seen[l->pages[p]], "page %d handed out twice", l->pages[p]);
        seen[l->pages[p]] = 1;
    }
    free(seen);
    ck_assert_uint_eq(stats_of(pool).pages_free, 0);
    vs_kv_release(all);
}

START_TEST(release_returns_every_page_exactly_once)
{
    vs_kv_stats before = stats_of(g_pool);
    vs_kv_resv *a = reserve_ok(g_pool, 6);
    vs_kv_resv *b = reserve_ok(g_pool, 4);
    vs_kv_row *a0 = row_ok(a), *a1 = row_ok(a), *b0 = row_ok(b);
    grow(a0, 0, 5);      /* 2 pages */
    grow(b0, 2, 2);      /* 1 page */
    grow(a1, 1, PT);     /* 1 page */
    grow(b0, 0, 2 * PT); /* 2 pages */
    grow(a0, 0, 3);      /* 8 tokens: still 2 pages */
    grow(a1, 2, 1);      /* 1 page; a keeps 2 of 6 undrawn */
    vs_kv_stats mid = stats_of(g_pool);
    ck_assert_uint_eq(mid.pages_used, 7);
    ck_assert_uint_eq(mid.pages_free, 3);
    ck_assert_uint_eq(mid.pages_reserved, 3); /* 2 left in a, 1 in b */

    vs_kv_release(a);
    vs_kv_stats after_a = stats_of(g_pool);
    ck_assert_uint_eq(after_a.pages_used, 3);
    ck_assert_uint_eq(after_a.pages_reserved, 1);
    ck_assert_uint_eq(after_a.reservations, 1);
    vs_kv_release(b);

    vs_kv_stats after = stats_of(g_pool);
    ck_assert_mem_eq(&after, &before, sizeof before);
    assert_all_pages_drawable_once(g_pool, POOL_PAGES);
    after = stats_of(g_pool);
    ck_assert_mem_eq(&after, &before, sizeof before);
}
END_TEST

START_TEST(release_of_null_changes_nothing)
{
    vs_kv_stats before = stats_of(g_pool);
    vs_kv_release(NULL);
    vs_kv_pool_free(NULL);
    vs_kv_stats after = stats_of(g_pool);
    ck_assert_mem_eq(&after, &before, sizeof before);
}
END_TEST

/* ---- rows ---------------------------------------------------------------------------------- */

/* Three rows in two reservations grow by different amounts per layer, one token batch at a time
 * and interleaved, so page draws of different rows alternate on the free list. */
START_TEST(interleaved_rows_keep_their_data_and_share_no_page)
{
    enum { ROWS = 3, STEPS = 4 };
    /* tokens added per [row][layer][step]; totals differ per layer and row */
    static const int add[ROWS][LAYERS][STEPS] = {
        {{1, 4, 2, 3}, {0, 9, 0, 1}, {1, 0, 0, 0}},
        {{5, 5, 3, 0}, {0, 0, 0, 0}, {2, 2, 0, 1}},
        {{1, 1, 1, 1}, {7, 0, 7, 2}, {4, 4, 4, 4}},
    };
    vs_err err = {0};
    vs_kv_pool *pool = NULL;
    ck_assert_int_eq(vs_kv_pool_init(40 * PAGE_BYTES, GEOM(PT, LAYERS, KV_DIM), NULL, &pool, &err),
                     VS_OK);
    vs_kv_resv *a = reserve_ok(pool, 20);
    vs_kv_resv *b = reserve_ok(pool, 15);
    vs_kv_row *rows[ROWS] = {row_ok(a), row_ok(b), row_ok(a)};

    for (int s = 0; s < STEPS; s++)
        for (int r = 0; r < ROWS; r++)
            for (int L = 0; L < LAYERS; L++) {
                int n = add[r][L][s];
                int t0 = vs_kv_row_tokens(rows[r], L, 0);
                ck_assert_int_eq(vs_kv_row_reserve_tokens(rows[r], L, VS_KV_ALL_HEADS, n, &err), VS_OK);
                /* the forward pass writes the new tokens, then commits them */
                for (int t = t0; t < t0 + n; t++)
                    write_slot(pool, &vs_kv_row_heads(rows[r])[L], t, r * LAYERS + L + 1);
                vs_kv_row_commit(rows[r], L, VS_KV_ALL_HEADS, n);
            }

    int32_t owner[40];
    for (int p = 0; p < 40; p++)
        owner[p] = -1;
    size_t pages_held = 0;
    for (int r = 0; r < ROWS; r++)
        for (int L = 0; L < LAYERS; L++) {
            int total = 0;
            for (int s = 0; s < STEPS; s++)
                total += add[r][L][s];
            const vs_rt_kv_head *l = &vs_kv_row_heads(rows[r])[L];
            ck_assert_int_eq(l->n_tokens, total);
            ck_assert_int_eq(vs_kv_row_tokens(rows[r], L, 0), total);
            ck_assert_int_eq(l->n_pages, (int)vs_kv_pages_for_tokens(pool, (size_t)total));
            for (int p = 0; p < l->n_pages; p++) {
                ck_assert_int_ge(l->pages[p], 0);
                ck_assert_int_lt(l->pages[p], 40);
                ck_assert_msg(owner[l->pages[p]] < 0, "page %d held by (row,layer) %d and %d",
                              l->pages[p], owner[l->pages[p]], r * LAYERS + L);
                owner[l->pages[p]] = r * LAYERS + L;
            }
            pages_held += (size_t)l->n_pages;
            for (int t = 0; t < total; t++)
                for (int kv = 0; kv < 2; kv++)
                    for (int d = 0; d < KV_DIM; d++)
                        ck_assert_float_eq(read_float(pool, l, t, kv, d),
                                           token_value(r * LAYERS + L + 1, t, kv, d));
        }
    ck_assert_uint_eq(stats_of(pool).pages_used, pages_held);
    ck_assert_uint_eq(stats_of(pool).pages_reserved, 35 - pages_held);

    vs_kv_release(b);
    vs_kv_release(a);
    assert_all_pages_drawable_once(pool, 40);
    vs_kv_pool_free(pool);
}
END_TEST

/* ---- resize (the bookkeeping of compaction; the KV step moves the data, check_kvstep) ------ */

START_TEST(resize_down_returns_pages_to_the_job_and_touches_no_memory)
{
    vs_kv_resv *a = reserve_ok(g_pool, 4);
    vs_kv_row *r = row_ok(a);
    grow(r, 0, 2); /* layer 0 must not be touched by resizing layer 1 */
    write_slot(g_pool, &vs_kv_row_heads(r)[0], 0, 7);
    write_slot(g_pool, &vs_kv_row_heads(r)[0], 1, 7);
    grow(r, 1, 10); /* 3 pages */
    for (int t = 0; t < 10; t++)
        write_slot(g_pool, &vs_kv_row_heads(r)[1], t, 1);
    vs_kv_stats s0 = stats_of(g_pool);
    ck_assert_uint_eq(s0.pages_used, 4);
    ck_assert_uint_eq(s0.pages_reserved, 0);

    vs_kv_row_resize(r, 1, VS_KV_ALL_HEADS, 3);

    const vs_rt_kv_head *l = &vs_kv_row_heads(r)[1];
    ck_assert_int_eq(vs_kv_row_tokens(r, 1, 0), 3);
    ck_assert_int_eq(l->n_tokens, 3);
    ck_assert_int_eq(l->n_pages, 1);
    for (int t = 0; t < 3; t++) /* what the caller wrote stays as it was */
        for (int kv = 0; kv < 2; kv++)
            for (int d = 0; d < KV_DIM; d++)
                ck_assert_float_eq(read_float(g_pool, l, t, kv, d), token_value(1, t, kv, d));
    for (int t = 0; t < 2; t++)
        for (int d = 0; d < KV_DIM; d++)
            ck_assert_float_eq(read_float(g_pool, &vs_kv_row_heads(r)[0], t, 1, d),
                               token_value(7, t, 1, d));

    /* 2 pages are free again but still promised to this job, not to newcomers. */
    vs_kv_stats s1 = stats_of(g_pool);
    ck_assert_uint_eq(s1.pages_used, 2);
    ck_assert_uint_eq(s1.pages_free, POOL_PAGES - 2);
    ck_assert_uint_eq(s1.pages_reserved, 2);
    vs_kv_resv *other = NULL;
    ck_assert_int_eq(vs_kv_reserve(g_pool, POOL_PAGES - 3, &other), VS_KV_LATER);
    other = reserve_ok(g_pool, POOL_PAGES - 4);
    /* The job can draw them again: its reservation of 4 was exhausted before the resize. */
    grow(r, 2, 2 * PT);
    ck_assert_uint_eq(stats_of(g_pool).pages_reserved, POOL_PAGES - 4);
    vs_kv_release(other);
    vs_kv_release(a);
    assert_all_pages_drawable_once(g_pool, POOL_PAGES);
}
END_TEST

/* Selection may keep tokens that never had pages (the step's qkv): the layer grows past its count
 * within the room reserved for it, and keeps the pages that hold the new count. */
START_TEST(resize_up_within_the_reserved_room_keeps_its_pages)
{
    vs_kv_resv *a = reserve_ok(g_pool, 4);
    vs_kv_row *r = row_ok(a);
    grow(r, 1, 5); /* 2 pages */
    ck_assert_int_eq(vs_kv_row_reserve_tokens(r, 1, VS_KV_ALL_HEADS, 4, &(vs_err){0}), VS_OK); /* room for 9: 3 */
    const vs_rt_kv_head *l = &vs_kv_row_heads(r)[1];
    ck_assert_int_eq(l->n_pages, 3);
    vs_kv_row_resize(r, 1, VS_KV_ALL_HEADS, 6);
    ck_assert_int_eq(l->n_tokens, 6);
    ck_assert_int_eq(l->n_pages, 2);
    ck_assert_uint_eq(stats_of(g_pool).pages_used, 2);
    ck_assert_uint_eq(stats_of(g_pool).pages_reserved, 2);
    vs_kv_row_resize(r, 1, VS_KV_ALL_HEADS, 8); /* a full second page: no page is drawn or given back */
    ck_assert_int_eq(l->n_pages, 2);
    ck_assert_uint_eq(stats_of(g_pool).pages_used, 2);
    vs_kv_release(a);
    assert_all_pages_drawable_once(g_pool, POOL_PAGES);
}
END_TEST

START_TEST(resize_to_zero_tokens_returns_every_page_of_the_layer)
{
    vs_kv_resv *a = reserve_ok(g_pool, 3);
    vs_kv_row *r = row_ok(a);
    grow(r, 0, 3 * PT);
    vs_kv_row_resize(r, 0, VS_KV_ALL_HEADS, 0);
    ck_assert_int_eq(vs_kv_row_tokens(r, 0, 0), 0);
    ck_assert_int_eq(vs_kv_row_heads(r)[0].n_pages, 0);
    vs_kv_stats s = stats_of(g_pool);
    ck_assert_uint_eq(s.pages_used, 0);
    ck_assert_uint_eq(s.pages_reserved, 3);
    vs_kv_release(a);
    ck_assert_uint_eq(stats_of(g_pool).pages_reserved, 0);
}
END_TEST

/* Run only when tests fork: abort() ends the test's process. */
START_TEST(resize_past_the_layers_room_aborts)
{
    vs_kv_resv *a = reserve_ok(g_pool, 2);
    vs_kv_row *r = row_ok(a);
    grow(r, 0, 5); /* 2 pages: room for 2 * PT */
    vs_kv_row_resize(r, 0, VS_KV_ALL_HEADS, 2 * PT + 1);
    vs_kv_release(a); /* reached only if resize accepted it: no signal, a fail */
}
END_TEST

/* The element size is part of the geometry: BF16 pages (2 bytes) are half the FP32 ones, and any
 * other size is refused with a message naming the allowed ones. */
START_TEST(page_bytes_follow_the_element_size_and_other_sizes_are_refused)
{
    vs_kv_geometry g = GEOM(PT, LAYERS, KV_DIM);
    ck_assert_uint_eq(vs_kv_page_bytes(g), PAGE_BYTES);
    g.elem_bytes = 2;
    ck_assert_uint_eq(vs_kv_page_bytes(g) * 2, PAGE_BYTES);
    vs_err err = {0};
    vs_kv_pool *pool = NULL;
    ck_assert_int_eq(vs_kv_pool_init(5 * PAGE_BYTES / 2, g, NULL, &pool, &err), VS_OK);
    vs_kv_stats s = stats_of(pool);
    ck_assert_uint_eq(s.page_bytes, PAGE_BYTES / 2);
    ck_assert_uint_eq(s.elem_bytes, 2);
    ck_assert_int_eq(vs_kv_pool_elem_bytes(pool), 2);
    ck_assert_uint_eq(s.pages_total, 5);
    vs_kv_pool_free(pool);
    g.elem_bytes = 3;
    ck_assert_int_eq(vs_kv_pool_init(PAGE_BYTES, g, NULL, &pool, &err), VS_ERR_INVALID);
    ck_assert_ptr_null(pool);
    ck_assert_msg(strstr(err.msg, "3 bytes") && strstr(err.msg, "BF16"), "message: %s", err.msg);
}
END_TEST

/* ---- per-head pages -------------------------------------------------------------------------- */

#define HEADS2 2
#define HD2 4 /* floats per token of one head */
#define PAGE2_BYTES ((size_t)2 * PT * HD2 * sizeof(float))

static vs_kv_pool *two_head_pool(size_t pages)
{
    vs_err err = {0};
    vs_kv_pool *pool = NULL;
    vs_kv_geometry g = {PT, LAYERS, HEADS2, HD2, MAX_TOKENS, 4};
    ck_assert_msg(vs_kv_pool_init(pages * PAGE2_BYTES, g, NULL, &pool, &err) == VS_OK, "%s", err.msg);
    return pool;
}

START_TEST(a_page_holds_one_head_and_a_few_token_head_holds_few_pages)
{
    vs_kv_pool *pool = two_head_pool(12);
    vs_kv_stats st = stats_of(pool);
    ck_assert_uint_eq(st.page_bytes, PAGE2_BYTES);
    ck_assert_uint_eq(st.pages_total, 12);
    ck_assert_int_eq(vs_kv_pool_heads(pool), HEADS2);
    vs_kv_resv *a = reserve_ok(pool, 8);
    vs_kv_row *r = row_ok(a);
    vs_err err = {0};
    /* layer 1: head 0 gets 3 pages of tokens, head 1 one token */
    ck_assert_int_eq(vs_kv_row_reserve_tokens(r, 1, 0, 2 * PT + 1, &err), VS_OK);
    ck_assert_int_eq(vs_kv_row_reserve_tokens(r, 1, 1, 1, &err), VS_OK);
    vs_kv_row_commit(r, 1, 0, 2 * PT + 1);
    vs_kv_row_commit(r, 1, 1, 1);
    const vs_rt_kv_head *h0 = &vs_kv_row_heads(r)[1 * HEADS2 + 0], *h1 = &vs_kv_row_heads(r)[1 * HEADS2 + 1];
    ck_assert_int_eq(h0->n_pages, 3);
    ck_assert_int_eq(h1->n_pages, 1);
    ck_assert_int_eq(vs_kv_row_tokens(r, 1, 0), 2 * PT + 1);
    ck_assert_int_eq(vs_kv_row_tokens(r, 1, 1), 1);
    ck_assert_int_eq(vs_kv_row_tokens(r, 0, 0), 0);
    ck_assert_uint_eq(vs_kv_row_pages(r), 4);
    st = stats_of(pool);
    ck_assert_uint_eq(st.pages_used, 4);
    ck_assert_uint_eq(st.pages_reserved, 4);
    /* a head's page is K of PT slots, then V of PT slots, head_dim floats each */
    vs_rt_kv_view v = {vs_kv_pool_base(pool), PT, HD2};
    for (int slot = 0; slot < 2 * PT + 1; slot++)
        for (int kv = 0; kv < 2; kv++)
            ck_assert_int_eq(vs_rt_kv_offset(&v, h0, slot, kv),
                             (long)((h0->pages[slot / PT] * 2 + kv) * PT + slot % PT) * HD2);
    /* every page differs, across heads too */
    for (int i = 0; i < 3; i++)
        ck_assert_int_ne(h0->pages[i], h1->pages[0]);
    /* every head at once: PT more tokens each, one more page each */
    ck_assert_int_eq(vs_kv_row_reserve_tokens(r, 1, VS_KV_ALL_HEADS, PT, &err), VS_OK);
    ck_assert_int_eq(h0->n_pages, 4); /* 13 tokens: 4 pages */
    ck_assert_int_eq(h1->n_pages, 2); /* 5 tokens: 2 pages */
    ck_assert_uint_eq(stats_of(pool).pages_used, 6);
    /* the heads shrink separately */
    vs_kv_row_resize(r, 1, 0, 2);
    ck_assert_int_eq(h0->n_pages, 1);
    ck_assert_int_eq(h1->n_pages, 2);
    ck_assert_int_eq(vs_kv_row_tokens(r, 1, 1), 1);
    ck_assert_uint_eq(stats_of(pool).pages_used, 3);
    ck_assert_uint_eq(stats_of(pool).pages_reserved, 5);
    vs_kv_release(a);
    st = stats_of(pool);
    ck_assert_uint_eq(st.pages_free, st.pages_total);
    ck_assert_uint_eq(st.pages_reserved, 0);
    ck_assert_uint_eq(st.reservations, 0);
    vs_kv_pool_free(pool);
}
END_TEST

START_TEST(reserving_every_head_beyond_the_reservation_draws_nothing)
{
    vs_kv_pool *pool = two_head_pool(12);
    vs_kv_resv *a = reserve_ok(pool, 3);
    vs_kv_row *r = row_ok(a);
    vs_err err = {0};
    /* 2 pages per head = 4 > 3: refused as a whole */
    ck_assert_int_eq(vs_kv_row_reserve_tokens(r, 0, VS_KV_ALL_HEADS, PT + 1, &err), VS_ERR_KV_FULL);
    ck_assert_ptr_nonnull(strstr(err.msg, "reservation"));
    ck_assert_uint_eq(vs_kv_row_pages(r), 0);
    ck_assert_uint_eq(stats_of(pool).pages_used, 0);
    ck_assert_int_eq(vs_kv_row_reserve_tokens(r, 0, VS_KV_ALL_HEADS, PT, &err), VS_OK);
    ck_assert_uint_eq(vs_kv_row_pages(r), 2);
    vs_kv_release(a);
    vs_kv_pool_free(pool);
}
END_TEST

START_TEST(a_head_outside_the_layer_aborts)
{
    vs_kv_pool *pool = two_head_pool(4);
    vs_kv_resv *a = reserve_ok(pool, 2);
    vs_kv_row *r = row_ok(a);
    vs_kv_row_commit(r, 0, HEADS2, 0); /* aborts */
}
END_TEST

static Suite *kvpool_suite(int forking)
{
    Suite *s = suite_create("kvpool");

    TCase *init = tcase_create("init");
    tcase_add_checked_fixture(init, setup, teardown);
    tcase_add_test(init, init_carves_floor_of_bytes_over_page_bytes);
    tcase_add_test(init, pages_for_tokens_rounds_up_to_whole_pages);
    tcase_add_test(init, init_rejects_invalid_sizes_with_a_message);
    tcase_add_test(init, page_bytes_follow_the_element_size_and_other_sizes_are_refused);
    tcase_add_test(init, init_takes_the_arena_from_the_given_allocator);
    tcase_add_test(init, init_reports_nomem_when_the_allocator_fails);
    suite_add_tcase(s, init);

    TCase *resv = tcase_create("reserve");
    tcase_add_checked_fixture(resv, setup, teardown);
    tcase_add_test(resv, reserve_within_free_pages_returns_ok_and_counts_the_promise);
    tcase_add_test(resv, reserve_when_pool_full_returns_later);
    tcase_add_test(resv, reserve_when_pages_are_drawn_by_others_returns_later);
    tcase_add_test(resv, reserve_more_than_the_pool_returns_never);
    tcase_add_test(resv, reserve_tokens_beyond_the_reservation_returns_kv_full);
    tcase_add_test(resv, reserve_tokens_makes_room_without_changing_the_count);
    suite_add_tcase(s, resv);

    TCase *rel = tcase_create("release");
    tcase_add_checked_fixture(rel, setup, teardown);
    tcase_add_test(rel, release_returns_every_page_exactly_once);
    tcase_add_test(rel, release_of_null_changes_nothing);
    tcase_add_test(rel, interleaved_rows_keep_their_data_and_share_no_page);
    suite_add_tcase(s, rel);

    TCase *heads = tcase_create("heads");
    tcase_add_test(heads, a_page_holds_one_head_and_a_few_token_head_holds_few_pages);
    tcase_add_test(heads, reserving_every_head_beyond_the_reservation_draws_nothing);
    if (forking)
        tcase_add_test_raise_signal(heads, a_head_outside_the_layer_aborts, SIGABRT);
    suite_add_tcase(s, heads);

    TCase *cmp = tcase_create("resize");
    tcase_add_checked_fixture(cmp, setup, teardown);
    tcase_add_test(cmp, resize_down_returns_pages_to_the_job_and_touches_no_memory);
    tcase_add_test(cmp, resize_up_within_the_reserved_room_keeps_its_pages);
    tcase_add_test(cmp, resize_to_zero_tokens_returns_every_page_of_the_layer);
    if (forking)
        tcase_add_test_raise_signal(cmp, resize_past_the_layers_room_aborts, SIGABRT);
    suite_add_tcase(s, cmp);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    const char *fork_env = getenv("CK_FORK");
    int forking = !(fork_env && strcmp(fork_env, "no") == 0);
    SRunner *sr = srunner_create(kvpool_suite(forking));
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
