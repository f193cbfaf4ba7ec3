/* server/quality.h — image fidelity measures for `varserve fidelity`. Pure functions; any thread. */
#ifndef VS_SRV_QUALITY_H
#define VS_SRV_QUALITY_H

#include <stdint.h>

/* PSNR in dB between two 8-bit images of n bytes (INFINITY when identical). */
double vs_srv_psnr(const uint8_t *a, const uint8_t *b, int n);

/* Mean SSIM over the channels of two 8-bit RGB images [h][w][3]: 11×11 Gaussian window (σ 1.5),
 * C1 = (0.01·255)², C2 = (0.03·255)², statistics over the valid window positions. */
double vs_srv_ssim(const uint8_t *a, const uint8_t *b, int w, int h);

#endif
