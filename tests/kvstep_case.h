/* tests/kvstep_case.h — the KV step's compression, driven through its hooks on any backend.
 *
 * kvstep_run(be) plays the forward pass of four rows (snapkv, sliding and pyramidkv at 0.3; the
 * third keeps 54 of 57 tokens in layer 0, so a head keeps new tokens in their own slots; the
 * fourth a capacity table whose heads keep different counts, one head of a layer keeping all while
 * another compresses) through the scales of a small synthetic model: before_attn, then the
 * "attention" (the test itself writes the new K and V of storing rows into each head's pages, as
 * the backend's attention op does), then after_attn. qkv and the pages live in the backend's
 * memory. The test keeps its own model of each (row, layer, head)'s cache as a list of token ids,
 * recomputes the window scores naively and asks the policy for its selection; after every layer
 * each head's pages must hold, slot by slot, exactly the K and V of the tokens that model says,
 * and exactly as many pages as its tokens need. kvstep_peak_is_exact(be) runs the unequal row
 * alone in a reservation of its simulated peak (it must fit) and of one page less (it must run
 * out). Included by check_kvstep.c (CPU) and check_cuda.c (device pages, FP32 and BF16). On
 * BF16 pages (be->kv_elem_bytes 2) a cached K or V is the BF16 rounding of its value, so the
 * model scores cached candidates with rounded keys (the new ones come from qkv, FP32) and each
 * slot must hold exactly the rounded value: staging widens and re-rounds without changing it. */
#ifndef VS_TESTS_KVSTEP_CASE_H
#define VS_TESTS_KVSTEP_CASE_H

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/policy.h"
#include "kvcache/pool.h"
#include "kvcache/step.h"
#include "runtime/backend.h"

enum { KS_DEPTH = 2, KS_HEADS = 2, KS_HD = 4, KS_C = KS_HEADS * KS_HD, KS_SCALES = 5, KS_PT = 4,
       KS_ROWS = 4 };

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

/* v rounded to the nearest BF16, ties to even (finite v) */
static inline float bf16_round(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    u &= 0xFFFF0000u;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* v as the backend's KV pages hold it. */
static float ks_stored(const vs_rt_backend *be, float v)
{
    return be->kv_elem_bytes == 2 ? bf16_round(v) : v;
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

/* Capacities per (scale, layer, head) of the unequal row: layer 0 keeps 16 in head 0 and all in
 * head 1; layer 1 keeps 40 and 16 (scale 2 holds 21 tokens: head 0 of layer 1 keeps all there). */
static vs_kv_policy *ks_unequal_policy(const vs_rt_config *c)
{
    int32_t caps[KS_SCALES * KS_DEPTH * KS_HEADS];
    static const int32_t per_layer[KS_DEPTH][KS_HEADS] = {{16, VS_KV_KEEP_ALL}, {40, 16}};
    for (int s = 0; s < KS_SCALES; s++)
        for (int l = 0; l < KS_DEPTH; l++)
            for (int h = 0; h < KS_HEADS; h++)
                caps[(s * KS_DEPTH + l) * KS_HEADS + h] = per_layer[l][h];
    vs_kv_policy *p = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_kv_policy_new_caps(c, VS_KV_POLICY_SNAPKV, caps, &p, &err) == VS_OK, "%s",
                  err.msg);
    return p;
}

typedef struct {
    int compressed;   /* (row, layer, scale)s where some head compressed */
    int mixed;        /* ... where another head of the same layer kept every token */
    int new_in_place; /* new tokens kept in the slot of their own index */
} ks_counts;

/* Drives n_rows rows under pol[] through every scale in one reservation of Σ peak pages + delta;
 * returns the first hook's failure (then the pages are not checked further), VS_OK otherwise. */
static vs_status kvstep_drive(vs_rt_backend *be, vs_kv_policy *const *pol, int n_rows, long delta,
                              ks_counts *cnt, vs_err *err)
{
    const vs_rt_config c = ks_cfg();
    const int L = c.scale_offset[KS_SCALES], H = KS_HEADS;
    vs_status st = VS_OK;
    vs_kv_allocator al = {be, vs_rt_backend_alloc_raw, vs_rt_backend_free_raw};
    vs_kv_pool *pool = NULL;
    vs_kv_geometry geo = vs_kv_geometry_of(&c, KS_PT, be->kv_elem_bytes);
    size_t page_bytes = vs_kv_page_bytes(geo), page_floats = 2 * KS_PT * KS_HD;
    ck_assert_uint_eq(page_bytes, page_floats * (size_t)be->kv_elem_bytes);
    ck_assert_msg(vs_kv_pool_init(256 * page_bytes, geo,
                                  be->host_memory ? NULL : &al, &pool, err) == VS_OK,
                  "%s", err->msg);
    ck_assert_uint_eq(vs_kv_pool_heads(pool), KS_HEADS);
    long need = delta;
    for (int r = 0; r < n_rows; r++)
        need += (long)vs_kv_policy_peak_pages_per_row(pol[r], KS_PT);
    vs_kv_resv *resv = NULL;
    ck_assert_int_eq(vs_kv_reserve(pool, (size_t)need, &resv), VS_KV_OK);
    vs_kv_row *rows[KS_ROWS];
    for (int r = 0; r < n_rows; r++)
        ck_assert(vs_kv_row_new(resv, &rows[r], err) == VS_OK);

    float *scratch = malloc(vs_kv_step_scratch_floats(&c, KS_PT) * sizeof(float));
    vs_rt_kv_plan *plans = malloc(vs_kv_step_jobs(&c, n_rows) * sizeof *plans);
    vs_rt_kv_job *jobs = malloc(vs_kv_step_jobs(&c, n_rows) * sizeof *jobs);
    int P = c.patch_nums[KS_SCALES - 1];
    size_t qkv_floats = (size_t)n_rows * P * P * 3 * KS_C;
    float *qkv_host = malloc(qkv_floats * sizeof(float));
    float *qkv = be->host_memory ? qkv_host : vs_rt_backend_alloc_raw(be, qkv_floats * sizeof(float));
    float *page_host = malloc(page_floats * sizeof(float));
    /* the test's model of each cache: token ids per (row, layer, head, slot) */
    int32_t *ids = malloc((size_t)n_rows * KS_DEPTH * KS_HEADS * L * sizeof(int32_t));
    int count[KS_ROWS][KS_DEPTH][KS_HEADS] = {{{0}}};
    float scores[121], tmp[4 * 121];
    int32_t keep[121];
    ck_assert(scratch && plans && jobs && qkv_host && qkv && page_host && ids);
#define IDS(r, l, h) (ids + (((size_t)(r) * KS_DEPTH + (l)) * KS_HEADS + (h)) * L)

    int scale_tab[KS_ROWS];
    vs_kv_step ks = {.rows = rows,
                     .scale = scale_tab,
                     .policy = (const vs_kv_policy *const *)pol,
                     .n_rows = n_rows,
                     .cfg = &c,
                     .attn_scale = 1.0f,
                     .be = be,
                     .page_tokens = KS_PT,
                     .scratch = scratch,
                     .plans = plans,
                     .jobs = jobs};
    vs_rt_hooks hooks = vs_kv_step_hooks(&ks);
    vs_rt_kv_view view = {vs_kv_pool_base(pool), KS_PT, KS_HD};
    for (int s = 0; s < KS_SCALES && st == VS_OK; s++) {
        int p2 = c.patch_nums[s] * c.patch_nums[s], off = c.scale_offset[s];
        vs_rt_row brow[KS_ROWS];
        int32_t tok_row[KS_ROWS * 64];
        uint8_t store[KS_ROWS];
        for (int r = 0; r < n_rows; r++) {
            scale_tab[r] = s;
            brow[r] = (vs_rt_row){r * p2, p2, vs_kv_row_heads(rows[r])};
            for (int t = 0; t < p2; t++)
                tok_row[r * p2 + t] = r;
        }
        vs_rt_batch b = {n_rows, n_rows * p2, brow, tok_row, vs_kv_pool_base(pool), KS_PT,
                         KS_DEPTH, store, NULL};
        for (int l = 0; l < KS_DEPTH && st == VS_OK; l++) {
            for (int r = 0; r < n_rows; r++)
                for (int t = 0; t < p2; t++)
                    for (int kv = -1; kv < 2; kv++)
                        for (int d = 0; d < KS_C; d++)
                            qkv_host[((size_t)(r * p2 + t) * 3 + (size_t)(kv + 1)) * KS_C + d] =
                                ks_value(r, l, off + t, kv, d);
            if (!be->host_memory)
                be->ops->upload(be, qkv, qkv_host, (size_t)n_rows * p2 * 3 * KS_C * sizeof(float));
            memset(store, 1, sizeof store);
            if ((st = hooks.before_attn(hooks.ctx, l, &b, err)) != VS_OK)
                break;
            /* the attention's part: storing rows get their new K,V in each head's slots count.. */
            for (int r = 0; r < n_rows; r++) {
                if (!store[r])
                    continue;
                for (int h = 0; h < H; h++) {
                    const vs_rt_kv_head *kh = &vs_kv_row_heads(rows[r])[l * H + h];
                    for (int t = 0; t < p2; t++)
                        for (int kv = 0; kv < 2; kv++)
                            vs_rt_backend_kv_upload(
                                be, view.base,
                                (size_t)vs_rt_kv_offset(&view, kh, count[r][l][h] + t, kv),
                                qkv_host + ((size_t)(r * p2 + t) * 3 + (size_t)(kv + 1)) * KS_C +
                                    h * KS_HD,
                                KS_HD);
                }
            }
            /* the model: what each head of each row keeps after this layer */
            for (int r = 0; r < n_rows; r++) {
                int caps[KS_HEADS], any = 0, all = 0;
                for (int h = 0; h < H; h++) {
                    int n = count[r][l][h] + p2;
                    caps[h] = s == KS_SCALES - 1 ? 0 : vs_kv_policy_capacity(pol[r], l, h, s, n);
                    any |= caps[h] < n;
                    all |= caps[h] >= n;
                }
                ck_assert_int_eq(store[r], !any);
                cnt->compressed += any && s < KS_SCALES - 1;
                cnt->mixed += any && all;
                int32_t win[VS_KV_WINDOW];
                for (int h = 0; h < H; h++) {
                    int hist = count[r][l][h], n = hist + p2, cap = caps[h];
                    if (cap >= n) {
                        for (int t = 0; t < p2; t++)
                            IDS(r, l, h)[hist + t] = off + t;
                        count[r][l][h] = n;
                        continue;
                    }
                    int nw = vs_kv_window(c.patch_nums[s], n, p2, win);
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
                        for (int d = 0; d < KS_HD; d++) {
                            float k = ks_value(r, l, cand[j], 0, h * KS_HD + d);
                            acc += qs[d] * (j < hist ? ks_stored(be, k) : k);
                        }
                        scores[j] = acc;
                    }
                    int kept = cap == 0 ? 0
                                        : vs_kv_policy_select_head(pol[r], l, h, c.patch_nums[s], n,
                                                                   p2, scores, cap, keep, tmp);
                    for (int i = 0; i < kept; i++) {
                        IDS(r, l, h)[i] = cand[keep[i]];
                        cnt->new_in_place += i >= hist && keep[i] == i;
                    }
                    count[r][l][h] = kept;
                }
            }
            if ((st = hooks.after_attn(hooks.ctx, l, &b, qkv, err)) != VS_OK)
                break;
            /* each head's pages hold exactly the model's tokens, and no more pages than they need */
            for (int r = 0; r < n_rows; r++)
                for (int h = 0; h < H; h++) {
                    const vs_rt_kv_head *kh = &vs_kv_row_heads(rows[r])[l * H + h];
                    int want = count[r][l][h];
                    ck_assert_int_eq(kh->n_tokens, want);
                    ck_assert_int_eq(vs_kv_row_tokens(rows[r], l, h), want);
                    ck_assert_int_eq(kh->n_pages, (want + KS_PT - 1) / KS_PT);
                    for (int pg = 0; pg < kh->n_pages; pg++) {
                        vs_rt_backend_kv_download(
                            be, page_host, view.base,
                            (size_t)vs_rt_kv_page_offset(KS_PT, KS_HD, kh->pages[pg], 0, 0),
                            page_floats);
                        for (int i = pg * KS_PT; i < want && i < (pg + 1) * KS_PT; i++)
                            for (int kv = 0; kv < 2; kv++)
                                for (int d = 0; d < KS_HD; d++) {
                                    int id = IDS(r, l, h)[i];
                                    float got = page_host[vs_rt_kv_page_offset(KS_PT, KS_HD, 0, i % KS_PT, kv) + d];
                                    float exp = ks_stored(be, ks_value(r, l, id, kv, h * KS_HD + d));
                                    ck_assert_msg(got == exp,
                                                  "scale %d row %d layer %d head %d slot %d kv %d "
                                                  "float %d: %g, want token %d's %g",
                                                  s, r, l, h, i, kv, d, (double)got, id, (double)exp);
                                }
                    }
                }
        }
    }
    if (st == VS_OK) { /* the last scale gave every page back */
        vs_kv_stats ps;
        vs_kv_pool_stats(pool, &ps);
        ck_assert_uint_eq(ps.pages_used, 0);
        for (int r = 0; r < n_rows; r++)
            ck_assert_uint_eq(vs_kv_row_pages(rows[r]), 0);
    }
#undef IDS
    vs_kv_release(resv);
    vs_kv_pool_free(pool);
    if (!be->host_memory)
        vs_rt_backend_free_raw(be, qkv);
    free(qkv_host);
    free(page_host);
    free(ids);
    free(scratch);
    free(plans);
    free(jobs);
    return st;
}

static void kvstep_run(vs_rt_backend *be)
{
    const vs_rt_config c = ks_cfg();
    vs_err err = {0};
    vs_kv_policy *pol[KS_ROWS] = {NULL, NULL, NULL, NULL};
    ck_assert_msg(vs_kv_policy_new(VS_KV_POLICY_SNAPKV, 0.3, &c, NULL, &pol[0], &err) == VS_OK, "%s",
                  err.msg);
    ck_assert_msg(vs_kv_policy_new(VS_KV_POLICY_SLIDING, 0.3, &c, NULL, &pol[1], &err) == VS_OK, "%s",
                  err.msg);
    ck_assert_msg(vs_kv_policy_new(VS_KV_POLICY_PYRAMIDKV, 0.3, &c, NULL, &pol[2], &err) == VS_OK,
                  "%s", err.msg);
    pol[3] = ks_unequal_policy(&c);
    ks_counts cnt = {0, 0, 0};
    vs_status st = kvstep_drive(be, pol, KS_ROWS, 0, &cnt, &err);
    ck_assert_msg(st == VS_OK, "%s", err.msg);
    /* the three budget rows compressed both layers at scale 3; the unequal row both layers at
     * scales 2 and 3, with a head keeping all beside one compressing in three of them; a new
     * token was kept in its own slot */
    ck_assert_int_eq(cnt.compressed, 3 * KS_DEPTH + 2 * KS_DEPTH);
    ck_assert_int_eq(cnt.mixed, 3);
    ck_assert_int_gt(cnt.new_in_place, 0);
    for (int r = 0; r < KS_ROWS; r++)
        vs_kv_policy_free(pol[r]);
}

/* The unequal row's simulated peak is exactly what it draws: it runs in that many pages and runs
 * out (VS_ERR_KV_FULL from a hook) in one page less. */
static void kvstep_peak_is_exact(vs_rt_backend *be)
{
    const vs_rt_config c = ks_cfg();
    vs_err err = {0};
    vs_kv_policy *pol[1] = {ks_unequal_policy(&c)};
    ks_counts cnt = {0, 0, 0};
    ck_assert_msg(kvstep_drive(be, pol, 1, 0, &cnt, &err) == VS_OK, "%s", err.msg);
    ck_assert_int_eq(kvstep_drive(be, pol, 1, -1, &cnt, &err), VS_ERR_KV_FULL);
    vs_kv_policy_free(pol[0]);
}

#endif
