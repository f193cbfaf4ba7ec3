/* runtime/simd_body.h — the vector kernels of runtime/simd.h, written once in plain C for the
 * auto-vectoriser; included by simd.c (baseline flags), simd_avx2.c and simd_avx512.c (each after
 * its `#pragma GCC target`), each defining SIMD_TABLE to its table's name. No header guard: one
 * inclusion per file. Every kernel must compute the same bits whatever the vector width
 * (runtime/simd.h says how); keep reductions on the 16 explicit lanes. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/fast_exp.h"
#include "runtime/simd.h"

#define LANES 16

/* One full 1024-value block's 16 lane sums (sq: of (x − m)²), four blocks at once: each lane's
 * chain is the same as alone, but four independent chains hide the add latency. */
static void blocks4(const float *restrict x, float m, int sq, float acc[4][LANES])
{
    for (int b = 0; b < 4; b++)
        for (int l = 0; l < LANES; l++)
            acc[b][l] = 0.0f;
    if (sq)
        for (int i = 0; i < 1024; i += LANES)
            for (int b = 0; b < 4; b++)
                for (int l = 0; l < LANES; l++) {
                    float d = x[b * 1024 + i + l] - m;
                    acc[b][l] += d * d;
                }
    else
        for (int i = 0; i < 1024; i += LANES)
            for (int b = 0; b < 4; b++)
                for (int l = 0; l < LANES; l++)
                    acc[b][l] += x[b * 1024 + i + l];
}

static double k_sum_sq_dev(const float *x, size_t n, float m, int sq)
{
    double total = 0;
    size_t b = 0;
    for (; b + 4 * 1024 <= n; b += 4 * 1024) {
        float acc[4][LANES];
        blocks4(x + b, m, sq, acc);
        for (int k = 0; k < 4; k++) {
            double part = 0;
            for (int l = 0; l < LANES; l++)
                part += acc[k][l];
            total += part;
        }
    }
    for (; b < n; b += 1024) {
        size_t e = b + 1024 < n ? b + 1024 : n, i = b;
        float acc[LANES] = {0};
        if (sq)
            for (; i + LANES <= e; i += LANES)
                for (int l = 0; l < LANES; l++) {
                    float d = x[i + l] - m;
                    acc[l] += d * d;
                }
        else
            for (; i + LANES <= e; i += LANES)
                for (int l = 0; l < LANES; l++)
                    acc[l] += x[i + l];
        double part = 0;
        for (int l = 0; l < LANES; l++)
            part += acc[l];
        for (; i < e; i++)
            part += sq ? (double)(x[i] - m) * (x[i] - m) : x[i];
        total += part;
    }
    return total;
}

static void k_affine(float *restrict y, const float *restrict x, size_t n, float a, float b, int silu)
{
    if (silu)
        for (size_t i = 0; i < n; i++) {
            float v = x[i] * a + b;
            y[i] = v / (1.0f + fast_expf(-v));
        }
    else
        for (size_t i = 0; i < n; i++)
            y[i] = x[i] * a + b;
}

static void k_silu(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] / (1.0f + fast_expf(-x[i]));
}

static void k_gelu_tanh(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        /* 1 + tanh(u) = 2 − 2 / (exp(2u) + 1) */
        float u2 = 2.0f * 0.7978845608028654f * (v + 0.044715f * v * v * v);
        x[i] = v * (1.0f - 1.0f / (fast_expf(u2) + 1.0f));
    }
}

static void k_add(float *restrict y, const float *restrict x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] += x[i];
}

static void k_to_unit(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i] < -1.0f ? -1.0f : x[i] > 1.0f ? 1.0f : x[i];
        x[i] = (v + 1.0f) * 0.5f;
    }
}

/* max is exact in any order; the lanes only let it vectorise */
static float k_max(const float *x, size_t n)
{
    float acc[LANES];
    for (int l = 0; l < LANES; l++)
        acc[l] = x[0];
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++)
            acc[l] = x[i + l] > acc[l] ? x[i + l] : acc[l];
    float mx = x[0];
    for (int l = 0; l < LANES; l++)
        mx = acc[l] > mx ? acc[l] : mx;
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    return mx;
}

static void k_exp_shift(float *x, size_t n, float m)
{
    for (size_t i = 0; i < n; i++)
        x[i] = fast_expf(x[i] - m);
}

static int k_select_ge(const float *x, int n, float thr, int32_t *idx)
{
    int r = 0, i = 0;
    for (; i + LANES <= n; i += LANES) {
        unsigned mask = 0;
        for (int l = 0; l < LANES; l++)
            mask |= (unsigned)(x[i + l] >= thr) << l;
        while (mask) {
            idx[r++] = i + __builtin_ctz(mask);
            mask &= mask - 1;
        }
    }
    for (; i < n; i++)
        if (x[i] >= thr)
            idx[r++] = i;
    return r;
}

extern const vs_rt_simd SIMD_TABLE;
const vs_rt_simd SIMD_TABLE = {
    .name = SIMD_NAME,
    .sum_sq_dev = k_sum_sq_dev,
    .affine = k_affine,
    .silu = k_silu,
    .gelu_tanh = k_gelu_tanh,
    .add = k_add,
    .to_unit = k_to_unit,
    .max = k_max,
    .exp_shift = k_exp_shift,
    .select_ge = k_select_ge,
};

#undef LANES
