/* kvcache/policy_scalekv.c — `scalekv`: drafter layers (from a calibrated budget file, default:
 * the first layer at every scale) keep the whole cache when the budget affords it, refiners share
 * what is left so the mean over layers equals the budget (docs/ALGORITHMS.md §3). */
#include "kvcache/policy_impl.h"

#include "common/json_file.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads drafter marks from a budget file written by `varserve calibrate`. */
static vs_status load_budget_file(vs_kv_policy *p, const char *path, vs_err *err)
{
    vs_status st = VS_OK;
    cJSON *root = NULL;
    char why[128];
    if (vs_json_read_file(path, 16 << 20, &root, why, sizeof why) != 0)
        return vs_err_set(err, strncmp(why, "cannot", 6) == 0 ? VS_ERR_IO : VS_ERR_INVALID,
                          "budget file '%s': %s", path, why);
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *depth = cJSON_GetObjectItemCaseSensitive(root, "depth");
    const cJSON *scales = cJSON_GetObjectItemCaseSensitive(root, "scales");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "varserve-scalekv-budget") != 0) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "budget file '%s': field 'format' must be \"varserve-scalekv-budget\"", path);
        goto fail;
    }
    if (!cJSON_IsNumber(depth) || depth->valueint != p->depth) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "budget file '%s': field 'depth' must be the model's depth %d (the file was "
                        "calibrated for another model)",
                        path, p->depth);
        goto fail;
    }
    if (!cJSON_IsArray(scales)) {
        st = vs_err_set(err, VS_ERR_INVALID, "budget file '%s': field 'scales' must be a list", path);
        goto fail;
    }
    const cJSON *sc;
    cJSON_ArrayForEach(sc, scales)
    {
        const cJSON *si = cJSON_GetObjectItemCaseSensitive(sc, "scale");
        const cJSON *dr = cJSON_GetObjectItemCaseSensitive(sc, "drafters");
        if (!cJSON_IsNumber(si) || si->valueint < 0 || si->valueint >= p->n_scales ||
            !cJSON_IsArray(dr)) {
            st = vs_err_set(err, VS_ERR_INVALID,
                            "budget file '%s': each item of 'scales' needs 'scale' (0..%d) and a "
                            "'drafters' list",
                            path, p->n_scales - 1);
            goto fail;
        }
        uint8_t *row = p->drafter + (size_t)si->valueint * p->depth;
        memset(row, 0, (size_t)p->depth);
        const cJSON *l;
        cJSON_ArrayForEach(l, dr)
        {
            if (!cJSON_IsNumber(l) || l->valueint < 0 || l->valueint >= p->depth) {
                st = vs_err_set(err, VS_ERR_INVALID,
                                "budget file '%s': scale %d lists drafter layer outside 0..%d",
                                path, si->valueint, p->depth - 1);
                goto fail;
            }
            row[l->valueint] = 1;
        }
    }
fail:
    cJSON_Delete(root);
    return st;
}

static vs_status scalekv_prepare(vs_kv_policy *p, const char *budget_file, vs_err *err)
{
    for (int s = 0; s < p->n_scales; s++)
        p->drafter[(size_t)s * p->depth] = 1; /* default: the first layer drafts */
    if (!budget_file)
        return VS_OK;
    return load_budget_file(p, budget_file, err);
}

/* The capacity before the refiners' monotone clamp. */
static int32_t raw_cap(const vs_kv_policy *p, int l, int s)
{
    double B = p->B;
    const uint8_t *row = p->drafter + (size_t)s * p->depth;
    int nd = 0;
    for (int k = 0; k < p->depth; k++)
        nd += row[k];
    int nr = p->depth - nd;
    /* drafters keep the whole cache when the budget affords it (as in the paper's budget files),
     * else what is left once every refiner has its window */
    double mx = p->cum[s];
    if (nd > 0 && nr > 0 && B * p->depth - (double)nr * VS_KV_WINDOW < (double)nd * mx)
        mx = (B * p->depth - (double)nr * VS_KV_WINDOW) / nd;
    if (row[l])
        return mx < p->cum[s] ? vs_kv_at_least_window(mx) : VS_KV_KEEP_ALL;
    /* refiners share what the drafters leave of depth·B */
    return nr > 0 ? vs_kv_at_least_window((B * p->depth - (double)nd * mx) / nr) : VS_KV_KEEP_ALL;
}

/* A refiner never keeps more than it will at a later compressing scale. Otherwise refiners still
 * hold an earlier scale's larger share while the drafters already grow for the next one, and an
 * image would peak above its budget (VAR-d16 at 0.1: 87 pages a row instead of 72). */
static int32_t scalekv_cap(const vs_kv_policy *p, int layer, int head, int scale)
{
    (void)head;
    int32_t cap = raw_cap(p, layer, scale);
    if (p->drafter[(size_t)scale * p->depth + layer] || cap == VS_KV_KEEP_ALL)
        return cap;
    for (int s = scale + 1; s <= p->n_scales - 2; s++) {
        int32_t later = raw_cap(p, layer, s);
        if (!p->drafter[(size_t)s * p->depth + layer] && later != VS_KV_KEEP_ALL && later < cap)
            cap = later;
    }
    return cap;
}

const vs_kv_policy_def vs_kv_policy_scalekv_def = {
    .kind = VS_KV_POLICY_SCALEKV,
    .name = "scalekv",
    .doc = "drafter layers (MODEL.budgets.json from varserve calibrate) keep the whole cache, refiners the rest of the budget",
    .compresses = 1,
    .budget_file = VS_KV_BUDGET_FILE_SCALEKV,
    .prepare = scalekv_prepare,
    .cap = scalekv_cap,
    .plan = vs_kv_plan_scored,
};
