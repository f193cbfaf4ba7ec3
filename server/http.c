/* server/http.c — see http.h.
 *
 * A request's life in the access handler (libmicrohttpd calls it several times per request):
 *   (on_uri)        the request is born with the raw path (an encoded NUL is refused later)
 *   first call      framing (conflicting lengths 400, Transfer-Encoding 501: answered at once,
 *                   closing), route (404/405), then for POST /generate: ready and not draining
 *                   (503), API key (401), content type (415), Content-Length (413), a full
 *                   queue (429, from one atomic load, before any body is kept). A reply made
 *                   here is held until the body has been read and thrown away (S_DRAIN), so the
 *                   connection stays usable and a client sending its body first can read it
 *   body calls      append to a buffer capped at max_body_bytes (chunked bodies that pass it are
 *                   answered 413 once they end)
 *   last call       validate (400), build the job, reserve a queue slot (429 / 503), suspend,
 *                   push, return
 *   resumed call    the engine answered: encode PNGs, reply (or close, if the client left)
 * A 429 for a full queue is not sent as soon as its body is in: the connection is suspended and
 * handed to the reaper, which resumes it queue_full_delay_ms later (S_PACED) to send it. A client
 * that retries at once without honouring Retry-After then sends one request per delay on each
 * connection instead of thousands a second, and the CPU its refusals cost (its own and the HTTP
 * threads', on the engine's cores) falls by as much. The held connection costs no thread.
 * The completion callback writes the access-log line, counts requests_total{code} and frees
 * the request (and its job). */
#include "server/http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <errno.h>

#include <cjson/cJSON.h>

#include "common/clock.h"
#include "common/json_text.h"
#include "common/log.h"
#include "kvcache/policy.h"
#include "server/api.h"
#include "server/job.h"
#include "server/openai.h"
#include "server/playground.h"
#include "server/png.h"
#include "server/stream.h"
#include "server/version.h"

/* One open connection, for the request deadline: from the connection's start (or its previous
 * response) until its request's headers and body are in, the reaper may shut it down. The reaper
 * shuts down only sockets on this list under conn_mu, and libmicrohttpd notifies the close (which
 * unlinks the entry) before it closes the descriptor, so a descriptor number reused by a new
 * connection is never touched. */
typedef struct conn {
    struct conn *prev, *next; /* guarded by h->conn_mu */
    int fd;                   /* immutable */
    double deadline;          /* guarded by h->conn_mu; 0 = none (the request is in) */
} conn;

struct vs_srv_http {
    /* immutable after start */
    const vs_cfg *cfg;
    vs_srv_queue *q;
    vs_srv_metrics *met;
    vs_srv_engine *eng;
    struct MHD_Daemon *d, *health_d; /* health_d: the health_port listener, or NULL */
    int port, health_port;
    pthread_t reaper;
    int reaper_started;
    pthread_mutex_t conn_mu;
    pthread_cond_t conn_cv;
    conn *conns;   /* guarded by conn_mu */
    int stopping;  /* guarded by conn_mu */
    struct req *paced, *paced_tail; /* guarded by conn_mu: held 429s, oldest first (one delay: FIFO) */
    int pacing_off;                 /* guarded by conn_mu: stopping; a 429 goes out at once */
    uint64_t id_key, seed_key; /* random at start: request ids and chosen seeds */
    /* any thread */
    atomic_int draining;
    atomic_long live_jobs;
    atomic_ullong counter;
    double started_unix_s; /* immutable after start: /v1/models' `created` */
};

typedef enum { R_NONE = 0, R_GENERATE, R_OPENAI_IMAGES, R_HEALTH, R_READY, R_INFO, R_METRICS, R_MODELS, R_PLAYGROUND } route;
/* S_NEW: the first call (headers in). S_DRAIN: a reply is decided and held until the body has
 * been read and thrown away (see respond). S_PACED: a 429 held by the reaper (see the top). */
typedef enum { S_NEW = 0, S_BODY, S_DRAIN, S_PACED, S_WAIT, S_DONE } req_state;

/* A body we refuse is still read (and thrown away) up to this many bytes, so that a client that
 * sends it all before reading (no Expect: 100-continue: curl -d @big, Python's urllib and
 * requests) gets to read its 413 or 401 instead of a reset. Past it, the reply goes out and the
 * connection closes. Time is bounded by the request deadline. */
#define DRAIN_MAX_BYTES ((size_t)64 << 20)

/* The routes that generate (POST, a body, a job). */
static int generates(route rt) { return rt == R_GENERATE || rt == R_OPENAI_IMAGES; }

/* One request; owned by the HTTP thread handling its connection (libmicrohttpd runs one
 * connection on one thread at a time). */
typedef struct req {
    vs_srv_http *h;
    double t0;
    route rt;
    req_state st;
    char method[12];
    char path[96];
    char id[72];
    char peer[64];
    char *body;
    size_t len, cap, discarded;
    int too_big, want_png;
    int paced;       /* the reply is a 429 to hold for queue_full_delay_ms (see the top) */
    int nul_in_path; /* the raw path has %00 */
    int close;       /* the reply closes the connection (framing errors, an unread body) */
    struct MHD_Response *pending; /* the held reply of S_DRAIN and S_PACED */
    int code;     /* status queued, 0 while none */
    size_t bytes; /* response body bytes */
    vs_srv_job *job;
    struct MHD_Connection *conn; /* S_PACED: the suspended connection, due then, next in h->paced */
    double due;
    struct req *pace_next;
} req;

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* ---- the request deadline ------------------------------------------------------------------------ */

static conn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* The deadline of c's current request: request_timeout_s from now (arm), or none. */
static void conn_deadline(vs_srv_http *h, struct MHD_Connection *c, int arm)
{
    conn *k = conn_of(c);
    if (!k || !h->cfg->request_timeout_s)
        return;
    pthread_mutex_lock(&h->conn_mu);
    k->deadline = arm ? vs_now_s() + (double)h->cfg->request_timeout_s : 0;
    pthread_mutex_unlock(&h->conn_mu);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    vs_srv_http *h = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        conn *k = ci ? calloc(1, sizeof *k) : NULL;
        *socket_context = k;
        if (!k)
            return; /* out of memory: this connection has no deadline */
        k->fd = ci->connect_fd;
        pthread_mutex_lock(&h->conn_mu);
        k->deadline = h->cfg->request_timeout_s ? vs_now_s() + (double)h->cfg->request_timeout_s : 0;
        k->next = h->conns;
        if (h->conns)
            h->conns->prev = k;
        h->conns = k;
        pthread_mutex_unlock(&h->conn_mu);
        return;
    }
    conn *k = *socket_context;
    if (!k)
        return;
    pthread_mutex_lock(&h->conn_mu);
    if (k->prev)
        k->prev->next = k->next;
    else
        h->conns = k->next;
    if (k->next)
        k->next->prev = k->prev;
    pthread_mutex_unlock(&h->conn_mu);
    free(k);
    *socket_context = NULL;
}

/* Resumes the held 429s due by `until` (all of them: +inf), so their handler sends them. A req
 * is not touched once its connection is resumed: its reply may complete and free it at once.
 * Called with conn_mu held; libmicrohttpd is called without it. */
static void resume_paced(vs_srv_http *h, double until)
{
    while (h->paced && h->paced->due <= until) {
        req *r = h->paced;
        struct MHD_Connection *c = r->conn;
        h->paced = r->pace_next;
        if (!h->paced)
            h->paced_tail = NULL;
        pthread_mutex_unlock(&h->conn_mu);
        MHD_resume_connection(c);
        pthread_mutex_lock(&h->conn_mu);
    }
}

/* Shuts down connections past their deadline (libmicrohttpd then sees the end of the stream and
 * closes them) four times a second, since the deadline is in whole seconds; and resumes each
 * held 429 when it is due. */
static void *reaper_main(void *arg)
{
    vs_srv_http *h = arg;
    pthread_mutex_lock(&h->conn_mu);
    double next_sweep = vs_now_s() + 0.25;
    while (!h->stopping) {
        double wake = h->paced && h->paced->due < next_sweep ? h->paced->due : next_sweep;
        /* the monotonic clock's deadline as the realtime one the condition variable waits on */
        double left = wake - vs_now_s();
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        if (left > 0) {
            long ns = ts.tv_nsec + (long)(left * 1e9);
            ts.tv_sec += ns / 1000000000L;
            ts.tv_nsec = ns % 1000000000L;
            pthread_cond_timedwait(&h->conn_cv, &h->conn_mu, &ts);
        }
        double now = vs_now_s();
        resume_paced(h, now);
        if (now < next_sweep)
            continue;
        next_sweep = now + 0.25;
        for (conn *k = h->conns; k; k = k->next)
            if (k->deadline && now > k->deadline) {
                shutdown(k->fd, SHUT_RDWR);
                k->deadline = 0;
            }
    }
    pthread_mutex_unlock(&h->conn_mu);
    return NULL;
}

/* ---- responses -------------------------------------------------------------------------------------- */

typedef struct {
    const char *name, *value;
} header;

/* Holds r's reply (r->pending, a 429) for queue_full_delay_ms: the connection is suspended and
 * listed for the reaper, which resumes it when due; the handler then sends it (S_PACED). Once the
 * server drains or stops (pacing_off), and for any listed after, the reply goes out at once. The handler
 * resuming the connection it has just suspended is the same as the engine finishing a job
 * before generate_submit returns: libmicrohttpd resumes it after the handler returns. */
static enum MHD_Result pace(req *r, struct MHD_Connection *c)
{
    vs_srv_http *h = r->h;
    r->st = S_PACED;
    r->conn = c;
    r->due = vs_now_s() + (double)h->cfg->queue_full_delay_ms / 1e3;
    r->pace_next = NULL;
    MHD_suspend_connection(c);
    pthread_mutex_lock(&h->conn_mu);
    int off = h->pacing_off;
    if (!off) {
        if (h->paced_tail)
            h->paced_tail->pace_next = r;
        else {
            h->paced = r;
            pthread_cond_signal(&h->conn_cv); /* the reaper may sleep past r's due time */
        }
        h->paced_tail = r;
    }
    pthread_mutex_unlock(&h->conn_mu);
    if (off)
        MHD_resume_connection(c);
    return MHD_YES;
}

/* Queues a response owning `body` (malloc'd or NULL). On the first call the reply is held
 * (S_DRAIN) and queued on the last one, after any body: libmicrohttpd closes a connection whose
 * reply was queued before the request was complete, which would end keep-alive and pipelining
 * and reset a client still sending. r->close replies at once and closes. */
static enum MHD_Result respond(req *r, struct MHD_Connection *c, int code, const char *ctype, char *body,
                               size_t len, const header *extra, int n_extra)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    if (ctype)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    for (int i = 0; i < n_extra; i++)
        MHD_add_response_header(resp, extra[i].name, extra[i].value);
    if (r->close)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    r->code = code;
    r->bytes = len;
    if (generates(r->rt))
        vs_srv_metrics_observe(r->h->met, VS_SRV_H_REQUEST, vs_now_s() - r->t0);
    if (r->st == S_NEW && !r->close) {
        r->pending = resp;
        r->st = S_DRAIN;
        return MHD_YES;
    }
    if (r->paced && !r->close) {
        r->pending = resp;
        return pace(r, c);
    }
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)code, resp);
    MHD_destroy_response(resp);
    r->st = S_DONE;
    return ret;
}

/* Queues the reply held by respond (S_DRAIN); `closing` when the rest of the body stays unread. */
static enum MHD_Result respond_pending(req *r, struct MHD_Connection *c, int closing)
{
    if (closing)
        MHD_add_response_header(r->pending, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)r->code, r->pending);
    MHD_destroy_response(r->pending);
    r->pending = NULL;
    r->st = S_DONE;
    return ret;
}

static enum MHD_Result respond_error(req *r, struct MHD_Connection *c, const vs_srv_api_error *e,
                                     const header *extra, int n_extra)
{
    size_t len = 0;
    char *body = vs_srv_api_error_json(e, &len);
    if (!body)
        return MHD_NO;
    return respond(r, c, e->http, "application/json", body, len, extra, n_extra);
}

static enum MHD_Result fail(req *r, struct MHD_Connection *c, int http, const char *type, const char *code,
                            const char *param, const char *retry_after, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

static enum MHD_Result fail(req *r, struct MHD_Connection *c, int http, const char *type, const char *code,
                            const char *param, const char *retry_after, const char *fmt, ...)
{
    vs_srv_api_error e = {http, type, code, "", ""};
    snprintf(e.param, sizeof e.param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof e.msg, fmt, ap);
    va_end(ap);
    header h[2];
    int n = 0;
    if (retry_after)
        h[n++] = (header){MHD_HTTP_HEADER_RETRY_AFTER, retry_after};
    if (http == 405)
        h[n++] = (header){MHD_HTTP_HEADER_ALLOW, generates(r->rt) ? "POST" : "GET, HEAD"};
    if (http == 401)
        h[n++] = (header){MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer"};
    return respond_error(r, c, &e, h, n);
}

static enum MHD_Result respond_json(req *r, struct MHD_Connection *c, int code, cJSON *root)
{
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!s)
        return fail(r, c, 500, "internal_error", "out_of_memory", NULL, NULL, "out of memory");
    size_t len = strlen(s);
    char *body = realloc(s, len + 2);
    if (!body) {
        free(s);
        return MHD_NO;
    }
    body[len++] = '\n';
    body[len] = 0;
    return respond(r, c, code, "application/json", body, len, NULL, 0);
}

/* ---- simple endpoints --------------------------------------------------------------------------- */

/* 503 {"status": "device_lost", "reason": …} once the device is lost, for /health and /ready. */
static enum MHD_Result respond_lost(req *r, struct MHD_Connection *c, const char *why)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "device_lost");
    cJSON_AddStringToObject(o, "reason", why);
    return respond_json(r, c, 503, o);
}

static enum MHD_Result do_health(req *r, struct MHD_Connection *c)
{
    const char *lost = vs_srv_engine_lost(r->h->eng);
    if (lost)
        return respond_lost(r, c, lost);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    return respond_json(r, c, 200, o);
}

static enum MHD_Result do_ready(req *r, struct MHD_Connection *c)
{
    const char *lost = vs_srv_engine_lost(r->h->eng);
    if (lost)
        return respond_lost(r, c, lost);
    const char *state = atomic_load(&r->h->draining) ? "draining"
                        : vs_srv_engine_info_get(r->h->eng) ? "ready"
                                                            : "loading";
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", state);
    return respond_json(r, c, strcmp(state, "ready") == 0 ? 200 : 503, o);
}

static enum MHD_Result do_info(req *r, struct MHD_Connection *c)
{
    const vs_srv_engine_info *in = vs_srv_engine_info_get(r->h->eng);
    if (!in)
        return fail(r, c, 503, "unavailable_error", "loading", NULL, "1", "the model is still loading");
    const vs_rt_config *mc = in->mc;
    const vs_cfg *cfg = r->h->cfg;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "version", VS_VERSION);
    cJSON *m = cJSON_AddObjectToObject(o, "model");
    cJSON_AddStringToObject(m, "name", in->model_name);
    cJSON_AddStringToObject(m, "path", in->model_path);
    cJSON_AddNumberToObject(m, "parameters", (double)in->n_params);
    cJSON_AddStringToObject(m, "family", in->family);
    cJSON_AddStringToObject(m, "input", strcmp(in->family, "infinity") == 0 ? "prompt" : "class_label");
    cJSON_AddNumberToObject(m, "depth", mc->depth);
    cJSON_AddNumberToObject(m, "embed_dim", mc->embed_dim);
    cJSON_AddNumberToObject(m, "image_size", mc->image_size);
    cJSON_AddNumberToObject(m, "num_classes", mc->num_classes);
    if (mc->class_names) {
        cJSON *names = cJSON_AddArrayToObject(m, "class_names");
        for (int i = 0; i < mc->num_classes; i++)
            cJSON_AddItemToArray(names, cJSON_CreateString(mc->class_names[i]));
    }
    cJSON_AddItemToObject(m, "patch_nums", cJSON_CreateIntArray(mc->patch_nums, mc->n_scales));
    cJSON_AddNumberToObject(m, "vocab_size", mc->vocab_size);
    cJSON *def = cJSON_AddObjectToObject(o, "defaults");
    cJSON_AddNumberToObject(def, "cfg_scale", in->cfg);
    cJSON_AddNumberToObject(def, "top_k", in->top_k);
    cJSON_AddNumberToObject(def, "top_p", in->top_p);
    if (strcmp(in->family, "infinity") == 0)
        cJSON_AddNumberToObject(def, "tau", in->tau);
    cJSON_AddNumberToObject(def, "timeout_ms", (double)cfg->default_timeout_ms);
    cJSON_AddNumberToObject(def, "max_timeout_ms", (double)cfg->max_timeout_ms);
    cJSON_AddNumberToObject(def, "max_n", VS_SRV_MAX_N);
    cJSON *be = cJSON_AddObjectToObject(o, "backend");
    cJSON_AddStringToObject(be, "name", in->backend);
    cJSON_AddNumberToObject(be, "threads", in->threads);
    if (in->simd[0])
        cJSON_AddStringToObject(be, "simd", in->simd);
    if (in->blas[0])
        cJSON_AddStringToObject(be, "blas", in->blas);
    cJSON_AddStringToObject(o, "policy", in->policy);
    cJSON *pol = cJSON_AddObjectToObject(o, "kv_policy");
    cJSON_AddStringToObject(pol, "name", in->policy);
    cJSON *avail = cJSON_AddArrayToObject(pol, "available"); /* the registry's names */
    int n_defs;
    const vs_kv_policy_def *const *defs = vs_kv_policy_defs(&n_defs);
    for (int i = 0; i < n_defs; i++)
        cJSON_AddItemToArray(avail, cJSON_CreateString(defs[i]->name));
    if (vs_kv_policy_def_of((vs_kv_policy_kind)in->kv_policy)->compresses) {
        cJSON_AddNumberToObject(pol, "budget", in->kv_budget);
        cJSON_AddStringToObject(pol, "source", in->policy_source);
    }
    cJSON *kv = cJSON_AddObjectToObject(o, "kv_pool");
    cJSON_AddNumberToObject(kv, "bytes", (double)(in->pages_total * in->page_bytes));
    cJSON_AddNumberToObject(kv, "pages", (double)in->pages_total);
    cJSON_AddNumberToObject(kv, "page_bytes", (double)in->page_bytes);
    cJSON_AddStringToObject(kv, "dtype", in->kv_dtype); /* of K and V in the pages */
    cJSON_AddNumberToObject(kv, "pages_per_image", (double)in->pages_per_image);
    cJSON_AddNumberToObject(kv, "bytes_per_image", (double)(in->pages_per_image * in->page_bytes));
    cJSON_AddNumberToObject(kv, "full_cache_pages_per_image", (double)in->full_pages_per_image);
    cJSON_AddNumberToObject(kv, "images_fit", (double)in->images_fit);
    cJSON *sch = cJSON_AddObjectToObject(o, "scheduler");
    cJSON_AddNumberToObject(sch, "max_batch_images", in->max_batch_images);
    cJSON_AddNumberToObject(sch, "queue_size", (double)vs_srv_queue_capacity(r->h->q));
    return respond_json(r, c, 200, o);
}

static enum MHD_Result do_metrics(req *r, struct MHD_Connection *c)
{
    size_t len = 0;
    char *text = vs_srv_metrics_render(r->h->met, vs_srv_queue_length(r->h->q), &len);
    if (!text)
        return fail(r, c, 500, "internal_error", "out_of_memory", NULL, NULL, "out of memory");
    return respond(r, c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL, 0);
}

static enum MHD_Result do_models(req *r, struct MHD_Connection *c)
{
    const vs_srv_engine_info *in = vs_srv_engine_info_get(r->h->eng);
    if (!in)
        return fail(r, c, 503, "unavailable_error", "loading", NULL, "1", "the model is still loading");
    size_t len = 0;
    char *body = vs_srv_openai_models_json(in->model_name, r->h->started_unix_s, &len);
    if (!body)
        return fail(r, c, 500, "internal_error", "out_of_memory", NULL, NULL, "out of memory");
    return respond(r, c, 200, "application/json", body, len, NULL, 0);
}

static enum MHD_Result do_playground(req *r, struct MHD_Connection *c)
{
    char *body = malloc(vs_srv_playground_html_len);
    if (!body)
        return fail(r, c, 500, "internal_error", "out_of_memory", NULL, NULL, "out of memory");
    memcpy(body, vs_srv_playground_html, vs_srv_playground_html_len);
    header h[1] = {{MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache"}};
    return respond(r, c, 200, "text/html; charset=utf-8", body, vs_srv_playground_html_len, h, 1);
}

/* ---- POST /generate ---------------------------------------------------------------------------- */

/* Equal in time that depends only on the expected key's length. */
static int ct_equal(const char *got, size_t got_len, const char *want)
{
    size_t n = strlen(want);
    volatile unsigned char diff = (unsigned char)(got_len != n);
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(want[i] ^ (got_len ? got[i % got_len] : 0));
    return diff == 0;
}

static int authorized(vs_srv_http *h, struct MHD_Connection *c)
{
    if (!h->cfg->api_key[0])
        return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!a || strncasecmp(a, "Bearer ", 7) != 0)
        return 0;
    a += 7;
    while (*a == ' ')
        a++;
    size_t n = strlen(a);
    while (n && a[n - 1] == ' ')
        n--;
    return ct_equal(a, n, h->cfg->api_key);
}

static int is_json(const char *ct)
{
    if (!ct)
        return 0;
    while (*ct == ' ')
        ct++;
    if (strncasecmp(ct, "application/json", 16) != 0)
        return 0;
    char after = ct[16];
    return after == 0 || after == ';' || after == ' ';
}

/* 429 queue_full, with Retry-After: the waves of max_batch_images a full queue needs, times the
 * mean inference time. The queue is full, so its length is its capacity: no lock is taken on
 * the queue, and the one on the metrics is held for a read. */
static enum MHD_Result refuse_queue_full(req *r, struct MHD_Connection *c)
{
    vs_srv_http *h = r->h;
    const vs_srv_engine_info *in = vs_srv_engine_info_get(h->eng);
    size_t cap = vs_srv_queue_capacity(h->q);
    double waves = (double)cap / (in ? in->max_batch_images : 1) + 1;
    double s = ceil(vs_srv_metrics_mean_inference(h->met) * waves);
    char ra[24];
    snprintf(ra, sizeof ra, "%.0f", s < 1 ? 1 : s > 600 ? 600 : s);
    r->paced = h->cfg->queue_full_delay_ms > 0;
    return fail(r, c, 429, "rate_limit_error", "queue_full", NULL, ra,
                "the queue is full (%zu requests waiting, queue_size); retry after %s s", cap, ra);
}

static void job_notify(void *ctx) { MHD_resume_connection((struct MHD_Connection *)ctx); }

/* First call: everything decidable from the headers. MHD_YES with st = S_BODY to read on. */
static enum MHD_Result generate_begin(req *r, struct MHD_Connection *c)
{
    vs_srv_http *h = r->h;
    if (atomic_load(&h->draining))
        return fail(r, c, 503, "unavailable_error", "draining", NULL, "10",
                    "the server is shutting down and takes no new requests; retry on another instance");
    if (!vs_srv_engine_info_get(h->eng))
        return fail(r, c, 503, "unavailable_error", "loading", NULL, "1",
                    "the model is still loading; retry in a moment (GET /ready says when)");
    const char *lost = vs_srv_engine_lost(h->eng);
    if (lost)
        return fail(r, c, 503, "unavailable_error", "device_lost", NULL, NULL,
                    "the device failed and this server cannot generate until it is restarted; "
                    "retry on another instance (%s)",
                    lost);
    if (!authorized(h, c))
        return fail(r, c, 401, "authentication_error", "invalid_api_key", NULL, NULL,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'");
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    char shown[72];
    if (!is_json(ct))
        return fail(r, c, 415, "invalid_request_error", "unsupported_media_type", NULL, NULL,
                    "the body must be JSON with 'Content-Type: application/json' (got '%s')",
                    vs_utf8_clip(shown, sizeof shown, ct ? ct : "none", 60));
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        unsigned long long n = strtoull(cl, &end, 10);
        if (*end == 0 && n > (unsigned long long)h->cfg->max_body_bytes)
            return fail(r, c, 413, "invalid_request_error", "body_too_large", NULL, NULL,
                        "the body is %llu bytes; the limit is %ld (max_body_bytes)", n, h->cfg->max_body_bytes);
    }
    /* refused from the headers when the queue is full: the body is drained unread, so a storm
     * of retries costs no buffering, JSON parsing or job; the reserve at submit still decides */
    if (vs_srv_queue_full(h->q))
        return refuse_queue_full(r, c);
    const char *acc = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
    r->want_png = acc && strstr(acc, "image/png") != NULL;
    r->st = S_BODY;
    return MHD_YES;
}

static enum MHD_Result body_too_large(req *r, struct MHD_Connection *c)
{
    return fail(r, c, 413, "invalid_request_error", "body_too_large", NULL, NULL,
                "the body is over %ld bytes (max_body_bytes)", r->h->cfg->max_body_bytes);
}

static enum MHD_Result generate_body(req *r, struct MHD_Connection *c, const char *data, size_t n)
{
    size_t limit = (size_t)r->h->cfg->max_body_bytes;
    if (r->too_big || r->len + n > limit) {
        r->too_big = 1;
        r->discarded += n;
        if (r->discarded <= DRAIN_MAX_BYTES)
            return MHD_YES; /* answered once it ends (a chunked body has no length to judge first) */
        r->close = 1;
        return body_too_large(r, c);
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 1024;
        while (cap < r->len + n + 1)
            cap *= 2;
        char *nb = realloc(r->body, cap);
        if (!nb)
            return MHD_NO;
        r->body = nb;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = 0;
    return MHD_YES;
}

/* The whole body is in: validate, queue, suspend. */
static enum MHD_Result generate_submit(req *r, struct MHD_Connection *c)
{
    vs_srv_http *h = r->h;
    if (r->too_big)
        return body_too_large(r, c);
    const vs_srv_engine_info *in = vs_srv_engine_info_get(h->eng);
    vs_srv_api_limits lim = {.mc = in->mc,
                             .model_name = in->model_name,
                             .prompts = strcmp(in->family, "infinity") == 0,
                             .tau = (float)in->tau,
                             .cfg = (float)in->cfg,
                             .top_k = in->top_k,
                             .top_p = (float)in->top_p,
                             .default_timeout_ms = h->cfg->default_timeout_ms,
                             .max_timeout_ms = h->cfg->max_timeout_ms,
                             .kv_policy = in->kv_policy,
                             .kv_budget = in->kv_budget,
                             .backend = in->backend};
    vs_srv_api_error e;
    vs_srv_gen_params p;
    vs_srv_api_style style = r->rt == R_OPENAI_IMAGES ? VS_SRV_API_OPENAI : VS_SRV_API_NATIVE;
    uint64_t rnd = mix64(h->seed_key + atomic_fetch_add(&h->counter, 1));
    int bad = style == VS_SRV_API_OPENAI ? vs_srv_api_parse_openai(r->body ? r->body : "", r->len, &lim, rnd, &p, &e)
                                         : vs_srv_api_parse_generate(r->body ? r->body : "", r->len, &lim, rnd, &p, &e);
    if (bad)
        return respond_error(r, c, &e, NULL, 0);
    free(r->body);
    r->body = NULL;

    vs_srv_job *j = vs_srv_job_new();
    if (!j)
        return fail(r, c, 500, "internal_error", "out_of_memory", NULL, NULL, "out of memory");
    j->p = p;
    snprintf(j->id, sizeof j->id, "%s", r->id);
    j->t_arrival = r->t0;
    j->deadline = r->t0 + (double)p.timeout_ms / 1000.0;
    j->image_size = in->mc->image_size;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    j->fd = ci ? ci->connect_fd : -1;
    j->notify = job_notify;
    j->notify_ctx = c;

    vs_srv_q_result qr = vs_srv_queue_reserve(h->q);
    if (qr != VS_SRV_Q_OK) {
        vs_srv_job_free(j);
        if (qr == VS_SRV_Q_CLOSED)
            return fail(r, c, 503, "unavailable_error", "draining", NULL, "10",
                        "the server is shutting down and takes no new requests; retry on another instance");
        return refuse_queue_full(r, c);
    }
    vs_srv_stream *st = NULL;
    if (p.stream) {
        vs_err err = {0};
        if (vs_srv_stream_new(j, style, in->mc, h->met, &st, &err) != VS_OK) {
            vs_srv_queue_unreserve(h->q);
            vs_srv_job_free(j);
            return fail(r, c, 500, "internal_error", "out_of_memory", NULL, NULL, "%s", err.msg);
        }
    }
    r->job = j;
    r->st = S_WAIT;
    atomic_fetch_add(&h->live_jobs, 1);
    if (st) {
        /* the response goes out at once; its reader parks until the engine pushes an event */
        r->st = S_DONE;
        r->code = 200;
        vs_srv_metrics_observe(h->met, VS_SRV_H_REQUEST, vs_now_s() - r->t0);
        enum MHD_Result ret = (enum MHD_Result)vs_srv_stream_respond(st, c, r->id);
        vs_srv_queue_push(h->q, j);
        return ret;
    }
    /* suspend before the engine can see the job, so it can only ever resume a suspended one */
    MHD_suspend_connection(c);
    vs_srv_queue_push(h->q, j);
    return MHD_YES;
}

/* Resumed: the engine has answered the job. */
static enum MHD_Result generate_reply(req *r, struct MHD_Connection *c)
{
    vs_srv_job *j = r->job;
    if (atomic_load_explicit(&j->state, memory_order_acquire) != VS_SRV_JOB_DONE)
        return MHD_YES; /* not ours to answer yet */
    if (j->http == 499)
        return MHD_NO; /* the client is gone: close */
    if (j->http != 200) {
        vs_srv_api_error e = {j->http, j->err_type ? j->err_type : "internal_error",
                              j->err_code ? j->err_code : "internal", "", ""};
        snprintf(e.msg, sizeof e.msg, "%s", j->msg);
        header ra = {MHD_HTTP_HEADER_RETRY_AFTER, "5"};
        int retry = j->http == 503 && j->status != VS_ERR_DEVICE_LOST; /* not here, ever */
        return respond_error(r, c, &e, &ra, retry);
    }
    const vs_srv_engine_info *in = vs_srv_engine_info_get(r->h->eng);
    unsigned char *png[VS_SRV_MAX_N] = {0};
    size_t png_len[VS_SRV_MAX_N] = {0};
    enum MHD_Result ret;
    double e0 = vs_now_s();
    for (int i = 0; i < j->p.n; i++) {
        vs_err err = {0};
        double t = vs_now_s();
        if (vs_srv_png_encode(j->rgb[i], j->image_size, j->image_size, &png[i], &png_len[i], &err) != VS_OK) {
            ret = fail(r, c, 500, "internal_error", "png_error", NULL, NULL, "%s", err.msg);
            goto done;
        }
        vs_srv_metrics_observe(r->h->met, VS_SRV_H_PNG, vs_now_s() - t);
    }
    double e1 = vs_now_s();
    vs_srv_timings t = {
        .queue_ms = (j->t_admit - j->t_arrival) * 1e3,
        .inference_ms = (j->t_done - j->t_admit - j->decode_s) * 1e3,
        .decode_ms = j->decode_s * 1e3,
        .encode_ms = (e1 - e0) * 1e3,
        .total_ms = (e1 - r->t0) * 1e3,
    };
    if (j->p.format == VS_SRV_FMT_PNG || (r->rt == R_GENERATE && r->want_png && j->p.n == 1)) {
        char seed[32], timing[256];
        snprintf(seed, sizeof seed, "%" PRIu64, j->p.seed);
        snprintf(timing, sizeof timing, "queue;dur=%.3f, inference;dur=%.3f, decode;dur=%.3f, encode;dur=%.3f, total;dur=%.3f",
                 t.queue_ms, t.inference_ms, t.decode_ms, t.encode_ms, t.total_ms);
        header hs[2] = {{"X-Seed", seed}, {"Server-Timing", timing}};
        ret = respond(r, c, 200, "image/png", (char *)png[0], png_len[0], hs, 2);
        png[0] = NULL;
        goto done;
    }
    size_t len = 0;
    char *body = r->rt == R_OPENAI_IMAGES
                     ? vs_srv_openai_images_json(j, in->mc, png, png_len, &len)
                     : vs_srv_api_generate_json(j, in->model_name, j->pages_per_image * in->page_bytes, png,
                                                png_len, &t, &len);
    if (!body) {
        ret = fail(r, c, 500, "internal_error", "out_of_memory", NULL, NULL, "out of memory");
        goto done;
    }
    ret = respond(r, c, 200, "application/json", body, len, NULL, 0);
done:
    for (int i = 0; i < VS_SRV_MAX_N; i++)
        free(png[i]);
    return ret;
}

/* ---- the access handler --------------------------------------------------------------------------- */

static void request_id(vs_srv_http *h, struct MHD_Connection *c, char *out, size_t cap)
{
    const char *given = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    if (given) {
        size_t n = strlen(given);
        int ok = n > 0 && n < cap && n <= 64;
        for (size_t i = 0; ok && i < n; i++)
            ok = isalnum((unsigned char)given[i]) || strchr("-_.:", given[i]);
        if (ok) {
            memcpy(out, given, n + 1);
            return;
        }
    }
    snprintf(out, cap, "%016" PRIx64, mix64(h->id_key ^ atomic_fetch_add(&h->counter, 1)));
}

static void peer_address(struct MHD_Connection *c, char *out, size_t cap)
{
    snprintf(out, cap, "-");
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out, (socklen_t)cap);
}

/* The message framing, judged before anything else: a request whose length two headers disagree
 * on (request smuggling), or whose Transfer-Encoding this server cannot decode, is answered at
 * once and the connection closed, since where its body ends is unknown. */
typedef struct {
    int n_cl, n_te, cl_conflict;
    char cl[2][32], te[64];
} framing;

static enum MHD_Result framing_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    framing *f = cls;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        if (f->n_cl && strcmp(f->cl[0], value) != 0 && !f->cl_conflict) {
            f->cl_conflict = 1;
            vs_utf8_clip(f->cl[1], sizeof f->cl[1], value, 24);
        }
        if (!f->n_cl++)
            vs_utf8_clip(f->cl[0], sizeof f->cl[0], value, 24);
    } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        if (!f->n_te++)
            vs_utf8_clip(f->te, sizeof f->te, value, 48);
    }
    return MHD_YES;
}

/* 0 when the framing is sound (and *has_body, *length say what comes), else the reply is made. */
static int check_framing(req *r, struct MHD_Connection *c, int *has_body, unsigned long long *length,
                         enum MHD_Result *ret)
{
    framing f = {0};
    MHD_get_connection_values(c, MHD_HEADER_KIND, framing_header, &f);
    const char *te = f.te;
    while (*te == ' ' || *te == '\t')
        te++;
    size_t te_len = strlen(te);
    while (te_len && (te[te_len - 1] == ' ' || te[te_len - 1] == '\t'))
        te_len--;
    int chunked = f.n_te == 1 && te_len == 7 && strncasecmp(te, "chunked", 7) == 0;
    r->close = 1;
    if (f.cl_conflict)
        *ret = fail(r, c, 400, "invalid_request_error", "conflicting_content_length", NULL, NULL,
                    "the request has Content-Length headers that disagree ('%s' and '%s'): send one", f.cl[0],
                    f.cl[1]);
    else if (f.n_te && f.n_cl)
        *ret = fail(r, c, 400, "invalid_request_error", "conflicting_content_length", NULL, NULL,
                    "the request has both Transfer-Encoding and Content-Length: send one of them");
    else if (f.n_te && !chunked)
        *ret = fail(r, c, 501, "invalid_request_error", "unsupported_transfer_encoding", NULL, NULL,
                    "Transfer-Encoding '%s' is not supported: send the body as it is with Content-Length, or "
                    "chunked",
                    f.te);
    else {
        r->close = 0;
        *length = f.n_cl ? strtoull(f.cl[0], NULL, 10) : 0;
        *has_body = chunked || *length > 0;
        return 0;
    }
    return -1;
}

/* The first call: the headers are in. Everything decidable from them is decided here. */
static enum MHD_Result first_call(req *r, struct MHD_Connection *c, const char *url, const char *method)
{
    vs_srv_http *h = r->h;
    snprintf(r->method, sizeof r->method, "%s", method);
    /* path and method are logged as sent: printable ASCII only (an unescaped %0a would forge a
     * line, a stray byte would make the log invalid UTF-8) */
    for (char *p = r->path; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '"')
            *p = '?';
    for (char *p = r->method; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '"')
            *p = '?';
    request_id(h, c, r->id, sizeof r->id);
    peer_address(c, r->peer, sizeof r->peer);
    r->rt = strcmp(url, "/generate") == 0                ? R_GENERATE
            : strcmp(url, "/v1/images/generations") == 0 ? R_OPENAI_IMAGES
            : strcmp(url, "/health") == 0                ? R_HEALTH
            : strcmp(url, "/ready") == 0                 ? R_READY
            : strcmp(url, "/info") == 0                  ? R_INFO
            : strcmp(url, "/metrics") == 0               ? R_METRICS
            : strcmp(url, "/v1/models") == 0             ? R_MODELS
            : strcmp(url, "/") == 0                      ? R_PLAYGROUND
                                                         : R_NONE;
    int has_body = 0;
    unsigned long long length = 0;
    enum MHD_Result ret;
    if (check_framing(r, c, &has_body, &length, &ret) != 0)
        return ret;
    /* a client waiting for 100 Continue, or announcing more than is worth reading, is answered
     * without its body being read (then the connection closes) */
    const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
    r->close = has_body && ((expect && strcasestr(expect, "100-continue")) || length > DRAIN_MAX_BYTES);
    char shown[72];
    vs_utf8_clip(shown, sizeof shown, url, 60);
    const union MHD_ConnectionInfo *di = MHD_get_connection_info(c, MHD_CONNECTION_INFO_DAEMON);
    if (di && di->daemon == h->health_d && r->rt != R_HEALTH && r->rt != R_READY && r->rt != R_METRICS)
        return fail(r, c, 404, "not_found_error", "not_found", NULL, NULL,
                    "this listener (health_port) serves only GET /health, /ready and /metrics");
    if (r->nul_in_path)
        return fail(r, c, 400, "invalid_request_error", "invalid_path", NULL, NULL,
                    "the path has an encoded NUL (%%00), which no endpoint accepts");
    if (r->rt == R_NONE)
        return fail(r, c, 404, "not_found_error", "not_found", NULL, NULL,
                    "no such endpoint '%s' (endpoints: POST /generate, POST /v1/images/generations, "
                    "GET /v1/models, /health, /ready, /info, /metrics, / (the playground))",
                    shown);
    int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (generates(r->rt) ? strcmp(method, "POST") != 0 : !get)
        return fail(r, c, 405, "invalid_request_error", "method_not_allowed", NULL, NULL,
                    "%s is not allowed on %s (use %s)", r->method, shown, generates(r->rt) ? "POST" : "GET");
    switch (r->rt) {
    case R_HEALTH: return do_health(r, c);
    case R_READY: return do_ready(r, c);
    case R_INFO: return do_info(r, c);
    case R_METRICS: return do_metrics(r, c);
    case R_PLAYGROUND: return do_playground(r, c);
    case R_MODELS:
        if (!authorized(h, c))
            return fail(r, c, 401, "authentication_error", "invalid_api_key", NULL, NULL,
                        "missing or wrong API key: send 'Authorization: Bearer <key>'");
        return do_models(r, c);
    default: return generate_begin(r, c);
    }
}

/* Called once the request line is in, before the headers: the request is born here, with the
 * path as the client sent it (libmicrohttpd hands on_request a decoded path, cut at a %00). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    (void)c;
    req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->h = cls;
    r->t0 = vs_now_s();
    snprintf(r->path, sizeof r->path, "%s", uri);
    const char *q = strchr(uri, '?');
    const char *nul = strstr(uri, "%00");
    r->nul_in_path = nul && (!q || nul < q);
    return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    (void)cls;
    req *r = *con_cls;
    if (!r)
        return MHD_NO; /* on_uri ran out of memory */
    switch (r->st) {
    case S_NEW:
        return first_call(r, c, url, method);
    case S_BODY:
        if (*upload_data_size) {
            enum MHD_Result ok = generate_body(r, c, upload_data, *upload_data_size);
            *upload_data_size = 0;
            return ok;
        }
        conn_deadline(r->h, c, 0);
        return generate_submit(r, c);
    case S_DRAIN:
        if (!*upload_data_size) {
            conn_deadline(r->h, c, 0);
            return r->paced ? pace(r, c) : respond_pending(r, c, 0);
        }
        r->discarded += *upload_data_size;
        *upload_data_size = 0;
        return r->discarded > DRAIN_MAX_BYTES ? respond_pending(r, c, 1) : MHD_YES;
    case S_PACED:
        return respond_pending(r, c, 0); /* resumed by the reaper */
    case S_WAIT:
        return generate_reply(r, c);
    default:
        /* a response is queued; swallow any body left */
        *upload_data_size = 0;
        return MHD_YES;
    }
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    vs_srv_http *h = cls;
    conn_deadline(h, c, 1); /* the next request on this connection has its own */
    req *r = *con_cls;
    if (!r)
        return;
    *con_cls = NULL;
    int code = r->code ? r->code : 499;
    if (r->job && r->job->stream) {
        r->bytes = vs_srv_stream_bytes(r->job->stream);
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
            code = 499; /* the stream was cut: the client went away */
    }
    vs_srv_metrics_request(h->met, code);
    if (h->cfg->access_log && vs_log_min_level <= VS_LOG_INFO) {
        static const char *why[] = {"", " (error)", " (timeout)", " (shutdown)", " (read error)", " (client abort)"};
        vs_log_set_request_id(r->id);
        vs_log(VS_LOG_INFO, "access", "%s \"%s %s\" %d %zu %.1fms%s", r->peer, r->method, r->path, code, r->bytes,
               (vs_now_s() - r->t0) * 1e3, (unsigned)toe < 6 ? why[toe] : " (?)");
        vs_log_set_request_id(NULL);
    }
    if (r->job && r->job->stream) {
        vs_srv_stream_release(r->job->stream); /* frees the job, or leaves that to the engine */
        atomic_fetch_sub(&h->live_jobs, 1);
    } else if (r->job) {
        if (atomic_load_explicit(&r->job->state, memory_order_acquire) == VS_SRV_JOB_DONE)
            vs_srv_job_free(r->job);
        else /* the engine still holds it: leaking beats a use after free */
            vs_log(VS_LOG_ERROR, "http", "connection completed while its job was still running");
        atomic_fetch_sub(&h->live_jobs, 1);
    }
    if (r->pending)
        MHD_destroy_response(r->pending);
    free(r->body);
    free(r);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = 0;
    vs_log(VS_LOG_WARN, "http", "libmicrohttpd: %s", msg);
}

/* ---- lifecycle ------------------------------------------------------------------------------------ */

/* A listening socket on host:port, opened here rather than by libmicrohttpd so that a port in
 * use is told apart (errno) and SO_REUSEPORT is set only when asked for: with it, a second server
 * on the same port would silently take half the connections. SO_REUSEADDR only lets a restart
 * bind while old connections linger in TIME_WAIT. `key` names the config key for messages. */
static vs_status open_listener(const vs_cfg *cfg, long port, const char *key, int *fd_out, int *family,
                               vs_err *err)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char service[16];
    snprintf(service, sizeof service, "%ld", port);
    int gai = getaddrinfo(cfg->host, service, &hints, &ai);
    if (gai != 0 || !ai)
        return vs_err_set(err, VS_ERR_INVALID, "config key 'host' ('%s') does not resolve: %s", cfg->host,
                          gai_strerror(gai));
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, e = 0;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        (cfg->reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0)
        e = errno;
    *family = ai->ai_family;
    freeaddrinfo(ai);
    if (!e) {
        *fd_out = fd;
        return VS_OK;
    }
    if (fd >= 0)
        close(fd);
    if (e == EADDRINUSE)
        return vs_err_set(err, VS_ERR_INVALID,
                          "config key '%s': port %ld on %s is in use by another process; choose another port "
                          "(or set reuse_port to true to share it deliberately)",
                          key, port, cfg->host);
    if (e == EACCES)
        return vs_err_set(err, VS_ERR_INVALID,
                          "config key '%s': port %ld needs privileges this process lacks; use 1024 or above",
                          key, port);
    if (e == EADDRNOTAVAIL)
        return vs_err_set(err, VS_ERR_INVALID, "config key 'host' ('%s') is not an address of this machine",
                          cfg->host);
    return vs_err_set(err, VS_ERR_IO, "cannot listen on %s:%ld (config keys 'host', '%s'): %s", cfg->host, port,
                      key, strerror(e));
}

static struct MHD_Daemon *start_daemon(vs_srv_http *h, int fd, int family, unsigned threads, unsigned limit)
{
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (family == AF_INET6)
        flags |= MHD_USE_IPv6;
    const vs_cfg *cfg = h->cfg;
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log, h},
        {MHD_OPTION_LISTEN_SOCKET, fd, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, limit, NULL},
        {MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->max_connections_per_address, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, cfg->http_timeout_s, NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, h},
        {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)on_connection, h},
        {MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)on_uri, h},
        {threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, threads, NULL}, /* 1: no pool */
        {MHD_OPTION_END, 0, NULL},
    };
    return MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
}

static int bound_port(struct MHD_Daemon *d, long fallback)
{
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    return di && di->port ? di->port : (int)fallback;
}

/* The health listener: one thread; few connections suffice for probes and scrapes. */
#define HEALTH_CONNECTIONS 64

vs_status vs_srv_http_start(const vs_cfg *cfg, vs_srv_queue *q, vs_srv_metrics *m, vs_srv_engine *e,
                            vs_srv_http **out, vs_err *err)
{
    int fd = -1, hfd = -1, family = 0, hfamily = 0;
    vs_status st = open_listener(cfg, cfg->port, "port", &fd, &family, err);
    if (st != VS_OK)
        return st;
    if (cfg->health_port && (st = open_listener(cfg, cfg->health_port, "health_port", &hfd, &hfamily, err)) != VS_OK) {
        close(fd);
        return st;
    }
    vs_srv_http *h = calloc(1, sizeof *h);
    if (!h) {
        close(fd);
        if (hfd >= 0)
            close(hfd);
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    }
    h->cfg = cfg;
    h->q = q;
    h->met = m;
    h->eng = e;
    atomic_init(&h->draining, 0);
    atomic_init(&h->live_jobs, 0);
    atomic_init(&h->counter, 0);
    pthread_mutex_init(&h->conn_mu, NULL);
    pthread_cond_init(&h->conn_cv, NULL);
    uint64_t keys[2];
    if (getrandom(keys, sizeof keys, 0) != (ssize_t)sizeof keys) {
        keys[0] = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        keys[1] = mix64(keys[0]);
    }
    h->started_unix_s = (double)time(NULL);
    h->id_key = keys[0];
    h->seed_key = keys[1];
    if (pthread_create(&h->reaper, NULL, reaper_main, h) != 0) {
        st = vs_err_set(err, VS_ERR_NOMEM, "cannot start the HTTP request-deadline thread");
        goto fail;
    }
    h->reaper_started = 1;
    /* the health listener first: the main one must not serve before h is complete */
    if (hfd >= 0) {
        if (!(h->health_d = start_daemon(h, hfd, hfamily, 1, HEALTH_CONNECTIONS))) {
            st = vs_err_set(err, VS_ERR_IO, "cannot start the HTTP server on health_port %ld", cfg->health_port);
            goto fail;
        }
        hfd = -1; /* libmicrohttpd's now */
        h->health_port = bound_port(h->health_d, cfg->health_port);
    }
    if (!(h->d = start_daemon(h, fd, family, (unsigned)cfg->http_threads, (unsigned)cfg->max_connections))) {
        st = vs_err_set(err, VS_ERR_IO, "cannot start the HTTP server on port %ld", cfg->port);
        goto fail;
    }
    h->port = bound_port(h->d, cfg->port);
    *out = h;
    return VS_OK;
fail:
    if (!h->d)
        close(fd);
    if (hfd >= 0)
        close(hfd);
    vs_srv_http_stop(h);
    return st;
}

int vs_srv_http_port(const vs_srv_http *h) { return h->port; }

/* Sends the held 429s now, and any later one at once. */
static void pacing_stop(vs_srv_http *h)
{
    pthread_mutex_lock(&h->conn_mu);
    h->pacing_off = 1;
    resume_paced(h, INFINITY);
    pthread_mutex_unlock(&h->conn_mu);
}

/* A draining server takes no new requests, so a client held on a 429 learns it now. */
void vs_srv_http_drain(vs_srv_http *h)
{
    atomic_store(&h->draining, 1);
    pacing_stop(h);
}

long vs_srv_http_live_jobs(vs_srv_http *h) { return atomic_load(&h->live_jobs); }

int vs_srv_http_health_port(const vs_srv_http *h) { return h->health_port; }

void vs_srv_http_stop(vs_srv_http *h)
{
    if (!h)
        return;
    pacing_stop(h); /* no connection may stay suspended in a held 429 when libmicrohttpd stops */
    if (h->d)
        MHD_stop_daemon(h->d);
    if (h->health_d)
        MHD_stop_daemon(h->health_d);
    if (h->reaper_started) {
        pthread_mutex_lock(&h->conn_mu);
        h->stopping = 1;
        pthread_cond_signal(&h->conn_cv);
        pthread_mutex_unlock(&h->conn_mu);
        pthread_join(h->reaper, NULL);
    }
    pthread_mutex_destroy(&h->conn_mu);
    pthread_cond_destroy(&h->conn_cv);
    free(h);
}
