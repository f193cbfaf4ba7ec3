#!/usr/bin/env python3
"""tests/test_cli.py — the varserve command line as a user meets it: generate, inspect, bench,
calibrate, fidelity; bad arguments get one line and exit code 2. Needs only python3 (+ json).
Run by `make test` with VARSERVE_BIN=build/varserve."""
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

BIN = os.environ.get("VARSERVE_BIN", "build/varserve")
TINY = "tests/fixtures/tiny/model.safetensors"
from tally import check, finish  # noqa: E402 (tests/ is on sys.path: run as a script)


def run(*args):
    p = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


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
    check("calibrate --method magic: exit 2 naming the choices", rc == 2 and "asi or sensitivity" in err, err)
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

finish()
