#!/usr/bin/env python3
"""tools/convert_t5.py — a Hugging Face T5 checkpoint (e.g. google/flan-t5-xl, Infinity's text
encoder) to the T5 encoder file varserve reads (docs/MODEL_FORMAT.md, "Other families' files").

    python3 tools/convert_t5.py --hf DIR --out t5.safetensors [--dtype f32|bf16]

DIR holds the checkpoint as Hugging Face saves it: config.json and model.safetensors, or shards
listed in model.safetensors.index.json (or any *.safetensors in DIR). Only the encoder is kept:
`shared.weight` (the embedding; `encoder.embed_tokens.weight` is the same tensor and is dropped,
or used when `shared.weight` is missing) and every `encoder.*` tensor. The decoder and `lm_head`
are left out. config.json becomes the metadata's `config`, and a data_crc32 is written. F32, F16
and BF16 inputs are read with numpy alone, no torch. The tokenizer stays as it is: pass the
checkpoint's own spiece.model to varserve. Bad input exits 2 with one line that says what is
wrong."""
import argparse
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_var import write_safetensors  # noqa: E402 (the one safetensors writer)

DTYPES = {'F32': ('<f4', 4), 'F16': ('<f2', 2), 'BF16': ('<u2', 2)}


class ConvertError(Exception):
    pass


def read_header(path):
    with open(path, 'rb') as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConvertError('%s is too short for a safetensors file' % path)
        n = struct.unpack('<Q', head)[0]
        if n > 100 << 20:
            raise ConvertError('%s: a header of %d bytes is not a safetensors header' % (path, n))
        try:
            return json.loads(f.read(n)), 8 + n
        except ValueError as e:
            raise ConvertError('%s: the header is not JSON (%s)' % (path, e))


def tensors_of(hf):
    """{name: (path, data_start, entry)} over the checkpoint's safetensors files."""
    index = os.path.join(hf, 'model.safetensors.index.json')
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)['weight_map'].values()))
    else:
        files = sorted(x for x in os.listdir(hf) if x.endswith('.safetensors'))
    if not files:
        raise ConvertError('%s has no .safetensors file (save the checkpoint with safe_serialization, or '
                           'convert its .bin with transformers first)' % hf)
    out = {}
    for name in files:
        path = os.path.join(hf, name)
        header, start = read_header(path)
        for k, v in header.items():
            if k != '__metadata__':
                out[k] = (path, start, v)
    return out


def reader(path, start, entry):
    def read():
        dt = entry.get('dtype')
        if dt not in DTYPES:
            raise ConvertError('tensor dtype %s is not F32, F16 or BF16' % dt)
        np_dt, item = DTYPES[dt]
        b, e = entry['data_offsets']
        n = int(np.prod(entry['shape'], dtype=np.int64))
        if e - b != n * item:
            raise ConvertError('a tensor of %s spans %d bytes, not %d' % (path, e - b, n * item))
        with open(path, 'rb') as f:
            f.seek(start + b)
            raw = np.frombuffer(f.read(e - b), dtype=np_dt)
        if raw.size != n:
            raise ConvertError('%s is truncated' % path)
        if dt == 'BF16':
            return (raw.astype('<u4') << 16).view('<f4').reshape(entry['shape'])
        return raw.astype('<f4').reshape(entry['shape'])
    return read


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--hf', required=True, help='the Hugging Face checkpoint folder')
    ap.add_argument('--out', required=True)
    ap.add_argument('--dtype', choices=['f32', 'bf16'], default='f32')
    a = ap.parse_args(argv)
    try:
        cfg_path = os.path.join(a.hf, 'config.json')
        if not os.path.exists(cfg_path):
            raise ConvertError('%s has no config.json' % a.hf)
        with open(cfg_path) as f:
            cfg = json.load(f)
        if cfg.get('model_type') != 't5':
            raise ConvertError('config.json: model_type is %r, not "t5"' % cfg.get('model_type'))
        if cfg.get('feed_forward_proj') != 'gated-gelu':
            raise ConvertError('config.json: feed_forward_proj is %r; varserve reads the gated-GELU T5 '
                               '(T5 v1.1, flan-t5)' % cfg.get('feed_forward_proj'))
        ts = tensors_of(a.hf)
        keep = {k: v for k, v in ts.items() if k.startswith('encoder.') and k != 'encoder.embed_tokens.weight'}
        emb = ts.get('shared.weight') or ts.get('encoder.embed_tokens.weight')
        if emb is None:
            raise ConvertError('the checkpoint has neither shared.weight nor encoder.embed_tokens.weight')
        keep['shared.weight'] = emb
        if not any(k.startswith('encoder.block.') for k in keep):
            raise ConvertError('the checkpoint has no encoder.block.* tensors: not a T5 checkpoint')
        entries = [(k, v[2]['shape'], reader(*v)) for k, v in keep.items()]
        size = write_safetensors(a.out, {'config': json.dumps(cfg)}, entries, a.dtype, tool='convert_t5')
    except (ConvertError, OSError, KeyError, ValueError) as e:
        print('convert_t5: %s' % e, file=sys.stderr)
        return 2
    print('convert_t5: wrote %s: %d tensors, %.1f MB' % (a.out, len(keep), size / 1e6))
    return 0


if __name__ == '__main__':
    sys.exit(main())
