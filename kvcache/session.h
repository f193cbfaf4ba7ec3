/* kvcache/session.h — the image session: what one image holds while it is generated, and the KV
 * side of a step over a set of them. The engine loop (server/engine.c) and the CLI's synchronous
 * driver (server/gen.c) both run images through this, so the reservation, the rows, the
 * vs_kv_step tables and the hooks are built in one place.
 *
 * An image (vs_kv_image) owns its reservation of its policy's peak pages (vs_kv_policy_peak_pages_per_image), its
 * VS_KV_ROWS_PER_IMAGE rows (cond, uncond) drawing from it, and its runtime state (vs_rt_image).
 * Its life: vs_kv_image_reserve (OK / LATER / NEVER, as vs_kv_reserve), vs_kv_image_start (state,
 * rows, request fields), any number of vs_kv_session_step, vs_kv_session_decode once finished, and
 * vs_kv_image_end, which returns every page to the pool.
 *
 * A session (vs_kv_session) is the batch-level part, made once per engine and pool: the KV tables
 * of one step (each row's cache, scale and policy, in the runtime's row order: image i's rows are
 * 2i, 2i+1), the host scratch of kvcache/step, and the hooks it passes to vs_rt_step. Creating it
 * points the engine at the pool's pages (vs_rt_engine_set_kv). Engine thread only. */
#ifndef VS_KV_SESSION_H
#define VS_KV_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "kvcache/policy.h"
#include "kvcache/pool.h"
#include "kvcache/step.h"
#include "runtime/var.h"

/* Rows per image: VS_KV_ROWS_PER_IMAGE (kvcache/policy.h). */

/* The request fields of one image (copied into its vs_rt_image). */
typedef struct {
    int label;
    uint64_t seed;
    float cfg;
    int top_k;
    float top_p;
} vs_kv_image_req;

typedef struct {
    vs_rt_image img;                        /* runtime state; the caller may set guided_logits and
                                             * forced_tokens before a step */
    const vs_kv_policy *policy;             /* every row's; not owned */
    vs_kv_resv *resv;                       /* this image's pages (all its rows) */
    vs_kv_row *rows[VS_KV_ROWS_PER_IMAGE];  /* cond, uncond */
    size_t pages;                           /* reserved: vs_kv_policy_peak_pages_per_image(policy, page tokens) */
} vs_kv_image;

typedef struct vs_kv_session vs_kv_session;


/* A session for steps of up to max_images images of engine e over pool (both outlive it).
 * Errors: VS_ERR_INVALID (max_images < 1), VS_ERR_NOMEM. */
vs_status vs_kv_session_new(vs_rt_engine *e, vs_kv_pool *pool, int max_images, vs_kv_session **out,
                            vs_err *err);
void vs_kv_session_free(vs_kv_session *s); /* NULL ok; images are the caller's to end first */

/* Clears *im and reserves its pages under pol (not NULL); the answer of vs_kv_reserve. On OK the
 * image holds the reservation (end it with vs_kv_image_end); otherwise it holds nothing. */
vs_kv_admit vs_kv_image_reserve(vs_kv_session *s, vs_kv_image *im, const vs_kv_policy *pol);

/* After a reservation: the image's state at scale 0, its rows, and req's fields. On an error the
 * image is left for vs_kv_image_end. Errors: VS_ERR_NOMEM. */
vs_status vs_kv_image_start(vs_kv_session *s, vs_kv_image *im, const vs_kv_image_req *req,
                            vs_err *err);

/* Returns every page of the image to the pool and frees its state; *im is zeroed. Zeroed ok. */
void vs_kv_image_end(vs_kv_session *s, vs_kv_image *im);

/* Advances n images (1..max_images, none finished, scales may differ) by one scale: builds the
 * step's KV tables from the images' rows, scales and policies and calls vs_rt_step with
 * kvcache/step's hooks. stats: NULL, or attention statistics to accumulate (calibration).
 * *kv_s (may be NULL): the seconds this step spent in the hooks. Errors: what vs_rt_step
 * reports. */
vs_status vs_kv_session_step(vs_kv_session *s, vs_kv_image *const *ims, int n,
                             vs_kv_attn_stats *stats, double *kv_s, vs_err *err);

/* Decodes n finished images (1..max_images): vs_rt_decode over their states. */
vs_status vs_kv_session_decode(vs_kv_session *s, vs_kv_image *const *ims, int n, uint8_t *const *rgb,
                               float *const *unit, vs_err *err);

#endif
