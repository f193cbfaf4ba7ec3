/* server/openai.h — the bodies of OpenAI's Images API as varserve answers them: the images
 * response of POST /v1/images/generations, its streamed events, and GET /v1/models.
 *
 * Design: OpenAI's shapes live here and nowhere else; the request side (prompt, model, size, ...)
 * is validated with the native fields in server/api.c (vs_srv_api_parse_openai),
 * and errors use api.c's {"error": {"message", "type", "param", "code"}}, which is OpenAI's.
 * `usage` counts tokens as VAR has them: one class token in, every scale's tokens out per image.
 * Fields varserve adds beside OpenAI's (seed, image_index, scale) are ignored by its SDKs.
 *
 * Threads: pure functions over their arguments; any thread. */
#ifndef VS_SRV_OPENAI_H
#define VS_SRV_OPENAI_H

#include <stddef.h>

#include "runtime/model.h"
#include "server/api.h"
#include "server/job.h"

/* {"created", "data": [{"b64_json", "seed"}...], "output_format", "size", "usage"}.
 * png[i], png_len[i] for i < j->p.n. Caller frees; NULL when out of memory. */
char *vs_srv_openai_images_json(const vs_srv_job *j, const vs_rt_config *mc, unsigned char *const *png,
                                const size_t *png_len, size_t *len);

/* One streamed event, appended to b as an SSE frame: image_generation.partial_image (partial =
 * its partial_image_index, >= 0) or image_generation.completed (partial < 0), of image `index`
 * after `scale` scales. */
void vs_srv_openai_event(vs_srv_buf *b, const vs_srv_job *j, const vs_rt_config *mc, int index, int partial,
                         int scale, const unsigned char *png, size_t png_len);

/* {"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]} for the served
 * model. Caller frees; NULL when out of memory. */
char *vs_srv_openai_models_json(const char *model_name, double loaded_unix_s, size_t *len);

#endif
