/* runtime/threads.h — a small fork-join pool for the CPU backend's loops.
 *
 * parallel_for hands [0, n) out in contiguous chunks to whichever threads are running (the caller
 * takes part), each chunk a share of what is left (threads.c), and returns when every unit has run.
 * Which thread runs which unit varies from call to call; every op computes each output element in
 * one place from its unit alone, so results depend neither on the number of threads nor on who
 * ran what. fn's `worker` (0 = the caller) names the thread, for its scratch: one thread runs
 * its chunks one after another. One caller at a time (the engine).
 * Workers run with subnormals flushed to zero (vs_rt_fp_env_init, runtime/fpenv.h); the caller,
 * which runs chunks too, sets its own mode (vs_rt_backend_cpu_new does). */
#ifndef VS_RT_THREADS_H
#define VS_RT_THREADS_H

#include <stddef.h>

typedef struct vs_rt_tpool vs_rt_tpool;
typedef void (*vs_rt_task_fn)(void *ctx, size_t begin, size_t end, int worker);

vs_rt_tpool *vs_rt_tpool_new(int threads); /* NULL on failure; threads >= 1 */
void vs_rt_tpool_free(vs_rt_tpool *tp);    /* NULL ok */
int vs_rt_tpool_size(const vs_rt_tpool *tp);
void vs_rt_parallel_for(vs_rt_tpool *tp, size_t n, vs_rt_task_fn fn, void *ctx);

#endif
