/* runtime/simd.c — see simd.h. The scalar table (baseline flags) lives here; the choice is made
 * once (pthread_once) from VARSERVE_CPU_SIMD and cpuid, and never changes after. */
#include "runtime/simd.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SIMD_TABLE vs_rt_simd_scalar
#define SIMD_NAME "scalar"
#include "runtime/simd_body.h"

#if defined(__x86_64__)
extern const vs_rt_simd vs_rt_simd_avx2, vs_rt_simd_avx512;
#endif

static pthread_once_t once = PTHREAD_ONCE_INIT;
static const vs_rt_simd *chosen;   /* immutable after once */
static const char *forced_bad;     /* immutable after once: VARSERVE_CPU_SIMD when unusable */
static char avail[64];             /* immutable after once */

/* The paths this CPU runs, narrowest first. */
static int runnable(const vs_rt_simd **out)
{
    int n = 0;
    out[n++] = &vs_rt_simd_scalar;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        out[n++] = &vs_rt_simd_avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        out[n++] = &vs_rt_simd_avx512;
#endif
    return n;
}

static void choose(void)
{
    const vs_rt_simd *t[3];
    int n = runnable(t);
    chosen = t[n - 1];
    for (int i = 0; i < n; i++) {
        size_t len = strlen(avail);
        snprintf(avail + len, sizeof avail - len, "%s%s", i ? ", " : "", t[i]->name);
    }
    const char *want = getenv("VARSERVE_CPU_SIMD");
    if (!want || !*want)
        return;
    for (int i = 0; i < n; i++)
        if (strcmp(want, t[i]->name) == 0) {
            chosen = t[i];
            return;
        }
    forced_bad = want;
}

const vs_rt_simd *vs_rt_simd_table(void)
{
    pthread_once(&once, choose);
    return chosen;
}

const char *vs_rt_simd_available(void)
{
    pthread_once(&once, choose);
    return avail;
}

vs_status vs_rt_simd_check(vs_err *err)
{
    pthread_once(&once, choose);
    if (forced_bad)
        return vs_err_set(err, VS_ERR_INVALID,
                          "VARSERVE_CPU_SIMD=%s is not a vector path this CPU runs (it runs: %s); "
                          "set one of those or unset it",
                          forced_bad, avail);
    return VS_OK;
}

const vs_rt_simd *vs_rt_simd_by_name(const char *name)
{
    const vs_rt_simd *t[3];
    int n = runnable(t);
    for (int i = 0; i < n; i++)
        if (strcmp(name, t[i]->name) == 0)
            return t[i];
    return NULL;
}
