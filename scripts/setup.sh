#!/usr/bin/env bash
# Install everything replicad, its demo and its tests need on a fresh Debian machine with
# Python >= 3.11 (run as root for the Debian packages; idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v mke2fs >/dev/null 2>&1 || [ -x /usr/sbin/mke2fs ] || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    else
        echo "missing Debian packages: ${need[*]} (run as root or install them)" >&2
        exit 1
    fi
fi
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
