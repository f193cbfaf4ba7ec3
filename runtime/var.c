/* runtime/var.c — the VAR transformer step over a ragged batch, guidance, sampling, quantiser.
 *
 * Scratch is sized once for max_images images all at the largest scale, and so is the backend's
 * own scratch (reserve(), from engine_workload and the decoder's vs_rt_vae_workload), and the
 * state (f_hat, next input) of max_images images: neither a step, nor a decode, nor starting an
 * image within that many allocates backend memory. Token layout of a step: rows in order (image 0
 * cond, image 0 uncond, image 1 cond, …), each row's p_s² tokens contiguous.
 *
 * Work that is per image (the quantiser, the scale-0 class and start-position rows) is issued once
 * per group of the step's images at the same scale, so a step's backend calls grow with its
 * distinct scales, not with its images: the group's states are copied into [G][...] scratch and
 * back, and each image's next input into its step rows, by one copy_many each (one launch on a
 * device, however many images). Each op computes an image's values as it would for
 * that image alone, so tokens do not depend on the grouping. Engine thread only. */
#include "runtime/var.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/vae.h"

struct vs_rt_engine {
    const vs_rt_model *m;
    vs_rt_backend *be;
    vs_rt_weights w;         /* pointers valid on the backend */
    vs_rt_block_w *blocks;   /* [depth] when rebased (device copy), else NULL */
    float *wdata;            /* device copy of the weights, or NULL when used in place */
    int max_images, max_rows, max_tok;
    float *kv_base;
    int page_tokens;
    /* backend scratch */
    float *x, *xn, *tmp, *qkv, *attn, *ffn, *logits, *gin; /* [T][...] */
    float *cond, *csilu, *smod, *hmod;                    /* [R][...] */
    float *mod;             /* [2][R][6C]: layer l's AdaLN in mod + (l % 2)·R·6C (a layer's last
                             * gated_add runs fused with the next layer's first adaln) */
    float *q_h, *q_up, *q_conv, *q_down, *q_f;            /* quantiser, [max_images][Cvae·P²] */
    float *img_mem;         /* the state of max_images images: [max_images][2][Cvae·P²] */
    int *img_free, n_img_free; /* its free slots */
    /* host scratch */
    int32_t *tok_row, *idx; /* [max_tok] */
    vs_rt_copy *copies;     /* [2·max_images]: one copy_many list (two rows an image at most) */
    uint8_t *kv_store;      /* [max_rows] see vs_rt_batch */
    vs_rt_row *rows;        /* [max_rows] */
    vs_rt_sample_req *reqs; /* [max_images] */
    vs_rt_image **group;    /* [max_images] the images of one scale in a step */
    const float **dec_fhat; /* [max_images] the f_hat of each image a decode is given */
    vs_rt_vae *vae;
};

#define BE (e->be->ops)

float vs_rt_guidance(const vs_rt_config *c, float cfg, int s)
{
    return cfg * (float)s / (float)(c->n_scales - 1);
}

/* Tells the backend which weights are GEMM matrices (a BF16 backend keeps a copy of each):
 * AdaLN projections, qkv, proj, fc1, fc2, the head's AdaLN and the head; and fc1's bias, the
 * bias of the one linear whose output is a GEMM input (declare_gemm_inputs). 0, or -1 when out of
 * host memory. */
static int declare_gemm_weights(vs_rt_engine *e)
{
    const vs_rt_config *c = &e->m->cfg;
    size_t C = (size_t)c->embed_dim, F = (size_t)c->ffn_dim, V = (size_t)c->vocab_size;
    int cap = 6 * c->depth + 3, k = 0;
    const float **w = malloc((size_t)cap * sizeof *w);
    size_t *n = malloc((size_t)cap * sizeof *n);
    if (!w || !n) {
        free(w);
        free(n);
        return -1;
    }
#define DECLARE(ptr, floats) (w[k] = (ptr), n[k] = (floats), k += (ptr) != NULL)
    DECLARE(e->w.shared_ada_w, 6 * C * C);
    for (int l = 0; l < c->depth; l++) {
        const vs_rt_block_w *bw = &e->w.blocks[l];
        DECLARE(bw->ada_w, 6 * C * C);
        DECLARE(bw->qkv_w, 3 * C * C);
        DECLARE(bw->proj_w, C * C);
        DECLARE(bw->fc1_w, F * C);
        DECLARE(bw->fc1_b, F);
        DECLARE(bw->fc2_w, C * F);
    }
    DECLARE(e->w.head_nm_w, 2 * C * C);
    DECLARE(e->w.head_w, V * C);
#undef DECLARE
    BE->gemm_weights(e->be, e->wdata, w, n, k);
    free(w);
    free(n);
    return 0;
}

/* Tells the backend which scratch buffers only feed the declared GEMMs (backend.h, gemm_inputs;
 * a BF16 backend keeps them in BF16, so no linear converts its x): csilu (written by silu, read by
 * the AdaLN projections), xn (adaln; qkv, fc1, the head), attn (attention; proj) and ffn (fc1;
 * fc2). The FP32 residual stream x and everything else stay floats. */
static void declare_gemm_inputs(vs_rt_engine *e)
{
    const vs_rt_config *c = &e->m->cfg;
    size_t T = (size_t)e->max_tok, R = (size_t)e->max_rows, C = (size_t)c->embed_dim;
    const float *a[] = {e->csilu, e->xn, e->attn, e->ffn};
    size_t n[] = {R * C, T * C, T * C, T * (size_t)c->ffn_dim};
    BE->gemm_inputs(e->be, a, n, 4);
}

/* Tells the backend which conv2d weights are the decoder's (it may multiply them at reduced
 * precision); the quantiser's φ convolutions are not among them. 0, or -1 when out of memory. */
static int declare_decoder_weights(vs_rt_engine *e)
{
    const vs_rt_config *c = &e->m->cfg;
    int n = vs_rt_vae_conv_weights(c, &e->w, NULL, 0);
    const float **w = malloc((size_t)(n > 0 ? n : 1) * sizeof *w);
    if (!w)
        return -1;
    vs_rt_vae_conv_weights(c, &e->w, w, n);
    BE->decoder_weights(e->be, e->wdata, w, n);
    free(w);
    return 0;
}

/* The largest work of a step of max_images images (every row at the last scale, holding every
 * token), of the quantiser and of the decoder: what the backend reserves its scratch for. */
static void engine_workload(const vs_rt_engine *e, vs_rt_workload *wl)
{
    const vs_rt_config *c = &e->m->cfg;
    int S = c->n_scales, P = c->patch_nums[S - 1], P2 = P * P;
    memset(wl, 0, sizeof *wl);
    wl->rows = e->max_rows;
    wl->tokens = e->max_tok;
    wl->kv_tokens = c->scale_offset[S];
    wl->kv_heads = c->num_heads;
    wl->layers = c->depth;
    /* index lists: the step's tokens (lvl_pos), the scale-0 images' two rows (class and
     * pos_start), every image's codes of a scale, a class per row: none longer than the step's
     * tokens */
    wl->index = e->max_tok;
    wl->copies = 2 * e->max_images; /* the step's inputs: two rows an image */
    /* the declared linears' inputs: none to convert when they are GEMM inputs the backend holds
     * (declare_gemm_inputs), else up to fc2's */
    size_t K = (size_t)c->ffn_dim > (size_t)c->embed_dim ? (size_t)c->ffn_dim : (size_t)c->embed_dim;
    wl->linear_in = BE->gemm_inputs ? 0 : (size_t)e->max_tok * K;
    wl->sample_reqs = e->max_images;
    wl->sample_tokens = e->max_images * P2;
    wl->vocab = c->vocab_size;
    wl->decode_images = e->max_images; /* the quantiser's φ takes a scale's images at once */
    for (int s = 0; s < S; s++) { /* the quantiser's φ, at P×P */
        const vs_rt_conv_w *phi = &e->w.phi[vs_rt_phi_index(c, s)];
        if (phi->w)
            vs_rt_workload_add_conv(wl, phi->cin, phi->cout, phi->k, P, P);
    }
    vs_rt_vae_workload(e->vae, wl); /* one decode group of the step's images */
}

static void *balloc(vs_rt_engine *e, size_t floats, int *fail)
{
    void *p = BE->alloc(e->be, floats * sizeof(float));
    if (!p)
        *fail = 1;
    return p;
}

vs_status vs_rt_engine_new(const vs_rt_model *m, vs_rt_backend *be, int max_images,
                           vs_rt_engine **out, vs_err *err)
{
    const vs_rt_config *c = &m->cfg;
    if (max_images < 1 || max_images > 4096)
        return vs_err_set(err, VS_ERR_INVALID, "max images per step must be 1..4096 (got %d)",
                          max_images);
    vs_rt_engine *e = calloc(1, sizeof *e);
    if (!e)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    e->m = m;
    e->be = be;
    e->max_images = max_images;
    e->max_rows = 2 * max_images;
    int pmax = c->patch_nums[c->n_scales - 1], P2 = pmax * pmax;
    e->max_tok = e->max_rows * P2;
    if (be->host_memory) {
        e->w = m->w;
    } else {
        e->wdata = BE->alloc(be, m->data_bytes);
        e->blocks = calloc((size_t)c->depth, sizeof *e->blocks);
        if (!e->wdata || !e->blocks) {
            vs_rt_engine_free(e);
            return vs_err_set(err, VS_ERR_NOMEM,
                              "cannot place the model's %.1f MB of weights on the %s backend",
                              (double)m->data_bytes / 1e6, be->ops->name);
        }
        BE->upload(be, e->wdata, m->data, m->data_bytes);
        vs_rt_model_rebase(m, e->wdata, &e->w, e->blocks);
        if ((BE->gemm_weights && declare_gemm_weights(e) != 0) ||
            (BE->decoder_weights && declare_decoder_weights(e) != 0)) {
            vs_rt_engine_free(e);
            return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
        }
    }
    size_t T = (size_t)e->max_tok, R = (size_t)e->max_rows, C = (size_t)c->embed_dim;
    size_t Cv = (size_t)c->z_channels;
    int fail = 0;
    e->x = balloc(e, T * C, &fail);
    e->xn = balloc(e, T * C, &fail);
    e->tmp = balloc(e, T * C, &fail);
    e->attn = balloc(e, T * C, &fail);
    e->qkv = balloc(e, T * 3 * C, &fail);
    e->ffn = balloc(e, T * (size_t)c->ffn_dim, &fail);
    e->logits = balloc(e, T * (size_t)c->vocab_size, &fail);
    e->gin = balloc(e, T * Cv, &fail);
    e->cond = balloc(e, R * C, &fail);
    e->csilu = balloc(e, R * C, &fail);
    e->mod = balloc(e, 2 * R * 6 * C, &fail);
    e->smod = balloc(e, R * 6 * C, &fail);
    e->hmod = balloc(e, R * 2 * C, &fail);
    size_t Q = (size_t)max_images * Cv * P2;
    e->q_h = balloc(e, Q, &fail);
    e->q_up = balloc(e, Q, &fail);
    e->q_conv = balloc(e, Q, &fail);
    e->q_down = balloc(e, Q, &fail);
    e->q_f = balloc(e, Q, &fail);
    e->img_mem = balloc(e, (size_t)max_images * 2 * Cv * P2, &fail);
    e->img_free = malloc((size_t)max_images * sizeof *e->img_free);
    if (e->img_free)
        for (int i = max_images - 1; i >= 0; i--)
            e->img_free[e->n_img_free++] = i;
    e->tok_row = malloc(T * sizeof *e->tok_row);
    e->idx = malloc(T * sizeof *e->idx);
    e->copies = malloc((size_t)2 * max_images * sizeof *e->copies);
    e->rows = malloc(R * sizeof *e->rows);
    e->kv_store = malloc(R);
    e->reqs = malloc((size_t)max_images * sizeof *e->reqs);
    e->group = malloc((size_t)max_images * sizeof *e->group);
    e->dec_fhat = malloc((size_t)max_images * sizeof *e->dec_fhat);
    if (fail || !e->img_free || !e->tok_row || !e->idx || !e->copies || !e->rows || !e->kv_store || !e->reqs ||
        !e->group || !e->dec_fhat) {
        double mb = (double)T * (C * 5 + 3 * C + (size_t)c->ffn_dim + (size_t)c->vocab_size) * 4 / 1e6;
        vs_rt_engine_free(e);
        return vs_err_set(err, VS_ERR_NOMEM,
                          "cannot allocate step scratch for %d images (about %.0f MB): lower the "
                          "batch size",
                          max_images, mb);
    }
    if (BE->gemm_inputs)
        declare_gemm_inputs(e);
    vs_status st = vs_rt_vae_new(&m->cfg, be, &e->w, max_images, &e->vae, err);
    if (st != VS_OK) {
        vs_rt_engine_free(e);
        return st;
    }
    if (BE->reserve) {
        vs_rt_workload wl;
        engine_workload(e, &wl);
        if ((st = BE->reserve(be, &wl, err)) != VS_OK) {
            vs_rt_engine_free(e);
            return vs_err_wrap(err, "backend scratch for steps of %d images", max_images);
        }
    }
    if ((st = be->ops->sync(be, err)) != VS_OK) {
        vs_rt_engine_free(e);
        return vs_err_wrap(err, "placing the model on the %s backend", be->ops->name);
    }
    *out = e;
    return VS_OK;
}

void vs_rt_engine_free(vs_rt_engine *e)
{
    if (!e)
        return;
    float *bufs[] = {e->x, e->xn, e->tmp, e->attn, e->qkv, e->ffn, e->logits, e->gin, e->cond,
                     e->csilu, e->mod, e->smod, e->hmod, e->q_h, e->q_up, e->q_conv, e->q_down,
                     e->q_f, e->img_mem, e->wdata};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            BE->free(e->be, bufs[i]);
    vs_rt_vae_free(e->vae);
    free(e->blocks);
    free(e->img_free);
    free(e->tok_row);
    free(e->idx);
    free(e->copies);
    free(e->rows);
    free(e->kv_store);
    free(e->reqs);
    free(e->group);
    free(e->dec_fhat);
    free(e);
}

const vs_rt_model *vs_rt_engine_model(const vs_rt_engine *e) { return e->m; }
vs_rt_backend *vs_rt_engine_backend(const vs_rt_engine *e) { return e->be; }
int vs_rt_engine_max_images(const vs_rt_engine *e) { return e->max_images; }

void vs_rt_engine_set_kv(vs_rt_engine *e, float *kv_base, int page_tokens)
{
    e->kv_base = kv_base;
    e->page_tokens = page_tokens;
}

/* floats of one image's f_hat (and of its next_in) */
static size_t state_floats(const vs_rt_engine *e)
{
    const vs_rt_config *c = &e->m->cfg;
    int P = c->patch_nums[c->n_scales - 1];
    return (size_t)c->z_channels * P * P;
}

/* The slot of img_mem that f_hat lies in, or -1 (its own allocation). */
static int state_slot(const vs_rt_engine *e, const float *f_hat)
{
    uintptr_t p = (uintptr_t)f_hat, base = (uintptr_t)e->img_mem;
    size_t slot_bytes = 2 * state_floats(e) * sizeof(float);
    if (!e->img_mem || p < base || p >= base + (size_t)e->max_images * slot_bytes)
        return -1;
    return (int)((p - base) / slot_bytes);
}

vs_status vs_rt_image_init(vs_rt_engine *e, vs_rt_image *img, vs_err *err)
{
    const vs_rt_config *c = &e->m->cfg;
    size_t nf = state_floats(e);
    img->scale = 0;
    img->tokens = calloc((size_t)c->scale_offset[c->n_scales], sizeof *img->tokens);
    if (e->n_img_free > 0) {
        int slot = e->img_free[--e->n_img_free];
        img->f_hat = e->img_mem + (size_t)slot * 2 * nf;
        img->next_in = img->f_hat + nf;
    } else { /* more images than max_images at once */
        img->f_hat = BE->alloc(e->be, nf * sizeof(float));
        img->next_in = BE->alloc(e->be, nf * sizeof(float));
    }
    if (!img->tokens || !img->f_hat || !img->next_in) {
        vs_rt_image_free(e, img);
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory for an image's state");
    }
    BE->zero(e->be, img->f_hat, nf * sizeof(float));
    return VS_OK;
}

void vs_rt_image_free(vs_rt_engine *e, vs_rt_image *img)
{
    free(img->tokens);
    int slot = img->f_hat ? state_slot(e, img->f_hat) : -1;
    if (slot >= 0) {
        e->img_free[e->n_img_free++] = slot;
    } else {
        if (img->f_hat)
            BE->free(e->be, img->f_hat);
        if (img->next_in)
            BE->free(e->be, img->next_in);
    }
    img->tokens = NULL;
    img->f_hat = img->next_in = NULL;
}

/* The quantiser for scale s of the G images imgs[0..G) (G ≤ max_images), whose tokens of scale s
 * are in their tokens: one call of each op for all of them, over [G][Cvae][·] maps in scratch. */
static void quantise(vs_rt_engine *e, vs_rt_image *const *imgs, int G, int s)
{
    const vs_rt_config *c = &e->m->cfg;
    int S = c->n_scales, P = c->patch_nums[S - 1], p = c->patch_nums[s], Cv = c->z_channels;
    size_t nf = state_floats(e), bytes = nf * sizeof(float);
    for (int g = 0; g < G; g++)
        memcpy(e->idx + (size_t)g * p * p, imgs[g]->tokens + c->scale_offset[s],
               (size_t)p * p * sizeof *e->idx);
    BE->embed_chw(e->be, e->q_h, e->w.embedding, e->idx, G, p * p, Cv);
    const float *h = e->q_h;
    if (s < S - 1) {
        BE->upsample_bicubic(e->be, e->q_up, e->q_h, G * Cv, p, p, P, P);
        h = e->q_up;
    }
    /* the group works on copies of its states in q_f (they are not adjacent), in and out with
     * one copy_many each: the same calls whatever G, one image too */
    float *f = e->q_f;
    vs_rt_copy *cl = e->copies;
    for (int g = 0; g < G; g++)
        cl[g] = (vs_rt_copy){f + (size_t)g * nf, imgs[g]->f_hat, bytes};
    BE->copy_many(e->be, cl, G);
    const vs_rt_conv_w *phi = &e->w.phi[vs_rt_phi_index(c, s)];
    if (phi->w) {
        BE->conv2d(e->be, e->q_conv, h, phi->w, phi->b, G, Cv, P, P, Cv, 3);
        BE->phi_add(e->be, f, h, e->q_conv, (float)fabs(c->quant_resi), (size_t)G * nf);
    } else {
        BE->add(e->be, f, h, (size_t)G * nf);
    }
    if (s < S - 1) {
        int q = c->patch_nums[s + 1];
        size_t in = (size_t)q * q * Cv;
        BE->area_downsample(e->be, e->q_down, f, G * Cv, P, P, q, q);
        /* the next inputs [G][q²][Cvae] into q_conv (free again), then to each image's */
        BE->transpose(e->be, e->q_conv, e->q_down, G, Cv, q * q);
        for (int g = 0; g < G; g++)
            cl[g] = (vs_rt_copy){imgs[g]->next_in, e->q_conv + (size_t)g * in, in * sizeof(float)};
        BE->copy_many(e->be, cl, G);
    }
    for (int g = 0; g < G; g++)
        cl[g] = (vs_rt_copy){imgs[g]->f_hat, f + (size_t)g * nf, bytes};
    BE->copy_many(e->be, cl, G);
}

vs_status vs_rt_image_set_tokens(vs_rt_engine *e, vs_rt_image *img, const int32_t *tokens, vs_err *err)
{
    const vs_rt_config *c = &e->m->cfg;
    int L = c->scale_offset[c->n_scales];
    for (int i = 0; i < L; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return vs_err_set(err, VS_ERR_INVALID, "token %d is %d, outside the vocabulary 0..%d", i,
                              tokens[i], c->vocab_size - 1);
    memcpy(img->tokens, tokens, (size_t)L * sizeof *tokens);
    int P = c->patch_nums[c->n_scales - 1];
    BE->zero(e->be, img->f_hat, (size_t)c->z_channels * P * P * sizeof(float));
    for (int s = 0; s < c->n_scales; s++)
        quantise(e, &img, 1, s);
    img->scale = c->n_scales;
    return BE->sync(e->be, err);
}

void vs_rt_image_fhat(vs_rt_engine *e, const vs_rt_image *img, float *host)
{
    const vs_rt_config *c = &e->m->cfg;
    int P = c->patch_nums[c->n_scales - 1];
    BE->download(e->be, host, img->f_hat, (size_t)c->z_channels * P * P * sizeof(float));
}

/* Layer l's AdaLN modulation [R][6C] into mod: the shared projection plus the layer's gss, or the
 * layer's own projection of silu(cond). */
static void ada_mod(vs_rt_engine *e, int l, float *mod, int R)
{
    const vs_rt_config *c = &e->m->cfg;
    const vs_rt_block_w *bw = &e->w.blocks[l];
    int C = c->embed_dim;
    if (c->shared_aln) {
        BE->copy(e->be, mod, e->smod, (size_t)R * 6 * C * sizeof(float));
        BE->add_bias_rows(e->be, mod, bw->ada_gss, R, 6 * C);
    } else {
        BE->linear(e->be, mod, e->csilu, bw->ada_w, bw->ada_b, R, 6 * C, C);
    }
}

/* A step that stops half way (a hook failed): the work queued is void. sync() collects (and so
 * clears) any error the backend recorded meanwhile; a lost device outranks the hook's reason. */
static vs_status abandon_step(vs_rt_engine *e, vs_status st, vs_err *err)
{
    vs_err be_err = {0};
    if (BE->sync(e->be, &be_err) == VS_ERR_DEVICE_LOST) {
        if (err)
            *err = be_err;
        return VS_ERR_DEVICE_LOST;
    }
    return st;
}

vs_status vs_rt_step(vs_rt_engine *e, vs_rt_image *const *imgs, int n, const vs_rt_hooks *hooks,
                     vs_err *err)
{
    const vs_rt_config *c = &e->m->cfg;
    const vs_rt_weights *w = &e->w;
    int C = c->embed_dim, Cv = c->z_channels, V = c->vocab_size, H = c->num_heads, d = c->head_dim;
    int S = c->n_scales, first_l = c->patch_nums[0] * c->patch_nums[0];
    if (n < 1 || n > e->max_images)
        return vs_err_set(err, VS_ERR_INVALID, "a step takes 1..%d images (got %d)", e->max_images, n);
    if (!e->kv_base)
        return vs_err_set(err, VS_ERR_INTERNAL, "the engine has no KV pool (vs_rt_engine_set_kv)");

    /* layout: rows, tokens, per-token row, per-row class */
    int T = 0, R = 2 * n;
    for (int i = 0; i < n; i++) {
        vs_rt_image *img = imgs[i];
        if (img->scale < 0 || img->scale >= S)
            return vs_err_set(err, VS_ERR_INVALID, "image %d is already complete", i);
        int p = c->patch_nums[img->scale];
        for (int r = 0; r < 2; r++) {
            vs_rt_row *row = &e->rows[2 * i + r];
            row->tok_start = T;
            row->n_new = p * p;
            row->kv = img->kv[r];
            for (int t = 0; t < p * p; t++)
                e->tok_row[T + t] = 2 * i + r;
            T += p * p;
        }
    }
    vs_rt_batch b = {R,    T, e->rows, e->tok_row, e->kv_base, e->page_tokens, c->depth,
                     e->kv_store, NULL};
    vs_status st = BE->batch_begin(e->be, &b, err);
    if (st != VS_OK)
        return st;

    /* inputs: word_embed(next_in) for scales > 0, the class token for scale 0; + lvl_pos */
    int nc = 0;
    for (int i = 0; i < n; i++) {
        vs_rt_image *img = imgs[i];
        if (img->scale == 0)
            continue;
        int nt = e->rows[2 * i].n_new;
        for (int r = 0; r < 2; r++)
            e->copies[nc++] = (vs_rt_copy){e->gin + (size_t)e->rows[2 * i + r].tok_start * Cv,
                                           img->next_in, (size_t)nt * Cv * sizeof(float)};
    }
    BE->copy_many(e->be, e->copies, nc);
    BE->linear(e->be, e->x, e->gin, w->word_w, w->word_b, T, C, Cv);
    /* scale 0: the class token (cond row) or the null class (uncond row), then the start
     * positions; an image's two rows are adjacent, so [G0][2·first_l][C] in tmp (free until the
     * first layer) takes one gather each for all the scale-0 images, copied to their rows in x */
    int G0 = 0;
    for (int i = 0; i < n; i++) {
        if (imgs[i]->scale != 0)
            continue;
        int32_t *ix = e->idx + (size_t)G0++ * 2 * first_l;
        for (int t = 0; t < first_l; t++) {
            ix[t] = imgs[i]->label;
            ix[first_l + t] = c->num_classes;
        }
    }
    if (G0 > 0) {
        size_t blk = (size_t)2 * first_l * C;
        BE->gather_rows(e->be, e->tmp, w->class_emb, e->idx, 2 * first_l * G0, C, 0);
        for (int t = 0; t < 2 * first_l * G0; t++)
            e->idx[t] = t % first_l;
        BE->gather_rows(e->be, e->tmp, w->pos_start, e->idx, 2 * first_l * G0, C, 1);
        for (int i = 0, g = 0; i < n; i++)
            if (imgs[i]->scale == 0) {
                e->copies[g] = (vs_rt_copy){e->x + (size_t)e->rows[2 * i].tok_start * C,
                                            e->tmp + blk * g, blk * sizeof(float)};
                g++;
            }
        BE->copy_many(e->be, e->copies, G0);
    }
    /* + lvl_pos for every token of the step in one gather: the rows cover tokens 0..T in order */
    for (int r = 0; r < R; r++)
        for (int t = 0; t < e->rows[r].n_new; t++)
            e->idx[e->rows[r].tok_start + t] = c->scale_offset[imgs[r / 2]->scale] + t;
    BE->gather_rows(e->be, e->x, w->lvl_pos, e->idx, T, C, 1);
    /* conditions: class embedding per row */
    for (int i = 0; i < n; i++) {
        e->idx[2 * i] = imgs[i]->label;
        e->idx[2 * i + 1] = c->num_classes;
    }
    BE->gather_rows(e->be, e->cond, w->class_emb, e->idx, R, C, 0);
    BE->silu(e->be, e->csilu, e->cond, (size_t)R * C);
    if (c->shared_aln)
        BE->linear(e->be, e->smod, e->csilu, w->shared_ada_w, w->shared_ada_b, R, 6 * C, C);

    float attn_scale = vs_rt_attn_scale(c), eps = (float)c->norm_eps;
    /* AdaLN chunks: gamma1 0, gamma2 1, scale1 2, scale2 3, shift1 4, shift2 5. A residual update
     * and the LayerNorm after it are one op (gated_add_adaln): after attention, the layer's own
     * second; after the MLP, the next layer's first (its AdaLN computed first) or the head's. */
    ada_mod(e, 0, e->mod, R);
    BE->adaln(e->be, e->xn, e->x, e->mod, 6 * C, 2 * C, 4 * C, &b, C, eps);
    for (int l = 0; l < c->depth; l++) {
        const vs_rt_block_w *bw = &w->blocks[l];
        float *mod = e->mod + (size_t)(l % 2) * R * 6 * C;
        BE->linear(e->be, e->qkv, e->xn, bw->qkv_w, bw->qkv_bias, T, 3 * C, C);
        if (c->attn_l2_norm)
            BE->qk_norm(e->be, e->qkv, T, H, d, bw->scale_mul);
        memset(e->kv_store, 1, (size_t)R);
        if (hooks && hooks->before_attn && (st = hooks->before_attn(hooks->ctx, l, &b, err)) != VS_OK)
            return abandon_step(e, st, err);
        BE->attention(e->be, e->attn, e->qkv, &b, l, H, d, attn_scale);
        if (hooks && hooks->after_attn && (st = hooks->after_attn(hooks->ctx, l, &b, e->qkv, err)) != VS_OK)
            return abandon_step(e, st, err);
        BE->linear(e->be, e->tmp, e->attn, bw->proj_w, bw->proj_b, T, C, C);
        vs_rt_backend_gated_add_adaln(e->be, e->x, e->tmp, mod, 6 * C, 0, e->xn, mod, 6 * C, 3 * C,
                                      5 * C, &b, C, eps);
        vs_rt_backend_linear_gelu(e->be, e->ffn, e->xn, bw->fc1_w, bw->fc1_b, T, c->ffn_dim, C);
        BE->linear(e->be, e->tmp, e->ffn, bw->fc2_w, bw->fc2_b, T, C, c->ffn_dim);
        if (l + 1 < c->depth) {
            float *next = e->mod + (size_t)((l + 1) % 2) * R * 6 * C;
            ada_mod(e, l + 1, next, R);
            vs_rt_backend_gated_add_adaln(e->be, e->x, e->tmp, mod, 6 * C, C, e->xn, next, 6 * C,
                                          2 * C, 4 * C, &b, C, eps);
        } else {
            BE->linear(e->be, e->hmod, e->csilu, w->head_nm_w, w->head_nm_b, R, 2 * C, C);
            vs_rt_backend_gated_add_adaln(e->be, e->x, e->tmp, mod, 6 * C, C, e->xn, e->hmod,
                                          2 * C, 0, C, &b, C, eps);
        }
    }
    BE->linear(e->be, e->logits, e->xn, w->head_w, w->head_b, T, V, C);

    for (int i = 0; i < n; i++) {
        vs_rt_image *img = imgs[i];
        vs_rt_sample_req *q = &e->reqs[i];
        q->cond_tok = e->rows[2 * i].tok_start;
        q->uncond_tok = e->rows[2 * i + 1].tok_start;
        q->n = e->rows[2 * i].n_new;
        q->guidance = vs_rt_guidance(c, img->cfg, img->scale);
        q->top_k = img->top_k;
        q->top_p = img->top_p;
        q->seed = img->seed;
        q->scale = img->scale;
        q->out = img->tokens + c->scale_offset[img->scale];
    }
    BE->cfg_sample(e->be, e->logits, V, e->reqs, n);
    for (int i = 0; i < n; i++)
        if (imgs[i]->guided_logits)
            BE->download(e->be, imgs[i]->guided_logits, e->logits + (size_t)e->reqs[i].cond_tok * V,
                         (size_t)e->reqs[i].n * V * sizeof(float));
    for (int i = 0; i < n; i++) {
        if (imgs[i]->forced_tokens) {
            size_t off = (size_t)c->scale_offset[imgs[i]->scale];
            memcpy(imgs[i]->tokens + off, imgs[i]->forced_tokens + off,
                   (size_t)e->reqs[i].n * sizeof(int32_t));
        }
    }
    for (int s = 0; s < S; s++) { /* the quantiser per group of images at one scale */
        int G = 0;
        for (int i = 0; i < n; i++)
            if (imgs[i]->scale == s)
                e->group[G++] = imgs[i];
        if (G > 0)
            quantise(e, e->group, G, s);
    }
    for (int i = 0; i < n; i++)
        imgs[i]->scale++;
    return BE->sync(e->be, err);
}

vs_status vs_rt_decode(vs_rt_engine *e, vs_rt_image *const *imgs, int n, uint8_t *const *rgb,
                       float *const *unit, vs_err *err)
{
    const vs_rt_config *c = &e->m->cfg;
    if (n < 0 || n > e->max_images)
        return vs_err_set(err, VS_ERR_INVALID, "a decode takes 0..%d images (the engine's max images; got %d)",
                          e->max_images, n);
    for (int i = 0; i < n; i++) {
        if (imgs[i]->scale != c->n_scales)
            return vs_err_set(err, VS_ERR_INVALID, "image %d is not finished (at scale %d of %d)", i,
                              imgs[i]->scale, c->n_scales);
        e->dec_fhat[i] = imgs[i]->f_hat;
    }
    return vs_rt_vae_decode(e->vae, e->dec_fhat, n, rgb, unit, err);
}

vs_status vs_rt_decode_preview(vs_rt_engine *e, const vs_rt_image *img, uint8_t *rgb, vs_err *err)
{
    if (img->scale < 1)
        return vs_err_set(err, VS_ERR_INVALID, "a preview needs one scale done (the image is at scale 0)");
    const float *f_hat[1] = {img->f_hat};
    uint8_t *out[1] = {rgb};
    return vs_rt_vae_decode(e->vae, f_hat, 1, out, NULL, err);
}
