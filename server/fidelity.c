/* server/fidelity.c — see fidelity.h. */
#include "server/fidelity.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "server/gen.h"
#include "server/png.h"
#include "server/quality.h"

vs_status vs_srv_fidelity_run(vs_rt_engine *e, vs_kv_pool *pool, const vs_kv_policy *full,
                              const vs_kv_policy *pol, const vs_rt_config *c,
                              const vs_srv_fidelity_opts *o, vs_srv_fidelity_result *r, vs_err *err)
{
    enum { B = VS_SRV_FIDELITY_BATCH };
    int batch = o->images < B ? (int)o->images : B;
    int S = c->image_size, L = c->scale_offset[c->n_scales];
    uint8_t *rgb[2][B] = {{0}}; /* [full, policy][image] */
    int32_t *tok[2][B] = {{0}};
    vs_status st = VS_OK;
    *r = (vs_srv_fidelity_result){0};
    for (int v = 0; v < 2; v++)
        for (int k = 0; k < batch; k++)
            if (!(rgb[v][k] = malloc((size_t)S * S * 3)) || !(tok[v][k] = malloc((size_t)L * 4))) {
                st = vs_err_set(err, VS_ERR_NOMEM, "out of memory");
                goto fail;
            }
    double psnr_sum = 0, ssim_sum = 0, same = 0;
    size_t pages[2] = {0, 0};
    vs_srv_gen_req reqs[B];
    for (long done_n = 0; done_n < o->images; done_n += batch) {
        int n = o->images - done_n < batch ? (int)(o->images - done_n) : batch;
        for (int k = 0; k < n; k++)
            reqs[k] = (vs_srv_gen_req){(int)((done_n + k) % c->num_classes), o->seed + (uint64_t)(done_n + k),
                                       o->cfg, o->top_k, o->top_p};
        for (int v = 0; v < 2; v++) {
            vs_srv_gen_opts go = {.policy = v == 0 ? full : pol};
            if ((st = vs_srv_gen_run_opts(e, pool, reqs, n, rgb[v], tok[v], NULL, &go, err)) != VS_OK)
                goto fail;
            pages[v] = go.peak_pages_per_image;
        }
        for (int k = 0; k < n; k++) {
            double p = vs_srv_psnr(rgb[0][k], rgb[1][k], S * S * 3);
            r->identical_images += isinf(p);
            psnr_sum += isinf(p) ? 100.0 : p; /* identical images count as 100 dB */
            ssim_sum += vs_srv_ssim(rgb[0][k], rgb[1][k], S, S);
            int eq = 0;
            for (int t = 0; t < L; t++)
                eq += tok[0][k][t] == tok[1][k][t];
            same += (double)eq / L;
            if (o->dump_prefix) {
                char fn[4096];
                vs_err ignored = {0};
                snprintf(fn, sizeof fn, "%s-%ld-full.png", o->dump_prefix, done_n + k);
                vs_srv_png_write(fn, rgb[0][k], S, S, &ignored);
                snprintf(fn, sizeof fn, "%s-%ld-%s.png", o->dump_prefix, done_n + k, o->dump_tag);
                vs_srv_png_write(fn, rgb[1][k], S, S, &ignored);
            }
        }
    }
    r->psnr_db = psnr_sum / o->images;
    r->ssim = ssim_sum / o->images;
    r->tokens_unchanged = same / o->images;
    r->pages_per_image_full = pages[0];
    r->pages_per_image = pages[1];
fail:
    for (int v = 0; v < 2; v++)
        for (int k = 0; k < B; k++) {
            free(rgb[v][k]);
            free(tok[v][k]);
        }
    return st;
}
