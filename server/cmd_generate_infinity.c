/* server/cmd_generate_infinity.c — `varserve generate` with an Infinity model: prompts to PNG
 * files through server/gen_infinity.h (T5 and its tokenizer, the transformer in FP32 on the host,
 * the BSQ-VAE decoder on the chosen backend): one batch of the prompts, the pixels `varserve serve`
 * gives for the same prompt and seed. Sampling defaults are the reference's run_infinity.py's
 * (gen_infinity.h); any set on the command line wins. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/safetensors.h"
#include "server/cmd.h"
#include "server/gen_infinity.h"
#include "server/png.h"

const char *vs_srv_cli_family(const char *path)
{
    vs_st_file f;
    vs_err err = {0};
    if (!path || vs_st_open(&f, path, &err) != VS_OK)
        return NULL; /* the VAR loader says what is wrong */
    const char *fam = vs_st_family(&f);
    vs_st_close(&f);
    return fam;
}

int vs_srv_generate_infinity(const vs_srv_cli_opts *o, const char *const *prompts, int n, uint64_t seed,
                             const char *t5_path, const char *spiece, double tau, const char *out)
{
    vs_err err = {0};
    vs_rt_backend_kind kind;
    if (vs_rt_backend_parse(o->backend, &kind) != 0)
        return vs_srv_cli_bad("--backend must be auto, cpu or cuda (got '%s')%s", o->backend, "");
    vs_srv_inf *g = NULL;
    uint64_t *seeds = calloc((size_t)n, sizeof *seeds);
    uint8_t **rgb = calloc((size_t)n, sizeof *rgb);
    int rc = 1;
    if (!seeds || !rgb) {
        fprintf(stderr, "varserve: out of memory\n");
        goto done;
    }
    vs_srv_inf_files files = {o->model, t5_path, spiece}, names = {"--model", "--t5", "--spiece"};
    vs_status st = vs_srv_inf_open(&files, &names, kind, (int)o->threads, n, &g, &err);
    if (st != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        rc = st == VS_ERR_INVALID ? 2 : 1;
        goto done;
    }
    for (int i = 0; i < n; i++)
        seeds[i] = seed + (uint64_t)i;
    vs_srv_inf_sampling smp = {o->have_cfg ? (float)o->cfg : (float)VS_SRV_INF_DEFAULT_CFG, (float)tau,
                               o->have_top_k ? (int)o->top_k : VS_SRV_INF_DEFAULT_TOP_K,
                               o->have_top_p ? (float)o->top_p : (float)VS_SRV_INF_DEFAULT_TOP_P};
    size_t side = (size_t)vs_srv_inf_image_size(g);
    for (int i = 0; i < n; i++)
        if (!(rgb[i] = malloc(side * side * 3))) {
            fprintf(stderr, "varserve: out of memory for image %d\n", i);
            goto done;
        }
    int more;
    if (vs_srv_inf_begin(g, prompts, seeds, n, &smp, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    while ((more = vs_srv_inf_step(g, &err)) == 1)
        ;
    if (more < 0 || vs_srv_inf_decode(g, rgb, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s-%d.png", out, i);
        if (vs_srv_png_write(path, rgb[i], (int)side, (int)side, &err) != VS_OK) {
            fprintf(stderr, "varserve: %s\n", err.msg);
            goto done;
        }
    }
    rc = 0;
done:
    for (int i = 0; rgb && i < n; i++)
        free(rgb[i]);
    free(rgb);
    free(seeds);
    vs_srv_inf_close(g);
    return rc;
}
