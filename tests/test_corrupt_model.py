#!/usr/bin/env python3
"""tests/test_corrupt_model.py — corrupted model files are refused with one line, never loaded:
header lengths off by a byte, bytes left over or missing, garbage after the header's JSON, NaN and
inf weights, a data byte flipped under a checksum, and a seeded sweep of random header bytes
(each must load or be refused with exit 1, never crash). Uses `varserve inspect`, which loads the
file exactly as `serve` does. Needs python3 (numpy for the random model).
Run by `make test` with VARSERVE_BIN=build/varserve."""
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

from tally import check, finish  # noqa: E402 (tests/ is on sys.path: run as a script)

BIN = os.environ.get("VARSERVE_BIN", "build/varserve")
MNIST = "models/mnist-var.safetensors"


def inspect(path, *flags):
    p = subprocess.run([BIN, "inspect", *flags, path], capture_output=True, text=True, errors="replace", timeout=120)
    return p.returncode, p.stdout, p.stderr


def split(blob):
    n = struct.unpack("<Q", blob[:8])[0]
    return n, blob[8:8 + n], blob[8 + n:]


def write(d, name, blob):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(blob)
    return path


def refused(d, name, blob, words):
    rc, out, err = inspect(write(d, name, blob))
    lines = err.strip().splitlines()
    check(f"{name}: refused with one line naming the fault", rc == 1 and len(lines) == 1 and
          all(w in err for w in words), f"rc {rc} {err[-400:]}")


def main():
    orig = open(MNIST, "rb").read()
    n, hdr, data = split(orig)
    h = json.loads(hdr)
    with tempfile.TemporaryDirectory() as d:
        rc, _, err = inspect(MNIST)
        check("the bundled model loads", rc == 0, err)
        refused(d, "header-one-short", struct.pack("<Q", n - 1) + orig[8:], ["left over"])
        refused(d, "header-one-long", struct.pack("<Q", n + 1) + orig[8:], ["header"])
        refused(d, "a-byte-left-over", orig + b"\0", ["left over"])
        refused(d, "a-byte-missing", orig[:-1], ["truncated"])
        padded = hdr + b"    "
        rc, _, err = inspect(write(d, "space-padding", struct.pack("<Q", len(padded)) + padded + data))
        check("a header padded with spaces loads", rc == 0, err)
        for name, pad in [("nul-after-json", b"  \0 "), ("text-after-json", b' {"x":1}'), ("tab-padding", b"\t")]:
            bad = hdr + pad
            refused(d, name, struct.pack("<Q", len(bad)) + bad + data, ["after its JSON"])
        # a hole: the last tensor ends 4 bytes before the data does, and the data is 4 bytes longer
        last = max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
        h2 = json.loads(hdr)
        b0, e0 = h2[last]["data_offsets"]
        h2[last]["data_offsets"] = [b0 + 4, e0 + 4]
        j = json.dumps(h2, separators=(",", ":")).encode()
        refused(d, "a-hole-before-a-tensor", struct.pack("<Q", len(j)) + j + data[:b0] + b"\0" * 4 + data[b0:],
                ["hole", last])
        # non-finite weights (the bundled model is F32)
        first = min((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
        at = h[first]["data_offsets"][0] + 4 * 7
        for name, bits, word in [("a-nan-weight", 0x7fc00000, "NaN"), ("an-inf-weight", 0xff800000, "-inf")]:
            bad = bytearray(orig)
            bad[8 + n + at:8 + n + at + 4] = struct.pack("<I", bits)
            refused(d, name, bytes(bad), ["non-finite", word, first, "element 7"])

        # the checksum the converters write
        rnd = os.path.join(d, "random.safetensors")
        p = subprocess.run([sys.executable, "tools/make_random_model.py", "--depth", "1", "--embed-dim", "32",
                            "--heads", "2", "--num-classes", "4", "--dtype", "f32", "--out", rnd],
                           capture_output=True, text=True, timeout=300)
        if check("make_random_model writes a model", p.returncode == 0, p.stderr[-500:]):
            rc, out, err = inspect(rnd, "--verify")
            check("inspect --verify accepts the converter's checksum", rc == 0 and "CRC-32 matches" in out,
                  f"{rc} {err}")
            blob = bytearray(open(rnd, "rb").read())
            rn, _, rdata = split(bytes(blob))
            k = 8 + rn + len(rdata) // 2
            blob[k] ^= 0x01  # a low mantissa bit: still finite, only the checksum can tell
            refused(d, "a-flipped-data-bit", bytes(blob), ["CRC-32", "corrupt"])
        rc, _, err = inspect(MNIST, "--verify")
        check("inspect --verify refuses a file without a checksum", rc == 1 and "data_crc32" in err, err)

        rng = random.Random(17)
        outcomes = {"loaded": 0, "refused": 0}
        bad = []
        for i in range(24):
            blob = bytearray(orig)
            for _ in range(rng.randint(1, 4)):
                blob[rng.randrange(0, 8 + n)] = rng.randrange(256)
            rc, _, err = inspect(write(d, "sweep.safetensors", bytes(blob)))
            if rc == 0:
                outcomes["loaded"] += 1
            elif rc == 1 and len(err.strip().splitlines()) == 1:
                outcomes["refused"] += 1
            else:
                bad.append((i, rc, err[-300:]))
        check(f"24 random header corruptions: each loads or is refused in one line ({outcomes})", not bad, bad)
    finish()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
