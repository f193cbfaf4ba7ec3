"""tests/st_py.py — safetensors for the Python tests: reading a file's tensors (F32, F16, BF16 as
float32; needs numpy), and writing a T5 encoder file with random weights for the tests that need
an encoder of a given width and not its numbers (python3 only)."""
import json
import struct


def read_safetensors(path):
    """({name: float32 array}, metadata) of a safetensors file."""
    import numpy as np
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == '__metadata__':
            continue
        b, e = v['data_offsets']
        dt = {'F32': '<f4', 'F16': '<f2', 'BF16': '<u2'}[v['dtype']]
        a = np.frombuffer(data[b:e], dtype=dt)
        a = (a.astype('<u4') << 16).view('<f4') if v['dtype'] == 'BF16' else a.astype('<f4')
        out[k] = a.reshape(v['shape'])
    return out, header.get('__metadata__', {})


def write_safetensors(path, tensors, metadata=None):
    """tensors: (name, dtype, shape, raw little-endian bytes) in file order, behind a space-padded
    header (with __metadata__ when given)."""
    header, at = ({"__metadata__": metadata} if metadata else {}), 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + len(raw)]}
        at += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors))


def write_random_t5(path, d_model, vocab, seed=1):
    """A T5EncoderModel file with random weights (one layer, 4 heads of 16, d_ff 128) in the layout
    runtime/t5.h reads: for runs that need an encoder of a given width, not for numbers."""
    import array
    import random
    rng = random.Random(seed)
    hk, ff = 64, 128
    shapes = {"shared.weight": (vocab, d_model), "encoder.final_layer_norm.weight": (d_model,),
              "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 4),
              "encoder.block.0.layer.0.layer_norm.weight": (d_model,),
              "encoder.block.0.layer.0.SelfAttention.q.weight": (hk, d_model),
              "encoder.block.0.layer.0.SelfAttention.k.weight": (hk, d_model),
              "encoder.block.0.layer.0.SelfAttention.v.weight": (hk, d_model),
              "encoder.block.0.layer.0.SelfAttention.o.weight": (d_model, hk),
              "encoder.block.0.layer.1.layer_norm.weight": (d_model,),
              "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": (ff, d_model),
              "encoder.block.0.layer.1.DenseReluDense.wi_1.weight": (ff, d_model),
              "encoder.block.0.layer.1.DenseReluDense.wo.weight": (d_model, ff)}
    config = {"model_type": "t5", "d_model": d_model, "d_kv": 16, "num_heads": 4, "d_ff": ff, "num_layers": 1,
              "vocab_size": vocab, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
              "layer_norm_epsilon": 1e-6, "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new"}
    tensors = []
    for name, shape in shapes.items():
        n = 1
        for x in shape:
            n *= x
        scale = 1.0 if len(shape) == 1 or name == "shared.weight" else shape[1] ** -0.5
        data = array.array("f", (1.0 + 0.1 * rng.gauss(0, 1) if len(shape) == 1 else scale * rng.gauss(0, 1)
                                 for _ in range(n))).tobytes()
        tensors.append((name, "F32", shape, data))
    write_safetensors(path, tensors, {"config": json.dumps(config)})
