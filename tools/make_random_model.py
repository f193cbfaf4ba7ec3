#!/usr/bin/env python3
"""Write a varserve model with random weights in the reference shapes of VAR-d16/d20/d24/d30.

    tools/make_random_model.py --depth 16 --out var-d16-random.safetensors [--dtype f32|bf16]
                               [--seed S] [shape overrides, e.g. for a small test model]

The layout is docs/MODEL_FORMAT.md, the tensor names and shapes exactly those
tools/convert_var.py writes for a released checkpoint (its expected_shapes() is reused), so the
engine sees the same model as a converted var_d<N>.pth + vae_ch160v4096z32.pth, only with
random weights. Defaults are the reference config for depth d: embed_dim 64·d, d heads,
mlp_ratio 4, 1000 classes, patch_nums 1,2,3,4,5,6,8,10,13,16 (256px), vocab 4096, z_channels 32,
vae_ch 160, ch_mult 1,1,2,2,4, num_res_blocks 2, share_quant_resi 4, attn_l2_norm, no shared AdaLN.

The images are noise; the point is the compute and memory of the real shapes (benchmarks,
capacity), with activations that stay finite at every depth: matrices are N(0, 1/fan_in) so a
layer keeps its input's scale, the AdaLN projections are small (gates and modulations of about
0.1, so 2·depth residual updates grow the stream by about sqrt(2·depth)·0.1), positions are
N(0, 0.02²) as in VAR's init, and scale_mul starts at ln 4 as in VAR.

Design: the header is computed from the shapes alone, then each tensor is drawn, converted and
written in turn (its own generator seeded from (seed, tensor index), so a tensor does not depend
on the others), so memory stays near the largest single tensor (fc1 of d30: 59 MB as F32) while
d30 writes 4.1 GB (BF16) or 8.3 GB (F32). python3 + numpy; no torch.

Prints `parameters: N` (the count `varserve inspect` reports) and `transformer parameters: N`
(VAR's own count: 310M for d16, 600M d20, 1.0B d24, 2.0B d30) after writing; --dry-run prints
them without writing anything.
"""

import argparse
import collections
import json
import os
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_var import expected_shapes, f32_to_bf16_bits, patch_crc32  # noqa: E402  (numpy only)

PATCH_NUMS_256 = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]


def reference_config(args):
    d = args.depth
    cfg = collections.OrderedDict()
    cfg['arch'] = 'var'
    cfg['depth'] = d
    cfg['embed_dim'] = args.embed_dim if args.embed_dim is not None else 64 * d
    cfg['num_heads'] = args.heads if args.heads is not None else d
    cfg['mlp_ratio'] = args.mlp_ratio
    cfg['norm_eps'] = 1e-6
    cfg['shared_aln'] = bool(args.shared_aln)
    cfg['attn_l2_norm'] = not args.no_attn_l2_norm
    cfg['num_classes'] = args.num_classes
    cfg['patch_nums'] = list(args.patch_nums)
    cfg['vocab_size'] = args.vocab
    cfg['z_channels'] = args.z_channels
    cfg['vae_ch'] = args.vae_ch
    cfg['vae_ch_mult'] = list(args.vae_ch_mult)
    cfg['vae_num_res_blocks'] = args.num_res_blocks
    cfg['quant_resi'] = 0.5
    cfg['share_quant_resi'] = args.share_quant_resi
    return cfg


def check_config(cfg):
    C, H = cfg['embed_dim'], cfg['num_heads']
    if cfg['depth'] < 1:
        return '--depth must be >= 1 (got %d)' % cfg['depth']
    if C < 1 or H < 1 or C % H:
        return 'embed_dim %d must be a positive multiple of num_heads %d (set --embed-dim/--heads)' % (C, H)
    if round(C * cfg['mlp_ratio']) < 1:
        return '--mlp-ratio %g gives an empty FFN at width %d' % (cfg['mlp_ratio'], C)
    for k in ('num_classes', 'vocab_size', 'z_channels', 'vae_ch', 'share_quant_resi'):
        if cfg[k] < 1:
            return '%s must be >= 1 (got %d)' % (k, cfg[k])
    if any((cfg['vae_ch'] * m) % 32 for m in cfg['vae_ch_mult']):
        return ('vae_ch %d x ch_mult %s: every decoder width must be a multiple of 32 (GroupNorm '
                'with 32 groups)' % (cfg['vae_ch'], cfg['vae_ch_mult']))
    if cfg['vae_num_res_blocks'] < 0:
        return '--num-res-blocks must be >= 0'
    pn = cfg['patch_nums']
    if any(b <= a for a, b in zip(pn, pn[1:])):
        return '--patch-nums must be increasing (got %s)' % pn
    return None


def init_std(name, shape, cfg):
    """Standard deviation (and mean) of a tensor's entries; see the module docstring."""
    C = cfg['embed_dim']
    base = name.split('.')[-1]
    if name.endswith('scale_mul_1H11'):
        return np.log(4.0), 0.05
    if 'ada_lin.1.weight' in name:
        return 0.0, 0.15 / np.sqrt(C)
    if 'ada_lin.1.bias' in name or name.endswith('ada_gss'):
        return 0.0, 0.05
    if name.endswith(('pos_start', 'pos_1LC', 'lvl_embed.weight')):
        return 0.0, 0.02
    if name.endswith('class_emb.weight'):
        return 0.0, 1.0
    if name.endswith('quantize.embedding.weight'):
        return 0.0, 1.0
    if '.norm' in name and base == 'weight' and len(shape) == 1:  # GroupNorm gamma
        return 1.0, 0.05
    if base == 'bias' or name.endswith(('q_bias', 'v_bias')):
        return 0.0, 0.02
    if base == 'weight' and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return 0.0, 1.0 / np.sqrt(fan_in)
    return 0.0, 0.02


def draw(name, shape, index, cfg, seed):
    mean, std = init_std(name, shape, cfg)
    rng = np.random.default_rng([seed, index])
    a = rng.standard_normal(size=tuple(shape), dtype=np.float32)
    a *= np.float32(std)
    if mean:
        a += np.float32(mean)
    return a


def write_model(path, cfg, dtype, seed):
    """Writes the file; returns (bytes written, tensors, parameters)."""
    shapes = expected_shapes(cfg)
    names = sorted(shapes)
    st_dtype, item = ('BF16', 2) if dtype == 'bf16' else ('F32', 4)
    header = collections.OrderedDict()
    header['__metadata__'] = collections.OrderedDict(
        [('format', 'varserve-model'), ('version', '1'), ('config', json.dumps(cfg)),
         ('generator', 'tools/make_random_model.py'), ('seed', str(seed)),
         ('data_crc32', '00000000')])  # patched once the data is written
    pos, params = 0, 0
    for n in names:
        numel = int(np.prod(shapes[n]))
        params += numel
        header[n] = collections.OrderedDict(
            [('dtype', st_dtype), ('shape', list(shapes[n])), ('data_offsets', [pos, pos + numel * item])])
        pos += numel * item
    hjson = json.dumps(header, separators=(',', ':')).encode('utf-8')
    hjson += b' ' * (-len(hjson) % 8)
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb') as f:
            f.write(len(hjson).to_bytes(8, 'little'))
            f.write(hjson)
            crc = 0
            for i, n in enumerate(names):
                a = draw(n, shapes[n], i, cfg, seed)
                raw = (f32_to_bf16_bits(a) if dtype == 'bf16' else a).tobytes(order='C')
                crc = zlib.crc32(raw, crc)
                f.write(raw)
                del a, raw
            patch_crc32(f, hjson, crc)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return 8 + len(hjson) + pos, len(names), params


def _int_list(s):
    try:
        v = [int(x) for x in s.replace(' ', '').split(',') if x]
    except ValueError:
        raise argparse.ArgumentTypeError('expected comma-separated integers, got %r' % s)
    if not v or any(x <= 0 for x in v):
        raise argparse.ArgumentTypeError('expected positive integers, got %r' % s)
    return v


def main(argv=None):
    p = argparse.ArgumentParser(
        description='Write a varserve model with random weights in the VAR-d<depth> reference '
                    'shapes (d16, d20, d24, d30: width 64*depth, depth heads), for benchmarks.')
    p.add_argument('--depth', type=int, required=True, help='transformer blocks: 16, 20, 24, 30')
    p.add_argument('--out', help='output .safetensors path (required unless --dry-run)')
    p.add_argument('--dry-run', action='store_true',
                   help='print the config and parameter counts, write nothing')
    p.add_argument('--dtype', choices=('f32', 'bf16'), default='bf16',
                   help='stored dtype (default bf16: half the file; the engine loads either)')
    p.add_argument('--seed', type=int, default=0)
    g = p.add_argument_group('shape overrides (defaults: the reference config for --depth)')
    g.add_argument('--embed-dim', type=int, help='width C (default 64*depth)')
    g.add_argument('--heads', type=int, help='attention heads (default depth)')
    g.add_argument('--mlp-ratio', type=float, default=4.0)
    g.add_argument('--num-classes', type=int, default=1000)
    g.add_argument('--patch-nums', type=_int_list, default=PATCH_NUMS_256)
    g.add_argument('--vocab', type=int, default=4096)
    g.add_argument('--z-channels', type=int, default=32)
    g.add_argument('--vae-ch', type=int, default=160)
    g.add_argument('--vae-ch-mult', type=_int_list, default=[1, 1, 2, 2, 4])
    g.add_argument('--num-res-blocks', type=int, default=2)
    g.add_argument('--share-quant-resi', type=int, default=4)
    g.add_argument('--shared-aln', action='store_true')
    g.add_argument('--no-attn-l2-norm', action='store_true')
    p.add_argument('--quiet', action='store_true', help='print only the parameters line')
    args = p.parse_args(argv)
    cfg = reference_config(args)
    problem = check_config(cfg)
    if problem:
        print('make_random_model: error: ' + problem, file=sys.stderr)
        return 2
    if args.seed < 0 or args.seed >= 2 ** 63:
        print('make_random_model: error: --seed must be 0..2^63-1 (got %d)' % args.seed, file=sys.stderr)
        return 2
    shapes = expected_shapes(cfg)
    params_var = sum(int(np.prod(v)) for k, v in shapes.items() if k.startswith('var.'))
    if args.dry_run:
        print('config: ' + json.dumps(cfg))
        print('parameters: %d' % sum(int(np.prod(v)) for v in shapes.values()))
        print('transformer parameters: %d' % params_var)
        return 0
    if not args.out:
        print('make_random_model: error: --out PATH is required (or --dry-run)', file=sys.stderr)
        return 2
    try:
        size, n_tensors, params = write_model(args.out, cfg, args.dtype, args.seed)
    except OSError as e:
        print('make_random_model: error: %s: %s' % (args.out, e.strerror or e), file=sys.stderr)
        return 2
    if not args.quiet:
        side = cfg['patch_nums'][-1] * 2 ** (len(cfg['vae_ch_mult']) - 1)
        print('make_random_model: wrote %s (%.1f MB, %d tensors, %s, %dx%d images)'
              % (args.out, size / 1e6, n_tensors, args.dtype, side, side))
        print('config: ' + json.dumps(cfg))
    print('parameters: %d' % params)
    print('transformer parameters: %d' % params_var)
    return 0


if __name__ == '__main__':
    sys.exit(main())
