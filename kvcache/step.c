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

/* Host scratch, in this order: scores [H][L]; select tmp [4L]; keep [H][L] (int32); query sum
 * [d]; probs [L]; staged pages in [pages(L)][2][pt][C]; staged pages out, the same; the row's qkv
 * [P²][3C]. pages(L) counts one page more than L needs (a page may be partly filled). */
static size_t page_floats(const vs_rt_config *c, int page_tokens)
{
    return 2 * (size_t)page_tokens * (size_t)c->embed_dim;
}

static size_t staged_pages(const vs_rt_config *c, int page_tokens)
{
    return (size_t)c->scale_offset[c->n_scales] / (size_t)page_tokens + 2;
}

size_t vs_kv_step_scratch_floats(const vs_rt_config *c, int page_tokens)
{
    size_t L = (size_t)c->scale_offset[c->n_scales], P = (size_t)c->patch_nums[c->n_scales - 1];
    size_t fixed = (size_t)c->num_heads * L * 2 + 4 * L + (size_t)c->head_dim + L;
    return fixed + 2 * staged_pages(c, page_tokens) * page_floats(c, page_tokens) +
           P * P * 3 * (size_t)c->embed_dim;
}

/* Where the scratch parts of one call sit. */
typedef struct {
    float *scores, *tmp, *qsum, *probs, *in, *out, *qkv;
    int32_t *keep;
} parts;

static parts parts_of(const vs_kv_step *s)
{
    const vs_rt_config *c = s->cfg;
    size_t L = (size_t)c->scale_offset[c->n_scales], pf = page_floats(c, s->page_tokens);
    parts p;
    p.scores = s->scratch;
    p.tmp = p.scores + (size_t)c->num_heads * L;
    p.keep = (int32_t *)(p.tmp + 4 * L);
    p.qsum = (float *)(p.keep + (size_t)c->num_heads * L);
    p.probs = p.qsum + c->head_dim;
    p.in = p.probs + L;
    p.out = p.in + staged_pages(c, s->page_tokens) * pf;
    p.qkv = p.out + staged_pages(c, s->page_tokens) * pf;
    return p;
}

/* Float offset of page `i` of a layer in the arena. */
static size_t page_at(const vs_kv_step *s, const vs_rt_kv_layer *l, int i)
{
    return (size_t)vs_rt_kv_page_offset(s->page_tokens, s->cfg->embed_dim, l->pages[i], 0, 0);
}

/* Float offset of token slot j (K: kv 0, V: kv 1) in staged pages, which sit in token order. */
static size_t staged_at(const vs_kv_step *s, int j, int kv)
{
    int pt = s->page_tokens;
    return (size_t)vs_rt_kv_page_offset(pt, s->cfg->embed_dim, j / pt, j % pt, kv);
}

/* Copies a row's cached pages of `layer` and its new tokens' qkv to the host scratch (a memcpy on
 * host-memory backends, a device download otherwise): compression reads only the copies. */
static void stage_in(const vs_kv_step *s, const parts *p, const vs_rt_batch *b, const vs_rt_row *row,
                     const vs_rt_kv_layer *l, const float *qkv)
{
    const vs_rt_config *c = s->cfg;
    size_t pf = page_floats(c, s->page_tokens), C = (size_t)c->embed_dim;
    int pages = (l->n_tokens + s->page_tokens - 1) / s->page_tokens;
    for (int i = 0; i < pages; i++)
        s->be->ops->download(s->be, p->in + (size_t)i * pf, b->kv_base + page_at(s, l, i),
                             pf * sizeof(float));
    s->be->ops->download(s->be, p->qkv, qkv + (size_t)row->tok_start * 3 * C,
                         (size_t)row->n_new * 3 * C * sizeof(float));
}

/* Key (kv 0) or value (kv 1) of candidate j of a staged row: cached slots from the staged pages,
 * then the step's new tokens from the staged qkv. */
static const float *cand_ptr(const vs_kv_step *s, const parts *p, int hist, int j, int kv)
{
    size_t C = (size_t)s->cfg->embed_dim;
    if (j < hist)
        return p->in + staged_at(s, j, kv);
    return p->qkv + (size_t)(j - hist) * 3 * C + (size_t)(1 + kv) * C;
}

/* The flow of `layer` of row r this step when it holds `held` tokens (vs_kv_policy_flow: the
 * description the peak-pages simulation follows too). */
static vs_kv_flow row_flow(const vs_kv_step *s, int r, int layer, int held, int n_new)
{
    const vs_kv_policy *pol = s->policy ? s->policy[r] : NULL;
    return vs_kv_policy_flow(pol, s->cfg->n_scales, layer, s->scale[r], held, n_new);
}

/* Rows that keep every token get pages for the new ones, which the attention writes; rows that
 * will be compressed or dropped leave them in qkv (no pages: that is what makes their peak small). */
static vs_status before_attn(void *ctx, int layer, const vs_rt_batch *b, vs_err *err)
{
    vs_kv_step *s = ctx;
    double t0 = now_s();
    vs_status st = VS_OK;
    for (int r = 0; r < s->n_rows && st == VS_OK; r++) {
        if (row_flow(s, r, layer, vs_kv_row_tokens(s->rows[r], layer), b->rows[r].n_new).op != VS_KV_FLOW_STORE)
            b->kv_store[r] = 0;
        else
            st = vs_kv_row_reserve_tokens(s->rows[r], layer, b->rows[r].n_new, err);
    }
    s->seconds += now_s() - t0;
    return st;
}

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Attention statistics of one row and layer (the softmax the backend just computed, recomputed
 * here on the host for every query of the row), from the staged copies, before the layer's
 * tokens change. */
static void accumulate_stats(vs_kv_step *s, const parts *p, int r, int layer, const vs_rt_row *row,
                             int hist)
{
    const vs_rt_config *c = s->cfg;
    int H = c->num_heads, d = c->head_dim, C = H * d, n = hist + row->n_new;
    float *pr = p->probs, *tmp = p->tmp;
    float *colsum = p->scores; /* [n]: Σ_q a_q of one head (the scores are free until compress) */
    int K = s->stats->top_history < hist ? s->stats->top_history : hist;
    double cur = 0, top = 0;
    for (int h = 0; h < H; h++) {
        double sq = 0; /* Σ_q |a_q|² */
        memset(colsum, 0, (size_t)n * sizeof *colsum);
        for (int q = 0; q < row->n_new; q++) {
            const float *qv = p->qkv + (size_t)q * 3 * C + (size_t)h * d;
            float mx = -INFINITY, sum = 0;
            for (int j = 0; j < n; j++) {
                const float *kv = cand_ptr(s, p, hist, j, 0) + (size_t)h * d;
                float acc = 0;
                for (int i = 0; i < d; i++)
                    acc += qv[i] * kv[i];
                pr[j] = acc * s->attn_scale;
                mx = pr[j] > mx ? pr[j] : mx;
            }
            for (int j = 0; j < n; j++) {
                pr[j] = expf(pr[j] - mx);
                sum += pr[j];
            }
            double cm = 0;
            for (int j = hist; j < n; j++)
                cm += pr[j] / sum;
            cur += cm;
            for (int j = 0; j < n; j++) {
                float a = pr[j] / sum;
                colsum[j] += a;
                sq += (double)a * a;
            }
            if (K > 0) {
                memcpy(tmp, pr, (size_t)hist * sizeof *tmp);
                qsort(tmp, (size_t)hist, sizeof *tmp, cmp_desc);
                double tm = 0;
                for (int j = 0; j < K; j++)
                    tm += tmp[j] / sum;
                top += tm;
            }
        }
        if (hist > 0 && s->stats->head_vert && sq > 0) {
            /* V = |mean_q a_q|² / mean_q |a_q|² (step.h) */
            double m2 = 0;
            for (int j = 0; j < n; j++) {
                double m = colsum[j] / row->n_new;
                m2 += m * m;
            }
            size_t at = (size_t)layer * H + h;
            s->stats->head_vert[at] += row->n_new * (m2 / (sq / row->n_new));
            s->stats->head_weight[at] += row->n_new;
        }
    }
    size_t at = (size_t)s->scale[r] * c->depth + layer;
    s->stats->cur_mass[at] += cur;
    s->stats->hist_mass[at] += top;
    s->stats->count[at] += (double)row->n_new * H;
}

/* Keeps `cap` of the layer's cached tokens plus the step's new ones, per head, from the staged
 * copies: the kept K and V are composed page by page on the host and written back over the
 * layer's pages (a memcpy, or an upload on a device backend). */
static vs_status compress(vs_kv_step *s, const parts *p, int r, int layer, const vs_rt_batch *b,
                          int cap, vs_err *err)
{
    const vs_rt_config *c = s->cfg;
    const vs_kv_policy *pol = s->policy[r];
    const vs_rt_row *row = &b->rows[r];
    int H = c->num_heads, d = c->head_dim, C = H * d, pt = s->page_tokens;
    int hist = vs_kv_row_tokens(s->rows[r], layer), n = hist + row->n_new;
    int side = c->patch_nums[s->scale[r]];
    int need_scores = vs_kv_policy_def_of(vs_kv_policy_kind_of(pol))->needs_scores;
    int32_t win[VS_KV_WINDOW];
    int nw = vs_kv_window(side, n, row->n_new, win);
    int kept = 0;
    for (int h = 0; h < H; h++) {
        float *sc = p->scores + (size_t)h * n;
        if (need_scores) {
            /* Σ_w q_w·k_j = (Σ_w q_w)·k_j; a window slot before this scale uses its first query */
            memset(p->qsum, 0, (size_t)d * sizeof *p->qsum);
            for (int w = 0; w < nw; w++) {
                int qi = win[w] - hist;
                qi = qi < 0 ? 0 : qi;
                const float *qv = p->qkv + (size_t)qi * 3 * C + (size_t)h * d;
                for (int i = 0; i < d; i++)
                    p->qsum[i] += qv[i];
            }
            for (int j = 0; j < n; j++) {
                const float *kv = cand_ptr(s, p, hist, j, 0) + (size_t)h * d;
                float acc = 0;
                for (int i = 0; i < d; i++)
                    acc += p->qsum[i] * kv[i];
                sc[j] = acc;
            }
        }
        kept = vs_kv_policy_select_head(pol, layer, h, side, n, row->n_new, need_scores ? sc : NULL, cap,
                                        p->keep + (size_t)h * cap, p->tmp);
    }
    /* compose the kept tokens into whole pages: slot i of head h = candidate keep[h][i] */
    for (int h = 0; h < H; h++)
        for (int i = 0; i < kept; i++) {
            int src = p->keep[(size_t)h * cap + i];
            for (int kv = 0; kv < 2; kv++)
                memcpy(p->out + staged_at(s, i, kv) + (size_t)h * d,
                       cand_ptr(s, p, hist, src, kv) + (size_t)h * d, (size_t)d * sizeof(float));
        }
    if (kept > hist) {
        vs_status st = vs_kv_row_reserve_tokens(s->rows[r], layer, kept - hist, err);
        if (st != VS_OK)
            return st;
    }
    vs_kv_row_resize(s->rows[r], layer, kept);
    const vs_rt_kv_layer *l = &vs_kv_row_layers(s->rows[r])[layer];
    size_t pf = page_floats(c, pt);
    for (int i = 0; i < l->n_pages; i++)
        s->be->ops->upload(s->be, b->kv_base + page_at(s, l, i), p->out + (size_t)i * pf,
                           pf * sizeof(float));
    return VS_OK;
}

static vs_status after_attn(void *ctx, int layer, const vs_rt_batch *b, const float *qkv, vs_err *err)
{
    vs_kv_step *s = ctx;
    double t0 = now_s();
    vs_status st = VS_OK;
    parts p = parts_of(s);
    for (int r = 0; r < s->n_rows && st == VS_OK; r++) {
        const vs_rt_row *row = &b->rows[r];
        int hist = vs_kv_row_tokens(s->rows[r], layer);
        vs_kv_flow f = row_flow(s, r, layer, hist, row->n_new);
        if (b->kv_store[r])
            f.op = VS_KV_FLOW_STORE; /* before_attn gave it pages for the new tokens */
        if (s->stats || f.op == VS_KV_FLOW_COMPRESS)
            stage_in(s, &p, b, row, &vs_kv_row_layers(s->rows[r])[layer], qkv);
        if (s->stats)
            accumulate_stats(s, &p, r, layer, row, hist);
        if (f.op == VS_KV_FLOW_STORE)
            vs_kv_row_commit(s->rows[r], layer, row->n_new);
        else if (f.op == VS_KV_FLOW_RELEASE)
            vs_kv_row_resize(s->rows[r], layer, 0); /* the last scale: never read again */
        else
            st = compress(s, &p, r, layer, b, f.cap, err);
    }
    s->seconds += now_s() - t0;
    return st;
}

vs_rt_hooks vs_kv_step_hooks(vs_kv_step *s)
{
    vs_rt_hooks h = {s, before_attn, after_attn};
    return h;
}
