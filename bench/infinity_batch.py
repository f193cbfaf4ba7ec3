#!/usr/bin/env python3
"""bench/infinity_batch.py — what batching buys an Infinity server: the tiny Infinity fixture (with a
random T5 encoder of its width) served with max_batch_images 1 and then B, the same N concurrent
one-image requests against each (distinct prompts and seeds), alternating for --rounds; images/s
of each and their ratio.

    /usr/bin/python3 bench/infinity_batch.py [--batch 8] [--requests 16] [--rounds 3]

VARSERVE_BIN picks the binary (default build/varserve). Prints one line per run and the medians."""
import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from st_py import write_random_t5  # noqa: E402
from tally import Server  # noqa: E402

BIN = os.environ.get("VARSERVE_BIN", os.path.join(ROOT, "build/varserve"))
INF = os.path.join(ROOT, "tests/fixtures/infinity-tiny/model.safetensors")
SPM = os.path.join(ROOT, "tests/fixtures/t5-tiny/spiece.model")


def one(base, i, codes):
    body = json.dumps({"prompt": f"picture number {i} of a quiet harbour", "seed": i, "timeout_ms": 600000}).encode()
    req = urllib.request.Request(base + "/generate", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read()
        codes.append(r.status)


def run(d, t5, batch, n):
    srv = Server(BIN, d, f"b{batch}", "--model", INF, "--t5", t5, "--spiece", SPM, "--backend", "cpu",
                 "--max-batch-images", str(batch), "--queue-size", str(max(n, 64)), "--access-log", "false")
    if srv.base is None:
        raise RuntimeError("server did not start: " + srv.text())
    codes = []
    t0 = time.monotonic()
    ths = [threading.Thread(target=one, args=(srv.base, i, codes)) for i in range(n)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    dt = time.monotonic() - t0
    srv.stop()
    if codes != [200] * n:
        raise RuntimeError(f"codes {codes}")
    return n / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t5 = os.path.join(d, "t5-256.safetensors")
        write_random_t5(t5, 256, 500)
        rates = {1: [], a.batch: []}
        for r in range(a.rounds):
            for b in (1, a.batch):
                rates[b].append(run(d, t5, b, a.requests))
                print(f"round {r + 1}: max_batch_images {b}: {rates[b][-1]:.2f} images/s ({a.requests} requests)")
        m1, mb = statistics.median(rates[1]), statistics.median(rates[a.batch])
        print(f"medians: batch 1 {m1:.2f} images/s, batch {a.batch} {mb:.2f} images/s: {mb / m1:.2f}x")


if __name__ == "__main__":
    main()
