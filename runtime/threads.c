/* runtime/threads.c — see threads.h. A job is published with a generation counter and joined when
 * every worker has reported done. Both waits spin briefly before sleeping on a condition
 * variable: the engine issues thousands of short ops per step (a small model's op takes tens of
 * microseconds), and a futex sleep and wake-up per op cost more than the op (perf showed 14% of a
 * batch-32 run in futex calls). The spin adapts, as an adaptive mutex does: each waiting site
 * keeps a budget of pauses that doubles (up to SPIN_MAX, tens of microseconds) when the wait
 * ended while spinning and halves (down to SPIN_MIN) when it had to sleep. On an idle machine the
 * other threads answer within the spin; on an oversubscribed one (they are descheduled) spinning
 * would only burn the time slice they need, and the budget falls to a few pauses. Each worker
 * flushes subnormals to zero before its first job (runtime/fpenv.h says why). */
#include "runtime/threads.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "runtime/fpenv.h"

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_MAX 4096
#define SPIN_MIN 16

/* After a wait that did (1) or did not (0) end while spinning. */
static int next_budget(int budget, int spun_ok)
{
    if (spun_ok)
        return budget * 2 < SPIN_MAX ? budget * 2 : SPIN_MAX;
    return budget / 2 > SPIN_MIN ? budget / 2 : SPIN_MIN;
}

struct vs_rt_tpool {
    int n;                  /* workers including the caller: immutable after new */
    pthread_t *tids;        /* [n-1] */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    atomic_ulong gen;       /* written under mu (release); workers may read it spinning */
    atomic_int pending;     /* workers still running the current job */
    atomic_int quit;        /* written under mu */
    int caller_sleeping;    /* guarded by mu */
    int join_spin;          /* the caller's spin budget: caller only */
    vs_rt_task_fn fn;       /* written before gen's release store; read after its acquire load */
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

/* Waits until gen differs from seen or quit is set; returns the new gen. *spin: the budget. */
static unsigned long wait_job(vs_rt_tpool *tp, unsigned long seen, int *spin)
{
    for (int i = 0; i < *spin; i++) {
        unsigned long g = atomic_load_explicit(&tp->gen, memory_order_acquire);
        if (g != seen || atomic_load_explicit(&tp->quit, memory_order_relaxed)) {
            *spin = next_budget(*spin, 1);
            return g;
        }
        cpu_relax();
    }
    *spin = next_budget(*spin, 0);
    pthread_mutex_lock(&tp->mu);
    while (atomic_load_explicit(&tp->gen, memory_order_acquire) == seen && !atomic_load(&tp->quit))
        pthread_cond_wait(&tp->go, &tp->mu);
    unsigned long g = atomic_load_explicit(&tp->gen, memory_order_acquire);
    pthread_mutex_unlock(&tp->mu);
    return g;
}

static void *worker(void *p)
{
    worker_arg *wa = p;
    vs_rt_tpool *tp = wa->tp;
    int id = wa->id;
    free(wa);
    vs_rt_fp_env_init(); /* this thread's own MXCSR/FPCR: set here, not inherited by chance */
    unsigned long seen = 0;
    int spin = SPIN_MAX;
    for (;;) {
        seen = wait_job(tp, seen, &spin);
        if (atomic_load(&tp->quit))
            return NULL;
        size_t b, e;
        chunk(tp->total, tp->n, id, &b, &e);
        if (b < e)
            tp->fn(tp->ctx, b, e, id);
        if (atomic_fetch_sub_explicit(&tp->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&tp->mu);
            if (tp->caller_sleeping)
                pthread_cond_signal(&tp->done);
            pthread_mutex_unlock(&tp->mu);
        }
    }
}

vs_rt_tpool *vs_rt_tpool_new(int threads)
{
    vs_rt_tpool *tp = calloc(1, sizeof *tp);
    if (!tp)
        return NULL;
    tp->n = threads < 1 ? 1 : threads;
    tp->join_spin = SPIN_MAX;
    pthread_mutex_init(&tp->mu, NULL);
    pthread_cond_init(&tp->go, NULL);
    pthread_cond_init(&tp->done, NULL);
    atomic_init(&tp->gen, 0);
    atomic_init(&tp->pending, 0);
    atomic_init(&tp->quit, 0);
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
    atomic_store(&tp->quit, 1);
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
    atomic_store_explicit(&tp->pending, tp->n - 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&tp->gen, 1, memory_order_release);
    pthread_cond_broadcast(&tp->go);
    pthread_mutex_unlock(&tp->mu);
    size_t b, e;
    chunk(n, tp->n, 0, &b, &e);
    if (b < e)
        fn(ctx, b, e, 0);
    for (int i = 0; i < tp->join_spin; i++) {
        if (atomic_load_explicit(&tp->pending, memory_order_acquire) == 0) {
            tp->join_spin = next_budget(tp->join_spin, 1);
            return;
        }
        cpu_relax();
    }
    tp->join_spin = next_budget(tp->join_spin, 0);
    pthread_mutex_lock(&tp->mu);
    tp->caller_sleeping = 1;
    while (atomic_load_explicit(&tp->pending, memory_order_acquire) > 0)
        pthread_cond_wait(&tp->done, &tp->mu);
    tp->caller_sleeping = 0;
    pthread_mutex_unlock(&tp->mu);
}
