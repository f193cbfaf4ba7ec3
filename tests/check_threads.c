/* tests/check_threads.c — the fork-join pool (runtime/threads.h): every unit of every job runs
 * exactly once, on a thread the pool names, whatever the job's size and however the threads
 * interleave (units that yield or sleep, jobs of one unit, jobs back to back); a thread that
 * is free takes the units a held-up thread has not claimed. Built
 * and run under ThreadSanitizer too (make tsan). */
#include <check.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/threads.h"

#define MAX_UNITS 4096

typedef struct {
    atomic_int runs[MAX_UNITS];
    atomic_int by_worker[8];
    atomic_int bad_worker;
    int threads;
    int mode; /* 0 plain, 1 every 7th unit yields, 2 unit 0 sleeps */
} job_ctx;

static void sleep_ms(int ms)
{
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

static void count_task(void *p, size_t b, size_t e, int worker)
{
    job_ctx *j = p;
    if (worker < 0 || worker >= j->threads)
        atomic_store(&j->bad_worker, 1);
    else
        atomic_fetch_add(&j->by_worker[worker], (int)(e - b));
    for (size_t u = b; u < e; u++) {
        atomic_fetch_add(&j->runs[u], 1);
        if (j->mode == 1 && u % 7 == 0)
            sched_yield();
        if (j->mode == 2 && u == 0)
            sleep_ms(50);
    }
}

static void reset(job_ctx *j, int threads, int mode)
{
    memset(j, 0, sizeof *j);
    j->threads = threads;
    j->mode = mode;
}

static void assert_each_once(job_ctx *j, size_t n, const char *what)
{
    int total = 0;
    for (int w = 0; w < j->threads; w++)
        total += atomic_load(&j->by_worker[w]);
    if (atomic_load(&j->bad_worker) || total != (int)n)
        ck_abort_msg("%s: %d units reported by workers in range for %zu (a worker id out of range: "
                     "%d)", what, total, n, atomic_load(&j->bad_worker));
    /* one assertion per job, not per unit: each passing ck_assert writes to check's pipe */
    size_t bad = MAX_UNITS;
    for (size_t u = 0; u < MAX_UNITS && bad == MAX_UNITS; u++)
        if (atomic_load(&j->runs[u]) != (u < n ? 1 : 0))
            bad = u;
    ck_assert_msg(bad == MAX_UNITS, "%s: unit %zu of %zu ran %d times", what, bad, n,
                  bad < MAX_UNITS ? atomic_load(&j->runs[bad]) : 0);
}

START_TEST(every_unit_runs_exactly_once_over_jobs_back_to_back)
{
    static const int THREADS[] = {1, 2, 3, 4};
    job_ctx *j = malloc(sizeof *j);
    ck_assert_ptr_nonnull(j);
    for (size_t t = 0; t < sizeof THREADS / sizeof *THREADS; t++) {
        vs_rt_tpool *tp = vs_rt_tpool_new(THREADS[t]);
        ck_assert_ptr_nonnull(tp);
        ck_assert_int_eq(vs_rt_tpool_size(tp), THREADS[t]);
        unsigned r = 12345u + (unsigned)t;
        for (int k = 0; k < 3000; k++) {
            r = r * 1664525u + 1013904223u;
            size_t n = k % 10 == 0 ? (size_t)(r >> 8) % MAX_UNITS : (size_t)(r >> 8) % 40;
            reset(j, THREADS[t], k % 5 == 0 ? 1 : 0);
            vs_rt_parallel_for(tp, n, count_task, j);
            assert_each_once(j, n, "back to back");
        }
        vs_rt_tpool_free(tp);
    }
    free(j);
}
END_TEST

START_TEST(the_caller_and_the_workers_share_a_job)
{
    job_ctx *j = malloc(sizeof *j);
    ck_assert_ptr_nonnull(j);
    vs_rt_tpool *tp = vs_rt_tpool_new(2);
    ck_assert_ptr_nonnull(tp);
    /* unit 0 holds whichever thread claims it for 50 ms; the first claim is a quarter of the
     * job (64 / (2 threads * 2) = 16 units), so the held thread runs at most those 16 and the
     * other, free meanwhile, takes everything after (a split in halves would give 32 and 32) */
    reset(j, 2, 2);
    vs_rt_parallel_for(tp, 64, count_task, j);
    assert_each_once(j, 64, "one thread held");
    int a = atomic_load(&j->by_worker[0]), b = atomic_load(&j->by_worker[1]);
    int held = a < b ? a : b, free_one = a < b ? b : a;
    ck_assert_msg(held <= 16 && free_one >= 48,
                  "while one thread was held 50 ms the other ran %d of 64 units, the held one %d",
                  free_one, held);
    vs_rt_tpool_free(tp);
    free(j);
}
END_TEST

START_TEST(a_pool_of_one_runs_everything_on_the_caller)
{
    job_ctx *j = malloc(sizeof *j);
    ck_assert_ptr_nonnull(j);
    vs_rt_tpool *tp = vs_rt_tpool_new(1);
    ck_assert_ptr_nonnull(tp);
    reset(j, 1, 0);
    vs_rt_parallel_for(tp, 100, count_task, j);
    assert_each_once(j, 100, "one thread");
    ck_assert_int_eq(atomic_load(&j->by_worker[0]), 100);
    reset(j, 1, 0);
    vs_rt_parallel_for(tp, 0, count_task, j);
    assert_each_once(j, 0, "no units");
    vs_rt_tpool_free(tp);
    free(j);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("threads");
    TCase *tc = tcase_create("pool");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, every_unit_runs_exactly_once_over_jobs_back_to_back);
    tcase_add_test(tc, the_caller_and_the_workers_share_a_job);
    tcase_add_test(tc, a_pool_of_one_runs_everything_on_the_caller);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
