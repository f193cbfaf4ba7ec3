/* runtime/sample.c — see sample.h. Candidates are found by radix selection (top-k) and sorted only
 * when top-p needs an order; probabilities are computed in double from max-subtracted logits. */
#include "runtime/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/simd.h"

/* Order-preserving map of a float to an unsigned key (ascending floats → ascending keys). */
static uint32_t float_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static float key_float(uint32_t k)
{
    uint32_t u = (k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* k-th largest (k from 1) of v[0..n) by radix selection on the order-preserving keys: three
 * histogram passes (11, 11, 10 bits), each keeping the keys of the bin that holds the k-th; keys
 * is scratch for n. The same value a sort would give (−0 and +0 compare equal to what uses it). */
static float kth_largest(const float *v, int n, int k, uint32_t *keys)
{
    for (int i = 0; i < n; i++)
        keys[i] = float_key(v[i]);
    int m = n, want = k;
    static const int shifts[3] = {21, 10, 0}, widths[3] = {11, 11, 10};
    for (int p = 0; p < 3; p++) {
        int sh = shifts[p], nb = 1 << widths[p];
        uint32_t msk = (uint32_t)nb - 1;
        int count[2048] = {0};
        for (int i = 0; i < m; i++)
            count[(keys[i] >> sh) & msk]++;
        int b = nb - 1;
        while (count[b] < want)
            want -= count[b--];
        int w = 0;
        for (int i = 0; i < m; i++)
            if (((keys[i] >> sh) & msk) == (uint32_t)b)
                keys[w++] = keys[i];
        m = w;
    }
    return key_float(keys[0]);
}

/* idx[0..n) (ascending) sorted ascending by logit, ties in ascending index order: an LSD radix
 * sort, 8 bits a pass, of (key << 32 | index) words, so that one move carries both and the
 * ordering of the words is the stable ordering wanted. All four digit histograms come from one
 * read, and a pass whose digit every key shares is skipped, as it would move nothing; the passes
 * swap a and b (scratch for n words each) instead of copying back. */
static void sort_by_logit(const float *logits, int32_t *idx, int n, uint64_t *a, uint64_t *b)
{
    uint32_t count[4][256] = {{0}};
    for (int i = 0; i < n; i++) {
        uint32_t k = float_key(logits[idx[i]]);
        a[i] = (uint64_t)k << 32 | (uint32_t)idx[i];
        count[0][k & 255]++;
        count[1][k >> 8 & 255]++;
        count[2][k >> 16 & 255]++;
        count[3][k >> 24]++;
    }
    uint64_t *src = a, *dst = b;
    for (int p = 0; p < 4; p++) {
        int shift = 32 + 8 * p;
        uint32_t *c = count[p];
        if (c[src[0] >> shift & 255] == (uint32_t)n)
            continue;
        uint32_t pos = 0;
        for (int d = 0; d < 256; d++) {
            uint32_t t = c[d];
            c[d] = pos;
            pos += t;
        }
        for (int i = 0; i < n; i++)
            dst[c[src[i] >> shift & 255]++] = src[i];
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    for (int i = 0; i < n; i++)
        idx[i] = (int32_t)(uint32_t)src[i];
}

/* Candidates after top-k and top-p, in idx[0..n) (ascending by logit when top_p > 0). When top_p
 * > 0, vals[drop..drop + n) are their weights exp(logit − max), in that order, and *first =
 * drop; otherwise *first = −1 and vals is not set. Scratch layout (4-byte words): vals [0, V), idx
 * [V, 2V), then two runs of V 8-byte words for the sort (or V words of keys for the top-k). */
static int candidates(const float *logits, int V, int top_k, float top_p, void *buf, int *first)
{
    float *vals = buf;
    int32_t *idx = (int32_t *)buf + V;
    uint64_t *sa = (uint64_t *)((uint32_t *)buf + 2 * (size_t)V), *sb = sa + V;
    float thr = -INFINITY;
    *first = -1;
    if (top_k > 0 && top_k < V)
        thr = kth_largest(logits, V, top_k, (uint32_t *)sa);
    int n = vs_rt_simd_table()->select_ge(logits, V, thr, idx);
    if (top_p > 0 && n > 1) {
        sort_by_logit(logits, idx, n, sa, sb);
        float mx = logits[idx[n - 1]];
        double total = 0;
        for (int i = 0; i < n; i++) {
            vals[i] = expf(logits[idx[i]] - mx);
            total += vals[i];
        }
        double cum = 0, limit = (1.0 - (double)top_p) * total;
        int drop = 0;
        for (int i = 0; i < n - 1; i++) {
            cum += vals[i];
            if (cum <= limit)
                drop = i + 1;
            else
                break;
        }
        if (drop) {
            memmove(idx, idx + drop, (size_t)(n - drop) * sizeof *idx);
            n -= drop;
        }
        *first = drop;
    }
    return n;
}

int vs_rt_sample_filter(const float *logits, int V, int top_k, float top_p, uint8_t *keep,
                        vs_rt_sample_scratch *s)
{
    int first;
    int n = candidates(logits, V, top_k, top_p, s->buf, &first);
    const int32_t *idx = (const int32_t *)s->buf + V;
    for (int i = 0; i < V; i++)
        keep[i] = 0;
    for (int i = 0; i < n; i++)
        keep[idx[i]] = 1;
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
    int first;
    int n = candidates(logits, V, top_k, top_p, s->buf, &first);
    const int32_t *idx = (const int32_t *)s->buf + V;
    float *w = s->buf; /* the candidates' weights, in idx order */
    double total = 0;
    if (first >= 0) {
        /* sorted: the max is the last, and the weights are the ones the top-p pass computed */
        w += first;
        for (int i = 0; i < n; i++)
            total += w[i];
    } else {
        float mx = -INFINITY;
        for (int i = 0; i < n; i++)
            mx = logits[idx[i]] > mx ? logits[idx[i]] : mx;
        for (int i = 0; i < n; i++) {
            w[i] = expf(logits[idx[i]] - mx);
            total += w[i];
        }
    }
    double target = (double)u * total, acc = 0;
    /* walk from the last candidate (the largest when sorted) so the common case stops early */
    for (int i = n - 1; i >= 0; i--) {
        acc += w[i];
        if (acc > target)
            return idx[i];
    }
    return idx[n - 1];
}
