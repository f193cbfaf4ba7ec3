#!/bin/bash
# bench/gpu-check.sh — the whole GPU check in one command, for an H100 or H200, sized by its time
# limits to finish within 8 minutes (not yet run on a GPU: none has been lent):
#   bash bench/gpu-check.sh [OUTDIR]          (OUTDIR defaults to $OUT, else gpu-check-out/)
# 1. builds with nvcc (make CUDA=1) — with the Debian libraries from .gpu-deps/ (made by
#    bench/gpu-deps.sh on a Debian machine) when this machine lacks them;
# 2. check_emu built by nvcc: the emulated device's semantics checked against the real GPU;
# 3. check_cuda on the real device: every backend op against the CPU, the tiny fixture token for
#    token in FP32 (its parity), BF16 teacher-forced logits, KV compression with device pages;
# 4. varserve bench on random VAR-d16 and VAR-d30 (tools/make_random_model.py, BF16 files) at
#    batch 1, 8, 32, 64 under the full cache and scalekv 0.1, BF16 mode, one timed rep after a
#    warm-up, each run under its own time limit so one slow case cannot eat the rest.
# Results go to OUTDIR as at most 8 files: log.txt (build and progress), check_emu.txt,
# check_cuda.txt, bench-d16-full.txt, bench-d16-scalekv.txt, bench-d30-full.txt,
# bench-d30-scalekv.txt, nvidia-smi.txt. Record the figures in bench/RESULTS.md with the GPU named.
set -u
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-gpu-check-out}}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/log.txt"
: >"$LOG"
say() { echo "gpu-check: $*" | tee -a "$LOG"; }
T0=$(date +%s)
elapsed() { echo $(($(date +%s) - T0)); }

nvidia-smi >"$OUTDIR/nvidia-smi.txt" 2>&1 || say "nvidia-smi failed (see nvidia-smi.txt)"
say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
[ -n "$NVCC" ] || { say "no nvcc on this machine"; exit 1; }

# ---- 1. build -------------------------------------------------------------------------------------
if ! echo '#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <check.h>' | cc -E -x c - >/dev/null 2>&1; then
    if ! ls .gpu-deps/*.deb >/dev/null 2>&1; then
        say "the build's libraries are missing and .gpu-deps/ is empty: run bench/gpu-deps.sh on a Debian 12 machine and carry .gpu-deps"
        exit 1
    fi
    P=/tmp/vs-deps
    rm -rf "$P" && mkdir -p "$P"
    for f in .gpu-deps/*.deb; do dpkg-deb -x "$f" "$P" 2>>"$LOG" || ar p "$f" data.tar.xz | tar -xJ -C "$P"; done
    L="$P/usr/lib/x86_64-linux-gnu"
    ln -sf openblas-pthread/libopenblas.so.0 "$L/libopenblas.so"   # Debian's alternatives link
    ln -sf openblas-pthread/libopenblas.so.0 "$L/libopenblas.so.0"
    export CPATH="$P/usr/include:$P/usr/include/x86_64-linux-gnu:$P/usr/include/x86_64-linux-gnu/openblas-pthread${CPATH:+:$CPATH}"
    export LIBRARY_PATH="$L:$L/openblas-pthread${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$L:$L/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PKG_CONFIG_PATH="$L/pkgconfig"
    say "using the Debian libraries unpacked from .gpu-deps/ into $P"
fi
JOBS=$(nproc 2>/dev/null || echo 4)
# --as-needed: libcurl (used only by check_server) need not exist at run time
if ! make -j"$JOBS" CUDA=1 NVCC="$NVCC" CFLAGS="-O2 -g -Wl,--as-needed" NVARCH="-gencode arch=compute_90,code=sm_90" \
        build/varserve build/tests/check_cuda >>"$LOG" 2>&1; then
    say "build failed (log.txt)"; tail -30 "$LOG"; exit 1
fi
say "built with $NVCC in $(elapsed) s"
"$NVCC" -O2 -std=c++17 -I. -gencode arch=compute_90,code=sm_90 -x cu -o build/tests/check_emu_gpu \
    tests/check_emu.cu -lcublas -lcublasLt -lcudnn -Xlinker --as-needed -lcheck -lsubunit -lrt -lm -lpthread >>"$LOG" 2>&1 ||
    say "check_emu did not build with nvcc (log.txt)"

# ---- 2, 3. correctness on the device ------------------------------------------------------------------
if [ -x build/tests/check_emu_gpu ]; then
    timeout 120 build/tests/check_emu_gpu >"$OUTDIR/check_emu.txt" 2>&1
    say "check_emu on the GPU: rc $? — $(tail -n 1 "$OUTDIR/check_emu.txt")"
fi
CK_FORK=no timeout 300 build/tests/check_cuda >"$OUTDIR/check_cuda.txt" 2>&1
say "check_cuda on the GPU: rc $? — $(grep -E '^[0-9]+%|skipped' "$OUTDIR/check_cuda.txt") ($(elapsed) s)"

# ---- 4. benchmarks on reference shapes -------------------------------------------------------------
PY=
for p in python3 /usr/bin/python3; do "$p" -c 'import numpy' 2>/dev/null && { PY=$p; break; }; done
[ -n "$PY" ] || say "no python3 with numpy: the random models cannot be made"
for d in 16 30; do
    M=/tmp/var-d$d-random.safetensors
    [ -f "$M" ] || timeout 240 "$PY" tools/make_random_model.py --depth $d --dtype bf16 --out "$M" >>"$LOG" 2>&1 ||
        { say "make_random_model d$d failed"; continue; }
    # the pool: room for 64 images under the full cache (VAR-d30: ~0.6 GB an image in FP32 pages)
    POOL=$([ $d = 30 ] && echo 90000 || echo 30000)
    for pol in full scalekv; do
        args=(bench --backend cuda --precision bf16 --model "$M" --batch 1,8,32,64 --reps 1 --pool-mb $POOL)
        [ $pol = scalekv ] && args+=(--kv-policy scalekv --kv-budget 0.1)
        left=$((480 - $(elapsed)))
        [ $left -gt 30 ] || { say "no time left for d$d $pol"; continue; }
        lim=$((left < 150 ? left : 150))
        timeout $lim ./build/varserve "${args[@]}" >"$OUTDIR/bench-d$d-$pol.txt" 2>&1
        rc=$?
        [ $rc = 124 ] && echo "(stopped after $lim s)" >>"$OUTDIR/bench-d$d-$pol.txt"
        say "bench d$d $pol: rc $rc ($(elapsed) s)"
    done
done
say "done in $(elapsed) s"
