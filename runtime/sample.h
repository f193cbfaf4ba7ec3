/* runtime/sample.h — the reference's top-k / top-p rule and sampling for one token, on the host.
 *
 * The rule (docs/ALGORITHMS.md §1.5): keep the logits ≥ the k-th largest (ties kept); then sort
 * ascending, drop those whose softmax cumulative sum is ≤ 1 − top_p, always keep the largest;
 * sample from the softmax of what is left with one uniform u in [0, 1). Pure functions; any
 * thread. */
#ifndef VS_RT_SAMPLE_H
#define VS_RT_SAMPLE_H

#include <stdint.h>

/* Scratch for one call: VS_RT_SAMPLE_SCRATCH_WORDS(V) 4-byte words, caller-owned, 8-aligned. */
#define VS_RT_SAMPLE_SCRATCH_WORDS(V) ((size_t)(V) * 6)
typedef struct {
    void *buf;
} vs_rt_sample_scratch;

/* Marks keep[i] = 1 for the tokens the rule keeps; returns how many. */
int vs_rt_sample_filter(const float *logits, int V, int top_k, float top_p, uint8_t *keep,
                        vs_rt_sample_scratch *s);

/* The sampled token for uniform u. top_k == 1 is argmax (first of equal maxima). */
int32_t vs_rt_sample_token(const float *logits, int V, int top_k, float top_p, float u,
                           vs_rt_sample_scratch *s);

#endif
