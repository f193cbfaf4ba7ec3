#!/usr/bin/env python3
"""Greedy generation against reference-computed fixtures of several shapes (python3 + numpy only).

For every tests/fixtures/<name>/ holding model.safetensors and a golden.safetensors with
`labels` and `tokens.{s}` (except `tiny`, which tests/check_parity.c covers in depth), run

    $VARSERVE_BIN generate --model model.safetensors --labels <labels> --cfg <cfg>
                           --top-k 1 --top-p 0 --backend cpu --out PREFIX --tokens-out FILE

and check every token of every scale exactly, and every PNG pixel within 1 of
round(255 * image) (the reference's image in [0, 1]). Prints 'N passed, M failed'; exits non-zero
on any failure.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, 'fixtures')
SKIP = {'tiny'}

_DT = {'F32': '<f4', 'F16': '<f2', 'I32': '<i4', 'I64': '<i8', 'U8': 'u1'}


def read_safetensors(path):
    with open(path, 'rb') as f:
        buf = f.read()
    (n,) = struct.unpack('<Q', buf[:8])
    header = json.loads(buf[8:8 + n])
    meta = header.pop('__metadata__', {}) or {}
    base = 8 + n
    out = {}
    for k, v in header.items():
        b, e = v['data_offsets']
        out[k] = np.frombuffer(buf[base + b:base + e], dtype=_DT[v['dtype']]).reshape(v['shape'])
    return out, meta


def read_png(path):
    """8-bit RGB/RGBA/grey PNG, non-interlaced, any filter -> uint8 (H, W, channels)."""
    with open(path, 'rb') as f:
        data = f.read()
    if data[:8] != b'\x89PNG\r\n\x1a\n':
        raise ValueError('%s: not a PNG' % path)
    pos, idat, ihdr = 8, b'', None
    while pos < len(data):
        (ln,) = struct.unpack('>I', data[pos:pos + 4])
        typ = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + ln]
        pos += 12 + ln
        if typ == b'IHDR':
            ihdr = struct.unpack('>IIBBBBB', body)
        elif typ == b'IDAT':
            idat += body
        elif typ == b'IEND':
            break
    w, h, depth, ctype, _, _, interlace = ihdr
    if depth != 8 or interlace != 0 or ctype not in (0, 2, 4, 6):
        raise ValueError('%s: unsupported PNG (depth %d, colour type %d, interlace %d)'
                         % (path, depth, ctype, interlace))
    ch = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    raw = zlib.decompress(idat)
    stride = w * ch
    img = np.zeros((h, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(h):
        ft = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, dtype=np.int32)
        if ft in (0, 2):
            cur = (line + (prev if ft == 2 else 0)) & 255
        else:
            for x in range(stride):
                a = cur[x - ch] if x >= ch else 0
                b = prev[x]
                c = prev[x - ch] if x >= ch else 0
                if ft == 1:
                    pr = a
                elif ft == 3:
                    pr = (a + b) >> 1
                elif ft == 4:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                else:
                    raise ValueError('%s: bad filter type %d' % (path, ft))
                cur[x] = (line[x] + pr) & 255
        img[y] = cur
        prev = cur
    return img.reshape(h, w, ch).astype(np.uint8)


def check_fixture(binary, name, d):
    """Returns a list of (check name, ok, message)."""
    golden, meta = read_safetensors(os.path.join(d, 'golden.safetensors'))
    labels = [int(x) for x in golden['labels']]
    cfg = float(meta['cfg'])
    n_scales = len([k for k in golden if k.startswith('tokens.')])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, 'img')
        tok_path = os.path.join(tmp, 'tokens.json')
        cmd = [binary, 'generate', '--model', os.path.join(d, 'model.safetensors'),
               '--labels', ','.join(map(str, labels)), '--cfg', repr(cfg), '--top-k', '1', '--top-p', '0',
               '--backend', 'cpu', '--out', prefix, '--tokens-out', tok_path]
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                               timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            return [('%s: generate' % name, False, str(e))]
        if p.returncode != 0:
            return [('%s: generate' % name, False, 'exit %d: %s' % (p.returncode, p.stderr.strip()[-2000:]))]
        results.append(('%s: generate' % name, True, ''))
        with open(tok_path) as f:
            got = json.load(f)['images']
        # tokens, scale by scale
        ok, msg = len(got) == len(labels), 'images: got %d, want %d' % (len(got), len(labels))
        if ok:
            for i, im in enumerate(got):
                if im.get('label') != labels[i]:
                    ok, msg = False, 'image %d: label %r, want %d' % (i, im.get('label'), labels[i])
                    break
                if len(im['tokens']) != n_scales:
                    ok, msg = False, 'image %d: %d scales, want %d' % (i, len(im['tokens']), n_scales)
                    break
                for s in range(n_scales):
                    want = golden['tokens.%d' % s][i]
                    have = np.asarray(im['tokens'][s], dtype=np.int64)
                    if have.shape != want.shape or not np.array_equal(have, want):
                        bad = np.nonzero(have != want)[0] if have.shape == want.shape else []
                        ok = False
                        msg = ('image %d: scale %d differs first (%d of %d tokens differ; first at %s: '
                               'got %s, want %s)' % (i, s, len(bad), want.size, bad[0] if len(bad) else '?',
                                                     have[bad[0]] if len(bad) else have.shape,
                                                     want[bad[0]] if len(bad) else want.shape))
                        break
                if not ok:
                    break
        results.append(('%s: tokens' % name, ok, msg))
        # pixels
        image = golden['image']
        for i in range(len(labels)):
            want = np.clip(np.round(image[i].astype(np.float64) * 255.0), 0, 255).astype(np.int32)
            want = want.transpose(1, 2, 0)
            path = '%s-%d.png' % (prefix, i)
            try:
                have = read_png(path).astype(np.int32)
            except (OSError, ValueError) as e:
                results.append(('%s: image %d' % (name, i), False, str(e)))
                continue
            if have.shape[2] == 4:
                have = have[:, :, :3]
            if have.shape != want.shape:
                results.append(('%s: image %d' % (name, i), False,
                                'shape %s, want %s' % (have.shape, want.shape)))
                continue
            diff = np.abs(have - want)
            results.append(('%s: image %d' % (name, i), int(diff.max()) <= 1,
                            'max |pixel diff| %d (%d pixels off by more than 1)'
                            % (int(diff.max()), int((diff > 1).sum()))))
    return results


def main():
    binary = os.environ.get('VARSERVE_BIN', os.path.join(HERE, '..', 'build', 'varserve'))
    passed = failed = 0
    names = sorted(os.listdir(FIXTURES)) if os.path.isdir(FIXTURES) else []
    for name in names:
        d = os.path.join(FIXTURES, name)
        if name in SKIP or not os.path.isfile(os.path.join(d, 'model.safetensors')) or \
                not os.path.isfile(os.path.join(d, 'golden.safetensors')):
            continue
        golden, _ = read_safetensors(os.path.join(d, 'golden.safetensors'))
        if 'labels' not in golden or 'tokens.0' not in golden:
            continue
        for check, ok, msg in check_fixture(binary, name, d):
            if ok:
                passed += 1
                print('ok   %s' % check)
            else:
                failed += 1
                print('FAIL %s: %s' % (check, msg))
    print('%d passed, %d failed' % (passed, failed))
    if passed == 0 and failed == 0:
        print('no reference fixtures found under %s' % FIXTURES)
        return 1
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
