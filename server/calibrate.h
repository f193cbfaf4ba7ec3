/* server/calibrate.h — the calibration run behind `varserve calibrate`: generate images under
 * the full cache, collect what the method needs, and write the file kvcache/calibrate.h makes.
 *
 * Image i has label i mod num_classes and seed i, in batches of at most VS_SRV_CALIBRATE_BATCH.
 * asi and hack collect attention statistics (vs_kv_attn_stats) in one pass; sensitivity runs each
 * batch again once per layer with only that layer cut to the observation window
 * (vs_kv_policy_new_probe) and counts the tokens that change. It lives in server/ because it
 * drives generations (server/gen.h); kvcache/ only turns statistics into files. Engine thread. */
#ifndef VS_SRV_CALIBRATE_H
#define VS_SRV_CALIBRATE_H

#include "common/status.h"
#include "kvcache/policy.h"
#include "kvcache/pool.h"
#include "runtime/model.h"
#include "runtime/var.h"

#define VS_SRV_CALIBRATE_BATCH 8

typedef enum {
    VS_SRV_CALIBRATE_ASI,         /* ScaleKV budget file from attention statistics */
    VS_SRV_CALIBRATE_SENSITIVITY, /* ScaleKV budget file from layer probes */
    VS_SRV_CALIBRATE_HACK,        /* HACK head map from attention statistics */
} vs_srv_calibrate_method;

typedef struct {
    vs_srv_calibrate_method method;
    long images;     /* 1.. */
    int top_history; /* asi's K': history tokens per query whose mass counts */
    float cfg;       /* sampling of every image */
    int top_k;
    float top_p;
} vs_srv_calibrate_opts;

/* Runs the calibration on engine e (built for min(images, VS_SRV_CALIBRATE_BATCH) images) with a
 * pool that holds that many images under `full` (the full policy), and writes the result to
 * out_path: the ScaleKV budget file (asi, sensitivity) or HACK's head map (hack). Errors:
 * VS_ERR_NOMEM, what the generations report, VS_ERR_IO when the file cannot be written. */
vs_status vs_srv_calibrate_run(vs_rt_engine *e, vs_kv_pool *pool, const vs_kv_policy *full,
                               const vs_rt_model *m, const vs_srv_calibrate_opts *o,
                               const char *out_path, vs_err *err);

#endif
