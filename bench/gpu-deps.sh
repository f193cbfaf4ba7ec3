#!/bin/sh
# bench/gpu-deps.sh — run HERE (Debian 12, before a GPU run): downloads the Debian packages the
# build needs into .gpu-deps/ (ignored by git), for a GPU machine that has CUDA but not these
# libraries and cannot reach a package registry. bench/gpu-check.sh unpacks them into /tmp when
# the machine lacks them. Carry .gpu-deps with the working tree (about 15 MB).
set -eu
cd "$(dirname "$0")/.."
mkdir -p .gpu-deps
cd .gpu-deps
rm -f ./*.deb
apt-get download libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libgfortran5 \
    libmicrohttpd-dev libmicrohttpd12 libcjson-dev libcjson1 libpng-dev libpng16-16 check \
    libsubunit-dev libsubunit0 libcurl4-openssl-dev libcurl4
du -sh .
