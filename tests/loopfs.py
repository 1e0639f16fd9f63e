"""Loop-mounted XFS (reflink=1) and btrfs file systems made by a test, and removed by it.

``loop_fs(workdir, "xfs")`` makes a sparse image file (default 512 MiB) under ``workdir``,
formats it, attaches it to a loop device of its own (``losetup --find --show``), mounts that
device at ``workdir/mnt-<kind>`` and yields the mount point. On exit it unmounts that mount
point, detaches that loop device — both by their own paths, never by name patterns — and
deletes the image; every command is bounded (``timeout``). Needs root and ``mkfs.xfs`` /
``mkfs.btrfs`` (Debian ``xfsprogs`` / ``btrfs-progs``, installed by ``scripts/setup.sh``): a
missing tool is a skip that says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MKFS = {"xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], "btrfs": ["mkfs.btrfs", "-q", "-f"]}
PACKAGES = {"xfs": "xfsprogs", "btrfs": "btrfs-progs"}
CMD_TIMEOUT_S = 60


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT_S, check=False)


def require_tools(kind: str) -> None:
    """Skip (with the reason) when this machine cannot make a ``kind`` file system here."""
    tool = MKFS[kind][0]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (Debian package {PACKAGES[kind]}; scripts/setup.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip(f"mounting a loop {kind} file system needs root")


@contextlib.contextmanager
def loop_fs(workdir: Path, kind: str, size_bytes: int = 512 * 2**20) -> Iterator[Path]:
    """Mount a fresh ``kind`` (``"xfs"`` | ``"btrfs"``) file system; yield its mount point."""
    require_tools(kind)
    image = workdir / f"{kind}.fsimg"
    mnt = workdir / f"mnt-{kind}"
    with open(image, "wb") as f:
        f.truncate(size_bytes)
    res = _run([*MKFS[kind], str(image)])
    if res.returncode != 0:
        image.unlink()
        raise RuntimeError(f"{MKFS[kind][0]} failed: {res.stderr.strip()}")
    res = _run(["losetup", "--find", "--show", str(image)])
    if res.returncode != 0:
        image.unlink()
        pytest.skip(f"no loop device available here: {res.stderr.strip()}")
    device = res.stdout.strip()
    mounted = False
    try:
        mnt.mkdir()
        res = _run(["mount", device, str(mnt)])
        if res.returncode != 0:
            raise RuntimeError(f"mount {device} {mnt} failed: {res.stderr.strip()}")
        mounted = True
        yield mnt
    finally:
        if mounted:
            res = _run(["umount", str(mnt)])
            if res.returncode != 0:  # something still open in it (a test's process): lazily
                _run(["umount", "-l", str(mnt)])
        _run(["losetup", "-d", device])
        with contextlib.suppress(OSError):
            mnt.rmdir()
        with contextlib.suppress(OSError):
            image.unlink()
