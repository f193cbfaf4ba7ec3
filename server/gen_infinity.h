/* server/gen_infinity.h — an Infinity model ready to generate from prompts: the transformer, its
 * T5 encoder and SentencePiece tokenizer, and its BSQ-VAE decoder on a backend, loaded and checked
 * against each other together; then batches of images, each batch run in lockstep (every image at
 * the same scale) on the library's exact FP32 host engine (runtime/infinity.h) and decoded together
 * on the backend.
 *
 * Behind `varserve generate` with an Infinity model and the HTTP engine's Infinity mode, so the two
 * give the same pixels for the same prompt, seed and settings. What it is not yet: the transformer on
 * the backend interface with its KV in the pool, and images joining a running batch
 * (docs/ARCHITECTURE.md, "Serving Infinity"). A batch's images share their sampling settings;
 * each has its own prompt and seed, and its pixels do not depend on the others in the batch.
 *
 * Threads: one thread at a time (the engine's, or the CLI's main). */
#ifndef VS_SRV_GEN_INFINITY_H
#define VS_SRV_GEN_INFINITY_H

#include <stdint.h>

#include "common/status.h"
#include "runtime/backend.h"
#include "runtime/infinity.h"

/* The reference's run_infinity.py defaults, for requests and command lines that set none. */
#define VS_SRV_INF_DEFAULT_CFG 3.0
#define VS_SRV_INF_DEFAULT_TAU 1.0
#define VS_SRV_INF_DEFAULT_TOP_K 900
#define VS_SRV_INF_DEFAULT_TOP_P 0.97

typedef struct vs_srv_inf vs_srv_inf;

/* The three files, or (as `names`) how messages name where each came from: "--t5", "config key
 * 't5'", ... */
typedef struct {
    const char *model, *t5, *spiece;
} vs_srv_inf_files;

/* Loads the three files and checks that they belong together (the encoder's width is the one the
 * model reads; the tokenizer's pieces are within the encoder's vocabulary), and readies the decoder
 * on a new backend of `kind` for batches of up to max_batch images. Errors: VS_ERR_INVALID for a
 * missing, wrong or mismatched file (naming it by `names`), VS_ERR_IO, VS_ERR_NOMEM, the backend's. */
vs_status vs_srv_inf_open(const vs_srv_inf_files *files, const vs_srv_inf_files *names, vs_rt_backend_kind kind,
                          int threads, int max_batch, vs_srv_inf **out, vs_err *err);
void vs_srv_inf_close(vs_srv_inf *g); /* NULL ok */

const vs_rt_infinity *vs_srv_inf_model(const vs_srv_inf *g);
const vs_rt_backend *vs_srv_inf_backend(const vs_srv_inf *g);
int vs_srv_inf_image_size(const vs_srv_inf *g); /* the decoded images are this many pixels square */

typedef struct {
    float cfg, tau; /* guidance and temperature, every scale */
    int top_k;      /* 1 greedy bits; 0 or ≥ 2 both kept */
    float top_p;    /* 0 off */
} vs_srv_inf_sampling;

/* Starts a batch of n (1..max_batch) images: image i from prompts[i] with seeds[i] (ending any batch
 * still running). VS_ERR_INVALID names a prompt the tokenizer refuses; VS_ERR_NOMEM. */
vs_status vs_srv_inf_begin(vs_srv_inf *g, const char *const *prompts, const uint64_t *seeds, int n,
                           const vs_srv_inf_sampling *s, vs_err *err);

/* Runs the batch's next scale: 1 when more follow, 0 when it was the last, -1 (err set) when it
 * failed (the batch is then ended). */
int vs_srv_inf_step(vs_srv_inf *g, vs_err *err);

/* The scales the batch has run (0 before the first step). */
int vs_srv_inf_scales_done(const vs_srv_inf *g);

/* After the last scale: decodes every image of the batch together, image i into rgb[i]
 * (image_size² × 3 bytes), and ends the batch. */
vs_status vs_srv_inf_decode(vs_srv_inf *g, uint8_t *const *rgb, vs_err *err);

#endif
