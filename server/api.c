/* server/api.c — see api.h. */
#include "server/api.h"

#include "common/json_text.h"
#include "kvcache/policy.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PRIORITY_MAX 10

void vs_srv_api_error_set(vs_srv_api_error *e, int http, const char *type, const char *code,
                          const char *param, const char *fmt, ...)
{
    e->http = http;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

int vs_srv_http_code(vs_status s)
{
    switch (s) {
    case VS_OK: return 200;
    case VS_ERR_INVALID: return 400;
    case VS_ERR_UNSUPPORTED: return 400;
    case VS_ERR_BUSY: return 429;
    case VS_ERR_KV_FULL:
    case VS_ERR_DEVICE_LOST: return 503;
    case VS_ERR_TIMEOUT: return 504;
    case VS_ERR_NOMEM:
    case VS_ERR_IO:
    case VS_ERR_CUDA:
    case VS_ERR_INTERNAL: return 500;
    }
    return 500;
}

/* ---- validation ---------------------------------------------------------------------------------- */

/* The fields of both request bodies. OpenAI's Images API names the class `prompt` and adds model,
 * size, output_format and user; varserve's own fields are accepted on both. A text-to-image model
 * takes `prompt` (its text) on both, and `tau`. */
enum { F_LABEL, F_PROMPT, F_MODEL, F_SIZE, F_OUTFMT, F_USER, F_N, F_SEED, F_CFG, F_TOPK, F_TOPP, F_FMT,
       F_TIMEOUT, F_PRIO, F_POLICY, F_BUDGET, F_STREAM, F_PARTIAL, F_TAU, N_FIELDS };
static const char *const known_fields[N_FIELDS] = {
    "class_label", "prompt",   "model",      "size",     "output_format", "user",
    "n",           "seed",     "cfg_scale",  "top_k",    "top_p",         "response_format",
    "timeout_ms",  "priority", "kv_policy",  "kv_budget", "stream",       "partial_images", "tau"};
#define OPENAI_ONLY(k) ((k) >= F_MODEL && (k) <= F_USER)
#define TAU_MAX 10.0
#define PARTIAL_MAX 3 /* OpenAI's limit on partial_images */

static const char *field_list(vs_srv_api_style style, int prompts)
{
    if (prompts)
        return style == VS_SRV_API_OPENAI
                   ? "prompt, model, n, size, response_format, output_format, user, seed, cfg_scale, tau, top_k, "
                     "top_p, timeout_ms, priority"
                   : "prompt, n, seed, cfg_scale, tau, top_k, top_p, response_format, timeout_ms, priority";
    return style == VS_SRV_API_OPENAI
               ? "prompt, model, n, size, response_format, output_format, user, stream, partial_images, "
                 "seed, cfg_scale, top_k, top_p, timeout_ms, priority, kv_policy, kv_budget"
               : "class_label, n, seed, cfg_scale, top_k, top_p, response_format, timeout_ms, priority, "
                 "kv_policy, kv_budget, stream, partial_images";
}

/* What the client sent, for messages: 35, "jpeg", a string, an array. */
static void describe(const cJSON *it, char *out, size_t cap)
{
    if (cJSON_IsNumber(it))
        snprintf(out, cap, "%.17g", it->valuedouble);
    else if (cJSON_IsString(it)) {
        char clip[48];
        snprintf(out, cap, "\"%s\"", vs_utf8_clip(clip, sizeof clip, it->valuestring, 40));
    }
    else if (cJSON_IsBool(it))
        snprintf(out, cap, "%s", cJSON_IsTrue(it) ? "true" : "false");
    else if (cJSON_IsNull(it))
        snprintf(out, cap, "null");
    else if (cJSON_IsArray(it))
        snprintf(out, cap, "an array");
    else
        snprintf(out, cap, "an object");
}

static int bad_field(vs_srv_api_error *e, const cJSON *it, const char *name, const char *want)
{
    char got[96];
    describe(it, got, sizeof got);
    vs_srv_api_error_set(e, 400, "invalid_request_error", cJSON_IsNumber(it) ? "out_of_range" : "invalid_type",
                         name, "%s must be %s (got %s)", name, want, got);
    return -1;
}

/* An integral JSON number within [lo, hi]. */
static int get_int(const cJSON *it, double lo, double hi, double *out)
{
    if (!cJSON_IsNumber(it))
        return -1;
    double d = it->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < lo || d > hi)
        return -1;
    *out = d;
    return 0;
}

static int get_num(const cJSON *it, double lo, double hi, double *out)
{
    if (!cJSON_IsNumber(it))
        return -1;
    double d = it->valuedouble;
    if (!isfinite(d) || d < lo || d > hi)
        return -1;
    *out = d;
    return 0;
}

/* A NUL (a raw 0 byte or \u0000) in any string of the body, which cJSON would silently cut at
 * ("3\u0000x" would read as "3"): 1 with the top-level field it is in (its key, or the key itself
 * up to the NUL) in name, else 0. The body has already parsed as a JSON object. */
static int nul_field(const char *body, size_t len, char *name, size_t cap)
{
    int depth = 0, key_next = 0;
    const char *key = "", *key_end = key;
    for (size_t i = 0; i < len; i++) {
        char c = body[i];
        if (c == '{' || c == '[') {
            depth++;
            key_next = depth == 1;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ',' && depth == 1) {
            key_next = 1;
        } else if (c == '"') {
            size_t start = ++i, nul = 0;
            for (; i < len && body[i] != '"'; i++) {
                if (body[i] == 0 && !nul)
                    nul = i + 1;
                if (body[i] == '\\' && i + 1 < len) {
                    if (!nul && i + 6 <= len && memcmp(body + i + 1, "u0000", 5) == 0)
                        nul = i + 1;
                    i++;
                }
            }
            if (depth == 1 && key_next) {
                key = body + start;
                key_end = body + (nul ? nul - 1 : i);
                key_next = 0;
            }
            if (nul) {
                char raw[64];
                size_t n = (size_t)(key_end - key) < sizeof raw - 1 ? (size_t)(key_end - key) : sizeof raw - 1;
                memcpy(raw, key, n);
                raw[n] = 0;
                vs_utf8_clip(name, cap, raw, 40);
                return 1;
            }
        }
    }
    return 0;
}

/* model, size, output_format and user of an OpenAI body. */
static int openai_fields(const cJSON *const *field, const vs_srv_api_limits *lim, vs_srv_api_error *e)
{
    const cJSON *f_model = field[F_MODEL], *f_size = field[F_SIZE], *f_out = field[F_OUTFMT],
                *f_user = field[F_USER];
    int px = lim->mc->image_size;
    char want[200];
    if (f_model && (!cJSON_IsString(f_model) || strcmp(f_model->valuestring, lim->model_name) != 0)) {
        char got[96];
        describe(f_model, got, sizeof got);
        vs_srv_api_error_set(e, 404, "invalid_request_error", "model_not_found", "model",
                             "the model %s does not exist here: this server serves \"%s\" (GET /v1/models)",
                             got, lim->model_name);
        return -1;
    }
    snprintf(want, sizeof want, "\"%dx%d\" (this model's size) or \"auto\"", px, px);
    if (f_size) {
        char s[32];
        snprintf(s, sizeof s, "%dx%d", px, px);
        if (!cJSON_IsString(f_size) || (strcmp(f_size->valuestring, s) != 0 && strcmp(f_size->valuestring, "auto") != 0)) {
            bad_field(e, f_size, "size", want);
            e->code = "invalid_value";
            return -1;
        }
    }
    if (f_out && (!cJSON_IsString(f_out) || strcmp(f_out->valuestring, "png") != 0)) {
        bad_field(e, f_out, "output_format", "\"png\" (the one format varserve encodes)");
        e->code = "invalid_value";
        return -1;
    }
    if (f_user && !cJSON_IsString(f_user))
        return bad_field(e, f_user, "user", "a string");
    return 0;
}

/* The fields one model family has and the other does not, refused naming what to send instead. */
static int family_fields(const cJSON *const *field, vs_srv_api_style style, const vs_srv_api_limits *lim,
                         vs_srv_api_error *e)
{
    static const int var_only[] = {F_LABEL, F_POLICY, F_BUDGET, F_STREAM, F_PARTIAL};
    if (lim->prompts) {
        for (size_t i = 0; i < sizeof var_only / sizeof *var_only; i++) {
            const char *name = known_fields[var_only[i]];
            if (!field[var_only[i]])
                continue;
            if (var_only[i] == F_LABEL)
                vs_srv_api_error_set(e, 400, "invalid_request_error", "unknown_field", name,
                                     "this server's model generates images from text: send \"prompt\" (a "
                                     "string), not class_label");
            else
                vs_srv_api_error_set(e, 400, "invalid_request_error", "unknown_field", name,
                                     "%s is not supported for this server's text-to-image (Infinity) model yet "
                                     "(it runs with its full KV cache and answers when the images are done)",
                                     name);
            return -1;
        }
        return 0;
    }
    if (field[F_TAU]) {
        vs_srv_api_error_set(e, 400, "invalid_request_error", "unknown_field", "tau",
                             "tau is for text-to-image (Infinity) models; this server's model is "
                             "class-conditional (fields: %s)",
                             field_list(style, 0));
        return -1;
    }
    if (style == VS_SRV_API_NATIVE && field[F_PROMPT]) {
        vs_srv_api_error_set(e, 400, "invalid_request_error", "unknown_field", "prompt",
                             "this server's model is class-conditional: send class_label (a class index or "
                             "name), not prompt");
        return -1;
    }
    return 0;
}

/* A text prompt: a non-empty UTF-8 string shorter than VS_SRV_PROMPT_MAX bytes. */
static int prompt_field(const cJSON *f, vs_srv_gen_params *out, vs_srv_api_error *e)
{
    if (!f) {
        vs_srv_api_error_set(e, 400, "invalid_request_error", "missing_field", "prompt",
                             "prompt is required (the text to draw, e.g. \"a red fox in the snow\")");
        return -1;
    }
    if (!cJSON_IsString(f) || !f->valuestring[0])
        return bad_field(e, f, "prompt", "a non-empty string (the text to draw)");
    size_t n = strlen(f->valuestring);
    if (n >= VS_SRV_PROMPT_MAX) {
        vs_srv_api_error_set(e, 400, "invalid_request_error", "out_of_range", "prompt",
                             "prompt is %zu bytes; the limit is %d", n, VS_SRV_PROMPT_MAX - 1);
        return -1;
    }
    size_t bad = vs_utf8_invalid_at(f->valuestring, n);
    if (bad < n) {
        vs_srv_api_error_set(e, 400, "invalid_request_error", "invalid_value", "prompt",
                             "prompt is not valid UTF-8 (byte %zu)", bad);
        return -1;
    }
    memcpy(out->prompt, f->valuestring, n + 1);
    return 0;
}

static int parse_body(const char *body, size_t len, vs_srv_api_style style, const vs_srv_api_limits *lim,
                      uint64_t random_seed, vs_srv_gen_params *out, vs_srv_api_error *e)
{
    const vs_rt_config *mc = lim->mc;
    int rc = -1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        long at = end ? (long)(end - body) : 0;
        vs_srv_api_error_set(e, 400, "invalid_request_error", "invalid_json", NULL,
                             "the body is not valid JSON (error near byte %ld)", at);
        return -1;
    }
    for (const char *p = end; p && p < body + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            vs_srv_api_error_set(e, 400, "invalid_request_error", "invalid_json", NULL,
                                 "the body has content after its JSON value (byte %ld)", (long)(p - body));
            goto done;
        }
    if (!cJSON_IsObject(root)) {
        vs_srv_api_error_set(e, 400, "invalid_request_error", "invalid_json", NULL,
                             "the body must be a JSON object, e.g. {\"class_label\": 3}");
        goto done;
    }
    char nul_name[48];
    if (nul_field(body, len, nul_name, sizeof nul_name)) {
        vs_srv_api_error_set(e, 400, "invalid_request_error", "nul_character", nul_name,
                             "field '%s' contains a NUL character (\\u0000), which no field accepts",
                             nul_name);
        goto done;
    }
    const cJSON *field[N_FIELDS] = {0};
    for (const cJSON *it = root->child; it; it = it->next) {
        size_t k = 0;
        while (k < N_FIELDS && strcmp(known_fields[k], it->string) != 0)
            k++;
        if (k == N_FIELDS || (style == VS_SRV_API_OPENAI ? k == F_LABEL : OPENAI_ONLY(k))) {
            char name[48];
            vs_utf8_clip(name, sizeof name, it->string, 40);
            vs_srv_api_error_set(e, 400, "invalid_request_error", "unknown_field", name,
                                 "unknown field '%s' (fields: %s)", name, field_list(style, lim->prompts));
            goto done;
        }
        if (field[k]) {
            vs_srv_api_error_set(e, 400, "invalid_request_error", "duplicate_field", known_fields[k],
                                 "field '%s' appears more than once", known_fields[k]);
            goto done;
        }
        field[k] = it;
    }
    const cJSON *f_n = field[F_N], *f_seed = field[F_SEED], *f_cfg = field[F_CFG], *f_topk = field[F_TOPK],
                *f_topp = field[F_TOPP], *f_fmt = field[F_FMT], *f_timeout = field[F_TIMEOUT],
                *f_prio = field[F_PRIO], *f_policy = field[F_POLICY], *f_budget = field[F_BUDGET];
    char want[160];
    double d;

    memset(out, 0, sizeof *out);
    if (style == VS_SRV_API_OPENAI) {
        if (openai_fields(field, lim, e) != 0)
            goto done;
    }
    if (family_fields(field, style, lim, e) != 0)
        goto done;
    if (lim->prompts) {
        if (prompt_field(field[F_PROMPT], out, e) != 0)
            goto done;
        out->tau = lim->tau;
        if (field[F_TAU]) {
            if (get_num(field[F_TAU], 0, TAU_MAX, &d) != 0 || d <= 0) {
                snprintf(want, sizeof want, "a number in (0, %g]: the sampling temperature", TAU_MAX);
                bad_field(e, field[F_TAU], "tau", want);
                goto done;
            }
            out->tau = (float)d;
        }
        goto common;
    }
    const cJSON *f_label = style == VS_SRV_API_OPENAI ? field[F_PROMPT] : field[F_LABEL];
    const char *label_name = known_fields[style == VS_SRV_API_OPENAI ? F_PROMPT : F_LABEL];
    if (style == VS_SRV_API_OPENAI)
        snprintf(want, sizeof want,
                 "a class name or index 0..%d as a string, e.g. \"%d\" (GET /v1/models or /info lists the "
                 "classes)",
                 mc->num_classes - 1, mc->num_classes - 1);
    else
        snprintf(want, sizeof want, "a class index 0..%d or a class name", mc->num_classes - 1);
    if (!f_label) {
        vs_srv_api_error_set(e, 400, "invalid_request_error", "missing_field", label_name, "%s is required (%s)",
                             label_name, want);
        goto done;
    }
    if (cJSON_IsString(f_label)) {
        int cls = vs_rt_class_lookup(mc, f_label->valuestring);
        if (cls < 0) {
            bad_field(e, f_label, label_name, want);
            e->code = "unknown_class";
            goto done;
        }
        out->label = cls;
    } else if (style == VS_SRV_API_NATIVE && get_int(f_label, 0, mc->num_classes - 1, &d) == 0) {
        out->label = (int)d;
    } else {
        bad_field(e, f_label, label_name, want);
        goto done;
    }

common:
    out->n = 1;
    if (f_n) {
        if (get_int(f_n, 1, VS_SRV_MAX_N, &d) != 0) {
            snprintf(want, sizeof want, "an integer 1..%d", VS_SRV_MAX_N);
            bad_field(e, f_n, "n", want);
            goto done;
        }
        out->n = (int)d;
    }
    if (f_seed) {
        if (get_int(f_seed, 0, (double)VS_SRV_SEED_MAX, &d) != 0) {
            bad_field(e, f_seed, "seed", "an integer 0..9007199254740991");
            goto done;
        }
        out->seed = (uint64_t)d;
        out->seed_given = 1;
    } else {
        out->seed = (random_seed >> 11) % (VS_SRV_SEED_MAX - 15);
    }
    out->cfg = lim->cfg;
    if (f_cfg) {
        if (get_num(f_cfg, 0, 20, &d) != 0) {
            bad_field(e, f_cfg, "cfg_scale", "a number 0..20");
            goto done;
        }
        out->cfg = (float)d;
    }
    out->top_k = lim->top_k;
    if (f_topk) {
        if (get_int(f_topk, 0, mc->vocab_size, &d) != 0) {
            snprintf(want, sizeof want, "an integer 0..%d, 0 = off", mc->vocab_size);
            bad_field(e, f_topk, "top_k", want);
            goto done;
        }
        out->top_k = (int)d;
    }
    out->top_p = lim->top_p;
    if (f_topp) {
        if (get_num(f_topp, 0, 1, &d) != 0) {
            bad_field(e, f_topp, "top_p", "a number 0..1, 0 = off");
            goto done;
        }
        out->top_p = (float)d;
    }
    out->format = VS_SRV_FMT_B64_JSON;
    if (f_fmt && style == VS_SRV_API_OPENAI) {
        if (!cJSON_IsString(f_fmt) || strcmp(f_fmt->valuestring, "b64_json") != 0) {
            bad_field(e, f_fmt, "response_format",
                      "\"b64_json\" (varserve keeps no stored results to answer \"url\")");
            e->code = "invalid_value";
            goto done;
        }
    } else if (f_fmt) {
        if (!cJSON_IsString(f_fmt) ||
            (strcmp(f_fmt->valuestring, "b64_json") != 0 && strcmp(f_fmt->valuestring, "png") != 0)) {
            bad_field(e, f_fmt, "response_format", "\"b64_json\" or \"png\"");
            e->code = "invalid_value";
            goto done;
        }
        out->format = strcmp(f_fmt->valuestring, "png") == 0 ? VS_SRV_FMT_PNG : VS_SRV_FMT_B64_JSON;
        if (out->format == VS_SRV_FMT_PNG && out->n != 1) {
            vs_srv_api_error_set(e, 400, "invalid_request_error", "invalid_value", "response_format",
                                 "response_format \"png\" returns one image: use n = 1, or b64_json for "
                                 "n = %d",
                                 out->n);
            goto done;
        }
    }
    out->timeout_ms = lim->default_timeout_ms;
    if (f_timeout) {
        if (get_int(f_timeout, 1, (double)lim->max_timeout_ms, &d) != 0) {
            snprintf(want, sizeof want, "an integer 1..%ld (milliseconds)", lim->max_timeout_ms);
            bad_field(e, f_timeout, "timeout_ms", want);
            goto done;
        }
        out->timeout_ms = (long)d;
    }
    if (f_prio) {
        if (get_int(f_prio, -PRIORITY_MAX, PRIORITY_MAX, &d) != 0) {
            snprintf(want, sizeof want, "an integer %d..%d (higher runs first)", -PRIORITY_MAX, PRIORITY_MAX);
            bad_field(e, f_prio, "priority", want);
            goto done;
        }
        out->priority = (int)d;
    }
    out->kv_policy = lim->kv_policy;
    if (f_policy) {
        vs_kv_policy_kind kind;
        if (!cJSON_IsString(f_policy) || vs_kv_policy_parse(f_policy->valuestring, &kind) != 0) {
            char one_of[256] = "one of ";
            size_t at = strlen(one_of);
            vs_kv_policy_names(one_of + at, sizeof one_of - at, ", ", ", ");
            bad_field(e, f_policy, "kv_policy", one_of);
            e->code = "invalid_value";
            goto done;
        }
        out->kv_policy = (int)kind;
    }
    out->kv_budget = lim->kv_budget;
    if (f_budget) {
        if (get_num(f_budget, 0, 1, &d) != 0 || d <= 0) {
            bad_field(e, f_budget, "kv_budget", "a number in (0, 1]: a fraction of the full cache");
            goto done;
        }
        out->kv_budget = d;
    }
    if (!vs_kv_policy_def_of((vs_kv_policy_kind)out->kv_policy)->compresses)
        out->kv_budget = 1;
    if (field[F_STREAM]) {
        if (!cJSON_IsBool(field[F_STREAM])) {
            bad_field(e, field[F_STREAM], "stream", "true or false");
            goto done;
        }
        out->stream = cJSON_IsTrue(field[F_STREAM]);
    }
    if (field[F_PARTIAL]) {
        if (get_int(field[F_PARTIAL], 0, PARTIAL_MAX, &d) != 0) {
            snprintf(want, sizeof want, "an integer 0..%d (previews streamed before each image)", PARTIAL_MAX);
            bad_field(e, field[F_PARTIAL], "partial_images", want);
            goto done;
        }
        if (!out->stream) {
            vs_srv_api_error_set(e, 400, "invalid_request_error", "invalid_value", "partial_images",
                                 "partial_images needs \"stream\": true (previews are only streamed)");
            goto done;
        }
        out->partial_images = (int)d;
    }
    if (out->stream && out->format == VS_SRV_FMT_PNG) {
        vs_srv_api_error_set(e, 400, "invalid_request_error", "invalid_value", "response_format",
                             "a stream carries b64_json images: leave response_format out or use \"b64_json\"");
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

int vs_srv_api_parse_generate(const char *body, size_t len, const vs_srv_api_limits *lim,
                              uint64_t random_seed, vs_srv_gen_params *out, vs_srv_api_error *e)
{
    return parse_body(body, len, VS_SRV_API_NATIVE, lim, random_seed, out, e);
}

int vs_srv_api_parse_openai(const char *body, size_t len, const vs_srv_api_limits *lim, uint64_t random_seed,
                            vs_srv_gen_params *out, vs_srv_api_error *e)
{
    return parse_body(body, len, VS_SRV_API_OPENAI, lim, random_seed, out, e);
}

/* ---- writing bodies ------------------------------------------------------------------------------ */

typedef vs_srv_buf sbuf;

void vs_srv_buf_reserve(vs_srv_buf *b, size_t extra)
{
    if (b->oom || b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) {
        b->oom = 1;
        return;
    }
    b->p = np;
    b->cap = cap;
}

void vs_srv_buf_printf(vs_srv_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    vs_srv_buf_reserve(b, (size_t)n);
    if (b->oom)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

#define put vs_srv_buf_printf

void vs_srv_buf_b64(vs_srv_buf *b, const unsigned char *s, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    vs_srv_buf_reserve(b, (n + 2) / 3 * 4);
    if (b->oom)
        return;
    char *o = b->p + b->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0);
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    b->len = (size_t)(o - b->p);
    b->p[b->len] = 0;
}

char *vs_srv_buf_finish(vs_srv_buf *b, size_t *len)
{
    if (b->oom) {
        free(b->p);
        return NULL;
    }
    *len = b->len;
    return b->p;
}

char *vs_srv_api_error_json(const vs_srv_api_error *e, size_t *len)
{
    sbuf b = {0};
    char msg[900], param[100];
    vs_json_escape(msg, sizeof msg, e->msg);
    vs_json_escape(param, sizeof param, e->param);
    put(&b, "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":", msg, e->type);
    if (e->param[0])
        put(&b, "\"%s\"", param);
    else
        put(&b, "null");
    put(&b, ",\"code\":\"%s\"}}\n", e->code);
    return vs_srv_buf_finish(&b, len);
}

char *vs_srv_api_generate_json(const vs_srv_job *j, const char *model_name,
                               size_t kv_bytes_per_image, unsigned char *const *png,
                               const size_t *png_len, const vs_srv_timings *t, size_t *len)
{
    sbuf b = {0};
    size_t total = 0;
    for (int i = 0; i < j->p.n; i++)
        total += (png_len[i] + 2) / 3 * 4 + 64;
    vs_srv_buf_reserve(&b, total + 1024);
    char name[300];
    vs_json_escape(name, sizeof name, model_name);
    put(&b, "{\"id\":\"%s\",\"object\":\"image.generation\",\"created\":%lld,\"model\":\"%s\",", j->id,
        (long long)time(NULL), name);
    if (j->p.prompt[0]) {
        char *text = malloc(6 * VS_SRV_PROMPT_MAX); /* \u00XX at most a byte */
        if (!text) {
            free(b.p);
            return NULL;
        }
        put(&b, "\"prompt\":\"%s\",", vs_json_escape(text, 6 * VS_SRV_PROMPT_MAX, j->p.prompt));
        free(text);
    } else {
        put(&b, "\"class_label\":%d,", j->p.label);
    }
    put(&b, "\"n\":%d,\"seeds\":[", j->p.n);
    for (int i = 0; i < j->p.n; i++)
        put(&b, "%s%" PRIu64, i ? "," : "", j->p.seed + (uint64_t)i);
    put(&b, "],\"data\":[");
    for (int i = 0; i < j->p.n; i++) {
        put(&b, "%s{\"index\":%d,\"seed\":%" PRIu64 ",\"b64_json\":\"", i ? "," : "", i, j->p.seed + (uint64_t)i);
        vs_srv_buf_b64(&b, png[i], png_len[i]);
        put(&b, "\"}");
    }
    put(&b, "],\"params\":{\"cfg_scale\":%.9g,\"top_k\":%d,\"top_p\":%.9g,", (double)j->p.cfg, j->p.top_k,
        (double)j->p.top_p);
    if (j->p.prompt[0])
        put(&b, "\"tau\":%.9g,", (double)j->p.tau);
    put(&b, "\"priority\":%d,\"timeout_ms\":%ld},", j->p.priority, j->p.timeout_ms);
    put(&b, "\"timings\":{\"queue_ms\":%.3f,\"inference_ms\":%.3f,\"decode_ms\":%.3f,\"encode_ms\":%.3f,"
            "\"total_ms\":%.3f},",
        t->queue_ms, t->inference_ms, t->decode_ms, t->encode_ms, t->total_ms);
    put(&b, "\"kv\":{\"policy\":\"%s\",\"budget\":%.9g,\"bytes_per_image\":%zu}}\n",
        vs_kv_policy_name((vs_kv_policy_kind)j->p.kv_policy), j->p.kv_budget, kv_bytes_per_image);
    return vs_srv_buf_finish(&b, len);
}
