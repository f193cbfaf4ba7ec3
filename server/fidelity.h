/* server/fidelity.h — the comparison behind `varserve fidelity`: the same images generated with
 * the full cache and with a compressing policy, and how far apart they come out.
 *
 * Image i has label i mod num_classes and seed seed + i, in batches of at most
 * VS_SRV_FIDELITY_BATCH; both runs share the engine and the pool. Measures are means over the
 * images: PSNR (identical images count as 100 dB), SSIM (server/quality.h) and the share of tokens
 * unchanged. Engine thread. */
#ifndef VS_SRV_FIDELITY_H
#define VS_SRV_FIDELITY_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "kvcache/policy.h"
#include "kvcache/pool.h"
#include "runtime/model.h"
#include "runtime/var.h"

#define VS_SRV_FIDELITY_BATCH 8

typedef struct {
    long images; /* 1.. */
    uint64_t seed;
    float cfg; /* sampling of every image */
    int top_k;
    float top_p;
    /* NULL, or a prefix: each image's pair is written to PREFIX-<i>-full.png and
     * PREFIX-<i>-<dump_tag>.png (failures to write are ignored: the dump is for looking at) */
    const char *dump_prefix, *dump_tag;
} vs_srv_fidelity_opts;

typedef struct {
    double psnr_db, ssim, tokens_unchanged; /* means over the images; tokens: share 0..1 */
    long identical_images;                  /* images whose pixels are all equal */
    size_t pages_per_image_full, pages_per_image; /* pages each image reserved, full and policy */
} vs_srv_fidelity_result;

/* Runs the comparison on engine e (built for min(images, VS_SRV_FIDELITY_BATCH) images) with a
 * pool that holds that many images under `full`. Errors: VS_ERR_NOMEM, what the generations
 * report. */
vs_status vs_srv_fidelity_run(vs_rt_engine *e, vs_kv_pool *pool, const vs_kv_policy *full,
                              const vs_kv_policy *pol, const vs_rt_config *c,
                              const vs_srv_fidelity_opts *o, vs_srv_fidelity_result *r, vs_err *err);

#endif
