/* server/gen.c — see gen.h. */
#include "server/gen.h"

#include "common/clock.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

size_t vs_srv_full_cache_pages(const vs_rt_config *c, const vs_kv_pool *pool)
{
    return VS_KV_ROWS_PER_IMAGE * (size_t)c->depth * (size_t)c->num_heads *
           vs_kv_pages_for_tokens(pool, (size_t)c->scale_offset[c->n_scales]);
}

vs_status vs_srv_gen_run(vs_rt_engine *e, vs_kv_pool *pool, const vs_srv_gen_req *reqs, int n,
                         uint8_t *const *rgb, int32_t *const *tokens, vs_srv_gen_times *times,
                         vs_err *err)
{
    vs_srv_gen_opts o = {0};
    return vs_srv_gen_run_opts(e, pool, reqs, n, rgb, tokens, times, &o, err);
}

vs_status vs_srv_gen_run_opts(vs_rt_engine *e, vs_kv_pool *pool, const vs_srv_gen_req *reqs, int n,
                              uint8_t *const *rgb, int32_t *const *tokens, vs_srv_gen_times *times,
                              vs_srv_gen_opts *opts, vs_err *err)
{
    const vs_rt_model *m = vs_rt_engine_model(e);
    const vs_rt_config *c = &m->cfg;
    vs_status st = VS_OK;
    vs_kv_policy *full = NULL;
    vs_kv_session *ses = NULL;
    const vs_kv_policy *pol = opts->policy;
    if (!pol) {
        if ((st = vs_kv_policy_new(VS_KV_POLICY_FULL, 1, c, NULL, &full, err)) != VS_OK)
            return st;
        pol = full;
    }
    vs_kv_image *ims = calloc((size_t)n, sizeof *ims);
    vs_kv_image **ptrs = calloc((size_t)n, sizeof *ptrs);
    if (!ims || !ptrs) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (n > vs_rt_engine_max_images(e)) {
        st = vs_err_set(err, VS_ERR_INVALID, "batch of %d images is over the engine's limit of %d",
                        n, vs_rt_engine_max_images(e));
        goto fail;
    }
    if ((st = vs_kv_session_new(e, pool, n, &ses, err)) != VS_OK)
        goto fail;
    size_t per_image = vs_kv_policy_peak_pages_per_image(pol, vs_kv_pool_page_tokens(pool));
    opts->peak_pages_per_image = per_image;
    for (int i = 0; i < n; i++) {
        ptrs[i] = &ims[i];
        if (vs_kv_image_reserve(ses, &ims[i], pol) != VS_KV_OK) {
            vs_kv_stats ks;
            vs_kv_pool_stats(pool, &ks);
            st = vs_err_set(err, VS_ERR_KV_FULL,
                            "the KV pool has %zu pages of %.1f KB but %d images need %zu: raise the "
                            "pool size or lower the batch",
                            ks.pages_total, (double)ks.page_bytes / 1e3, n, per_image * (size_t)n);
            goto fail;
        }
    }
    for (int i = 0; i < n; i++)
        if ((st = vs_kv_image_start(ses, &ims[i], &reqs[i], err)) != VS_OK)
            goto fail;
    double kv_s = 0;
    vs_rt_counters d0, d1;
    int have_device = vs_rt_backend_counters(vs_rt_engine_backend(e), &d0);
    double t0 = vs_now_s();
    for (int s = 0; s < c->n_scales; s++) {
        for (int i = 0; i < n; i++) {
            if (opts->logits)
                ims[i].img.guided_logits =
                    opts->logits[i] + (size_t)c->scale_offset[s] * c->vocab_size;
            if (opts->forced_tokens)
                ims[i].img.forced_tokens = opts->forced_tokens[i];
        }
        double step_kv_s = 0;
        st = vs_kv_session_step(ses, ptrs, n, opts->stats, &step_kv_s, err);
        kv_s += step_kv_s;
        if (st != VS_OK)
            goto fail;
    }
    double t1 = vs_now_s();
    vs_rt_backend_counters(vs_rt_engine_backend(e), &d1);
    if ((rgb || opts->unit) && (st = vs_kv_session_decode(ses, ptrs, n, rgb, opts->unit, err)) != VS_OK)
        goto fail;
    double t2 = vs_now_s();
    vs_rt_counters d2;
    vs_rt_backend_counters(vs_rt_engine_backend(e), &d2);
    if (times) {
        times->decode_device = (vs_rt_counters){
            .launches = d2.launches - d1.launches,
            .copies = d2.copies - d1.copies,
            .syncs = d2.syncs - d1.syncs,
            .h2d_bytes = d2.h2d_bytes - d1.h2d_bytes,
            .d2h_bytes = d2.d2h_bytes - d1.d2h_bytes,
        };
        times->transformer_s = t1 - t0;
        times->kv_s = kv_s;
        times->decode_s = t2 - t1;
        times->steps = c->n_scales;
        times->have_device = have_device;
        times->device = (vs_rt_counters){
            .launches = d1.launches - d0.launches,
            .copies = d1.copies - d0.copies,
            .syncs = d1.syncs - d0.syncs,
            .h2d_bytes = d1.h2d_bytes - d0.h2d_bytes,
            .d2h_bytes = d1.d2h_bytes - d0.d2h_bytes,
            .kv_h2d_bytes = d1.kv_h2d_bytes - d0.kv_h2d_bytes,
            .kv_d2h_bytes = d1.kv_d2h_bytes - d0.kv_d2h_bytes,
            .allocated_bytes = d1.allocated_bytes,
            .allocated_peak_bytes = d1.allocated_peak_bytes,
            .allocations = d1.allocations - d0.allocations,
        };
    }
    if (tokens)
        for (int i = 0; i < n; i++)
            if (tokens[i])
                memcpy(tokens[i], ims[i].img.tokens,
                       (size_t)c->scale_offset[c->n_scales] * sizeof(int32_t));
fail:
    if (ims && ses)
        for (int i = 0; i < n; i++)
            vs_kv_image_end(ses, &ims[i]);
    vs_kv_session_free(ses);
    free(ims);
    free(ptrs);
    vs_kv_policy_free(full);
    return st;
}
