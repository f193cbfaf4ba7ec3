/* server/cmd_inspect.c — `varserve inspect [--verify] MODEL`: the model file's shapes, sizes and KV
 * footprint; loading it checks everything, the data checksum too when the file has one. An
 * Infinity model or a T5 encoder (the library's other families) is loaded and
 * summarised too. */
#include <stdio.h>
#include <string.h>

#include "runtime/infinity.h"
#include "runtime/t5.h"
#include "server/cmd.h"

static int no_checksum(const char *path)
{
    fprintf(stderr, "varserve: %s has no data_crc32 in its metadata, so its data cannot be verified\n", path);
    return 1;
}

/* An Infinity model or a T5 encoder: what the library holds of them. */
static int inspect_other(const char *path, const char *fam, int verify)
{
    vs_err err = {0};
    if (strcmp(fam, "a T5 text encoder") == 0) {
        vs_rt_t5 *t = NULL;
        if (vs_rt_t5_load(path, &t, &err) != VS_OK) {
            fprintf(stderr, "varserve: %s\n", err.msg);
            return 1;
        }
        if (verify && !t->has_checksum) {
            vs_rt_t5_free(t);
            return no_checksum(path);
        }
        const vs_rt_t5_config *c = &t->cfg;
        printf("model:            %s\n", path);
        printf("family:           T5 text encoder (Infinity's prompts; not served on its own)\n");
        printf("checksum:         %s\n", t->has_checksum ? "data CRC-32 matches the metadata's data_crc32" : "none");
        printf("parameters:       %zu (%.2f M)\n", t->n_params, (double)t->n_params / 1e6);
        printf("encoder:          %d layers, width %d, %d heads of %d, gated-GELU ffn %d, vocabulary %d\n",
               c->num_layers, c->d_model, c->num_heads, c->d_kv, c->d_ff, c->vocab_size);
        printf("weights in memory: %.2f MB (F32)\n", (double)t->data_bytes / 1e6);
        vs_rt_t5_free(t);
        return 0;
    }
    vs_rt_infinity *m = NULL;
    if (vs_rt_infinity_load(path, &m, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        return 1;
    }
    if (verify && !m->has_checksum) {
        vs_rt_infinity_free(m);
        return no_checksum(path);
    }
    const vs_rt_infinity_config *c = &m->cfg;
    int H = c->hw[c->n_scales - 1][0], W = c->hw[c->n_scales - 1][1], tokens = 0;
    printf("model:            %s\n", path);
    printf("family:           Infinity (text to image, bitwise tokens; served with --t5 and --spiece)\n");
    printf("checksum:         %s\n", m->has_checksum ? "data CRC-32 matches the metadata's data_crc32" : "none");
    printf("parameters:       %zu (%.2f M)\n", m->n_params, (double)m->n_params / 1e6);
    printf("transformer:      depth %d, width %d, %d heads of %d, ffn %d, text width %d (up to %d tokens)\n",
           c->depth, c->C, c->heads, c->head_dim, c->ffn, c->Ct5, c->text_maxlen);
    printf("scales:           ");
    for (int s = 0; s < c->n_scales; s++) {
        printf("%s%dx%d", s ? "," : "", c->hw[s][0], c->hw[s][1]);
        tokens += c->hw[s][0] * c->hw[s][1];
    }
    printf(" (%d tokens of %d bits)\n", tokens, c->d);
    printf("decoder:          ch %d, mult ", m->dec.vae_ch);
    for (int i = 0; i < m->dec.n_levels; i++)
        printf("%s%d", i ? "," : "", m->dec.vae_ch_mult[i]);
    printf(", %d res blocks per level\n", m->dec.vae_num_res_blocks + 1);
    printf("image:            %dx%d RGB\n", H * (m->dec.image_size / H), W * (m->dec.image_size / H));
    printf("weights in memory: %.2f MB (F32)\n", (double)m->data_bytes / 1e6);
    vs_rt_infinity_free(m);
    return 0;
}

int vs_srv_cmd_inspect(int argc, char **argv)
{
    int verify = argc == 4 && strcmp(argv[2], "--verify") == 0;
    if (argc != 3 + verify || argv[2 + verify][0] == '-')
        return vs_srv_cli_bad("inspect takes [--verify] and the model file (see varserve inspect --help)%s%s",
                              "", "");
    vs_err err = {0};
    vs_rt_model *m = NULL;
    const char *path = argv[2 + verify];
    const char *fam = vs_srv_cli_family(path);
    if (fam)
        return inspect_other(path, fam, verify);
    /* loading checks everything, the checksum too when the file has one */
    if (vs_rt_model_load(path, &m, &err) != VS_OK) {
        fprintf(stderr, "varserve: %s\n", err.msg);
        return 1;
    }
    if (verify && !m->has_checksum) {
        fprintf(stderr, "varserve: %s has no data_crc32 in its metadata, so its data cannot be verified: "
                        "convert it again with tools/convert_var.py\n", m->path);
        vs_rt_model_free(m);
        return 1;
    }
    const vs_rt_config *c = &m->cfg;
    printf("model:            %s\n", m->path);
    printf("file:             %.2f MB, stored as %s\n", (double)m->file_bytes / 1e6, m->dtype);
    printf("checksum:         %s\n", m->has_checksum ? "data CRC-32 matches the metadata's data_crc32"
                                                      : "none (files from older converters)");
    printf("parameters:       %zu (%.2f M)\n", m->n_params, (double)m->n_params / 1e6);
    printf("transformer:      depth %d, width %d, %d heads of %d, ffn %d, shared_aln %s, attn_l2_norm %s\n",
           c->depth, c->embed_dim, c->num_heads, c->head_dim, c->ffn_dim, c->shared_aln ? "yes" : "no",
           c->attn_l2_norm ? "yes" : "no");
    printf("classes:          %d%s\n", c->num_classes, c->class_names ? " (named)" : "");
    printf("scales:           ");
    for (int s = 0; s < c->n_scales; s++)
        printf("%s%d", s ? "," : "", c->patch_nums[s]);
    printf(" (%d tokens)\n", c->scale_offset[c->n_scales]);
    printf("vocabulary:       %d codes of %d channels\n", c->vocab_size, c->z_channels);
    printf("decoder:          ch %d, mult ", c->vae_ch);
    for (int i = 0; i < c->n_levels; i++)
        printf("%s%d", i ? "," : "", c->vae_ch_mult[i]);
    printf(", %d res blocks per level\n", c->vae_num_res_blocks + 1);
    printf("image:            %dx%d RGB\n", c->image_size, c->image_size);
    printf("weights in memory: %.2f MB (F32)\n", (double)m->data_bytes / 1e6);
    printf("kv per image:     %.2f MB at full cache (2 rows x %d layers x %d tokens, F32)\n",
           (double)vs_rt_full_kv_bytes(c) / 1e6, c->depth, c->scale_offset[c->n_scales]);
    vs_kv_policy *full = NULL;
    if (vs_kv_policy_new(VS_KV_POLICY_FULL, 1, c, NULL, &full, &err) == VS_OK) {
        /* the pool's peak in pages; their element type is the backend's (fp32 on the CPU and in
         * CUDA's --precision fp32, bf16 in CUDA's default mode) */
        size_t pages = vs_kv_policy_peak_pages_per_image(full, VS_KV_PAGE_TOKENS);
        printf("kv pool per image: %zu pages at full cache: %.2f MB as fp32, %.2f MB as bf16\n",
               pages, (double)(pages * vs_srv_cli_page_bytes(c, 4)) / 1e6,
               (double)(pages * vs_srv_cli_page_bytes(c, 2)) / 1e6);
        vs_kv_policy_free(full);
    }
    if (c->default_cfg >= 0 || c->default_top_k >= 0 || c->default_top_p >= 0)
        printf("defaults:         cfg %g, top_k %d, top_p %g\n", c->default_cfg, c->default_top_k,
               c->default_top_p);
    vs_rt_model_free(m);
    return 0;
}
