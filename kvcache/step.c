/* kvcache/step.c — see step.h. */
#include "kvcache/step.h"

#include "common/clock.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Host scratch, in this order: scores [L]; select tmp [4L]; keep [L] (int32); held [H] (int32);
 * query sum [d]; probs [L]; staged pages in [H][pages(L)][2][pt][d]; staged pages out
 * [pages(L)][2][pt][d] (one head at a time); the row's qkv [P²][3C]. pages(L) counts one page more
 * than L needs (a page may be partly filled). */
static size_t page_floats(const vs_rt_config *c, int page_tokens)
{
    return 2 * (size_t)page_tokens * (size_t)c->head_dim;
}

static size_t staged_pages(const vs_rt_config *c, int page_tokens)
{
    return (size_t)c->scale_offset[c->n_scales] / (size_t)page_tokens + 2;
}

size_t vs_kv_step_scratch_floats(const vs_rt_config *c, int page_tokens)
{
    size_t L = (size_t)c->scale_offset[c->n_scales], P = (size_t)c->patch_nums[c->n_scales - 1];
    size_t H = (size_t)c->num_heads;
    size_t fixed = L + 4 * L + L + H + (size_t)c->head_dim + L;
    return fixed + (H + 1) * staged_pages(c, page_tokens) * page_floats(c, page_tokens) +
           P * P * 3 * (size_t)c->embed_dim;
}

/* Where the scratch parts of one call sit. */
typedef struct {
    float *scores, *tmp, *qsum, *probs, *in, *out, *qkv;
    int32_t *keep, *held;
    size_t in_head; /* floats of one head's staged pages in `in` */
} parts;

static parts parts_of(const vs_kv_step *s)
{
    const vs_rt_config *c = s->cfg;
    size_t L = (size_t)c->scale_offset[c->n_scales], pf = page_floats(c, s->page_tokens);
    parts p;
    p.in_head = staged_pages(c, s->page_tokens) * pf;
    p.scores = s->scratch;
    p.tmp = p.scores + L;
    p.keep = (int32_t *)(p.tmp + 4 * L);
    p.held = p.keep + L;
    p.qsum = (float *)(p.held + c->num_heads);
    p.probs = p.qsum + c->head_dim;
    p.in = p.probs + L;
    p.out = p.in + (size_t)c->num_heads * p.in_head;
    p.qkv = p.out + p.in_head;
    return p;
}

/* (layer, head) h of row r's view. */
static const vs_rt_kv_head *head_of(const vs_kv_step *s, int r, int layer, int h)
{
    return &vs_kv_row_heads(s->rows[r])[(size_t)layer * s->cfg->num_heads + h];
}

/* Element offset of page `i` of a head in the arena (elements of the backend's KV type; the
 * staged copies on the host are always floats: vs_rt_backend_kv_download converts). */
static size_t page_at(const vs_kv_step *s, const vs_rt_kv_head *kh, int i)
{
    return (size_t)vs_rt_kv_page_offset(s->page_tokens, s->cfg->head_dim, kh->pages[i], 0, 0);
}

/* Float offset of token slot j (K: kv 0, V: kv 1) in one head's staged pages (token order). */
static size_t staged_at(const vs_kv_step *s, int j, int kv)
{
    int pt = s->page_tokens;
    return (size_t)vs_rt_kv_page_offset(pt, s->cfg->head_dim, j / pt, j % pt, kv);
}

/* Copies pages [from, to) of one head to its part of the host scratch as floats (a memcpy on
 * host-memory backends, a device download otherwise, widening BF16 pages): compression reads only
 * the copies. */
static void stage_pages(const vs_kv_step *s, const parts *p, const vs_rt_batch *b, int h,
                        const vs_rt_kv_head *kh, int from, int to)
{
    size_t pf = page_floats(s->cfg, s->page_tokens);
    float *dst = p->in + (size_t)h * p->in_head;
    for (int i = from; i < to; i++)
        vs_rt_backend_kv_download(s->be, dst + (size_t)i * pf, b->kv_base, page_at(s, kh, i), pf);
}

static int pages_of(const vs_kv_step *s, int tokens)
{
    return (tokens + s->page_tokens - 1) / s->page_tokens;
}

/* The row's new tokens' qkv to the host scratch. */
static void stage_qkv(const vs_kv_step *s, const parts *p, const vs_rt_row *row, const float *qkv)
{
    size_t C = (size_t)s->cfg->embed_dim;
    s->be->ops->download(s->be, p->qkv, qkv + (size_t)row->tok_start * 3 * C,
                         (size_t)row->n_new * 3 * C * sizeof(float));
}

/* Key (kv 0) or value (kv 1) of head h of candidate j of a staged row: the head's cached slots
 * from its staged pages, then the step's new tokens from the staged qkv. */
static const float *cand_ptr(const vs_kv_step *s, const parts *p, int h, int hist, int j, int kv)
{
    size_t C = (size_t)s->cfg->embed_dim, d = (size_t)s->cfg->head_dim;
    if (j < hist)
        return p->in + (size_t)h * p->in_head + staged_at(s, j, kv);
    return p->qkv + (size_t)(j - hist) * 3 * C + (size_t)(1 + kv) * C + (size_t)h * d;
}

static const vs_kv_policy *policy_of(const vs_kv_step *s, int r)
{
    return s->policy ? s->policy[r] : NULL;
}

/* The flow of head h of `layer` of row r this step when it holds `held` tokens
 * (vs_kv_policy_flow: the description the peak-pages simulation follows too). */
static vs_kv_flow head_flow(const vs_kv_step *s, int r, int layer, int h, int held, int n_new)
{
    return vs_kv_policy_flow(policy_of(s, r), s->cfg->n_scales, layer, h, s->scale[r], held, n_new);
}

/* The op of `layer` of row r this step: compress when any head compresses. */
static vs_kv_flow_op layer_op(const vs_kv_step *s, const parts *p, int r, int layer, int n_new)
{
    int H = s->cfg->num_heads;
    for (int h = 0; h < H; h++)
        p->held[h] = head_of(s, r, layer, h)->n_tokens;
    return vs_kv_policy_layer_op(policy_of(s, r), s->cfg->n_scales, layer, H, s->scale[r],
                                 p->held, n_new);
}

/* Rows that keep every token get pages for the new ones, which the attention writes; rows that
 * will be compressed or dropped leave them in qkv (no pages: that is what makes their peak small). */
static vs_status before_attn(void *ctx, int layer, const vs_rt_batch *b, vs_err *err)
{
    vs_kv_step *s = ctx;
    double t0 = vs_now_s();
    vs_status st = VS_OK;
    parts p = parts_of(s);
    for (int r = 0; r < s->n_rows && st == VS_OK; r++) {
        if (layer_op(s, &p, r, layer, b->rows[r].n_new) != VS_KV_FLOW_STORE)
            b->kv_store[r] = 0;
        else
            st = vs_kv_row_reserve_tokens(s->rows[r], layer, VS_KV_ALL_HEADS, b->rows[r].n_new, err);
    }
    s->seconds += vs_now_s() - t0;
    return st;
}

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Attention statistics of one row and layer (the softmax the backend just computed, recomputed
 * here on the host for every query of the row), from the staged copies of every head, before the
 * layer's tokens change. */
static void accumulate_stats(vs_kv_step *s, const parts *p, int r, int layer, const vs_rt_row *row)
{
    const vs_rt_config *c = s->cfg;
    int H = c->num_heads, d = c->head_dim, C = H * d;
    float *pr = p->probs, *tmp = p->tmp;
    float *colsum = p->scores; /* [n]: Σ_q a_q of one head (the scores are free until compress) */
    double cur = 0, top = 0;
    for (int h = 0; h < H; h++) {
        int hist = head_of(s, r, layer, h)->n_tokens, n = hist + row->n_new;
        int K = s->stats->top_history < hist ? s->stats->top_history : hist;
        memset(colsum, 0, (size_t)n * sizeof *colsum);
        for (int q = 0; q < row->n_new; q++) {
            const float *qv = p->qkv + (size_t)q * 3 * C + (size_t)h * d;
            float mx = -INFINITY, sum = 0;
            for (int j = 0; j < n; j++) {
                const float *kv = cand_ptr(s, p, h, hist, j, 0);
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
            for (int j = 0; j < n; j++)
                colsum[j] += pr[j] / sum;
            if (K > 0) {
                memcpy(tmp, pr, (size_t)hist * sizeof *tmp);
                qsort(tmp, (size_t)hist, sizeof *tmp, cmp_desc);
                double tm = 0;
                for (int j = 0; j < K; j++)
                    tm += tmp[j] / sum;
                top += tm;
            }
        }
        if (hist > 0 && s->stats->head_uneven) {
            /* U = ln(n·Σ_j m_j²) / ln n of the mean attention row m (step.h) */
            double m2 = 0;
            for (int j = 0; j < n; j++) {
                double m = colsum[j] / row->n_new;
                m2 += m * m;
            }
            size_t at = (size_t)layer * H + h;
            s->stats->head_uneven[at] += row->n_new * (log(n * m2) / log(n));
            s->stats->head_weight[at] += row->n_new;
        }
    }
    size_t at = (size_t)s->scale[r] * c->depth + layer;
    s->stats->cur_mass[at] += cur;
    s->stats->hist_mass[at] += top;
    s->stats->count[at] += (double)row->n_new * H;
}

/* The tokens head h keeps (its capacity of its cached plus the step's new ones; every one when its
 * capacity allows) into p->keep, selected from the staged copies; returns the count. */
static int select_head(vs_kv_step *s, const parts *p, int r, int layer, int h, const vs_rt_row *row,
                       int hist, int cap)
{
    const vs_rt_config *c = s->cfg;
    const vs_kv_policy *pol = s->policy[r];
    int d = c->head_dim, C = c->num_heads * d, n = hist + row->n_new;
    int side = c->patch_nums[s->scale[r]];
    int need_scores = cap < n && vs_kv_policy_def_of(vs_kv_policy_kind_of(pol))->needs_scores;
    if (need_scores) {
        /* Σ_w q_w·k_j = (Σ_w q_w)·k_j; a window slot before this scale uses its first query */
        int32_t win[VS_KV_WINDOW];
        int nw = vs_kv_window(side, n, row->n_new, win);
        memset(p->qsum, 0, (size_t)d * sizeof *p->qsum);
        for (int w = 0; w < nw; w++) {
            int qi = win[w] - hist;
            qi = qi < 0 ? 0 : qi;
            const float *qv = p->qkv + (size_t)qi * 3 * C + (size_t)h * d;
            for (int i = 0; i < d; i++)
                p->qsum[i] += qv[i];
        }
        for (int j = 0; j < n; j++) {
            const float *kv = cand_ptr(s, p, h, hist, j, 0);
            float acc = 0;
            for (int i = 0; i < d; i++)
                acc += p->qsum[i] * kv[i];
            p->scores[j] = acc;
        }
    }
    return vs_kv_policy_select_head(pol, layer, h, side, n, row->n_new,
                                    need_scores ? p->scores : NULL, cap, p->keep, p->tmp);
}

/* Row r's `layer` after the attention at a scale where some head compresses. Each head keeps its
 * own capacity (every token when the capacity allows) out of its cached tokens plus the step's new
 * ones; the kept K and V are composed on the host from FP32 copies of only the pages the head needs
 * and written back over its pages from the first slot that changes (a memcpy, or an upload on a
 * device backend; BF16 pages round the floats back, which returns the staged BF16 values exactly
 * and rounds the step's new tokens from qkv as the attention's own page write would). Every head that grows draws its pages first, then each head shrinks: the layer's peak
 * is Σ over heads of max(before, after), as the peak simulation counts. `staged`: every head's
 * pages are already in the scratch (for statistics). */
static vs_status compress(vs_kv_step *s, const parts *p, int r, int layer, const vs_rt_batch *b,
                          int staged, vs_err *err)
{
    const vs_rt_config *c = s->cfg;
    const vs_rt_row *row = &b->rows[r];
    int H = c->num_heads, pt = s->page_tokens;
    size_t pf = page_floats(c, pt);
    for (int h = 0; h < H; h++) {
        int hist = head_of(s, r, layer, h)->n_tokens, n = hist + row->n_new;
        vs_kv_flow f = head_flow(s, r, layer, h, hist, row->n_new);
        int kept = f.after > n ? n : f.after;
        p->held[h] = hist;
        if (kept > hist) {
            vs_status st = vs_kv_row_reserve_tokens(s->rows[r], layer, h, kept - hist, err);
            if (st != VS_OK)
                return st;
        }
    }
    for (int h = 0; h < H; h++) {
        const vs_rt_kv_head *kh = head_of(s, r, layer, h);
        int hist = p->held[h], n = hist + row->n_new;
        vs_kv_flow f = head_flow(s, r, layer, h, hist, row->n_new);
        int compresses = f.op == VS_KV_FLOW_COMPRESS;
        /* a compressed head may keep any of its tokens; one that keeps all rewrites only the
         * partly filled page its new tokens start in */
        if (!staged)
            stage_pages(s, p, b, h, kh, compresses ? 0 : hist / pt, pages_of(s, hist));
        int kept = select_head(s, p, r, layer, h, row, hist, compresses ? f.cap : VS_KV_KEEP_ALL);
        if (kept != (compresses ? f.cap : n))
            return vs_err_set(err, VS_ERR_INTERNAL,
                              "KV policy %s kept %d tokens of layer %d head %d where its capacity "
                              "says %d",
                              vs_kv_policy_name(vs_kv_policy_kind_of(s->policy[r])), kept, layer,
                              h, compresses ? f.cap : n);
        int first = 0; /* the first slot whose token changes */
        while (first < kept && p->keep[first] == first && first < hist)
            first++;
        int fp = first / pt;
        /* slot i of the head = candidate keep[i], from the page `first` falls in */
        for (int i = fp * pt; i < kept; i++)
            for (int kv = 0; kv < 2; kv++)
                memcpy(p->out + staged_at(s, i - fp * pt, kv),
                       cand_ptr(s, p, h, hist, p->keep[i], kv), (size_t)c->head_dim * sizeof(float));
        vs_kv_row_resize(s->rows[r], layer, h, kept);
        for (int i = fp; i < kh->n_pages; i++)
            vs_rt_backend_kv_upload(s->be, b->kv_base, page_at(s, kh, i),
                                    p->out + (size_t)(i - fp) * pf, pf);
    }
    return VS_OK;
}

static vs_status after_attn(void *ctx, int layer, const vs_rt_batch *b, const float *qkv, vs_err *err)
{
    vs_kv_step *s = ctx;
    double t0 = vs_now_s();
    vs_status st = VS_OK;
    parts p = parts_of(s);
    for (int r = 0; r < s->n_rows && st == VS_OK; r++) {
        const vs_rt_row *row = &b->rows[r];
        vs_kv_flow_op op = layer_op(s, &p, r, layer, row->n_new);
        if (b->kv_store[r])
            op = VS_KV_FLOW_STORE; /* before_attn gave it pages for the new tokens */
        if (s->stats || op == VS_KV_FLOW_COMPRESS)
            stage_qkv(s, &p, row, qkv);
        if (s->stats) {
            for (int h = 0; h < s->cfg->num_heads; h++) {
                const vs_rt_kv_head *kh = head_of(s, r, layer, h);
                stage_pages(s, &p, b, h, kh, 0, pages_of(s, kh->n_tokens));
            }
            accumulate_stats(s, &p, r, layer, row);
        }
        if (op == VS_KV_FLOW_STORE)
            vs_kv_row_commit(s->rows[r], layer, VS_KV_ALL_HEADS, row->n_new);
        else if (op == VS_KV_FLOW_RELEASE)
            vs_kv_row_resize(s->rows[r], layer, VS_KV_ALL_HEADS, 0); /* never read again */
        else
            st = compress(s, &p, r, layer, b, s->stats != NULL, err);
    }
    s->seconds += vs_now_s() - t0;
    return st;
}

vs_rt_hooks vs_kv_step_hooks(vs_kv_step *s)
{
    vs_rt_hooks h = {s, before_attn, after_attn};
    return h;
}
