/* server/engine.h — the engine thread: one thread owns the model, the backend, the KV pool and
 * the runtime engine, and runs generation for every request.
 *
 * Design: continuous batching at scale granularity. Each image of a request is admitted on its
 * own, when the batch has room (max_batch_images) and the KV pool can reserve its peak pages
 * under the request's KV policy (vs_kv_policy_peak_pages_per_row; full cache: every token); one
 * vs_rt_step then advances every running image by one scale in one ragged batch, so a new request
 * joins at the next step while others are at later scales. kvcache/step's hooks give each row's
 * layer pages for its new tokens before the attention when it keeps them all, or select what it
 * keeps from its cached plus new tokens after it, row by row with its own policy (kvcache/step.h).
 * Finished images are decoded on this thread; PNG encoding happens on the HTTP side.
 * Between steps the engine drops jobs whose deadline passed (504) or whose client hung up, and
 * returns their pages. Results go back through the job (job.h) and its notify callback.
 *
 * Threads: vs_srv_engine_start/stop from the main thread; info from any thread once loaded;
 * abort from any thread. Everything else lives on the engine thread. */
#ifndef VS_SRV_ENGINE_H
#define VS_SRV_ENGINE_H

#include <stddef.h>

#include "common/status.h"
#include "config/config.h"
#include "runtime/model.h"
#include "server/metrics.h"
#include "server/queue.h"

typedef struct vs_srv_engine vs_srv_engine;

/* What other threads may know about the loaded engine. Immutable once published. */
typedef struct {
    const char *family;      /* "var" (class-conditional) or "infinity" (text-to-image): static */
    const vs_rt_config *mc;  /* the model's config, valid until vs_srv_engine_stop; for Infinity
                              * its shape as VAR's fields say it (scales, tokens, image size; no
                              * classes; vocab_size 2: each bit is one of two) */
    char model_path[512];
    char model_name[128];    /* file name without directory and extension */
    size_t n_params;
    char backend[16];
    int threads;
    char simd[16];           /* the CPU backend's vector path, else "" */
    char blas[160];          /* the CPU backend's OpenBLAS kernel table (runtime/blas.h), else "" */
    double load_s;
    /* request defaults: the model file's when it stores them, else the server config's */
    double cfg;
    int top_k;
    double top_p;
    double tau;                  /* Infinity's default temperature (0 for VAR) */
    /* KV: the default policy of requests, and the pool */
    const char *policy;          /* its name */
    int kv_policy;               /* its vs_kv_policy_kind */
    double kv_budget;            /* default budget of compressing policies */
    char policy_source[512];     /* scalekv: "default" or the budget file */
    size_t page_bytes, pages_total;
    const char *kv_dtype;        /* the pages' element type: "fp32" or "bf16" (static string) */
    size_t pages_per_image;      /* peak of one image under the default policy */
    size_t full_pages_per_image; /* peak of one image with the full cache */
    size_t images_fit;           /* images the pool holds at once under the default policy */
    int max_batch_images;
} vs_srv_engine_info;

/* Starts the engine thread, which loads the model (see vs_srv_engine_wait_loaded). cfg, q and m
 * must outlive the engine. Errors: VS_ERR_NOMEM, VS_ERR_INTERNAL (thread creation). */
vs_status vs_srv_engine_start(const vs_cfg *cfg, vs_srv_queue *q, vs_srv_metrics *m,
                              vs_srv_engine **out, vs_err *err);

/* Waits up to timeout_s for loading to end: 1 loaded, 0 still loading, -1 failed (err says why). */
int vs_srv_engine_wait_loaded(vs_srv_engine *e, double timeout_s, vs_err *err);

/* NULL until the model is loaded. */
const vs_srv_engine_info *vs_srv_engine_info_get(vs_srv_engine *e);

/* Jobs the engine holds (admitted or waiting for pages), not yet answered. */
int vs_srv_engine_jobs(vs_srv_engine *e);

/* NULL while the device works; once the backend has reported VS_ERR_DEVICE_LOST, why (the
 * backend's message; immutable from then on). The engine then answers every job 503 and never
 * generates again: only a restart helps. Any thread. */
const char *vs_srv_engine_lost(vs_srv_engine *e);

/* From now on every queued and running job, and every job pushed later, is answered 503
 * (shutting down). Closes the queue. */
void vs_srv_engine_abort(vs_srv_engine *e);

/* Stops the thread (after answering any job left with 503), frees the model, backend and pool,
 * joins, frees e. NULL ok. The HTTP server must be stopped first (info points into the model). */
void vs_srv_engine_stop(vs_srv_engine *e);

#endif
