/* kvcache/calibrate.h — calibration: attention statistics → ScaleKV's drafter/refiner budget file
 * or HACK's head map.
 *
 * ASI(l, s) = (mean attention mass a query of scale s puts on its own scale) × (mean mass of its
 * top-K′ history tokens), from full-cache generations (vs_kv_attn_stats). Per scale, ASI is
 * z-scored across layers and the N_d lowest are drafters (they look widely); N_d =
 * max(1, round(depth / 16)) — 2 of 32 layers as in the released Infinity-2B budgets. Scales with
 * no history (the first) keep the default drafter, layer 0. Any thread; no shared state. */
#ifndef VS_KV_CALIBRATE_H
#define VS_KV_CALIBRATE_H

#include "common/status.h"
#include "kvcache/step.h"
#include "runtime/model.h"

vs_status vs_kv_stats_init(vs_kv_attn_stats *st, const vs_rt_config *c, int top_history, vs_err *err);
void vs_kv_stats_free(vs_kv_attn_stats *st);

/* Writes the budget file (JSON) for the statistics. model_name is recorded for people. */
vs_status vs_kv_calibrate_write(const vs_kv_attn_stats *st, const vs_rt_config *c,
                                const char *model_name, int images, const char *path, vs_err *err);

/* The same file from layer sensitivities (`varserve calibrate --method sensitivity`): damage[l]
 * is the share of tokens that change when only layer l is compressed to the observation window
 * (vs_kv_policy_new_probe); the N_d most damaged layers draft at every scale. */
vs_status vs_kv_calibrate_write_sensitivity(const double *damage, const vs_rt_config *c,
                                            const char *model_name, int images, const char *path,
                                            vs_err *err);

/* HACK's head map (`varserve calibrate --method hack`, read by kvcache/policy_hack.c): every
 * (layer, head) classified contextual or structural by its column unevenness U (vs_kv_attn_stats), the
 * threshold by Otsu's split over all heads; the file lists U per head beside the map. */
vs_status vs_kv_calibrate_write_hack(const vs_kv_attn_stats *st, const vs_rt_config *c,
                                     const char *model_name, int images, const char *path, vs_err *err);

/* The budget file of kind `kind` that goes with a model: MODEL minus ".safetensors", plus the
 * kind's suffix (vs_kv_budget_file_suffix). Returns 1 when that file exists, else 0 (out is
 * filled either way). */
int vs_kv_budget_path_for(const char *model_path, vs_kv_budget_file_kind kind, char *out, size_t cap);

#endif
