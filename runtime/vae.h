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

/* w: the weights as the backend sees them. batch: images decoded together (scratch scales). */
vs_status vs_rt_vae_new(const vs_rt_model *m, vs_rt_backend *be, const vs_rt_weights *w, int batch,
                        vs_rt_vae **out, vs_err *err);
void vs_rt_vae_free(vs_rt_vae *v); /* NULL ok */

/* Lists the conv2d shapes of one decode in *wl and raises spatial_attention's extent to it. */
void vs_rt_vae_workload(const vs_rt_config *c, const vs_rt_weights *w, vs_rt_workload *wl);

/* The weights of the decoder's convolutions into out[0..cap); returns how many there are (which
 * may be more than cap: call with cap 0 to count). */
int vs_rt_vae_conv_weights(const vs_rt_config *c, const vs_rt_weights *w, const float **out, int cap);

/* f_hat backend [Cvae][P][P] → rgb host [H][W][3] bytes round(255·x) and/or unit host [3][H][W]. */
vs_status vs_rt_vae_decode(vs_rt_vae *v, const float *f_hat, uint8_t *rgb, float *unit, vs_err *err);

#endif
