/* server/cmd_generate.c — `varserve generate`: images of the given labels to PNG files, and
 * optionally their tokens to JSON (the reference fixtures' format). FP32 unless --precision bf16 is asked.
 * With an Infinity model, images of the given prompts (cmd_generate_infinity.c). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_file.h"
#include "common/parse.h"
#include "server/cmd.h"
#include "server/gen.h"
#include "server/png.h"

static int write_tokens_json(const char *path, const vs_rt_config *c, const vs_srv_gen_req *reqs,
                             int32_t *const *toks, int n)
{
    cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "images");
    for (int i = 0; i < n; i++) {
        cJSON *img = cJSON_CreateObject();
        cJSON_AddNumberToObject(img, "label", reqs[i].label);
        cJSON_AddNumberToObject(img, "seed", (double)reqs[i].seed);
        cJSON *scales = cJSON_AddArrayToObject(img, "tokens");
        for (int s = 0; s < c->n_scales; s++)
            cJSON_AddItemToArray(scales, cJSON_CreateIntArray(toks[i] + c->scale_offset[s],
                                                              c->patch_nums[s] * c->patch_nums[s]));
        cJSON_AddItemToArray(arr, img);
    }
    if (vs_json_write_file(root, path, 0) != 0) {
        fprintf(stderr, "varserve: cannot write '%s': %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

int vs_srv_cmd_generate(int argc, char **argv)
{
    vs_srv_cli_opts o = vs_srv_cli_defaults();
    o.fp32 = 1; /* generate reproduces the reference exactly unless --precision bf16 is asked */
    const char *labels = NULL, *out = NULL, *tokens_out = NULL, *t5 = NULL, *spiece = NULL, *tau_s = NULL;
    const char *prompts[256];
    int n_prompts = 0;
    unsigned long long seed = 0;
    static const char *const flags[] = {NULL};
    static const char *const valued[] = {"--labels", "--seed", "--out", "--tokens-out", "--prompt", "--t5",
                                         "--spiece", "--tau", NULL};
    for (int i = 2; i < argc; i++) {
        const char *k, *v;
        int r = vs_srv_cli_next(&o, "generate", flags, valued, argc, argv, &i, &k, &v);
        if (r < 0)
            return 2;
        if (r == 0)
            continue;
        if (strcmp(k, "--labels") == 0)
            labels = v;
        else if (strcmp(k, "--out") == 0)
            out = v;
        else if (strcmp(k, "--tokens-out") == 0)
            tokens_out = v;
        else if (strcmp(k, "--prompt") == 0) {
            if (n_prompts == 256)
                return vs_srv_cli_bad("--prompt may be given at most 256 times%s%s", "", "");
            prompts[n_prompts++] = v;
        } else if (strcmp(k, "--t5") == 0)
            t5 = v;
        else if (strcmp(k, "--spiece") == 0)
            spiece = v;
        else if (strcmp(k, "--tau") == 0)
            tau_s = v;
        else if (vs_cli_u64(v, &seed) != 0)
            return vs_srv_cli_bad("--seed must be an integer 0..2^64-1 (got '%s')%s", v, "");
    }
    const char *fam = vs_srv_cli_family(o.model);
    if (fam && strcmp(fam, "an Infinity") == 0) { /* a text-to-image model: prompts, not labels */
        double tau = 1.0;
        if (labels || tokens_out)
            return vs_srv_cli_bad("'%s' is an Infinity model: it takes --prompt TEXT (one per image), not %s",
                                  o.model, labels ? "--labels" : "--tokens-out");
        if (!n_prompts)
            return vs_srv_cli_bad("generate with an Infinity model needs --prompt TEXT (once per image)%s%s", "", "");
        if (!out)
            return vs_srv_cli_bad("generate needs --out PREFIX (images are written to PREFIX-<i>.png)%s%s", "", "");
        if (tau_s && vs_cli_double(tau_s, 1e-3, 100.0, &tau) != 0)
            return vs_srv_cli_bad("--tau must be a number 0.001..100 (got '%s')%s", tau_s, "");
        return vs_srv_generate_infinity(&o, prompts, n_prompts, seed, t5, spiece, tau, out);
    }
    if (n_prompts || t5 || spiece || tau_s)
        return vs_srv_cli_bad("%s is for Infinity models; '%s' is a class-conditional VAR model (use --labels)",
                              n_prompts ? "--prompt" : t5 ? "--t5" : spiece ? "--spiece" : "--tau", o.model);
    if (!labels)
        return vs_srv_cli_bad("generate needs --labels, e.g. --labels 3,7%s%s", "", "");
    if (!out)
        return vs_srv_cli_bad("generate needs --out PREFIX (images are written to PREFIX-<i>.png)%s%s", "",
                              "");
    char *lab = strdup(labels);
    int n = 0;
    for (char *p = lab; p; p = strchr(p, ','), p = p ? p + 1 : NULL)
        n++;
    if (n > 256) {
        free(lab);
        return vs_srv_cli_bad("--labels takes at most 256 labels (got %s)%s", "more", "");
    }
    vs_srv_cli_engine ce = {0};
    vs_kv_policy *pol = NULL;
    vs_srv_gen_req *reqs = calloc((size_t)n, sizeof *reqs);
    uint8_t **rgb = calloc((size_t)n, sizeof *rgb);
    int32_t **toks = calloc((size_t)n, sizeof *toks);
    int rc = 1;
    vs_err err = {0};
    if ((rc = vs_srv_cli_open(&o, n, &ce)) != 0)
        goto done;
    rc = 2;
    const vs_rt_config *c = &ce.m->cfg;
    int i = 0;
    for (char *save = NULL, *tok = strtok_r(lab, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int cls = vs_rt_class_lookup(c, tok);
        if (cls < 0) {
            char range[32];
            snprintf(range, sizeof range, "0..%d", c->num_classes - 1);
            vs_srv_cli_bad("--labels: unknown class '%s' (use a class index %s or a class name)", tok, range);
            goto done;
        }
        reqs[i].label = cls;
        reqs[i].seed = seed + (unsigned long long)i;
        reqs[i].cfg = (float)o.cfg;
        reqs[i].top_k = (int)o.top_k;
        reqs[i].top_p = (float)o.top_p;
        i++;
    }
    if (i != n) {
        vs_srv_cli_bad("--labels must be a comma-separated list with no empty items (got '%s')%s", labels,
                       "");
        goto done;
    }
    rc = 1;
    if (vs_srv_cli_policy(&o, ce.m, o.kv_policy, &pol) != 0)
        goto done;
    if (!(ce.pool = vs_srv_cli_pool_for(ce.m, ce.be, pol, n, &err))) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    int S = c->image_size, L = c->scale_offset[c->n_scales];
    for (int k = 0; k < n; k++) {
        rgb[k] = malloc((size_t)S * S * 3);
        toks[k] = malloc((size_t)L * sizeof(int32_t));
        if (!rgb[k] || !toks[k]) {
            fprintf(stderr, "varserve: out of memory\n");
            goto done;
        }
    }
    vs_srv_gen_opts go = {.policy = pol};
    if (vs_srv_gen_run_opts(ce.e, ce.pool, reqs, n, rgb, toks, NULL, &go, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    for (int k = 0; k < n; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s-%d.png", out, k);
        if (vs_srv_png_write(path, rgb[k], S, S, &err) != VS_OK) {
            fprintf(stderr, "varserve: %s\n", err.msg);
            goto done;
        }
    }
    if (tokens_out && write_tokens_json(tokens_out, c, reqs, toks, n) != 0)
        goto done;
    rc = 0;
done:
    if (rgb)
        for (int k = 0; k < n; k++)
            free(rgb[k]);
    if (toks)
        for (int k = 0; k < n; k++)
            free(toks[k]);
    free(rgb);
    free(toks);
    free(reqs);
    free(lab);
    vs_kv_policy_free(pol);
    vs_srv_cli_close(&ce);
    return rc;
}
