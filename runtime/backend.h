/* runtime/backend.h — the backend interface: a table of operations over backend memory.
 *
 * var.c and vae.c are written once against this table; backend_cpu.c (OpenBLAS + pthreads, FP32)
 * and backend_cuda.cu (cuBLAS + own kernels) implement it. Every float* below is backend memory
 * unless its comment says "host". Operations are queued in order on the backend's one stream and
 * may run asynchronously; errors surface at sync(). Layouts are row-major; shapes in comments.
 *
 * Errors: an op that fails records its error (the first one wins) and the ops after it run on
 * (their outputs are then garbage). sync(), and batch_begin() when an error is pending, return
 * the recorded error once, and what that return code says is how a caller learns what is left:
 *   VS_ERR_DEVICE_LOST  the device itself is unusable (CUDA: an error that stays sticky in the
 *                       context, e.g. cudaErrorIllegalAddress or cudaErrorLaunchFailure, found by
 *                       a synchronize that still fails after cudaGetLastError). It is never
 *                       cleared: every later sync() and batch_begin() return it again, and only
 *                       a new process can use the device. The CPU backend never returns it.
 *   any other code      recoverable (out of memory for scratch, a page table the attention
 *                       refuses, a cuBLAS argument error, ...): the work queued since the last
 *                       sync is void, nothing else is damaged, and the error is cleared, so the
 *                       next sync() returns VS_OK unless new work fails.
 *
 * Threads: a backend belongs to the one thread that created it (the engine thread). */
#ifndef VS_RT_BACKEND_H
#define VS_RT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "runtime/kv_compact.h"
#include "runtime/kv_view.h"

typedef struct vs_rt_backend vs_rt_backend;

/* One row (one CFG branch of one image) of a ragged step. */
typedef struct {
    int tok_start;                  /* first token of this row in the step's [T] arrays */
    int n_new;                      /* tokens this row computes (its scale's p*p) */
    const vs_rt_kv_head *kv;        /* host [depth][heads]: the row's paged cache per (layer, head) */
} vs_rt_row;

typedef struct {
    int n_rows, n_tok;
    const vs_rt_row *rows;          /* host [n_rows] */
    const int32_t *tok_row;         /* host [n_tok]: the row of each token */
    float *kv_base;                 /* the KV pool arena (backend memory), elements of the
                                     * backend's kv_elem_bytes (BF16 when 2, not floats) */
    int page_tokens, depth;
    /* host [n_rows], reset to 1 before each layer: 1 = the attention op also writes the row's new
     * K,V into slots n_tokens.. of each head's pages (the view covers them); 0 = they stay in qkv only
     * (kvcache/ compresses or drops them after the attention, so they never need pages) */
    uint8_t *kv_store;
    void *dev;                      /* backend's private copy, set by batch_begin */
} vs_rt_batch;

/* One image's sampling work in a step: guided logits of n tokens starting at token tok. */
typedef struct {
    int cond_tok, uncond_tok, n;    /* token offsets of the two rows in the logits */
    float guidance;                 /* t: logits = (1+t)·cond − t·uncond */
    int top_k;                      /* 0 = off */
    float top_p;                    /* 0 = off */
    uint64_t seed;
    int scale;                      /* counter for the RNG: (seed) × (scale, token) */
    int32_t *out;                   /* host [n] sampled token ids */
} vs_rt_sample_req;

/* One copy of a copy_many list: bytes from src to dst, both in backend memory. */
typedef struct {
    void *dst;
    const void *src;
    size_t bytes;
} vs_rt_copy;

/* Device work a backend has issued since it was made, counted where the backend issues it (so a
 * real and an emulated device count the same). A GPU's cost model that needs no GPU to measure:
 * how often the host starts device work and waits for it, and what crosses the bus. */
typedef struct {
    /* kernel launches plus cuBLAS, cuBLASLt and cuDNN calls, one each (a library call counts as
     * one launch whatever kernels it runs inside; copy_many is one kernel) */
    uint64_t launches;
    /* device-to-device copies and memsets issued one by one (copy() and zero()): each is a call
     * into the driver like a launch, so a step's count should not grow with its images either */
    uint64_t copies;
    /* host waits for the device: every stream synchronisation (sync(), each synchronous
     * download, the sampled tokens' download, and the waits the backend makes on its own when its
     * staging ring is full, when a large upload is copied or when scratch grows) */
    uint64_t syncs;
    uint64_t h2d_bytes;    /* bytes copied host → device: upload() and the backend's own staging
                            * of index lists, row and page tables and sampling requests */
    uint64_t d2h_bytes;    /* bytes copied device → host: download() and the sampled tokens */
    /* the part of h2d_bytes / d2h_bytes that upload() / download() moved into / out of the KV
     * pool arena: the backend allocation holding the kv_base of the last batch_begin (kvcache/
     * stages pages through upload and download when it compresses a layer) */
    uint64_t kv_h2d_bytes;
    uint64_t kv_d2h_bytes;
    /* device memory this backend holds now: alloc() blocks, its scratch (reserve()) and the BF16
     * weight copies, in the bytes asked of the device allocator (the pinned host staging ring and
     * cuBLAS's own workspace are not included) */
    uint64_t allocated_bytes;
    uint64_t allocated_peak_bytes; /* the most allocated_bytes has been */
    uint64_t allocations;  /* device allocations made so far (after start-up a step makes none) */
} vs_rt_counters;

/* One conv2d the quantiser or the decoder runs, N aside (y[N][cout][h][w] from x[N][cin][h][w]). */
typedef struct {
    int cin, cout, k, h, w;
} vs_rt_conv_shape;

#define VS_RT_WORKLOAD_CONVS 64 /* distinct conv2d shapes a workload lists (VAR's decoder: ~20) */

/* The largest work the ops will be given, for reserve(): every field is a maximum over all the
 * calls that follow (0 = that op is not used). var.c fills it for one step of max_images images
 * (and the quantiser), vae.c adds the decoder's convolutions and attention. */
typedef struct {
    int rows, tokens;      /* one batch: rows and tokens (batch_begin, attention) */
    int kv_tokens;         /* tokens one row holds in one head of one layer, cached + new (attention) */
    int kv_heads;          /* heads of a layer, each with its own page table (attention) */
    int layers;            /* layers of one step: each uploads its page and compaction tables */
    int index;             /* entries of one host index list (gather_rows, embed_chw) */
    int copies;            /* entries of one copy_many list */
    /* floats of one linear's input x, M·K, among the linears whose w is declared through
     * gemm_weights and whose x is not a gemm_inputs buffer (a BF16 backend converts such an x in
     * scratch; 0: none) */
    size_t linear_in;
    int sample_reqs, sample_tokens, vocab; /* one cfg_sample: n, Σ reqs[i].n, V */
    int decode_images;     /* the largest N of one conv2d or spatial_attention call */
    /* every distinct conv2d shape (add them with vs_rt_workload_add_conv): the CUDA backend picks
     * each one's cuDNN algorithm and sizes their common workspace once, in reserve() */
    vs_rt_conv_shape convs[VS_RT_WORKLOAD_CONVS];
    int n_convs;           /* entries of convs used */
    int convs_dropped;     /* shapes beyond VS_RT_WORKLOAD_CONVS (then chosen at their first call) */
    int attn_hw;           /* spatial_attention: the largest HW */
} vs_rt_workload;

/* Lists the conv2d shape in wl->convs unless it is there already. */
void vs_rt_workload_add_conv(vs_rt_workload *wl, int cin, int cout, int k, int h, int w);

/* Device memory, from mem_info(). */
typedef struct {
    size_t free, total;    /* bytes the device has free now, and in all */
} vs_rt_mem_info;

typedef struct {
    const char *name;
    void (*destroy)(vs_rt_backend *be);
    void *(*alloc)(vs_rt_backend *be, size_t bytes);           /* NULL on failure */
    void (*free)(vs_rt_backend *be, void *p);                 /* NULL ok */
    void (*upload)(vs_rt_backend *be, void *dst, const void *src_host, size_t bytes);
    void (*download)(vs_rt_backend *be, void *dst_host, const void *src, size_t bytes);
    void (*copy)(vs_rt_backend *be, void *dst, const void *src, size_t bytes);
    /* n copies as one op (list on the host, the blocks in backend memory, no two overlapping): a
     * step's per-image copies in one launch on a device, memcpy each on the CPU */
    void (*copy_many)(vs_rt_backend *be, const vs_rt_copy *list, int n);
    void (*zero)(vs_rt_backend *be, void *dst, size_t bytes);
    /* waits for the queued work; returns the recorded error, if any (see "Errors" above) */
    vs_status (*sync)(vs_rt_backend *be, vs_err *err);
    /* prepares the batch's row tables for the ops below (CUDA uploads them once per step); an
     * error still pending from earlier work is returned (and cleared) as sync() would */
    vs_status (*batch_begin)(vs_rt_backend *be, vs_rt_batch *b, vs_err *err);

    /* Optional, NULL when the backend keeps no scratch of its own (CPU). Allocates, at start-up,
     * the backend's own scratch (CUDA: BF16 copies of linear inputs, cuDNN's workspace and its algorithm per
     * conv2d shape, sort buffers, attention scores, row and page tables) for the largest work *w describes, so that ops within it never
     * allocate device memory. VS_ERR_NOMEM names the bytes; nothing stays recorded. */
    vs_status (*reserve)(vs_rt_backend *be, const vs_rt_workload *w, vs_err *err);
    /* Optional, NULL when backend memory is host memory (CPU). */
    vs_status (*mem_info)(vs_rt_backend *be, vs_rt_mem_info *out, vs_err *err);

    /* Optional, NULL when the backend has no use for it. Declares that the count matrices w[i]
     * (n[i] floats each, backend memory inside the allocation `arena`) are GEMM weights that
     * linear() will receive unchanged as its w (or, for a linear that writes a gemm_inputs
     * buffer, as its bias) until `arena` is freed. The CUDA backend in BF16
     * mode (fp32 = 0) converts each once here and multiplies with the BF16 copy in linear(); the
     * copies go when free(arena) is called or another call names the same arena. When the
     * copies do not fit in device memory it logs a warning and linear() stays in FP32. */
    void (*gemm_weights)(vs_rt_backend *be, const void *arena, const float *const *w,
                         const size_t *n, int count);
    /* Optional, NULL when the backend has no use for it. Declares the count buffers a[i] (n[i]
     * floats each, backend memory) as GEMM activations: until one is freed, its only writers are
     * adaln, gated_add_adaln (as its xn), silu, attention, linear and linear_gelu (as their
     * output), and its only readers
     * linear and linear_gelu (as their x), with a w declared through gemm_weights; a linear that
     * writes one has its bias (when not NULL) declared through gemm_weights too. The backend may
     * then hold them in a narrower type that the readers understand, so their contents are its
     * own: no other op, copy or download may touch them. The CUDA backend in BF16 mode (with its
     * BF16 weight copies in place) keeps them in BF16 in place, rounded to nearest even where
     * they are written: the rounding linear() applies to x in that mode anyway, so a linear
     * needs no conversion of x; a linear that writes one adds the BF16 copy of its bias
     * (docs/ALGORITHMS.md §5). Otherwise (FP32, or no BF16 copies) it keeps them as floats. */
    void (*gemm_inputs)(vs_rt_backend *be, const float *const *a, const size_t *n, int count);
    /* Optional. Declares the count conv2d weights w[i] (inside the allocation `arena`) of the
     * VQ-VAE decoder, whose output ends as 8-bit pixels: conv2d with one of them as its w may run
     * at reduced precision (CUDA in BF16 mode: TF32). Every other conv2d and linear stays FP32.
     * The declaration goes when free(arena) is called or another call names the same arena. */
    void (*decoder_weights)(vs_rt_backend *be, const void *arena, const float *const *w,
                            int count);
    /* y[M][N] = x[M][K] · w[N][K]ᵀ + bias[N] (bias may be NULL) */
    void (*linear)(vs_rt_backend *be, float *y, const float *x, const float *w, const float *bias,
                   int M, int N, int K);
    /* Optional, NULL when the backend has no fused form (vs_rt_backend_linear_gelu then runs
     * linear and gelu_tanh): y = gelu_tanh(x · wᵀ + bias), as those two ops would give */
    void (*linear_gelu)(vs_rt_backend *be, float *y, const float *x, const float *w,
                        const float *bias, int M, int N, int K);
    void (*silu)(vs_rt_backend *be, float *y, const float *x, size_t n);
    void (*gelu_tanh)(vs_rt_backend *be, float *x, size_t n);           /* in place */
    void (*add)(vs_rt_backend *be, float *y, const float *x, size_t n); /* y += x */
    void (*add_bias_rows)(vs_rt_backend *be, float *y, const float *b, int M, int N);
    /* y[t] = (accumulate ? y[t] : 0) + table[idx[t]]; idx host [T] */
    void (*gather_rows)(vs_rt_backend *be, float *y, const float *table, const int32_t *idx_host,
                        int T, int C, int accumulate);
    /* y[t] = LN(x[t]) * (1 + mod[row][scale_off..]) + mod[row][shift_off..], LN without affine */
    void (*adaln)(vs_rt_backend *be, float *y, const float *x, const float *mod, int mod_stride,
                  int scale_off, int shift_off, const vs_rt_batch *b, int C, float eps);
    /* x[t] += y[t] * mod[row][gamma_off..] */
    void (*gated_add)(vs_rt_backend *be, float *x, const float *y, const float *mod, int mod_stride,
                      int gamma_off, const vs_rt_batch *b, int C);
    /* Optional, NULL when the backend has no fused form (vs_rt_backend_gated_add_adaln then runs
     * gated_add and adaln): gated_add(x, y, gmod, gmod_stride, gamma_off), then adaln(xn, x, nmod,
     * nmod_stride, scale_off, shift_off), as those two ops would give */
    void (*gated_add_adaln)(vs_rt_backend *be, float *x, const float *y, const float *gmod,
                            int gmod_stride, int gamma_off, float *xn, const float *nmod,
                            int nmod_stride, int scale_off, int shift_off, const vs_rt_batch *b,
                            int C, float eps);
    /* qkv [T][3C]: q, k L2-normalised per head (eps 1e-12), q *= exp(min(scale_mul[h], ln 100)) */
    void (*qk_norm)(vs_rt_backend *be, float *qkv, int T, int H, int d, const float *scale_mul);
    /* out[t] = softmax(q·Kᵀ·scale)·V, per head h, over the n_tokens cached tokens of
     * kv[layer * H + h] (its pages) followed by the row's n_new new tokens (K,V read from qkv);
     * rows with kv_store[r] also get their new K,V written into slots n_tokens.. of each head's
     * pages. */
    void (*attention)(vs_rt_backend *be, float *out, const float *qkv, const vs_rt_batch *b,
                      int layer, int H, int d, float scale);
    /* KV compression of one layer, where the pages live (runtime/kv_compact.h): for each job,
     * head `head` of batch row `row` keeps its plan's candidates (its view's n_tokens cached
     * slots, then the row's new tokens read from qkv [T][3C]), packed ascending into slots
     * 0..kept of its pages; cached values move unchanged, new ones are rounded as the attention's
     * page write rounds them (BF16 pages: to nearest even). plans host [n_plans], jobs host
     * [n_jobs], each (row, head) at most once; each job's view lists pages for
     * max(n_tokens, kept) slots (kvcache/ shrinks it afterwards). Nothing is copied to or from
     * the host but the plans, jobs and page ids, and the host does not wait. */
    void (*kv_compact)(vs_rt_backend *be, const float *qkv, const vs_rt_batch *b, int layer, int H,
                       int d, const vs_rt_kv_plan *plans, int n_plans, const vs_rt_kv_job *jobs,
                       int n_jobs);
    /* CFG mix into the cond rows, then top-k/top-p sampling; reqs host [n]. */
    void (*cfg_sample)(vs_rt_backend *be, float *logits, int V, const vs_rt_sample_req *reqs, int n);

    /* ---- quantiser: each op takes all the images of a scale in one call ---- */
    /* h[g][c][i] = emb[idx[g·n + i]][c] for N images of n tokens; idx host [N·n] */
    void (*embed_chw)(vs_rt_backend *be, float *h, const float *emb, const int32_t *idx_host, int N,
                      int n, int C);
    /* PyTorch bicubic (align_corners False, A = −0.75, edge clamp), planes of hi×wi → ho×wo */
    void (*upsample_bicubic)(vs_rt_backend *be, float *dst, const float *src, int planes, int hi,
                             int wi, int ho, int wo);
    /* adaptive average pooling, planes of hi×wi → ho×wo */
    void (*area_downsample)(vs_rt_backend *be, float *dst, const float *src, int planes, int hi,
                            int wi, int ho, int wo);
    /* f += (1−r)·h + r·ch */
    void (*phi_add)(vs_rt_backend *be, float *f, const float *h, const float *ch, float r, size_t n);
    /* dst[g][c][r] = src[g][r][c] for N matrices src [N][rows][cols] */
    void (*transpose)(vs_rt_backend *be, float *dst, const float *src, int N, int rows, int cols);

    /* ---- decoder ---- */
    /* y[N][cout][H][W] = conv(x[N][cin][H][W], w[cout][cin][k][k]) + b, stride 1, padding k/2;
     * the N images in one call (CUDA: one cuDNN call whatever N is) */
    void (*conv2d)(vs_rt_backend *be, float *y, const float *x, const float *w, const float *b,
                   int N, int cin, int H, int W, int cout, int k);
    /* GroupNorm with affine; then SiLU when silu != 0. x,y [N][C][HW] */
    void (*group_norm)(vs_rt_backend *be, float *y, const float *x, const float *gamma,
                       const float *beta, int N, int C, int HW, int groups, float eps, int silu);
    void (*upsample_nearest2x)(vs_rt_backend *be, float *dst, const float *src, int planes, int h,
                               int w);
    /* out[n][C][HW] = v·softmax(qᵀk/√C)ᵀ, single head over positions; qkv [N][3C][HW]; the N
     * images in one call (CUDA: three launches whatever N is) */
    void (*spatial_attention)(vs_rt_backend *be, float *out, const float *qkv, int N, int C, int HW);
    /* x = (clamp(x, −1, 1) + 1) / 2 */
    void (*to_unit)(vs_rt_backend *be, float *x, size_t n);

    /* Optional, NULL when the backend has no device (the CPU backend): fills *out with the
     * counters so far. Cheap (a copy); the engine thread reads it after steps. */
    void (*counters)(vs_rt_backend *be, vs_rt_counters *out);

    /* Optional, NULL when the KV pool's elements are floats (kv_elem_bytes 4: download/upload
     * move them as they are). Elements [elem_off, elem_off + n) of the KV arena at kv_base
     * (backend memory, kv_elem_bytes each) to / from n floats on the host, converting: the CUDA
     * backend's BF16 pages widen exactly on the way down and round to nearest even on the way
     * up (so values that came down from BF16 pages go back unchanged). kv_download is
     * synchronous like download; kv_upload may return before the copy lands, and the host
     * floats may be reused at once. Call them through vs_rt_backend_kv_download / _upload. */
    void (*kv_download)(vs_rt_backend *be, float *dst_host, const void *kv_base, size_t elem_off,
                        size_t n);
    void (*kv_upload)(vs_rt_backend *be, void *kv_base, size_t elem_off, const float *src_host,
                      size_t n);
} vs_rt_backend_ops;

struct vs_rt_backend {
    const vs_rt_backend_ops *ops;
    int threads;            /* CPU worker threads (informational for CUDA) */
    int host_memory;        /* 1 when backend memory is host memory (weights used in place) */
    const char *simd;       /* CPU: its vector path (runtime/simd.h, VARSERVE_CPU_SIMD); else NULL */
    const char *blas;       /* CPU: OpenBLAS's kernel table and who chose it (runtime/blas.h); else NULL */
    /* Bytes of one element of the KV pages this backend's attention reads and writes: 4 (FP32:
     * the CPU backend, CUDA with fp32 = 1) or 2 (BF16: CUDA's BF16 mode). The KV pool's geometry
     * takes it (kvcache/pool.h), so every page size follows from it; immutable after creation. */
    int kv_elem_bytes;
};

typedef enum { VS_RT_BACKEND_AUTO, VS_RT_BACKEND_CPU, VS_RT_BACKEND_CUDA } vs_rt_backend_kind;

/* CPU backend with `threads` workers (0 = all cores). Sets the calling thread, which must be the
 * one that runs the backend's ops, to flush subnormals to zero (runtime/fpenv.h); it stays so. */
vs_status vs_rt_backend_cpu_new(int threads, vs_rt_backend **out, vs_err *err);
/* CUDA backend on device 0; VS_ERR_UNSUPPORTED when this build or machine has none.
 * fp32 = 1: strict FP32 (no TF32) and FP32 KV pages, for parity with the CPU backend. fp32 = 0
 * (BF16 mode): BF16 KV pages (kv_elem_bytes 2; the attention's math stays FP32), and the
 * GEMM weights declared through gemm_weights() multiply in BF16 (FP32 accumulation; FP32 output
 * but into a gemm_inputs buffer, which holds BF16);
 * the decoder's convolutions declared through decoder_weights() and spatial_attention (a decoder
 * op) use TF32; everything else (the quantiser, the word embedding and any other undeclared
 * linear, norms, attention, sampling) stays strict FP32. */
vs_status vs_rt_backend_cuda_new(int fp32, vs_rt_backend **out, vs_err *err);
/* auto picks CUDA when a device is present, else CPU. CUDA starts in BF16 mode (fp32 = 0). */
vs_status vs_rt_backend_new(vs_rt_backend_kind kind, int threads, vs_rt_backend **out, vs_err *err);
/* The same with the CUDA precision chosen (fp32 as for vs_rt_backend_cuda_new); the CPU backend
 * is FP32 whatever fp32 says. */
vs_status vs_rt_backend_new_precision(vs_rt_backend_kind kind, int threads, int fp32,
                                      vs_rt_backend **out, vs_err *err);
int vs_rt_backend_parse(const char *s, vs_rt_backend_kind *out); /* 0 on success */
void vs_rt_backend_free(vs_rt_backend *be); /* NULL ok */

/* The backend's device counters into *out: 1, or 0 (and *out zeroed) when it has none. */
int vs_rt_backend_counters(vs_rt_backend *be, vs_rt_counters *out);

/* y[M][N] = gelu_tanh(x[M][K] · w[N][K]ᵀ + bias[N]): the backend's fused op when it has one. */
void vs_rt_backend_linear_gelu(vs_rt_backend *be, float *y, const float *x, const float *w,
                               const float *bias, int M, int N, int K);

/* gated_add then adaln (see gated_add_adaln): the backend's fused op when it has one. */
void vs_rt_backend_gated_add_adaln(vs_rt_backend *be, float *x, const float *y, const float *gmod,
                                   int gmod_stride, int gamma_off, float *xn, const float *nmod,
                                   int nmod_stride, int scale_off, int shift_off,
                                   const vs_rt_batch *b, int C, float eps);

/* Name of the KV element type of kv_elem_bytes: "fp32" (4) or "bf16" (2). */
const char *vs_rt_kv_dtype_name(int kv_elem_bytes);

/* KV page elements [elem_off, elem_off + n) of the arena at kv_base to / from floats on the host,
 * through the backend's kv_download / kv_upload when it has them, else download / upload (FP32
 * pages). kvcache/ stages pages only through these. */
void vs_rt_backend_kv_download(vs_rt_backend *be, float *dst_host, const void *kv_base,
                               size_t elem_off, size_t n);
void vs_rt_backend_kv_upload(vs_rt_backend *be, void *kv_base, size_t elem_off,
                             const float *src_host, size_t n);

/* Backend memory through a plain (void *ctx) signature, for allocators such as the KV pool's. */
void *vs_rt_backend_alloc_raw(void *be, size_t bytes);
void vs_rt_backend_free_raw(void *be, void *p);

#endif
