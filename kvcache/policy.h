/* kvcache/policy.h — KV compression policies: how many tokens each layer keeps after each scale,
 * which ones, and the peak pages a job must reserve for that. Each policy is one vs_kv_policy_def
 * in the registry of policy.c, its code in its own file (policy_full.c, policy_scalekv.c,
 * policy_window.c); the list of policies exists nowhere else.
 *
 * Design (docs/ALGORITHMS.md §3–4): after layer l finished its attention at scale s, each head h of
 * a row that holds more than capacity(l, h, s) tokens is compacted to exactly that many; heads may
 * keep different counts (each holds its own pages).
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
#include "runtime/kv_compact.h"
#include "runtime/model.h"

typedef enum {
    VS_KV_POLICY_FULL = 0,
    VS_KV_POLICY_SCALEKV,
    VS_KV_POLICY_SNAPKV,
    VS_KV_POLICY_PYRAMIDKV,
    VS_KV_POLICY_SLIDING,
    VS_KV_POLICY_STREAMINGLLM,
    VS_KV_POLICY_HACK,
    VS_KV_POLICY_COUNT
} vs_kv_policy_kind;

#define VS_KV_WINDOW 16       /* observation window: 16 queries on a 4×4 grid */
#define VS_KV_POOL_KERNEL 5   /* max-pool width over token order */
#define VS_KV_KEEP_ALL INT32_MAX
#define VS_KV_HACK_SHARE 0.5  /* hack: a contextual head's capacity over B, unless its head map says */

typedef struct vs_kv_policy vs_kv_policy;

/* Rows one image runs as: the conditional and the unconditional (classifier-free guidance) row.
 * Every per-image count of rows, pages or tables is this times the per-row one. */
#define VS_KV_ROWS_PER_IMAGE 2

/* Which budget file a policy reads (vs_kv_policy_budget_file). */
typedef enum {
    VS_KV_BUDGET_FILE_NONE = 0, /* none */
    VS_KV_BUDGET_FILE_SCALEKV,  /* MODEL.budgets.json: drafter/refiner marks (`varserve calibrate`) */
    VS_KV_BUDGET_FILE_HACK,     /* MODEL.hack.json: the head map (`varserve calibrate --method hack`) */
    VS_KV_BUDGET_FILE_KINDS
} vs_kv_budget_file_kind;

/* The file name a budget file of kind k has next to the model (".budgets.json", ".hack.json");
 * NULL for NONE. */
const char *vs_kv_budget_file_suffix(vs_kv_budget_file_kind k);

/* One KV policy, all of it: the registry (vs_kv_policy_defs) holds one of these per policy, and
 * everything else (config, API and CLI validation, --help, /info, metrics labels, the peak pages)
 * is derived from it. Adding a policy: a file kvcache/policy_NAME.c defining its def, one
 * vs_kv_policy_kind and one registry line in policy.c, and its tests (docs/ARCHITECTURE.md). */
typedef struct vs_kv_policy_def {
    vs_kv_policy_kind kind;
    const char *name;
    const char *doc;                   /* one line, for --help and the docs */
    int compresses;                    /* 0: keeps every token and ignores the budget (full) */
    vs_kv_budget_file_kind budget_file;
    /* Optional, at creation after the common fields: reads the budget file (NULL: the default;
     * the policy's source, vs_kv_policy_source, becomes the file's path once this succeeds). */
    vs_status (*prepare)(vs_kv_policy *p, const char *budget_file, vs_err *err);
    /* Tokens head `head` of `layer` keeps after `scale` once the cache is longer than that
     * (VS_KV_KEEP_ALL: no compression); tabulated at creation for scales 0..n_scales-2. */
    int32_t (*cap)(const vs_kv_policy *p, int layer, int head, int scale);
    /* The selection rule as a plan of the head's n_tokens candidates (runtime/kv_compact.h): its
     * forced ranges, ranked span, want and pool radius; the caller fills n, the score queries
     * and kept (vs_kv_policy_plan_head). Called only when cap < n_tokens; must keep cap. */
    void (*plan)(const vs_kv_policy *p, int layer, int head, int scale_side, int n_tokens, int n_new,
                 int cap, vs_rt_kv_plan *out);
} vs_kv_policy_def;

/* The registry, indexed by kind: n (if not NULL) = VS_KV_POLICY_COUNT. */
const vs_kv_policy_def *const *vs_kv_policy_defs(int *n);
const vs_kv_policy_def *vs_kv_policy_def_of(vs_kv_policy_kind k); /* NULL when out of range */
const vs_kv_policy_def *vs_kv_policy_lookup(const char *name);    /* NULL when no policy has it */

const char *vs_kv_policy_name(vs_kv_policy_kind k);
int vs_kv_policy_parse(const char *s, vs_kv_policy_kind *out); /* 0 on success */
/* The registry's names in order, joined by sep, the last two by last_sep ("a, b or c"); returns
 * the length it needed (as snprintf). */
int vs_kv_policy_names(char *out, size_t cap, const char *sep, const char *last_sep);
/* "full|scalekv|..." (the config key's choices), built once; any thread. */
const char *vs_kv_policy_choices(void);

/* The budget file a policy of kind k reads for the model at model_path: `configured` when not
 * empty, else MODEL + the kind's suffix when it exists (vs_kv_budget_path_for); NULL when the policy reads
 * none or there is none (the policy then uses its documented default). buf holds the path. */
const char *vs_kv_policy_budget_file(vs_kv_policy_kind k, const char *model_path, const char *configured,
                                     char *buf, size_t cap);

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

/* For tests and calibration probes: a policy with the selection rule (and name) of kind
 * `selection` that keeps exactly caps[(scale * depth + layer) * num_heads + head] tokens
 * (VS_KV_KEEP_ALL: no compression) after scales 0..n_scales-2, from the first scale on; caps is
 * copied. Its budget is the mean kept fraction. Errors: VS_ERR_INVALID (a cap below the
 * observation window, a kind that does not compress), VS_ERR_NOMEM. */
vs_status vs_kv_policy_new_caps(const vs_rt_config *c, vs_kv_policy_kind selection,
                                const int32_t *caps, vs_kv_policy **out, vs_err *err);

vs_kv_policy_kind vs_kv_policy_kind_of(const vs_kv_policy *p);
double vs_kv_policy_budget(const vs_kv_policy *p);
/* "default" or the budget file's path */
const char *vs_kv_policy_source(const vs_kv_policy *p);

/* Tokens head `head` of `layer` keeps after scale `scale` when it holds `tokens` (VS_KV_KEEP_ALL:
 * no compression). Nothing is kept after the last scale: the caller releases the layer there. */
int vs_kv_policy_capacity(const vs_kv_policy *p, int layer, int head, int scale, int tokens);

/* 1 when `layer` is a drafter at `scale` (scalekv), else 0. */
int vs_kv_policy_is_drafter(const vs_kv_policy *p, int layer, int scale);

/* The observation window of a scale of side `side` whose n_new tokens sit at slots
 * [n_tokens - n_new, n_tokens): writes VS_KV_WINDOW ascending slots, returns how many (fewer when
 * the cache is shorter). Side ≥ 4: the centres of a 4×4 grid of patches of side side/4; else the
 * last 16 slots. */
int vs_kv_window(int side, int n_tokens, int n_new, int32_t *slots);

/* The plan (runtime/kv_compact.h) by which head `head` of `layer` keeps min(cap, n_tokens) of its
 * n_tokens candidates (the last n_new of them the scale's, of side scale_side): every one when
 * cap allows, else the policy's rule; its score queries are the observation window's
 * (vs_kv_window; a window slot before this scale uses the scale's first query). */
void vs_kv_policy_plan_head(const vs_kv_policy *p, int layer, int head, int scale_side, int n_tokens,
                            int n_new, int cap, vs_rt_kv_plan *out);

/* Chooses the tokens head `head` of `layer` keeps on the host: its plan's candidates, ascending,
 * into keep (vs_rt_kv_plan_keep). scores: [n_tokens] summed window-query·key products (ignored by
 * sliding and streamingllm; may then be NULL). tmp: scratch of 4·n_tokens floats. Returns the
 * count written (cap, or n_tokens when that is smaller). */
int vs_kv_policy_select_head(const vs_kv_policy *p, int layer, int head, int scale_side,
                             int n_tokens, int n_new, const float *scores, int cap, int32_t *keep,
                             float *tmp);

/* The flow of one row's (layer, head) at one scale (kvcache/step.h), the one description both the
 * step's hooks and the peak-pages simulation follow. A layer's op is COMPRESS when any of its heads
 * compresses (vs_kv_policy_layer_op): the new K,V then stay in qkv for every head, and the heads
 * that keep all take them from there; STORE only when no head compresses. A head's peak and after
 * do not depend on the layer's op. */
typedef enum {
    VS_KV_FLOW_STORE = 0, /* keeps every token: pages for the new ones, the attention stores them */
    VS_KV_FLOW_COMPRESS,  /* new tokens stay in qkv; after the attention the head keeps `cap` */
    VS_KV_FLOW_RELEASE,   /* the last scale: attends from qkv, then the layer is released */
} vs_kv_flow_op;

typedef struct {
    vs_kv_flow_op op;
    int cap;  /* tokens kept after the scale: VS_KV_KEEP_ALL (store), the capacity, or 0 (release) */
    int peak; /* tokens the head holds pages for at most during the scale */
    int after; /* tokens it holds after the scale */
} vs_kv_flow;

/* The flow of (layer, head) at `scale` holding `held` tokens before it and computing n_new. p NULL
 * means full; n_scales is the model's. */
vs_kv_flow vs_kv_policy_flow(const vs_kv_policy *p, int n_scales, int layer, int head, int scale,
                             int held, int n_new);
/* The op of a row's layer whose heads hold held[0..heads-1] tokens: RELEASE at the last scale,
 * COMPRESS when any head's flow compresses, else STORE. */
vs_kv_flow_op vs_kv_policy_layer_op(const vs_kv_policy *p, int n_scales, int layer, int heads,
                                    int scale, const int *held, int n_new);

/* Pages one row needs at its peak under this policy, in the flow of kvcache/step.h, counted per
 * head (Σ over heads of the pages of each head's tokens): a head that keeps every token gets pages
 * for the new ones; a compressed head holds only its capacity (the new tokens are selected from
 * qkv); a compressing layer first grows every head that grows, then shrinks the others; after the
 * last scale's attention the layer is released. */
size_t vs_kv_policy_peak_pages_per_row(const vs_kv_policy *p, int page_tokens);
/* The same for one image: VS_KV_ROWS_PER_IMAGE rows (what a job reserves per image). */
size_t vs_kv_policy_peak_pages_per_image(const vs_kv_policy *p, int page_tokens);
/* Average tokens per (layer, head) kept after the last compressing scale (what "budget" means). */
double vs_kv_policy_mean_tokens(const vs_kv_policy *p);

#endif
