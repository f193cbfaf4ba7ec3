#!/usr/bin/env python3
"""Write the tiny Infinity .pth pair that tests/test_convert_infinity.py converts (needs torch; run once).

    /usr/bin/python3 tools/make_test_infinity_pth.py [--out tests/fixtures/pth]

Writes infinity_tiny.pth (a plain state dict, as the released infinity_2b_reg.pth is loaded by
the reference's load_infinity) and infinity_vae_tiny.pth ({'vae': state dict}, as its vae_model
loads it), and infinity_expected.json. The names are FoundationVision/Infinity's (infinity.py,
basic.py, bsq_vae/flux_vqgan.py) for a tiny 2B-structured model: depth 2 in 2 block chunks, width
64, one head of 64, FFN 256, text width 128 (one pool head), 8 text tokens, 32 bits a token; a
decoder of base 32, channel multipliers 1, 2, one ResBlock more than num_res_blocks 1. Values are
random; the weights F16 (the biases, cfg_uncond and pos_start F32), to keep the pair small. They include what the converter must
drop: each attention's zero_k_bias, the VAE's encoder and quantizer. expected.json holds the config
the converter must infer, and each output tensor's shape and float64 sum.
"""
import argparse
import collections
import json
import os

import torch

C, H, F, T, TL, D = 64, 1, 256, 128, 8, 32
DEPTH, CHUNKS = 2, 2
BASE, MULT, NRB = 32, [1, 2], 1


def transformer():
    sd = collections.OrderedDict()
    sd['cfg_uncond'] = (TL, T)
    sd['pos_start'] = (1, 1, C)
    sd['lvl_embed.weight'] = (15, C)
    sd['word_embed.weight'], sd['word_embed.bias'] = (C, D), (C,)
    sd['shared_ada_lin.1.weight'], sd['shared_ada_lin.1.bias'] = (6 * C, C), (6 * C,)
    sd['text_norm.weight'] = (T,)
    sd['text_proj_for_sos.ca.mat_q'] = (1, 1, C)
    sd['text_proj_for_sos.ca.v_bias'] = (C,)
    sd['text_proj_for_sos.ca.zero_k_bias'] = (C,)
    sd['text_proj_for_sos.ca.mat_kv.weight'] = (2 * C, T)
    sd['text_proj_for_sos.ca.proj.weight'], sd['text_proj_for_sos.ca.proj.bias'] = (C, C), (C,)
    sd['text_proj_for_ca.0.weight'], sd['text_proj_for_ca.0.bias'] = (C, T), (C,)
    sd['text_proj_for_ca.2.weight'], sd['text_proj_for_ca.2.bias'] = (C, C), (C,)
    per = DEPTH // CHUNKS
    for i in range(DEPTH):
        p = 'block_chunks.%d.module.%d.' % (i // per, i % per)
        sd[p + 'ada_gss'] = (1, 1, 6, C)
        sd[p + 'sa.scale_mul_1H11'] = (1, H, 1, 1)
        sd[p + 'sa.q_bias'], sd[p + 'sa.v_bias'], sd[p + 'sa.zero_k_bias'] = (C,), (C,), (C,)
        sd[p + 'sa.mat_qkv.weight'] = (3 * C, C)
        sd[p + 'sa.proj.weight'], sd[p + 'sa.proj.bias'] = (C, C), (C,)
        sd[p + 'ca.v_bias'], sd[p + 'ca.zero_k_bias'] = (C,), (C,)
        sd[p + 'ca.mat_q.weight'], sd[p + 'ca.mat_q.bias'] = (C, C), (C,)
        sd[p + 'ca.mat_kv.weight'] = (2 * C, C)
        sd[p + 'ca.proj.weight'], sd[p + 'ca.proj.bias'] = (C, C), (C,)
        sd[p + 'ca_norm.weight'], sd[p + 'ca_norm.bias'] = (C,), (C,)
        sd[p + 'ffn.fc1.weight'], sd[p + 'ffn.fc1.bias'] = (F, C), (F,)
        sd[p + 'ffn.fc2.weight'], sd[p + 'ffn.fc2.bias'] = (C, F), (C,)
    sd['head_nm.ada_lin.1.weight'], sd['head_nm.ada_lin.1.bias'] = (2 * C, C), (2 * C,)
    sd['head.weight'], sd['head.bias'] = (2 * D, C), (2 * D,)
    return sd


def conv(sd, p, cout, cin, k):
    sd[p + '.conv.weight'], sd[p + '.conv.bias'] = (cout, cin, k, k), (cout,)


def norm(sd, p, c):
    sd[p + '.norm.weight'], sd[p + '.norm.bias'] = (c,), (c,)


def resblock(sd, p, cin, cout):
    norm(sd, p + '.norm1', cin)
    conv(sd, p + '.conv1', cout, cin, 3)
    norm(sd, p + '.norm2', cout)
    conv(sd, p + '.conv2', cout, cout, 3)
    if cin != cout:
        conv(sd, p + '.nin_shortcut', cout, cin, 1)


def vae():
    sd = collections.OrderedDict()
    top = BASE * MULT[-1]
    conv(sd, 'decoder.conv_in', top, D, 3)
    resblock(sd, 'decoder.mid.block_1', top, top)
    resblock(sd, 'decoder.mid.block_2', top, top)
    cin = top
    for lv in reversed(range(len(MULT))):
        cout = BASE * MULT[lv]
        for j in range(NRB + 1):
            resblock(sd, 'decoder.up.%d.block.%d' % (lv, j), cin, cout)
            cin = cout
        if lv:
            conv(sd, 'decoder.up.%d.upsample.conv' % lv, cin, cin, 3)
    norm(sd, 'decoder.norm_out', cin)
    conv(sd, 'decoder.conv_out', 3, cin, 3)
    sd['encoder.conv_in.conv.weight'] = (BASE, 3, 3, 3)  # what the converter drops
    sd['quantizer.lfq.codebook'] = (4, D)
    return sd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='tests/fixtures/pth')
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    expected = collections.OrderedDict()
    for name, shapes, wrap in (('infinity_tiny.pth', transformer(), None), ('infinity_vae_tiny.pth', vae(), 'vae')):
        sd = collections.OrderedDict()
        for k, s in shapes.items():
            t = torch.randn(s, generator=g) * (0.0 if k.endswith('zero_k_bias') else 0.5)
            sd[k] = t if k.endswith('bias') or k in ('cfg_uncond', 'pos_start') else t.half()
            pre = 'infinity.' if wrap is None else 'vae.'
            if not k.endswith('zero_k_bias') and (wrap is None or k.startswith('decoder.')):
                expected[pre + k] = {'shape': list(s), 'sum': float(sd[k].double().sum())}
        torch.save(sd if wrap is None else {wrap: sd}, os.path.join(a.out, name))
    cfg = collections.OrderedDict([
        ('depth', DEPTH), ('embed_dim', C), ('num_heads', H), ('head_dim', C // H), ('mlp_hidden', F),
        ('block_chunks', CHUNKS), ('text_channels', T), ('text_maxlen', TL), ('text_pool_heads', 1),
        ('codebook_dim', D), ('vae_base_ch', BASE), ('vae_ch_mult', MULT), ('vae_num_res_blocks', NRB),
        ('vae_patch_size', 2 ** (len(MULT) - 1))])
    with open(os.path.join(a.out, 'infinity_expected.json'), 'w') as f:
        json.dump({'config': cfg, 'tensors': expected}, f, indent=0)


if __name__ == '__main__':
    main()
