"""What a reflink cycle's clone and extent maps cost as the image fragments (issue 15, "RPO at
16 GiB": after ~45,000 random writes the field's FICLONE took up to 25 s and the two FIEMAP
maps up to 39 s).

On a loop-mounted XFS (``reflink=1``) made here, a sparse image of ``--gib`` GiB gets random
64 KiB writes (fdatasync every 1,000), the way the RPO writer fragments it, while a clone of it
is kept as the reflink source keeps its parent (so a write into a shared extent is copied on
write). At each checkpoint of ``--checkpoints`` writes done (cumulative):

* ``clone``: FICLONE of the image into a new file, fsync (what ``ReflinkSource._clone`` does);
* ``ioctl``: the FIEMAP calls alone over the new clone (``FIEMAP_FLAG_SYNC``), no decoding,
  with 512 and with 16,384 extents per call;
* ``map``: :func:`extent_map` (512 per call, an :class:`Extent` per extent) and
  :func:`extent_arrays` (16,384 per call, numpy records);
* ``diff``: :func:`differing_ranges` and :func:`changed_ranges` of the previous clone's map and
  the new one's (the same answer checked);

then the previous clone is removed (the new one is the next parent). Times are wall seconds,
the median of ``--reps`` repetitions of each read (the clone once). Needs root and xfsprogs.

    python3 -m tests.bench.fiemap_cost [--gib 16] [--checkpoints 1000,5000,10000,25000,50000]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import statistics
import struct
import time
from pathlib import Path

from replicad.sources.extents import (FIEMAP_FLAG_SYNC, FIEMAP_MAX_U64, FS_IOC_FIEMAP, ExtentArrays,
                                      changed_ranges, clone_file, differing_ranges, extent_arrays, extent_map)
from tests.loopfs import loop_fs

BS = 65536
HEAD = struct.Struct("=QQIIII")
EXT = 56


def ioctl_only(fd: int, per_call: int) -> int:
    """The FIEMAP calls of a whole map, decoding only what the pagination needs; extents seen."""
    buf = bytearray(HEAD.size + per_call * EXT)
    start, seen = 0, 0
    while True:
        HEAD.pack_into(buf, 0, start, FIEMAP_MAX_U64 - start, FIEMAP_FLAG_SYNC, 0, per_call, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        mapped = min(HEAD.unpack_from(buf, 0)[3], per_call)
        if mapped == 0:
            return seen
        seen += mapped
        off = HEAD.size + (mapped - 1) * EXT
        logical, _, length = struct.unpack_from("=QQQ", buf, off)
        (flags,) = struct.unpack_from("=I", buf, off + 40)
        if flags & 1:
            return seen
        start = logical + length


def timed(fn, reps: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(work: Path, gib: int, checkpoints: list[int], reps: int, seed: int) -> list[dict]:
    size = gib * 2**30
    n_blocks = size // BS
    rng = random.Random(seed)
    rows = []
    with loop_fs(work, "xfs", size_bytes=size + size // 2 + 2**30) as mnt:
        image, clones = mnt / "img", mnt / "clones"
        clones.mkdir()
        with open(image, "wb") as f:
            f.truncate(size)
        fd = os.open(image, os.O_RDWR)
        prev: Path | None = None
        prev_arr: ExtentArrays | None = None
        prev_list = None
        done = 0
        block = bytearray(os.urandom(BS))
        try:
            for k, target in enumerate(checkpoints):
                while done < target:
                    struct.pack_into("=Q", block, 0, done)
                    os.pwrite(fd, block, rng.randrange(n_blocks) * BS)
                    done += 1
                    if done % 1000 == 0:
                        os.fdatasync(fd)
                os.fdatasync(fd)
                clone = clones / f"c{k}"
                cfd = os.open(clone, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                t0 = time.perf_counter()
                clone_file(fd, cfd, src=str(image), dst=str(clone))
                os.fsync(cfd)
                t_clone = time.perf_counter() - t0
                os.close(cfd)
                rfd = os.open(clone, os.O_RDONLY)
                try:
                    t_io512, n = timed(lambda: ioctl_only(rfd, 512), reps)
                    t_io16k, _ = timed(lambda: ioctl_only(rfd, 16384), reps)
                    t_list, lst = timed(lambda: extent_map(rfd), reps)
                    t_arr, arr = timed(lambda: extent_arrays(rfd), reps)
                finally:
                    os.close(rfd)
                assert arr.extents() == lst, "extent_arrays and extent_map differ"
                row = {"writes": done, "extents": n, "clone_s": t_clone, "ioctl512_s": t_io512,
                       "ioctl16k_s": t_io16k, "extent_map_s": t_list, "extent_arrays_s": t_arr}
                if prev is not None:
                    t_dl, r1 = timed(lambda: differing_ranges(prev_list, size, lst, size), reps)
                    t_da, r2 = timed(lambda: changed_ranges(prev_arr, size, arr, size), reps)
                    assert r1 == r2, "changed_ranges and differing_ranges differ"
                    row.update(differing_ranges_s=t_dl, changed_ranges_s=t_da, ranges=len(r1))
                    prev.unlink()
                prev, prev_arr, prev_list = clone, arr, lst
                rows.append(row)
                print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
        finally:
            os.close(fd)
            for p in clones.iterdir():
                p.unlink()
            image.unlink()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=int, default=16)
    ap.add_argument("--checkpoints", default="1000,5000,10000,25000,50000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/replicad-fiemap-cost"))
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        run(args.workdir, args.gib, [int(x) for x in args.checkpoints.split(",")], args.reps, args.seed)
    finally:
        try:
            args.workdir.rmdir()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
