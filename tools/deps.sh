#!/bin/sh
# Installs the Debian packages varserve needs to build, test and run, when they are missing.
#   tools/deps.sh          install what is missing (apt-get as root; otherwise print the command)
#   tools/deps.sh --check  only report what is missing; exit 1 if anything is
set -eu
PKGS="build-essential pkg-config libopenblas-dev libmicrohttpd-dev libcjson-dev libpng-dev libsentencepiece-dev check
libcurl4-openssl-dev python3 python3-numpy prometheus xxd"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    exit 0
fi
if [ "${1:-}" = "--check" ] && [ "$(id -u)" != 0 ]; then
    echo "varserve: missing Debian packages:$missing" >&2
    echo "install them with: sudo apt-get install -y$missing" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ]; then
    echo "varserve: installing missing Debian packages:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || true
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
else
    echo "varserve: missing Debian packages:$missing" >&2
    echo "run as root: make deps, or: sudo apt-get install -y$missing" >&2
    exit 1
fi
