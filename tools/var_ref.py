#!/usr/bin/python3
"""PyTorch reference of what varserve computes (docs/ALGORITHMS.md section 1).

The modules below carry the state-dict names of the varserve model format
(docs/MODEL_FORMAT.md), prefixes `var.` and `vae.` stripped, so the same
code serves three purposes:
  * the numerics oracle the C engine's parity tests are checked against
    (`--check-tiny` proves it against tests/fixtures/tiny/golden.safetensors);
  * the architecture tools/train_mnist.py trains;
  * a sampler: `--model M --labels 0,1,2 --cfg 3 --top-k 0 --png out.png`.

Files are read and written with numpy only (no `safetensors` package needed).
docs/ALGORITHMS.md §1 describes the same computation; everything is float32 on CPU.
"""
import argparse
import json
import math
import os
import struct
import sys
import zlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# safetensors I/O (numpy)

_NP_OF = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64,
          "U8": np.uint8, "I8": np.int8, "F64": np.float64}


def load_safetensors(path):
    """Return ({name: np.ndarray (float32 for BF16)}, metadata dict)."""
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        raw = buf[base + b:base + e]
        dt = info["dtype"]
        if dt == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(_NP_OF[dt]).newbyteorder("<"))
        out[name] = arr.reshape(info["shape"]).copy()
    return out, meta


def _to_bf16_bytes(a):
    """Round-to-nearest-even float32 -> bfloat16 bytes."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype("<u2").tobytes()


def save_safetensors(path, tensors, metadata=None, dtype="F32"):
    """tensors: ordered {name: np.ndarray}; float arrays are stored as `dtype` (F32|BF16),
    integer arrays as I32."""
    header = {}
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    blobs = []
    off = 0
    for name, a in tensors.items():
        a = np.asarray(a)
        if a.dtype.kind in "iu":
            raw = np.ascontiguousarray(a, dtype="<i4").tobytes()
            dt = "I32"
        elif dtype == "BF16":
            raw = _to_bf16_bytes(a)
            dt = "BF16"
        else:
            raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
            dt = "F32"
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:  # the loader checks it (docs/MODEL_FORMAT.md)
        crc = 0
        for b in blobs:
            crc = zlib.crc32(b, crc)
        header["__metadata__"]["data_crc32"] = "%08x" % crc
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# VQ-VAE decoder side (vae.*)

def GN(c):
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = GN(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = GN(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.C = c
        self.norm = GN(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W)
        q, k, v = qkv.unbind(1)                       # B, C, N
        w = torch.bmm(q.transpose(1, 2), k).mul_(C ** -0.5)   # B, Nq, Nk
        w = F.softmax(w, dim=2)
        h = torch.bmm(v, w.transpose(1, 2))           # B, C, Nq
        return x + self.proj_out(h.reshape(B, C, H, W))


class Upsample2x(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, out_ch=3):
        super().__init__()
        nl = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResBlock(block_in, block_in)
        ups = [None] * nl
        for lvl in reversed(range(nl)):
            up = nn.Module()
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            block_out = ch * ch_mult[lvl]
            for _ in range(num_res_blocks + 1):
                up.block.append(ResBlock(block_in, block_out))
                block_in = block_out
                if lvl == nl - 1:
                    up.attn.append(AttnBlock(block_in))
            if lvl != 0:
                up.upsample = Upsample2x(block_in)
            ups[lvl] = up
        self.up = nn.ModuleList(ups)
        self.norm_out = GN(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for lvl in reversed(range(len(self.up))):
            up = self.up[lvl]
            for j, blk in enumerate(up.block):
                h = blk(h)
                if len(up.attn) > 0:
                    h = up.attn[j](h)
            if lvl != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class QuantResi(nn.Module):
    """`share_quant_resi` Phi convolutions; Phi_k(h) = (1-r) h + r conv_k(h)."""

    def __init__(self, cvae, k, ratio):
        super().__init__()
        self.qresi_ls = nn.ModuleList([nn.Conv2d(cvae, cvae, 3, 1, 1) for _ in range(k)])
        self.ratio = abs(ratio)
        self.ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)

    def index(self, si, S):
        at = si / (S - 1)
        return int(np.argmin(np.abs(self.ticks - at)))

    def forward(self, h, si, S):
        conv = self.qresi_ls[self.index(si, S)]
        return h.mul(1 - self.ratio) + conv(h).mul_(self.ratio)


class Quantizer(nn.Module):
    def __init__(self, vocab, cvae, share_quant_resi, quant_resi, patch_nums):
        super().__init__()
        self.embedding = nn.Embedding(vocab, cvae)
        self.quant_resi = QuantResi(cvae, share_quant_resi, quant_resi)
        self.patch_nums = tuple(patch_nums)
        self.cvae = cvae

    # -- inference: tokens of scale si -> f_hat update, next input
    def next_input(self, si, f_hat, idx_Bl):
        pn = self.patch_nums
        S = len(pn)
        P = pn[-1]
        B = idx_Bl.shape[0]
        h = self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.cvae, pn[si], pn[si])
        if si != S - 1:
            h = F.interpolate(h, size=(P, P), mode="bicubic", align_corners=False)
        f_hat = f_hat + self.quant_resi(h, si, S)
        if si != S - 1:
            return f_hat, F.interpolate(f_hat, size=(pn[si + 1], pn[si + 1]), mode="area")
        return f_hat, f_hat

    def tokens_to_fhat(self, idx_list):
        """idx_list: per scale (B, p_s^2) long tensors -> f_hat (B, Cvae, P, P)."""
        P = self.patch_nums[-1]
        B = idx_list[0].shape[0]
        f_hat = torch.zeros(B, self.cvae, P, P)
        for si, idx in enumerate(idx_list):
            f_hat, _ = self.next_input(si, f_hat, idx)
        return f_hat

    def teacher_inputs(self, idx_list):
        """VAR teacher forcing: (B, L - 1, Cvae) inputs of scales 1..S-1."""
        pn = self.patch_nums
        P = pn[-1]
        B = idx_list[0].shape[0]
        f_hat = torch.zeros(B, self.cvae, P, P)
        outs = []
        for si in range(len(pn) - 1):
            f_hat, nxt = self.next_input(si, f_hat, idx_list[si])
            outs.append(nxt.reshape(B, self.cvae, -1).transpose(1, 2))
        return torch.cat(outs, dim=1)

    # -- training: encoder features -> multi-scale residual quantisation
    def quantize(self, f, beta=0.25, rests=None):
        """f: (B, Cvae, P, P) encoder output. Returns (f_hat straight-through, vq_loss, idx list,
        f_hat). Follows VAR's VectorQuantizer2 (no z-norm). If `rests` is a list, the residual
        vectors each scale quantised are appended to it (for dead-code restarts)."""
        pn = self.patch_nums
        S = len(pn)
        B, C, H, W = f.shape
        f_ng = f.detach()
        f_rest = f_ng.clone()
        f_hat = torch.zeros_like(f_ng)
        loss = 0.0
        idx_list = []
        E = self.embedding.weight
        for si, p in enumerate(pn):
            if si != S - 1:
                rest = F.interpolate(f_rest, size=(p, p), mode="area")
            else:
                rest = f_rest
            rest_NC = rest.permute(0, 2, 3, 1).reshape(-1, C)
            if rests is not None:
                rests.append(rest_NC.detach())
            with torch.no_grad():
                d = (rest_NC.square().sum(1, keepdim=True) + E.detach().square().sum(1)
                     - 2.0 * rest_NC @ E.detach().t())
                idx = d.argmin(1)
            idx_list.append(idx.view(B, p * p))
            h = self.embedding(idx.view(B, p, p)).permute(0, 3, 1, 2)
            if si != S - 1:
                h = F.interpolate(h, size=(H, W), mode="bicubic", align_corners=False)
            h = self.quant_resi(h, si, S)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            loss = loss + beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_ng)
        loss = loss / S
        f_st = (f_hat.detach() - f_ng) + f
        return f_st, loss, idx_list, f_hat


class VAEDec(nn.Module):
    """vae.* : quantize, post_quant_conv, decoder."""

    def __init__(self, cfg):
        super().__init__()
        cvae = cfg["z_channels"]
        self.quantize = Quantizer(cfg["vocab_size"], cvae, cfg["share_quant_resi"],
                                  cfg["quant_resi"], cfg["patch_nums"])
        self.post_quant_conv = nn.Conv2d(cvae, cvae, 3, 1, 1)
        self.decoder = Decoder(cfg["vae_ch"], cfg["vae_ch_mult"], cfg["vae_num_res_blocks"], cvae)

    def fhat_to_img(self, f_hat):
        """[-1, 1] image (clamped)."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)


# ----------------------------------------------------------------------------------------------
# VAR transformer (var.*)

class SelfAttn(nn.Module):
    def __init__(self, C, H, l2norm=True):
        super().__init__()
        self.C, self.H, self.hd = C, H, C // H
        self.l2norm = l2norm
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C), persistent=False)
        if l2norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100.0)
        else:
            self.scale = 0.25 / math.sqrt(self.hd)
        self.proj = nn.Linear(C, C)
        self.cache = None   # (k, v) when caching; None = off
        self.caching = False

    def forward(self, x, attn_bias=None):
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.H, self.hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)   # B H L hd
        if self.l2norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp())
            k = F.normalize(k, dim=-1)
        if self.caching:
            if self.cache is None:
                self.cache = (k, v)
            else:
                k = torch.cat((self.cache[0], k), dim=2)
                v = torch.cat((self.cache[1], v), dim=2)
                self.cache = (k, v)
        att = q.mul(self.scale) @ k.transpose(-2, -1)
        if attn_bias is not None:
            att = att + attn_bias
        o = att.softmax(dim=-1) @ v
        return self.proj(o.transpose(1, 2).reshape(B, L, C))


class FFN(nn.Module):
    def __init__(self, C, hidden):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden)
        self.fc2 = nn.Linear(hidden, C)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, C, H, mlp_ratio, norm_eps, l2norm):
        super().__init__()
        self.C = C
        self.ln = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.attn = SelfAttn(C, H, l2norm)
        self.ffn = FFN(C, round(C * mlp_ratio))
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x, cond, attn_bias=None):
        g1, g2, s1, s2, b1, b2 = self.ada_lin(cond).view(-1, 1, 6, self.C).unbind(2)
        x = x + self.attn(self.ln(x).mul(s1 + 1).add(b1), attn_bias).mul(g1)
        x = x + self.ffn(self.ln(x).mul(s2 + 1).add(b2)).mul(g2)
        return x


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C, norm_eps):
        super().__init__()
        self.C = C
        self.ln = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x, cond):
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.C).unbind(2)
        return self.ln(x).mul(scale + 1).add(shift)


class VAR(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg.get("shared_aln", False):
            raise NotImplementedError("shared_aln models are not supported by this reference")
        C = cfg["embed_dim"]
        self.C = C
        self.num_classes = cfg["num_classes"]
        self.patch_nums = tuple(cfg["patch_nums"])
        self.L = sum(p * p for p in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        cvae = cfg["z_channels"]
        self.class_emb = nn.Embedding(self.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.L, C))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        self.word_embed = nn.Linear(cvae, C)
        self.blocks = nn.ModuleList([
            Block(C, cfg["num_heads"], cfg["mlp_ratio"], cfg["norm_eps"], cfg["attn_l2_norm"])
            for _ in range(cfg["depth"])])
        self.head_nm = AdaLNBeforeHead(C, cfg["norm_eps"])
        self.head = nn.Linear(C, cfg["vocab_size"])
        lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(self.patch_nums)])
        self.register_buffer("lvl_1L", lvl.view(1, -1), persistent=False)
        # block-causal mask: token i sees token j iff scale(j) <= scale(i)
        mask = torch.where(lvl.view(-1, 1) >= lvl.view(1, -1), 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", mask.view(1, 1, self.L, self.L), persistent=False)

    def logits(self, x, cond):
        return self.head(self.head_nm(x, cond))

    def forward(self, label_B, x_BLCv):
        """Teacher forcing. x_BLCv: (B, L-first_l, Cvae) inputs of scales 1..S-1."""
        B = label_B.shape[0]
        cond = self.class_emb(label_B)
        sos = cond.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, -1, -1)
        x = torch.cat((sos, self.word_embed(x_BLCv)), dim=1)
        x = x + (self.lvl_embed(self.lvl_1L) + self.pos_1LC)
        for b in self.blocks:
            x = b(x, cond, self.attn_bias_for_masking)
        return self.logits(x, cond)


# ----------------------------------------------------------------------------------------------
# Loading a varserve file

def build_from_file(path):
    t, meta = load_safetensors(path)
    if meta.get("format") != "varserve-model":
        raise ValueError("not a varserve model: %r" % meta.get("format"))
    cfg = json.loads(meta["config"])
    var = VAR(cfg)
    vae = VAEDec(cfg)
    for prefix, mod in (("var.", var), ("vae.", vae)):
        sd = {k[len(prefix):]: torch.from_numpy(np.asarray(v, dtype=np.float32))
              for k, v in t.items() if k.startswith(prefix)}
        mod.load_state_dict(sd, strict=True)
    var.eval()
    vae.eval()
    return var, vae, cfg


def export_state(var, vae):
    """Ordered {name: np.float32} in the varserve naming."""
    out = {}
    for prefix, mod in (("var.", var), ("vae.", vae)):
        for k, v in mod.state_dict().items():
            out[prefix + k] = v.detach().cpu().numpy().astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------
# Sampling (VAR autoregressive_infer_cfg semantics)

def sample_tokens(logits, top_k, top_p, gen):
    """logits: (B, l, V) guided logits. top_k 1 = greedy (argmax)."""
    B, l, V = logits.shape
    if top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits.clone()
    if top_k > 0:
        thr = logits.topk(top_k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < thr, -torch.inf)
    if top_p > 0:
        sl, si = logits.sort(dim=-1, descending=False)
        rm = sl.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        rm[..., -1:] = False
        logits.masked_fill_(rm.scatter(si.ndim - 1, si, rm), -torch.inf)
    probs = logits.softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, 1, replacement=True, generator=gen).view(B, l)


@torch.no_grad()
def generate(var, vae, labels, cfg=1.5, top_k=1, top_p=0.0, seed=0, want_logits=False):
    """Returns dict: tokens (list per scale of (B, p^2) long), f_hat, image ([0,1], B,3,H,W),
    logits (list per scale, if want_logits)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    B = labels.shape[0]
    pn = var.patch_nums
    S = len(pn)
    gen = torch.Generator().manual_seed(int(seed))
    cond = var.class_emb(torch.cat((labels, torch.full_like(labels, var.num_classes))))
    lvl_pos = var.lvl_embed(var.lvl_1L) + var.pos_1LC
    x = cond.unsqueeze(1).expand(2 * B, var.first_l, -1) + var.pos_start.expand(2 * B, -1, -1) \
        + lvl_pos[:, :var.first_l]
    for b in var.blocks:
        b.attn.caching, b.attn.cache = True, None
    q = vae.quantize
    f_hat = torch.zeros(B, q.cvae, pn[-1], pn[-1])
    cur = 0
    toks, lgs = [], []
    try:
        for si, p in enumerate(pn):
            cur += p * p
            h = x
            for b in var.blocks:
                h = b(h, cond, None)
            lg = var.logits(h, cond)
            t = cfg * si / (S - 1)
            lg = (1 + t) * lg[:B] - t * lg[B:]
            if want_logits:
                lgs.append(lg.clone())
            idx = sample_tokens(lg, top_k, top_p, gen)
            toks.append(idx)
            f_hat, nxt = q.next_input(si, f_hat, idx)
            if si != S - 1:
                nxt = nxt.reshape(B, q.cvae, -1).transpose(1, 2)
                x = var.word_embed(nxt) + lvl_pos[:, cur:cur + pn[si + 1] ** 2]
                x = x.repeat(2, 1, 1)
    finally:
        for b in var.blocks:
            b.attn.caching, b.attn.cache = False, None
    img = vae.fhat_to_img(f_hat).add(1).mul(0.5)
    return {"tokens": toks, "f_hat": f_hat, "image": img, "logits": lgs}


@torch.no_grad()
def decode_tokens(vae, idx_list):
    f_hat = vae.quantize.tokens_to_fhat([torch.as_tensor(i, dtype=torch.long) for i in idx_list])
    return vae.fhat_to_img(f_hat).add(1).mul(0.5)


# ----------------------------------------------------------------------------------------------
# PNG grid (zlib only)

def save_png(path, img):
    """img: uint8 (H, W) or (H, W, 3)."""
    import zlib
    img = np.asarray(img, dtype=np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    H, W, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(H))

    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def grid(images, ncol, scale=1, pad=2):
    """images: (N, 3, H, W) float [0,1] -> uint8 grid (rows of ncol)."""
    a = np.asarray(images)
    N, C, H, W = a.shape
    nrow = (N + ncol - 1) // ncol
    out = np.full((nrow * (H + pad) + pad, ncol * (W + pad) + pad, 3), 128, np.uint8)
    for i in range(N):
        r, c = divmod(i, ncol)
        tile = np.round(np.clip(a[i], 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
        out[pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = tile
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    return out


# ----------------------------------------------------------------------------------------------
# Tiny-fixture parity check

def check_tiny(model_path, golden_path):
    var, vae, cfg = build_from_file(model_path)
    g, gm = load_safetensors(golden_path)
    labels = g["labels"].astype(np.int64)
    cfgv = float(gm.get("cfg", 1.5))
    top_k = int(gm.get("top_k", 1))
    top_p = float(gm.get("top_p", 0))
    r = generate(var, vae, labels, cfg=cfgv, top_k=top_k, top_p=top_p, want_logits=True)
    ok = True
    for si in range(len(cfg["patch_nums"])):
        mine = r["tokens"][si].numpy()
        ref = g["tokens.%d" % si]
        same = np.array_equal(mine, ref)
        msg = "tokens.%d %s" % (si, "ok" if same else "MISMATCH (%d of %d)" % ((mine != ref).sum(), ref.size))
        if "logits.%d" % si in g:
            d = np.abs(r["logits"][si].numpy() - g["logits.%d" % si]).max()
            msg += "  logits max|d| %.2e" % d
            ok &= d < 1e-3
        print(msg)
        ok &= same
    d_f = np.abs(r["f_hat"].numpy() - g["f_hat"]).max()
    d_i = np.abs(r["image"].numpy() - g["image"]).max()
    print("f_hat max|d| %.2e   image max|d| %.2e" % (d_f, d_i))
    ok &= d_f < 1e-4 and d_i < 1e-4
    vt = [torch.from_numpy(g["vae_tokens.%d" % s].astype(np.int64)) for s in range(len(cfg["patch_nums"]))]
    d_v = np.abs(decode_tokens(vae, vt).numpy() - g["vae_image"]).max()
    print("vae_image max|d| %.2e" % d_v)
    ok &= d_v < 1e-4
    print("PARITY", "OK" if ok else "FAILED")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-tiny", action="store_true", help="parity against tests/fixtures/tiny")
    ap.add_argument("--model", default=None)
    ap.add_argument("--labels", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--n", type=int, default=1, help="samples per label (seeds seed..seed+n-1)")
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", default=None)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.check_tiny:
        here = os.path.dirname(os.path.abspath(__file__))
        fx = os.path.join(here, "..", "tests", "fixtures", "tiny")
        ok = check_tiny(os.path.join(fx, "model.safetensors"), os.path.join(fx, "golden.safetensors"))
        sys.exit(0 if ok else 1)
    if not a.model:
        ap.error("--model or --check-tiny")
    var, vae, cfg = build_from_file(a.model)
    cfgv = a.cfg if a.cfg is not None else cfg.get("default_cfg", 1.5)
    tk = a.top_k if a.top_k is not None else cfg.get("default_top_k", 0)
    tp = a.top_p if a.top_p is not None else cfg.get("default_top_p", 0.0)
    labels = [int(x) for x in a.labels.split(",")]
    rows = []
    for i in range(a.n):
        r = generate(var, vae, labels, cfg=cfgv, top_k=tk, top_p=tp, seed=a.seed + i)
        rows.append(r["image"])
        if a.n == 1 and not a.png:
            for si, t in enumerate(r["tokens"]):
                print(si, t.tolist())
    imgs = torch.cat(rows).numpy()
    if a.png:
        save_png(a.png, grid(imgs, len(labels), scale=2))
        print("wrote", a.png)


if __name__ == "__main__":
    main()
