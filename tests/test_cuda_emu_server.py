#!/usr/bin/env python3
"""tests/test_cuda_emu_server.py — `varserve serve --backend cuda` on the emulated CUDA device
(build/cuda-emu/varserve, from `make CUDA=emu`; skipped when it is not built):

1. a lost device (VARSERVE_CUDA_EMU_FAULT_AT makes a kernel launch of the first request a sticky
   illegal-address fault): that request gets 500, then /health and /ready answer 503 with
   {"status": "device_lost", "reason": ...}, POST /generate gets 503 (code device_lost), the
   process keeps answering (/info, /metrics) and SIGTERM still exits 0;
2. kv_pool_mb on a small device (VARSERVE_CUDA_EMU_MEMORY_MB): a pool that does not fit beside
   the weights, the scratch and the margin stops start-up with exit code 1 naming kv_pool_mb and
   what fits; kv_pool_mb 0 sizes the pool to what fits, and it serves;
3. BF16 KV pages: /info of the CUDA server says dtype bf16 and, beside a CPU server (FP32 pages)
   under the same policy, the same pages per image in pages of half the bytes: half the bytes per
   image.

Run by `make test` (a few seconds). VARSERVE_EMU_BIN overrides the binary."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from tally import check, finish, http  # noqa: E402 (tests/ is on sys.path: run as a script)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("VARSERVE_EMU_BIN", os.path.join(ROOT, "build/cuda-emu/varserve"))
MODEL = "models/mnist-var.safetensors"
MARGIN_MIB = 256  # server/engine.c DEVICE_MARGIN_MIB (2% of the device is less here)

if not os.path.exists(BIN):
    print(f"test_cuda_emu_server: skipped: {BIN} is not built (make CUDA=emu)")
    print("0 passed, 0 failed, 1 skipped")
    sys.exit(0)


def http_json(method, url, body=None, timeout=60):
    """(status, parsed JSON or None)."""
    status, raw = http(method, url, body, timeout)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


class Server:
    """varserve serve on 127.0.0.1:0 with the output collected; port from its log."""

    def __init__(self, extra, env_extra, backend="cuda"):
        env = dict(os.environ, **env_extra)
        self.lines = []
        self.p = subprocess.Popen([BIN, "serve", "--backend", backend, "--model", MODEL, "--host",
                                   "127.0.0.1", "--port", "0", *extra], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                                  start_new_session=True)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        self.port = None

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self, last=30):
        return "\n".join(self.lines[-last:])

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout=60):
        """True once /ready is 200; False when it exits or the time is up."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.port is None:
                for line in list(self.lines):
                    m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                    if m:
                        self.port = int(m.group(1))
            if self.port is not None and http_json("GET", self.url("/ready"), timeout=5)[0] == 200:
                return True
            if self.p.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def wait_exit(self, timeout=60):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.t.join(5)
        return self.p.returncode

    def stop(self, timeout=60):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)


# ---- 1. a lost device ---------------------------------------------------------------------------

s = Server(["--max-batch-images", "2"], {"VARSERVE_CUDA_EMU_FAULT_AT": "200"})
if check("fault-injected server starts and is ready", s.wait_ready(), s.text()):
    st, info = http_json("GET", s.url("/info"))
    kv = (info or {}).get("kv_pool", {})
    check("kv_pool_mb 0 on a roomy device: room for max_batch_images at full cache",
          kv.get("bytes") == 2 * kv.get("full_cache_pages_per_image", -1) * kv.get("page_bytes", -1),
          info)
    st, body = http_json("GET", s.url("/health"))
    check("/health is 200 before the fault", st == 200 and body == {"status": "ok"}, body)
    st, body = http_json("POST", s.url("/generate"), {"class_label": 3, "seed": 1})
    msg = ((body or {}).get("error") or {}).get("message", "")
    check("the request whose step faults gets 500", st == 500 and "illegal memory access" in msg,
          (st, body))
    for path in ("/health", "/ready"):
        st, body = http_json("GET", s.url(path))
        check(f"{path} is 503 device_lost with the reason",
              st == 503 and (body or {}).get("status") == "device_lost" and
              "illegal memory access" in (body or {}).get("reason", ""), (st, body))
    st, body = http_json("POST", s.url("/generate"), {"class_label": 4, "seed": 2})
    err = (body or {}).get("error") or {}
    check("a new request is 503 device_lost naming the restart",
          st == 503 and err.get("code") == "device_lost" and "restarted" in err.get("message", ""),
          (st, body))
    check("the process keeps answering: /info 200", http_json("GET", s.url("/info"))[0] == 200)
    check("the process keeps answering: /metrics 200", http("GET", s.url("/metrics"))[0] == 200)
    check("the log says the device is lost",
          any("the device is lost" in line for line in s.lines), s.text())
rc = s.stop()
check("SIGTERM after a lost device exits 0", rc == 0, (rc, s.text()))

# ---- 2. kv_pool_mb on a small device --------------------------------------------------------------

SMALL = 370  # MiB: the model, scratch for 64 images and the margin leave ~14 MiB, under a full batch (24 MiB)
env = {"VARSERVE_CUDA_EMU_MEMORY_MB": str(SMALL)}
s = Server(["--max-batch-images", "64", "--kv-pool-mb", "64"], env)
rc = s.wait_exit(60)
out = "\n".join(s.lines)
m = re.search(r"at most (\d+) MiB fit", out)
check("a kv_pool_mb that does not fit stops start-up with exit code 1", rc == 1, (rc, s.text()))
check("... naming kv_pool_mb and what fits",
      "config key 'kv_pool_mb' (64) does not fit" in out and m is not None, s.text())
fits = int(m.group(1)) if m else 0
check("... what fits leaves the margin", 0 < fits <= SMALL - MARGIN_MIB, out)

s = Server(["--max-batch-images", "64", "--kv-pool-mb", "0"], env)
if check("kv_pool_mb 0 on the small device starts", s.wait_ready(), s.text()):
    st, info = http_json("GET", s.url("/info"))
    kv = (info or {}).get("kv_pool", {})
    full_batch = 64 * kv.get("full_cache_pages_per_image", 0) * kv.get("page_bytes", 0)
    check("kv_pool_mb 0: the pool is what fits (less than a full batch, one image or more)",
          kv.get("pages_per_image", 1 << 60) * kv.get("page_bytes", 0) <= kv.get("bytes", 0)
          < full_batch and kv.get("bytes", 0) < (fits + 1) << 20 and
          kv.get("bytes", 0) + (MARGIN_MIB << 20) < SMALL << 20, info)
    st, body = http_json("POST", s.url("/generate"), {"class_label": 7, "seed": 3}, timeout=120)
    check("... and it serves", st == 200 and len((body or {}).get("data", [])) == 1, (st, body))
rc = s.stop()
check("the small-device server exits 0 on SIGTERM", rc == 0, (rc, s.text()))

# ---- 3. BF16 KV pages ---------------------------------------------------------------------------

kv_of = {}
for backend in ("cuda", "cpu"):
    s = Server(["--max-batch-images", "2", "--kv-policy", "scalekv"], {}, backend)
    if check(f"the {backend} server with scalekv starts", s.wait_ready(), s.text()):
        kv_of[backend] = (http_json("GET", s.url("/info"))[1] or {}).get("kv_pool", {})
    check(f"the {backend} server exits 0 on SIGTERM", s.stop() == 0, s.text())
gpu, cpu = kv_of.get("cuda", {}), kv_of.get("cpu", {})
check("/info: the CUDA server's KV pages are bf16, the CPU's fp32",
      gpu.get("dtype") == "bf16" and cpu.get("dtype") == "fp32", (gpu, cpu))
check("... the same pages per image, each of half the bytes",
      gpu.get("pages_per_image", -1) == cpu.get("pages_per_image", -2) > 0 and
      2 * gpu.get("page_bytes", -1) == cpu.get("page_bytes", -2), (gpu, cpu))
check("... so half the bytes per image",
      2 * gpu.get("bytes_per_image", -1) == cpu.get("bytes_per_image", -2) > 0 and
      gpu.get("bytes_per_image") == gpu.get("pages_per_image", 0) * gpu.get("page_bytes", 0),
      (gpu, cpu))

finish()
