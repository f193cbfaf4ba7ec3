/* kvcache/calibrate.c — see calibrate.h. */
#include "kvcache/calibrate.h"

#include "common/json_file.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

vs_status vs_kv_stats_init(vs_kv_attn_stats *st, const vs_rt_config *c, int top_history, vs_err *err)
{
    size_t n = (size_t)c->n_scales * c->depth;
    memset(st, 0, sizeof *st);
    st->depth = c->depth;
    st->n_scales = c->n_scales;
    st->top_history = top_history;
    st->cur_mass = calloc(n, sizeof(double));
    st->hist_mass = calloc(n, sizeof(double));
    st->count = calloc(n, sizeof(double));
    st->heads = c->num_heads;
    st->head_uneven = calloc((size_t)c->depth * c->num_heads, sizeof(double));
    st->head_weight = calloc((size_t)c->depth * c->num_heads, sizeof(double));
    if (!st->cur_mass || !st->hist_mass || !st->count || !st->head_uneven || !st->head_weight) {
        vs_kv_stats_free(st);
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    }
    return VS_OK;
}

void vs_kv_stats_free(vs_kv_attn_stats *st)
{
    free(st->cur_mass);
    free(st->hist_mass);
    free(st->count);
    free(st->head_uneven);
    free(st->head_weight);
    st->cur_mass = st->hist_mass = st->count = st->head_uneven = st->head_weight = NULL;
}

static int cmp_by_asi(const void *a, const void *b, void *ctx)
{
    const double *asi = ctx;
    int x = *(const int *)a, y = *(const int *)b;
    if (asi[x] < asi[y])
        return -1;
    if (asi[x] > asi[y])
        return 1;
    return (x > y) - (x < y);
}

static int drafters_per_scale(int depth)
{
    int nd = (int)lround(depth / 16.0);
    return nd < 1 ? 1 : nd;
}

static cJSON *budget_root(const vs_rt_config *c, const char *model_name, int images, const char *method,
                          const char *rule)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", "varserve-scalekv-budget");
    cJSON_AddNumberToObject(root, "version", 1);
    cJSON_AddStringToObject(root, "model", model_name);
    cJSON_AddNumberToObject(root, "depth", c->depth);
    cJSON_AddNumberToObject(root, "images", images);
    cJSON_AddStringToObject(root, "method", method);
    cJSON_AddStringToObject(root, "rule", rule);
    return root;
}

static cJSON *scale_item(const vs_rt_config *c, int s, const int *drafters, int nd)
{
    cJSON *item = cJSON_CreateObject();
    cJSON_AddNumberToObject(item, "scale", s);
    cJSON_AddNumberToObject(item, "side", c->patch_nums[s]);
    cJSON_AddNumberToObject(item, "tokens", c->scale_offset[s + 1]);
    cJSON *dr = cJSON_AddArrayToObject(item, "drafters");
    for (int k = 0; k < nd; k++)
        cJSON_AddItemToArray(dr, cJSON_CreateNumber(drafters[k]));
    return item;
}

/* Writes root (then frees it). */
static vs_status write_budget(cJSON *root, const char *path, vs_err *err)
{
    if (vs_json_write_file(root, path, 1) != 0)
        return vs_err_set(err, VS_ERR_IO, "cannot write budget file '%s': %s", path, strerror(errno));
    return VS_OK;
}

vs_status vs_kv_calibrate_write(const vs_kv_attn_stats *st, const vs_rt_config *c,
                                const char *model_name, int images, const char *path, vs_err *err)
{
    int depth = c->depth, nd = drafters_per_scale(depth);
    nd = nd < depth ? nd : depth;
    cJSON *root = budget_root(c, model_name, images, "asi",
                              "per scale: ASI = mean mass on the current scale x mean mass of the "
                              "top-K' history tokens; drafters = the N_d layers of lowest z-scored ASI");
    cJSON_AddNumberToObject(root, "top_history", st->top_history);
    cJSON *scales = cJSON_AddArrayToObject(root, "scales");
    double *asi = malloc((size_t)depth * sizeof *asi);
    int *order = malloc((size_t)depth * sizeof *order);
    if (!asi || !order) {
        free(asi);
        free(order);
        cJSON_Delete(root);
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    }
    for (int s = 1; s < c->n_scales; s++) {
        double mean = 0, var = 0;
        for (int l = 0; l < depth; l++) {
            size_t at = (size_t)s * depth + l;
            double n = st->count[at] > 0 ? st->count[at] : 1;
            asi[l] = (st->cur_mass[at] / n) * (st->hist_mass[at] / n);
            mean += asi[l];
        }
        mean /= depth;
        for (int l = 0; l < depth; l++)
            var += (asi[l] - mean) * (asi[l] - mean);
        double sd = sqrt(var / depth);
        for (int l = 0; l < depth; l++)
            order[l] = l;
        qsort_r(order, (size_t)depth, sizeof *order, cmp_by_asi, asi);
        cJSON *item = scale_item(c, s, order, nd);
        cJSON *ja = cJSON_AddArrayToObject(item, "asi");
        cJSON *jz = cJSON_AddArrayToObject(item, "z");
        for (int l = 0; l < depth; l++) {
            cJSON_AddItemToArray(ja, cJSON_CreateNumber(round(asi[l] * 1e6) / 1e6));
            cJSON_AddItemToArray(jz, cJSON_CreateNumber(sd > 0 ? round((asi[l] - mean) / sd * 1e3) / 1e3 : 0));
        }
        cJSON_AddItemToArray(scales, item);
    }
    free(asi);
    free(order);
    return write_budget(root, path, err);
}

static int cmp_by_damage_desc(const void *a, const void *b, void *ctx)
{
    return -cmp_by_asi(a, b, ctx);
}

vs_status vs_kv_calibrate_write_sensitivity(const double *damage, const vs_rt_config *c,
                                            const char *model_name, int images, const char *path,
                                            vs_err *err)
{
    int depth = c->depth, nd = drafters_per_scale(depth);
    nd = nd < depth ? nd : depth;
    int *order = malloc((size_t)depth * sizeof *order);
    if (!order)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    for (int l = 0; l < depth; l++)
        order[l] = l;
    qsort_r(order, (size_t)depth, sizeof *order, cmp_by_damage_desc, (void *)damage);
    cJSON *root = budget_root(c, model_name, images, "sensitivity",
                              "damage(l) = share of tokens that change when only layer l keeps just "
                              "the observation window (full cache elsewhere); drafters = the N_d "
                              "layers of highest damage, the same at every scale");
    cJSON *jd = cJSON_AddArrayToObject(root, "damage");
    for (int l = 0; l < depth; l++)
        cJSON_AddItemToArray(jd, cJSON_CreateNumber(round(damage[l] * 1e4) / 1e4));
    cJSON *scales = cJSON_AddArrayToObject(root, "scales");
    for (int s = 1; s < c->n_scales; s++)
        cJSON_AddItemToArray(scales, scale_item(c, s, order, nd));
    free(order);
    return write_budget(root, path, err);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Otsu's split of v[0..n): the threshold between the two classes of largest between-class
 * variance, or +inf when no split separates anything (all values equal). */
static double otsu_threshold(const double *v, int n, double *sorted)
{
    memcpy(sorted, v, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_double);
    double total = 0, best = 0, thr = INFINITY, left = 0;
    for (int i = 0; i < n; i++)
        total += sorted[i];
    for (int k = 1; k < n; k++) {
        left += sorted[k - 1];
        double w0 = (double)k / n, w1 = 1 - w0, m0 = left / k, m1 = (total - left) / (n - k);
        double between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if (between > best * (1 + 1e-12) && sorted[k] > sorted[k - 1]) {
            best = between;
            thr = 0.5 * (sorted[k - 1] + sorted[k]);
        }
    }
    return thr;
}

vs_status vs_kv_calibrate_write_hack(const vs_kv_attn_stats *st, const vs_rt_config *c,
                                     const char *model_name, int images, const char *path, vs_err *err)
{
    int N = c->depth * c->num_heads;
    double *v = malloc((size_t)N * sizeof *v), *sorted = malloc((size_t)N * sizeof *sorted);
    char *letters = malloc((size_t)c->num_heads + 1);
    if (!v || !sorted || !letters) {
        free(v);
        free(sorted);
        free(letters);
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < N; i++)
        v[i] = st->head_weight[i] > 0 ? st->head_uneven[i] / st->head_weight[i] : 0;
    double thr = otsu_threshold(v, N, sorted);
    /* the contextual share: a contextual head's effective number of columns over the mean head's,
     * n_eff = L^(1 − U) (the participation ratio 1/Σm² at the full length L) */
    double eff_c = 0, eff_all = 0, L = c->scale_offset[c->n_scales];
    int nc = 0;
    for (int i = 0; i < N; i++) {
        double e = pow(L, 1 - v[i]);
        eff_all += e / N;
        if (v[i] > thr)
            eff_c += e, nc++;
    }
    double share = nc > 0 && eff_all > 0 ? eff_c / nc / eff_all : VS_KV_HACK_SHARE;
    share = share < 0.25 ? 0.25 : share > 1 ? 1 : share;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", "varserve-hack-heads");
    cJSON_AddNumberToObject(root, "version", 1);
    cJSON_AddStringToObject(root, "model", model_name);
    cJSON_AddNumberToObject(root, "depth", c->depth);
    cJSON_AddNumberToObject(root, "heads", c->num_heads);
    cJSON_AddNumberToObject(root, "images", images);
    cJSON_AddStringToObject(root, "statistic",
                            "unevenness U = ln(n * sum_j m_j^2) / ln n of the mean attention row m over the n "
                            "keys of each scale's queries (full cache, scales with history, weighted by "
                            "queries): 1 when every query attends the same one column (vertical map), 0 when "
                            "the column sums are even (diagonal or broad)");
    cJSON_AddStringToObject(root, "rule",
                            "contextual (C) when U is above the threshold, Otsu's split of U over all heads; "
                            "structural (S) otherwise");
    cJSON_AddNumberToObject(root, "threshold", isfinite(thr) ? round(thr * 1e4) / 1e4 : 1e9);
    cJSON_AddNumberToObject(root, "contextual_share", round(share * 1e3) / 1e3);
    cJSON_AddStringToObject(root, "share_rule",
                            "contextual_share = mean over contextual heads of L^(1-U) over the mean over all "
                            "heads (effective columns, L the full cache length), clamped to [0.25, 1]");
    cJSON *map = cJSON_AddArrayToObject(root, "map");
    cJSON *vert = cJSON_AddArrayToObject(root, "unevenness");
    for (int l = 0; l < c->depth; l++) {
        cJSON *row = cJSON_CreateArray();
        for (int h = 0; h < c->num_heads; h++) {
            double x = v[(size_t)l * c->num_heads + h];
            letters[h] = x > thr ? 'C' : 'S';
            cJSON_AddItemToArray(row, cJSON_CreateNumber(round(x * 1e4) / 1e4));
        }
        letters[c->num_heads] = 0;
        cJSON_AddItemToArray(map, cJSON_CreateString(letters));
        cJSON_AddItemToArray(vert, row);
    }
    free(v);
    free(sorted);
    free(letters);
    if (vs_json_write_file(root, path, 1) != 0)
        return vs_err_set(err, VS_ERR_IO, "cannot write head map '%s': %s", path, strerror(errno));
    return VS_OK;
}

int vs_kv_budget_path_for(const char *model_path, vs_kv_budget_file_kind kind, char *out, size_t cap)
{
    size_t n = strlen(model_path);
    const char *ext = ".safetensors";
    size_t el = strlen(ext);
    if (n >= el && strcmp(model_path + n - el, ext) == 0)
        n -= el;
    const char *suffix = vs_kv_budget_file_suffix(kind);
    snprintf(out, cap, "%.*s%s", (int)n, model_path, suffix ? suffix : "");
    if (!suffix)
        return 0;
    FILE *f = fopen(out, "r");
    if (!f)
        return 0;
    fclose(f);
    return 1;
}
