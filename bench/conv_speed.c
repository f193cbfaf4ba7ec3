/* bench/conv_speed.c — the CPU backend's conv2d on the tiny fixture's decoder shapes (one thread,
 * one image, best of 5), against im2col of the whole map + one OpenBLAS sgemm (what conv2d did
 * before its direct path, but in one GEMM rather than per band; this im2col is a plain loop, so
 * the sgemm alone, im2col excluded, is also given: the old path's upper bound). GFLOP/s of the thread's CPU time,
 * so that other processes on a shared machine disturb it less than wall-clock time.
 *
 *     make && cc -O2 -I. -I/usr/include/x86_64-linux-gnu/openblas-pthread -o build/conv_speed \
 *        bench/conv_speed.c build/libvarserve.a -lopenblas -lm -lpthread
 *     ./build/conv_speed
 *
 * (A build with the CUDA backend also needs the CUDA libraries `make` links varserve with:
 * -L/usr/local/cuda/lib64 -lcudart -lcublas -lcublasLt -lcudnn -lstdc++.)
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/backend.h"
#include "runtime/blas.h"

void openblas_set_num_threads(int num_threads);

static double cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void im2col(const float *x, float *col, int cin, int H, int W)
{
    int HW = H * W;
    for (int ci = 0; ci < cin; ci++)
        for (int t = 0; t < 9; t++) {
            int dy = t / 3 - 1, dx = t % 3 - 1;
            float *d = col + (size_t)(ci * 9 + t) * HW;
            for (int yy = 0; yy < H; yy++)
                for (int xx = 0; xx < W; xx++) {
                    int sy = yy + dy, sx = xx + dx;
                    d[yy * W + xx] = sy >= 0 && sy < H && sx >= 0 && sx < W
                                         ? x[(size_t)ci * HW + sy * W + sx] : 0.0f;
                }
        }
}

static void sgemm(float *y, const float *w, const float *col, int cin, int HW, int cout)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout, HW, cin * 9, 1.0f, w, cin * 9, col,
                HW, 0.0f, y, HW);
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the sgemm on the kernels varserve runs (runtime/blas.h) */
    static const int shapes[][3] = {{128, 128, 16}, {64, 64, 32}, {64, 64, 64}, {64, 64, 128},
                                    {32, 32, 128}, {32, 32, 256}, {32, 3, 256}};
    vs_rt_backend *be = NULL;
    vs_err err = {0};
    if (vs_rt_backend_new(VS_RT_BACKEND_CPU, 1, &be, &err) != VS_OK) {
        fprintf(stderr, "conv_speed: %s\n", err.msg);
        return 1;
    }
    openblas_set_num_threads(1);
    printf("backend simd %s; GFLOP/s of thread CPU time, 3x3 convs, one image\n", be->simd);
    printf("| cin→cout @ HxW | conv2d | im2col + sgemm | sgemm alone |\n|---|---:|---:|---:|\n");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int cin = shapes[s][0], cout = shapes[s][1], H = shapes[s][2], W = H;
        size_t in = (size_t)cin * H * W, out = (size_t)cout * H * W, K = (size_t)cin * 9;
        float *x = malloc(in * 4), *w = malloc(cout * K * 4), *b = calloc((size_t)cout, 4);
        float *y = malloc(out * 4), *col = malloc(K * H * W * 4);
        for (size_t i = 0; i < in; i++)
            x[i] = (float)(i % 13) * 0.1f - 0.6f;
        for (size_t i = 0; i < cout * K; i++)
            w[i] = (float)(i % 7) * 0.01f - 0.03f;
        be->ops->conv2d(be, y, x, w, b, 1, cin, H, W, cout, 3); /* first call: the shape's check */
        double best[3] = {1e9, 1e9, 1e9};
        for (int r = 0; r < 5; r++) {
            double t0 = cpu_s();
            be->ops->conv2d(be, y, x, w, b, 1, cin, H, W, cout, 3);
            double t1 = cpu_s();
            im2col(x, col, cin, H, W);
            double t2 = cpu_s();
            sgemm(y, w, col, cin, H * W, cout);
            double t3 = cpu_s();
            best[0] = t1 - t0 < best[0] ? t1 - t0 : best[0];
            best[1] = t3 - t1 < best[1] ? t3 - t1 : best[1];
            best[2] = t3 - t2 < best[2] ? t3 - t2 : best[2];
        }
        double gf = 2.0 * (double)cout * (double)K * H * W / 1e9;
        printf("| %d→%d @ %dx%d | %.1f | %.1f | %.1f |\n", cin, cout, H, W, gf / best[0],
               gf / best[1], gf / best[2]);
        free(x);
        free(w);
        free(b);
        free(y);
        free(col);
    }
    vs_rt_backend_free(be);
    return 0;
}
