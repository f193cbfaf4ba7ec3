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

typedef struct vs_rt_vae vs_rt_vae;

/* w: the weights as the backend sees them. batch: the most images one decode is given (the
 * engine's max images); scratch is sized for as many of them as the decoder's memory budget
 * holds (at least one; the budget is vae.c's: on a device every image of a step), and larger
 * decodes run in groups. Logs the group size and its bytes. */
vs_status vs_rt_vae_new(const vs_rt_model *m, vs_rt_backend *be, const vs_rt_weights *w, int batch,
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
