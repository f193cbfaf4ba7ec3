/* server/queue.c — see queue.h. */
#include "server/queue.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct vs_srv_queue {
    size_t cap; /* immutable */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* guarded by mu */
    vs_srv_job **jobs; /* [cap], sorted: priority desc, seq asc */
    size_t len, reserved;
    unsigned long long next_seq;
    int closed, woken;
    /* len + reserved, written under mu, read without it by vs_srv_queue_full: a refused request
     * costs one load rather than a lock handoff with the engine */
    atomic_size_t pending;
};

vs_status vs_srv_queue_new(size_t capacity, vs_srv_queue **out, vs_err *err)
{
    if (capacity < 1)
        return vs_err_set(err, VS_ERR_INVALID, "queue capacity must be at least 1");
    vs_srv_queue *q = calloc(1, sizeof *q);
    if (!q || !(q->jobs = calloc(capacity, sizeof *q->jobs))) {
        free(q);
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory for a queue of %zu", capacity);
    }
    q->cap = capacity;
    atomic_init(&q->pending, 0);
    pthread_mutex_init(&q->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cv, &ca);
    pthread_condattr_destroy(&ca);
    *out = q;
    return VS_OK;
}

void vs_srv_queue_free(vs_srv_queue *q)
{
    if (!q)
        return;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q->jobs);
    free(q);
}

vs_srv_q_result vs_srv_queue_reserve(vs_srv_queue *q)
{
    pthread_mutex_lock(&q->mu);
    vs_srv_q_result r = q->closed ? VS_SRV_Q_CLOSED : q->len + q->reserved >= q->cap ? VS_SRV_Q_FULL : VS_SRV_Q_OK;
    if (r == VS_SRV_Q_OK)
        q->reserved++;
    atomic_store_explicit(&q->pending, q->len + q->reserved, memory_order_relaxed);
    pthread_mutex_unlock(&q->mu);
    return r;
}

void vs_srv_queue_unreserve(vs_srv_queue *q)
{
    pthread_mutex_lock(&q->mu);
    if (q->reserved)
        q->reserved--;
    atomic_store_explicit(&q->pending, q->len + q->reserved, memory_order_relaxed);
    pthread_mutex_unlock(&q->mu);
}

void vs_srv_queue_push(vs_srv_queue *q, vs_srv_job *j)
{
    pthread_mutex_lock(&q->mu);
    if (q->reserved)
        q->reserved--;
    j->seq = q->next_seq++;
    size_t i = q->len;
    while (i > 0 && q->jobs[i - 1]->p.priority < j->p.priority)
        i--;
    memmove(q->jobs + i + 1, q->jobs + i, (q->len - i) * sizeof *q->jobs);
    q->jobs[i] = j;
    q->len++;
    atomic_store_explicit(&q->pending, q->len + q->reserved, memory_order_relaxed);
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

vs_srv_job *vs_srv_queue_pop(vs_srv_queue *q)
{
    pthread_mutex_lock(&q->mu);
    vs_srv_job *j = NULL;
    if (q->len) {
        j = q->jobs[0];
        q->len--;
        memmove(q->jobs, q->jobs + 1, q->len * sizeof *q->jobs);
        atomic_store_explicit(&q->pending, q->len + q->reserved, memory_order_relaxed);
    }
    pthread_mutex_unlock(&q->mu);
    return j;
}

int vs_srv_queue_remove(vs_srv_queue *q, vs_srv_job *j)
{
    pthread_mutex_lock(&q->mu);
    int found = 0;
    for (size_t i = 0; i < q->len; i++)
        if (q->jobs[i] == j) {
            q->len--;
            memmove(q->jobs + i, q->jobs + i + 1, (q->len - i) * sizeof *q->jobs);
            atomic_store_explicit(&q->pending, q->len + q->reserved, memory_order_relaxed);
            found = 1;
            break;
        }
    pthread_mutex_unlock(&q->mu);
    return found;
}

size_t vs_srv_queue_snapshot(vs_srv_queue *q, vs_srv_job **out, size_t cap)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->len < cap ? q->len : cap;
    memcpy(out, q->jobs, n * sizeof *out);
    pthread_mutex_unlock(&q->mu);
    return n;
}

void vs_srv_queue_wait(vs_srv_queue *q, double timeout_s)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long ns = (long long)ts.tv_nsec + (long long)(timeout_s * 1e9);
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    pthread_mutex_lock(&q->mu);
    while (q->len == 0 && !q->woken)
        if (pthread_cond_timedwait(&q->cv, &q->mu, &ts) == ETIMEDOUT)
            break;
    q->woken = 0;
    pthread_mutex_unlock(&q->mu);
}

void vs_srv_queue_wake(vs_srv_queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->woken = 1;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

void vs_srv_queue_close(vs_srv_queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

size_t vs_srv_queue_length(vs_srv_queue *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->len;
    pthread_mutex_unlock(&q->mu);
    return n;
}

size_t vs_srv_queue_pending(vs_srv_queue *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->len + q->reserved;
    pthread_mutex_unlock(&q->mu);
    return n;
}

int vs_srv_queue_full(vs_srv_queue *q)
{
    return atomic_load_explicit(&q->pending, memory_order_relaxed) >= q->cap;
}

size_t vs_srv_queue_capacity(const vs_srv_queue *q) { return q->cap; }
