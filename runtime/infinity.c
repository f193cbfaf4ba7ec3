/* runtime/infinity.c — see infinity.h. */
#include "runtime/infinity.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/safetensors.h"
#include "runtime/vae.h"

static vs_status parse_decoder(const char *json, vs_rt_config *c, vs_err *err)
{
    cJSON *o = cJSON_ParseWithLengthOpts(json, strlen(json), NULL, 0);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return vs_err_set(err, VS_ERR_INVALID, "metadata 'config' is not a JSON object");
    }
    vs_status st;
    int patch = 0;
    if ((st = vs_st_cfg_int(o, "codebook_dim", 1, 64, &c->z_channels, err)) != VS_OK ||
        (st = vs_st_cfg_int(o, "vae_base_ch", 1, 4096, &c->vae_ch, err)) != VS_OK ||
        (st = vs_st_cfg_int_list(o, "vae_ch_mult", VS_RT_MAX_LEVELS, 1, 64, c->vae_ch_mult, &c->n_levels, err)) !=
            VS_OK ||
        (st = vs_st_cfg_int(o, "vae_num_res_blocks", 0, VS_RT_MAX_LEVELS - 1, &c->vae_num_res_blocks, err)) !=
            VS_OK ||
        (st = vs_st_cfg_int(o, "vae_patch_size", 1, 1 << 10, &patch, err)) != VS_OK)
        goto done;
    if (patch != 1 << (c->n_levels - 1)) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "config: vae_patch_size %d disagrees with vae_ch_mult's %d levels (the decoder upsamples "
                        "2^(levels - 1) = %d times)",
                        patch, c->n_levels, 1 << (c->n_levels - 1));
        goto done;
    }
    /* the last (t, h, w) of scale_schedule: the grid the decoder is sized for */
    const cJSON *ss = cJSON_GetObjectItemCaseSensitive(o, "scale_schedule");
    const cJSON *last = cJSON_IsArray(ss) ? cJSON_GetArrayItem(ss, cJSON_GetArraySize(ss) - 1) : NULL;
    int thw[3], n = 0;
    const cJSON *e;
    if (cJSON_IsArray(last) && cJSON_GetArraySize(last) == 3)
        cJSON_ArrayForEach(e, last)
        {
            if (cJSON_IsNumber(e) && e->valuedouble >= 1 && e->valuedouble <= 4096 &&
                e->valuedouble == (double)(int)e->valuedouble)
                thw[n++] = (int)e->valuedouble;
        }
    if (n != 3 || thw[0] != 1 || thw[1] != thw[2]) {
        st = vs_err_set(err, VS_ERR_INVALID,
                        "config field 'scale_schedule' must end in a square (1, h, h) grid, h 1..4096 (the "
                        "decoder is sized for it)");
        goto done;
    }
    st = VS_OK;
    c->n_scales = 1;
    c->patch_nums[0] = thw[1];
    c->image_size = thw[1] * patch;
    c->image_channels = 3;
done:
    cJSON_Delete(o);
    return st;
}

vs_status vs_rt_infinity_vae_load(const char *path, vs_rt_infinity_vae **out, vs_err *err)
{
    vs_st_file f;
    vs_status st = vs_st_open(&f, path, err);
    if (st != VS_OK)
        return st;
    vs_st_expects l = {0};
    l.skip = "infinity."; /* the transformer's: not read yet */
    vs_rt_infinity_vae *v = calloc(1, sizeof *v);
    if (!v) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    const cJSON *cfg = f.meta ? cJSON_GetObjectItemCaseSensitive(f.meta, "config") : NULL;
    if (!cJSON_IsString(cfg)) {
        st = vs_err_set(err, VS_ERR_INVALID, "Infinity file '%s' has no metadata 'config' (a JSON string)", path);
        goto fail;
    }
    if ((st = parse_decoder(cfg->valuestring, &v->dec, err)) != VS_OK)
        goto fail;
    static const vs_rt_vae_names names = {"vae.decoder", ".conv", ".norm", 0};
    if (vs_rt_vae_expect(&l, &v->dec, &v->w, &names) != 0) {
        st = vs_err_set(err, VS_ERR_NOMEM, "out of memory");
        goto fail;
    }
    vs_st_loaded ld;
    if ((st = vs_st_load(&f, &l, 0, "(save the model in float32, float16 or bfloat16)", &ld, err)) != VS_OK)
        goto fail;
    v->data = ld.data;
    v->data_bytes = ld.bytes;
    v->n_params = ld.n_params;
    *out = v;
    v = NULL;
fail:
    free(l.v);
    vs_st_close(&f);
    vs_rt_infinity_vae_free(v);
    return st;
}

void vs_rt_infinity_vae_free(vs_rt_infinity_vae *v)
{
    if (!v)
        return;
    free(v->data);
    free(v);
}
