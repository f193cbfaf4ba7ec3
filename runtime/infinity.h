/* runtime/infinity.h — the Infinity model family (FoundationVision/Infinity: bitwise next-scale
 * prediction conditioned on T5 text features), in FP32 on the host as a reference engine: its
 * transformer, the bits (greedy or sampled), the feedback between scales (runtime/bsq.h) and its BSQ VAE
 * decoder, which runtime/vae.c runs on any backend. The prompt encoder is runtime/t5.h. The
 * server runs this engine as it is (server/gen_infinity.h); the KV pool and the backends' fast
 * paths are VAR's only so far.
 *
 * The file: safetensors with the reference's state_dict names, `infinity.<name>` for the
 * transformer and `vae.decoder.<name>` for the decoder (with the Conv and Normalize wrappers:
 * `….conv.weight`, `….norm.weight`), F32, F16 or BF16, and the settings as the metadata's
 * "config" JSON string (`vs_rt_infinity_config` lists what is read). What is computed:
 * docs/ALGORITHMS.md §7–8. Supported: the released 2B model's structure (shared AdaLN, cosine
 * self-attention with 2-D RoPE normalised to the 1M grid, cross-attention to the text with an
 * attentive-pool start token, GELU FFN, AdaLN before the head, bit labels, CFG on the logits, no
 * spatial patchify); other settings are refused by name. A model is immutable after load; a
 * generation belongs to one thread. */
#ifndef VS_RT_INFINITY_H
#define VS_RT_INFINITY_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "runtime/model.h"

#define VS_RT_INF_MAX_SCALES 16

typedef struct {
    int depth, C, heads, head_dim, ffn;  /* depth, embed_dim, num_heads, head_dim, mlp_hidden */
    int block_chunks;                    /* the state_dict's grouping of blocks (names only) */
    int Ct5, text_maxlen, pool_heads;    /* text_channels, text_maxlen, text_pool_heads */
    int d;                               /* codebook_dim: bits a token; the head gives 2d logits */
    int n_scales;
    int hw[VS_RT_INF_MAX_SCALES][2];     /* scale_schedule's (h, w) (t is 1) */
    int rope_h, rope_w;                  /* the 1M grid of h_div_w that RoPE positions scale to */
} vs_rt_infinity_config;

typedef struct {
    float *ada_gss;                      /* [6][C]: gamma1, gamma2, scale1, scale2, shift1, shift2 */
    float *sa_qkv, *sa_q_bias, *sa_v_bias, *sa_scale_mul, *sa_proj_w, *sa_proj_b;
    float *ca_norm_w, *ca_norm_b, *ca_q_w, *ca_q_b, *ca_kv, *ca_v_bias, *ca_proj_w, *ca_proj_b;
    float *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} vs_rt_infinity_block_w;

typedef struct {
    vs_rt_infinity_config cfg;
    /* transformer */
    float *cfg_uncond;                   /* [text_maxlen][Ct5] */
    float *text_norm;                    /* [Ct5] */
    float *pool_q, *pool_kv, *pool_v_bias, *pool_proj_w, *pool_proj_b; /* the attentive pool (sos) */
    float *ca1_w, *ca1_b, *ca2_w, *ca2_b; /* text_proj_for_ca: Ct5 → C, GELU, C → C */
    float *pos_start, *lvl_embed;        /* [C], [15][C] */
    float *word_w, *word_b;              /* [C][d], [C] */
    float *ada_w, *ada_b;                /* shared_ada_lin: [6C][C], [6C] */
    float *head_nm_w, *head_nm_b;        /* [2C][C], [2C] */
    float *head_w, *head_b;              /* [2d][C], [2d] */
    vs_rt_infinity_block_w *blocks;      /* [depth] */
    float *rope;                         /* derived [2][Σ h·w][head_dim / 2]: cos, sin */
    /* decoder */
    vs_rt_config dec;                    /* its shape as runtime/vae.h reads it (other fields 0) */
    vs_rt_weights w;                     /* its weights (the VAR transformer's pointers NULL) */
    float *data;                         /* the one F32 allocation everything points into */
    size_t data_bytes, n_params;
    int has_checksum;                    /* the metadata's data_crc32 was there (and matched) */
} vs_rt_infinity;

/* VS_ERR_IO, VS_ERR_INVALID (the message names the field or tensor), VS_ERR_NOMEM. */
vs_status vs_rt_infinity_load(const char *path, vs_rt_infinity **out, vs_err *err);
void vs_rt_infinity_free(vs_rt_infinity *m);

/* Named intermediate values, for tests and debugging: called with e.g. "text_norm", "cond_BD",
 * "ca_kv", "cond_gss" once, then per scale s "block_in.<s>", "block<i>.<s>", "head_raw.<s>",
 * with rows × cols floats (rows: the 2B conditional-then-unconditional rows, tokens within). */
typedef void (*vs_rt_infinity_probe)(void *ctx, const char *name, const float *data, int rows, int cols);

typedef struct vs_rt_infinity_gen vs_rt_infinity_gen;

/* How a generation draws its bits: VAR's top-k / top-p rule (runtime/sample.h) on each bit's two
 * guided logits, with the uniform vs_philox_uniform(seeds[b], scale, token·d + bit). top_k 1 is
 * greedy (the larger logit; the reference's fixtures), top_k 0 or ≥ 2 keeps both, top_p drops
 * the less likely bit when its probability is ≤ 1 − top_p (0: off). */
typedef struct {
    int top_k;
    float top_p;
    const uint64_t *seeds; /* [B] */
} vs_rt_infinity_sampling;

/* A generation of B images: text [Σ lens][Ct5] the prompts' T5 features (lens[b] rows each,
 * 1..text_maxlen), cfg (≠ 1: the unconditional branch is cfg_uncond's first lens[b] rows) and
 * tau per scale (n_scales each). probe may be NULL. */
vs_status vs_rt_infinity_gen_new(const vs_rt_infinity *m, const float *text, const int *lens, int B,
                                 const float *cfg, const float *tau, const vs_rt_infinity_sampling *smp,
                                 vs_rt_infinity_probe probe, void *probe_ctx, vs_rt_infinity_gen **out,
                                 vs_err *err);
void vs_rt_infinity_gen_free(vs_rt_infinity_gen *g);

/* Runs the next scale: bits [B][h][w][d] (0/1) and, when logits is not NULL, the guided logits
 * [B][h·w][d][2]; returns the scale's index, −1 when every scale is done, −2 out of memory (the
 * scale did not run; it may be tried again). */
int vs_rt_infinity_gen_scale(vs_rt_infinity_gen *g, uint8_t *bits, float *logits);

/* After the last scale: image b's latent [d][H][W], the decoder's input (runtime/vae.h). */
const float *vs_rt_infinity_gen_latent(const vs_rt_infinity_gen *g, int b);

#endif
