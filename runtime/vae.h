/* runtime/vae.h — the VQ-VAE decoder: f_hat → pixels, on a backend.
 *
 * Buffers are sized once for the model's largest activation; decode allocates nothing.
 * Engine thread only. */
#ifndef VS_RT_VAE_H
#define VS_RT_VAE_H

#include <stdint.h>

#include "common/status.h"
#include "runtime/backend.h"
#include "runtime/model.h"
#include "runtime/safetensors.h"

typedef struct vs_rt_vae vs_rt_vae;

/* How a family's files name the decoder's tensors: VAR's VQ-VAE ("vae.decoder", "", "", with
 * attention in the mid block and the top level) or Infinity's BSQ VAE ("vae.decoder", ".conv",
 * ".norm": its Conv and Normalize wrappers; no attention). A conv is `<prefix><conv>.weight` and
 * `.bias`, a GroupNorm `<prefix><norm>.weight` and `.bias`. */
typedef struct {
    const char *prefix, *conv, *norm;
    int attention;
} vs_rt_vae_names;

/* The decoder's tensors (conv_in to conv_out; not VAR's post_quant_conv) for the config's shape
 * (z_channels, vae_ch, vae_ch_mult, n_levels, vae_num_res_blocks), their pointers into *w; 0, or
 * −1 out of memory. */
int vs_rt_vae_expect(vs_st_expects *l, const vs_rt_config *c, vs_rt_weights *w, const vs_rt_vae_names *nm);

/* Moves every decoder pointer of *w (post_quant_conv to conv_out) from the allocation at old_base
 * to the same offset of new_base (a backend's copy of it); NULL pointers stay NULL. */
void vs_rt_vae_rebase(const vs_rt_config *c, vs_rt_weights *w, const float *old_base, float *new_base);

/* One conv's weight (cout, cin, k, k) and bias (cout), named `<prefix><sfx>.weight` / `.bias`. */
int vs_rt_vae_expect_conv(vs_st_expects *l, vs_rt_conv_w *cw, int cout, int cin, int k, const char *prefix,
                          const char *sfx);

/* c: the decoder's shape (the fields vs_rt_vae_expect reads, patch_nums[n_scales − 1] the latent's
 * side and image_size); w: the weights as the backend sees them (a NULL post_quant_conv or mid
 * attention is skipped). batch: the most images one decode is given (the
 * engine's max images); scratch is sized for as many of them as the decoder's memory budget
 * holds (at least one; the budget is vae.c's: on a device every image of a step), and larger
 * decodes run in groups. Logs the group size and its bytes. */
vs_status vs_rt_vae_new(const vs_rt_config *c, vs_rt_backend *be, const vs_rt_weights *w, int batch,
                        vs_rt_vae **out, vs_err *err);
void vs_rt_vae_free(vs_rt_vae *v); /* NULL ok */

/* Lists the conv2d shapes of one decode in *wl, raises spatial_attention's extent to it and
 * decode_images to the images of one decode group of v. */
void vs_rt_vae_workload(const vs_rt_vae *v, vs_rt_workload *wl);

/* The weights of the decoder's convolutions into out[0..cap); returns how many there are (which
 * may be more than cap: call with cap 0 to count). */
int vs_rt_vae_conv_weights(const vs_rt_config *c, const vs_rt_weights *w, const float **out, int cap);

/* n images together: f_hat[i] backend [Cvae][P][P] → rgb[i] host [H][W][3] bytes round(255·x)
 * and/or unit[i] host [3][H][W] (rgb, unit or any of their entries may be NULL). An image's
 * pixels do not depend on n or on the other images. */
vs_status vs_rt_vae_decode(vs_rt_vae *v, const float *const *f_hat, int n, uint8_t *const *rgb,
                           float *const *unit, vs_err *err);

#endif
