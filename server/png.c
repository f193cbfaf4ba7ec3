/* server/png.c — see png.h. Encodes into a growing memory buffer; libpng errors come back through
 * setjmp in the one function that calls libpng. */
#include "server/png.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

typedef struct {
    unsigned char *p;
    size_t len, cap;
    int oom;
} membuf;

static void write_cb(png_structp png, png_bytep data, png_size_t n)
{
    membuf *b = png_get_io_ptr(png);
    if (b->oom)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 65536;
        while (cap < b->len + n)
            cap *= 2;
        unsigned char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void flush_cb(png_structp png) { (void)png; }

/* level: zlib's 0..9; fast: the SUB filter only (libpng's default tries five filters per row) and
 * zlib's run-length strategy (matches at distance 1 only: on a noisy image half the time of the
 * default strategy, on a smooth one the same time and size within 5%) */
static vs_status encode(const uint8_t *rgb, int w, int h, int level, int fast, unsigned char **out,
                        size_t *out_len, vs_err *err)
{
    membuf buf = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        return vs_err_set(err, VS_ERR_NOMEM, "cannot start the PNG encoder");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(buf.p);
        return vs_err_set(err, VS_ERR_INTERNAL, "PNG encoding failed");
    }
    png_set_write_fn(png, &buf, write_cb, flush_cb);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_set_compression_level(png, level);
    if (fast) {
        png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_SUB);
        png_set_compression_strategy(png, Z_RLE);
    }
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, (png_const_bytep)(rgb + (size_t)y * w * 3));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (buf.oom) {
        free(buf.p);
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory encoding a PNG");
    }
    *out = buf.p;
    *out_len = buf.len;
    return VS_OK;
}

vs_status vs_srv_png_encode(const uint8_t *rgb, int w, int h, unsigned char **out, size_t *out_len,
                            vs_err *err)
{
    return encode(rgb, w, h, 6, 0, out, out_len, err);
}

vs_status vs_srv_png_encode_preview(const uint8_t *rgb, int w, int h, unsigned char **out, size_t *out_len,
                                    vs_err *err)
{
    return encode(rgb, w, h, 1, 1, out, out_len, err);
}

vs_status vs_srv_png_write(const char *path, const uint8_t *rgb, int w, int h, vs_err *err)
{
    unsigned char *data = NULL;
    size_t len = 0;
    vs_status st = vs_srv_png_encode(rgb, w, h, &data, &len, err);
    if (st != VS_OK)
        return st;
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(data);
        return vs_err_set(err, VS_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    }
    size_t wr = fwrite(data, 1, len, f);
    int cl = fclose(f);
    free(data);
    if (wr != len || cl != 0)
        return vs_err_set(err, VS_ERR_IO, "cannot write '%s': disk full or I/O error", path);
    return VS_OK;
}
