/* runtime/fast_exp.h — exp(x) without a libm call, so loops over it vectorise (the CPU backend and
 * the vector kernels of runtime/simd.h share this one definition: every path computes the same
 * bits).
 *
 * x = n·ln2 + r with n rounded to nearest (the 1.5·2^23 trick), exp(r) by a degree-6 polynomial on
 * |r| ≤ ln2/2, 2^n through the exponent bits. Relative error below 2e-7 on [-87, 88]; inputs are
 * clamped to that range. Plain multiplies and adds: the project builds with -std=c11, where GCC
 * does not contract them into FMAs, so an FMA-capable target rounds exactly as SSE2 does. */
#ifndef VS_RT_FAST_EXP_H
#define VS_RT_FAST_EXP_H

#include <stdint.h>
#include <string.h>

static inline float fast_expf(float x)
{
    /* two plain selects the vectoriser if-converts; written so a NaN fails the first compare and
     * becomes -87 (exp ~ 0), never reaching the float-to-int conversion below (undefined for NaN) */
    x = x > -87.0f ? x : -87.0f;
    x = x < 88.0f ? x : 88.0f;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

#endif
