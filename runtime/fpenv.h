/* runtime/fpenv.h — the floating-point mode of the threads that run CPU backend arithmetic.
 *
 * Subnormal ("denormal") floats cost a microcode assist per instruction on Intel cores (on the
 * order of a hundred cycles; AMD's handle most of them at full speed). The CPU backend runs with
 * subnormals flushed to zero: results below FLT_MIN become 0 (x86-64 MXCSR FTZ, bit 15) and
 * subnormal inputs read as 0 (MXCSR DAZ, bit 6); on aarch64 FPCR.FZ (bit 24) does both. Other
 * architectures keep IEEE gradual underflow (a no-op here).
 *
 * The mode is per thread. vs_rt_backend_cpu_new sets it on the thread that creates the backend
 * (the engine thread in `serve`, the main thread in the CLI commands, which also runs chunks of
 * every pooled op and the ops that are not pooled), and each pool worker sets it when it starts
 * (runtime/threads.c). OpenBLAS runs single-threaded, on those same threads.
 *
 * Why results do not change (tokens and images are byte-identical with and without it on the
 * tiny and bundled fixtures, bench/RESULTS.md "Denormals"): the subnormals the engine made were
 * discarded values. GroupNorm's SiLU, vectorised, computes its v < −88 branch, v / (1 + e^88),
 * in every lane and keeps it only where v < −88, where it is normal; for |v| < 1.9 the unused
 * quotient is subnormal. No GroupNorm input or output is subnormal. Elsewhere a flushed value is
 * below 1.2e-38 next to terms of order 1 (a sampling weight next to the maximum's 1, a rare
 * sgemm product): it could change a result only where a double sum lands within ~1e-35 of a
 * top-p cut or of the draw's target. */
#ifndef VS_RT_FPENV_H
#define VS_RT_FPENV_H

/* Flush subnormals to zero on the calling thread (FTZ and DAZ; FZ on aarch64). Idempotent. */
void vs_rt_fp_env_init(void);

/* 1 when the calling thread flushes subnormals (outputs and inputs), 0 when it does not, −1 on an
 * architecture where vs_rt_fp_env_init does nothing. */
int vs_rt_fp_env_flushing(void);

/* Back to IEEE gradual underflow on the calling thread (the process default); for tests. */
void vs_rt_fp_env_reset(void);

#endif
