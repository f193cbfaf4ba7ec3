/* server/engine.c — see engine.h.
 *
 * The loop, once the model is loaded:
 *   sweep     answer queued and running jobs that are past their deadline or whose client left
 *   admit     pop jobs in priority order; reserve KV pages image by image (OK: the image joins
 *             the batch; LATER: wait for pages to come back; NEVER: 503 naming the fix)
 *   step      every running image advances one scale (kvcache/session: its step builds
 *             kvcache/step's hooks, which give each row's layer room for its new tokens before
 *             attention, commit them after, and compress the layer to the row's policy)
 *   finish    decode the previews due of streamed images (server/stream.h) from their running
 *             f_hat, decode finished images, release their pages; a job whose images are all
 *             done is answered
 * When nothing runs it sleeps on the queue (woken by a push), waking every 50 ms to sweep.
 * Slots hold the running images (a kvcache/session image each: reservation, rows, state);
 * max_batch_images of them, allocated once at load.
 *
 * A failed step answers its requests 500 and the engine goes on: the backend clears recoverable
 * errors (runtime/backend.h). When the backend says VS_ERR_DEVICE_LOST instead, the engine
 * stops generating for good: it publishes the reason (vs_srv_engine_lost, which turns /health and
 * /ready to 503), answers every request it holds or receives later 503, and waits to be stopped.
 *
 * An Infinity model (text to image) runs in its own mode (the section "Infinity" below): one batch
 * of up to max_batch_images images at a time, all at the same scale, on server/gen_infinity.h's
 * host engine; jobs wait in the queue meanwhile, and the next batch takes the images of the jobs
 * that share its sampling settings. Sweeping, deadlines and answers are the same.
 *
 * Testing only: VARSERVE_FAILPOINT=label:N makes every step that holds an image of class N fail
 * as a backend error would, so the 500 path can be tested against a real server. */
#include "server/engine.h"

#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "kvcache/calibrate.h"
#include "kvcache/policy.h"
#include "kvcache/pool.h"
#include "kvcache/session.h"
#include "runtime/backend.h"
#include "runtime/var.h"
#include "server/api.h"
#include "server/cmd.h"
#include "server/gen_infinity.h"
#include "server/stream.h"
#include "server/version.h"

#define POLICY_CACHE 16 /* distinct (policy, budget) pairs kept; others live with their job */

/* Device memory the KV pool leaves free (cuBLAS's workspace, kernels the CUDA runtime loads on
 * first use, fragmentation): the larger of these. README.md, kv_pool_mb, says the same. */
#define DEVICE_MARGIN_MIB 256
#define DEVICE_MARGIN_PERCENT 2

static size_t device_margin(size_t total)
{
    size_t pct = total / 100 * DEVICE_MARGIN_PERCENT, floor_b = (size_t)DEVICE_MARGIN_MIB << 20;
    return pct > floor_b ? pct : floor_b;
}

static double mib(size_t bytes) { return (double)bytes / 1048576.0; }

typedef struct {
    vs_srv_job *job;
    int index;          /* image index within its job */
    vs_kv_image im;     /* its pages, rows and state */
} slot;

struct vs_srv_engine {
    /* immutable after start */
    const vs_cfg *cfg;
    vs_srv_queue *q;
    vs_srv_metrics *met;
    pthread_t thread;

    /* guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int load_state; /* 0 loading, 1 loaded, -1 failed */
    vs_err load_err;

    _Atomic(const vs_srv_engine_info *) info_pub; /* set once, release */
    atomic_int stop, abort_all, n_jobs;
    _Atomic(const char *) lost_pub; /* set once, release: lost_msg, when the device is lost */
    char lost_msg[600];

    /* engine only */
    vs_srv_engine_info info;
    vs_rt_model *model;
    vs_rt_backend *be;
    vs_rt_engine *rt;
    vs_kv_pool *pool;
    vs_kv_session *ses;    /* the images' KV side, over pool */
    int max_images;
    slot *slots;           /* [max_images] */
    int n_slots;
    vs_kv_image **ptrs;    /* [max_images] */
    uint8_t **dec_rgb;     /* [max_images]: where each finished image's pixels go */
    vs_srv_job **active;   /* [max_images + 1]: popped, not answered */
    vs_srv_job **held;     /* [max_images + 1]: sweep's copy of active */
    int n_active;
    vs_srv_job *admitting; /* popped, images left to admit */
    int blocked;           /* admitting is waiting for pages (counted once as refused) */
    int fail_label;        /* VARSERVE_FAILPOINT label:N, else -1 */
    /* per policy kind, the budget file it reads (found once at start): "" = none, the policy's
     * documented default (ScaleKV: kv_budget_file or MODEL.budgets.json; HACK: MODEL.hack.json) */
    char budget_file[VS_KV_POLICY_COUNT][4096];
    struct {
        int kind;
        double budget;
        vs_kv_policy *p;
    } policies[POLICY_CACHE];
    int n_policies;
    vs_srv_job **snap;     /* [queue capacity] */
    struct pollfd *pfd;    /* [queue capacity + max_images + 1] */

    /* the Infinity mode (inf != NULL; the VAR fields above are then unused but for the tables) */
    vs_srv_inf *inf;
    vs_rt_config inf_mc;   /* info.mc */
    struct inf_image {
        vs_srv_job *job;   /* NULL once its job was answered: the image runs on, unseen */
        int index;
    } *group;              /* [max_images]: the running batch */
    int n_group;
    vs_srv_inf_sampling group_smp;
    const char **prompts;  /* [max_images] */
    uint64_t *seeds;       /* [max_images] */
    uint8_t *spare;        /* [max_images][image bytes]: where an answered job's images decode */
};

/* ---- answering jobs ------------------------------------------------------------------------------ */

/* The backend's device counters (engine thread: it owns the backend). */
static void publish_device(vs_srv_engine *e)
{
    vs_rt_counters dc;
    vs_rt_backend_counters(e->be, &dc);
    vs_srv_metrics_device(e->met, &dc);
}

static void publish_gauges(vs_srv_engine *e)
{
    int running = 0, waiting = 0;
    for (int i = 0; i < e->n_active; i++)
        if (e->active[i]->admitted > 0)
            running++;
        else
            waiting++;
    vs_srv_metrics_engine_jobs(e->met, running, waiting);
    if (e->pool) {
        vs_kv_stats ks;
        vs_kv_pool_stats(e->pool, &ks);
        int images[VS_KV_POLICY_COUNT] = {0};
        size_t pages[VS_KV_POLICY_COUNT] = {0};
        for (int i = 0; i < e->n_slots; i++) {
            const vs_srv_job *j = e->slots[i].job;
            images[j->p.kv_policy]++;
            pages[j->p.kv_policy] += j->pages_per_image;
        }
        vs_srv_metrics_kv(e->met, &ks, images, pages);
    }
    publish_device(e);
}

static void slot_release(vs_srv_engine *e, slot *s)
{
    vs_kv_image_end(e->ses, &s->im);
    memset(s, 0, sizeof *s);
}

/* Removes the job's running images and returns their pages. */
static void drop_slots(vs_srv_engine *e, vs_srv_job *j)
{
    int k = 0;
    for (int i = 0; i < e->n_slots; i++) {
        if (e->slots[i].job == j) {
            slot_release(e, &e->slots[i]);
        } else {
            if (k != i)
                e->slots[k] = e->slots[i];
            k++;
        }
    }
    for (int i = k; i < e->n_slots; i++)
        memset(&e->slots[i], 0, sizeof e->slots[i]);
    e->n_slots = k;
}

static void remove_active(vs_srv_engine *e, vs_srv_job *j)
{
    for (int i = 0; i < e->n_active; i++)
        if (e->active[i] == j) {
            memmove(e->active + i, e->active + i + 1, (size_t)(e->n_active - i - 1) * sizeof *e->active);
            e->n_active--;
            break;
        }
    if (e->admitting == j) {
        e->admitting = NULL;
        e->blocked = 0;
    }
}

/* Answers a job (http 200 or an error) and hands it back to its connection. The job must no
 * longer be in the queue. After notify the job belongs to the HTTP side: not touched again. */
static void answer(vs_srv_engine *e, vs_srv_job *j, int http, vs_status st, const char *type,
                   const char *code, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static void answer(vs_srv_engine *e, vs_srv_job *j, int http, vs_status st, const char *type,
                   const char *code, const char *fmt, ...)
{
    drop_slots(e, j);
    for (int i = 0; i < e->n_group; i++)
        if (e->group[i].job == j)
            e->group[i].job = NULL;
    remove_active(e, j);
    vs_kv_policy_free(j->own_policy);
    j->own_policy = NULL;
    j->policy = NULL;
    j->t_done = vs_now_s();
    j->http = http;
    j->status = st;
    j->err_type = type;
    j->err_code = code;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->msg, sizeof j->msg, fmt, ap);
        va_end(ap);
    }
    if (http == 200) {
        vs_srv_metrics_observe(e->met, VS_SRV_H_INFER, j->t_done - j->t_admit);
    } else if (vs_log_min_level <= VS_LOG_INFO) {
        vs_log_set_request_id(j->id);
        vs_log(VS_LOG_INFO, "engine", "request answered %d: %s", http, j->msg);
        vs_log_set_request_id(NULL);
    }
    /* before the HTTP side can answer: a client that has its answer reads metrics that count
     * its work (the device counters of its last step and decode included) */
    publish_gauges(e);
    atomic_fetch_sub(&e->n_jobs, 1);
    atomic_store_explicit(&j->state, VS_SRV_JOB_DONE, memory_order_release);
    j->notify(j->notify_ctx);
}

static void answer_gone(vs_srv_engine *e, vs_srv_job *j)
{
    answer(e, j, 499, VS_ERR_IO, "client_closed", "client_closed",
           "the client closed the connection; the request was dropped");
}

static void answer_deadline(vs_srv_engine *e, vs_srv_job *j, const char *where)
{
    answer(e, j, 504, VS_ERR_TIMEOUT, "timeout_error", "deadline_exceeded",
           "the request's deadline of %ld ms passed %s; raise timeout_ms (up to %ld) or retry when "
           "the server is less busy",
           j->p.timeout_ms, where, e->cfg->max_timeout_ms);
}

static void answer_shutdown(vs_srv_engine *e, vs_srv_job *j)
{
    answer(e, j, 503, VS_ERR_BUSY, "unavailable_error", "shutting_down",
           "the server is shutting down and could not finish this request; retry on another instance");
}

/* Jobs the engine holds count in n_jobs from the moment they leave the queue. */
static vs_srv_job *pop_job(vs_srv_engine *e)
{
    vs_srv_job *j = vs_srv_queue_pop(e->q);
    if (j)
        atomic_fetch_add(&e->n_jobs, 1);
    return j;
}

static int take_from_queue(vs_srv_engine *e, vs_srv_job *j)
{
    if (!vs_srv_queue_remove(e->q, j))
        return 0;
    atomic_fetch_add(&e->n_jobs, 1);
    return 1;
}

/* ---- sweeping: deadlines and hang-ups ------------------------------------------------------------ */

static int client_gone(short revents) { return (revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0; }

static void sweep(vs_srv_engine *e)
{
    double now = vs_now_s();
    size_t nq = vs_srv_queue_snapshot(e->q, e->snap, vs_srv_queue_capacity(e->q));
    int na = e->n_active;
    size_t np = 0;
    for (size_t i = 0; i < nq; i++)
        e->pfd[np++] = (struct pollfd){e->snap[i]->fd, POLLRDHUP, 0};
    for (int i = 0; i < na; i++)
        e->pfd[np++] = (struct pollfd){e->active[i]->fd, POLLRDHUP, 0};
    if (np && poll(e->pfd, (nfds_t)np, 0) < 0)
        for (size_t i = 0; i < np; i++)
            e->pfd[i].revents = 0;
    for (size_t i = 0; i < nq; i++) {
        vs_srv_job *j = e->snap[i];
        int gone = atomic_load(&j->gone) || (j->fd >= 0 && client_gone(e->pfd[i].revents));
        if ((gone || now > j->deadline) && take_from_queue(e, j)) {
            if (gone)
                answer_gone(e, j);
            else
                answer_deadline(e, j, "while it waited in the queue");
        }
    }
    /* answer() reorders active[]; work on a copy of the pointers polled */
    memcpy(e->held, e->active, (size_t)na * sizeof *e->held);
    for (int i = 0; i < na; i++) {
        vs_srv_job *j = e->held[i];
        int gone = atomic_load(&j->gone) || (j->fd >= 0 && client_gone(e->pfd[nq + (size_t)i].revents));
        if (gone)
            answer_gone(e, j);
        else if (now > j->deadline)
            answer_deadline(e, j, j->admitted ? "while it was generating"
                                  : e->inf    ? "while it waited for the running batch to end"
                                              : "while it waited for KV pages");
    }
}

/* ---- a lost device ------------------------------------------------------------------------------ */

static void device_lost(vs_srv_engine *e, const vs_err *err)
{
    if (atomic_load(&e->lost_pub))
        return;
    snprintf(e->lost_msg, sizeof e->lost_msg, "%s", err->msg);
    atomic_store_explicit(&e->lost_pub, e->lost_msg, memory_order_release);
    vs_log(VS_LOG_ERROR, "engine",
           "the device is lost; /health and /ready answer 503 and every request is refused until "
           "the process is restarted: %s",
           err->msg);
}

static void answer_lost(vs_srv_engine *e, vs_srv_job *j)
{
    answer(e, j, 503, VS_ERR_DEVICE_LOST, "unavailable_error", "device_lost",
           "the device failed and this server cannot generate until it is restarted; retry on "
           "another instance (%s)",
           e->lost_msg);
}

/* Answers everything queued or admitted (nothing runs once the device is lost). */
static void refuse_everything(vs_srv_engine *e)
{
    vs_srv_job *j;
    while ((j = pop_job(e)))
        answer_lost(e, j);
    while (e->n_active)
        answer_lost(e, e->active[0]);
}

static void abort_everything(vs_srv_engine *e)
{
    vs_srv_queue_close(e->q);
    vs_srv_job *j;
    while ((j = pop_job(e)))
        answer_shutdown(e, j);
    while (e->n_active)
        answer_shutdown(e, e->active[0]);
}

/* ---- admission ------------------------------------------------------------------------------------ */

/* The budget file a policy of kind `kind` reads: the server's (found once at start), or NULL. */
static const char *budget_file_of(const vs_srv_engine *e, int kind)
{
    return kind >= 0 && kind < VS_KV_POLICY_COUNT && e->budget_file[kind][0] ? e->budget_file[kind] : NULL;
}

/* The policy of a job, from the cache or new; NULL with err set when the policy rejects it. */
static const vs_kv_policy *policy_for(vs_srv_engine *e, vs_srv_job *j, vs_err *err)
{
    int kind = j->p.kv_policy;
    double budget = vs_kv_policy_def_of((vs_kv_policy_kind)kind)->compresses ? j->p.kv_budget : 1;
    for (int i = 0; i < e->n_policies; i++)
        if (e->policies[i].kind == kind && e->policies[i].budget == budget)
            return e->policies[i].p;
    vs_kv_policy *p = NULL;
    const char *file = budget_file_of(e, kind);
    if (vs_kv_policy_new((vs_kv_policy_kind)kind, budget, &e->model->cfg, file, &p, err) != VS_OK)
        return NULL;
    if (e->n_policies < POLICY_CACHE) {
        e->policies[e->n_policies].kind = kind;
        e->policies[e->n_policies].budget = budget;
        e->policies[e->n_policies++].p = p;
    } else {
        j->own_policy = p;
    }
    return p;
}

static void admit(vs_srv_engine *e)
{
    const vs_rt_config *c = &e->model->cfg;
    while (e->n_slots < e->max_images) {
        if (!e->admitting) {
            vs_srv_job *j = pop_job(e);
            if (!j)
                return;
            e->active[e->n_active++] = j;
            e->admitting = j;
            e->blocked = 0;
        }
        vs_srv_job *j = e->admitting;
        if (!j->policy) {
            vs_err perr = {0};
            if (!(j->policy = policy_for(e, j, &perr))) {
                answer(e, j, vs_srv_http_code(perr.code), perr.code, "invalid_request_error", "invalid_value",
                       "kv_policy %s at kv_budget %g: %s", vs_kv_policy_name((vs_kv_policy_kind)j->p.kv_policy),
                       j->p.kv_budget, perr.msg);
                continue;
            }
            j->pages_per_image = vs_kv_policy_peak_pages_per_image(j->policy, VS_KV_PAGE_TOKENS);
        }
        slot *s = &e->slots[e->n_slots];
        memset(s, 0, sizeof *s);
        vs_kv_admit a = vs_kv_image_reserve(e->ses, &s->im, j->policy);
        if (a == VS_KV_LATER) {
            if (!e->blocked) {
                e->blocked = 1;
                vs_srv_metrics_kv_refused(e->met);
            }
            return;
        }
        if (a == VS_KV_NEVER) {
            vs_srv_metrics_kv_refused(e->met);
            answer(e, j, 503, VS_ERR_KV_FULL, "unavailable_error", "kv_never",
                   "one image with kv_policy %s needs %zu KV pages (%.1f MB) but the pool has %zu in all: "
                   "lower kv_budget, use a compressing kv_policy, or raise the server's kv_pool_mb",
                   vs_kv_policy_name((vs_kv_policy_kind)j->p.kv_policy), j->pages_per_image,
                   (double)j->pages_per_image * (double)e->info.page_bytes / 1e6, e->info.pages_total);
            continue;
        }
        e->blocked = 0;
        s->job = j;
        s->index = j->admitted;
        vs_err err = {0};
        size_t img_bytes = (size_t)c->image_size * (size_t)c->image_size * 3;
        if (!j->rgb[s->index] && !(j->rgb[s->index] = malloc(img_bytes))) {
            slot_release(e, s);
            answer(e, j, 500, VS_ERR_NOMEM, "internal_error", "out_of_memory",
                   "out of memory for the image buffers");
            continue;
        }
        vs_kv_image_req req = {j->p.label, j->p.seed + (uint64_t)s->index, j->p.cfg, j->p.top_k, j->p.top_p};
        vs_status st = vs_kv_image_start(e->ses, &s->im, &req, &err);
        if (st != VS_OK) {
            slot_release(e, s);
            answer(e, j, 500, st, "internal_error", "engine_error", "could not start an image: %s", err.msg);
            continue;
        }
        e->n_slots++;
        if (j->admitted++ == 0) {
            j->t_admit = vs_now_s();
            vs_srv_metrics_observe(e->met, VS_SRV_H_QUEUE, j->t_admit - j->t_arrival);
        }
        if (j->admitted == j->p.n) {
            e->admitting = NULL;
            e->blocked = 0;
        }
        publish_gauges(e);
    }
}

/* ---- one step ------------------------------------------------------------------------------------- */

static void fail_running(vs_srv_engine *e, const vs_err *err)
{
    vs_log(VS_LOG_ERROR, "engine", "step failed, answering %d running requests with 500: %s", e->n_active,
           err->msg);
    while (e->n_slots)
        answer(e, e->slots[0].job, 500, err->code, "internal_error", "engine_error", "generation failed: %s",
               err->msg);
}

/* After a step: the streamed images whose scales done reach one of their preview points get
 * that preview decoded from their running f_hat. On this thread, between steps, so a preview
 * delays the batch by its decoder time (preview_decode_seconds). A failed preview fails its job
 * (and the other previews due at this step are skipped). */
static void previews(vs_srv_engine *e)
{
    const vs_rt_config *c = &e->model->cfg;
    for (int i = 0; i < e->n_slots; i++) {
        slot *s = &e->slots[i];
        vs_srv_job *j = s->job;
        int done = s->im.img.scale, np = j->stream ? vs_srv_stream_previews(c->n_scales, j->p.partial_images) : 0;
        for (int k = 0; k < np && done < c->n_scales; k++) {
            if (vs_srv_stream_preview_after(c->n_scales, np, k) != done)
                continue;
            vs_err err = {0};
            double t0 = vs_now_s();
            vs_status st = vs_rt_decode_preview(e->rt, &s->im.img, vs_srv_stream_preview_rgb(j->stream, s->index, k), &err);
            double dt = vs_now_s() - t0;
            j->decode_s += dt;
            if (st != VS_OK) {
                if (st == VS_ERR_DEVICE_LOST)
                    device_lost(e, &err);
                answer(e, j, 500, st, "internal_error", "engine_error", "decoding a preview failed: %s", err.msg);
                return; /* slots were compacted; the others' previews of this step are skipped */
            }
            vs_srv_metrics_observe(e->met, VS_SRV_H_PREVIEW, dt);
            vs_srv_stream_push_preview(j->stream, s->index, k, done);
        }
    }
}

static void step(vs_srv_engine *e)
{
    const vs_rt_config *c = &e->model->cfg;
    vs_err err = {0};
    int max_scale = 0, min_scale = c->n_scales, fail = 0;
    for (int i = 0; i < e->n_slots; i++) {
        slot *s = &e->slots[i];
        e->ptrs[i] = &s->im;
        if (s->im.img.scale > max_scale)
            max_scale = s->im.img.scale;
        if (s->im.img.scale < min_scale)
            min_scale = s->im.img.scale;
        fail |= s->im.img.label == e->fail_label;
    }
    int n = e->n_slots;
    double t0 = vs_now_s();
    if (fail)
        vs_err_set(&err, VS_ERR_INTERNAL, "failpoint: a step holding class %d fails (VARSERVE_FAILPOINT)",
                   e->fail_label);
    double kv_s = 0;
    vs_status st = VS_OK;
    if (!fail)
        st = vs_kv_session_step(e->ses, e->ptrs, n, NULL, &kv_s, &err);
    if (fail || st != VS_OK) {
        if (st == VS_ERR_DEVICE_LOST)
            device_lost(e, &err);
        fail_running(e, &err);
        return;
    }
    double t1 = vs_now_s();
    vs_srv_metrics_step(e->met, max_scale, t1 - t0, kv_s, VS_KV_ROWS_PER_IMAGE * n);
    vs_log(VS_LOG_DEBUG, "engine", "step: %d images at scales %d..%d, %.1f ms", n, min_scale, max_scale,
           (t1 - t0) * 1e3);

    previews(e);

    /* decode the finished images together (one batched decode); answer jobs whose images are all
     * done. Each image is charged an equal share of the decode's time. */
    int nd = 0;
    for (int i = 0; i < e->n_slots; i++) {
        slot *s = &e->slots[i];
        if (s->im.img.scale < c->n_scales)
            continue;
        e->ptrs[nd] = &s->im;
        e->dec_rgb[nd++] = s->job->rgb[s->index];
    }
    if (nd > 0) {
        double d0 = vs_now_s();
        vs_status dst = vs_kv_session_decode(e->ses, e->ptrs, nd, e->dec_rgb, NULL, &err);
        double share = (vs_now_s() - d0) / nd;
        if (dst == VS_ERR_DEVICE_LOST)
            device_lost(e, &err);
        for (int i = 0; i < e->n_slots;) {
            slot *s = &e->slots[i];
            if (s->im.img.scale < c->n_scales) {
                i++;
                continue;
            }
            vs_srv_job *j = s->job;
            int index = s->index;
            j->decode_s += share;
            if (dst != VS_OK) {
                answer(e, j, 500, dst, "internal_error", "engine_error", "decoding failed: %s", err.msg);
                i = 0; /* slots were compacted */
                continue;
            }
            slot_release(e, s);
            memmove(e->slots + i, e->slots + i + 1, (size_t)(e->n_slots - i - 1) * sizeof *e->slots);
            e->n_slots--;
            memset(&e->slots[e->n_slots], 0, sizeof e->slots[e->n_slots]);
            vs_srv_metrics_images_policy(e->met, j->p.kv_policy, 1);
            if (j->stream)
                vs_srv_stream_push_image(j->stream, index);
            if (++j->finished == j->p.n)
                answer(e, j, 200, VS_OK, NULL, NULL, NULL);
            else
                publish_gauges(e);
        }
    }
    publish_device(e); /* the step's and the decoder's device work */
}

/* What /info says of the model and the backend, for either family. */
static void info_model(vs_srv_engine_info *in, const char *family, const vs_rt_config *mc, const char *path,
                       size_t n_params, const vs_rt_backend *be)
{
    in->family = family;
    in->mc = mc;
    snprintf(in->model_path, sizeof in->model_path, "%s", path);
    const char *base = strrchr(path, '/');
    snprintf(in->model_name, sizeof in->model_name, "%.127s", base ? base + 1 : path);
    char *dot = strrchr(in->model_name, '.');
    if (dot && dot != in->model_name)
        *dot = 0;
    in->n_params = n_params;
    snprintf(in->backend, sizeof in->backend, "%s", be->ops->name);
    in->threads = be->threads;
    snprintf(in->simd, sizeof in->simd, "%s", be->simd ? be->simd : "");
    snprintf(in->blas, sizeof in->blas, "%s", be->blas ? be->blas : "");
}

/* ---- Infinity: one lockstep batch at a time ----------------------------------------------------- */

static int same_sampling(const vs_srv_inf_sampling *a, const vs_srv_inf_sampling *b)
{
    return a->cfg == b->cfg && a->tau == b->tau && a->top_k == b->top_k && a->top_p == b->top_p;
}

/* Answers every job with an image in the batch, and ends it. */
static void inf_fail(vs_srv_engine *e, int http, const vs_err *err, const char *what)
{
    vs_log(VS_LOG_ERROR, "engine", "%s failed, answering the batch's requests %d: %s", what, http, err->msg);
    for (int i = 0; i < e->n_group; i++)
        if (e->group[i].job)
            answer(e, e->group[i].job, http, err->code, http == 400 ? "invalid_request_error" : "internal_error",
                   http == 400 ? "invalid_value" : "engine_error", "%s failed: %s", what, err->msg);
    e->n_group = 0;
}

/* When no batch runs: images of the jobs in priority order, while they share the first one's
 * sampling settings and the batch has room (a job with more images than room goes on in the next
 * batch; a job whose settings differ starts the next one). */
static void inf_admit(vs_srv_engine *e)
{
    if (e->n_group)
        return;
    size_t img_bytes = (size_t)e->inf_mc.image_size * (size_t)e->inf_mc.image_size * 3;
    while (e->n_group < e->max_images) {
        if (!e->admitting) {
            vs_srv_job *j = pop_job(e);
            if (!j)
                break;
            e->active[e->n_active++] = j;
            e->admitting = j;
        }
        vs_srv_job *j = e->admitting;
        vs_srv_inf_sampling s = {j->p.cfg, j->p.tau, j->p.top_k, j->p.top_p};
        if (e->n_group && !same_sampling(&s, &e->group_smp))
            break;
        if (!j->rgb[j->admitted] && !(j->rgb[j->admitted] = malloc(img_bytes))) {
            answer(e, j, 500, VS_ERR_NOMEM, "internal_error", "out_of_memory", "out of memory for the image buffers");
            continue;
        }
        e->group_smp = s;
        e->prompts[e->n_group] = j->p.prompt;
        e->seeds[e->n_group] = j->p.seed + (uint64_t)j->admitted;
        e->group[e->n_group++] = (struct inf_image){j, j->admitted};
        if (j->admitted++ == 0) {
            j->t_admit = vs_now_s();
            vs_srv_metrics_observe(e->met, VS_SRV_H_QUEUE, j->t_admit - j->t_arrival);
        }
        if (j->admitted == j->p.n)
            e->admitting = NULL;
    }
    if (!e->n_group)
        return;
    vs_err err = {0};
    vs_status st = vs_srv_inf_begin(e->inf, e->prompts, e->seeds, e->n_group, &e->group_smp, &err);
    if (st != VS_OK) {
        inf_fail(e, st == VS_ERR_INVALID ? 400 : 500, &err, "encoding the prompts");
        return;
    }
    publish_gauges(e);
}

/* The batch's next scale; after the last, the decode and the answers. */
static void inf_step(vs_srv_engine *e)
{
    vs_err err = {0};
    double t0 = vs_now_s();
    int more = vs_srv_inf_step(e->inf, &err);
    if (more < 0) {
        inf_fail(e, 500, &err, "generation");
        return;
    }
    double t1 = vs_now_s();
    int scale = vs_srv_inf_scales_done(e->inf) - 1;
    vs_srv_metrics_step(e->met, scale, t1 - t0, 0, VS_KV_ROWS_PER_IMAGE * e->n_group);
    vs_log(VS_LOG_DEBUG, "engine", "step: %d images at scale %d, %.1f ms", e->n_group, scale, (t1 - t0) * 1e3);
    if (more)
        return;
    size_t img_bytes = (size_t)e->inf_mc.image_size * (size_t)e->inf_mc.image_size * 3;
    for (int i = 0; i < e->n_group; i++) {
        const struct inf_image *g = &e->group[i];
        e->dec_rgb[i] = g->job ? g->job->rgb[g->index] : e->spare + (size_t)i * img_bytes;
    }
    vs_status st = vs_srv_inf_decode(e->inf, e->dec_rgb, &err);
    double share = (vs_now_s() - t1) / e->n_group;
    if (st != VS_OK) {
        if (st == VS_ERR_DEVICE_LOST)
            device_lost(e, &err);
        inf_fail(e, 500, &err, "decoding");
        return;
    }
    for (int i = 0; i < e->n_group; i++) {
        vs_srv_job *j = e->group[i].job;
        if (!j)
            continue;
        j->decode_s += share;
        vs_srv_metrics_images_policy(e->met, j->p.kv_policy, 1);
        if (++j->finished == j->p.n)
            answer(e, j, 200, VS_OK, NULL, NULL, NULL);
    }
    e->n_group = 0;
    publish_gauges(e);
    publish_device(e);
}

/* An Infinity model (load's other half): the model, its encoder and tokenizer (config keys t5,
 * spiece) and the decoder; what the HTTP side reads of it. */
static vs_status load_infinity(vs_srv_engine *e, vs_rt_backend_kind kind, double t0, vs_err *err)
{
    const vs_cfg *cfg = e->cfg;
    e->max_images = (int)cfg->max_batch_images;
    vs_srv_inf_files files = {cfg->model, cfg->t5, cfg->spiece},
                     names = {"config key 'model'", "config key 't5'", "config key 'spiece'"};
    vs_status st = vs_srv_inf_open(&files, &names, kind, (int)cfg->threads, e->max_images, &e->inf, err);
    if (st != VS_OK)
        return st;
    const vs_rt_infinity *m = vs_srv_inf_model(e->inf);
    const vs_rt_infinity_config *ic = &m->cfg;
    vs_rt_config *mc = &e->inf_mc;
    mc->depth = ic->depth;
    mc->embed_dim = ic->C;
    mc->num_heads = ic->heads;
    mc->head_dim = ic->head_dim;
    mc->ffn_dim = ic->ffn;
    mc->n_scales = ic->n_scales;
    for (int s = 0; s < ic->n_scales; s++) {
        mc->patch_nums[s] = ic->hw[s][1];
        mc->scale_offset[s + 1] = mc->scale_offset[s] + ic->hw[s][0] * ic->hw[s][1];
    }
    mc->vocab_size = 2; /* a token is d bits, each drawn from two logits */
    mc->z_channels = ic->d;
    mc->image_size = vs_srv_inf_image_size(e->inf);
    mc->image_channels = 3;

    size_t qcap = vs_srv_queue_capacity(e->q), img_bytes = (size_t)mc->image_size * (size_t)mc->image_size * 3;
    e->dec_rgb = calloc((size_t)e->max_images, sizeof *e->dec_rgb);
    e->active = calloc((size_t)e->max_images + 1, sizeof *e->active);
    e->held = calloc((size_t)e->max_images + 1, sizeof *e->held);
    e->snap = calloc(qcap, sizeof *e->snap);
    e->pfd = calloc(qcap + (size_t)e->max_images + 1, sizeof *e->pfd);
    e->group = calloc((size_t)e->max_images, sizeof *e->group);
    e->prompts = calloc((size_t)e->max_images, sizeof *e->prompts);
    e->seeds = calloc((size_t)e->max_images, sizeof *e->seeds);
    e->spare = malloc((size_t)e->max_images * img_bytes);
    if (!e->dec_rgb || !e->active || !e->held || !e->snap || !e->pfd || !e->group || !e->prompts || !e->seeds ||
        !e->spare)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory for the engine's tables");
    e->fail_label = -1;

    vs_srv_engine_info *in = &e->info;
    info_model(in, "infinity", mc, cfg->model, m->n_params, vs_srv_inf_backend(e->inf));
    in->cfg = VS_SRV_INF_DEFAULT_CFG;
    in->tau = VS_SRV_INF_DEFAULT_TAU;
    in->top_k = VS_SRV_INF_DEFAULT_TOP_K > mc->vocab_size ? mc->vocab_size : VS_SRV_INF_DEFAULT_TOP_K;
    in->top_p = VS_SRV_INF_DEFAULT_TOP_P;
    in->policy = vs_kv_policy_name(VS_KV_POLICY_FULL);
    in->kv_policy = VS_KV_POLICY_FULL;
    in->kv_budget = 1;
    in->kv_dtype = vs_rt_kv_dtype_name(4);
    in->images_fit = (size_t)e->max_images;
    in->max_batch_images = e->max_images;
    in->load_s = vs_now_s() - t0;
    vs_srv_metrics_set_model(e->met, VS_VERSION, in->backend, in->model_name, in->load_s, mc->n_scales);
    publish_gauges(e);
    vs_log(VS_LOG_INFO, "engine",
           "loaded %s (Infinity, %zu params; text encoder %s) in %.2f s: the transformer in FP32 on the host, "
           "the decoder on %s (%d threads); batches of up to %d images, in lockstep",
           in->model_path, in->n_params, cfg->t5, in->load_s, in->backend, in->threads, e->max_images);
    return VS_OK;
}

/* ---- loading and the thread ----------------------------------------------------------------------- */

static vs_status load(vs_srv_engine *e, vs_err *err)
{
    const vs_cfg *cfg = e->cfg;
    double t0 = vs_now_s();
    vs_rt_backend_kind kind;
    if (vs_rt_backend_parse(cfg->backend, &kind) != 0)
        return vs_err_set(err, VS_ERR_INVALID, "config key 'backend' must be auto, cpu or cuda (got '%s')",
                          cfg->backend);
    const char *family = vs_srv_cli_family(cfg->model);
    if (family && strcmp(family, "an Infinity") == 0)
        return load_infinity(e, kind, t0, err);
    if (cfg->t5[0] || cfg->spiece[0])
        return vs_err_set(err, VS_ERR_INVALID,
                          "config keys 't5' and 'spiece' are for Infinity models; '%s' is a class-conditional "
                          "VAR model: leave them empty",
                          cfg->model);
    vs_status st = vs_rt_model_load(cfg->model, &e->model, err);
    if (st != VS_OK)
        return vs_err_wrap(err, "config key 'model' ('%s')", cfg->model);
    const vs_rt_config *c = &e->model->cfg;
    if ((st = vs_rt_backend_new(kind, (int)cfg->threads, &e->be, err)) != VS_OK)
        return vs_err_wrap(err, "config key 'backend' ('%s')", cfg->backend);
    /* device memory before the model: what the weights and scratch take is the difference */
    vs_rt_mem_info dev0 = {0};
    if (e->be->ops->mem_info && (st = e->be->ops->mem_info(e->be, &dev0, err)) != VS_OK)
        return vs_err_wrap(err, "device memory");
    e->max_images = (int)cfg->max_batch_images;
    if ((st = vs_rt_engine_new(e->model, e->be, e->max_images, &e->rt, err)) != VS_OK)
        return vs_err_wrap(err, "config key 'max_batch_images' (%d)", e->max_images);

    /* the default policy: requests that name none use it; the pool must hold one image under it */
    vs_kv_policy_kind kv_kind;
    if (vs_kv_policy_parse(cfg->kv_policy, &kv_kind) != 0)
        return vs_err_set(err, VS_ERR_INVALID, "config key 'kv_policy' ('%s') names no policy", cfg->kv_policy);
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++) {
        const vs_kv_policy_def *d = vs_kv_policy_def_of((vs_kv_policy_kind)k);
        const char *configured = d->budget_file == VS_KV_BUDGET_FILE_SCALEKV ? cfg->kv_budget_file : NULL;
        if (!vs_kv_policy_budget_file(d->kind, cfg->model, configured, e->budget_file[k], sizeof e->budget_file[k]))
            e->budget_file[k][0] = 0;
    }
    vs_kv_policy *full = NULL, *def = NULL;
    if ((st = vs_kv_policy_new(VS_KV_POLICY_FULL, 1, c, NULL, &full, err)) != VS_OK)
        return st;
    e->policies[e->n_policies].kind = VS_KV_POLICY_FULL;
    e->policies[e->n_policies].budget = 1;
    e->policies[e->n_policies++].p = full;
    if (kv_kind == VS_KV_POLICY_FULL) {
        def = full;
    } else {
        const char *file = budget_file_of(e, kv_kind);
        if ((st = vs_kv_policy_new(kv_kind, cfg->kv_budget, c, file, &def, err)) != VS_OK)
            return vs_err_wrap(err, "config keys 'kv_policy' (%s), 'kv_budget' (%g)", cfg->kv_policy, cfg->kv_budget);
        e->policies[e->n_policies].kind = (int)kv_kind;
        e->policies[e->n_policies].budget = cfg->kv_budget;
        e->policies[e->n_policies++].p = def;
    }
    vs_kv_geometry geo = vs_kv_geometry_of(c, VS_KV_PAGE_TOKENS, e->be->kv_elem_bytes);
    size_t page_bytes = vs_kv_page_bytes(geo);
    size_t full_per_image = vs_kv_policy_peak_pages_per_image(full, VS_KV_PAGE_TOKENS);
    size_t per_image = vs_kv_policy_peak_pages_per_image(def, VS_KV_PAGE_TOKENS);
    /* automatic: room for a full batch even of full-cache requests (the batch never holds more),
     * on a device at most what is free after the weights and every scratch, less the margin */
    size_t bytes = cfg->kv_pool_mb ? (size_t)cfg->kv_pool_mb << 20
                                   : full_per_image * page_bytes * (size_t)e->max_images;
    if (e->be->ops->mem_info) {
        vs_rt_mem_info dev;
        if ((st = e->be->ops->mem_info(e->be, &dev, err)) != VS_OK)
            return vs_err_wrap(err, "device memory");
        size_t margin = device_margin(dev.total);
        size_t fits = dev.free > margin ? (dev.free - margin) / page_bytes * page_bytes : 0;
        size_t engine_bytes = dev0.free > dev.free ? dev0.free - dev.free : 0;
        if (cfg->kv_pool_mb && bytes > fits)
            return vs_err_set(err, VS_ERR_NOMEM,
                              "config key 'kv_pool_mb' (%ld) does not fit on the device: after the "
                              "weights and scratch for max_batch_images %d (%.0f MiB), %.0f MiB of "
                              "%.0f are free and %.0f stay free as a margin, so at most %zu MiB "
                              "fit: lower kv_pool_mb (or max_batch_images), or 0 for automatic",
                              cfg->kv_pool_mb, e->max_images, mib(engine_bytes), mib(dev.free),
                              mib(dev.total), mib(margin), fits >> 20);
        if (!cfg->kv_pool_mb && bytes > fits) {
            if (fits / page_bytes < per_image)
                return vs_err_set(
                    err, VS_ERR_NOMEM,
                    "config key 'kv_pool_mb' (0, automatic): after the weights and scratch for "
                    "max_batch_images %d (%.0f MiB), %.0f MiB of %.0f are free and %.0f stay free "
                    "as a margin, which leaves %.1f MiB for the KV pool, but one image needs %.1f "
                    "MiB with kv_policy %s: lower max_batch_images or use a compressing kv_policy",
                    e->max_images, mib(engine_bytes), mib(dev.free), mib(dev.total), mib(margin),
                    mib(fits), mib(per_image * page_bytes), cfg->kv_policy);
            vs_log(VS_LOG_WARN, "engine",
                   "kv_pool_mb 0: a full batch of %d images at full cache needs %.1f MiB but the "
                   "device has %.1f MiB left for the pool (after %.0f MiB of weights and scratch "
                   "and a margin of %.0f MiB); the pool gets that",
                   e->max_images, mib(bytes), mib(fits), mib(engine_bytes), mib(margin));
            bytes = fits;
        }
    }
    if (bytes / page_bytes < per_image)
        return vs_err_set(err, VS_ERR_INVALID,
                          "config key 'kv_pool_mb' (%ld) holds %zu KV pages but one image of this model "
                          "needs %zu (%.1f MiB) with kv_policy %s: raise kv_pool_mb to at least %zu, or 0 "
                          "for automatic",
                          cfg->kv_pool_mb, bytes / page_bytes, per_image,
                          (double)(per_image * page_bytes) / 1048576.0, cfg->kv_policy,
                          (per_image * page_bytes + 1048575) >> 20);
    vs_kv_allocator alloc = {e->be, vs_rt_backend_alloc_raw, vs_rt_backend_free_raw};
    if ((st = vs_kv_pool_init(bytes, geo, &alloc, &e->pool, err)) != VS_OK)
        return vs_err_wrap(err, "config key 'kv_pool_mb' (%ld)", cfg->kv_pool_mb);
    if ((st = vs_kv_session_new(e->rt, e->pool, e->max_images, &e->ses, err)) != VS_OK)
        return st;

    const char *fp = getenv("VARSERVE_FAILPOINT");
    e->fail_label = fp && strncmp(fp, "label:", 6) == 0 ? atoi(fp + 6) : -1;
    size_t qcap = vs_srv_queue_capacity(e->q);
    e->slots = calloc((size_t)e->max_images, sizeof *e->slots);
    e->ptrs = calloc((size_t)e->max_images, sizeof *e->ptrs);
    e->dec_rgb = calloc((size_t)e->max_images, sizeof *e->dec_rgb);
    e->active = calloc((size_t)e->max_images + 1, sizeof *e->active);
    e->held = calloc((size_t)e->max_images + 1, sizeof *e->held);
    e->snap = calloc(qcap, sizeof *e->snap);
    e->pfd = calloc(qcap + (size_t)e->max_images + 1, sizeof *e->pfd);
    if (!e->slots || !e->ptrs || !e->dec_rgb || !e->active || !e->held || !e->snap || !e->pfd)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory for the engine's tables");

    vs_kv_stats ks;
    vs_kv_pool_stats(e->pool, &ks);
    vs_srv_engine_info *in = &e->info;
    info_model(in, "var", c, cfg->model, e->model->n_params, e->be);
    in->cfg = c->default_cfg >= 0 ? c->default_cfg : cfg->default_cfg;
    in->top_k = c->default_top_k >= 0 ? c->default_top_k : (int)cfg->default_top_k;
    if (in->top_k > c->vocab_size)
        in->top_k = c->vocab_size;
    in->top_p = c->default_top_p >= 0 ? c->default_top_p : cfg->default_top_p;
    in->policy = vs_kv_policy_name(kv_kind);
    in->kv_policy = (int)kv_kind;
    in->kv_budget = cfg->kv_budget;
    snprintf(in->policy_source, sizeof in->policy_source, "%s", vs_kv_policy_source(def));
    in->page_bytes = ks.page_bytes;
    in->kv_dtype = vs_rt_kv_dtype_name((int)ks.elem_bytes);
    in->pages_total = ks.pages_total;
    in->pages_per_image = per_image;
    in->full_pages_per_image = full_per_image;
    in->images_fit = ks.pages_total / per_image;
    in->max_batch_images = e->max_images;
    in->load_s = vs_now_s() - t0;
    vs_srv_metrics_set_model(e->met, VS_VERSION, in->backend, in->model_name, in->load_s, c->n_scales);
    publish_gauges(e);
    vs_log(VS_LOG_INFO, "engine",
           "loaded %s (%zu params) in %.2f s on %s (%d threads); KV pool %.1f MiB = %zu %s pages; "
           "policy %s (%s): %zu pages per image, %zu images fit; up to %d images per step",
           in->model_path, in->n_params, in->load_s, in->backend, in->threads,
           (double)(ks.pages_total * ks.page_bytes) / 1048576.0, ks.pages_total, in->kv_dtype,
           in->policy,
           kv_kind == VS_KV_POLICY_FULL ? "every token" : in->policy_source, in->pages_per_image,
           in->images_fit, e->max_images);
    return VS_OK;
}

static void teardown(vs_srv_engine *e)
{
    vs_srv_inf_close(e->inf);
    e->inf = NULL;
    free(e->group);
    free(e->prompts);
    free(e->seeds);
    free(e->spare);
    for (int i = 0; i < e->n_slots; i++)
        slot_release(e, &e->slots[i]);
    e->n_slots = 0;
    vs_kv_session_free(e->ses);
    e->ses = NULL;
    vs_kv_pool_free(e->pool);
    vs_rt_engine_free(e->rt);
    vs_rt_backend_free(e->be);
    vs_rt_model_free(e->model);
    e->pool = NULL;
    e->rt = NULL;
    e->be = NULL;
    e->model = NULL;
    free(e->slots);
    free(e->ptrs);
    free(e->dec_rgb);
    free(e->active);
    free(e->held);
    free(e->snap);
    free(e->pfd);
    for (int i = 0; i < e->n_policies; i++)
        vs_kv_policy_free(e->policies[i].p);
    e->n_policies = 0;
}

static void *engine_main(void *arg)
{
    vs_srv_engine *e = arg;
    vs_err err = {0};
    vs_status st = load(e, &err);
    pthread_mutex_lock(&e->mu);
    e->load_state = st == VS_OK ? 1 : -1;
    e->load_err = err;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (st != VS_OK) {
        teardown(e);
        return NULL;
    }
    atomic_store_explicit(&e->info_pub, &e->info, memory_order_release);

    while (!atomic_load(&e->stop)) {
        if (atomic_load(&e->abort_all)) {
            abort_everything(e);
            vs_srv_queue_wait(e->q, 0.05);
            continue;
        }
        if (atomic_load(&e->lost_pub)) {
            refuse_everything(e);
            vs_srv_queue_wait(e->q, 0.05);
            continue;
        }
        sweep(e);
        if (e->inf) {
            inf_admit(e);
            if (e->n_group == 0)
                vs_srv_queue_wait(e->q, 0.05);
            else
                inf_step(e);
            continue;
        }
        admit(e);
        if (e->n_slots == 0) {
            vs_srv_queue_wait(e->q, 0.05);
            continue;
        }
        step(e);
    }
    abort_everything(e);
    teardown(e);
    return NULL;
}

vs_status vs_srv_engine_start(const vs_cfg *cfg, vs_srv_queue *q, vs_srv_metrics *m,
                              vs_srv_engine **out, vs_err *err)
{
    vs_srv_engine *e = calloc(1, sizeof *e);
    if (!e)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    e->cfg = cfg;
    e->q = q;
    e->met = m;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    atomic_init(&e->info_pub, NULL);
    atomic_init(&e->lost_pub, NULL);
    atomic_init(&e->stop, 0);
    atomic_init(&e->abort_all, 0);
    atomic_init(&e->n_jobs, 0);
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->cv);
        free(e);
        return vs_err_set(err, VS_ERR_INTERNAL, "cannot start the engine thread");
    }
    *out = e;
    return VS_OK;
}

int vs_srv_engine_wait_loaded(vs_srv_engine *e, double timeout_s, vs_err *err)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long long ns = (long long)ts.tv_nsec + (long long)(timeout_s * 1e9);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    pthread_mutex_lock(&e->mu);
    while (e->load_state == 0)
        if (pthread_cond_timedwait(&e->cv, &e->mu, &ts) != 0)
            break;
    int s = e->load_state;
    if (s < 0 && err)
        *err = e->load_err;
    pthread_mutex_unlock(&e->mu);
    return s;
}

const vs_srv_engine_info *vs_srv_engine_info_get(vs_srv_engine *e)
{
    return atomic_load_explicit(&e->info_pub, memory_order_acquire);
}

int vs_srv_engine_jobs(vs_srv_engine *e) { return atomic_load(&e->n_jobs); }

const char *vs_srv_engine_lost(vs_srv_engine *e)
{
    return atomic_load_explicit(&e->lost_pub, memory_order_acquire);
}

void vs_srv_engine_abort(vs_srv_engine *e)
{
    vs_srv_queue_close(e->q);
    atomic_store(&e->abort_all, 1);
    vs_srv_queue_wake(e->q);
}

void vs_srv_engine_stop(vs_srv_engine *e)
{
    if (!e)
        return;
    atomic_store(&e->stop, 1);
    vs_srv_queue_wake(e->q);
    pthread_join(e->thread, NULL);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}
