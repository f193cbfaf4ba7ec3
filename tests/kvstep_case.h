/* tests/kvstep_case.h — the KV step's compression, driven through its hooks on any backend.
 *
 * kvstep_run(be) plays the forward pass of three rows (snapkv, sliding and pyramidkv at 0.3; the
 * last keeps 54 of 57 tokens in layer 0, so a head keeps new tokens in their own slots) through
 * the scales of a small synthetic model: before_attn, then the "attention" (the test itself
 * writes the new K and V of storing rows into their pages, as the backend's attention op does),
 * then after_attn. qkv and the pages live in the backend's memory. The test keeps its own model of
 * each (row, layer, head)'s cache as a list of token ids, recomputes the window scores naively and
 * asks the policy for its selection; after every layer the pages must hold, slot by slot and head
 * by head, exactly the K and V of the tokens that model says. Included by check_kvstep.c (CPU) and
 * check_cuda.c (device pages). */
#ifndef VS_TESTS_KVSTEP_CASE_H
#define VS_TESTS_KVSTEP_CASE_H

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/policy.h"
#include "kvcache/pool.h"
#include "kvcache/step.h"
#include "runtime/backend.h"

enum { KS_DEPTH = 2, KS_HEADS = 2, KS_HD = 4, KS_C = KS_HEADS * KS_HD, KS_SCALES = 5, KS_PT = 4,
       KS_ROWS = 3 };

/* Value of float `d` of q (kv -1), k (0) or v (1) of token `tok` (absolute index in the image's
 * sequence) of a row and layer: distinct for every argument, exact in FP32. */
static float ks_value(int row, int layer, int tok, int kv, int d)
{
    unsigned h = (unsigned)(row * 7919 + layer * 104729 + tok * 31 + (kv + 1) * 977 + d * 13);
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    return (float)(int)(h % 2001u) / 1000.0f - 1.0f;
}

static vs_rt_config ks_cfg(void)
{
    vs_rt_config c;
    memset(&c, 0, sizeof c);
    static const int pn[KS_SCALES] = {1, 2, 4, 6, 8}; /* L = 121; 0.3 keeps 36 from scale 3 on */
    c.depth = KS_DEPTH;
    c.num_heads = KS_HEADS;
    c.head_dim = KS_HD;
    c.embed_dim = KS_C;
    c.n_scales = KS_SCALES;
    for (int s = 0; s < KS_SCALES; s++) {
        c.patch_nums[s] = pn[s];
        c.scale_offset[s + 1] = c.scale_offset[s] + pn[s] * pn[s];
    }
    return c;
}

static void kvstep_run(vs_rt_backend *be)
{
    const vs_rt_config c = ks_cfg();
    const int L = c.scale_offset[KS_SCALES];
    vs_err err = {0};
    vs_kv_policy *pol[KS_ROWS] = {NULL, NULL, NULL};
    ck_assert_msg(vs_kv_policy_new(VS_KV_POLICY_SNAPKV, 0.3, &c, NULL, &pol[0], &err) == VS_OK, "%s",
                  err.msg);
    ck_assert_msg(vs_kv_policy_new(VS_KV_POLICY_SLIDING, 0.3, &c, NULL, &pol[1], &err) == VS_OK, "%s",
                  err.msg);
    ck_assert_msg(vs_kv_policy_new(VS_KV_POLICY_PYRAMIDKV, 0.3, &c, NULL, &pol[2], &err) == VS_OK,
                  "%s", err.msg);
    vs_kv_allocator al = {be, vs_rt_backend_alloc_raw, vs_rt_backend_free_raw};
    vs_kv_pool *pool = NULL;
    size_t page_bytes = 2 * (size_t)KS_PT * KS_C * sizeof(float);
    ck_assert_msg(vs_kv_pool_init(64 * page_bytes, KS_PT, KS_DEPTH, KS_C, be->host_memory ? NULL : &al,
                                  &pool, &err) == VS_OK,
                  "%s", err.msg);
    size_t need = 0;
    for (int r = 0; r < KS_ROWS; r++)
        need += vs_kv_policy_peak_pages_per_row(pol[r], KS_PT);
    vs_kv_resv *resv = NULL;
    ck_assert_int_eq(vs_kv_reserve(pool, need, &resv), VS_KV_OK);
    vs_kv_row *rows[KS_ROWS];
    for (int r = 0; r < KS_ROWS; r++)
        ck_assert(vs_kv_row_new(resv, &rows[r], &err) == VS_OK);

    float *scratch = malloc(vs_kv_step_scratch_floats(&c, KS_PT) * sizeof(float));
    int P = c.patch_nums[KS_SCALES - 1];
    size_t qkv_floats = (size_t)KS_ROWS * P * P * 3 * KS_C;
    float *qkv_host = malloc(qkv_floats * sizeof(float));
    float *qkv = be->host_memory ? qkv_host : vs_rt_backend_alloc_raw(be, qkv_floats * sizeof(float));
    float *page_host = malloc(page_bytes);
    /* the test's model of each cache: token ids per (row, layer, head, slot) */
    int32_t *ids = malloc((size_t)KS_ROWS * KS_DEPTH * KS_HEADS * L * sizeof(int32_t));
    int count[KS_ROWS][KS_DEPTH] = {{0}};
    float scores[KS_HEADS * 121], tmp[4 * 121];
    int32_t keep[121];
    ck_assert(scratch && qkv_host && qkv && page_host && ids);
#define IDS(r, l, h) (ids + (((size_t)(r) * KS_DEPTH + (l)) * KS_HEADS + (h)) * L)

    int scale_tab[KS_ROWS];
    vs_kv_step ks = {.rows = rows,
                     .scale = scale_tab,
                     .policy = (const vs_kv_policy *const *)pol,
                     .n_rows = KS_ROWS,
                     .cfg = &c,
                     .attn_scale = 1.0f,
                     .be = be,
                     .page_tokens = KS_PT,
                     .scratch = scratch};
    vs_rt_hooks hooks = vs_kv_step_hooks(&ks);
    int compressed = 0, new_in_place = 0;
    for (int s = 0; s < KS_SCALES; s++) {
        int p2 = c.patch_nums[s] * c.patch_nums[s], off = c.scale_offset[s];
        vs_rt_row brow[KS_ROWS];
        int32_t tok_row[KS_ROWS * 64];
        uint8_t store[KS_ROWS];
        for (int r = 0; r < KS_ROWS; r++) {
            scale_tab[r] = s;
            brow[r] = (vs_rt_row){r * p2, p2, vs_kv_row_layers(rows[r])};
            for (int t = 0; t < p2; t++)
                tok_row[r * p2 + t] = r;
        }
        vs_rt_batch b = {KS_ROWS, KS_ROWS * p2, brow, tok_row, vs_kv_pool_base(pool), KS_PT,
                         KS_DEPTH, store, NULL};
        for (int l = 0; l < KS_DEPTH; l++) {
            for (int r = 0; r < KS_ROWS; r++)
                for (int t = 0; t < p2; t++)
                    for (int kv = -1; kv < 2; kv++)
                        for (int d = 0; d < KS_C; d++)
                            qkv_host[((size_t)(r * p2 + t) * 3 + (size_t)(kv + 1)) * KS_C + d] =
                                ks_value(r, l, off + t, kv, d);
            if (!be->host_memory)
                be->ops->upload(be, qkv, qkv_host, (size_t)KS_ROWS * p2 * 3 * KS_C * sizeof(float));
            memset(store, 1, sizeof store);
            ck_assert_msg(hooks.before_attn(hooks.ctx, l, &b, &err) == VS_OK, "%s", err.msg);
            /* the attention's part: storing rows get their new K,V in slots count.. */
            for (int r = 0; r < KS_ROWS; r++) {
                if (!store[r])
                    continue;
                const vs_rt_kv_layer *kl = &vs_kv_row_layers(rows[r])[l];
                vs_rt_kv_view view = {vs_kv_pool_base(pool), KS_PT, KS_C, NULL};
                for (int t = 0; t < p2; t++)
                    for (int kv = 0; kv < 2; kv++)
                        be->ops->upload(be, view.base + vs_rt_kv_offset(&view, kl, count[r][l] + t, kv),
                                        qkv_host + ((size_t)(r * p2 + t) * 3 + (size_t)(kv + 1)) * KS_C,
                                        KS_C * sizeof(float));
            }
            /* the model: what each row keeps after this layer */
            for (int r = 0; r < KS_ROWS; r++) {
                int hist = count[r][l], n = hist + p2;
                int cap = s == KS_SCALES - 1 ? 0 : vs_kv_policy_capacity(pol[r], l, s, n);
                ck_assert_int_eq(store[r], cap >= n);
                if (cap >= n) {
                    for (int h = 0; h < KS_HEADS; h++)
                        for (int t = 0; t < p2; t++)
                            IDS(r, l, h)[hist + t] = off + t;
                    count[r][l] = n;
                    continue;
                }
                int32_t win[VS_KV_WINDOW];
                int nw = vs_kv_window(c.patch_nums[s], n, p2, win), kept = 0;
                for (int h = 0; h < KS_HEADS; h++) {
                    float qs[KS_HD] = {0};
                    for (int w = 0; w < nw; w++) {
                        int q = win[w] - hist < 0 ? 0 : win[w] - hist;
                        for (int d = 0; d < KS_HD; d++)
                            qs[d] += ks_value(r, l, off + q, -1, h * KS_HD + d);
                    }
                    int32_t cand[121];
                    for (int j = 0; j < n; j++)
                        cand[j] = j < hist ? IDS(r, l, h)[j] : off + j - hist;
                    for (int j = 0; j < n; j++) {
                        /* a cached token's key is of the layer it was computed in: its own id */
                        float acc = 0;
                        for (int d = 0; d < KS_HD; d++)
                            acc += qs[d] * ks_value(r, l, cand[j], 0, h * KS_HD + d);
                        scores[h * n + j] = acc;
                    }
                    kept = cap == 0 ? 0
                                    : vs_kv_policy_select_head(pol[r], l, h, c.patch_nums[s], n, p2,
                                                               scores + h * n, cap, keep, tmp);
                    for (int i = 0; i < kept; i++) {
                        IDS(r, l, h)[i] = cand[keep[i]];
                        /* a new token (never in the pages) kept in the slot of its own index */
                        new_in_place += i >= hist && keep[i] == i;
                    }
                }
                compressed += cap > 0;
                count[r][l] = kept;
            }
            ck_assert_msg(hooks.after_attn(hooks.ctx, l, &b, qkv, &err) == VS_OK, "%s", err.msg);
            /* the pages hold exactly the model's tokens, head by head */
            for (int r = 0; r < KS_ROWS; r++) {
                const vs_rt_kv_layer *kl = &vs_kv_row_layers(rows[r])[l];
                ck_assert_int_eq(kl->n_tokens, count[r][l]);
                ck_assert_int_eq(kl->n_pages, (count[r][l] + KS_PT - 1) / KS_PT);
                for (int pg = 0; pg < kl->n_pages; pg++) {
                    be->ops->download(be, page_host,
                                      vs_kv_pool_base(pool) +
                                          vs_rt_kv_page_offset(KS_PT, KS_C, kl->pages[pg], 0, 0),
                                      page_bytes);
                    for (int i = pg * KS_PT; i < count[r][l] && i < (pg + 1) * KS_PT; i++)
                        for (int kv = 0; kv < 2; kv++)
                            for (int d = 0; d < KS_C; d++) {
                                int id = IDS(r, l, d / KS_HD)[i];
                                float got = page_host[vs_rt_kv_page_offset(KS_PT, KS_C, 0, i % KS_PT, kv) + d];
                                ck_assert_msg(got == ks_value(r, l, id, kv, d),
                                              "scale %d row %d layer %d slot %d kv %d float %d: "
                                              "%g, want token %d's %g",
                                              s, r, l, i, kv, d, (double)got, id,
                                              (double)ks_value(r, l, id, kv, d));
                            }
                }
            }
        }
    }
    /* every row compressed both layers at scale 3, a new token was kept in its own slot, and the
     * last scale gave every page back */
    ck_assert_int_eq(compressed, KS_ROWS * KS_DEPTH);
    ck_assert_int_gt(new_in_place, 0);
    vs_kv_stats st;
    vs_kv_pool_stats(pool, &st);
    ck_assert_uint_eq(st.pages_used, 0);
#undef IDS
    vs_kv_release(resv);
    vs_kv_pool_free(pool);
    if (!be->host_memory)
        vs_rt_backend_free_raw(be, qkv);
    free(qkv_host);
    free(page_host);
    free(ids);
    free(scratch);
    for (int r = 0; r < KS_ROWS; r++)
        vs_kv_policy_free(pol[r]);
}

#endif
