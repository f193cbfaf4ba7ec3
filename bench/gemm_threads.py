#!/usr/bin/python3
"""Who should thread the GEMMs: varserve's own pool or OpenBLAS? Measured on this machine.

    /usr/bin/python3 bench/gemm_threads.py [--threads 2] [--reps 5]

The CPU backend (runtime/backend_cpu.c) runs OpenBLAS single-threaded and splits each GEMM over
its own pool: a convolution by bands of output rows (one im2col + sgemm per band), a linear by
blocks of rows. The alternative is one sgemm call with OpenBLAS's own threads. For the GEMM shapes
of the tiny fixture (tests/fixtures/tiny: 256×256 decoder) and the bundled model, this times both:

  pool      T Python threads, each calling single-threaded OpenBLAS on its share of the units
            (ctypes releases the GIL in the call, so they run in parallel as the pool's workers do)
  openblas  one call over the whole product with openblas_set_num_threads(T)

and prints GFLOP/s for each and the faster. Only the GEMM is timed (the pool's im2col runs inside
its units, which favours the pool further: OpenBLAS would need the whole im2col first). No
oversubscription either way: T threads in all. Record the result in bench/RESULTS.md with the CPU
and the load average.
"""
import argparse
import ctypes
import ctypes.util
import os
import threading
import time

import numpy as np

FP = ctypes.POINTER(ctypes.c_float)


def blas_lib():
    lib = ctypes.CDLL(ctypes.util.find_library('openblas') or 'libopenblas.so.0')
    lib.openblas_set_num_threads.argtypes = [ctypes.c_int]
    return lib


def sgemm(lib, M, N, K, a, lda, b, ldb, c, ldc):
    """Row-major C[M][N] = A[M][K] · B[K][N] (no transposes), on numpy views."""
    lib.cblas_sgemm(101, 111, 111, M, N, K, ctypes.c_float(1.0), a.ctypes.data_as(FP), lda,
                    b.ctypes.data_as(FP), ldb, ctypes.c_float(0.0), c.ctypes.data_as(FP), ldc)


def conv_units(H, W, KK, cout):
    """The bands cpu_conv2d picks for one image: (rows per band, bands)."""
    per_row = KK * W
    band = max(1, min(H, (1 << 18) // per_row))
    while band > 1 and (H + band - 1) // band < 4:
        band = (band + 1) // 2
    return band, (H + band - 1) // band


def time_best(fn, reps):
    fn()
    best = float('inf')
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_shape(lib, threads, reps, cout, cols_total, KK, unit_cols):
    """GEMM w[cout][KK] · col[KK][cols_total], split by units of unit_cols columns (pool) or whole."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((cout, KK), dtype=np.float32)
    col = rng.standard_normal((KK, cols_total), dtype=np.float32)
    y = np.zeros((cout, cols_total), dtype=np.float32)
    units = [(u, min(unit_cols, cols_total - u)) for u in range(0, cols_total, unit_cols)]
    # each worker im2cols its band into its own contiguous buffer: give each unit its own copy
    unit_col = [np.ascontiguousarray(col[:, u:u + n]) for u, n in units]

    def pool():
        lib.openblas_set_num_threads(1)

        def work(i):
            per = len(units) // threads
            rem = len(units) % threads
            b = i * per + min(i, rem)
            e = b + per + (1 if i < rem else 0)
            for k in range(b, e):
                u, n = units[k]
                sgemm(lib, cout, n, KK, w, KK, unit_col[k], n, y[:, u:], cols_total)
        ts = [threading.Thread(target=work, args=(i,)) for i in range(1, threads)]
        for t in ts:
            t.start()
        work(0)
        for t in ts:
            t.join()

    def whole():
        lib.openblas_set_num_threads(threads)
        sgemm(lib, cout, cols_total, KK, w, KK, col, cols_total, y, cols_total)

    flops = 2.0 * cout * cols_total * KK
    tp = time_best(pool, reps)
    tw = time_best(whole, reps)
    lib.openblas_set_num_threads(1)
    return flops / tp / 1e9, flops / tw / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    ap.add_argument('--reps', type=int, default=5)
    args = ap.parse_args()
    lib = blas_lib()
    # (what, cout, cin, k, H=W): the tiny decoder's 3×3 convolutions at each resolution, and the
    # bundled model's; then linears as (what, N, K, M) with the pool's row blocks
    convs = [('tiny conv 128->128 @16', 128, 128, 3, 16), ('tiny conv 64->64 @64', 64, 64, 3, 64),
             ('tiny conv 64->64 @128', 64, 64, 3, 128), ('tiny conv 32->32 @256', 32, 32, 3, 256),
             ('mnist conv 64->64 @8', 64, 64, 3, 8), ('mnist conv 32->32 @32', 32, 32, 3, 32)]
    lib.openblas_get_corename.restype = ctypes.c_char_p
    # OpenBLAS picks its kernel table when it loads; varserve pins one (runtime/blas.h, its bench's
    # "blas"): run this with OPENBLAS_CORETYPE set to that table to measure what varserve runs
    print('%d threads, best of %d; GFLOP/s; OpenBLAS %s kernels (%s)' % (
        args.threads, args.reps, lib.openblas_get_corename().decode(),
        'OPENBLAS_CORETYPE=' + os.environ['OPENBLAS_CORETYPE'] if os.environ.get('OPENBLAS_CORETYPE')
        else "OpenBLAS's own choice"))
    print('| GEMM | shape (M×N×K) | pool | openblas | faster |')
    print('|---|---|---:|---:|---|')
    for what, cout, cin, k, R in convs:
        KK = cin * k * k
        band, _ = conv_units(R, R, KK, cout)
        p, o = bench_shape(lib, args.threads, args.reps, cout, R * R, KK, band * R)
        print('| %s | %d×%d×%d (bands of %d rows) | %.1f | %.1f | %s |'
              % (what, cout, R * R, KK, band, p, o, 'pool' if p >= o else 'openblas'))
    # linears: y[M][N] = x[M][K] · wᵀ; the pool splits M into 256-row blocks (M ≥ 512)
    for what, N, K, M in [('tiny fc1 (batch 8, last scale)', 512, 128, 2 * 8 * 256),
                          ('tiny head (batch 8, last scale)', 4096, 128, 2 * 8 * 256),
                          ('mnist fc1 (batch 32, last scale)', 512, 128, 2 * 32 * 64)]:
        blk = 256 if M >= 512 else 64
        # the same product transposed (yᵀ = w · xᵀ) splits M into column units of the same size
        p, o = bench_shape(lib, args.threads, args.reps, N, M, K, blk)
        print('| %s | %d×%d×%d (blocks of %d rows) | %.1f | %.1f | %s |'
              % (what, M, N, K, blk, p, o, 'pool' if p >= o else 'openblas'))
    print('load average after: %s' % ' '.join('%.2f' % x for x in os.getloadavg()))


if __name__ == '__main__':
    main()
