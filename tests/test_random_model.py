#!/usr/bin/env python3
"""tools/make_random_model.py: random-weight models in the varserve format (python3 + numpy).

Checks: at the tiny fixture's config the tool writes exactly the fixture's tensor names, shapes
and config (so the reference-shaped models are what tools/convert_var.py would write); the
reference configs d16/d20/d24/d30 have VAR's transformer sizes (310M, 600M, 1.0B, 2.0B); a small
model in F32 and in BF16 loads in `$VARSERVE_BIN inspect` (exit 0, the tool's parameter count,
the stored dtype) and `$VARSERVE_BIN generate --backend cpu` writes PNGs of the configured size;
BF16 is half the data; the same seed gives the same bytes, another seed others; bad shapes exit 2.

VARSERVE_BIN defaults to build/varserve. Prints 'N passed, M failed'; exit status 1 on failure.
"""

import json
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'make_random_model.py')
TINY = os.path.join(ROOT, 'tests', 'fixtures', 'tiny', 'model.safetensors')
BIN = os.environ.get('VARSERVE_BIN') or os.path.join(ROOT, 'build', 'varserve')

# small enough for the CPU backend in a second or two: 64x64 images (3 scales up to 4x4, 5 levels)
SMALL = ['--depth', '2', '--embed-dim', '64', '--heads', '2', '--num-classes', '10',
         '--vocab', '256', '--z-channels', '16', '--patch-nums', '1,2,4', '--vae-ch', '32',
         '--num-res-blocks', '1', '--share-quant-resi', '2']
SMALL_SIDE = 4 * 2 ** 4

passed, failed = 0, 0


def check(cond, what, detail=''):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print('FAIL: %s%s' % (what, ('\n  ' + str(detail)[-2000:]) if detail else ''))
    return cond


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    return r.returncode, r.stdout, r.stderr


def tool(*args):
    return run([sys.executable, TOOL] + list(args))


def field(out, key):
    """The integer after 'key' on the line that starts with it."""
    for line in out.splitlines():
        if line.strip().startswith(key):
            return int(line.split(':', 1)[1].split()[0])
    return None


def header(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def png_size(path):
    with open(path, 'rb') as f:
        data = f.read(26)
    if data[:8] != b'\x89PNG\r\n\x1a\n':
        return None
    return struct.unpack('>II', data[16:24])


with tempfile.TemporaryDirectory() as d:
    # 1. the tiny fixture's config: same names, shapes, config and parameter count
    tiny_hdr, _ = header(TINY)
    tcfg = json.loads(tiny_hdr['__metadata__']['config'])
    out = os.path.join(d, 'as_tiny.safetensors')
    rc, so, se = tool('--depth', str(tcfg['depth']), '--embed-dim', str(tcfg['embed_dim']),
                      '--heads', str(tcfg['num_heads']), '--num-classes', str(tcfg['num_classes']),
                      '--vae-ch', str(tcfg['vae_ch']), '--dtype', 'f32', '--out', out)
    if check(rc == 0, 'tool at the tiny config exits 0', se):
        h, _ = header(out)
        shapes = {k: v['shape'] for k, v in h.items() if k != '__metadata__'}
        want = {k: v['shape'] for k, v in tiny_hdr.items() if k != '__metadata__'}
        check(sorted(shapes) == sorted(want), 'tensor names equal the tiny fixture\'s',
              set(shapes) ^ set(want))
        check(shapes == want, 'tensor shapes equal the tiny fixture\'s')
        check(json.loads(h['__metadata__']['config']) == tcfg, 'config equals the tiny fixture\'s',
              h['__metadata__']['config'])
        check(h['__metadata__']['format'] == 'varserve-model' and h['__metadata__']['version'] == '1',
              'format and version metadata')
        check(field(so, 'parameters') == 4051463, 'parameter count of the tiny shape', so)

    # 2. reference configs: VAR's transformer sizes, without writing gigabytes
    for depth, lo, hi in ((16, 309e6, 311e6), (20, 600e6, 602e6), (24, 1.03e9, 1.04e9),
                          (30, 2.00e9, 2.02e9)):
        rc, so, se = tool('--depth', str(depth), '--dry-run')
        cfg = json.loads(so.split('config: ', 1)[1].splitlines()[0]) if 'config: ' in so else {}
        check(rc == 0 and cfg.get('embed_dim') == 64 * depth and cfg.get('num_heads') == depth and
              cfg.get('vae_ch') == 160 and cfg.get('num_classes') == 1000 and
              cfg.get('vocab_size') == 4096, 'd%d reference config' % depth, so + se)
        n = field(so, 'transformer parameters')
        check(n is not None and lo <= n <= hi, 'd%d transformer has %s parameters (VAR: %.2g)'
              % (depth, n, (lo + hi) / 2), so)

    # 3. small models in F32 and BF16: inspect and generate
    sizes = {}
    for dtype in ('f32', 'bf16'):
        path = os.path.join(d, 'small-%s.safetensors' % dtype)
        rc, so, se = tool(*SMALL, '--dtype', dtype, '--seed', '7', '--out', path)
        if not check(rc == 0, '%s: tool exits 0' % dtype, se):
            continue
        params = field(so, 'parameters')
        h, data_start = header(path)
        sizes[dtype] = os.path.getsize(path) - data_start
        check(all(v['dtype'] == dtype.upper() for k, v in h.items() if k != '__metadata__'),
              '%s: every tensor stored as %s' % (dtype, dtype.upper()))
        rc, io, ie = run([BIN, 'inspect', path])
        check(rc == 0, '%s: varserve inspect exits 0' % dtype, ie)
        check(params is not None and field(io, 'parameters') == params,
              '%s: inspect counts the tool\'s %s parameters' % (dtype, params), io)
        check(('stored as ' + dtype.upper()) in io, '%s: inspect reports the dtype' % dtype, io)
        check(('%dx%d' % (SMALL_SIDE, SMALL_SIDE)) in io, '%s: inspect reports %dx%d images'
              % (dtype, SMALL_SIDE, SMALL_SIDE), io)
        prefix = os.path.join(d, 'img-' + dtype)
        rc, go, ge = run([BIN, 'generate', '--model', path, '--labels', '3,9', '--seed', '1',
                          '--backend', 'cpu', '--out', prefix])
        check(rc == 0, '%s: generate --backend cpu exits 0' % dtype, ge)
        for i in range(2):
            check(png_size('%s-%d.png' % (prefix, i)) == (SMALL_SIDE, SMALL_SIDE),
                  '%s: image %d is a %dx%d PNG' % (dtype, i, SMALL_SIDE, SMALL_SIDE))
    if len(sizes) == 2:
        check(sizes['bf16'] * 2 == sizes['f32'], 'BF16 data is half the F32 data', sizes)

    # 4. seeds: reproducible, and a different seed gives different weights
    a, b, c = (os.path.join(d, n) for n in ('a.st', 'b.st', 'c.st'))
    r1 = tool(*SMALL, '--seed', '5', '--out', a)[0]
    r2 = tool(*SMALL, '--seed', '5', '--out', b)[0]
    r3 = tool(*SMALL, '--seed', '6', '--out', c)[0]
    if check(r1 == r2 == r3 == 0, 'three writes exit 0'):
        blob = [open(p, 'rb').read() for p in (a, b, c)]
        check(blob[0] == blob[1], 'the same seed writes the same bytes')
        check(blob[0] != blob[2], 'another seed writes other weights')

    # 4b. both Phi layouts the tool writes load: shared (K 1: PhiShared's single `qresi`) and
    # partially shared (K 2: `qresi_ls.<k>`)
    for K in (1, 2):
        path = os.path.join(d, 'phi%d.st' % K)
        rc, so, se = tool(*SMALL, '--share-quant-resi', str(K), '--out', path)
        names = [k for k in header(path)[0] if 'quant_resi' in k] if rc == 0 else []
        want = 'qresi.' if K == 1 else 'qresi_ls.'
        check(rc == 0 and names and all(want in k for k in names),
              'share_quant_resi %d: the Phi tensors are named %s…' % (K, want), (rc, se, names))
        rc, io, ie = run([BIN, 'inspect', path])
        check(rc == 0, 'share_quant_resi %d: varserve inspect loads it' % K, ie)

    # 5. bad shapes and missing --out: exit 2 with a message naming the problem
    for args, word in ((['--depth', '2', '--embed-dim', '100', '--heads', '3'], 'num_heads'),
                       (['--depth', '2', '--embed-dim', '64', '--heads', '2', '--vae-ch', '40'], '32'),
                       (['--depth', '2', '--patch-nums', '1,4,2'], 'increasing'),
                       (['--depth', '2'], '--out')):
        rc, so, se = tool(*args, *([] if word == '--out' else ['--out', os.path.join(d, 'bad.st')]))
        check(rc == 2 and word in se, 'bad %s: exit 2 naming %s' % (args, word), 'rc %d: %s' % (rc, se))
    check(not os.path.exists(os.path.join(d, 'bad.st')), 'nothing written for bad shapes')

print('%d passed, %d failed' % (passed, failed))
sys.exit(1 if failed else 0)
