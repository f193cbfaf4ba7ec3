/* server/http.h — the HTTP front end on libmicrohttpd: routing, POST /generate admission, the
 * health, readiness, info and metrics endpoints, responses and the access log.
 *
 * Design: libmicrohttpd runs its own thread pool (epoll, MHD_OPTION_THREAD_POOL_SIZE) with
 * suspend/resume. A /generate handler parses and validates the body, reserves a queue slot,
 * suspends the connection, pushes the job and returns; it never waits for the engine. The engine
 * resumes the connection when the job is answered, and the handler, called again, encodes the
 * PNGs and replies on an HTTP thread. Early rejections (401, 404, 405, 413, 415, 503) are decided
 * on the first call and sent once the body has been read and thrown away (bounded), so the
 * connection stays open (keep-alive, pipelining) and a client that sends its body first reads
 * them; framing errors (conflicting lengths, an unknown Transfer-Encoding) are answered at once
 * and close. Slow clients: a reaper thread closes connections whose request has not arrived
 * within request_timeout_s; the optional health_port listener (its own libmicrohttpd daemon and
 * thread) serves /health, /ready and /metrics when the main port's connections are used up.
 * Retry storms: a 429 for a full queue is held queue_full_delay_ms (the connection suspended, the
 * reaper resuming it), so clients that ignore Retry-After cannot spend the engine's cores on
 * thousands of refusals a second.
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

/* Opens the port (and health_port when set) and starts serving. cfg, q, m and e must outlive
 * the server. Errors: VS_ERR_INVALID for what the configuration can fix (host does not resolve or
 * is not local, port in use or privileged: the message names the key), VS_ERR_IO otherwise. */
vs_status vs_srv_http_start(const vs_cfg *cfg, vs_srv_queue *q, vs_srv_metrics *m, vs_srv_engine *e,
                            vs_srv_http **out, vs_err *err);

/* The port actually bound (useful with port 0); the health listener's, 0 when none. */
int vs_srv_http_port(const vs_srv_http *h);
int vs_srv_http_health_port(const vs_srv_http *h);

/* From now on /ready and new POST /generate answer 503; 429s held by queue_full_delay_ms go out now. */
void vs_srv_http_drain(vs_srv_http *h);

/* Accepted /generate requests whose connection has not completed yet (queued, running, or their
 * response still being sent). */
long vs_srv_http_live_jobs(vs_srv_http *h);

/* Stops libmicrohttpd (closing idle connections) and frees h. NULL ok. Every job must have been
 * answered first: a suspended connection keeps its job. */
void vs_srv_http_stop(vs_srv_http *h);

#endif
