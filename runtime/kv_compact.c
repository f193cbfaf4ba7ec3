/* runtime/kv_compact.c — see kv_compact.h: the plan's rule on the host. */
#include "runtime/kv_compact.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    float score;
    int32_t slot;
} scored;

/* descending score, then ascending slot: the plan's total order */
static int cmp_scored(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score > y->score)
        return -1;
    if (x->score < y->score)
        return 1;
    return (x->slot > y->slot) - (x->slot < y->slot);
}

static int forced_count(const vs_rt_kv_plan *p)
{
    int k = 0;
    for (int i = 0; i < p->n_ranges; i++)
        k += p->hi[i] - p->lo[i];
    return k;
}

int vs_rt_kv_plan_ranked(const vs_rt_kv_plan *p)
{
    int m = p->rank_to - p->rank_from;
    for (int i = 0; i < p->n_ranges; i++) {
        int lo = p->lo[i] > p->rank_from ? p->lo[i] : p->rank_from;
        int hi = p->hi[i] < p->rank_to ? p->hi[i] : p->rank_to;
        m -= hi > lo ? hi - lo : 0;
    }
    return m;
}

int vs_rt_kv_plan_count(const vs_rt_kv_plan *p)
{
    int m = vs_rt_kv_plan_ranked(p);
    return forced_count(p) + (p->want < m ? p->want : m);
}

int vs_rt_kv_plan_needs_scores(const vs_rt_kv_plan *p) { return p->want < vs_rt_kv_plan_ranked(p); }

const char *vs_rt_kv_plan_check(const vs_rt_kv_plan *p, int n_new)
{
    if (p->n < 0 || n_new < 0 || n_new > p->n)
        return "candidate count out of range";
    if (p->n_ranges < 0 || p->n_ranges > VS_RT_KV_PLAN_RANGES)
        return "forced range count out of range";
    if (p->n_queries < 0 || p->n_queries > VS_RT_KV_PLAN_QUERIES)
        return "score query count out of range";
    if (p->rank_from < 0 || p->rank_from > p->rank_to || p->rank_to > p->n)
        return "ranked span outside the candidates";
    if (p->want < 0 || p->pool_radius < 0)
        return "negative want or pool radius";
    for (int i = 0; i < p->n_ranges; i++)
        if (p->lo[i] < (i ? p->hi[i - 1] : 0) || p->hi[i] < p->lo[i] || p->hi[i] > p->n)
            return "forced ranges not ascending, disjoint and within the candidates";
    for (int i = 0; i < p->n_queries; i++)
        if (p->q[i] < 0 || p->q[i] >= n_new)
            return "a score query is not a new token of the row";
    if (vs_rt_kv_plan_needs_scores(p) && p->n_queries == 0)
        return "the plan ranks by scores but lists no query";
    if (p->kept != vs_rt_kv_plan_count(p))
        return "kept differs from what the ranges and want keep";
    return NULL;
}

static int is_forced(const vs_rt_kv_plan *p, int j)
{
    for (int i = 0; i < p->n_ranges; i++)
        if (j >= p->lo[i] && j < p->hi[i])
            return 1;
    return 0;
}

static int is_ranked(const vs_rt_kv_plan *p, int j)
{
    return j >= p->rank_from && j < p->rank_to && !is_forced(p, j);
}

int vs_rt_kv_plan_keep(const vs_rt_kv_plan *p, const float *scores, int32_t *keep, float *tmp)
{
    int n = p->n, k = 0;
    if (!vs_rt_kv_plan_needs_scores(p)) { /* forced and ranked ones: all of them */
        for (int j = 0; j < n; j++)
            if (is_forced(p, j) || (j >= p->rank_from && j < p->rank_to))
                keep[k++] = j;
        return k;
    }
    /* the ranked ones by (pooled) score, the best `want` marked in chosen[] */
    scored *list = (scored *)tmp;
    unsigned char *chosen = (unsigned char *)(tmp + 2 * (size_t)n); /* after the list */
    int m = 0, r = p->pool_radius;
    for (int j = 0; j < n; j++)
        chosen[j] = 0;
    for (int j = p->rank_from; j < p->rank_to; j++) {
        if (is_forced(p, j))
            continue;
        float s = scores[j];
        for (int i = j - r; i <= j + r; i++)
            if (i != j && is_ranked(p, i) && scores[i] > s)
                s = scores[i];
        list[m++] = (scored){s, j};
    }
    qsort(list, (size_t)m, sizeof *list, cmp_scored);
    for (int i = 0; i < p->want && i < m; i++)
        chosen[list[i].slot] = 1;
    for (int j = 0; j < n; j++)
        if (chosen[j] || is_forced(p, j))
            keep[k++] = j;
    return k;
}
