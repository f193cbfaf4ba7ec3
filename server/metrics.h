/* server/metrics.h — the daemon's Prometheus metrics (text format 0.0.4), all prefixed varserve_.
 * The names are defined once, in vs_srv_metrics_render (metrics.c); README.md, deploy/ and
 * tests/test_prometheus.py depend on them (docs/ARCHITECTURE.md, "Where each fact lives").
 *
 * Design: one mutex guards every counter, gauge and histogram. Updates are rare (per request, per
 * step), never on a per-token path, so a lock is simpler than atomics and gives a scrape a
 * consistent view. The engine publishes the KV pool's numbers here after it changes the pool, so
 * the pool itself is never read from an HTTP thread.
 *
 * Threads: every function may be called from any thread once vs_srv_metrics_new returned. */
#ifndef VS_SRV_METRICS_H
#define VS_SRV_METRICS_H

#include <stddef.h>

#include "common/status.h"
#include "kvcache/pool.h"
#include "runtime/backend.h"

typedef struct vs_srv_metrics vs_srv_metrics;

typedef enum {
    VS_SRV_H_QUEUE = 0, /* queue_seconds: arrival to the first image admitted */
    VS_SRV_H_INFER,     /* inference_seconds: first image admitted to the last decoded */
    VS_SRV_H_REQUEST,   /* request_seconds: POST /generate arrival to response, every code */
    VS_SRV_H_PNG,       /* png_encode_seconds: one image */
    VS_SRV_H_PREVIEW,   /* preview_decode_seconds: one streamed preview decoded (engine thread) */
    VS_SRV_H_COUNT
} vs_srv_hist;

vs_status vs_srv_metrics_new(vs_srv_metrics **out, vs_err *err);
void vs_srv_metrics_free(vs_srv_metrics *m); /* NULL ok */

/* After the model is loaded (engine thread): build_info labels, load time, scale count. */
void vs_srv_metrics_set_model(vs_srv_metrics *m, const char *version, const char *backend,
                              const char *model, double load_seconds, int n_scales);

void vs_srv_metrics_request(vs_srv_metrics *m, int http_code); /* requests_total{code} */
void vs_srv_metrics_images(vs_srv_metrics *m, int n);           /* images_generated_total */
/* images_generated_total and kv_policy_images_total{policy} (policy: a vs_kv_policy_kind) */
void vs_srv_metrics_images_policy(vs_srv_metrics *m, int policy, int n);
void vs_srv_metrics_observe(vs_srv_metrics *m, vs_srv_hist h, double value);
/* One engine step: the largest scale index in it, its wall time and its rows. */
void vs_srv_metrics_step(vs_srv_metrics *m, int scale, double seconds, double kv_seconds, int rows);
/* The pool's counters, and per KV policy the images running and the pages they reserved (held or
 * promised); published together, so one scrape sees them consistent: the reserved pages of all
 * policies sum to the pool's used + reserved pages. */
void vs_srv_metrics_kv(vs_srv_metrics *m, const vs_kv_stats *s, const int *images_by_policy,
                       const size_t *pages_by_policy);
void vs_srv_metrics_kv_refused(vs_srv_metrics *m);
/* The backend's device counters as they stand (vs_rt_backend_counters: all zero on a backend
 * without a device, so the series exist on every build). Engine thread, after steps. */
void vs_srv_metrics_device(vs_srv_metrics *m, const vs_rt_counters *c);
/* Jobs the engine holds: running (an image admitted) and waiting for pages (none admitted). */
void vs_srv_metrics_engine_jobs(vs_srv_metrics *m, int running, int waiting);

/* Mean inference seconds of the requests served so far (0 before the first). */
double vs_srv_metrics_mean_inference(vs_srv_metrics *m);
/* KV bytes held or promised to running jobs, as last published. */
size_t vs_srv_metrics_kv_used_bytes(vs_srv_metrics *m);

/* The exposition text; queued = requests in the queue now. Caller frees; NULL on no memory. */
char *vs_srv_metrics_render(vs_srv_metrics *m, size_t queued, size_t *len);

#endif
