/* common/log.h — one line per event on stderr: time, level, module, request id, message.
 *
 * The level is checked before formatting, so a disabled debug line costs one compare. The
 * request id is thread-local: a thread that works for a request sets it and clears it after.
 * Text lines by default; JSON lines (one object per line) with vs_log_set_json(1). */
#ifndef VS_LOG_H
#define VS_LOG_H

typedef enum { VS_LOG_DEBUG = 0, VS_LOG_INFO, VS_LOG_WARN, VS_LOG_ERROR, VS_LOG_OFF } vs_log_level;

extern vs_log_level vs_log_min_level; /* set once at start-up, before threads start */

void vs_log_set_level(vs_log_level lvl);
int vs_log_parse_level(const char *s, vs_log_level *out); /* 0 on success */
void vs_log_set_json(int on);
void vs_log_set_request_id(const char *id); /* thread-local; NULL clears */

void vs_log_write(vs_log_level lvl, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define vs_log(lvl, module, ...)                                                                   \
    do {                                                                                           \
        if ((lvl) >= vs_log_min_level)                                                             \
            vs_log_write((lvl), (module), __VA_ARGS__);                                            \
    } while (0)

#endif
