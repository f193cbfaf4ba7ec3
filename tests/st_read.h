/* tests/st_read.h — a minimal safetensors reader for test fixtures (golden outputs).
 * Header-only, static functions; tests only. Reads the whole file into memory. */
#ifndef VS_TEST_ST_READ_H
#define VS_TEST_ST_READ_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    unsigned char *buf;
    size_t len;
    cJSON *hdr;
    size_t data_start;
} st_file;

static int st_open(st_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return -1;
    fseek(fp, 0, SEEK_END);
    f->len = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    f->buf = malloc(f->len);
    if (!f->buf || fread(f->buf, 1, f->len, fp) != f->len) {
        fclose(fp);
        free(f->buf);
        return -1;
    }
    fclose(fp);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | f->buf[i];
    f->hdr = cJSON_ParseWithLengthOpts((const char *)f->buf + 8, n, NULL, 0);
    f->data_start = 8 + n;
    return f->hdr ? 0 : -1;
}

/* Pointer to a tensor's data (F32 or I32 stored little-endian, as on x86) and its element count. */
static const void *st_get(const st_file *f, const char *name, size_t *count)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(f->hdr, name);
    if (!t)
        return NULL;
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
    size_t b = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble;
    size_t e = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
    if (count)
        *count = (e - b) / 4;
    return f->buf + f->data_start + b;
}

/* Writes `path`: f's data section under the header hdr (f's own, edited: its length and padding
 * are recomputed). Returns 0, or −1 if the file cannot be written. */
static inline int st_write_with_header(const st_file *f, const cJSON *hdr, const char *path)
{
    char *text = cJSON_PrintUnformatted(hdr);
    FILE *o = text ? fopen(path, "wb") : NULL;
    if (!o) {
        free(text);
        return -1;
    }
    size_t hl = strlen(text), padded = (hl + 7) / 8 * 8;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)(padded >> (8 * i));
    int ok = fwrite(len8, 1, 8, o) == 8 && fwrite(text, 1, hl, o) == hl;
    for (size_t i = hl; i < padded && ok; i++)
        ok = fputc(' ', o) != EOF;
    ok = ok && fwrite(f->buf + f->data_start, 1, f->len - f->data_start, o) == f->len - f->data_start;
    ok = fclose(o) == 0 && ok;
    free(text);
    return ok ? 0 : -1;
}

static void st_close(st_file *f);

/* Writes `path`: the safetensors file `src` with its metadata config's `key` set to the JSON text
 * `value` (key NULL: unchanged) and the tensor `drop` left out of the header (NULL: none; its
 * bytes stay, a hole). Returns 0, or −1. */
static inline int st_write_variant(const char *src, const char *path, const char *key, const char *value,
                            const char *drop)
{
    st_file f;
    if (st_open(&f, src) != 0)
        return -1;
    cJSON *md = cJSON_GetObjectItemCaseSensitive(f.hdr, "__metadata__");
    const cJSON *cs = cJSON_GetObjectItemCaseSensitive(md, "config");
    cJSON *cfg = cJSON_IsString(cs) ? cJSON_Parse(cs->valuestring) : NULL;
    int rc = -1;
    if (cfg) {
        if (key)
            cJSON_ReplaceItemInObjectCaseSensitive(cfg, key, cJSON_Parse(value));
        if (drop)
            cJSON_DeleteItemFromObjectCaseSensitive(f.hdr, drop);
        char *text = cJSON_PrintUnformatted(cfg);
        cJSON_ReplaceItemInObjectCaseSensitive(md, "config", cJSON_CreateString(text));
        free(text);
        rc = st_write_with_header(&f, f.hdr, path);
    }
    cJSON_Delete(cfg);
    st_close(&f);
    return rc;
}

/* Writes `path`: the file `src` with `flips` bytes of its first `span` bytes (the header, where
 * loaders parse) set to pseudo-random values drawn from *rng, or (flips 0) cut to `span` bytes.
 * Returns 0, or −1. For corruption sweeps: a loader must refuse or load such a file, never crash. */
static inline int st_write_corrupt(const char *src, const char *path, size_t span, int flips, uint32_t *rng)
{
    st_file f;
    if (st_open(&f, src) != 0)
        return -1;
    size_t n = flips ? f.len : (span < f.len ? span : f.len);
    if (flips)
        for (int i = 0; i < flips; i++) {
            *rng = *rng * 1664525u + 1013904223u;
            size_t at = (*rng >> 8) % (span < f.len ? span : f.len);
            *rng = *rng * 1664525u + 1013904223u;
            f.buf[at] = (unsigned char)(*rng >> 24);
        }
    FILE *o = fopen(path, "wb");
    int ok = o && fwrite(f.buf, 1, n, o) == n;
    ok = (o && fclose(o) == 0) && ok;
    st_close(&f);
    return ok ? 0 : -1;
}

/* A corruption sweep of the file `src` for a loader: 60 copies with 1–8 random bytes in the header
 * and 20 cut short, each given to load(path, msg, cap), which returns 0 when the file loaded (and
 * freed what it made) or nonzero with its message in msg. Returns how many were refused; *bad_msg
 * is the first case whose message was empty or more than one line (−1: none), *status −1 when a
 * file could not be written. For ASan/UBSan runs: a loader must refuse or load, never crash. */
static inline int st_corruption_sweep(const char *src, int (*load)(const char *path, char *msg, size_t cap),
                                      int *bad_msg, int *status)
{
    char path[] = "/tmp/st_corrupt.XXXXXX";
    int fd = mkstemp(path), refused = 0;
    *bad_msg = -1;
    *status = 0;
    st_file f;
    if (fd < 0 || st_open(&f, src) != 0) {
        *status = -1;
        return 0;
    }
    close(fd);
    size_t hdr = f.data_start, len = f.len;
    st_close(&f);
    uint32_t rng = 2026;
    for (int i = 0; i < 80 && *status == 0; i++) {
        size_t cut = i < 60 ? hdr : (size_t)(i - 60) * (len / 20) + (size_t)(i % 7);
        if (st_write_corrupt(src, path, cut, i < 60 ? 1 + i % 8 : 0, &rng) != 0) {
            *status = -1;
            break;
        }
        char msg[1024] = "";
        if (load(path, msg, sizeof msg) != 0) {
            refused++;
            if (*bad_msg < 0 && (!msg[0] || strchr(msg, '\n')))
                *bad_msg = i;
        }
    }
    unlink(path);
    return refused;
}

static void st_close(st_file *f)
{
    cJSON_Delete(f->hdr);
    free(f->buf);
    memset(f, 0, sizeof *f);
}

#endif
