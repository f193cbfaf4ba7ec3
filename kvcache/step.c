/* kvcache/step.c — see step.h. */
#include "kvcache/step.h"

#include "common/clock.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Host scratch (statistics only: compression runs in the backend), in this order: column sums
 * [L]; sort tmp [L]; held [H] (int32); probs [L]; staged pages [H][pages(L)][2][pt][d]; the row's
 * qkv [P²][3C]. pages(L) counts one page more than L needs (a page may be partly filled). */
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
    return 3 * L + H + H * staged_pages(c, page_tokens) * page_floats(c, page_tokens) +
           P * P * 3 * (size_t)c->embed_dim;
}

size_t vs_kv_step_jobs(const vs_rt_config *c, int n_rows) { return (size_t)n_rows * c->num_heads; }

/* Where the scratch parts of one call sit. */
typedef struct {
    float *colsum, *tmp, *probs, *in, *qkv;
    int32_t *held;
    size_t in_head; /* floats of one head's staged pages in `in` */
} parts;

static parts parts_of(const vs_kv_step *s)
{
    const vs_rt_config *c = s->cfg;
    size_t L = (size_t)c->scale_offset[c->n_scales], pf = page_floats(c, s->page_tokens);
    parts p;
    p.in_head = staged_pages(c, s->page_tokens) * pf;
    p.colsum = s->scratch;
    p.tmp = p.colsum + L;
    p.held = (int32_t *)(p.tmp + L);
    p.probs = (float *)(p.held + c->num_heads);
    p.in = p.probs + L;
    p.qkv = p.in + (size_t)c->num_heads * p.in_head;
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
 * host-memory backends, a device download otherwise, widening BF16 pages): the statistics read
 * only the copies. */
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
    float *colsum = p->colsum; /* [n]: Σ_q a_q of one head */
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

/* Row r's `layer` after the attention at a scale where some head compresses: a job per head for
 * the backend's kv_compact (each head keeps its capacity out of its cached plus the step's new
 * tokens, every one when its capacity allows), by the policy's plan; plans the same as an earlier
 * one of this layer are shared. Every head that grows draws its pages first (the op writes them);
 * the heads shrink after the op (shrink_heads): a row's peak is Σ over heads of max(before,
 * after), as the peak simulation counts. */
static vs_status plan_row(vs_kv_step *s, int r, int layer, const vs_rt_batch *b, int *n_plans,
                          int *n_jobs, vs_err *err)
{
    const vs_rt_config *c = s->cfg;
    const vs_rt_row *row = &b->rows[r];
    const vs_kv_policy *pol = s->policy[r];
    int H = c->num_heads, side = c->patch_nums[s->scale[r]];
    for (int h = 0; h < H; h++) {
        int hist = head_of(s, r, layer, h)->n_tokens, n = hist + row->n_new;
        vs_kv_flow f = head_flow(s, r, layer, h, hist, row->n_new);
        int cap = f.op == VS_KV_FLOW_COMPRESS ? f.cap : n;
        vs_rt_kv_plan *pl = &s->plans[*n_plans];
        vs_kv_policy_plan_head(pol, layer, h, side, n, row->n_new, cap, pl);
        const char *bad = vs_rt_kv_plan_check(pl, row->n_new);
        if (bad || pl->kept != cap)
            return vs_err_set(err, VS_ERR_INTERNAL,
                              "KV policy %s planned %d of %d tokens of layer %d head %d where its "
                              "capacity says %d%s%s",
                              vs_kv_policy_name(vs_kv_policy_kind_of(pol)), pl->kept, n, layer, h,
                              cap, bad ? ": " : "", bad ? bad : "");
        int at = *n_plans;
        for (int i = *n_plans - 1; i >= 0 && i >= *n_plans - 8; i--)
            if (memcmp(&s->plans[i], pl, sizeof *pl) == 0) {
                at = i;
                break;
            }
        if (at == *n_plans)
            (*n_plans)++;
        s->jobs[(*n_jobs)++] = (vs_rt_kv_job){r, h, at};
        if (cap > hist) {
            vs_status st = vs_kv_row_reserve_tokens(s->rows[r], layer, h, cap - hist, err);
            if (st != VS_OK)
                return st;
        }
    }
    return VS_OK;
}

/* After the op: each job's head holds what its plan kept. */
static void shrink_heads(vs_kv_step *s, int layer, int n_jobs)
{
    for (int i = 0; i < n_jobs; i++)
        vs_kv_row_resize(s->rows[s->jobs[i].row], layer, s->jobs[i].head,
                         s->plans[s->jobs[i].plan].kept);
}

static vs_status after_attn(void *ctx, int layer, const vs_rt_batch *b, const float *qkv, vs_err *err)
{
    vs_kv_step *s = ctx;
    double t0 = vs_now_s();
    vs_status st = VS_OK;
    parts p = parts_of(s);
    int n_plans = 0, n_jobs = 0;
    for (int r = 0; r < s->n_rows && st == VS_OK; r++) {
        const vs_rt_row *row = &b->rows[r];
        vs_kv_flow_op op = layer_op(s, &p, r, layer, row->n_new);
        if (b->kv_store[r])
            op = VS_KV_FLOW_STORE; /* before_attn gave it pages for the new tokens */
        if (s->stats) {
            stage_qkv(s, &p, row, qkv);
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
            st = plan_row(s, r, layer, b, &n_plans, &n_jobs, err);
    }
    if (st == VS_OK && n_jobs > 0) {
        s->be->ops->kv_compact(s->be, qkv, b, layer, s->cfg->num_heads, s->cfg->head_dim, s->plans,
                               n_plans, s->jobs, n_jobs);
        shrink_heads(s, layer, n_jobs);
    }
    s->seconds += vs_now_s() - t0;
    return st;
}

vs_rt_hooks vs_kv_step_hooks(vs_kv_step *s)
{
    vs_rt_hooks h = {s, before_attn, after_attn};
    return h;
}
