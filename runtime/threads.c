/* runtime/threads.c — see threads.h. A job is published with a generation counter; its units are
 * handed out by one atomic claim word, and the caller returns once every unit is finished, not
 * once every worker has looked in: on a machine whose cores are shared (a VM's steal, the HTTP
 * threads, clients on the same cores) a worker that is descheduled when a job starts, or in the
 * middle of one, no longer holds the op up for the length of its time off the CPU; the threads
 * that run take its share. Chunks are guided: a claim takes a 2n-th of what is left (n threads),
 * so an op is a few claims per thread and what one late thread can still hold is small.
 *
 * The claim word is (job number mod 2^32) << 32 | next unit. A worker claims by compare-and-swap
 * against the job it read, so one that wakes late (the job done, or a newer one published) claims
 * nothing of another job. Publishing first closes the word (next unit = CLOSED), then writes the
 * job's fields, then opens it: a worker that read any new field fails its compare-and-swap on the
 * closed or reopened word (every access is sequentially consistent), and one whose
 * compare-and-swap succeeds read the old job's fields, still valid because that job has units
 * unfinished. The 32-bit job number would let a worker descheduled for 2^32 jobs claim from the
 * wrong one; at microseconds a job that is hours off the CPU.
 *
 * Both waits spin briefly before sleeping on a condition variable: the engine issues thousands of
 * short ops per step (a small model's op takes tens of microseconds), and a futex sleep and
 * wake-up per op cost more than the op (perf showed 14% of a batch-32 run in futex calls). The
 * spin adapts, as an adaptive mutex does: each waiting site keeps a budget of pauses that doubles
 * (up to SPIN_MAX, tens of microseconds) when the wait ended while spinning and halves (down to
 * SPIN_MIN) when it had to sleep. On an idle machine the other threads answer within the spin; on
 * an oversubscribed one (they are descheduled) spinning would only burn the time slice they need,
 * and the budget falls to a few pauses. Each worker flushes subnormals to zero before its first
 * job (runtime/fpenv.h says why). */
#include "runtime/threads.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
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
#define CLOSED 0xffffffffu /* the claim word's unit while a job is being published */

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
    atomic_ulong gen;       /* the job number, written under mu; workers wait for it to change */
    atomic_ullong claim;    /* (job mod 2^32) << 32 | next unit: see the file-top comment */
    atomic_size_t finished; /* units of the current job run to their end */
    atomic_int quit;        /* written under mu */
    int caller_sleeping;    /* guarded by mu */
    int join_spin;          /* the caller's spin budget: caller only */
    _Atomic(vs_rt_task_fn) fn; /* the job's fields: written only while the claim word is closed */
    _Atomic(void *) ctx;
    atomic_size_t total;
};

typedef struct {
    vs_rt_tpool *tp;
    int id;
} worker_arg;

/* Runs claims of job `job` until none is left; the thread that finishes its last unit wakes a
 * sleeping caller. */
static void run_claims(vs_rt_tpool *tp, unsigned long job, int id)
{
    vs_rt_task_fn fn = atomic_load(&tp->fn);
    void *ctx = atomic_load(&tp->ctx);
    size_t total = atomic_load(&tp->total);
    uint64_t tag = (uint64_t)(uint32_t)job << 32;
    uint64_t s = atomic_load(&tp->claim);
    for (;;) {
        if ((s & ~(uint64_t)CLOSED) != tag || (s & CLOSED) >= total)
            return; /* another job's word, or nothing left of this one */
        size_t b = (size_t)(s & CLOSED), left = total - b;
        size_t c = left / (2 * (size_t)tp->n);
        if (c < 1)
            c = 1;
        if (!atomic_compare_exchange_weak(&tp->claim, &s, s + c))
            continue; /* s now holds the word's current value */
        fn(ctx, b, b + c, id);
        if (atomic_fetch_add(&tp->finished, c) + c == total) {
            pthread_mutex_lock(&tp->mu);
            if (tp->caller_sleeping)
                pthread_cond_signal(&tp->done);
            pthread_mutex_unlock(&tp->mu);
        }
        s = atomic_load(&tp->claim);
    }
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
        run_claims(tp, seen, id);
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
    atomic_init(&tp->claim, (uint64_t)CLOSED);
    atomic_init(&tp->finished, 0);
    atomic_init(&tp->fn, NULL);
    atomic_init(&tp->ctx, NULL);
    atomic_init(&tp->total, 0);
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
    if (tp->n == 1 || n == 1 || n >= CLOSED) {
        fn(ctx, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&tp->mu);
    unsigned long job = atomic_load_explicit(&tp->gen, memory_order_relaxed) + 1;
    uint64_t tag = (uint64_t)(uint32_t)job << 32;
    atomic_store(&tp->claim, tag | CLOSED);
    atomic_store(&tp->fn, fn);
    atomic_store(&tp->ctx, ctx);
    atomic_store(&tp->total, n);
    atomic_store(&tp->finished, 0);
    atomic_store(&tp->claim, tag);
    atomic_store_explicit(&tp->gen, job, memory_order_release);
    pthread_cond_broadcast(&tp->go);
    pthread_mutex_unlock(&tp->mu);
    run_claims(tp, job, 0);
    for (int i = 0; i < tp->join_spin; i++) {
        if (atomic_load(&tp->finished) == n) {
            tp->join_spin = next_budget(tp->join_spin, 1);
            return;
        }
        cpu_relax();
    }
    tp->join_spin = next_budget(tp->join_spin, 0);
    pthread_mutex_lock(&tp->mu);
    tp->caller_sleeping = 1;
    while (atomic_load(&tp->finished) < n)
        pthread_cond_wait(&tp->done, &tp->mu);
    tp->caller_sleeping = 0;
    pthread_mutex_unlock(&tp->mu);
}
