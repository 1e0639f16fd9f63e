#!/usr/bin/env bash
# Install everything replicad, its demo and its tests need on a fresh Debian machine with
# Python >= 3.11 (run as root for the Debian packages; idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v mke2fs >/dev/null 2>&1 || [ -x /usr/sbin/mke2fs ] || need+=(e2fsprogs)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)          # alert rule and dashboard tests
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)      # unit file verification
command -v rsync >/dev/null 2>&1 || need+=(rsync)                  # the benchmark's peer tool
command -v mkfs.xfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.xfs ] || need+=(xfsprogs)        # reflink source tests (loop XFS)
command -v chromium >/dev/null 2>&1 || need+=(chromium)          # status page test (real headless browser)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)  # notification test
command -v mkfs.btrfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.btrfs ] || need+=(btrfs-progs) # reflink source tests (loop btrfs)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)          # snapshot export tests (qemu-img compare, qemu-io)
command -v nbdinfo >/dev/null 2>&1 || need+=(libnbd-bin)           # snapshot export tests (nbdinfo)
command -v nbdfuse >/dev/null 2>&1 || need+=(nbdfuse fuse3)        # replicad mount/files/diff (the export as a file)
command -v qemu-storage-daemon >/dev/null 2>&1 || need+=(qemu-system-common)  # qemu snapshot source (QSD) and its tests
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)     # qemu source against a running VM (its test)
[ -e /usr/lib/python3/dist-packages/nbd.py ] || need+=(python3-libnbd)            # qemu source: libnbd's Python binding
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql postgresql-contrib)  # PostgreSQL crash-consistency test and bench rows
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        # policy-rc.d 101: the packages' services must not start on this machine
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
        rm -f /usr/sbin/policy-rc.d
    else
        echo "missing Debian packages: ${need[*]} (run as root or install them)" >&2
        exit 1
    fi
fi
# A Debian system Python marks itself externally managed (PEP 668): this script installs into
# the interpreter it is given, as a throwaway test/demo machine wants; sites use a venv
# (README, "Install on a site").
# Inside a fresh venv (Debian 12's pip 23.0 and setuptools 66, no wheel) bring the build tools up
# first: an install there failed "invalid command 'bdist_wheel'"; the system's own pip is Debian's.
if python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    python3 -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
fi
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# libnbd's Python binding is Debian's only (not on PyPI): link its two files into the interpreter
# replicad runs on (the qemu source reads dirty bitmaps with it); it must be the same Python minor.
if ! python3 -c 'import nbd' >/dev/null 2>&1; then
    sp=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mod=/usr/lib/python3/dist-packages/libnbdmod$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
    if [ -e "$mod" ]; then
        ln -sf /usr/lib/python3/dist-packages/nbd.py "$mod" "$sp/"
    else
        echo "python3-libnbd has no build for $(python3 -V): the qemu snapshot source will not work" >&2
    fi
fi
