"""tests/tally.py — what the Python test scripts run as programs by `make test` share
(test_cli.py, test_mnist_parity.py, test_prometheus.py, test_openai.py, test_hostile.py,
test_corrupt_model.py): `check` counts and reports one assertion, `finish` prints the totals and
exits 1 when any failed; `http` is their HTTP client;
`Server` runs `varserve serve` on a free loopback port."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

passed = failed = 0


def check(name, cond, detail=""):
    """Counts one assertion; prints `ok` or `FAIL` with the detail. Returns cond."""
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {str(detail)[:3000]}")
    return cond


def finish():
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def http(method, url, body=None, timeout=30):
    """(status, body bytes) of one request with a JSON body (when given); status 0 when nothing
    answered."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


class Server:
    """varserve serve on a free loopback port, built-in defaults only; output to a file."""

    def __init__(self, binary, d, name, *args):
        cfg = os.path.join(d, f"{name}.json")
        with open(cfg, "w") as f:
            f.write("{}")
        self.log = os.path.join(d, f"{name}.log")
        self.out = open(self.log, "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("VARSERVE_")}
        self.p = subprocess.Popen([binary, "serve", "--config", cfg, "--host", "127.0.0.1", "--port",
                                   "0", *args], stdout=self.out, stderr=subprocess.STDOUT, env=env)
        self.base = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and self.p.poll() is None:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(self.log, errors="replace").read())
            if m and not self.base:
                self.base = f"http://127.0.0.1:{m.group(1)}"
            if self.base and http("GET", self.base + "/ready", timeout=5)[0] == 200:
                return
            time.sleep(0.1)
        self.base = None

    def metrics(self):
        """{name with labels: value} of a fresh scrape, and the text."""
        st, raw = http("GET", self.base + "/metrics")
        body = raw.decode()
        vals = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, v = line.rpartition(" ")
                vals[name] = float(v)
        return vals, body

    def stop(self):
        """SIGTERM; the exit status (None when it had to be killed)."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                return None
        self.out.close()
        return self.p.returncode

    def text(self):
        return open(self.log, errors="replace").read()[-3000:]
