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

/* Stable LSD radix sort of idx[0..n) by logit, 8 bits a pass; ties keep ascending index order. */
static void sort_by_logit(const float *logits, int32_t *idx, int n, uint32_t *k1, uint32_t *k2,
                          int32_t *i2)
{
    for (int i = 0; i < n; i++)
        k1[i] = float_key(logits[idx[i]]);
    for (int shift = 0; shift < 32; shift += 8) {
        int count[257] = {0};
        for (int i = 0; i < n; i++)
            count[((k1[i] >> shift) & 255) + 1]++;
        for (int b = 0; b < 256; b++)
            count[b + 1] += count[b];
        for (int i = 0; i < n; i++) {
            int pos = count[(k1[i] >> shift) & 255]++;
            k2[pos] = k1[i];
            i2[pos] = idx[i];
        }
        memcpy(k1, k2, (size_t)n * sizeof *k1);
        memcpy(idx, i2, (size_t)n * sizeof *idx);
    }
}

/* Candidates after top-k and top-p, in idx[0..n) (ascending by logit when top_p > 0). */
static int candidates(const float *logits, int V, int top_k, float top_p, void *buf)
{
    float *vals = buf;
    int32_t *idx = (int32_t *)buf + V;
    float thr = -INFINITY;
    if (top_k > 0 && top_k < V)
        thr = kth_largest(logits, V, top_k, (uint32_t *)buf + 2 * (size_t)V);
    int n = vs_rt_simd_table()->select_ge(logits, V, thr, idx);
    if (top_p > 0 && n > 1) {
        uint32_t *k1 = (uint32_t *)buf + 2 * (size_t)V, *k2 = k1 + V;
        sort_by_logit(logits, idx, n, k1, k2, (int32_t *)(k2 + V));
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
    }
    return n;
}

int vs_rt_sample_filter(const float *logits, int V, int top_k, float top_p, uint8_t *keep,
                        vs_rt_sample_scratch *s)
{
    int n = candidates(logits, V, top_k, top_p, s->buf);
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
    int n = candidates(logits, V, top_k, top_p, s->buf);
    const int32_t *idx = (const int32_t *)s->buf + V;
    float *w = s->buf; /* the candidates' weights, in idx order */
    float mx = -INFINITY;
    for (int i = 0; i < n; i++)
        mx = logits[idx[i]] > mx ? logits[idx[i]] : mx;
    double total = 0;
    for (int i = 0; i < n; i++) {
        w[i] = expf(logits[idx[i]] - mx);
        total += w[i];
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
