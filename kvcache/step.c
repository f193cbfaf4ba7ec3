/* kvcache/step.c — see step.h. */
#include "kvcache/step.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

size_t vs_kv_step_scratch_floats(const vs_rt_config *c)
{
    size_t L = (size_t)c->scale_offset[c->n_scales];
    /* scores [H][L] + select tmp 4L + keep [H][L] (int32) + query sum [d] + probs [L] */
    return (size_t)c->num_heads * L * 2 + 4 * L + (size_t)c->head_dim + L;
}

/* The capacity `layer` of row r keeps after this step when it then holds `tokens`: VS_KV_KEEP_ALL
 * (store everything), a smaller count (compress), or 0 at the last scale (drop the layer). */
static int row_capacity(const vs_kv_step *s, int r, int layer, int tokens)
{
    if (s->scale[r] == s->cfg->n_scales - 1)
        return 0;
    const vs_kv_policy *pol = s->policy ? s->policy[r] : NULL;
    return pol ? vs_kv_policy_capacity(pol, layer, s->scale[r], tokens) : VS_KV_KEEP_ALL;
}

/* Rows that keep every token get pages for the new ones, which the attention writes; rows that
 * will be compressed or dropped leave them in qkv (no pages: that is what makes their peak small). */
static vs_status before_attn(void *ctx, int layer, const vs_rt_batch *b, vs_err *err)
{
    vs_kv_step *s = ctx;
    double t0 = now_s();
    vs_status st = VS_OK;
    for (int r = 0; r < s->n_rows && st == VS_OK; r++) {
        int n = vs_kv_row_tokens(s->rows[r], layer) + b->rows[r].n_new;
        if (row_capacity(s, r, layer, n) < n)
            b->kv_store[r] = 0;
        else
            st = vs_kv_row_reserve_tokens(s->rows[r], layer, b->rows[r].n_new, err);
    }
    s->seconds += now_s() - t0;
    return st;
}

/* Key (kv 0) or value (kv 1) of candidate j of a row's layer: cached slots from the pages, then the
 * step's new tokens from qkv. */
static const float *cand_ptr(const vs_rt_batch *b, const vs_rt_row *row, const vs_rt_kv_layer *l,
                             const float *qkv, int C, int j, int kv)
{
    if (j < l->n_tokens) {
        vs_rt_kv_view view = {b->kv_base, b->page_tokens, C, NULL};
        return b->kv_base + vs_rt_kv_offset(&view, l, j, kv);
    }
    return qkv + (size_t)(row->tok_start + j - l->n_tokens) * 3 * C + (size_t)(1 + kv) * C;
}

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Attention statistics of one row and layer (the softmax the backend just computed, recomputed
 * here on the host for every query of the row), before the layer's tokens change. */
static void accumulate_stats(vs_kv_step *s, int r, int layer, const vs_rt_batch *b, const float *qkv)
{
    const vs_rt_config *c = s->cfg;
    const vs_rt_row *row = &b->rows[r];
    const vs_rt_kv_layer *l = &row->kv[layer];
    int H = c->num_heads, d = c->head_dim, C = H * d, hist = l->n_tokens, n = hist + row->n_new;
    float *p = s->scratch;
    float *tmp = p + n;
    int K = s->stats->top_history < hist ? s->stats->top_history : hist;
    double cur = 0, top = 0;
    for (int q = 0; q < row->n_new; q++)
        for (int h = 0; h < H; h++) {
            const float *qv = qkv + (size_t)(row->tok_start + q) * 3 * C + (size_t)h * d;
            float mx = -INFINITY, sum = 0;
            for (int j = 0; j < n; j++) {
                const float *kv = cand_ptr(b, row, l, qkv, C, j, 0) + (size_t)h * d;
                float acc = 0;
                for (int i = 0; i < d; i++)
                    acc += qv[i] * kv[i];
                p[j] = acc * s->attn_scale;
                mx = p[j] > mx ? p[j] : mx;
            }
            for (int j = 0; j < n; j++) {
                p[j] = expf(p[j] - mx);
                sum += p[j];
            }
            double cm = 0;
            for (int j = hist; j < n; j++)
                cm += p[j] / sum;
            cur += cm;
            if (K > 0) {
                memcpy(tmp, p, (size_t)hist * sizeof *tmp);
                qsort(tmp, (size_t)hist, sizeof *tmp, cmp_desc);
                double tm = 0;
                for (int j = 0; j < K; j++)
                    tm += tmp[j] / sum;
                top += tm;
            }
        }
    size_t at = (size_t)s->scale[r] * c->depth + layer;
    s->stats->cur_mass[at] += cur;
    s->stats->hist_mass[at] += top;
    s->stats->count[at] += (double)row->n_new * H;
}

/* Keeps `cap` of the layer's cached tokens plus the step's new ones (still in qkv), per head. */
static vs_status compress(vs_kv_step *s, int r, int layer, const vs_rt_batch *b, const float *qkv,
                          int cap, vs_err *err)
{
    const vs_rt_config *c = s->cfg;
    const vs_kv_policy *pol = s->policy[r];
    const vs_rt_row *row = &b->rows[r];
    const vs_rt_kv_layer *l = &row->kv[layer];
    int H = c->num_heads, d = c->head_dim, C = H * d, hist = l->n_tokens, n = hist + row->n_new;
    int side = c->patch_nums[s->scale[r]];
    size_t L = (size_t)c->scale_offset[c->n_scales];
    float *scores = s->scratch, *tmp = scores + (size_t)H * L;
    int32_t *keep = (int32_t *)(tmp + 4 * L);
    float *qsum = (float *)(keep + (size_t)H * L);
    vs_kv_policy_kind kind = vs_kv_policy_kind_of(pol);
    int need_scores = kind != VS_KV_POLICY_SLIDING && kind != VS_KV_POLICY_STREAMINGLLM;
    int32_t win[VS_KV_WINDOW];
    int nw = vs_kv_window(side, n, row->n_new, win);
    int kept = 0;
    for (int h = 0; h < H; h++) {
        float *sc = scores + (size_t)h * n;
        if (need_scores) {
            /* Σ_w q_w·k_j = (Σ_w q_w)·k_j; a window slot before this scale uses its first query */
            memset(qsum, 0, (size_t)d * sizeof *qsum);
            for (int w = 0; w < nw; w++) {
                int qi = win[w] - hist;
                qi = qi < 0 ? 0 : qi;
                const float *qv = qkv + (size_t)(row->tok_start + qi) * 3 * C + (size_t)h * d;
                for (int i = 0; i < d; i++)
                    qsum[i] += qv[i];
            }
            for (int j = 0; j < n; j++) {
                const float *kv = cand_ptr(b, row, l, qkv, C, j, 0) + (size_t)h * d;
                float acc = 0;
                for (int i = 0; i < d; i++)
                    acc += qsum[i] * kv[i];
                sc[j] = acc;
            }
        }
        kept = vs_kv_policy_select_head(pol, side, n, row->n_new, need_scores ? sc : NULL, cap,
                                        keep + (size_t)h * cap, tmp);
    }
    if (kept > hist) {
        vs_status st = vs_kv_row_reserve_tokens(s->rows[r], layer, kept - hist, err);
        if (st != VS_OK)
            return st;
    }
    const float *new_k = qkv + (size_t)row->tok_start * 3 * C + C;
    vs_kv_row_select(s->rows[r], layer, H, keep, kept, new_k, new_k + C, 3 * (size_t)C, row->n_new);
    return VS_OK;
}

static vs_status after_attn(void *ctx, int layer, const vs_rt_batch *b, const float *qkv, vs_err *err)
{
    vs_kv_step *s = ctx;
    const vs_rt_config *c = s->cfg;
    double t0 = now_s();
    vs_status st = VS_OK;
    for (int r = 0; r < s->n_rows && st == VS_OK; r++) {
        int n_new = b->rows[r].n_new;
        if (s->stats)
            accumulate_stats(s, r, layer, b, qkv);
        if (b->kv_store[r]) {
            vs_kv_row_commit(s->rows[r], layer, n_new);
            continue;
        }
        int n = vs_kv_row_tokens(s->rows[r], layer) + n_new;
        int cap = row_capacity(s, r, layer, n);
        if (cap == 0)
            vs_kv_row_compact(s->rows[r], layer, c->num_heads, NULL, 0); /* never read again */
        else
            st = compress(s, r, layer, b, qkv, cap, err);
    }
    s->seconds += now_s() - t0;
    return st;
}

vs_rt_hooks vs_kv_step_hooks(vs_kv_step *s)
{
    vs_rt_hooks h = {s, before_attn, after_attn};
    return h;
}
