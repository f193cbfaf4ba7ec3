/* runtime/vae.c — the decoder of docs/ALGORITHMS.md §1.7 over backend ops.
 *
 * Four activation buffers (x, a, b, s) of the largest C·H·W, plus qkv for the attention blocks,
 * each for `batch` images: the finished images of a step go through every op together ([N][C][H][W]
 * maps), so each op is one backend call (one pool dispatch, one launch) for all of them. Each op
 * computes an image's outputs with the same calls as for one image alone (conv2d: per image and
 * band), so the pixels do not depend on how many images share a decode. batch is min(max images,
 * what the budget holds, at least 1); more images decode in groups of batch. The budget is
 * DECODE_HOST_BUDGET_BYTES where backend memory is host memory (the CPU) and 1/DECODE_DEVICE_SHARE
 * of the device's memory on a device, so there every image a step finishes decodes in one group and
 * the decode's launches and syncs do not grow with the images (the start-up log states the bytes).
 * visit_decoder lists the decode's convolutions and attentions (for the backend's reserve and its
 * decoder_weights precision); it mirrors vs_rt_vae_decode. ResBlock: a = GN+SiLU(x); b = conv1(a); a = GN+SiLU(b); b = conv2(a); b += nin(x) or x; swap. */
#include "runtime/vae.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

struct vs_rt_vae {
    vs_rt_config c;
    vs_rt_backend *be;
    vs_rt_weights w;
    int batch;                  /* images per decode group: immutable after init */
    size_t budget_bytes;        /* the scratch batch was sized within (decode_budget) */
    size_t mx;                  /* floats of one image's largest map */
    float *x, *a, *b, *s, *qkv; /* backend, [batch][...] */
    float *host;                /* [batch][3][H][W] */
    vs_rt_copy *copies;         /* [batch]: the group's states into b */
};

/* CPU: scratch the decoder may take for batching (one image it always takes). Batching pays where
 * the maps are small and the ops many per pixel (the bundled model's 32×32 decoder, ~1.1 MB an
 * image: 15 at once); a 256×256 decoder (~70 MB an image) decodes one image per group, its ops
 * long enough, its maps nearer the caches (measured best there). */
#define DECODE_HOST_BUDGET_BYTES ((size_t)16 << 20)
/* A device: each launch costs the same whatever its size, so the group should hold every image a
 * step finishes; 1/16 of the device's memory holds 64 images of a 256×256 decoder (~70 MB each,
 * 4.5 GB) on an 80 GB GPU and leaves the KV pool, sized from what is free after the engine, the
 * rest. */
#define DECODE_DEVICE_SHARE 16

#define VBE (v->be->ops)

/* One image's decoder scratch, in floats: the largest map, the top level's map, the image. */
typedef struct {
    size_t mx, top, img, per_image_bytes;
} extent;

/* The bytes of scratch decode groups may take on `be` (see the file-top comment). */
static vs_status decode_budget(vs_rt_backend *be, size_t *out, vs_err *err)
{
    *out = DECODE_HOST_BUDGET_BYTES;
    if (be->host_memory || !be->ops->mem_info)
        return VS_OK;
    vs_rt_mem_info mi;
    vs_status st = be->ops->mem_info(be, &mi, err);
    if (st != VS_OK)
        return vs_err_wrap(err, "the device's memory, for the decoder's budget");
    if (mi.total / DECODE_DEVICE_SHARE > *out)
        *out = mi.total / DECODE_DEVICE_SHARE;
    return VS_OK;
}

/* Images per decode group for at most `batch` (min(batch, what budget_bytes holds), at least 1),
 * and one image's extent. */
static int group_size(const vs_rt_config *c, int batch, size_t budget_bytes, extent *x)
{
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
    size_t per_image = (4 * mx + 3 * top + img) * sizeof(float);
    size_t fit = budget_bytes / per_image;
    int nb = batch < 1 ? 1 : batch;
    if ((size_t)nb > fit)
        nb = fit > 1 ? (int)fit : 1;
    *x = (extent){mx, top, img, per_image};
    return nb;
}

vs_status vs_rt_vae_new(const vs_rt_config *c, vs_rt_backend *be, const vs_rt_weights *w, int batch,
                        vs_rt_vae **out, vs_err *err)
{
    vs_rt_vae *v = calloc(1, sizeof *v);
    if (!v)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    v->c = *c;
    v->be = be;
    v->w = *w;
    vs_status st = decode_budget(be, &v->budget_bytes, err);
    if (st != VS_OK) {
        vs_rt_vae_free(v);
        return st;
    }
    extent ex;
    int nb = group_size(c, batch, v->budget_bytes, &ex);
    size_t mx = ex.mx, top = ex.top, img = ex.img;
    v->batch = nb;
    v->mx = mx;
    size_t n = (size_t)nb;
    v->x = VBE->alloc(be, n * mx * 4);
    v->a = VBE->alloc(be, n * mx * 4);
    v->b = VBE->alloc(be, n * mx * 4);
    v->s = VBE->alloc(be, n * mx * 4);
    v->qkv = VBE->alloc(be, n * 3 * top * 4);
    v->host = malloc(n * img * 4);
    v->copies = malloc(n * sizeof *v->copies);
    if (!v->x || !v->a || !v->b || !v->s || !v->qkv || !v->host || !v->copies) {
        vs_rt_vae_free(v);
        return vs_err_set(err, VS_ERR_NOMEM,
                          "cannot allocate decoder buffers for %d images (%.1f MB)", nb,
                          (double)n * ex.per_image_bytes / 1e6);
    }
    vs_log(VS_LOG_INFO, "runtime",
           "decoder: %d of %d images per group, %.1f MB of %s memory (%.1f MB an image, budget "
           "%.0f MB)", nb, batch < 1 ? 1 : batch, (double)n * ex.per_image_bytes / 1e6,
           be->host_memory ? "host" : "device", (double)ex.per_image_bytes / 1e6,
           (double)v->budget_bytes / 1e6);
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
    free(v->copies);
    free(v);
}

static void swap(float **p, float **q)
{
    float *t = *p;
    *p = *q;
    *q = t;
}

/* Every op below runs over the N images of the group; maps are [N][C][H][W], contiguous. */
static void conv(vs_rt_vae *v, int N, float *y, const float *x, const vs_rt_conv_w *c, int H, int W)
{
    VBE->conv2d(v->be, y, x, c->w, c->b, N, c->cin, H, W, c->cout, c->k);
}

static void resblock(vs_rt_vae *v, int N, const vs_rt_resblock_w *r, int H, int W)
{
    int HW = H * W;
    VBE->group_norm(v->be, v->a, v->x, r->norm1.w, r->norm1.b, N, r->norm1.c, HW, 32, 1e-6f, 1);
    conv(v, N, v->b, v->a, &r->conv1, H, W);
    VBE->group_norm(v->be, v->a, v->b, r->norm2.w, r->norm2.b, N, r->norm2.c, HW, 32, 1e-6f, 1);
    conv(v, N, v->b, v->a, &r->conv2, H, W);
    if (r->nin.w) {
        conv(v, N, v->s, v->x, &r->nin, H, W);
        VBE->add(v->be, v->b, v->s, (size_t)N * r->conv2.cout * HW);
    } else {
        VBE->add(v->be, v->b, v->x, (size_t)N * r->conv2.cout * HW);
    }
    swap(&v->x, &v->b);
}

static void attnblock(vs_rt_vae *v, int N, const vs_rt_attnblock_w *a, int H, int W)
{
    int HW = H * W, C = a->norm.c;
    VBE->group_norm(v->be, v->a, v->x, a->norm.w, a->norm.b, N, C, HW, 32, 1e-6f, 0);
    conv(v, N, v->qkv, v->a, &a->qkv, H, W);
    VBE->spatial_attention(v->be, v->a, v->qkv, N, C, HW);
    conv(v, N, v->b, v->a, &a->proj, H, W);
    VBE->add(v->be, v->b, v->x, (size_t)N * C * HW);
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
    if (w->post_quant_conv.w)
        vi->conv(vi->ctx, &w->post_quant_conv, P, P);
    vi->conv(vi->ctx, &w->conv_in, P, P);
    visit_resblock(vi, &w->mid_block1, P, P);
    if (w->mid_attn.norm.w)
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
    if (cw->w)
        vs_rt_workload_add_conv(wl, cw->cin, cw->cout, cw->k, H, W);
}

static void attn_extent(void *ctx, int C, int HW)
{
    vs_rt_workload *wl = ctx;
    (void)C;
    wl->attn_hw = HW > wl->attn_hw ? HW : wl->attn_hw;
}

void vs_rt_vae_workload(const vs_rt_vae *v, vs_rt_workload *wl)
{
    wl->decode_images = v->batch > wl->decode_images ? v->batch : wl->decode_images;
    wl->copies = v->batch > wl->copies ? v->batch : wl->copies;
    visitor vi = {conv_extent, attn_extent, wl};
    visit_decoder(&v->c, &v->w, &vi);
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

/* One group of N ≤ v->batch images. */
static vs_status decode_group(vs_rt_vae *v, const float *const *f_hat, int N, uint8_t *const *rgb,
                              float *const *unit, vs_err *err)
{
    const vs_rt_config *c = &v->c;
    const vs_rt_weights *w = &v->w;
    int P = c->patch_nums[c->n_scales - 1], nl = c->n_levels;
    size_t fsz = (size_t)c->z_channels * P * P;
    for (int i = 0; i < N; i++) /* the images' states are not adjacent: gather them, one op */
        v->copies[i] = (vs_rt_copy){v->b + (size_t)i * fsz, f_hat[i], fsz * sizeof(float)};
    VBE->copy_many(v->be, v->copies, N);
    if (w->post_quant_conv.w) { /* VAR's VQ-VAE */
        conv(v, N, v->a, v->b, &w->post_quant_conv, P, P);
        conv(v, N, v->x, v->a, &w->conv_in, P, P);
    } else {
        conv(v, N, v->x, v->b, &w->conv_in, P, P);
    }
    resblock(v, N, &w->mid_block1, P, P);
    if (w->mid_attn.norm.w)
        attnblock(v, N, &w->mid_attn, P, P);
    resblock(v, N, &w->mid_block2, P, P);
    int res = P;
    for (int lv = nl - 1; lv >= 0; lv--) {
        const vs_rt_level_w *u = &w->up[lv];
        for (int j = 0; j < u->n_blocks; j++) {
            resblock(v, N, &u->block[j], res, res);
            if (u->n_attn)
                attnblock(v, N, &u->attn[j], res, res);
        }
        if (lv != 0) {
            VBE->upsample_nearest2x(v->be, v->a, v->x, N * u->upsample.cin, res, res);
            res *= 2;
            conv(v, N, v->x, v->a, &u->upsample, res, res);
        }
    }
    int HW = res * res;
    size_t img = (size_t)3 * HW;
    VBE->group_norm(v->be, v->a, v->x, w->norm_out.w, w->norm_out.b, N, w->norm_out.c, HW, 32,
                    1e-6f, 1);
    conv(v, N, v->b, v->a, &w->conv_out, res, res);
    VBE->to_unit(v->be, v->b, (size_t)N * img);
    VBE->download(v->be, v->host, v->b, (size_t)N * img * sizeof(float));
    vs_status st = VBE->sync(v->be, err);
    if (st != VS_OK)
        return st;
    for (int n = 0; n < N; n++) {
        const float *h = v->host + (size_t)n * img;
        if (unit && unit[n])
            memcpy(unit[n], h, img * sizeof(float));
        if (rgb && rgb[n])
            for (int i = 0; i < HW; i++)
                for (int ch = 0; ch < 3; ch++) {
                    float u = h[(size_t)ch * HW + i]; /* in [0, 1] or NaN: to_unit passes NaN on */
                    rgb[n][(size_t)i * 3 + ch] = (uint8_t)nearbyintf(255.0f * (u >= 0.0f ? u : 0.0f));
                }
    }
    return VS_OK;
}

vs_status vs_rt_vae_decode(vs_rt_vae *v, const float *const *f_hat, int n, uint8_t *const *rgb,
                           float *const *unit, vs_err *err)
{
    for (int i = 0; i < n; i += v->batch) {
        int g = n - i < v->batch ? n - i : v->batch;
        vs_status st = decode_group(v, f_hat + i, g, rgb ? rgb + i : NULL, unit ? unit + i : NULL, err);
        if (st != VS_OK)
            return st;
    }
    return VS_OK;
}

