#!/usr/bin/env python3
"""tests/test_mnist_parity.py — the bundled model: the C engine's greedy tokens equal those of the
training code's own PyTorch inference (tools/var_ref.py), exported once into
tests/fixtures/mnist/greedy.json by tools/train_mnist.py (stage fixtures). python3 only."""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

BIN = os.environ.get("VARSERVE_BIN", "build/varserve")
g = json.load(open("tests/fixtures/mnist/greedy.json"))
from tally import check, finish  # noqa: E402 (tests/ is on sys.path: run as a script)


model = g["model"]
check("the fixture was made from the committed model",
      hashlib.sha256(open(model, "rb").read()).hexdigest() == g["model_sha256"])
with tempfile.TemporaryDirectory() as d:
    labels = ",".join(str(l) for l in g["labels"])
    p = subprocess.run([BIN, "generate", "--model", model, "--labels", labels, "--cfg", str(g["cfg"]),
                        "--top-k", "1", "--top-p", "0", "--backend", "cpu", "--out", f"{d}/x",
                        "--tokens-out", f"{d}/t.json"], capture_output=True, text=True, timeout=300)
    check("generate exits 0", p.returncode == 0, p.stderr)
    got = json.load(open(f"{d}/t.json"))["images"] if p.returncode == 0 else []
    for i, want in enumerate(g["tokens"]):
        ok = i < len(got) and got[i]["tokens"] == want
        where = ""
        if not ok and i < len(got):
            for s, (a, b) in enumerate(zip(got[i]["tokens"], want)):
                if a != b:
                    where = f"scale {s} first differs at token {next(k for k in range(len(a)) if a[k] != b[k])}"
                    break
        check(f"label {g['labels'][i]}: greedy tokens equal the training code's", ok, where)
finish()
