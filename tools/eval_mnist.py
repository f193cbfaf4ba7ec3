#!/usr/bin/env python3
"""tools/eval_mnist.py — the bundled model through the C engine, scored by the digit classifier.

    /usr/bin/python3 tools/eval_mnist.py [--n 100] [--model models/mnist-var.safetensors]
        [--kv-policy P --kv-budget B] [--grid docs/samples.png]

Generates --n images per class with `varserve generate` at the model's default sampling settings
(seeds 0..10n-1), and reports: the share classified as the requested class (goal ≥ 95%), and the
within-class diversity — the mean pairwise L2 distance of generated digits over that of the real
held-out ones (goal ≥ 0.7)."""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digit_classifier as D  # noqa: E402
import train_mnist as T  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "mnist-var.safetensors"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "varserve"))
    ap.add_argument("--kv-policy", default="full")
    ap.add_argument("--kv-budget", default="0.1")
    ap.add_argument("--grid", default=None, help="write a 10x10 grid (first 10 of each class) here")
    a = ap.parse_args()
    torch.set_num_threads(2)
    clf, args = D.load()
    labels = [c for c in range(10) for _ in range(a.n)]
    with tempfile.TemporaryDirectory() as d:
        imgs = []
        for start in range(0, len(labels), 250):  # batches of 250 images per varserve run
            chunk = labels[start:start + 250]
            subprocess.run([a.bin, "generate", "--model", a.model, "--backend", "cpu",
                            "--labels", ",".join(map(str, chunk)), "--seed", str(start),
                            "--kv-policy", a.kv_policy, "--kv-budget", a.kv_budget,
                            "--out", f"{d}/g{start}"], check=True, stderr=subprocess.DEVNULL)
            imgs += [D.read_png(f"{d}/g{start}-{i}.png") for i in range(len(chunk))]
        x = torch.cat(imgs)
    lab = torch.tensor(labels)
    acc = float((torch.tensor(D.classify(clf, x)) == lab).float().mean())
    images, hl, tr, ho = T.load_split(args)
    real = (T.to_model_space(images[ho])[:, :1] + 1) / 2
    div = T.diversity(x, lab) / T.diversity(real, torch.from_numpy(hl[ho]))
    print("model %s, policy %s%s: %d images per class; classified as the requested digit %.1f%%; "
          "diversity %.2f of real held-out digits; classifier held-out accuracy %.2f%%" % (
              a.model, a.kv_policy, "" if a.kv_policy == "full" else " at " + a.kv_budget, a.n,
              100 * acc, div, 100 * D.heldout_accuracy(clf, args)))
    if a.grid:
        from PIL import Image
        g = Image.new("L", (320, 320))
        for c in range(10):
            for k in range(10):
                im = (x[c * a.n + k, 0].numpy() * 255).round().astype(np.uint8)
                g.paste(Image.fromarray(im), (32 * k, 32 * c))
        g.save(a.grid)


if __name__ == "__main__":
    main()
