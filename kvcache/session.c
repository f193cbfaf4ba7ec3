/* kvcache/session.c — see session.h. */
#include "kvcache/session.h"

#include <stdlib.h>
#include <string.h>

struct vs_kv_session {
    vs_rt_engine *e;
    vs_kv_pool *pool;
    int max_images;
    vs_rt_image **ptrs;           /* [max_images] */
    vs_kv_row **rows;             /* [ROWS max_images] */
    int *scale;                   /* [ROWS max_images] */
    const vs_kv_policy **policy;  /* [ROWS max_images] */
    float *scratch;               /* vs_kv_step_scratch_floats */
    vs_rt_kv_plan *plans;         /* [vs_kv_step_jobs(rows)] */
    vs_rt_kv_job *jobs;           /* [vs_kv_step_jobs(rows)] */
};

vs_status vs_kv_session_new(vs_rt_engine *e, vs_kv_pool *pool, int max_images, vs_kv_session **out,
                            vs_err *err)
{
    *out = NULL;
    if (max_images < 1)
        return vs_err_set(err, VS_ERR_INVALID, "a session needs room for at least 1 image (got %d)",
                          max_images);
    const vs_rt_config *c = &vs_rt_engine_model(e)->cfg;
    size_t rows = (size_t)VS_KV_ROWS_PER_IMAGE * (size_t)max_images;
    vs_kv_session *s = calloc(1, sizeof *s);
    if (!s)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory for a KV session");
    s->e = e;
    s->pool = pool;
    s->max_images = max_images;
    s->ptrs = calloc((size_t)max_images, sizeof *s->ptrs);
    s->rows = calloc(rows, sizeof *s->rows);
    s->scale = calloc(rows, sizeof *s->scale);
    s->policy = calloc(rows, sizeof *s->policy);
    s->scratch = malloc(vs_kv_step_scratch_floats(c, vs_kv_pool_page_tokens(pool)) * sizeof(float));
    s->plans = malloc(vs_kv_step_jobs(c, (int)rows) * sizeof *s->plans);
    s->jobs = malloc(vs_kv_step_jobs(c, (int)rows) * sizeof *s->jobs);
    if (!s->ptrs || !s->rows || !s->scale || !s->policy || !s->scratch || !s->plans || !s->jobs) {
        vs_kv_session_free(s);
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory for the KV session's tables");
    }
    vs_rt_engine_set_kv(e, vs_kv_pool_base(pool), vs_kv_pool_page_tokens(pool));
    *out = s;
    return VS_OK;
}

void vs_kv_session_free(vs_kv_session *s)
{
    if (!s)
        return;
    free(s->ptrs);
    free(s->rows);
    free(s->scale);
    free(s->policy);
    free(s->scratch);
    free(s->plans);
    free(s->jobs);
    free(s);
}

vs_kv_admit vs_kv_image_reserve(vs_kv_session *s, vs_kv_image *im, const vs_kv_policy *pol)
{
    memset(im, 0, sizeof *im);
    size_t pages = vs_kv_policy_peak_pages_per_image(pol, vs_kv_pool_page_tokens(s->pool));
    vs_kv_resv *resv = NULL;
    vs_kv_admit a = vs_kv_reserve(s->pool, pages, &resv);
    if (a != VS_KV_OK)
        return a;
    im->policy = pol;
    im->resv = resv;
    im->pages = pages;
    return VS_KV_OK;
}

vs_status vs_kv_image_start(vs_kv_session *s, vs_kv_image *im, const vs_kv_image_req *req,
                            vs_err *err)
{
    vs_status st = vs_rt_image_init(s->e, &im->img, err);
    for (int r = 0; st == VS_OK && r < VS_KV_ROWS_PER_IMAGE; r++)
        if ((st = vs_kv_row_new(im->resv, &im->rows[r], err)) == VS_OK)
            im->img.kv[r] = vs_kv_row_heads(im->rows[r]);
    if (st != VS_OK)
        return st;
    im->img.label = req->label;
    im->img.seed = req->seed;
    im->img.cfg = req->cfg;
    im->img.top_k = req->top_k;
    im->img.top_p = req->top_p;
    return VS_OK;
}

void vs_kv_image_end(vs_kv_session *s, vs_kv_image *im)
{
    vs_kv_release(im->resv);
    vs_rt_image_free(s->e, &im->img);
    memset(im, 0, sizeof *im);
}

static vs_status check_n(const vs_kv_session *s, int n, vs_err *err)
{
    if (n < 1 || n > s->max_images)
        return vs_err_set(err, VS_ERR_INVALID, "a session step takes 1..%d images (got %d)",
                          s->max_images, n);
    return VS_OK;
}

vs_status vs_kv_session_step(vs_kv_session *s, vs_kv_image *const *ims, int n,
                             vs_kv_attn_stats *stats, double *kv_s, vs_err *err)
{
    vs_status st = check_n(s, n, err);
    if (st != VS_OK)
        return st;
    const vs_rt_config *c = &vs_rt_engine_model(s->e)->cfg;
    for (int i = 0; i < n; i++) {
        for (int r = 0; r < VS_KV_ROWS_PER_IMAGE; r++) {
            int k = VS_KV_ROWS_PER_IMAGE * i + r;
            s->rows[k] = ims[i]->rows[r];
            s->scale[k] = ims[i]->img.scale;
            s->policy[k] = ims[i]->policy;
        }
        s->ptrs[i] = &ims[i]->img;
    }
    vs_kv_step ks = {.rows = s->rows,
                     .scale = s->scale,
                     .policy = s->policy,
                     .n_rows = VS_KV_ROWS_PER_IMAGE * n,
                     .cfg = c,
                     .attn_scale = vs_rt_attn_scale(c),
                     .stats = stats,
                     .be = vs_rt_engine_backend(s->e),
                     .page_tokens = vs_kv_pool_page_tokens(s->pool),
                     .scratch = s->scratch,
                     .plans = s->plans,
                     .jobs = s->jobs};
    vs_rt_hooks hooks = vs_kv_step_hooks(&ks);
    st = vs_rt_step(s->e, s->ptrs, n, &hooks, err);
    if (kv_s)
        *kv_s = ks.seconds;
    return st;
}

vs_status vs_kv_session_decode(vs_kv_session *s, vs_kv_image *const *ims, int n, uint8_t *const *rgb,
                               float *const *unit, vs_err *err)
{
    vs_status st = check_n(s, n, err);
    if (st != VS_OK)
        return st;
    for (int i = 0; i < n; i++)
        s->ptrs[i] = &ims[i]->img;
    return vs_rt_decode(s->e, s->ptrs, n, rgb, unit, err);
}
