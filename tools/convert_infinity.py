#!/usr/bin/env python3
"""tools/convert_infinity.py — a released Infinity checkpoint pair (the transformer, e.g.
infinity_2b_reg.pth, and its BSQ VAE, e.g. infinity_vae_d32reg.pth) to the Infinity file varserve
reads (docs/MODEL_FORMAT.md, "Other families' files"), without torch.

    python3 tools/convert_infinity.py --model infinity_2b_reg.pth --vae infinity_vae_d32reg.pth \\
        --out infinity-2b.safetensors [--pn 1M|0.60M|0.25M|0.06M] [--h-div-w 1.0] [--dtype f32|bf16]

The transformer's state dict is kept whole as `infinity.<name>`, without its always-zero
`zero_k_bias` buffers. Of the VAE's ('vae' in its checkpoint dict, as the reference loads it), only
the decoder is kept, as `vae.decoder.<name>`. The settings are inferred from the tensor shapes:
depth and block chunks, width, heads, FFN, text width and length, pool heads and bits a token, and
the decoder's channels and levels. The structural flags of the released 2B model are written, each
checked against the tensors that imply it. The scale schedule is the reference's
(infinity/utils/dynamic_resolution.py) for --pn at the aspect ratio nearest --h-div-w; its 1M
grids are the ones runtime/infinity.c's ROPE_GRID holds for RoPE. The file gets a data_crc32.
Bad input exits 2 with one line that says what is wrong. Checked on made-up checkpoints of the
reference's names (tests/test_convert_infinity.py); not yet run on the released files."""
import argparse
import collections
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_var import ConvertError, PthArchive, _state_dict_in, write_safetensors  # noqa: E402

# infinity/utils/dynamic_resolution.py: ratio2hws, and the schedule lengths of its pn names
RATIO2HWS = {
    1.000: [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40),
            (48, 48), (64, 64)],
    1.250: [(1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36),
            (55, 44), (70, 56)],
    1.333: [(1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36),
            (60, 45), (72, 54)],
    1.500: [(1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32),
            (63, 42), (78, 52)],
    1.750: [(1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32),
            (70, 40), (84, 48)],
    2.000: [(1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30),
            (74, 37), (90, 45)],
    2.500: [(1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26),
            (80, 32), (100, 40)],
    3.000: [(1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24),
            (90, 30), (111, 37)],
}
PN_LEN = {'0.06M': 7, '0.25M': 10, '0.60M': 12, '1M': 13}
FLAGS = collections.OrderedDict([
    ('shared_aln', True), ('head_aln', True), ('cos_attn', True), ('swiglu', False), ('use_bit_label', 1),
    ('rope2d_each_sa_layer', 1), ('rope2d_normalized_by_hw', 2), ('add_lvl_embeding_only_first_block', 1),
    ('cross_attn_layer_scale', -1), ('nm0', False), ('apply_spatial_patchify', 0)])


def schedule(h_div_w, pn):
    """(the ratio template, [(1, h, w)] of pn), as dynamic_resolution_h_w gives it for images"""
    full = {}
    for r, hws in RATIO2HWS.items():
        full[r] = hws
        if r != 1.0:
            full[int(1 / r * 1000) / 1000] = [(w, h) for h, w in hws]
    t = min(full, key=lambda r: abs(r - h_div_w))
    return t, [(1, h, w) for h, w in full[t][:PN_LEN[pn]]]


def indices(sd, pattern, what, path):
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for m in (rx.match(k) for k in sd) if m}
    if not idx or idx != set(range(len(idx))):
        raise ConvertError('%s: %s indices %s are not 0..n-1' % (path, what, sorted(idx)))
    return len(idx)


def shape(sd, key, path):
    if key not in sd:
        raise ConvertError('%s: tensor %s is missing: not an Infinity checkpoint of the 2B structure' % (path, key))
    return sd[key].shape


def infer(sd, vsd, a):
    mp, vp = a.model, a.vae
    chunks = indices(sd, r'block_chunks\.(\d+)\.', 'block_chunks', mp)
    per = indices(sd, r'block_chunks\.0\.module\.(\d+)\.', 'block_chunks.0.module', mp)
    C = shape(sd, 'pos_start', mp)[-1]
    heads = shape(sd, 'block_chunks.0.module.0.sa.scale_mul_1H11', mp)[1]
    d = shape(sd, 'word_embed.weight', mp)[1]
    if shape(sd, 'head.weight', mp)[0] != 2 * d:
        raise ConvertError('%s: head.weight gives %d logits for %d bits a token; bit labels need 2 a bit'
                           % (mp, shape(sd, 'head.weight', mp)[0], d))
    for key, why in (('shared_ada_lin.1.weight', 'shared_aln'), ('head_nm.ada_lin.1.weight', 'head_aln'),
                     ('block_chunks.0.module.0.ffn.fc1.weight', 'a GELU FFN')):
        shape(sd, key, mp)
    for bad, why in (('block_chunks.0.module.0.ffn.fcg.weight', 'swiglu'),
                     ('block_chunks.0.module.0.ca_gamma', 'a cross-attention layer scale'),
                     ('norm0_ve.weight', 'nm0')):
        if bad in sd:
            raise ConvertError('%s: has %s (%s): only the 2B structure is supported' % (mp, bad, why))
    levels = indices(vsd, r'decoder\.up\.(\d+)\.', 'decoder.up', vp)
    out_ch = [shape(vsd, 'decoder.up.%d.block.0.conv2.conv.weight' % i, vp)[0] for i in range(levels)]
    base = out_ch[0]
    if any(c % base for c in out_ch):
        raise ConvertError('%s: the decoder levels\' channels %s are not multiples of level 0\'s' % (vp, out_ch))
    if shape(vsd, 'decoder.conv_in.conv.weight', vp)[1] != d:
        raise ConvertError('%s: the decoder reads %d channels but the model writes %d bits a token'
                           % (vp, shape(vsd, 'decoder.conv_in.conv.weight', vp)[1], d))
    t, sched = schedule(a.h_div_w, a.pn)
    cfg = collections.OrderedDict([
        ('arch', 'infinity'), ('reference', 'FoundationVision/Infinity'), ('depth', chunks * per),
        ('embed_dim', C), ('num_heads', heads), ('head_dim', C // heads),
        ('mlp_hidden', shape(sd, 'block_chunks.0.module.0.ffn.fc1.weight', mp)[0]), ('block_chunks', chunks),
        ('text_channels', shape(sd, 'text_norm.weight', mp)[0]), ('text_maxlen', shape(sd, 'cfg_uncond', mp)[0]),
        ('text_pool_heads', shape(sd, 'text_proj_for_sos.ca.mat_q', mp)[1]), ('codebook_dim', d), ('V', 2 * d)])
    cfg.update(FLAGS)
    cfg.update([('pn', a.pn), ('h_div_w', t), ('scale_schedule', [list(s) for s in sched]),
                ('vae_base_ch', base), ('vae_ch_mult', [c // base for c in out_ch]),
                ('vae_num_res_blocks', indices(vsd, r'decoder\.up\.0\.block\.(\d+)\.', 'decoder.up.0.block', vp) - 1),
                ('vae_patch_size', 2 ** (levels - 1))])
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', required=True, help="the transformer's .pth (a state dict)")
    ap.add_argument('--vae', required=True, help="the BSQ VAE's .pth ({'vae': state dict})")
    ap.add_argument('--out', required=True)
    ap.add_argument('--pn', choices=sorted(PN_LEN), default='1M', help='the resolution (default 1M: 1024x1024)')
    ap.add_argument('--h-div-w', type=float, default=1.0, help='height / width (default 1.0)')
    ap.add_argument('--dtype', choices=['f32', 'bf16'], default='f32')
    a = ap.parse_args(argv)
    try:
        if not (0.3 <= a.h_div_w <= 3.5):
            raise ConvertError('--h-div-w %g is outside the reference\'s ratios (1/3 .. 3)' % a.h_div_w)
        ma, va = PthArchive(a.model), PthArchive(a.vae)
        sd, _ = _state_dict_in(ma.obj, 'pos_start', a.model)
        vsd, _ = _state_dict_in(va.obj, 'decoder.conv_in.conv.weight', a.vae)
        cfg = infer(sd, vsd, a)
        entries = [('infinity.' + k, t.shape, (lambda t=t, k=k: ma.read(t, k)))
                   for k, t in sd.items() if not k.endswith('zero_k_bias')]
        entries += [('vae.' + k, t.shape, (lambda t=t, k=k: va.read(t, k)))
                    for k, t in vsd.items() if k.startswith('decoder.')]
        size = write_safetensors(a.out, {'config': json.dumps(cfg)}, entries, a.dtype, tool='convert_infinity')
    except (ConvertError, OSError, ValueError) as e:
        print('convert_infinity: %s' % e, file=sys.stderr)
        return 2
    print('convert_infinity: wrote %s: %d tensors, %.1f MB (depth %d, width %d, %s at h/w %g)'
          % (a.out, len(entries), size / 1e6, cfg['depth'], cfg['embed_dim'], a.pn, cfg['h_div_w']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
