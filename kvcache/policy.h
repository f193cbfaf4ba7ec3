/* kvcache/policy.h — KV compression policies: how many tokens each layer keeps after each scale,
 * which ones, and the peak pages a job must reserve for that.
 *
 * Design (docs/ALGORITHMS.md §3–4): after layer l finished its attention at scale s, a row whose
 * layer holds more than capacity(l, s) tokens is compacted, per head, to exactly that many.
 * `full` never compresses. `scalekv` gives drafter layers (from a calibrated budget file) the
 * whole cache and refiners what is left so the mean over layers equals the budget; when the budget
 * can not afford whole-cache drafters (few layers, small budgets), drafters get what is left once
 * every refiner holds its window, so a scalekv image never costs more than the budget says; `snapkv` uses
 * the same selection with one capacity for all layers; `pyramidkv` shrinks capacity linearly with
 * depth (1.5·B at the first layer to 0.5·B at the last); `sliding` keeps the most recent tokens;
 * `streamingllm` keeps the first two scales as sinks plus the most recent tokens. The budget B is
 * a fraction of the full cache length L. Capacities never drop below the observation window.
 *
 * A policy is immutable after creation; any thread may read it. */
#ifndef VS_KV_POLICY_H
#define VS_KV_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "runtime/model.h"

typedef enum {
    VS_KV_POLICY_FULL = 0,
    VS_KV_POLICY_SCALEKV,
    VS_KV_POLICY_SNAPKV,
    VS_KV_POLICY_PYRAMIDKV,
    VS_KV_POLICY_SLIDING,
    VS_KV_POLICY_STREAMINGLLM,
    VS_KV_POLICY_COUNT
} vs_kv_policy_kind;

#define VS_KV_WINDOW 16       /* observation window: 16 queries on a 4×4 grid */
#define VS_KV_POOL_KERNEL 5   /* max-pool width over token order */
#define VS_KV_KEEP_ALL INT32_MAX

typedef struct vs_kv_policy vs_kv_policy;

const char *vs_kv_policy_name(vs_kv_policy_kind k);
int vs_kv_policy_parse(const char *s, vs_kv_policy_kind *out); /* 0 on success */

/* budget: fraction of the full cache, 0 < budget ≤ 1 (ignored by full). budget_file: a ScaleKV
 * budget file from `varserve calibrate` (scalekv only; NULL = the documented default: the first
 * layer is the drafter at every scale). Errors: VS_ERR_INVALID naming the value or file field,
 * VS_ERR_IO, VS_ERR_NOMEM. */
vs_status vs_kv_policy_new(vs_kv_policy_kind kind, double budget, const vs_rt_config *c,
                           const char *budget_file, vs_kv_policy **out, vs_err *err);
void vs_kv_policy_free(vs_kv_policy *p); /* NULL ok */

/* Calibration probe: the snapkv selection compressing only `layer`, to the observation window, at
 * every scale; every other layer keeps its whole cache. VS_ERR_INVALID for a layer out of range. */
vs_status vs_kv_policy_new_probe(const vs_rt_config *c, int layer, vs_kv_policy **out, vs_err *err);

vs_kv_policy_kind vs_kv_policy_kind_of(const vs_kv_policy *p);
double vs_kv_policy_budget(const vs_kv_policy *p);
/* "default" or the budget file's path */
const char *vs_kv_policy_source(const vs_kv_policy *p);

/* Tokens layer `layer` keeps after scale `scale` when it holds `tokens` (VS_KV_KEEP_ALL: no
 * compression). Nothing is kept after the last scale: the caller releases the layer there. */
int vs_kv_policy_capacity(const vs_kv_policy *p, int layer, int scale, int tokens);

/* 1 when `layer` is a drafter at `scale` (scalekv), else 0. */
int vs_kv_policy_is_drafter(const vs_kv_policy *p, int layer, int scale);

/* The observation window of a scale of side `side` whose n_new tokens sit at slots
 * [n_tokens - n_new, n_tokens): writes VS_KV_WINDOW ascending slots, returns how many (fewer when
 * the cache is shorter). Side ≥ 4: the centres of a 4×4 grid of patches of side side/4; else the
 * last 16 slots. */
int vs_kv_window(int side, int n_tokens, int n_new, int32_t *slots);

/* Chooses the tokens one head keeps: `cap` slots, ascending, into keep. scores: [n_tokens] summed
 * window-query·key products (ignored by sliding and streamingllm; may then be NULL). tmp: scratch
 * of 4·n_tokens floats. Returns the count written (cap, or n_tokens when that is smaller). */
int vs_kv_policy_select_head(const vs_kv_policy *p, int scale_side, int n_tokens, int n_new,
                             const float *scores, int cap, int32_t *keep, float *tmp);

/* Pages one row needs at its peak under this policy, in the flow of kvcache/step.h: a layer that
 * keeps every token gets pages for the new ones; a compressed layer holds only its capacity (the
 * new tokens are selected from qkv); after the last scale's attention the layer is released. */
size_t vs_kv_policy_peak_pages_per_row(const vs_kv_policy *p, int page_tokens);
/* Average tokens per layer kept after the last compressing scale (what "budget" means). */
double vs_kv_policy_mean_tokens(const vs_kv_policy *p);

#endif
