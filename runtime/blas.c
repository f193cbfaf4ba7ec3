/* runtime/blas.c — see blas.h. */
#include "runtime/blas.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "runtime/simd.h"

char *openblas_get_corename(void);
char *openblas_get_config(void);

/* Set before the re-execution: the table OpenBLAS had chosen itself, for vs_rt_blas_describe. */
#define CHOSE_ENV "VARSERVE_OPENBLAS_CHOSE"

static char failed[160]; /* why the re-execution did not happen; written before any thread */

/* The table the rule wants for this CPU (NULL: OpenBLAS's choice stands), and whether `core`, a
 * name openblas_get_corename gives, already is it. */
static const char *wanted(const char *core, int *ok)
{
    *ok = 1;
#if defined(__x86_64__)
    if (vs_rt_simd_by_name("avx512")) {
        *ok = strcasecmp(core, "SkylakeX") == 0;
        return "SkylakeX";
    }
    if (vs_rt_simd_by_name("avx2")) {
        *ok = strcasecmp(core, "Haswell") == 0 || strcasecmp(core, "Zen") == 0;
        return "Haswell";
    }
#endif
    (void)core;
    return NULL;
}

void vs_rt_blas_pin_core(char **argv)
{
    const char *core = openblas_get_corename();
    int ok;
    const char *want = wanted(core ? core : "", &ok);
    if (!want || ok || getenv("OPENBLAS_CORETYPE"))
        return;
    if (setenv("OPENBLAS_CORETYPE", want, 1) != 0 || setenv(CHOSE_ENV, core, 1) != 0) {
        snprintf(failed, sizeof failed, "setenv: %s", strerror(errno));
        return;
    }
    execv("/proc/self/exe", argv);
    snprintf(failed, sizeof failed, "re-executing /proc/self/exe with OPENBLAS_CORETYPE=%s: %s",
             want, strerror(errno));
    unsetenv("OPENBLAS_CORETYPE"); /* children get OpenBLAS's own choice, as this process has */
    unsetenv(CHOSE_ENV);
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char line[256]; /* immutable after once */

static void describe(void)
{
    const char *core = openblas_get_corename(), *cfg = openblas_get_config();
    const char *set = getenv("OPENBLAS_CORETYPE"), *chose = getenv(CHOSE_ENV);
    int ver = 0; /* "OpenBLAS 0.3.21 ...": the first two words */
    for (int words = 0; cfg && cfg[ver] && !(cfg[ver] == ' ' && ++words == 2); ver++)
        ;
    int n = snprintf(line, sizeof line, "%.*s, %s kernels", ver, cfg ? cfg : "", core ? core : "?");
    if (n < 0 || (size_t)n >= sizeof line)
        return;
    if (failed[0])
        snprintf(line + n, sizeof line - (size_t)n, " (OpenBLAS's choice; %s)", failed);
    else if (set && chose && strcasecmp(core ? core : "", set) != 0)
        snprintf(line + n, sizeof line - (size_t)n,
                 " (OpenBLAS's choice: this OpenBLAS has no %s kernels for varserve to pin)", set);
    else if (set && chose)
        snprintf(line + n, sizeof line - (size_t)n, " (pinned by varserve; OpenBLAS chose %s)", chose);
    else if (set)
        snprintf(line + n, sizeof line - (size_t)n, " (OPENBLAS_CORETYPE=%s)", set);
    else
        snprintf(line + n, sizeof line - (size_t)n, " (OpenBLAS's choice)");
}

const char *vs_rt_blas_describe(void)
{
    pthread_once(&once, describe);
    return line;
}
