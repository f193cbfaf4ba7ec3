#!/usr/bin/env python3
"""tests/test_hostile.py — the HTTP server against clients that break the rules, over raw sockets
(the bytes on the wire are the point): error bodies that must decode as UTF-8 JSON whatever the
client sent, NUL bytes, request smuggling (two Content-Lengths, Transfer-Encodings), bodies over
the limit that common clients send before reading, keep-alive and pipelining, slow clients that
hold connections (the request deadline, the per-address limit, the health listener), 429s held
before they go out, a second server on a port in use.
Needs only python3; run by `make test` with VARSERVE_BIN=build/varserve."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from tally import Server, check, finish  # noqa: E402 (tests/ is on sys.path: run as a script)

BIN = os.environ.get("VARSERVE_BIN", "build/varserve")
MNIST = "models/mnist-var.safetensors"


class Conn:
    """One raw client connection: send bytes, read whole responses (Content-Length framed)."""

    def __init__(self, base, timeout=10):
        host, port = base.rsplit("/", 1)[1].split(":")
        self.s = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError("closed")
        self.buf += chunk

    def response(self):
        """(status, {lowercase header: value}, body); raises EOFError/timeout when none comes."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, hdrs, body

    def closed(self):
        """True when the server closes the connection (EOF) within the timeout."""
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return True
        except (socket.timeout, ConnectionResetError):
            return False

    def close(self):
        self.s.close()


def exchange(base, raw):
    """One raw request on a fresh connection: (status, headers, body) or (0, {}, error text)."""
    c = Conn(base)
    try:
        c.send(raw)
        return c.response()
    except (EOFError, OSError) as e:
        return 0, {}, str(e).encode()
    finally:
        c.close()


def error_shape(body):
    """The documented error object when body is strict UTF-8 JSON of that shape, else None."""
    try:
        e = json.loads(body.decode("utf-8", errors="strict"))["error"]
    except (ValueError, KeyError, TypeError):
        return None
    ok = (isinstance(e.get("message"), str) and isinstance(e.get("type"), str) and
          isinstance(e.get("code"), str) and (e.get("param") is None or isinstance(e["param"], str)))
    return e if ok else None


def post(body, extra=b""):
    return (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra +
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def get(path, extra=b""):
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


def test_error_bodies(base):
    cases = [
        ("invalid UTF-8 in a field value", post(b'{"class_label":"\xff\xfe"}'), 400),
        ("invalid UTF-8 in a field name", post(b'{"\xc3\x28abc":1}'), 400),
        ("a long multi-byte value (cut at the limit)", post(('{"class_label":"%s"}' % ("\u00e9" * 41)).encode()), 400),
        ("a 4-byte character across the cut", post(('{"class_label":"%s"}' % ("a" + "\U0001F600" * 12)).encode()), 400),
        ("invalid UTF-8 in the path", get(b"/x%ff%c3"), 404),
        ("raw bytes over 0x7f in the path", get(b"/\xff\xfe"), 404),
        ("invalid UTF-8 in the Content-Type", post(b"{}", b"X: 1\r\n").replace(b"application/json", b"text/\xff"), 415),
        ("a control character in a value", post(b'{"class_label":"a\\u0001\\n"}'), 400),
    ]
    for name, raw, want in cases:
        st, _, body = exchange(base, raw)
        check(f"{name}: {want} with a UTF-8 JSON error body", st == want and error_shape(body) is not None,
              f"{st} {body[:300]!r}")


def test_nul(base):
    for name, raw, param in [
        ("an escaped NUL in a value", post(b'{"class_label":"3\\u0000x"}'), "class_label"),
        ("an escaped NUL in kv_policy", post(b'{"class_label":3,"kv_policy":"full\\u0000x"}'), "kv_policy"),
        ("an escaped NUL in a key", post(b'{"class_label\\u0000zzz":3}'), "class_label"),
        ("a raw NUL byte in a value", post(b'{"class_label":"3\x00x"}'), "class_label"),
        ("a NUL in a nested string", post(b'{"class_label":3,"seed":[{"a":"\\u0000"}]}'), "seed"),
    ]:
        st, _, body = exchange(base, raw)
        e = error_shape(body)
        check(f"{name} is 400 naming the field", st == 400 and e and e["param"] == param and
              e["code"] == "nul_character", f"{st} {body[:300]!r}")
    st, _, body = exchange(base, post(b'{"class_label":3,"seed":1,"x":"\\\\u0000"}'))
    e = error_shape(body)
    check("an escaped backslash before u0000 is no NUL (the unknown field is named instead)",
          st == 400 and e and e["code"] == "unknown_field", f"{st} {body[:300]!r}")
    st, _, body = exchange(base, post(b'{"class_label":3}\x00'))
    check("a NUL after the JSON value is 400", st == 400 and error_shape(body) is not None, f"{st} {body[:200]!r}")
    for path in [b"/health%00", b"/health%00x", b"/ready%00?a=1"]:
        st, _, body = exchange(base, get(path))
        check(f"GET {path.decode()} is 400, not the endpoint", st == 400 and error_shape(body) is not None,
              f"{st} {body[:200]!r}")


def test_framing(base):
    c = Conn(base, timeout=5)
    c.send(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 17\r\n"
           b"Content-Length: 99999999\r\n\r\n{\"class_label\":3}")
    try:
        st, h, body = c.response()
        closed = c.closed()
    except (EOFError, OSError) as e:
        st, h, body, closed = 0, {}, str(e).encode(), False
    c.close()
    e = error_shape(body)
    check("two different Content-Lengths: 400 JSON, then the connection closes",
          st == 400 and e and e["code"] == "conflicting_content_length" and closed, f"{st} {closed} {body[:300]!r}")
    t0 = time.monotonic()
    st, _, body = exchange(base, b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Transfer-Encoding: gzip\r\n\r\n")
    e = error_shape(body)
    check("Transfer-Encoding: gzip: 501 JSON at once, not at the idle timeout",
          st == 501 and e and e["code"] == "unsupported_transfer_encoding" and time.monotonic() - t0 < 5,
          f"{st} {body[:300]!r}")
    st, _, body = exchange(base, b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n")
    check("Transfer-Encoding: chunked, gzip on GET /health is 501 too", st == 501 and error_shape(body) is not None,
          f"{st} {body[:300]!r}")
    st, _, body = exchange(base, b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n")
    check("Transfer-Encoding with Content-Length is 400 JSON", st == 400 and error_shape(body) is not None,
          f"{st} {body[:300]!r}")


def test_large_bodies(base):
    big = b'{"class_label":3,"x":"' + b"a" * (10 << 20) + b'"}'
    req = urllib.request.Request(base + "/generate", data=big, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            st, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        st, body = e.code, e.read()
    except OSError as e:
        st, body = 0, str(e).encode()
    check("a 10 MB body with Content-Length (urllib, no 100-continue) reads its 413",
          st == 413 and error_shape(body) is not None, f"{st} {body[:200]!r}")

    host, port = base.rsplit("/", 1)[1].split(":")
    hc = http.client.HTTPConnection(host, int(port), timeout=60)

    def chunks():
        for _ in range(160):
            yield b"a" * 65536
    try:
        hc.request("POST", "/generate", body=chunks(), headers={"Content-Type": "application/json"},
                   encode_chunked=True)
        r = hc.getresponse()
        st, body = r.status, r.read()
    except OSError as e:
        st, body = 0, str(e).encode()
    hc.close()
    check("a 10 MB chunked body (http.client) reads its 413", st == 413 and error_shape(body) is not None,
          f"{st} {body[:200]!r}")

    c = Conn(base)
    c.send(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 10485760\r\nExpect: 100-continue\r\n\r\n")
    try:
        st, _, body = c.response()
    except (EOFError, OSError) as e:
        st, body = 0, str(e).encode()
    c.close()
    check("Expect: 100-continue with a body over the limit: 413 before the body is sent",
          st == 413 and error_shape(body) is not None, f"{st} {body[:200]!r}")


def test_keep_alive_and_pipelining(base):
    c = Conn(base)
    seen = []
    try:
        for path in [b"/health", b"/ready", b"/info", b"/metrics", b"/nope"]:
            c.send(get(path))
            st, h, _ = c.response()
            seen.append((path, st, h.get("connection", "")))
        c.send(post(b'{"class_label":"\xff"}'))
        st, h, _ = c.response()
        seen.append(("400", st, h.get("connection", "")))
    except (EOFError, OSError) as e:
        seen.append(("error", str(e)))
    c.close()
    check("one connection answers /health, /ready, /info, /metrics, a 404 and a 400 without closing",
          len(seen) == 6 and all(x[2].lower() != "close" for x in seen), seen)

    c = Conn(base, timeout=60)
    gen = b'{"class_label":3,"seed":7,"response_format":"png"}'
    c.send(b"".join([get(b"/health")] * 10 + [post(gen), get(b"/ready")]))
    got = []
    try:
        for _ in range(12):
            st, h, body = c.response()
            got.append((st, h.get("content-type", ""), body[:40]))
    except (EOFError, OSError) as e:
        got.append(("error", str(e)))
    c.close()
    order = [g[0] for g in got]
    check("ten GET /health, a POST /generate and a GET /ready pipelined: all twelve answered in order",
          order == [200] * 12 and got[10][1] == "image/png" and b"ready" in got[11][2] and
          all(b'"ok"' in g[2] for g in got[:10]), got)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_slow_clients(d):
    """Slow clients fill the connection limit: the health listener answers meanwhile, the
    per-address limit refuses the ones past it, and the request deadline ends them all."""
    hp = free_port()
    srv = Server(BIN, d, "slow", "--model", MNIST, "--backend", "cpu", "--max-connections", "40",
                 "--max-connections-per-address", "30", "--request-timeout-s", "3", "--health-port", str(hp))
    if not check("server with a health listener starts", srv.base is not None, srv.text()):
        srv.stop()
        return
    slow = []
    for _ in range(35):
        c = Conn(srv.base, timeout=20)
        c.send(b"GET /health HTTP/1.1\r\nHo")  # and never the rest
        slow.append(c)
    time.sleep(0.5)
    refused = 0
    for c in slow:
        c.s.setblocking(False)
        try:
            if c.s.recv(1) == b"":
                refused += 1
        except BlockingIOError:
            pass
        except ConnectionResetError:
            refused += 1
        c.s.setblocking(True)
        c.s.settimeout(20)
    check("connections past max_connections_per_address (30 of 35) are refused at once", refused == 5,
          f"{refused} refused")
    st, _, body = exchange(f"http://127.0.0.1:{hp}", get(b"/health"))
    check("/health on health_port answers while slow clients hold the main port", st == 200 and b'"ok"' in body,
          f"{st} {body!r}")
    st, _, body = exchange(f"http://127.0.0.1:{hp}", get(b"/ready"))
    check("/ready on health_port answers too", st == 200, f"{st} {body!r}")
    st, _, body = exchange(f"http://127.0.0.1:{hp}", post(b'{"class_label":3}'))
    e = error_shape(body)
    check("health_port serves nothing else (404 JSON)", st == 404 and e is not None, f"{st} {body!r}")
    ended = sum(1 for c in slow if c.closed())
    check("request_timeout_s ends every connection whose request never completes", ended == 35,
          f"{ended} of 35 closed by the server")
    for c in slow:
        c.close()
    st, _, _ = exchange(srv.base, get(b"/health"))
    check("the main port answers again once they are gone", st == 200, st)
    c = Conn(srv.base, timeout=20)
    c.send(get(b"/health"))
    st1 = c.response()[0]
    check("an idle keep-alive connection is closed by the deadline too", st1 == 200 and c.closed(), st1)
    c.close()
    check("SIGTERM exits 0 (slow-client server)", srv.stop() == 0, srv.text())


def test_paced_refusals(d):
    """A 429 for a full queue is held queue_full_delay_ms before it goes out, on a connection that
    then stays usable; a server draining with 429s held sends them at once and exits 0."""
    tiny = "tests/fixtures/tiny/model.safetensors"  # slow enough that n = 16 keeps the engine busy

    def busy(srv):
        """One request running, one queued (queue_size 1): the queue is full. Their connections."""
        run = []
        for _ in range(2):
            c = Conn(srv.base, timeout=120)
            c.send(post(b'{"class_label":1,"n":16,"timeout_ms":600000}'))
            run.append(c)
            time.sleep(0.3)
        return run

    srv = Server(BIN, d, "paced", "--model", tiny, "--backend", "cpu", "--queue-size", "1",
                 "--max-batch-images", "1", "--queue-full-delay-ms", "700")
    if not check("server with queue_full_delay_ms 700 starts", srv.base is not None, srv.text()):
        srv.stop()
        return
    run = busy(srv)
    c = Conn(srv.base, timeout=60)
    t0 = time.monotonic()
    c.send(post(b'{"class_label":2}') + get(b"/health"))
    try:
        st, h, body = c.response()
        dt = time.monotonic() - t0
        st2, _, body2 = c.response()
    except (EOFError, OSError) as e:
        st, h, body, dt, st2, body2 = 0, {}, str(e).encode(), 0, 0, b""
    e = error_shape(body)
    check("a full queue's 429 goes out queue_full_delay_ms (700) after the request, with Retry-After",
          st == 429 and dt >= 0.7 and e is not None and e["code"] == "queue_full" and
          int(h.get("retry-after", "0")) >= 1, f"{st} after {dt:.3f} s {h} {body!r}")
    check("the connection stays open: a GET /health pipelined behind the held 429 is answered next",
          st2 == 200 and b'"ok"' in body2 and h.get("connection", "").lower() != "close", f"{st2} {body2!r}")
    c.close()
    for r in run:
        st, _, _ = r.response()
        check("the running and the queued request are served meanwhile", st == 200, st)
        r.close()
    check("SIGTERM exits 0 (paced server)", srv.stop() == 0, srv.text())

    srv = Server(BIN, d, "paced-stop", "--model", tiny, "--backend", "cpu", "--queue-size", "1",
                 "--max-batch-images", "1", "--queue-full-delay-ms", "10000")
    if not check("server with queue_full_delay_ms 10000 starts", srv.base is not None, srv.text()):
        srv.stop()
        return
    run = busy(srv)
    c = Conn(srv.base, timeout=60)
    c.send(post(b'{"class_label":2}'))
    time.sleep(0.3)
    t0 = time.monotonic()
    srv.p.send_signal(signal.SIGTERM)
    try:
        st = c.response()[0]
    except (EOFError, OSError) as e:
        st = str(e)
    dt = time.monotonic() - t0
    try:
        srv.p.wait(60)
    except subprocess.TimeoutExpired:
        pass
    rc = srv.stop()
    check("a server draining with a 429 held sends it at once, and exits 0",
          st == 429 and dt < 1 and rc == 0, f"{st} after {dt:.3f} s, exit {rc}: {srv.text()}")
    for r in run + [c]:
        r.close()


def test_port_in_use(d, base):
    port = base.rsplit(":", 1)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VARSERVE_")}
    p = subprocess.run([BIN, "serve", "--config", os.path.join(d, "hostile.json"), "--model", MNIST, "--backend",
                        "cpu", "--host", "127.0.0.1", "--port", port], capture_output=True, text=True, timeout=60,
                       env=env)
    check("a second server on a port in use exits 2 naming 'port'",
          p.returncode == 2 and "'port'" in p.stderr and "in use" in p.stderr, f"{p.returncode} {p.stderr[-500:]}")
    st, _, _ = exchange(base, get(b"/health"))
    check("the first server still answers", st == 200, st)


def test_reuse_port(d):
    a = Server(BIN, d, "reuse-a", "--model", MNIST, "--backend", "cpu", "--reuse-port", "true")
    port = a.base.rsplit(":", 1)[1] if a.base else "0"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VARSERVE_")}
    b = subprocess.Popen([BIN, "serve", "--config", os.path.join(d, "reuse-a.json"), "--model", MNIST, "--backend",
                          "cpu", "--host", "127.0.0.1", "--port", port, "--reuse-port", "true"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(2)  # it binds before loading: a refused port would have exited by now
    up = b.poll() is None
    check("with reuse_port true on both, a second server shares the port deliberately", a.base and up,
          b.stderr.read() if b.poll() is not None else "")
    if b.poll() is None:
        b.terminate()
        b.wait(60)
    a.stop()


def main():
    with tempfile.TemporaryDirectory() as d:
        srv = Server(BIN, d, "hostile", "--model", MNIST, "--backend", "cpu", "--threads", "2")
        if not check("server starts", srv.base is not None, srv.text()):
            srv.stop()
            finish()
        for t in [test_error_bodies, test_nul, test_framing, test_large_bodies, test_keep_alive_and_pipelining]:
            t(srv.base)
        test_port_in_use(d, srv.base)
        check("the server is still up", srv.p.poll() is None, srv.text())
        check("SIGTERM exits 0", srv.stop() == 0, srv.text())
        test_reuse_port(d)
        test_slow_clients(d)
        test_paced_refusals(d)
    finish()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
