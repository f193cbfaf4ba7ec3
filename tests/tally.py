"""tests/tally.py — what the Python test scripts run as programs by `make test` share
(test_cli.py, test_mnist_parity.py, test_prometheus.py): `check` counts and reports one
assertion, `finish` prints the totals and exits 1 when any failed; `http` is their HTTP client."""
import json
import sys
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
