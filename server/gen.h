/* server/gen.h — run a set of images to completion: KV reservation, steps, decode.
 *
 * The synchronous driver behind `varserve generate` and `varserve bench`: every image advances one
 * scale per step in one batch, with its two rows' caches in the global pool (under any KV policy). The
 * HTTP engine loop schedules the same runtime steps continuously instead. Engine thread only. */
#ifndef VS_SRV_GEN_H
#define VS_SRV_GEN_H

#include <stdint.h>

#include "common/status.h"
#include "kvcache/policy.h"
#include "kvcache/pool.h"
#include "kvcache/session.h"
#include "kvcache/step.h"
#include "runtime/backend.h"
#include "runtime/var.h"

typedef vs_kv_image_req vs_srv_gen_req; /* label, seed, cfg, top_k, top_p */

typedef struct {
    double transformer_s; /* steps: transformer, sampling, quantiser (kv_s included) */
    double kv_s;          /* of which KV bookkeeping and compression (kvcache/step hooks) */
    double decode_s;      /* VQ-VAE decoder */
    int steps;            /* engine steps run (one per scale) */
    int have_device;      /* 1 when the backend counts device work (ops->counters) */
    /* the device work of the steps (not the decoder): each counter's increase over them;
     * allocated_bytes and allocated_peak_bytes as they stand after them. Zero without a device. */
    vs_rt_counters device;
    /* the decode of the batch: launches, syncs and bytes each way (increases; zero without one) */
    vs_rt_counters decode_device;
} vs_srv_gen_times;

/* Pages one image needs at its peak with every layer holding every token (VS_KV_ROWS_PER_IMAGE
 * rows × depth layers × L tokens): the no-hooks bound, above the full policy's peak. */
size_t vs_srv_full_cache_pages(const vs_rt_config *c, const vs_kv_pool *pool);

/* Generates n images (n ≤ the engine's max images) with the full cache (vs_srv_gen_run_opts with
 * no options). rgb[i] host H*W*3 (may be NULL); tokens[i] host [L] (may be NULL). Errors:
 * VS_ERR_KV_FULL when the pool cannot hold the batch, else what the runtime reports. */
vs_status vs_srv_gen_run(vs_rt_engine *e, vs_kv_pool *pool, const vs_srv_gen_req *reqs, int n,
                         uint8_t *const *rgb, int32_t *const *tokens, vs_srv_gen_times *times,
                         vs_err *err);

typedef struct {
    const vs_kv_policy *policy; /* NULL: full cache */
    vs_kv_attn_stats *stats;    /* NULL: none (calibration collects attention statistics) */
    float *const *unit;         /* NULL, or host [n] pointers to 3*H*W floats in [0,1] */
    size_t peak_pages_per_image; /* out: pages reserved per image */
    float *const *logits;        /* NULL, or host [n] pointers to [L][V]: every scale's guided logits */
    const int32_t *const *forced_tokens; /* NULL, or host [n] pointers to [L]: teacher forcing
                                          * (vs_rt_image.forced_tokens) */
} vs_srv_gen_opts;

/* The same with KV pages managed per layer by kvcache/step (policy compression, per-layer growth,
 * release after the last scale), so each image reserves only the policy's true peak. The images
 * run through kvcache/session, as the engine loop's do. */
vs_status vs_srv_gen_run_opts(vs_rt_engine *e, vs_kv_pool *pool, const vs_srv_gen_req *reqs, int n,
                              uint8_t *const *rgb, int32_t *const *tokens, vs_srv_gen_times *times,
                              vs_srv_gen_opts *opts, vs_err *err);

#endif
