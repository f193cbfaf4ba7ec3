#!/usr/bin/env python3
"""bench/stream.py — what streamed previews cost (issue 16), side by side in one server run.

    /usr/bin/python3 bench/stream.py [--model M] [--reps 3]

Per repetition, on one idle server (CPU backend as configured by default):
  plain     one POST /generate, n 1: total seconds
  stream    the same request with stream: true, partial_images 3: seconds to the first preview
            and to the image, and the seconds the engine spent decoding its previews (the delta of
            varserve_preview_decode_seconds_sum)
  pair      two plain requests at once: the latency of the first (the batch's other request)
  pair+s    the first plain, the second streamed with 3 previews at once: the first's latency
The claim checked: pair+s − pair <= the previews' decoder time (previews slow the batch's other
requests by no more than the decoder time they add)."""
import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from tally import Server, http  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="tests/fixtures/tiny/model.safetensors")
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--bin", default="build/varserve")
args = ap.parse_args()


def preview_sum(base):
    st, raw = http("GET", base + "/metrics")
    for line in raw.decode().splitlines():
        if line.startswith("varserve_preview_decode_seconds_sum "):
            return float(line.split()[1])
    return 0.0


def plain(base, seed):
    t0 = time.monotonic()
    st, _ = http("POST", base + "/generate", {"class_label": 3, "seed": seed}, timeout=600)
    assert st == 200, st
    return time.monotonic() - t0


def streamed(port, seed):
    """(seconds to the first preview, seconds to the end)."""
    body = json.dumps({"class_label": 3, "seed": seed, "stream": True, "partial_images": 3}).encode()
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=600)
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    first, buf = None, b""
    while True:
        d = s.recv(1 << 16)
        if not d:
            break
        buf += d
        if first is None and b"event: preview" in buf:
            first = time.monotonic() - t0
    s.close()
    assert b"event: done" in buf
    return first, time.monotonic() - t0


def together(f, g):
    out = {}
    th = threading.Thread(target=lambda: out.__setitem__("g", g()))
    th.start()
    out["f"] = f()
    th.join()
    return out["f"]


d = tempfile.mkdtemp()
srv = Server(args.bin, d, "bench", "--model", args.model)
base = srv.base
port = int(base.rsplit(":", 1)[1])
plain(base, 1)  # warm-up
rows = []
for r in range(args.reps):
    a = plain(base, 10 + r)
    p0 = preview_sum(base)
    first, total = streamed(port, 10 + r)
    dec = preview_sum(base) - p0
    pair = together(lambda: plain(base, 20 + r), lambda: plain(base, 30 + r))
    p0 = preview_sum(base)
    pair_s = together(lambda: plain(base, 20 + r), lambda: streamed(port, 30 + r))
    dec2 = preview_sum(base) - p0
    rows.append((a, first, total, dec, pair, pair_s, dec2))
    print(f"rep {r}: plain {a:.3f} s | stream: first preview {first:.3f} s, image {total:.3f} s, previews "
          f"decoded in {dec:.3f} s | pair {pair:.3f} s, pair+stream {pair_s:.3f} s (+{pair_s - pair:.3f} s; "
          f"its previews {dec2:.3f} s)", flush=True)
srv.stop()
print("load average:", open("/proc/loadavg").read().split()[:3])
