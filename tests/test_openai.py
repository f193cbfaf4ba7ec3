#!/usr/bin/env python3
"""tests/test_openai.py — the OpenAI-compatible endpoint, streamed previews and the playground
page, with real clients against a real server (the tiny fixture model, an api_key set):

1. HTTP (python3 standard library): GET /v1/models; POST /v1/images/generations answers the same
   PNGs as POST /generate for the same class and seed; its errors are OpenAI's shape naming the
   field (model 404, prompt, size, response_format url, output_format, unknown fields, 401).
2. Streams (raw sockets, SSE parsed here): `stream: true` on both endpoints answers
   text/event-stream with partial_images previews per image at scales spread over the schedule
   (10 scales, 3 previews: after 2, 5 and 7), each naming its image and scale, then every image,
   identical to the non-streamed one; previews are counted in /metrics
   (varserve_preview_decode_seconds_count; their PNGs in png_encode_seconds); a client that
   hangs up mid-stream is dropped and the KV pool returns to empty.
3. The official OpenAI Node SDK (`openai` on npm, installed into build/node/ at first run):
   models.list and images.generate with and without stream, and its errors. Skipped, with the
   reason, only when npm cannot install the package.
4. A real browser (Debian's chromium, headless, driven over its DevTools protocol): the
   playground at / runs a streamed request from its URL hash (API key field included); the page
   then shows the previews and images that arrived, its status line and the pool read from
   /metrics, and a screenshot is kept in build/test-artifacts/playground.png. Skipped, with the reason, only
   when chromium is missing and cannot be installed (apt-get as root).

Run by `make test` with VARSERVE_BIN=build/varserve, from the repository root."""
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from browser import chromium, close_page, open_page, wait_finished  # noqa: E402 (tests/ is on sys.path: run as a script)
from tally import Server, check, finish  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(os.environ.get("VARSERVE_BIN", os.path.join(ROOT, "build/varserve")))
TINY = "tests/fixtures/tiny/model.safetensors"
KEY = "sk-test-key"
NODE_DIR = os.path.join(ROOT, "build/node")
ARTIFACTS = os.path.join(ROOT, "build/test-artifacts")
PREVIEW_SCALES = [2, 5, 7]  # tiny: 10 scales, partial_images 3


def request(base, method, path, body=None, key=KEY, timeout=60):
    """(status, parsed JSON or raw bytes, headers) of one request."""
    import urllib.error
    import urllib.request
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, st, hd = r.read(), r.status, r.headers
    except urllib.error.HTTPError as e:
        raw, st, hd = e.read(), e.code, e.headers
    try:
        return st, json.loads(raw), hd
    except ValueError:
        return st, raw, hd


def is_openai_error(body, param, code=None):
    e = body.get("error") if isinstance(body, dict) else None
    return (isinstance(e, dict) and set(e) == {"message", "type", "param", "code"} and e["param"] == param
            and (code is None or e["code"] == code) and len(e["message"]) > 10)


class Sse:
    """A streamed POST over a raw socket: the status line and headers, then events one by one."""

    def __init__(self, port, path, body):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        data = json.dumps(body).encode()
        self.s.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data)
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self.body = b""  # de-chunked

    def _more(self):
        d = self.s.recv(1 << 16)
        if not d:
            raise EOFError
        self.buf += d

    def _dechunk(self):
        while True:
            if not self.chunked:
                self.body, self.buf = self.body + self.buf, b""
                return
            if b"\r\n" not in self.buf:
                return
            size_line, rest = self.buf.split(b"\r\n", 1)
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                self.ended = True
                return
            if len(rest) < n + 2:
                return
            self.body += rest[:n]
            self.buf = rest[n + 2:]

    def next(self):
        """(event, data) of the next event, or None when the stream ended."""
        self.ended = getattr(self, "ended", False)
        while True:
            self._dechunk()
            if b"\n\n" in self.body:
                block, self.body = self.body.split(b"\n\n", 1)
                ev, data = "message", ""
                for line in block.decode().split("\n"):
                    if line.startswith("event: "):
                        ev = line[7:]
                    elif line.startswith("data: "):
                        data += line[6:]
                return ev, json.loads(data)
            if self.ended:
                return None
            try:
                self._more()
            except EOFError:
                return None

    def all(self):
        out = []
        while (e := self.next()) is not None:
            out.append(e)
        self.s.close()
        return out


def check_stream(label, events, n, openai):
    previews = [(e, d) for e, d in events if e == ("image_generation.partial_image" if openai else "preview")]
    images = [(e, d) for e, d in events if e == ("image_generation.completed" if openai else "image")]
    idx = "image_index" if openai else "index"
    for i in range(n):
        mine = [d for _, d in previews if d[idx] == i]
        check(f"{label}: image {i} gets 3 previews after scales 2, 5, 7 with partial_image_index 0..2",
              [d["scale"] for d in mine] == PREVIEW_SCALES and [d["partial_image_index"] for d in mine] == [0, 1, 2],
              [(d["scale"], d["partial_image_index"]) for d in mine])
        done = [d for _, d in images if d[idx] == i]
        check(f"{label}: image {i} is completed once, after its previews, at scale 10",
              len(done) == 1 and done[0]["scale"] == 10 and
              events.index(next(x for x in events if x[1] is done[0])) > max(
                  events.index(x) for x in previews if x[1][idx] == i), [e for e, _ in events])
        for d in mine + done:
            png = base64.b64decode(d["b64_json"])
            if not check(f"{label}: image {i} scale {d['scale']} is a 256x256 PNG",
                         png[:8] == b"\x89PNG\r\n\x1a\n" and png[16:24] == (256).to_bytes(4, "big") * 2, png[:24]):
                break
    return {d[idx]: d["b64_json"] for _, d in images}, [d["b64_json"] for _, d in previews]


def main():
    d = tempfile.mkdtemp(prefix="varserve-openai-")
    srv = Server(BIN, d, "openai", "--model", TINY, "--api_key", KEY)
    if not check("server with api_key answers /ready", srv.base is not None, srv.text()):
        finish()
    base, port = srv.base, int(srv.base.rsplit(":", 1)[1])
    try:
        run_http(base)
        run_streams(srv, base, port)
        run_sdk(base)
        run_browser(base, d)
    finally:
        check("server exits 0 on SIGTERM", srv.stop() == 0, srv.text())
        shutil.rmtree(d, ignore_errors=True)
    finish()


def run_http(base):
    st, info, _ = request(base, "GET", "/info")
    name = info["model"]["name"]
    st, models, _ = request(base, "GET", "/v1/models")
    check("GET /v1/models lists the served model", st == 200 and models["object"] == "list" and
          [m["id"] for m in models["data"]] == [name] and models["data"][0]["object"] == "model", models)
    st, body, _ = request(base, "GET", "/v1/models", key=None)
    check("GET /v1/models without the key is 401 in OpenAI's shape", st == 401 and is_openai_error(body, None,
                                                                                                   "invalid_api_key"), body)
    st, oa, _ = request(base, "POST", "/v1/images/generations",
                        {"model": name, "prompt": "7", "n": 2, "seed": 11, "size": "256x256",
                         "response_format": "b64_json", "output_format": "png", "user": "test"})
    st2, nat, _ = request(base, "POST", "/generate", {"class_label": 7, "n": 2, "seed": 11})
    check("OpenAI images response: created, data[].b64_json, usage", st == 200 and isinstance(oa["created"], int)
          and len(oa["data"]) == 2 and oa["usage"]["output_tokens"] == 2 * 680 and oa["size"] == "256x256", str(oa)[:300])
    check("OpenAI images are the PNGs /generate gives for the same class and seed",
          st2 == 200 and [x["b64_json"] for x in oa["data"]] == [x["b64_json"] for x in nat["data"]])
    bad = [({"prompt": "7", "model": "dall-e-3"}, 404, "model", "model_not_found"),
           ({"prompt": "goldfish"}, 400, "prompt", "unknown_class"),
           ({"prompt": 7}, 400, "prompt", None),
           ({}, 400, "prompt", "missing_field"),
           ({"prompt": "7", "size": "1024x1024"}, 400, "size", "invalid_value"),
           ({"prompt": "7", "response_format": "url"}, 400, "response_format", "invalid_value"),
           ({"prompt": "7", "output_format": "jpeg"}, 400, "output_format", "invalid_value"),
           ({"prompt": "7", "class_label": 7}, 400, "class_label", "unknown_field"),
           ({"prompt": "7", "partial_images": 2}, 400, "partial_images", "invalid_value"),
           ({"prompt": "7", "stream": True, "partial_images": 4}, 400, "partial_images", None)]
    for body, code, param, ecode in bad:
        st, resp, _ = request(base, "POST", "/v1/images/generations", body)
        check(f"{json.dumps(body)} is {code} naming {param}", st == code and is_openai_error(resp, param, ecode), resp)
    st, resp, _ = request(base, "POST", "/v1/images/generations", {"prompt": "goldfish"})
    check("a bad prompt says how to see the classes", "/v1/models or /info" in resp["error"]["message"], resp)
    st, resp, _ = request(base, "POST", "/generate", {"class_label": 1, "prompt": "1"})
    check("/generate keeps its own fields (prompt is unknown there)", st == 400 and is_openai_error(resp, "prompt"), resp)


def run_streams(srv, base, port):
    m0, _ = srv.metrics()
    s = Sse(port, "/generate", {"class_label": 3, "n": 2, "seed": 21, "stream": True, "partial_images": 3})
    check("stream: 200 text/event-stream", s.status == 200 and s.headers.get("content-type") == "text/event-stream",
          s.headers)
    events = s.all()
    finals, previews = check_stream("native stream", events, 2, openai=False)
    check("native stream ends with done naming the seeds and previews",
          events[-1][0] == "done" and events[-1][1]["seeds"] == [21, 22] and events[-1][1]["previews"] == 6,
          events[-1] if events else None)
    st, plain, _ = request(base, "POST", "/generate", {"class_label": 3, "n": 2, "seed": 21})
    check("streamed images are the non-streamed ones, byte for byte",
          [finals.get(0), finals.get(1)] == [x["b64_json"] for x in plain["data"]])
    check("previews are coarser pictures, not the final image", all(p not in finals.values() for p in previews))
    m1, _ = srv.metrics()
    got = m1.get("varserve_preview_decode_seconds_count", 0) - m0.get("varserve_preview_decode_seconds_count", 0)
    check("/metrics counts the 6 previews decoded", got == 6 and m1["varserve_preview_decode_seconds_sum"] > 0, got)
    got = m1.get("varserve_png_encode_seconds_count", 0) - m0.get("varserve_png_encode_seconds_count", 0)
    check("/metrics counts the PNGs encoded: the stream's 6 previews and 2 images, the plain request's 2",
          got == 10, got)

    s = Sse(port, "/v1/images/generations", {"prompt": "3", "seed": 21, "stream": True, "partial_images": 3})
    events = s.all()
    finals_oa, _ = check_stream("OpenAI stream", events, 1, openai=True)
    check("OpenAI stream: every event has OpenAI's fields, the completed one its usage",
          all(d["type"] == e and d["output_format"] == "png" and d["size"] == "256x256" and "created_at" in d
              for e, d in events) and events[-1][1]["usage"]["output_tokens"] == 680, [e for e, _ in events])
    check("OpenAI stream: the completed image is /generate's", finals_oa.get(0) == finals.get(0))

    s = Sse(port, "/generate", {"class_label": 3, "stream": True, "partial_images": 3, "cfg_scale": 30})
    n = int(s.headers.get("content-length", "0"))
    while len(s.buf) < n:
        s._more()
    s.s.close()
    check("a bad streamed request is a plain 400 before any event", s.status == 400 and
          is_openai_error(json.loads(s.buf[:n]), "cfg_scale"), s.buf[:300])

    s = Sse(port, "/generate", {"class_label": 3, "n": 4, "stream": True, "partial_images": 3, "timeout_ms": 1})
    events = s.all()
    check("a deadline that passes mid-stream ends it with an error event (504's body)",
          s.status == 200 and events and events[-1][0] == "error" and
          is_openai_error(events[-1][1], None, "deadline_exceeded"), events[-1:] if events else s.status)

    # hang up after the first preview: the job is dropped (499) and its pages come back
    s = Sse(port, "/generate", {"class_label": 4, "n": 4, "seed": 3, "stream": True, "partial_images": 3})
    first = s.next()
    s.s.close()
    check("hang-up test: a preview arrived first", first is not None and first[0] == "preview", first)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        m, _ = srv.metrics()
        if m.get("varserve_kv_pool_used_bytes") == 0 and m.get("varserve_requests_running") == 0 and \
                m.get('varserve_requests_total{code="499"}', 0) >= 1:
            break
        time.sleep(0.1)
    check("a client that hangs up mid-stream is dropped (499) and the pool is empty again",
          m.get("varserve_kv_pool_used_bytes") == 0 and m.get('varserve_requests_total{code="499"}', 0) >= 1,
          {k: v for k, v in m.items() if "kv_pool" in k or "499" in k or "running" in k})
    st, plain, _ = request(base, "POST", "/generate", {"class_label": 3, "n": 2, "seed": 21})
    check("the server serves on after the hang-up, the same images",
          st == 200 and [x["b64_json"] for x in plain["data"]] == [finals.get(0), finals.get(1)])


def npm_openai():
    """The path of the installed `openai` package, or (None, why)."""
    mod = os.path.join(NODE_DIR, "node_modules", "openai")
    if os.path.isfile(os.path.join(mod, "package.json")):
        return mod, ""
    if not shutil.which("npm") or not shutil.which("node"):
        return None, "node or npm is not installed"
    os.makedirs(NODE_DIR, exist_ok=True)
    p = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", NODE_DIR, "openai"],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0 or not os.path.isdir(mod):
        return None, "npm install openai failed (is the registry reachable?): " + (p.stderr or p.stdout)[-300:]
    return mod, ""


def run_sdk(base):
    mod, why = npm_openai()
    if not mod:
        print(f"skip the OpenAI SDK checks: {why}")
        return
    env = dict(os.environ, OPENAI_MODULE=mod, VARSERVE_URL=base, OPENAI_API_KEY=KEY)
    p = subprocess.run(["node", os.path.join(ROOT, "tests/openai_sdk.js")], capture_output=True, text=True,
                       env=env, timeout=300)
    if not check("the OpenAI SDK script runs", p.returncode == 0, p.stderr[-2000:]):
        return
    out = json.loads(p.stdout)
    st, info, _ = request(base, "GET", "/info")
    check("SDK models.list sees the served model", out["models"] == [info["model"]["name"]], out["models"])
    st, nat, _ = request(base, "POST", "/generate", {"class_label": 3, "n": 2, "seed": 5})
    check("SDK images.generate returns /generate's images", out["plain"]["b64"] == [x["b64_json"] for x in nat["data"]]
          and out["plain"]["usage"]["output_tokens"] == 1360)
    types = [e["type"] for e in out["events"]]
    check("SDK streamed images.generate yields 3 partial images then the completed one",
          types == ["image_generation.partial_image"] * 3 + ["image_generation.completed"] and
          [e["partial_image_index"] for e in out["events"][:3]] == [0, 1, 2] and
          [e["scale"] for e in out["events"]] == PREVIEW_SCALES + [10], types)
    check("SDK stream's completed image is the non-streamed one", out["events"][-1]["b64"] == nat["data"][0]["b64_json"])
    check("SDK raises the 404 of a model not served, with OpenAI's code and param",
          out["wrong_model"] == {**out["wrong_model"], "status": 404, "code": "model_not_found", "param": "model"},
          out["wrong_model"])
    check("SDK raises the error event of a stream whose deadline passed",
          out["late"] == {"code": "deadline_exceeded", "type": "timeout_error"}, out["late"])
    check("SDK raises 401 for a wrong key", out["wrong_key"] == {"status": 401, "code": "invalid_api_key"},
          out["wrong_key"])


def run_browser(base, d):
    exe, why = chromium()
    if not exe:
        print(f"skip the browser checks: {why}")
        return
    st, html, hd = request(base, "GET", "/", key=None)
    check("GET / is the playground page, no key needed", st == 200 and hd["Content-Type"].startswith("text/html")
          and b"<title>varserve playground</title>" in html, hd["Content-Type"])
    check("the page loads nothing from elsewhere (no CDN)", b"src=\"http" not in html and b"href=\"http" not in html)
    # the hash fills the form, the API key field included, and runs the request
    url = f"{base}/#class_label=3&seed=21&n=2&partial_images=3&key={KEY}"
    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "playground.png")
    p, cdp = open_page(exe, url, d)
    try:
        if not check("chromium starts with DevTools", cdp is not None):
            return
        wait_finished(cdp)
        time.sleep(1.5)  # one /metrics poll after the run
        ds = cdp.eval("JSON.stringify(document.body.dataset)")
        check("the page got the 6 previews and the 2 images through the stream",
              json.loads(ds or "{}") == {"input": "class_label", "ready": "1", "previews": "6", "images": "2",
                                     "finished": "1"}, ds)
        srcs = cdp.eval("[...document.querySelectorAll('figure')].map(f => f.dataset.state + ' ' + "
                        "f.querySelector('img').src.slice(0, 33))")
        check("both images show their final PNG", srcs == ["image data:image/png;base64,iVBORw0KGgo"] * 2, srcs)
        status = cdp.eval("document.getElementById('status').textContent")
        check("the status line reports the request", status.startswith("2 image(s) in") and "6 previews" in status,
              status)
        pool = cdp.eval("document.getElementById('pool').textContent")
        check("the server panel shows the pool read from /metrics", "MiB held or promised" in pool, pool)
        png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
        with open(shot, "wb") as f:
            f.write(png)
        check(f"a screenshot of the page after the run is kept ({os.path.relpath(shot, ROOT)})",
              png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000, len(png))
    finally:
        close_page(p)


if __name__ == "__main__":
    sys.exit(main())
