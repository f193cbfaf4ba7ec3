/* runtime/var.h — the VAR engine: one model resident on one backend, advancing many images.
 *
 * Design: an image is two rows (conditional and unconditional for guidance), each with its own KV
 * cache seen through a paged view that kvcache/ maintains. vs_rt_step advances every given image
 * by one scale in ONE ragged batch: all tokens of all rows in one GEMM per linear layer, attention
 * per row over its own pages, then guidance, sampling (counter-based RNG keyed by the image's
 * seed), and the quantiser, which updates the image's f_hat and its next input. Images in one step
 * may be at different scales. vs_rt_decode turns finished images into pixels, batched.
 *
 * Threads: an engine and its images belong to the thread that created them (the engine thread). */
#ifndef VS_RT_VAR_H
#define VS_RT_VAR_H

#include <stdint.h>

#include "common/status.h"
#include "runtime/backend.h"
#include "runtime/model.h"

typedef struct vs_rt_engine vs_rt_engine;

/* Per-layer hooks around attention, passed to vs_rt_step by whoever owns the KV pages (kvcache/):
 * before_attn decides, per row, whether the attention op stores the new tokens in the pages
 * (b->kv_store[r] stays 1: the hook must make room for them in `layer`) or leaves them in qkv only
 * (the hook clears kv_store[r]: the row will be compressed or dropped). after_attn sees the
 * normalised qkv [T][3C] (backend memory): it commits the stored tokens, or selects what the layer
 * keeps from its cached tokens plus the new ones, or releases the layer. A failing hook aborts the
 * step (the images in it are then unusable). Without hooks every row stores: the caller reserves
 * every layer before the step and commits after it. */
typedef struct {
    void *ctx;
    vs_status (*before_attn)(void *ctx, int layer, const vs_rt_batch *b, vs_err *err);
    vs_status (*after_attn)(void *ctx, int layer, const vs_rt_batch *b, const float *qkv,
                            vs_err *err);
} vs_rt_hooks;

typedef struct {
    /* request (set by the caller before the first step) */
    int label;             /* class index 0..num_classes-1 */
    uint64_t seed;
    float cfg;             /* guidance scale */
    int top_k;             /* 0 = off */
    float top_p;           /* 0 = off */
    const vs_rt_kv_head *kv[2]; /* cond, uncond rows: [depth][heads] views from kvcache/, kept current */
    float *guided_logits;  /* optional host [p_s²][V]: receives the guided logits of each step */
    /* optional host [L]: teacher forcing. Each step still computes (and samples from) the logits,
     * then takes these tokens for its scale instead of the drawn ones, so two runs (two backends,
     * two precisions) can be compared scale by scale on identical inputs. */
    const int32_t *forced_tokens;
    /* state (engine-owned) */
    int scale;             /* next scale to compute; n_scales when the tokens are complete */
    int32_t *tokens;       /* host [L]: the tokens of every scale done, in scale order */
    float *f_hat;          /* backend [Cvae][P][P] */
    float *next_in;        /* backend [p_s²][Cvae]: word input of the next scale */
} vs_rt_image;

/* max_images bounds one step's batch (and sizes scratch once). The model must outlive the engine.
 * Errors: VS_ERR_NOMEM (host or device), VS_ERR_INVALID. */
vs_status vs_rt_engine_new(const vs_rt_model *m, vs_rt_backend *be, int max_images,
                           vs_rt_engine **out, vs_err *err);
void vs_rt_engine_free(vs_rt_engine *e); /* NULL ok */
const vs_rt_model *vs_rt_engine_model(const vs_rt_engine *e);
vs_rt_backend *vs_rt_engine_backend(const vs_rt_engine *e);
int vs_rt_engine_max_images(const vs_rt_engine *e);

/* Where the KV pages live: the pool arena (backend memory) and tokens per page. */
void vs_rt_engine_set_kv(vs_rt_engine *e, float *kv_base, int page_tokens);

/* Allocates the image's state; request fields are left to the caller. */
vs_status vs_rt_image_init(vs_rt_engine *e, vs_rt_image *img, vs_err *err);
void vs_rt_image_free(vs_rt_engine *e, vs_rt_image *img); /* zeroed or freed ok */

/* Advances each image by one scale (images must not be finished). hooks: the KV side of this
 * step (read during the call only), or NULL: then the caller has made room for p_s² new tokens in
 * every layer of both rows and commits them afterwards. */
vs_status vs_rt_step(vs_rt_engine *e, vs_rt_image *const *imgs, int n, const vs_rt_hooks *hooks,
                     vs_err *err);

/* Runs the quantiser alone over given tokens (all scales): the decoder-only path. */
vs_status vs_rt_image_set_tokens(vs_rt_engine *e, vs_rt_image *img, const int32_t *tokens, vs_err *err);

/* Decodes finished images. rgb: host [n] pointers to H*W*3 bytes (may be NULL); unit: host [n]
 * pointers to 3*H*W floats in [0,1] before rounding (may be NULL). */
vs_status vs_rt_decode(vs_rt_engine *e, vs_rt_image *const *imgs, int n, uint8_t *const *rgb,
                       float *const *unit, vs_err *err);

/* Decodes the f_hat of one image at any scale >= 1: the sum of the scales done so far, a coarser
 * picture of the final image (the streamed previews). rgb: host H*W*3 bytes.
 * Errors: VS_ERR_INVALID (no scale done yet), the decoder's. */
vs_status vs_rt_decode_preview(vs_rt_engine *e, const vs_rt_image *img, uint8_t *rgb, vs_err *err);

/* f_hat of an image to host [Cvae][P][P]. */
void vs_rt_image_fhat(vs_rt_engine *e, const vs_rt_image *img, float *host);

/* Guidance factor at scale s: cfg · s / (S − 1). */
float vs_rt_guidance(const vs_rt_config *c, float cfg, int s);

#endif
