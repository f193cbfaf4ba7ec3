/* runtime/bsq.c — see bsq.h. The resize follows PyTorch 1.13's separable linear kernel
 * (aten/src/ATen/native/cpu/UpSampleKernel.cpp): per axis, the source index
 * max(0, (in/out)·(o + ½) − ½) in float, its floor i0, i1 = i0 + 1 but for the last row, λ1 the
 * fraction clamped to [0, 1], λ0 = 1 − λ1, and an axis whose size does not change is copied; the
 * output is (x[i0]·λ0 + x[i1]·λ1) along w, then the same along h. */
#include "runtime/bsq.h"

#include <math.h>
#include <stdlib.h>

void vs_rt_bsq_codes(const uint8_t *bits, int h, int w, int d, float *codes)
{
    const float s = (float)(1.0 / sqrt((double)d));
    size_t hw = (size_t)h * w;
    for (size_t t = 0; t < hw; t++) {
        const uint8_t *b = bits + t * d;
        /* ||x|| of the ±s vector as F.normalize computes it (a float sum of squares), then x / ||x|| */
        float ss = 0.0f;
        for (int j = 0; j < d; j++) {
            float x = (b[j] ? 2.0f * s : 0.0f) - s;
            ss += x * x;
        }
        float nrm = sqrtf(ss);
        nrm = nrm > 1e-12f ? nrm : 1e-12f;
        for (int j = 0; j < d; j++)
            codes[(size_t)j * hw + t] = ((b[j] ? 2.0f * s : 0.0f) - s) / nrm;
    }
}

typedef struct {
    int i0, i1;
    float l0, l1;
} tap;

static void taps(tap *t, int in, int out)
{
    float scale = (float)in / (float)out;
    for (int o = 0; o < out; o++) {
        if (in == out) {
            t[o] = (tap){o, o, 1.0f, 0.0f};
            continue;
        }
        float src = scale * ((float)o + 0.5f) - 0.5f;
        src = src < 0.0f ? 0.0f : src;
        int i0 = (int)src; /* src ≥ 0: truncation is the floor */
        int i1 = i0 + (i0 < in - 1 ? 1 : 0);
        float l1 = src - (float)i0;
        l1 = l1 < 0.0f ? 0.0f : l1 > 1.0f ? 1.0f : l1;
        t[o] = (tap){i0, i1, 1.0f - l1, l1};
    }
}

void vs_rt_bsq_resize(const float *src, int n, int hi, int wi, float *dst, int ho, int wo)
{
    tap *th = malloc(((size_t)ho + (size_t)wo) * sizeof *th);
    if (!th)
        abort(); /* a few hundred bytes */
    tap *tw = th + ho;
    taps(th, hi, ho);
    taps(tw, wi, wo);
    for (int p = 0; p < n; p++) {
        const float *sp = src + (size_t)p * hi * wi;
        float *dp = dst + (size_t)p * ho * wo;
        for (int y = 0; y < ho; y++) {
            const float *r0 = sp + (size_t)th[y].i0 * wi, *r1 = sp + (size_t)th[y].i1 * wi;
            for (int x = 0; x < wo; x++) {
                const tap *c = &tw[x];
                float a = r0[c->i0] * c->l0;
                a += r0[c->i1] * c->l1;
                float b = r1[c->i0] * c->l0;
                b += r1[c->i1] * c->l1;
                float v = a * th[y].l0;
                v += b * th[y].l1;
                dp[(size_t)y * wo + x] = v;
            }
        }
    }
    free(th);
}

void vs_rt_bsq_feedback(const uint8_t *bits, int h, int w, int d, float *summed, int H, int W, float *next, int hn,
                        int wn, float *scratch)
{
    float *codes = scratch, *up = scratch + (size_t)d * h * w;
    vs_rt_bsq_codes(bits, h, w, d, codes);
    vs_rt_bsq_resize(codes, d, h, w, up, H, W);
    for (size_t e = 0; e < (size_t)d * H * W; e++)
        summed[e] += up[e];
    if (hn <= 0 || wn <= 0)
        return;
    float *small = up; /* H·W ≥ hn·wn per channel: the resize fits where `up` was */
    vs_rt_bsq_resize(summed, d, H, W, small, hn, wn);
    for (int t = 0; t < hn * wn; t++)
        for (int j = 0; j < d; j++)
            next[(size_t)t * d + j] = small[(size_t)j * hn * wn + t];
}
