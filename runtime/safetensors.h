/* runtime/safetensors.h — reading a safetensors file the way every model family's loader needs:
 * checked once, its tensors converted into one F32 allocation.
 *
 * Design: a loader opens the file (vs_st_open: mmap, the 8-byte header length, the JSON header
 * followed by nothing but space padding), reads its own metadata and config from f->meta, lists
 * every tensor it expects with the shape its config implies and where the pointer goes
 * (vs_st_expect_add), then vs_st_load matches the header against that list (unknown, duplicate,
 * missing, wrong dtype, shape or byte size: each named), checks that the tensors cover the data
 * section exactly (no hole, no overlap, nothing left over: safetensors' own rule), checks the
 * metadata's data_crc32 when there is one, and converts every tensor (F32, F16 or BF16) to F32 in
 * one 64-byte-aligned allocation, rejecting a non-finite weight by name. The order of the checks
 * and their messages are the model format's (docs/MODEL_FORMAT.md). Loading thread only. */
#ifndef VS_RT_SAFETENSORS_H
#define VS_RT_SAFETENSORS_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef enum { VS_ST_F32, VS_ST_F16, VS_ST_BF16 } vs_st_dtype;

typedef struct {
    char name[128];
    int ndim;
    long shape[4];
    float **dst; /* where the converted pointer goes */
    /* filled while matching the file */
    int found;
    vs_st_dtype dt;
    uint64_t begin, end; /* byte offsets in the data section */
} vs_st_expect;

typedef struct {
    vs_st_expect *v;
    int n, cap;
} vs_st_expects;

/* Appends one expected tensor named by the format; 0, or -1 out of memory. */
int vs_st_expect_add(vs_st_expects *l, float **dst, int ndim, const long *shape, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* In a function returning int (0, or −1 out of memory) with `vs_st_expects *l` in scope: expect
 * the tensor of shape VS_ST_SHAPE(d0, d1, ...) named by the printf format that follows. */
#define VS_ST_WANT(dst, shape, ...)                                                                \
    do {                                                                                           \
        long shp_[] = shape;                                                                       \
        if (vs_st_expect_add(l, (dst), (int)(sizeof shp_ / sizeof shp_[0]), shp_, __VA_ARGS__) != 0) \
            return -1;                                                                             \
    } while (0)
#define VS_ST_SHAPE(...) {__VA_ARGS__}

typedef struct {
    int fd;
    unsigned char *map;
    size_t map_len;
    char *hjson;
    cJSON *hdr;
    const cJSON *meta;              /* the header's __metadata__ object, or NULL */
    uint64_t data_start, data_len;  /* the data section, after the header */
} vs_st_file;

/* Which family a non-VAR file's metadata config names: "an Infinity" (arch "infinity"), "a T5
 * text encoder" (model_type "t5"), or NULL. For messages and `inspect`. */
const char *vs_st_family(const vs_st_file *f);

/* Opens and maps `path` and parses its header. On failure *f is closed. VS_ERR_IO, VS_ERR_INVALID,
 * VS_ERR_NOMEM. */
vs_status vs_st_open(vs_st_file *f, const char *path, vs_err *err);
void vs_st_close(vs_st_file *f);

typedef struct {
    float *data;      /* every expected tensor as F32, 64-byte aligned each, then `extra` floats */
    float *extra;     /* the caller's derived tensors, inside data */
    size_t bytes;     /* of data */
    size_t n_params;  /* stored parameters */
    int has_checksum; /* the metadata's data_crc32 was there (and matched) */
    char dtype[8];    /* dtype of most stored tensors: "F32", "BF16" or "F16" */
} vs_st_loaded;

/* Matches, checks and converts (the file-top comment); sets every expectation's *dst. `dtype_hint`
 * ends the message for an unsupported dtype (how to convert the file). out->data is the caller's
 * (free()). */
vs_status vs_st_load(const vs_st_file *f, vs_st_expects *l, size_t extra, const char *dtype_hint,
                     vs_st_loaded *out, vs_err *err);

/* Config fields (a JSON object): present, of the type, within [lo, hi]; messages name the key. */
vs_status vs_st_cfg_int(const cJSON *o, const char *key, int lo, int hi, int *out, vs_err *err);
vs_status vs_st_cfg_num(const cJSON *o, const char *key, double lo, double hi, double *out, vs_err *err);
vs_status vs_st_cfg_bool(const cJSON *o, const char *key, int *out, vs_err *err);
vs_status vs_st_cfg_int_list(const cJSON *o, const char *key, int maxn, int lo, int hi, int *out, int *n,
                             vs_err *err);

#endif
