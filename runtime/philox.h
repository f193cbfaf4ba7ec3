/* runtime/philox.h — Philox-4x32-10, the counter-based generator behind sampling.
 *
 * A draw is a pure function of (key, counter): the engine keys by the request's seed and counts by
 * (scale, token), so an image never depends on its batch-mates, the thread count or the backend.
 * Header-only so the CPU and CUDA code compute the same numbers. */
#ifndef VS_RT_PHILOX_H
#define VS_RT_PHILOX_H

#include <stdint.h>

#ifdef __CUDACC__
#define VS_PHILOX_FN __host__ __device__ static inline
#else
#define VS_PHILOX_FN static inline
#endif

VS_PHILOX_FN void vs_philox4x32_10(const uint32_t ctr_in[4], const uint32_t key_in[2], uint32_t out[4])
{
    uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3];
    uint32_t k0 = key_in[0], k1 = key_in[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* Uniform in [0, 1) with 24 bits, for token `token` of scale `scale` under `seed`. */
VS_PHILOX_FN float vs_philox_uniform(uint64_t seed, int scale, int token)
{
    uint32_t ctr[4] = {(uint32_t)token, (uint32_t)scale, 0x56415253u /* "VARS" */, 0};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t o[4];
    vs_philox4x32_10(ctr, key, o);
    return (float)(o[0] >> 8) * (1.0f / 16777216.0f);
}

#endif
