/* common/log.c — stderr logging. One fprintf per line under a lock, so lines never interleave. */
#include "common/log.h"

#include "common/json_text.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

vs_log_level vs_log_min_level = VS_LOG_INFO;
static int log_json;
static _Thread_local char log_reqid[64];
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

void vs_log_set_level(vs_log_level lvl) { vs_log_min_level = lvl; }
void vs_log_set_json(int on) { log_json = on; }

void vs_log_set_request_id(const char *id)
{
    if (!id) {
        log_reqid[0] = 0;
        return;
    }
    snprintf(log_reqid, sizeof log_reqid, "%s", id);
}

int vs_log_parse_level(const char *s, vs_log_level *out)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; i <= VS_LOG_OFF; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (vs_log_level)i;
            return 0;
        }
    return -1;
}

void vs_log_write(vs_log_level lvl, const char *module, const char *fmt, ...)
{
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR", "OFF"};
    char msg[2048], ts[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03ldZ", now.tv_nsec / 1000000);

    pthread_mutex_lock(&log_mu);
    if (log_json) {
        char esc[4096];
        vs_json_escape(esc, sizeof esc, msg);
        fprintf(stderr, "{\"time\":\"%s\",\"level\":\"%s\",\"module\":\"%s\",\"request_id\":\"%s\",\"msg\":\"%s\"}\n",
                ts, names[lvl], module, log_reqid, esc);
    } else {
        fprintf(stderr, "%s %-5s %-7s %s%s%s%s\n", ts, names[lvl], module, log_reqid[0] ? "[" : "",
                log_reqid, log_reqid[0] ? "] " : "", msg);
    }
    pthread_mutex_unlock(&log_mu);
}
