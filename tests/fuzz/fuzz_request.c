/* tests/fuzz/fuzz_request.c — libFuzzer target: a request body through both validators (POST
 * /generate and POST /v1/images/generations) and, when refused, the error body it would get.
 * Every error body must be strict UTF-8 JSON of the documented shape ({"error": {"message", "type", "param", "code"}}) whatever the input, and an
 * accepted body must give parameters within their ranges. Built and run by `make fuzz`. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/policy.h"
#include "server/api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* 1 when s[0..n) is well-formed UTF-8 (what a strict JSON decoder demands). */
static int utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!len || i + len > n)
            return 0;
        if (len > 1) {
            unsigned lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80, hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
            if (s[i + 1] < lo || s[i + 1] > hi)
                return 0;
            for (size_t k = 2; k < len; k++)
                if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                    return 0;
        }
        i += len;
    }
    return 1;
}

/* One parser over the input: an accepted body's parameters in range, else an error body of the
 * documented shape with the parser's codes (400, and 404 for the OpenAI `model`). */
static void check_parser(int openai, const uint8_t *data, size_t size, const vs_srv_api_limits *lim)
{
    vs_srv_gen_params p;
    vs_srv_api_error e;
    int r = openai ? vs_srv_api_parse_openai((const char *)data, size, lim, 12345, &p, &e)
                   : vs_srv_api_parse_generate((const char *)data, size, lim, 12345, &p, &e);
    if (r == 0) {
        if (p.label < 0 || p.label > 9 || p.n < 1 || p.n > VS_SRV_MAX_N || p.cfg < 0 || p.cfg > 20 ||
            p.top_p < 0 || p.top_p > 1 || p.timeout_ms < 1 || p.timeout_ms > 600000 || p.kv_budget <= 0 ||
            p.kv_budget > 1)
            abort();
        return;
    }
    size_t len = 0;
    char *body = vs_srv_api_error_json(&e, &len);
    if (!body)
        return; /* out of memory */
    if (!(e.http == 400 || (openai && e.http == 404)) || !utf8_ok((const unsigned char *)body, len))
        abort();
    cJSON *root = cJSON_ParseWithLength(body, len);
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
    const cJSON *param = cJSON_GetObjectItemCaseSensitive(err, "param");
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(err, "message")) ||
        !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(err, "type")) ||
        !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(err, "code")) || !(cJSON_IsNull(param) || cJSON_IsString(param)))
        abort();
    cJSON_Delete(root);
    free(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char *names[10] = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"};
    vs_rt_config mc;
    memset(&mc, 0, sizeof mc);
    mc.num_classes = 10;
    mc.vocab_size = 4096;
    mc.image_size = 256;
    mc.class_names = names;
    vs_srv_api_limits lim = {.mc = &mc, .model_name = "tiny", .cfg = 1.5f, .top_k = 900, .top_p = 0.96f,
                             .default_timeout_ms = 60000, .max_timeout_ms = 600000, .kv_policy = 0,
                             .kv_budget = 0.1, .backend = "cpu"};
    check_parser(0, data, size, &lim);
    check_parser(1, data, size, &lim);
    return 0;
}
