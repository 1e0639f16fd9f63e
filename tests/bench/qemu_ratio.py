"""The qemu source's incremental cycle at two disk sizes, paired and split by phase.

Run (as root, qemu-storage-daemon and python3-libnbd installed; scripts/setup.sh)::

    python -m tests.bench.qemu_ratio --gib 1,16 --fill 1.0,0.5 --rounds 12 --work /var/tmp/qemu-ratio

For each size a qcow2 disk is made (``qemu-img create``), served by its own
``qemu-storage-daemon`` (as tests/integration/test_qemu_source.py starts it) and its first
``--fill`` share written through the guest NBD export with distinct text-like 64 KiB blocks
(the bench's :func:`tests.bench.bench.write_text_image` content); a full first cycle of the
``qemu`` source makes the parent. Then ``--rounds`` rounds, the sizes in alternating order
within a round (1, 16, then 16, 1, ...): the same ``--changed-mib`` (default 10 MiB: 163
blocks) rewritten at random 64 KiB blocks of the whole disk through the guest export (flushed),
then one in-process cycle (``QemuSource.snapshot`` + ``committed``) into that size's chunk
store: the bench's qemu row (tests/bench/bench.py ``qemu_run``) without the file source in
between. ``--patterns scattered,contiguous`` also writes them as one run at a random place
(alternating with the scattered rounds); ``--cache warm,store-cold`` also runs each with the
chunk store's files dropped from the page cache first (:func:`evict`).

Each cycle is split by phase, timed by wrapping the functions that do the phase (wall time,
seconds): ``qmp_pre`` (QMP before the transaction: node query, tidy, marker, the fleecing image
and node), ``transaction``, ``export`` (NBD and FUSE exports of the view), ``bitmap`` (the
frozen bitmap read over NBD, ``dirty_ranges``), ``reads`` (the changed blocks read and hashed,
parent digests, block chunks stored), ``pages_build``, ``pages_store``, ``manifest`` (put),
``finish`` (``committed``: the view torn down, the frozen bitmap removed, the record saved),
``cpu`` (this process) and ``qsd_cpu`` (QSD's, /proc); finer keys: ``qmp:<command>`` (each
QMP command, summed), ``save`` (the record's fsynced writes), ``fleece_image``, ``reads:*``
(worker-thread time summed over threads: the view's reads, reads + hashing, the block chunks'
puts), ``qmp_ping`` (an idle ``query-version`` round trip before the cycle) and
``pages_touched`` (manifest pages that differ from the parent's). Printed per cycle and as
medians per size with the 16/1 ratio; ``--json-out`` keeps every sample. Results:
tests/bench/results/bench.md, "qemu 16/1 GiB ratio, by phase".

``--page-entries 4096,512`` pairs manifest page geometries in the same run: each size gets one
disk (QSD, source, store, chain) per geometry, its manifests all in that geometry (4096: format
1's, as written before format 2; 512: format 2's default), and each round runs every disk, the
order alternating; printed as the 16/1 ratio per geometry and the geometries' ratio per size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from replicad.config import VolumeConfig
from replicad.core.manifest import DEFAULT_PAGE_ENTRIES
from replicad.sources import qemu as qemu_mod
from replicad.sources import tracked as tracked_mod
from replicad.sources.kinds import make_source
from replicad.storage.chunkstore import ChunkStore

BS = 65536
VOL = "ehr"
PHASES = ("qmp_pre", "transaction", "export", "bitmap", "reads", "pages_build", "pages_store", "manifest",
          "finish", "total", "cpu", "qsd_cpu")

_phase: dict[str, float] = defaultdict(float)
_geometry = {"page_entries": DEFAULT_PAGE_ENTRIES}  # the page geometry of the disk whose cycle runs


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed_sync(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            _phase[name] += time.perf_counter() - t0
    return wrapper


def instrument() -> None:
    """Wrap the functions of each phase (module docstring). Bench-only: nothing else runs here."""
    tracked_mod._build_pages = _timed_sync("pages_build", tracked_mod._build_pages)
    tracked_mod._store_pages = _timed_sync("pages_store", tracked_mod._store_pages)
    qemu_mod.dirty_ranges = _timed_sync("bitmap", qemu_mod.dirty_ranges)
    # inside "reads": the worker jobs (view read + hash: summed over threads), the block chunks' puts
    tracked_mod._read_group = _timed_sync("reads:read_hash_threads", tracked_mod._read_group)
    tracked_mod._read_piece = _timed_sync("reads:view_read_hash_threads", tracked_mod._read_piece)
    tracked_mod.read_into = _timed_sync("reads:view_read_threads", tracked_mod.read_into)
    from replicad.sources import file as file_mod
    file_mod._store_batch = _timed_sync("reads:chunk_put_thread", file_mod._store_batch)
    put_blocks = ChunkStore.put_blocks
    ChunkStore.put_blocks = _timed_sync("manifest", put_blocks)  # only the manifest goes through it here
    orig_tracked, orig_full = qemu_mod.tracked_snapshot, qemu_mod.take_snapshot

    async def take_snapshot(*a: Any, **k: Any) -> Any:
        return await orig_full(*a, **k, page_entries=_geometry["page_entries"])
    qemu_mod.take_snapshot = take_snapshot

    async def tracked_snapshot(*a: Any, **k: Any) -> Any:
        b0, s0, m0 = _phase["pages_build"], _phase["pages_store"], _phase["manifest"]
        t0 = time.perf_counter()
        try:
            return await orig_tracked(*a, **k, page_entries=_geometry["page_entries"])
        finally:
            rest = (_phase["pages_build"] - b0) + (_phase["pages_store"] - s0) + (_phase["manifest"] - m0)
            _phase["reads"] += time.perf_counter() - t0 - rest
    qemu_mod.tracked_snapshot = tracked_snapshot

    cls = qemu_mod.QemuSource
    orig_hooked, orig_export = cls._transaction_hooked, cls._export

    async def transaction(self: Any, q: Any, actions: Any) -> None:
        t0 = time.perf_counter()
        _phase["qmp_pre"] += t0 - _phase.pop("_start")
        try:
            await orig_hooked(self, q, actions)
        finally:
            _phase["transaction"] += time.perf_counter() - t0

    async def export(self: Any, q: Any, old: Any) -> None:
        t0 = time.perf_counter()
        try:
            await orig_export(self, q, old)
        finally:
            _phase["export"] += time.perf_counter() - t0
    cls._transaction_hooked, cls._export = transaction, export
    # finer: each QMP command, the record's save, the fleecing image, the FUSE unmount check
    orig_run = qemu_mod._Qmp.run

    async def qmp_run(self: Any, cmd: str, a: Any = None) -> Any:
        t0 = time.perf_counter()
        try:
            return await orig_run(self, cmd, a)
        finally:
            _phase[f"qmp:{cmd}"] += time.perf_counter() - t0
    qemu_mod._Qmp.run = qmp_run
    for name in ("connect", "close"):
        orig = getattr(qemu_mod._Qmp, name)

        async def conn(self: Any, orig: Any = orig, name: str = name) -> Any:
            t0 = time.perf_counter()
            try:
                return await orig(self)
            finally:
                _phase[f"qmp:{name}"] += time.perf_counter() - t0
        setattr(qemu_mod._Qmp, name, conn)
    cls._save = _timed_sync("save", cls._save)
    orig_fleece = cls._write_fleece_image

    async def fleece(self: Any, size: int) -> None:
        t0 = time.perf_counter()
        try:
            await orig_fleece(self, size)
        finally:
            _phase["fleece_image"] += time.perf_counter() - t0
    cls._write_fleece_image = fleece
    qemu_mod._unmount_dead = _timed_sync("unmount_check", qemu_mod._unmount_dead)
    qemu_mod._unlink = _timed_sync("fleece_unlink", qemu_mod._unlink)


def text_chunk(offset: int, length: int, unit: bytes) -> bytes:
    """``length`` bytes of the text-like content at byte ``offset``, each block stamped."""
    chunk = bytearray(unit[:length])
    for b in range(0, length, BS):
        stamp = f"block {(offset + b) // BS:012d} ".encode()
        chunk[b:b + len(stamp)] = stamp
    return bytes(chunk)


def fill(q: Any, nbytes: int, rng: random.Random) -> None:
    """The first ``nbytes`` of the disk written through the guest export, flushed."""
    line = b"".join(f"ward {i} patient {rng.randrange(10**6)} dose {rng.randrange(999)} mg stable\n".encode()
                    for i in range(200))
    unit = (line * (4 * 2**20 // len(line) + 1))[:4 * 2**20]
    h = q.guest()
    try:
        for off in range(0, nbytes, len(unit)):
            n = min(len(unit), nbytes - off)
            h.pwrite(text_chunk(off, n, unit), off)
        h.flush()
    finally:
        h.shutdown()


def change(q: Any, size: int, n_blocks: int, rng: random.Random, tag: str, contiguous: bool) -> list[int]:
    """Rewrite ``n_blocks`` blocks through the guest export (flushed): random places, or one run."""
    total = size // BS
    if contiguous:
        first = rng.randrange(total - n_blocks)
        picked = list(range(first, first + n_blocks))
    else:
        picked = sorted(rng.sample(range(total), n_blocks))
    h = q.guest()
    try:
        for b in picked:
            line = f"edit {tag} block {b} value {rng.randrange(10**9)}: reviewed\n".encode()
            h.pwrite((line * (BS // len(line) + 1))[:BS], b * BS)
        h.flush()
    finally:
        h.shutdown()
    return picked


class Disk:
    """One size: its QSD, source, store and parent manifest."""

    def __init__(self, root: Path, gib: int, share: float, page_entries: int = DEFAULT_PAGE_ENTRIES) -> None:
        from tests.integration.test_qemu_source import Qsd

        self.gib, self.size, self.root, self.page_entries = gib, gib * 2**30, root, page_entries
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root / "disk.qcow2"), str(self.size)],
                       check=True, timeout=60)
        self.q = Qsd(root, self.size)
        self.q.start()
        self.fill_bytes = int(self.size * share) // BS * BS
        self.store = ChunkStore(root / "store")
        cfg = VolumeConfig.model_validate({"name": VOL, "path": str(self.q.image), "initial_primary": "site-a",
                                           "block_size": BS, "source": {
                                               "kind": "qemu", "qmp_socket": str(self.q.qmp), "node": "disk",
                                               "nbd_socket": str(self.q.nbd)}})
        self.src = make_source(cfg, root / "data")
        self.parent = None
        self.seq = 0

    async def cycle(self) -> tuple[Any, dict[str, float]]:
        assert self.q.proc is not None
        _phase.clear()
        _geometry["page_entries"] = self.page_entries
        c0, q0, t0 = time.process_time(), _proc_cpu_s(self.q.proc.pid), time.perf_counter()
        _phase["_start"] = t0
        self.seq += 1
        snap = await self.src.snapshot(volume=VOL, seq=self.seq, epoch=1, parent=self.parent, store=self.store,
                                       now_ns=time.time_ns())
        t1 = time.perf_counter()
        await self.src.committed(snap)
        t2 = time.perf_counter()
        out = {k: v for k, v in _phase.items() if not k.startswith("_")}
        out.update(finish=t2 - t1, total=t2 - t0, cpu=time.process_time() - c0,
                   qsd_cpu=_proc_cpu_s(self.q.proc.pid) - q0)
        self.parent = snap.result.manifest
        return snap, out

    def close(self) -> None:
        self.store.close()
        self.q.stop()
        subprocess.run(["fusermount3", "-u", "-z", str(self.root / "data" / "qemu-source" / f"{VOL}.view")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)


def evict(root: Path) -> None:
    """Drop the page cache of every file under ``root`` (``POSIX_FADV_DONTNEED``, after fsync):
    the chunk store's index and packs as a site's page cache leaves them after reading
    something larger than its memory (the bench's file source reads a 16 GiB raw copy between
    the qemu cycles: 32 GiB of images in 23 GiB of memory)."""
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


async def qmp_ping(d: Disk, n: int = 5) -> float:
    """Seconds per ``query-version`` round trip to the disk's QSD between cycles (median of ``n``):
    how fast that daemon answers when no cycle runs."""
    q = qemu_mod._Qmp(d.q.qmp)
    await q.connect()
    try:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            await q.run("query-version")
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        await q.close()


async def run(args: argparse.Namespace) -> dict[str, dict[int, list[dict[str, float]]]]:
    sizes = [int(x) for x in args.gib.split(",")]
    shares = [float(x) for x in args.fill.split(",")]
    shares += [shares[-1]] * (len(sizes) - len(shares))
    geometries = [int(x) for x in args.page_entries.split(",")]
    rng = random.Random(args.seed)
    work = Path(args.work)
    disks: list[Disk] = []
    patterns, caches = args.patterns.split(","), args.cache.split(",")
    samples: dict[str, dict[int, list[dict[str, float]]]] = {f"{p}, {c}, pages of {pe}": {g: [] for g in sizes}
                                                             for p in patterns for c in caches for pe in geometries}
    try:
        for gib, share in zip(sizes, shares):
            for pe in geometries:
                d = Disk(work / f"d{gib}-{pe}", gib, share, pe)
                disks.append(d)
                t0 = time.perf_counter()
                fill(d.q, d.fill_bytes, random.Random(args.seed + gib))  # the same content per size
                snap, ph = await d.cycle()
                print(f"{gib} GiB, pages of {pe}: filled {d.fill_bytes / 2**30:.2f} GiB, first cycle {snap.mode} "
                      f"{ph['total']:.1f}s ({time.perf_counter() - t0:.1f}s with the fill)", flush=True)
        n = args.changed_mib * 2**20 // BS
        for r in range(args.rounds):
            for pattern, cache in [(p, c) for p in patterns for c in caches]:
                order = disks if r % 2 == 0 else disks[::-1]
                for d in order:
                    change(d.q, d.size, n, rng, f"{d.gib}-{r}", pattern == "contiguous")
                    if cache == "store-cold":
                        evict(d.root / "store")
                    ping_s = await qmp_ping(d)
                    prev_pages = d.parent.pages if d.parent is not None else ()
                    snap, ph = await d.cycle()
                    if snap.mode != "tracked":
                        raise RuntimeError(f"{d.gib} GiB cycle was {snap.mode}, not tracked")
                    ph["qmp_ping"] = ping_s
                    ph["pages_touched"] = sum(1 for a, b in zip(snap.result.manifest.pages, prev_pages) if a != b)
                    ph["load1"] = os.getloadavg()[0]
                    samples[f"{pattern}, {cache}, pages of {d.page_entries}"][d.gib].append(ph)
                    print(f"round {r} {pattern} {cache} {d.gib:>3} GiB pages of {d.page_entries} "
                          + " ".join(f"{k}={ph.get(k, 0) * 1000:.1f}" for k in PHASES)
                          + f" ms, pages touched {ph['pages_touched']}, load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for d in disks:
            d.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return samples


def report(samples: dict[int, list[dict[str, float]]]) -> None:
    sizes = sorted(samples)
    lo, hi = sizes[0], sizes[-1]
    keys = list(PHASES) + sorted({k for g in sizes for s in samples[g] for k in s} - set(PHASES))
    print(f"\n| phase | {lo} GiB median [min-max] ms | {hi} GiB median [min-max] ms | {hi}/{lo} |")
    print("|---|---|---|---|")
    for k in keys:
        cells = []
        meds = []
        for g in (lo, hi):
            v = [s.get(k, 0.0) * (1 if k in ("pages_touched", "load1") else 1000) for s in samples[g]]
            meds.append(statistics.median(v))
            cells.append(f"{statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]")
        ratio = f"{meds[1] / meds[0]:.2f}x" if meds[0] > 0 else "-"
        print(f"| {k} | {cells[0]} | {cells[1]} | {ratio} |")


def compare_geometries(samples: dict[str, dict[int, list[dict[str, float]]]]) -> None:
    """Per pattern and size: the medians of total, cpu and the page phases for each geometry, and
    the 16/1 ratios of total and cpu per geometry (the issue's target: <= 1.3)."""
    by: dict[str, dict[int, dict[int, list[dict[str, float]]]]] = defaultdict(dict)
    for label, by_size in samples.items():
        head, pe = label.rsplit(", pages of ", 1)
        by[head][int(pe)] = by_size
    for head, per_pe in by.items():
        print(f"\n{head}: by page geometry (medians; load1 median [min-max])")
        print("| pages of | size GiB | total ms | cpu ms | pages_build ms | pages_store ms | pages touched | load1 |")
        print("|---|---|---|---|---|---|---|---|")
        for pe in sorted(per_pe):
            for g in sorted(per_pe[pe]):
                s = per_pe[pe][g]
                if not s:
                    continue

                def med(k: str, scale: float = 1000.0) -> float:
                    return statistics.median(x.get(k, 0.0) for x in s) * scale
                loads = [x.get("load1", 0.0) for x in s]
                print(f"| {pe} | {g} | {med('total'):.1f} | {med('cpu'):.1f} | {med('pages_build'):.1f} | "
                      f"{med('pages_store'):.1f} | {med('pages_touched', 1):.0f} | "
                      f"{statistics.median(loads):.1f} [{min(loads):.1f}-{max(loads):.1f}] |")
            sizes = sorted(per_pe[pe])
            if len(sizes) >= 2 and all(per_pe[pe][g] for g in sizes):
                lo, hi = per_pe[pe][sizes[0]], per_pe[pe][sizes[-1]]
                for k in ("total", "cpu"):
                    ratio = statistics.median(x[k] for x in hi) / statistics.median(x[k] for x in lo)
                    print(f"pages of {pe}: {sizes[-1]}/{sizes[0]} GiB {k} {ratio:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", default="1,16", help="disk sizes, GiB, comma list (default 1,16)")
    ap.add_argument("--fill", default="1.0", help="share of each disk written first, comma list per size")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--changed-mib", type=int, default=10, help="MiB rewritten before each cycle (default 10)")
    ap.add_argument("--patterns", default="scattered",
                    help="comma list: scattered (random blocks, as the bench), contiguous (one run at a random place)")
    ap.add_argument("--cache", default="warm",
                    help="comma list: warm (as left), store-cold (the chunk store's files dropped from the page "
                         "cache before each cycle)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--page-entries", default=str(DEFAULT_PAGE_ENTRIES),
                    help="comma list of manifest page geometries, each its own disks and chain (4096,512: "
                         "format 1's against format 2's, paired)")
    ap.add_argument("--work", default="/var/tmp/qemu-ratio")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    instrument()
    samples = asyncio.run(run(args))
    for pattern, by_size in samples.items():
        print(f"\n{pattern} (changes, page cache, geometry), {args.changed_mib} MiB per cycle, {args.rounds} paired rounds:")
        report(by_size)
    compare_geometries(samples)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({p: {str(k): v for k, v in by.items()} for p, by in samples.items()},
                                                  indent=1))


if __name__ == "__main__":
    main()
