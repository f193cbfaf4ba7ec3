/* server/serve.c — `varserve serve`: configuration, start-up, signals and graceful drain.
 *
 * Start-up: defaults → config file (--config, else VARSERVE_CONFIG, else config/varserve.json
 * when present) → VARSERVE_* environment → flags; a bad value stops start-up (exit 2) with a
 * message naming the key. The engine thread starts loading the model, the port opens at once
 * (/ready answers 503 until the model is loaded). A load that fails on what the configuration
 * names (the model or budget file cannot be opened or is refused, the pool is too small: the
 * message names the key) exits 2 like any bad value; other failures (out of memory) exit 1.
 *
 * Signals: SIGTERM and SIGINT are blocked in every thread and taken synchronously here with
 * sigtimedwait. The first one drains: /ready and new requests get 503, accepted requests run to
 * completion within drain_timeout_s, then whatever is left is answered 503; a second signal cuts
 * the drain short. The process then exits 0. SIGPIPE is ignored.
 *
 * Threads: this is the main thread; it owns the config, queue, metrics, engine and HTTP server. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "config/config.h"
#include "server/cmd.h"
#include "server/engine.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/queue.h"
#include "server/version.h"

static void serve_usage(FILE *f)
{
    char *keys = vs_cfg_help();
    fprintf(f,
            "usage: varserve serve [--config FILE] [--print-config] [--KEY VALUE ...]\n"
            "Configuration: built-in defaults, then the config file (--config FILE, else $VARSERVE_CONFIG,\n"
            "else %s when present), then VARSERVE_<KEY> environment variables, then flags.\n"
            "Keys (flag, meaning, allowed values, default, environment variable):\n%s",
            VS_CFG_DEFAULT_FILE, keys ? keys : "");
    free(keys);
}

/* Builds the configuration. 0 ok, 2 bad arguments (printed), 3 --print-config or --help done. */
static int configure(int argc, char **argv, vs_cfg *cfg)
{
    vs_err err = {0};
    const char *file = NULL;
    int print = 0, file_given = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "varserve: --config needs a file\n");
                return 2;
            }
            file = argv[++i];
            file_given = 1;
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            file = argv[i] + 9;
            file_given = 1;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            serve_usage(stdout);
            return 3;
        }
    }
    if (!file && getenv("VARSERVE_CONFIG")) {
        file = getenv("VARSERVE_CONFIG");
        file_given = 1;
    }
    if (!file && access(VS_CFG_DEFAULT_FILE, F_OK) == 0)
        file = VS_CFG_DEFAULT_FILE;
    vs_cfg_defaults(cfg);
    if (file && vs_cfg_load_file(cfg, file, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s%s\n", err.msg, file_given ? "" : " (the default config file)");
        return 2;
    }
    if (vs_cfg_apply_env(cfg, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(a, "--config=", 9) == 0)
            continue;
        if (strcmp(a, "--print-config") == 0) {
            print = 1;
            continue;
        }
        char key[64];
        if (vs_cfg_flag_key(a, key, sizeof key) != 0) {
            fprintf(stderr, "varserve: unknown option '%s' for serve (see varserve serve --help)\n", a);
            return 2;
        }
        const char *eq = strchr(a, '=');
        const char *v;
        char flag[80];
        snprintf(flag, sizeof flag, "%.*s", eq ? (int)(eq - a) : (int)strlen(a), a);
        if (eq) {
            v = eq + 1;
        } else {
            if (i + 1 >= argc) {
                fprintf(stderr, "varserve: option %s needs a value\n", a);
                return 2;
            }
            v = argv[++i];
        }
        if (vs_cfg_set(cfg, key, v, flag, &err) != VS_OK) {
            fprintf(stderr, "varserve: %s\n", err.msg);
            return 2;
        }
    }
    if (vs_cfg_validate(cfg, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        return 2;
    }
    if (print) {
        char *s = vs_cfg_to_json(cfg);
        if (!s) {
            fprintf(stderr, "varserve: out of memory\n");
            return 2;
        }
        printf("%s\n", s);
        free(s);
        return 3;
    }
    return 0;
}

/* Waits up to timeout_s for SIGTERM/SIGINT (blocked in every thread): the signal, or 0. */
static int wait_signal(const sigset_t *set, double timeout_s)
{
    struct timespec ts = {(time_t)timeout_s, (long)((timeout_s - (double)(time_t)timeout_s) * 1e9)};
    int s = sigtimedwait(set, NULL, &ts);
    return s > 0 ? s : 0;
}

int vs_srv_serve_main(int argc, char **argv)
{
    vs_cfg cfg;
    int rc = configure(argc, argv, &cfg);
    if (rc == 3)
        return 0;
    if (rc != 0)
        return rc;
    vs_log_level lvl = VS_LOG_INFO;
    vs_log_parse_level(cfg.log_level, &lvl);
    vs_log_set_level(lvl);
    vs_log_set_json(strcmp(cfg.log_format, "json") == 0);

    /* before any thread starts, so every thread inherits the mask */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, NULL);

    vs_err err = {0};
    vs_srv_queue *q = NULL;
    vs_srv_metrics *met = NULL;
    vs_srv_engine *eng = NULL;
    vs_srv_http *http = NULL;
    rc = 1;
    if (vs_srv_metrics_new(&met, &err) != VS_OK || vs_srv_queue_new((size_t)cfg.queue_size, &q, &err) != VS_OK ||
        vs_srv_engine_start(&cfg, q, met, &eng, &err) != VS_OK) {
        vs_log(VS_LOG_ERROR, "serve", "%s", err.msg);
        goto done;
    }
    if (vs_srv_http_start(&cfg, q, met, eng, &http, &err) != VS_OK) {
        vs_log(VS_LOG_ERROR, "serve", "%s", err.msg);
        if (err.code == VS_ERR_INVALID)
            rc = 2; /* a configuration value the operator can change */
        goto done;
    }
    vs_log(VS_LOG_INFO, "serve", "varserve %s listening on http://%s:%d (model %s, backend %s, %ld HTTP threads)",
           VS_VERSION, cfg.host, vs_srv_http_port(http), cfg.model, cfg.backend, cfg.http_threads);
    if (cfg.health_port)
        vs_log(VS_LOG_INFO, "serve", "health listener on http://%s:%d (/health, /ready, /metrics)", cfg.host,
               vs_srv_http_health_port(http));

    int sig = 0, loaded = 0;
    while (!sig && !loaded) {
        loaded = vs_srv_engine_wait_loaded(eng, 0.05, &err);
        if (loaded < 0) {
            vs_log(VS_LOG_ERROR, "serve", "%s", err.msg);
            if (err.code == VS_ERR_INVALID || err.code == VS_ERR_IO || err.code == VS_ERR_KV_FULL)
                rc = 2;
            goto done;
        }
        sig = wait_signal(&set, 0.05);
    }
    if (loaded)
        vs_log(VS_LOG_INFO, "serve", "ready");
    while (!sig)
        sig = wait_signal(&set, 1.0);

    /* drain */
    double t0 = vs_now_s();
    vs_log(VS_LOG_INFO, "serve", "%s: draining %ld requests (up to %.0f s; send it again to stop at once)",
           strsignal(sig), vs_srv_http_live_jobs(http), cfg.drain_timeout_s);
    vs_srv_http_drain(http);
    vs_srv_queue_close(q);
    int cut = 0;
    while (vs_srv_http_live_jobs(http) > 0 && !cut) {
        if (vs_now_s() - t0 >= cfg.drain_timeout_s) {
            vs_log(VS_LOG_WARN, "serve", "drain timeout (%.0f s, drain_timeout_s) passed with %ld requests left",
                   cfg.drain_timeout_s, vs_srv_http_live_jobs(http));
            cut = 1;
        } else if (wait_signal(&set, 0.02)) {
            vs_log(VS_LOG_WARN, "serve", "second signal: stopping now");
            cut = 1;
        }
    }
    if (cut) {
        /* answer what is left with 503 and give the replies a moment to go out */
        vs_srv_engine_abort(eng);
        double t1 = vs_now_s();
        while (vs_srv_http_live_jobs(http) > 0 && vs_now_s() - t1 < 10)
            wait_signal(&set, 0.02);
    }
    vs_log(VS_LOG_INFO, "serve", "drained in %.2f s; stopping", vs_now_s() - t0);
    rc = 0;
done:
    if (eng && rc != 0)
        vs_srv_engine_abort(eng);
    double ts = vs_now_s();
    vs_srv_http_stop(http);
    double th = vs_now_s();
    vs_srv_engine_stop(eng);
    vs_log(VS_LOG_DEBUG, "serve", "stopped: http %.3f s, engine %.3f s", th - ts, vs_now_s() - th);
    vs_srv_queue_free(q);
    vs_srv_metrics_free(met);
    return rc;
}
