/* common/status.c — status names and error formatting. Thread-safe: no shared state. */
#include "common/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

vs_status vs_err_set(vs_err *err, vs_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

vs_status vs_err_wrap(vs_err *err, const char *fmt, ...)
{
    if (!err)
        return VS_ERR_INTERNAL;
    char prefix[256], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    int room = (int)sizeof err->msg - 1;
    int n = snprintf(err->msg, sizeof err->msg, "%.*s: ", room, prefix);
    if (n >= 0 && n < room)
        snprintf(err->msg + n, sizeof err->msg - (size_t)n, "%.*s", room - n, old);
    return err->code;
}

const char *vs_status_name(vs_status s)
{
    switch (s) {
    case VS_OK: return "ok";
    case VS_ERR_INVALID: return "invalid";
    case VS_ERR_NOMEM: return "out_of_memory";
    case VS_ERR_KV_FULL: return "kv_full";
    case VS_ERR_BUSY: return "busy";
    case VS_ERR_TIMEOUT: return "timeout";
    case VS_ERR_IO: return "io";
    case VS_ERR_CUDA: return "cuda";
    case VS_ERR_UNSUPPORTED: return "unsupported";
    case VS_ERR_INTERNAL: return "internal";
    case VS_ERR_DEVICE_LOST: return "device_lost";
    }
    return "unknown";
}
