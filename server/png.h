/* server/png.h — 8-bit RGB PNG encoding with libpng, to memory or to a file. Any thread. */
#ifndef VS_SRV_PNG_H
#define VS_SRV_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

/* Encodes rgb [h][w][3] into a malloc'd buffer (*out, *out_len; caller frees). */
vs_status vs_srv_png_encode(const uint8_t *rgb, int w, int h, unsigned char **out, size_t *out_len,
                            vs_err *err);
/* The same for a streamed preview: zlib level 1, its run-length strategy and one filter (SUB). A
 * preview is replaced moments later, and its encoding shares the cores with the batch it is a
 * preview of: on a 256×256 image it takes ~2 ms instead of 7–13 ms, for 15–40% more bytes than the
 * final images' encoding (bench/png_speed.c; bench/RESULTS.md, "Streamed previews"). Stored
 * (level 0) would take 0.3 ms but send 3·w·h bytes: 6× a smooth preview's. */
vs_status vs_srv_png_encode_preview(const uint8_t *rgb, int w, int h, unsigned char **out, size_t *out_len,
                                    vs_err *err);
vs_status vs_srv_png_write(const char *path, const uint8_t *rgb, int w, int h, vs_err *err);

#endif
