#!/usr/bin/env python3
"""Write the tiny .pth checkpoint pair that tests/test_convert.py converts (needs torch; run once).

    /usr/bin/python3 tools/make_test_pth.py [--out tests/fixtures/pth] [--seed 0]

Writes var_tiny.pth (a plain state dict, like the released var_d*.pth), vae_tiny.pth (the state
dict under 'model' in a wrapper dict that also holds an argparse.Namespace) and expected.json. The state dicts use
the key names of FoundationVision/VAR (models/var.py, basic_var.py, vqvae.py, quant.py,
basic_vae.py) for a tiny config, with random values, and include what the converter must drop:
lvl_1L, attn_bias_for_masking, blocks.*.attn.zero_k_bias, quantize.ema_vocab_hit_SV, quant_conv.*
and (a subset of) encoder.*. To exercise the reader, some tensors are saved as views: transposed
(non-contiguous), sliced from a larger storage (storage offset, strides), two tensors sharing one
storage; and some VAE tensors are float16 / bfloat16 (the rest float32), which keeps the pair
under 1 MB.

expected.json holds the config the converter must infer, and for each output tensor name its
shape, float64 sum, sum of squares, sum of absolute values and a few sampled values (flat index ->
value as float32), all computed with torch from the tensors as saved.
"""

import argparse
import json
import os
from collections import OrderedDict

import torch

CFG = OrderedDict([
    ('arch', 'var'), ('depth', 2), ('embed_dim', 32), ('num_heads', 2), ('mlp_ratio', 4.0),
    ('norm_eps', 1e-06), ('shared_aln', False), ('attn_l2_norm', True), ('num_classes', 4),
    ('patch_nums', [1, 2, 4]), ('vocab_size', 64), ('z_channels', 8), ('vae_ch', 32),
    ('vae_ch_mult', [1, 2]), ('vae_num_res_blocks', 0), ('quant_resi', 0.5),
    ('share_quant_resi', 4),
])


def build_var(g):
    C, H, D = CFG['embed_dim'], CFG['num_heads'], CFG['depth']
    pn = CFG['patch_nums']
    L = sum(p * p for p in pn)
    hidden = round(C * CFG['mlp_ratio'])

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    sd = OrderedDict()
    # models/var.py registration order: word_embed, class_emb, pos_start, pos_1LC, lvl_embed,
    # (shared_ada_lin), blocks, lvl_1L, attn_bias_for_masking, head_nm, head
    sd['word_embed.weight'] = r(C, CFG['z_channels'])
    sd['word_embed.bias'] = r(C)
    sd['class_emb.weight'] = r(CFG['num_classes'] + 1, C)
    sd['pos_start'] = r(1, pn[0] ** 2, C)
    sd['pos_1LC'] = r(1, L, C)
    sd['lvl_embed.weight'] = r(len(pn), C)
    for i in range(D):
        b = 'blocks.%d.' % i
        sd[b + 'attn.scale_mul_1H11'] = torch.full((1, H, 1, 1), 4.0).log() + r(1, H, 1, 1)
        if i == 1:
            # q_bias and v_bias as two views of one storage (the second at a storage offset)
            qv = r(2 * C)
            sd[b + 'attn.q_bias'], sd[b + 'attn.v_bias'] = qv[:C], qv[C:]
        else:
            sd[b + 'attn.q_bias'], sd[b + 'attn.v_bias'] = r(C), r(C)
        sd[b + 'attn.zero_k_bias'] = torch.zeros(C)
        if i == 0:
            sd[b + 'attn.mat_qkv.weight'] = r(C, 3 * C).t()  # non-contiguous: strides (1, 3C)
            assert not sd[b + 'attn.mat_qkv.weight'].is_contiguous()
        else:
            sd[b + 'attn.mat_qkv.weight'] = r(3 * C, C)
        sd[b + 'attn.proj.weight'] = r(C, C)
        sd[b + 'attn.proj.bias'] = r(C)
        sd[b + 'ffn.fc1.weight'] = r(hidden, C)
        sd[b + 'ffn.fc1.bias'] = r(hidden)
        sd[b + 'ffn.fc2.weight'] = r(C, hidden)
        sd[b + 'ffn.fc2.bias'] = r(C)
        sd[b + 'ada_lin.1.weight'] = r(6 * C, C)
        sd[b + 'ada_lin.1.bias'] = r(6 * C)
    d = torch.cat([torch.full((p * p,), i) for i, p in enumerate(pn)]).view(1, L, 1)
    dT = d.transpose(1, 2)
    sd['lvl_1L'] = dT[:, 0].contiguous()
    sd['attn_bias_for_masking'] = torch.where(d >= dT, 0., -torch.inf).reshape(1, 1, L, L).contiguous()
    sd['head_nm.ada_lin.1.weight'] = r(2 * C, C)
    sd['head_nm.ada_lin.1.bias'] = r(2 * C)
    # every other column of a wider matrix: storage larger than the tensor, strides (2C, 2)
    sd['head.weight'] = r(CFG['vocab_size'], 2 * C)[:, ::2]
    assert not sd['head.weight'].is_contiguous()
    sd['head.bias'] = r(CFG['vocab_size'])
    return sd


def build_vae(g):
    ch, mult, nrb = CFG['vae_ch'], CFG['vae_ch_mult'], CFG['vae_num_res_blocks']
    Cvae, V = CFG['z_channels'], CFG['vocab_size']
    sd = OrderedDict()

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    def conv(name, cout, cin, k, dtype=torch.float32):
        sd[name + '.weight'] = r(cout, cin, k, k).to(dtype)
        sd[name + '.bias'] = r(cout).to(dtype)

    def norm(name, c):
        sd[name + '.weight'] = 1 + r(c)
        sd[name + '.bias'] = r(c)

    def resblock(name, cin, cout, dtype):
        norm(name + '.norm1', cin)
        conv(name + '.conv1', cout, cin, 3, dtype)
        norm(name + '.norm2', cout)
        conv(name + '.conv2', cout, cout, 3, dtype)
        if cin != cout:
            conv(name + '.nin_shortcut', cout, cin, 1)

    def attnblock(name, c, dtype):
        norm(name + '.norm', c)
        conv(name + '.qkv', 3 * c, c, 1, dtype)
        conv(name + '.proj_out', c, c, 1, dtype)

    # encoder (dropped by the converter): a few representative entries, not the whole network
    conv('encoder.conv_in', ch, 3, 3)
    norm('encoder.down.0.block.0.norm1', ch)
    norm('encoder.norm_out', ch * mult[-1])
    conv('encoder.conv_out', Cvae, ch * mult[-1], 1)

    # decoder (models/basic_vae.py Decoder); the convs of the top (widest) level are float16 and
    # the upsample convs bfloat16, to keep the fixture small and to cover those storage types
    top = len(mult) - 1
    block_in = ch * mult[top]
    conv('decoder.conv_in', block_in, Cvae, 3)
    resblock('decoder.mid.block_1', block_in, block_in, torch.float16)
    attnblock('decoder.mid.attn_1', block_in, torch.float16)
    resblock('decoder.mid.block_2', block_in, block_in, torch.float16)
    for lv in reversed(range(len(mult))):
        block_out = ch * mult[lv]
        for j in range(nrb + 1):
            resblock('decoder.up.%d.block.%d' % (lv, j), block_in, block_out,
                     torch.float16 if lv == top else torch.float32)
            block_in = block_out
            if lv == top:
                attnblock('decoder.up.%d.attn.%d' % (lv, j), block_in, torch.float16)
        if lv != 0:
            conv('decoder.up.%d.upsample.conv' % lv, block_in, block_in, 3, torch.bfloat16)
    norm('decoder.norm_out', block_in)
    conv('decoder.conv_out', 3, block_in, 3)

    # quantizer (models/quant.py VectorQuantizer2 with PhiPartiallyShared), quant convs
    for k in range(CFG['share_quant_resi']):
        conv('quantize.quant_resi.qresi_ls.%d' % k, Cvae, Cvae, 3)
    sd['quantize.ema_vocab_hit_SV'] = torch.rand(len(CFG['patch_nums']), V, generator=g)
    sd['quantize.embedding.weight'] = r(V, Cvae)
    conv('quant_conv', Cvae, Cvae, 3)
    # post_quant_conv.weight saved as a permuted view (non-contiguous, 4-D strides)
    sd['post_quant_conv.weight'] = r(3, 3, Cvae, Cvae).permute(2, 3, 0, 1)
    assert not sd['post_quant_conv.weight'].is_contiguous()
    sd['post_quant_conv.bias'] = r(Cvae)
    return sd


DROPPED_VAR = ('lvl_1L', 'attn_bias_for_masking')


def kept_name(prefix, k):
    if prefix == 'var.':
        if k in DROPPED_VAR or k.endswith('.attn.zero_k_bias'):
            return None
    else:
        if k == 'quantize.ema_vocab_hit_SV' or k.startswith(('encoder.', 'quant_conv.')):
            return None
    return prefix + k


def describe(t, g):
    x = t.detach().to(torch.float64).reshape(-1)
    n = x.numel()
    idx = sorted(set([0, n - 1] + torch.randint(0, n, (3,), generator=g).tolist()))
    return OrderedDict([
        ('shape', list(t.shape)), ('src_dtype', str(t.dtype).replace('torch.', '')),
        ('contiguous', bool(t.is_contiguous())),
        ('sum', float(x.sum())), ('sumsq', float((x * x).sum())), ('sumabs', float(x.abs().sum())),
        ('samples', OrderedDict((str(i), float(x[i])) for i in idx)),
    ])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='tests/fixtures/pth')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    g = torch.Generator().manual_seed(args.seed)
    var_sd, vae_sd = build_var(g), build_vae(g)
    torch.save(var_sd, os.path.join(args.out, 'var_tiny.pth'))
    # the VAE goes in a training-style wrapper (the release files are plain state dicts; the
    # converter must find the state dict inside, and skip the objects it has no use for)
    wrapped = OrderedDict([('epoch', 7), ('args', argparse.Namespace(vae_ch=CFG['vae_ch'])),
                           ('model', vae_sd)])
    torch.save(wrapped, os.path.join(args.out, 'vae_tiny.pth'))

    gs = torch.Generator().manual_seed(args.seed + 1)
    tensors = OrderedDict()
    for prefix, sd in (('var.', var_sd), ('vae.', vae_sd)):
        for k, t in sd.items():
            name = kept_name(prefix, k)
            if name is not None:
                tensors[name] = describe(t, gs)
    manifest = OrderedDict([
        ('made_with', 'tools/make_test_pth.py --seed %d, torch %s' % (args.seed, torch.__version__)),
        ('var', 'var_tiny.pth'), ('vae', 'vae_tiny.pth'),
        ('config', CFG),
        ('dropped', {'var': [k for k in var_sd if kept_name('var.', k) is None],
                     'vae': [k for k in vae_sd if kept_name('vae.', k) is None]}),
        ('tensors', OrderedDict(sorted(tensors.items()))),
    ])
    # one line per tensor keeps the manifest small and diffable
    text = json.dumps(OrderedDict((k, v) for k, v in manifest.items() if k != 'tensors'), indent=1)
    lines = ['  %s: %s' % (json.dumps(k), json.dumps(v)) for k, v in manifest['tensors'].items()]
    text = text[:-2] + ',\n "tensors": {\n' + ',\n'.join(lines) + '\n }\n}\n'
    json.loads(text)
    with open(os.path.join(args.out, 'expected.json'), 'w') as f:
        f.write(text)
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in ('var_tiny.pth', 'vae_tiny.pth'))
    print('wrote %s: %d output tensors, %d + %d state-dict entries, %.0f KB of .pth'
          % (args.out, len(tensors), len(var_sd), len(vae_sd), total / 1024))


if __name__ == '__main__':
    main()
