/* server/png.h — 8-bit RGB PNG encoding with libpng, to memory or to a file. Any thread. */
#ifndef VS_SRV_PNG_H
#define VS_SRV_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

/* Encodes rgb [h][w][3] into a malloc'd buffer (*out, *out_len; caller frees). */
vs_status vs_srv_png_encode(const uint8_t *rgb, int w, int h, unsigned char **out, size_t *out_len,
                            vs_err *err);
/* The same for a streamed preview: zlib level 1 and one filter (SUB), which on a 256×256 image takes
 * ~4.8 ms instead of ~7.7 ms for ~20% more bytes (bench/png_speed.c); a preview is replaced moments later, and its
 * encoding shares the cores with the batch it is a preview of. */
vs_status vs_srv_png_encode_preview(const uint8_t *rgb, int w, int h, unsigned char **out, size_t *out_len,
                                    vs_err *err);
vs_status vs_srv_png_write(const char *path, const uint8_t *rgb, int w, int h, vs_err *err);

#endif
