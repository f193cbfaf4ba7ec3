/* runtime/bsq.h — Infinity's bitwise tokens as latent codes (binary spherical quantisation, BSQ)
 * and the feedback between scales of its next-scale prediction, in FP32 on the host.
 *
 * An Infinity token is d bits (d = 32 for its VAE); its code is the vector with ±1/√d per bit
 * (bit 1 → +, bit 0 → −), L2-normalised as the reference does (F.normalize: already unit length
 * up to rounding). After each scale s < last, the running latent `summed` (d × H × W, the last
 * scale's grid) gains the codes resized to H × W, and the next scale's input is `summed` resized
 * to that scale's grid; the last scale's codes are added as they are (docs/ALGORITHMS.md §7).
 * Every resize is PyTorch's F.interpolate(mode="trilinear", align_corners=False) on a (1, h, w)
 * volume: the time axis is 1 → 1, so it is bilinear with PyTorch's source-index rule. Pure
 * functions; any thread. */
#ifndef VS_RT_BSQ_H
#define VS_RT_BSQ_H

#include <stdint.h>

/* codes [d][h][w] (channel first) of bits [h][w][d] (each 0 or 1, token-major as sampled). */
void vs_rt_bsq_codes(const uint8_t *bits, int h, int w, int d, float *codes);

/* dst [n][ho][wo] = the trilinear resize (align_corners=False) of src [n][hi][wi]. */
void vs_rt_bsq_resize(const float *src, int n, int hi, int wi, float *dst, int ho, int wo);

/* One scale's feedback: summed [d][H][W] += its codes resized to H × W (scratch: d·(h·w + H·W)
 * floats); then, unless the next grid is 0 × 0, next [hn·wn][d] (token-major, the transformer's
 * input rows) = summed resized to hn × wn. */
void vs_rt_bsq_feedback(const uint8_t *bits, int h, int w, int d, float *summed, int H, int W, float *next, int hn,
                        int wn, float *scratch);

#endif
