/* runtime/threads.h — a small fork-join pool for the CPU backend's loops.
 *
 * parallel_for splits [0, n) into one contiguous chunk per worker; the caller runs chunk 0. The
 * split depends only on n and the worker count, and every op computes each output element in one
 * place, so results do not depend on the number of threads. One caller at a time (the engine).
 * Workers run with subnormals flushed to zero (vs_rt_fp_env_init, runtime/fpenv.h); the caller,
 * which runs chunk 0, sets its own mode (vs_rt_backend_cpu_new does). */
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
