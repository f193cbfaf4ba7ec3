/* server/stream.c — see stream.h.
 *
 * The reader (libmicrohttpd's content reader callback of this connection) sends one SSE frame at
 * a time from `out`: when it is empty it takes the next event (encoding its PNG on this HTTP
 * thread), or, once the engine answered and every event is sent, the last frame (native: `done`
 * with the timings, or `error`; OpenAI: `error` only, the stream just ends), then ends the
 * response. Frames:
 *   native   event: preview  {"index","seed","scale","scales","partial_image_index","b64_json"}
 *            event: image    {"index","seed","scale","scales","b64_json"}
 *            event: done     {"id","n","seeds","previews","timings"}
 *   OpenAI   event: image_generation.partial_image / image_generation.completed (openai.c)
 *   both     event: error    {"error": {"message","type","param","code"}}  (the SDKs throw it) */
#include "server/stream.h"

#include <inttypes.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "server/metrics.h"
#include "server/openai.h"
#include "server/png.h"

#define MAX_PREVIEWS 3 /* partial_images' upper bound (api.c) */

typedef struct {
    int index, k, scale; /* k: preview index, -1 for the finished image */
} event;

struct vs_srv_stream {
    /* immutable after new */
    vs_srv_job *job;
    vs_srv_api_style style;
    const vs_rt_config *mc;
    vs_srv_metrics *met;          /* png_encode_seconds: the stream's encodes count as any */
    int previews;                 /* per image */
    uint8_t *rgb;                 /* [n][previews][image_size²·3] preview buffers */
    size_t img_bytes;
    struct MHD_Connection *c;     /* set by respond */

    pthread_mutex_t mu;
    /* guarded by mu */
    event ev[VS_SRV_MAX_N * (MAX_PREVIEWS + 1)];
    int n_pushed;
    int parked;                   /* the reader suspended the connection */
    int answered;                 /* the engine's notify ran: the job is the HTTP side's again */
    int orphaned;                 /* the connection completed first */

    /* the reader's (HTTP thread) */
    int n_read, ended;
    char *out;
    size_t out_len, out_off, sent;
};

int vs_srv_stream_previews(int n_scales, int partial_images)
{
    int most = n_scales - 1;
    return partial_images < most ? partial_images : most > 0 ? most : 0;
}

int vs_srv_stream_preview_after(int n_scales, int previews, int k)
{
    /* floor((k+1)·S/(p+1)) rises strictly when p < S, and stays in 1..S−1 */
    return (k + 1) * n_scales / (previews + 1);
}

vs_status vs_srv_stream_new(vs_srv_job *j, vs_srv_api_style style, const vs_rt_config *mc,
                            vs_srv_metrics *met, vs_srv_stream **out, vs_err *err)
{
    vs_srv_stream *s = calloc(1, sizeof *s);
    if (!s)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory for a stream");
    s->job = j;
    s->style = style;
    s->mc = mc;
    s->met = met;
    s->previews = vs_srv_stream_previews(mc->n_scales, j->p.partial_images);
    s->img_bytes = (size_t)mc->image_size * (size_t)mc->image_size * 3;
    int previews = s->previews;
    if (previews && !(s->rgb = malloc(s->img_bytes * (size_t)previews * (size_t)j->p.n))) {
        free(s);
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory for %d previews of %d images", previews, j->p.n);
    }
    pthread_mutex_init(&s->mu, NULL);
    j->stream = s;
    j->notify = vs_srv_stream_notify;
    j->notify_ctx = s;
    *out = s;
    return VS_OK;
}

static void stream_free(vs_srv_stream *s)
{
    vs_srv_job_free(s->job);
    pthread_mutex_destroy(&s->mu);
    free(s->rgb);
    free(s->out);
    free(s);
}

/* ---- the engine side ------------------------------------------------------------------------------ */

uint8_t *vs_srv_stream_preview_rgb(vs_srv_stream *s, int index, int k)
{
    return s->rgb + ((size_t)index * (size_t)s->previews + (size_t)k) * s->img_bytes;
}

static void push(vs_srv_stream *s, int index, int k, int scale)
{
    pthread_mutex_lock(&s->mu);
    if (s->n_pushed < (int)(sizeof s->ev / sizeof s->ev[0]))
        s->ev[s->n_pushed++] = (event){index, k, scale};
    if (s->parked) {
        s->parked = 0;
        MHD_resume_connection(s->c);
    }
    pthread_mutex_unlock(&s->mu);
}

void vs_srv_stream_push_preview(vs_srv_stream *s, int index, int k, int scale) { push(s, index, k, scale); }

void vs_srv_stream_push_image(vs_srv_stream *s, int index) { push(s, index, -1, s->mc->n_scales); }

void vs_srv_stream_notify(void *stream)
{
    vs_srv_stream *s = stream;
    pthread_mutex_lock(&s->mu);
    s->answered = 1;
    int orphaned = s->orphaned;
    if (s->parked) {
        s->parked = 0;
        MHD_resume_connection(s->c);
    }
    pthread_mutex_unlock(&s->mu);
    if (orphaned)
        stream_free(s);
}

/* ---- the HTTP side ---------------------------------------------------------------------------------- */

static void frame_error(vs_srv_buf *b, const vs_srv_api_error *e)
{
    size_t n = 0;
    char *body = vs_srv_api_error_json(e, &n);
    vs_srv_buf_printf(b, "event: error\ndata: %s\n", body ? body : "{}\n");
    free(body);
}

/* The frame of one event into b (an error frame when its PNG cannot be encoded). */
static void frame_event(vs_srv_stream *s, const event *ev, vs_srv_buf *b)
{
    const vs_srv_job *j = s->job;
    const uint8_t *rgb = ev->k >= 0 ? vs_srv_stream_preview_rgb(s, ev->index, ev->k) : j->rgb[ev->index];
    unsigned char *png = NULL;
    size_t png_len = 0;
    vs_err err = {0};
    double t0 = vs_now_s();
    vs_status pst = ev->k >= 0 ? vs_srv_png_encode_preview(rgb, s->mc->image_size, s->mc->image_size, &png, &png_len, &err)
                               : vs_srv_png_encode(rgb, s->mc->image_size, s->mc->image_size, &png, &png_len, &err);
    if (pst != VS_OK) {
        vs_srv_api_error e;
        vs_srv_api_error_set(&e, 500, "internal_error", "png_error", NULL, "%s", err.msg);
        frame_error(b, &e);
        return;
    }
    vs_srv_metrics_observe(s->met, VS_SRV_H_PNG, vs_now_s() - t0);
    if (s->style == VS_SRV_API_OPENAI) {
        vs_srv_openai_event(b, j, s->mc, ev->index, ev->k, ev->scale, png, png_len);
    } else {
        vs_srv_buf_reserve(b, (png_len + 2) / 3 * 4 + 256);
        vs_srv_buf_printf(b, "event: %s\ndata: {\"index\":%d,\"seed\":%" PRIu64 ",\"scale\":%d,\"scales\":%d,",
                          ev->k >= 0 ? "preview" : "image", ev->index, j->p.seed + (uint64_t)ev->index, ev->scale,
                          s->mc->n_scales);
        if (ev->k >= 0)
            vs_srv_buf_printf(b, "\"partial_image_index\":%d,", ev->k);
        vs_srv_buf_printf(b, "\"b64_json\":\"");
        vs_srv_buf_b64(b, png, png_len);
        vs_srv_buf_printf(b, "\"}\n\n");
    }
    free(png);
}

/* The last frame, once the job is answered: an error, or (native) the summary. */
static void frame_end(vs_srv_stream *s, vs_srv_buf *b)
{
    const vs_srv_job *j = s->job;
    if (j->http != 200) {
        vs_srv_api_error e = {j->http, j->err_type ? j->err_type : "internal_error",
                              j->err_code ? j->err_code : "internal", "", ""};
        snprintf(e.msg, sizeof e.msg, "%s", j->msg);
        frame_error(b, &e);
        return;
    }
    if (s->style == VS_SRV_API_OPENAI)
        return;
    vs_srv_buf_printf(b, "event: done\ndata: {\"id\":\"%s\",\"n\":%d,\"seeds\":[", j->id, j->p.n);
    for (int i = 0; i < j->p.n; i++)
        vs_srv_buf_printf(b, "%s%" PRIu64, i ? "," : "", j->p.seed + (uint64_t)i);
    vs_srv_buf_printf(b,
                      "],\"previews\":%d,\"timings\":{\"queue_ms\":%.3f,\"inference_ms\":%.3f,\"decode_ms\":%.3f,"
                      "\"total_ms\":%.3f}}\n\n",
                      s->previews * j->p.n, (j->t_admit - j->t_arrival) * 1e3,
                      (j->t_done - j->t_admit - j->decode_s) * 1e3, j->decode_s * 1e3,
                      (j->t_done - j->t_arrival) * 1e3);
}

static ssize_t reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    vs_srv_stream *s = cls;
    for (;;) {
        if (s->out_off < s->out_len) {
            size_t n = s->out_len - s->out_off < max ? s->out_len - s->out_off : max;
            memcpy(buf, s->out + s->out_off, n);
            s->out_off += n;
            s->sent += n;
            return (ssize_t)n;
        }
        free(s->out);
        s->out = NULL;
        s->out_len = s->out_off = 0;
        if (s->ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&s->mu);
        int have = s->n_read < s->n_pushed, answered = s->answered;
        event ev = have ? s->ev[s->n_read++] : (event){0, 0, 0};
        if (!have && !answered) {
            /* nothing yet: the engine's next push or its answer resumes the connection */
            s->parked = 1;
            MHD_suspend_connection(s->c);
            pthread_mutex_unlock(&s->mu);
            return 0;
        }
        pthread_mutex_unlock(&s->mu);
        if (!have && s->job->http == 499)
            return MHD_CONTENT_READER_END_WITH_ERROR; /* the client is gone */
        vs_srv_buf b = {0};
        if (have) {
            frame_event(s, &ev, &b);
        } else {
            frame_end(s, &b);
            s->ended = 1;
        }
        s->out = vs_srv_buf_finish(&b, &s->out_len);
        if (b.oom)
            return MHD_CONTENT_READER_END_WITH_ERROR; /* out of memory: cut the stream */
    }
}

int vs_srv_stream_respond(vs_srv_stream *s, struct MHD_Connection *c, const char *request_id)
{
    s->c = c;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, reader, s, NULL);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no"); /* proxies: pass each event on */
    MHD_add_response_header(resp, "X-Request-Id", request_id);
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

size_t vs_srv_stream_bytes(const vs_srv_stream *s) { return s->sent; }

void vs_srv_stream_release(vs_srv_stream *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    int answered = s->answered;
    if (!answered) {
        s->orphaned = 1;
        s->parked = 0; /* the connection is gone: nothing to resume */
        atomic_store(&s->job->gone, 1);
    }
    pthread_mutex_unlock(&s->mu);
    if (answered)
        stream_free(s);
}
