/* server/openai.c — see openai.h. */
#include "server/openai.h"

#include "common/json_text.h"

#include <inttypes.h>
#include <stdio.h>
#include <time.h>

/* Tokens one image generates: every scale's p_s². */
static int image_tokens(const vs_rt_config *mc) { return mc->scale_offset[mc->n_scales]; }

static void put_usage(vs_srv_buf *b, const vs_rt_config *mc, int n)
{
    long out = (long)image_tokens(mc) * n;
    vs_srv_buf_printf(b,
                      "\"usage\":{\"input_tokens\":%d,\"input_tokens_details\":{\"text_tokens\":%d,"
                      "\"image_tokens\":0},\"output_tokens\":%ld,\"total_tokens\":%ld}",
                      n, n, out, out + n);
}

char *vs_srv_openai_images_json(const vs_srv_job *j, const vs_rt_config *mc, unsigned char *const *png,
                                const size_t *png_len, size_t *len)
{
    vs_srv_buf b = {0};
    size_t total = 0;
    for (int i = 0; i < j->p.n; i++)
        total += (png_len[i] + 2) / 3 * 4 + 64;
    vs_srv_buf_reserve(&b, total + 512);
    vs_srv_buf_printf(&b, "{\"created\":%lld,\"data\":[", (long long)time(NULL));
    for (int i = 0; i < j->p.n; i++) {
        vs_srv_buf_printf(&b, "%s{\"seed\":%" PRIu64 ",\"b64_json\":\"", i ? "," : "", j->p.seed + (uint64_t)i);
        vs_srv_buf_b64(&b, png[i], png_len[i]);
        vs_srv_buf_printf(&b, "\"}");
    }
    vs_srv_buf_printf(&b, "],\"background\":\"opaque\",\"output_format\":\"png\",\"quality\":\"auto\",\"size\":\"%dx%d\",",
                      mc->image_size, mc->image_size);
    put_usage(&b, mc, j->p.n);
    vs_srv_buf_printf(&b, "}\n");
    return vs_srv_buf_finish(&b, len);
}

void vs_srv_openai_event(vs_srv_buf *b, const vs_srv_job *j, const vs_rt_config *mc, int index, int partial,
                         int scale, const unsigned char *png, size_t png_len)
{
    const char *type = partial >= 0 ? "image_generation.partial_image" : "image_generation.completed";
    vs_srv_buf_reserve(b, (png_len + 2) / 3 * 4 + 512);
    vs_srv_buf_printf(b, "event: %s\ndata: {\"type\":\"%s\",\"b64_json\":\"", type, type);
    vs_srv_buf_b64(b, png, png_len);
    vs_srv_buf_printf(b,
                      "\",\"created_at\":%lld,\"size\":\"%dx%d\",\"quality\":\"auto\",\"background\":\"opaque\","
                      "\"output_format\":\"png\",\"image_index\":%d,\"seed\":%" PRIu64 ",\"scale\":%d",
                      (long long)time(NULL), mc->image_size, mc->image_size, index, j->p.seed + (uint64_t)index,
                      scale);
    if (partial >= 0) {
        vs_srv_buf_printf(b, ",\"partial_image_index\":%d", partial);
    } else {
        vs_srv_buf_printf(b, ",");
        put_usage(b, mc, 1);
    }
    vs_srv_buf_printf(b, "}\n\n");
}

char *vs_srv_openai_models_json(const char *model_name, double loaded_unix_s, size_t *len)
{
    vs_srv_buf b = {0};
    char name[300];
    vs_json_escape(name, sizeof name, model_name);
    vs_srv_buf_printf(&b,
                      "{\"object\":\"list\",\"data\":[{\"id\":\"%s\",\"object\":\"model\",\"created\":%lld,"
                      "\"owned_by\":\"varserve\"}]}\n",
                      name, (long long)loaded_unix_s);
    return vs_srv_buf_finish(&b, len);
}
