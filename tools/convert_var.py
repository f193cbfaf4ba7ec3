#!/usr/bin/env python3
"""Convert released FoundationVision/VAR checkpoints into one varserve model file.

    tools/convert_var.py --var var_d16.pth --vae vae_ch160v4096z32.pth --out var-d16.safetensors
                         [--depth 16] [--patch-nums 1,2,3,4,5,6,8,10,13,16] [--dtype f32|bf16]
                         [--num-classes N] [--class-names FILE]

The output layout is docs/MODEL_FORMAT.md: a safetensors file whose __metadata__ holds
format=varserve-model, version=1 and the model config as a JSON string; transformer tensors carry
the prefix `var.`, VQ-VAE decoder tensors `vae.`.

Design: torch is not needed. A .pth file written by torch.save (torch >= 1.6) is a zip archive
holding `<name>/data.pkl` (the pickled object, with tensors as persistent references to storages)
and `<name>/data/<key>` (raw storage bytes). data.pkl is read with a restricted Unpickler that only
builds containers and lazy tensor records (storage, offset, shape, strides); every other global
becomes an inert placeholder, so no code from the checkpoint runs. Tensor bytes are read one
storage at a time while the output is written, so memory stays near the largest single tensor.

The config is inferred from tensor shapes (options override or check it), then every kept tensor
is checked against the shapes that config implies before anything is written. Any problem with the
inputs exits with status 2 and a message naming the tensor or field.
"""

import argparse
import collections
import json
import os
import pickle
import re
import sys
import zipfile
import zlib

import numpy as np

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
KNOWN_PATCH_NUMS = (PATCH_NUMS_256, PATCH_NUMS_512)

# Buffers the engine derives from the config, and encoder-side parts serving never uses.
DROP_VAR = re.compile(r'^(lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias)$')
DROP_VAE = re.compile(r'^(quantize\.ema_vocab_hit_SV|encoder\..*|quant_conv\..*)$')


class ConvertError(Exception):
    """A problem with the inputs or options; reported as one message, exit status 2."""


# ----------------------------------------------------------------------------------------------
# Reading .pth archives without torch

class _StorageType:
    """Stands in for torch.FloatStorage & co.: only the element type matters here."""

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = dtype  # numpy dtype (little-endian), or None when unsupported

    def __repr__(self):
        return 'torch.' + self.name


# bfloat16 has no numpy type: it is read as its 16 raw bits and widened to float32 later.
_BF16 = np.dtype('<u2')
_STORAGE_TYPES = {
    'FloatStorage': np.dtype('<f4'), 'DoubleStorage': np.dtype('<f8'),
    'HalfStorage': np.dtype('<f2'), 'BFloat16Storage': _BF16,
    'LongStorage': np.dtype('<i8'), 'IntStorage': np.dtype('<i4'), 'ShortStorage': np.dtype('<i2'),
    'CharStorage': np.dtype('i1'), 'ByteStorage': np.dtype('u1'), 'BoolStorage': np.dtype('?'),
    'UntypedStorage': np.dtype('u1'),
}
_FLOAT_STORAGES = ('FloatStorage', 'DoubleStorage', 'HalfStorage', 'BFloat16Storage')


class _Storage:
    def __init__(self, stype, key, numel):
        self.stype, self.key, self.numel = stype, str(key), int(numel)


class LazyTensor:
    """A tensor as pickled by torch: a view (offset, shape, strides in elements) of a storage."""

    def __init__(self, storage, offset, shape, stride):
        if not isinstance(storage, _Storage):
            raise ConvertError('malformed checkpoint: a tensor does not reference a storage')
        self.storage = storage
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.stride = tuple(int(s) for s in stride)
        if len(self.shape) != len(self.stride):
            raise ConvertError('malformed checkpoint: tensor with shape %s but strides %s'
                               % (self.shape, self.stride))

    @property
    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type(func, _new_type, args, _state=None):
    return func(*args)


class _Opaque:
    """An object of a class this tool does not need (optimizer state, argparse.Namespace, ...).
    Accepts any construction and state and does nothing, so nothing from the file executes."""
    global_name = '?'

    def __new__(cls, *_args, **_kwargs):
        return object.__new__(cls)

    def __init__(self, *_args, **_kwargs):
        pass

    def __setstate__(self, _state):
        pass

    def __repr__(self):
        return '<%s object>' % self.global_name


_TORCH_FUNCS = {
    '_rebuild_tensor': _rebuild_tensor, '_rebuild_tensor_v2': _rebuild_tensor,
    '_rebuild_parameter': _rebuild_parameter, '_rebuild_parameter_with_state': _rebuild_parameter,
    '_rebuild_from_type': _rebuild_from_type, '_rebuild_from_type_v2': _rebuild_from_type,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, path):
        super().__init__(f)
        self.path = path

    def find_class(self, module, name):
        if module == 'collections' and name == 'OrderedDict':
            return collections.OrderedDict
        if module == 'builtins' and name in ('set', 'frozenset', 'slice', 'complex'):
            return {'set': set, 'frozenset': frozenset, 'slice': slice, 'complex': complex}[name]
        if module.startswith('torch'):
            if name == 'Size':
                return tuple
            if name in _TORCH_FUNCS:
                return _TORCH_FUNCS[name]
            if name.endswith('Storage') and module == 'torch':
                return _StorageType(name, _STORAGE_TYPES.get(name))
        return type('Opaque_' + name, (_Opaque,), {'global_name': module + '.' + name})

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage'):
            raise ConvertError('%s: unsupported persistent id %r in data.pkl' % (self.path, pid[:1]))
        stype, key, numel = pid[1], pid[2], pid[4]  # pid[3] is the device it was saved from
        if not isinstance(stype, _StorageType):
            raise ConvertError('%s: unsupported storage type %r' % (self.path, stype))
        return _Storage(stype, key, numel)


class PthArchive:
    """One torch.save zip archive; tensors are LazyTensor records until read()."""

    def __init__(self, path):
        self.path = path
        if not os.path.isfile(path):
            raise ConvertError('%s: no such file' % path)
        if not zipfile.is_zipfile(path):
            raise ConvertError('%s: not a zip archive; only checkpoints written by torch.save with '
                               'the default zip format (torch >= 1.6) are supported. Re-save it with '
                               'torch.save(torch.load(PATH), NEW_PATH)' % path)
        self.zip = zipfile.ZipFile(path)
        pkls = [n for n in self.zip.namelist() if n.endswith('data.pkl') and n.count('/') == 1]
        if len(pkls) != 1:
            raise ConvertError('%s: expected one <name>/data.pkl in the archive, found %d'
                               % (path, len(pkls)))
        self.prefix = pkls[0][:-len('data.pkl')]
        self.byteorder = 'little'
        if self.prefix + 'byteorder' in self.zip.namelist():
            self.byteorder = self.zip.read(self.prefix + 'byteorder').decode().strip()
            if self.byteorder not in ('little', 'big'):
                raise ConvertError('%s: unknown byteorder record %r' % (path, self.byteorder))
        with self.zip.open(pkls[0]) as f:
            try:
                self.obj = _RestrictedUnpickler(f, path).load()
            except ConvertError:
                raise
            except Exception as e:  # a damaged pickle stream can fail in many ways
                raise ConvertError('%s: cannot read data.pkl: %s: %s'
                                   % (path, type(e).__name__, e)) from e
        self._cache_key, self._cache = None, None

    def _storage_array(self, st):
        if self._cache_key == st.key:
            return self._cache
        name = self.prefix + 'data/' + st.key
        try:
            raw = self.zip.read(name)
        except KeyError:
            raise ConvertError('%s: storage %s is missing from the archive' % (self.path, name))
        dtype = st.stype.dtype
        need = st.numel * dtype.itemsize
        if len(raw) < need:
            raise ConvertError('%s: storage %s has %d bytes but %d elements of %s need %d: '
                               'the file is truncated or damaged'
                               % (self.path, name, len(raw), st.numel, st.stype.name, need))
        if self.byteorder == 'big':
            dtype = dtype.newbyteorder('>')
        arr = np.frombuffer(raw, dtype=dtype, count=st.numel)
        self._cache_key, self._cache = st.key, arr
        return arr

    def read(self, t, name):
        """The tensor's values as a contiguous float32 array of its shape."""
        st = t.storage
        if st.stype.name not in _FLOAT_STORAGES:
            raise ConvertError('%s: tensor %s is stored as %s; expected a floating-point tensor'
                               % (self.path, name, st.stype.name))
        if t.offset < 0 or any(s < 0 for s in t.stride) or any(s < 0 for s in t.shape):
            raise ConvertError('%s: tensor %s has a negative offset, size or stride'
                               % (self.path, name))
        if t.numel:
            last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride))
            if last >= st.numel:
                raise ConvertError('%s: tensor %s (offset %d, shape %s, strides %s) reaches element '
                                   '%d of a storage of %d elements'
                                   % (self.path, name, t.offset, t.shape, t.stride, last, st.numel))
        base = self._storage_array(st)
        if t.numel == 0:
            out = np.zeros(t.shape, dtype=base.dtype)
        else:
            item = base.dtype.itemsize
            view = np.lib.stride_tricks.as_strided(
                base[t.offset:], shape=t.shape, strides=tuple(s * item for s in t.stride),
                writeable=False)
            out = np.array(view, copy=True, order='C')
        if st.stype.name == 'BFloat16Storage':
            return (out.astype('<u4') << 16).view('<f4')
        return np.ascontiguousarray(out, dtype='<f4')


def _state_dict_in(obj, marker, path):
    """Finds the state dict holding `marker`: the object itself, or a dict nested in wrappers
    such as {'model': sd}, {'state_dict': sd} or VAR's trainer checkpoints. A DDP 'module.'
    prefix is removed."""
    seen = set()
    queue = [(obj, '')]
    while queue:
        o, where = queue.pop(0)
        if not isinstance(o, dict) or id(o) in seen:
            continue
        seen.add(id(o))
        for prefix in ('', 'module.'):
            if prefix + marker in o:
                sd = collections.OrderedDict()
                for k, v in o.items():
                    if not isinstance(k, str) or not isinstance(v, LazyTensor):
                        continue
                    sd[k[len(prefix):] if k.startswith(prefix) else k] = v
                return sd, where
        for k, v in o.items():
            if isinstance(v, dict):
                queue.append((v, (where + '.' if where else '') + str(k)))
    raise ConvertError('%s: no state dict with a %r entry found (is this the right checkpoint?)'
                       % (path, marker))


# ----------------------------------------------------------------------------------------------
# Config inference and the shapes it implies

def _shape(sd, key, path):
    if key not in sd:
        raise ConvertError('%s: tensor %s is missing; cannot infer the config' % (path, key))
    return sd[key].shape


def _count_indexed(sd, pattern):
    idx = set()
    rx = re.compile(pattern)
    for k in sd:
        m = rx.match(k)
        if m:
            idx.add(int(m.group(1)))
    return idx


def _check_contiguous_indices(idx, what, path):
    if idx != set(range(len(idx))):
        raise ConvertError('%s: %s indices %s are not 0..%d' % (path, what, sorted(idx), len(idx) - 1))
    return len(idx)


def infer_config(var_sd, vae_sd, args):
    vp, ap = args.var, args.vae
    cfg = collections.OrderedDict()
    cfg['arch'] = 'var'

    depth = _check_contiguous_indices(_count_indexed(var_sd, r'^blocks\.(\d+)\.'), 'block', vp)
    if depth == 0:
        raise ConvertError('%s: no transformer blocks (blocks.<i>.*) found' % vp)
    if args.depth is not None and args.depth != depth:
        raise ConvertError('--depth %d but %s has %d transformer blocks (blocks.0 .. blocks.%d)'
                           % (args.depth, vp, depth, depth - 1))
    cfg['depth'] = depth

    nc1, C = _shape(var_sd, 'class_emb.weight', vp)
    cfg['embed_dim'] = C
    attn_l2_norm = 'blocks.0.attn.scale_mul_1H11' in var_sd
    if attn_l2_norm:
        heads = _shape(var_sd, 'blocks.0.attn.scale_mul_1H11', vp)[1]
        if args.num_heads is not None and args.num_heads != heads:
            raise ConvertError('--num-heads %d but %s has blocks.0.attn.scale_mul_1H11 of shape %s '
                               '(%d heads)' % (args.num_heads, vp, _shape(var_sd, 'blocks.0.attn.scale_mul_1H11', vp), heads))
    else:
        heads = args.num_heads if args.num_heads is not None else max(1, C // 64)
    if heads <= 0 or C % heads:
        raise ConvertError('embed_dim %d is not divisible by num_heads %d' % (C, heads))
    cfg['num_heads'] = heads
    hidden = _shape(var_sd, 'blocks.0.ffn.fc1.weight', vp)[0]
    cfg['mlp_ratio'] = hidden / C
    cfg['norm_eps'] = args.norm_eps
    cfg['shared_aln'] = 'shared_ada_lin.1.weight' in var_sd or 'blocks.0.ada_gss' in var_sd
    cfg['attn_l2_norm'] = attn_l2_norm
    cfg['num_classes'] = args.num_classes if args.num_classes is not None else nc1 - 1

    if args.patch_nums is not None:
        pn = tuple(args.patch_nums)
    else:
        L = _shape(var_sd, 'pos_1LC', vp)[1]
        S = _shape(var_sd, 'lvl_embed.weight', vp)[0]
        match = [p for p in KNOWN_PATCH_NUMS if sum(x * x for x in p) == L and len(p) == S]
        if not match:
            raise ConvertError('%s: pos_1LC has %d tokens over %d scales, which is neither the 256px '
                               'nor the 512px layout; give --patch-nums' % (vp, L, S))
        pn = match[0]
    cfg['patch_nums'] = list(pn)

    V, Cvae = _shape(vae_sd, 'quantize.embedding.weight', ap)
    cfg['vocab_size'] = V
    cfg['z_channels'] = Cvae
    ch = _shape(vae_sd, 'decoder.conv_out.weight', ap)[1]
    cfg['vae_ch'] = ch
    levels = _check_contiguous_indices(_count_indexed(vae_sd, r'^decoder\.up\.(\d+)\.'),
                                       'decoder.up level', ap)
    if levels == 0:
        raise ConvertError('%s: no decoder levels (decoder.up.<level>.*) found' % ap)
    mult, nblocks = [], []
    for lv in range(levels):
        key = 'decoder.up.%d.block.0.conv1.weight' % lv
        out_ch = _shape(vae_sd, key, ap)[0]
        if out_ch % ch:
            raise ConvertError('%s: %s has %d output channels, not a multiple of vae_ch %d '
                               '(decoder.conv_out input channels)' % (ap, key, out_ch, ch))
        mult.append(out_ch // ch)
        nblocks.append(_check_contiguous_indices(
            _count_indexed(vae_sd, r'^decoder\.up\.%d\.block\.(\d+)\.' % lv),
            'decoder.up.%d.block' % lv, ap))
    if len(set(nblocks)) != 1 or nblocks[0] < 1:
        raise ConvertError('%s: decoder levels have different block counts %s' % (ap, nblocks))
    cfg['vae_ch_mult'] = mult
    cfg['vae_num_res_blocks'] = nblocks[0] - 1
    cfg['quant_resi'] = args.quant_resi
    if 'quantize.quant_resi.qresi.weight' in vae_sd:  # PhiShared: one conv for every scale
        nq = 1
    else:
        nq = _check_contiguous_indices(
            _count_indexed(vae_sd, r'^quantize\.quant_resi\.qresi_ls\.(\d+)\.'), 'qresi_ls', ap)
    if nq == 0:
        raise ConvertError('%s: no quantize.quant_resi.qresi_ls.<k> convolutions found (a '
                           'non-shared Phi or quant_resi 0 is not supported by the varserve format)' % ap)
    cfg['share_quant_resi'] = nq
    return cfg


def expected_shapes(cfg):
    """Every tensor a varserve model holds, with its shape, as implied by the config."""
    C, H, V, Cvae = cfg['embed_dim'], cfg['num_heads'], cfg['vocab_size'], cfg['z_channels']
    pn = cfg['patch_nums']
    hidden = round(C * cfg['mlp_ratio'])
    e = collections.OrderedDict()
    v = 'var.'
    e[v + 'class_emb.weight'] = (cfg['num_classes'] + 1, C)
    e[v + 'pos_start'] = (1, pn[0] * pn[0], C)
    e[v + 'pos_1LC'] = (1, sum(p * p for p in pn), C)
    e[v + 'lvl_embed.weight'] = (len(pn), C)
    e[v + 'word_embed.weight'] = (C, Cvae)
    e[v + 'word_embed.bias'] = (C,)
    if cfg['shared_aln']:
        e[v + 'shared_ada_lin.1.weight'] = (6 * C, C)
        e[v + 'shared_ada_lin.1.bias'] = (6 * C,)
    for i in range(cfg['depth']):
        b = v + 'blocks.%d.' % i
        if cfg['shared_aln']:
            e[b + 'ada_gss'] = (1, 1, 6, C)
        else:
            e[b + 'ada_lin.1.weight'] = (6 * C, C)
            e[b + 'ada_lin.1.bias'] = (6 * C,)
        e[b + 'attn.mat_qkv.weight'] = (3 * C, C)
        e[b + 'attn.q_bias'] = (C,)
        e[b + 'attn.v_bias'] = (C,)
        if cfg['attn_l2_norm']:
            e[b + 'attn.scale_mul_1H11'] = (1, H, 1, 1)
        e[b + 'attn.proj.weight'] = (C, C)
        e[b + 'attn.proj.bias'] = (C,)
        e[b + 'ffn.fc1.weight'] = (hidden, C)
        e[b + 'ffn.fc1.bias'] = (hidden,)
        e[b + 'ffn.fc2.weight'] = (C, hidden)
        e[b + 'ffn.fc2.bias'] = (C,)
    e[v + 'head_nm.ada_lin.1.weight'] = (2 * C, C)
    e[v + 'head_nm.ada_lin.1.bias'] = (2 * C,)
    e[v + 'head.weight'] = (V, C)
    e[v + 'head.bias'] = (V,)

    a = 'vae.'
    e[a + 'quantize.embedding.weight'] = (V, Cvae)
    # PhiShared (K = 1) names its one convolution qresi, PhiPartiallyShared (K > 1) qresi_ls.<k>,
    # as the reference's modules do and runtime/model.c expects
    phis = ['qresi'] if cfg['share_quant_resi'] == 1 else \
        ['qresi_ls.%d' % k for k in range(cfg['share_quant_resi'])]
    for ph in phis:
        e[a + 'quantize.quant_resi.%s.weight' % ph] = (Cvae, Cvae, 3, 3)
        e[a + 'quantize.quant_resi.%s.bias' % ph] = (Cvae,)
    e[a + 'post_quant_conv.weight'] = (Cvae, Cvae, 3, 3)
    e[a + 'post_quant_conv.bias'] = (Cvae,)

    def conv(name, cout, cin, k):
        e[name + '.weight'] = (cout, cin, k, k)
        e[name + '.bias'] = (cout,)

    def norm(name, c):
        e[name + '.weight'] = (c,)
        e[name + '.bias'] = (c,)

    def resblock(name, cin, cout):
        norm(name + '.norm1', cin)
        conv(name + '.conv1', cout, cin, 3)
        norm(name + '.norm2', cout)
        conv(name + '.conv2', cout, cout, 3)
        if cin != cout:
            conv(name + '.nin_shortcut', cout, cin, 1)

    def attnblock(name, c):
        norm(name + '.norm', c)
        conv(name + '.qkv', 3 * c, c, 1)
        conv(name + '.proj_out', c, c, 1)

    d = a + 'decoder.'
    ch, mult = cfg['vae_ch'], cfg['vae_ch_mult']
    top = len(mult) - 1
    block_in = ch * mult[top]
    conv(d + 'conv_in', block_in, Cvae, 3)
    resblock(d + 'mid.block_1', block_in, block_in)
    attnblock(d + 'mid.attn_1', block_in)
    resblock(d + 'mid.block_2', block_in, block_in)
    for lv in reversed(range(len(mult))):
        block_out = ch * mult[lv]
        for j in range(cfg['vae_num_res_blocks'] + 1):
            resblock(d + 'up.%d.block.%d' % (lv, j), block_in, block_out)
            block_in = block_out
            if lv == top:
                attnblock(d + 'up.%d.attn.%d' % (lv, j), block_in)
        if lv != 0:
            conv(d + 'up.%d.upsample.conv' % lv, block_in, block_in, 3)
    norm(d + 'norm_out', block_in)
    conv(d + 'conv_out', 3, block_in, 3)
    return e


def collect_tensors(var_sd, vae_sd):
    """Output name -> (archive index, source name, LazyTensor) for every kept entry."""
    kept = collections.OrderedDict()
    for k, t in var_sd.items():
        if not DROP_VAR.match(k):
            kept['var.' + k] = (0, k, t)
    for k, t in vae_sd.items():
        if DROP_VAE.match(k):
            continue
        kept['vae.' + k] = (1, k, t)
    return kept


def check_shapes(kept, expect, paths):
    problems = []
    for name, shape in expect.items():
        if name not in kept:
            problems.append('tensor %s %s is missing from the checkpoint' % (name, shape))
    for name, (ai, src, t) in kept.items():
        if name not in expect:
            problems.append('%s: unknown tensor %s (%s, shape %s) does not belong to the model the '
                            'config describes' % (paths[ai], src, name, t.shape))
        elif tuple(t.shape) != tuple(expect[name]):
            problems.append('tensor %s: checkpoint shape %s but the config expects %s'
                            % (name, tuple(t.shape), tuple(expect[name])))
    if problems:
        more = '' if len(problems) <= 20 else '\n  ... and %d more' % (len(problems) - 20)
        raise ConvertError('%d tensor(s) disagree with the config:\n  %s%s'
                           % (len(problems), '\n  '.join(problems[:20]), more))


# ----------------------------------------------------------------------------------------------
# Writing

def f32_to_bf16_bits(x):
    """Round-to-nearest-even from float32 bits; NaN stays a (quiet) NaN."""
    bits = np.ascontiguousarray(x, dtype='<f4').view('<u4')
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
               >> np.uint32(16)).astype('<u2')
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, ((bits >> np.uint32(16)) | np.uint32(0x40)).astype('<u2'), rounded)
    return rounded.astype('<u2')


CRC_FIELD = b'"data_crc32":"00000000"'


def patch_crc32(f, hjson, crc):
    """Writes the CRC-32 of the tensor data over the placeholder of the header `hjson`, which was
    written at offset 8 of f (the loader checks it; docs/MODEL_FORMAT.md)."""
    f.seek(8 + hjson.index(CRC_FIELD) + len(CRC_FIELD) - 9)
    f.write(b'%08x' % (crc & 0xffffffff))


def write_safetensors(out, metadata, entries, dtype, tool='convert_var'):
    """Writes `out` (atomically: a .tmp renamed): entries (name, shape, read) in name order, read()
    giving the tensor as float32; F32, or BF16 rounded to nearest even; the header's metadata with
    a data_crc32 of the data. Warns about non-finite values (the loader refuses them). Returns the
    file's size."""
    st_dtype, item = ('BF16', 2) if dtype == 'bf16' else ('F32', 4)
    entries = sorted(entries, key=lambda e: e[0])
    header = collections.OrderedDict()
    header['__metadata__'] = collections.OrderedDict(list(metadata.items()) + [('data_crc32', '00000000')])
    pos = 0
    for name, shape, _ in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * item
        header[name] = collections.OrderedDict(
            [('dtype', st_dtype), ('shape', list(shape)), ('data_offsets', [pos, pos + nbytes])])
        pos += nbytes
    hjson = json.dumps(header, separators=(',', ':')).encode('utf-8')
    hjson += b' ' * (-len(hjson) % 8)
    tmp = out + '.tmp'
    try:
        with open(tmp, 'wb') as f:
            f.write(len(hjson).to_bytes(8, 'little'))
            f.write(hjson)
            crc = 0
            for name, _, read in entries:
                arr = read()
                data = f32_to_bf16_bits(arr) if dtype == 'bf16' else np.asarray(arr, dtype='<f4')
                if not np.all(np.isfinite(arr)):
                    print('%s: warning: tensor %s has non-finite values (varserve refuses to load such a '
                          'file)' % (tool, name), file=sys.stderr)
                raw = data.tobytes(order='C')
                crc = zlib.crc32(raw, crc)
                f.write(raw)
            patch_crc32(f, hjson, crc)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return 8 + len(hjson) + pos


def write_model(out, cfg, kept, archives, dtype):
    metadata = collections.OrderedDict([('format', 'varserve-model'), ('version', '1'), ('config', json.dumps(cfg))])
    entries = [(n, kept[n][2].shape, (lambda n=n: archives[kept[n][0]].read(kept[n][2], kept[n][1]))) for n in kept]
    return write_safetensors(out, metadata, entries, dtype)


# ----------------------------------------------------------------------------------------------

def _int_list(s):
    try:
        v = [int(x) for x in s.replace(' ', '').split(',') if x]
    except ValueError:
        raise argparse.ArgumentTypeError('expected comma-separated integers, got %r' % s)
    if not v or any(x <= 0 for x in v):
        raise argparse.ArgumentTypeError('expected positive integers, got %r' % s)
    return v


def read_class_names(path, n):
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except OSError as e:
        raise ConvertError('--class-names %s: %s' % (path, e.strerror))
    names = None
    if text.lstrip().startswith('['):
        try:
            names = json.loads(text)
        except ValueError as e:
            raise ConvertError('--class-names %s: invalid JSON: %s' % (path, e))
        if not all(isinstance(x, str) for x in names):
            raise ConvertError('--class-names %s: the JSON list must hold strings' % path)
    else:
        names = text.splitlines()
        while names and not names[-1].strip():
            names.pop()
        names = [x.strip() for x in names]
    if len(names) != n:
        raise ConvertError('--class-names %s has %d names but the model has %d classes'
                           % (path, len(names), n))
    return names


def main(argv=None):
    p = argparse.ArgumentParser(
        description='Convert FoundationVision/VAR checkpoints (var_d*.pth + vae_ch160v4096z32.pth) '
                    'into a varserve model (.safetensors). Needs numpy, not torch.')
    p.add_argument('--var', required=True, help='VAR transformer checkpoint, e.g. var_d16.pth')
    p.add_argument('--vae', required=True, help='VQ-VAE checkpoint, e.g. vae_ch160v4096z32.pth')
    p.add_argument('--out', required=True, help='output .safetensors path')
    p.add_argument('--depth', type=int, help='expected number of blocks (checked)')
    p.add_argument('--patch-nums', type=_int_list,
                   help='scale sides, default inferred (256px: 1,2,3,4,5,6,8,10,13,16)')
    p.add_argument('--dtype', choices=('f32', 'bf16'), default='f32', help='stored dtype')
    p.add_argument('--num-classes', type=int, help='default: class_emb rows - 1 (checked)')
    p.add_argument('--num-heads', type=int,
                   help='default: from scale_mul_1H11 (or embed_dim/64 without attn_l2_norm)')
    p.add_argument('--class-names', help='file of num_classes names: one a line, or a JSON list')
    p.add_argument('--norm-eps', type=float, default=1e-6)
    p.add_argument('--quant-resi', type=float, default=0.5)
    p.add_argument('--quiet', action='store_true')
    args = p.parse_args(argv)
    try:
        archives = (PthArchive(args.var), PthArchive(args.vae))
        var_sd, where = _state_dict_in(archives[0].obj, 'class_emb.weight', args.var)
        vae_sd, where2 = _state_dict_in(archives[1].obj, 'quantize.embedding.weight', args.vae)
        cfg = infer_config(var_sd, vae_sd, args)
        if args.class_names:
            cfg['class_names'] = read_class_names(args.class_names, cfg['num_classes'])
        kept = collect_tensors(var_sd, vae_sd)
        check_shapes(kept, expected_shapes(cfg), (args.var, args.vae))
        if cfg['share_quant_resi'] not in (1, 4):
            print('convert_var: warning: share_quant_resi %d: the reference picks Phi with ticks '
                  'linspace(1/(2K), 1-1/(2K), K) when K != 4' % cfg['share_quant_resi'],
                  file=sys.stderr)
        size = write_model(args.out, cfg, kept, archives, args.dtype)
    except ConvertError as e:
        print('convert_var: error: %s' % e, file=sys.stderr)
        return 2
    except OSError as e:
        print('convert_var: error: %s' % e, file=sys.stderr)
        return 2
    if not args.quiet:
        dropped = len(var_sd) + len(vae_sd) - len(kept)
        print('convert_var: wrote %s (%.1f MB, %d tensors, %s; dropped %d unused entries)%s%s'
              % (args.out, size / 1e6, len(kept), args.dtype, dropped,
                 ' [var state dict under %r]' % where if where else '',
                 ' [vae state dict under %r]' % where2 if where2 else ''))
        print('config: ' + json.dumps({k: v for k, v in cfg.items() if k != 'class_names'}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
