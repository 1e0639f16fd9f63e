"""Paired reflink cycles at two image sizes with the same write history (issue 15, the 16/1 GiB
ratio): where a cycle's time goes, per phase, beside the image's extent count.

Two loop-mounted XFS file systems (``reflink=1``) are made under ``--work``, each holding an
image of distinct text-like 64 KiB blocks (``--gib``, default ``1,16``); each gets a
:class:`~replicad.sources.reflink.ReflinkSource` and one local chunk store, and a first (full)
cycle. Then ``--cycles`` rounds: in each, every image gets the same number of random 64 KiB
blocks rewritten (``--changed-mib``; fsynced), its extent count is read (FIEMAP, as
``filefrag`` counts), and one tracked cycle runs and commits; the sizes take turns going
first. Per cycle: wall and CPU seconds (this process), the source's phases (``clone_s``:
FICLONE + fsyncs; ``map_s``: FIEMAP of both clones; ``diff_s``: the comparison and block runs;
``build_s``: reading the changed blocks and building the manifest; ``drop_s``: deleting the
parent clone after the commit), their CPU seconds, and the load average. ``--defrag-at K,..``
runs ``xfs_fsr`` on each image before those rounds (the operator's defragmentation: the next
cycle over-reports and reads what moved; the file systems are then made twice the image's
size, sparse, for the copy). Prints one line per cycle and a median table per size
over windows of ``--window`` cycles; ``--json`` writes every sample.

    python3 -m tests.bench.reflink_ratio --work /var/tmp/rr [--gib 1,16] [--cycles 9]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from replicad.config import VolumeConfig
from replicad.sources.extents import extent_arrays
from replicad.sources.kinds import make_source
from replicad.storage.chunkstore import ChunkStore
from tests.bench.bench import BLOCK_BYTES, VOL, change_bytes, write_text_image
from tests.loopfs import loop_fs

PHASES = ("clone_s", "map_s", "diff_s", "build_s", "drop_s")
CPU: dict[str, float] = {}
"""CPU seconds of this process per phase of the last cycle (:func:`_instrument`)."""


def _instrument() -> None:
    """Wrap the reflink source's phases (FICLONE + fsyncs, the two maps, the comparison, the
    tracked build, the commit's record + parent clone removal) to add their CPU seconds (this
    process, all threads: each phase runs alone) to :data:`CPU`."""
    from replicad.sources import reflink as rl

    def timed(name, fn):
        def wrap(*a, **kw):
            c0 = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                CPU[name] = CPU.get(name, 0.0) + time.process_time() - c0
        return wrap

    def timed_async(name, fn):
        async def wrap(*a, **kw):
            c0 = time.process_time()
            try:
                return await fn(*a, **kw)
            finally:
                CPU[name] = CPU.get(name, 0.0) + time.process_time() - c0
        return wrap

    rl.ReflinkSource._clone = timed("clone", rl.ReflinkSource._clone)
    rl._maps = timed("map", rl._maps)
    rl.changed_ranges = timed("diff", rl.changed_ranges)
    rl.tracked_snapshot = timed_async("build", rl.tracked_snapshot)
    rl.ReflinkSource._keep = timed("drop", rl.ReflinkSource._keep)


def extents_of(path: Path) -> int:
    """The file's extent count (FIEMAP with sync, as ``filefrag`` reports it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return len(extent_arrays(fd, path=str(path)))
    finally:
        os.close(fd)


def defragment(img: Path) -> tuple[float, str]:
    """``xfs_fsr -v`` of ``img`` (copies its data into fresh, contiguous extents and swaps them
    in; shared extents included: the parent clone keeps the old ones). (Seconds, its output.)"""
    t0 = time.perf_counter()
    out = subprocess.run(["xfs_fsr", "-v", str(img)], check=True, timeout=3600, capture_output=True, text=True)
    return time.perf_counter() - t0, (out.stdout + out.stderr).strip()


class Volume:
    """One image on its own loop XFS with its reflink source."""

    def __init__(self, gib: int, mnt: Path, store: ChunkStore, data: Path) -> None:
        self.gib, self.mnt, self.store = gib, mnt, store
        self.img = mnt / "ehr.img"
        self.rng = random.Random(gib)
        cfg = VolumeConfig.model_validate({"name": VOL, "path": str(self.img), "initial_primary": "site-a",
                                           "block_size": BLOCK_BYTES, "source": {"kind": "reflink",
                                                                                 "verify_every": 10**6}})
        self.src = make_source(cfg, data)
        self.parent = None
        self.seq = 0

    def cycle(self) -> dict:
        """One cycle and its commit; the sample."""
        self.seq += 1
        CPU.clear()
        c0, t0 = time.process_time(), time.perf_counter()
        snap = asyncio.run(self.src.snapshot(volume=VOL, seq=self.seq, epoch=1, parent=self.parent,
                                             store=self.store, now_ns=time.time_ns()))
        asyncio.run(self.src.committed(snap))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.parent = snap.result.manifest
        last = self.src.last
        return {"gib": self.gib, "seq": self.seq, "mode": snap.mode, "wall_s": wall, "cpu_s": cpu,
                "load1": os.getloadavg()[0], **{k: last.get(k) for k in PHASES},
                "extents_maps": last.get("extents"), "read_blocks": last.get("read_blocks"),
                **{f"cpu_{k}_s": v for k, v in CPU.items()}}


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--gib", default="1,16")
    ap.add_argument("--cycles", type=int, default=9)
    ap.add_argument("--changed-mib", type=float, default=10.24)
    ap.add_argument("--window", type=int, default=3)
    ap.add_argument("--defrag-at", default="", help="rounds before which xfs_fsr defragments each image")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    _instrument()
    sizes = [int(x) for x in args.gib.split(",") if x]
    changed = int(args.changed_mib * 2**20)
    defrag_at = {int(x) for x in args.defrag_at.split(",") if x}
    samples: list[dict] = []
    with contextlib.ExitStack() as stack:
        vols: list[Volume] = []
        for gib in sizes:
            root = args.work / f"r{gib}"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            size = gib * 2**30
            fs_bytes = (2 * size if defrag_at else size + size // 8) + 2**30
            mnt = stack.enter_context(loop_fs(root, "xfs", size_bytes=fs_bytes))
            store = ChunkStore(root / "store")
            stack.callback(store.close)
            v = Volume(gib, mnt, store, root)
            stack.callback(lambda m=mnt: [p.unlink() for p in (m / ".replicad-clones").glob("*")])
            t0 = time.perf_counter()
            write_text_image(v.img, size, v.rng)
            print(f"{gib} GiB: image written in {time.perf_counter() - t0:.1f}s, {extents_of(v.img)} extents", flush=True)
            s = v.cycle()
            print(f"{gib} GiB: first cycle {s['mode']} {s['wall_s']:.2f}s", flush=True)
            vols.append(v)
        for k in range(args.cycles):
            if k in defrag_at:
                for v in vols:
                    before = extents_of(v.img)
                    dt, said = defragment(v.img)
                    print(f"{v.gib} GiB: xfs_fsr {before} -> {extents_of(v.img)} extents in {dt:.1f}s "
                          f"(load {os.getloadavg()[0]:.1f}): {said[-300:]}", flush=True)
            for v in (vols if k % 2 == 0 else vols[::-1]):
                n = change_bytes(v.img, changed, v.rng, f"{v.gib}-{k}")
                ext = extents_of(v.img)
                s = v.cycle()
                s.update(round=k, image_extents=ext, written_blocks=n)
                samples.append(s)
                print(f"round {k} {v.gib:>2} GiB {s['mode']:8} ext {ext:>7} wall {s['wall_s']*1e3:7.1f} ms "
                      f"cpu {s['cpu_s']*1e3:7.1f} ms | " + " ".join(f"{p[:-2]} {(s[p] or 0)*1e3:6.1f}" for p in PHASES)
                      + " | cpu " + " ".join(f"{p[:-2]} {s.get('cpu_' + p, 0)*1e3:5.1f}" for p in PHASES)
                      + f" | load {s['load1']:.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1))
    print("\nmedians per window of rounds (ms; extents = the image's before the cycle)")
    for lo in range(0, args.cycles, args.window):
        row = []
        for gib in sizes:
            w = [s for s in samples if s["gib"] == gib and lo <= s["round"] < lo + args.window]
            row.append(f"{gib} GiB: ext {med([s['image_extents'] for s in w]):.0f} wall {med([s['wall_s'] for s in w])*1e3:.1f} "
                       f"cpu {med([s['cpu_s'] for s in w])*1e3:.1f} " + " ".join(
                           f"{p[:-2]} {med([s[p] or 0 for s in w])*1e3:.1f}" for p in PHASES) + " cpu " + " ".join(
                           f"{p[:-2]} {med([s.get('cpu_' + p, 0) for s in w])*1e3:.1f}" for p in PHASES))
        ws = [med([s["wall_s"] for s in samples if s["gib"] == g and lo <= s["round"] < lo + args.window]) for g in sizes]
        cs = [med([s["cpu_s"] for s in samples if s["gib"] == g and lo <= s["round"] < lo + args.window]) for g in sizes]
        load = [s["load1"] for s in samples if lo <= s["round"] < lo + args.window]
        print(f"rounds {lo}-{min(lo + args.window, args.cycles) - 1}: " + " | ".join(row)
              + f" | ratio wall {ws[-1] / ws[0]:.2f} cpu {cs[-1] / cs[0]:.2f} | load {min(load):.1f}-{max(load):.1f}")


if __name__ == "__main__":
    main()
