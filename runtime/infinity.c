/* runtime/infinity.c — see infinity.h. Linears are OpenBLAS sgemm over all rows of a step (row-major
 * X·Wᵀ plus bias); attention runs per (row, head) over the row's own keys, as two sgemms around a
 * row softmax, a block of queries at a time; norm statistics are summed in double, softmax in
 * float. Row r < B is image r's conditional branch, row B + r its
 * unconditional one (the reference's layout). */
#include "runtime/infinity.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/bsq.h"
#include "runtime/philox.h"
#include "runtime/sample.h"
#include "runtime/safetensors.h"
#include "runtime/vae.h"

static vs_status parse_decoder(const char *json, vs_rt_config *c, vs_err *err)
{
    cJSON *o = cJSON_ParseWithLengthOpts(json, strlen(json), NULL, 0);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return vs_err_set(err, VS_ERR_INVALID, "metadata 'config' is not a JSON object");
    }
    vs_status st;
    int patch = 0;
    if ((st = vs_st_cfg_int(o, "codebook_dim", 1, 64, &c->z_channels, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "vae_base_ch", 1, 4096, &c->vae_ch, err)) != VS_OK ||
        (st = vs_st_cfg_int_list(o, "vae_ch_mult", VS_RT_MAX_LEVELS, 1, 64, c->vae_ch_mult, &c->n_levels, err)) !=
            VS_OK ||
        (st = vs_st_cfg_int(o, "vae_num_res_blocks", 0, VS_RT_MAX_LEVELS - 1, &c->vae_num_res_blocks, err)) !=
            VS_OK ||
        (st = vs_st_cfg_int(o, "vae_patch_size", 1, 1 << 10, &patch, err)) != VS_OK)
        goto done;
    if (patch != 1 << (c->n_levels - 1)) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "config: vae_patch_size %d disagrees with vae_ch_mult's %d levels (the decoder upsamples by "
                        "2^(levels - 1) = %d)",
                        patch, c->n_levels, 1 << (c->n_levels - 1));
        goto done;
    }
    /* the last (t, h, w) of scale_schedule: the grid the decoder is sized for */
    const cJSON *ss = cJSON_GetObjectItemCaseSensitive(o, "scale_schedule");
    const cJSON *last = cJSON_IsArray(ss) ? cJSON_GetArrayItem(ss, cJSON_GetArraySize(ss) - 1) : NULL;
    int thw[3], n = 0;
    const cJSON *e;
    if (cJSON_IsArray(last) && cJSON_GetArraySize(last) == 3)
        cJSON_ArrayForEach(e, last)
        {
            if (cJSON_IsNumber(e) && e->valuedouble >= 1 && e->valuedouble <= 4096 &&
                e->valuedouble == (double)(int)e->valuedouble)
                thw[n++] = (int)e->valuedouble;
        }
    if (n != 3 || thw[0] != 1 || thw[1] != thw[2]) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "config field 'scale_schedule' must end in a square (1, h, h) grid, h 1..4096 (the "
                        "decoder is sized for it)");
        goto done;
    }
    st = VS_OK;
    c->n_scales = 1;
    c->patch_nums[0] = thw[1];
    c->image_size = thw[1] * patch;
    c->image_channels = 3;
done:
    cJSON_Delete(o);
    return st;
}


/* ---- the transformer's settings ---------------------------------------------------------------- */

/* a setting the supported structure fixes: present and equal to `want` (numbers and booleans) */
static vs_status cfg_fixed(const cJSON *o, const char *key, double want, vs_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    double got = cJSON_IsBool(v) ? (double)cJSON_IsTrue(v) : cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(got == want))
        return vs_err_set(err, VS_ERR_INVALID,
                          "config field '%s' must be %g (the 2B model's structure, the one supported)%s", key, want,
                          v ? "" : ": it is missing");
    return VS_OK;
}

/* The last grid of each aspect ratio's 1M schedule (infinity/utils/dynamic_resolution.py), which
 * RoPE positions are scaled to; the reverse ratios swap h and w. */
static const struct {
    double r;
    int h, w;
} ROPE_GRID[] = {{1.000, 64, 64}, {1.250, 70, 56}, {1.333, 72, 54}, {1.500, 78, 52},
                 {1.750, 84, 48}, {2.000, 90, 45}, {2.500, 100, 40}, {3.000, 111, 37}};

static void rope_grid(double h_div_w, int *h, int *w)
{
    double best = INFINITY;
    for (size_t i = 0; i < sizeof ROPE_GRID / sizeof ROPE_GRID[0]; i++)
        for (int inv = 0; inv < 2; inv++) {
            double r = inv ? floor(1.0 / ROPE_GRID[i].r * 1000.0) / 1000.0 : ROPE_GRID[i].r;
            if (fabs(r - h_div_w) < best) {
                best = fabs(r - h_div_w);
                *h = inv ? ROPE_GRID[i].w : ROPE_GRID[i].h;
                *w = inv ? ROPE_GRID[i].h : ROPE_GRID[i].w;
            }
        }
}

static vs_status parse_transformer(const char *json, vs_rt_infinity_config *c, vs_err *err)
{
    cJSON *o = cJSON_ParseWithLengthOpts(json, strlen(json), NULL, 0);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return vs_err_set(err, VS_ERR_INVALID, "metadata 'config' is not a JSON object");
    }
    vs_status st;
    double h_div_w = 1.0;
    if ((st = vs_st_cfg_int(o, "depth", 1, 256, &c->depth, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "embed_dim", 1, 16384, &c->C, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "num_heads", 1, 256, &c->heads, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "head_dim", 2, 1024, &c->head_dim, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "mlp_hidden", 1, 1 << 17, &c->ffn, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "block_chunks", 1, 256, &c->block_chunks, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "text_channels", 1, 16384, &c->Ct5, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "text_maxlen", 1, 4096, &c->text_maxlen, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "text_pool_heads", 1, 256, &c->pool_heads, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "codebook_dim", 1, 64, &c->d, err)) != VS_OK ||
        (st = vs_st_cfg_num(o, "h_div_w", 0.1, 10.0, &h_div_w, err)) != VS_OK ||
        (st = cfg_fixed(o, "shared_aln", 1, err)) != VS_OK || (st = cfg_fixed(o, "head_aln", 1, err)) != VS_OK ||
        (st = cfg_fixed(o, "cos_attn", 1, err)) != VS_OK || (st = cfg_fixed(o, "swiglu", 0, err)) != VS_OK ||
        (st = cfg_fixed(o, "use_bit_label", 1, err)) != VS_OK ||
        (st = cfg_fixed(o, "rope2d_each_sa_layer", 1, err)) != VS_OK ||
        (st = cfg_fixed(o, "rope2d_normalized_by_hw", 2, err)) != VS_OK ||
        (st = cfg_fixed(o, "add_lvl_embeding_only_first_block", 1, err)) != VS_OK ||
        (st = cfg_fixed(o, "cross_attn_layer_scale", -1, err)) != VS_OK ||
        (st = cfg_fixed(o, "nm0", 0, err)) != VS_OK || (st = cfg_fixed(o, "apply_spatial_patchify", 0, err)) != VS_OK)
        goto done;
    if (c->C != c->heads * c->head_dim || c->head_dim % 4 != 0 || c->depth % c->block_chunks != 0 ||
        c->C % c->pool_heads != 0 || c->Ct5 != 128 * c->pool_heads) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "config: embed_dim %d must be num_heads × head_dim (%d × %d, head_dim a multiple of 4), "
                        "depth %d a multiple of block_chunks %d, and text_channels %d 128 × text_pool_heads %d",
                        c->C, c->heads, c->head_dim, c->depth, c->block_chunks, c->Ct5, c->pool_heads);
        goto done;
    }
    const cJSON *ss = cJSON_GetObjectItemCaseSensitive(o, "scale_schedule"), *e;
    c->n_scales = 0;
    cJSON_ArrayForEach(e, ss)
    {
        const cJSON *t = cJSON_GetArrayItem(e, 0), *h = cJSON_GetArrayItem(e, 1), *w = cJSON_GetArrayItem(e, 2);
        if (c->n_scales == VS_RT_INF_MAX_SCALES || cJSON_GetArraySize(e) != 3 || !cJSON_IsNumber(t) ||
            t->valuedouble != 1 || !cJSON_IsNumber(h) || !cJSON_IsNumber(w) || h->valuedouble < 1 ||
            w->valuedouble < 1 || h->valuedouble > 4096 || w->valuedouble > 4096) {
            st = vs_err_set(err, VS_ERR_INVALID,
                            "config field 'scale_schedule' item %d must be (1, h, w) with h, w 1..4096 (at most %d "
                            "scales)",
                            c->n_scales, VS_RT_INF_MAX_SCALES);
            goto done;
        }
        c->hw[c->n_scales][0] = (int)h->valuedouble;
        c->hw[c->n_scales][1] = (int)w->valuedouble;
        c->n_scales++;
    }
    if (c->n_scales < 1) {
        st = vs_err_set(err, VS_ERR_INVALID, "config field 'scale_schedule' is missing or empty");
        goto done;
    }
    rope_grid(h_div_w, &c->rope_h, &c->rope_w);
    st = VS_OK;
done:
    cJSON_Delete(o);
    return st;
}

/* ---- the tensor list ------------------------------------------------------------------------------ */

static int expectations(vs_rt_infinity *m, vs_st_expects *l)
{
    const vs_rt_infinity_config *c = &m->cfg;
    long C = c->C, T = c->Ct5, H = c->heads, F = c->ffn, d = c->d, ph = c->pool_heads;
    VS_ST_WANT(&m->cfg_uncond, VS_ST_SHAPE(c->text_maxlen, T), "infinity.cfg_uncond");
    VS_ST_WANT(&m->text_norm, VS_ST_SHAPE(T), "infinity.text_norm.weight");
    VS_ST_WANT(&m->pool_q, VS_ST_SHAPE(1, ph, C / ph), "infinity.text_proj_for_sos.ca.mat_q");
    VS_ST_WANT(&m->pool_kv, VS_ST_SHAPE(2 * C, T), "infinity.text_proj_for_sos.ca.mat_kv.weight");
    VS_ST_WANT(&m->pool_v_bias, VS_ST_SHAPE(C), "infinity.text_proj_for_sos.ca.v_bias");
    VS_ST_WANT(&m->pool_proj_w, VS_ST_SHAPE(C, C), "infinity.text_proj_for_sos.ca.proj.weight");
    VS_ST_WANT(&m->pool_proj_b, VS_ST_SHAPE(C), "infinity.text_proj_for_sos.ca.proj.bias");
    VS_ST_WANT(&m->ca1_w, VS_ST_SHAPE(C, T), "infinity.text_proj_for_ca.0.weight");
    VS_ST_WANT(&m->ca1_b, VS_ST_SHAPE(C), "infinity.text_proj_for_ca.0.bias");
    VS_ST_WANT(&m->ca2_w, VS_ST_SHAPE(C, C), "infinity.text_proj_for_ca.2.weight");
    VS_ST_WANT(&m->ca2_b, VS_ST_SHAPE(C), "infinity.text_proj_for_ca.2.bias");
    VS_ST_WANT(&m->pos_start, VS_ST_SHAPE(1, 1, C), "infinity.pos_start");
    VS_ST_WANT(&m->lvl_embed, VS_ST_SHAPE(15, C), "infinity.lvl_embed.weight");
    VS_ST_WANT(&m->word_w, VS_ST_SHAPE(C, d), "infinity.word_embed.weight");
    VS_ST_WANT(&m->word_b, VS_ST_SHAPE(C), "infinity.word_embed.bias");
    VS_ST_WANT(&m->ada_w, VS_ST_SHAPE(6 * C, C), "infinity.shared_ada_lin.1.weight");
    VS_ST_WANT(&m->ada_b, VS_ST_SHAPE(6 * C), "infinity.shared_ada_lin.1.bias");
    VS_ST_WANT(&m->head_nm_w, VS_ST_SHAPE(2 * C, C), "infinity.head_nm.ada_lin.1.weight");
    VS_ST_WANT(&m->head_nm_b, VS_ST_SHAPE(2 * C), "infinity.head_nm.ada_lin.1.bias");
    VS_ST_WANT(&m->head_w, VS_ST_SHAPE(2 * d, C), "infinity.head.weight");
    VS_ST_WANT(&m->head_b, VS_ST_SHAPE(2 * d), "infinity.head.bias");
    int per = c->depth / c->block_chunks;
    for (int i = 0; i < c->depth; i++) {
        vs_rt_infinity_block_w *b = &m->blocks[i];
        int k = i / per, j = i % per;
        const char *p = "infinity.block_chunks";
        VS_ST_WANT(&b->ada_gss, VS_ST_SHAPE(1, 1, 6, C), "%s.%d.module.%d.ada_gss", p, k, j);
        VS_ST_WANT(&b->sa_qkv, VS_ST_SHAPE(3 * C, C), "%s.%d.module.%d.sa.mat_qkv.weight", p, k, j);
        VS_ST_WANT(&b->sa_q_bias, VS_ST_SHAPE(C), "%s.%d.module.%d.sa.q_bias", p, k, j);
        VS_ST_WANT(&b->sa_v_bias, VS_ST_SHAPE(C), "%s.%d.module.%d.sa.v_bias", p, k, j);
        VS_ST_WANT(&b->sa_scale_mul, VS_ST_SHAPE(1, H, 1, 1), "%s.%d.module.%d.sa.scale_mul_1H11", p, k, j);
        VS_ST_WANT(&b->sa_proj_w, VS_ST_SHAPE(C, C), "%s.%d.module.%d.sa.proj.weight", p, k, j);
        VS_ST_WANT(&b->sa_proj_b, VS_ST_SHAPE(C), "%s.%d.module.%d.sa.proj.bias", p, k, j);
        VS_ST_WANT(&b->ca_norm_w, VS_ST_SHAPE(C), "%s.%d.module.%d.ca_norm.weight", p, k, j);
        VS_ST_WANT(&b->ca_norm_b, VS_ST_SHAPE(C), "%s.%d.module.%d.ca_norm.bias", p, k, j);
        VS_ST_WANT(&b->ca_q_w, VS_ST_SHAPE(C, C), "%s.%d.module.%d.ca.mat_q.weight", p, k, j);
        VS_ST_WANT(&b->ca_q_b, VS_ST_SHAPE(C), "%s.%d.module.%d.ca.mat_q.bias", p, k, j);
        VS_ST_WANT(&b->ca_kv, VS_ST_SHAPE(2 * C, C), "%s.%d.module.%d.ca.mat_kv.weight", p, k, j);
        VS_ST_WANT(&b->ca_v_bias, VS_ST_SHAPE(C), "%s.%d.module.%d.ca.v_bias", p, k, j);
        VS_ST_WANT(&b->ca_proj_w, VS_ST_SHAPE(C, C), "%s.%d.module.%d.ca.proj.weight", p, k, j);
        VS_ST_WANT(&b->ca_proj_b, VS_ST_SHAPE(C), "%s.%d.module.%d.ca.proj.bias", p, k, j);
        VS_ST_WANT(&b->fc1_w, VS_ST_SHAPE(F, C), "%s.%d.module.%d.ffn.fc1.weight", p, k, j);
        VS_ST_WANT(&b->fc1_b, VS_ST_SHAPE(F), "%s.%d.module.%d.ffn.fc1.bias", p, k, j);
        VS_ST_WANT(&b->fc2_w, VS_ST_SHAPE(C, F), "%s.%d.module.%d.ffn.fc2.weight", p, k, j);
        VS_ST_WANT(&b->fc2_b, VS_ST_SHAPE(C), "%s.%d.module.%d.ffn.fc2.bias", p, k, j);
    }
    static const vs_rt_vae_names names = {"vae.decoder", ".conv", ".norm", 0};
    return vs_rt_vae_expect(l, &m->dec, &m->w, &names);
}

static size_t total_tokens(const vs_rt_infinity_config *c)
{
    size_t n = 0;
    for (int s = 0; s < c->n_scales; s++)
        n += (size_t)c->hw[s][0] * c->hw[s][1];
    return n;
}

/* The RoPE table (precompute_rope2d_freqs_grid with rope2d_normalized_by_hw 2): token (y, x) of a
 * scale h × w sits at (round(y·H/h), round(x·W/w)) of the 1M grid H × W (rounding half to even,
 * as torch.round); pair i < half/2 of a head turns by py·θ_i, pair half/2 + i by px·θ_i, with
 * θ_i = 1 / 10000^(2i/half), half = head_dim / 2; all in FP32. */
static void rope_table(const vs_rt_infinity_config *c, float *rope)
{
    int half = c->head_dim / 2, nf = half / 2;
    size_t L = total_tokens(c), t = 0;
    float inv[512];
    for (int i = 0; i < nf; i++)
        inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)half);
    for (int s = 0; s < c->n_scales; s++) {
        int h = c->hw[s][0], w = c->hw[s][1];
        float sy = (float)((double)c->rope_h / h), sx = (float)((double)c->rope_w / w);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++, t++) {
                float py = rintf((float)y * sy), px = rintf((float)x * sx);
                float *cs = rope + t * half, *sn = rope + (L + t) * half;
                for (int i = 0; i < nf; i++) {
                    float ay = py * inv[i], ax = px * inv[i];
                    cs[i] = cosf(ay);
                    sn[i] = sinf(ay);
                    cs[nf + i] = cosf(ax);
                    sn[nf + i] = sinf(ax);
                }
            }
    }
}

vs_status vs_rt_infinity_load(const char *path, vs_rt_infinity **out, vs_err *err)
{
    vs_st_file f;
    vs_status st = vs_st_open(&f, path, err);
    if (st != VS_OK)
        return st;
    vs_st_expects l = {0};
    vs_rt_infinity *m = calloc(1, sizeof *m);
    if (!m) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    const cJSON *cfg = f.meta ? cJSON_GetObjectItemCaseSensitive(f.meta, "config") : NULL;
    if (!cJSON_IsString(cfg)) {
        st = vs_err_set(err, VS_ERR_INVALID, "Infinity file '%s' has no metadata 'config' (a JSON string)", path);
        goto fail;
    }
    if ((st = parse_transformer(cfg->valuestring, &m->cfg, err)) != VS_OK ||
        (st = parse_decoder(cfg->valuestring, &m->dec, err)) != VS_OK)
        goto fail;
    if (m->dec.z_channels != m->cfg.d ||
        m->dec.patch_nums[0] != m->cfg.hw[m->cfg.n_scales - 1][0]) {
        st = vs_err_set(err, VS_ERR_INVALID, "config: the decoder's latent (codebook_dim, the last grid) disagrees "
                                             "with the transformer's");
        goto fail;
    }
    m->blocks = calloc((size_t)m->cfg.depth, sizeof *m->blocks);
    if (!m->blocks || expectations(m, &l) != 0) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    size_t rope = 2 * total_tokens(&m->cfg) * (size_t)(m->cfg.head_dim / 2);
    vs_st_loaded ld;
    if ((st = vs_st_load(&f, &l, rope, "(save the model in float32, float16 or bfloat16)", &ld, err)) != VS_OK)
        goto fail;
    m->data = ld.data;
    m->data_bytes = ld.bytes;
    m->n_params = ld.n_params;
    m->has_checksum = ld.has_checksum;
    m->rope = ld.extra;
    rope_table(&m->cfg, m->rope);
    *out = m;
    m = NULL;
fail:
    free(l.v);
    vs_st_close(&f);
    vs_rt_infinity_free(m);
    return st;
}

void vs_rt_infinity_free(vs_rt_infinity *m)
{
    if (!m)
        return;
    free(m->data);
    free(m->blocks);
    free(m);
}

/* ---- the generation ------------------------------------------------------------------------------- */

struct vs_rt_infinity_gen {
    const vs_rt_infinity *m;
    int B, R, scale;                  /* R = rows: 2B with CFG, else B */
    float cfg[VS_RT_INF_MAX_SCALES], tau[VS_RT_INF_MAX_SCALES];
    int guided;
    vs_rt_infinity_probe probe;
    void *pctx;
    int *kv_start, *kv_len;           /* [R]: the row's text rows in ca_kv */
    float *ca_kv;                     /* [Σ kv_len][C] */
    float *ca_kvb;                    /* [depth][Σ kv_len][2C]: each block's text keys and values */
    float *cond;                      /* [R][C]: the pooled text (sos, cond_BD) */
    float *gss;                       /* [R][6C]: shared_ada_lin(cond) */
    float *kcache, *vcache;           /* [depth][R][L][C] rotated keys, values */
    int cached;                       /* tokens in the caches */
    float *x;                         /* [R][l][C] the next scale's input */
    int top_k;
    float top_p;
    uint64_t *seeds;                  /* [B] */
    float *summed;                    /* [B][d][H][W] */
};

static void linear(float *y, const float *x, const float *w, const float *b, int rows, int in, int out)
{
    if (b)
        for (int r = 0; r < rows; r++)
            memcpy(y + (size_t)r * out, b, (size_t)out * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, x, in, w, in, b ? 1.0f : 0.0f, y, out);
}

static float gelu_tanh(float a)
{
    return 0.5f * a * (1.0f + tanhf(0.7978845608028654f * (a + 0.044715f * a * a * a)));
}

static float silu(float a) { return a / (1.0f + expf(-a)); }

/* LayerNorm without affine, then · (1 + scale) + shift (scale, shift NULL: affine w, b instead) */
static void layer_norm(float *y, const float *x, int rows, int C, const float *scale, const float *shift,
                       const float *w, const float *b)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * C;
        float *yr = y + (size_t)r * C;
        double s = 0, ss = 0;
        for (int i = 0; i < C; i++)
            s += xr[i];
        double mean = s / C;
        for (int i = 0; i < C; i++)
            ss += (xr[i] - mean) * (xr[i] - mean);
        float inv = (float)(1.0 / sqrt(ss / C + 1e-6)), mf = (float)mean;
        for (int i = 0; i < C; i++) {
            float v = (xr[i] - mf) * inv;
            yr[i] = scale ? v * (1.0f + scale[i]) + shift[i] : v * w[i] + b[i];
        }
    }
}

#define ATT_CHUNK 128 /* queries a scores block holds */

/* out[i] (stride os) = softmax(q[i]·Kᵀ·sc)·V for nq queries q (stride qs) over n keys (stride ks;
 * values stride vs), hd wide: two sgemms per block of ATT_CHUNK queries around a row softmax in
 * float. S: scratch for ATT_CHUNK · n floats. */
static void attend(float *out, size_t os, const float *q, size_t qs, int nq, const float *k, size_t ks,
                   const float *v, size_t vs, int n, int hd, float sc, float *S)
{
    for (int q0 = 0; q0 < nq; q0 += ATT_CHUNK) {
        int m = nq - q0 < ATT_CHUNK ? nq - q0 : ATT_CHUNK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, hd, sc, q + (size_t)q0 * qs, (int)qs, k, (int)ks,
                    0.0f, S, n);
        for (int i = 0; i < m; i++) {
            float *p = S + (size_t)i * n, mx = -INFINITY, sum = 0.0f;
            for (int j = 0; j < n; j++)
                mx = p[j] > mx ? p[j] : mx;
            for (int j = 0; j < n; j++) {
                p[j] = expf(p[j] - mx);
                sum += p[j];
            }
            float inv = 1.0f / sum;
            for (int j = 0; j < n; j++)
                p[j] *= inv;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, hd, n, 1.0f, S, n, v, (int)vs, 0.0f,
                    out + (size_t)q0 * os, (int)os);
    }
}

static void probe(vs_rt_infinity_gen *g, const char *name, int s, const float *data, int rows, int cols)
{
    if (!g->probe)
        return;
    char nm[64];
    if (s >= 0)
        snprintf(nm, sizeof nm, "%s.%d", name, s);
    else
        snprintf(nm, sizeof nm, "%s", name);
    g->probe(g->pctx, nm, data, rows, cols);
}

vs_status vs_rt_infinity_gen_new(const vs_rt_infinity *m, const float *text, const int *lens, int B,
                                 const float *cfg, const float *tau, const vs_rt_infinity_sampling *smp,
                                 vs_rt_infinity_probe probe_fn, void *probe_ctx, vs_rt_infinity_gen **out,
                                 vs_err *err)
{
    const vs_rt_infinity_config *c = &m->cfg;
    if (B < 1 || B > 4096)
        return vs_err_set(err, VS_ERR_INVALID, "Infinity: %d images (1..4096)", B);
    int guided = 0, N = 0;
    if (smp->top_k < 0 || !(smp->top_p >= 0.0f && smp->top_p <= 1.0f) || (smp->top_k != 1 && !smp->seeds))
        return vs_err_set(err, VS_ERR_INVALID, "Infinity: top_k %d (0..), top_p %g (0..1); sampling needs seeds",
                          smp->top_k, (double)smp->top_p);
    for (int s = 0; s < c->n_scales; s++)
        guided |= cfg[s] != 1.0f;
    for (int b = 0; b < B; b++) {
        if (lens[b] < 1 || lens[b] > c->text_maxlen)
            return vs_err_set(err, VS_ERR_INVALID, "Infinity: prompt %d has %d text tokens (1..%d)", b, lens[b],
                              c->text_maxlen);
        N += lens[b];
    }
    vs_rt_infinity_gen *g = calloc(1, sizeof *g);
    if (!g)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    g->m = m;
    g->B = B;
    g->R = guided ? 2 * B : B;
    g->guided = guided;
    memcpy(g->cfg, cfg, (size_t)c->n_scales * sizeof *cfg);
    memcpy(g->tau, tau, (size_t)c->n_scales * sizeof *tau);
    g->probe = probe_fn;
    g->pctx = probe_ctx;
    g->top_k = smp->top_k;
    g->top_p = smp->top_p;
    g->seeds = malloc((size_t)B * sizeof *g->seeds);
    if (g->seeds)
        for (int b = 0; b < B; b++)
            g->seeds[b] = smp->seeds ? smp->seeds[b] : 0;
    int R = g->R, C = c->C, T = c->Ct5, NR = guided ? 2 * N : N;
    size_t L = total_tokens(c), lmax = 0, HW = (size_t)c->hw[c->n_scales - 1][0] * c->hw[c->n_scales - 1][1];
    for (int s = 0; s < c->n_scales; s++)
        lmax = (size_t)c->hw[s][0] * c->hw[s][1] > lmax ? (size_t)c->hw[s][0] * c->hw[s][1] : lmax;
    g->kv_start = malloc((size_t)R * sizeof(int));
    g->kv_len = malloc((size_t)R * sizeof(int));
    float *tn = malloc((size_t)NR * T * sizeof(float)), *kv = malloc((size_t)NR * 2 * C * sizeof(float));
    float *h1 = malloc((size_t)NR * C * sizeof(float)), *pooled = malloc((size_t)R * C * sizeof(float));
    float *p = malloc((size_t)c->text_maxlen * sizeof(float)), *sc = malloc((size_t)R * C * sizeof(float));
    g->ca_kv = malloc((size_t)NR * C * sizeof(float));
    g->cond = malloc((size_t)R * C * sizeof(float));
    g->gss = malloc((size_t)R * 6 * C * sizeof(float));
    g->ca_kvb = malloc((size_t)c->depth * NR * 2 * C * sizeof(float));
    g->kcache = malloc((size_t)c->depth * R * L * C * sizeof(float));
    g->vcache = malloc((size_t)c->depth * R * L * C * sizeof(float));
    g->x = malloc((size_t)R * lmax * C * sizeof(float));
    g->summed = calloc((size_t)B * c->d * HW, sizeof(float));
    vs_status st = VS_OK;
    if (!g->seeds || !g->kv_start || !g->kv_len || !tn || !kv || !h1 || !pooled || !p || !sc || !g->ca_kv || !g->cond ||
        !g->gss || !g->ca_kvb || !g->kcache || !g->vcache || !g->x || !g->summed) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory for an Infinity generation of %d images", B);
        goto done;
    }
    /* the text rows: the prompts', then (guided) cfg_uncond's first lens[b] rows for each */
    for (int r = 0, at = 0; r < R; r++) {
        g->kv_start[r] = at;
        g->kv_len[r] = lens[r % B];
        at += lens[r % B];
    }
    memcpy(tn, text, (size_t)N * T * sizeof(float));
    if (guided)
        for (int b = 0; b < B; b++)
            memcpy(tn + (size_t)g->kv_start[B + b] * T, m->cfg_uncond, (size_t)lens[b] * T * sizeof(float));
    for (int r = 0; r < NR; r++) { /* text_norm: RMS norm with a weight */
        float *xr = tn + (size_t)r * T;
        double ss = 0;
        for (int i = 0; i < T; i++)
            ss += (double)xr[i] * xr[i];
        float inv = (float)(1.0 / sqrt(ss / T + 1e-6));
        for (int i = 0; i < T; i++)
            xr[i] = xr[i] * inv * m->text_norm[i];
    }
    probe(g, "text_norm", -1, tn, NR, T);
    /* the start token: attentive pooling of each row's text by a learnt query per head */
    int ph = c->pool_heads, phd = C / ph;
    linear(kv, tn, m->pool_kv, NULL, NR, T, 2 * C);
    for (int r = 0; r < NR; r++)
        for (int i = 0; i < C; i++)
            kv[(size_t)r * 2 * C + C + i] += m->pool_v_bias[i];
    for (int r = 0; r < R; r++)
        for (int h = 0; h < ph; h++) {
            const float *k0 = kv + (size_t)g->kv_start[r] * 2 * C + (size_t)h * phd;
            attend(pooled + (size_t)r * C + (size_t)h * phd, C, m->pool_q + (size_t)h * phd, phd, 1, k0, 2 * (size_t)C,
                   k0 + C, 2 * (size_t)C, g->kv_len[r], phd, 1.0f / sqrtf((float)phd), p);
        }
    linear(g->cond, pooled, m->pool_proj_w, m->pool_proj_b, R, C, C);
    probe(g, "cond_BD", -1, g->cond, R, C);
    /* the cross-attention memory: Linear, GELU, Linear */
    linear(h1, tn, m->ca1_w, m->ca1_b, NR, T, C);
    for (size_t e = 0; e < (size_t)NR * C; e++)
        h1[e] = gelu_tanh(h1[e]);
    linear(g->ca_kv, h1, m->ca2_w, m->ca2_b, NR, C, C);
    probe(g, "ca_kv", -1, g->ca_kv, NR, C);
    for (int bi = 0; bi < c->depth; bi++) { /* the text's keys and values are the same at every scale */
        float *kvb = g->ca_kvb + (size_t)bi * NR * 2 * C;
        linear(kvb, g->ca_kv, m->blocks[bi].ca_kv, NULL, NR, C, 2 * C);
        for (int n = 0; n < NR; n++)
            for (int i = 0; i < C; i++)
                kvb[(size_t)n * 2 * C + C + i] += m->blocks[bi].ca_v_bias[i];
    }
    for (size_t e = 0; e < (size_t)R * C; e++)
        sc[e] = silu(g->cond[e]);
    linear(g->gss, sc, m->ada_w, m->ada_b, R, C, 6 * C);
    probe(g, "cond_gss", -1, g->gss, R, 6 * C);
    for (int r = 0; r < R; r++)
        for (int i = 0; i < C; i++)
            g->x[(size_t)r * C + i] = g->cond[(size_t)r * C + i] + m->pos_start[i];
done:
    free(tn);
    free(kv);
    free(h1);
    free(pooled);
    free(p);
    free(sc);
    if (st != VS_OK) {
        vs_rt_infinity_gen_free(g);
        return st;
    }
    *out = g;
    return VS_OK;
}

void vs_rt_infinity_gen_free(vs_rt_infinity_gen *g)
{
    if (!g)
        return;
    free(g->seeds);
    free(g->kv_start);
    free(g->kv_len);
    free(g->ca_kv);
    free(g->ca_kvb);
    free(g->cond);
    free(g->gss);
    free(g->kcache);
    free(g->vcache);
    free(g->x);
    free(g->summed);
    free(g);
}

/* floats block() needs for l tokens of R rows */
static size_t block_scratch(const vs_rt_infinity_config *c, int R, int l)
{
    size_t RL = (size_t)R * l, keys = total_tokens(c);
    keys = keys > (size_t)c->text_maxlen ? keys : (size_t)c->text_maxlen;
    return RL * (6 * (size_t)c->C + (size_t)c->ffn) + ATT_CHUNK * keys + 2 * (size_t)c->C;
}

/* AdaLN's modulated input of row r: LN(x) · (1 + scale) + shift, with block w's ada_gss and the
 * row's gss at offsets `si` (scale) and `hi` (shift), in units of C */
static void ada_norm(const vs_rt_infinity_gen *g, const vs_rt_infinity_block_w *w, int r, int si, int hi,
                     float *y, const float *x, int l, float *mod)
{
    int C = g->m->cfg.C;
    const float *gs = g->gss + (size_t)r * 6 * C;
    for (int i = 0; i < C; i++) {
        mod[i] = w->ada_gss[si * C + i] + gs[si * C + i];
        mod[C + i] = w->ada_gss[hi * C + i] + gs[hi * C + i];
    }
    layer_norm(y, x, l, C, mod, mod + C, NULL, NULL);
}

/* x[r][t] += y[r][t] · (ada_gss + gss)[gi] of the row (a gated residual) */
static void gated_add(const vs_rt_infinity_gen *g, const vs_rt_infinity_block_w *w, int gi, float *x, const float *y,
                      int l)
{
    int C = g->m->cfg.C;
    for (int r = 0; r < g->R; r++) {
        const float *gs = g->gss + (size_t)r * 6 * C + (size_t)gi * C;
        for (int t = 0; t < l; t++)
            for (int i = 0; i < C; i++)
                x[((size_t)r * l + t) * C + i] += y[((size_t)r * l + t) * C + i] * (w->ada_gss[gi * C + i] + gs[i]);
    }
}

/* one block over the scale's l tokens of every row, in place on x; tok0: tokens of earlier scales */
static void block(vs_rt_infinity_gen *g, int bi, float *x, int l, size_t tok0, float *buf)
{
    const vs_rt_infinity *m = g->m;
    const vs_rt_infinity_config *c = &m->cfg;
    const vs_rt_infinity_block_w *w = &m->blocks[bi];
    int R = g->R, C = c->C, H = c->heads, hd = c->head_dim, half = hd / 2, F = c->ffn;
    size_t RL = (size_t)R * l, L = total_tokens(c), Ltot = tok0 + (size_t)l;
    float *xn = buf, *qkv = xn + RL * C, *att = qkv + RL * 3 * C, *tmp = att + RL * C, *ff = tmp + RL * C;
    float *mod = ff + RL * F, *p = mod + 2 * C;
    const float *rope_c = m->rope, *rope_s = m->rope + L * half;
    const float max_mul = logf(100.0f);
    /* self-attention over every cached token: q and k L2-normalised (q times its head's
     * exp(min(scale_mul, ln 100))), turned by RoPE, softmax scale 1 */
    for (int r = 0; r < R; r++)
        ada_norm(g, w, r, 2, 4, xn + (size_t)r * l * C, x + (size_t)r * l * C, l, mod);
    linear(qkv, xn, w->sa_qkv, NULL, (int)RL, C, 3 * C);
    for (size_t t = 0; t < RL; t++)
        for (int i = 0; i < C; i++) {
            qkv[t * 3 * C + i] += w->sa_q_bias[i];
            qkv[t * 3 * C + 2 * C + i] += w->sa_v_bias[i];
        }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < l; t++) {
            float *q = qkv + ((size_t)r * l + t) * 3 * C, *k = q + C, *v = q + 2 * C;
            size_t slot = ((size_t)bi * R + r) * L + tok0 + (size_t)t;
            float *kc = g->kcache + slot * C, *vc = g->vcache + slot * C;
            const float *cs = rope_c + (tok0 + t) * half, *sn = rope_s + (tok0 + t) * half;
            for (int h = 0; h < H; h++) {
                float *qh = q + (size_t)h * hd, *kh = k + (size_t)h * hd, *kch = kc + (size_t)h * hd;
                double nq = 0, nk = 0;
                for (int e = 0; e < hd; e++) {
                    nq += (double)qh[e] * qh[e];
                    nk += (double)kh[e] * kh[e];
                }
                float mul = expf(w->sa_scale_mul[h] < max_mul ? w->sa_scale_mul[h] : max_mul);
                float dq = fmaxf((float)sqrt(nq), 1e-12f), dk = fmaxf((float)sqrt(nk), 1e-12f);
                for (int i = 0; i < half; i++) { /* pair (2i, 2i+1) turns by angle i */
                    float q0 = qh[2 * i] / dq * mul, q1 = qh[2 * i + 1] / dq * mul;
                    float k0 = kh[2 * i] / dk, k1 = kh[2 * i + 1] / dk;
                    qh[2 * i] = cs[i] * q0 - sn[i] * q1;
                    qh[2 * i + 1] = sn[i] * q0 + cs[i] * q1;
                    kch[2 * i] = cs[i] * k0 - sn[i] * k1;
                    kch[2 * i + 1] = sn[i] * k0 + cs[i] * k1;
                }
            }
            memcpy(vc, v, (size_t)C * sizeof(float));
        }
    for (int r = 0; r < R; r++) {
        const float *kc = g->kcache + ((size_t)bi * R + r) * L * C, *vc = g->vcache + ((size_t)bi * R + r) * L * C;
        for (int h = 0; h < H; h++)
            attend(att + (size_t)r * l * C + (size_t)h * hd, C, qkv + (size_t)r * l * 3 * C + (size_t)h * hd, 3 * (size_t)C,
                   l, kc + (size_t)h * hd, C, vc + (size_t)h * hd, C, (int)Ltot, hd, 1.0f, p);
    }
    linear(tmp, att, w->sa_proj_w, w->sa_proj_b, (int)RL, C, C);
    gated_add(g, w, 0, x, tmp, l);
    /* cross-attention to the row's own text, scale 1/√head_dim, not gated (ca_gamma 1) */
    layer_norm(xn, x, (int)RL, C, NULL, NULL, w->ca_norm_w, w->ca_norm_b);
    linear(qkv, xn, w->ca_q_w, w->ca_q_b, (int)RL, C, C);
    const float *kvb = g->ca_kvb + (size_t)bi * (g->kv_start[R - 1] + g->kv_len[R - 1]) * 2 * C;
    for (int r = 0; r < R; r++) {
        const float *k0 = kvb + (size_t)g->kv_start[r] * 2 * C;
        for (int h = 0; h < H; h++)
            attend(att + (size_t)r * l * C + (size_t)h * hd, C, qkv + (size_t)r * l * C + (size_t)h * hd, C, l,
                   k0 + (size_t)h * hd, 2 * (size_t)C, k0 + C + (size_t)h * hd, 2 * (size_t)C, g->kv_len[r], hd,
                   1.0f / sqrtf((float)hd), p);
    }
    linear(tmp, att, w->ca_proj_w, w->ca_proj_b, (int)RL, C, C);
    for (size_t e = 0; e < RL * C; e++)
        x[e] += tmp[e];
    /* feed-forward: fc2(GELU(fc1(modulated LN))), gated */
    for (int r = 0; r < R; r++)
        ada_norm(g, w, r, 3, 5, xn + (size_t)r * l * C, x + (size_t)r * l * C, l, mod);
    linear(ff, xn, w->fc1_w, w->fc1_b, (int)RL, C, F);
    for (size_t e = 0; e < RL * F; e++)
        ff[e] = gelu_tanh(ff[e]);
    linear(tmp, ff, w->fc2_w, w->fc2_b, (int)RL, F, C);
    gated_add(g, w, 1, x, tmp, l);
}

int vs_rt_infinity_gen_scale(vs_rt_infinity_gen *g, uint8_t *bits, float *logits)
{
    const vs_rt_infinity *m = g->m;
    const vs_rt_infinity_config *c = &m->cfg;
    int s = g->scale;
    if (s >= c->n_scales)
        return -1;
    int h = c->hw[s][0], w = c->hw[s][1], l = h * w, R = g->R, B = g->B, C = c->C, d = c->d, V = 2 * d;
    int last = s == c->n_scales - 1, H = c->hw[c->n_scales - 1][0], W = c->hw[c->n_scales - 1][1];
    int hn = last ? 0 : c->hw[s + 1][0], wn = last ? 0 : c->hw[s + 1][1];
    size_t RL = (size_t)R * l;
    size_t need = block_scratch(c, R, l);
    size_t head = RL * ((size_t)C + V) + (size_t)R * 3 * C;
    size_t fb = (size_t)d * ((size_t)l + (size_t)H * W) + (size_t)(hn * wn) * d;
    float *buf = malloc((need > head + fb ? need : head + fb) * sizeof(float));
    if (!buf)
        return -2;
    float *x = g->x;
    for (size_t t = 0; t < RL; t++) /* the level embedding, before the first block only */
        for (int i = 0; i < C; i++)
            x[t * C + i] += m->lvl_embed[(size_t)s * C + i];
    probe(g, "block_in", s, x, (int)RL, C);
    for (int bi = 0; bi < c->depth; bi++) {
        block(g, bi, x, l, (size_t)g->cached, buf);
        char nm[24];
        snprintf(nm, sizeof nm, "block%d", bi);
        probe(g, nm, s, x, (int)RL, C);
    }
    g->cached += l;
    /* the head: AdaLN from the pooled text, then a linear to 2d logits */
    float *hn_x = buf, *raw = hn_x + RL * C, *sc = raw + RL * V, *ada = sc + (size_t)R * C;
    for (size_t e = 0; e < (size_t)R * C; e++)
        sc[e] = silu(g->cond[e]);
    linear(ada, sc, m->head_nm_w, m->head_nm_b, R, C, 2 * C);
    for (int r = 0; r < R; r++)
        layer_norm(hn_x + (size_t)r * l * C, x + (size_t)r * l * C, l, C, ada + (size_t)r * 2 * C,
                   ada + (size_t)r * 2 * C + C, NULL, NULL);
    linear(raw, hn_x, m->head_w, m->head_b, (int)RL, C, V);
    probe(g, "head_raw", s, raw, (int)RL, V);
    /* guided logits (the reference's order: ·(1/tau), then cfg·cond + (1 − cfg)·uncond), then the
     * bits by the sampling rule (greedy with top_k 1: the larger logit, first on a tie) */
    float it = (float)(1.0 / (double)g->tau[s]), cf = g->cfg[s], cu = (float)(1.0 - (double)g->cfg[s]);
    float *codes = ada + (size_t)R * 2 * C, *next = codes + (size_t)d * ((size_t)l + (size_t)H * W);
    for (int b = 0; b < B; b++) {
        uint8_t *bb = bits + (size_t)b * l * d;
        for (int t = 0; t < l; t++)
            for (int j = 0; j < d; j++) {
                float lg[2];
                for (int k = 0; k < 2; k++) {
                    size_t e = ((size_t)b * l + t) * V + 2 * (size_t)j + k;
                    float a = raw[e] * it;
                    lg[k] = g->guided ? cf * a + cu * (raw[e + (size_t)B * l * V] * it) : a;
                    if (logits)
                        logits[e] = lg[k];
                }
                uint64_t sw[2 * VS_RT_SAMPLE_SCRATCH_WORDS(2)];
                vs_rt_sample_scratch ss = {sw};
                float u = g->top_k == 1 ? 0.0f : vs_philox_uniform(g->seeds[b], s, t * d + j);
                bb[(size_t)t * d + j] = (uint8_t)vs_rt_sample_token(lg, 2, g->top_k, g->top_p, u, &ss);
            }
        float *sum = g->summed + (size_t)b * d * H * W;
        vs_rt_bsq_feedback(bb, h, w, d, sum, H, W, next, hn, wn, codes);
        if (!last) /* the next input, the same for both branches */
            for (int r = b; r < R; r += B)
                linear(x + (size_t)r * hn * wn * C, next, m->word_w, m->word_b, hn * wn, d, C);
    }
    free(buf);
    g->scale++;
    return s;
}

const float *vs_rt_infinity_gen_latent(const vs_rt_infinity_gen *g, int b)
{
    const vs_rt_infinity_config *c = &g->m->cfg;
    return g->summed + (size_t)b * c->d * c->hw[c->n_scales - 1][0] * c->hw[c->n_scales - 1][1];
}
