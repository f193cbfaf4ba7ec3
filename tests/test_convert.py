#!/usr/bin/env python3
"""tools/convert_var.py on the tiny .pth pair in tests/fixtures/pth (python3 + numpy; no torch).

Converts the pair to a temporary directory and checks the result against expected.json, which
torch wrote when the pair was made (tests/fixtures/pth/README.md): header layout and metadata,
the inferred config, the exact set of tensor names, every tensor's shape, sum, sum of squares and
sampled values; BF16 output (round-to-nearest-even, half the size); and the errors (exit status 2
with a message naming the problem) for a wrong --depth, a config that disagrees with a tensor, and
a truncated storage. The converter runs with torch made unimportable, to prove it needs none.
With VARSERVE_BIN set to a binary that has an `inspect` command, the output must also load there.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'convert_var.py')
FIX = os.path.join(ROOT, 'tests', 'fixtures', 'pth')
VAR = os.path.join(FIX, 'var_tiny.pth')
VAE = os.path.join(FIX, 'vae_tiny.pth')
with open(os.path.join(FIX, 'expected.json')) as _f:
    MANIFEST = json.load(_f)
PN = ','.join(str(p) for p in MANIFEST['config']['patch_nums'])

passed, failed = 0, 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print('FAIL: ' + what)
    return cond


# runs the converter with `import torch` failing
_NO_TORCH = ("import sys, runpy; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


def convert(*args):
    r = subprocess.run([sys.executable, '-c', _NO_TORCH, TOOL] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    return r.returncode, r.stdout, r.stderr


def read_safetensors(path):
    with open(path, 'rb') as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], 'little')
    raw = blob[8:8 + n]
    header = json.loads(raw.decode('utf-8'))
    meta = header.pop('__metadata__')
    tensors = {}
    for name, h in header.items():
        a, b = h['data_offsets']
        dt = {'F32': '<f4', 'BF16': '<u2'}[h['dtype']]
        tensors[name] = np.frombuffer(blob[8 + n + a:8 + n + b], dtype=dt).reshape(h['shape'])
    return n, raw, meta, header, tensors, len(blob)


def bf16_to_f32(bits):
    return (bits.astype('<u4') << 16).view('<f4')


def test_f32(tmp):
    out = os.path.join(tmp, 'tiny.safetensors')
    rc, so, se = convert('--var', VAR, '--vae', VAE, '--out', out, '--depth', '2', '--patch-nums', PN)
    if not check(rc == 0, 'f32 conversion exits 0 (rc %d): %s' % (rc, se.strip())):
        return None
    n, raw, meta, header, tensors, size = read_safetensors(out)
    check(n % 8 == 0, 'header length %d is a multiple of 8' % n)
    check(raw.rstrip(b' ').endswith(b'}'), 'header is JSON padded with spaces')
    check(meta.get('format') == 'varserve-model', 'metadata format (%r)' % meta.get('format'))
    check(meta.get('version') == '1', 'metadata version (%r)' % meta.get('version'))
    check(all(isinstance(v, str) for v in meta.values()), 'metadata values are strings')
    cfg = json.loads(meta['config'])
    exp = MANIFEST['config']
    check(list(cfg) == list(exp), 'config fields %s == %s' % (list(cfg), list(exp)))
    for k, v in exp.items():
        check(cfg.get(k) == v and type(cfg.get(k)) is type(v),
              'config %s = %r (expected %r)' % (k, cfg.get(k), v))
    names = set(header)
    want = set(MANIFEST['tensors'])
    check(names == want, 'tensor names: missing %s, unexpected %s'
          % (sorted(want - names), sorted(names - want)))
    # tensors in sorted name order, back to back, filling the file
    pos = 0
    for name in sorted(header):
        a, b = header[name]['data_offsets']
        check(a == pos, '%s starts at %d (expected %d: sorted, contiguous)' % (name, a, pos))
        pos = b
    check(8 + n + pos == size, 'data ends at the end of the file (%d vs %d)' % (8 + n + pos, size))
    for name, e in MANIFEST['tensors'].items():
        if name not in tensors:
            continue
        h, x = header[name], tensors[name]
        check(h['dtype'] == 'F32', '%s dtype F32 (got %s)' % (name, h['dtype']))
        check(list(x.shape) == e['shape'], '%s shape %s (expected %s)' % (name, list(x.shape), e['shape']))
        x64 = x.astype(np.float64).reshape(-1)
        tol = 1e-6 * max(e['sumabs'], 1e-30)
        check(abs(x64.sum() - e['sum']) <= tol, '%s sum %r (expected %r)' % (name, x64.sum(), e['sum']))
        check(abs((x64 * x64).sum() - e['sumsq']) <= 1e-6 * e['sumsq'] + 1e-30,
              '%s sumsq %r (expected %r)' % (name, (x64 * x64).sum(), e['sumsq']))
        for i, v in e['samples'].items():
            check(x64[int(i)] == np.float32(v), '%s[%s] = %r (expected %r)' % (name, i, x64[int(i)], v))
    return out, tensors, size


def test_bf16(tmp, f32):
    f32_path, t32, size32 = f32
    out = os.path.join(tmp, 'tiny-bf16.safetensors')
    rc, so, se = convert('--var', VAR, '--vae', VAE, '--out', out, '--patch-nums', PN, '--dtype', 'bf16')
    if not check(rc == 0, 'bf16 conversion exits 0 (rc %d): %s' % (rc, se.strip())):
        return
    n, raw, meta, header, tensors, size = read_safetensors(out)
    check(json.loads(meta['config']) == MANIFEST['config'], 'bf16 config equals the f32 config')
    check(set(header) == set(t32), 'bf16 has the same tensor names')
    data16 = sum(h['data_offsets'][1] - h['data_offsets'][0] for h in header.values())
    data32 = sum(x.nbytes for x in t32.values())
    check(data16 * 2 == data32, 'bf16 data is exactly half the f32 data (%d vs %d)' % (data16, data32))
    check(0.45 < size / size32 < 0.55, 'bf16 file is about half the size (%d vs %d)' % (size, size32))
    for name, h in header.items():
        check(h['dtype'] == 'BF16', '%s dtype BF16 (got %s)' % (name, h['dtype']))
        ref = t32[name].reshape(-1)
        got = bf16_to_f32(tensors[name].reshape(-1))
        rel = np.abs(got.astype(np.float64) - ref) / np.maximum(np.abs(ref.astype(np.float64)), 1e-30)
        check(list(tensors[name].shape) == list(t32[name].shape), '%s bf16 shape' % name)
        check(bool(np.all(rel <= 1e-2)), '%s bf16 within 1e-2 of f32 (worst %g)' % (name, rel.max()))
        # round to nearest, ties to even: compare with both bf16 neighbours of each f32 value
        bits = ref.view('<u4')
        lo = (bits & np.uint32(0xFFFF0000)).view('<f4').astype(np.float64)
        hi = ((bits & np.uint32(0xFFFF0000)) + np.uint32(0x10000)).view('<f4').astype(np.float64)
        r64 = ref.astype(np.float64)
        dlo, dhi = np.abs(r64 - lo), np.abs(r64 - hi)
        even_lo = ((bits >> np.uint32(16)) & np.uint32(1)) == 0
        want = np.where((dlo < dhi) | ((dlo == dhi) & even_lo), lo, hi)
        check(bool(np.all(got.astype(np.float64) == want)),
              '%s bf16 is round-to-nearest-even of f32 (%d differ)'
              % (name, int(np.sum(got.astype(np.float64) != want))))


def expect_error(tmp, label, args, needles):
    out = os.path.join(tmp, 'bad-%s.safetensors' % label)
    rc, so, se = convert(*(list(args) + ['--out', out]))
    check(rc == 2, '%s: exit status 2 (got %d; stderr %r)' % (label, rc, se.strip()))
    for s in needles:
        check(s in se, '%s: message mentions %r (got %r)' % (label, s, se.strip()))
    check(not os.path.exists(out) and not os.path.exists(out + '.tmp'),
          '%s: no output file left behind' % label)


def test_errors(tmp):
    expect_error(tmp, 'depth', ['--var', VAR, '--vae', VAE, '--patch-nums', PN, '--depth', '3'],
                 ['--depth 3', '2 transformer blocks'])
    expect_error(tmp, 'classes', ['--var', VAR, '--vae', VAE, '--patch-nums', PN, '--num-classes', '5'],
                 ['var.class_emb.weight', '(5, 32)', '(6, 32)'])
    expect_error(tmp, 'patch-nums', ['--var', VAR, '--vae', VAE, '--patch-nums', '1,2,3'],
                 ['var.pos_1LC', '(1, 21, 32)', '(1, 14, 32)'])
    expect_error(tmp, 'swapped', ['--var', VAE, '--vae', VAR, '--patch-nums', PN],
                 ['class_emb.weight'])
    # a damaged copy: the largest storage of the VAE archive cut in half
    bad = os.path.join(tmp, 'vae_truncated.pth')
    with zipfile.ZipFile(VAE) as zin, zipfile.ZipFile(bad, 'w', zipfile.ZIP_STORED) as zout:
        infos = zin.infolist()
        victim = max((i for i in infos if '/data/' in i.filename), key=lambda i: i.file_size)
        for i in infos:
            data = zin.read(i.filename)
            zout.writestr(i.filename, data[:len(data) // 2] if i is victim else data)
    expect_error(tmp, 'truncated', ['--var', VAR, '--vae', bad, '--patch-nums', PN],
                 ['truncated', victim.filename])
    expect_error(tmp, 'not-zip', ['--var', os.path.join(FIX, 'expected.json'), '--vae', VAE],
                 ['not a zip archive'])


def test_class_names(tmp):
    names = os.path.join(tmp, 'names.txt')
    with open(names, 'w') as f:
        f.write('zero\none\ntwo\nthree\n')
    out = os.path.join(tmp, 'named.safetensors')
    rc, so, se = convert('--var', VAR, '--vae', VAE, '--out', out, '--patch-nums', PN,
                         '--class-names', names)
    if check(rc == 0, 'conversion with --class-names exits 0 (%s)' % se.strip()):
        cfg = json.loads(read_safetensors(out)[2]['config'])
        check(cfg.get('class_names') == ['zero', 'one', 'two', 'three'],
              'class_names stored (%r)' % cfg.get('class_names'))
    with open(names, 'w') as f:
        f.write('zero\none\n')
    expect_error(tmp, 'names', ['--var', VAR, '--vae', VAE, '--patch-nums', PN, '--class-names', names],
                 ['2 names', '4 classes'])


def test_varserve_inspect(path):
    exe = os.environ.get('VARSERVE_BIN')
    if not exe or not os.path.isfile(exe) or not os.access(exe, os.X_OK):
        return
    try:
        h = subprocess.run([exe, '--help'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return
    if 'inspect' not in h.stdout:
        return
    r = subprocess.run([exe, 'inspect', path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=120)
    check(r.returncode == 0, '%s inspect %s exits 0 (rc %d): %s'
          % (exe, path, r.returncode, r.stdout.strip()[-2000:]))


def main():
    tmp = tempfile.mkdtemp(prefix='test_convert.')
    try:
        f32 = test_f32(tmp)
        if f32:
            test_bf16(tmp, f32)
            test_varserve_inspect(f32[0])
        test_errors(tmp)
        test_class_names(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print('test_convert: %d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
