#!/usr/bin/python3
"""bench/kv_fidelity.py — every KV policy's fidelity and bytes per image, side by side, at equal
budgets and at equal bytes.

    /usr/bin/python3 bench/kv_fidelity.py [--model models/mnist-var.safetensors] [--budgets 0.2,0.3,0.5]
        [--policies all] [--images 40] [--match hack] [--digits 30]

For each budget, runs `varserve fidelity` for each policy (each image with the full cache and with
the policy from the same seed: PSNR/SSIM of the 8-bit images, the share of tokens unchanged, the KV
bytes one image reserves). With --match P, each other policy is also run at the budget (on a grid
of 0.01) that reserves the most bytes not above P's at that budget, so the comparison is at equal
bytes per image where the budgets alone reserve differently. With --digits N (the bundled model
only), adds the share of N images per class that tools/digit_classifier.py reads as the requested
digit (tools/eval_mnist.py). Prints one markdown table. Needs build/varserve.
"""
import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fidelity(a, policy, budget, images):
    out = subprocess.run([a.bin, "fidelity", "--model", a.model, "--kv-policy", policy, "--kv-budget",
                          "%.2f" % budget, "--images", str(images), "--backend", "cpu", "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def digits(a, policy, budget):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval_mnist.py"), "--n", str(a.digits),
                          "--model", a.model, "--bin", a.bin, "--kv-policy", policy, "--kv-budget",
                          "%.2f" % budget], check=True, capture_output=True, text=True).stdout
    m = re.search(r"requested digit ([0-9.]+)%", out)
    return float(m.group(1)) if m else float("nan")


def matching_budget(a, policy, limit_bytes, cache):
    """The largest budget on a 0.01 grid whose bytes per image do not exceed limit_bytes."""
    best = None
    for k in range(1, 101):
        b = k / 100
        if (policy, b) not in cache:
            cache[(policy, b)] = fidelity(a, policy, b, 1)["kv_bytes_per_image"]
        if cache[(policy, b)] <= limit_bytes:
            best = b
        elif best is not None:
            break
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "mnist-var.safetensors"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "varserve"))
    ap.add_argument("--budgets", default="0.2,0.3,0.5")
    ap.add_argument("--policies", default="all", help="comma-separated, or all compressing policies")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--match", default=None, help="also compare the others at this policy's bytes")
    ap.add_argument("--digits", type=int, default=0, help="images per class for digit accuracy (0: off)")
    a = ap.parse_args()
    if a.policies == "all":
        helptext = subprocess.run([a.bin, "generate", "--help"], capture_output=True, text=True).stdout
        a.policies = ",".join(p for p in re.findall(r"^\s{2,}(\w+)\s{2,}", helptext, re.M) if p != "full")
    policies = a.policies.split(",")
    rows, sizes = [], {}
    print("| budget | policy | PSNR dB | SSIM | tokens unchanged | KV MB/image | x full |%s" %
          (" digits |" if a.digits else ""))
    print("|---:|---|---:|---:|---:|---:|---:|%s" % ("---:|" if a.digits else ""))
    for budget in [float(b) for b in a.budgets.split(",")]:
        runs = [(p, budget) for p in policies]
        if a.match:
            limit = fidelity(a, a.match, budget, 1)["kv_bytes_per_image"]
            for p in policies:
                if p == a.match:
                    continue
                b = matching_budget(a, p, limit, sizes)
                if b is not None and abs(b - budget) > 1e-9:
                    runs.append((p, b))
        for p, b in runs:
            f = fidelity(a, p, b, a.images)
            row = "| %s | %s | %.2f | %.4f | %.1f%% | %.3f | %.1fx |" % (
                "%.2f" % budget + ("" if abs(b - budget) < 1e-9 else " (bytes of %s; budget %.2f)" % (a.match, b)),
                p, f["psnr_db"], f["ssim"], 100 * f["tokens_unchanged"], f["kv_bytes_per_image"] / 1e6,
                f["kv_bytes_per_image_full"] / f["kv_bytes_per_image"])
            if a.digits:
                row += " %.1f%% |" % digits(a, p, b)
            print(row, flush=True)
            rows.append(row)
    if a.digits:
        print("full cache digits: %.1f%%" % digits(a, "full", 1.0))


if __name__ == "__main__":
    main()
