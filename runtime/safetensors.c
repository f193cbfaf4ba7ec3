/* runtime/safetensors.c — see safetensors.h. */
#include "runtime/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define HEADER_MAX_BYTES (100u * 1024u * 1024u)

int vs_st_expect_add(vs_st_expects *l, float **dst, int ndim, const long *shape, const char *fmt, ...)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 256;
        vs_st_expect *nv = realloc(l->v, (size_t)cap * sizeof *nv);
        if (!nv)
            return -1;
        l->v = nv;
        l->cap = cap;
    }
    vs_st_expect *e = &l->v[l->n++];
    memset(e, 0, sizeof *e);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->name, sizeof e->name, fmt, ap);
    va_end(ap);
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    e->dst = dst;
    return 0;
}

/* ---- config fields ------------------------------------------------------------------------- */

vs_status vs_st_cfg_int(const cJSON *o, const char *key, int lo, int hi, int *out, vs_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v)
        return vs_err_set(err, VS_ERR_INVALID, "config field '%s' is missing", key);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return vs_err_set(err, VS_ERR_INVALID, "config field '%s' must be an integer", key);
    if (v->valuedouble < lo || v->valuedouble > hi)
        return vs_err_set(err, VS_ERR_INVALID, "config field '%s' must be %d..%d (got %.0f)", key,
                          lo, hi, v->valuedouble);
    *out = (int)v->valuedouble;
    return VS_OK;
}

vs_status vs_st_cfg_num(const cJSON *o, const char *key, double lo, double hi, double *out,
                         vs_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v)
        return vs_err_set(err, VS_ERR_INVALID, "config field '%s' is missing", key);
    if (!cJSON_IsNumber(v))
        return vs_err_set(err, VS_ERR_INVALID, "config field '%s' must be a number", key);
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return vs_err_set(err, VS_ERR_INVALID, "config field '%s' must be %g..%g (got %g)", key, lo,
                          hi, v->valuedouble);
    *out = v->valuedouble;
    return VS_OK;
}

vs_status vs_st_cfg_bool(const cJSON *o, const char *key, int *out, vs_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v)
        return vs_err_set(err, VS_ERR_INVALID, "config field '%s' is missing", key);
    if (!cJSON_IsBool(v))
        return vs_err_set(err, VS_ERR_INVALID, "config field '%s' must be true or false", key);
    *out = cJSON_IsTrue(v);
    return VS_OK;
}

vs_status vs_st_cfg_int_list(const cJSON *o, const char *key, int maxn, int lo, int hi, int *out,
                              int *n, vs_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v)
        return vs_err_set(err, VS_ERR_INVALID, "config field '%s' is missing", key);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) < 1 || cJSON_GetArraySize(v) > maxn)
        return vs_err_set(err, VS_ERR_INVALID, "config field '%s' must be a list of 1..%d integers",
                          key, maxn);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v)
    {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < lo ||
            e->valuedouble > hi)
            return vs_err_set(err, VS_ERR_INVALID,
                              "config field '%s' item %d must be an integer %d..%d", key, i, lo, hi);
        out[i++] = (int)e->valuedouble;
    }
    *n = i;
    return VS_OK;
}

/* ---- the file ------------------------------------------------------------------------------ */

void vs_st_close(vs_st_file *f)
{
    cJSON_Delete(f->hdr);
    free(f->hjson);
    if (f->map && f->map != MAP_FAILED)
        munmap(f->map, f->map_len);
    if (f->fd >= 0)
        close(f->fd);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

vs_status vs_st_open(vs_st_file *f, const char *path, vs_err *err)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    vs_status st = VS_OK;
    int fd = -1;
    unsigned char *map = MAP_FAILED;
    size_t map_len = 0;
    char *hjson = NULL;
    cJSON *hdr = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st = vs_err_set(err, VS_ERR_IO, "cannot open model file '%s': %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = vs_err_set(err, VS_ERR_IO, "model file '%s' is not a regular file", path);
        goto fail;
    }
    map_len = (size_t)sb.st_size;
    if (map_len < 8) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "model file '%s' is %zu bytes: too short for a safetensors header", path,
                        map_len);
        goto fail;
    }
    map = mmap(NULL, map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        st = vs_err_set(err, VS_ERR_IO, "cannot mmap model file '%s': %s", path, strerror(errno));
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | map[i];
    if (hlen > HEADER_MAX_BYTES) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "model header is %llu bytes, over the 100 MB limit: not a model file, or "
                        "a corrupt one",
                        (unsigned long long)hlen);
        goto fail;
    }
    if (hlen > map_len - 8) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "model header claims %llu bytes but the file has only %zu after the "
                        "length: the file is truncated",
                        (unsigned long long)hlen, map_len - 8);
        goto fail;
    }
    hjson = malloc(hlen + 1);
    if (!hjson) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory for the model header");
        goto fail;
    }
    memcpy(hjson, map + 8, hlen);
    hjson[hlen] = 0;
    const char *hend = NULL;
    hdr = cJSON_ParseWithLengthOpts(hjson, hlen, &hend, 0);
    if (!hdr || !cJSON_IsObject(hdr)) {
        st = vs_err_set(err, VS_ERR_INVALID, "model header is not a JSON object (error near byte %ld)",
                        (long)(hend ? hend - hjson : 0));
        goto fail;
    }
    for (const char *p = hend; p < hjson + hlen; p++)
        if (*p != ' ') {
            st = vs_err_set(err, VS_ERR_INVALID,
                            "model header has byte 0x%02x at %ld after its JSON, where only space padding "
                            "may be: corrupt, or the header length is wrong",
                            (unsigned char)*p, (long)(p - hjson));
            goto fail;
        }
    f->fd = fd;
    f->map = map;
    f->map_len = map_len;
    f->hjson = hjson;
    f->hdr = hdr;
    f->meta = cJSON_GetObjectItemCaseSensitive(hdr, "__metadata__");
    f->data_start = 8 + hlen;
    f->data_len = map_len - f->data_start;
    return VS_OK;
fail:
    cJSON_Delete(hdr);
    free(hjson);
    if (map != MAP_FAILED)
        munmap(map, map_len);
    if (fd >= 0)
        close(fd);
    return st;
}

const char *vs_st_family(const vs_st_file *f)
{
    const cJSON *cs = f->meta ? cJSON_GetObjectItemCaseSensitive(f->meta, "config") : NULL;
    cJSON *c = cJSON_IsString(cs) ? cJSON_Parse(cs->valuestring) : NULL;
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(c, "arch"), *mt = cJSON_GetObjectItemCaseSensitive(c, "model_type");
    const char *fam = cJSON_IsString(arch) && strcmp(arch->valuestring, "infinity") == 0 ? "an Infinity"
                      : cJSON_IsString(mt) && strcmp(mt->valuestring, "t5") == 0      ? "a T5 text encoder"
                                                                                        : NULL;
    cJSON_Delete(c);
    return fam;
}

/* ---- conversion -------------------------------------------------------------------------------- */

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Converts n values to F32; returns the index of the first non-finite one, or n. In blocks of
 * 4096 values, each scanned while it is still in L1: an all-ones exponent (inf or NaN) is the
 * one that carries into bit 31 when 1 is added to the exponent field, so the scan is an add and
 * an OR per value, which vectorises without branches. */
static size_t convert(float *dst, const unsigned char *src, size_t n, vs_st_dtype dt)
{
    for (size_t b = 0; b < n; b += 4096) {
        size_t end = b + 4096 < n ? b + 4096 : n;
        if (dt == VS_ST_F32) {
            memcpy(dst + b, src + 4 * b, (end - b) * 4);
        } else if (dt == VS_ST_BF16) {
            for (size_t i = b; i < end; i++) {
                uint32_t bits = (uint32_t)(src[2 * i] | (src[2 * i + 1] << 8)) << 16;
                memcpy(&dst[i], &bits, 4);
            }
        } else {
            for (size_t i = b; i < end; i++)
                dst[i] = half_to_float((uint16_t)(src[2 * i] | (src[2 * i + 1] << 8)));
        }
        const uint32_t *bits = (const uint32_t *)(const void *)dst;
        uint32_t carry = 0;
        for (size_t k = b; k < end; k++)
            carry |= (bits[k] & 0x7f800000u) + 0x00800000u;
        if (carry & 0x80000000u)
            for (size_t k = b; k < end; k++)
                if ((bits[k] & 0x7f800000u) == 0x7f800000u)
                    return k;
    }
    return n;
}

static int cmp_begin(const void *a, const void *b)
{
    const vs_st_expect *x = *(const vs_st_expect *const *)a, *y = *(const vs_st_expect *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static void fmt_shape(char *buf, size_t cap, int ndim, const long *shape)
{
    size_t n = (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, i ? ", %ld" : "%ld", shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, ")");
}

static void fmt_mb(char *buf, size_t cap, uint64_t bytes)
{
    snprintf(buf, cap, "%.1f MB", (double)bytes / 1e6);
}

/* Matches the header's tensors against the expectations. */
static vs_status match_tensors(const cJSON *hdr, vs_st_expects *l, uint64_t data_len,
                               uint64_t file_len, uint64_t data_start, const char *dtype_hint,
                               vs_err *err)
{
    const cJSON *t;
    cJSON_ArrayForEach(t, hdr)
    {
        if (strcmp(t->string, "__metadata__") == 0)
            continue;
        vs_st_expect *e = NULL;
        for (int i = 0; i < l->n; i++)
            if (strcmp(l->v[i].name, t->string) == 0) {
                e = &l->v[i];
                break;
            }
        if (!e)
            return vs_err_set(err, VS_ERR_INVALID,
                              "unknown tensor '%s': not part of a model with this config (remove "
                              "it, or fix the config)",
                              t->string);
        if (e->found)
            return vs_err_set(err, VS_ERR_INVALID, "tensor '%s' appears twice", t->string);
        e->found = 1;
        const cJSON *jd = cJSON_GetObjectItemCaseSensitive(t, "dtype");
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(t, "shape");
        const cJSON *jo = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
        if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo) ||
            cJSON_GetArraySize(jo) != 2)
            return vs_err_set(err, VS_ERR_INVALID,
                              "tensor '%s' needs 'dtype', 'shape' and two 'data_offsets'", t->string);
        if (strcmp(jd->valuestring, "F32") == 0)
            e->dt = VS_ST_F32;
        else if (strcmp(jd->valuestring, "F16") == 0)
            e->dt = VS_ST_F16;
        else if (strcmp(jd->valuestring, "BF16") == 0)
            e->dt = VS_ST_BF16;
        else
            return vs_err_set(err, VS_ERR_INVALID,
                              "tensor '%s' has dtype %s; only F32, F16 and BF16 are supported %s",
                              t->string, jd->valuestring, dtype_hint);
        long shape[8];
        int nd = cJSON_GetArraySize(js);
        int ok = nd == e->ndim;
        const cJSON *d;
        int i = 0;
        cJSON_ArrayForEach(d, js)
        {
            if (!cJSON_IsNumber(d) || d->valuedouble < 0 || i >= 8)
                return vs_err_set(err, VS_ERR_INVALID, "tensor '%s' has a malformed shape", t->string);
            shape[i] = (long)d->valuedouble;
            if (i < e->ndim && shape[i] != e->shape[i])
                ok = 0;
            i++;
        }
        if (!ok) {
            char got[96], want[96];
            fmt_shape(got, sizeof got, nd, shape);
            fmt_shape(want, sizeof want, e->ndim, e->shape);
            return vs_err_set(err, VS_ERR_INVALID,
                              "tensor '%s' has shape %s but the config implies %s", t->string, got,
                              want);
        }
        const cJSON *b0 = cJSON_GetArrayItem(jo, 0), *b1 = cJSON_GetArrayItem(jo, 1);
        if (!cJSON_IsNumber(b0) || !cJSON_IsNumber(b1) || b0->valuedouble < 0 ||
            b1->valuedouble < b0->valuedouble)
            return vs_err_set(err, VS_ERR_INVALID, "tensor '%s' has malformed data_offsets",
                              t->string);
        e->begin = (uint64_t)b0->valuedouble;
        e->end = (uint64_t)b1->valuedouble;
        uint64_t numel = 1;
        for (int k = 0; k < e->ndim; k++)
            numel *= (uint64_t)e->shape[k];
        uint64_t need = numel * (e->dt == VS_ST_F32 ? 4 : 2);
        if (e->end - e->begin != need)
            return vs_err_set(err, VS_ERR_INVALID,
                              "tensor '%s' spans %llu bytes but its shape and dtype need %llu",
                              t->string, (unsigned long long)(e->end - e->begin),
                              (unsigned long long)need);
        if (e->end > data_len) {
            char a[32], b[32];
            fmt_mb(a, sizeof a, file_len);
            fmt_mb(b, sizeof b, data_start + e->end);
            return vs_err_set(err, VS_ERR_INVALID,
                              "model file ends at %s but tensor %s needs bytes up to %s: the file "
                              "is truncated",
                              a, t->string, b);
        }
    }
    for (int i = 0; i < l->n; i++)
        if (!l->v[i].found)
            return vs_err_set(err, VS_ERR_INVALID,
                              "tensor '%s' is missing (the config implies it)", l->v[i].name);
    /* exact coverage: sorted by begin, each tensor starts where the one before ends, the first
     * at 0 and the last at the end of the data (no overlap, no hole, nothing left over) */
    vs_st_expect **by = malloc((size_t)l->n * sizeof *by);
    if (!by)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    for (int i = 0; i < l->n; i++)
        by[i] = &l->v[i];
    qsort(by, (size_t)l->n, sizeof *by, cmp_begin);
    vs_status st = VS_OK;
    for (int i = 1; i < l->n && st == VS_OK; i++) /* overlaps first: they are the likelier fault */
        if (by[i]->begin < by[i - 1]->end)
            st = vs_err_set(err, VS_ERR_INVALID,
                            "tensors '%s' and '%s' overlap in the file (bytes %llu..%llu and "
                            "%llu..%llu)",
                            by[i - 1]->name, by[i]->name, (unsigned long long)by[i - 1]->begin,
                            (unsigned long long)by[i - 1]->end, (unsigned long long)by[i]->begin,
                            (unsigned long long)by[i]->end);
    uint64_t at = 0;
    for (int i = 0; i < l->n && st == VS_OK; i++) {
        if (by[i]->begin > at)
            st = vs_err_set(err, VS_ERR_INVALID,
                            "the data section has a hole: bytes %llu..%llu belong to no tensor (before "
                            "'%s'): the header does not describe this data (corrupt, or its length is "
                            "wrong)",
                            (unsigned long long)at, (unsigned long long)by[i]->begin, by[i]->name);
        at = by[i]->end;
    }
    if (st == VS_OK && at != data_len)
        st = vs_err_set(err, VS_ERR_INVALID,
                        "the data section is %llu bytes but the tensors cover %llu: %llu bytes left over "
                        "(corrupt, or the header length is wrong)",
                        (unsigned long long)data_len, (unsigned long long)at,
                        (unsigned long long)(data_len - at));
    free(by);
    return st;
}

vs_status vs_st_load(const vs_st_file *f, vs_st_expects *l, size_t extra, const char *dtype_hint,
                     vs_st_loaded *out, vs_err *err)
{
    memset(out, 0, sizeof *out);
    const unsigned char *map = f->map;
    uint64_t data_start = f->data_start, data_len = f->data_len;
    const cJSON *md = f->meta;
    vs_status st = match_tensors(f->hdr, l, data_len, f->map_len, data_start, dtype_hint, err);
    if (st != VS_OK)
        return st;
    const cJSON *crc = cJSON_GetObjectItemCaseSensitive(md, "data_crc32");
    if (crc) {
        char *end = NULL;
        unsigned long want = cJSON_IsString(crc) ? strtoul(crc->valuestring, &end, 16) : 0;
        if (!cJSON_IsString(crc) || !end || *end || end == crc->valuestring || want > 0xffffffffUL) {
            st = vs_err_set(err, VS_ERR_INVALID, "metadata 'data_crc32' must be 8 hex digits");
            goto fail;
        }
        unsigned long got = crc32(0L, Z_NULL, 0);
        for (uint64_t at = 0; at < data_len;) { /* zlib takes 32-bit lengths */
            uInt n = data_len - at > (1u << 30) ? (1u << 30) : (uInt)(data_len - at);
            got = crc32(got, map + data_start + at, n);
            at += n;
        }
        if (got != want) {
            st = vs_err_set(err, VS_ERR_INVALID,
                            "the tensor data's CRC-32 is %08lx but the metadata says %08lx: the file is "
                            "corrupt (copy or convert it again)",
                            got, want);
            goto fail;
        }
        out->has_checksum = 1;
    }

    /* one allocation: every tensor as F32, then the derived tensors */
    size_t total = 0, nparams = 0;
    int n_f32 = 0, n_bf16 = 0, n_f16 = 0;
    for (int i = 0; i < l->n; i++) {
        size_t numel = 1;
        for (int k = 0; k < l->v[i].ndim; k++)
            numel *= (size_t)l->v[i].shape[k];
        nparams += numel;
        total += (numel + 15) & ~(size_t)15; /* 64-byte aligned tensors */
        n_f32 += l->v[i].dt == VS_ST_F32;
        n_bf16 += l->v[i].dt == VS_ST_BF16;
        n_f16 += l->v[i].dt == VS_ST_F16;
    }
    total += (extra + 15) & ~(size_t)15;
    out->bytes = total * 4;
    out->data = aligned_alloc(64, out->bytes);
    if (!out->data) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory: the model needs %.1f MB as F32",
                        (double)out->bytes / 1e6);
        goto fail;
    }
    size_t off = 0;
    for (int i = 0; i < l->n; i++) {
        size_t numel = 1;
        for (int k = 0; k < l->v[i].ndim; k++)
            numel *= (size_t)l->v[i].shape[k];
        *l->v[i].dst = out->data + off;
        size_t bad = convert(out->data + off, map + data_start + l->v[i].begin, numel, l->v[i].dt);
        if (bad < numel) {
            float v = out->data[off + bad];
            st = vs_err_set(err, VS_ERR_INVALID,
                            "tensor '%s' has a non-finite weight (%s) at element %zu: the file is corrupt, "
                            "or the model diverged in training",
                            l->v[i].name, isnan(v) ? "NaN" : v > 0 ? "+inf" : "-inf", bad);
            goto fail;
        }
        off += (numel + 15) & ~(size_t)15;
    }
    out->extra = out->data + off;
    out->n_params = nparams;
    snprintf(out->dtype, sizeof out->dtype, "%s",
             n_bf16 >= n_f32 && n_bf16 >= n_f16 ? "BF16" : n_f16 > n_f32 ? "F16" : "F32");
    return VS_OK;
fail:
    free(out->data);
    out->data = NULL;
    return st;
}
