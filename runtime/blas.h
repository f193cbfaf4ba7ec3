/* runtime/blas.h — which of OpenBLAS's kernel tables the CPU backend's GEMMs run on.
 *
 * OpenBLAS (built with DYNAMIC_ARCH, as Debian's is) picks a kernel table for the CPU in its
 * load-time constructor, before main. A CPU newer than the library can get a table far below what
 * it runs: Debian 12's OpenBLAS 0.3.21 puts an Intel Xeon of family 6 model 207 (AVX-512 with
 * BF16) on its SSE3 "Prescott" kernels, where sgemm runs about 4 times slower than on its SkylakeX
 * kernels and the direct convolution (whose check compares with the SkylakeX summation order) is
 * never taken (bench/RESULTS.md "OpenBLAS's kernel table").
 *
 * The rule, one for every x86-64 CPU: with AVX-512 (F, BW, DQ, VL: runtime/simd.h's avx512 path)
 * the GEMMs run on OpenBLAS's SkylakeX table; with AVX2 and FMA but not AVX-512, on Haswell's or
 * Zen's (Zen's, which OpenBLAS picks itself on AMD, uses the same kernels). Other CPUs and
 * architectures keep OpenBLAS's own choice. One table for all AVX-512 CPUs also means one
 * summation order, so they give the same bits.
 *
 * How: the table can only be chosen through OPENBLAS_CORETYPE before the library loads, so
 * vs_rt_blas_pin_core, called first thing in main (before any thread exists), sets it and
 * re-executes the same program with the same arguments (execv keeps the pid, so a supervisor sees
 * one process) when the loaded table is not the rule's. An OPENBLAS_CORETYPE set by the user is
 * left alone: that is how to choose another table. */
#ifndef VS_RT_BLAS_H
#define VS_RT_BLAS_H

/* Applies the rule above; returns only when no re-execution is needed or when it failed (then
 * the process goes on with OpenBLAS's choice and vs_rt_blas_describe says so). argv is main's. */
void vs_rt_blas_pin_core(char **argv);

/* One line for logs, bench and /info (computed once; the pointer stays valid): the library, the table in use and who chose it, e.g.
 * "OpenBLAS 0.3.21, SkylakeX kernels (pinned by varserve; OpenBLAS chose Prescott)". */
const char *vs_rt_blas_describe(void);

#endif
