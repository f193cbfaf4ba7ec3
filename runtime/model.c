/* runtime/model.c — loading and validating a varserve model file (docs/MODEL_FORMAT.md).
 *
 * Order of checks: file → header length (≤ 100 MB, inside the file) → JSON, followed by nothing
 * but space padding → metadata (format, version, config) → config fields and their ranges → the
 * tensor table: every expected tensor is derived from the config, then each stored tensor is
 * matched by name (unknown → rejected), dtype (F32/F16/BF16), shape, byte size and offsets; the
 * tensors must cover the data section exactly (safetensors' rule: no hole, no overlap, nothing
 * left over), which also catches a header length off by a few bytes; missing tensors are named.
 * Then the data: its CRC-32 against the metadata's data_crc32 when the file has one (the
 * converters write it), and every weight, as it is converted to F32, must be finite (a NaN or inf
 * weight would only show as garbage images, and a NaN reaching a float-to-int conversion is
 * undefined behaviour). The scan runs in the conversion loop, on data already in cache: a compare
 * per weight (measured in bench/RESULTS.md). Everything but the metadata, the config and the
 * tensor list is runtime/safetensors.c, which other model families' loaders share. Runs on the
 * loading thread only. */
#include "runtime/model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/safetensors.h"
#include "runtime/vae.h"

#define EXP(dst, ...)                                                                              \
    do {                                                                                           \
        long shp_[] = {__VA_ARGS__};                                                               \
        if (vs_st_expect_add(l, (dst), (int)(sizeof shp_ / sizeof shp_[0]), shp_, "%s", nm) != 0)        \
            return -1;                                                                             \
    } while (0)

/* Every tensor the config implies, with its shape and where its pointer goes. */
static int build_expectations(vs_rt_model *m, vs_st_expects *l)
{
    const vs_rt_config *c = &m->cfg;
    vs_rt_weights *w = &m->w;
    long C = c->embed_dim, V = c->vocab_size, Cv = c->z_channels, F = c->ffn_dim;
    long L = c->scale_offset[c->n_scales];
    long first_l = (long)c->patch_nums[0] * c->patch_nums[0];
    char nm[128];

    snprintf(nm, sizeof nm, "var.class_emb.weight");
    EXP(&w->class_emb, c->num_classes + 1, C);
    snprintf(nm, sizeof nm, "var.pos_start");
    EXP(&w->pos_start, 1, first_l, C);
    snprintf(nm, sizeof nm, "var.pos_1LC");
    EXP(&w->pos_1LC, 1, L, C);
    snprintf(nm, sizeof nm, "var.lvl_embed.weight");
    EXP(&w->lvl_embed, c->n_scales, C);
    snprintf(nm, sizeof nm, "var.word_embed.weight");
    EXP(&w->word_w, C, Cv);
    snprintf(nm, sizeof nm, "var.word_embed.bias");
    EXP(&w->word_b, C);
    if (c->shared_aln) {
        snprintf(nm, sizeof nm, "var.shared_ada_lin.1.weight");
        EXP(&w->shared_ada_w, 6 * C, C);
        snprintf(nm, sizeof nm, "var.shared_ada_lin.1.bias");
        EXP(&w->shared_ada_b, 6 * C);
    }
    for (int i = 0; i < c->depth; i++) {
        vs_rt_block_w *b = &w->blocks[i];
        if (c->shared_aln) {
            snprintf(nm, sizeof nm, "var.blocks.%d.ada_gss", i);
            EXP(&b->ada_gss, 1, 1, 6, C);
        } else {
            snprintf(nm, sizeof nm, "var.blocks.%d.ada_lin.1.weight", i);
            EXP(&b->ada_w, 6 * C, C);
            snprintf(nm, sizeof nm, "var.blocks.%d.ada_lin.1.bias", i);
            EXP(&b->ada_b, 6 * C);
        }
        snprintf(nm, sizeof nm, "var.blocks.%d.attn.mat_qkv.weight", i);
        EXP(&b->qkv_w, 3 * C, C);
        snprintf(nm, sizeof nm, "var.blocks.%d.attn.q_bias", i);
        EXP(&b->q_bias, C);
        snprintf(nm, sizeof nm, "var.blocks.%d.attn.v_bias", i);
        EXP(&b->v_bias, C);
        if (c->attn_l2_norm) { /* the reference only has this parameter with attn_l2_norm */
            snprintf(nm, sizeof nm, "var.blocks.%d.attn.scale_mul_1H11", i);
            EXP(&b->scale_mul, 1, c->num_heads, 1, 1);
        }
        snprintf(nm, sizeof nm, "var.blocks.%d.attn.proj.weight", i);
        EXP(&b->proj_w, C, C);
        snprintf(nm, sizeof nm, "var.blocks.%d.attn.proj.bias", i);
        EXP(&b->proj_b, C);
        snprintf(nm, sizeof nm, "var.blocks.%d.ffn.fc1.weight", i);
        EXP(&b->fc1_w, F, C);
        snprintf(nm, sizeof nm, "var.blocks.%d.ffn.fc1.bias", i);
        EXP(&b->fc1_b, F);
        snprintf(nm, sizeof nm, "var.blocks.%d.ffn.fc2.weight", i);
        EXP(&b->fc2_w, C, F);
        snprintf(nm, sizeof nm, "var.blocks.%d.ffn.fc2.bias", i);
        EXP(&b->fc2_b, C);
    }
    snprintf(nm, sizeof nm, "var.head_nm.ada_lin.1.weight");
    EXP(&w->head_nm_w, 2 * C, C);
    snprintf(nm, sizeof nm, "var.head_nm.ada_lin.1.bias");
    EXP(&w->head_nm_b, 2 * C);
    snprintf(nm, sizeof nm, "var.head.weight");
    EXP(&w->head_w, V, C);
    snprintf(nm, sizeof nm, "var.head.bias");
    EXP(&w->head_b, V);

    /* quantiser */
    snprintf(nm, sizeof nm, "vae.quantize.embedding.weight");
    EXP(&w->embedding, V, Cv);
    if (fabs(c->quant_resi) > 1e-6) {
        int K = c->share_quant_resi;
        char p[128];
        if (K == 1) {
            if (vs_rt_vae_expect_conv(l, &w->phi[0], (int)Cv, (int)Cv, 3, "vae.quantize.quant_resi.qresi", ""))
                return -1;
        } else {
            int n = K == 0 ? c->n_scales : K;
            for (int k = 0; k < n; k++) {
                if (K == 0)
                    snprintf(p, sizeof p, "vae.quantize.quant_resi.%d", k);
                else
                    snprintf(p, sizeof p, "vae.quantize.quant_resi.qresi_ls.%d", k);
                if (vs_rt_vae_expect_conv(l, &w->phi[k], (int)Cv, (int)Cv, 3, p, ""))
                    return -1;
            }
        }
    }

    /* decoder: VAR's VQ-VAE, with a post_quant_conv and attention (vae.c lists the rest) */
    if (vs_rt_vae_expect_conv(l, &w->post_quant_conv, (int)Cv, (int)Cv, 3, "vae.post_quant_conv", ""))
        return -1;
    static const vs_rt_vae_names var_names = {"vae.decoder", "", "", 1};
    if (vs_rt_vae_expect(l, c, w, &var_names))
        return -1;
    return 0;
}

/* ---- config ---------------------------------------------------------------------------------- */

static vs_status parse_config(const char *json, vs_rt_config *c, vs_err *err)
{
    vs_status st = VS_OK;
    cJSON *o = cJSON_ParseWithLengthOpts(json, strlen(json), NULL, 0);
    if (!o || !cJSON_IsObject(o)) {
        st = vs_err_set(err, VS_ERR_INVALID, "metadata 'config' is not a JSON object");
        goto fail;
    }
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(o, "arch");
    if (!arch) {
        st = vs_err_set(err, VS_ERR_INVALID, "config field 'arch' is missing");
        goto fail;
    }
    if (!cJSON_IsString(arch) || strcmp(arch->valuestring, "var") != 0) {
        st = vs_err_set(err, VS_ERR_INVALID, "config field 'arch' must be \"var\"");
        goto fail;
    }
    int nmult = 0;
    if ((st = vs_st_cfg_int(o, "depth", 1, 1024, &c->depth, err)) ||
        (st = vs_st_cfg_int(o, "embed_dim", 1, 1 << 16, &c->embed_dim, err)) ||
        (st = vs_st_cfg_int(o, "num_heads", 1, 1024, &c->num_heads, err)) ||
        (st = vs_st_cfg_num(o, "mlp_ratio", 1e-3, 64, &c->mlp_ratio, err)) ||
        (st = vs_st_cfg_num(o, "norm_eps", 0, 1, &c->norm_eps, err)) ||
        (st = vs_st_cfg_bool(o, "shared_aln", &c->shared_aln, err)) ||
        (st = vs_st_cfg_bool(o, "attn_l2_norm", &c->attn_l2_norm, err)) ||
        (st = vs_st_cfg_int(o, "num_classes", 1, VS_RT_MAX_CLASSES, &c->num_classes, err)) ||
        (st = vs_st_cfg_int_list(o, "patch_nums", VS_RT_MAX_SCALES, 1, 256, c->patch_nums, &c->n_scales,
                           err)) ||
        (st = vs_st_cfg_int(o, "vocab_size", 2, 1 << 24, &c->vocab_size, err)) ||
        (st = vs_st_cfg_int(o, "z_channels", 1, 4096, &c->z_channels, err)) ||
        (st = vs_st_cfg_int(o, "vae_ch", 1, 4096, &c->vae_ch, err)) ||
        (st = vs_st_cfg_int_list(o, "vae_ch_mult", VS_RT_MAX_LEVELS, 1, 64, c->vae_ch_mult, &nmult, err)) ||
        (st = vs_st_cfg_int(o, "vae_num_res_blocks", 0, VS_RT_MAX_LEVELS - 1, &c->vae_num_res_blocks, err)) ||
        (st = vs_st_cfg_num(o, "quant_resi", -1, 1, &c->quant_resi, err)) ||
        (st = vs_st_cfg_int(o, "share_quant_resi", 0, VS_RT_MAX_SCALES, &c->share_quant_resi, err)))
        goto fail;
    c->n_levels = nmult;
    if (c->embed_dim % c->num_heads != 0) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "config field 'num_heads' (%d) must divide 'embed_dim' (%d)", c->num_heads,
                        c->embed_dim);
        goto fail;
    }
    c->head_dim = c->embed_dim / c->num_heads;
    /* the reference's round(): halves to even (nearbyint in the default rounding mode), not away
     * from zero like lround: 36 x 2.625 = 94.5 gives 94 */
    c->ffn_dim = (int)nearbyint(c->embed_dim * c->mlp_ratio);
    if (c->n_scales < 2) {
        st = vs_err_set(err, VS_ERR_INVALID, "config field 'patch_nums' needs at least 2 scales");
        goto fail;
    }
    c->scale_offset[0] = 0;
    for (int s = 0; s < c->n_scales; s++) {
        if (s > 0 && c->patch_nums[s] <= c->patch_nums[s - 1]) {
            st = vs_err_set(err, VS_ERR_INVALID,
                            "config field 'patch_nums' must increase (item %d is %d after %d)", s,
                            c->patch_nums[s], c->patch_nums[s - 1]);
            goto fail;
        }
        c->scale_offset[s + 1] = c->scale_offset[s] + c->patch_nums[s] * c->patch_nums[s];
    }
    for (int i = 0; i < nmult; i++)
        if ((c->vae_ch * c->vae_ch_mult[i]) % 32 != 0) {
            st = vs_err_set(err, VS_ERR_INVALID,
                            "config fields 'vae_ch' x 'vae_ch_mult'[%d] = %d channels must be a "
                            "multiple of 32 (GroupNorm uses 32 groups)",
                            i, c->vae_ch * c->vae_ch_mult[i]);
            goto fail;
        }
    c->image_size = c->patch_nums[c->n_scales - 1] << (nmult - 1);
    c->image_channels = 3;
    if (cJSON_GetObjectItemCaseSensitive(o, "image_channels")) {
        int ic = 0;
        if ((st = vs_st_cfg_int(o, "image_channels", 1, 3, &ic, err)))
            goto fail;
        if (ic == 2) {
            st = vs_err_set(err, VS_ERR_INVALID, "config field 'image_channels' must be 1 or 3 (got 2)");
            goto fail;
        }
        c->image_channels = ic;
    }
    c->default_cfg = c->default_top_p = -1;
    c->default_top_k = -1;
    if (cJSON_GetObjectItemCaseSensitive(o, "default_cfg") &&
        (st = vs_st_cfg_num(o, "default_cfg", 0, 100, &c->default_cfg, err)))
        goto fail;
    if (cJSON_GetObjectItemCaseSensitive(o, "default_top_p") &&
        (st = vs_st_cfg_num(o, "default_top_p", 0, 1, &c->default_top_p, err)))
        goto fail;
    if (cJSON_GetObjectItemCaseSensitive(o, "default_top_k") &&
        (st = vs_st_cfg_int(o, "default_top_k", 0, c->vocab_size, &c->default_top_k, err)))
        goto fail;
    const cJSON *names = cJSON_GetObjectItemCaseSensitive(o, "class_names");
    if (names) {
        if (!cJSON_IsArray(names) || cJSON_GetArraySize(names) != c->num_classes) {
            st = vs_err_set(err, VS_ERR_INVALID,
                            "config field 'class_names' must be a list of num_classes (%d) strings",
                            c->num_classes);
            goto fail;
        }
        c->class_names = calloc((size_t)c->num_classes, sizeof *c->class_names);
        if (!c->class_names) {
            st = vs_err_set(err, VS_ERR_NOMEM, "out of memory for class names");
            goto fail;
        }
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, names)
        {
            if (!cJSON_IsString(e) || !(c->class_names[i] = strdup(e->valuestring))) {
                st = vs_err_set(err, VS_ERR_INVALID, "config field 'class_names' item %d must be a string", i);
                goto fail;
            }
            i++;
        }
    }
fail:
    cJSON_Delete(o);
    return st;
}

static vs_status derive(vs_rt_model *m, float *derived)
{
    const vs_rt_config *c = &m->cfg;
    vs_rt_weights *w = &m->w;
    long C = c->embed_dim, L = c->scale_offset[c->n_scales];
    w->lvl_pos = derived;
    for (int s = 0; s < c->n_scales; s++)
        for (int t = c->scale_offset[s]; t < c->scale_offset[s + 1]; t++)
            for (long i = 0; i < C; i++)
                w->lvl_pos[t * C + i] = w->lvl_embed[s * C + i] + w->pos_1LC[t * C + i];
    derived += L * C;
    for (int i = 0; i < c->depth; i++) {
        vs_rt_block_w *b = &w->blocks[i];
        b->qkv_bias = derived;
        memcpy(derived, b->q_bias, (size_t)C * 4);
        memset(derived + C, 0, (size_t)C * 4);
        memcpy(derived + 2 * C, b->v_bias, (size_t)C * 4);
        derived += 3 * C;
    }
    return VS_OK;
}

vs_status vs_rt_model_load(const char *path, vs_rt_model **out, vs_err *err)
{
    vs_status st = VS_OK;
    vs_st_file f;
    vs_st_expects l = {0};
    vs_rt_model *m = calloc(1, sizeof *m);
    if (!m)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    snprintf(m->path, sizeof m->path, "%s", path);
    if ((st = vs_st_open(&f, path, err)) != VS_OK) {
        vs_rt_model_free(m);
        return st;
    }
    m->file_bytes = f.map_len;
    const cJSON *md = f.meta;
    if (!md || !cJSON_IsObject(md)) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "model header has no __metadata__: not a varserve model (convert it with "
                        "tools/convert_var.py)");
        goto fail;
    }
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(md, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(md, "version");
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(md, "config");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "varserve-model") != 0) {
        const char *fam = vs_st_family(&f);
        if (fam)
            st = vs_err_set(err, VS_ERR_INVALID,
                            "'%s' is %s model, not a VAR one: only VAR models are served and generated so far "
                            "(varserve inspect shows it)",
                            path, fam);
        else
            st = vs_err_set(err, VS_ERR_INVALID, "metadata 'format' must be \"varserve-model\" (got %s)",
                            cJSON_IsString(fmt) ? fmt->valuestring : "nothing");
        goto fail;
    }
    if (!cJSON_IsString(ver) || strcmp(ver->valuestring, "1") != 0) {
        st = vs_err_set(err, VS_ERR_INVALID, "metadata 'version' must be \"1\" (got %s)",
                        cJSON_IsString(ver) ? ver->valuestring : "nothing");
        goto fail;
    }
    if (!cJSON_IsString(cfg)) {
        st = vs_err_set(err, VS_ERR_INVALID, "metadata 'config' is missing (a JSON string)");
        goto fail;
    }
    if ((st = parse_config(cfg->valuestring, &m->cfg, err)) != VS_OK)
        goto fail;

    m->w.blocks = calloc((size_t)m->cfg.depth, sizeof *m->w.blocks);
    if (!m->w.blocks || build_expectations(m, &l) != 0) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    /* one allocation: every tensor as F32, then the derived tensors */
    size_t C = (size_t)m->cfg.embed_dim;
    size_t derived = (size_t)m->cfg.scale_offset[m->cfg.n_scales] * C + (size_t)m->cfg.depth * 3 * C;
    vs_st_loaded ld;
    if ((st = vs_st_load(&f, &l, derived, "(convert it with tools/convert_var.py --dtype f32|bf16)", &ld,
                         err)) != VS_OK)
        goto fail;
    m->data = ld.data;
    m->data_bytes = ld.bytes;
    m->has_checksum = ld.has_checksum;
    derive(m, ld.extra);
    m->n_params = ld.n_params;
    snprintf(m->dtype, sizeof m->dtype, "%s", ld.dtype);
    *out = m;
    m = NULL;
fail:
    free(l.v);
    vs_st_close(&f);
    vs_rt_model_free(m);
    return st;
}

void vs_rt_model_free(vs_rt_model *m)
{
    if (!m)
        return;
    if (m->cfg.class_names) {
        for (int i = 0; i < m->cfg.num_classes; i++)
            free(m->cfg.class_names[i]);
        free(m->cfg.class_names);
    }
    free(m->w.blocks);
    free(m->data);
    free(m);
}

#define REBASE(p) ((p) ? new_base + ((p) - m->data) : NULL)

void vs_rt_model_rebase(const vs_rt_model *m, float *new_base, vs_rt_weights *o,
                        vs_rt_block_w *blocks_out)
{
    *o = m->w;
    o->class_emb = REBASE(o->class_emb);
    o->pos_start = REBASE(o->pos_start);
    o->pos_1LC = REBASE(o->pos_1LC);
    o->lvl_embed = REBASE(o->lvl_embed);
    o->lvl_pos = REBASE(o->lvl_pos);
    o->word_w = REBASE(o->word_w);
    o->word_b = REBASE(o->word_b);
    o->shared_ada_w = REBASE(o->shared_ada_w);
    o->shared_ada_b = REBASE(o->shared_ada_b);
    o->head_nm_w = REBASE(o->head_nm_w);
    o->head_nm_b = REBASE(o->head_nm_b);
    o->head_w = REBASE(o->head_w);
    o->head_b = REBASE(o->head_b);
    o->embedding = REBASE(o->embedding);
    for (int i = 0; i < m->cfg.depth; i++) {
        vs_rt_block_w b = m->w.blocks[i];
        b.ada_w = REBASE(b.ada_w);
        b.ada_b = REBASE(b.ada_b);
        b.ada_gss = REBASE(b.ada_gss);
        b.qkv_w = REBASE(b.qkv_w);
        b.q_bias = REBASE(b.q_bias);
        b.v_bias = REBASE(b.v_bias);
        b.scale_mul = REBASE(b.scale_mul);
        b.proj_w = REBASE(b.proj_w);
        b.proj_b = REBASE(b.proj_b);
        b.fc1_w = REBASE(b.fc1_w);
        b.fc1_b = REBASE(b.fc1_b);
        b.fc2_w = REBASE(b.fc2_w);
        b.fc2_b = REBASE(b.fc2_b);
        b.qkv_bias = REBASE(b.qkv_bias);
        blocks_out[i] = b;
    }
    o->blocks = blocks_out;
    for (int k = 0; k < VS_RT_MAX_SCALES; k++) {
        o->phi[k].w = REBASE(o->phi[k].w);
        o->phi[k].b = REBASE(o->phi[k].b);
    }
    vs_rt_vae_rebase(&m->cfg, o, m->data, new_base);
}

int vs_rt_phi_index(const vs_rt_config *c, int s)
{
    int K = c->share_quant_resi == 0 ? c->n_scales : c->share_quant_resi;
    if (K <= 1)
        return 0;
    /* exactly numpy's linspace(lo, hi, K): k·step + lo, the last one = hi; the reference uses
     * margins of 1/(3K) for K = 4 and 1/(2K) otherwise */
    double margin = K == 4 ? 1.0 / 3 / K : 1.0 / 2 / K;
    double lo = margin, hi = 1 - margin, step = (hi - lo) / (K - 1);
    double at = (double)s / (c->n_scales - 1), best = INFINITY;
    int arg = 0;
    for (int k = 0; k < K; k++) {
        double tick = k == K - 1 ? hi : (double)k * step + lo;
        double d = fabs(tick - at);
        if (d < best) {
            best = d;
            arg = k;
        }
    }
    return arg;
}

float vs_rt_attn_scale(const vs_rt_config *c)
{
    return c->attn_l2_norm ? 1.0f : 0.25f / sqrtf((float)c->head_dim);
}

size_t vs_rt_full_kv_bytes(const vs_rt_config *c)
{
    return (size_t)2 * 2 * (size_t)c->depth * (size_t)c->scale_offset[c->n_scales] *
           (size_t)c->embed_dim * sizeof(float);
}

int vs_rt_class_lookup(const vs_rt_config *c, const char *s)
{
    if (c->class_names)
        for (int i = 0; i < c->num_classes; i++)
            if (strcmp(c->class_names[i], s) == 0)
                return i;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s && !*end && errno == 0 && v >= 0 && v < c->num_classes)
        return (int)v;
    return -1;
}
