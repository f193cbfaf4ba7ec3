/* server/cmd_fidelity.c — `varserve fidelity`: parses the options, runs the comparison
 * (server/fidelity.h) and prints it as a line or as one JSON object (--json). */
#include <stdio.h>
#include <string.h>

#include "common/parse.h"
#include "server/cmd.h"
#include "server/fidelity.h"

int vs_srv_cmd_fidelity(int argc, char **argv)
{
    vs_srv_cli_opts o = vs_srv_cli_defaults();
    o.kv_policy = "scalekv";
    long images = 16;
    unsigned long long seed = 0;
    int json = 0;
    const char *dump = NULL;
    static const char *const flags[] = {"--json", NULL};
    static const char *const valued[] = {"--images", "--seed", "--out", "--policy", "--budget", NULL};
    for (int i = 2; i < argc; i++) {
        const char *k, *v;
        int r = vs_srv_cli_next(&o, "fidelity", flags, valued, argc, argv, &i, &k, &v);
        if (r < 0)
            return 2;
        if (r == 0)
            continue;
        if (r == 1) {
            json = 1;
            continue;
        }
        if (strcmp(k, "--policy") == 0 || strcmp(k, "--budget") == 0) {
            /* --policy / --budget are the spelling of --kv-policy / --kv-budget */
            char name[16];
            snprintf(name, sizeof name, "%s", strcmp(k, "--policy") == 0 ? "--kv-policy" : "--kv-budget");
            char *fake[2] = {name, (char *)v};
            int j = 0;
            if (vs_srv_cli_opt(&o, 2, fake, &j) < 0)
                return 2;
        } else if (strcmp(k, "--images") == 0) {
            if (vs_cli_long(v, 1, 100000, &images) != 0)
                return vs_srv_cli_bad("--images must be 1..100000 (got '%s')", v);
        } else if (strcmp(k, "--out") == 0) {
            dump = v;
        } else if (vs_cli_u64(v, &seed) != 0) {
            return vs_srv_cli_bad("--seed must be an integer 0..2^64-1 (got '%s')", v);
        }
    }
    int batch = images < VS_SRV_FIDELITY_BATCH ? (int)images : VS_SRV_FIDELITY_BATCH;
    vs_srv_cli_engine ce = {0};
    vs_kv_policy *full = NULL, *pol = NULL;
    vs_err err = {0};
    int rc = vs_srv_cli_open(&o, batch, &ce);
    if (rc != 0)
        goto done;
    rc = 1;
    const vs_rt_config *c = &ce.m->cfg;
    if (vs_srv_cli_policy(&o, ce.m, "full", &full) != 0 ||
        vs_srv_cli_policy(&o, ce.m, o.kv_policy, &pol) != 0 ||
        !(ce.pool = vs_srv_cli_pool_for(ce.m, ce.be, full, batch, &err))) {
        fprintf(stderr, "varserve: %s\n", err.msg[0] ? err.msg : "cannot start");
        goto done;
    }
    vs_srv_fidelity_opts fo = {images, seed, (float)o.cfg, (int)o.top_k, (float)o.top_p, dump, o.kv_policy};
    vs_srv_fidelity_result r;
    if (vs_srv_fidelity_run(ce.e, ce.pool, full, pol, c, &fo, &r, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    size_t page_bytes = vs_srv_cli_page_bytes(c, ce.be->kv_elem_bytes);
    double kv_full = (double)(r.pages_per_image_full * page_bytes);
    double kv_pol = (double)(r.pages_per_image * page_bytes);
    if (json)
        printf("{\"model\":\"%s\",\"policy\":\"%s\",\"budget\":%g,\"images\":%ld,\"psnr_db\":%.3f,"
               "\"ssim\":%.4f,\"tokens_unchanged\":%.4f,\"identical_images\":%ld,"
               "\"kv_bytes_per_image\":%.0f,\"kv_bytes_per_image_full\":%.0f,\"budget_source\":\"%s\"}\n",
               ce.m->path, o.kv_policy, o.kv_budget, images, r.psnr_db, r.ssim, r.tokens_unchanged,
               r.identical_images, kv_pol, kv_full, vs_kv_policy_source(pol));
    else
        printf("%s at budget %g over %ld images: PSNR %.2f dB, SSIM %.4f, tokens unchanged %.1f%%, "
               "KV per image %.3f MB (full %.3f MB, %.1fx less)\n",
               o.kv_policy, o.kv_budget, images, r.psnr_db, r.ssim, 100 * r.tokens_unchanged, kv_pol / 1e6,
               kv_full / 1e6, kv_full / kv_pol);
    rc = 0;
done:
    vs_kv_policy_free(full);
    vs_kv_policy_free(pol);
    vs_srv_cli_close(&ce);
    return rc;
}
