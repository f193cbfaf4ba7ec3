/* runtime/sample.c — see sample.h. Candidates are found by quickselect (top-k) and sorted only
 * when top-p needs an order; probabilities are computed in double from max-subtracted logits. */
#include "runtime/sample.h"

#include <math.h>
#include <stdlib.h>

/* k-th largest (k from 1) of v[0..n) by quickselect; reorders v. */
static float kth_largest(float *v, int n, int k)
{
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = v[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (v[i] > pivot)
                i++;
            while (v[j] < pivot)
                j--;
            if (i <= j) {
                float t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                j--;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return v[want];
    }
    return v[want];
}

static _Thread_local const float *sort_logits;

/* ascending by logit, ties by index so the order is total */
static int cmp_asc(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    float lx = sort_logits[x], ly = sort_logits[y];
    if (lx < ly)
        return -1;
    if (lx > ly)
        return 1;
    return (x > y) - (x < y);
}

/* Candidates after top-k and top-p, in s->idx[0..n) (ascending by logit when top_p > 0). */
static int candidates(const float *logits, int V, int top_k, float top_p, vs_rt_sample_scratch *s)
{
    float thr = -INFINITY;
    if (top_k > 0 && top_k < V) {
        for (int i = 0; i < V; i++)
            s->vals[i] = logits[i];
        thr = kth_largest(s->vals, V, top_k);
    }
    int n = 0;
    for (int i = 0; i < V; i++)
        if (logits[i] >= thr)
            s->idx[n++] = i;
    if (top_p > 0 && n > 1) {
        sort_logits = logits;
        qsort(s->idx, (size_t)n, sizeof *s->idx, cmp_asc);
        double mx = logits[s->idx[n - 1]], total = 0;
        for (int i = 0; i < n; i++)
            total += exp((double)logits[s->idx[i]] - mx);
        double cum = 0, limit = 1.0 - (double)top_p;
        int drop = 0;
        for (int i = 0; i < n - 1; i++) {
            cum += exp((double)logits[s->idx[i]] - mx) / total;
            if (cum <= limit)
                drop = i + 1;
            else
                break;
        }
        for (int i = drop; i < n; i++)
            s->idx[i - drop] = s->idx[i];
        n -= drop;
    }
    return n;
}

int vs_rt_sample_filter(const float *logits, int V, int top_k, float top_p, uint8_t *keep,
                        vs_rt_sample_scratch *s)
{
    int n = candidates(logits, V, top_k, top_p, s);
    for (int i = 0; i < V; i++)
        keep[i] = 0;
    for (int i = 0; i < n; i++)
        keep[s->idx[i]] = 1;
    return n;
}

int32_t vs_rt_sample_token(const float *logits, int V, int top_k, float top_p, float u,
                           vs_rt_sample_scratch *s)
{
    if (top_k == 1) {
        int best = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[best])
                best = i;
        return best;
    }
    int n = candidates(logits, V, top_k, top_p, s);
    double mx = -INFINITY;
    for (int i = 0; i < n; i++)
        if (logits[s->idx[i]] > mx)
            mx = logits[s->idx[i]];
    double total = 0;
    for (int i = 0; i < n; i++)
        total += exp((double)logits[s->idx[i]] - mx);
    double target = (double)u * total, acc = 0;
    /* walk from the last candidate (the largest when sorted) so the common case stops early */
    for (int i = n - 1; i >= 0; i--) {
        acc += exp((double)logits[s->idx[i]] - mx);
        if (acc > target)
            return s->idx[i];
    }
    return s->idx[n - 1];
}
