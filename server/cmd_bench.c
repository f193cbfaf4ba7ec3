/* server/cmd_bench.c — `varserve bench`: images/s and phase times per batch size, as a table or as
 * JSON Lines (--json), with each policy's KV capacity in the table's header. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common/parse.h"
#include "runtime/simd.h"
#include "server/cmd.h"
#include "server/gen.h"

static int parse_list(const char *s, long *out, int max, long lo, long hi)
{
    int n = 0;
    char *copy = strdup(s);
    for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n == max || vs_cli_long(t, lo, hi, &out[n]) != 0) {
            free(copy);
            return -1;
        }
        n++;
    }
    free(copy);
    return n;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

/* bench --json: one line for batch size n. tr, kv, dec: mean seconds per run; dev: the device
 * counters summed over the `steps` steps of each of the `reps` timed runs (NULL: no device). */
static int bench_json_line(const vs_srv_cli_engine *ce, const vs_srv_cli_opts *o, const vs_kv_policy *pol,
                           int n, long reps, double tr, double kv, double dec, int steps,
                           const vs_rt_counters *dev, const vs_rt_counters *dec_dev)
{
    vs_kv_policy_kind kind = vs_kv_policy_kind_of(pol);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", ce->m->path);
    cJSON_AddStringToObject(j, "backend", ce->be->ops->name);
    cJSON_AddNumberToObject(j, "threads", ce->be->threads);
    if (ce->be->simd)
        cJSON_AddStringToObject(j, "simd", ce->be->simd);
    if (ce->be->blas)
        cJSON_AddStringToObject(j, "blas", ce->be->blas);
    cJSON_AddStringToObject(j, "kv_policy", vs_kv_policy_name(kind));
    cJSON_AddStringToObject(j, "kv_dtype", vs_rt_kv_dtype_name(ce->be->kv_elem_bytes));
    cJSON_AddNumberToObject(j, "kv_bytes_per_image",
                            (double)(vs_kv_policy_peak_pages_per_image(pol, VS_KV_PAGE_TOKENS) *
                                     vs_srv_cli_page_bytes(&ce->m->cfg, ce->be->kv_elem_bytes)));
    if (!vs_kv_policy_def_of(kind)->compresses)
        cJSON_AddNullToObject(j, "kv_budget");
    else
        cJSON_AddNumberToObject(j, "kv_budget", o->kv_budget);
    cJSON_AddNumberToObject(j, "batch", n);
    cJSON_AddNumberToObject(j, "reps", (double)reps);
    cJSON_AddNumberToObject(j, "steps", steps);
    cJSON_AddNumberToObject(j, "images_per_s", n / (tr + dec));
    cJSON_AddNumberToObject(j, "transformer_s", tr);
    cJSON_AddNumberToObject(j, "of_which_kv_s", kv);
    cJSON_AddNumberToObject(j, "decoder_s", dec);
    cJSON_AddNumberToObject(j, "total_s", tr + dec);
    cJSON_AddNumberToObject(j, "peak_rss_mb", peak_rss_mb());
    if (dev) {
        double per = (double)reps * steps;
        cJSON *d = cJSON_AddObjectToObject(j, "device");
        cJSON_AddNumberToObject(d, "launches", (double)dev->launches / per);
        cJSON_AddNumberToObject(d, "copies", (double)dev->copies / per);
        cJSON_AddNumberToObject(d, "syncs", (double)dev->syncs / per);
        cJSON_AddNumberToObject(d, "h2d_bytes", (double)dev->h2d_bytes / per);
        cJSON_AddNumberToObject(d, "d2h_bytes", (double)dev->d2h_bytes / per);
        cJSON_AddNumberToObject(d, "kv_h2d_bytes", (double)dev->kv_h2d_bytes / per);
        cJSON_AddNumberToObject(d, "kv_d2h_bytes", (double)dev->kv_d2h_bytes / per);
        cJSON_AddNumberToObject(d, "allocated_bytes", (double)dev->allocated_peak_bytes);
        /* per decode of the whole batch (not per image): independent of n when it is batched */
        cJSON *dd = cJSON_AddObjectToObject(j, "decoder_device");
        cJSON_AddNumberToObject(dd, "launches", (double)dec_dev->launches / (double)reps);
        cJSON_AddNumberToObject(dd, "copies", (double)dec_dev->copies / (double)reps);
        cJSON_AddNumberToObject(dd, "syncs", (double)dec_dev->syncs / (double)reps);
        cJSON_AddNumberToObject(dd, "h2d_bytes", (double)dec_dev->h2d_bytes / (double)reps);
        cJSON_AddNumberToObject(dd, "d2h_bytes", (double)dec_dev->d2h_bytes / (double)reps);
    } else {
        cJSON_AddNullToObject(j, "device");
        cJSON_AddNullToObject(j, "decoder_device");
    }
    char *txt = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!txt) {
        fprintf(stderr, "varserve: out of memory\n");
        return 1;
    }
    printf("%s\n", txt);
    fflush(stdout);
    free(txt);
    return 0;
}

/* bench's text header: the model and settings, and each policy's KV capacity in a pool_mb pool. */
static void bench_header(const vs_srv_cli_engine *ce, const vs_srv_cli_opts *o, const vs_kv_policy *pol,
                         double pool_mb)
{
    const vs_rt_config *c = &ce->m->cfg;
    vs_err err = {0};
    size_t page_bytes = vs_srv_cli_page_bytes(c, ce->be->kv_elem_bytes);
    printf("model %s: %d layers, width %d, %dx%d, %zu params; backend %s, %d threads", ce->m->path,
           c->depth, c->embed_dim, c->image_size, c->image_size, ce->m->n_params, ce->be->ops->name,
           ce->be->threads);
    if (ce->be->simd) /* the vector path, and how to force another */
        printf(", simd %s (of %s; VARSERVE_CPU_SIMD)", ce->be->simd, vs_rt_simd_available());
    if (ce->be->blas)
        printf("; %s", ce->be->blas);
    printf("\n");
    printf("sampling: cfg %g, top_k %ld, top_p %g; kv policy %s", o->cfg, o->top_k, o->top_p,
           vs_kv_policy_name(vs_kv_policy_kind_of(pol)));
    if (vs_kv_policy_def_of(vs_kv_policy_kind_of(pol))->compresses)
        printf(" at budget %g (%s)", o->kv_budget, vs_kv_policy_source(pol));
    printf("\n");
    /* capacity: KV bytes each image reserves and how many fit in a pool of pool_mb, per policy */
    size_t pool_pages = (size_t)(pool_mb * 1e6 / (double)page_bytes);
    printf("kv per image (peak reserved, %d-token %s pages of %.1f KB) and images in a %.0f MB "
           "pool:\n",
           VS_KV_PAGE_TOKENS, vs_rt_kv_dtype_name(ce->be->kv_elem_bytes), (double)page_bytes / 1e3,
           pool_mb);
    size_t full_pages = 0;
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++) {
        vs_kv_policy *p = NULL;
        char path[4096];
        const char *file = vs_kv_policy_budget_file((vs_kv_policy_kind)k, ce->m->path, NULL, path, sizeof path);
        if (vs_kv_policy_new((vs_kv_policy_kind)k, o->kv_budget, c, file, &p, &err) != VS_OK)
            continue;
        size_t pages = vs_kv_policy_peak_pages_per_image(p, VS_KV_PAGE_TOKENS);
        if (k == VS_KV_POLICY_FULL)
            full_pages = pages;
        printf("  %-13s %9.3f MB  %6zu images  %5.2fx full\n", vs_kv_policy_name((vs_kv_policy_kind)k),
               (double)(pages * page_bytes) / 1e6, pool_pages / pages,
               full_pages ? (double)full_pages / (double)pages : 0.0);
        vs_kv_policy_free(p);
    }
    printf("  (the classic full cache, every layer holding all %d tokens: %.3f MB)\n",
           c->scale_offset[c->n_scales], (double)vs_rt_full_kv_bytes(c) / 1e6);
    printf("%6s %10s %14s %14s %14s %14s\n", "batch", "images/s", "transformer_s", "of_which_kv_s",
           "decoder_s", "total_s");
}

int vs_srv_cmd_bench(int argc, char **argv)
{
    vs_srv_cli_opts o = vs_srv_cli_defaults();
    const char *batches = "1,8";
    long reps = 3;
    double pool_mb = 256;
    int json = 0;
    static const char *const flags[] = {"--json", NULL};
    static const char *const valued[] = {"--batch", "--reps", "--pool-mb", NULL};
    for (int i = 2; i < argc; i++) {
        const char *k, *v;
        int r = vs_srv_cli_next(&o, "bench", flags, valued, argc, argv, &i, &k, &v);
        if (r < 0)
            return 2;
        if (r == 0)
            continue;
        if (r == 1) {
            json = 1;
            continue;
        }
        if (strcmp(k, "--batch") == 0)
            batches = v;
        else if (strcmp(k, "--pool-mb") == 0) {
            if (vs_cli_double(v, 0.001, 1e7, &pool_mb) != 0)
                return vs_srv_cli_bad("--pool-mb must be a size in MB > 0 (got '%s')", v);
        } else if (vs_cli_long(v, 1, 1000, &reps) != 0)
            return vs_srv_cli_bad("--reps must be 1..1000 (got '%s')", v);
    }
    long bs[32];
    int nb = parse_list(batches, bs, 32, 1, 1024), maxb = 0;
    if (nb <= 0)
        return vs_srv_cli_bad("--batch must be a list of batch sizes 1..1024, e.g. 1,8 (got '%s')", batches);
    for (int i = 0; i < nb; i++)
        maxb = bs[i] > maxb ? (int)bs[i] : maxb;
    vs_srv_cli_engine ce = {0};
    vs_kv_policy *pol = NULL;
    vs_err err = {0};
    int rc = 1;
    if ((rc = vs_srv_cli_open(&o, maxb, &ce)) != 0)
        goto done;
    rc = 1;
    if (vs_srv_cli_policy(&o, ce.m, o.kv_policy, &pol) != 0)
        goto done;
    if (!(ce.pool = vs_srv_cli_pool_for(ce.m, ce.be, pol, maxb, &err))) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    const vs_rt_config *c = &ce.m->cfg;
    if (!json) /* --json: JSON Lines, one object per batch size and nothing else on stdout */
        bench_header(&ce, &o, pol, pool_mb);
    for (int bi = 0; bi < nb; bi++) {
        int n = (int)bs[bi];
        vs_srv_gen_req *reqs = calloc((size_t)n, sizeof *reqs);
        uint8_t **rgb = calloc((size_t)n, sizeof *rgb);
        int okb = reqs && rgb;
        for (int k = 0; okb && k < n; k++)
            okb = (rgb[k] = malloc((size_t)c->image_size * c->image_size * 3)) != NULL;
        double sum_tr = 0, sum_dec = 0, sum_kv = 0;
        vs_rt_counters dev = {0}; /* the timed runs' steps: sums, allocated as after the last */
        vs_rt_counters dec_dev = {0}; /* the timed runs' decodes: sums */
        int have_dev = 0, steps = 0;
        for (int rep = 0; okb && rep <= reps; rep++) { /* rep 0 warms up */
            for (int k = 0; k < n; k++)
                reqs[k] = (vs_srv_gen_req){k % c->num_classes, (uint64_t)(1000 * rep + k), (float)o.cfg,
                                           (int)o.top_k, (float)o.top_p};
            vs_srv_gen_times t;
            vs_srv_gen_opts go = {.policy = pol};
            if (vs_srv_gen_run_opts(ce.e, ce.pool, reqs, n, rgb, NULL, &t, &go, &err) != VS_OK) {
                fprintf(stderr, "varserve: %s\n", err.msg);
                okb = 0;
                break;
            }
            if (rep > 0) {
                sum_tr += t.transformer_s;
                sum_dec += t.decode_s;
                sum_kv += t.kv_s;
                have_dev = t.have_device;
                steps = t.steps;
                dev.launches += t.device.launches;
                dev.copies += t.device.copies;
                dev.syncs += t.device.syncs;
                dev.h2d_bytes += t.device.h2d_bytes;
                dev.d2h_bytes += t.device.d2h_bytes;
                dev.kv_h2d_bytes += t.device.kv_h2d_bytes;
                dev.kv_d2h_bytes += t.device.kv_d2h_bytes;
                dev.allocated_peak_bytes = t.device.allocated_peak_bytes;
                dec_dev.launches += t.decode_device.launches;
                dec_dev.copies += t.decode_device.copies;
                dec_dev.syncs += t.decode_device.syncs;
                dec_dev.h2d_bytes += t.decode_device.h2d_bytes;
                dec_dev.d2h_bytes += t.decode_device.d2h_bytes;
            }
        }
        for (int k = 0; rgb && k < n; k++)
            free(rgb[k]);
        free(rgb);
        free(reqs);
        if (!okb)
            goto done;
        double tr = sum_tr / reps, dec = sum_dec / reps, kv = sum_kv / reps;
        if (json) {
            if (bench_json_line(&ce, &o, pol, n, reps, tr, kv, dec, steps, have_dev ? &dev : NULL,
                                have_dev ? &dec_dev : NULL) != 0)
                goto done;
        } else {
            printf("%6d %10.3f %14.4f %14.4f %14.4f %14.4f\n", n, n / (tr + dec), tr, kv, dec, tr + dec);
        }
    }
    if (!json)
        printf("peak RSS: %.1f MB\n", peak_rss_mb());
    rc = 0;
done:
    vs_kv_policy_free(pol);
    vs_srv_cli_close(&ce);
    return rc;
}
