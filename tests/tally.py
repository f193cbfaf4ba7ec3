"""tests/tally.py — the pass/fail tally of the Python test scripts run as programs by `make test`
(test_cli.py, test_mnist_parity.py, test_prometheus.py): `check` counts and reports one
assertion, `finish` prints the totals and exits 1 when any failed."""
import sys

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
