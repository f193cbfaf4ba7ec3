#!/usr/bin/env python3
"""bench/soak.py — soak and fault run against a varserve server it starts (stdlib only):

  1. mixed-policy load: CLIENTS threads for SECONDS, random kv_policy/kv_budget per request
  2. disconnects: clients that hang up before, during and after sending their request
  3. slow clients: SLOW connections trickling header bytes, /health probed on health_port
  4. a 429 storm: STORM clients (bench/storm.c, C) retrying every 50 ms against a small queue,
     images/s with and without it, and the CPU seconds of the server, the stormer and this script
  5. SIGTERM under load: every accepted request answered, exit 0
  6. SIGKILL under load: a new server on the same port starts and serves

    /usr/bin/python3 bench/soak.py [--seconds 20] [--clients 8] [--slow 1000] [--storm 64] [--only-storm] [--queue-full-delay-ms MS]

Prints one Markdown table (phase, what was checked, numbers, ok/FAIL) plus the machine and load
average; exits 1 when a check failed. Needs build/varserve (make) and the bundled model."""
import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BIN = os.environ.get("VARSERVE_BIN", "build/varserve")
MODEL = "models/mnist-var.safetensors"
POLICIES = ["full", "scalekv", "snapkv", "pyramidkv", "sliding", "streamingllm"]
rows = []


def row(phase, what, numbers, ok):
    rows.append((phase, what, numbers, "ok" if ok else "FAIL"))
    print(f"{'ok  ' if ok else 'FAIL'} {phase}: {what} ({numbers})", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, port, hport, *args):
        self.port, self.hport = port, hport
        self.log = tempfile.NamedTemporaryFile(prefix="varserve-soak-", suffix=".log", delete=False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VARSERVE_")}
        self.p = subprocess.Popen([BIN, "serve", "--config", self._cfg(), "--model", MODEL,
                                   "--backend", "cpu", "--host", "127.0.0.1", "--port", str(port), "--health-port",
                                   str(hport), "--access-log", "false", *args],
                                  stdout=self.log, stderr=subprocess.STDOUT, env=env)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and self.p.poll() is None:
            if get(f"http://127.0.0.1:{hport}/ready", 2)[0] == 200:
                return
            time.sleep(0.1)
        raise RuntimeError("server did not start: " + open(self.log.name, errors="replace").read()[-2000:])

    def _cfg(self):
        f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        f.write("{}")
        f.close()
        return f.name

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self, sig=signal.SIGTERM, timeout=120):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return None


def get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def generate(srv, body, timeout=120):
    req = urllib.request.Request(srv.url("/generate"), data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, len(json.loads(r.read())["data"])
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, 0
    except OSError:
        return 0, 0


def metric(srv, name):
    st, body = get(f"http://127.0.0.1:{srv.hport}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def load(srv, clients, seconds, rng_seed, mixed=True, stop_event=None):
    """Threads sending requests until `seconds` pass: (codes {code: count}, images)."""
    codes, images, lock = {}, [0], threading.Lock()
    t_end = time.monotonic() + seconds

    def client(i):
        rng = random.Random(rng_seed * 1000 + i)
        while time.monotonic() < t_end and not (stop_event and stop_event.is_set()):
            body = {"class_label": rng.randrange(10), "n": rng.choice([1, 1, 2, 4]), "seed": rng.randrange(1 << 30)}
            if mixed:
                body["kv_policy"] = rng.choice(POLICIES)
                if body["kv_policy"] != "full":
                    body["kv_budget"] = rng.choice([0.1, 0.2, 0.5])
            st, n = generate(srv, body)
            with lock:
                codes[st] = codes.get(st, 0) + 1
                images[0] += n
            if st == 429:
                time.sleep(0.05)  # as the stormers do: a refused client does not spin on the CPU
    th = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return codes, images[0]


def phase_mixed(srv, a):
    t0 = time.monotonic()
    codes, images = load(srv, a.clients, a.seconds, 1)
    dt = time.monotonic() - t0
    bad = {c: n for c, n in codes.items() if c != 200}
    row("mixed-policy load", f"{a.clients} clients, every policy, {a.seconds} s: all 200",
        f"{sum(codes.values())} requests, {images / dt:.2f} images/s, other codes {bad}", not bad)
    used = metric(srv, "varserve_kv_pool_used_bytes")
    row("mixed-policy load", "KV pool empty afterwards", f"used bytes {used}", used == 0)


def phase_disconnects(srv, a):
    body = json.dumps({"class_label": 3, "n": 4}).encode()
    head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
            str(len(body)).encode() + b"\r\n\r\n")
    for k in range(60):
        s = socket.create_connection(("127.0.0.1", srv.port))
        if k % 3 == 0:
            s.sendall(head[:20])
        elif k % 3 == 1:
            s.sendall(head + body[:5])
        else:
            s.sendall(head + body)
            time.sleep(0.05)  # queued or running, then gone
        s.close()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60 and (metric(srv, "varserve_kv_pool_used_bytes") or 0) > 0:
        time.sleep(0.2)
    used = metric(srv, "varserve_kv_pool_used_bytes")
    row("disconnects", "60 clients hanging up before, in and after their body: pages all return",
        f"used bytes {used} after {time.monotonic() - t0:.1f} s", used == 0)
    st, _ = get(srv.url("/health"))
    row("disconnects", "server still serves", f"/health {st}", st == 200)


def phase_slow(srv, a):
    socks = []
    for _ in range(a.slow):
        try:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"GET /health HTTP/1.1\r\nHo")
            socks.append(s)
        except OSError:
            break
    worst, fails = 0.0, 0
    for _ in range(10):
        t0 = time.monotonic()
        st, _ = get(f"http://127.0.0.1:{srv.hport}/health", 5)
        worst = max(worst, time.monotonic() - t0)
        fails += st != 200
        time.sleep(0.3)
    row("slow clients", f"{len(socks)} connections trickling headers: /health on health_port answers within 1 s",
        f"10 probes, {fails} failed, slowest {worst * 1000:.0f} ms", fails == 0 and worst < 1)
    time.sleep(a.request_timeout + 2)
    closed = 0
    for s in socks:
        s.settimeout(0.01)
        try:
            closed += s.recv(1) == b""
        except (socket.timeout, BlockingIOError):
            pass
        except OSError:
            closed += 1
        s.close()
    row("slow clients", f"the request deadline ({a.request_timeout} s) closed them", f"{closed} of {len(socks)} closed",
        closed == len(socks))
    st, _ = get(srv.url("/health"))
    row("slow clients", "the main port answers again", f"/health {st}", st == 200)


def proc_cpu_s(pid, thread=None):
    """User + system CPU seconds so far of a process (its threads included), from /proc; with
    `thread`, of its threads of that name only (libmicrohttpd's pool: MHD-worker)."""
    def cpu(stat):
        f = stat.rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    if thread is None:
        return cpu(open(f"/proc/{pid}/stat").read())
    total = 0.0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{t}/stat").read()
        except OSError:
            continue
        if stat.split("(", 1)[1].rsplit(")", 1)[0] == thread:
            total += cpu(stat)
    return total


def build_storm():
    """bench/storm.c, the C stormer: its own CPU stays small next to the server's."""
    os.makedirs("build/bench", exist_ok=True)
    subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Werror",
                    "-D_GNU_SOURCE", "-o", "build/bench/storm", "bench/storm.c", "-lcurl", "-lpthread"], check=True)
    return "build/bench/storm"


def phase_storm(a):
    """The same 4-client load with and without a.storm C clients retrying every 50 ms on a queue of 4.
    Each phase's CPU seconds are reported: the server's, the stormer's and this script's (the
    4 load clients), so the client side's share of the 2 cores is visible."""
    storm_bin = build_storm()
    port, hport = free_port(), free_port()
    delay = [] if a.queue_full_delay_ms is None else ["--queue-full-delay-ms", str(a.queue_full_delay_ms)]
    srv = Server(port, hport, "--queue-size", "4", "--request-timeout-s", "30", *delay)
    try:
        def measured(storm):
            s0, h0, c0, t0 = proc_cpu_s(srv.p.pid), proc_cpu_s(srv.p.pid, "MHD-worker"), time.process_time(), time.monotonic()
            p = storm and subprocess.Popen([storm_bin, "--url", srv.url(""), "--clients", str(a.storm), "--seconds",
                                            str(a.seconds)], stdout=subprocess.PIPE, text=True)
            codes, images = load(srv, 4, a.seconds, 3 if storm else 2, mixed=False)
            st = json.loads(p.communicate()[0]) if p else {"images": 0, "codes": {}, "cpu_s": 0, "requests": 0}
            dt = time.monotonic() - t0
            return ((images + st["images"]) / dt, st, proc_cpu_s(srv.p.pid) - s0,
                    proc_cpu_s(srv.p.pid, "MHD-worker") - h0, time.process_time() - c0, dt)
        quiet_rate, _, quiet_srv, quiet_http, quiet_py, _ = measured(False)
        stormy_rate, st, storm_srv, storm_http, storm_py, dt = measured(True)
        per_request_us = (storm_http - quiet_http) / max(st["requests"], 1) * 1e6
        ratio = stormy_rate / quiet_rate if quiet_rate else 0
        row("429 storm", f"{a.storm} C clients retrying every 50 ms on a queue of 4: images/s within 10% of the same "
            "server without them", f"{quiet_rate:.2f} → {stormy_rate:.2f} images/s ({ratio:.0%}); storm "
            f"{st['requests'] / dt:.0f} requests/s, codes {st['codes']}; CPU s server {quiet_srv:.1f} → "
            f"{storm_srv:.1f} (HTTP threads {quiet_http:.1f} → {storm_http:.1f}: {per_request_us:.0f} µs a storm request), "
            f"stormer {st['cpu_s']:.1f}, load clients {quiet_py:.1f} → {storm_py:.1f}", ratio >= 0.9)
    finally:
        srv.stop()


def phase_signals(a):
    port, hport = free_port(), free_port()
    srv = Server(port, hport)
    results = []

    def one(i):
        results.append(generate(srv, {"class_label": i % 10, "n": 4, "seed": i})[0])
    th = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in th:
        t.start()
    time.sleep(1.0)
    rc = srv.stop(signal.SIGTERM)
    for t in th:
        t.join()
    ok = all(c in (200, 503) for c in results)
    row("SIGTERM under load", "accepted requests answered (200, or 503 once draining), exit 0",
        f"exit {rc}, codes {sorted(results)}", rc == 0 and ok and 200 in results)

    srv = Server(port, hport)
    th = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    results.clear()
    for t in th:
        t.start()
    time.sleep(1.0)
    srv.stop(signal.SIGKILL)
    for t in th:
        t.join()
    t0 = time.monotonic()
    srv2 = Server(port, hport)
    st, n = generate(srv2, {"class_label": 1})
    row("SIGKILL under load", "a new server binds the same port at once and serves",
        f"restart to ready {time.monotonic() - t0:.1f} s, then /generate {st}", st == 200 and n == 1)
    srv2.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--slow", type=int, default=1000)
    ap.add_argument("--storm", type=int, default=64)
    ap.add_argument("--request-timeout", type=int, default=5)
    ap.add_argument("--only-storm", action="store_true", help="run the 429 storm phase alone")
    ap.add_argument("--queue-full-delay-ms", type=int, default=None,
                    help="the storm phase's server setting (default: the server's own default)")
    a = ap.parse_args()
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if not a.only_storm:
        port, hport = free_port(), free_port()
        srv = Server(port, hport, "--request-timeout-s", str(a.request_timeout), "--max-connections",
                     str(a.slow + 100), "--max-connections-per-address", "0")
        try:
            phase_mixed(srv, a)
            phase_disconnects(srv, a)
            phase_slow(srv, a)
        finally:
            rc = srv.stop()
        row("shutdown", "SIGTERM after the phases above exits 0", f"exit {rc}", rc == 0)
    phase_storm(a)
    if not a.only_storm:
        phase_signals(a)
    cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read())
    print(f"\nmachine: {os.cpu_count()} CPUs, {cpu.group(1) if cpu else '?'}; load average "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("\n| phase | check | numbers | |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    sys.exit(0 if all(r[3] == "ok" for r in rows) else 1)


if __name__ == "__main__":
    main()
