/* runtime/t5.h — a T5 encoder (Hugging Face's T5EncoderModel: T5 v1.1 / flan-t5 with the gated-GELU
 * feed-forward), the text encoder of the Infinity model family, in FP32 on the host.
 *
 * What it computes (docs/ALGORITHMS.md §6): token embeddings, then per block a pre-norm
 * self-attention and a pre-norm gated feed-forward, each added to the residual, and a final norm.
 * The norms are RMS norms without a bias or mean (w · x / √(mean x² + eps)); attention scores are
 * q·k without the 1/√d scaling, plus a bias looked up by the bucket of the key's offset from the
 * query (one table, learnt by block 0 and shared by all blocks), softmax in FP32; padding keys are
 * left out (the reference adds −FLT_MAX, whose exp is exactly 0, so the valid rows do not depend
 * on padding or batching, up to the GEMMs' rounding). The feed-forward is
 * wo(gelu_tanh(wi_0 x) · wi_1 x). No biases anywhere.
 *
 * The file: a safetensors file with the state_dict names of T5EncoderModel
 * (shared.weight, encoder.block.N.layer.0.SelfAttention.{q,k,v,o}.weight, ...), F32, F16 or
 * BF16, and the model's config.json as the metadata's "config" string; loaded through
 * runtime/safetensors.c with every check a VAR model gets. Immutable after load; any thread may
 * read; vs_rt_t5_encode is reentrant. */
#ifndef VS_RT_T5_H
#define VS_RT_T5_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct {
    int d_model, d_kv, num_heads, d_ff, num_layers, vocab_size;
    int rel_buckets, rel_max_distance; /* relative_attention_num_buckets, _max_distance */
    double eps;                        /* layer_norm_epsilon */
} vs_rt_t5_config;

typedef struct {
    float *attn_norm;      /* [d_model] layer.0.layer_norm */
    float *q, *k, *v;      /* [heads·d_kv][d_model] */
    float *o;              /* [d_model][heads·d_kv] */
    float *ff_norm;        /* [d_model] layer.1.layer_norm */
    float *wi0, *wi1;      /* [d_ff][d_model]: the GELU branch and the linear branch */
    float *wo;             /* [d_model][d_ff] */
} vs_rt_t5_block_w;

typedef struct vs_rt_t5 {
    vs_rt_t5_config cfg;
    float *embed;            /* [vocab][d_model] shared.weight */
    float *rel_bias;         /* [rel_buckets][heads] block 0's relative_attention_bias */
    float *final_norm;       /* [d_model] */
    vs_rt_t5_block_w *blocks; /* [num_layers] */
    float *data;             /* the one F32 allocation the weights point into */
    size_t data_bytes, n_params;
    int has_checksum;        /* the metadata's data_crc32 was there (and matched) */
} vs_rt_t5;

/* Loads and validates `path` (messages name the field or tensor). VS_ERR_IO, VS_ERR_INVALID,
 * VS_ERR_NOMEM. Freed with vs_rt_t5_free. */
vs_status vs_rt_t5_load(const char *path, vs_rt_t5 **out, vs_err *err);
void vs_rt_t5_free(vs_rt_t5 *t);

/* The bias bucket of a key at `rel` = key position − query position (bidirectional: half the
 * buckets for keys after the query; offsets below half of a half exact, larger ones on a log
 * scale up to rel_max_distance, the last bucket beyond). */
int vs_rt_t5_bucket(const vs_rt_t5_config *c, int rel);

/* last_hidden_state of n sequences of `len` positions: ids [n][len], of which the first lens[i]
 * are the sequence (1..len; the rest padding, any valid id); out [n][len][d_model], padding rows
 * included (they attend to the sequence's tokens, as in the reference). VS_ERR_INVALID names a
 * bad id or length; VS_ERR_NOMEM. */
vs_status vs_rt_t5_encode(const vs_rt_t5 *t, const int32_t *ids, const int *lens, int n, int len, float *out,
                          vs_err *err);

/* Infinity's prompt encoding (its encode_prompt): each prompt tokenized to max_len positions
 * (runtime/t5_tok.h; Infinity uses 512), encoded, and only its lens[i] valid rows kept,
 * concatenated in prompt order: *text [Σ lens][d_model] (malloc'd, the caller frees), the
 * transformer's text input. VS_ERR_INVALID names the prompt; VS_ERR_NOMEM. */
struct vs_rt_t5_tok;
vs_status vs_rt_t5_encode_prompts(const vs_rt_t5 *t, const struct vs_rt_t5_tok *tok, const char *const *prompts,
                                  int n, int max_len, float **text, int *lens, vs_err *err);

#endif
