/* server/cmd_generate_infinity.c — `varserve generate` with an Infinity model: prompts to PNG
 * files through the library's Infinity parts (T5 and its tokenizer, the transformer in FP32 on the
 * host, the BSQ-VAE decoder on the chosen backend). The slow, exact path, for trying a model; the
 * engine does not serve Infinity yet. Sampling defaults are the reference's run_infinity.py's:
 * cfg 3, tau 1, top-k 900, top-p 0.97 (any of them set on the command line wins). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/infinity.h"
#include "runtime/safetensors.h"
#include "runtime/t5.h"
#include "runtime/t5_tok.h"
#include "runtime/vae.h"
#include "server/cmd.h"
#include "server/png.h"

const char *vs_srv_cli_family(const char *path)
{
    vs_st_file f;
    vs_err err = {0};
    if (!path || vs_st_open(&f, path, &err) != VS_OK)
        return NULL; /* the VAR loader says what is wrong */
    const char *fam = vs_st_family(&f);
    vs_st_close(&f);
    return fam;
}

int vs_srv_generate_infinity(const vs_srv_cli_opts *o, const char *const *prompts, int n, uint64_t seed,
                             const char *t5_path, const char *spiece, double tau, const char *out)
{
    vs_err err = {0};
    vs_rt_backend_kind kind;
    if (vs_rt_backend_parse(o->backend, &kind) != 0)
        return vs_srv_cli_bad("--backend must be auto, cpu or cuda (got '%s')%s", o->backend, "");
    if (!t5_path || !spiece)
        return vs_srv_cli_bad("an Infinity model needs its text encoder: --t5 FILE (a T5 encoder) and --spiece "
                              "FILE (its SentencePiece model)%s%s",
                              "", "");
    vs_rt_infinity *m = NULL;
    vs_rt_t5 *t5 = NULL;
    vs_rt_t5_tok *tok = NULL;
    vs_rt_infinity_gen *g = NULL;
    vs_rt_backend *be = NULL;
    vs_rt_vae *v = NULL;
    float *text = NULL, *arena = NULL, *lat_dev[256] = {0};
    int *lens = calloc((size_t)n, sizeof *lens), rc = 1;
    uint64_t *seeds = calloc((size_t)n, sizeof *seeds);
    uint8_t *bits = NULL, **rgb = calloc((size_t)n, sizeof *rgb);
    if (!lens || !seeds || !rgb) {
        fprintf(stderr, "varserve: out of memory\n");
        goto done;
    }
    if (vs_rt_infinity_load(o->model, &m, &err) != VS_OK || vs_rt_t5_load(t5_path, &t5, &err) != VS_OK ||
        vs_rt_t5_tok_load(spiece, &tok, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    const vs_rt_infinity_config *c = &m->cfg;
    if (t5->cfg.d_model != c->Ct5) {
        rc = vs_srv_cli_bad("--t5 '%s' gives %d-wide text features but the model reads %d (use the encoder it was "
                            "trained with)",
                            t5_path, t5->cfg.d_model, c->Ct5);
        goto done;
    }
    if (vs_rt_t5_tok_size(tok) > t5->cfg.vocab_size) {
        rc = vs_srv_cli_bad("--spiece '%s' has %d pieces but the encoder's vocabulary is %d (not its tokenizer)",
                            spiece, vs_rt_t5_tok_size(tok), t5->cfg.vocab_size);
        goto done;
    }
    if (vs_rt_t5_encode_prompts(t5, tok, prompts, n, c->text_maxlen, &text, lens, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    float cfg[VS_RT_INF_MAX_SCALES], taus[VS_RT_INF_MAX_SCALES];
    for (int s = 0; s < c->n_scales; s++) {
        cfg[s] = o->have_cfg ? (float)o->cfg : 3.0f;
        taus[s] = (float)tau;
    }
    for (int i = 0; i < n; i++)
        seeds[i] = seed + (uint64_t)i;
    vs_rt_infinity_sampling smp = {o->have_top_k ? (int)o->top_k : 900, o->have_top_p ? (float)o->top_p : 0.97f,
                                   seeds};
    if (vs_rt_infinity_gen_new(m, text, lens, n, cfg, taus, &smp, NULL, NULL, &g, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    int H = c->hw[c->n_scales - 1][0], W = c->hw[c->n_scales - 1][1], d = c->d;
    if (!(bits = malloc((size_t)n * H * W * d))) {
        fprintf(stderr, "varserve: out of memory\n");
        goto done;
    }
    for (int s; (s = vs_rt_infinity_gen_scale(g, bits, NULL)) != -1;)
        if (s < 0) {
            fprintf(stderr, "varserve: out of memory at scale %d\n", s);
            goto done;
        }
    /* the decoder on the backend: the weights copied to the device when it has its own memory */
    if (vs_rt_backend_new_precision(kind, (int)o->threads, 1, &be, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    vs_rt_weights w = m->w;
    if (!be->host_memory) {
        if (!(arena = be->ops->alloc(be, m->data_bytes))) {
            fprintf(stderr, "varserve: the device has no room for the decoder's %.1f MB\n", (double)m->data_bytes / 1e6);
            goto done;
        }
        be->ops->upload(be, arena, m->data, m->data_bytes);
        vs_rt_vae_rebase(&m->dec, &w, m->data, arena);
    }
    if (vs_rt_vae_new(&m->dec, be, &w, n, &v, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    size_t lat = (size_t)d * H * W, side = (size_t)m->dec.image_size;
    for (int i = 0; i < n; i++) {
        if (!(lat_dev[i] = be->ops->alloc(be, lat * sizeof(float))) || !(rgb[i] = malloc(side * side * 3))) {
            fprintf(stderr, "varserve: out of memory for image %d\n", i);
            goto done;
        }
        be->ops->upload(be, lat_dev[i], vs_rt_infinity_gen_latent(g, i), lat * sizeof(float));
    }
    if (vs_rt_vae_decode(v, (const float *const *)lat_dev, n, rgb, NULL, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s-%d.png", out, i);
        if (vs_srv_png_write(path, rgb[i], (int)side, (int)side, &err) != VS_OK) {
            fprintf(stderr, "varserve: %s\n", err.msg);
            goto done;
        }
    }
    rc = 0;
done:
    for (int i = 0; i < n && be; i++)
        if (lat_dev[i])
            be->ops->free(be, lat_dev[i]);
    if (arena)
        be->ops->free(be, arena);
    vs_rt_vae_free(v);
    vs_rt_backend_free(be);
    for (int i = 0; rgb && i < n; i++)
        free(rgb[i]);
    free(rgb);
    free(bits);
    free(text);
    free(lens);
    free(seeds);
    vs_rt_infinity_gen_free(g);
    vs_rt_t5_tok_free(tok);
    vs_rt_t5_free(t5);
    vs_rt_infinity_free(m);
    return rc;
}
