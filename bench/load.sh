#!/bin/sh
# bench/load.sh — builds bench/load.c and runs it against a varserve server it starts.
#
#   bench/load.sh                      # bundled model if present, else the tiny fixture
#   MODEL=m.safetensors LEVELS=1,4,16,64 REQUESTS=32 bench/load.sh -- --max-batch-images 16
#
# Arguments after -- go to `varserve serve`. Prints the machine, the server's configuration and
# one Markdown table (bench/load.c explains the columns). Needs build/varserve (make).
set -eu
cd "$(dirname "$0")/.."
BIN=${VARSERVE_BIN:-build/varserve}
MODEL=${MODEL:-models/mnist-var.safetensors}
[ -f "$MODEL" ] || MODEL=tests/fixtures/tiny/model.safetensors
LEVELS=${LEVELS:-1,4,16,64}
REQUESTS=${REQUESTS:-32}
[ "${1:-}" = "--" ] && shift
mkdir -p build/bench
${CC:-cc} -std=c11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -o build/bench/load bench/load.c -lcurl -lpthread -lm
[ -x "$BIN" ] || { echo "bench/load.sh: $BIN not found: run make first" >&2; exit 1; }

LOG=$(mktemp /tmp/varserve-load-XXXXXX)
"$BIN" serve --model "$MODEL" --host 127.0.0.1 --port 0 --queue-size 256 "$@" >"$LOG" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true; rm -f "$LOG"' EXIT INT TERM
PORT=""
i=0
while [ -z "$PORT" ] && [ $i -lt 600 ]; do
    PORT=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$LOG" | head -n 1)
    kill -0 $PID 2>/dev/null || { cat "$LOG" >&2; exit 1; }
    [ -n "$PORT" ] || { sleep 0.1; i=$((i + 1)); }
done
until curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null; do sleep 0.1; done

echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server: $BIN serve --model $MODEL $*"
curl -s "http://127.0.0.1:$PORT/info"; echo
build/bench/load --url "http://127.0.0.1:$PORT" --concurrency "$LEVELS" --requests "$REQUESTS"
rc=$?
kill -TERM $PID
wait $PID || rc=1
exit $rc
