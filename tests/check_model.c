/* tests/check_model.c — libcheck suite for runtime/model: the loader accepts the tiny fixture
 * (and its BF16/F16 re-encodings) with the right config and weights, and refuses every file
 * docs/MODEL_FORMAT.md says it must refuse, naming the offending field or tensor.
 *
 * Design: nothing bad is checked in. Each test crafts its file at run time from
 * tests/fixtures/tiny/model.safetensors (paths are relative to the repo root, where tests run):
 * the fixture's header is parsed with cJSON, changed, and written back with a correct length
 * prefix into a per-test mkdtemp directory under /tmp that the teardown removes. Accepted files
 * are checked value by value against the fixture's bytes, so a weight pointer bound to the wrong
 * tensor, a wrong conversion or a wrong derived tensor fails here. */
#include <check.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/blas.h"
#include "runtime/model.h"

#define FIXTURE "tests/fixtures/tiny/model.safetensors"
#define MIB ((uint64_t)1024 * 1024)

/* The fixture, read once per test case by fixture_open (an unchecked fixture: forked tests
 * share its pages instead of each reading 16 MB); tests treat it as read-only. */
static unsigned char *g_file;      /* the whole fixture file */
static size_t g_file_len;
static cJSON *g_hdr;               /* its parsed JSON header */
static const unsigned char *g_data; /* its data region (inside g_file) */
static size_t g_data_len;
/* Per-test state, made by setup and removed by teardown. */
static char g_dir[64];             /* mkdtemp directory for crafted files */
static char g_path[256];           /* path returned by path_in */

/* ---- fixtures -------------------------------------------------------------------------------- */

static void fixture_open(void)
{
    FILE *fp = fopen(FIXTURE, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s (run from the repo root)", FIXTURE);
    ck_assert_int_eq(fseek(fp, 0, SEEK_END), 0);
    long len = ftell(fp);
    ck_assert_int_gt(len, 8);
    ck_assert_int_eq(fseek(fp, 0, SEEK_SET), 0);
    g_file_len = (size_t)len;
    g_file = malloc(g_file_len);
    ck_assert_ptr_nonnull(g_file);
    ck_assert_uint_eq(fread(g_file, 1, g_file_len, fp), g_file_len);
    fclose(fp);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | g_file[i];
    ck_assert_uint_le(hlen, g_file_len - 8);
    g_hdr = cJSON_ParseWithLengthOpts((const char *)g_file + 8, (size_t)hlen, NULL, 0);
    ck_assert_ptr_nonnull(g_hdr);
    g_data = g_file + 8 + hlen;
    g_data_len = g_file_len - 8 - (size_t)hlen;
}

static void fixture_close(void)
{
    cJSON_Delete(g_hdr);
    g_hdr = NULL;
    free(g_file);
    g_file = NULL;
}

static void setup(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/check_model.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
}

static void teardown(void)
{
    DIR *d = opendir(g_dir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
            if (unlink(p) != 0)
                rmdir(p); /* the directory made by the directory-path test */
        }
        closedir(d);
        rmdir(g_dir);
    }
}

/* ---- helpers: building files ----------------------------------------------------------------- */

static const char *path_in(const char *name)
{
    snprintf(g_path, sizeof g_path, "%s/%s", g_dir, name);
    return g_path;
}

static void write_bytes(const char *path, const void *a, size_t alen, const void *b, size_t blen)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(a, 1, alen, fp), alen);
    if (blen)
        ck_assert_uint_eq(fwrite(b, 1, blen, fp), blen);
    ck_assert_int_eq(fclose(fp), 0);
}

/* Writes an 8-byte little-endian `hlen`, then `body`. */
static void write_prefixed(const char *path, uint64_t hlen, const void *body, size_t body_len)
{
    unsigned char pre[8];
    for (int i = 0; i < 8; i++)
        pre[i] = (unsigned char)(hlen >> (8 * i));
    write_bytes(path, pre, 8, body, body_len);
}

/* Writes a safetensors file: the correct length prefix, `hdr` as JSON, then `data`. Takes hdr. */
static const char *write_model(const char *name, cJSON *hdr, const void *data, size_t data_len)
{
    char *json = cJSON_PrintUnformatted(hdr);
    ck_assert_ptr_nonnull(json);
    size_t jlen = strlen(json);
    unsigned char pre[8];
    for (int i = 0; i < 8; i++)
        pre[i] = (unsigned char)((uint64_t)jlen >> (8 * i));
    const char *path = path_in(name);
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(pre, 1, 8, fp), 8);
    ck_assert_uint_eq(fwrite(json, 1, jlen, fp), jlen);
    if (data_len)
        ck_assert_uint_eq(fwrite(data, 1, data_len, fp), data_len);
    ck_assert_int_eq(fclose(fp), 0);
    cJSON_free(json);
    cJSON_Delete(hdr);
    return path;
}

/* The fixture's data under a changed header. */
static const char *write_hdr(cJSON *hdr)
{
    return write_model("model.safetensors", hdr, g_data, g_data_len);
}

static cJSON *hdr_copy(void)
{
    cJSON *h = cJSON_Duplicate(g_hdr, 1);
    ck_assert_ptr_nonnull(h);
    return h;
}

static cJSON *meta_of(cJSON *hdr)
{
    cJSON *md = cJSON_GetObjectItemCaseSensitive(hdr, "__metadata__");
    ck_assert_ptr_nonnull(md);
    return md;
}

static void meta_set(cJSON *hdr, const char *key, const char *value)
{
    cJSON *md = meta_of(hdr);
    if (cJSON_GetObjectItemCaseSensitive(md, key))
        ck_assert(cJSON_ReplaceItemInObjectCaseSensitive(md, key, cJSON_CreateString(value)));
    else
        ck_assert_ptr_nonnull(cJSON_AddStringToObject(md, key, value));
}

/* The header's config, parsed; the caller gives it back with config_put. */
static cJSON *config_of(cJSON *hdr)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(meta_of(hdr), "config");
    ck_assert(cJSON_IsString(s));
    cJSON *c = cJSON_Parse(s->valuestring);
    ck_assert_ptr_nonnull(c);
    return c;
}

/* Stores `cfg` (taken) as the header's config string. */
static void config_put(cJSON *hdr, cJSON *cfg)
{
    char *s = cJSON_PrintUnformatted(cfg);
    ck_assert_ptr_nonnull(s);
    meta_set(hdr, "config", s);
    cJSON_free(s);
    cJSON_Delete(cfg);
}

/* Replaces config field `key` with `json` (parsed), or removes it when json is NULL. */
static void config_edit(cJSON *hdr, const char *key, const char *json)
{
    cJSON *cfg = config_of(hdr);
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, key);
    if (json) {
        cJSON *v = cJSON_Parse(json);
        ck_assert_msg(v != NULL, "bad test JSON %s", json);
        cJSON_AddItemToObject(cfg, key, v);
    }
    config_put(hdr, cfg);
}

static cJSON *tensor_of(cJSON *hdr, const char *name)
{
    cJSON *t = cJSON_GetObjectItemCaseSensitive(hdr, name);
    ck_assert_msg(t != NULL, "fixture has no tensor %s", name);
    return t;
}

static uint64_t off_at(const cJSON *t, int i)
{
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
    return (uint64_t)cJSON_GetArrayItem(o, i)->valuedouble;
}

static void set_offsets(cJSON *t, uint64_t begin, uint64_t end)
{
    cJSON *o = cJSON_CreateArray();
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)begin));
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)end));
    ck_assert(cJSON_ReplaceItemInObjectCaseSensitive(t, "data_offsets", o));
}

static void set_dim(cJSON *t, int i, double v)
{
    cJSON *s = cJSON_GetObjectItemCaseSensitive(t, "shape");
    ck_assert(cJSON_ReplaceItemInArray(s, i, cJSON_CreateNumber(v)));
}

static void set_dtype(cJSON *t, const char *dt)
{
    ck_assert(cJSON_ReplaceItemInObjectCaseSensitive(t, "dtype", cJSON_CreateString(dt)));
}

static size_t numel_of(const cJSON *t)
{
    size_t n = 1;
    const cJSON *d;
    cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(t, "shape"))
        n *= (size_t)d->valuedouble;
    return n;
}

static int is_tensor(const cJSON *t)
{
    return strcmp(t->string, "__metadata__") != 0;
}

/* The fixture's F32 data of tensor `name`. */
static const float *fixture_f32(const char *name, size_t *numel)
{
    const cJSON *t = tensor_of(g_hdr, name);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(t, "dtype")->valuestring, "F32");
    *numel = numel_of(t);
    ck_assert_uint_eq(off_at(t, 1) - off_at(t, 0), *numel * 4);
    return (const float *)(const void *)(g_data + off_at(t, 0));
}

/* ---- helpers: loading ------------------------------------------------------------------------ */

static vs_rt_model *load_ok(const char *path)
{
    vs_rt_model *m = NULL;
    vs_err err = {0};
    vs_status st = vs_rt_model_load(path, &m, &err);
    ck_assert_msg(st == VS_OK, "load %s: %s (%s)", path, vs_status_name(st), err.msg);
    ck_assert_ptr_nonnull(m);
    return m;
}

/* Loading `path` fails with `want` and a message containing n1 and (when given) n2. */
static void expect_reject(const char *path, vs_status want, const char *n1, const char *n2)
{
    vs_rt_model *m = NULL;
    vs_err err = {0};
    vs_status st = vs_rt_model_load(path, &m, &err);
    if (st == VS_OK)
        vs_rt_model_free(m);
    ck_assert_msg(st == want, "load returned %s (\"%s\"), want %s", vs_status_name(st), err.msg,
                  vs_status_name(want));
    ck_assert_ptr_null(m);
    ck_assert_int_eq(err.code, want);
    ck_assert_msg(strstr(err.msg, n1) != NULL, "message \"%s\" does not name \"%s\"", err.msg, n1);
    if (n2)
        ck_assert_msg(strstr(err.msg, n2) != NULL, "message \"%s\" does not name \"%s\"", err.msg,
                      n2);
}

/* ---- helpers: re-encoding -------------------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} bytes;

static void bytes_put(bytes *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 20;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        ck_assert_ptr_nonnull(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Round to nearest even; the fixture holds no NaN. */
static uint16_t f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Round to nearest even, subnormals included, overflow to infinity. */
static uint16_t f32_to_f16(float f)
{
    uint32_t u = f32_bits(f), sign = (u >> 16) & 0x8000u, ax = u & 0x7fffffffu;
    if (ax >= 0x47800000u) /* >= 65536: inf (no NaN in the fixture) */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below 2^-14: a multiple of 2^-24, exact scaling, lrint rounds even */
        float a;
        memcpy(&a, &ax, 4);
        return (uint16_t)(sign | (uint32_t)lrintf(a * 16777216.0f));
    }
    uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13));
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++; /* a carry into the exponent is the right answer */
    return (uint16_t)(sign | h);
}

static float bf16_value(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Decoded arithmetically, independently of the loader's bit manipulation. */
static float f16_value(uint16_t h)
{
    int e = (h >> 10) & 0x1f, man = h & 0x3ff;
    double v = e == 0 ? ldexp(man, -24) : ldexp(1024 + man, e - 25);
    return (float)((h & 0x8000) ? -v : v);
}

#define KEPT_F32 "var.head.bias" /* left F32 in re-encodings: a mixed-dtype file */

/* Writes the fixture with every tensor but KEPT_F32 stored as `dt` ("BF16"/"F16"), data packed
 * in header order. */
static const char *write_reencoded(const char *dt)
{
    int bf = strcmp(dt, "BF16") == 0;
    cJSON *h = hdr_copy();
    bytes out = {0};
    cJSON *t;
    cJSON_ArrayForEach(t, h)
    {
        if (!is_tensor(t))
            continue;
        size_t n = numel_of(t);
        const float *src = (const float *)(const void *)(g_data + off_at(t, 0));
        uint64_t begin = out.n;
        if (strcmp(t->string, KEPT_F32) == 0) {
            bytes_put(&out, src, n * 4);
        } else {
            for (size_t i = 0; i < n; i++) {
                uint16_t v = bf ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
                unsigned char le[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
                bytes_put(&out, le, 2);
            }
            set_dtype(t, dt);
        }
        set_offsets(t, begin, out.n);
    }
    const char *path = write_model(bf ? "bf16.safetensors" : "f16.safetensors", h, out.p, out.n);
    free(out.p);
    return path;
}

/* ---- tests: the valid fixture ---------------------------------------------------------------- */

START_TEST(valid_fixture_loads_with_its_config)
{
    vs_rt_model *m = load_ok(FIXTURE);
    const vs_rt_config *c = &m->cfg;
    static const int pn[10] = {1, 2, 3, 4, 5, 6, 8, 10, 13, 16};
    static const int mult[5] = {1, 1, 2, 2, 4};
    ck_assert_int_eq(c->depth, 2);
    ck_assert_int_eq(c->embed_dim, 128);
    ck_assert_int_eq(c->num_heads, 2);
    ck_assert_int_eq(c->head_dim, 64);
    ck_assert_int_eq(c->ffn_dim, 512);
    ck_assert_double_eq(c->mlp_ratio, 4.0);
    ck_assert_double_eq(c->norm_eps, 1e-6);
    ck_assert_int_eq(c->shared_aln, 0);
    ck_assert_int_eq(c->attn_l2_norm, 1);
    ck_assert_int_eq(c->num_classes, 10);
    ck_assert_int_eq(c->n_scales, 10);
    int off = 0;
    for (int s = 0; s < 10; s++) {
        ck_assert_int_eq(c->patch_nums[s], pn[s]);
        ck_assert_int_eq(c->scale_offset[s], off);
        off += pn[s] * pn[s];
    }
    ck_assert_int_eq(c->scale_offset[10], 680);
    ck_assert_int_eq(c->vocab_size, 4096);
    ck_assert_int_eq(c->z_channels, 32);
    ck_assert_int_eq(c->vae_ch, 32);
    ck_assert_int_eq(c->n_levels, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(c->vae_ch_mult[i], mult[i]);
    ck_assert_int_eq(c->vae_num_res_blocks, 2);
    ck_assert_double_eq(c->quant_resi, 0.5);
    ck_assert_int_eq(c->share_quant_resi, 4);
    ck_assert_int_eq(c->image_size, 256);
    ck_assert_int_eq(c->image_channels, 3);
    ck_assert_ptr_null(c->class_names);
    ck_assert_double_lt(c->default_cfg, 0);
    ck_assert_int_lt(c->default_top_k, 0);
    ck_assert_str_eq(m->dtype, "F32");
    ck_assert_uint_eq(m->file_bytes, g_file_len);
    ck_assert_str_eq(m->path, FIXTURE);
    vs_rt_model_free(m);
}
END_TEST

START_TEST(valid_fixture_counts_every_stored_parameter)
{
    size_t sum = 0;
    int n = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, g_hdr)
    {
        if (!is_tensor(t))
            continue;
        sum += numel_of(t);
        n++;
    }
    ck_assert_int_eq(n, 223);
    vs_rt_model *m = load_ok(FIXTURE);
    ck_assert_uint_eq(m->n_params, sum);
    ck_assert_uint_eq(m->n_params * 4, g_data_len); /* the fixture is all F32, densely packed */
    ck_assert_uint_ge(m->data_bytes, sum * 4);
    vs_rt_model_free(m);
}
END_TEST

typedef struct {
    const char *name;
    const float *p;
} bound;

/* Every stored tensor the weight struct exposes, by name; nulls are counted separately. */
static int bindings(const vs_rt_model *m, bound *b, int cap)
{
    const vs_rt_weights *w = &m->w;
    int n = 0;
    static char names[256][96];
#define BIND(ptr, ...)                                                                             \
    do {                                                                                           \
        ck_assert_int_lt(n, cap);                                                                  \
        snprintf(names[n], sizeof names[n], __VA_ARGS__);                                          \
        b[n].name = names[n];                                                                      \
        b[n].p = (ptr);                                                                            \
        n++;                                                                                       \
    } while (0)
#define BIND_CONV(cv, ...)                                                                         \
    do {                                                                                           \
        char p_[80];                                                                               \
        snprintf(p_, sizeof p_, __VA_ARGS__);                                                      \
        BIND((cv).w, "%s.weight", p_);                                                             \
        BIND((cv).b, "%s.bias", p_);                                                               \
    } while (0)
#define BIND_RES(r, pre)                                                                           \
    do {                                                                                           \
        BIND_CONV((r).norm1, "%s.norm1", pre);                                                     \
        BIND_CONV((r).conv1, "%s.conv1", pre);                                                     \
        BIND_CONV((r).norm2, "%s.norm2", pre);                                                     \
        BIND_CONV((r).conv2, "%s.conv2", pre);                                                     \
        if ((r).nin.w)                                                                             \
            BIND_CONV((r).nin, "%s.nin_shortcut", pre);                                            \
    } while (0)
#define BIND_ATTN(a, pre)                                                                          \
    do {                                                                                           \
        BIND_CONV((a).norm, "%s.norm", pre);                                                       \
        BIND_CONV((a).qkv, "%s.qkv", pre);                                                         \
        BIND_CONV((a).proj, "%s.proj_out", pre);                                                   \
    } while (0)
    BIND(w->class_emb, "var.class_emb.weight");
    BIND(w->pos_start, "var.pos_start");
    BIND(w->pos_1LC, "var.pos_1LC");
    BIND(w->lvl_embed, "var.lvl_embed.weight");
    BIND(w->word_w, "var.word_embed.weight");
    BIND(w->word_b, "var.word_embed.bias");
    for (int i = 0; i < m->cfg.depth; i++) {
        const vs_rt_block_w *k = &w->blocks[i];
        BIND(k->ada_w, "var.blocks.%d.ada_lin.1.weight", i);
        BIND(k->ada_b, "var.blocks.%d.ada_lin.1.bias", i);
        BIND(k->qkv_w, "var.blocks.%d.attn.mat_qkv.weight", i);
        BIND(k->q_bias, "var.blocks.%d.attn.q_bias", i);
        BIND(k->v_bias, "var.blocks.%d.attn.v_bias", i);
        BIND(k->scale_mul, "var.blocks.%d.attn.scale_mul_1H11", i);
        BIND(k->proj_w, "var.blocks.%d.attn.proj.weight", i);
        BIND(k->proj_b, "var.blocks.%d.attn.proj.bias", i);
        BIND(k->fc1_w, "var.blocks.%d.ffn.fc1.weight", i);
        BIND(k->fc1_b, "var.blocks.%d.ffn.fc1.bias", i);
        BIND(k->fc2_w, "var.blocks.%d.ffn.fc2.weight", i);
        BIND(k->fc2_b, "var.blocks.%d.ffn.fc2.bias", i);
    }
    BIND(w->head_nm_w, "var.head_nm.ada_lin.1.weight");
    BIND(w->head_nm_b, "var.head_nm.ada_lin.1.bias");
    BIND(w->head_w, "var.head.weight");
    BIND(w->head_b, "var.head.bias");
    BIND(w->embedding, "vae.quantize.embedding.weight");
    for (int k = 0; k < m->cfg.share_quant_resi; k++)
        BIND_CONV(w->phi[k], "vae.quantize.quant_resi.qresi_ls.%d", k);
    BIND_CONV(w->post_quant_conv, "vae.post_quant_conv");
    BIND_CONV(w->conv_in, "vae.decoder.conv_in");
    BIND_RES(w->mid_block1, "vae.decoder.mid.block_1");
    BIND_ATTN(w->mid_attn, "vae.decoder.mid.attn_1");
    BIND_RES(w->mid_block2, "vae.decoder.mid.block_2");
    for (int lv = 0; lv < m->cfg.n_levels; lv++) {
        char pre[64];
        for (int j = 0; j < w->up[lv].n_blocks; j++) {
            snprintf(pre, sizeof pre, "vae.decoder.up.%d.block.%d", lv, j);
            BIND_RES(w->up[lv].block[j], pre);
        }
        for (int j = 0; j < w->up[lv].n_attn; j++) {
            snprintf(pre, sizeof pre, "vae.decoder.up.%d.attn.%d", lv, j);
            BIND_ATTN(w->up[lv].attn[j], pre);
        }
        if (w->up[lv].upsample.w)
            BIND_CONV(w->up[lv].upsample, "vae.decoder.up.%d.upsample.conv", lv);
    }
    BIND_CONV(w->norm_out, "vae.decoder.norm_out");
    BIND_CONV(w->conv_out, "vae.decoder.conv_out");
#undef BIND_ATTN
#undef BIND_RES
#undef BIND_CONV
#undef BIND
    return n;
}

START_TEST(every_weight_pointer_holds_its_own_tensor)
{
    vs_rt_model *m = load_ok(FIXTURE);
    const vs_rt_weights *w = &m->w;
    /* decoder structure of ch_mult 1,1,2,2,4 with 2+1 blocks per level */
    for (int lv = 0; lv < 5; lv++) {
        ck_assert_int_eq(w->up[lv].n_blocks, 3);
        ck_assert_int_eq(w->up[lv].n_attn, lv == 4 ? 3 : 0);
    }
    ck_assert_ptr_null(w->up[0].upsample.w);
    ck_assert_ptr_nonnull(w->up[1].upsample.w);
    ck_assert_ptr_nonnull(w->up[3].block[0].nin.w); /* 128 -> 64 channels */
    ck_assert_ptr_nonnull(w->up[1].block[0].nin.w); /* 64 -> 32 */
    ck_assert_ptr_null(w->up[2].block[0].nin.w);
    ck_assert_ptr_null(w->up[4].block[0].nin.w);
    ck_assert_int_eq(w->conv_in.cout, 128);
    ck_assert_int_eq(w->conv_in.cin, 32);
    ck_assert_int_eq(w->conv_in.k, 3);
    ck_assert_int_eq(w->up[3].block[0].nin.k, 1);
    ck_assert_int_eq(w->conv_out.cout, 3);
    ck_assert_int_eq(w->norm_out.c, 32);
    ck_assert_ptr_null(w->phi[4].w);
    ck_assert_ptr_null(w->shared_ada_w);
    ck_assert_ptr_null(w->blocks[0].ada_gss);

    bound b[256];
    int n = bindings(m, b, 256);
    ck_assert_int_eq(n, 223); /* every stored tensor, each once */
    for (int i = 0; i < n; i++) {
        size_t numel;
        const float *want = fixture_f32(b[i].name, &numel);
        ck_assert_msg(b[i].p != NULL, "%s has no pointer", b[i].name);
        ck_assert_msg(b[i].p >= m->data && b[i].p + numel <= m->data + m->data_bytes / 4,
                      "%s points outside the weight allocation", b[i].name);
        ck_assert_msg(memcmp(b[i].p, want, numel * 4) == 0, "%s does not hold its data",
                      b[i].name);
        for (int j = 0; j < i; j++)
            if (b[i].p == b[j].p)
                ck_abort_msg("%s and %s share a pointer", b[i].name, b[j].name);
    }
    vs_rt_model_free(m);
}
END_TEST

/* lvl_pos = lvl_embed[scale of token] + pos_1LC; qkv_bias = q_bias, 0, v_bias. Plain ifs in the
 * loops: a ck_assert per element would cost a pipe write each in fork mode. */
static void check_derived(const vs_rt_model *m)
{
    const vs_rt_config *c = &m->cfg;
    const vs_rt_weights *w = &m->w;
    int C = c->embed_dim;
    for (int s = 0; s < c->n_scales; s++)
        for (int t = c->scale_offset[s]; t < c->scale_offset[s + 1]; t++)
            for (int i = 0; i < C; i++)
                if (w->lvl_pos[t * C + i] != w->lvl_embed[s * C + i] + w->pos_1LC[t * C + i])
                    ck_abort_msg("lvl_pos[%d][%d] is not lvl_embed[%d] + pos_1LC", t, i, s);
    for (int d = 0; d < c->depth; d++)
        for (int i = 0; i < C; i++)
            if (w->blocks[d].qkv_bias[i] != w->blocks[d].q_bias[i] ||
                w->blocks[d].qkv_bias[C + i] != 0.0f ||
                w->blocks[d].qkv_bias[2 * C + i] != w->blocks[d].v_bias[i])
                ck_abort_msg("block %d qkv_bias[.., %d] is not (q_bias, 0, v_bias)", d, i);
}

START_TEST(derived_tensors_combine_the_stored_ones)
{
    vs_rt_model *m = load_ok(FIXTURE);
    check_derived(m);
    vs_rt_model_free(m);
}
END_TEST

/* Checks a few tensors of a re-encoded load: exactly the decoded stored value, and within
 * rel·|x| + abs of the original F32. */
static void check_reencoded(const char *dt, double rel, double abs_tol)
{
    int bf = strcmp(dt, "BF16") == 0;
    vs_rt_model *m = load_ok(write_reencoded(dt));
    ck_assert_str_eq(m->dtype, dt);
    const vs_rt_weights *w = &m->w;
    const bound b[] = {
        {"var.head.weight", w->head_w},
        {"var.blocks.0.attn.mat_qkv.weight", w->blocks[0].qkv_w},
        {"var.blocks.1.ffn.fc2.weight", w->blocks[1].fc2_w},
        {"var.pos_1LC", w->pos_1LC},
        {"vae.quantize.embedding.weight", w->embedding},
        {"vae.decoder.up.4.attn.0.qkv.weight", w->up[4].attn[0].qkv.w},
        {"vae.decoder.conv_out.weight", w->conv_out.w},
    };
    size_t tiny = 0, changed = 0;
    for (size_t k = 0; k < sizeof b / sizeof b[0]; k++) {
        size_t numel;
        const float *orig = fixture_f32(b[k].name, &numel);
        for (size_t i = 0; i < numel; i++) {
            uint16_t h = bf ? f32_to_bf16(orig[i]) : f32_to_f16(orig[i]);
            float dec = bf ? bf16_value(h) : f16_value(h);
            float got = b[k].p[i];
            if (got != dec)
                ck_abort_msg("%s[%zu]: loaded %.9g, stored %s 0x%04x is %.9g", b[k].name, i,
                             (double)got, dt, h, (double)dec);
            if (!(fabs((double)got - orig[i]) <= rel * fabs(orig[i]) + abs_tol))
                ck_abort_msg("%s[%zu]: %.9g vs original %.9g", b[k].name, i, (double)got,
                             (double)orig[i]);
            tiny += !bf && (h & 0x7c00) == 0 && (h & 0x3ff) != 0;
            changed += got != orig[i];
        }
    }
    ck_assert_uint_gt(changed, 0); /* the re-encoding really lost precision */
    if (!bf)
        ck_assert_uint_gt(tiny, 0); /* F16 subnormals were decoded */
    size_t numel;
    const float *hb = fixture_f32(KEPT_F32, &numel);
    ck_assert_int_eq(memcmp(w->head_b, hb, numel * 4), 0);
    vs_rt_model *ref = load_ok(FIXTURE);
    ck_assert_uint_eq(m->n_params, ref->n_params);
    vs_rt_model_free(ref);
    vs_rt_model_free(m);
}

START_TEST(bf16_reencoding_loads_within_bf16_precision)
{
    check_reencoded("BF16", 1e-2, 1e-30);
}
END_TEST

START_TEST(f16_reencoding_loads_within_f16_precision)
{
    check_reencoded("F16", 1e-3, 1e-7);
}
END_TEST

/* A stand-in value for element i of a rewritten tensor. */
static float pattern(const char *name, size_t i)
{
    uint32_t h = 2166136261u;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return (float)((h + (uint32_t)i * 2654435761u) % 2001u) / 1000.0f - 1.0f;
}

START_TEST(model_whose_embed_dim_is_not_a_multiple_of_16_loads)
{
    /* C = 4: every var.* dimension that is a multiple of 128 in the fixture (C, 2C, 3C, 4C = F,
     * 6C) scales with C; no other var.* dimension (1, 2, 10, 11, 32, 680, 4096) is one. The
     * weight allocation is then not a multiple of 64 bytes before rounding. */
    const int C = 4;
    cJSON *h = hdr_copy();
    config_edit(h, "embed_dim", "4");
    bytes out = {0};
    cJSON *t;
    cJSON_ArrayForEach(t, h)
    {
        if (!is_tensor(t))
            continue;
        const float *src = (const float *)(const void *)(g_data + off_at(t, 0));
        uint64_t begin = out.n;
        if (strncmp(t->string, "var.", 4) == 0) {
            cJSON *d;
            cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(t, "shape"))
            {
                long v = (long)d->valuedouble;
                if (v % 128 == 0 && v <= 768)
                    cJSON_SetNumberValue(d, (double)(v / 128 * C));
            }
            size_t n = numel_of(t);
            for (size_t k = 0; k < n; k++) {
                float f = pattern(t->string, k);
                bytes_put(&out, &f, 4);
            }
        } else {
            bytes_put(&out, src, numel_of(t) * 4);
        }
        set_offsets(t, begin, out.n);
    }
    vs_rt_model *m = load_ok(write_model("narrow.safetensors", h, out.p, out.n));
    free(out.p);
    ck_assert_int_eq(m->cfg.embed_dim, C);
    ck_assert_int_eq(m->cfg.head_dim, 2);
    ck_assert_int_eq(m->cfg.ffn_dim, 16);
    ck_assert_uint_eq(m->data_bytes % 64, 0);
    for (size_t i = 0; i < (size_t)4096 * C; i++)
        if (m->w.head_w[i] != pattern("var.head.weight", i))
            ck_abort_msg("head_w[%zu] is %g", i, (double)m->w.head_w[i]);
    for (size_t i = 0; i < (size_t)C * 16; i++)
        if (m->w.blocks[1].fc2_w[i] != pattern("var.blocks.1.ffn.fc2.weight", i))
            ck_abort_msg("blocks[1].fc2_w[%zu] is %g", i, (double)m->w.blocks[1].fc2_w[i]);
    check_derived(m);
    size_t numel;
    const float *emb = fixture_f32("vae.quantize.embedding.weight", &numel);
    ck_assert_int_eq(memcmp(m->w.embedding, emb, numel * 4), 0);
    ck_assert_uint_eq(vs_rt_full_kv_bytes(&m->cfg), (size_t)2 * 2 * 2 * 680 * C * 4);
    vs_rt_model_free(m);
}
END_TEST

START_TEST(class_names_in_the_config_resolve_by_name_and_index)
{
    cJSON *h = hdr_copy();
    config_edit(h, "class_names",
                "[\"zero\",\"one\",\"two\",\"cat\",\"four\",\"five\",\"six\",\"7\",\"eight\","
                "\"nine\"]");
    vs_rt_model *m = load_ok(write_hdr(h));
    const vs_rt_config *c = &m->cfg;
    ck_assert_ptr_nonnull(c->class_names);
    ck_assert_str_eq(c->class_names[0], "zero");
    ck_assert_str_eq(c->class_names[9], "nine");
    ck_assert_int_eq(vs_rt_class_lookup(c, "cat"), 3);
    ck_assert_int_eq(vs_rt_class_lookup(c, "nine"), 9);
    ck_assert_int_eq(vs_rt_class_lookup(c, "7"), 7);
    ck_assert_int_eq(vs_rt_class_lookup(c, "2"), 2);
    ck_assert_int_eq(vs_rt_class_lookup(c, "dog"), -1);
    ck_assert_int_eq(vs_rt_class_lookup(c, "Cat"), -1);
    vs_rt_model_free(m);
}
END_TEST

START_TEST(rebase_moves_every_pointer_by_the_same_offset)
{
    vs_rt_model *m = load_ok(FIXTURE);
    float *copy = malloc(m->data_bytes);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, m->data, m->data_bytes);
    vs_rt_weights o;
    vs_rt_block_w blocks[2];
    vs_rt_model_rebase(m, copy, &o, blocks);
    ck_assert_ptr_eq(o.blocks, blocks);
    /* binding the rebased struct: swap it into a model copy */
    vs_rt_model moved = *m;
    moved.w = o;
    moved.data = copy;
    bound a[256], b[256];
    int na = bindings(m, a, 256), nb = bindings(&moved, b, 256);
    ck_assert_int_eq(na, nb);
    for (int i = 0; i < na; i++) {
        ck_assert_str_eq(a[i].name, b[i].name);
        ck_assert_msg(b[i].p - copy == a[i].p - m->data, "%s moved by a different offset",
                      a[i].name);
    }
    ck_assert_ptr_eq(o.lvl_pos, copy + (m->w.lvl_pos - m->data));
    ck_assert_ptr_eq(blocks[1].qkv_bias, copy + (m->w.blocks[1].qkv_bias - m->data));
    ck_assert_ptr_null(o.up[0].upsample.w);
    ck_assert_ptr_null(o.shared_ada_w);
    ck_assert_ptr_null(blocks[0].ada_gss);
    ck_assert_ptr_null(o.phi[4].w);
    free(copy);
    vs_rt_model_free(m);
}
END_TEST

/* ---- tests: config helpers ------------------------------------------------------------------- */

START_TEST(class_lookup_resolves_an_index_and_rejects_others)
{
    vs_rt_model *m = load_ok(FIXTURE);
    const vs_rt_config *c = &m->cfg;
    ck_assert_int_eq(vs_rt_class_lookup(c, "3"), 3);
    ck_assert_int_eq(vs_rt_class_lookup(c, "0"), 0);
    ck_assert_int_eq(vs_rt_class_lookup(c, "9"), 9);
    ck_assert_int_eq(vs_rt_class_lookup(c, "10"), -1); /* the unconditional token is not a class */
    ck_assert_int_eq(vs_rt_class_lookup(c, "-1"), -1);
    ck_assert_int_eq(vs_rt_class_lookup(c, "x"), -1);
    ck_assert_int_eq(vs_rt_class_lookup(c, ""), -1);
    ck_assert_int_eq(vs_rt_class_lookup(c, "3x"), -1);
    ck_assert_int_eq(vs_rt_class_lookup(c, "99999999999999999999"), -1);
    vs_rt_model_free(m);
}
END_TEST

START_TEST(phi_index_matches_numpy_argmin_over_the_reference_ticks)
{
    vs_rt_model *m = load_ok(FIXTURE);
    /* np.argmin(|linspace(1/12, 11/12, 4) - s/9|), ties (s = 2, 7 are near-ties) to the first */
    static const int want[10] = {0, 0, 1, 1, 1, 2, 2, 3, 3, 3};
    for (int s = 0; s < 10; s++)
        ck_assert_msg(vs_rt_phi_index(&m->cfg, s) == want[s], "scale %d: phi %d, want %d", s,
                      vs_rt_phi_index(&m->cfg, s), want[s]);
    vs_rt_config one = m->cfg;
    one.share_quant_resi = 1; /* one shared Phi */
    for (int s = 0; s < 10; s++)
        ck_assert_int_eq(vs_rt_phi_index(&one, s), 0);
    vs_rt_model_free(m);
}
END_TEST

START_TEST(full_kv_bytes_counts_k_and_v_of_two_rows_in_every_layer)
{
    vs_rt_model *m = load_ok(FIXTURE);
    ck_assert_uint_eq(vs_rt_full_kv_bytes(&m->cfg), (size_t)2 * 2 * 2 * 680 * 128 * 4);
    vs_rt_model_free(m);
}
END_TEST

/* ---- tests: rejected files and headers ------------------------------------------------------- */

START_TEST(load_of_a_nonexistent_path_fails_with_io_naming_the_path)
{
    const char *p = path_in("no-such-model.safetensors");
    expect_reject(p, VS_ERR_IO, "no-such-model.safetensors", NULL);
}
END_TEST

START_TEST(load_of_a_directory_fails_with_io)
{
    const char *p = path_in("a-directory");
    ck_assert_int_eq(mkdir(p, 0700), 0);
    expect_reject(p, VS_ERR_IO, "a-directory", "regular file");
}
END_TEST

START_TEST(load_of_an_empty_file_is_invalid)
{
    const char *p = path_in("empty.safetensors");
    write_bytes(p, "", 0, NULL, 0);
    expect_reject(p, VS_ERR_INVALID, "0 bytes", "too short");
}
END_TEST

START_TEST(load_of_a_file_shorter_than_the_length_prefix_is_invalid)
{
    const char *p = path_in("short.safetensors");
    write_bytes(p, g_file, 7, NULL, 0);
    expect_reject(p, VS_ERR_INVALID, "7 bytes", "too short");
}
END_TEST

START_TEST(load_rejects_a_header_length_over_100_mb)
{
    const char *p = path_in("huge-header.safetensors");
    write_prefixed(p, 100 * MIB + 1, g_file + 8, g_file_len - 8);
    expect_reject(p, VS_ERR_INVALID, "header", "100 MB");
}
END_TEST

START_TEST(load_rejects_a_header_length_of_all_ones_without_overflowing)
{
    const char *p = path_in("ones.safetensors");
    write_prefixed(p, UINT64_MAX, g_file + 8, g_file_len - 8);
    expect_reject(p, VS_ERR_INVALID, "header", "100 MB");
}
END_TEST

START_TEST(load_rejects_a_header_longer_than_the_file)
{
    const char *p = path_in("long-header.safetensors");
    write_prefixed(p, g_file_len - 8 + 1, g_file + 8, g_file_len - 8);
    expect_reject(p, VS_ERR_INVALID, "header", "truncated");
    /* a header under 100 MB but far past the end is refused the same way */
    write_prefixed(p, 50 * MIB, g_file + 8, g_file_len - 8);
    expect_reject(p, VS_ERR_INVALID, "header", "truncated");
}
END_TEST

START_TEST(load_rejects_a_header_that_is_not_json)
{
    const char *p = path_in("not-json.safetensors");
    static const char body[] = "{\"__metadata__\": {\"format\": ";
    write_prefixed(p, sizeof body - 1, body, sizeof body - 1);
    expect_reject(p, VS_ERR_INVALID, "header", "JSON");
    static const char arr[] = "[1, 2, 3]";
    write_prefixed(p, sizeof arr - 1, arr, sizeof arr - 1);
    expect_reject(p, VS_ERR_INVALID, "header", "JSON object");
}
END_TEST

START_TEST(load_rejects_a_header_without_metadata)
{
    cJSON *h = hdr_copy();
    cJSON_DeleteItemFromObjectCaseSensitive(h, "__metadata__");
    expect_reject(write_hdr(h), VS_ERR_INVALID, "__metadata__", NULL);
}
END_TEST

START_TEST(load_rejects_a_wrong_format)
{
    cJSON *h = hdr_copy();
    meta_set(h, "format", "pt");
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'format'", "pt");
}
END_TEST

START_TEST(load_rejects_a_missing_format)
{
    cJSON *h = hdr_copy();
    cJSON_DeleteItemFromObjectCaseSensitive(meta_of(h), "format");
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'format'", NULL);
}
END_TEST

START_TEST(load_rejects_a_wrong_version)
{
    cJSON *h = hdr_copy();
    meta_set(h, "version", "2");
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'version'", "got 2");
    h = hdr_copy();
    cJSON_DeleteItemFromObjectCaseSensitive(meta_of(h), "version");
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'version'", NULL);
}
END_TEST

START_TEST(load_rejects_a_config_that_is_not_json)
{
    cJSON *h = hdr_copy();
    meta_set(h, "config", "{\"arch\": \"var\", \"depth\": 2,");
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'config'", "JSON");
    h = hdr_copy();
    meta_set(h, "config", "[2, 128]");
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'config'", "JSON object");
}
END_TEST

START_TEST(load_rejects_a_missing_config)
{
    cJSON *h = hdr_copy();
    cJSON_DeleteItemFromObjectCaseSensitive(meta_of(h), "config");
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'config'", "missing");
}
END_TEST

/* Every field docs/MODEL_FORMAT.md marks required. */
static const char *const required_fields[] = {
    "arch",        "depth",      "embed_dim",   "num_heads",          "mlp_ratio",
    "norm_eps",    "shared_aln", "attn_l2_norm", "num_classes",       "patch_nums",
    "vocab_size",  "z_channels", "vae_ch",      "vae_ch_mult",        "vae_num_res_blocks",
    "quant_resi",  "share_quant_resi",
};
#define N_REQUIRED ((int)(sizeof required_fields / sizeof required_fields[0]))

START_TEST(load_rejects_each_missing_config_field_naming_it)
{
    const char *field = required_fields[_i];
    cJSON *h = hdr_copy();
    config_edit(h, field, NULL);
    char quoted[64];
    snprintf(quoted, sizeof quoted, "'%s'", field);
    expect_reject(write_hdr(h), VS_ERR_INVALID, quoted, "missing");
}
END_TEST

/* Config values the loader cannot serve: the field, the bad value, what the message names. */
static const struct {
    const char *field, *json, *names;
} bad_values[] = {
    {"arch", "\"gpt\"", "'arch'"},
    {"depth", "\"2\"", "'depth'"},
    {"depth", "2.5", "'depth'"},
    {"depth", "0", "'depth'"},
    {"embed_dim", "-128", "'embed_dim'"},
    {"num_heads", "3", "'num_heads'"}, /* does not divide 128 */
    {"mlp_ratio", "\"4\"", "'mlp_ratio'"},
    {"norm_eps", "-1", "'norm_eps'"},
    {"shared_aln", "0", "'shared_aln'"},
    {"attn_l2_norm", "\"true\"", "'attn_l2_norm'"},
    {"num_classes", "0", "'num_classes'"},
    {"patch_nums", "[]", "'patch_nums'"},
    {"patch_nums", "16", "'patch_nums'"},
    {"patch_nums", "[1, 2, 2, 4]", "'patch_nums'"},
    {"patch_nums", "[16]", "'patch_nums'"},
    {"patch_nums", "[1, \"2\"]", "'patch_nums'"},
    {"vocab_size", "1", "'vocab_size'"},
    {"z_channels", "0", "'z_channels'"},
    {"vae_ch", "33", "'vae_ch'"}, /* GroupNorm needs multiples of 32 */
    {"vae_ch_mult", "[1, 1, 2, 2, 4, 8, 8, 8, 8]", "'vae_ch_mult'"},
    {"vae_num_res_blocks", "-1", "'vae_num_res_blocks'"},
    {"quant_resi", "2", "'quant_resi'"},
    {"share_quant_resi", "-1", "'share_quant_resi'"},
    {"image_channels", "2", "'image_channels'"},
    {"class_names", "[\"a\", \"b\"]", "'class_names'"},
    {"class_names", "[0,1,2,3,4,5,6,7,8,9]", "'class_names'"},
};
#define N_BAD_VALUES ((int)(sizeof bad_values / sizeof bad_values[0]))

START_TEST(load_rejects_config_values_it_cannot_serve_naming_the_field)
{
    cJSON *h = hdr_copy();
    config_edit(h, bad_values[_i].field, bad_values[_i].json);
    expect_reject(write_hdr(h), VS_ERR_INVALID, bad_values[_i].names, NULL);
}
END_TEST

/* ---- tests: rejected tensors ----------------------------------------------------------------- */

START_TEST(load_rejects_a_tensor_shape_that_disagrees_with_the_config)
{
    cJSON *h = hdr_copy();
    set_dim(tensor_of(h, "var.head.weight"), 1, 127);
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'var.head.weight'", "(4096, 128)");
    h = hdr_copy();
    set_dim(tensor_of(h, "var.head.weight"), 0, 4095);
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'var.head.weight'", "(4095, 128)");
    h = hdr_copy(); /* one level deep in the decoder */
    set_dim(tensor_of(h, "vae.decoder.up.3.block.0.nin_shortcut.weight"), 2, 3);
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'vae.decoder.up.3.block.0.nin_shortcut.weight'",
                  "(64, 128, 1, 1)");
}
END_TEST

START_TEST(load_rejects_a_tensor_with_the_wrong_number_of_dims)
{
    cJSON *h = hdr_copy();
    cJSON *t = tensor_of(h, "var.head.bias");
    cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(t, "shape"), cJSON_CreateNumber(1));
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'var.head.bias'", "(4096, 1)");
    h = hdr_copy();
    t = tensor_of(h, "var.pos_1LC"); /* (1, 680, 128) stored as (680, 128) */
    cJSON_DeleteItemFromArray(cJSON_GetObjectItemCaseSensitive(t, "shape"), 0);
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'var.pos_1LC'", "(1, 680, 128)");
}
END_TEST

START_TEST(load_rejects_weights_that_disagree_with_a_changed_embed_dim)
{
    cJSON *h = hdr_copy();
    config_edit(h, "embed_dim", "256");
    vs_rt_model *m = NULL;
    vs_err err = {0};
    ck_assert_int_eq(vs_rt_model_load(write_hdr(h), &m, &err), VS_ERR_INVALID);
    ck_assert_ptr_null(m);
    /* the message names a stored var.* tensor and a shape with the new width */
    const char *q = strchr(err.msg, '\'');
    ck_assert_msg(q != NULL, "message \"%s\" names no tensor", err.msg);
    char name[128];
    size_t n = strcspn(q + 1, "'");
    ck_assert_uint_lt(n, sizeof name);
    memcpy(name, q + 1, n);
    name[n] = 0;
    ck_assert_msg(strncmp(name, "var.", 4) == 0 && cJSON_GetObjectItemCaseSensitive(g_hdr, name),
                  "message \"%s\" does not name a stored var.* tensor", err.msg);
    ck_assert_msg(strstr(err.msg, "shape") && strstr(err.msg, "256)"),
                  "message \"%s\" does not give the implied shape", err.msg);
}
END_TEST

START_TEST(load_rejects_a_missing_tensor_naming_it)
{
    cJSON *h = hdr_copy();
    cJSON_DeleteItemFromObjectCaseSensitive(h, "var.blocks.1.ffn.fc2.bias");
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'var.blocks.1.ffn.fc2.bias'", "missing");
    h = hdr_copy();
    cJSON_DeleteItemFromObjectCaseSensitive(h, "vae.quantize.quant_resi.qresi_ls.3.weight");
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'vae.quantize.quant_resi.qresi_ls.3.weight'",
                  "missing");
}
END_TEST

START_TEST(load_rejects_an_unknown_tensor_naming_it)
{
    /* well-formed, on bytes of its own appended to the data: only its name is wrong */
    static const float extra[4] = {1, 2, 3, 4};
    unsigned char *data = malloc(g_data_len + sizeof extra);
    ck_assert_ptr_nonnull(data);
    memcpy(data, g_data, g_data_len);
    memcpy(data + g_data_len, extra, sizeof extra);
    static const char *const names[] = {"var.blocks.2.ffn.fc2.bias", "vae.encoder.conv_in.bias",
                                        "extra"};
    for (int i = 0; i < 3; i++) {
        cJSON *h = hdr_copy();
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "dtype", "F32");
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        cJSON_AddItemToArray(shape, cJSON_CreateNumber(4));
        cJSON_AddItemToObject(t, "data_offsets", cJSON_CreateArray());
        set_offsets(t, g_data_len, g_data_len + sizeof extra);
        cJSON_AddItemToObject(h, names[i], t);
        char quoted[64];
        snprintf(quoted, sizeof quoted, "'%s'", names[i]);
        expect_reject(write_model("model.safetensors", h, data, g_data_len + sizeof extra),
                      VS_ERR_INVALID, "unknown", quoted);
    }
    free(data);
}
END_TEST

START_TEST(load_rejects_a_duplicated_tensor)
{
    cJSON *h = hdr_copy();
    cJSON *t = cJSON_Duplicate(tensor_of(h, "var.head.bias"), 1);
    cJSON_AddItemToObject(h, "var.head.bias", t); /* cJSON keeps duplicate keys */
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'var.head.bias'", "twice");
}
END_TEST

static const char *const bad_dtypes[] = {"I32", "F64", "U8", "I8", "F8_E4M3", "BOOL", "f32"};
#define N_BAD_DTYPES ((int)(sizeof bad_dtypes / sizeof bad_dtypes[0]))

START_TEST(load_rejects_dtypes_other_than_f32_f16_bf16)
{
    cJSON *h = hdr_copy();
    set_dtype(tensor_of(h, "var.blocks.0.attn.proj.weight"), bad_dtypes[_i]);
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'var.blocks.0.attn.proj.weight'",
                  bad_dtypes[_i]);
}
END_TEST

/* The tensor whose data ends last, and where. */
static const char *last_tensor(uint64_t *end)
{
    const char *name = NULL;
    *end = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, g_hdr)
        if (is_tensor(t) && off_at(t, 1) > *end) {
            *end = off_at(t, 1);
            name = t->string;
        }
    ck_assert_ptr_nonnull(name);
    return name;
}

START_TEST(load_rejects_a_truncated_file_naming_the_last_tensor)
{
    uint64_t end;
    const char *last = last_tensor(&end);
    ck_assert_uint_eq(end, g_data_len);
    const char *p = path_in("truncated.safetensors");
    write_bytes(p, g_file, g_file_len - 100, NULL, 0);
    expect_reject(p, VS_ERR_INVALID, last, "truncated");
    write_bytes(p, g_file, g_file_len - 1, NULL, 0); /* one byte short */
    expect_reject(p, VS_ERR_INVALID, last, "truncated");
    write_bytes(p, g_file, g_file_len / 2, NULL, 0);
    expect_reject(p, VS_ERR_INVALID, "truncated", NULL);
}
END_TEST

START_TEST(load_rejects_data_offsets_past_the_end_of_the_file)
{
    cJSON *h = hdr_copy();
    cJSON *t = tensor_of(h, "var.head.bias");
    uint64_t span = off_at(t, 1) - off_at(t, 0);
    set_offsets(t, g_data_len, g_data_len + span);
    expect_reject(write_hdr(h), VS_ERR_INVALID, "var.head.bias", "truncated");
    h = hdr_copy(); /* far past the end, where size arithmetic could wrap */
    t = tensor_of(h, "var.head.bias");
    set_offsets(t, (uint64_t)1 << 52, ((uint64_t)1 << 52) + span);
    expect_reject(write_hdr(h), VS_ERR_INVALID, "var.head.bias", NULL);
}
END_TEST

START_TEST(load_rejects_data_offsets_whose_span_disagrees_with_the_shape)
{
    cJSON *h = hdr_copy();
    cJSON *t = tensor_of(h, "var.head.bias");
    set_offsets(t, off_at(t, 0), off_at(t, 1) - 4);
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'var.head.bias'", "16384");
    h = hdr_copy();
    t = tensor_of(h, "var.head.bias");
    set_offsets(t, off_at(t, 1), off_at(t, 0)); /* end before begin */
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'var.head.bias'", "data_offsets");
}
END_TEST

START_TEST(load_rejects_two_tensors_on_the_same_bytes)
{
    cJSON *h = hdr_copy();
    cJSON *q = tensor_of(h, "var.blocks.0.attn.q_bias");
    const cJSON *v = tensor_of(h, "var.blocks.0.attn.v_bias");
    set_offsets(q, off_at(v, 0), off_at(v, 1));
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'var.blocks.0.attn.q_bias'",
                  "'var.blocks.0.attn.v_bias'");
}
END_TEST

START_TEST(load_rejects_tensors_that_partly_overlap)
{
    /* var.head.bias moved 4 bytes down: it overlaps whatever ends at its old start by one float
     * and leaves a 4-byte gap behind it */
    cJSON *h = hdr_copy();
    cJSON *t = tensor_of(h, "var.head.bias");
    uint64_t b = off_at(t, 0), e = off_at(t, 1);
    const char *before = NULL;
    const cJSON *u;
    cJSON_ArrayForEach(u, g_hdr)
        if (is_tensor(u) && off_at(u, 1) == b)
            before = u->string;
    ck_assert_ptr_nonnull(before);
    set_offsets(t, b - 4, e - 4);
    char quoted[160];
    snprintf(quoted, sizeof quoted, "'%s'", before);
    expect_reject(write_hdr(h), VS_ERR_INVALID, "'var.head.bias'", quoted);
}
END_TEST

/* ---- suite ----------------------------------------------------------------------------------- */

static Suite *model_suite(void)
{
    Suite *s = suite_create("model");

    TCase *ok = tcase_create("accept");
    tcase_add_unchecked_fixture(ok, fixture_open, fixture_close);
    tcase_add_checked_fixture(ok, setup, teardown);
    tcase_set_timeout(ok, 60);
    tcase_add_test(ok, valid_fixture_loads_with_its_config);
    tcase_add_test(ok, valid_fixture_counts_every_stored_parameter);
    tcase_add_test(ok, every_weight_pointer_holds_its_own_tensor);
    tcase_add_test(ok, derived_tensors_combine_the_stored_ones);
    tcase_add_test(ok, bf16_reencoding_loads_within_bf16_precision);
    tcase_add_test(ok, f16_reencoding_loads_within_f16_precision);
    tcase_add_test(ok, model_whose_embed_dim_is_not_a_multiple_of_16_loads);
    tcase_add_test(ok, class_names_in_the_config_resolve_by_name_and_index);
    tcase_add_test(ok, rebase_moves_every_pointer_by_the_same_offset);
    suite_add_tcase(s, ok);

    TCase *cfg = tcase_create("config");
    tcase_add_unchecked_fixture(cfg, fixture_open, fixture_close);
    tcase_add_checked_fixture(cfg, setup, teardown);
    tcase_set_timeout(cfg, 60);
    tcase_add_test(cfg, class_lookup_resolves_an_index_and_rejects_others);
    tcase_add_test(cfg, phi_index_matches_numpy_argmin_over_the_reference_ticks);
    tcase_add_test(cfg, full_kv_bytes_counts_k_and_v_of_two_rows_in_every_layer);
    suite_add_tcase(s, cfg);

    TCase *hdr = tcase_create("reject_header");
    tcase_add_unchecked_fixture(hdr, fixture_open, fixture_close);
    tcase_add_checked_fixture(hdr, setup, teardown);
    tcase_set_timeout(hdr, 60);
    tcase_add_test(hdr, load_of_a_nonexistent_path_fails_with_io_naming_the_path);
    tcase_add_test(hdr, load_of_a_directory_fails_with_io);
    tcase_add_test(hdr, load_of_an_empty_file_is_invalid);
    tcase_add_test(hdr, load_of_a_file_shorter_than_the_length_prefix_is_invalid);
    tcase_add_test(hdr, load_rejects_a_header_length_over_100_mb);
    tcase_add_test(hdr, load_rejects_a_header_length_of_all_ones_without_overflowing);
    tcase_add_test(hdr, load_rejects_a_header_longer_than_the_file);
    tcase_add_test(hdr, load_rejects_a_header_that_is_not_json);
    tcase_add_test(hdr, load_rejects_a_header_without_metadata);
    tcase_add_test(hdr, load_rejects_a_wrong_format);
    tcase_add_test(hdr, load_rejects_a_missing_format);
    tcase_add_test(hdr, load_rejects_a_wrong_version);
    tcase_add_test(hdr, load_rejects_a_config_that_is_not_json);
    tcase_add_test(hdr, load_rejects_a_missing_config);
    tcase_add_loop_test(hdr, load_rejects_each_missing_config_field_naming_it, 0, N_REQUIRED);
    tcase_add_loop_test(hdr, load_rejects_config_values_it_cannot_serve_naming_the_field, 0,
                        N_BAD_VALUES);
    suite_add_tcase(s, hdr);

    TCase *ten = tcase_create("reject_tensors");
    tcase_add_unchecked_fixture(ten, fixture_open, fixture_close);
    tcase_add_checked_fixture(ten, setup, teardown);
    tcase_set_timeout(ten, 60);
    tcase_add_test(ten, load_rejects_a_tensor_shape_that_disagrees_with_the_config);
    tcase_add_test(ten, load_rejects_a_tensor_with_the_wrong_number_of_dims);
    tcase_add_test(ten, load_rejects_weights_that_disagree_with_a_changed_embed_dim);
    tcase_add_test(ten, load_rejects_a_missing_tensor_naming_it);
    tcase_add_test(ten, load_rejects_an_unknown_tensor_naming_it);
    tcase_add_test(ten, load_rejects_a_duplicated_tensor);
    tcase_add_loop_test(ten, load_rejects_dtypes_other_than_f32_f16_bf16, 0, N_BAD_DTYPES);
    tcase_add_test(ten, load_rejects_a_truncated_file_naming_the_last_tensor);
    tcase_add_test(ten, load_rejects_data_offsets_past_the_end_of_the_file);
    tcase_add_test(ten, load_rejects_data_offsets_whose_span_disagrees_with_the_shape);
    tcase_add_test(ten, load_rejects_two_tensors_on_the_same_bytes);
    tcase_add_test(ten, load_rejects_tensors_that_partly_overlap);
    suite_add_tcase(s, ten);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    SRunner *sr = srunner_create(model_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
