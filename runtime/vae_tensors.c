/* runtime/vae_tensors.c — the decoder's tensor list (vae.h: vs_rt_vae_expect) and its rebase,
 * apart from vae.c so that a loader (and its fuzz target) needs no backend. It mirrors vs_rt_vae_decode's order:
 * conv_in, the mid block, each level from the top with its ResBlocks (and attention), the
 * upsample conv of every level but 0, norm_out, conv_out. */
#include <stdio.h>

#include "runtime/vae.h"

int vs_rt_vae_expect_conv(vs_st_expects *l, vs_rt_conv_w *cw, int cout, int cin, int k, const char *prefix,
                          const char *sfx)
{
    cw->cout = cout;
    cw->cin = cin;
    cw->k = k;
    long ws[] = {cout, cin, k, k}, bs[] = {cout};
    return vs_st_expect_add(l, &cw->w, 4, ws, "%s%s.weight", prefix, sfx) ||
                   vs_st_expect_add(l, &cw->b, 1, bs, "%s%s.bias", prefix, sfx)
               ? -1
               : 0;
}

static int exp_norm(vs_st_expects *l, vs_rt_norm_w *n, int c, const char *prefix, const vs_rt_vae_names *nm)
{
    n->c = c;
    long sh[] = {c};
    return vs_st_expect_add(l, &n->w, 1, sh, "%s%s.weight", prefix, nm->norm) ||
                   vs_st_expect_add(l, &n->b, 1, sh, "%s%s.bias", prefix, nm->norm)
               ? -1
               : 0;
}

static int exp_resblock(vs_st_expects *l, vs_rt_resblock_w *r, int cin, int cout, const char *prefix,
                        const vs_rt_vae_names *nm)
{
    char p[128];
    snprintf(p, sizeof p, "%s.norm1", prefix);
    if (exp_norm(l, &r->norm1, cin, p, nm))
        return -1;
    snprintf(p, sizeof p, "%s.conv1", prefix);
    if (vs_rt_vae_expect_conv(l, &r->conv1, cout, cin, 3, p, nm->conv))
        return -1;
    snprintf(p, sizeof p, "%s.norm2", prefix);
    if (exp_norm(l, &r->norm2, cout, p, nm))
        return -1;
    snprintf(p, sizeof p, "%s.conv2", prefix);
    if (vs_rt_vae_expect_conv(l, &r->conv2, cout, cout, 3, p, nm->conv))
        return -1;
    if (cin != cout) {
        snprintf(p, sizeof p, "%s.nin_shortcut", prefix);
        if (vs_rt_vae_expect_conv(l, &r->nin, cout, cin, 1, p, nm->conv))
            return -1;
    }
    return 0;
}

static int exp_attnblock(vs_st_expects *l, vs_rt_attnblock_w *a, int c, const char *prefix,
                         const vs_rt_vae_names *nm)
{
    char p[128];
    snprintf(p, sizeof p, "%s.norm", prefix);
    if (exp_norm(l, &a->norm, c, p, nm))
        return -1;
    snprintf(p, sizeof p, "%s.qkv", prefix);
    if (vs_rt_vae_expect_conv(l, &a->qkv, 3 * c, c, 1, p, nm->conv))
        return -1;
    snprintf(p, sizeof p, "%s.proj_out", prefix);
    if (vs_rt_vae_expect_conv(l, &a->proj, c, c, 1, p, nm->conv))
        return -1;
    return 0;
}

int vs_rt_vae_expect(vs_st_expects *l, const vs_rt_config *c, vs_rt_weights *w, const vs_rt_vae_names *nm)
{
    int nl = c->n_levels, ch = c->vae_ch, Cv = c->z_channels;
    int block_in = ch * c->vae_ch_mult[nl - 1];
    char p[128];
    snprintf(p, sizeof p, "%s.conv_in", nm->prefix);
    if (vs_rt_vae_expect_conv(l, &w->conv_in, block_in, Cv, 3, p, nm->conv))
        return -1;
    snprintf(p, sizeof p, "%s.mid.block_1", nm->prefix);
    if (exp_resblock(l, &w->mid_block1, block_in, block_in, p, nm))
        return -1;
    snprintf(p, sizeof p, "%s.mid.attn_1", nm->prefix);
    if (nm->attention && exp_attnblock(l, &w->mid_attn, block_in, p, nm))
        return -1;
    snprintf(p, sizeof p, "%s.mid.block_2", nm->prefix);
    if (exp_resblock(l, &w->mid_block2, block_in, block_in, p, nm))
        return -1;
    for (int lv = nl - 1; lv >= 0; lv--) {
        vs_rt_level_w *u = &w->up[lv];
        int block_out = ch * c->vae_ch_mult[lv];
        u->n_blocks = c->vae_num_res_blocks + 1;
        u->n_attn = nm->attention && lv == nl - 1 ? u->n_blocks : 0;
        for (int j = 0; j < u->n_blocks; j++) {
            snprintf(p, sizeof p, "%s.up.%d.block.%d", nm->prefix, lv, j);
            if (exp_resblock(l, &u->block[j], block_in, block_out, p, nm))
                return -1;
            block_in = block_out;
            if (u->n_attn) {
                snprintf(p, sizeof p, "%s.up.%d.attn.%d", nm->prefix, lv, j);
                if (exp_attnblock(l, &u->attn[j], block_in, p, nm))
                    return -1;
            }
        }
        if (lv != 0) {
            snprintf(p, sizeof p, "%s.up.%d.upsample.conv", nm->prefix, lv);
            if (vs_rt_vae_expect_conv(l, &u->upsample, block_in, block_in, 3, p, nm->conv))
                return -1;
        }
    }
    snprintf(p, sizeof p, "%s.norm_out", nm->prefix);
    if (exp_norm(l, &w->norm_out, block_in, p, nm))
        return -1;
    snprintf(p, sizeof p, "%s.conv_out", nm->prefix);
    return vs_rt_vae_expect_conv(l, &w->conv_out, 3, block_in, 3, p, nm->conv);
}

#define REBASE(p) ((p) ? new_base + ((p) - old_base) : NULL)

static void rebase_conv(vs_rt_conv_w *c, const float *old_base, float *new_base)
{
    c->w = REBASE(c->w);
    c->b = REBASE(c->b);
}

static void rebase_norm(vs_rt_norm_w *n, const float *old_base, float *new_base)
{
    n->w = REBASE(n->w);
    n->b = REBASE(n->b);
}

static void rebase_res(vs_rt_resblock_w *r, const float *old_base, float *new_base)
{
    rebase_norm(&r->norm1, old_base, new_base);
    rebase_norm(&r->norm2, old_base, new_base);
    rebase_conv(&r->conv1, old_base, new_base);
    rebase_conv(&r->conv2, old_base, new_base);
    rebase_conv(&r->nin, old_base, new_base);
}

static void rebase_attn(vs_rt_attnblock_w *a, const float *old_base, float *new_base)
{
    rebase_norm(&a->norm, old_base, new_base);
    rebase_conv(&a->qkv, old_base, new_base);
    rebase_conv(&a->proj, old_base, new_base);
}

void vs_rt_vae_rebase(const vs_rt_config *c, vs_rt_weights *w, const float *old_base, float *new_base)
{
    rebase_conv(&w->post_quant_conv, old_base, new_base);
    rebase_conv(&w->conv_in, old_base, new_base);
    rebase_conv(&w->conv_out, old_base, new_base);
    rebase_res(&w->mid_block1, old_base, new_base);
    rebase_res(&w->mid_block2, old_base, new_base);
    rebase_attn(&w->mid_attn, old_base, new_base);
    rebase_norm(&w->norm_out, old_base, new_base);
    for (int lv = 0; lv < c->n_levels; lv++) {
        vs_rt_level_w *u = &w->up[lv];
        for (int j = 0; j < u->n_blocks; j++)
            rebase_res(&u->block[j], old_base, new_base);
        for (int j = 0; j < u->n_attn; j++)
            rebase_attn(&u->attn[j], old_base, new_base);
        rebase_conv(&u->upsample, old_base, new_base);
    }
}
