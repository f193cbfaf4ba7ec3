/* config/config.c — see config.h. The key table below is the single declaration of every key:
 * its type, default, range and documentation. Defaults go through the same setter as user
 * values, so a default that breaks its own range fails every start-up, not just some. */
#include "config/config.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_file.h"
#include "common/parse.h"
#include "kvcache/policy.h"

typedef enum { K_STR, K_INT, K_NUM, K_BOOL } key_type;

typedef struct {
    const char *key;
    key_type type;
    size_t off, cap;     /* offset in vs_cfg; capacity for strings */
    double lo, hi;       /* range for numbers */
    const char *choices; /* "a|b|c" for enumerated strings, else NULL */
    const char *(*choices_of)(void); /* the same, built at run time (from a registry), else NULL */
    const char *def;     /* default, as text */
    const char *doc;
} key_def;

#define STR(k, ch, d, doc) {#k, K_STR, offsetof(vs_cfg, k), sizeof(((vs_cfg *)0)->k), 0, 0, ch, NULL, d, doc}
#define STRF(k, fn, d, doc) {#k, K_STR, offsetof(vs_cfg, k), sizeof(((vs_cfg *)0)->k), 0, 0, NULL, fn, d, doc}
#define INT(k, lo, hi, d, doc) {#k, K_INT, offsetof(vs_cfg, k), 0, lo, hi, NULL, NULL, d, doc}
#define NUM(k, lo, hi, d, doc) {#k, K_NUM, offsetof(vs_cfg, k), 0, lo, hi, NULL, NULL, d, doc}
#define BOOL(k, d, doc) {#k, K_BOOL, offsetof(vs_cfg, k), 0, 0, 1, NULL, NULL, d, doc}

static const key_def keys[] = {
    STR(model, NULL, "models/mnist-var.safetensors", "model file (varserve format)"),
    STR(t5, NULL, "", "an Infinity model's T5 text encoder (from tools/convert_t5.py); VAR models take none"),
    STR(spiece, NULL, "", "an Infinity model's SentencePiece tokenizer model (spiece.model); VAR models take none"),
    STR(backend, "auto|cpu|cuda", "auto", "compute backend: auto picks CUDA when a GPU is present"),
    INT(threads, 0, 256, "0", "CPU backend worker threads, 0 = all cores"),
    STR(host, NULL, "0.0.0.0", "address to listen on"),
    INT(port, 0, 65535, "8080", "TCP port, 0 = any free port (logged at start)"),
    INT(http_threads, 1, 256, "4", "HTTP thread pool size (parsing, validation, PNG encoding)"),
    BOOL(reuse_port, "false", "share the port with other processes listening on it (SO_REUSEPORT)"),
    INT(health_port, 0, 65535, "0",
        "a second listener for /health, /ready and /metrics only, answering when the main port's "
        "connections are used up; 0 = none"),
    INT(max_connections, 1, 100000, "1024", "open client connections at most"),
    INT(max_connections_per_address, 0, 100000, "256", "open connections from one client address at most, 0 = no limit"),
    INT(http_timeout_s, 0, 86400, "60", "idle connection timeout in seconds, 0 = none"),
    INT(request_timeout_s, 0, 86400, "30",
        "seconds a request's headers and body may take to arrive (from the connection's start or its "
        "previous response), 0 = no limit"),
    INT(max_body_bytes, 64, 16777216, "65536", "request bodies above this get 413 unread"),
    STR(api_key, NULL, "", "bearer token POST /generate requires, empty = none"),
    BOOL(access_log, "true", "one log line per request"),
    INT(max_batch_images, 1, 4096, "8", "images advanced per engine step (2 rows each)"),
    INT(kv_pool_mb, 0, 1048576, "0",
        "KV pool MiB, 0 = room for max_batch_images at full cache (on CUDA at most what the device "
        "has left after weights and scratch, less max(256 MiB, 2%))"),
    STRF(kv_policy, vs_kv_policy_choices, "full", /* the names: kvcache/policy.c's registry */
        "KV cache policy of requests that name none (full keeps every token)"),
    NUM(kv_budget, 0.000001, 1, "0.1", "budget of compressing policies: a fraction of the full cache"),
    STR(kv_budget_file, NULL, "", "ScaleKV budget file, empty = MODEL.budgets.json when present"),
    INT(queue_size, 1, 1000000, "64", "requests waiting for admission before 429"),
    INT(queue_full_delay_ms, 0, 10000, "250",
        "a 429 for a full queue is answered this long after its request is in, holding the connection, "
        "so a client that retries without honouring Retry-After sends one request per delay at most; "
        "0 = answer at once"),
    INT(default_timeout_ms, 1, 86400000, "60000", "deadline of a request without timeout_ms"),
    INT(max_timeout_ms, 1, 86400000, "600000", "largest timeout_ms a request may ask for"),
    NUM(drain_timeout_s, 0, 86400, "30", "on SIGTERM, how long running requests may take"),
    NUM(default_cfg, 0, 20, "1.5", "guidance scale when the model file stores none"),
    INT(default_top_k, 0, 1000000, "900", "top-k when the model file stores none, 0 = off"),
    NUM(default_top_p, 0, 1, "0.96", "top-p when the model file stores none, 0 = off"),
    STR(log_level, "debug|info|warn|error", "info", "least severe log level written"),
    STR(log_format, "text|json", "text", "log lines as text or JSON objects"),
};
#define N_KEYS (sizeof keys / sizeof keys[0])

static const key_def *find_key(const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(keys[i].key, name) == 0)
            return &keys[i];
    return NULL;
}

static int in_choices(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = choices; p && *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0)
            return 1;
        p = bar ? bar + 1 : NULL;
    }
    return 0;
}

static const char *choices_of(const key_def *k) { return k->choices_of ? k->choices_of() : k->choices; }

static void range_text(const key_def *k, char *out, size_t cap)
{
    switch (k->type) {
    case K_INT:
        snprintf(out, cap, "an integer %.0f..%.0f", k->lo, k->hi);
        break;
    case K_NUM:
        snprintf(out, cap, "a number %g..%g", k->lo, k->hi);
        break;
    case K_BOOL:
        snprintf(out, cap, "true or false");
        break;
    default:
        if (choices_of(k))
            snprintf(out, cap, "one of %s", choices_of(k));
        else
            snprintf(out, cap, "a string of at most %zu bytes", k->cap - 1);
        break;
    }
}

static vs_status bad_value(const key_def *k, const char *value, const char *source, vs_err *err)
{
    char want[96];
    range_text(k, want, sizeof want);
    return vs_err_set(err, VS_ERR_INVALID, "config key '%s' (from %s) must be %s (got '%.64s')",
                      k->key, source, want, value);
}

/* Sets a key from text: the one path defaults, the environment and flags all take. */
static vs_status set_text(vs_cfg *c, const key_def *k, const char *v, const char *source, vs_err *err)
{
    char *field = (char *)c + k->off;
    switch (k->type) {
    case K_STR: {
        size_t n = strlen(v);
        if (n >= k->cap || (choices_of(k) && !in_choices(choices_of(k), v)))
            return bad_value(k, v, source, err);
        memcpy(field, v, n + 1);
        return VS_OK;
    }
    case K_INT: {
        long x;
        if (vs_cli_long(v, (long)k->lo, (long)k->hi, &x) != 0)
            return bad_value(k, v, source, err);
        memcpy(field, &x, sizeof x);
        return VS_OK;
    }
    case K_NUM: {
        double x;
        if (vs_cli_double(v, k->lo, k->hi, &x) != 0)
            return bad_value(k, v, source, err);
        memcpy(field, &x, sizeof x);
        return VS_OK;
    }
    case K_BOOL: {
        int x;
        if (vs_cli_bool(v, &x) != 0)
            return bad_value(k, v, source, err);
        memcpy(field, &x, sizeof x);
        return VS_OK;
    }
    }
    return vs_err_set(err, VS_ERR_INTERNAL, "config key '%s' has no type", k->key);
}

void vs_cfg_defaults(vs_cfg *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_KEYS; i++) {
        vs_err err;
        if (set_text(c, &keys[i], keys[i].def, "default", &err) != VS_OK) {
            /* a default outside its own range is a bug in the table above */
            fprintf(stderr, "varserve: BUG: %s\n", err.msg);
            abort();
        }
    }
}

vs_status vs_cfg_set(vs_cfg *c, const char *key, const char *value, const char *source, vs_err *err)
{
    const key_def *k = find_key(key);
    if (!k)
        return vs_err_set(err, VS_ERR_INVALID, "unknown config key '%s' (from %s); see varserve serve --help",
                          key, source);
    return set_text(c, k, value, source, err);
}

vs_status vs_cfg_load_file(vs_cfg *c, const char *path, vs_err *err)
{
    size_t len = 0;
    char *text = vs_read_file(path, 1 << 20, &len);
    if (!text)
        return vs_err_set(err, errno == ENOMEM ? VS_ERR_NOMEM : VS_ERR_IO, "cannot read config file '%s': %s",
                          path, errno == EFBIG ? "over 1 MiB, or not a regular file" : strerror(errno));
    vs_status st = vs_cfg_load_text(c, text, len, path, err);
    free(text);
    return st;
}

vs_status vs_cfg_load_text(vs_cfg *c, const char *text, size_t len, const char *path, vs_err *err)
{
    vs_status st = VS_OK;
    cJSON *root = NULL;
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root || !cJSON_IsObject(root)) {
        st = vs_err_set(err, VS_ERR_INVALID, "config file '%s' is not a JSON object (error near byte %ld)",
                        path, root ? 0L : (long)(end ? end - text : 0));
        goto fail;
    }
    char source[600];
    snprintf(source, sizeof source, "%s", path);
    for (cJSON *it = root->child; it; it = it->next) {
        const key_def *k = find_key(it->string);
        if (!k) {
            st = vs_err_set(err, VS_ERR_INVALID, "config file '%s': unknown key '%s'", path, it->string);
            goto fail;
        }
        for (const cJSON *before = root->child; before != it; before = before->next)
            if (strcmp(before->string, it->string) == 0) {
                st = vs_err_set(err, VS_ERR_INVALID,
                                "config file '%s': key '%s' appears more than once (keep one)", path, it->string);
                goto fail;
            }
        char buf[64];
        const char *v = NULL;
        if (k->type == K_STR && cJSON_IsString(it)) {
            v = it->valuestring;
        } else if (k->type == K_BOOL && cJSON_IsBool(it)) {
            v = cJSON_IsTrue(it) ? "true" : "false";
        } else if ((k->type == K_INT || k->type == K_NUM) && cJSON_IsNumber(it)) {
            double d = it->valuedouble;
            if (k->type == K_INT && (d != floor(d) || fabs(d) > 1e15)) {
                snprintf(buf, sizeof buf, "%g", d);
                st = bad_value(k, buf, source, err);
                goto fail;
            }
            snprintf(buf, sizeof buf, k->type == K_INT ? "%.0f" : "%.17g", d);
            v = buf;
        } else {
            char want[96];
            range_text(k, want, sizeof want);
            st = vs_err_set(err, VS_ERR_INVALID, "config key '%s' (from %s) must be %s (got a JSON %s)",
                            k->key, source, want,
                            cJSON_IsString(it)   ? "string"
                            : cJSON_IsNumber(it) ? "number"
                            : cJSON_IsBool(it)   ? "boolean"
                            : cJSON_IsNull(it)   ? "null"
                            : cJSON_IsArray(it)  ? "array"
                                                 : "object");
            goto fail;
        }
        if ((st = set_text(c, k, v, source, err)) != VS_OK)
            goto fail;
    }
fail:
    cJSON_Delete(root);
    return st;
}

static void env_name(const char *key, char *out, size_t cap)
{
    size_t j = (size_t)snprintf(out, cap, "VARSERVE_");
    for (; *key && j + 1 < cap; key++)
        out[j++] = (char)toupper((unsigned char)*key);
    out[j] = 0;
}

vs_status vs_cfg_apply_env(vs_cfg *c, vs_err *err)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        char name[64];
        env_name(keys[i].key, name, sizeof name);
        const char *v = getenv(name);
        if (!v)
            continue;
        vs_status st = set_text(c, &keys[i], v, name, err);
        if (st != VS_OK)
            return st;
    }
    return VS_OK;
}

vs_status vs_cfg_validate(const vs_cfg *c, vs_err *err)
{
    if (c->default_timeout_ms > c->max_timeout_ms)
        return vs_err_set(err, VS_ERR_INVALID,
                          "config key 'default_timeout_ms' (%ld) must not exceed 'max_timeout_ms' (%ld)",
                          c->default_timeout_ms, c->max_timeout_ms);
    if (!c->model[0])
        return vs_err_set(err, VS_ERR_INVALID, "config key 'model' must name a model file");
    if (!c->host[0])
        return vs_err_set(err, VS_ERR_INVALID, "config key 'host' must name an address, e.g. 0.0.0.0");
    return VS_OK;
}

int vs_cfg_flag_key(const char *flag, char *out, size_t cap)
{
    if (strncmp(flag, "--", 2) != 0)
        return -1;
    size_t j = 0;
    for (const char *p = flag + 2; *p && *p != '='; p++) {
        if (j + 1 >= cap)
            return -1;
        out[j++] = *p == '-' ? '_' : *p;
    }
    out[j] = 0;
    return find_key(out) ? 0 : -1;
}

char *vs_cfg_to_json(const vs_cfg *c)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    for (size_t i = 0; i < N_KEYS; i++) {
        const key_def *k = &keys[i];
        const char *field = (const char *)c + k->off;
        cJSON *item = NULL;
        if (k->type == K_STR) {
            int secret = strcmp(k->key, "api_key") == 0 && field[0];
            item = cJSON_CreateString(secret ? "***" : field);
        } else if (k->type == K_INT) {
            long v;
            memcpy(&v, field, sizeof v);
            item = cJSON_CreateNumber((double)v);
        } else if (k->type == K_NUM) {
            double v;
            memcpy(&v, field, sizeof v);
            item = cJSON_CreateNumber(v);
        } else {
            int v;
            memcpy(&v, field, sizeof v);
            item = cJSON_CreateBool(v);
        }
        if (!item || !cJSON_AddItemToObject(root, k->key, item)) {
            cJSON_Delete(item);
            cJSON_Delete(root);
            return NULL;
        }
    }
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    return s;
}

char *vs_cfg_help(void)
{
    size_t cap = 256 * N_KEYS, len = 0;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    s[0] = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        char flag[64], env[64], want[96];
        size_t j = 0;
        for (const char *p = keys[i].key; *p && j + 1 < sizeof flag; p++)
            flag[j++] = *p == '_' ? '-' : *p;
        flag[j] = 0;
        env_name(keys[i].key, env, sizeof env);
        range_text(&keys[i], want, sizeof want);
        int n = snprintf(s + len, cap - len, "  --%-20s %s; %s (default %s%s%s, env %s)\n", flag,
                         keys[i].doc, want, keys[i].def[0] ? "" : "\"", keys[i].def,
                         keys[i].def[0] ? "" : "\"", env);
        if (n < 0 || (size_t)n >= cap - len)
            break;
        len += (size_t)n;
    }
    return s;
}
