/* config/config.h — the daemon's configuration: defaults, config file, VARSERVE_* environment,
 * command-line flags, in that order of precedence (later wins).
 *
 * Design: one table of keys (config.c) drives everything — defaults, types, ranges, the JSON file
 * reader, the environment and flag names, --print-config and the messages — so a key is declared
 * once. Every rejection names the key, where the value came from, the value seen and what is
 * allowed. The result is a plain struct handed down to the server; nothing here is global.
 *
 * Threads: built by main before any thread starts; immutable afterwards (any thread may read). */
#ifndef VS_CFG_CONFIG_H
#define VS_CFG_CONFIG_H

#include "common/status.h"

#define VS_CFG_DEFAULT_FILE "config/varserve.json"

typedef struct {
    /* model and device */
    char model[512];            /* model file (varserve safetensors format) */
    char t5[512];               /* an Infinity model's text encoder; "" for VAR models */
    char spiece[512];           /* an Infinity model's SentencePiece model; "" for VAR models */
    char backend[8];            /* auto | cpu | cuda */
    long threads;               /* CPU backend worker threads, 0 = all cores */
    /* HTTP */
    char host[256];             /* address to listen on (numeric or a host name) */
    long port;                  /* 0 = an ephemeral port (logged at start) */
    int reuse_port;             /* SO_REUSEPORT: share the port deliberately */
    long health_port;           /* a listener for /health, /ready, /metrics only; 0 = none */
    long http_threads;          /* libmicrohttpd thread pool size */
    long max_connections;
    long max_connections_per_address; /* 0 = no limit */
    long http_timeout_s;        /* idle connection timeout; 0 = none */
    long request_timeout_s;     /* headers and body must arrive within this; 0 = none */
    long max_body_bytes;        /* larger request bodies get 413 before they are read */
    char api_key[256];          /* "" = no authentication for POST /generate */
    int access_log;             /* one log line per request */
    /* scheduling */
    long max_batch_images;      /* images per engine step (2 rows each); sizes the engine once */
    long kv_pool_mb;            /* KV pool size in MiB; 0 = room for max_batch_images at full cache,
                                 * on a device at most what it has left (README.md, kv_pool_mb) */
    char kv_policy[16];         /* default KV policy: a name in kvcache/policy.c's registry */
    double kv_budget;           /* default budget of compressing policies, a fraction of the full cache */
    char kv_budget_file[512];   /* ScaleKV budget file; "" = MODEL.budgets.json when it exists */
    long queue_size;            /* requests waiting for admission before 429 */
    long queue_full_delay_ms;   /* a 429 queue_full is held this long before it is sent; 0 = at once */
    long default_timeout_ms;    /* deadline of a request that gives no timeout_ms */
    long max_timeout_ms;        /* the largest timeout_ms a request may ask for */
    double drain_timeout_s;     /* SIGTERM: how long running requests may take to finish */
    /* sampling defaults, used when the model file stores none */
    double default_cfg;
    long default_top_k;
    double default_top_p;
    /* logging */
    char log_level[8];          /* debug | info | warn | error */
    char log_format[8];         /* text | json */
} vs_cfg;

/* Sets every key to its built-in default (the same values as config/varserve.json). */
void vs_cfg_defaults(vs_cfg *c);

/* Reads a JSON object of keys from `path`. Unknown keys, wrong types and bad values are
 * VS_ERR_INVALID naming the key; a missing or unreadable file is VS_ERR_IO. */
vs_status vs_cfg_load_file(vs_cfg *c, const char *path, vs_err *err);

/* The same for the file's text (len bytes, not necessarily NUL-terminated); `path` names it in
 * messages. */
vs_status vs_cfg_load_text(vs_cfg *c, const char *text, size_t len, const char *path, vs_err *err);

/* Applies VARSERVE_<KEY> variables (e.g. VARSERVE_KV_POOL_MB) that are set. VS_ERR_INVALID names
 * the variable. Variables that name no key are ignored (VARSERVE_BIN, VARSERVE_CONFIG, ...). */
vs_status vs_cfg_apply_env(vs_cfg *c, vs_err *err);

/* Sets one key from text; `source` says where the text came from, for messages ("--port",
 * "VARSERVE_PORT"). VS_ERR_INVALID for an unknown key or a bad value. */
vs_status vs_cfg_set(vs_cfg *c, const char *key, const char *value, const char *source, vs_err *err);

/* Cross-key checks (default_timeout_ms <= max_timeout_ms, ...). VS_ERR_INVALID. */
vs_status vs_cfg_validate(const vs_cfg *c, vs_err *err);

/* The key a flag names: "--kv-pool-mb" -> "kv_pool_mb" into out; 0 when it is a key. */
int vs_cfg_flag_key(const char *flag, char *out, size_t cap);

/* The effective configuration as pretty JSON (api_key shown as "***" when set). Caller frees;
 * NULL when out of memory. */
char *vs_cfg_to_json(const vs_cfg *c);

/* One line per key ("  --kv-pool-mb N   KV pool size ...") for --help; caller frees. */
char *vs_cfg_help(void);

#endif
