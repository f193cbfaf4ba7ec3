/* tests/st_read.h — a minimal safetensors reader for test fixtures (golden outputs).
 * Header-only, static functions; tests only. Reads the whole file into memory. */
#ifndef VS_TEST_ST_READ_H
#define VS_TEST_ST_READ_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static void st_close(st_file *f)
{
    cJSON_Delete(f->hdr);
    free(f->buf);
    memset(f, 0, sizeof *f);
}

#endif
