/* runtime/simd.h — the CPU backend's vector kernels, compiled once per instruction set and chosen
 * once per process.
 *
 * The same C source (runtime/simd_body.h) is compiled for baseline x86-64 (SSE2) and, through
 * `#pragma GCC target`, for AVX2+FMA and AVX-512 (simd_avx2.c, simd_avx512.c); the table is
 * picked at first use from cpuid, or forced with VARSERVE_CPU_SIMD=scalar|avx2|avx512. Results
 * are bit-identical across paths, by construction: elementwise kernels compute each element alone
 * with the same operations (no FMA contraction under -std=c11), and the reductions keep a fixed
 * 16 float partial sums whatever the vector width (SSE2 holds them in four registers, AVX-512 in
 * one), so every path adds the same numbers in the same order. tests/check_simd.c compares every
 * available path with scalar bit for bit; `make test` runs the parity suite with each path forced.
 * Tables are immutable; any thread. On other architectures only scalar exists (NEON: compiled by
 * the baseline arm64 flags, which include it). */
#ifndef VS_RT_SIMD_H
#define VS_RT_SIMD_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct {
    const char *name; /* "scalar", "avx2", "avx512" */
    /* Σ x (sq = 0) or Σ (x − m)² (sq = 1): 16 float lanes per 1024 values, blocks added in double */
    double (*sum_sq_dev)(const float *x, size_t n, float m, int sq);
    /* y = a·x + b, then SiLU when silu (GroupNorm's normalise-and-scale per channel) */
    void (*affine)(float *y, const float *x, size_t n, float a, float b, int silu);
    void (*silu)(float *y, const float *x, size_t n);
    void (*gelu_tanh)(float *x, size_t n);        /* in place */
    void (*add)(float *y, const float *x, size_t n); /* y += x */
    void (*to_unit)(float *x, size_t n);          /* clamp to [-1, 1], then (x + 1) / 2 */
    float (*max)(const float *x, size_t n);       /* n ≥ 1 */
    void (*exp_shift)(float *x, size_t n, float m); /* x = exp(x − m) */
    /* idx[0..r) = the indices i < n with x[i] ≥ thr, ascending; returns r */
    int (*select_ge)(const float *x, int n, float thr, int32_t *idx);
} vs_rt_simd;

/* The table in use: VARSERVE_CPU_SIMD's when it names a path this CPU runs, else the widest the
 * CPU supports. Chosen at the first call; the same pointer afterwards. */
const vs_rt_simd *vs_rt_simd_table(void);

/* VS_ERR_INVALID, saying what to set, when VARSERVE_CPU_SIMD names no path this CPU runs (the
 * table then is the widest supported one); VS_OK otherwise. */
vs_status vs_rt_simd_check(vs_err *err);

/* y[co][p] for the output pixels p in [p0, p1) of one image's conv2d (x[cin][H][W], w[cout][cin·k·k]
 * in im2col order, bias may be NULL, k 1 or 3, zero padding k/2), each output summed as
 * OpenBLAS's SKYLAKEX sgemm sums it: an FMA chain from +0 over each K block [kend[i−1], kend[i])
 * of the im2col order, added to bias (block 0) or the output (runtime/simd_conv_avx512.c).
 * AVX-512F only: the caller checks that the CPU runs it (vs_rt_simd_by_name("avx512")) and that
 * its bits are the BLAS's for the shape (backend_cpu.c). The CPU backend runs it on AVX-512 CPUs
 * for the shapes the copies below do not pay for, unless VARSERVE_CPU_SIMD=avx2 chooses the AVX2
 * kernel below (the same bits). */
void vs_rt_conv_direct_avx512(float *y, const float *x, const float *w, const float *bias, int cin,
                              int H, int W, int cout, int k, int p0, int p1, const int *kend,
                              int nblk);

/* The same outputs and bits from copies of the input rows the range reads (one per column tap,
 * padding written out: runtime/simd_conv_body.h), which is faster wherever the planes are large:
 * with AVX-512 (runtime/simd_conv_avx512_copied.c), or with AVX2 + FMA for CPUs without AVX-512
 * (runtime/simd_conv_avx2.c: p0 and p1 multiples of 8). scratch holds vs_rt_conv_copied_scratch
 * floats for a range whose pixels lie in at most rows output rows. The caller checks that the
 * CPU runs the vectors (vs_rt_simd_by_name). */
void vs_rt_conv_copied_avx512(float *y, const float *x, const float *w, const float *bias, int cin,
                              int H, int W, int cout, int k, int p0, int p1, const int *kend,
                              int nblk, float *scratch);
void vs_rt_conv_copied_avx2(float *y, const float *x, const float *w, const float *bias, int cin,
                            int H, int W, int cout, int k, int p0, int p1, const int *kend,
                            int nblk, float *scratch);
size_t vs_rt_conv_copied_scratch(int cin, int W, int k, int rows);

/* The paths this build and CPU can run, widest last, as "scalar, avx2, avx512". */
const char *vs_rt_simd_available(void);

/* The table named name if this CPU runs it, else NULL (for tests). */
const vs_rt_simd *vs_rt_simd_by_name(const char *name);

#endif
