#!/usr/bin/env python3
"""bench/stream.py — what streamed previews cost (issue 16), side by side in one server run.

    /usr/bin/python3 bench/stream.py [--model M] [--reps 20] [--bin build/varserve]

Per repetition, on one idle server (CPU backend as configured by default):
  plain     one POST /generate, n 1: total seconds
  stream    the same request with stream: true, partial_images 3: seconds to the first preview
            and to the image, and the seconds the engine spent decoding its previews (the delta of
            varserve_preview_decode_seconds_sum)
  pair      two plain requests at once, the second sent 20 ms after the first: the latency of
            the second (the batch's other request)
  pair+s    the same with the first streamed with 3 previews: the second's latency
pair and pair+s alternate which goes first from one repetition to the next, so a drift of the
machine's load falls on both alike. For the batch's other request two latencies are kept: the
client's (send to the whole body read) and the engine's (its arrival to its image decoded: the
response's queue + inference + decode timings, which leave out its PNG encoding and the client's
own work). Beside them, the deltas of the engine's step seconds (varserve_step_seconds_sum) and
of the PNG encoding (varserve_png_encode_seconds_sum, previews included) over each pair: how
much longer the same steps took with a stream running, and how much encoding the stream added.
And, independent of the machine's load, the CPU time (not wall time) the 3 previews add to a
request on the HTTP threads (PNG, base64, socket writes) and on the engine's threads (decoding):
the first is what the previews can take from the batch beyond their decoder time, when no core
is spare.

The claims checked, on the medians over the repetitions:
  first preview < plain                       (the first preview before an unstreamed image)
  stream image − plain <= its previews' decode (a streamed image costs its previews' decoder time)
  pair+s − pair <= the previews' decode        (previews slow the batch's other requests by no
                                               more than the decoder time they add)
The streamed client decodes the chunked body with http.client and reads with read1, keeping only
a running search for the first preview, so that its own CPU (it shares the machine with the
server) stays small."""
import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from tally import Server  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="tests/fixtures/tiny/model.safetensors")
ap.add_argument("--reps", type=int, default=20)
ap.add_argument("--bin", default="build/varserve")
args = ap.parse_args()

d = tempfile.mkdtemp()
srv = Server(args.bin, d, "bench", "--model", args.model)
if not srv.base:
    srv.stop()
    sys.exit("bench/stream.py: the server did not start:\n" + srv.text())
port = int(srv.base.rsplit(":", 1)[1])


def cpu():
    """(HTTP threads', other threads') CPU seconds so far: each server thread's time on a CPU from
    /proc (schedstat, in ns: not the wall clock, so the machine's load does not enter it). The
    HTTP threads are libmicrohttpd's (named MHD-*), the others the engine's and its pool's."""
    http_s = other = 0.0
    task = f"/proc/{srv.p.pid}/task"
    for t in os.listdir(task):
        try:
            with open(f"{task}/{t}/comm") as f:
                comm = f.read()
            with open(f"{task}/{t}/schedstat") as f:
                ns = int(f.read().split()[0])
        except OSError:
            continue  # a thread that just ended
        if comm.startswith("MHD"):
            http_s += ns / 1e9
        else:
            other += ns / 1e9
    return http_s, other


def sums():
    """{metric: value} of the sums the bench takes deltas of (step seconds over every scale)."""
    vals, _ = srv.metrics()
    out = {"step": 0.0, "preview": 0.0, "png": 0.0}
    for k, v in vals.items():
        if k.startswith("varserve_step_seconds_sum"):
            out["step"] += v
        elif k == "varserve_preview_decode_seconds_sum":
            out["preview"] = v
        elif k == "varserve_png_encode_seconds_sum":
            out["png"] = v
    return out


def delta(a, b):
    return {k: b[k] - a[k] for k in a}


def post(body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
    return c, c.getresponse()


def plain(seed):
    """(client seconds, engine seconds: arrival to its image decoded)."""
    t0 = time.monotonic()
    c, r = post({"class_label": 3, "seed": seed})
    raw = r.read()
    t = time.monotonic() - t0
    c.close()
    assert r.status == 200, (r.status, raw[:200])
    tm = json.loads(raw)["timings"]
    return t, (tm["queue_ms"] + tm["inference_ms"] + tm["decode_ms"]) / 1e3


def streamed(seed):
    """(seconds to the first preview, seconds to the end)."""
    t0 = time.monotonic()
    c, r = post({"class_label": 3, "seed": seed, "stream": True, "partial_images": 3})
    assert r.status == 200, r.status
    first, tail, done = None, b"", False
    while True:
        d = r.read1(1 << 16)
        if not d:
            break
        seen = tail + d
        if first is None and b"event: preview" in seen:
            first = time.monotonic() - t0
        done = done or b"event: done" in seen
        tail = seen[-32:]
    t = time.monotonic() - t0
    c.close()
    assert done and first is not None
    return first, t


def together(f, g):
    """g's request, then f's 20 ms later, both running at once; f's result. The order is fixed:
    sent at the same instant, which of the two the engine takes first was a race, and it moved
    f's latency by a whole decode (images finishing in one step decode in arrival order). g
    first means f runs through every one of g's previews, the case the claim is about."""
    out = {}
    th = threading.Thread(target=lambda: out.__setitem__("g", g()))
    th.start()
    time.sleep(0.02)
    out["f"] = f()
    th.join()
    return out["f"]


def measure():
    rows = []
    plain(1)  # warm-up: the first request's allocations
    streamed(2)
    for r in range(args.reps):
        c0 = cpu()
        a, _ = plain(10 + r)
        c1 = cpu()
        m0 = sums()
        first, total = streamed(10 + r)
        dec = delta(m0, sums())["preview"]
        c2 = cpu()
        # the CPU the stream's 3 previews add: the streamed request's less the plain one's
        http_add = (c2[0] - c1[0]) - (c1[0] - c0[0])
        eng_add = (c2[1] - c1[1]) - (c1[1] - c0[1])
        pr = {}
        for case in (("pair", "pair+s") if r % 2 == 0 else ("pair+s", "pair")):
            other = (lambda: plain(30 + r)) if case == "pair" else (lambda: streamed(30 + r))
            m0 = sums()
            pr[case] = (together(lambda: plain(20 + r), other), delta(m0, sums()))
        (pc, pe), pm = pr["pair"]
        (sc, se), sm = pr["pair+s"]
        row = dict(plain=a, first=first, stream=total, dec=dec, pair_c=pc, pairs_c=sc, pair_e=pe, pairs_e=se,
                   dec2=sm["preview"], dstep=sm["step"] - pm["step"], dpng=sm["png"] - pm["png"],
                   http_add=http_add, eng_add=eng_add)
        rows.append(row)
        print(f"rep {r:2d}: plain {a:.3f} | stream first {first:.3f} image {total:.3f} previews {dec:.3f} | "
              f"other request client {pc:.3f} -> {sc:.3f} (+{sc - pc:.3f}), engine {pe:.3f} -> {se:.3f} "
              f"(+{se - pe:.3f}); its previews {row['dec2']:.3f}, steps +{row['dstep']:.3f}, png +{row['dpng']:.4f} | "
              f"CPU the previews add: HTTP {http_add * 1e3:.2f} ms, engine {eng_add * 1e3:.1f} ms",
              flush=True)
    return rows


try:
    rows = measure()
finally:
    srv.stop()  # also when a request fails: no server left behind


def med(f):
    return statistics.median(f(x) for x in rows)


print(f"\nmedians over {len(rows)} reps, {args.model}:")
print(f"  plain {med(lambda x: x['plain']):.4f} s; first preview {med(lambda x: x['first']):.4f} s; "
      f"streamed image {med(lambda x: x['stream']):.4f} s; its previews {med(lambda x: x['dec']):.4f} s; "
      f"streamed − plain − previews {med(lambda x: x['stream'] - x['plain'] - x['dec']):+.4f} s")
print(f"  the batch's other request, slowed by: client {med(lambda x: x['pairs_c'] - x['pair_c']):+.4f} s, "
      f"engine {med(lambda x: x['pairs_e'] - x['pair_e']):+.4f} s; the stream's previews "
      f"{med(lambda x: x['dec2']):.4f} s")
print(f"  excess over the previews: client {med(lambda x: x['pairs_c'] - x['pair_c'] - x['dec2']):+.4f} s, "
      f"engine {med(lambda x: x['pairs_e'] - x['pair_e'] - x['dec2']):+.4f} s; steps longer by "
      f"{med(lambda x: x['dstep']):+.4f} s; PNG encoding added {med(lambda x: x['dpng']):.4f} s")
print(f"  CPU the 3 previews add (a streamed request's less a plain one's): HTTP threads "
      f"{med(lambda x: x['http_add']) * 1e3:.2f} ms, engine threads {med(lambda x: x['eng_add']) * 1e3:.1f} ms")
print("load average:", open("/proc/loadavg").read().split()[:3])
