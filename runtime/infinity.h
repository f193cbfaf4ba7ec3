/* runtime/infinity.h — the Infinity model family (FoundationVision/Infinity: bitwise next-scale
 * prediction conditioned on T5 text features). What is written so far: its BSQ VAE decoder,
 * loaded from an Infinity file and run by runtime/vae.c on any backend. The prompt encoder is
 * runtime/t5.h, the bits' feedback runtime/bsq.h; the transformer comes next.
 *
 * The file: safetensors with the reference's state_dict names, `infinity.<name>` for the
 * transformer and `vae.decoder.<name>` for the decoder (with the Conv and Normalize wrappers:
 * `….conv.weight`, `….norm.weight`), F32, F16 or BF16, and the settings as the metadata's
 * "config" JSON string: codebook_dim (the latent's channels, bits a token), vae_base_ch,
 * vae_ch_mult, vae_num_res_blocks, vae_patch_size (the decoder's upsampling, 2^(levels − 1)) and
 * scale_schedule (its last (t, h, w): the latent grid the decoder is sized for; square, t 1). The
 * decoder is VAR's VQ-VAE decoder without post_quant_conv and without attention (docs/ALGORITHMS.md
 * §1.7, §7). Loading checks the transformer's tensors' place in the file but does not keep them. */
#ifndef VS_RT_INFINITY_H
#define VS_RT_INFINITY_H

#include <stddef.h>

#include "common/status.h"
#include "runtime/model.h"

typedef struct {
    vs_rt_config dec;  /* the decoder's shape as runtime/vae.h reads it (other fields 0) */
    vs_rt_weights w;   /* the decoder's weights (every other pointer NULL) */
    float *data;       /* the one F32 allocation they point into */
    size_t data_bytes, n_params;
} vs_rt_infinity_vae;

/* VS_ERR_IO, VS_ERR_INVALID (the message names the field or tensor), VS_ERR_NOMEM. */
vs_status vs_rt_infinity_vae_load(const char *path, vs_rt_infinity_vae **out, vs_err *err);
void vs_rt_infinity_vae_free(vs_rt_infinity_vae *v);

#endif
