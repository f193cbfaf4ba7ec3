/* server/cmd_calibrate.c — `varserve calibrate`: parses the options, runs the calibration
 * (server/calibrate.h) and says what it wrote. */
#include <stdio.h>
#include <string.h>

#include "common/parse.h"
#include "kvcache/calibrate.h"
#include "server/calibrate.h"
#include "server/cmd.h"

int vs_srv_cmd_calibrate(int argc, char **argv)
{
    vs_srv_cli_opts o = vs_srv_cli_defaults();
    const char *out = NULL;
    vs_srv_calibrate_method method = VS_SRV_CALIBRATE_ASI;
    long images = 16, top_hist = 32;
    static const char *const flags[] = {NULL};
    static const char *const valued[] = {"--out", "--images", "--top-history", "--method", NULL};
    for (int i = 2; i < argc; i++) {
        const char *k, *v;
        int r = vs_srv_cli_next(&o, "calibrate", flags, valued, argc, argv, &i, &k, &v);
        if (r < 0)
            return 2;
        if (r == 0)
            continue;
        if (strcmp(k, "--out") == 0)
            out = v;
        else if (strcmp(k, "--method") == 0) {
            if (strcmp(v, "asi") == 0)
                method = VS_SRV_CALIBRATE_ASI;
            else if (strcmp(v, "sensitivity") == 0)
                method = VS_SRV_CALIBRATE_SENSITIVITY;
            else if (strcmp(v, "hack") == 0)
                method = VS_SRV_CALIBRATE_HACK;
            else
                return vs_srv_cli_bad("--method must be asi, sensitivity or hack (got '%s')", v);
        } else if (strcmp(k, "--images") == 0) {
            if (vs_cli_long(v, 1, 100000, &images) != 0)
                return vs_srv_cli_bad("--images must be 1..100000 (got '%s')", v);
        } else if (vs_cli_long(v, 1, 1 << 20, &top_hist) != 0)
            return vs_srv_cli_bad("--top-history must be 1..1048576 tokens (got '%s')", v);
    }
    int batch = images < VS_SRV_CALIBRATE_BATCH ? (int)images : VS_SRV_CALIBRATE_BATCH;
    vs_srv_cli_engine ce = {0};
    vs_kv_policy *full = NULL;
    vs_err err = {0};
    char path[4096];
    int rc = vs_srv_cli_open(&o, batch, &ce);
    if (rc != 0)
        goto done;
    rc = 1;
    int hack = method == VS_SRV_CALIBRATE_HACK;
    if (!out) {
        vs_kv_budget_path_for(ce.m->path, hack ? VS_KV_BUDGET_FILE_HACK : VS_KV_BUDGET_FILE_SCALEKV, path,
                              sizeof path);
        out = path;
    }
    const vs_rt_config *c = &ce.m->cfg;
    if (vs_srv_cli_policy(&o, ce.m, "full", &full) != 0 ||
        !(ce.pool = vs_srv_cli_pool_for(ce.m, ce.be, full, batch, &err))) {
        fprintf(stderr, "varserve: %s\n", err.msg[0] ? err.msg : "cannot start calibration");
        goto done;
    }
    vs_srv_calibrate_opts co = {method, images, (int)top_hist, (float)o.cfg, (int)o.top_k, (float)o.top_p};
    if (vs_srv_calibrate_run(ce.e, ce.pool, full, ce.m, &co, out, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        goto done;
    }
    if (hack)
        printf("wrote %s: HACK head map (contextual/structural) for %d layers x %d heads from %ld images\n",
               out, c->depth, c->num_heads, images);
    else
        printf("wrote %s: ScaleKV drafter/refiner marks (%s) for %d scales x %d layers from %ld images\n",
               out, method == VS_SRV_CALIBRATE_ASI ? "asi" : "sensitivity", c->n_scales - 1, c->depth,
               images);
    rc = 0;
done:
    vs_kv_policy_free(full);
    vs_srv_cli_close(&ce);
    return rc;
}
