/* server/gen_infinity.c — see gen_infinity.h. */
#include "server/gen_infinity.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/t5.h"
#include "runtime/t5_tok.h"
#include "runtime/vae.h"

struct vs_srv_inf {
    vs_rt_infinity *m;
    vs_rt_t5 *t5;
    vs_rt_t5_tok *tok;
    vs_rt_backend *be;
    vs_rt_vae *vae;
    float *arena;   /* the decoder's weights on a device, else NULL (they are the model's) */
    float **lat;    /* [max_batch] latents on the backend */
    uint64_t *seeds; /* [max_batch]: the running batch's, which its sampling reads */
    uint8_t *bits;   /* [max_batch][h·w][d]: a scale's bits (the engine keeps its own state) */
    int max_batch;
    /* the running batch */
    vs_rt_infinity_gen *gen;
    int n, scales_done;
};

static void end_batch(vs_srv_inf *g)
{
    vs_rt_infinity_gen_free(g->gen);
    g->gen = NULL;
    g->n = 0;
    g->scales_done = 0;
}

void vs_srv_inf_close(vs_srv_inf *g)
{
    if (!g)
        return;
    end_batch(g);
    for (int i = 0; g->lat && i < g->max_batch; i++)
        if (g->lat[i])
            g->be->ops->free(g->be, g->lat[i]);
    free(g->lat);
    free(g->seeds);
    free(g->bits);
    vs_rt_vae_free(g->vae);
    if (g->arena)
        g->be->ops->free(g->be, g->arena);
    vs_rt_backend_free(g->be);
    vs_rt_t5_tok_free(g->tok);
    vs_rt_t5_free(g->t5);
    vs_rt_infinity_free(g->m);
    free(g);
}

vs_status vs_srv_inf_open(const vs_srv_inf_files *f, const vs_srv_inf_files *names, vs_rt_backend_kind kind,
                          int threads, int max_batch, vs_srv_inf **out, vs_err *err)
{
    if (!f->t5 || !f->t5[0] || !f->spiece || !f->spiece[0])
        return vs_err_set(err, VS_ERR_INVALID,
                          "%s is an Infinity model, which needs its text encoder: set %s (a T5 encoder file) "
                          "and %s (its SentencePiece model)",
                          f->model, names->t5, names->spiece);
    vs_srv_inf *g = calloc(1, sizeof *g);
    if (!g)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    g->max_batch = max_batch;
    vs_status st;
    if ((st = vs_rt_infinity_load(f->model, &g->m, err)) != VS_OK) {
        vs_err_wrap(err, "%s ('%s')", names->model, f->model);
        goto fail;
    }
    if ((st = vs_rt_t5_load(f->t5, &g->t5, err)) != VS_OK) {
        vs_err_wrap(err, "%s ('%s')", names->t5, f->t5);
        goto fail;
    }
    if ((st = vs_rt_t5_tok_load(f->spiece, &g->tok, err)) != VS_OK) {
        vs_err_wrap(err, "%s ('%s')", names->spiece, f->spiece);
        goto fail;
    }
    const vs_rt_infinity_config *c = &g->m->cfg;
    if (g->t5->cfg.d_model != c->Ct5) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "%s '%s' gives %d-wide text features but the model reads %d (use the encoder it was "
                        "trained with)",
                        names->t5, f->t5, g->t5->cfg.d_model, c->Ct5);
        goto fail;
    }
    if (vs_rt_t5_tok_size(g->tok) > g->t5->cfg.vocab_size) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "%s '%s' has %d pieces but the encoder's vocabulary is %d (not its tokenizer)",
                        names->spiece, f->spiece, vs_rt_t5_tok_size(g->tok), g->t5->cfg.vocab_size);
        goto fail;
    }
    /* the decoder on the backend: the weights copied to the device when it has its own memory */
    if ((st = vs_rt_backend_new_precision(kind, threads, 1, &g->be, err)) != VS_OK)
        goto fail;
    vs_rt_weights w = g->m->w;
    if (!g->be->host_memory) {
        if (!(g->arena = g->be->ops->alloc(g->be, g->m->data_bytes))) {
            st = vs_err_set(err, VS_ERR_NOMEM, "the device has no room for the decoder's %.1f MB",
                            (double)g->m->data_bytes / 1e6);
            goto fail;
        }
        g->be->ops->upload(g->be, g->arena, g->m->data, g->m->data_bytes);
        vs_rt_vae_rebase(&g->m->dec, &w, g->m->data, g->arena);
    }
    if ((st = vs_rt_vae_new(&g->m->dec, g->be, &w, max_batch, &g->vae, err)) != VS_OK)
        goto fail;
    int H = c->hw[c->n_scales - 1][0], W = c->hw[c->n_scales - 1][1];
    size_t lat = (size_t)c->d * H * W * sizeof(float);
    g->lat = calloc((size_t)max_batch, sizeof *g->lat);
    g->seeds = calloc((size_t)max_batch, sizeof *g->seeds);
    g->bits = malloc((size_t)max_batch * H * W * c->d);
    if (!g->lat || !g->seeds || !g->bits) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < max_batch; i++)
        if (!(g->lat[i] = g->be->ops->alloc(g->be, lat))) {
            st = vs_err_set(err, VS_ERR_NOMEM, "no memory for %d latents of %.1f KB", max_batch, (double)lat / 1e3);
            goto fail;
        }
    *out = g;
    return VS_OK;
fail:
    vs_srv_inf_close(g);
    return st;
}

const vs_rt_infinity *vs_srv_inf_model(const vs_srv_inf *g) { return g->m; }
const vs_rt_backend *vs_srv_inf_backend(const vs_srv_inf *g) { return g->be; }
int vs_srv_inf_image_size(const vs_srv_inf *g) { return g->m->dec.image_size; }
int vs_srv_inf_scales_done(const vs_srv_inf *g) { return g->scales_done; }

vs_status vs_srv_inf_begin(vs_srv_inf *g, const char *const *prompts, const uint64_t *seeds, int n,
                           const vs_srv_inf_sampling *s, vs_err *err)
{
    end_batch(g);
    if (n < 1 || n > g->max_batch)
        return vs_err_set(err, VS_ERR_INVALID, "a batch of %d images (1..%d)", n, g->max_batch);
    const vs_rt_infinity_config *c = &g->m->cfg;
    int *lens = calloc((size_t)n, sizeof *lens);
    float *text = NULL;
    if (!lens)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    vs_status st = vs_rt_t5_encode_prompts(g->t5, g->tok, prompts, n, c->text_maxlen, &text, lens, err);
    if (st == VS_OK) {
        float cfg[VS_RT_INF_MAX_SCALES], tau[VS_RT_INF_MAX_SCALES];
        for (int i = 0; i < c->n_scales; i++) {
            cfg[i] = s->cfg;
            tau[i] = s->tau;
        }
        memcpy(g->seeds, seeds, (size_t)n * sizeof *seeds);
        vs_rt_infinity_sampling smp = {s->top_k, s->top_p, g->seeds};
        st = vs_rt_infinity_gen_new(g->m, text, lens, n, cfg, tau, &smp, NULL, NULL, &g->gen, err);
    }
    free(text);
    free(lens);
    if (st == VS_OK)
        g->n = n;
    return st;
}

int vs_srv_inf_step(vs_srv_inf *g, vs_err *err)
{
    if (!g->gen) {
        vs_err_set(err, VS_ERR_INTERNAL, "no batch is running");
        return -1;
    }
    int s = vs_rt_infinity_gen_scale(g->gen, g->bits, NULL);
    if (s == -2) {
        vs_err_set(err, VS_ERR_NOMEM, "out of memory at scale %d", g->scales_done);
        end_batch(g);
        return -1;
    }
    if (s >= 0)
        g->scales_done = s + 1;
    return g->scales_done < g->m->cfg.n_scales ? 1 : 0;
}

vs_status vs_srv_inf_decode(vs_srv_inf *g, uint8_t *const *rgb, vs_err *err)
{
    const vs_rt_infinity_config *c = &g->m->cfg;
    if (!g->gen || g->scales_done < c->n_scales) {
        end_batch(g);
        return vs_err_set(err, VS_ERR_INTERNAL, "the batch has not run every scale");
    }
    size_t lat = (size_t)c->d * c->hw[c->n_scales - 1][0] * c->hw[c->n_scales - 1][1] * sizeof(float);
    for (int i = 0; i < g->n; i++)
        g->be->ops->upload(g->be, g->lat[i], vs_rt_infinity_gen_latent(g->gen, i), lat);
    vs_status st = vs_rt_vae_decode(g->vae, (const float *const *)g->lat, g->n, rgb, NULL, err);
    end_batch(g);
    return st;
}
