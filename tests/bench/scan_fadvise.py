"""A full scan's page cache, paired: the scan dropping the pages it read behind it against
keeping them (replicad.sources.file, "Page cache"), on reflink cycles.

One loop-mounted XFS (``reflink=1``) under ``--work`` per size (``--gib``, default ``1,16``),
holding an image half full of distinct text-like 64 KiB blocks (the second half a hole, punched
again before each variant).
Per size and variant (``keep``: nothing dropped, the scan before; ``drop``: the default,
a live-source scan dropping the parts nothing else had cached, which is every part of a fresh
clone; ``private``: every part dropped, ``take_snapshot(private=True)``), taking turns first,
a fresh :class:`~replicad.sources.reflink.ReflinkSource` (``verify_every = 2``) and chunk store
run four cycles, 10 MiB rewritten before each after the first: the full scan, a tracked cycle
(its ``drop_s`` deletes the full scan's clone), a verified cycle (the verifier's full scan of
its clone) and a tracked one (its ``drop_s`` deletes the verified clone). Per full scan: wall
and CPU seconds (this process), the growth of ``/proc/meminfo`` Cached (whole host: noisy when
shared) and the scanned clone's own cached bytes (``cachestat``, exact); per tracked cycle:
``drop_s``; the 1-minute load average beside each. The image's own pages are dropped before
each variant (it is this bench's file); the loop device reads its backing file with direct I/O, so
that a read reaches the disk and is cached once, as on a real one.

    python3 -m tests.bench.scan_fadvise --work /tmp/fadv [--gib 1,16] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from replicad.config import VolumeConfig
from replicad.sources import file as file_source
from replicad.sources import reflink as rl
from replicad.sources.kinds import make_source
from replicad.storage.chunkstore import ChunkStore
from tests.bench.bench import BLOCK_BYTES, VOL, change_bytes, write_text_image
from tests.loopfs import loop_fs

VARIANTS = ("keep", "drop", "private")
_take = rl.take_snapshot
_mode = file_source._drop_mode


def set_variant(name: str) -> None:
    """Point the reflink source's scans at variant ``name``."""
    file_source._drop_mode = (lambda fd, private: file_source.DROP_NONE) if name == "keep" else _mode
    rl.take_snapshot = functools.partial(_take, private=True) if name == "private" else _take


def cached_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1])
    raise RuntimeError("no Cached in /proc/meminfo")


def clone_cached_bytes(clone_dir: Path) -> int:
    total = 0
    for p in clone_dir.glob("*.clone"):
        fd = os.open(p, os.O_RDONLY)
        try:
            total += (file_source.cached_pages(fd, 0, 0) or 0) * os.sysconf("SC_PAGE_SIZE")
        finally:
            os.close(fd)
    return total


def run_variant(name: str, img: Path, root: Path, rng: random.Random) -> dict:
    set_variant(name)
    size = img.stat().st_size  # the second half back to a hole (the edits of the last variant)
    subprocess.run(["fallocate", "--punch-hole", "--offset", str(size // 2), "--length", str(size - size // 2),
                    str(img)], check=True)
    fd = os.open(img, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    data = root / f"data-{name}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    cfg = VolumeConfig.model_validate({"name": VOL, "path": str(img), "initial_primary": "site-a",
                                       "block_size": BLOCK_BYTES, "source": {"kind": "reflink", "verify_every": 2}})
    src = make_source(cfg, data)
    out: dict = {"variant": name}
    parent = None
    with ChunkStore(data / "store") as store:
        for seq in (1, 2, 3, 4):
            if seq > 1:
                change_bytes(img, 10 * 2**20, rng, f"{name}-{seq}")
            k0, c0, t0 = cached_kib(), time.process_time(), time.perf_counter()
            snap = asyncio.run(src.snapshot(volume=VOL, seq=seq, epoch=1, parent=parent, store=store,
                                            now_ns=time.time_ns()))
            wall, cpu, grown = time.perf_counter() - t0, time.process_time() - c0, cached_kib() - k0
            clone = clone_cached_bytes(src.clone_dir)
            asyncio.run(src.committed(snap))
            parent = snap.result.manifest
            out[seq] = {"mode": snap.mode, "wall_s": wall, "cpu_s": cpu, "cached_grown_mib": grown / 1024,
                        "clone_cached_mib": clone / 2**20, "drop_s": src.last.get("drop_s"),
                        "load1": os.getloadavg()[0], "root": parent.root.hex()[:12]}
    for p in src.clone_dir.glob(f"{VOL}.*"):
        p.unlink()
    shutil.rmtree(data)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--gib", default="1,16")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    for gib in [int(x) for x in args.gib.split(",") if x]:
        root = args.work / f"f{gib}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        size = gib * 2**30
        with contextlib.ExitStack() as stack:
            mnt = stack.enter_context(loop_fs(root, "xfs", size_bytes=size + 2**30))
            # the loop device reads its backing file with O_DIRECT: no second copy of every page
            # read in the host's cache (a file system on a disk has none)
            dev = subprocess.run(["losetup", "-j", str(root / "xfs.fsimg")], capture_output=True, text=True,
                                 check=True).stdout.split(":")[0]
            subprocess.run(["losetup", "--direct-io=on", dev], check=True)
            img = mnt / "ehr.img"
            rng = random.Random(gib)
            t0 = time.perf_counter()
            write_text_image(img, size // 2, rng)
            os.truncate(img, size)
            print(f"{gib} GiB (half full): written in {time.perf_counter() - t0:.1f}s", flush=True)
            for r in range(args.rounds):
                order = variants[r % len(variants):] + variants[:r % len(variants)]
                for name in order:
                    s = run_variant(name, img, root, rng)
                    for seq in (1, 2, 3, 4):
                        c = s[seq]
                        print(f"{gib:>2} GiB round {r} {name:7} #{seq} {c['mode']:8} wall {c['wall_s']:7.2f}s "
                              f"cpu {c['cpu_s']:7.2f}s cached +{c['cached_grown_mib']:8.1f} MiB "
                              f"clone cached {c['clone_cached_mib']:8.1f} MiB drop {(c['drop_s'] or 0) * 1e3:7.1f} ms "
                              f"load {c['load1']:.1f} root {c['root']}", flush=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
