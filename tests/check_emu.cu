/* tests/check_emu.cu — the emulated CUDA device (runtime/cuda_emu/) against CUDA's semantics.
 *
 * check_cuda passing under emulation only means something if the emulator runs kernels as a GPU
 * would: barriers that really wait, warp exchanges that read the right lane, shared memory per
 * block, launch checks, faults that stick, cuBLAS with cuBLAS's layouts and TF32 rounding, cuBLASLt's
 * epilogues, cuDNN's
 * convolution against a naive one (every algorithm it offers, its bias epilogue and checks), BF16
 * conversions to nearest even, wmma tiles against a plain loop in every layout (and, emulator
 * only, wmma's alignment and whole-warp checks). Each test here would fail against a naive emulator (threads run
 * to completion one after another, or a GEMM with a transposed layout).
 *
 * The kernel tests are plain CUDA: bench/gpu-check.sh also builds this file with nvcc and runs it
 * on a real GPU, which checks the emulator's semantics against the hardware; the tests of what
 * only the emulator has (guard bytes, fault injection, thread order, its memory size) are compiled
 * only with VS_CUDA_EMU. Each test runs in its own process (libcheck's fork mode): a fault is
 * sticky for the life of a process, on a GPU as here. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/cuda_device.h"

#define CK(call) ck_assert_int_eq((int)(call), (int)cudaSuccess)

template <typename T> static T *dev_alloc(size_t n)
{
    void *p = NULL;
    CK(cudaMalloc(&p, n * sizeof(T)));
    return (T *)p;
}

template <typename T> static void to_host(T *h, const T *d, size_t n)
{
    CK(cudaMemcpy(h, d, n * sizeof(T), cudaMemcpyDeviceToHost));
}

/* ---- barriers and shared memory ------------------------------------------------------------- */

/* each thread reads what its neighbour wrote before the barrier */
__global__ void k_neighbour(int *out)
{
    __shared__ int sh[256];
    int t = threadIdx.x;
    sh[t] = t * 7 + (int)blockIdx.x;
    __syncthreads();
    out[blockIdx.x * blockDim.x + t] = sh[(t + 1) % blockDim.x];
}

START_TEST(syncthreads_waits_for_every_thread_of_the_block)
{
    int *d = dev_alloc<int>(3 * 256), h[3 * 256];
    VS_LAUNCH(k_neighbour, 3, 256, 0, 0, d);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    to_host(h, d, 3 * 256);
    for (int b = 0; b < 3; b++)
        for (int t = 0; t < 256; t++)
            ck_assert_int_eq(h[b * 256 + t], ((t + 1) % 256) * 7 + b);
    CK(cudaFree(d));
}
END_TEST

/* half the threads return first; the barrier counts only the threads still running */
__global__ void k_early_exit(int *out)
{
    __shared__ int sh[128];
    int t = threadIdx.x;
    if (t >= 64)
        return;
    sh[t] = t;
    __syncthreads();
    out[t] = sh[63 - t] + __syncthreads_count(t % 3 == 0);
}

START_TEST(threads_that_returned_do_not_hold_a_barrier)
{
    int *d = dev_alloc<int>(64), h[64];
    VS_LAUNCH(k_early_exit, 1, 128, 0, 0, d);
    CK(cudaDeviceSynchronize());
    to_host(h, d, 64);
    for (int t = 0; t < 64; t++)
        ck_assert_int_eq(h[t], 63 - t + 22); /* 22 of 0..63 are multiples of 3 */
    CK(cudaFree(d));
}
END_TEST

/* dynamic shared memory: per block, the launch's size; 2-D blocks index threads x-fastest */
__global__ void k_dyn(float *out, int n)
{
    VS_DYNAMIC_SHARED(float, buf);
    int t = threadIdx.x + blockDim.x * threadIdx.y;
    int nt = blockDim.x * blockDim.y;
    for (int i = t; i < n; i += nt)
        buf[i] = (float)(i + 1000 * blockIdx.y);
    __syncthreads();
    float s = 0;
    for (int i = 0; i < n; i++)
        s += buf[(i + t) % n];
    out[(blockIdx.y * gridDim.x + blockIdx.x) * nt + t] = s;
}

START_TEST(dynamic_shared_memory_is_per_block_and_limited_like_a_gpu)
{
    int n = 4000;
    float *d = dev_alloc<float>(2 * 3 * 64), h[2 * 3 * 64];
    VS_LAUNCH(k_dyn, dim3(2, 3), dim3(16, 4), (size_t)n * sizeof(float), 0, d, n);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    to_host(h, d, 2 * 3 * 64);
    for (int b = 0; b < 6; b++) {
        double want = (double)n * (n - 1) / 2 + 1000.0 * n * (b / 2);
        for (int t = 0; t < 64; t++)
            ck_assert_msg(fabs(h[b * 64 + t] - want) <= 1e-6 * want, "block %d thread %d: %g, want %g",
                          b, t, (double)h[b * 64 + t], want);
    }
    /* over 48 KiB needs the kernel's attribute raised first, as on a GPU */
    int big = 60 * 1024;
    VS_LAUNCH(k_dyn, 1, 64, (size_t)big, 0, d, 16);
    ck_assert_int_ne((int)cudaGetLastError(), (int)cudaSuccess);
    CK(cudaGetLastError()); /* a launch error is not sticky */
    CK(cudaFuncSetAttribute(k_dyn, cudaFuncAttributeMaxDynamicSharedMemorySize, big));
    VS_LAUNCH(k_dyn, 1, 64, (size_t)big, 0, d, big / 4);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    CK(cudaFree(d));
}
END_TEST

START_TEST(a_bad_launch_configuration_is_a_launch_error_that_clears)
{
    int *d = dev_alloc<int>(2048);
    VS_LAUNCH(k_neighbour, 1, 1025, 0, 0, d);
    ck_assert_int_eq((int)cudaGetLastError(), (int)cudaErrorInvalidConfiguration);
    CK(cudaGetLastError());
    VS_LAUNCH(k_neighbour, 0, 32, 0, 0, d);
    ck_assert_int_eq((int)cudaGetLastError(), (int)cudaErrorInvalidConfiguration);
    VS_LAUNCH(k_neighbour, 1, 256, 0, 0, d); /* the device goes on */
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    CK(cudaFree(d));
}
END_TEST

/* ---- warps --------------------------------------------------------------------------------------- */

__global__ void k_warp(int *out)
{
    int t = threadIdx.x, l = t & 31;
    int *o = out + t * 8;
    o[0] = __shfl_xor_sync(0xffffffffu, t * 10, 5);
    o[1] = __shfl_down_sync(0xffffffffu, t * 10, 3);
    o[2] = __shfl_up_sync(0xffffffffu, t * 10, 2);
    o[3] = __shfl_sync(0xffffffffu, t * 10, (l * 3) % 32);
    o[4] = (int)__ballot_sync(0xffffffffu, l % 4 == 1);
    o[5] = __any_sync(0xffffffffu, t == 40);
    o[6] = __all_sync(0xffffffffu, l < 31);
    o[7] = __shfl_xor_sync(0xffffffffu, t, 1, 8); /* width 8 */
}

START_TEST(warp_shuffles_and_votes_read_the_right_lanes)
{
    int n = 64, *d = dev_alloc<int>((size_t)n * 8), h[64 * 8];
    VS_LAUNCH(k_warp, 1, n, 0, 0, d);
    CK(cudaDeviceSynchronize());
    to_host(h, d, (size_t)n * 8);
    for (int t = 0; t < n; t++) {
        int l = t & 31, w = t - l, *o = h + t * 8;
        ck_assert_int_eq(o[0], (w + (l ^ 5)) * 10);
        ck_assert_int_eq(o[1], (l + 3 < 32 ? t + 3 : t) * 10);
        ck_assert_int_eq(o[2], (l >= 2 ? t - 2 : t) * 10);
        ck_assert_int_eq(o[3], (w + (l * 3) % 32) * 10);
        ck_assert_int_eq((unsigned)o[4], 0x22222222u);
        ck_assert_int_eq(o[5], w == 32); /* thread 40 is in the second warp */
        ck_assert_int_eq(o[6], 0);
        ck_assert_int_eq(o[7], t ^ 1);
    }
    CK(cudaFree(d));
}
END_TEST

/* a block reduction through shuffles and shared memory, as backend_cuda.cu's block_sum */
__global__ void k_reduce(const float *x, double *out, int n)
{
    __shared__ double sh[32];
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += x[i];
    for (int o = 16; o > 0; o >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0)
        sh[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double r = 0;
        for (unsigned i = 0; i < blockDim.x / 32; i++)
            r += sh[i];
        *out = r;
    }
}

START_TEST(a_block_reduction_of_1024_threads_sums_every_element)
{
    int n = 100000;
    float *h = (float *)malloc(n * sizeof(float));
    double want = 0, got = 0;
    for (int i = 0; i < n; i++)
        want += (h[i] = (float)((i * 37) % 101) - 50.0f);
    float *d = dev_alloc<float>(n);
    double *r = dev_alloc<double>(1);
    CK(cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice));
    VS_LAUNCH(k_reduce, 1, 1024, 0, 0, d, r, n);
    CK(cudaDeviceSynchronize());
    to_host(&got, r, 1);
    ck_assert_msg(got == want, "sum %g, want %g", got, want);
    CK(cudaFree(d));
    CK(cudaFree(r));
    free(h);
}
END_TEST

/* ---- memory -------------------------------------------------------------------------------------- */

START_TEST(copies_outside_an_allocation_fail_and_the_device_goes_on)
{
    float *d = dev_alloc<float>(100), h[200];
    memset(h, 0, sizeof h);
    ck_assert_int_eq((int)cudaMemcpy(d, h, 101 * sizeof(float), cudaMemcpyHostToDevice),
                     (int)cudaErrorInvalidValue);
    ck_assert_int_eq((int)cudaMemcpy(h, d + 50, 51 * sizeof(float), cudaMemcpyDeviceToHost),
                     (int)cudaErrorInvalidValue);
    ck_assert_int_eq((int)cudaMemset(d + 1, 0, 100 * sizeof(float)), (int)cudaErrorInvalidValue);
    ck_assert_int_eq((int)cudaGetLastError(), (int)cudaErrorInvalidValue); /* the last error, */
    CK(cudaGetLastError());                                                 /* cleared: not sticky */
    CK(cudaMemcpy(d, h, 100 * sizeof(float), cudaMemcpyHostToDevice));
    CK(cudaFree(d));
}
END_TEST

/* ---- cuBLAS --------------------------------------------------------------------------------------- */

/* C = op(A)·op(B), column-major, the reference */
static void naive(int ta, int tb, int m, int n, int k, const float *A, int lda, const float *B,
                  int ldb, float *C, int ldc, float (*r)(float))
{
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int p = 0; p < k; p++) {
                float a = ta ? A[i * lda + p] : A[p * lda + i];
                float b = tb ? B[p * ldb + j] : B[j * ldb + p];
                s += (double)r(a) * r(b);
            }
            C[j * ldc + i] = (float)s;
        }
}

static float same(float v) { return v; }
static float tf32(float v)
{
    unsigned u;
    memcpy(&u, &v, 4);
    u = (u + 0x1000u) & 0xffffe000u;
    memcpy(&v, &u, 4);
    return v;
}

START_TEST(sgemm_follows_cublas_layouts_and_tf32_mode_rounds_the_inputs)
{
    int m = 7, n = 5, k = 300, lda = 310, ldb = 320, ldc = 9;
    float *A = (float *)malloc(310 * 310 * 4), *B = (float *)malloc(320 * 320 * 4);
    float C[9 * 5], R[9 * 5], R32[9 * 5];
    for (int i = 0; i < 310 * 310; i++)
        A[i] = sinf((float)i * 0.37f);
    for (int i = 0; i < 320 * 320; i++)
        B[i] = cosf((float)i * 0.11f);
    float *dA = dev_alloc<float>(310 * 310), *dB = dev_alloc<float>(320 * 320), *dC = dev_alloc<float>(9 * 5);
    CK(cudaMemcpy(dA, A, 310 * 310 * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dB, B, 320 * 320 * 4, cudaMemcpyHostToDevice));
    cublasHandle_t h;
    ck_assert_int_eq(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    float one = 1, zero = 0;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            for (int mode = 0; mode < 2; mode++) {
                ck_assert_int_eq(cublasSetMathMode(h, mode ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
                                 CUBLAS_STATUS_SUCCESS);
                ck_assert_int_eq(cublasSgemm(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                             m, n, k, &one, dA, lda, dB, ldb, &zero, dC, ldc),
                                 CUBLAS_STATUS_SUCCESS);
                CK(cudaDeviceSynchronize());
                to_host(C, dC, 9 * 5);
                naive(ta, tb, m, n, k, A, lda, B, ldb, R32, ldc, same);
                naive(ta, tb, m, n, k, A, lda, B, ldb, R, ldc, mode ? tf32 : same);
                double e = 0, e32 = 0;
                for (int j = 0; j < n; j++)
                    for (int i = 0; i < m; i++) {
                        e = fmax(e, fabs(C[j * ldc + i] - R[j * ldc + i]));
                        e32 = fmax(e32, fabs(C[j * ldc + i] - R32[j * ldc + i]));
                    }
                ck_assert_msg(e < 1e-4, "ta %d tb %d mode %d: off by %g", ta, tb, mode, e);
#ifdef VS_CUDA_EMU
                /* the emulator rounds exactly as described; a GPU's TF32 may differ in detail */
                if (mode)
                    ck_assert_msg(e32 > 10 * e, "TF32 mode did not round (off FP32 by %g)", e32);
#endif
            }
        }
    cublasDestroy(h);
    CK(cudaFree(dA));
    CK(cudaFree(dB));
    CK(cudaFree(dC));
    free(A);
    free(B);
}
END_TEST

/* ---- cuBLASLt's matmul with epilogues ---------------------------------------------------------- */

static double max_diff(const float *a, const float *b, size_t n)
{
    double e = 0;
    for (size_t i = 0; i < n; i++)
        e = fmax(e, fabs((double)a[i] - b[i]));
    return e;
}

static float gelu_ref(float v)
{
    return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}

/* D = epilogue(op(A)·op(B)): yᵀ = wᵀ·x as varserve's linear asks it (A = w K×N transposed, B = x
 * K×M), with the bias along D's rows and GELU after it, FP32 and BF16 inputs */
START_TEST(cublaslt_epilogues_add_the_bias_per_row_and_apply_gelu_after_it)
{
    const int M = 6, N = 9, K = 70;
    float w[N * K], x[M * K], bias[N], D[N * M], R[N * M];
    for (int i = 0; i < N * K; i++)
        w[i] = sinf((float)i * 0.3f) * 0.2f;
    for (int i = 0; i < M * K; i++)
        x[i] = cosf((float)i * 0.17f);
    for (int i = 0; i < N; i++)
        bias[i] = 0.1f * (float)i - 0.5f;
    float *dw = dev_alloc<float>(N * K), *dx = dev_alloc<float>(M * K), *db = dev_alloc<float>(N);
    float *dD = dev_alloc<float>(N * M);
    __nv_bfloat16 *dwb = dev_alloc<__nv_bfloat16>(N * K), *dxb = dev_alloc<__nv_bfloat16>(M * K);
    __nv_bfloat16 hb[N * K > M * K ? N * K : M * K];
    CK(cudaMemcpy(dw, w, sizeof w, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dx, x, sizeof x, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(db, bias, sizeof bias, cudaMemcpyHostToDevice));
    for (int i = 0; i < N * K; i++)
        hb[i] = __float2bfloat16_rn(w[i]);
    CK(cudaMemcpy(dwb, hb, N * K * 2, cudaMemcpyHostToDevice));
    for (int i = 0; i < M * K; i++)
        hb[i] = __float2bfloat16_rn(x[i]);
    CK(cudaMemcpy(dxb, hb, M * K * 2, cudaMemcpyHostToDevice));
    cublasLtHandle_t h;
    ck_assert_int_eq(cublasLtCreate(&h), CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulDesc_t d;
    ck_assert_int_eq(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
    int32_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N, bt = CUDA_R_32F;
    ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), 0);
    ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), 0);
    ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt), 0);
    ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &db, sizeof db), 0);
    /* an attribute of the wrong size is refused */
    int16_t small = 0;
    ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &small, sizeof small),
                     CUBLAS_STATUS_INVALID_VALUE);
    static const uint32_t eps[] = {CUBLASLT_EPILOGUE_DEFAULT, CUBLASLT_EPILOGUE_BIAS,
                                   CUBLASLT_EPILOGUE_GELU, CUBLASLT_EPILOGUE_GELU_BIAS};
    float one = 1, zero = 0;
    for (int bf = 0; bf < 2; bf++) {
        cudaDataType t = bf ? CUDA_R_16BF : CUDA_R_32F;
        cublasLtMatrixLayout_t la, lb, ly;
        ck_assert_int_eq(cublasLtMatrixLayoutCreate(&la, t, K, N, K), 0);
        ck_assert_int_eq(cublasLtMatrixLayoutCreate(&lb, t, K, M, K), 0);
        ck_assert_int_eq(cublasLtMatrixLayoutCreate(&ly, CUDA_R_32F, N, M, N), 0);
        for (size_t e = 0; e < sizeof eps / sizeof eps[0]; e++) {
            ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &eps[e],
                                                            sizeof eps[e]), 0);
            CK(cudaMemset(dD, 0xff, sizeof D)); /* NaN: β = 0 must not read C */
            ck_assert_int_eq(cublasLtMatmul(h, d, &one, bf ? (const void *)dwb : dw, la,
                                            bf ? (const void *)dxb : dx, lb, &zero, dD, ly, dD, ly,
                                            NULL, NULL, 0, 0),
                             CUBLAS_STATUS_SUCCESS);
            CK(cudaDeviceSynchronize());
            to_host(D, dD, N * M);
            bool with_bias = eps[e] & CUBLASLT_EPILOGUE_BIAS, with_gelu = eps[e] & CUBLASLT_EPILOGUE_GELU;
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    double acc = 0;
                    for (int k = 0; k < K; k++) {
                        float a = w[n * K + k], b = x[m * K + k];
                        if (bf) {
                            a = __bfloat162float(__float2bfloat16_rn(a));
                            b = __bfloat162float(__float2bfloat16_rn(b));
                        }
                        acc += (double)a * b;
                    }
                    float v = (float)acc + (with_bias ? bias[n] : 0.0f);
                    R[m * N + n] = with_gelu ? gelu_ref(v) : v;
                }
            double err = max_diff(D, R, N * M);
            ck_assert_msg(err < 1e-4, "epilogue %u, %s inputs: off by %g", eps[e], bf ? "BF16" : "FP32", err);
        }
        /* layouts that do not agree (x with one row too few) */
        cublasLtMatrixLayout_t bad;
        ck_assert_int_eq(cublasLtMatrixLayoutCreate(&bad, t, K - 1, M, K), 0);
        ck_assert_int_ne(cublasLtMatmul(h, d, &one, bf ? (const void *)dwb : dw, la,
                                        bf ? (const void *)dxb : dx, bad, &zero, dD, ly, dD, ly,
                                        NULL, NULL, 0, 0),
                         CUBLAS_STATUS_SUCCESS);
        cublasLtMatrixLayoutDestroy(bad);
        cublasLtMatrixLayoutDestroy(la);
        cublasLtMatrixLayoutDestroy(lb);
        cublasLtMatrixLayoutDestroy(ly);
    }
    cublasLtMatmulDescDestroy(d);
    cublasLtDestroy(h);
    CK(cudaFree(dw));
    CK(cudaFree(dx));
    CK(cudaFree(db));
    CK(cudaFree(dD));
    CK(cudaFree(dwb));
    CK(cudaFree(dxb));
}
END_TEST

/* A BF16 D (and C): the epilogue's FP32 result (bias of D's type, BF16, then GELU) rounded to
 * nearest even, as the CUDA backend's linear into BF16 activations asks it; a bias of another type
 * than D's, or a C of another type, is refused as cublasLt.h documents (bias: D's type). */
START_TEST(cublaslt_writes_a_bf16_d_with_a_bf16_bias_rounded_to_nearest_even)
{
    const int M = 5, N = 7, K = 40;
    __nv_bfloat16 hw[N * K], hx[M * K], hbias[N], hD[N * M];
    float bias32[N];
    for (int i = 0; i < N * K; i++)
        hw[i] = __float2bfloat16_rn(sinf((float)i * 0.3f) * 0.2f);
    for (int i = 0; i < M * K; i++)
        hx[i] = __float2bfloat16_rn(cosf((float)i * 0.17f));
    for (int i = 0; i < N; i++)
        hbias[i] = __float2bfloat16_rn(bias32[i] = 0.13f * (float)i - 0.41f);
    __nv_bfloat16 *dw = dev_alloc<__nv_bfloat16>(N * K), *dx = dev_alloc<__nv_bfloat16>(M * K);
    __nv_bfloat16 *db = dev_alloc<__nv_bfloat16>(N), *dD = dev_alloc<__nv_bfloat16>(N * M);
    float *db32 = dev_alloc<float>(N);
    CK(cudaMemcpy(dw, hw, sizeof hw, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dx, hx, sizeof hx, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(db, hbias, sizeof hbias, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(db32, bias32, sizeof bias32, cudaMemcpyHostToDevice));
    cublasLtHandle_t h;
    ck_assert_int_eq(cublasLtCreate(&h), CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulDesc_t d;
    ck_assert_int_eq(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
    int32_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    uint32_t ep = CUBLASLT_EPILOGUE_GELU_BIAS;
    ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), 0);
    ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), 0);
    ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep), 0);
    ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &db, sizeof db), 0);
    cublasLtMatrixLayout_t la, lb, ly, ly32;
    ck_assert_int_eq(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, K, N, K), 0);
    ck_assert_int_eq(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, M, K), 0);
    ck_assert_int_eq(cublasLtMatrixLayoutCreate(&ly, CUDA_R_16BF, N, M, N), 0);
    ck_assert_int_eq(cublasLtMatrixLayoutCreate(&ly32, CUDA_R_32F, N, M, N), 0);
    float one = 1, zero = 0;
    /* the bias type left at its default (-1): D's type */
    CK(cudaMemset(dD, 0xff, sizeof hD)); /* NaN: β = 0 must not read C */
    ck_assert_int_eq(cublasLtMatmul(h, d, &one, dw, la, dx, lb, &zero, dD, ly, dD, ly, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_SUCCESS);
    CK(cudaDeviceSynchronize());
    to_host(hD, dD, N * M);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = 0;
            for (int k = 0; k < K; k++)
                acc += (double)__bfloat162float(hw[n * K + k]) * __bfloat162float(hx[m * K + k]);
            float v = gelu_ref((float)acc + __bfloat162float(hbias[n]));
            float got = __bfloat162float(hD[m * N + n]);
            /* FP32 accumulation differs from the double reference in the last bits, so the
             * rounding is checked against both neighbours of v */
            float lo = __bfloat162float(__float2bfloat16_rn(v * (1 - 1e-6f))),
                  hi = __bfloat162float(__float2bfloat16_rn(v * (1 + 1e-6f)));
            ck_assert_msg(got == lo || got == hi, "D[%d][%d] = %g, not %g rounded to BF16", m, n,
                          (double)got, (double)v);
        }
    int32_t bt = CUDA_R_16BF;
    ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt), 0);
    ck_assert_int_eq(cublasLtMatmul(h, d, &one, dw, la, dx, lb, &zero, dD, ly, dD, ly, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_SUCCESS);
    /* an FP32 bias with a BF16 D, and a C whose type is not D's, are refused */
    bt = CUDA_R_32F;
    ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt), 0);
    ck_assert_int_eq(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &db32, sizeof db32), 0);
    ck_assert_int_ne(cublasLtMatmul(h, d, &one, dw, la, dx, lb, &zero, dD, ly, dD, ly, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_SUCCESS);
    ck_assert_int_ne(cublasLtMatmul(h, d, &one, dw, la, dx, lb, &zero, dD, ly32, dD, ly, NULL, NULL, 0, 0),
                     CUBLAS_STATUS_SUCCESS);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(ly);
    cublasLtMatrixLayoutDestroy(ly32);
    cublasLtMatmulDescDestroy(d);
    cublasLtDestroy(h);
    CK(cudaFree(dw));
    CK(cudaFree(dx));
    CK(cudaFree(db));
    CK(cudaFree(db32));
    CK(cudaFree(dD));
}
END_TEST

/* ---- cuDNN's forward convolution ------------------------------------------------------------- */

#define DNN(call) ck_assert_int_eq((int)(call), (int)CUDNN_STATUS_SUCCESS)

/* y[n][o][yy][xx] = Σ_{c,ky,kx} w[o][c][ky][kx] · r(x[n][c][yy+ky−k/2][xx+kx−k/2]) (0 outside), in
 * double, + b[o] when b is given: the reference for cuDNN's cross-correlation with padding k/2 */
static void naive_conv(const float *x, const float *w, const float *b, float *y, int N, int cin,
                       int H, int W, int cout, int k, float (*r)(float))
{
    for (int n = 0; n < N; n++)
        for (int o = 0; o < cout; o++)
            for (int yy = 0; yy < H; yy++)
                for (int xx = 0; xx < W; xx++) {
                    double s = 0;
                    for (int c = 0; c < cin; c++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                int sy = yy + ky - k / 2, sx = xx + kx - k / 2;
                                if (sy < 0 || sy >= H || sx < 0 || sx >= W)
                                    continue;
                                s += (double)r(w[((o * cin + c) * k + ky) * k + kx]) *
                                     r(x[((n * cin + c) * H + sy) * W + sx]);
                            }
                    y[((n * cout + o) * H + yy) * W + xx] = (float)(s + (b ? b[o] : 0.0));
                }
}

START_TEST(cudnn_convolution_matches_a_naive_convolution_for_every_offered_algorithm)
{
    const int N = 3, cin = 5, H = 7, W = 9, cout = 4;
    cudnnHandle_t h;
    DNN(cudnnCreate(&h));
    cudnnTensorDescriptor_t xd, yd, bd, bad;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    cudnnActivationDescriptor_t ad;
    DNN(cudnnCreateTensorDescriptor(&xd));
    DNN(cudnnCreateTensorDescriptor(&yd));
    DNN(cudnnCreateTensorDescriptor(&bd));
    DNN(cudnnCreateTensorDescriptor(&bad));
    DNN(cudnnCreateFilterDescriptor(&wd));
    DNN(cudnnCreateConvolutionDescriptor(&cd));
    DNN(cudnnCreateActivationDescriptor(&ad));
    DNN(cudnnSetActivationDescriptor(ad, CUDNN_ACTIVATION_IDENTITY, CUDNN_NOT_PROPAGATE_NAN, 0.0));
    size_t nx = (size_t)N * cin * H * W, ny = (size_t)N * cout * H * W;
    float *x = (float *)malloc(nx * 4), *w = (float *)malloc(cout * cin * 9 * 4), b[4];
    float *y = (float *)malloc(ny * 4), *ref = (float *)malloc(ny * 4);
    for (size_t i = 0; i < nx; i++)
        x[i] = sinf((float)i * 0.71f);
    for (int i = 0; i < cout * cin * 9; i++)
        w[i] = cosf((float)i * 0.37f) * 0.3f;
    for (int i = 0; i < cout; i++)
        b[i] = 0.25f * (float)i - 0.4f;
    float *dx = dev_alloc<float>(nx), *dw = dev_alloc<float>(cout * cin * 9), *db = dev_alloc<float>(cout);
    float *dy = dev_alloc<float>(ny);
    CK(cudaMemcpy(dx, x, nx * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dw, w, cout * cin * 9 * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(db, b, cout * 4, cudaMemcpyHostToDevice));
    float one = 1, zero = 0;
    for (int k = 1; k <= 3; k += 2) {
        DNN(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, cin, H, W));
        DNN(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, cout, H, W));
        DNN(cudnnSetTensor4dDescriptor(bd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, cout, 1, 1));
        DNN(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, cout, cin, k, k));
        DNN(cudnnSetConvolution2dDescriptor(cd, k / 2, k / 2, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION,
                                            CUDNN_DATA_FLOAT));
        DNN(cudnnSetConvolutionMathType(cd, CUDNN_FMA_MATH)); /* strict FP32 */
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        int got = 0, ran = 0;
        DNN(cudnnGetConvolutionForwardAlgorithm_v7(h, xd, wd, cd, yd, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                   &got, perf));
        ck_assert_int_ge(got, 1);
        for (int a = 0; a < got; a++) {
            if (perf[a].status != CUDNN_STATUS_SUCCESS)
                continue;
            size_t ws_bytes = 0;
            DNN(cudnnGetConvolutionForwardWorkspaceSize(h, xd, wd, cd, yd, perf[a].algo, &ws_bytes));
            void *ws = NULL;
            if (ws_bytes)
                CK(cudaMalloc(&ws, ws_bytes));
            /* y = conv(x) */
            DNN(cudnnConvolutionForward(h, &one, xd, dx, wd, dw, cd, perf[a].algo, ws, ws_bytes,
                                        &zero, yd, dy));
            CK(cudaDeviceSynchronize());
            to_host(y, dy, ny);
            naive_conv(x, w, NULL, ref, N, cin, H, W, cout, k, same);
            double e = max_diff(y, ref, ny);
            ck_assert_msg(e < 1e-5, "k %d algorithm %d: off the naive convolution by %g", k,
                          (int)perf[a].algo, e);
            /* y += bias */
            DNN(cudnnAddTensor(h, &one, bd, db, &one, yd, dy));
            CK(cudaDeviceSynchronize());
            to_host(y, dy, ny);
            naive_conv(x, w, b, ref, N, cin, H, W, cout, k, same);
            e = max_diff(y, ref, ny);
            ck_assert_msg(e < 1e-5, "k %d algorithm %d + cudnnAddTensor: off by %g", k,
                          (int)perf[a].algo, e);
            /* the fused bias: the identity activation runs only with IMPLICIT_PRECOMP_GEMM */
            CK(cudaMemset(dy, 0xff, ny * 4)); /* NaN: α2 = 0 must not read z = y */
            cudnnStatus_t fs = cudnnConvolutionBiasActivationForward(
                h, &one, xd, dx, wd, dw, cd, perf[a].algo, ws, ws_bytes, &zero, yd, dy, bd, db, ad,
                yd, dy);
            if (perf[a].algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM) {
                ck_assert_int_eq(fs, CUDNN_STATUS_SUCCESS);
                CK(cudaDeviceSynchronize());
                to_host(y, dy, ny);
                e = max_diff(y, ref, ny);
                ck_assert_msg(e < 1e-5, "k %d fused bias: off by %g", k, e);
            } else {
                ck_assert_int_eq(fs, CUDNN_STATUS_NOT_SUPPORTED);
            }
            /* a workspace short of what the algorithm needs is refused */
            if (ws_bytes)
                ck_assert_int_eq(cudnnConvolutionForward(h, &one, xd, dx, wd, dw, cd, perf[a].algo,
                                                         ws, ws_bytes - 1, &zero, yd, dy),
                                 CUDNN_STATUS_BAD_PARAM);
            CK(cudaFree(ws));
            ran++;
        }
        ck_assert_int_ge(ran, 1);
        /* descriptors that disagree: y with the wrong channel count */
        DNN(cudnnSetTensor4dDescriptor(bad, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, cout + 1, H, W));
        size_t ws_bytes = 0;
        ck_assert_int_eq(cudnnGetConvolutionForwardWorkspaceSize(h, xd, wd, cd, bad,
                                                                 CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                                                 &ws_bytes),
                         CUDNN_STATUS_BAD_PARAM);
    }
#ifdef VS_CUDA_EMU
    /* tensor-op math rounds the FP32 inputs to TF32, as cuBLAS's TF32 mode (a GPU may pick a
     * strict kernel anyway, so only the emulator is held to it) */
    DNN(cudnnSetConvolutionMathType(cd, CUDNN_TENSOR_OP_MATH));
    DNN(cudnnConvolutionForward(h, &one, xd, dx, wd, dw, cd, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                NULL, 0, &zero, yd, dy));
    to_host(y, dy, ny);
    naive_conv(x, w, NULL, ref, N, cin, H, W, cout, 3, tf32);
    double e = max_diff(y, ref, ny);
    naive_conv(x, w, NULL, ref, N, cin, H, W, cout, 3, same);
    double e32 = max_diff(y, ref, ny);
    ck_assert_msg(e < 1e-5 && e32 > 10 * e, "TF32 convolution: off TF32 by %g, FP32 by %g", e, e32);
#endif
    CK(cudaFree(dx));
    CK(cudaFree(dw));
    CK(cudaFree(db));
    CK(cudaFree(dy));
    cudnnDestroyTensorDescriptor(xd);
    cudnnDestroyTensorDescriptor(yd);
    cudnnDestroyTensorDescriptor(bd);
    cudnnDestroyTensorDescriptor(bad);
    cudnnDestroyFilterDescriptor(wd);
    cudnnDestroyConvolutionDescriptor(cd);
    cudnnDestroyActivationDescriptor(ad);
    DNN(cudnnDestroy(h));
    free(x);
    free(w);
    free(y);
    free(ref);
}
END_TEST

__global__ void k_bf16(const float *x, float *y, int n)
{
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        y[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
}

START_TEST(bf16_conversion_rounds_to_nearest_even)
{
    const float x[] = {1.0f,         1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 1.0f + 1.5f / 256,
                       -1.0f - 1.0f / 256, 3.0e38f,     1e-40f,            INFINITY};
    const float want[] = {1.0f,  1.0f,   1.0f + 4.0f / 256, 1.0f + 2.0f / 256,
                          -1.0f, 3.00405527e38f /* nearest bf16 */, 0, INFINITY};
    int n = 8;
    float *dx = dev_alloc<float>(n), *dy = dev_alloc<float>(n), y[8];
    CK(cudaMemcpy(dx, x, sizeof x, cudaMemcpyHostToDevice));
    VS_LAUNCH(k_bf16, 1, 32, 0, 0, dx, dy, n);
    CK(cudaDeviceSynchronize());
    to_host(y, dy, n);
    for (int i = 0; i < 6; i++)
        ck_assert_msg(y[i] == want[i], "bf16(%.9g) = %.9g, want %.9g", (double)x[i], (double)y[i],
                      (double)want[i]);
    ck_assert(fabsf(y[6]) < 1.1e-40f && isinf(y[7]));
    float nan = NAN;
    CK(cudaMemcpy(dx, &nan, 4, cudaMemcpyHostToDevice));
    VS_LAUNCH(k_bf16, 1, 32, 0, 0, dx, dy, 1);
    to_host(y, dy, 1);
    ck_assert(isnan(y[0]));
    CK(cudaFree(dx));
    CK(cudaFree(dy));
}
END_TEST

/* Lanes 0..15 exchange among themselves (mask 0x0000ffff) and then the whole warp does; the
 * second exchange must read lane 20's value, not anything the first left behind. */
__global__ void k_partial_then_full(int *out)
{
    int l = (int)threadIdx.x;
    int a = l < 16 ? __shfl_xor_sync(0x0000ffffu, l, 1) : -1;
    int b = __shfl_sync(0xffffffffu, l * 10, 20);
    unsigned v = __ballot_sync(0xffffffffu, l % 4 == 0);
    out[3 * l] = a;
    out[3 * l + 1] = b;
    out[3 * l + 2] = (int)v;
}

START_TEST(a_full_warp_exchange_after_a_partial_one_reads_the_right_lane)
{
    int *d = dev_alloc<int>(96), h[96];
    VS_LAUNCH(k_partial_then_full, 1, 32, 0, 0, d);
    CK(cudaDeviceSynchronize());
    to_host(h, d, 96);
    for (int l = 0; l < 32; l++) {
        ck_assert_int_eq(h[3 * l], l < 16 ? l ^ 1 : -1);
        ck_assert_int_eq(h[3 * l + 1], 200);
        ck_assert_uint_eq((unsigned)h[3 * l + 2], 0x11111111u);
    }
    CK(cudaFree(d));
}
END_TEST

/* ---- tensor cores (wmma) ------------------------------------------------------------------------ */

using namespace nvcuda;

/* One warp: D = C + A·B (16×16×16, BF16 in, FP32 out) with A, B and C read in the layouts the
 * template names, ldm wider than the tile, D stored in the layout C was not read in. With
 * `scale`, the fragments' elements are changed through x[] on the way: A doubled, C + 1, and D
 * halved, so D = (C + 1 + 2·A·B) / 2 whatever lane holds which element. */
template <typename LA, typename LB>
__global__ void k_wmma(float *d, const __nv_bfloat16 *a, const __nv_bfloat16 *b, const float *c,
                       int lda, int ldb, int ldc, int c_col, int scale)
{
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LB> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc, fd;
    wmma::load_matrix_sync(fa, a, (unsigned)lda);
    wmma::load_matrix_sync(fb, b, (unsigned)ldb);
    wmma::load_matrix_sync(fc, c, (unsigned)ldc, c_col ? wmma::mem_col_major : wmma::mem_row_major);
    if (scale) {
        for (int i = 0; i < fa.num_elements; i++)
            fa.x[i] = __float2bfloat16(2.0f * __bfloat162float(fa.x[i]));
        for (int i = 0; i < fc.num_elements; i++)
            fc.x[i] += 1.0f;
    }
    wmma::fill_fragment(fd, -7.0f); /* overwritten: d is not accumulated into */
    wmma::mma_sync(fd, fa, fb, fc);
    if (scale)
        for (int i = 0; i < fd.num_elements; i++)
            fd.x[i] *= 0.5f;
    wmma::store_matrix_sync(d, fd, (unsigned)ldc, c_col ? wmma::mem_row_major : wmma::mem_col_major);
}

/* element (r, c) of a tile stored with leading dimension ld, row-major or column-major */
static size_t at(int r, int c, int ld, int col) { return col ? (size_t)c * ld + r : (size_t)r * ld + c; }

template <typename LA, typename LB> static void wmma_case(int a_col, int b_col)
{
    const int lda = 24, ldb = 40, ldc = 20; /* wider than 16: rows (or columns) are apart */
    __nv_bfloat16 ha[16 * 40], hb[16 * 40];
    float ac[16][16], bc[16][16], hc[16 * 20], hd[16 * 20];
    for (int i = 0; i < 16 * 40; i++)
        ha[i] = hb[i] = __float2bfloat16(1000.0f); /* the gaps: a load reading them is way off */
    for (int i = 0; i < 16 * 20; i++)
        hc[i] = 1000.0f;
    for (int r = 0; r < 16; r++)
        for (int k = 0; k < 16; k++) { /* quarters in [-2, 2]: every product and sum is exact */
            ac[r][k] = (float)((r * 7 + k * 3) % 17 - 8) * 0.25f;
            bc[r][k] = (float)((r * 5 + k * 11) % 13 - 6) * 0.25f;
            ha[at(r, k, lda, a_col)] = __float2bfloat16(ac[r][k]);
            hb[at(r, k, ldb, b_col)] = __float2bfloat16(bc[r][k]);
        }
    __nv_bfloat16 *da = dev_alloc<__nv_bfloat16>(16 * 40), *db = dev_alloc<__nv_bfloat16>(16 * 40);
    float *dc = dev_alloc<float>(16 * 20), *dd = dev_alloc<float>(16 * 20);
    CK(cudaMemcpy(da, ha, sizeof ha, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(db, hb, sizeof hb, cudaMemcpyHostToDevice));
    for (int c_col = 0; c_col < 2; c_col++)
        for (int scale = 0; scale < 2; scale++) {
            for (int r = 0; r < 16; r++)
                for (int j = 0; j < 16; j++)
                    hc[at(r, j, ldc, c_col)] = (float)(r - 2 * j); /* C is not zero */
            CK(cudaMemcpy(dc, hc, sizeof hc, cudaMemcpyHostToDevice));
            CK(cudaMemset(dd, 0, sizeof hd));
            void (*k)(float *, const __nv_bfloat16 *, const __nv_bfloat16 *, const float *, int,
                      int, int, int, int) = k_wmma<LA, LB>; /* VS_LAUNCH would split the <,> */
            VS_LAUNCH(k, 1, 32, 0, 0, dd, da, db, dc, lda, ldb, ldc, c_col, scale);
            CK(cudaGetLastError());
            CK(cudaDeviceSynchronize());
            to_host(hd, dd, 16 * 20);
            for (int r = 0; r < 16; r++)
                for (int j = 0; j < 16; j++) {
                    float s = 0.0f;
                    for (int k = 0; k < 16; k++)
                        s += ac[r][k] * bc[k][j];
                    float cij = (float)(r - 2 * j);
                    float want = scale ? (cij + 1.0f + 2.0f * s) * 0.5f : cij + s;
                    float got = hd[at(r, j, ldc, !c_col)];
                    ck_assert_msg(got == want,
                                  "wmma (A %s, B %s, C %s%s): D[%d][%d] = %g, want %g",
                                  a_col ? "col" : "row", b_col ? "col" : "row",
                                  c_col ? "col" : "row", scale ? ", x[] scaled" : "", r, j,
                                  (double)got, (double)want);
                }
        }
    CK(cudaFree(da));
    CK(cudaFree(db));
    CK(cudaFree(dc));
    CK(cudaFree(dd));
}

START_TEST(wmma_multiplies_bf16_tiles_in_every_layout_as_a_plain_loop)
{
    wmma_case<wmma::row_major, wmma::row_major>(0, 0);
    wmma_case<wmma::row_major, wmma::col_major>(0, 1);
    wmma_case<wmma::col_major, wmma::row_major>(1, 0);
    wmma_case<wmma::col_major, wmma::col_major>(1, 1);
}
END_TEST

/* Rounding: BF16 products are exact and the sums FP32: sixteen products of 2^-12 added to C = 1
 * give 1 + 2^-8 exactly, which an accumulator of BF16's 8 significant bits would round back to 1. */
START_TEST(wmma_accumulates_bf16_products_in_fp32)
{
    __nv_bfloat16 ha[256], hb[256];
    float hc[256], hd[256];
    for (int i = 0; i < 256; i++) {
        ha[i] = __float2bfloat16(1.0f / 64); /* 2^-6 · 2^-6 = 2^-12 per product */
        hb[i] = __float2bfloat16(1.0f / 64);
        hc[i] = 1.0f;
    }
    __nv_bfloat16 *da = dev_alloc<__nv_bfloat16>(256), *db = dev_alloc<__nv_bfloat16>(256);
    float *dc = dev_alloc<float>(256), *dd = dev_alloc<float>(256);
    CK(cudaMemcpy(da, ha, sizeof ha, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(db, hb, sizeof hb, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dc, hc, sizeof hc, cudaMemcpyHostToDevice));
    void (*k)(float *, const __nv_bfloat16 *, const __nv_bfloat16 *, const float *, int, int, int,
              int, int) = k_wmma<wmma::row_major, wmma::row_major>;
    VS_LAUNCH(k, 1, 32, 0, 0, dd, da, db, dc, 16, 16, 16, 0, 0);
    CK(cudaDeviceSynchronize());
    to_host(hd, dd, 256);
    for (int i = 0; i < 256; i++)
        ck_assert_msg(hd[i] == 1.0f + 16.0f / 4096, "D[%d] = %.9g, want 1 + 2^-8", i, (double)hd[i]);
    CK(cudaFree(da));
    CK(cudaFree(db));
    CK(cudaFree(dc));
    CK(cudaFree(dd));
}
END_TEST

#ifdef VS_CUDA_EMU
/* ---- what only the emulator has -------------------------------------------------------------- */

__global__ void k_write(float *p, int n)
{
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        p[i] = 1.0f;
}

START_TEST(a_write_past_an_allocation_is_a_sticky_fault_naming_the_kernel)
{
    float *d = dev_alloc<float>(100);
    VS_LAUNCH(k_write, 1, 32, 0, 0, d, 101);
    ck_assert_int_eq((int)cudaGetLastError(), (int)cudaErrorIllegalAddress);
    ck_assert_int_eq((int)cudaGetLastError(), (int)cudaErrorIllegalAddress); /* sticky */
    void *p = NULL;
    ck_assert_int_eq((int)cudaMalloc(&p, 16), (int)cudaErrorIllegalAddress);
}
END_TEST

__global__ void k_deadlock(int *out)
{
    if (threadIdx.x == 0)
        out[0] = __shfl_xor_sync(0xffffffffu, 1, 1); /* lanes 1..31 never come */
    else
        __syncthreads();
}

START_TEST(threads_waiting_at_different_barriers_are_a_launch_failure)
{
    int *d = dev_alloc<int>(1);
    VS_LAUNCH(k_deadlock, 1, 64, 0, 0, d);
    ck_assert_int_eq((int)cudaGetLastError(), (int)cudaErrorLaunchFailure);
}
END_TEST

/* wmma's checks, one fault per process (loop test _i): a pointer off 256-bit alignment and an ldm
 * that is not a multiple of 16 bytes are misaligned-address faults; a warp whose lanes are not all
 * at the collective (a block of 16 threads, lanes that returned, lanes at a shuffle) is a launch
 * failure; lanes waiting at a __syncthreads instead never let it complete: the deadlock report. */
__global__ void k_wmma_misuse(float *d, const __nv_bfloat16 *a, int ldm, int how)
{
    int lane = (int)threadIdx.x % 32;
    if (how == 3 && lane >= 16)
        return;
    if (how == 4 && lane >= 16) {
        d[0] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
        return;
    }
    if (how == 5 && lane >= 16) {
        __syncthreads();
        return;
    }
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a, (unsigned)ldm);
    if (how == 5)
        __syncthreads();
    d[threadIdx.x] = __bfloat162float(fa.x[0]);
}

START_TEST(wmma_misuse_is_a_fault_as_on_a_gpu)
{
    static const struct {
        int threads, offset, ldm;
        cudaError_t want;
    } c[] = {{32, 8, 16, cudaErrorMisalignedAddress}, /* 16 bytes in: not 32-byte aligned */
             {32, 0, 20, cudaErrorMisalignedAddress}, /* 40-byte rows */
             {16, 0, 16, cudaErrorLaunchFailure},     /* a partial warp */
             {32, 0, 16, cudaErrorLaunchFailure},     /* lanes 16.. returned */
             {32, 0, 16, cudaErrorLaunchFailure},     /* lanes 16.. at a shuffle */
             {32, 0, 16, cudaErrorLaunchFailure}};    /* lanes 16.. at __syncthreads: deadlock */
    int i = _i;
    __nv_bfloat16 *a = dev_alloc<__nv_bfloat16>(1024);
    float *d = dev_alloc<float>(32);
    CK(cudaMemset(a, 0, 1024 * sizeof(__nv_bfloat16)));
    VS_LAUNCH(k_wmma_misuse, 1, c[i].threads, 0, 0, d, a + c[i].offset, c[i].ldm,
              i == 0 || i == 1 ? 0 : i);
    ck_assert_int_eq((int)cudaGetLastError(), (int)c[i].want);
    ck_assert_int_eq((int)cudaDeviceSynchronize(), (int)c[i].want); /* sticky */
}
END_TEST

/* the same kernel used correctly runs: the checks above are not false alarms */
START_TEST(wmma_used_correctly_passes_the_checks)
{
    __nv_bfloat16 *a = dev_alloc<__nv_bfloat16>(1024);
    float *d = dev_alloc<float>(64), h[64];
    CK(cudaMemset(a, 0, 1024 * sizeof(__nv_bfloat16)));
    VS_LAUNCH(k_wmma_misuse, 1, 64, 0, 0, d, a + 16, 24, 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    to_host(h, d, 64);
    for (int t = 0; t < 64; t++)
        ck_assert(h[t] == 0.0f);
}
END_TEST

START_TEST(memory_beyond_the_emulated_device_is_refused_and_reported)
{
    size_t fr0, total, fr1;
    CK(cudaMemGetInfo(&fr0, &total));
    ck_assert_uint_eq(total, (size_t)64 << 20); /* VARSERVE_CUDA_EMU_MEMORY_MB=64, set in main */
    void *a = NULL, *b = NULL;
    CK(cudaMalloc(&a, (size_t)40 << 20));
    CK(cudaMemGetInfo(&fr1, &total));
    ck_assert_uint_eq(fr0 - fr1, (size_t)40 << 20);
    ck_assert_int_eq((int)cudaMalloc(&b, (size_t)40 << 20), (int)cudaErrorMemoryAllocation);
    ck_assert_ptr_null(b);
    ck_assert_int_eq((int)cudaGetLastError(), (int)cudaErrorMemoryAllocation);
    CK(cudaGetLastError()); /* out of memory is not sticky */
    CK(cudaFree(a));
    CK(cudaMalloc(&b, (size_t)40 << 20));
    CK(cudaFree(b));
}
END_TEST

__global__ void k_last_writer(int *out) { *out = (int)threadIdx.x; }

START_TEST(the_thread_order_can_be_reversed_to_expose_order_dependence)
{
    int *d = dev_alloc<int>(1), h = -1;
    VS_LAUNCH(k_last_writer, 1, 128, 0, 0, d);
    CK(cudaDeviceSynchronize());
    to_host(&h, d, 1);
    const char *o = getenv("VARSERVE_CUDA_EMU_ORDER");
    ck_assert_int_eq(h, o && strcmp(o, "reverse") == 0 ? 0 : 127);
}
END_TEST

START_TEST(an_injected_fault_stops_the_device_at_that_launch)
{
    /* VARSERVE_CUDA_EMU_FAULT_AT is read when the device is first used: this test sets it in its
     * own process (fork mode) before any CUDA call */
    setenv("VARSERVE_CUDA_EMU_FAULT_AT", "3", 1);
    int *d = dev_alloc<int>(256);
    for (int i = 1; i <= 2; i++) {
        VS_LAUNCH(k_neighbour, 1, 256, 0, 0, d);
        CK(cudaGetLastError());
    }
    VS_LAUNCH(k_neighbour, 1, 256, 0, 0, d);
    ck_assert_int_eq((int)cudaGetLastError(), (int)cudaErrorIllegalAddress);
    ck_assert_int_eq((int)cudaDeviceSynchronize(), (int)cudaErrorIllegalAddress);
}
END_TEST
#endif

int main(void)
{
#ifdef VS_CUDA_EMU
    setenv("VARSERVE_CUDA_EMU_MEMORY_MB", "64", 1);
#else
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("check_emu: no CUDA device, skipped\n");
        return 0;
    }
#endif
    Suite *s = suite_create("cuda_emu");
    TCase *tc = tcase_create("device");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, syncthreads_waits_for_every_thread_of_the_block);
    tcase_add_test(tc, threads_that_returned_do_not_hold_a_barrier);
    tcase_add_test(tc, dynamic_shared_memory_is_per_block_and_limited_like_a_gpu);
    tcase_add_test(tc, a_bad_launch_configuration_is_a_launch_error_that_clears);
    tcase_add_test(tc, warp_shuffles_and_votes_read_the_right_lanes);
    tcase_add_test(tc, a_full_warp_exchange_after_a_partial_one_reads_the_right_lane);
    tcase_add_test(tc, a_block_reduction_of_1024_threads_sums_every_element);
    tcase_add_test(tc, copies_outside_an_allocation_fail_and_the_device_goes_on);
    tcase_add_test(tc, sgemm_follows_cublas_layouts_and_tf32_mode_rounds_the_inputs);
    tcase_add_test(tc, cublaslt_epilogues_add_the_bias_per_row_and_apply_gelu_after_it);
    tcase_add_test(tc, cublaslt_writes_a_bf16_d_with_a_bf16_bias_rounded_to_nearest_even);
    tcase_add_test(tc, cudnn_convolution_matches_a_naive_convolution_for_every_offered_algorithm);
    tcase_add_test(tc, bf16_conversion_rounds_to_nearest_even);
    tcase_add_test(tc, wmma_multiplies_bf16_tiles_in_every_layout_as_a_plain_loop);
    tcase_add_test(tc, wmma_accumulates_bf16_products_in_fp32);
#ifdef VS_CUDA_EMU
    tcase_add_test(tc, a_write_past_an_allocation_is_a_sticky_fault_naming_the_kernel);
    tcase_add_test(tc, threads_waiting_at_different_barriers_are_a_launch_failure);
    tcase_add_loop_test(tc, wmma_misuse_is_a_fault_as_on_a_gpu, 0, 6);
    tcase_add_test(tc, wmma_used_correctly_passes_the_checks);
    tcase_add_test(tc, memory_beyond_the_emulated_device_is_refused_and_reported);
    tcase_add_test(tc, the_thread_order_can_be_reversed_to_expose_order_dependence);
    tcase_add_test(tc, an_injected_fault_stops_the_device_at_that_launch);
#endif
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
#ifndef VS_CUDA_EMU
    srunner_set_fork_status(sr, CK_NOFORK); /* a real GPU context does not survive fork */
#endif
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
