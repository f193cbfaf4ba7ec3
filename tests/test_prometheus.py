#!/usr/bin/env python3
"""tests/test_prometheus.py — deployment checks with a real Prometheus (python3 standard library only).

1. deploy/: `promtool check config` on deploy/prometheus.yml (and deploy/k8s/prometheus-k8s.yml),
   `promtool check rules` on deploy/alerts.yml, `promtool test rules` on deploy/alerts_test.yml; the
   Kubernetes ConfigMap's varserve.json passes the server's own validation; the Kubernetes grace
   period and compose's stop_grace_period cover the drain timeout; the Grafana dashboard parses.
2. A real scrape: varserve serve on a free loopback port with the tiny model, a real Prometheus
   (Debian package `prometheus`) scraping it every second with deploy/alerts.yml loaded; a few
   POST /generate; Prometheus's HTTP API reports varserve_images_generated_total equal to the
   images generated; every metric name the dashboard and the alerts use exists in Prometheus and
   every dashboard query evaluates; the alert rules evaluate without error; /metrics passes
   `promtool check metrics`; SIGTERM stops varserve with exit status 0.

Skips (exit 0) only when the prometheus binary is missing. Run by `make test` with
VARSERVE_BIN=build/varserve, from the repository root.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(os.environ.get("VARSERVE_BIN", os.path.join(ROOT, "build/varserve")))
TINY = os.path.join(ROOT, "tests/fixtures/tiny/model.safetensors")
DEPLOY = os.path.join(ROOT, "deploy")
from tally import check, finish, http  # noqa: E402 (tests/ is on sys.path: run as a script)


PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
if not PROMETHEUS:
    print("test_prometheus: skipped: no prometheus binary on PATH (Debian package prometheus; "
          "tools/deps.sh installs it)")
    print("0 passed, 0 failed, 1 skipped")
    sys.exit(0)


def promtool(*args, stdin=None):
    if not PROMTOOL:
        return 127, "promtool not found (it comes with the Debian package prometheus)"
    p = subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose output (stdout and stderr together) is collected by a thread."""

    def __init__(self, args, env=None):
        self.lines = []
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=env, cwd=ROOT, start_new_session=True)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self, last=40):
        return "\n".join(self.lines[-last:])

    def stop(self, timeout=60):
        """SIGTERM, wait up to timeout, then SIGKILL. The exit status."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.t.join(5)
        return self.p.returncode


def wait_for(fn, timeout, step=0.2):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = fn()
        if v:
            return v
        time.sleep(step)
    return None


# ---- 1. deploy/ configuration ---------------------------------------------------------------

rc, out = promtool("check", "config", os.path.join(DEPLOY, "prometheus.yml"))
check("promtool check config deploy/prometheus.yml", rc == 0 and "SUCCESS" in out, out)
rc, out = promtool("check", "rules", os.path.join(DEPLOY, "alerts.yml"))
check("promtool check rules deploy/alerts.yml", rc == 0 and "SUCCESS: 4 rules found" in out, out)
rc, out = promtool("test", "rules", os.path.join(DEPLOY, "alerts_test.yml"))
check("promtool test rules deploy/alerts_test.yml", rc == 0 and "SUCCESS" in out, out)

# the in-cluster config uses kubernetes_sd_configs, which Debian's Prometheus is built without:
# then the same file is checked with the discovery block swapped for a static target, so its
# relabelling rules and rule file are still checked
k8s_prom = os.path.join(DEPLOY, "k8s/prometheus-k8s.yml")
rc, out = promtool("check", "config", k8s_prom)
if rc != 0 and "kubernetes_sd_configs not found" in out:
    text = open(k8s_prom).read()
    swapped = re.sub(r"kubernetes_sd_configs:\n(\s+)- role: pod\n",
                     lambda m: f"static_configs:\n{m.group(1)}- targets: ['127.0.0.1:8080']\n", text)
    swapped = swapped.replace("- ../alerts.yml", "- " + os.path.join(DEPLOY, "alerts.yml"))
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write(swapped)
    rc, out = promtool("check", "config", f.name)
    os.unlink(f.name)
    check("promtool check config deploy/k8s/prometheus-k8s.yml (kubernetes_sd swapped for static)",
          rc == 0 and swapped != text, out)
else:
    check("promtool check config deploy/k8s/prometheus-k8s.yml", rc == 0, out)


def block_scalar(path, key):
    """The text of a YAML literal block `key: |` (standard library only, no YAML parser)."""
    lines = open(path).read().split("\n")
    for i, ln in enumerate(lines):
        m = re.match(r"^(\s*)" + re.escape(key) + r":\s*\|\s*$", ln)
        if m:
            body, ind = [], None
            for l2 in lines[i + 1:]:
                if l2.strip() == "":
                    body.append("")
                    continue
                cur = len(l2) - len(l2.lstrip())
                if ind is None:
                    ind = cur
                if cur < ind or cur <= len(m.group(1)):
                    break
                body.append(l2[ind:])
            return "\n".join(body)
    return None


cm_json = block_scalar(os.path.join(DEPLOY, "k8s/configmap.yaml"), "varserve.json")
cm_cfg = {}
if check("k8s ConfigMap holds varserve.json", cm_json is not None):
    try:
        cm_cfg = json.loads(cm_json)
    except ValueError as e:
        check("k8s ConfigMap varserve.json is JSON", False, e)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(cm_json)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VARSERVE_")}
    p = subprocess.run([BIN, "serve", "--config", f.name, "--print-config"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=60)
    os.unlink(f.name)
    check("k8s ConfigMap varserve.json passes varserve serve --print-config", p.returncode == 0, p.stderr)

# After drain_timeout_s, serve.c gives the last 503 replies a few seconds more (its reply grace);
# the Kubernetes grace period and compose's stop_grace_period must cover preStop + drain + that.
serve_c = open(os.path.join(ROOT, "server/serve.c")).read()
rg = re.search(r"vs_srv_http_live_jobs\(http\) > 0 && vs_now_s\(\) - t1 < (\d+(?:\.\d+)?)", serve_c)
check("server/serve.c: the reply grace after the drain timeout is found", rg, "pattern not found in serve.c")
reply_grace = float(rg.group(1)) if rg else 10.0
deploy_text = open(os.path.join(DEPLOY, "k8s/deployment.yaml")).read()
grace = re.search(r"terminationGracePeriodSeconds:\s*(\d+)", deploy_text)
pre = re.search(r'preStop:\s*\n\s*exec:\s*\n\s*command:\s*\["sleep",\s*"(\d+)"\]', deploy_text)
drain = cm_cfg.get("drain_timeout_s")
check(f"k8s terminationGracePeriodSeconds >= preStop sleep + drain_timeout_s + {reply_grace:g} s reply grace",
      grace and pre and drain is not None and int(grace.group(1)) >= int(pre.group(1)) + drain + reply_grace,
      (grace and grace.group(1), pre and pre.group(1), drain, reply_grace))
compose = open(os.path.join(DEPLOY, "compose.yaml")).read()
sgp = re.search(r"stop_grace_period:\s*(\d+)s", compose)
cdrain = re.search(r'VARSERVE_DRAIN_TIMEOUT_S:\s*"(\d+)"', compose)
check(f"compose stop_grace_period >= drain_timeout_s + {reply_grace:g} s reply grace",
      sgp and cdrain and int(sgp.group(1)) >= int(cdrain.group(1)) + reply_grace, (sgp, cdrain, reply_grace))

dash = json.load(open(os.path.join(DEPLOY, "grafana/varserve.json")))
ds = open(os.path.join(DEPLOY, "grafana/provisioning/datasources/prometheus.yml")).read()
ds_uid = re.search(r"uid:\s*(\S+)", ds).group(1)
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
check("dashboard: panels with queries, all on the provisioned datasource",
      len(exprs) >= 10 and all(p.get("datasource", {}).get("uid") == ds_uid for p in dash["panels"]
                                if p["type"] != "row"), ds_uid)
alert_exprs = re.findall(r"expr: \|\n((?:\s{10}.*\n)+)|expr: (.+)\n", open(os.path.join(DEPLOY, "alerts.yml")).read())
alert_exprs = [a or b for a, b in alert_exprs]
check("alerts.yml: four expressions read", len(alert_exprs) == 4, alert_exprs)

# ---- 2. a real scrape -------------------------------------------------------------------------

class Abort(Exception):
    """A step the rest depends on failed (already counted)."""


tmp = tempfile.mkdtemp(prefix="varserve-prom-")
srv = prom = None
try:
    # built-in defaults only: no VARSERVE_* variable and an empty config file, not config/varserve.json
    env = {k: v for k, v in os.environ.items() if not k.startswith("VARSERVE_")}
    empty_cfg = os.path.join(tmp, "varserve.json")
    with open(empty_cfg, "w") as f:
        f.write("{}\n")
    srv = Proc([BIN, "serve", "--config", empty_cfg, "--model", TINY, "--host", "127.0.0.1", "--port", "0"],
               env=env)
    found = wait_for(lambda: next((m for ln in srv.lines
                                   for m in [re.search(r"listening on http://127\.0\.0\.1:(\d+)", ln)] if m), None)
                     or srv.p.poll() is not None, 60)
    if not check("varserve serve starts on a free port", isinstance(found, re.Match), srv.text()):
        raise Abort
    port = int(found.group(1))
    base = f"http://127.0.0.1:{port}"
    ready = wait_for(lambda: http("GET", base + "/ready", timeout=5)[0] == 200 or srv.p.poll() is not None, 120)
    if not check("varserve /ready answers 200", ready and srv.p.poll() is None, srv.text()):
        raise Abort

    cfg = os.path.join(tmp, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {os.path.join(DEPLOY, "alerts.yml")}
scrape_configs:
  - job_name: varserve
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ["127.0.0.1:{port}"]
""")
    # a free port can be taken between the probe and Prometheus's bind: then try another
    for attempt in range(3):
        prom_port = free_port()
        prom = Proc([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
                     f"--web.listen-address=127.0.0.1:{prom_port}"])
        pbase = f"http://127.0.0.1:{prom_port}"
        up = wait_for(lambda: http("GET", pbase + "/-/ready", timeout=5)[0] == 200 or prom.p.poll() is not None, 60)
        if prom.p.poll() is None or "address already in use" not in prom.text():
            break
    if not check("prometheus starts and is ready", up and prom.p.poll() is None, prom.text()):
        raise Abort

    def query(q):
        st, body = http("GET", pbase + "/api/v1/query?" + urllib.parse.urlencode({"query": q}), timeout=10)
        try:
            return st, json.loads(body)
        except ValueError:
            return st, {"status": "error", "error": body[:200]}

    def scalar(q):
        st, r = query(q)
        res = r.get("data", {}).get("result", []) if st == 200 else []
        return float(res[0]["value"][1]) if len(res) == 1 else None

    # Prometheus has scraped varserve at least once before the requests, so that the counters
    # and histograms are seen to grow
    check("Prometheus scrapes varserve (up == 1) before the requests",
          wait_for(lambda: scalar('up{job="varserve"}') == 1, 30, 0.5), query('up{job="varserve"}'))

    # a few requests at once: n = 1, 2, 1, 2 -> 6 images
    reqs = [{"class_label": 3, "n": 1, "seed": 1}, {"class_label": 7, "n": 2, "seed": 2},
            {"class_label": 0, "n": 1, "seed": 3, "response_format": "b64_json"}, {"class_label": 5, "n": 2, "seed": 4}]
    results = [None] * len(reqs)

    def send(i):
        results[i] = http("POST", base + "/generate", reqs[i], timeout=120)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = 0
    for (st, body), r in zip(results, reqs):
        try:
            ok += st == 200 and len(json.loads(body)["data"]) == r["n"]
        except (ValueError, KeyError, TypeError):
            pass
    check("every POST /generate answered 200 with n images", ok == len(reqs),
          [(st, body[:200]) for st, body in results])
    want = sum(r["n"] for r in reqs)

    got = wait_for(lambda: scalar("varserve_images_generated_total") == want, 60, 0.5)
    check(f"Prometheus reports varserve_images_generated_total == {want}", got,
          (query("varserve_images_generated_total"), prom.text(10)))
    check("up{job=\"varserve\"} == 1", scalar('up{job="varserve"}') == 1, query('up{job="varserve"}'))
    n200 = scalar('varserve_requests_total{code="200"}')
    check("varserve_requests_total{code=\"200\"} counts the requests", n200 is not None and n200 >= len(reqs), n200)
    qq = 'histogram_quantile(0.5, sum by (le) (increase(varserve_request_seconds_bucket[5m])))'
    p50 = wait_for(lambda: scalar(qq), 15, 0.5)
    check("histogram_quantile over varserve_request_seconds is a positive latency",
          p50 is not None and 0 < p50 < 120, (p50, query(qq)))

    # every metric name the dashboard and the alerts use is one the server exports
    names = sorted(set(re.findall(r"\b(varserve_[a-z_]+|process_[a-z_]+)\b", " ".join(exprs + alert_exprs))))
    missing = [n for n in names if scalar(f'count({{__name__="{n}", job="varserve"}})') is None]
    check(f"all {len(names)} metric names of the dashboard and the alerts exist in Prometheus", not missing, missing)

    # every dashboard query evaluates (variables replaced as Grafana would)
    bad = []
    for e in exprs:
        q = e.replace("$__rate_interval", "1m").replace("$job", "varserve").replace("$instance", ".+")
        st, r = query(q)
        if st != 200 or r.get("status") != "success":
            bad.append((e, r.get("error")))
    check(f"all {len(exprs)} dashboard queries evaluate", not bad, bad)

    # the alert rules loaded into this Prometheus evaluate against the real series
    def rules_ok():
        st, body = http("GET", pbase + "/api/v1/rules", timeout=10)
        if st != 200:
            return None
        rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
        if len(rules) == 4 and all(r.get("health") == "ok" and r.get("lastEvaluation", "").startswith("2")
                                   for r in rules):
            return rules
        return None

    rules = wait_for(rules_ok, 20, 0.5)
    check("the 4 alert rules evaluate in Prometheus (health ok)", rules,
          http("GET", pbase + "/api/v1/rules")[1][:1500])
    firing = [r["name"] for r in (rules or []) if r.get("state") != "inactive"]
    check("no alert pending or firing on a healthy server", not firing, firing)

    st, metrics = http("GET", base + "/metrics")
    rc, out = promtool("check", "metrics", stdin=metrics.decode())
    check("promtool check metrics on /metrics", st == 200 and rc == 0, out)

    rc = srv.stop(60)
    check("SIGTERM stops varserve with exit status 0", rc == 0, (rc, srv.text()))
except Abort:
    pass
finally:
    for p in (srv, prom):
        if p is not None:
            p.stop(30)
    shutil.rmtree(tmp, ignore_errors=True)

finish()
