/* runtime/t5.c — see t5.h. The linears of all n·len positions are one OpenBLAS sgemm each
 * (row-major X · Wᵀ, the weights as PyTorch stores them, [out][in]); attention runs per
 * (sequence, head) over that sequence's valid keys as two sgemms around a row softmax, a block of
 * queries at a time, the bias looked up from a table of every offset the length allows. Norm
 * statistics are summed in double, softmax in float. */
#include "runtime/t5.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/safetensors.h"
#include "runtime/t5_tok.h"

/* ---- loading ------------------------------------------------------------------------------------ */

static vs_status cfg_string(const cJSON *o, const char *key, const char *want, vs_err *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v) || strcmp(v->valuestring, want) != 0)
        return vs_err_set(err, VS_ERR_INVALID,
                          "config field '%s' must be \"%s\" (got %s%s%s): only the gated-GELU T5 encoder "
                          "(T5 v1.1, flan-t5) is supported",
                          key, want, cJSON_IsString(v) ? "\"" : "", cJSON_IsString(v) ? v->valuestring : "nothing",
                          cJSON_IsString(v) ? "\"" : "");
    return VS_OK;
}

static vs_status parse_config(const char *json, vs_rt_t5_config *c, vs_err *err)
{
    cJSON *o = cJSON_ParseWithLengthOpts(json, strlen(json), NULL, 0);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return vs_err_set(err, VS_ERR_INVALID, "metadata 'config' is not a JSON object (T5's config.json)");
    }
    vs_status st = VS_OK;
    if ((st = cfg_string(o, "feed_forward_proj", "gated-gelu", err)) != VS_OK ||
        (st = cfg_string(o, "dense_act_fn", "gelu_new", err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "d_model", 1, 16384, &c->d_model, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "d_kv", 1, 1024, &c->d_kv, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "num_heads", 1, 256, &c->num_heads, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "d_ff", 1, 65536, &c->d_ff, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "num_layers", 1, 128, &c->num_layers, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "vocab_size", 1, 1000000, &c->vocab_size, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "relative_attention_num_buckets", 2, 1024, &c->rel_buckets, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "relative_attention_max_distance", 1, 1 << 20, &c->rel_max_distance, err)) !=
            VS_OK ||
        (st = vs_st_cfg_num(o, "layer_norm_epsilon", 0.0, 1.0, &c->eps, err)) != VS_OK) {
        cJSON_Delete(o);
        return st;
    }
    cJSON_Delete(o);
    /* the log-scale buckets need max_exact = buckets / 4 ≥ 1 below max_distance */
    if (c->rel_buckets % 2 != 0 || c->rel_buckets < 4 || c->rel_max_distance <= c->rel_buckets / 4)
        return vs_err_set(err, VS_ERR_INVALID,
                          "config: relative_attention_num_buckets (%d) must be even and >= 4, and "
                          "relative_attention_max_distance (%d) above a quarter of it",
                          c->rel_buckets, c->rel_max_distance);
    return VS_OK;
}

static int expectations(vs_rt_t5 *t, vs_st_expects *l)
{
    const vs_rt_t5_config *c = &t->cfg;
    long D = c->d_model, HK = (long)c->num_heads * c->d_kv, F = c->d_ff;
    VS_ST_WANT(&t->embed, VS_ST_SHAPE(c->vocab_size, D), "shared.weight");
    VS_ST_WANT(&t->final_norm, VS_ST_SHAPE(D), "encoder.final_layer_norm.weight");
    VS_ST_WANT(&t->rel_bias, VS_ST_SHAPE(c->rel_buckets, c->num_heads),
         "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
    for (int i = 0; i < c->num_layers; i++) {
        vs_rt_t5_block_w *b = &t->blocks[i];
        const char *pre = "encoder.block";
        VS_ST_WANT(&b->attn_norm, VS_ST_SHAPE(D), "%s.%d.layer.0.layer_norm.weight", pre, i);
        VS_ST_WANT(&b->q, VS_ST_SHAPE(HK, D), "%s.%d.layer.0.SelfAttention.q.weight", pre, i);
        VS_ST_WANT(&b->k, VS_ST_SHAPE(HK, D), "%s.%d.layer.0.SelfAttention.k.weight", pre, i);
        VS_ST_WANT(&b->v, VS_ST_SHAPE(HK, D), "%s.%d.layer.0.SelfAttention.v.weight", pre, i);
        VS_ST_WANT(&b->o, VS_ST_SHAPE(D, HK), "%s.%d.layer.0.SelfAttention.o.weight", pre, i);
        VS_ST_WANT(&b->ff_norm, VS_ST_SHAPE(D), "%s.%d.layer.1.layer_norm.weight", pre, i);
        VS_ST_WANT(&b->wi0, VS_ST_SHAPE(F, D), "%s.%d.layer.1.DenseReluDense.wi_0.weight", pre, i);
        VS_ST_WANT(&b->wi1, VS_ST_SHAPE(F, D), "%s.%d.layer.1.DenseReluDense.wi_1.weight", pre, i);
        VS_ST_WANT(&b->wo, VS_ST_SHAPE(D, F), "%s.%d.layer.1.DenseReluDense.wo.weight", pre, i);
    }
    return 0;
}

vs_status vs_rt_t5_load(const char *path, vs_rt_t5 **out, vs_err *err)
{
    vs_st_file f;
    vs_status st = vs_st_open(&f, path, err);
    if (st != VS_OK)
        return st;
    vs_st_expects l = {0};
    vs_rt_t5 *t = calloc(1, sizeof *t);
    if (!t) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    const cJSON *cfg = f.meta ? cJSON_GetObjectItemCaseSensitive(f.meta, "config") : NULL;
    if (!cJSON_IsString(cfg)) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "T5 file '%s' has no metadata 'config' (the model's config.json as a JSON string)", path);
        goto fail;
    }
    if ((st = parse_config(cfg->valuestring, &t->cfg, err)) != VS_OK)
        goto fail;
    t->blocks = calloc((size_t)t->cfg.num_layers, sizeof *t->blocks);
    if (!t->blocks || expectations(t, &l) != 0) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    vs_st_loaded ld;
    if ((st = vs_st_load(&f, &l, 0, "(save the encoder with torch_dtype float32, float16 or bfloat16)", &ld,
                         err)) != VS_OK)
        goto fail;
    t->data = ld.data;
    t->data_bytes = ld.bytes;
    t->n_params = ld.n_params;
    t->has_checksum = ld.has_checksum;
    *out = t;
    t = NULL;
fail:
    free(l.v);
    vs_st_close(&f);
    vs_rt_t5_free(t);
    return st;
}

void vs_rt_t5_free(vs_rt_t5 *t)
{
    if (!t)
        return;
    free(t->data);
    free(t->blocks);
    free(t);
}

/* ---- the encoder -------------------------------------------------------------------------------- */

/* Hugging Face's _relative_position_bucket(bidirectional=True), its log in FP32 as the reference
 * computes it on FP32 tensors. */
int vs_rt_t5_bucket(const vs_rt_t5_config *c, int rel)
{
    int half = c->rel_buckets / 2, max_exact = half / 2;
    int bucket = rel > 0 ? half : 0, a = rel < 0 ? -rel : rel;
    if (a < max_exact)
        return bucket + a;
    float big = logf((float)a / (float)max_exact) /
                (float)log((double)c->rel_max_distance / (double)max_exact) * (float)(half - max_exact);
    int large = max_exact + (int)big; /* big ≥ 0 and below half·log2(a): no overflow */
    return bucket + (large < half - 1 ? large : half - 1);
}

#define ATT_CHUNK 128 /* queries a block of attention scores holds */

/* y[r] = w · x[r] / √(mean x[r]² + eps), r < rows */
static void rms_norm(float *y, const float *x, const float *w, int rows, int d, double eps)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * d;
        float *yr = y + (size_t)r * d;
        double ss = 0;
        for (int i = 0; i < d; i++)
            ss += (double)xr[i] * xr[i];
        float inv = (float)(1.0 / sqrt(ss / d + eps));
        for (int i = 0; i < d; i++)
            yr[i] = w[i] * (xr[i] * inv);
    }
}

/* y [rows][out] = x [rows][in] · wᵀ, w [out][in] */
static void linear(float *y, const float *x, const float *w, int rows, int in, int out)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
}

vs_status vs_rt_t5_encode(const vs_rt_t5 *t, const int32_t *ids, const int *lens, int n, int len, float *out,
                          vs_err *err)
{
    const vs_rt_t5_config *c = &t->cfg;
    if (n < 1 || len < 1 || len > 1 << 16)
        return vs_err_set(err, VS_ERR_INVALID, "T5 encode: %d sequences of %d positions (need 1.. and 1..65536)",
                          n, len);
    for (int s = 0; s < n; s++) {
        if (lens[s] < 1 || lens[s] > len)
            return vs_err_set(err, VS_ERR_INVALID, "T5 encode: sequence %d has %d tokens of %d positions", s,
                              lens[s], len);
        for (int i = 0; i < len; i++)
            if (ids[(size_t)s * len + i] < 0 || ids[(size_t)s * len + i] >= c->vocab_size)
                return vs_err_set(err, VS_ERR_INVALID, "T5 encode: token id %d at sequence %d position %d is "
                                  "outside the vocabulary (0..%d)", ids[(size_t)s * len + i], s, i,
                                  c->vocab_size - 1);
    }
    int D = c->d_model, H = c->num_heads, dk = c->d_kv, HK = H * dk, F = c->d_ff;
    size_t T = (size_t)n * len, offs = 2 * (size_t)len - 1;
    float *xn = malloc(T * (size_t)D * sizeof(float));
    float *qkv = malloc(T * 3 * (size_t)HK * sizeof(float));
    float *att = malloc(T * (size_t)HK * sizeof(float));
    float *ff = malloc(T * 2 * (size_t)F * sizeof(float));
    float *tmp = malloc(T * (size_t)D * sizeof(float));
    float *bias = malloc((size_t)H * offs * sizeof(float)); /* [h][key − query + len − 1] */
    float *p = malloc((size_t)ATT_CHUNK * len * sizeof(float)); /* a block of queries' scores */
    vs_status st = VS_OK;
    if (!xn || !qkv || !att || !ff || !tmp || !bias || !p) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory for the T5 encoder's activations (%zu positions)", T);
        goto done;
    }
    for (size_t o = 0; o < offs; o++) {
        int b = vs_rt_t5_bucket(c, (int)o - (len - 1));
        for (int h = 0; h < H; h++)
            bias[(size_t)h * offs + o] = t->rel_bias[(size_t)b * H + h];
    }
    float *x = out; /* the residual stream lives in the output */
    for (size_t r = 0; r < T; r++)
        memcpy(x + r * D, t->embed + (size_t)ids[r] * D, (size_t)D * sizeof(float));
    float *q = qkv, *k = qkv + T * HK, *v = qkv + 2 * T * HK;
    for (int l = 0; l < c->num_layers; l++) {
        const vs_rt_t5_block_w *b = &t->blocks[l];
        rms_norm(xn, x, b->attn_norm, (int)T, D, c->eps);
        linear(q, xn, b->q, (int)T, D, HK);
        linear(k, xn, b->k, (int)T, D, HK);
        linear(v, xn, b->v, (int)T, D, HK);
        for (int s = 0; s < n; s++) { /* per (sequence, head): S = Q·Kᵀ + bias, row softmax, S·V */
            size_t r0 = (size_t)s * len;
            int nk = lens[s];
            for (int h = 0; h < H; h++) {
                const float *bh = bias + (size_t)h * offs;
                for (int i0 = 0; i0 < len; i0 += ATT_CHUNK) {
                    int m = len - i0 < ATT_CHUNK ? len - i0 : ATT_CHUNK;
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, dk, 1.0f,
                                q + (r0 + i0) * HK + (size_t)h * dk, HK, k + r0 * HK + (size_t)h * dk, HK, 0.0f, p,
                                nk);
                    for (int i = 0; i < m; i++) {
                        float *pi = p + (size_t)i * nk, mx = -INFINITY, sum = 0.0f;
                        for (int j = 0; j < nk; j++) {
                            pi[j] += bh[j - (i0 + i) + len - 1];
                            mx = pi[j] > mx ? pi[j] : mx;
                        }
                        for (int j = 0; j < nk; j++) {
                            pi[j] = expf(pi[j] - mx);
                            sum += pi[j];
                        }
                        for (int j = 0; j < nk; j++)
                            pi[j] /= sum;
                    }
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, dk, nk, 1.0f, p, nk,
                                v + r0 * HK + (size_t)h * dk, HK, 0.0f, att + (r0 + i0) * HK + (size_t)h * dk, HK);
                }
            }
        }
        linear(tmp, att, b->o, (int)T, HK, D);
        for (size_t e = 0; e < T * D; e++)
            x[e] += tmp[e];
        rms_norm(xn, x, b->ff_norm, (int)T, D, c->eps);
        float *g = ff, *u = ff + T * F;
        linear(g, xn, b->wi0, (int)T, D, F);
        linear(u, xn, b->wi1, (int)T, D, F);
        for (size_t e = 0; e < T * F; e++) {
            float a = g[e];
            /* gelu_new: 0.5·a·(1 + tanh(√(2/π)·(a + 0.044715·a³))) */
            g[e] = 0.5f * a * (1.0f + tanhf(0.7978845608028654f * (a + 0.044715f * a * a * a))) * u[e];
        }
        linear(tmp, g, b->wo, (int)T, F, D);
        for (size_t e = 0; e < T * D; e++)
            x[e] += tmp[e];
    }
    rms_norm(tmp, x, t->final_norm, (int)T, D, c->eps);
    memcpy(out, tmp, T * (size_t)D * sizeof(float));
done:
    free(xn);
    free(qkv);
    free(att);
    free(ff);
    free(tmp);
    free(bias);
    free(p);
    return st;
}

vs_status vs_rt_t5_encode_prompts(const vs_rt_t5 *t, const vs_rt_t5_tok *tok, const char *const *prompts, int n,
                                  int max_len, float **text, int *lens, vs_err *err)
{
    *text = NULL;
    if (n < 1 || max_len < 1)
        return vs_err_set(err, VS_ERR_INVALID, "T5: %d prompts of %d positions (1.. each)", n, max_len);
    int D = t->cfg.d_model;
    int32_t *ids = malloc((size_t)n * max_len * sizeof *ids);
    float *hid = malloc((size_t)n * max_len * D * sizeof(float));
    vs_status st = VS_OK;
    if (!ids || !hid) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory encoding %d prompts", n);
        goto done;
    }
    for (int i = 0; i < n; i++)
        if ((st = vs_rt_t5_tokenize(tok, prompts[i], strlen(prompts[i]), max_len, ids + (size_t)i * max_len, &lens[i],
                                    err)) != VS_OK) {
            vs_err_wrap(err, "prompt %d", i);
            goto done;
        }
    if ((st = vs_rt_t5_encode(t, ids, lens, n, max_len, hid, err)) != VS_OK)
        goto done;
    size_t rows = 0;
    for (int i = 0; i < n; i++)
        rows += (size_t)lens[i];
    if (!(*text = malloc(rows * D * sizeof(float)))) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory for %zu text rows", rows);
        goto done;
    }
    for (int i = 0, at = 0; i < n; at += lens[i++])
        memcpy(*text + (size_t)at * D, hid + (size_t)i * max_len * D, (size_t)lens[i] * D * sizeof(float));
done:
    free(ids);
    free(hid);
    return st;
}
