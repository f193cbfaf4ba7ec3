/* common/status.h — the one status type of varserve and the error detail that travels with it.
 *
 * Design: every fallible function returns a vs_status and, when it fails, fills a caller-owned
 * vs_err with a message that names what failed, the value seen, the limit and the fix. There is
 * no global "last error". Any thread may use these; a vs_err belongs to whoever declared it. */
#ifndef VS_STATUS_H
#define VS_STATUS_H

#include <stddef.h>

typedef enum {
    VS_OK = 0,
    VS_ERR_INVALID,   /* bad input: argument, request field, config value, model file */
    VS_ERR_NOMEM,     /* an allocation failed (host or device) */
    VS_ERR_KV_FULL,   /* the KV pool can never hold the request */
    VS_ERR_BUSY,      /* try again later (queue full, pool busy) */
    VS_ERR_TIMEOUT,   /* a deadline passed */
    VS_ERR_IO,        /* file or socket I/O */
    VS_ERR_CUDA,      /* a CUDA or cuBLAS call failed; the device still works */
    VS_ERR_UNSUPPORTED, /* a feature this build or device lacks */
    VS_ERR_INTERNAL,  /* should not happen; reported instead of aborting when a request caused it */
    VS_ERR_DEVICE_LOST, /* the accelerator is unusable until the process restarts (a sticky CUDA
                         * error: illegal address, launch failure, ...); see runtime/backend.h */
} vs_status;

typedef struct {
    vs_status code;
    char msg[512];
} vs_err;

/* Fills err (may be NULL) and returns code, so callers can `return vs_err_set(err, ...)`. */
vs_status vs_err_set(vs_err *err, vs_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "what: " to an existing message, for context as an error climbs. */
vs_status vs_err_wrap(vs_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Short stable name ("invalid", "kv_full", …) used in logs and JSON error types. */
const char *vs_status_name(vs_status s);

#endif
