#!/usr/bin/env python3
"""tools/convert_infinity.py on the tiny Infinity .pth pair in tests/fixtures/pth (python3 + numpy;
no torch; the pair was written by tools/make_test_infinity_pth.py).

The output must hold exactly the transformer's tensors (zero_k_bias dropped) and the decoder's
(encoder and quantizer dropped) under infinity. and vae. names, each with the shape and sum
infinity_expected.json records, the config inferred from the shapes, the 2B structure's flags and
the reference's 0.06M schedule (and the 1.333 ratio's for --h-div-w 1.3), and a data_crc32. With
VARSERVE_BIN set, `inspect --verify` loads it and `generate` makes an image from a prompt with it
(through a random T5 of its text width). Bad input exits 2 with one line; BF16 output is smaller."""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_py import read_safetensors  # noqa: E402
from tally import finish  # noqa: E402
from tally import check as _check  # noqa: E402


def check(cond, what):
    """tally's check, with the condition first and the message as the name"""
    _check(what.split(':')[0], cond, what)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'convert_infinity.py')
FIX = os.path.join(ROOT, 'tests', 'fixtures', 'pth')
MODEL, VAE = os.path.join(FIX, 'infinity_tiny.pth'), os.path.join(FIX, 'infinity_vae_tiny.pth')
with open(os.path.join(FIX, 'infinity_expected.json')) as _f:
    EXPECTED = json.load(_f)
BIN = os.environ.get('VARSERVE_BIN')


def run(*args):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def convert(*args):
    return run(sys.executable, TOOL, '--model', MODEL, '--vae', VAE, *args)


with tempfile.TemporaryDirectory() as d:
    out = os.path.join(d, 'inf.safetensors')
    rc, so, se = convert('--out', out, '--pn', '0.06M')
    check(rc == 0, 'convert exits 0: %s' % se)
    got, meta = read_safetensors(out)
    want = EXPECTED['tensors']
    check(sorted(got) == sorted(want), 'exactly the kept tensors: %s' % sorted(set(got) ^ set(want)))
    check(all(list(got[k].shape) == want[k]['shape'] for k in want if k in got), 'every shape as saved')
    check(all(abs(float(got[k].astype(np.float64).sum()) - want[k]['sum']) <= 1e-6 * max(1.0, abs(want[k]['sum']))
              for k in want if k in got), 'every tensor\'s values as saved (sums)')
    cfg = json.loads(meta['config'])
    check(all(cfg[k] == v for k, v in EXPECTED['config'].items()),
          'the config inferred from the shapes: %s' % {k: cfg.get(k) for k in EXPECTED['config']})
    check(cfg['arch'] == 'infinity' and cfg['cos_attn'] is True and cfg['rope2d_normalized_by_hw'] == 2,
          'the 2B structure\'s flags')
    check(cfg['scale_schedule'] == [[1, h, h] for h in (1, 2, 4, 6, 8, 12, 16)] and cfg['h_div_w'] == 1.0,
          'the reference\'s 0.06M schedule at 1:1')
    check(len(meta.get('data_crc32', '')) == 8, 'a data_crc32')
    out2 = os.path.join(d, 'inf-43.safetensors')
    rc, _, se = convert('--out', out2, '--pn', '0.25M', '--h-div-w', '1.3', '--dtype', 'bf16')
    c2 = json.loads(read_safetensors(out2)[1]['config']) if rc == 0 else {}
    check(rc == 0 and c2.get('h_div_w') == 1.333 and c2['scale_schedule'][-1] == [1, 36, 27],
          'the nearest ratio (1.333) and its 0.25M schedule: %s' % se)
    check(rc == 0 and os.path.getsize(out2) < 0.6 * os.path.getsize(out), 'bf16: about half the size')
    if BIN:
        rc, so, se = run(BIN, 'inspect', '--verify', out)
        check(rc == 0 and 'Infinity' in so and 'depth 2, width 64' in so and 'CRC-32 matches' in so,
              'inspect --verify loads it: %s' % (so + se))
        from st_py import write_random_t5
        t5 = os.path.join(d, 't5-128.safetensors')
        write_random_t5(t5, 128, 500)
        rc, so, se = run(BIN, 'generate', '--model', out, '--t5', t5, '--spiece',
                         os.path.join(ROOT, 'tests', 'fixtures', 't5-tiny', 'spiece.model'),
                         '--prompt', 'a red apple', '--backend', 'cpu', '--out', os.path.join(d, 'img'))
        check(rc == 0 and os.path.getsize(os.path.join(d, 'img-0.png')) > 100,
              'generate makes an image with the converted model: %s' % se[-300:])

    # bad input: exit 2, one line
    rc, _, se = run(sys.executable, TOOL, '--model', VAE, '--vae', VAE, '--out', os.path.join(d, 'x.safetensors'))
    check(rc == 2 and 'pos_start' in se and len(se.strip().splitlines()) == 1, 'the VAE given as the model: %s' % se)
    rc, _, se = run(sys.executable, TOOL, '--model', MODEL, '--vae', MODEL, '--out', os.path.join(d, 'x.safetensors'))
    check(rc == 2 and 'decoder.conv_in' in se, 'the model given as the VAE: %s' % se)
    rc, _, se = convert('--out', os.path.join(d, 'x.safetensors'), '--h-div-w', '9')
    check(rc == 2 and 'h-div-w' in se, 'an aspect ratio outside the reference\'s: %s' % se)
    check(not os.path.exists(os.path.join(d, 'x.safetensors')), 'nothing written on failure')

finish()
