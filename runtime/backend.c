/* runtime/backend.c — backend selection: auto picks CUDA when this build has it and a device
 * answers, else the CPU backend. */
#include "runtime/backend.h"

#include <string.h>

#include "common/log.h"

int vs_rt_backend_parse(const char *s, vs_rt_backend_kind *out)
{
    if (strcmp(s, "auto") == 0)
        *out = VS_RT_BACKEND_AUTO;
    else if (strcmp(s, "cpu") == 0)
        *out = VS_RT_BACKEND_CPU;
    else if (strcmp(s, "cuda") == 0)
        *out = VS_RT_BACKEND_CUDA;
    else
        return -1;
    return 0;
}

#ifndef VS_HAVE_CUDA
vs_status vs_rt_backend_cuda_new(int fp32, vs_rt_backend **out, vs_err *err)
{
    (void)fp32;
    (void)out;
    return vs_err_set(err, VS_ERR_UNSUPPORTED,
                      "this build has no CUDA backend (nvcc was not found at build time); use "
                      "--backend cpu");
}
#endif

vs_status vs_rt_backend_new(vs_rt_backend_kind kind, int threads, vs_rt_backend **out, vs_err *err)
{
    return vs_rt_backend_new_precision(kind, threads, 0, out, err);
}

vs_status vs_rt_backend_new_precision(vs_rt_backend_kind kind, int threads, int fp32,
                                      vs_rt_backend **out, vs_err *err)
{
    if (kind == VS_RT_BACKEND_CPU)
        return vs_rt_backend_cpu_new(threads, out, err);
    if (kind == VS_RT_BACKEND_CUDA)
        return vs_rt_backend_cuda_new(fp32, out, err);
    vs_err e2 = {0};
    if (vs_rt_backend_cuda_new(fp32, out, &e2) == VS_OK)
        return VS_OK;
    vs_log(VS_LOG_INFO, "runtime", "backend auto: CPU (%s)", e2.msg);
    return vs_rt_backend_cpu_new(threads, out, err);
}

void vs_rt_backend_free(vs_rt_backend *be)
{
    if (be)
        be->ops->destroy(be);
}

int vs_rt_backend_counters(vs_rt_backend *be, vs_rt_counters *out)
{
    memset(out, 0, sizeof *out);
    if (!be || !be->ops->counters)
        return 0;
    be->ops->counters(be, out);
    return 1;
}

void *vs_rt_backend_alloc_raw(void *be, size_t bytes)
{
    vs_rt_backend *b = be;
    return b->ops->alloc(b, bytes);
}

void vs_rt_backend_free_raw(void *be, void *p)
{
    vs_rt_backend *b = be;
    b->ops->free(b, p);
}

void vs_rt_workload_add_conv(vs_rt_workload *wl, int cin, int cout, int k, int h, int w)
{
    for (int i = 0; i < wl->n_convs; i++) {
        const vs_rt_conv_shape *c = &wl->convs[i];
        if (c->cin == cin && c->cout == cout && c->k == k && c->h == h && c->w == w)
            return;
    }
    if (wl->n_convs == VS_RT_WORKLOAD_CONVS) {
        wl->convs_dropped++;
        return;
    }
    wl->convs[wl->n_convs++] = (vs_rt_conv_shape){cin, cout, k, h, w};
}

void vs_rt_backend_linear_gelu(vs_rt_backend *be, float *y, const float *x, const float *w,
                               const float *bias, int M, int N, int K)
{
    if (be->ops->linear_gelu) {
        be->ops->linear_gelu(be, y, x, w, bias, M, N, K);
        return;
    }
    be->ops->linear(be, y, x, w, bias, M, N, K);
    be->ops->gelu_tanh(be, y, (size_t)M * N);
}

void vs_rt_backend_gated_add_adaln(vs_rt_backend *be, float *x, const float *y, const float *gmod,
                                   int gmod_stride, int gamma_off, float *xn, const float *nmod,
                                   int nmod_stride, int scale_off, int shift_off,
                                   const vs_rt_batch *b, int C, float eps)
{
    if (be->ops->gated_add_adaln) {
        be->ops->gated_add_adaln(be, x, y, gmod, gmod_stride, gamma_off, xn, nmod, nmod_stride,
                                 scale_off, shift_off, b, C, eps);
        return;
    }
    be->ops->gated_add(be, x, y, gmod, gmod_stride, gamma_off, b, C);
    be->ops->adaln(be, xn, x, nmod, nmod_stride, scale_off, shift_off, b, C, eps);
}

const char *vs_rt_kv_dtype_name(int kv_elem_bytes)
{
    return kv_elem_bytes == 2 ? "bf16" : kv_elem_bytes == 4 ? "fp32" : "unknown";
}

void vs_rt_backend_kv_download(vs_rt_backend *be, float *dst_host, const void *kv_base,
                               size_t elem_off, size_t n)
{
    if (be->ops->kv_download)
        be->ops->kv_download(be, dst_host, kv_base, elem_off, n);
    else
        be->ops->download(be, dst_host, (const float *)kv_base + elem_off, n * sizeof(float));
}

void vs_rt_backend_kv_upload(vs_rt_backend *be, void *kv_base, size_t elem_off,
                             const float *src_host, size_t n)
{
    if (be->ops->kv_upload)
        be->ops->kv_upload(be, kv_base, elem_off, src_host, n);
    else
        be->ops->upload(be, (float *)kv_base + elem_off, src_host, n * sizeof(float));
}
