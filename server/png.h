/* server/png.h — 8-bit RGB PNG encoding with libpng, to memory or to a file. Any thread. */
#ifndef VS_SRV_PNG_H
#define VS_SRV_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

/* Encodes rgb [h][w][3] into a malloc'd buffer (*out, *out_len; caller frees). */
vs_status vs_srv_png_encode(const uint8_t *rgb, int w, int h, unsigned char **out, size_t *out_len,
                            vs_err *err);
vs_status vs_srv_png_write(const char *path, const uint8_t *rgb, int w, int h, vs_err *err);

#endif
