/* server/calibrate.c — see calibrate.h. */
#include "server/calibrate.h"

#include <stdlib.h>

#include "kvcache/calibrate.h"
#include "server/gen.h"

vs_status vs_srv_calibrate_run(vs_rt_engine *e, vs_kv_pool *pool, const vs_kv_policy *full,
                               const vs_rt_model *m, const vs_srv_calibrate_opts *o,
                               const char *out_path, vs_err *err)
{
    const vs_rt_config *c = &m->cfg;
    enum { B = VS_SRV_CALIBRATE_BATCH };
    int batch = o->images < B ? (int)o->images : B;
    int sens = o->method == VS_SRV_CALIBRATE_SENSITIVITY, L = c->scale_offset[c->n_scales];
    vs_kv_attn_stats stats = {0};
    vs_status st = vs_kv_stats_init(&stats, c, o->top_history, err);
    if (st != VS_OK)
        return st;
    int32_t *tok = sens ? malloc((size_t)2 * B * L * sizeof *tok) : NULL; /* [ref B][probe B] */
    double *damage = sens ? calloc((size_t)c->depth, sizeof *damage) : NULL;
    if (sens && (!tok || !damage)) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    vs_srv_gen_req reqs[B];
    for (long done_n = 0; done_n < o->images; done_n += batch) {
        int n = o->images - done_n < batch ? (int)(o->images - done_n) : batch;
        int32_t *ref[B], *probe[B];
        for (int k = 0; k < n; k++) {
            reqs[k] = (vs_srv_gen_req){(int)((done_n + k) % c->num_classes), (uint64_t)(done_n + k), o->cfg,
                                       o->top_k, o->top_p};
            ref[k] = sens ? tok + (size_t)k * L : NULL;
            probe[k] = sens ? tok + (size_t)(B + k) * L : NULL;
        }
        vs_srv_gen_opts go = {.policy = full, .stats = sens ? NULL : &stats};
        if ((st = vs_srv_gen_run_opts(e, pool, reqs, n, NULL, sens ? ref : NULL, NULL, &go, err)) != VS_OK)
            goto fail;
        /* sensitivity: the same images with one layer at a time cut to the observation window */
        for (int l = 0; sens && l < c->depth; l++) {
            vs_kv_policy *probe_pol = NULL;
            vs_srv_gen_opts po = {0};
            st = vs_kv_policy_new_probe(c, l, &probe_pol, err);
            po.policy = probe_pol;
            if (st == VS_OK)
                st = vs_srv_gen_run_opts(e, pool, reqs, n, NULL, probe, NULL, &po, err);
            vs_kv_policy_free(probe_pol);
            if (st != VS_OK)
                goto fail;
            for (int k = 0; k < n; k++)
                for (int t = 0; t < L; t++)
                    damage[l] += (ref[k][t] != probe[k][t]) / ((double)L * (double)o->images);
        }
    }
    int images = (int)o->images;
    if (sens)
        st = vs_kv_calibrate_write_sensitivity(damage, c, m->path, images, out_path, err);
    else if (o->method == VS_SRV_CALIBRATE_HACK)
        st = vs_kv_calibrate_write_hack(&stats, c, m->path, images, out_path, err);
    else
        st = vs_kv_calibrate_write(&stats, c, m->path, images, out_path, err);
fail:
    free(tok);
    free(damage);
    vs_kv_stats_free(&stats);
    return st;
}
