#!/usr/bin/env python3
"""The GPU cost model of bench/README-gpu.md: FLOPs and DRAM bytes per engine step of VAR-d<depth>
at a batch of images, and the roofline time on an H100 / H200.

    tools/cost_model.py [--depth 16 30] [--batch 64]

Counting rules (what the numbers mean; they are lower bounds of work, not predictions):
  - FLOPs: 2 per multiply-add of every GEMM (qkv, proj, fc1, fc2, the per-row AdaLN linear, the
    head and its AdaLN, the word embedding) and of the attention (q·kᵀ and p·v over the row's
    cached + new tokens). Norms, softmax, sampling and elementwise work are left out (< 1%).
  - DRAM bytes, the product mode (BF16 weights and KV pages, FP32 residual stream): every weight
    matrix read once per step; every row's K and V read once per layer (and the new ones written);
    per token and layer the activations each GEMM reads and writes once in BF16 (x into qkv, qkv
    out, attention out, proj out, fc1 in/out, fc2 in/out) plus the FP32 residual stream read and
    written twice (the two gated adds) -- the traffic of a fully fused step, with no re-reads.
  - The decoder (VQ-VAE, 16x16 latent to 256x256, ch 160, mult 1,1,2,2,4, 3 blocks a level,
    attention at 16x16) once per image at the last step: its convolutions and spatial attention.
  - Peaks (dense, no sparsity): H100 SXM 989 TFLOP/s BF16, 494 TF32, 3.35 TB/s HBM3; H200 the same
    tensor cores with 4.8 TB/s HBM3e. Roofline time = max(FLOPs / peak, bytes / bandwidth).
No third-party packages: python3 alone.
"""
import argparse

PATCH = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
VOCAB, ZC, CLASSES = 4096, 32, 1000
GPUS = {"H100": (989e12, 494e12, 3.35e12), "H200": (989e12, 494e12, 4.8e12)}


def step_costs(depth, batch):
    C, F, R = 64 * depth, 4 * 64 * depth, 2 * batch  # width, MLP width, rows (CFG: 2 per image)
    rows = []
    cached = 0
    for s, p in enumerate(PATCH):
        n = p * p
        T = R * n  # tokens this step
        keys = cached + n  # a row attends to its cached tokens and the scale's new ones
        gemm = T * depth * 2 * (3 * C * C + C * C + C * F + F * C)  # qkv, proj, fc1, fc2
        gemm += R * depth * 2 * C * 6 * C  # AdaLN linear, per row
        gemm += T * 2 * C * VOCAB + R * 2 * C * 2 * C  # head, head AdaLN
        gemm += T * 2 * ZC * C if s > 0 else 0  # word embedding
        attn = R * depth * 2 * (2 * n * keys * C)  # q·kᵀ and p·v, all heads
        weights = 2 * (depth * (12 * C * C + 6 * C * C) + C * VOCAB + 2 * C * C + ZC * C)
        kv = R * depth * 2 * C * 2 * keys  # K and V in BF16: read the cached, write the new
        act = T * depth * (2 * (C + 3 * C + C + C + C + F + F + C) + 4 * 4 * C)
        act += T * (2 * C + 4 * VOCAB)  # head input, FP32 logits out
        rows.append((s, n, T, keys, gemm, attn, weights + kv + act, weights, kv, act))
        cached += n
    return rows


def decoder_costs():
    """FLOPs and (BF16-activation) bytes of one image's decode."""
    ch, mult, nb = 160, [1, 1, 2, 2, 4], 3
    flops = bytes_ = 0

    def conv(cin, cout, k, hw):
        nonlocal flops, bytes_
        flops += 2 * cin * cout * k * k * hw
        bytes_ += 2 * (cin + cout) * hw + 4 * cin * cout * k * k

    def attn(c, hw):
        nonlocal flops, bytes_
        conv(c, 3 * c, 1, hw)
        flops += 2 * 2 * hw * hw * c
        bytes_ += 4 * hw * hw
        conv(c, c, 1, hw)

    res, top = 16, ch * mult[-1]
    conv(ZC, ZC, 1, res * res)
    conv(ZC, top, 3, res * res)
    for _ in range(2):  # mid blocks
        conv(top, top, 3, res * res)
        conv(top, top, 3, res * res)
    attn(top, res * res)
    cin = top
    for lv in range(len(mult) - 1, -1, -1):
        cout = ch * mult[lv]
        for _ in range(nb):
            conv(cin, cout, 3, res * res)
            conv(cout, cout, 3, res * res)
            if cin != cout:
                conv(cin, cout, 1, res * res)
            cin = cout
            if lv == len(mult) - 1:
                attn(cout, res * res)
        if lv:
            res *= 2
            conv(cout, cout, 3, res * res)
    conv(cin, 3, 3, res * res)
    return flops, bytes_


def main():
    ap = argparse.ArgumentParser(description="FLOPs, DRAM bytes and roofline time per VAR step")
    ap.add_argument("--depth", type=int, nargs="+", default=[16, 30])
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    dflops, dbytes = decoder_costs()
    for depth in a.depth:
        rows = step_costs(depth, a.batch)
        print(f"\n### VAR-d{depth}, batch {a.batch} ({2 * a.batch} rows), product mode (BF16)\n")
        print("| step | p² | tokens | keys/row | GEMM TFLOP | attention TFLOP | DRAM GB (weights / KV / act.) "
              "| H100 ms | H200 ms | bound |")
        print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
        tot = {g: 0.0 for g in GPUS}
        tf = tb = 0
        for s, n, T, keys, gemm, att, by, w, kv, act in rows:
            f = gemm + att
            tf += f
            tb += by
            t = {g: max(f / pk, by / bw) for g, (pk, _, bw) in GPUS.items()}
            for g in GPUS:
                tot[g] += t[g]
            bound = "compute" if f / GPUS["H100"][0] > by / GPUS["H100"][2] else "memory"
            print(f"| {s} | {n} | {T} | {keys} | {gemm / 1e12:.3f} | {att / 1e12:.3f} | "
                  f"{by / 1e9:.2f} ({w / 1e9:.2f} / {kv / 1e9:.2f} / {act / 1e9:.2f}) | "
                  f"{t['H100'] * 1e3:.2f} | {t['H200'] * 1e3:.2f} | {bound} |")
        df, db = dflops * a.batch, dbytes * a.batch
        td = {g: max(df / tf32, db / bw) for g, (_, tf32, bw) in GPUS.items()}
        print(f"| decode | | {a.batch} images | | {df / 1e12:.3f} (TF32) | | {db / 1e9:.2f} | "
              f"{td['H100'] * 1e3:.2f} | {td['H200'] * 1e3:.2f} | compute |")
        print(f"\nAll 10 steps: {tf / 1e12:.1f} TFLOP, {tb / 1e9:.1f} GB; roofline "
              f"{tot['H100'] * 1e3:.0f} ms (H100) / {tot['H200'] * 1e3:.0f} ms (H200), plus the decode "
              f"{td['H100'] * 1e3:.0f} / {td['H200'] * 1e3:.0f} ms: at most "
              f"{a.batch / (tot['H100'] + td['H100']):.0f} / {a.batch / (tot['H200'] + td['H200']):.0f} "
              f"images/s.")


if __name__ == "__main__":
    main()
