/* runtime/model.h — a VAR model file (docs/MODEL_FORMAT.md) loaded and validated.
 *
 * Design: the file is mmap'd, its JSON header and config are checked against the format's rules
 * (every rejection names the field or tensor), then every tensor is converted once to F32 into ONE
 * host allocation; the mapping is closed before returning. The weight structs below hold pointers
 * into that allocation; a backend that keeps weights elsewhere (GPU) copies the allocation whole
 * and rebases the pointers (vs_rt_model_rebase). Immutable after load; any thread may read. */
#ifndef VS_RT_MODEL_H
#define VS_RT_MODEL_H

#include <stddef.h>

#include "common/status.h"

#define VS_RT_MAX_SCALES 32
#define VS_RT_MAX_LEVELS 8
#define VS_RT_MAX_CLASSES 100000

typedef struct {
    int depth, embed_dim, num_heads, head_dim, ffn_dim;
    double mlp_ratio, norm_eps;
    int shared_aln, attn_l2_norm;
    int num_classes;
    int n_scales;
    int patch_nums[VS_RT_MAX_SCALES];
    int scale_offset[VS_RT_MAX_SCALES + 1]; /* token offset of each scale; [n_scales] = L */
    int vocab_size, z_channels;
    int vae_ch, n_levels, vae_num_res_blocks;
    int vae_ch_mult[VS_RT_MAX_LEVELS];
    double quant_resi;
    int share_quant_resi; /* number of Phi convs (>= 1) */
    int image_size;       /* patch_nums[-1] * 2^(n_levels-1) */
    int image_channels;   /* 1 or 3 (informational; the decoder outputs 3) */
    char **class_names;   /* [num_classes] or NULL; owned by the model */
    /* optional sampling defaults stored by the model's author (negative when absent) */
    double default_cfg, default_top_p;
    int default_top_k;
} vs_rt_config;

typedef struct {
    float *ada_w, *ada_b;        /* [6C][C], [6C]; NULL with shared_aln */
    float *ada_gss;              /* [6][C] with shared_aln, else NULL */
    float *qkv_w;                /* [3C][C] */
    float *q_bias, *v_bias;      /* [C] */
    float *scale_mul;            /* [H] (log scale; clamped and exp'd at use) */
    float *proj_w, *proj_b;      /* [C][C], [C] */
    float *fc1_w, *fc1_b;        /* [F][C], [F] */
    float *fc2_w, *fc2_b;        /* [C][F], [C] */
    float *qkv_bias;             /* derived [3C] = q_bias, 0, v_bias */
} vs_rt_block_w;

typedef struct {
    float *w, *b; /* [cout][cin][k][k], [cout] */
    int cout, cin, k;
} vs_rt_conv_w;

typedef struct {
    float *w, *b; /* [c], [c] */
    int c;
} vs_rt_norm_w;

typedef struct {
    vs_rt_norm_w norm1, norm2;
    vs_rt_conv_w conv1, conv2, nin; /* nin.w NULL when channels do not change */
} vs_rt_resblock_w;

typedef struct {
    vs_rt_norm_w norm;
    vs_rt_conv_w qkv, proj;
} vs_rt_attnblock_w;

typedef struct {
    int n_blocks;
    vs_rt_resblock_w block[VS_RT_MAX_LEVELS];   /* vae_num_res_blocks + 1 */
    int n_attn;
    vs_rt_attnblock_w attn[VS_RT_MAX_LEVELS];
    vs_rt_conv_w upsample;                       /* w NULL at level 0 */
} vs_rt_level_w;

typedef struct {
    /* transformer */
    float *class_emb;   /* [num_classes+1][C] */
    float *pos_start;   /* [first_l][C] */
    float *pos_1LC;     /* [L][C] */
    float *lvl_embed;   /* [S][C] */
    float *lvl_pos;     /* derived [L][C] = lvl_embed[scale of token] + pos_1LC */
    float *word_w, *word_b; /* [C][Cvae], [C] */
    float *shared_ada_w, *shared_ada_b; /* [6C][C], [6C] with shared_aln */
    vs_rt_block_w *blocks; /* [depth] (host array, pointers into the weights) */
    float *head_nm_w, *head_nm_b; /* [2C][C], [2C] */
    float *head_w, *head_b;       /* [V][C], [V] */
    /* quantiser */
    float *embedding;             /* [V][Cvae] */
    vs_rt_conv_w phi[VS_RT_MAX_SCALES];
    /* decoder */
    vs_rt_conv_w post_quant_conv, conv_in, conv_out;
    vs_rt_resblock_w mid_block1, mid_block2;
    vs_rt_attnblock_w mid_attn;
    vs_rt_level_w up[VS_RT_MAX_LEVELS];
    vs_rt_norm_w norm_out;
} vs_rt_weights;

typedef struct vs_rt_model {
    vs_rt_config cfg;
    vs_rt_weights w;
    float *data;          /* the one F32 allocation every weight pointer points into */
    size_t data_bytes;
    size_t n_params;      /* parameters stored in the file */
    size_t file_bytes;
    int has_checksum;     /* the metadata's data_crc32 was there (and matched) */
    char path[512];
    char dtype[8];        /* dtype of most stored tensors ("F32", "BF16", "F16") */
} vs_rt_model;

/* Loads and validates `path`. Errors: VS_ERR_IO (open/read/mmap), VS_ERR_INVALID (anything the
 * format rejects; the message names the field or tensor), VS_ERR_NOMEM. *out owned by the caller,
 * freed with vs_rt_model_free. */
vs_status vs_rt_model_load(const char *path, vs_rt_model **out, vs_err *err);
void vs_rt_model_free(vs_rt_model *m);

/* Copies the weight struct with every pointer moved from m->data to new_base (same layout). */
void vs_rt_model_rebase(const vs_rt_model *m, float *new_base, vs_rt_weights *out,
                        vs_rt_block_w *blocks_out /* [depth] */);

/* Phi conv index used at scale s (the tick rule of docs/ALGORITHMS.md §1.6). */
int vs_rt_phi_index(const vs_rt_config *c, int s);

/* Softmax scale of the transformer's attention: 1 with attn_l2_norm (q carries scale_mul), else
 * the reference's 0.25 / sqrt(head_dim). */
float vs_rt_attn_scale(const vs_rt_config *c);

/* KV bytes one image needs at full cache (2 rows, all layers, all tokens, F32). */
size_t vs_rt_full_kv_bytes(const vs_rt_config *c);

/* Resolves a class given as an index ("3") or a name ("cat"); -1 when unknown. */
int vs_rt_class_lookup(const vs_rt_config *c, const char *s);

#endif
