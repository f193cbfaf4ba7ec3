/* kvcache/policy_hack.c — `hack`: head-aware compression (HACK, arXiv 2504.09261).
 *
 * A head map (MODEL.hack.json from `varserve calibrate --method hack`, kvcache/calibrate.h) marks
 * every (layer, head) contextual or structural. The two kinds get asymmetric capacities whose mean
 * over all heads of the model is the budget B, in whole pages of 16 tokens (P(x) = 16·max(1, round(x/16)),
 * at least the window), since each head's tokens fill pages of their own:
 *   contextual  cap_c = P(share · B)   (share from the file, default VS_KV_HACK_SHARE)
 *   structural  cap_s = P((N·B − n_c·cap_c) / n_s)
 * with N heads in all, n_c contextual, n_s structural; the same at every compressing scale (the
 * common base of §3.1 applies: compressing contextual heads from the first scale past their own
 * capacity cost 3 dB on the bundled model for 11% fewer bytes). And each kind has its own
 * selection rule (docs/ALGORITHMS.md §4):
 *   contextual  (vertical attention maps: every query looks at the same few columns) keeps the
 *               `cap` tokens with the highest raw scores Σ_w q_w·k over the observation queries,
 *               which sit spread uniformly over the current scale (vs_kv_window's 4×4 grid), with
 *               no smoothing and nothing forced in: the columns are what matters;
 *   structural  (multi-diagonal maps: each query looks at its own spatial neighbourhood in every
 *               scale) keeps the first two scales, the current scale, and fills the rest with the
 *               most attended middle tokens (the window scores max-pooled over token order, as
 *               snapkv ranks them); when the current scale alone would not fit, the sinks and the
 *               most recent tokens.
 * The paper's own code was not reachable; its rules above are the simplest ones consistent with
 * its description, and bench/RESULTS.md measures them beside the other policies at equal bytes.
 * Without a head map every head is structural (one capacity B: the documented default). */
#include "kvcache/policy_impl.h"

#include "common/json_file.h"
#include "kvcache/pool.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HACK_FORMAT "varserve-hack-heads"

/* Reads the head map: format, depth, heads, map (one string of C/S per layer), contextual_share. */
static vs_status load_head_map(vs_kv_policy *p, const char *path, vs_err *err)
{
    cJSON *root = NULL;
    char why[128];
    if (vs_json_read_file(path, 16 << 20, &root, why, sizeof why) != 0)
        return vs_err_set(err, strncmp(why, "cannot", 6) == 0 ? VS_ERR_IO : VS_ERR_INVALID,
                          "head map '%s': %s", path, why);
    vs_status st = VS_OK;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *depth = cJSON_GetObjectItemCaseSensitive(root, "depth");
    const cJSON *heads = cJSON_GetObjectItemCaseSensitive(root, "heads");
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "map");
    const cJSON *share = cJSON_GetObjectItemCaseSensitive(root, "contextual_share");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, HACK_FORMAT) != 0) {
        st = vs_err_set(err, VS_ERR_INVALID, "head map '%s': field 'format' must be \"" HACK_FORMAT "\"", path);
    } else if (!cJSON_IsNumber(depth) || depth->valuedouble != p->depth || !cJSON_IsNumber(heads) ||
               heads->valuedouble != p->num_heads) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "head map '%s': fields 'depth' and 'heads' must be the model's %d and %d (the file "
                        "was calibrated for another model)",
                        path, p->depth, p->num_heads);
    } else if (!cJSON_IsArray(map) || cJSON_GetArraySize(map) != p->depth) {
        st = vs_err_set(err, VS_ERR_INVALID, "head map '%s': field 'map' must list %d layers", path, p->depth);
    } else if (share && (!cJSON_IsNumber(share) || !(share->valuedouble > 0 && share->valuedouble <= 1))) {
        st = vs_err_set(err, VS_ERR_INVALID, "head map '%s': field 'contextual_share' must be in (0, 1]", path);
    } else {
        p->contextual_share = share ? share->valuedouble : VS_KV_HACK_SHARE;
        int l = 0;
        const cJSON *row;
        cJSON_ArrayForEach(row, map)
        {
            const char *s = cJSON_IsString(row) ? row->valuestring : NULL;
            if (!s || strlen(s) != (size_t)p->num_heads || strspn(s, "CS") != (size_t)p->num_heads) {
                st = vs_err_set(err, VS_ERR_INVALID,
                                "head map '%s': layer %d of 'map' must be %d letters, C (contextual) or S "
                                "(structural), one per head",
                                path, l, p->num_heads);
                break;
            }
            for (int h = 0; h < p->num_heads; h++)
                p->contextual[(size_t)l * p->num_heads + h] = s[h] == 'C';
            l++;
        }
    }
    cJSON_Delete(root);
    return st;
}

static vs_status hack_prepare(vs_kv_policy *p, const char *head_map, vs_err *err)
{
    p->contextual_share = VS_KV_HACK_SHARE;
    if (!head_map) {
        snprintf(p->source, sizeof p->source, "default (no head map: every head structural)");
        return VS_OK;
    }
    return load_head_map(p, head_map, err);
}

static int is_contextual(const vs_kv_policy *p, int layer, int head)
{
    return p->contextual[(size_t)layer * p->num_heads + head] != 0;
}

/* Capacities in whole pages: a head's pages hold VS_KV_PAGE_TOKENS tokens each, so a capacity
 * between two multiples would pay for slots it leaves empty (per-head pages round per head). */
static int32_t whole_pages(double tokens)
{
    long pages = lround(tokens / VS_KV_PAGE_TOKENS);
    return vs_kv_at_least_window((double)(pages < 1 ? 1 : pages) * VS_KV_PAGE_TOKENS);
}

static int32_t hack_cap(const vs_kv_policy *p, int layer, int head, int scale)
{
    (void)scale;
    int N = p->depth * p->num_heads, nc = 0;
    for (int i = 0; i < N; i++)
        nc += p->contextual[i] != 0;
    if (nc == 0 || nc == N)
        return whole_pages(p->B);
    int32_t cap_c = whole_pages(p->contextual_share * p->B);
    if (is_contextual(p, layer, head))
        return cap_c;
    return whole_pages(((double)N * p->B - (double)nc * cap_c) / (N - nc));
}

static void hack_plan(const vs_kv_policy *p, int layer, int head, int scale_side, int n_tokens,
                      int n_new, int cap, vs_rt_kv_plan *out)
{
    (void)scale_side;
    if (is_contextual(p, layer, head)) { /* the top raw scores, nothing forced */
        out->rank_to = n_tokens;
        out->want = cap;
        return;
    }
    int sinks = p->sinks < cap / 4 ? p->sinks : cap / 4;
    int mid_end = n_tokens - n_new; /* the middle: after the sinks, before the current scale */
    if (sinks + n_new > cap)
        mid_end = n_tokens - (cap - sinks); /* only the sinks and the most recent tokens fit */
    mid_end = mid_end > sinks ? mid_end : sinks;
    vs_kv_plan_force(out, 0, sinks);
    vs_kv_plan_force(out, mid_end, n_tokens);
    /* the middle's scores max-pooled along token order */
    out->rank_from = sinks;
    out->rank_to = mid_end;
    int want = cap - sinks - (n_tokens - mid_end);
    out->want = want > 0 ? want : 0;
    out->pool_radius = VS_KV_POOL_KERNEL / 2;
}

const vs_kv_policy_def vs_kv_policy_hack_def = {
    .kind = VS_KV_POLICY_HACK,
    .name = "hack",
    .doc = "head-aware (HACK): contextual heads (MODEL.hack.json from varserve calibrate --method hack) keep "
           "few top-scored columns, structural heads the first scales, the current one and attended middle "
           "tokens; mean capacity B",
    .compresses = 1,
    .budget_file = VS_KV_BUDGET_FILE_HACK,
    .prepare = hack_prepare,
    .cap = hack_cap,
    .plan = hack_plan,
};
