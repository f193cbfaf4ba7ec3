/* runtime/backend_cuda.cu — the CUDA backend: cuBLAS for GEMMs, cuDNN for the convolutions, own
 * kernels for the rest; FP32 or BF16 GEMMs (modes below). Runs on a GPU (nvcc) or on the emulated device (runtime/cuda_emu/).
 *
 * Design: every op is queued on ONE stream and returns at once; errors are recorded into a pending
 * error (the first failing statement, its file:line and CUDA's message) that sync() returns once.
 * A CUDA error is classified when it is recorded: if a device synchronize still fails after
 * cudaGetLastError (the error is sticky in the context: illegal address, launch failure, ...),
 * the device is lost, the code becomes VS_ERR_DEVICE_LOST and stays; any other error is cleared
 * when sync() has returned it (backend.h, "Errors").
 * Semantics follow backend_cpu.c op by op (same formulas, same reduction precision: LayerNorm and
 * GroupNorm statistics in double, attention softmax in float), so the two agree to rounding.
 * Small host inputs (index lists, the batch's row tables, sampling requests) are copied into a
 * pinned staging ring and uploaded asynchronously; the ring is reused only after the stream has
 * drained, so callers may overwrite their host arrays as soon as an op returns. Device scratch
 * (BF16 copies of linear inputs, cuDNN's workspace, attention scores, sampling buffers, row and page tables) is
 * allocated by reserve() at start-up for the largest step and decode (var.c and vae.c describe
 * them), so a step allocates nothing; the *_bytes helpers below are the one place each slot's
 * size is computed, for the ops and for reserve(). Without reserve() (tests of single ops) the
 * slots grow on demand. Weights and buffers live in device memory (host_memory = 0), so var.c
 * uploads the weights once and rebases its pointers.
 *
 * Counters (the counters op, vs_rt_counters in backend.h): counted where the work is issued, with
 * no extra device calls, so the emulated device counts what a GPU would be asked to do. Launches in
 * VS_LAUNCHED (every kernel launch is followed by it), VS_GEMM (every cuBLAS or cuBLASLt GEMM
 * call goes through it: one launch each) and VS_DNN (every cuDNN call that does device work);
 * copies in cuda_copy() and cuda_zero() (copy_many is one launch); syncs in drain() (every host
 * wait); host → device bytes in h2d()
 * (every such copy goes through it), device → host bytes in cuda_download() and cuda_cfg_sample();
 * allocated bytes where cudaMalloc/cudaFree are called (alloc() blocks are kept in a table with
 * their sizes). KV bytes: batch_begin names the KV pool arena (b->kv_base); the alloc() block
 * holding it is the arena, and upload()/download() count the part of a copy that falls inside it.
 *
 * KV pages: FP32 in fp32 mode (parity), BF16 in BF16 mode (kv_elem_bytes 2: half the bytes per
 * image). k_kv_write rounds the new K and V to nearest even. In fp32 mode k_attention reads FP32
 * pages and all its math is FP32 (parity); in BF16 mode, for head_dim a multiple of 16,
 * k_attention_tc runs Q·Kᵀ and P·V on tensor cores (wmma: BF16 q, k, v and p, FP32 accumulation
 * and FP32 online softmax), and other head dims fall back to k_attention, which widens a BF16
 * page's K and V to FP32 as it stages them. KV compression (kv_compact, k_kv_compact) runs on the
 * device from the host's plans: one upload of plans, jobs and page ids and one launch per layer,
 * no K/V over the bus and no host wait. kv_download / kv_upload move pages as floats for
 * calibration statistics and tests, converting on the host (BF16 → FP32 is exact, and FP32 → BF16
 * of a value that came from a BF16 page gives it back unchanged).
 *
 * Modes: fp32 = 1 is strict FP32 (cuBLAS default math, no TF32) for parity with the CPU backend
 * and the reference fixtures. fp32 = 0 is BF16 mode: the engine declares its GEMM weights once,
 * right after uploading the weight arena (the gemm_weights op); each is converted on the device to
 * a BF16 copy, kept in a table sorted by the FP32 pointer. linear() looks its w up there (a binary
 * search over at most 6·depth + 3 entries) and, when found, multiplies with BF16 inputs and FP32
 * accumulation. Every linear is one cuBLASLt matmul whose epilogue adds the bias (and applies GELU
 * for linear_gelu) in FP32, so a linear is one launch where a bias fill, the GEMM and a GELU pass
 * were three. A residual update and the LayerNorm after it are one k_adaln launch too
 * (gated_add_adaln: each thread updates its elements of the token's row, then normalises it).
 * BF16 activations: the engine also declares the buffers that only feed those GEMMs (gemm_inputs:
 * the AdaLN input silu(cond), the modulated LayerNorm before qkv, fc1 and the head, the attention
 * output before proj, fc1's GELU output before fc2). In BF16 mode they hold BF16 in place: silu,
 * adaln and attention round their outputs to nearest even as they store them, fc1's matmul writes
 * a BF16 D (its bias then the BF16 copy of the declared bias: cuBLASLt's bias has D's type), and
 * a linear reading one passes it to cuBLASLt as it is. That is the rounding a linear gave x
 * before (a conversion launch and a full FP32 read and write of x per linear), so the logits are
 * unchanged but for fc1's bias, and a step launches what it launches in FP32 mode. The residual
 * stream and every other buffer stay FP32. Why a declaration rather than the backend noticing
 * which op wrote a buffer last: the writer must know, when it writes, that nothing reads the
 * floats (fc1's output exists only in BF16), and only the caller knows its data flow; a buffer
 * held in BF16 is the backend's, so act_of() refuses it to any op but the declared readers and
 * writers, and to copies and downloads. Any other x of a declared w (tests' single ops) is still
 * converted to BF16 in scratch (S_XBF), one launch more.
 * Decoder: conv2d and spatial_attention take every image of a decode in one call, so the launches of
 * a decode do not depend on how many images finish together. A convolution is one cuDNN call (two
 * when its algorithm cannot fuse the bias); each shape's algorithm is chosen once by cuDNN's
 * heuristics in reserve(), for the largest N the workload names (vs_rt_workload.convs), and the
 * workspace the largest of them needs is allocated there too. GroupNorm and SiLU are one kernel.
 * The decoder's convolutions (their weights declared through decoder_weights, kept in a sorted
 * table like the copies) and spatial attention run in TF32, the transformer's attention in BF16
 * on tensor cores (above). Everything else stays strict FP32: norms, sampling, the quantiser (its
 * embedding lookup and φ convolutions: conv2d with an undeclared w) and the undeclared linears
 * (the word embedding). The cuBLAS math mode is set per GEMM for that (gemm_math), cuDNN's math
 * type per convolution (tensor-op or strict FMA). The FP32 arena is kept (the decoder and the
 * biases live in it), so BF16 mode holds the GEMM weights 1.5 times; the copies are freed with the
 * arena.
 *
 * Threads: a backend belongs to the thread that created it (the engine thread). */
extern "C" {
#include "common/log.h"
#include "runtime/backend.h"
}
#include "runtime/philox.h"

#include "runtime/cuda_device.h"
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- backend state and error recording ------------------------------------------------------- */

/* device scratch slots; S_XBF: BF16 copy of a linear's FP32 input in BF16 mode */
enum { S_IDX, S_BATCH, S_LAYER, S_COMPACT, S_CONV, S_SCORES, S_SREQ, S_SORT, S_XBF, S_COPY, S_COUNT };

/* Device copy of a batch's tables (b->dev points here); views into one int32 buffer. */
typedef struct {
    const int32_t *tok_row; /* [n_tok] */
    const int32_t *rows;    /* [n_rows][2]: tok_start, n_new */
    const int32_t *kv;      /* unused: page tables travel per layer (upload_layer) */
    const int32_t *pages;   /* unused: see kv */
    int n_rows, n_tok, depth, max_new;
} cuda_batch;

/* One image's sampling work, as the kernel sees it. */
typedef struct {
    int cond_tok, uncond_tok, n, first; /* first: its first slot in the step's token list */
    float guidance, top_p;
    int top_k, scale;
    unsigned long long seed;
} cuda_sreq;

/* BF16 copy of one declared GEMM weight. */
typedef struct {
    const float *w;          /* the FP32 weight (device), the lookup key */
    size_t n;                /* floats */
    const __nv_bfloat16 *bf; /* its copy [n], inside the set's mem */
} bf16_copy;

/* The copies made by one gemm_weights call; free(arena) drops them. */
typedef struct {
    const void *arena; /* the allocation the FP32 weights live in */
    void *mem;         /* one device allocation for all the copies */
    bf16_copy *v;      /* host [n], sorted by w */
    int n;
    size_t bytes;      /* of mem (counters) */
} bf16_set;

/* One alloc() block, for the counters: cuda_free learns its size here. */
typedef struct {
    void *p;
    size_t bytes;
} dev_block;

/* One conv2d shape's cuDNN algorithm, chosen once for the largest N (conv_plan_for). */
typedef struct {
    int cin, cout, k, h, w, tf32;
    cudnnConvolutionFwdAlgo_t algo;
} conv_plan;

/* The weights of one decoder_weights call (TF32 in BF16 mode); free(arena) drops them. */
typedef struct {
    const void *arena;
    const float **w; /* host [n], sorted */
    int n;
} tf32_set;

/* One buffer declared through gemm_inputs that holds BF16 activations in place. */
typedef struct {
    const void *p; /* its start (device) */
    size_t n;      /* elements */
} bf16_act;

typedef struct {
    vs_rt_backend base;
    int fp32;
    bf16_set *sets; /* host [n_sets]: BF16 mode only */
    int n_sets;
    bf16_act *acts; /* host [n_acts]: BF16 mode with BF16 weight copies only */
    int n_acts, acts_cap;
    tf32_set *tsets; /* host [n_tsets]: BF16 mode only */
    int n_tsets;
    cudaStream_t st;
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t mm;                /* linear(): FP32 compute, wᵀ·x, epilogue per call */
    cublasLtMatrixLayout_t la, lb, ly;      /* linear()'s w, x and y, set per call */
    cudnnHandle_t dnn;
    /* conv2d's descriptors, set per call (host-side, no device work) */
    cudnnTensorDescriptor_t xd, yd, bd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    cudnnActivationDescriptor_t ad; /* identity: the bias epilogue of the fused call */
    conv_plan *plans;               /* host [n_plans] */
    int n_plans;
    size_t plans_cap;
    int decode_images;              /* conv2d's largest N, from reserve() (0 before: 1) */
    cublasMath_t math;    /* the handle's math mode now (gemm_math) */
    int n_sm, smem_optin; /* multiprocessors; shared memory per block with opt-in (bytes) */
    vs_status sticky;     /* first error, VS_OK while none; VS_ERR_DEVICE_LOST stays for good */
    char sticky_msg[512];
    void *scr[S_COUNT]; /* device scratch: reserve() sizes it, ops grow it only beyond that */
    size_t scr_cap[S_COUNT];
    int reserved;       /* reserve() has run: a slot that still grows is worth a warning */
    unsigned char *ring; /* pinned staging for host → device copies */
    size_t ring_cap, ring_off;
    int32_t *host_i32; /* host staging: batch tables, sampled tokens */
    size_t host_i32_cap;
    cuda_sreq *host_sreq;
    size_t host_sreq_cap;
    __nv_bfloat16 *host_kv; /* host staging of BF16 pages for kv_download / kv_upload */
    size_t host_kv_cap;
    cuda_batch batch;
    vs_rt_counters ctr;   /* the counters op; see the design comment */
    dev_block *blocks;    /* host [n_blocks]: live alloc() blocks */
    size_t n_blocks, blocks_cap;
    const void *kv_base;  /* the last batch's kv_base, and the alloc() block holding it */
    uintptr_t kv_lo, kv_hi;
} cuda_backend;

static cuda_backend *cu(vs_rt_backend *be) { return (cuda_backend *)be; }

/* After a CUDA error: does the device still work? A non-sticky error (a bad argument, out of
 * memory, a bad launch configuration) is returned once and cleared by cudaGetLastError; a sticky
 * one (illegal address, launch failure, ...: the context is lost) is returned by every later
 * call, so the synchronize after clearing fails too. */
static int device_answers(void)
{
    (void)cudaGetLastError();
    cudaError_t e = cudaDeviceSynchronize();
    if (e == cudaSuccess)
        e = cudaGetLastError();
    return e == cudaSuccess;
}

/* Records an error. The first one wins, except that a lost device replaces a recoverable error
 * (the caller must learn that the device is gone); a lost device is never replaced. */
static void record(cuda_backend *c, vs_status code, const char *what, const char *file, int line,
                   const char *why)
{
    if (c->sticky == VS_ERR_DEVICE_LOST)
        return;
    if (code == VS_ERR_CUDA && !device_answers())
        code = VS_ERR_DEVICE_LOST;
    if (c->sticky != VS_OK && code != VS_ERR_DEVICE_LOST)
        return;
    c->sticky = code;
    snprintf(c->sticky_msg, sizeof c->sticky_msg, "%s failed at %s:%d: %s%s", what, file, line, why,
             code == VS_ERR_DEVICE_LOST
                 ? " (a sticky CUDA error: the device is lost until the process restarts)"
                 : "");
    vs_log(VS_LOG_ERROR, "cuda", "%s", c->sticky_msg);
}

/* Returns the pending error once: recoverable ones are cleared, a lost device stays. */
static vs_status take_error(cuda_backend *c, vs_err *err)
{
    if (c->sticky == VS_OK)
        return VS_OK;
    vs_status st = vs_err_set(err, c->sticky, "cuda backend: %s", c->sticky_msg);
    if (c->sticky != VS_ERR_DEVICE_LOST) {
        c->sticky = VS_OK;
        c->sticky_msg[0] = 0;
    }
    return st;
}

/* Every CUDA runtime and cuBLAS call goes through these; a failure becomes the sticky error. */
#define VS_CUDA(c, call)                                                                           \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            record((c), VS_ERR_CUDA, #call, __FILE__, __LINE__, cudaGetErrorString(e_));           \
    } while (0)

#define VS_CUBLAS(c, call)                                                                         \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            record((c), VS_ERR_CUDA, #call, __FILE__, __LINE__, cublasGetStatusString(s_));        \
    } while (0)

/* A cuDNN call: 0, or -1 after recording its error. */
static int dnn_check(cuda_backend *c, cudnnStatus_t s, const char *what, const char *file, int line)
{
    if (s == CUDNN_STATUS_SUCCESS)
        return 0;
    record(c, VS_ERR_CUDA, what, file, line, cudnnGetErrorString(s));
    return -1;
}
#define VS_CUDNN(c, call) dnn_check((c), (call), #call, __FILE__, __LINE__)
/* A cuDNN call that does device work: counted as one launch, like a cuBLAS GEMM. */
#define VS_DNN(c, call) ((c)->ctr.launches++, VS_CUDNN(c, call))

/* After every kernel launch: a bad configuration shows here, a fault at the next sync. */
#define VS_LAUNCHED(c, kernel)                                                                     \
    do {                                                                                           \
        (c)->ctr.launches++;                                                                       \
        cudaError_t e_ = cudaGetLastError();                                                       \
        if (e_ != cudaSuccess)                                                                     \
            record((c), VS_ERR_CUDA, "launch of " #kernel, __FILE__, __LINE__,                     \
                   cudaGetErrorString(e_));                                                        \
    } while (0)

/* Every cuBLAS GEMM call: counted as one launch. */
#define VS_GEMM(c, call)                                                                           \
    do {                                                                                           \
        (c)->ctr.launches++;                                                                       \
        VS_CUBLAS(c, call);                                                                        \
    } while (0)

#define VS_FAIL(c, code, ...)                                                                      \
    do {                                                                                           \
        char m_[384];                                                                              \
        snprintf(m_, sizeof m_, __VA_ARGS__);                                                      \
        record((c), (code), "backend op", __FILE__, __LINE__, m_);                                 \
    } while (0)

/* Waits for the stream; the staging ring is free afterwards. */
static void drain(cuda_backend *c)
{
    c->ctr.syncs++;
    VS_CUDA(c, cudaStreamSynchronize(c->st));
    c->ring_off = 0;
}

/* Bytes of [p, p + bytes) inside the KV pool arena (counters). */
static size_t kv_part(const cuda_backend *c, const void *p, size_t bytes)
{
    uintptr_t lo = (uintptr_t)p, hi = lo + bytes;
    lo = lo > c->kv_lo ? lo : c->kv_lo;
    hi = hi < c->kv_hi ? hi : c->kv_hi;
    return hi > lo ? (size_t)(hi - lo) : 0;
}

static const char *const scr_name[S_COUNT] = {
    "index lists", "batch tables",  "page tables", "compaction tables", "cuDNN workspace",
    "attention scores", "sampling requests", "sort buffers", "BF16 linear inputs", "copy lists"};

/* Every device allocation and free of the backend goes through these two, which keep the
 * counters' allocations, allocated_bytes and allocated_peak_bytes. */
static cudaError_t dev_malloc(cuda_backend *c, void **p, size_t bytes)
{
    cudaError_t e = cudaMalloc(p, bytes);
    if (e == cudaSuccess) {
        c->ctr.allocations++;
        c->ctr.allocated_bytes += bytes;
        if (c->ctr.allocated_bytes > c->ctr.allocated_peak_bytes)
            c->ctr.allocated_peak_bytes = c->ctr.allocated_bytes;
    }
    return e;
}

/* p (NULL ok) was allocated by dev_malloc with `bytes` (0 when not known: not counted) */
static void dev_free(cuda_backend *c, void *p, size_t bytes)
{
    if (!p)
        return;
    c->ctr.allocated_bytes -= bytes;
    VS_CUDA(c, cudaFree(p));
}

/* Replaces scratch slot `which` by a buffer of `want` bytes; 0, or -1 with a recorded NOMEM.
 * Waits for queued work first, which may still read the old buffer. */
static int scratch_alloc(cuda_backend *c, int which, size_t want)
{
    drain(c);
    dev_free(c, c->scr[which], c->scr_cap[which]);
    c->scr[which] = NULL;
    c->scr_cap[which] = 0;
    void *p = NULL;
    want = want ? want : 256;
    cudaError_t e = dev_malloc(c, &p, want);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        VS_FAIL(c, VS_ERR_NOMEM, "cannot grow CUDA scratch (%s) to %.1f MB (%s): lower the batch size",
                scr_name[which], (double)want / 1e6, cudaGetErrorString(e));
        return -1;
    }
    c->scr[which] = p;
    c->scr_cap[which] = want;
    return 0;
}

/* Scratch slot `which` of at least `bytes`, grown (by a quarter more) when short; NULL (and a
 * recorded NOMEM) when the device is out of memory. After reserve() a slot never has to grow. */
static void *scratch(cuda_backend *c, int which, size_t bytes)
{
    if (c->scr_cap[which] >= bytes && c->scr[which])
        return c->scr[which];
    if (c->reserved)
        vs_log(VS_LOG_WARN, "cuda",
               "scratch for %s grows from %zu to %zu bytes after reserve(): the workload it was "
               "given is short of this op (a bug), so this step allocates device memory",
               scr_name[which], c->scr_cap[which], bytes);
    return scratch_alloc(c, which, bytes + bytes / 4 + 256) == 0 ? c->scr[which] : NULL;
}

/* Host → device copy that lets the caller reuse src at once: staged in the pinned ring when it
 * fits (the ring is recycled only after the stream drains), else copied and waited for. */
static void h2d(cuda_backend *c, void *dst, const void *src, size_t bytes)
{
    if (!bytes)
        return;
    c->ctr.h2d_bytes += bytes;
    size_t need = (bytes + 255) & ~(size_t)255;
    if (need <= c->ring_cap) {
        if (c->ring_off + need > c->ring_cap)
            drain(c);
        unsigned char *p = c->ring + c->ring_off;
        memcpy(p, src, bytes);
        c->ring_off += need;
        VS_CUDA(c, cudaMemcpyAsync(dst, p, bytes, cudaMemcpyHostToDevice, c->st));
    } else {
        VS_CUDA(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->st));
        drain(c);
    }
}

static int grow_host(void **p, size_t *cap, size_t n, size_t elem)
{
    if (*cap >= n && *p)
        return 0;
    void *q = realloc(*p, (n ? n : 1) * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

/* The math mode of the next GEMM: TF32 only when asked (the decoder's) and in BF16 mode. */
static void gemm_math(cuda_backend *c, int tf32)
{
    cublasMath_t m = tf32 && !c->fp32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
    if (m == c->math)
        return;
    cublasStatus_t s = cublasSetMathMode(c->blas, m);
    if (s != CUBLAS_STATUS_SUCCESS) {
        record(c, VS_ERR_CUDA, "cublasSetMathMode", __FILE__, __LINE__, cublasGetStatusString(s));
        return;
    }
    c->math = m;
}

/* Blocks for a grid-stride loop over n elements. */
static unsigned grid_for(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b > (1u << 20) ? (1u << 20) : b);
}

#define GRID_STRIDE(i, n)                                                                          \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                        \
         i += (size_t)gridDim.x * blockDim.x)

/* ---- reductions (blockDim a multiple of 32, at most 1024) ------------------------------------- */

template <typename T> __device__ T warp_sum(T v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block, returned to every thread. */
template <typename T> __device__ T block_sum(T v)
{
    __shared__ T sh[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads(); /* sh may still be read by a previous call */
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    T r = 0;
    for (int i = 0; i < nw; i++)
        r += sh[i];
    return r;
}

__device__ float block_max(float v)
{
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    float r = -INFINITY;
    for (int i = 0; i < nw; i++)
        r = fmaxf(r, sh[i]);
    return r;
}

__device__ int block_max_int(int v)
{
    __shared__ int sh[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    int r = INT_MIN;
    for (int i = 0; i < nw; i++)
        r = max(r, sh[i]);
    return r;
}

/* ---- memory ------------------------------------------------------------------------------------ */

static void drop_bf16_set(cuda_backend *c, int i);
static void drop_tf32_set(cuda_backend *c, int i);

/* ---- BF16 activations (gemm_inputs) ------------------------------------------------------------ */

/* What [p, p + n elements) of an op's operand is: 1 when it is a buffer declared through
 * gemm_inputs (p its start, n within it), so it holds BF16 elements; 0 when it overlaps none (FP32
 * floats); -1 after recording an error when it overlaps one otherwise (the caller broke
 * gemm_inputs' contract). `what` names the op for that error. */
static int act_of(cuda_backend *c, const void *p, size_t n, const char *what)
{
    uintptr_t lo = (uintptr_t)p, hi = lo + n * sizeof(float);
    for (int i = 0; i < c->n_acts; i++) {
        uintptr_t alo = (uintptr_t)c->acts[i].p, ahi = alo + c->acts[i].n * sizeof(float);
        if (lo == alo && n <= c->acts[i].n)
            return 1;
        if (n && lo < ahi && alo < hi) {
            VS_FAIL(c, VS_ERR_INTERNAL,
                    "%s touches %zu elements at %p, which overlap the BF16 activations declared "
                    "at %p (%zu elements; gemm_inputs: only the ops it names, from its start)",
                    what, n, p, c->acts[i].p, c->acts[i].n);
            return -1;
        }
    }
    return 0;
}

/* A memory op (upload, download, copy, zero) must not touch declared activations: their bytes are
 * BF16, the caller's are floats. 0, or -1 (recorded). */
static int not_act(cuda_backend *c, const void *p, size_t bytes, const char *what)
{
    if (!c->n_acts || !bytes)
        return 0;
    int a = act_of(c, p, (bytes + sizeof(float) - 1) / sizeof(float), what);
    if (a > 0)
        VS_FAIL(c, VS_ERR_INTERNAL, "%s of %zu bytes at %p: it holds BF16 activations (gemm_inputs)",
                what, bytes, p);
    return a != 0 ? -1 : 0;
}

/* The declarations inside a block that is freed go with it. */
static void drop_acts(cuda_backend *c, const void *p, size_t bytes)
{
    uintptr_t lo = (uintptr_t)p, hi = lo + bytes;
    for (int i = c->n_acts - 1; i >= 0; i--)
        if ((uintptr_t)c->acts[i].p >= lo && (uintptr_t)c->acts[i].p < hi)
            c->acts[i] = c->acts[--c->n_acts];
}

/* BF16 mode with BF16 weight copies: the buffers hold BF16 from now on (each is written before it
 * is read: gemm_inputs' contract). Otherwise nothing changes: linear() multiplies in FP32 there.
 * Without host memory for the table they stay FP32 (with a warning), which is always correct. */
static void cuda_gemm_inputs(vs_rt_backend *be, const float *const *a, const size_t *n, int count)
{
    cuda_backend *c = cu(be);
    if (c->fp32 || !c->n_sets || count <= 0)
        return;
    if (c->n_acts + count > c->acts_cap) {
        int cap = c->n_acts + count;
        bf16_act *v = (bf16_act *)realloc(c->acts, (size_t)cap * sizeof *v);
        if (!v) {
            vs_log(VS_LOG_WARN, "cuda", "out of host memory for the table of %d BF16 activation "
                                        "buffers; they stay FP32", count);
            return;
        }
        c->acts = v;
        c->acts_cap = cap;
    }
    for (int i = 0; i < count; i++) {
        drop_acts(c, a[i], 1);
        if (a[i] && n[i])
            c->acts[c->n_acts++] = bf16_act{a[i], n[i]};
    }
}

static void cuda_destroy(vs_rt_backend *be)
{
    cuda_backend *c = cu(be);
    if (c->st)
        VS_CUDA(c, cudaStreamSynchronize(c->st));
    while (c->n_sets > 0)
        drop_bf16_set(c, c->n_sets - 1);
    free(c->sets);
    while (c->n_tsets > 0)
        drop_tf32_set(c, c->n_tsets - 1);
    free(c->tsets);
    free(c->acts);
    for (int i = 0; i < S_COUNT; i++)
        dev_free(c, c->scr[i], c->scr_cap[i]);
    if (c->ring)
        VS_CUDA(c, cudaFreeHost(c->ring));
    if (c->blas)
        VS_CUBLAS(c, cublasDestroy(c->blas));
    cublasLtMatrixLayout_t *lts[] = {&c->la, &c->lb, &c->ly};
    for (size_t i = 0; i < sizeof lts / sizeof lts[0]; i++)
        if (*lts[i])
            VS_CUBLAS(c, cublasLtMatrixLayoutDestroy(*lts[i]));
    if (c->mm)
        VS_CUBLAS(c, cublasLtMatmulDescDestroy(c->mm));
    if (c->lt)
        VS_CUBLAS(c, cublasLtDestroy(c->lt));
    cudnnTensorDescriptor_t *tds[] = {&c->xd, &c->yd, &c->bd};
    for (size_t i = 0; i < sizeof tds / sizeof tds[0]; i++)
        if (*tds[i])
            (void)VS_CUDNN(c, cudnnDestroyTensorDescriptor(*tds[i]));
    if (c->wd)
        (void)VS_CUDNN(c, cudnnDestroyFilterDescriptor(c->wd));
    if (c->cd)
        (void)VS_CUDNN(c, cudnnDestroyConvolutionDescriptor(c->cd));
    if (c->ad)
        (void)VS_CUDNN(c, cudnnDestroyActivationDescriptor(c->ad));
    if (c->dnn)
        (void)VS_CUDNN(c, cudnnDestroy(c->dnn));
    free(c->plans);
    if (c->st)
        VS_CUDA(c, cudaStreamDestroy(c->st));
    free(c->host_i32);
    free(c->host_kv);
    free(c->host_sreq);
    free(c->blocks);
    free(c);
}

static void *cuda_alloc(vs_rt_backend *be, size_t bytes)
{
    cuda_backend *c = cu(be);
    void *p = NULL;
    bytes = bytes ? bytes : 256;
    if (dev_malloc(c, &p, bytes) != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is the caller's to handle, not sticky */
        return NULL;
    }
    /* counters: cuda_free learns the block's size here (no host memory for that: no block) */
    if (c->n_blocks == c->blocks_cap &&
        grow_host((void **)&c->blocks, &c->blocks_cap, 2 * c->blocks_cap + 16, sizeof(dev_block)) != 0) {
        dev_free(c, p, bytes);
        return NULL;
    }
    c->blocks[c->n_blocks++] = dev_block{p, bytes};
    return p;
}

static void cuda_free(vs_rt_backend *be, void *p)
{
    cuda_backend *c = cu(be);
    if (!p)
        return;
    for (int i = c->n_sets - 1; i >= 0; i--)
        if (c->sets[i].arena == p)
            drop_bf16_set(c, i);
    for (int i = c->n_tsets - 1; i >= 0; i--)
        if (c->tsets[i].arena == p)
            drop_tf32_set(c, i);
    size_t bytes = 0;
    for (size_t i = c->n_blocks; i-- > 0;) /* counters */
        if (c->blocks[i].p == p) {
            bytes = c->blocks[i].bytes;
            drop_acts(c, p, bytes);
            if ((uintptr_t)p == c->kv_lo) { /* the arena goes */
                c->kv_base = NULL;
                c->kv_lo = c->kv_hi = 0;
            }
            c->blocks[i] = c->blocks[--c->n_blocks];
            break;
        }
    dev_free(c, p, bytes);
}

static void cuda_upload(vs_rt_backend *be, void *dst, const void *src_host, size_t bytes)
{
    if (not_act(cu(be), dst, bytes, "upload") != 0)
        return;
    cu(be)->ctr.kv_h2d_bytes += kv_part(cu(be), dst, bytes);
    h2d(cu(be), dst, src_host, bytes);
}

/* Synchronous, like the CPU backend's: dst_host is filled when this returns. */
static void cuda_download(vs_rt_backend *be, void *dst_host, const void *src, size_t bytes)
{
    cuda_backend *c = cu(be);
    if (!bytes || not_act(c, src, bytes, "download") != 0)
        return;
    c->ctr.d2h_bytes += bytes;
    c->ctr.kv_d2h_bytes += kv_part(c, src, bytes);
    VS_CUDA(c, cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, c->st));
    drain(c);
}

/* Host staging for n BF16 KV elements, or NULL (and the error recorded) when the host has no room
 * (also for n = 0: nothing to stage). */
static __nv_bfloat16 *kv_staging(cuda_backend *c, size_t n)
{
    if (!n)
        return NULL;
    if (grow_host((void **)&c->host_kv, &c->host_kv_cap, n, sizeof(__nv_bfloat16)) != 0) {
        VS_FAIL(c, VS_ERR_NOMEM, "out of host memory staging %zu BF16 KV elements", n);
        return NULL;
    }
    return c->host_kv;
}

/* KV elements of the arena (FP32 or BF16 pages, per the mode) as floats on the host; see the
 * design comment. Synchronous, like download. */
static void cuda_kv_download(vs_rt_backend *be, float *dst_host, const void *kv_base,
                             size_t elem_off, size_t n)
{
    cuda_backend *c = cu(be);
    if (c->fp32) {
        cuda_download(be, dst_host, (const float *)kv_base + elem_off, n * sizeof(float));
        return;
    }
    __nv_bfloat16 *h = kv_staging(c, n);
    if (!h)
        return;
    cuda_download(be, h, (const __nv_bfloat16 *)kv_base + elem_off, n * sizeof *h);
    for (size_t i = 0; i < n; i++)
        dst_host[i] = __bfloat162float(h[i]);
}

/* Floats from the host into KV elements of the arena, rounded to nearest even on BF16 pages. */
static void cuda_kv_upload(vs_rt_backend *be, void *kv_base, size_t elem_off, const float *src_host,
                           size_t n)
{
    cuda_backend *c = cu(be);
    if (c->fp32) {
        cuda_upload(be, (float *)kv_base + elem_off, src_host, n * sizeof(float));
        return;
    }
    __nv_bfloat16 *h = kv_staging(c, n);
    if (!h)
        return;
    for (size_t i = 0; i < n; i++)
        h[i] = __float2bfloat16_rn(src_host[i]);
    cuda_upload(be, (__nv_bfloat16 *)kv_base + elem_off, h, n * sizeof *h);
}

static void cuda_copy(vs_rt_backend *be, void *dst, const void *src, size_t bytes)
{
    cuda_backend *c = cu(be);
    if (not_act(c, dst, bytes, "copy") != 0 || not_act(c, src, bytes, "copy") != 0)
        return;
    if (bytes && dst != src) {
        c->ctr.copies++;
        VS_CUDA(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->st));
    }
}

/* A copy_many list, one block per copy (grid-stride over the list): 32-bit words where both ends
 * are aligned to them (the engine's float blocks), then the rest byte by byte. */
__global__ void k_copy_many(const vs_rt_copy *list, int n)
{
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        unsigned char *d = (unsigned char *)list[i].dst;
        const unsigned char *src = (const unsigned char *)list[i].src;
        size_t b = list[i].bytes;
        size_t words = (((uintptr_t)d | (uintptr_t)src) & 3) == 0 ? b / 4 : 0;
        for (size_t k = threadIdx.x; k < words; k += blockDim.x)
            ((uint32_t *)d)[k] = ((const uint32_t *)src)[k];
        for (size_t k = words * 4 + threadIdx.x; k < b; k += blockDim.x)
            d[k] = src[k];
    }
}

/* The list goes up through the staging ring (h2d_bytes count it) into its scratch: one launch for
 * all the copies, so a step's per-image copies cost what one image's do. */
static void cuda_copy_many(vs_rt_backend *be, const vs_rt_copy *list, int n)
{
    cuda_backend *c = cu(be);
    if (n <= 0)
        return;
    for (int i = 0; i < n; i++)
        if (not_act(c, list[i].dst, list[i].bytes, "copy_many") != 0 ||
            not_act(c, list[i].src, list[i].bytes, "copy_many") != 0)
            return;
    vs_rt_copy *d = (vs_rt_copy *)scratch(c, S_COPY, (size_t)n * sizeof *list);
    if (!d)
        return;
    h2d(c, d, list, (size_t)n * sizeof *list);
    VS_LAUNCH(k_copy_many, (unsigned)(n < 1024 ? n : 1024), 256, 0, c->st, (const vs_rt_copy *)d, n);
    VS_LAUNCHED(c, k_copy_many);
}

static void cuda_zero(vs_rt_backend *be, void *dst, size_t bytes)
{
    cuda_backend *c = cu(be);
    if (bytes && not_act(c, dst, bytes, "zero") == 0) {
        c->ctr.copies++;
        VS_CUDA(c, cudaMemsetAsync(dst, 0, bytes, c->st));
    }
}

/* The pending error is returned once (take_error): recoverable ones are cleared. */
static vs_status cuda_sync(vs_rt_backend *be, vs_err *err)
{
    cuda_backend *c = cu(be);
    drain(c);
    VS_CUDA(c, cudaGetLastError());
    return take_error(c, err);
}

static vs_status cuda_mem_info(vs_rt_backend *be, vs_rt_mem_info *out, vs_err *err)
{
    cuda_backend *c = cu(be);
    memset(out, 0, sizeof *out);
    cudaError_t e = cudaMemGetInfo(&out->free, &out->total);
    if (e != cudaSuccess) {
        record(c, VS_ERR_CUDA, "cudaMemGetInfo", __FILE__, __LINE__, cudaGetErrorString(e));
        return take_error(c, err);
    }
    return VS_OK;
}

/* Entries of a step's batch tables (tok_row, then [n_rows][2]) and of one layer's tables
 * ([n_rows][heads][3], then the page ids of every (row, head)); int32 each. */
static size_t batch_entries(size_t n_tok, size_t n_rows) { return n_tok + 2 * n_rows; }
static size_t layer_entries(size_t n_heads, size_t n_pages) { return 3 * n_heads + n_pages; }

/* Packs tok_row and the rows into one int32 upload. Page tables are uploaded per layer by the
 * attention op: kvcache/ grows a layer's pages just before its attention (and compacts them right
 * after), so they are only final at that moment. */
static vs_status cuda_batch_begin(vs_rt_backend *be, vs_rt_batch *b, vs_err *err)
{
    cuda_backend *c = cu(be);
    cuda_batch *cb = &c->batch;
    b->dev = NULL;
    if (b->kv_base != c->kv_base) { /* counters: the KV pool arena is the block holding kv_base */
        c->kv_base = b->kv_base;
        c->kv_lo = c->kv_hi = 0;
        for (size_t i = 0; i < c->n_blocks; i++) {
            uintptr_t lo = (uintptr_t)c->blocks[i].p, hi = lo + c->blocks[i].bytes;
            if ((uintptr_t)b->kv_base >= lo && (uintptr_t)b->kv_base < hi) {
                c->kv_lo = lo;
                c->kv_hi = hi;
                break;
            }
        }
    }
    if (c->sticky != VS_OK) /* from work before this step, never synced: reported once, here */
        return cuda_sync(be, err);
    if (b->n_rows < 0 || b->n_tok < 0 || b->depth < 1 || b->page_tokens < 1)
        return vs_err_set(
            err, VS_ERR_INVALID,
            "batch: n_rows %d, n_tok %d, depth %d, page_tokens %d (need n_rows, n_tok "
            ">= 0, depth and page_tokens >= 1)",
            b->n_rows, b->n_tok, b->depth, b->page_tokens);
    int max_new = 0;
    for (int r = 0; r < b->n_rows; r++) {
        const vs_rt_row *row = &b->rows[r];
        if (row->n_new > max_new)
            max_new = row->n_new;
        if (row->tok_start < 0 || row->n_new < 0 || row->tok_start + row->n_new > b->n_tok)
            return vs_err_set(err, VS_ERR_INVALID,
                              "batch row %d covers tokens %d..%d but the step has %d tokens", r,
                              row->tok_start, row->tok_start + row->n_new, b->n_tok);
        if (!row->kv)
            return vs_err_set(err, VS_ERR_INVALID, "batch row %d has no KV view", r);
    }
    size_t total = batch_entries((size_t)b->n_tok, (size_t)b->n_rows);
    if (total > (size_t)INT_MAX)
        return vs_err_set(err, VS_ERR_INVALID, "batch tables of %zu entries are over 2^31", total);
    if (grow_host((void **)&c->host_i32, &c->host_i32_cap, total, sizeof(int32_t)) != 0)
        return vs_err_set(err, VS_ERR_NOMEM, "out of host memory for the batch tables");
    int32_t *h = c->host_i32;
    int32_t *h_rows = h + b->n_tok;
    for (int t = 0; t < b->n_tok; t++) {
        int r = b->tok_row[t];
        if (r < 0 || r >= b->n_rows)
            return vs_err_set(err, VS_ERR_INVALID, "token %d belongs to row %d of %d", t, r,
                              b->n_rows);
        h[t] = r;
    }
    for (int r = 0; r < b->n_rows; r++) {
        h_rows[2 * r] = b->rows[r].tok_start;
        h_rows[2 * r + 1] = b->rows[r].n_new;
    }
    int32_t *d = (int32_t *)scratch(c, S_BATCH, total * sizeof(int32_t));
    if (!d)
        return cuda_sync(be, err);
    h2d(c, d, h, total * sizeof(int32_t));
    cb->tok_row = d;
    cb->rows = d + b->n_tok;
    cb->kv = NULL;
    cb->pages = NULL;
    cb->n_rows = b->n_rows;
    cb->n_tok = b->n_tok;
    cb->depth = b->depth;
    cb->max_new = max_new;
    b->dev = cb;
    if (c->sticky != VS_OK) {
        b->dev = NULL;
        return cuda_sync(be, err);
    }
    return VS_OK;
}

/* Uploads one layer's [n_rows][H][3] (n_tokens, page offset, store) of every (row, head) and all
 * their page ids, packed in ONE upload; returns 0, or -1 after recording an error. Rows that store
 * their new tokens (b->kv_store) list pages for them too. */
static int upload_layer(cuda_backend *c, const vs_rt_batch *b, int layer, int H, const int32_t **kvm,
                        const int32_t **pages)
{
    size_t n_pages = 0, n_heads = (size_t)b->n_rows * H;
    for (int r = 0; r < b->n_rows; r++) {
        int store = !b->kv_store || b->kv_store[r];
        for (int h = 0; h < H; h++) {
            const vs_rt_kv_head *kh = &b->rows[r].kv[(size_t)layer * H + h];
            long held = (long)kh->n_tokens + (store ? b->rows[r].n_new : 0);
            long need = (held + b->page_tokens - 1) / b->page_tokens;
            if (kh->n_tokens < 0 || need > kh->n_pages) {
                VS_FAIL(c, VS_ERR_INVALID,
                        "batch row %d layer %d head %d holds %d tokens and adds %d, which needs "
                        "%ld pages of %d tokens, but its table lists %d: reserve the tokens before "
                        "the attention",
                        r, layer, h, kh->n_tokens, store ? b->rows[r].n_new : 0, need,
                        b->page_tokens, kh->n_pages);
                return -1;
            }
            n_pages += (size_t)need;
        }
    }
    size_t total = layer_entries(n_heads, n_pages);
    if (total > (size_t)INT_MAX) {
        VS_FAIL(c, VS_ERR_INVALID, "page tables of %zu entries are over 2^31", total);
        return -1;
    }
    if (grow_host((void **)&c->host_i32, &c->host_i32_cap, total, sizeof(int32_t)) != 0) {
        VS_FAIL(c, VS_ERR_NOMEM, "out of host memory for the page tables");
        return -1;
    }
    int32_t *h_meta = c->host_i32, *h_pages = h_meta + 3 * n_heads;
    int32_t off = 0;
    for (int r = 0; r < b->n_rows; r++) {
        int store = !b->kv_store || b->kv_store[r];
        for (int h = 0; h < H; h++) {
            const vs_rt_kv_head *kh = &b->rows[r].kv[(size_t)layer * H + h];
            int held = kh->n_tokens + (store ? b->rows[r].n_new : 0);
            int need = (held + b->page_tokens - 1) / b->page_tokens;
            int32_t *m = h_meta + 3 * ((size_t)r * H + h);
            m[0] = kh->n_tokens;
            m[1] = off;
            m[2] = store;
            memcpy(h_pages + off, kh->pages, (size_t)need * sizeof(int32_t));
            off += need;
        }
    }
    int32_t *d = (int32_t *)scratch(c, S_LAYER, total * sizeof(int32_t));
    if (!d)
        return -1;
    h2d(c, d, h_meta, total * sizeof(int32_t));
    *kvm = d;
    *pages = d + 3 * n_heads;
    return 0;
}

static const cuda_batch *batch_of(cuda_backend *c, const vs_rt_batch *b)
{
    if (!b->dev)
        VS_FAIL(c, VS_ERR_INTERNAL, "an op got a batch that batch_begin did not prepare");
    return (const cuda_batch *)b->dev;
}

/* ---- dense ------------------------------------------------------------------------------------- */

__global__ void k_fill_rows(float *y, const float *bias, size_t M, int N)
{
    GRID_STRIDE(i, M * (size_t)N)
    y[i] = bias[i % (size_t)N];
}

/* ---- BF16 copies of the GEMM weights ------------------------------------------------------------ */

__global__ void k_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n)
{
    GRID_STRIDE(i, n)
    dst[i] = __float2bfloat16_rn(src[i]);
}

static void drop_bf16_set(cuda_backend *c, int i)
{
    bf16_set *s = &c->sets[i];
    drain(c); /* queued GEMMs may still read the copies */
    dev_free(c, s->mem, s->bytes);
    free(s->v);
    c->sets[i] = c->sets[--c->n_sets];
}

static int cmp_copy(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const bf16_copy *)a)->w, y = (uintptr_t)((const bf16_copy *)b)->w;
    return x < y ? -1 : x > y;
}

#define BF16_ALIGN 256 /* bytes: each copy starts aligned for the tensor-core GEMM kernels */

/* BF16 mode: one device allocation holds a BF16 copy of every declared weight. Running out of
 * memory is not an error: the weights then stay FP32 (with a warning). */
static void cuda_gemm_weights(vs_rt_backend *be, const void *arena, const float *const *w,
                              const size_t *n, int count)
{
    cuda_backend *c = cu(be);
    if (c->fp32 || count <= 0)
        return;
    for (int i = c->n_sets - 1; i >= 0; i--)
        if (c->sets[i].arena == arena)
            drop_bf16_set(c, i);
    size_t bytes = 0;
    for (int i = 0; i < count; i++)
        bytes += (n[i] * sizeof(__nv_bfloat16) + BF16_ALIGN - 1) & ~(size_t)(BF16_ALIGN - 1);
    bf16_copy *v = (bf16_copy *)calloc((size_t)count, sizeof *v);
    bf16_set *sets = (bf16_set *)realloc(c->sets, (size_t)(c->n_sets + 1) * sizeof *sets);
    if (sets)
        c->sets = sets;
    void *mem = NULL;
    cudaError_t e = cudaSuccess;
    size_t got = bytes ? bytes : BF16_ALIGN;
    if (!v || !sets || (e = dev_malloc(c, &mem, got)) != cudaSuccess) {
        (void)cudaGetLastError();
        vs_log(VS_LOG_WARN, "cuda",
               "no room for BF16 copies of %d GEMM weights (%.1f MB: %s); they stay FP32", count,
               (double)bytes / 1e6, e != cudaSuccess ? cudaGetErrorString(e) : "out of host memory");
        free(v);
        return;
    }
    size_t off = 0;
    for (int i = 0; i < count; i++) {
        __nv_bfloat16 *dst = (__nv_bfloat16 *)((unsigned char *)mem + off);
        v[i].w = w[i];
        v[i].n = n[i];
        v[i].bf = dst;
        if (n[i]) {
            VS_LAUNCH(k_to_bf16, grid_for(n[i], 256), 256, 0, c->st, dst, w[i], n[i]);
            VS_LAUNCHED(c, k_to_bf16);
        }
        off += (n[i] * sizeof(__nv_bfloat16) + BF16_ALIGN - 1) & ~(size_t)(BF16_ALIGN - 1);
    }
    qsort(v, (size_t)count, sizeof *v, cmp_copy);
    c->sets[c->n_sets++] = bf16_set{arena, mem, v, count, got};
    vs_log(VS_LOG_INFO, "cuda", "BF16 copies of %d GEMM weights: %.1f MB", count,
           (double)bytes / 1e6);
}

static void drop_tf32_set(cuda_backend *c, int i)
{
    free(c->tsets[i].w);
    c->tsets[i] = c->tsets[--c->n_tsets];
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (const float *const *)a, y = (uintptr_t) * (const float *const *)b;
    return x < y ? -1 : x > y;
}

/* BF16 mode: remembers the decoder's conv weights, whose GEMMs may run in TF32. Without host
 * memory for the table they stay FP32 (with a warning). */
static void cuda_decoder_weights(vs_rt_backend *be, const void *arena, const float *const *w,
                                 int count)
{
    cuda_backend *c = cu(be);
    if (c->fp32 || count <= 0)
        return;
    for (int i = c->n_tsets - 1; i >= 0; i--)
        if (c->tsets[i].arena == arena)
            drop_tf32_set(c, i);
    const float **v = (const float **)malloc((size_t)count * sizeof *v);
    tf32_set *sets = (tf32_set *)realloc(c->tsets, (size_t)(c->n_tsets + 1) * sizeof *sets);
    if (sets)
        c->tsets = sets;
    if (!v || !sets) {
        vs_log(VS_LOG_WARN, "cuda", "out of host memory for the table of %d decoder weights; the "
                                    "decoder stays FP32", count);
        free(v);
        return;
    }
    memcpy(v, w, (size_t)count * sizeof *v);
    qsort(v, (size_t)count, sizeof *v, cmp_ptr);
    c->tsets[c->n_tsets++] = tf32_set{arena, v, count};
}

/* Was w declared through decoder_weights? */
static int is_decoder_weight(const cuda_backend *c, const float *w)
{
    for (int s = 0; s < c->n_tsets; s++) {
        const float *const *v = c->tsets[s].w;
        int lo = 0, hi = c->tsets[s].n - 1;
        while (lo <= hi) {
            int mid = (lo + hi) / 2;
            if (v[mid] == w)
                return 1;
            if ((uintptr_t)v[mid] < (uintptr_t)w)
                lo = mid + 1;
            else
                hi = mid - 1;
        }
    }
    return 0;
}

/* The BF16 copy of w when it was declared with at least `floats` elements, else NULL. */
static const __nv_bfloat16 *bf16_of(const cuda_backend *c, const float *w, size_t floats)
{
    for (int s = 0; s < c->n_sets; s++) {
        const bf16_copy *v = c->sets[s].v;
        int lo = 0, hi = c->sets[s].n - 1;
        while (lo <= hi) {
            int mid = (lo + hi) / 2;
            if (v[mid].w == w)
                return v[mid].n >= floats ? v[mid].bf : NULL;
            if ((uintptr_t)v[mid].w < (uintptr_t)w)
                lo = mid + 1;
            else
                hi = mid - 1;
        }
    }
    return NULL;
}

/* One cuBLASLt layout: column-major rows × cols with leading dimension ld; 0, or -1 (recorded). */
static int lt_layout(cuda_backend *c, cublasLtMatrixLayout_t l, cudaDataType type, uint64_t rows,
                     uint64_t cols, int64_t ld)
{
    uint32_t t = (uint32_t)type;
    cublasStatus_t s;
    if ((s = cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_TYPE, &t, sizeof t)) ||
        (s = cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_ROWS, &rows, sizeof rows)) ||
        (s = cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols)) ||
        (s = cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_LD, &ld, sizeof ld))) {
        record(c, VS_ERR_CUDA, "cublasLtMatrixLayoutSetAttribute", __FILE__, __LINE__,
               cublasGetStatusString(s));
        return -1;
    }
    return 0;
}

__global__ void k_gelu(float *y, size_t n)
{
    GRID_STRIDE(i, n)
    {
        float v = y[i];
        y[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
}

/* y = x·wᵀ (+ bias), then GELU (tanh form) when gelu: one cuBLASLt matmul whose epilogue adds the
 * bias and applies GELU in FP32. In cuBLAS's column-major terms yᵀ[N][M] = (w as K×N)ᵀ · (x as
 * K×M), the bias along yᵀ's rows. In BF16 mode a declared w multiplies through its BF16 copy, with
 * FP32 accumulation. Its x is BF16 already when it is a gemm_inputs buffer; any other x is rounded
 * to BF16 first (one conversion launch). y is BF16 when it is a gemm_inputs buffer: cuBLASLt
 * rounds the epilogue's FP32 result to nearest even, and the bias is then the BF16 copy of the
 * declared bias (cuBLASLt's bias has D's type, cublasLt.h's CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE).
 * Every other w multiplies in strict FP32 (CUBLAS_COMPUTE_32F: no TF32), x and y floats. */
static void linear_act(cuda_backend *c, float *y, const float *x, const float *w, const float *bias,
                       int M, int N, int K, int gelu)
{
    if (M <= 0 || N <= 0)
        return;
    size_t ny = (size_t)M * N, nx = (size_t)M * (K > 0 ? K : 0);
    int x16 = act_of(c, x, nx, "linear's x"), y16 = act_of(c, y, ny, "linear's y");
    if (x16 < 0 || y16 < 0)
        return;
    if (K <= 0) { /* an empty sum: act(bias), or 0 (GELU(0) = 0) */
        if (y16) {
            VS_FAIL(c, VS_ERR_INTERNAL, "a linear with K = 0 into BF16 activations");
            return;
        }
        if (!bias) {
            VS_CUDA(c, cudaMemsetAsync(y, 0, ny * sizeof(float), c->st));
            return;
        }
        VS_LAUNCH(k_fill_rows, grid_for(ny, 256), 256, 0, c->st, y, bias, (size_t)M, N);
        VS_LAUNCHED(c, k_fill_rows);
        if (gelu) {
            VS_LAUNCH(k_gelu, grid_for(ny, 256), 256, 0, c->st, y, ny);
            VS_LAUNCHED(c, k_gelu);
        }
        return;
    }
    const __nv_bfloat16 *wb = c->n_sets ? bf16_of(c, w, (size_t)N * K) : NULL;
    const __nv_bfloat16 *bb = y16 && bias ? bf16_of(c, bias, (size_t)N) : NULL;
    if ((x16 || y16) && !wb) {
        VS_FAIL(c, VS_ERR_INTERNAL, "a linear that reads or writes BF16 activations (gemm_inputs) "
                                    "with a w that has no BF16 copy (gemm_weights)");
        return;
    }
    if (y16 && bias && !bb) {
        VS_FAIL(c, VS_ERR_INTERNAL, "a linear into BF16 activations (gemm_inputs) with a bias that "
                                    "has no BF16 copy (gemm_weights)");
        return;
    }
    const void *A = w, *B = x, *bp = y16 ? (const void *)bb : (const void *)bias;
    cudaDataType t = CUDA_R_32F, ty = y16 ? CUDA_R_16BF : CUDA_R_32F;
    if (wb) {
        if (!x16) {
            __nv_bfloat16 *xb = (__nv_bfloat16 *)scratch(c, S_XBF, nx * sizeof(__nv_bfloat16));
            if (!xb)
                return;
            VS_LAUNCH(k_to_bf16, grid_for(nx, 256), 256, 0, c->st, xb, x, nx);
            VS_LAUNCHED(c, k_to_bf16);
            B = xb;
        }
        A = wb;
        t = CUDA_R_16BF;
    }
    uint32_t ep = bias ? (gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                       : (gelu ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT);
    int32_t bt = (int32_t)ty;
    if (lt_layout(c, c->la, t, (uint64_t)K, (uint64_t)N, K) != 0 ||
        lt_layout(c, c->lb, t, (uint64_t)K, (uint64_t)M, K) != 0 ||
        lt_layout(c, c->ly, ty, (uint64_t)N, (uint64_t)M, N) != 0)
        return;
    VS_CUBLAS(c, cublasLtMatmulDescSetAttribute(c->mm, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
    if (bias) {
        VS_CUBLAS(c, cublasLtMatmulDescSetAttribute(c->mm, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp,
                                                    sizeof bp));
        VS_CUBLAS(c, cublasLtMatmulDescSetAttribute(c->mm, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt,
                                                    sizeof bt));
    }
    float one = 1.0f, zero = 0.0f;
    VS_GEMM(c, cublasLtMatmul(c->lt, c->mm, &one, A, c->la, B, c->lb, &zero, y, c->ly, y, c->ly,
                              NULL, NULL, 0, c->st));
}

static void cuda_linear(vs_rt_backend *be, float *y, const float *x, const float *w,
                        const float *bias, int M, int N, int K)
{
    linear_act(cu(be), y, x, w, bias, M, N, K, 0);
}

static void cuda_linear_gelu(vs_rt_backend *be, float *y, const float *x, const float *w,
                             const float *bias, int M, int N, int K)
{
    linear_act(cu(be), y, x, w, bias, M, N, K, 1);
}

/* y16 non-NULL: the output is BF16 activations (gemm_inputs), rounded to nearest even */
__global__ void k_silu(float *y, __nv_bfloat16 *y16, const float *x, size_t n)
{
    GRID_STRIDE(i, n)
    {
        float v = x[i] / (1.0f + expf(-x[i]));
        if (y16)
            y16[i] = __float2bfloat16_rn(v);
        else
            y[i] = v;
    }
}


__global__ void k_add(float *y, const float *x, size_t n)
{
    GRID_STRIDE(i, n)
    y[i] += x[i];
}

__global__ void k_to_unit(float *y, size_t n)
{
    GRID_STRIDE(i, n)
    {
        float v = y[i] < -1.0f ? -1.0f : y[i] > 1.0f ? 1.0f : y[i];
        y[i] = (v + 1.0f) * 0.5f;
    }
}

__global__ void k_add_bias_rows(float *y, const float *b, size_t M, int N)
{
    GRID_STRIDE(i, M * (size_t)N)
    y[i] += b[i % (size_t)N];
}

static void cuda_silu(vs_rt_backend *be, float *y, const float *x, size_t n)
{
    cuda_backend *c = cu(be);
    int y16 = act_of(c, y, n, "silu's y");
    if (!n || y16 < 0)
        return;
    VS_LAUNCH(k_silu, grid_for(n, 256), 256, 0, c->st, y, y16 ? (__nv_bfloat16 *)(void *)y : NULL,
              x, n);
    VS_LAUNCHED(c, k_silu);
}

static void cuda_gelu(vs_rt_backend *be, float *x, size_t n)
{
    cuda_backend *c = cu(be);
    if (!n)
        return;
    VS_LAUNCH(k_gelu, grid_for(n, 256), 256, 0, c->st, x, n);
    VS_LAUNCHED(c, k_gelu);
}

static void cuda_add(vs_rt_backend *be, float *y, const float *x, size_t n)
{
    cuda_backend *c = cu(be);
    if (!n)
        return;
    VS_LAUNCH(k_add, grid_for(n, 256), 256, 0, c->st, y, x, n);
    VS_LAUNCHED(c, k_add);
}

static void cuda_to_unit(vs_rt_backend *be, float *x, size_t n)
{
    cuda_backend *c = cu(be);
    if (!n)
        return;
    VS_LAUNCH(k_to_unit, grid_for(n, 256), 256, 0, c->st, x, n);
    VS_LAUNCHED(c, k_to_unit);
}

static void cuda_add_bias_rows(vs_rt_backend *be, float *y, const float *b, int M, int N)
{
    cuda_backend *c = cu(be);
    if (M <= 0 || N <= 0)
        return;
    size_t n = (size_t)M * N;
    VS_LAUNCH(k_add_bias_rows, grid_for(n, 256), 256, 0, c->st, y, b, (size_t)M, N);
    VS_LAUNCHED(c, k_add_bias_rows);
}

__global__ void k_gather_rows(float *y, const float *table, const int32_t *idx, int T, int C,
                              int accumulate)
{
    GRID_STRIDE(i, (size_t)T * C)
    {
        size_t t = i / (size_t)C, k = i % (size_t)C;
        float v = table[(size_t)idx[t] * C + k];
        y[i] = accumulate ? y[i] + v : v;
    }
}

/* Uploads a host index list into the index scratch; NULL on failure (recorded). */
static const int32_t *upload_idx(cuda_backend *c, const int32_t *idx_host, int n)
{
    int32_t *d = (int32_t *)scratch(c, S_IDX, (size_t)n * sizeof(int32_t));
    if (d)
        h2d(c, d, idx_host, (size_t)n * sizeof(int32_t));
    return d;
}

static void cuda_gather_rows(vs_rt_backend *be, float *y, const float *table,
                             const int32_t *idx_host, int T, int C, int accumulate)
{
    cuda_backend *c = cu(be);
    if (T <= 0 || C <= 0)
        return;
    const int32_t *idx = upload_idx(c, idx_host, T);
    if (!idx)
        return;
    size_t n = (size_t)T * C;
    VS_LAUNCH(k_gather_rows, grid_for(n, 256), 256, 0, c->st, y, table, idx, T, C, accumulate);
    VS_LAUNCHED(c, k_gather_rows);
}

/* One block per token: LayerNorm statistics in double (two passes), like the CPU backend. y16
 * non-NULL: the output is BF16 activations (gemm_inputs), rounded to nearest even. br non-NULL:
 * first x[t] += br[t] * gmod[row][goff..] (k_gated_add's arithmetic; each thread then reads back
 * only the elements it wrote), so gated_add and the adaln after it are one launch. */
__global__ void __launch_bounds__(256)
    k_adaln(float *y, __nv_bfloat16 *y16, float *x, const float *mod, int mod_stride, int off_a,
            int off_b, const int32_t *tok_row, int C, float eps, const float *br,
            const float *gmod, int gmod_stride, int goff)
{
    size_t t = blockIdx.x;
    float *xr = x + t * C;
    float *yr = y + t * C;
    const float *mrow = mod + (size_t)tok_row[t] * mod_stride;
    const float *sc = mrow + off_a, *sh = mrow + off_b;
    if (br) {
        const float *g = gmod + (size_t)tok_row[t] * gmod_stride + goff, *bt = br + t * C;
        for (int i = threadIdx.x; i < C; i += blockDim.x)
            xr[i] += bt[i] * g[i];
    }
    double s = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        s += xr[i];
    double mean = block_sum(s) / C;
    double v = 0;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        double d = xr[i] - mean;
        v += d * d;
    }
    double var = block_sum(v) / C;
    float rstd = (float)(1.0 / sqrt(var + eps)), fm = (float)mean;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float o = (xr[i] - fm) * rstd * (1.0f + sc[i]) + sh[i];
        if (y16)
            y16[t * C + i] = __float2bfloat16_rn(o);
        else
            yr[i] = o;
    }
}

/* k_adaln over the step's tokens: xn = LN(x) modulated, held in BF16 where gemm_inputs holds
 * it; with a residual branch (br, gmod), x += br · gamma first, in the same pass. */
static void launch_adaln(cuda_backend *c, const vs_rt_batch *b, float *xn, const char *what,
                         float *x, const float *nmod, int nmod_stride, int scale_off,
                         int shift_off, int C, float eps, const float *br, const float *gmod,
                         int gmod_stride, int gamma_off)
{
    const cuda_batch *cb = batch_of(c, b);
    if (!cb || b->n_tok <= 0)
        return;
    int y16 = act_of(c, xn, (size_t)b->n_tok * C, what);
    if (y16 < 0)
        return;
    VS_LAUNCH(k_adaln, (unsigned)b->n_tok, 256, 0, c->st, xn,
              y16 ? (__nv_bfloat16 *)(void *)xn : NULL, x, nmod, nmod_stride, scale_off, shift_off,
              cb->tok_row, C, eps, br, gmod, gmod_stride, gamma_off);
    VS_LAUNCHED(c, k_adaln);
}

static void cuda_adaln(vs_rt_backend *be, float *y, const float *x, const float *mod,
                       int mod_stride, int scale_off, int shift_off, const vs_rt_batch *b, int C,
                       float eps)
{
    launch_adaln(cu(be), b, y, "adaln's y", (float *)x, mod, mod_stride, scale_off, shift_off, C,
                 eps, NULL, NULL, 0, 0);
}

static void cuda_gated_add_adaln(vs_rt_backend *be, float *x, const float *y, const float *gmod,
                                 int gmod_stride, int gamma_off, float *xn, const float *nmod,
                                 int nmod_stride, int scale_off, int shift_off,
                                 const vs_rt_batch *b, int C, float eps)
{
    launch_adaln(cu(be), b, xn, "gated_add_adaln's xn", x, nmod, nmod_stride, scale_off,
                 shift_off, C, eps, y, gmod, gmod_stride, gamma_off);
}

__global__ void k_gated_add(float *x, const float *br, const float *mod, int mod_stride, int goff,
                            const int32_t *tok_row, int T, int C)
{
    GRID_STRIDE(i, (size_t)T * C)
    {
        size_t t = i / (size_t)C, k = i % (size_t)C;
        x[i] += br[i] * mod[(size_t)tok_row[t] * mod_stride + goff + k];
    }
}

static void cuda_gated_add(vs_rt_backend *be, float *x, const float *y, const float *mod,
                           int mod_stride, int gamma_off, const vs_rt_batch *b, int C)
{
    cuda_backend *c = cu(be);
    const cuda_batch *cb = batch_of(c, b);
    if (!cb || b->n_tok <= 0 || C <= 0)
        return;
    size_t n = (size_t)b->n_tok * C;
    VS_LAUNCH(k_gated_add, grid_for(n, 256), 256, 0, c->st, x, y, mod, mod_stride, gamma_off, cb->tok_row,
                                                     b->n_tok, C);
    VS_LAUNCHED(c, k_gated_add);
}

/* One warp per (token, q or k, head): L2 norm in double, as the CPU backend. */
__global__ void k_qk_norm(float *qkv, int T, int H, int d, const float *scale_mul)
{
    size_t wg = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (wg >= (size_t)T * 2 * H)
        return; /* whole warps leave together */
    int h = (int)(wg % (size_t)H), part = (int)((wg / (size_t)H) % 2);
    size_t t = wg / ((size_t)2 * H);
    int C = H * d;
    float *v = qkv + t * 3 * C + (size_t)part * C + (size_t)h * d;
    double ss = 0;
    for (int i = lane; i < d; i += 32)
        ss += (double)v[i] * v[i];
    ss = warp_sum(ss);
    float nrm = (float)sqrt(ss);
    float inv = 1.0f / (nrm > 1e-12f ? nrm : 1e-12f);
    if (part == 0) {
        const float max_mul = logf(100.0f);
        float sm = scale_mul[h] < max_mul ? scale_mul[h] : max_mul;
        inv *= expf(sm);
    }
    for (int i = lane; i < d; i += 32)
        v[i] *= inv;
}

static void cuda_qk_norm(vs_rt_backend *be, float *qkv, int T, int H, int d, const float *scale_mul)
{
    cuda_backend *c = cu(be);
    if (T <= 0 || H <= 0 || d <= 0)
        return;
    size_t threads = (size_t)T * 2 * H * 32;
    VS_LAUNCH(k_qk_norm, (unsigned)((threads + 127) / 128), 128, 0, c->st, qkv, T, H, d, scale_mul);
    VS_LAUNCHED(c, k_qk_norm);
}

/* ---- attention over pages ---------------------------------------------------------------------- */

/* The arena's pages are FP32 (kv32) or BF16 (kv16): exactly one of the two is non-NULL, the same
 * for a whole launch, so the branch costs nothing. */
__device__ __forceinline__ float kv_load(const float *kv32, const __nv_bfloat16 *kv16, size_t at)
{
    return kv32 ? kv32[at] : __bfloat162float(kv16[at]);
}

__device__ __forceinline__ void kv_store(float *kv32, __nv_bfloat16 *kv16, size_t at, float v)
{
    if (kv32)
        kv32[at] = v;
    else
        kv16[at] = __float2bfloat16_rn(v);
}

/* The new tokens' K and V (from qkv) into slots n_tokens.. of each head's pages, for each row that
 * stores, rounded to nearest even on BF16 pages. One thread per element: consecutive threads
 * write consecutive elements of one head's slot. */
__global__ void k_kv_write(float *kv32, __nv_bfloat16 *kv16, const float *qkv,
                           const int32_t *tok_row, const int32_t *rows, const int32_t *kvm,
                           const int32_t *pages, int T, int H, int d, int PT)
{
    int C = H * d;
    GRID_STRIDE(i, (size_t)T * C)
    {
        int t = (int)(i / (size_t)C), k = (int)(i % (size_t)C), h = k / d, j = k % d;
        int r = tok_row[t];
        const int32_t *m = kvm + 3 * ((size_t)r * H + h);
        if (!m[2])
            continue;
        int slot = m[0] + (t - rows[2 * r]);
        size_t page = (size_t)pages[m[1] + slot / PT];
        size_t at = (page * 2 * PT + slot % PT) * (size_t)d + j; /* K; V is PT slots further */
        const float *src = qkv + (size_t)t * 3 * C;
        kv_store(kv32, kv16, at, src[C + k]);
        kv_store(kv32, kv16, at + (size_t)PT * d, src[2 * C + k]);
    }
}

#define ATT_QT 16 /* queries per block, at most */
#define ATT_THREADS 256

/* Shared floats of one k_attention block: q [qt][d], the tile's K [PT][d+1] (padded: the score
 * loop reads K rows across threads) and V [PT][d], scores [qt][PT], outputs [qt][d]. */
static size_t att_smem_floats(int qt, int d, int PT)
{
    return (size_t)qt * d + (size_t)PT * (d + 1) + (size_t)PT * d + (size_t)qt * PT + (size_t)qt * d;
}

/* Block = (row, tile of up to qt queries, head). The head's keys are walked in tiles of PT: first
 * its cached pages, whose id is read once per tile and whose K and V (PT contiguous slots × d each)
 * are loaded coalesced into shared memory (widened to FP32 from BF16 pages) and reused by every
 * query of the tile; then the row's
 * new keys from qkv, PT at a time. FP32 online softmax per query: with m the running max, l the
 * running sum and o the unnormalised output, each tile's scores s (dot in key order over d, then
 * × scale, as the CPU backend) give m' = max(m, max s), f = e^(m − m'), l = l·f + Σ e^(s − m'),
 * o = o·f + Σ e^(s − m')·v; out = o / l. Shared memory does not grow with the keys. */
__global__ void __launch_bounds__(ATT_THREADS)
    k_attention(float *out, __nv_bfloat16 *out16, const float *qkv, const float *kv32,
                const __nv_bfloat16 *kv16,
                const int32_t *rows, const int32_t *kvm, const int32_t *pages, int H, int d, int PT,
                float scale, int qt, int tiles_per_row)
{
    VS_DYNAMIC_SHARED(float, att_sm);
    __shared__ float s_max[ATT_QT], s_sum[ATT_QT], s_fix[ATT_QT];
    int r = blockIdx.x / tiles_per_row, tile = blockIdx.x % tiles_per_row, h = blockIdx.y;
    int tok_start = rows[2 * r], n_new = rows[2 * r + 1];
    int q0 = tile * qt;
    if (q0 >= n_new)
        return; /* the whole block: this row has fewer tiles */
    int nq = min(qt, n_new - q0), C = H * d, dk = d + 1, tid = (int)threadIdx.x;
    const int32_t *m = kvm + 3 * ((size_t)r * H + h);
    const int32_t *pg = pages + m[1];
    int nc = m[0], cached_tiles = (nc + PT - 1) / PT, tiles = cached_tiles + (n_new + PT - 1) / PT;
    float *qs = att_sm, *ks = qs + (size_t)qt * d, *vs = ks + (size_t)PT * dk;
    float *ps = vs + (size_t)PT * d, *os = ps + (size_t)qt * PT;
    const float *qkv_h = qkv + (size_t)h * d;

    for (int i = threadIdx.x; i < nq * d; i += blockDim.x) {
        int qi = i / d, j = i % d;
        qs[i] = qkv_h[(size_t)(tok_start + q0 + qi) * 3 * C + j];
        os[i] = 0.0f;
    }
    if (tid < nq) {
        s_max[tid] = -INFINITY;
        s_sum[tid] = 0.0f;
    }
    for (int t = 0; t < tiles; t++) {
        int nt;
        if (t < cached_tiles) { /* one page of the head: K [PT][d] then V [PT][d] */
            nt = min(PT, nc - t * PT);
            size_t kp = (size_t)pg[t] * 2 * PT * d, vp = kp + (size_t)PT * d;
            for (int i = threadIdx.x; i < nt * d; i += blockDim.x) {
                ks[(i / d) * dk + i % d] = kv_load(kv32, kv16, kp + (size_t)i);
                vs[i] = kv_load(kv32, kv16, vp + (size_t)i);
            }
        } else { /* new keys of this scale, from qkv */
            int k0 = (t - cached_tiles) * PT;
            nt = min(PT, n_new - k0);
            for (int i = threadIdx.x; i < nt * d; i += blockDim.x) {
                int kk = i / d, j = i % d;
                const float *src = qkv_h + (size_t)(tok_start + k0 + kk) * 3 * C + j;
                ks[kk * dk + j] = src[C];
                vs[i] = src[2 * C];
            }
        }
        __syncthreads();
        for (int i = threadIdx.x; i < nq * nt; i += blockDim.x) {
            int qi = i / nt, kk = i % nt;
            const float *q = qs + (size_t)qi * d, *k = ks + (size_t)kk * dk;
            float acc = 0.0f;
            for (int j = 0; j < d; j++)
                acc += q[j] * k[j];
            ps[qi * PT + kk] = acc * scale;
        }
        __syncthreads();
        if (tid < nq) {
            float *p = ps + tid * PT, mx = s_max[tid], sum = 0.0f;
            for (int kk = 0; kk < nt; kk++)
                mx = fmaxf(mx, p[kk]);
            for (int kk = 0; kk < nt; kk++) {
                p[kk] = expf(p[kk] - mx);
                sum += p[kk];
            }
            float f = expf(s_max[tid] - mx); /* 0 at the first tile (m = −∞) */
            s_fix[tid] = f;
            s_sum[tid] = s_sum[tid] * f + sum;
            s_max[tid] = mx;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < nq * d; i += blockDim.x) {
            int qi = i / d, j = i % d;
            const float *p = ps + qi * PT;
            float acc = os[i] * s_fix[qi];
            for (int kk = 0; kk < nt; kk++)
                acc += p[kk] * vs[kk * d + j];
            os[i] = acc;
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < nq * d; i += blockDim.x) {
        int qi = i / d, j = i % d;
        size_t at = (size_t)(tok_start + q0 + qi) * C + (size_t)h * d + j;
        if (out16) /* BF16 activations (gemm_inputs), rounded to nearest even */
            out16[at] = __float2bfloat16_rn(os[i] / s_sum[qi]);
        else
            out[at] = os[i] / s_sum[qi];
    }
}

/* ---- attention on tensor cores (BF16 mode) ----------------------------------------------------- */

#define TC_WARPS 4
#define TC_Q (16 * TC_WARPS) /* queries per block: 16 per warp, one wmma tile of rows */
#define TC_KB 64             /* keys per block of the walk: four 16-key tiles */
#define TC_SP (TC_KB + 4)    /* floats per row of a warp's score tile (ldm: a multiple of 4) */
#define TC_PP (TC_KB + 8)    /* BF16 per row of a warp's probability tile (a multiple of 8) */

/* 8 BF16 values moved as one 16-byte access */
struct alignas(16) bf16x8 {
    unsigned long long lo, hi;
};

/* Byte offsets of k_attention_tc's shared arrays, each 128-byte aligned (wmma needs 32): Q, K and
 * V as BF16 [TC_Q or TC_KB][d + 8] (the padding shifts each row 16 bytes across the banks, so the
 * rows of a tile load do not conflict), per warp the FP32 scores [16][TC_SP] and BF16
 * probabilities [16][TC_PP], the FP32 outputs [TC_Q][d + 1] (read by row, the 1 likewise), the rows'
 * sums [TC_Q] and the block's page ids [TC_KB + 1]. The host sizes the launch with it, the kernel
 * finds its arrays with it. */
typedef struct {
    size_t q, k, v, s, p, o, l, pid, bytes;
} tc_layout;

__host__ __device__ static tc_layout tc_layout_of(int d)
{
    tc_layout L;
    size_t at = 0, dp = (size_t)d + 8;
#define TC_TAKE(field, n)                                                                          \
    L.field = at;                                                                                  \
    at = (at + (n) + 127) / 128 * 128
    TC_TAKE(q, (size_t)TC_Q * dp * 2);
    TC_TAKE(k, (size_t)TC_KB * dp * 2);
    TC_TAKE(v, (size_t)TC_KB * dp * 2);
    TC_TAKE(s, (size_t)TC_WARPS * 16 * TC_SP * 4);
    TC_TAKE(p, (size_t)TC_WARPS * 16 * TC_PP * 2);
    TC_TAKE(o, (size_t)TC_Q * (d + 1) * 4);
    TC_TAKE(l, (size_t)TC_Q * 4);
    TC_TAKE(pid, (size_t)(TC_KB + 1) * 4);
#undef TC_TAKE
    L.bytes = at;
    return L;
}

/* Flash attention on tensor cores for BF16 mode (head_dim a multiple of 16): the walk of
 * k_attention (cached pages, then the scale's new keys from qkv; FP32 online softmax with the same
 * m, l and rescaling) with BF16 operands and FP32 accumulation.
 * Block = (row, tile of TC_Q queries, head), TC_WARPS warps of 16 queries each. The queries are
 * rounded to BF16 into shared memory once. Keys go in blocks of TC_KB: the page ids a block spans
 * are read once into shared memory, then K and V are staged coalesced, 16 bytes a thread, as the
 * pages' BF16 (a page's slots are contiguous), or the new keys from qkv rounded to BF16 (the values
 * k_kv_write puts in the pages). Each warp computes S = Q·Kᵀ for its 16 queries by wmma (FP32
 * accumulators) into its score tile; two lanes per query row then apply the scale in FP32, update
 * m and l (kept in their registers: the row never changes lane) and write P = e^(s − m) as BF16,
 * padding keys scored −∞ and padding V rows zero, so a partial block adds nothing; l sums the
 * rounded P, so out is an exact convex combination of the V rows P weighs. O += P·V by wmma,
 * 64 columns at a time, each tile stored to the (now free) score tile and added into O by the same
 * two lanes, which rescale by e^(m_old − m) first. O is FP32 in shared memory, not accumulator
 * fragments, because CUDA does not say which row a fragment's element belongs to: the per-row
 * rescale and the final division by l need rows. Padding queries (beyond the row's) are zero
 * rows: finite scores, never written out. */
__global__ void __launch_bounds__(TC_WARPS * 32)
    k_attention_tc(float *out, __nv_bfloat16 *out16, const float *qkv, const __nv_bfloat16 *kv16,
                   const int32_t *rows,
                   const int32_t *kvm, const int32_t *pages, int H, int d, int PT, float scale,
                   int tiles_per_row)
{
    using namespace nvcuda;
    VS_DYNAMIC_SHARED(unsigned char, tc_sm);
    int r = blockIdx.x / tiles_per_row, tile = blockIdx.x % tiles_per_row, h = blockIdx.y;
    int tok_start = rows[2 * r], n_new = rows[2 * r + 1], q0 = tile * TC_Q;
    if (q0 >= n_new)
        return; /* the whole block: this row has fewer tiles */
    tc_layout L = tc_layout_of(d);
    int nq = min(TC_Q, n_new - q0), C = H * d, dp = d + 8, dq = d + 1;
    int tid = (int)threadIdx.x, warp = tid / 32, lane = tid % 32;
    __nv_bfloat16 *qs = (__nv_bfloat16 *)(tc_sm + L.q), *ks = (__nv_bfloat16 *)(tc_sm + L.k);
    __nv_bfloat16 *vs = (__nv_bfloat16 *)(tc_sm + L.v);
    float *sw = (float *)(tc_sm + L.s) + (size_t)warp * 16 * TC_SP;
    __nv_bfloat16 *pw = (__nv_bfloat16 *)(tc_sm + L.p) + (size_t)warp * 16 * TC_PP;
    float *os = (float *)(tc_sm + L.o), *ls = (float *)(tc_sm + L.l);
    int32_t *pid = (int32_t *)(tc_sm + L.pid);
    const int32_t *m = kvm + 3 * ((size_t)r * H + h);
    const int32_t *pg = pages + m[1];
    int nc = m[0], cached_blocks = (nc + TC_KB - 1) / TC_KB;
    int blocks = cached_blocks + (n_new + TC_KB - 1) / TC_KB;
    const float *qkv_h = qkv + (size_t)h * d;
    bool active = warp * 16 < nq; /* a warp with no query only helps stage */
    int row = lane % 16, half = lane / 16; /* the query row this lane serves, and which half */
    float m_run = -INFINITY, l_run = 0.0f;

    for (int i = tid; i < TC_Q * d; i += blockDim.x) {
        int qi = i / d, j = i % d;
        qs[qi * dp + j] = __float2bfloat16_rn(
            qi < nq ? qkv_h[(size_t)(tok_start + q0 + qi) * 3 * C + j] : 0.0f);
        os[qi * dq + j] = 0.0f;
    }
    for (int t = 0; t < blocks; t++) {
        int nk;
        if (t < cached_blocks) { /* K [PT][d] then V [PT][d] of each page the block spans */
            int k0 = t * TC_KB, first = k0 / PT;
            nk = min(TC_KB, nc - k0);
            for (int i = tid; i <= (k0 + nk - 1) / PT - first; i += blockDim.x)
                pid[i] = pg[first + i];
            __syncthreads();
            for (int u = tid; u < TC_KB * d / 8; u += blockDim.x) {
                int kk = u * 8 / d, j = u * 8 % d;
                bf16x8 kx = {0, 0}, vx = {0, 0};
                if (kk < nk) {
                    int slot = k0 + kk;
                    size_t at = ((size_t)pid[slot / PT - first] * 2 * PT + slot % PT) * d + j;
                    kx = *(const bf16x8 *)(kv16 + at);
                    vx = *(const bf16x8 *)(kv16 + at + (size_t)PT * d);
                }
                *(bf16x8 *)(ks + kk * dp + j) = kx;
                *(bf16x8 *)(vs + kk * dp + j) = vx;
            }
        } else { /* new keys of this scale, from qkv */
            int k0 = (t - cached_blocks) * TC_KB;
            nk = min(TC_KB, n_new - k0);
            for (int i = tid; i < TC_KB * d; i += blockDim.x) {
                int kk = i / d, j = i % d;
                const float *src = qkv_h + (size_t)(tok_start + k0 + kk) * 3 * C + j;
                ks[kk * dp + j] = __float2bfloat16_rn(kk < nk ? src[C] : 0.0f);
                vs[kk * dp + j] = __float2bfloat16_rn(kk < nk ? src[2 * C] : 0.0f);
            }
        }
        __syncthreads();
        if (active) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fk;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fv;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            for (int n0 = 0; n0 < TC_KB; n0 += 16) { /* S[:, n0..n0+16) = Q·K[n0..n0+16)ᵀ */
                wmma::fill_fragment(acc, 0.0f);
                for (int k0 = 0; k0 < d; k0 += 16) {
                    wmma::load_matrix_sync(fa, qs + warp * 16 * dp + k0, (unsigned)dp);
                    wmma::load_matrix_sync(fk, ks + n0 * dp + k0, (unsigned)dp);
                    wmma::mma_sync(acc, fa, fk, acc);
                }
                wmma::store_matrix_sync(sw + n0, acc, TC_SP, wmma::mem_row_major);
            }
            __syncwarp();
            /* the online softmax of row `row`: this lane's 32 keys, combined with the other half's */
            float *srow = sw + row * TC_SP + half * 32;
            float mx = -INFINITY;
            for (int kk = 0; kk < 32; kk++) {
                float sc = half * 32 + kk < nk ? srow[kk] * scale : -INFINITY;
                srow[kk] = sc;
                mx = fmaxf(mx, sc);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
            float m_new = fmaxf(m_run, mx), sum = 0.0f;
            __nv_bfloat16 *prow = pw + row * TC_PP + half * 32;
            for (int kk = 0; kk < 32; kk++) {
                __nv_bfloat16 pb = __float2bfloat16_rn(expf(srow[kk] - m_new));
                prow[kk] = pb;
                sum += __bfloat162float(pb);
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 16);
            float f = expf(m_run - m_new); /* 0 at the first block (m = −∞) */
            l_run = l_run * f + sum;
            m_run = m_new;
            __syncwarp();
            for (int c0 = 0; c0 < d; c0 += 64) { /* O[:, c0..c0+64) = O·f + P·V[:, c0..c0+64) */
                int nc0 = min(64, d - c0);
                for (int n0 = 0; n0 < nc0; n0 += 16) {
                    wmma::fill_fragment(acc, 0.0f);
                    for (int k0 = 0; k0 < TC_KB; k0 += 16) {
                        wmma::load_matrix_sync(fa, pw + k0, TC_PP);
                        wmma::load_matrix_sync(fv, vs + k0 * dp + c0 + n0, (unsigned)dp);
                        wmma::mma_sync(acc, fa, fv, acc);
                    }
                    wmma::store_matrix_sync(sw + n0, acc, TC_SP, wmma::mem_row_major);
                }
                __syncwarp();
                float *orow = os + (warp * 16 + row) * dq + c0;
                for (int j = half * 32; j < min(nc0, half * 32 + 32); j++)
                    orow[j] = orow[j] * f + sw[row * TC_SP + j];
                __syncwarp();
            }
        }
        __syncthreads(); /* K, V and the page ids are restaged next */
    }
    if (active && half == 0)
        ls[warp * 16 + row] = l_run;
    __syncthreads();
    for (int i = tid; i < nq * d; i += blockDim.x) {
        int qi = i / d, j = i % d;
        size_t at = (size_t)(tok_start + q0 + qi) * C + (size_t)h * d + j;
        if (out16) /* BF16 activations (gemm_inputs), rounded to nearest even */
            out16[at] = __float2bfloat16_rn(os[qi * dq + j] / ls[qi]);
        else
            out[at] = os[qi * dq + j] / ls[qi];
    }
}

static void cuda_attention(vs_rt_backend *be, float *out, const float *qkv, const vs_rt_batch *b,
                           int layer, int H, int d, float scale)
{
    cuda_backend *c = cu(be);
    const cuda_batch *cb = batch_of(c, b);
    if (!cb || b->n_tok <= 0 || b->n_rows <= 0)
        return;
    if (layer < 0 || layer >= cb->depth) {
        VS_FAIL(c, VS_ERR_INTERNAL, "attention at layer %d of a batch of depth %d", layer,
                cb->depth);
        return;
    }
    int C = H * d, PT = b->page_tokens;
    int out16 = act_of(c, out, (size_t)b->n_tok * C, "attention's out");
    const int32_t *kvm = NULL, *pages = NULL;
    if (out16 < 0 || upload_layer(c, b, layer, H, &kvm, &pages) != 0)
        return;
    size_t n = (size_t)b->n_tok * C;
    float *kv32 = c->fp32 ? b->kv_base : NULL;
    __nv_bfloat16 *kv16 = c->fp32 ? NULL : (__nv_bfloat16 *)(void *)b->kv_base;
    VS_LAUNCH(k_kv_write, grid_for(n, 256), 256, 0, c->st, kv32, kv16, qkv, cb->tok_row, cb->rows,
              kvm, pages, b->n_tok, H, d, PT);
    VS_LAUNCHED(c, k_kv_write);
    if (cb->max_new <= 0)
        return;
    if (!c->fp32 && d % 16 == 0 && (uintptr_t)kv16 % 16 == 0) { /* 16-byte page loads */
        size_t tc_smem = tc_layout_of(d).bytes;
        if (tc_smem + 1024 <= (size_t)c->smem_optin) {
            if (tc_smem > 48 * 1024)
                VS_CUDA(c, cudaFuncSetAttribute(k_attention_tc,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                (int)tc_smem));
            int tiles = (cb->max_new + TC_Q - 1) / TC_Q;
            dim3 grid((unsigned)(cb->n_rows * tiles), (unsigned)H);
            VS_LAUNCH(k_attention_tc, grid, TC_WARPS * 32, tc_smem, c->st, out,
                      out16 ? (__nv_bfloat16 *)(void *)out : NULL, qkv, kv16, cb->rows, kvm, pages,
                      H, d, PT, scale, tiles);
            VS_LAUNCHED(c, k_attention_tc);
            return;
        }
    }
    int qt = ATT_QT;
    size_t smem = 0;
    for (; qt >= 1; qt /= 2) {
        smem = att_smem_floats(qt, d, PT) * sizeof(float);
        if (smem + 1024 <= (size_t)c->smem_optin)
            break;
    }
    if (qt < 1) {
        VS_FAIL(c, VS_ERR_UNSUPPORTED,
                "attention of head_dim %d over pages of %d tokens needs %zu bytes of shared memory "
                "per block but the device allows %d",
                d, PT, att_smem_floats(1, d, PT) * sizeof(float), c->smem_optin);
        return;
    }
    if (smem > 16 * 1024)
        VS_CUDA(c, cudaFuncSetAttribute(k_attention, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
    int tiles = (cb->max_new + qt - 1) / qt;
    dim3 grid((unsigned)(cb->n_rows * tiles), (unsigned)H);
    VS_LAUNCH(k_attention, grid, ATT_THREADS, smem, c->st, out,
              out16 ? (__nv_bfloat16 *)(void *)out : NULL, qkv, kv32, kv16, cb->rows, kvm, pages, H,
              d, PT, scale, qt, tiles);
    VS_LAUNCHED(c, k_attention);
}

/* ---- guidance and sampling --------------------------------------------------------------------- */

#define SAMPLE_THREADS 512

/* Sort key: ascending key order = ascending (float key of the logit, index), the order of the CPU's
 * stable radix sort (which also puts −0 before +0). */
__device__ __forceinline__ unsigned long long sort_key(float v, int i)
{
    unsigned u = __float_as_uint(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (unsigned)i;
}

__device__ __forceinline__ int key_index(unsigned long long k)
{
    return (int)(unsigned)(k & 0xffffffffu);
}

/* Bitonic sort of a[0..P), P a power of two, ascending; the whole block takes part. */
__device__ void bitonic_sort(unsigned long long *a, int P)
{
    for (int k = 2; k <= P; k <<= 1)
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = threadIdx.x; i < P; i += blockDim.x) {
                int ixj = i ^ j;
                if (ixj > i) {
                    unsigned long long x = a[i], y = a[ixj];
                    bool up = (i & k) == 0;
                    if ((x > y) == up) {
                        a[i] = y;
                        a[ixj] = x;
                    }
                }
            }
            __syncthreads();
        }
}

/* In-place inclusive scan of a[0..n) in double: prefix sums, or suffix sums when reverse (then
 * a[i] = Σ_{j ≥ i}). Each thread scans one contiguous chunk. */
__device__ void block_scan(double *a, int n, bool reverse)
{
    __shared__ double part[SAMPLE_THREADS];
    int bd = blockDim.x, tid = threadIdx.x;
    int chunk = (n + bd - 1) / bd;
    int b = tid * chunk, e = min(b + chunk, n);
    double s = 0;
    for (int i = b; i < e; i++)
        s += a[reverse ? n - 1 - i : i];
    part[tid] = s;
    __syncthreads();
    if (tid == 0) {
        double run = 0;
        for (int k = 0; k < bd; k++) {
            double t = part[k];
            part[k] = run;
            run += t;
        }
    }
    __syncthreads();
    double run = part[tid];
    for (int i = b; i < e; i++) {
        int p = reverse ? n - 1 - i : i;
        run += a[p];
        a[p] = run;
    }
    __syncthreads();
}

/* First index of the largest logit (the CPU's greedy rule). */
__device__ int block_argmax(const float *l, int V)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    float bv = -INFINITY;
    int bi = V; /* none yet */
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float x = l[v];
        if (x > bv || (x == bv && v < bi)) {
            bv = x;
            bi = v;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) {
        sv[wid] = bv;
        si[wid] = bi;
    }
    __syncthreads();
    float rv = -INFINITY;
    int ri = V;
    for (int w = 0; w < nw; w++)
        if (sv[w] > rv || (sv[w] == rv && si[w] < ri)) {
            rv = sv[w];
            ri = si[w];
        }
    return ri < V ? ri : 0;
}

/* expf rounded correctly (through double), as glibc's expf is to within 0.502 ulp: the CPU and
 * the device then weigh candidates with the same floats, where CUDA's expf (2 ulp) would move
 * the cumulative sums, and so a draw, a little. */
__device__ __forceinline__ float expf_cr(float x) { return (float)exp((double)x); }

/* The rule of runtime/sample.c for one token's guided logits l[0..V), with the whole block.
 * keys: P = next power of two ≥ V entries; w: V doubles. Returns the token to every thread.
 *  - top_k: the k-th largest value from a full sort; candidates are the logits ≥ it (ties kept).
 *  - top_p (and more than one candidate): candidates in ascending (logit, index) order; the
 *    leading ones whose cumulative weight is ≤ (1 − top_p) · total are dropped (never the last).
 *  - the draw walks the candidates from the last one backwards (index order without top_p,
 *    sorted order with it), summing the weights until the sum exceeds u · total.
 * Weights are expf(l − max) in float, sums in double, as on the CPU; the sums here are scans in
 * another order, so a draw can differ only when u · total lies within double rounding (~1e-16
 * relative) of a boundary. */
__device__ int sample_row(const float *l, int V, int top_k, float top_p, float u,
                          unsigned long long *keys, double *w, int P)
{
    __shared__ int s_pos;
    int tid = threadIdx.x, bd = blockDim.x;
    if (top_k == 1)
        return block_argmax(l, V);
    bool has_k = top_k > 0 && top_k < V;
    bool need_sort = has_k || top_p > 0.0f;
    float thr = -INFINITY;
    int p0 = 0; /* sorted position of the first candidate */
    if (need_sort) {
        for (int i = tid; i < P; i += bd)
            keys[i] = i < V ? sort_key(l[i], i) : ~0ull;
        __syncthreads();
        bitonic_sort(keys, P);
        if (has_k) {
            thr = l[key_index(keys[V - top_k])];
            if (tid == 0)
                s_pos = V - top_k;
            __syncthreads();
            for (int i = tid; i < V; i += bd) {
                if (l[key_index(keys[i])] >= thr && (i == 0 || !(l[key_index(keys[i - 1])] >= thr)))
                    s_pos = i;
            }
            __syncthreads();
            p0 = s_pos;
            __syncthreads();
        }
    }
    int n = V - p0;
    if (top_p > 0.0f && n > 1) {
        float mx = l[key_index(keys[V - 1])];
        for (int i = p0 + tid; i < V; i += bd)
            w[i] = (double)expf_cr(l[key_index(keys[i])] - mx);
        __syncthreads();
        block_scan(w + p0, n, false);
        double limit = (1.0 - (double)top_p) * w[V - 1];
        int cnt = 0;
        for (int i = p0 + tid; i < V - 1; i += bd)
            cnt += w[i] <= limit;
        int drop = block_sum(cnt);
        int p1 = p0 + drop;
        for (int i = p1 + tid; i < V; i += bd)
            w[i] = (double)expf_cr(l[key_index(keys[i])] - mx);
        __syncthreads();
        block_scan(w + p1, V - p1, true);
        double target = (double)u * w[p1];
        if (tid == 0)
            s_pos = -1;
        __syncthreads();
        for (int i = p1 + tid; i < V; i += bd)
            if (w[i] > target && (i == V - 1 || w[i + 1] <= target))
                s_pos = i;
        __syncthreads();
        int pos = s_pos;
        __syncthreads();
        return key_index(keys[pos >= 0 ? pos : V - 1]);
    }
    /* candidates l[v] ≥ thr in index order */
    float m = -INFINITY;
    for (int v = tid; v < V; v += bd)
        if (l[v] >= thr)
            m = fmaxf(m, l[v]);
    float mx = block_max(m);
    for (int v = tid; v < V; v += bd)
        w[v] = l[v] >= thr ? (double)expf_cr(l[v] - mx) : 0.0;
    __syncthreads();
    block_scan(w, V, true);
    double target = (double)u * w[0];
    if (tid == 0)
        s_pos = -1;
    __syncthreads();
    for (int v = tid; v < V; v += bd)
        if (w[v] > target && (v == V - 1 || w[v + 1] <= target))
            s_pos = v;
    __syncthreads();
    int pos = s_pos;
    __syncthreads();
    if (pos >= 0)
        return pos;
    int last = -1; /* the CPU's fallback: the first candidate of its walk */
    for (int v = tid; v < V; v += bd)
        if (l[v] >= thr)
            last = v;
    last = block_max_int(last);
    return last >= 0 ? last : 0;
}

/* Blocks stride over the step's sampled tokens. Guidance is mixed in place with the CPU's exact
 * rounding (no fused multiply-add), so both backends sample from bit-identical logits. */
__global__ void __launch_bounds__(SAMPLE_THREADS)
    k_cfg_sample(float *logits, int V, const cuda_sreq *reqs, int n_req, int total, int32_t *out,
                 unsigned char *gbuf, size_t per_block, int P, int use_shared)
{
    VS_DYNAMIC_SHARED(unsigned long long, smp_sm);
    unsigned char *buf = use_shared ? (unsigned char *)smp_sm : gbuf + per_block * blockIdx.x;
    unsigned long long *keys = (unsigned long long *)buf;
    double *w = (double *)(buf + (size_t)P * sizeof(unsigned long long));
    for (int u = blockIdx.x; u < total; u += gridDim.x) {
        int lo = 0, hi = n_req - 1; /* the request holding slot u: last with first <= u */
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (reqs[mid].first <= u)
                lo = mid;
            else
                hi = mid - 1;
        }
        const cuda_sreq q = reqs[lo];
        int i = u - q.first;
        float *lc = logits + (size_t)(q.cond_tok + i) * V;
        const float *lu = logits + (size_t)(q.uncond_tok + i) * V;
        float t = q.guidance;
        for (int v = threadIdx.x; v < V; v += blockDim.x)
            lc[v] = __fsub_rn(__fmul_rn(1.0f + t, lc[v]), __fmul_rn(t, lu[v]));
        __syncthreads();
        float uni = vs_philox_uniform(q.seed, q.scale, i);
        int tok = sample_row(lc, V, q.top_k, q.top_p, uni, keys, w, P);
        if (threadIdx.x == 0)
            out[u] = tok;
        __syncthreads();
    }
}

/* How one cfg_sample call runs: rows padded to P (a power of two ≥ V) for the sort; each block's
 * sort keys and weights (per_block bytes; 0 when every request is greedy) in shared memory when
 * they fit, else in the S_SORT scratch, one slice per block of the grid. */
typedef struct {
    int P, use_shared;
    size_t per_block;
    unsigned grid;
} sample_plan;

static sample_plan plan_sample(cuda_backend *c, int V, size_t total, int need_buf)
{
    sample_plan p;
    p.P = 1;
    while (p.P < V)
        p.P <<= 1;
    p.per_block =
        need_buf ? (size_t)p.P * sizeof(unsigned long long) + (size_t)V * sizeof(double) : 0;
    cudaFuncAttributes fa;
    memset(&fa, 0, sizeof fa);
    VS_CUDA(c, cudaFuncGetAttributes(&fa, k_cfg_sample));
    p.use_shared = p.per_block + fa.sharedSizeBytes + 1024 <= (size_t)c->smem_optin;
    size_t g = p.use_shared ? (size_t)1 << 20 : (size_t)c->n_sm * 2;
    p.grid = (unsigned)(total < g ? total : g);
    return p;
}

static size_t sort_bytes(const sample_plan *p) { return p->use_shared ? 0 : p->per_block * p->grid; }

/* S_SREQ: the requests (256-byte aligned), then the sampled tokens */
static size_t sreq_req_bytes(size_t n) { return (n * sizeof(cuda_sreq) + 255) & ~(size_t)255; }
static size_t sreq_bytes(size_t n, size_t total)
{
    return sreq_req_bytes(n) + total * sizeof(int32_t);
}

static void cuda_cfg_sample(vs_rt_backend *be, float *logits, int V, const vs_rt_sample_req *reqs,
                            int n)
{
    cuda_backend *c = cu(be);
    if (n <= 0 || V <= 0)
        return;
    size_t total = 0;
    int need_buf = 0;
    if (grow_host((void **)&c->host_sreq, &c->host_sreq_cap, (size_t)n, sizeof(cuda_sreq)) != 0) {
        VS_FAIL(c, VS_ERR_NOMEM, "out of host memory for %d sampling requests", n);
        return;
    }
    for (int r = 0; r < n; r++) {
        const vs_rt_sample_req *q = &reqs[r];
        cuda_sreq *s = &c->host_sreq[r];
        s->cond_tok = q->cond_tok;
        s->uncond_tok = q->uncond_tok;
        s->n = q->n;
        s->first = (int)total;
        s->guidance = q->guidance;
        s->top_p = q->top_p;
        s->top_k = q->top_k;
        s->scale = q->scale;
        s->seed = (unsigned long long)q->seed;
        total += (size_t)(q->n > 0 ? q->n : 0);
        if (q->top_k != 1 && q->n > 0)
            need_buf = 1;
    }
    if (total == 0)
        return;
    if (total > (size_t)INT_MAX) {
        VS_FAIL(c, VS_ERR_INVALID, "%zu tokens to sample in one step", total);
        return;
    }
    if (grow_host((void **)&c->host_i32, &c->host_i32_cap, total, sizeof(int32_t)) != 0) {
        VS_FAIL(c, VS_ERR_NOMEM, "out of host memory for %zu sampled tokens", total);
        return;
    }
    size_t req_bytes = sreq_req_bytes((size_t)n);
    unsigned char *d = (unsigned char *)scratch(c, S_SREQ, sreq_bytes((size_t)n, total));
    if (!d)
        return;
    cuda_sreq *d_req = (cuda_sreq *)d;
    int32_t *d_out = (int32_t *)(d + req_bytes);
    h2d(c, d_req, c->host_sreq, (size_t)n * sizeof(cuda_sreq));

    sample_plan sp = plan_sample(c, V, total, need_buf);
    int P = sp.P, use_shared = sp.use_shared;
    size_t per_block = sp.per_block;
    unsigned grid = sp.grid;
    unsigned char *gbuf = NULL;
    size_t smem = 0;
    if (use_shared) {
        smem = per_block;
        if (smem > 16 * 1024)
            VS_CUDA(c, cudaFuncSetAttribute(
                           k_cfg_sample, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    } else {
        gbuf = (unsigned char *)scratch(c, S_SORT, sort_bytes(&sp));
        if (!gbuf)
            return;
    }
    VS_LAUNCH(k_cfg_sample, grid, SAMPLE_THREADS, smem, c->st, logits, V, d_req, n, (int)total, d_out,
                                                        gbuf, per_block, P, use_shared);
    VS_LAUNCHED(c, k_cfg_sample);
    /* the tokens go to host memory now: the quantiser's index lists are built from them */
    c->ctr.d2h_bytes += total * sizeof(int32_t);
    VS_CUDA(c, cudaMemcpyAsync(c->host_i32, d_out, total * sizeof(int32_t), cudaMemcpyDeviceToHost,
                               c->st));
    drain(c);
    for (int r = 0; r < n; r++) {
        const vs_rt_sample_req *q = &reqs[r];
        for (int i = 0; i < q->n; i++)
            q->out[i] = c->sticky == VS_OK ? c->host_i32[c->host_sreq[r].first + i] : 0;
    }
}

/* ---- KV compression ---------------------------------------------------------------------------- */

#define CMP_THREADS 256
#define CMP_JOB_INTS 6 /* per job: the row's first token, head, plan, hist (cached tokens), page
                        * offset, needs scores */
#define PLAN_INTS ((int)(sizeof(vs_rt_kv_plan) / sizeof(int32_t)))

/* int32 entries of one layer's compaction tables: plans, jobs, then the jobs' page ids. */
static size_t compact_entries(size_t n_plans, size_t n_jobs, size_t n_pages)
{
    return n_plans * PLAN_INTS + n_jobs * CMP_JOB_INTS + n_pages;
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

/* Shared bytes of one k_kv_compact block for candidates up to n: sort keys [pow2(n)] (8 B),
 * scores and pooled scores [n], kept flags and output positions [n], qsum [d], one tile of PT
 * slots' K and V [2][PT][d]. */
static size_t compact_smem(int n, int d, int PT)
{
    return pow2_at_least((size_t)n) * 8 + 4 * (size_t)n * 4 + (size_t)d * 4 + 2 * (size_t)PT * d * 4;
}

__device__ __forceinline__ int plan_forced(const vs_rt_kv_plan *p, int j)
{
    for (int i = 0; i < p->n_ranges; i++)
        if (j >= p->lo[i] && j < p->hi[i])
            return 1;
    return 0;
}

__device__ __forceinline__ int plan_ranked(const vs_rt_kv_plan *p, int j)
{
    return j >= p->rank_from && j < p->rank_to && !plan_forced(p, j);
}

/* Block = one job: one (row, head) of the layer, per runtime/kv_compact.h's rule. Candidate c of
 * the head is its cached slot c (c < hist, in its pages) or new token c - hist of the row (qkv).
 *  1. When the plan ranks by score: qsum = Σ_w q_w (one thread per dimension, in the listed order),
 *     s_c = qsum · k_c (one thread per candidate, dimension order; __fmul_rn/__fadd_rn, so no
 *     contraction: the CPU backend's products and sums exactly), pooled over the ranked
 *     neighbours, then a bitonic sort of (−s, c) keys: ascending keys = descending score, ties to
 *     the lower index (zeros made +0 first, as the host compares −0 and +0 equal); the first
 *     `want` are kept.
 *  2. Output positions by a block scan of the kept flags; keep[i] = the i-th kept candidate.
 *  3. Compaction, a tile of PT output slots at a time from the first slot that changes: read the
 *     tile's sources into shared memory, barrier, write the slots, barrier. keep[i] >= i, so a
 *     later tile's sources (slots >= its first output slot) are never written by an earlier
 *     tile. BF16 pages widen on load and round to nearest even on store: cached values come back
 *     unchanged, new ones round as k_kv_write would. */
__global__ void __launch_bounds__(CMP_THREADS)
    k_kv_compact(float *kv32, __nv_bfloat16 *kv16, const float *qkv, const vs_rt_kv_plan *plans, const int32_t *jobs, const int32_t *pages, int H,
                 int d, int PT, int keys_cap)
{
    VS_DYNAMIC_SHARED(unsigned long long, cmp_sm);
    __shared__ int s_part[CMP_THREADS];
    __shared__ int s_first;
    const int32_t *jb = jobs + (size_t)CMP_JOB_INTS * blockIdx.x;
    int tok_start = jb[0], h = jb[1], hist = jb[3], needs = jb[5];
    const vs_rt_kv_plan *pl = plans + jb[2];
    const int32_t *pg = pages + jb[4];
    int n = pl->n, C = H * d, tid = (int)threadIdx.x, nt = (int)blockDim.x;
    unsigned long long *keys = cmp_sm;
    float *score = (float *)(keys + keys_cap), *pooled = score + n;
    int *flag = (int *)(pooled + n), *pos = flag + n;
    float *qsum = (float *)(pos + n), *tile = qsum + d;
    const float *qkv_h = qkv + (size_t)h * d;

    for (int j = tid; j < n; j += nt)
        flag[j] = plan_forced(pl, j) || (!needs && j >= pl->rank_from && j < pl->rank_to);
    __syncthreads(); /* the position scan below reads other threads' flags */
    if (needs) {
        for (int i = tid; i < d; i += nt) {
            float acc = 0.0f;
            for (int w = 0; w < pl->n_queries; w++)
                acc = __fadd_rn(acc, qkv_h[(size_t)(tok_start + pl->q[w]) * 3 * C + i]);
            qsum[i] = acc;
        }
        __syncthreads();
        for (int j = pl->rank_from + tid; j < pl->rank_to; j += nt) {
            float acc = 0.0f;
            if (j < hist) {
                size_t kp = (size_t)pg[j / PT] * 2 * PT * d + (size_t)(j % PT) * d;
                for (int i = 0; i < d; i++)
                    acc = __fadd_rn(acc, __fmul_rn(qsum[i], kv_load(kv32, kv16, kp + i)));
            } else {
                const float *k = qkv_h + (size_t)(tok_start + j - hist) * 3 * C + C;
                for (int i = 0; i < d; i++)
                    acc = __fadd_rn(acc, __fmul_rn(qsum[i], k[i]));
            }
            score[j] = acc;
        }
        __syncthreads();
        int rr = pl->pool_radius, m = pl->rank_to - pl->rank_from;
        int P = 1;
        while (P < m)
            P <<= 1;
        for (int i = tid; i < P; i += nt) {
            int j = pl->rank_from + i;
            unsigned long long key = ~0ull; /* padding and forced ones sort last */
            if (i < m && !plan_forced(pl, j)) {
                float v = score[j];
                for (int k = j - rr; k <= j + rr; k++)
                    if (k != j && plan_ranked(pl, k) && score[k] > v)
                        v = score[k];
                key = sort_key(-__fadd_rn(v, 0.0f), j);
            }
            keys[i] = key;
        }
        __syncthreads();
        bitonic_sort(keys, P);
        for (int i = tid; i < pl->want && i < P; i += nt)
            if (keys[i] != ~0ull)
                flag[key_index(keys[i])] = 1;
        __syncthreads();
    }
    /* exclusive positions of the kept candidates */
    int chunk = (n + nt - 1) / nt, b0 = min(n, tid * chunk), b1 = min(n, b0 + chunk), cnt = 0;
    for (int j = b0; j < b1; j++)
        cnt += flag[j];
    s_part[tid] = cnt;
    if (tid == 0)
        s_first = min(hist, pl->kept);
    __syncthreads();
    if (tid == 0)
        for (int k = 0, run = 0; k < nt; k++) {
            int t = s_part[k];
            s_part[k] = run;
            run += t;
        }
    __syncthreads();
    int *keep = (int *)score; /* the scores are spent */
    for (int j = b0, run = s_part[tid]; j < b1; j++) {
        pos[j] = run;
        run += flag[j];
    }
    __syncthreads();
    for (int j = tid; j < n; j += nt) {
        if (flag[j])
            keep[pos[j]] = j;
        else if (j < hist)
            atomicMin(&s_first, j); /* slots before the first dropped cached one stay */
    }
    __syncthreads();
    int kept = pl->kept, slot_e = 2 * d;
    for (int c0 = s_first / PT * PT; c0 < kept; c0 += PT) {
        int ns = min(PT, kept - c0);
        for (int e = tid; e < ns * slot_e; e += nt) {
            int i = e / slot_e, kv = (e / d) % 2, x = e % d, src = keep[c0 + i];
            float v;
            if (src < hist)
                v = kv_load(kv32, kv16,
                            ((size_t)pg[src / PT] * 2 * PT + (size_t)kv * PT + src % PT) * d + x);
            else
                v = qkv_h[(size_t)(tok_start + src - hist) * 3 * C + (size_t)(1 + kv) * C + x];
            tile[e] = v;
        }
        __syncthreads();
        for (int e = tid; e < ns * slot_e; e += nt) {
            int i = e / slot_e, kv = (e / d) % 2, x = e % d, slot = c0 + i;
            kv_store(kv32, kv16, ((size_t)pg[slot / PT] * 2 * PT + (size_t)kv * PT + slot % PT) * d + x,
                     tile[e]);
        }
        __syncthreads();
    }
}

/* Pages a job's head lists for the compaction: its max(hist, kept) slots. */
static int compact_pages(const vs_rt_kv_head *kh, const vs_rt_kv_plan *pl, int PT)
{
    int slots = kh->n_tokens > pl->kept ? kh->n_tokens : pl->kept;
    return (slots + PT - 1) / PT;
}

/* One layer's plans, jobs and page ids in ONE upload, then one launch for every job. */
static void cuda_kv_compact(vs_rt_backend *be, const float *qkv, const vs_rt_batch *b, int layer,
                            int H, int d, const vs_rt_kv_plan *plans, int n_plans,
                            const vs_rt_kv_job *jobs, int n_jobs)
{
    cuda_backend *c = cu(be);
    if (n_jobs <= 0)
        return;
    int PT = b->page_tokens, max_n = 0;
    size_t n_pages = 0;
    for (int i = 0; i < n_jobs; i++) {
        const vs_rt_kv_job *jb = &jobs[i];
        if (jb->row < 0 || jb->row >= b->n_rows || jb->head < 0 || jb->head >= H || jb->plan < 0 ||
            jb->plan >= n_plans) {
            VS_FAIL(c, VS_ERR_INTERNAL, "compaction job %d names row %d head %d plan %d (of %d, %d, %d)",
                    i, jb->row, jb->head, jb->plan, b->n_rows, H, n_plans);
            return;
        }
        const vs_rt_kv_plan *pl = &plans[jb->plan];
        const vs_rt_kv_head *kh = &b->rows[jb->row].kv[(size_t)layer * H + jb->head];
        int need = compact_pages(kh, pl, PT);
        if (pl->n != kh->n_tokens + b->rows[jb->row].n_new || need > kh->n_pages) {
            VS_FAIL(c, VS_ERR_INTERNAL,
                    "compaction of row %d layer %d head %d: a plan of %d candidates keeping %d, but "
                    "the head holds %d tokens, adds %d and lists %d pages of %d tokens",
                    jb->row, layer, jb->head, pl->n, pl->kept, kh->n_tokens, b->rows[jb->row].n_new,
                    kh->n_pages, PT);
            return;
        }
        n_pages += (size_t)need;
        max_n = pl->n > max_n ? pl->n : max_n;
    }
    size_t total = compact_entries((size_t)n_plans, (size_t)n_jobs, n_pages);
    if (grow_host((void **)&c->host_i32, &c->host_i32_cap, total, sizeof(int32_t)) != 0) {
        VS_FAIL(c, VS_ERR_NOMEM, "out of host memory for the compaction tables");
        return;
    }
    int32_t *h_plans = c->host_i32, *h_jobs = h_plans + (size_t)n_plans * PLAN_INTS;
    int32_t *h_pages = h_jobs + (size_t)n_jobs * CMP_JOB_INTS;
    memcpy(h_plans, plans, (size_t)n_plans * sizeof *plans);
    int32_t off = 0;
    for (int i = 0; i < n_jobs; i++) {
        const vs_rt_kv_plan *pl = &plans[jobs[i].plan];
        const vs_rt_kv_head *kh = &b->rows[jobs[i].row].kv[(size_t)layer * H + jobs[i].head];
        int need = compact_pages(kh, pl, PT);
        int32_t *m = h_jobs + (size_t)i * CMP_JOB_INTS;
        m[0] = b->rows[jobs[i].row].tok_start;
        m[1] = jobs[i].head;
        m[2] = jobs[i].plan;
        m[3] = kh->n_tokens;
        m[4] = off;
        m[5] = vs_rt_kv_plan_needs_scores(pl);
        memcpy(h_pages + off, kh->pages, (size_t)need * sizeof(int32_t));
        off += need;
    }
    int32_t *dv = (int32_t *)scratch(c, S_COMPACT, total * sizeof(int32_t));
    if (!dv)
        return;
    h2d(c, dv, c->host_i32, total * sizeof(int32_t));
    size_t smem = compact_smem(max_n, d, PT);
    if (smem + 1024 > (size_t)c->smem_optin) {
        VS_FAIL(c, VS_ERR_UNSUPPORTED,
                "KV compaction of %d candidates of head_dim %d needs %zu bytes of shared memory per "
                "block but the device allows %d",
                max_n, d, smem, c->smem_optin);
        return;
    }
    if (smem > 48 * 1024)
        VS_CUDA(c, cudaFuncSetAttribute(k_kv_compact, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
    float *kv32 = c->fp32 ? b->kv_base : NULL;
    __nv_bfloat16 *kv16 = c->fp32 ? NULL : (__nv_bfloat16 *)(void *)b->kv_base;
    VS_LAUNCH(k_kv_compact, (unsigned)n_jobs, CMP_THREADS, smem, c->st, kv32, kv16, qkv,
              (const vs_rt_kv_plan *)(const void *)dv, dv + (size_t)n_plans * PLAN_INTS,
              dv + (size_t)n_plans * PLAN_INTS + (size_t)n_jobs * CMP_JOB_INTS, H, d, PT,
              (int)pow2_at_least((size_t)max_n));
    VS_LAUNCHED(c, k_kv_compact);
}


/* ---- quantiser ---------------------------------------------------------------------------------- */

/* h [N][C][n] */
__global__ void k_embed_chw(float *h, const float *emb, const int32_t *idx, int N, int n, int C)
{
    GRID_STRIDE(o, (size_t)N * C * n)
    {
        size_t i = o % (size_t)n, ch = (o / (size_t)n) % (size_t)C, g = o / ((size_t)n * C);
        h[o] = emb[(size_t)idx[g * n + i] * C + ch];
    }
}

static void cuda_embed_chw(vs_rt_backend *be, float *h, const float *emb, const int32_t *idx_host,
                           int N, int n, int C)
{
    cuda_backend *c = cu(be);
    if (N <= 0 || n <= 0 || C <= 0)
        return;
    const int32_t *idx = upload_idx(c, idx_host, N * n);
    if (!idx)
        return;
    size_t total = (size_t)N * n * C;
    VS_LAUNCH(k_embed_chw, grid_for(total, 256), 256, 0, c->st, h, emb, idx, N, n, C);
    VS_LAUNCHED(c, k_embed_chw);
}

__device__ __forceinline__ float cubic1(float x, float A)
{
    return ((A + 2) * x - (A + 3)) * x * x + 1;
}
__device__ __forceinline__ float cubic2(float x, float A)
{
    return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
}

__device__ void cubic_coeffs(int out, int in, int o, int *i0, float w[4])
{
    const float A = -0.75f;
    float scale = (float)in / (float)out;
    float real = scale * ((float)o + 0.5f) - 0.5f;
    float fl = floorf(real);
    float t = real - fl;
    *i0 = (int)fl;
    w[0] = cubic2(t + 1.0f, A);
    w[1] = cubic1(t, A);
    w[2] = cubic1(1.0f - t, A);
    w[3] = cubic2(2.0f - t, A);
}

__device__ __forceinline__ int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

__global__ void k_bicubic(float *dst, const float *src, int planes, int hi, int wi, int ho, int wo)
{
    GRID_STRIDE(o, (size_t)planes * ho * wo)
    {
        int x = (int)(o % (size_t)wo), y = (int)((o / (size_t)wo) % (size_t)ho);
        size_t p = o / ((size_t)wo * ho);
        const float *s = src + p * hi * wi;
        int y0, x0;
        float wy[4], wx[4];
        cubic_coeffs(ho, hi, y, &y0, wy);
        cubic_coeffs(wo, wi, x, &x0, wx);
        float rows[4];
        for (int k = 0; k < 4; k++) {
            const float *sr = s + (size_t)clampi(y0 - 1 + k, 0, hi - 1) * wi;
            rows[k] = sr[clampi(x0 - 1, 0, wi - 1)] * wx[0] + sr[clampi(x0, 0, wi - 1)] * wx[1] +
                      sr[clampi(x0 + 1, 0, wi - 1)] * wx[2] + sr[clampi(x0 + 2, 0, wi - 1)] * wx[3];
        }
        dst[o] = rows[0] * wy[0] + rows[1] * wy[1] + rows[2] * wy[2] + rows[3] * wy[3];
    }
}

static void cuda_upsample_bicubic(vs_rt_backend *be, float *dst, const float *src, int planes,
                                  int hi, int wi, int ho, int wo)
{
    cuda_backend *c = cu(be);
    if (planes <= 0 || ho <= 0 || wo <= 0)
        return;
    if (hi == ho && wi == wo) {
        cuda_copy(be, dst, src, (size_t)planes * hi * wi * sizeof(float));
        return;
    }
    size_t n = (size_t)planes * ho * wo;
    VS_LAUNCH(k_bicubic, grid_for(n, 256), 256, 0, c->st, dst, src, planes, hi, wi, ho, wo);
    VS_LAUNCHED(c, k_bicubic);
}

__global__ void k_area(float *dst, const float *src, int planes, int hi, int wi, int ho, int wo)
{
    GRID_STRIDE(o, (size_t)planes * ho * wo)
    {
        int x = (int)(o % (size_t)wo), y = (int)((o / (size_t)wo) % (size_t)ho);
        size_t p = o / ((size_t)wo * ho);
        const float *s = src + p * hi * wi;
        int y0 = (y * hi) / ho, y1 = ((y + 1) * hi + ho - 1) / ho;
        int x0 = (x * wi) / wo, x1 = ((x + 1) * wi + wo - 1) / wo;
        float acc = 0;
        for (int yy = y0; yy < y1; yy++)
            for (int xx = x0; xx < x1; xx++)
                acc += s[(size_t)yy * wi + xx];
        dst[o] = acc / (float)((y1 - y0) * (x1 - x0));
    }
}

static void cuda_area_downsample(vs_rt_backend *be, float *dst, const float *src, int planes,
                                 int hi, int wi, int ho, int wo)
{
    cuda_backend *c = cu(be);
    if (planes <= 0 || ho <= 0 || wo <= 0)
        return;
    size_t n = (size_t)planes * ho * wo;
    VS_LAUNCH(k_area, grid_for(n, 256), 256, 0, c->st, dst, src, planes, hi, wi, ho, wo);
    VS_LAUNCHED(c, k_area);
}

__global__ void k_phi_add(float *f, const float *h, const float *ch, float r, size_t n)
{
    GRID_STRIDE(i, n)
    f[i] += h[i] * (1.0f - r) + ch[i] * r;
}

static void cuda_phi_add(vs_rt_backend *be, float *f, const float *h, const float *ch, float r,
                         size_t n)
{
    cuda_backend *c = cu(be);
    if (!n)
        return;
    VS_LAUNCH(k_phi_add, grid_for(n, 256), 256, 0, c->st, f, h, ch, r, n);
    VS_LAUNCHED(c, k_phi_add);
}

/* N matrices [rows][cols] → [cols][rows] */
__global__ void k_transpose(float *dst, const float *src, int N, int rows, int cols)
{
    size_t mat = (size_t)rows * cols;
    GRID_STRIDE(o, (size_t)N * mat)
    {
        size_t g = o / mat, e = o % mat;
        size_t col = e / (size_t)rows, row = e % (size_t)rows;
        dst[o] = src[g * mat + row * cols + col];
    }
}

static void cuda_transpose(vs_rt_backend *be, float *dst, const float *src, int N, int rows, int cols)
{
    cuda_backend *c = cu(be);
    if (N <= 0 || rows <= 0 || cols <= 0)
        return;
    size_t n = (size_t)N * rows * cols;
    VS_LAUNCH(k_transpose, grid_for(n, 256), 256, 0, c->st, dst, src, N, rows, cols);
    VS_LAUNCHED(c, k_transpose);
}

/* ---- decoder -------------------------------------------------------------------------------------- */

/* y[p][i] = b[p % cout] for planes p of HW */
__global__ void k_fill_planes(float *y, const float *b, size_t planes, int cout, size_t HW)
{
    GRID_STRIDE(i, planes * HW)
    y[i] = b[(i / HW) % (size_t)cout];
}

/* The most workspace an algorithm may take: a faster one that wants more is passed over. */
#define CONV_WS_LIMIT ((size_t)64 << 20)

/* Sets the descriptors for y[N][cout][H][W] = w[cout][cin][k][k] ⊛ x[N][cin][H][W] (+ b[cout]),
 * padding k/2, strict FP32 (FMA math) or TF32 (tensor-op math); 0, or -1 (recorded). */
static int conv_descs(cuda_backend *c, int N, int cin, int H, int W, int cout, int k, int tf32)
{
    if (VS_CUDNN(c, cudnnSetTensor4dDescriptor(c->xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, cin, H, W)) ||
        VS_CUDNN(c, cudnnSetTensor4dDescriptor(c->yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, N, cout, H, W)) ||
        VS_CUDNN(c, cudnnSetTensor4dDescriptor(c->bd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, cout, 1, 1)) ||
        VS_CUDNN(c, cudnnSetFilter4dDescriptor(c->wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, cout, cin, k, k)) ||
        VS_CUDNN(c, cudnnSetConvolution2dDescriptor(c->cd, k / 2, k / 2, 1, 1, 1, 1,
                                                    CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT)) ||
        VS_CUDNN(c, cudnnSetConvolutionMathType(c->cd, tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH)))
        return -1;
    return 0;
}

/* The algorithm of a conv2d shape: chosen once, by cuDNN's heuristics (the first one whose
 * workspace is within CONV_WS_LIMIT) for the largest N reserve() was told of, and kept. A shape
 * reserve() did not list is planned at its first call (with a warning after reserve()). NULL
 * after recording an error. */
static const conv_plan *conv_plan_for(cuda_backend *c, int cin, int H, int W, int cout, int k,
                                      int tf32)
{
    for (int i = 0; i < c->n_plans; i++) {
        const conv_plan *p = &c->plans[i];
        if (p->cin == cin && p->cout == cout && p->k == k && p->h == H && p->w == W && p->tf32 == tf32)
            return p;
    }
    if (c->reserved)
        vs_log(VS_LOG_WARN, "cuda",
               "conv2d %d→%d channels, %dx%d, k %d was not in reserve()'s workload (a bug): its "
               "cuDNN algorithm is chosen now", cin, cout, H, W, k);
    int N = c->decode_images > 0 ? c->decode_images : 1;
    if (conv_descs(c, N, cin, H, W, cout, k, tf32) != 0)
        return NULL;
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int got = 0;
    if (VS_CUDNN(c, cudnnGetConvolutionForwardAlgorithm_v7(c->dnn, c->xd, c->wd, c->cd, c->yd,
                                                           CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got,
                                                           perf)))
        return NULL;
    int pick = -1;
    for (int i = 0; i < got && pick < 0; i++)
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= CONV_WS_LIMIT)
            pick = i;
    if (pick < 0) {
        VS_FAIL(c, VS_ERR_UNSUPPORTED,
                "cuDNN offers no algorithm for conv2d %d→%d channels, %dx%d, k %d, %d images "
                "within %zu MB of workspace: decode fewer images at once",
                cin, cout, H, W, k, N, CONV_WS_LIMIT >> 20);
        return NULL;
    }
    if ((size_t)c->n_plans == c->plans_cap &&
        grow_host((void **)&c->plans, &c->plans_cap, 2 * c->plans_cap + 16, sizeof(conv_plan)) != 0) {
        VS_FAIL(c, VS_ERR_NOMEM, "out of host memory for the convolution plans");
        return NULL;
    }
    conv_plan *p = &c->plans[c->n_plans++];
    *p = conv_plan{cin, cout, k, H, W, tf32, perf[pick].algo};
    return p;
}

/* The descriptors of plan p's shape at N images and the workspace its algorithm needs there;
 * 0, or -1 (recorded). */
static int conv_setup(cuda_backend *c, const conv_plan *p, int N, size_t *ws_bytes)
{
    if (conv_descs(c, N, p->cin, p->h, p->w, p->cout, p->k, p->tf32) != 0)
        return -1;
    return VS_CUDNN(c, cudnnGetConvolutionForwardWorkspaceSize(c->dnn, c->xd, c->wd, c->cd, c->yd,
                                                               p->algo, ws_bytes));
}

/* One cuDNN call for all N images: the bias fused in (cudnnConvolutionBiasActivationForward,
 * identity activation, which cuDNN runs only with IMPLICIT_PRECOMP_GEMM) when that is the
 * shape's algorithm, else the convolution and then cudnnAddTensor for the bias. The quantiser's φ
 * (undeclared weights) stays strict FP32; the decoder's convolutions take TF32 in BF16 mode. */
static void cuda_conv2d(vs_rt_backend *be, float *y, const float *x, const float *w, const float *b,
                        int N, int cin, int H, int W, int cout, int k)
{
    cuda_backend *c = cu(be);
    if (N <= 0 || cout <= 0 || H <= 0 || W <= 0)
        return;
    size_t HW = (size_t)H * W;
    if (cin <= 0 || k <= 0) { /* an empty sum: the bias alone */
        if (b) {
            size_t n = (size_t)N * cout * HW;
            VS_LAUNCH(k_fill_planes, grid_for(n, 256), 256, 0, c->st, y, b, (size_t)N * cout, cout, HW);
            VS_LAUNCHED(c, k_fill_planes);
        } else {
            VS_CUDA(c, cudaMemsetAsync(y, 0, (size_t)N * cout * HW * sizeof(float), c->st));
        }
        return;
    }
    int tf32 = !c->fp32 && is_decoder_weight(c, w);
    const conv_plan *p = conv_plan_for(c, cin, H, W, cout, k, tf32);
    size_t ws_bytes = 0;
    if (!p || conv_setup(c, p, N, &ws_bytes) != 0)
        return;
    void *ws = ws_bytes ? scratch(c, S_CONV, ws_bytes) : NULL;
    if (ws_bytes && !ws)
        return;
    float one = 1.0f, zero = 0.0f;
    if (b && p->algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM) {
        (void)VS_DNN(c, cudnnConvolutionBiasActivationForward(
                              c->dnn, &one, c->xd, x, c->wd, w, c->cd, p->algo, ws, ws_bytes, &zero,
                              c->yd, y, c->bd, b, c->ad, c->yd, y));
        return;
    }
    if (VS_DNN(c, cudnnConvolutionForward(c->dnn, &one, c->xd, x, c->wd, w, c->cd, p->algo, ws,
                                          ws_bytes, &zero, c->yd, y)) || !b)
        return;
    (void)VS_DNN(c, cudnnAddTensor(c->dnn, &one, c->bd, b, &one, c->yd, y));
}

/* One block per (image, group): statistics in double over cpg·HW values, as the CPU backend. */
__global__ void __launch_bounds__(1024)
    k_group_norm(float *y, const float *x, const float *gamma, const float *beta, int C, int HW,
                 int groups, float eps, int silu)
{
    size_t u = blockIdx.x;
    int g = (int)(u % (size_t)groups), cpg = C / groups;
    size_t gsize = (size_t)cpg * HW;
    const float *xg = x + u * gsize;
    float *yg = y + u * gsize;
    double s = 0;
    for (size_t i = threadIdx.x; i < gsize; i += blockDim.x)
        s += xg[i];
    double mean = block_sum(s) / (double)gsize;
    double v = 0;
    for (size_t i = threadIdx.x; i < gsize; i += blockDim.x) {
        double d = xg[i] - mean;
        v += d * d;
    }
    double var = block_sum(v) / (double)gsize;
    float rstd = (float)(1.0 / sqrt(var + eps)), fm = (float)mean;
    for (size_t i = threadIdx.x; i < gsize; i += blockDim.x) {
        int ch = g * cpg + (int)(i / (size_t)HW);
        float a = rstd * gamma[ch], bb = beta[ch] - fm * rstd * gamma[ch];
        float val = xg[i] * a + bb;
        yg[i] = silu ? val / (1.0f + expf(-val)) : val;
    }
}

static void cuda_group_norm(vs_rt_backend *be, float *y, const float *x, const float *gamma,
                            const float *beta, int N, int C, int HW, int groups, float eps,
                            int silu)
{
    cuda_backend *c = cu(be);
    if (N <= 0 || groups <= 0 || C <= 0 || HW <= 0)
        return;
    VS_LAUNCH(k_group_norm, (unsigned)((size_t)N * groups), 1024, 0, c->st, y, x, gamma, beta, C, HW,
                                                                     groups, eps, silu);
    VS_LAUNCHED(c, k_group_norm);
}

__global__ void k_up2x(float *dst, const float *src, int planes, int h, int w)
{
    size_t W2 = (size_t)2 * w, HW4 = (size_t)4 * h * w;
    GRID_STRIDE(o, (size_t)planes * HW4)
    {
        size_t p = o / HW4, r = o % HW4;
        size_t yy = r / W2, xx = r % W2;
        dst[o] = src[p * h * w + (yy / 2) * w + xx / 2];
    }
}

static void cuda_upsample_nearest2x(vs_rt_backend *be, float *dst, const float *src, int planes,
                                    int h, int w)
{
    cuda_backend *c = cu(be);
    if (planes <= 0 || h <= 0 || w <= 0)
        return;
    size_t n = (size_t)planes * 4 * h * w;
    VS_LAUNCH(k_up2x, grid_for(n, 256), 256, 0, c->st, dst, src, planes, h, w);
    VS_LAUNCHED(c, k_up2x);
}

/* Row-wise softmax as the CPU backend: max, exp and a float sum, then divide. */
__global__ void __launch_bounds__(256) k_softmax_rows(float *w, int cols)
{
    float *r = w + (size_t)blockIdx.x * cols;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        mx = fmaxf(mx, r[j]);
    mx = block_max(mx);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float e = expf(r[j] - mx);
        r[j] = e;
        sum += e;
    }
    sum = block_sum(sum);
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        r[j] /= sum;
}

/* Per image: s[i][j] = Σ_c q[c][i] k[c][j] / √C, softmax over j, out[c][i] = Σ_j v[c][j] s[i][j].
 * Column-major views (ld HW): Q, K, V are HW×C and s is S(j, i), so S = K·Qᵀ and out = Sᵀ·V.
 * All N images at once: two strided-batched GEMMs and one softmax over N·HW rows. */
static void cuda_spatial_attention(vs_rt_backend *be, float *out, const float *qkv, int N, int C,
                                   int HW)
{
    cuda_backend *c = cu(be);
    if (N <= 0 || C <= 0 || HW <= 0)
        return;
    size_t plane = (size_t)HW * HW;
    float *s = (float *)scratch(c, S_SCORES, (size_t)N * plane * sizeof(float));
    if (!s)
        return;
    gemm_math(c, 1); /* a decoder op: TF32 in BF16 mode */
    float sc = 1.0f / sqrtf((float)C), one = 1.0f, zero = 0.0f;
    long long qkv_stride = (long long)3 * C * HW, chw = (long long)C * HW;
    const float *q = qkv, *k = qkv + chw, *v = qkv + 2 * chw;
    VS_GEMM(c, cublasSgemmStridedBatched(c->blas, CUBLAS_OP_N, CUBLAS_OP_T, HW, HW, C, &sc, k, HW,
                                         qkv_stride, q, HW, qkv_stride, &zero, s, HW,
                                         (long long)plane, N));
    VS_LAUNCH(k_softmax_rows, (unsigned)((size_t)N * HW), 256, 0, c->st, s, HW);
    VS_LAUNCHED(c, k_softmax_rows);
    VS_GEMM(c, cublasSgemmStridedBatched(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, HW, C, HW, &one, s, HW,
                                         (long long)plane, v, HW, qkv_stride, &zero, out, HW, chw,
                                         N));
}

/* ---- counters ---------------------------------------------------------------------------------- */

static void cuda_counters(vs_rt_backend *be, vs_rt_counters *out) { *out = cu(be)->ctr; }

/* ---- reserving scratch ------------------------------------------------------------------------ */

/* Plans every conv2d shape of *w at its largest N, strict and (BF16 mode) TF32, and the
 * workspace the largest of them needs at that N into *ws_bytes; 0, or -1 (recorded). */
static int conv_reserve(cuda_backend *c, const vs_rt_workload *w, size_t *ws_bytes)
{
    *ws_bytes = 0;
    if (w->convs_dropped > 0)
        vs_log(VS_LOG_WARN, "cuda", "%d conv2d shapes beyond the workload's %d: their algorithms "
                                    "are chosen at their first call", w->convs_dropped,
               VS_RT_WORKLOAD_CONVS);
    for (int i = 0; i < w->n_convs; i++) {
        const vs_rt_conv_shape *s = &w->convs[i];
        if (s->cin <= 0 || s->cout <= 0 || s->k <= 0 || s->h <= 0 || s->w <= 0)
            continue;
        for (int tf32 = 0; tf32 <= (c->fp32 ? 0 : 1); tf32++) {
            const conv_plan *p = conv_plan_for(c, s->cin, s->h, s->w, s->cout, s->k, tf32);
            size_t b = 0;
            if (!p || conv_setup(c, p, c->decode_images, &b) != 0)
                return -1;
            *ws_bytes = b > *ws_bytes ? b : *ws_bytes;
        }
    }
    return 0;
}

/* Allocates every scratch slot (and the host staging) for the largest work in *w, exactly, so
 * that the ops within it never allocate; slots already larger stay. */
static vs_status cuda_reserve(vs_rt_backend *be, const vs_rt_workload *w, vs_err *err)
{
    cuda_backend *c = cu(be);
    if (c->sticky != VS_OK)
        return cuda_sync(be, err);
    size_t rows = w->rows > 0 ? (size_t)w->rows : 0, tok = w->tokens > 0 ? (size_t)w->tokens : 0;
    size_t kv = w->kv_tokens > 0 ? (size_t)w->kv_tokens : 0;
    size_t stok = w->sample_tokens > 0 ? (size_t)w->sample_tokens : 0;
    size_t sreq = w->sample_reqs > 0 ? (size_t)w->sample_reqs : 0;
    size_t need[S_COUNT] = {0};
    need[S_IDX] = (w->index > 0 ? (size_t)w->index : 0) * sizeof(int32_t);
    need[S_BATCH] = rows ? batch_entries(tok, rows) * sizeof(int32_t) : 0;
    /* a (row, head)'s pages in one layer: at most one per token (pages of ≥ 1 token) */
    size_t heads = rows * (size_t)(w->kv_heads > 0 ? w->kv_heads : 1);
    need[S_LAYER] = rows ? layer_entries(heads, heads * kv) * sizeof(int32_t) : 0;
    need[S_COMPACT] = rows ? compact_entries(heads, heads, heads * kv) * sizeof(int32_t) : 0;
    size_t dec = w->decode_images > 0 ? (size_t)w->decode_images : 1;
    if ((int)dec > c->decode_images)
        c->decode_images = (int)dec;
    if (conv_reserve(c, w, &need[S_CONV]) != 0)
        return take_error(c, err);
    need[S_SCORES] = w->attn_hw > 0 ? dec * (size_t)w->attn_hw * (size_t)w->attn_hw * sizeof(float) : 0;
    if (sreq && stok && w->vocab > 0) {
        need[S_SREQ] = sreq_bytes(sreq, stok);
        sample_plan sp = plan_sample(c, w->vocab, stok, 1); /* top-k/top-p: the larger plan */
        need[S_SORT] = sort_bytes(&sp);
    }
    /* linear() converts x to BF16 only for weights with a BF16 copy, and only an x that is not a
     * gemm_inputs buffer */
    need[S_XBF] = c->n_sets ? w->linear_in * sizeof(__nv_bfloat16) : 0;
    need[S_COPY] = (w->copies > 0 ? (size_t)w->copies : 0) * sizeof(vs_rt_copy);
    size_t total = 0;
    for (int i = 0; i < S_COUNT; i++) {
        total += need[i];
        if (need[i] > c->scr_cap[i] && scratch_alloc(c, i, need[i]) != 0) {
            vs_err e2;
            memset(&e2, 0, sizeof e2);
            (void)take_error(c, &e2);
            return vs_err_set(err, VS_ERR_NOMEM,
                              "cannot reserve %.1f MB of CUDA scratch for the largest step and "
                              "decode (%s: %.1f MB): %s",
                              (double)total / 1e6, scr_name[i], (double)need[i] / 1e6, e2.msg);
        }
    }
    /* the staging ring holds a whole step's small uploads (the batch and every layer's page and
     * compaction tables, the sampling requests, the index lists), so a step never waits for it */
    size_t ring = 4 * (batch_entries(tok, rows) +
                       (size_t)(w->layers > 0 ? w->layers : 1) *
                           (layer_entries(heads, heads * kv) + compact_entries(heads, heads, heads * kv))) +
                  need[S_SREQ] + 8 * need[S_IDX] + 8 * need[S_COPY] + ((size_t)1 << 20);
    if (ring > c->ring_cap) {
        drain(c);
        void *p = NULL;
        if (cudaHostAlloc(&p, ring, cudaHostAllocDefault) != cudaSuccess) {
            (void)cudaGetLastError();
            return vs_err_set(err, VS_ERR_NOMEM,
                              "cannot pin %.1f MB of host memory for a step's CUDA staging",
                              (double)ring / 1e6);
        }
        VS_CUDA(c, cudaFreeHost(c->ring));
        c->ring = (unsigned char *)p;
        c->ring_cap = ring;
    }
    size_t host = batch_entries(tok, rows);
    if (layer_entries(heads, heads * kv) > host)
        host = layer_entries(heads, heads * kv);
    if (compact_entries(heads, heads, heads * kv) > host)
        host = compact_entries(heads, heads, heads * kv);
    if (stok > host)
        host = stok;
    if (grow_host((void **)&c->host_i32, &c->host_i32_cap, host, sizeof(int32_t)) != 0 ||
        grow_host((void **)&c->host_sreq, &c->host_sreq_cap, sreq, sizeof(cuda_sreq)) != 0)
        return vs_err_set(err, VS_ERR_NOMEM, "out of host memory for the CUDA staging tables");
    c->reserved = 1;
    if (c->sticky != VS_OK)
        return cuda_sync(be, err);
    vs_log(VS_LOG_INFO, "cuda",
           "scratch reserved: %.1f MB (BF16 linear inputs %.1f, cuDNN workspace %.1f for %d "
           "convolution plans, attention scores %.1f, sort %.1f, tables %.1f); staging ring %.1f MB",
           (double)total / 1e6, (double)need[S_XBF] / 1e6, (double)need[S_CONV] / 1e6, c->n_plans,
           (double)need[S_SCORES] / 1e6, (double)need[S_SORT] / 1e6,
           (double)(need[S_IDX] + need[S_BATCH] + need[S_LAYER] + need[S_COMPACT] + need[S_SREQ]) / 1e6,
           (double)c->ring_cap / 1e6);
    return VS_OK;
}

/* ---- construction ----------------------------------------------------------------------------- */

static vs_rt_backend_ops make_ops(void)
{
    vs_rt_backend_ops o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.destroy = cuda_destroy;
    o.alloc = cuda_alloc;
    o.free = cuda_free;
    o.upload = cuda_upload;
    o.download = cuda_download;
    o.copy = cuda_copy;
    o.copy_many = cuda_copy_many;
    o.zero = cuda_zero;
    o.sync = cuda_sync;
    o.batch_begin = cuda_batch_begin;
    o.reserve = cuda_reserve;
    o.mem_info = cuda_mem_info;
    o.gemm_weights = cuda_gemm_weights;
    o.gemm_inputs = cuda_gemm_inputs;
    o.decoder_weights = cuda_decoder_weights;
    o.linear = cuda_linear;
    o.linear_gelu = cuda_linear_gelu;
    o.silu = cuda_silu;
    o.gelu_tanh = cuda_gelu;
    o.add = cuda_add;
    o.add_bias_rows = cuda_add_bias_rows;
    o.gather_rows = cuda_gather_rows;
    o.adaln = cuda_adaln;
    o.gated_add = cuda_gated_add;
    o.gated_add_adaln = cuda_gated_add_adaln;
    o.qk_norm = cuda_qk_norm;
    o.attention = cuda_attention;
    o.kv_compact = cuda_kv_compact;
    o.cfg_sample = cuda_cfg_sample;
    o.embed_chw = cuda_embed_chw;
    o.upsample_bicubic = cuda_upsample_bicubic;
    o.area_downsample = cuda_area_downsample;
    o.phi_add = cuda_phi_add;
    o.transpose = cuda_transpose;
    o.conv2d = cuda_conv2d;
    o.group_norm = cuda_group_norm;
    o.upsample_nearest2x = cuda_upsample_nearest2x;
    o.spatial_attention = cuda_spatial_attention;
    o.to_unit = cuda_to_unit;
    o.counters = cuda_counters;
    o.kv_download = cuda_kv_download;
    o.kv_upload = cuda_kv_upload;
    return o;
}

#define RING_BYTES ((size_t)16 << 20)

extern "C" vs_status vs_rt_backend_cuda_new(int fp32, vs_rt_backend **out, vs_err *err)
{
    static const vs_rt_backend_ops ops = make_ops();
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0) {
        (void)cudaGetLastError();
        return vs_err_set(err, VS_ERR_UNSUPPORTED, "no CUDA device (%s); use --backend cpu",
                          e != cudaSuccess ? cudaGetErrorString(e)
                                           : "the driver reports 0 devices");
    }
    cudaDeviceProp prop;
    if ((e = cudaSetDevice(0)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) {
        (void)cudaGetLastError();
        return vs_err_set(err, VS_ERR_CUDA, "CUDA device 0 does not answer: %s",
                          cudaGetErrorString(e));
    }
    if (prop.major < 8)
        return vs_err_set(
            err, VS_ERR_UNSUPPORTED,
            "CUDA device 0 (%s) has compute capability %d.%d; this build needs 8.0 or "
            "newer: use --backend cpu",
            prop.name, prop.major, prop.minor);
    cuda_backend *c = (cuda_backend *)calloc(1, sizeof *c);
    if (!c)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    c->fp32 = fp32;
    c->n_sm = prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1;
    c->smem_optin =
        (int)(prop.sharedMemPerBlockOptin ? prop.sharedMemPerBlockOptin : prop.sharedMemPerBlock);
    c->sticky = VS_OK;
    vs_status st = VS_OK;
    void *ring = NULL;
    if (cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking) != cudaSuccess) {
        c->st = NULL;
        st = vs_err_set(err, VS_ERR_CUDA, "cudaStreamCreate: %s",
                        cudaGetErrorString(cudaGetLastError()));
        goto fail;
    }
    {
        cublasStatus_t bs = cublasCreate(&c->blas);
        if (bs != CUBLAS_STATUS_SUCCESS) {
            c->blas = NULL;
            st = vs_err_set(err, bs == CUBLAS_STATUS_ALLOC_FAILED ? VS_ERR_NOMEM : VS_ERR_CUDA,
                            "cublasCreate: %s", cublasGetStatusString(bs));
            goto fail;
        }
    }
    /* strict FP32 by default; in BF16 mode gemm_math switches to TF32 for the decoder's GEMMs */
    c->math = CUBLAS_DEFAULT_MATH;
    if (cublasSetStream(c->blas, c->st) != CUBLAS_STATUS_SUCCESS ||
        cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {
        st = vs_err_set(err, VS_ERR_CUDA, "cuBLAS setup (stream, math mode) failed");
        goto fail;
    }
    {
        cublasStatus_t ls = cublasLtCreate(&c->lt);
        if (ls != CUBLAS_STATUS_SUCCESS) {
            c->lt = NULL;
            st = vs_err_set(err, VS_ERR_CUDA, "cublasLtCreate: %s", cublasGetStatusString(ls));
            goto fail;
        }
        int32_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N; /* the bias type is set per call */
        if (cublasLtMatmulDescCreate(&c->mm, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS ||
            cublasLtMatmulDescSetAttribute(c->mm, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) ||
            cublasLtMatmulDescSetAttribute(c->mm, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb) ||
            cublasLtMatrixLayoutCreate(&c->la, CUDA_R_32F, 1, 1, 1) != CUBLAS_STATUS_SUCCESS ||
            cublasLtMatrixLayoutCreate(&c->lb, CUDA_R_32F, 1, 1, 1) != CUBLAS_STATUS_SUCCESS ||
            cublasLtMatrixLayoutCreate(&c->ly, CUDA_R_32F, 1, 1, 1) != CUBLAS_STATUS_SUCCESS) {
            st = vs_err_set(err, VS_ERR_CUDA, "cuBLASLt setup (matmul and layout descriptors) failed");
            goto fail;
        }
    }
    {
        cudnnStatus_t ds = cudnnCreate(&c->dnn);
        if (ds != CUDNN_STATUS_SUCCESS) {
            c->dnn = NULL;
            st = vs_err_set(err, VS_ERR_CUDA, "cudnnCreate: %s (is libcudnn installed with the "
                                              "toolkit?)", cudnnGetErrorString(ds));
            goto fail;
        }
        if (cudnnSetStream(c->dnn, c->st) != CUDNN_STATUS_SUCCESS ||
            cudnnCreateTensorDescriptor(&c->xd) != CUDNN_STATUS_SUCCESS ||
            cudnnCreateTensorDescriptor(&c->yd) != CUDNN_STATUS_SUCCESS ||
            cudnnCreateTensorDescriptor(&c->bd) != CUDNN_STATUS_SUCCESS ||
            cudnnCreateFilterDescriptor(&c->wd) != CUDNN_STATUS_SUCCESS ||
            cudnnCreateConvolutionDescriptor(&c->cd) != CUDNN_STATUS_SUCCESS ||
            cudnnCreateActivationDescriptor(&c->ad) != CUDNN_STATUS_SUCCESS ||
            cudnnSetActivationDescriptor(c->ad, CUDNN_ACTIVATION_IDENTITY, CUDNN_NOT_PROPAGATE_NAN,
                                         0.0) != CUDNN_STATUS_SUCCESS) {
            st = vs_err_set(err, VS_ERR_CUDA, "cuDNN setup (stream, descriptors) failed");
            goto fail;
        }
    }
    if (cudaHostAlloc(&ring, RING_BYTES, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError();
        st = vs_err_set(err, VS_ERR_NOMEM, "cannot pin %zu MB of host memory for CUDA staging",
                        RING_BYTES >> 20);
        goto fail;
    }
    c->ring = (unsigned char *)ring;
    c->ring_cap = RING_BYTES;
    c->base.ops = &ops;
    c->base.threads = 1;
    c->base.host_memory = 0;
    c->base.kv_elem_bytes = fp32 ? 4 : 2;
    vs_log(VS_LOG_INFO, "runtime", "backend cuda: %s (sm_%d%d, %d SMs, %.1f GB), %s", prop.name,
           prop.major, prop.minor, prop.multiProcessorCount, (double)prop.totalGlobalMem / 1e9,
           fp32 ? "FP32 (no TF32), FP32 KV pages"
                : "BF16 GEMM weights (FP32 accumulation), BF16 KV pages, BF16 attention on "
                  "tensor cores (head_dim a multiple of 16), TF32 decoder, FP32 elsewhere");
    *out = &c->base;
    return VS_OK;
fail:
    cuda_destroy(&c->base);
    return st;
}
