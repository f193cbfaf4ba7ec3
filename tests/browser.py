"""tests/browser.py — a real browser for the tests: Debian's chromium, headless, driven over its
DevTools protocol (a WebSocket client written here, enough for Runtime.evaluate and
Page.captureScreenshot). chromium() finds it, installing the Debian package when run as root;
open_page() starts it on a URL and connects to the page."""
import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request


def chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name), ""
    if os.geteuid() != 0:
        return None, "chromium is not installed (Debian package chromium; run as root to let the test install it)"
    p = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
                       capture_output=True, text=True, timeout=900, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if p.returncode != 0 or not shutil.which("chromium"):
        return None, "apt-get install chromium failed: " + (p.stderr or p.stdout)[-300:]
    return shutil.which("chromium"), ""


class Cdp:
    """Chrome's DevTools protocol over a WebSocket (RFC 6455, the client side: masked text frames
    out; unfragmented frames in, which is what Chrome sends), enough for Runtime.evaluate and
    Page.captureScreenshot."""

    def __init__(self, ws_url):
        hostport, path = ws_url[len("ws://"):].split("/", 1)
        host, port = hostport.split(":")
        self.s = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise OSError("the DevTools WebSocket handshake failed: " + head.decode(errors="replace"))
        self.next_id = 0

    def _read(self, n):
        while len(self.buf) < n:
            d = self.s.recv(1 << 16)
            if not d:
                raise EOFError
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def call(self, method, **params):
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
                                if n < 65536 else bytes([0x80 | 127]) + n.to_bytes(8, "big"))
        mask = os.urandom(4)
        self.s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._read(2), "big")
            elif n == 127:
                n = int.from_bytes(self._read(8), "big")
            msg = self._read(n)
            if b0 & 0x0F != 1:
                continue
            m = json.loads(msg)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise OSError(f"{method}: {m['error']}")
                return m["result"]

    def eval(self, expr):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")


def open_page(exe, url, d):
    """chromium on url, its profile under d: (process, Cdp of the page), or (process, None)."""
    p = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--no-first-run", f"--user-data-dir={d}/chromium", "--window-size=1100,900",
                          "--remote-debugging-port=0", url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    ws = None
    for line in p.stderr:
        if "DevTools listening on " in line:
            ws = line.split("DevTools listening on ", 1)[1].strip()
            break
    if ws is None:
        return p, None
    devtools = ws.split("/devtools/")[0].replace("ws://", "http://")
    pages = []
    t0 = time.monotonic()
    while not pages and time.monotonic() - t0 < 30:
        try:
            with urllib.request.urlopen(devtools + "/json/list", timeout=10) as r:
                pages = [x for x in json.loads(r.read() or b"[]") if x.get("type") == "page"]
        except OSError:
            pass
        time.sleep(0.2)
    return p, Cdp(pages[0]["webSocketDebuggerUrl"]) if pages else None


def wait_finished(cdp, timeout=120):
    """Until the playground sets data-finished (its request answered, or failed)."""
    t0 = time.monotonic()
    while cdp.eval("document.body.dataset.finished") != "1" and time.monotonic() - t0 < timeout:
        time.sleep(0.2)


def close_page(p):
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
