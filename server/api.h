/* server/api.h — the HTTP API's bodies: POST /generate validation, the success JSON and the error
 * JSON ({"error": {"message", "type", "param", "code"}}).
 *
 * Design: the body is parsed with cJSON_ParseWithLengthOpts, every field is checked (unknown
 * fields, duplicates, wrong types and out-of-range values are 400 naming the field) and copied
 * into a plain vs_srv_gen_params; the cJSON tree is deleted in the same function. Responses are
 * written by hand into one growing buffer, so the base64 of large PNGs is not copied twice.
 *
 * Threads: pure functions over their arguments; any thread. */
#ifndef VS_SRV_API_H
#define VS_SRV_API_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "runtime/model.h"
#include "server/job.h"

#define VS_SRV_SEED_MAX 9007199254740991ULL /* 2^53 − 1: every seed survives a JSON double */

typedef struct {
    int http;           /* 400, 401, ... */
    const char *type;   /* static: "invalid_request_error", ... */
    const char *code;   /* static: "invalid_value", ... */
    char param[40];     /* the field at fault, "" when none */
    char msg[400];
} vs_srv_api_error;

/* What validation needs to know about the server and the model. */
/* Which API a body speaks: POST /generate, or OpenAI's POST /v1/images/generations. */
typedef enum { VS_SRV_API_NATIVE = 0, VS_SRV_API_OPENAI } vs_srv_api_style;

typedef struct {
    const vs_rt_config *mc;
    const char *model_name; /* the one `model` an OpenAI body may name */
    int prompts;        /* 1: the model generates from text (Infinity): `prompt`, `tau`; 0: `class_label` */
    float tau;          /* the default tau (prompts only) */
    float cfg;          /* defaults for absent fields */
    int top_k;
    float top_p;
    long default_timeout_ms, max_timeout_ms;
    int kv_policy;      /* default vs_kv_policy_kind */
    double kv_budget;   /* default budget */
    const char *backend;
} vs_srv_api_limits;

typedef struct {
    double queue_ms, inference_ms, decode_ms, encode_ms, total_ms;
} vs_srv_timings;

void vs_srv_api_error_set(vs_srv_api_error *e, int http, const char *type, const char *code,
                          const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* The HTTP code for a status (the one table of the server). */
int vs_srv_http_code(vs_status s);

/* Validates a POST /generate body. random_seed is used when the body has no seed (it is reduced
 * to 0..VS_SRV_SEED_MAX − 16). 0 on success, else -1 with e filled (http 400). */
int vs_srv_api_parse_generate(const char *body, size_t len, const vs_srv_api_limits *lim,
                              uint64_t random_seed, vs_srv_gen_params *out, vs_srv_api_error *e);

/* The same for a POST /v1/images/generations body: `prompt` is the text (a text-to-image model) or
 * the class name or index as a string (no class_label); model, size, output_format and user are checked; response_format is
 * b64_json only; varserve's own fields as on /generate. Errors: 400, or 404 for a `model` this
 * server does not serve (lim->model_name). */
int vs_srv_api_parse_openai(const char *body, size_t len, const vs_srv_api_limits *lim, uint64_t random_seed,
                            vs_srv_gen_params *out, vs_srv_api_error *e);

/* {"error": {...}} ; caller frees; NULL when out of memory. */
char *vs_srv_api_error_json(const vs_srv_api_error *e, size_t *len);

/* The success body for a finished job: one base64 PNG per image, seeds, timings, KV use.
 * png[i], png_len[i] for i < j->p.n. Caller frees; NULL when out of memory. */
char *vs_srv_api_generate_json(const vs_srv_job *j, const char *model_name,
                               size_t kv_bytes_per_image, unsigned char *const *png,
                               const size_t *png_len, const vs_srv_timings *t, size_t *len);

/* A growing response body: printf-style appends, base64, and the finished malloc'd string. An
 * allocation failure sets oom, makes later appends no-ops and finish return NULL. Zeroed = empty. */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} vs_srv_buf;
void vs_srv_buf_reserve(vs_srv_buf *b, size_t extra);
void vs_srv_buf_printf(vs_srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void vs_srv_buf_b64(vs_srv_buf *b, const unsigned char *s, size_t n);
/* The text (caller frees) and its length; NULL (and the buffer freed) after an allocation failed. */
char *vs_srv_buf_finish(vs_srv_buf *b, size_t *len);

#endif
