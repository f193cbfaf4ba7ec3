#!/usr/bin/env python3
"""tests/test_cli.py — the varserve command line as a user meets it: generate, inspect, bench,
calibrate, fidelity; bad arguments get one line and exit code 2; every command answers --help.
bench --json and the device counters in /metrics: on this build (the CPU backend: no device), and
when build/cuda-emu/varserve exists (make CUDA=emu; VARSERVE_EMU_BIN overrides) on the CUDA
backend over the emulated device, checked from outside with the bundled model (the tiny fixture
takes a minute per image there, the bundled one 3 s). Needs only python3.
Run by `make test` with VARSERVE_BIN=build/varserve."""
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib

BIN = os.environ.get("VARSERVE_BIN", "build/varserve")
EMU = os.environ.get("VARSERVE_EMU_BIN", "build/cuda-emu/varserve")
TINY = "tests/fixtures/tiny/model.safetensors"
MNIST = "models/mnist-var.safetensors"
DEVICE_FIELDS = ["launches", "copies", "syncs", "h2d_bytes", "d2h_bytes", "kv_h2d_bytes", "kv_d2h_bytes",
                 "allocated_bytes"]
DEVICE_METRICS = {"varserve_device_kernel_launches_total": "counter",
                  "varserve_device_copies_total": "counter",
                  "varserve_device_syncs_total": "counter",
                  "varserve_device_h2d_bytes_total": "counter",
                  "varserve_device_d2h_bytes_total": "counter",
                  "varserve_device_kv_h2d_bytes_total": "counter",
                  "varserve_device_kv_d2h_bytes_total": "counter",
                  "varserve_device_allocated_bytes": "gauge",
                  "varserve_device_allocated_peak_bytes": "gauge"}
from tally import Server, check, finish, http  # noqa: E402 (tests/ is on sys.path: run as a script)
from st_py import write_random_t5  # noqa: E402


def run_bin(binary, *args):
    p = subprocess.run([binary, *args], capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def run(*args):
    return run_bin(BIN, *args)


def bench_json(binary, *args):
    """varserve bench --json: (rc, [one dict per stdout line], stderr); every line must be JSON."""
    return bench_json_env({}, binary, *args)


def bench_json_env(env, binary, *args):
    """bench_json with `env` added to the environment."""
    p = subprocess.run([binary, "bench", "--json", *args], capture_output=True, text=True,
                       timeout=600, env={**os.environ, **env})
    try:
        return p.returncode, [json.loads(l) for l in p.stdout.splitlines()], p.stderr
    except ValueError as e:
        return p.returncode, [], f"{e}: {p.stdout}"


def expected_blas_tables():
    """The OpenBLAS tables runtime/blas.h's rule allows on this CPU ([] where it keeps OpenBLAS's
    choice), from /proc/cpuinfo's flags; [] when OPENBLAS_CORETYPE is set around the test."""
    if os.environ.get("OPENBLAS_CORETYPE"):
        return []
    try:
        flags = set(re.search(r"^flags\s*:(.*)$", open("/proc/cpuinfo").read(), re.M).group(1).split())
    except (OSError, AttributeError):
        return []
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return ["SkylakeX"]
    if {"avx2", "fma"} <= flags:
        return ["Haswell", "Zen"]
    return []


def model_facts(binary, model):
    """(tokens per image, engine steps, the lower bound of 'weights in memory' in bytes)."""
    _, out, _ = run_bin(binary, "inspect", model)
    tokens = int(re.search(r"\((\d+) tokens\)", out).group(1))
    steps = len(re.search(r"scales:\s+([\d,]+)", out).group(1).split(","))
    weights = (float(re.search(r"weights in memory: ([\d.]+) MB", out).group(1)) - 0.005) * 1e6
    return tokens, steps, weights


def check_device_metric_lines(label, body):
    for name, kind in DEVICE_METRICS.items():
        check(f"{label}: {name} has HELP and TYPE {kind}",
              f"# HELP {name} " in body and f"# TYPE {name} {kind}\n" in body, body[-2000:])


def png_size(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    return w, h, depth, ctype


with tempfile.TemporaryDirectory() as d:
    # generate: PNGs, tokens JSON in the documented shape, seeds S+i
    rc, out, err = run("generate", "--model", TINY, "--labels", "3,7", "--seed", "5", "--backend",
                       "cpu", "--out", f"{d}/img", "--tokens-out", f"{d}/t.json")
    check("generate exits 0", rc == 0, err)
    for i in range(2):
        check(f"png {i}", os.path.exists(f"{d}/img-{i}.png") and
              png_size(f"{d}/img-{i}.png") == (256, 256, 8, 2))
    t = json.load(open(f"{d}/t.json"))
    imgs = t["images"]
    check("tokens json: two images", len(imgs) == 2)
    check("tokens json: labels and seeds", [(x["label"], x["seed"]) for x in imgs] == [(3, 5), (7, 6)])
    check("tokens json: one list per scale of p^2 tokens",
          [len(s) for s in imgs[0]["tokens"]] == [p * p for p in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)])
    # the second image alone with its own seed is the same image
    rc, _, err = run("generate", "--model", TINY, "--labels", "7", "--seed", "6", "--backend", "cpu",
                     "--out", f"{d}/alone", "--tokens-out", f"{d}/a.json")
    a = json.load(open(f"{d}/a.json"))["images"][0]
    check("image 1 of a batch equals it alone", a["tokens"] == imgs[1]["tokens"])
    check("same PNG bytes", open(f"{d}/alone-0.png", "rb").read() == open(f"{d}/img-1.png", "rb").read())

    # bad arguments: one line on stderr, exit 2
    for args, word in [(["--labels", "3", "--cfg", "x"], "--cfg"),
                       (["--labels", "3", "--top-p", "2"], "--top-p"),
                       (["--labels", "3", "--bogus", "1"], "--bogus"),
                       (["--labels", "42"], "42"),
                       (["--labels", "3,,4"], "--labels"),
                       (["--labels", "3", "--kv-policy", "h2o"], "--kv-policy"),
                       (["--labels", "3", "--kv-budget", "0"], "--kv-budget"),
                       (["--labels", "3"], "--out")]:
        rc, out, err = run("generate", "--model", TINY, "--backend", "cpu", *args,
                           *([] if "--out" == word else ["--out", f"{d}/x"]))
        lines = [l for l in err.splitlines() if "INFO" not in l]
        check(f"bad {args}: exit 2", rc == 2, f"rc {rc} {err}")
        check(f"bad {args}: one line naming {word}", len(lines) == 1 and word in lines[0], err)
    rc, _, err = run("generate", "--model", f"{d}/missing.safetensors", "--labels", "1", "--out", f"{d}/x")
    check("missing model: exit 1 and the path", rc == 1 and "missing.safetensors" in err, err)
    rc, _, err = run("frobnicate")
    check("unknown command: exit 2", rc == 2 and "frobnicate" in err)

    # inspect
    rc, out, err = run("inspect", TINY)
    check("inspect exits 0", rc == 0, err)
    check("inspect: parameters, image size, kv bytes",
          "4051463" in out and "256x256" in out and "2.79 MB" in out, out)

    # the library's other families: inspect summarises them, the VAR commands refuse them by name
    rc, out, err = run("inspect", "tests/fixtures/infinity-tiny/model.safetensors")
    check("inspect an Infinity model: family, depth, scales, bits",
          rc == 0 and "Infinity" in out and "depth 3" in out and "521 tokens of 32 bits" in out, out + err)
    rc, out, err = run("inspect", "tests/fixtures/t5-tiny/model.safetensors")
    check("inspect a T5 encoder: family and shape",
          rc == 0 and "T5 text encoder" in out and "2 layers, width 64" in out, out + err)
    rc, out, err = run("generate", "--model", "tests/fixtures/infinity-tiny/model.safetensors", "--labels", "1",
                       "--out", f"{d}/inf.png")
    check("generate --labels with an Infinity model: exit 2, it takes --prompt",
          rc == 2 and "is an Infinity model: it takes --prompt" in err, (rc, err))
    rc, out, err = run("bench", "--model", "tests/fixtures/infinity-tiny/model.safetensors", "--batch", "1")
    check("bench with an Infinity model: refused naming the family",
          rc != 0 and "is an Infinity model, not a VAR one" in err, (rc, err))

    # an Infinity model generates from prompts (the library's FP32 host path), with an encoder of
    # its text width (a random one here: the fixtures' T5 is 64 wide, the Infinity fixture reads 256)
    INF, SPM = "tests/fixtures/infinity-tiny/model.safetensors", "tests/fixtures/t5-tiny/spiece.model"
    t5 = f"{d}/t5-256.safetensors"
    write_random_t5(t5, 256, 500)
    args = ["generate", "--model", INF, "--t5", t5, "--spiece", SPM, "--prompt", "a photo of a cat",
            "--prompt", "an oil painting of the moon", "--seed", "5", "--out"]
    rc, out, err = run(*args, f"{d}/inf-a")
    rc2, _, err2 = run(*args, f"{d}/inf-b")
    check("generate with an Infinity model: two 256x256 PNGs", rc == 0 and rc2 == 0 and
          png_size(f"{d}/inf-a-0.png")[:2] == (256, 256) and png_size(f"{d}/inf-a-1.png")[:2] == (256, 256), err + err2)
    same = open(f"{d}/inf-a-0.png", "rb").read() == open(f"{d}/inf-b-0.png", "rb").read()
    check("Infinity generation: the same prompt and seed give the same PNG bytes", rc == 0 and same)
    check("Infinity generation: two prompts give two images",
          rc == 0 and open(f"{d}/inf-a-0.png", "rb").read() != open(f"{d}/inf-a-1.png", "rb").read())
    rc, _, err = run("generate", "--model", INF, "--spiece", SPM, "--prompt", "a cat", "--out", f"{d}/x")
    check("Infinity without --t5: exit 2 naming --t5", rc == 2 and "--t5" in err, (rc, err))
    rc, _, err = run("generate", "--model", INF, "--t5", "tests/fixtures/t5-tiny/model.safetensors",
                     "--spiece", SPM, "--prompt", "a cat", "--out", f"{d}/x")
    check("Infinity with an encoder of another width: exit 2 naming both widths",
          rc == 2 and "64-wide" in err and "reads 256" in err, (rc, err))
    rc, _, err = run("generate", "--model", TINY, "--labels", "1", "--prompt", "a cat", "--out", f"{d}/x")
    check("--prompt with a VAR model: exit 2, use --labels", rc == 2 and "--labels" in err, (rc, err))

    # bench prints every policy's capacity and the images/s table
    rc, out, err = run("bench", "--model", TINY, "--batch", "1", "--reps", "1", "--backend", "cpu")
    check("bench exits 0", rc == 0, err)
    check("bench: table and policies", "images/s" in out and "scalekv" in out and "peak RSS" in out, out)

    # calibrate writes a budget file that scalekv then reads
    model = f"{d}/m.safetensors"
    os.symlink(os.path.abspath(TINY), model)
    rc, out, err = run("calibrate", "--model", model, "--images", "1")
    check("calibrate exits 0", rc == 0, err)
    b = json.load(open(f"{d}/m.budgets.json"))
    check("budget file: format, depth, one entry per scale after the first",
          b["format"] == "varserve-scalekv-budget" and b["depth"] == 2 and len(b["scales"]) == 9, b)
    check("budget file: one drafter per scale", all(len(s["drafters"]) == 1 for s in b["scales"]))
    check("budget file: the ASI method", b["method"] == "asi", b)
    rc, out, err = run("calibrate", "--model", model, "--images", "1", "--method", "sensitivity",
                       "--out", f"{d}/sens.json")
    check("calibrate --method sensitivity exits 0", rc == 0, err)
    sb = json.load(open(f"{d}/sens.json"))
    dmg = sb["damage"]
    check("sensitivity: a damage per layer, some tokens change when a layer keeps only the window",
          sb["method"] == "sensitivity" and len(dmg) == 2 and all(0 <= x <= 1 for x in dmg) and max(dmg) > 0, sb)
    check("sensitivity: the most damaged layer drafts at every scale",
          all(s["drafters"] == [dmg.index(max(dmg))] for s in sb["scales"]), sb)
    rc, _, err = run("calibrate", "--model", model, "--method", "magic")
    check("calibrate --method magic: exit 2 naming the choices", rc == 2 and "asi, sensitivity or hack" in err, err)

    # calibrate --method hack writes the head map next to the model, and hack then reads it
    rc, out, err = run("calibrate", "--model", model, "--images", "2", "--method", "hack")
    check("calibrate --method hack exits 0", rc == 0, err)
    hm = json.load(open(f"{d}/m.hack.json"))
    vert = [v for row in hm["unevenness"] for v in row]
    check("head map: format, one string of C/S per layer, an unevenness in [0, 1] per head",
          hm["format"] == "varserve-hack-heads" and hm["depth"] == 2 and hm["heads"] == 2 and
          len(hm["map"]) == 2 and all(len(m) == 2 and set(m) <= {"C", "S"} for m in hm["map"]) and
          len(vert) == 4 and all(0 <= v <= 1 for v in vert), hm)
    letters = "".join(hm["map"])
    check("head map: C exactly where the unevenness is above the threshold",
          all((c == "C") == (v > hm["threshold"]) for c, v in zip(letters, vert)), hm)
    check("head map: the contextual share in [0.25, 1]", 0.25 <= hm["contextual_share"] <= 1, hm)
    check("head map: Otsu's split leaves both kinds when the heads differ",
          "C" in letters and "S" in letters if max(vert) - min(vert) > 1e-3 else True, hm)
    rc, out, err = run("fidelity", "--model", model, "--kv-policy", "hack", "--kv-budget", "0.3",
                       "--images", "1", "--json")
    check("fidelity under hack exits 0", rc == 0, err)
    f = json.loads(out)
    check("hack reads the model's head map", f["budget_source"].endswith("m.hack.json"), f)
    check("hack: fewer KV bytes than the full cache",
          0 < f["kv_bytes_per_image"] < f["kv_bytes_per_image_full"], f)
    rc, out, err = run("fidelity", "--model", model, "--kv-policy", "scalekv", "--kv-budget", "0.2",
                       "--images", "1", "--json")
    check("fidelity exits 0", rc == 0, err)
    f = json.loads(out)
    check("fidelity reads the model's budget file", f["budget_source"].endswith("m.budgets.json"), f)
    check("fidelity: sane numbers", 0 < f["psnr_db"] <= 100 and -1 <= f["ssim"] <= 1 and
          0 < f["kv_bytes_per_image"] < f["kv_bytes_per_image_full"], f)
    rc, out, err = run("fidelity", "--model", TINY, "--kv-policy", "full", "--images", "1", "--json")
    f = json.loads(out)
    check("full against full is identical", f["identical_images"] == 1 and f["tokens_unchanged"] == 1, f)

    # every command answers --help: usage on stdout, exit 0; varserve --help lists them all
    rc, top, err = run("--help")
    for cmd in ["generate", "bench", "calibrate", "fidelity", "inspect", "serve"]:
        rc, out, err = run(cmd, "--help")
        check(f"{cmd} --help: exit 0, its usage on stdout",
              rc == 0 and out.startswith(f"usage: varserve {cmd} "), f"rc {rc} {out[:300]} {err[:300]}")
        check(f"varserve --help lists {cmd}", f"\n  {cmd} " in top, top)
    rc, out, err = run("bench", "--model", TINY, "-h")
    check("bench -h after other options is help too", rc == 0 and out.startswith("usage: varserve bench"), err)

    # bench --json on the CPU backend: one object per batch size, the table's numbers, no device
    tokens, steps, weights = model_facts(BIN, TINY)
    rc, lines, err = bench_json(BIN, "--model", TINY, "--batch", "1,2", "--reps", "1", "--backend", "cpu")
    check("bench --json (cpu): exit 0, one JSON line per batch size",
          rc == 0 and [l.get("batch") for l in lines] == [1, 2], f"rc {rc} {lines} {err}")
    for l in lines:
        b = l["batch"]
        keys = ["model", "backend", "kv_policy", "reps", "steps", "images_per_s", "transformer_s",
                "of_which_kv_s", "decoder_s", "total_s", "peak_rss_mb", "device"]
        check(f"bench --json (cpu) batch {b}: every field", all(k in l for k in keys), l)
        check(f"bench --json (cpu) batch {b}: device null on a backend without counters",
              l.get("device", 0) is None and l.get("decoder_device", 0) is None and
              l.get("backend") == "cpu", l)
        check(f"bench --json (cpu) batch {b}: sane numbers",
              l["steps"] == steps and l["reps"] == 1 and l["kv_policy"] == "full" and
              l["transformer_s"] > 0 and l["decoder_s"] > 0 and 0 <= l["of_which_kv_s"] <= l["transformer_s"] and
              abs(l["total_s"] - l["transformer_s"] - l["decoder_s"]) <= 1e-9 * l["total_s"] and
              abs(l["images_per_s"] * l["total_s"] - b) <= 1e-9 * b, l)

    # OpenBLAS's kernel table (runtime/blas.h): SkylakeX on every AVX-512 CPU, Haswell's or Zen's on
    # AVX2 without AVX-512, whatever OpenBLAS chose itself; a user's OPENBLAS_CORETYPE is kept
    want = expected_blas_tables()
    blas = lines[0].get("blas", "") if lines else ""
    check("bench --json (cpu): blas names OpenBLAS and its kernel table",
          re.match(r"OpenBLAS \d+\.\d+\.\d+, \w+ kernels \(", blas) is not None, lines[:1])
    if want:
        check(f"bench --json (cpu): the GEMMs run on {' or '.join(want)} kernels",
              any(f", {t} kernels (" in blas for t in want), blas)
        rc, user, err = bench_json_env({"OPENBLAS_CORETYPE": "Haswell"}, BIN, "--model", TINY,
                                       "--batch", "1", "--reps", "1", "--backend", "cpu")
        ub = user[0].get("blas", "") if user else ""
        check("bench --json (cpu): a user's OPENBLAS_CORETYPE=Haswell is kept and named",
              rc == 0 and ", Haswell kernels (OPENBLAS_CORETYPE=Haswell)" in ub, f"{ub} {err}")

    # /metrics on the CPU backend: the device series exist and are 0 (it launches nothing)
    srv = Server(BIN, d, "cpu", "--model", TINY, "--backend", "cpu")
    if check("cpu server answers /ready", srv.base is not None, srv.text()):
        st, body = http("GET", srv.base + "/info")[:2]
        info_blas = json.loads(body).get("backend", {}).get("blas", "") if st == 200 else ""
        check("cpu /info: backend.blas is bench's line", st == 200 and info_blas == blas, info_blas)
        vals, body = srv.metrics()
        check_device_metric_lines("cpu /metrics", body)
        check("cpu /metrics: every device counter is 0",
              all(vals.get(n) == 0 for n in DEVICE_METRICS), {n: vals.get(n) for n in DEVICE_METRICS})
    check("cpu server exits 0 on SIGTERM", srv.stop() == 0, srv.text())

    # The CUDA backend on the emulated device: the counters from outside (bundled model; FP32 so
    # that the device memory holds the weights once)
    if not os.path.exists(EMU):
        print(f"skip the emulated-device checks: no {EMU} (make CUDA=emu)")
    else:
        tokens, steps, weights = model_facts(EMU, MNIST)
        emu = ["--model", MNIST, "--backend", "cuda", "--precision", "fp32", "--reps", "1"]
        t0 = time.monotonic()
        runs = [bench_json(EMU, *emu, "--batch", "1") for _ in range(2)]
        rc, lines, err = runs[0]
        ok = check("emu bench --json: exit 0, one line", rc == 0 and len(lines) == 1, f"rc {rc} {err[-2000:]}")
        dv = lines[0].get("device") if ok else None
        full_syncs = None
        if check("emu bench --json: device counters", isinstance(dv, dict) and
                 all(isinstance(dv.get(k), (int, float)) and dv[k] >= 0 for k in DEVICE_FIELDS), lines):
            per_step = tokens / steps  # tokens sampled per step, batch 1
            full_syncs = dv["syncs"]
            check("emu full: d2h per step >= 4 bytes per sampled token", dv["d2h_bytes"] >= 4 * per_step, dv)
            check("emu full: the sampled tokens are all a step downloads",
                  abs(dv["d2h_bytes"] - 4 * per_step) < 1e-6, dv)
            check("emu full: no KV bytes cross the bus", dv["kv_h2d_bytes"] == 0 and dv["kv_d2h_bytes"] == 0, dv)
            check("emu: at least one host wait and launches every step", dv["syncs"] >= 1 and dv["launches"] >= 1, dv)
            check("emu: each step uploads its tables", dv["h2d_bytes"] > 0, dv)
            check("emu: device memory holds at least the weights", dv["allocated_bytes"] >= weights,
                  f"{dv} weights {weights}")
            dd = lines[0].get("decoder_device")
            check("emu: the decode's device work is counted apart: launches, and the image comes back",
                  isinstance(dd, dict) and dd.get("launches", 0) > 0 and dd.get("d2h_bytes", 0) > 0 and
                  dd.get("syncs", 0) >= 1, lines[0])
            rc2, lines2, err2 = runs[1]
            dv2 = lines2[0].get("device") if rc2 == 0 and len(lines2) == 1 else None
            check("emu: two runs of the same settings count the same per step",
                  dv2 is not None and all(dv2[k] == dv[k] for k in DEVICE_FIELDS), f"{dv} {dv2} {err2[-500:]}")
        rc, lines, err = bench_json(EMU, *emu, "--batch", "2", "--kv-policy", "scalekv", "--kv-budget", "0.1")
        dv = lines[0].get("device") if rc == 0 and len(lines) == 1 else None
        if check("emu scalekv bench --json: device counters", isinstance(dv, dict), f"rc {rc} {lines} {err[-2000:]}"):
            check("emu scalekv: compression runs on the device: no KV bytes cross the bus",
                  dv["kv_h2d_bytes"] == 0 and dv["kv_d2h_bytes"] == 0, dv)
            check("emu scalekv: a step waits for the device as often as under full (2)",
                  dv["syncs"] == 2 and full_syncs == 2, f"{dv} full {full_syncs}")
            check("emu scalekv: the KV bytes are part of the copies",
                  dv["kv_h2d_bytes"] <= dv["h2d_bytes"] and dv["kv_d2h_bytes"] <= dv["d2h_bytes"], dv)
            check("emu scalekv batch 2: d2h per step >= 4 bytes per sampled token",
                  dv["d2h_bytes"] >= 4 * 2 * tokens / steps, dv)
        print(f"(emulated bench runs: {time.monotonic() - t0:.1f} s)")

        # /metrics of an emulated server: totals that grow with a request (BF16 mode, the default)
        t0 = time.monotonic()
        srv = Server(EMU, d, "emu", "--model", MNIST, "--backend", "cuda")
        if check("emu server answers /ready", srv.base is not None, srv.text()):
            m0, body = srv.metrics()
            check_device_metric_lines("emu /metrics", body)
            check("emu /metrics after load: the weights were uploaded and are held",
                  m0["varserve_device_h2d_bytes_total"] >= weights and
                  m0["varserve_device_allocated_bytes"] >= weights and
                  m0["varserve_device_allocated_peak_bytes"] >= m0["varserve_device_allocated_bytes"], m0)
            st, resp = http("POST", srv.base + "/generate", timeout=120, body=
                            {"class_label": 3, "seed": 1, "kv_policy": "scalekv", "kv_budget": 0.1})
            check("emu server generates", st == 200, resp[:500])
            m1, _ = srv.metrics()
            dm = {n: m1[n] - m0[n] for n in DEVICE_METRICS}
            check("emu /metrics: a request adds launches, waits and its sampled tokens' bytes",
                  dm["varserve_device_kernel_launches_total"] >= steps and
                  dm["varserve_device_syncs_total"] >= steps and
                  dm["varserve_device_d2h_bytes_total"] >= 4 * tokens, dm)
            check("emu /metrics: a scalekv request moves no KV pages over the bus (compression on the device)",
                  dm["varserve_device_kv_h2d_bytes_total"] == 0 and dm["varserve_device_kv_d2h_bytes_total"] == 0, dm)
        check("emu server exits 0 on SIGTERM", srv.stop() == 0, srv.text())
        print(f"(emulated server: {time.monotonic() - t0:.1f} s)")

finish()
