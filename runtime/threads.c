/* runtime/threads.c — see threads.h. Workers sleep on a condition variable between jobs; a job is
 * published with a generation counter and joined when every worker has reported done. Each worker
 * flushes subnormals to zero before its first job (runtime/fpenv.h says why). */
#include "runtime/threads.h"

#include <pthread.h>
#include <stdlib.h>

#include "runtime/fpenv.h"

struct vs_rt_tpool {
    int n;                  /* workers including the caller */
    pthread_t *tids;        /* [n-1] */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned long gen;      /* guarded by mu */
    int pending;            /* guarded by mu */
    int quit;               /* guarded by mu */
    vs_rt_task_fn fn;       /* guarded by mu; read by workers after gen changes */
    void *ctx;
    size_t total;
};

typedef struct {
    vs_rt_tpool *tp;
    int id;
} worker_arg;

static void chunk(size_t total, int n, int id, size_t *b, size_t *e)
{
    size_t per = total / (size_t)n, rem = total % (size_t)n;
    *b = (size_t)id * per + ((size_t)id < rem ? (size_t)id : rem);
    *e = *b + per + ((size_t)id < rem);
}

static void *worker(void *p)
{
    worker_arg *wa = p;
    vs_rt_tpool *tp = wa->tp;
    int id = wa->id;
    free(wa);
    vs_rt_fp_env_init(); /* this thread's own MXCSR/FPCR: set here, not inherited by chance */
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&tp->mu);
        while (tp->gen == seen && !tp->quit)
            pthread_cond_wait(&tp->go, &tp->mu);
        if (tp->quit) {
            pthread_mutex_unlock(&tp->mu);
            return NULL;
        }
        seen = tp->gen;
        vs_rt_task_fn fn = tp->fn;
        void *ctx = tp->ctx;
        size_t total = tp->total;
        pthread_mutex_unlock(&tp->mu);
        size_t b, e;
        chunk(total, tp->n, id, &b, &e);
        if (b < e)
            fn(ctx, b, e, id);
        pthread_mutex_lock(&tp->mu);
        if (--tp->pending == 0)
            pthread_cond_signal(&tp->done);
        pthread_mutex_unlock(&tp->mu);
    }
}

vs_rt_tpool *vs_rt_tpool_new(int threads)
{
    vs_rt_tpool *tp = calloc(1, sizeof *tp);
    if (!tp)
        return NULL;
    tp->n = threads < 1 ? 1 : threads;
    pthread_mutex_init(&tp->mu, NULL);
    pthread_cond_init(&tp->go, NULL);
    pthread_cond_init(&tp->done, NULL);
    tp->tids = calloc((size_t)tp->n, sizeof *tp->tids);
    if (!tp->tids) {
        free(tp);
        return NULL;
    }
    for (int i = 1; i < tp->n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) {
            wa->tp = tp;
            wa->id = i;
        }
        if (!wa || pthread_create(&tp->tids[i - 1], NULL, worker, wa) != 0) {
            free(wa);
            tp->n = i; /* keep the workers that started */
            break;
        }
    }
    return tp;
}

void vs_rt_tpool_free(vs_rt_tpool *tp)
{
    if (!tp)
        return;
    pthread_mutex_lock(&tp->mu);
    tp->quit = 1;
    pthread_cond_broadcast(&tp->go);
    pthread_mutex_unlock(&tp->mu);
    for (int i = 1; i < tp->n; i++)
        pthread_join(tp->tids[i - 1], NULL);
    pthread_mutex_destroy(&tp->mu);
    pthread_cond_destroy(&tp->go);
    pthread_cond_destroy(&tp->done);
    free(tp->tids);
    free(tp);
}

int vs_rt_tpool_size(const vs_rt_tpool *tp) { return tp->n; }

void vs_rt_parallel_for(vs_rt_tpool *tp, size_t n, vs_rt_task_fn fn, void *ctx)
{
    if (n == 0)
        return;
    if (tp->n == 1 || n == 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&tp->mu);
    tp->fn = fn;
    tp->ctx = ctx;
    tp->total = n;
    tp->pending = tp->n - 1;
    tp->gen++;
    pthread_cond_broadcast(&tp->go);
    pthread_mutex_unlock(&tp->mu);
    size_t b, e;
    chunk(n, tp->n, 0, &b, &e);
    if (b < e)
        fn(ctx, b, e, 0);
    pthread_mutex_lock(&tp->mu);
    while (tp->pending > 0)
        pthread_cond_wait(&tp->done, &tp->mu);
    pthread_mutex_unlock(&tp->mu);
}
