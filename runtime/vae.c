/* runtime/vae.c — the decoder of docs/ALGORITHMS.md §1.7 over backend ops.
 *
 * Four activation buffers (x, a, b, s) of the largest C·H·W, plus qkv for the attention blocks.
 * visit_decoder lists the decode's convolutions and attentions (for the backend's reserve and its
 * decoder_weights precision); it mirrors vs_rt_vae_decode. ResBlock: a = GN+SiLU(x); b = conv1(a); a = GN+SiLU(b); b = conv2(a); b += nin(x) or x; swap. */
#include "runtime/vae.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct vs_rt_vae {
    const vs_rt_model *m;
    vs_rt_backend *be;
    vs_rt_weights w;
    float *x, *a, *b, *s, *qkv; /* backend */
    float *host;                /* [3][H][W] */
};

#define VBE (v->be->ops)

vs_status vs_rt_vae_new(const vs_rt_model *m, vs_rt_backend *be, const vs_rt_weights *w, int batch,
                        vs_rt_vae **out, vs_err *err)
{
    const vs_rt_config *c = &m->cfg;
    (void)batch;
    vs_rt_vae *v = calloc(1, sizeof *v);
    if (!v)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    v->m = m;
    v->be = be;
    v->w = *w;
    int nl = c->n_levels, P = c->patch_nums[c->n_scales - 1];
    size_t mx = (size_t)c->z_channels * P * P;
    for (int lv = nl - 1; lv >= 0; lv--) {
        size_t res = (size_t)P << (nl - 1 - lv);
        int in_ch = c->vae_ch * (lv == nl - 1 ? c->vae_ch_mult[nl - 1] : c->vae_ch_mult[lv + 1]);
        int out_ch = c->vae_ch * c->vae_ch_mult[lv];
        size_t need = (size_t)(in_ch > out_ch ? in_ch : out_ch) * res * res;
        if (need > mx)
            mx = need;
        if (lv > 0) { /* upsampled map before the next level's first conv */
            size_t up = (size_t)out_ch * 4 * res * res;
            if (up > mx)
                mx = up;
        }
    }
    size_t top = (size_t)c->vae_ch * c->vae_ch_mult[nl - 1] * P * P;
    size_t img = (size_t)3 * c->image_size * c->image_size;
    if (img > mx)
        mx = img;
    v->x = VBE->alloc(be, mx * 4);
    v->a = VBE->alloc(be, mx * 4);
    v->b = VBE->alloc(be, mx * 4);
    v->s = VBE->alloc(be, mx * 4);
    v->qkv = VBE->alloc(be, 3 * top * 4);
    v->host = malloc(img * 4);
    if (!v->x || !v->a || !v->b || !v->s || !v->qkv || !v->host) {
        vs_rt_vae_free(v);
        return vs_err_set(err, VS_ERR_NOMEM, "cannot allocate decoder buffers (%.1f MB)",
                          (double)mx * 16 / 1e6);
    }
    *out = v;
    return VS_OK;
}

void vs_rt_vae_free(vs_rt_vae *v)
{
    if (!v)
        return;
    float *bufs[] = {v->x, v->a, v->b, v->s, v->qkv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            VBE->free(v->be, bufs[i]);
    free(v->host);
    free(v);
}

static void swap(float **p, float **q)
{
    float *t = *p;
    *p = *q;
    *q = t;
}

static void conv(vs_rt_vae *v, float *y, const float *x, const vs_rt_conv_w *c, int H, int W)
{
    VBE->conv2d(v->be, y, x, c->w, c->b, 1, c->cin, H, W, c->cout, c->k);
}

static void resblock(vs_rt_vae *v, const vs_rt_resblock_w *r, int H, int W)
{
    int HW = H * W;
    VBE->group_norm(v->be, v->a, v->x, r->norm1.w, r->norm1.b, 1, r->norm1.c, HW, 32, 1e-6f, 1);
    conv(v, v->b, v->a, &r->conv1, H, W);
    VBE->group_norm(v->be, v->a, v->b, r->norm2.w, r->norm2.b, 1, r->norm2.c, HW, 32, 1e-6f, 1);
    conv(v, v->b, v->a, &r->conv2, H, W);
    if (r->nin.w) {
        conv(v, v->s, v->x, &r->nin, H, W);
        VBE->add(v->be, v->b, v->s, (size_t)r->conv2.cout * HW);
    } else {
        VBE->add(v->be, v->b, v->x, (size_t)r->conv2.cout * HW);
    }
    swap(&v->x, &v->b);
}

static void attnblock(vs_rt_vae *v, const vs_rt_attnblock_w *a, int H, int W)
{
    int HW = H * W, C = a->norm.c;
    VBE->group_norm(v->be, v->a, v->x, a->norm.w, a->norm.b, 1, C, HW, 32, 1e-6f, 0);
    conv(v, v->qkv, v->a, &a->qkv, H, W);
    VBE->spatial_attention(v->be, v->a, v->qkv, 1, C, HW);
    conv(v, v->b, v->a, &a->proj, H, W);
    VBE->add(v->be, v->b, v->x, (size_t)C * HW);
    swap(&v->x, &v->b);
}

/* ---- what the decoder asks of the backend (for reserve and decoder_weights) ---------------------- */

typedef struct {
    void (*conv)(void *ctx, const vs_rt_conv_w *cw, int H, int W);
    void (*attn)(void *ctx, int C, int HW);
    void *ctx;
} visitor;

static void visit_resblock(const visitor *vi, const vs_rt_resblock_w *r, int H, int W)
{
    vi->conv(vi->ctx, &r->conv1, H, W);
    vi->conv(vi->ctx, &r->conv2, H, W);
    if (r->nin.w)
        vi->conv(vi->ctx, &r->nin, H, W);
}

static void visit_attnblock(const visitor *vi, const vs_rt_attnblock_w *a, int H, int W)
{
    vi->conv(vi->ctx, &a->qkv, H, W);
    vi->attn(vi->ctx, a->norm.c, H * W);
    vi->conv(vi->ctx, &a->proj, H, W);
}

/* Every conv2d and spatial_attention of vs_rt_vae_decode, at its resolution: keep the two alike. */
static void visit_decoder(const vs_rt_config *c, const vs_rt_weights *w, const visitor *vi)
{
    int P = c->patch_nums[c->n_scales - 1], nl = c->n_levels;
    vi->conv(vi->ctx, &w->post_quant_conv, P, P);
    vi->conv(vi->ctx, &w->conv_in, P, P);
    visit_resblock(vi, &w->mid_block1, P, P);
    visit_attnblock(vi, &w->mid_attn, P, P);
    visit_resblock(vi, &w->mid_block2, P, P);
    int res = P;
    for (int lv = nl - 1; lv >= 0; lv--) {
        const vs_rt_level_w *u = &w->up[lv];
        for (int j = 0; j < u->n_blocks; j++) {
            visit_resblock(vi, &u->block[j], res, res);
            if (u->n_attn)
                visit_attnblock(vi, &u->attn[j], res, res);
        }
        if (lv != 0) {
            res *= 2;
            vi->conv(vi->ctx, &u->upsample, res, res);
        }
    }
    vi->conv(vi->ctx, &w->conv_out, res, res);
}

static void conv_extent(void *ctx, const vs_rt_conv_w *cw, int H, int W)
{
    vs_rt_workload *wl = ctx;
    if (!cw->w || cw->k <= 1)
        return; /* 1×1 convolutions multiply in place: no im2col */
    int kk = cw->cin * cw->k * cw->k;
    wl->conv_cin_kk = kk > wl->conv_cin_kk ? kk : wl->conv_cin_kk;
    wl->conv_h = H > wl->conv_h ? H : wl->conv_h;
    wl->conv_w = W > wl->conv_w ? W : wl->conv_w;
}

static void attn_extent(void *ctx, int C, int HW)
{
    vs_rt_workload *wl = ctx;
    (void)C;
    wl->attn_hw = HW > wl->attn_hw ? HW : wl->attn_hw;
}

void vs_rt_vae_workload(const vs_rt_config *c, const vs_rt_weights *w, vs_rt_workload *wl)
{
    visitor vi = {conv_extent, attn_extent, wl};
    visit_decoder(c, w, &vi);
}

typedef struct {
    const float **out;
    int cap, n;
} weight_list;

static void conv_weight(void *ctx, const vs_rt_conv_w *cw, int H, int W)
{
    weight_list *l = ctx;
    (void)H;
    (void)W;
    if (!cw->w)
        return;
    if (l->n < l->cap)
        l->out[l->n] = cw->w;
    l->n++;
}

static void no_attn(void *ctx, int C, int HW)
{
    (void)ctx;
    (void)C;
    (void)HW;
}

int vs_rt_vae_conv_weights(const vs_rt_config *c, const vs_rt_weights *w, const float **out, int cap)
{
    weight_list l = {out, cap, 0};
    visitor vi = {conv_weight, no_attn, &l};
    visit_decoder(c, w, &vi);
    return l.n;
}

vs_status vs_rt_vae_decode(vs_rt_vae *v, const float *f_hat, uint8_t *rgb, float *unit, vs_err *err)
{
    const vs_rt_config *c = &v->m->cfg;
    const vs_rt_weights *w = &v->w;
    int P = c->patch_nums[c->n_scales - 1], nl = c->n_levels;
    conv(v, v->a, f_hat, &w->post_quant_conv, P, P);
    conv(v, v->x, v->a, &w->conv_in, P, P);
    resblock(v, &w->mid_block1, P, P);
    attnblock(v, &w->mid_attn, P, P);
    resblock(v, &w->mid_block2, P, P);
    int res = P;
    for (int lv = nl - 1; lv >= 0; lv--) {
        const vs_rt_level_w *u = &w->up[lv];
        for (int j = 0; j < u->n_blocks; j++) {
            resblock(v, &u->block[j], res, res);
            if (u->n_attn)
                attnblock(v, &u->attn[j], res, res);
        }
        if (lv != 0) {
            VBE->upsample_nearest2x(v->be, v->a, v->x, u->upsample.cin, res, res);
            res *= 2;
            conv(v, v->x, v->a, &u->upsample, res, res);
        }
    }
    int HW = res * res;
    VBE->group_norm(v->be, v->a, v->x, w->norm_out.w, w->norm_out.b, 1, w->norm_out.c, HW, 32,
                    1e-6f, 1);
    conv(v, v->b, v->a, &w->conv_out, res, res);
    VBE->to_unit(v->be, v->b, (size_t)3 * HW);
    VBE->download(v->be, v->host, v->b, (size_t)3 * HW * sizeof(float));
    vs_status st = VBE->sync(v->be, err);
    if (st != VS_OK)
        return st;
    if (unit)
        memcpy(unit, v->host, (size_t)3 * HW * sizeof(float));
    if (rgb)
        for (int i = 0; i < HW; i++)
            for (int ch = 0; ch < 3; ch++) {
                float u = v->host[(size_t)ch * HW + i]; /* in [0, 1] or NaN: to_unit passes NaN on */
                rgb[(size_t)i * 3 + ch] = (uint8_t)nearbyintf(255.0f * (u >= 0.0f ? u : 0.0f));
            }
    return VS_OK;
}
