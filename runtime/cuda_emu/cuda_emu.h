/* runtime/cuda_emu/cuda_emu.h — an emulated CUDA device: the part of CUDA's device language, runtime
 * API and cuBLAS that varserve's kernels use, executed on the CPU (`make CUDA=emu`).
 *
 * Why: no GPU is lent to CI or to most development machines, so a kernel that only nvcc compiles
 * has never run. Like Triton's interpreter mode, this runs the SAME kernel source on the host:
 * runtime/backend_cuda.cu is compiled by the host C++ compiler with this header in place of
 * cuda_runtime.h, cuda_bf16.h and cublas_v2.h (runtime/cuda_device.h picks one or the other), and
 * its launches go through VS_LAUNCH, which nvcc maps to <<<…>>> and this build to cuda_emu_launch.
 *
 * What it models:
 *  - a launch runs its blocks one after another (x fastest, then y, z); each block's threads are
 *    cooperative fibers on the launching thread, so __syncthreads is a real barrier of the block's
 *    live threads and a kernel that needs it to be correct is tested as such;
 *  - warps of 32 consecutive threads: shuffles (xor, down, up, indexed) and votes (ballot, any,
 *    all) exchange values through a barrier of the warp's live lanes in the mask;
 *  - __shared__ variables are one instance per executing block (blocks never overlap in time);
 *    dynamic shared memory (VS_DYNAMIC_SHARED) is a per-launch buffer of the launch's size (128-byte aligned), which
 *    must not exceed 48 KiB unless cudaFuncSetAttribute raised the kernel's limit, nor the
 *    device's opt-in maximum (as on a GPU, the launch fails otherwise);
 *  - launch configurations are checked as a GPU checks them (≤ 1024 threads a block, grid limits,
 *    shared memory), and a bad one is a launch error that cudaGetLastError returns and clears;
 *  - device memory is host memory with 256 guard bytes on each side of every allocation; the
 *    guards of every live allocation are verified after each kernel and cuBLAS call, and a
 *    damaged guard is an illegal-address fault naming the kernel: sticky, as on a GPU, every
 *    later runtime call fails with it. Copies and memsets must lie inside one allocation (device
 *    side) or they fail with cudaErrorInvalidValue. A device of VARSERVE_CUDA_EMU_MEMORY_MB
 *    (default 16384) MiB: allocations beyond it fail with cudaErrorMemoryAllocation, and
 *    cudaMemGetInfo reports what is left;
 *  - streams and events exist; every operation runs synchronously at the call, so "async"
 *    copies have completed when they return (events record the host clock);
 *  - cuBLAS: Sgemm, SgemmStridedBatched and GemmEx (FP32 or BF16 inputs, FP32 output and
 *    compute) on OpenBLAS with cuBLAS's column-major layouts, transposes and argument checks;
 *    under CUBLAS_TF32_TENSOR_OP_MATH (or a *_FAST_TF32 compute type) FP32 inputs are rounded to
 *    TF32 (10-bit mantissa, to nearest) first, so precision claims can be tested;
 *  - cuBLASLt: cublasLtMatmul with the epilogues DEFAULT, BIAS, GELU and GELU_BIAS (the bias of
 *    D's type, as cublasLt.h's CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE documents: another type is
 *    NOT_SUPPORTED; GELU in its tanh form, applied in FP32 after α·op(A)·op(B) + β·C), FP32 or
 *    BF16 inputs, and FP32 or BF16 C and D (C of D's type; a BF16 D is the FP32 result rounded to
 *    nearest even) on the cuBLAS emulation above (the same TF32/BF16 input rounding for the compute
 *    type), with cuBLASLt's checks of the descriptors' sizes and attribute sizes;
 *  - cuDNN: the forward convolution varserve uses (NCHW FP32 tensors, 2-D cross-correlation, unit
 *    stride and dilation; cudnnConvolutionForward, cudnnConvolutionBiasActivationForward with the
 *    identity activation, cudnnAddTensor for a per-channel bias, the algorithm query
 *    cudnnGetConvolutionForwardAlgorithm_v7 and the workspace sizes) on im2col + OpenBLAS, with
 *    cuDNN's argument checks (descriptor shapes that do not agree, a workspace smaller than the
 *    algorithm's, the identity activation with an algorithm other than IMPLICIT_PRECOMP_GEMM);
 *    under CUDNN_DEFAULT_MATH or CUDNN_TENSOR_OP_MATH FP32 inputs are rounded to TF32 as cuBLAS's
 *    TF32 mode does, CUDNN_FMA_MATH is strict FP32;
 *  - __nv_bfloat16 with CUDA's round-to-nearest-even conversions;
 *  - tensor cores through nvcuda::wmma, the m16n16k16 BF16 × BF16 → FP32 fragments (matrix_a,
 *    matrix_b in row_major or col_major, accumulator): load_matrix_sync, store_matrix_sync and
 *    mma_sync as warp collectives on the warp barrier, with a fixed element-to-lane mapping of the
 *    emulator's own (the wmma section below) and CUDA's requirements checked: the whole converged
 *    warp (a partial or diverged one is a launch failure or the deadlock report), one pointer, ldm
 *    and layout for all lanes, 256-bit aligned pointers and ldm a multiple of 16 bytes (else a
 *    misaligned-address fault); products exact, sums in FP32;
 *  - VARSERVE_CUDA_EMU_FAULT_AT=N makes the N-th kernel launch of the process fault (sticky
 *    illegal address), so recovery from an unrecoverable device error can be tested;
 *    VARSERVE_CUDA_EMU_ORDER=reverse runs each block's threads from the last to the first, a
 *    cheap way to expose code that relies on an order the hardware does not promise.
 *
 * What it does NOT model (a kernel that passes here can still fail on a GPU for these):
 *  - the memory model and data races: threads of a block run one at a time between barriers, so
 *    a missing __syncthreads between a write and another thread's read can go unnoticed when the
 *    writer happens to run first (try VARSERVE_CUDA_EMU_ORDER=reverse), and atomics are plain
 *    read-modify-writes; blocks never run concurrently, so inter-block races are invisible;
 *  - timing, occupancy, registers and __launch_bounds__ (ignored), static shared memory size
 *    (cudaFuncGetAttributes reports 0 bytes), warp divergence costs, coalescing;
 *  - floating point as the GPU rounds it: device math functions are the host's (glibc's expf,
 *    not CUDA's 2-ulp one), and nvcc contracts a*b+c into FMAs where this build (ISO C++, no
 *    -ffp-contract=fast) does not; results can differ from a GPU in the last bits;
 *  - out-of-bounds reads, and writes that jump past the guards: only the 256 bytes either side of
 *    an allocation are watched;
 *  - tensor cores beyond that wmma subset: other shapes and types (FP16, TF32, integer), mma.sync
 *    and ldmatrix PTX, the hardware's own fragment mapping (code that relies on one is wrong on
 *    a GPU but may pass here), the order and internal precision of a GPU's tensor-core sums
 *    (results can differ in the last bits), and tensor-core timing;
 *  - inline PTX, cooperative groups, graphs, textures, multiple devices, and asynchrony itself
 *    (no overlap of copies and kernels to race with).
 */
#ifndef VS_CUDA_EMU_H
#define VS_CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

/* ---- the device language's keywords ------------------------------------------------------------ */

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
/* one instance per executing block: blocks run one at a time on the launching thread */
#define __shared__ static __thread

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuda_emu {
extern __thread uint3 t_thread_idx, t_block_idx;
extern __thread uint3 t_block_dim, t_grid_dim; /* dim3 has a constructor, which __thread forbids */
extern __thread unsigned char *t_dynamic_smem;

void block_barrier();
/* every live lane of the current warp in `mask` exchanges v; returns the value of lane `src`
 * (of the caller's own when src is negative) */
uint64_t warp_exchange(unsigned mask, uint64_t v, int src);
/* OR of the bits (1 << lane) of the warp's lanes in mask whose pred is set */
unsigned warp_ballot(unsigned mask, int pred);
int block_count(int pred); /* number of live threads of the block whose pred is set */

template <typename T> T shfl(unsigned mask, T v, int src)
{
    static_assert(sizeof(T) <= 8, "warp shuffles of values over 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    u = warp_exchange(mask, u, src);
    T r;
    memcpy(&r, &u, sizeof r);
    return r;
}
inline int lane() { return (int)((t_thread_idx.x + t_block_dim.x * (t_thread_idx.y + t_block_dim.y * t_thread_idx.z)) & 31); }
} // namespace cuda_emu

#define threadIdx (cuda_emu::t_thread_idx)
#define blockIdx (cuda_emu::t_block_idx)
#define blockDim (cuda_emu::t_block_dim)
#define gridDim (cuda_emu::t_grid_dim)
constexpr int warpSize = 32;

/* T *name = the launch's dynamic shared memory (extern __shared__ T name[] under nvcc) */
#define VS_EMU_DYNAMIC_SHARED(T, name) T *name = (T *)cuda_emu::t_dynamic_smem

inline void __syncthreads() { cuda_emu::block_barrier(); }
inline int __syncthreads_count(int p) { return cuda_emu::block_count(p); }
inline int __syncthreads_and(int p) { return cuda_emu::block_count(!p) == 0; }
inline int __syncthreads_or(int p) { return cuda_emu::block_count(p) != 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)cuda_emu::warp_ballot(mask, 0); }
inline void __threadfence() {}
inline void __threadfence_block() {}

template <typename T> T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
    int l = cuda_emu::lane();
    return cuda_emu::shfl(mask, v, (l & ~(width - 1)) + (src & (width - 1)));
}
template <typename T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32)
{
    int l = cuda_emu::lane(), s = l ^ lane_mask;
    /* CUDA: a lane may read from an earlier group of `width`, never a later one */
    return cuda_emu::shfl(mask, v, s / width > l / width ? -1 : s);
}
template <typename T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    int l = cuda_emu::lane();
    return cuda_emu::shfl(mask, v, (l & (width - 1)) + (int)delta >= width ? -1 : l + (int)delta);
}
template <typename T> T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    int l = cuda_emu::lane();
    return cuda_emu::shfl(mask, v, (l & (width - 1)) < (int)delta ? -1 : l - (int)delta);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return cuda_emu::warp_ballot(mask, pred); }
inline int __any_sync(unsigned mask, int pred) { return cuda_emu::warp_ballot(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred)
{
    return cuda_emu::warp_ballot(mask, !pred) == 0;
}

/* ---- device functions and intrinsics ---------------------------------------------------------- */

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

inline unsigned __float_as_uint(float f)
{
    unsigned u;
    memcpy(&u, &f, sizeof u);
    return u;
}
inline float __uint_as_float(unsigned u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
inline int __float_as_int(float f) { return (int)__float_as_uint(f); }
inline float __int_as_float(int i) { return __uint_as_float((unsigned)i); }
inline long long __double_as_longlong(double d)
{
    long long u;
    memcpy(&u, &d, sizeof u);
    return u;
}
inline double __longlong_as_double(long long u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}
/* IEEE single operations, rounded to nearest; never contracted (this build does not contract) */
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <typename T> T __ldg(const T *p) { return *p; }

/* Atomics: blocks run one at a time and a thread is never preempted inside one, so these are
 * plain read-modify-writes returning the old value. */
#define VS_EMU_ATOMIC(name, update)                                                                \
    template <typename T> T name(T *p, T v)                                                        \
    {                                                                                              \
        T o = *p;                                                                                  \
        *p = (update);                                                                             \
        return o;                                                                                  \
    }
VS_EMU_ATOMIC(atomicAdd, o + v)
VS_EMU_ATOMIC(atomicSub, o - v)
VS_EMU_ATOMIC(atomicExch, v)
VS_EMU_ATOMIC(atomicMin, v < o ? v : o)
VS_EMU_ATOMIC(atomicMax, v > o ? v : o)
VS_EMU_ATOMIC(atomicAnd, o & v)
VS_EMU_ATOMIC(atomicOr, o | v)
VS_EMU_ATOMIC(atomicXor, o ^ v)
#undef VS_EMU_ATOMIC
template <typename T> T atomicCAS(T *p, T cmp, T v)
{
    T o = *p;
    if (o == cmp)
        *p = v;
    return o;
}

/* ---- BF16 ------------------------------------------------------------------------------------- */

inline unsigned short vs_emu_bf16_bits(float f)
{
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (unsigned short)((u >> 16) | 0x0040u); /* NaN stays a (quiet) NaN */
    u += 0x7fffu + ((u >> 16) & 1u);               /* to nearest, ties to even */
    return (unsigned short)(u >> 16);
}

struct __nv_bfloat16 {
    unsigned short x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : x(vs_emu_bf16_bits(f)) {}
    operator float() const { return __uint_as_float((unsigned)x << 16); }
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return (float)b; }

/* ---- tensor cores: nvcuda::wmma (CUDA's <mma.h>) ------------------------------------------------ */

/* BF16 m16n16k16 with FP32 accumulators. A fragment holds num_elements = 8 elements of its 16×16 tile in each lane; CUDA leaves which
 * ones unspecified, so code may only treat x[] element-wise. The emulator's mapping, for lane l
 * (g = l / 4, t = l % 4) and element e of x[]:
 *   matrix_a, accumulator   row g + 8·((e >> 1) & 1), column 2t + (e & 1) + 8·(e >> 2)
 *   matrix_b                row 2t + (e & 1) + 8·((e >> 1) & 1), column g + 8·(e >> 2)
 * (modelled on the m16n8k16 fragments PTX documents for mma.sync; a GPU's wmma may differ). The
 * tile's layout in memory (row_major / col_major, mem_row_major / mem_col_major) changes only
 * where an element is read or written, never which lane holds it.
 * load_matrix_sync, store_matrix_sync and mma_sync are warp collectives: each lane arrives at the
 * warp's barrier (the one the shuffles use) with its fragment, and the last lane to arrive performs
 * the operation for all 32 (cuda_emu::wmma_warp). It checks what CUDA requires: all 32 lanes of
 * the warp at the same operation with the same pointer, ldm and layout (a partial or diverged warp
 * is a launch failure; lanes that never arrive are the deadlock the scheduler reports), a pointer
 * aligned to 256 bits and ldm a multiple of 16 bytes (8 BF16 or 4 floats): otherwise a misaligned-
 * address fault, sticky as on a GPU. mma_sync computes d = c + a·b per element in FP32 with k in
 * ascending order; BF16 products are exact in FP32, so only the sums round (to nearest). */
namespace cuda_emu {
enum { WMMA_A, WMMA_B, WMMA_C };                       /* which operand a fragment holds */
enum { WMMA_LOAD = 1, WMMA_STORE, WMMA_MMA };          /* the collective */
/* frag: the lane's x[] (BF16 bits for A and B, floats for C); mem, ldm, col: the tile in memory;
 * for WMMA_MMA frag is d and a, b, c the operands' x[] */
void wmma_warp(int op, int use, void *frag, void *mem, unsigned ldm, int col, const void *a,
               const void *b, const void *c);
} // namespace cuda_emu

namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <typename T> struct vs_emu_same_type {
    typedef T type;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void> class fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulated wmma has the m16n16k16 shape only");
    static_assert(std::is_same<Use, accumulator>::value
                      ? std::is_same<T, float>::value && std::is_same<Layout, void>::value
                      : std::is_same<T, __nv_bfloat16>::value &&
                            (std::is_same<Layout, row_major>::value ||
                             std::is_same<Layout, col_major>::value),
                  "the emulated wmma has BF16 matrix_a / matrix_b (row_major or col_major) and "
                  "FP32 accumulators only");

  public:
    enum { num_elements = 8 };
    T x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L> &f, const typename vs_emu_same_type<T>::type &v)
{
    for (int i = 0; i < f.num_elements; i++)
        f.x[i] = v;
}

template <typename Use, typename L>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, L> &f, const __nv_bfloat16 *p,
                             unsigned ldm)
{
    cuda_emu::wmma_warp(cuda_emu::WMMA_LOAD,
                        std::is_same<Use, matrix_a>::value ? cuda_emu::WMMA_A : cuda_emu::WMMA_B, f.x,
                        (void *)p, ldm, std::is_same<L, col_major>::value, nullptr, nullptr, nullptr);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p,
                             unsigned ldm, layout_t layout)
{
    cuda_emu::wmma_warp(cuda_emu::WMMA_LOAD, cuda_emu::WMMA_C, f.x, (void *)p, ldm,
                        layout == mem_col_major, nullptr, nullptr, nullptr);
}

inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f,
                              unsigned ldm, layout_t layout)
{
    cuda_emu::wmma_warp(cuda_emu::WMMA_STORE, cuda_emu::WMMA_C, (void *)f.x, p, ldm,
                        layout == mem_col_major, nullptr, nullptr, nullptr);
}

template <typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA> &a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c)
{
    cuda_emu::wmma_warp(cuda_emu::WMMA_MMA, cuda_emu::WMMA_C, d.x, nullptr, 0, 0, a.x, b.x, c.x);
}
} // namespace wmma
} // namespace nvcuda

/* ---- runtime API ------------------------------------------------------------------------------ */

typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorMisalignedAddress = 716,
    cudaErrorLaunchFailure = 719,
} cudaError_t;

typedef enum {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
} cudaMemcpyKind;

typedef enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;

#define cudaStreamDefault 0x0u
#define cudaStreamNonBlocking 0x1u
#define cudaHostAllocDefault 0x0u

typedef struct cuda_emu_stream *cudaStream_t;
typedef struct cuda_emu_event *cudaEvent_t;

typedef struct {
    char name[256];
    int major, minor, multiProcessorCount, maxThreadsPerBlock, warpSize;
    size_t totalGlobalMem, sharedMemPerBlock, sharedMemPerBlockOptin, sharedMemPerMultiprocessor;
    int maxGridSize[3], maxThreadsDim[3];
} cudaDeviceProp;

typedef struct {
    size_t sharedSizeBytes, constSizeBytes, localSizeBytes;
    int maxThreadsPerBlock, numRegs, maxDynamicSharedSizeBytes;
} cudaFuncAttributes;

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int dev);
cudaError_t cudaGetDevice(int *dev);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t st = 0);
cudaError_t cudaMemset(void *dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t st = 0);
cudaError_t cudaStreamCreate(cudaStream_t *st);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t st);
cudaError_t cudaStreamSynchronize(cudaStream_t st);
cudaError_t cudaEventCreate(cudaEvent_t *ev);
cudaError_t cudaEventDestroy(cudaEvent_t ev);
cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t st = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t ev);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

namespace cuda_emu {
cudaError_t func_set_max_dynamic_smem(const void *fn, int bytes);
void func_get_attributes(cudaFuncAttributes *a, const void *fn);
/* Runs body(ctx) as every thread of every block of a launch of the kernel fn (name for messages).
 * A bad configuration or a sticky error makes it a launch error instead (cudaGetLastError). */
void run(const char *name, const void *fn, dim3 grid, dim3 block, size_t smem, cudaStream_t st,
         void (*body)(void *), void *ctx);
} // namespace cuda_emu

template <typename F> cudaError_t cudaFuncSetAttribute(F *fn, cudaFuncAttribute attr, int value)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
        return cudaErrorInvalidValue;
    return cuda_emu::func_set_max_dynamic_smem((const void *)fn, value);
}
template <typename F> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *a, F *fn)
{
    cuda_emu::func_get_attributes(a, (const void *)fn);
    return cudaSuccess;
}

/* kernel<<<grid, block, smem, st>>>(args...): the arguments convert to the kernel's parameter
 * types once, as a launch does, and every thread calls the kernel with its own copies. */
template <typename... P, typename... A>
void cuda_emu_launch(const char *name, void (*k)(P...), dim3 grid, dim3 block, size_t smem,
                     cudaStream_t st, A &&...args)
{
    static_assert(sizeof...(P) == sizeof...(A), "a kernel launched with the wrong argument count");
    struct call {
        void (*k)(P...);
        std::tuple<P...> a;
    } c{k, std::tuple<P...>(static_cast<P>(args)...)};
    cuda_emu::run(
        name, (const void *)k, grid, block, smem, st,
        [](void *ctx) {
            call *cl = (call *)ctx;
            std::apply(cl->k, cl->a);
        },
        &c);
}

/* ---- cuBLAS ----------------------------------------------------------------------------------- */

typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;
typedef enum {
    CUBLAS_DEFAULT_MATH = 0,
    CUBLAS_TENSOR_OP_MATH = 1,
    CUBLAS_PEDANTIC_MATH = 2,
    CUBLAS_TF32_TENSOR_OP_MATH = 3,
} cublasMath_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 } cudaDataType;
typedef cudaDataType cudaDataType_t;
typedef enum {
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
    CUBLAS_COMPUTE_32F_PEDANTIC = 69,
} cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1, CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99 } cublasGemmAlgo_t;
typedef struct cuda_emu_blas *cublasHandle_t;

const char *cublasGetStatusString(cublasStatus_t s);
cublasStatus_t cublasCreate(cublasHandle_t *h);
cublasStatus_t cublasDestroy(cublasHandle_t h);
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t st);
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode);
cublasStatus_t cublasGetMathMode(cublasHandle_t h, cublasMath_t *mode);
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                           int k, const float *alpha, const float *A, int lda, const float *B,
                           int ldb, const float *beta, float *C, int ldc);
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         long long sa, const float *B, int ldb, long long sb,
                                         const float *beta, float *C, int ldc, long long sc,
                                         int batch);
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo);


/* ---- cuBLASLt (matmul with a fused epilogue) -------------------------------------------------- */

typedef enum {
    CUBLASLT_MATMUL_DESC_TRANSA = 3,
    CUBLASLT_MATMUL_DESC_TRANSB = 4,
    CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
    CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
    CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26,
} cublasLtMatmulDescAttributes_t;
typedef enum {
    CUBLASLT_MATRIX_LAYOUT_TYPE = 0,
    CUBLASLT_MATRIX_LAYOUT_ORDER = 1,
    CUBLASLT_MATRIX_LAYOUT_ROWS = 2,
    CUBLASLT_MATRIX_LAYOUT_COLS = 3,
    CUBLASLT_MATRIX_LAYOUT_LD = 4,
} cublasLtMatrixLayoutAttribute_t;
typedef enum {
    CUBLASLT_EPILOGUE_DEFAULT = 1,
    CUBLASLT_EPILOGUE_BIAS = 4,
    CUBLASLT_EPILOGUE_GELU = 32,
    CUBLASLT_EPILOGUE_GELU_BIAS = 36,
} cublasLtEpilogue_t;
typedef struct cuda_emu_lt *cublasLtHandle_t;
typedef struct cuda_emu_lt_desc *cublasLtMatmulDesc_t;
typedef struct cuda_emu_lt_layout *cublasLtMatrixLayout_t;
typedef struct {
    uint64_t data[8];
} cublasLtMatmulAlgo_t;

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h);
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h);
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute,
                                        cudaDataType_t scale_type);
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d);
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t bytes);
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld);
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l);
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l,
                                                cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t bytes);
/* D = epilogue(α·op(A)·op(B) + β·C), column-major; algo NULL (cuBLASLt's own heuristic) only */
cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t ad, const void *B,
                              cublasLtMatrixLayout_t bd, const void *beta, const void *C,
                              cublasLtMatrixLayout_t cd, void *D, cublasLtMatrixLayout_t dd,
                              const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_bytes,
                              cudaStream_t st);

/* ---- cuDNN (the forward convolution) ---------------------------------------------------------- */

typedef enum {
    CUDNN_STATUS_SUCCESS = 0,
    CUDNN_STATUS_NOT_INITIALIZED = 1001,
    CUDNN_STATUS_BAD_PARAM = 2000,
    CUDNN_STATUS_NOT_SUPPORTED = 3000,
    CUDNN_STATUS_INTERNAL_ERROR = 4000,
    CUDNN_STATUS_EXECUTION_FAILED = 5000,
} cudnnStatus_t;
typedef enum { CUDNN_DATA_FLOAT = 0, CUDNN_DATA_HALF = 2, CUDNN_DATA_BFLOAT16 = 9 } cudnnDataType_t;
typedef enum { CUDNN_TENSOR_NCHW = 0, CUDNN_TENSOR_NHWC = 1 } cudnnTensorFormat_t;
typedef enum {
    CUDNN_DEFAULT_MATH = 0,
    CUDNN_TENSOR_OP_MATH = 1,
    CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION = 2,
    CUDNN_FMA_MATH = 3,
} cudnnMathType_t;
typedef enum { CUDNN_CONVOLUTION = 0, CUDNN_CROSS_CORRELATION = 1 } cudnnConvolutionMode_t;
typedef enum { CUDNN_NOT_PROPAGATE_NAN = 0, CUDNN_PROPAGATE_NAN = 1 } cudnnNanPropagation_t;
typedef enum {
    CUDNN_ACTIVATION_SIGMOID = 0,
    CUDNN_ACTIVATION_RELU = 1,
    CUDNN_ACTIVATION_TANH = 2,
    CUDNN_ACTIVATION_CLIPPED_RELU = 3,
    CUDNN_ACTIVATION_ELU = 4,
    CUDNN_ACTIVATION_IDENTITY = 5,
} cudnnActivationMode_t;
typedef enum { CUDNN_NON_DETERMINISTIC = 0, CUDNN_DETERMINISTIC = 1 } cudnnDeterminism_t;
typedef enum {
    CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM = 0,
    CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM = 1,
    CUDNN_CONVOLUTION_FWD_ALGO_GEMM = 2,
    CUDNN_CONVOLUTION_FWD_ALGO_DIRECT = 3,
    CUDNN_CONVOLUTION_FWD_ALGO_FFT = 4,
    CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING = 5,
    CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD = 6,
    CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED = 7,
    CUDNN_CONVOLUTION_FWD_ALGO_COUNT = 8,
} cudnnConvolutionFwdAlgo_t;
typedef struct {
    cudnnConvolutionFwdAlgo_t algo;
    cudnnStatus_t status;
    float time;
    size_t memory;
    cudnnDeterminism_t determinism;
    cudnnMathType_t mathType;
    int reserved[3];
} cudnnConvolutionFwdAlgoPerf_t;
typedef struct cuda_emu_dnn *cudnnHandle_t;
typedef struct cuda_emu_dnn_tensor *cudnnTensorDescriptor_t;
typedef struct cuda_emu_dnn_filter *cudnnFilterDescriptor_t;
typedef struct cuda_emu_dnn_conv *cudnnConvolutionDescriptor_t;
typedef struct cuda_emu_dnn_act *cudnnActivationDescriptor_t;

const char *cudnnGetErrorString(cudnnStatus_t s);
cudnnStatus_t cudnnCreate(cudnnHandle_t *h);
cudnnStatus_t cudnnDestroy(cudnnHandle_t h);
cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t st);
cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *d);
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d);
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t format,
                                         cudnnDataType_t type, int n, int c, int h, int w);
cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *d);
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d);
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t type,
                                         cudnnTensorFormat_t format, int k, int c, int h, int w);
cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *d);
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d);
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w,
                                              int u, int v, int dilation_h, int dilation_w,
                                              cudnnConvolutionMode_t mode,
                                              cudnnDataType_t compute_type);
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t math);
cudnnStatus_t cudnnCreateActivationDescriptor(cudnnActivationDescriptor_t *d);
cudnnStatus_t cudnnDestroyActivationDescriptor(cudnnActivationDescriptor_t d);
cudnnStatus_t cudnnSetActivationDescriptor(cudnnActivationDescriptor_t d, cudnnActivationMode_t mode,
                                           cudnnNanPropagation_t nan, double coef);
/* The emulated heuristics list IMPLICIT_PRECOMP_GEMM, IMPLICIT_GEMM and GEMM (im2col), in that
 * order, with their workspace sizes; the other algorithms come back CUDNN_STATUS_NOT_SUPPORTED. */
cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(
    cudnnHandle_t h, const cudnnTensorDescriptor_t x, const cudnnFilterDescriptor_t w,
    const cudnnConvolutionDescriptor_t conv, const cudnnTensorDescriptor_t y, int requested,
    int *returned, cudnnConvolutionFwdAlgoPerf_t *perf);
cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t h,
                                                      const cudnnTensorDescriptor_t x,
                                                      const cudnnFilterDescriptor_t w,
                                                      const cudnnConvolutionDescriptor_t conv,
                                                      const cudnnTensorDescriptor_t y,
                                                      cudnnConvolutionFwdAlgo_t algo, size_t *bytes);
cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void *alpha,
                                      const cudnnTensorDescriptor_t xd, const void *x,
                                      const cudnnFilterDescriptor_t wd, const void *w,
                                      const cudnnConvolutionDescriptor_t conv,
                                      cudnnConvolutionFwdAlgo_t algo, void *ws, size_t ws_bytes,
                                      const void *beta, const cudnnTensorDescriptor_t yd, void *y);
cudnnStatus_t cudnnConvolutionBiasActivationForward(
    cudnnHandle_t h, const void *alpha1, const cudnnTensorDescriptor_t xd, const void *x,
    const cudnnFilterDescriptor_t wd, const void *w, const cudnnConvolutionDescriptor_t conv,
    cudnnConvolutionFwdAlgo_t algo, void *ws, size_t ws_bytes, const void *alpha2,
    const cudnnTensorDescriptor_t zd, const void *z, const cudnnTensorDescriptor_t bd,
    const void *bias, const cudnnActivationDescriptor_t act, const cudnnTensorDescriptor_t yd,
    void *y);
/* C = α·A + β·C with A broadcast over the dimensions where it has extent 1 */
cudnnStatus_t cudnnAddTensor(cudnnHandle_t h, const void *alpha, const cudnnTensorDescriptor_t ad,
                             const void *A, const void *beta, const cudnnTensorDescriptor_t cd,
                             void *C);

#endif
