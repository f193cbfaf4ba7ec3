/* server/http.h — the HTTP front end on libmicrohttpd: routing, POST /generate admission, the
 * health, readiness, info and metrics endpoints, responses and the access log.
 *
 * Design: libmicrohttpd runs its own thread pool (epoll, MHD_OPTION_THREAD_POOL_SIZE) with
 * suspend/resume. A /generate handler parses and validates the body, reserves a queue slot,
 * suspends the connection, pushes the job and returns; it never waits for the engine. The engine
 * resumes the connection when the job is answered, and the handler, called again, encodes the
 * PNGs and replies on an HTTP thread. Early rejections (401, 404, 405, 413, 415, 503) happen on
 * the first call, before the body is read.
 *
 * Threads: start/stop/port from the main thread; drain/live_jobs from any thread. */
#ifndef VS_SRV_HTTP_H
#define VS_SRV_HTTP_H

#include "common/status.h"
#include "config/config.h"
#include "server/engine.h"
#include "server/metrics.h"
#include "server/queue.h"

typedef struct vs_srv_http vs_srv_http;

/* Opens the port and starts serving. cfg, q, m and e must outlive the server.
 * Errors: VS_ERR_INVALID (host), VS_ERR_IO (the port cannot be opened; the message says why). */
vs_status vs_srv_http_start(const vs_cfg *cfg, vs_srv_queue *q, vs_srv_metrics *m, vs_srv_engine *e,
                            vs_srv_http **out, vs_err *err);

/* The port actually bound (useful with port 0). */
int vs_srv_http_port(const vs_srv_http *h);

/* From now on /ready and new POST /generate answer 503. */
void vs_srv_http_drain(vs_srv_http *h);

/* Accepted /generate requests whose connection has not completed yet (queued, running, or their
 * response still being sent). */
long vs_srv_http_live_jobs(vs_srv_http *h);

/* Stops libmicrohttpd (closing idle connections) and frees h. NULL ok. Every job must have been
 * answered first: a suspended connection keeps its job. */
void vs_srv_http_stop(vs_srv_http *h);

#endif
