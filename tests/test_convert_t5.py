#!/usr/bin/env python3
"""tools/convert_t5.py on a Hugging Face-style checkpoint made here from tests/fixtures/t5-tiny
(python3 + numpy): two shards with an index, the encoder split across them, one tensor stored as
F16, the decoder, lm_head and the duplicate encoder.embed_tokens.weight beside them. The output
must hold exactly the encoder's tensors under the fixture's names, F32 values equal to the
checkpoint's (the F16 one widened exactly), and load with `varserve inspect --verify` (its
data_crc32 checked) when VARSERVE_BIN is set; BF16 output is half the size and loads too; bad
checkpoints exit 2 with one line."""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_py import read_safetensors, write_safetensors  # noqa: E402
from tally import finish  # noqa: E402
from tally import check as _check  # noqa: E402


def check(cond, what):
    """tally's check, with the condition first and the message as the name"""
    _check(what.split(':')[0], cond, what)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'convert_t5.py')
FIX = os.path.join(ROOT, 'tests', 'fixtures', 't5-tiny', 'model.safetensors')
BIN = os.environ.get('VARSERVE_BIN')


def write(path, tensors):
    """tensors {name: (array, dtype name)} as a safetensors file."""
    write_safetensors(path, [(k, dt, a.shape, np.ascontiguousarray(a, dtype={'F32': '<f4', 'F16': '<f2'}[dt]).tobytes())
                             for k, (a, dt) in tensors.items()])


def convert(*args):
    p = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def inspect(path):
    p = subprocess.run([BIN, 'inspect', '--verify', path], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


fix, meta = read_safetensors(FIX)
rng = np.random.default_rng(5)
with tempfile.TemporaryDirectory() as d:
    hf = os.path.join(d, 'hf')
    os.makedirs(hf)
    cfg = json.loads(meta['config'])
    with open(os.path.join(hf, 'config.json'), 'w') as f:
        json.dump(cfg, f)
    names = sorted(fix)
    half = 'encoder.final_layer_norm.weight'
    s1 = {k: (fix[k], 'F32') for k in names if k.startswith('encoder.block.0.') or k == 'shared.weight'}
    s2 = {k: (fix[k], 'F16' if k == half else 'F32') for k in names if k not in s1}
    s2['encoder.embed_tokens.weight'] = (fix['shared.weight'], 'F32')
    s2['decoder.block.0.layer.0.SelfAttention.q.weight'] = (rng.standard_normal((64, 64)), 'F32')
    s2['lm_head.weight'] = (rng.standard_normal((500, 64)), 'F32')
    write(os.path.join(hf, 'model-00001-of-00002.safetensors'), s1)
    write(os.path.join(hf, 'model-00002-of-00002.safetensors'), s2)
    weight_map = {k: 'model-00001-of-00002.safetensors' for k in s1}
    weight_map.update({k: 'model-00002-of-00002.safetensors' for k in s2})
    with open(os.path.join(hf, 'model.safetensors.index.json'), 'w') as f:
        json.dump({'weight_map': weight_map}, f)

    out = os.path.join(d, 't5.safetensors')
    rc, so, se = convert('--hf', hf, '--out', out)
    check(rc == 0, 'convert exits 0: %s' % se)
    got, gmeta = read_safetensors(out)
    check(sorted(got) == names, 'exactly the encoder tensors under the fixture names: %s' % sorted(set(got) ^ set(names)))
    check(all(np.array_equal(got[k], fix[k]) for k in names if k != half), 'F32 tensors equal to the checkpoint')
    check(np.array_equal(got[half], fix[half].astype('<f2').astype('<f4')), 'the F16 tensor widened exactly')
    check(json.loads(gmeta['config']) == cfg and len(gmeta.get('data_crc32', '')) == 8,
          'config.json as the metadata config, and a data_crc32')
    if BIN:
        rc, text = inspect(out)
        check(rc == 0 and 'T5 text encoder' in text and 'CRC-32 matches' in text, 'inspect --verify loads it: %s' % text)
    out16 = os.path.join(d, 't5-bf16.safetensors')
    rc, _, se = convert('--hf', hf, '--out', out16, '--dtype', 'bf16')
    check(rc == 0 and os.path.getsize(out16) < 0.6 * os.path.getsize(out), 'bf16: half the size: %s' % se)
    if BIN:
        rc, text = inspect(out16)
        check(rc == 0 and 'T5 text encoder' in text, 'inspect --verify loads the bf16 file: %s' % text)

    # bad checkpoints: exit 2, one line naming the problem
    bad = os.path.join(d, 'bad')
    os.makedirs(bad)
    rc, _, se = convert('--hf', bad, '--out', os.path.join(d, 'x.safetensors'))
    check(rc == 2 and 'config.json' in se and len(se.strip().splitlines()) == 1, 'no config.json: %s' % se)
    with open(os.path.join(bad, 'config.json'), 'w') as f:
        json.dump(dict(cfg, model_type='bert'), f)
    rc, _, se = convert('--hf', bad, '--out', os.path.join(d, 'x.safetensors'))
    check(rc == 2 and 'model_type' in se, 'not T5: %s' % se)
    with open(os.path.join(bad, 'config.json'), 'w') as f:
        json.dump(cfg, f)
    write(os.path.join(bad, 'model.safetensors'), {'lm_head.weight': (rng.standard_normal((4, 4)), 'F32')})
    rc, _, se = convert('--hf', bad, '--out', os.path.join(d, 'x.safetensors'))
    check(rc == 2 and ('shared.weight' in se or 'encoder.block' in se), 'no encoder: %s' % se)
    check(not os.path.exists(os.path.join(d, 'x.safetensors')), 'nothing written on failure')

finish()
