/* server/stream.h — streamed generation (`stream: true` on POST /generate and on POST
 * /v1/images/generations): a text/event-stream response carrying up to partial_images previews
 * of each image, decoded from its running f_hat at scales spread over the schedule, then the
 * image itself; each event names the image index and the scales done.
 *
 * Design: the engine never waits for a client and never encodes. Before the job is pushed, the
 * stream allocates every preview buffer the request can need, so the engine only decodes into
 * one (vs_rt_decode_preview) and pushes a small event (image, preview index, scale) under the
 * stream's mutex. The connection's libmicrohttpd content reader pops events, encodes PNG and
 * base64 and writes the SSE frames. With nothing to send it parks: it suspends its connection
 * (libmicrohttpd allows that from a content reader) with the mutex held, and the engine's next
 * push, or its answer, resumes it.
 *
 * Ownership: the stream owns its job. The engine hands the job back by answering it as any job
 * (state DONE, then notify: vs_srv_stream_notify, which marks the stream answered under the
 * mutex; that unlock is the engine's last touch). The HTTP side lets go in the connection's
 * completion (vs_srv_stream_release): it frees the stream when it was answered, else marks the
 * job gone, and the engine's sweep drops it (499) and its notify frees it. A client that hangs up
 * while the engine runs its images is noticed by the sweep (its socket's POLLRDHUP, as for any
 * job) and its pages return to the pool.
 *
 * Threads: new, respond, release and bytes on the connection's HTTP thread; preview_rgb,
 * push_preview, push_image and notify on the engine thread. */
#ifndef VS_SRV_STREAM_H
#define VS_SRV_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "runtime/model.h"
#include "server/api.h"
#include "server/job.h"
#include "server/metrics.h"

struct MHD_Connection;
typedef struct vs_srv_stream vs_srv_stream;

/* Previews an image gets for partial_images p on a schedule of n_scales scales: p, at most
 * n_scales − 1 (one per scale before the last). */
int vs_srv_stream_previews(int n_scales, int partial_images);
/* Scales done after which preview k (0..previews−1) is decoded: spread evenly, strictly rising,
 * each in 1..n_scales − 1 (e.g. 10 scales, 3 previews: after 2, 5 and 7). */
int vs_srv_stream_preview_after(int n_scales, int previews, int k);

/* A stream for job j (filled and validated, p.stream set, not pushed yet): takes ownership of j
 * and points j->stream, notify and notify_ctx at itself. mc and met (where its PNG encodes are
 * observed) outlive it. Errors: VS_ERR_NOMEM (j is then still the caller's). */
vs_status vs_srv_stream_new(vs_srv_job *j, vs_srv_api_style style, const vs_rt_config *mc,
                            vs_srv_metrics *met, vs_srv_stream **out, vs_err *err);

/* Queues the 200 text/event-stream response on c (the access handler's call with the whole
 * body), before the job is pushed. The MHD_Result of MHD_queue_response, as an int. */
int vs_srv_stream_respond(vs_srv_stream *s, struct MHD_Connection *c, const char *request_id);

/* Engine: the buffer preview k of image `index` is decoded into (image_size² × 3 bytes). */
uint8_t *vs_srv_stream_preview_rgb(vs_srv_stream *s, int index, int k);
/* Engine: preview k of image `index` (after `scale` scales) is in its buffer; send it. */
void vs_srv_stream_push_preview(vs_srv_stream *s, int index, int k, int scale);
/* Engine: image `index` is finished in j->rgb[index]; send it. */
void vs_srv_stream_push_image(vs_srv_stream *s, int index);
/* Engine: the job's notify, after it was answered (DONE published). Frees the stream if its
 * connection is gone already. */
void vs_srv_stream_notify(void *stream);

/* Response body bytes written so far (the access log). */
size_t vs_srv_stream_bytes(const vs_srv_stream *s);
/* The connection completed: frees the stream and its job, or, while the engine still holds the
 * job, marks it gone and leaves the freeing to vs_srv_stream_notify. NULL ok. */
void vs_srv_stream_release(vs_srv_stream *s);

#endif
