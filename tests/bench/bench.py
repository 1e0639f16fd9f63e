"""replicad side by side with rsync and raw I/O floors, on a real ext4 image and real sites.

Run (as root, ``rsync`` installed)::

    python -m tests.bench.bench                       # 1 GiB image, 3 runs
    python -m tests.bench.bench --size-mib 256 --runs 1 --json-out /tmp/bench.json

Workload: :func:`replicad.lab.demo_volume.build_volume` makes an ext4 image of ``--size-mib``
MiB (synthetic hospital files, about half full). A :class:`~replicad.lab.localcluster.LocalCluster`
of 3 real site processes (``min_copies = 2``) protects it, with a second tiny volume used to
time Raft commits. Every measured step runs ``--runs`` times (a fresh cluster per run); the
table shows the median and the spread (min–max). "warm" means the page cache holds the image;
"cold" rows (``sync; echo 3 > /proc/sys/vm/drop_caches`` before the step) appear only when
that file is writable.

Rows (units in the table):

* **incremental cycle** – 1 % of the 64 KiB blocks, picked at random places, rewritten with
  new text-like (non-random) content; then ``POST /v1/volumes/ehr/snapshot`` at the primary
  (scan + ship to 2 replicas + Raft commit), wall time seen by the client. Beside it rsync
  (``--inplace --no-whole-file --ignore-times --fsync`` of the same image file to an rsync
  daemon on 127.0.0.1; ``--ignore-times`` so that its size+mtime quick check never skips a
  changed image) to one target, and to two targets **in parallel** (two rsync processes).
* **first full sync**: the primary's volume is a copy of the image; its first snapshot
  (no parent) ships everything to both replicas. Beside it ``rsync --fsync`` to a fresh
  target, the same to two fresh targets in parallel (info), and ``cp`` + fsync (the floor). Bytes on the wire: the cycle report's
  ``bytes_shipped`` (summed over both replicas, and per replica) and rsync's "Total bytes sent".
* **scan**: ``sources.file.take_snapshot`` in-process on the image into a fresh store (full: lz4 and
  store every non-zero block) and again with that snapshot as parent after a 1 % change
  (incremental); floor: the file read in 8 MiB pieces with BLAKE3 of every 64 KiB block, one
  thread, measured in the same run.
* **restore**: the daemon restore API at the primary into a new file (local store; includes
  the O5 verify re-read), and in-process from peers (a fresh store fetches every chunk from
  site-b over the peer API, then ``storage.image.apply_snapshot`` + ``storage.image.verify_image``);
  floor: ``dd if=IMAGE of=TARGET bs=8M oflag=direct conv=fsync``. **Restore from peers, 2 holders**:
  the daemon's path for a site that lacks the chunks (``site.peer_restore.restore_from_holders``)
  in-process with a fresh store: manifest and pages from site-b, then every block chunk streamed
  from site-b and site-c at once straight into the image, each unit synced and read back from the
  disk as it is written (O5); vs the same dd.
* **standby RTO**: site-b is restarted with ``apply_delay = "1h"`` after its standby caught
  up, 1 % of the blocks change, a snapshot commits (site-b holds it, does not apply it), the
  primary is SIGKILLed and ``promote --force`` runs at site-b: ``rto_s`` of its answer.
* **commit latency**: ``--commits`` snapshots of the unchanged tiny volume; per snapshot the
  cycle report's ``commit_s``, timed inside the daemon from the moment the ship
  acknowledgements (O2) are in hand to the ``commit_snapshot`` Raft command applied on the
  primary (also exported as the ``replicad_snapshot_commit_seconds`` histogram). Beside it
  ``cycle_s - scan_s`` = ship acknowledgement (2 peers, only the new manifest travels) +
  commit, for reference.
* **memory**: a separate cluster protecting ``--sparse-volumes`` sparse files of
  ``--sparse-gib`` GiB (a few MiB of data each); after every volume's first cycle is committed
  and applied on the standbys, the peak RSS (``VmHWM`` of ``/proc/PID/status``) of each site.

* **reflink** (``--reflink-gib``, default ``1,16``; the largest is lowered to 8 when ``/var/tmp``
  lacks room): for each size a loop-mounted XFS (``reflink=1``) holds an image of that size
  filled with distinct text-like blocks; the same ``--reflink-changed-mib`` (default 10 MiB,
  1 % of 1 GiB) is rewritten at random 64 KiB blocks before each incremental cycle, in-process
  into one local chunk store (warm page cache): the ``reflink`` source (clone + extent maps +
  read of the changed blocks + manifest, then ``committed``), the ``file`` source (full read
  with its fingerprint cache) and ``rsync --inplace --no-whole-file --ignore-times`` of the
  image to a local copy (one target, no fsync). The sizes are paired: all images are made and
  mounted first, then each round rewrites the same bytes in every image and runs its cycles,
  the sizes taking turns going first (the same write history, and the same load); the file
  source's and rsync's rounds follow all the reflink rounds (same bytes rewritten before each),
  so their full reads of the largest image do not evict what its next reflink cycle reads
  (``--reflink-interleave``: the order before, each round's baselines right after its reflink
  cycle). Rows: each size, the 16 GiB / 1 GiB ratio per source (target <= 1.3 for
  reflink; also the median of each round's own ratio), the image's extent count and the load
  average before each reflink cycle, the cycle's phases (clone, maps, compare, build, parent
  clone dropped), and at the largest size with 1 % of *it* changed (after the paired rounds),
  reflink vs rsync (target >= 50x); cycle CPU seconds (``time.process_time``) per GiB changed.

* **qemu** (``--qemu-gib``, default ``1,4``; ``--skip qemu``): for each size a qcow2 disk of that
  size, its first ``--qemu-fill`` (default all) filled with the same text-like blocks (``qemu-img convert`` of a raw image, which is kept
  for the file source), served by a ``qemu-storage-daemon`` started here; before each cycle the
  same ``--reflink-changed-mib`` is rewritten at random 64 KiB blocks in both, through QSD's NBD
  export and in the raw file; in-process cycles of the ``qemu`` source (QMP transaction,
  fleecing view over FUSE, dirty bitmap over NBD, read of the changed blocks, ``committed``) and
  of the ``file`` source on the raw copy. Rows: each size, the largest / smallest ratio per
  source in wall time and in CPU (the CPU one is the steadier on a loaded machine), cycle CPU
  seconds per GiB changed (this process plus QSD's, from ``/proc/PID/stat``); at the largest
  size one more cycle with 1 % of *it* changed, against the reflink rows' rsync of an image of
  the same size (rsync reads and checksums the whole image whatever changed). A size whose
  written share does not fit twice under the work dir is skipped (said in the log).

* **PostgreSQL snapshots without hooks** (``--pg-snapshots``, default 20; ``--skip pg``): the
  scenario of :mod:`tests.pgcrash`: PostgreSQL (data checksums) on ext4 inside an image
  (``--pg-image-mib``, default 2048) on a loop-mounted XFS (reflink=1), ``pgbench -s
  --pg-scale`` (default 16) with 4 clients and a CHECKPOINT every second; in each
  round one snapshot with the ``reflink`` source and one with the ``file`` source (a full read
  of the live image), no freeze hook; then a second load of the same size for the ``qemu``
  source alone (the ext4 in a qcow2 disk of that size served by a ``qemu-storage-daemon``
  started here, mounted from its FUSE export; each snapshot a fleecing view, tracked by the
  dirty bitmap after the first); ``--pg-sources`` (default ``reflink,file,qemu``) picks them.
  ``--pg-sample`` (default 20: all) snapshots of each source
  restored into fresh images (O5) and judged: PostgreSQL starts (crash recovery),
  ``pg_amcheck --heapallindexed`` and the pgbench invariant (sum of balances = sum of the
  history's deltas) pass, and ``pg_checksums --check`` after a clean stop. Rows: how many
  of the sample pass, per source (expected: all with reflink and qemu; the file source's torn
  snapshots fail some), and the seconds per snapshot.

* **RPO** (``--rpo`` alone; :mod:`tests.bench.rpo`): per source (``--rpo-sources``, default
  ``reflink,qemu,file``), a ``--rpo-gib`` (16) GiB volume on a real cluster of two data sites and a
  witness, a writer process rewriting 1 % of its blocks per minute spread over time, and the
  daemon's own cycles at each of ``--rpo-intervals`` (2,5,10,15,30,60 s) for ``--rpo-window-s``
  (300) each: the shortest interval that keeps up (cycle below the interval, the replica's
  applied lag bounded), its cycle durations and the replica's lags.

Results go to ``--json-out`` (every sample) for comparisons between runs. Processes are
stopped by PID; every step has a time bound (``--step-timeout-s``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import blake3
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from replicad.storage.chunkstore import ChunkStore
from replicad.lab.demo_volume import build_volume
from replicad.lab.localcluster import LocalCluster, free_port
from replicad.core.manifest import Manifest, iter_block_digests
from replicad.storage.image import apply_snapshot, verify_image
from replicad.sources.file import take_snapshot
from replicad.peer.transport import PeerClient
from replicad.site.peer_restore import restore_from_holders

BLOCK_BYTES = 65536
READ_BYTES = 8 * 2**20
VOL = "ehr"
TINY = "tiny"
TINY_BYTES = 1 * 2**20
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


# ---------------------------------------------------------------------------- helpers

def can_drop_caches() -> bool:
    """True if ``/proc/sys/vm/drop_caches`` accepts a write here (root, not read-only)."""
    try:
        os.sync()
        DROP_CACHES.write_text("3\n")
        return True
    except OSError:
        return False


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes."""
    os.sync()
    DROP_CACHES.write_text("3\n")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def change_blocks(path: Path, fraction: float, rng: random.Random, tag: str) -> int:
    """Rewrite ``fraction`` of the whole 64 KiB blocks of ``path`` at random places with new
    text-like content (compressible, not random); fsync. Returns the number of blocks."""
    n_blocks = path.stat().st_size // BLOCK_BYTES
    picked = rng.sample(range(n_blocks), max(1, int(n_blocks * fraction)))
    with open(path, "r+b") as f:
        for b in sorted(picked):
            line = f"ward note {tag} block {b} value {rng.randrange(10**9)}: stable, reviewed\n"
            f.seek(b * BLOCK_BYTES)
            f.write((line * (BLOCK_BYTES // len(line) + 1)).encode()[:BLOCK_BYTES])
        f.flush()
        os.fsync(f.fileno())
    return len(picked)


def copy_into(src: Path, dst: Path) -> None:
    """Copy ``src`` over the existing file ``dst`` in place (same size), fsynced."""
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        while chunk := fi.read(READ_BYTES):
            fo.write(chunk)
        fo.flush()
        os.fsync(fo.fileno())


def read_blake3_floor(path: Path) -> float:
    """Seconds to read ``path`` in 8 MiB pieces and BLAKE3 every 64 KiB block (one thread)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while True:
            buf = os.pread(fd, READ_BYTES, off)
            if not buf:
                break
            view = memoryview(buf)
            for o in range(0, len(buf), BLOCK_BYTES):
                blake3.blake3(view[o:o + BLOCK_BYTES]).digest()
            off += len(buf)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def run_timed(argv: list[str], timeout_s: float) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return dt, proc.stdout


def rsync_bytes_sent(stdout: str) -> int:
    for line in stdout.splitlines():
        if line.startswith("Total bytes sent:"):
            return int(line.split(":", 1)[1].strip().replace(",", ""))
    raise RuntimeError("rsync --stats output has no 'Total bytes sent'")


def vm_hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class RsyncDaemon:
    """An rsync daemon on 127.0.0.1 with writable modules ``t1``..``tN`` under ``root``."""

    def __init__(self, root: Path, n_modules: int = 3) -> None:
        self.root = root
        self.port = free_port()
        conf = ["use chroot = no", "uid = root", "gid = root", f"pid file = {root}/rsyncd.pid",
                f"log file = {root}/rsyncd.log"]
        for i in range(1, n_modules + 1):
            (root / f"t{i}").mkdir(parents=True, exist_ok=True)
            conf += [f"[t{i}]", f"path = {root}/t{i}", "read only = no"]
        (root / "rsyncd.conf").write_text("\n".join(conf) + "\n")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> RsyncDaemon:
        self.proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={self.root}/rsyncd.conf",
                                      f"--port={self.port}", "--address=127.0.0.1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rsync daemon did not start")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def url(self, module: str, name: str) -> str:
        return f"rsync://127.0.0.1:{self.port}/{module}/{name}"

    def target(self, module: str, name: str) -> Path:
        return self.root / module / name


def rsync_to(argv_extra: list[str], src: Path, urls: list[str], timeout_s: float) -> tuple[float, int]:
    """Run one rsync per URL, all in parallel; (wall seconds, total bytes sent)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["rsync", "--stats", *argv_extra, str(src), u], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for u in urls]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout_s)
        if p.returncode != 0:
            raise RuntimeError(f"rsync failed ({p.returncode}): {err[-500:]}")
        outs.append(out)
    return time.perf_counter() - t0, sum(rsync_bytes_sent(o) for o in outs)


# ---------------------------------------------------------------------------- results

@dataclass
class Results:
    """Samples per (row, column) key; ``notes`` per row."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(float(value))

    def med(self, key: str) -> float | None:
        vals = self.samples.get(key)
        return statistics.median(vals) if vals else None

    def cell(self, key: str, fmt: Callable[[float], str]) -> str:
        vals = self.samples.get(key)
        if not vals:
            return "–"
        m = statistics.median(vals)
        if len(vals) == 1:
            return fmt(m)
        return f"{fmt(m)} [{fmt(min(vals))}–{fmt(max(vals))}]"


def s_fmt(v: float) -> str:
    return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"


def ms_fmt(v: float) -> str:
    return f"{v * 1000:.1f} ms"


def mb_fmt(v: float) -> str:
    return f"{v / 1e6:.1f} MB"


def gbs_fmt(v: float) -> str:
    return f"{v / 1e9:.2f} GB/s"


# ---------------------------------------------------------------------------- cluster steps

def wait_standbys(c: LocalCluster, volume: str, seq: int, sites: tuple[str, ...], timeout_s: float) -> None:
    c.wait_for(f"standbys of {volume} at #{seq}", lambda: all(
        c.status(s)["volumes"][volume]["standby_seq"] == seq for s in sites), timeout_s, 0.05)


def snapshot(c: LocalCluster, site: str, volume: str, timeout_s: float) -> tuple[float, dict]:
    t0 = time.perf_counter()
    rep = c.api(site, "POST", f"/v1/volumes/{volume}/snapshot", {}, timeout_s=timeout_s)
    dt = time.perf_counter() - t0
    if not rep.get("committed"):
        raise RuntimeError(f"snapshot of {volume} not committed: {rep}")
    return dt, rep


def set_apply_delay(c: LocalCluster, site: str, delay: str) -> None:
    path = c.sites[site].config_path
    text = path.read_text()
    path.write_text(text.replace('apply_delay = "0s"', f'apply_delay = "{delay}"'))


# The bench restores in the name of the volume's primary (stopped or not): a holder serves a volume's
# chunks only to its primary and its holders (Receiver.check_fetch).
RESTORING_SITE = "site-a"


async def restore_from_peer(peer_url: str, root: bytes, store_dir: Path, target: Path) -> dict[str, float]:
    """Fetch snapshot ``root`` and everything it references from ``peer_url`` into a fresh
    store, apply it to ``target`` and verify it; seconds per phase."""
    store = ChunkStore(store_dir)
    try:
        t0 = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            client = PeerClient(session, RESTORING_SITE)
            await client.fetch(peer_url, VOL, 0, [root], store)
            m = Manifest.decode(store.get(root))
            await client.fetch(peer_url, VOL, 0, list(m.pages), store)
            need = [d for d in iter_block_digests(m, store.get) if any(d)]
            need = list(dict.fromkeys(need))
            await client.fetch(peer_url, VOL, 0, need, store)
        t1 = time.perf_counter()
        await asyncio.to_thread(apply_snapshot, target, m, store)
        t2 = time.perf_counter()
        await asyncio.to_thread(verify_image, target, m)
        t3 = time.perf_counter()
    finally:
        store.close()
    return {"fetch": t1 - t0, "apply": t2 - t1, "verify": t3 - t2, "total": t3 - t0}


async def restore_from_peers(peer_urls: dict[str, str], root: bytes, store_dir: Path, target: Path) -> dict[str, float]:
    """The daemon's restore from peers (``site.peer_restore.restore_from_holders``) in-process into
    a fresh store: the manifest and its pages fetched from the first holder, then every block
    chunk streamed from all ``peer_urls`` at once straight into ``target`` (decode and writes
    overlapped, O5 checked as it writes: every block read back from the disk after a sync, the
    root rebuilt); seconds per phase."""
    store = ChunkStore(store_dir)
    try:
        t0 = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            client = PeerClient(session, RESTORING_SITE)
            first = next(iter(peer_urls.values()))
            await client.fetch(first, VOL, 0, [root], store)
            m = Manifest.decode(store.get(root))
            await client.fetch(first, VOL, 0, list(m.pages), store)
            t1 = time.perf_counter()
            await restore_from_holders(client, peer_urls, VOL, 0, m, store, target)  # O5 included
        t2 = time.perf_counter()
    finally:
        store.close()
    return {"meta": t1 - t0, "stream": t2 - t1, "total": t2 - t0}


def one_run(run: int, image: Path, work: Path, res: Results, args: argparse.Namespace, cold: bool,
            console: Console) -> None:
    """One fresh cluster: full sync, incremental cycles, commits, restores, standby RTO."""
    rng = random.Random(1000 + run)
    root = work / f"run{run}"
    if root.exists():
        shutil.rmtree(root)
    tmo = args.step_timeout_s
    # interval far beyond any uptime: the daemons never snapshot on their own, the bench asks
    c = LocalCluster(root / "cluster", volumes=(VOL, TINY), interval="3650d", min_copies=2, unsigned=args.unsigned)
    a_img = c.sites["site-a"].volume_path(VOL)
    shutil.copyfile(image, a_img)
    fsync_path(a_img)
    tiny = c.sites["site-a"].volume_path(TINY)
    tiny.write_bytes((b"tiny volume record, unchanged between snapshots\n" * (TINY_BYTES // 48 + 1))[:TINY_BYTES])
    rs = RsyncDaemon(root / "rsync")
    try:
        c.start_all()
        c.wait_ready(60)
        _, rep = snapshot(c, "site-a", TINY, tmo)
        wait_standbys(c, TINY, rep["seq"], ("site-b", "site-c"), tmo)
        rs.__enter__()

        # ---- first full sync: the volume's first snapshot (no parent)
        dt, rep = snapshot(c, "site-a", VOL, tmo)
        res.add("full.replicad.s", dt)
        res.add("full.replicad.bytes", rep["bytes_shipped"])
        res.add("full.replicad.bytes_per_replica", rep["bytes_shipped"] / max(1, len(rep["peers"])))
        console.log(f"run {run}: full sync {dt:.2f}s, {rep['bytes_shipped'] / 1e6:.0f} MB shipped")
        wait_standbys(c, VOL, rep["seq"], ("site-b", "site-c"), tmo)
        dt, sent = rsync_to(["--fsync"], a_img, [rs.url("t1", "ehr.img")], tmo)
        res.add("full.rsync.s", dt)
        res.add("full.rsync.bytes", sent)
        floor = root / "cp-floor.img"
        t0 = time.perf_counter()
        subprocess.run(["cp", str(a_img), str(floor)], check=True, timeout=tmo)
        fsync_path(floor)
        res.add("full.cp.s", time.perf_counter() - t0)
        floor.unlink()
        # the same first copy to two targets at once (replicad ships to 2 replicas): also
        # seeds t2 and t3 for the incremental rows
        dt, _ = rsync_to(["--fsync"], a_img, [rs.url("t2", "ehr.img"), rs.url("t3", "ehr.img")], tmo)
        res.add("full.rsync2.s", dt)
        os.sync()

        # ---- incremental cycles (warm, then cold)
        modes = [] if "incr" in args.skip_parts else ["warm"] + (["cold"] if cold else [])
        for mode in modes:
            for k in range(args.cycles):
                change_blocks(a_img, 0.01, rng, f"r{run}{mode}{k}")
                if mode == "cold":
                    drop_caches()
                dt, rep = snapshot(c, "site-a", VOL, tmo)
                res.add(f"incr.{mode}.replicad.s", dt)
                res.add(f"incr.{mode}.replicad.bytes", rep["bytes_shipped"])
                for phase in ("scan_s", "ship_s", "commit_s"):
                    if phase in rep:
                        res.add(f"incr.{mode}.replicad.{phase}", rep[phase])
                wait_standbys(c, VOL, rep["seq"], ("site-b", "site-c"), tmo)
                if mode == "cold":
                    drop_caches()
                dt, sent = rsync_to(["--inplace", "--no-whole-file", "--ignore-times", "--fsync"], a_img,
                                    [rs.url("t1", "ehr.img")], tmo)
                res.add(f"incr.{mode}.rsync1.s", dt)
                res.add(f"incr.{mode}.rsync1.bytes", sent)
                if mode == "cold":
                    drop_caches()
                dt, sent = rsync_to(["--inplace", "--no-whole-file", "--ignore-times", "--fsync"], a_img,
                                    [rs.url("t2", "ehr.img"), rs.url("t3", "ehr.img")], tmo)
                res.add(f"incr.{mode}.rsync2.s", dt)
                res.add(f"incr.{mode}.rsync2.bytes", sent)
        console.log(f"run {run}: incremental done")

        # ---- Raft commit latency through snapshots of the unchanged tiny volume
        for _ in range(0 if "commits" in args.skip_parts else args.commits):
            _, rep = snapshot(c, "site-a", TINY, tmo)
            res.add("commit.ship_commit.s", rep["cycle_s"] - rep["scan_s"])
            res.add("commit.cycle.s", rep["cycle_s"])
            if "commit_s" in rep:  # the daemon's own timer: ship acknowledged -> Raft commit applied
                res.add("commit.raft.s", rep["commit_s"])

        # ---- restore: local store (daemon API) and from a peer (in-process, fresh store)
        status = c.status("site-a")["volumes"][VOL]
        newest = status["newest_committed"]
        os.sync()  # the previous step's writeback is not charged to this one
        target = root / "restore-local.img"
        t0 = time.perf_counter()
        rest = c.api("site-a", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target), "seq": newest},
                     timeout_s=tmo)
        res.add("restore.local.s", time.perf_counter() - t0)
        for k, v in (rest.get("phases") or {}).items():  # fetch_s, write_s, verify_s (daemon timers)
            res.add(f"restore.local.{k.removesuffix('_s')}.s", v)
        target.unlink()
        snaps = c.api("site-a", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]
        root_digest = bytes.fromhex(next(s["root"] for s in snaps if s["seq"] == newest))
        os.sync()  # the previous step's writeback is not charged to this one
        target = root / "restore-peer.img"
        phases = asyncio.run(restore_from_peer(f"http://127.0.0.1:{c.sites['site-b'].peer_port}", root_digest,
            root / "peer-restore-store", target))
        for k, v in phases.items():
            res.add(f"restore.peer.{k}.s", v)
        target.unlink()
        shutil.rmtree(root / "peer-restore-store")
        os.sync()  # the previous step's writeback is not charged to this one
        target = root / "restore-peers.img"
        urls = {s: f"http://127.0.0.1:{c.sites[s].peer_port}" for s in ("site-b", "site-c")}
        phases2 = asyncio.run(restore_from_peers(urls, root_digest, root / "peers-restore-store", target))
        for k, v in phases2.items():
            res.add(f"restore.peers2.{k}.s", v)
        target.unlink()
        shutil.rmtree(root / "peers-restore-store")
        os.sync()  # the previous step's writeback is not charged to this one
        dd_target = root / "dd-floor.img"
        dt, _ = run_timed(["dd", f"if={a_img}", f"of={dd_target}", "bs=8M", "oflag=direct", "conv=fsync",
                           "status=none"], tmo)
        res.add("restore.dd.s", dt)
        dd_target.unlink()
        console.log(f"run {run}: restores done (local {rest['seconds']:.2f}s, peer {phases['total']:.2f}s, "
                    f"2 holders {phases2['total']:.2f}s)")

        # ---- standby RTO: site-b holds the newest snapshot but has not applied it (1 % behind)
        if "rto" in args.skip_parts:
            return
        c.kill("site-b", signal.SIGTERM)
        set_apply_delay(c, "site-b", "1h")
        c.start("site-b")
        c.wait_ready(60)
        change_blocks(a_img, 0.01, rng, f"r{run}rto")
        _, rep = snapshot(c, "site-a", VOL, tmo)
        if "site-b" not in rep["holders"]:
            raise RuntimeError(f"site-b is not a holder of the RTO snapshot: {rep['holders']}")
        c.kill("site-a", signal.SIGKILL)
        t0 = time.perf_counter()
        promo = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True}, timeout_s=tmo)
        res.add("rto.wall.s", time.perf_counter() - t0)
        res.add("rto.rto_s", promo["rto_s"])
        res.add("rto.blocks_written", promo["restore"].get("blocks_written", 0))
        for k, v in (promo["restore"].get("phases") or {}).items():
            res.add(f"rto.{k.removesuffix('_s')}.s", v)
        console.log(f"run {run}: promote rto_s {promo['rto_s']:.2f}s, "
                    f"{promo['restore'].get('blocks_written')} blocks rewritten")
    finally:
        rs.__exit__()
        c.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def scan_run(image: Path, work: Path, res: Results, cold: bool, rng: random.Random) -> None:
    """In-process scans beside the read + BLAKE3 floor (warm, and cold when allowed)."""
    scratch = work / "scan"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    img = scratch / "scan.img"
    shutil.copyfile(image, img)
    size = img.stat().st_size
    for mode in ["warm"] + (["cold"] if cold else []):
        shutil.rmtree(scratch / "store", ignore_errors=True)
        if mode == "warm":
            img.read_bytes()  # into the page cache
        else:
            drop_caches()
        res.add(f"scan.{mode}.floor.Bps", size / read_blake3_floor(img))
        if mode == "cold":
            drop_caches()
        store = ChunkStore(scratch / "store")
        try:
            r = asyncio.run(take_snapshot(img, volume=VOL, seq=1, epoch=1, parent=None, store=store, now_ns=0))
            res.add(f"scan.{mode}.full.Bps", size / r.scan_seconds)
            change_blocks(img, 0.01, rng, f"scan{mode}")
            if mode == "cold":
                drop_caches()
            r2 = asyncio.run(take_snapshot(img, volume=VOL, seq=2, epoch=1, parent=r.manifest, store=store,
                                           now_ns=0))
            res.add(f"scan.{mode}.incr.Bps", size / r2.scan_seconds)
        finally:
            store.close()
    shutil.rmtree(scratch, ignore_errors=True)


def memory_run(work: Path, res: Results, args: argparse.Namespace, console: Console) -> None:
    """Peak RSS of each site protecting ``--sparse-volumes`` sparse volumes through one full cycle."""
    root = work / "memory"
    shutil.rmtree(root, ignore_errors=True)
    names = tuple(f"sparse{i}" for i in range(args.sparse_volumes))
    c = LocalCluster(root, volumes=names, interval="3650d", min_copies=2, unsigned=args.unsigned)
    rng = random.Random(7)
    size = args.sparse_gib * 2**30
    for name in names:
        with open(c.sites["site-a"].volume_path(name), "wb") as f:
            f.truncate(size)
            for _ in range(4):  # a few MiB of data at scattered places
                f.seek(rng.randrange(size // 2**20) * 2**20)
                f.write((f"{name} data {rng.random()}\n" * 40000).encode()[:2**20])
    try:
        t0 = time.perf_counter()
        c.start_all()
        c.wait_ready(60)
        threads: list[threading.Thread] = []
        seqs = {}
        for name in names:  # every volume's first (full) cycle, all at once
            threads.append(threading.Thread(target=lambda n=name: seqs.__setitem__(
                n, snapshot(c, "site-a", n, args.step_timeout_s)[1]["seq"]), daemon=True))
            threads[-1].start()
        for th in threads:
            th.join(args.step_timeout_s)
        if len(seqs) != len(names):
            raise RuntimeError(f"only {len(seqs)} of {len(names)} sparse volumes committed")
        for name in names:
            wait_standbys(c, name, seqs[name], ("site-b", "site-c"), args.step_timeout_s)
        res.add("memory.cycle_all.s", time.perf_counter() - t0)
        for site in ("site-a", "site-b", "site-c"):
            res.add(f"memory.{site}.hwm", vm_hwm_bytes(c.sites[site].proc.pid))
        console.log(f"memory: {len(names)} x {args.sparse_gib} GiB sparse committed and applied in "
                    f"{time.perf_counter() - t0:.1f}s")
    finally:
        c.stop_all()
    shutil.rmtree(root, ignore_errors=True)


def write_text_image(path: Path, size: int, rng: random.Random) -> None:
    """``size`` bytes of distinct, text-like 64 KiB blocks (each stamped with its index)."""
    line = b"".join(f"ward {i} patient {rng.randrange(10**6)} dose {rng.randrange(999)} mg stable\n".encode()
                    for i in range(200))
    unit = (line * (4 * 2**20 // len(line) + 1))[:4 * 2**20]
    with open(path, "wb") as f:
        for off in range(0, size, len(unit)):
            chunk = bytearray(unit[:min(len(unit), size - off)])
            for b in range(0, len(chunk), BLOCK_BYTES):
                stamp = f"block {(off + b) // BLOCK_BYTES:012d} ".encode()
                chunk[b:b + len(stamp)] = stamp
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def change_bytes(path: Path, n_bytes: int, rng: random.Random, tag: str) -> int:
    """Rewrite ``n_bytes`` (whole 64 KiB blocks at random places) with new text; fsync."""
    n_blocks = path.stat().st_size // BLOCK_BYTES
    picked = rng.sample(range(n_blocks), max(1, n_bytes // BLOCK_BYTES))
    with open(path, "r+b") as f:
        for b in sorted(picked):
            line = f"edit {tag} block {b} value {rng.randrange(10**9)}: reviewed\n".encode()
            f.seek(b * BLOCK_BYTES)
            f.write((line * (BLOCK_BYTES // len(line) + 1))[:BLOCK_BYTES])
        f.flush()
        os.fsync(f.fileno())
    return len(picked)


def extent_count(path: Path) -> int:
    """The file's extent count (FIEMAP with sync, what ``filefrag`` reports)."""
    from replicad.sources.extents import extent_arrays

    fd = os.open(path, os.O_RDONLY)
    try:
        return len(extent_arrays(fd, path=str(path)))
    finally:
        os.close(fd)


def reflink_run(work: Path, res: Results, args: argparse.Namespace, console: Console) -> list[int]:
    """The reflink rows (module docstring): per size, reflink / file source / rsync incremental
    cycles with the same changed bytes, the sizes paired: every image is made and mounted first,
    then each round rewrites the same bytes in each image and runs its reflink cycle, the sizes
    taking turns going first (the same write history and the same load); then as many rounds of
    the file source and rsync (their full reads of the largest image, between reflink cycles,
    would evict what those read); then 1 % of the largest image, reflink against rsync. The image's extent count before each reflink cycle and the cycle's phases are kept
    beside its time. Returns the sizes measured (GiB)."""
    from replicad.config import VolumeConfig
    from replicad.sources.kinds import make_source
    from tests.loopfs import loop_fs

    sizes = [int(x) for x in args.reflink_gib.split(",") if x]
    free = shutil.disk_usage(work).free
    if sizes and free < sum(2 * g + 8 for g in sizes) * 2**30:  # image + rsync copy + store, all at once
        sizes[-1] = min(sizes[-1], 8)
        console.log(f"reflink: only {free / 2**30:.0f} GiB free under {work}: largest size lowered to {sizes[-1]} GiB")
    changed = int(args.reflink_changed_mib * 2**20)
    with contextlib.ExitStack() as stack:
        vols: list[dict[str, Any]] = []
        for gib in sizes:
            root = work / f"reflink{gib}"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            stack.callback(shutil.rmtree, root, ignore_errors=True)
            size = gib * 2**30
            mnt = stack.enter_context(loop_fs(root, "xfs", size_bytes=size + size // 8 + 2**30))
            img = mnt / "ehr.img"
            stack.callback(img.unlink, missing_ok=True)
            stack.callback(lambda m=mnt: [p.unlink() for p in (m / ".replicad-clones").glob("*")])
            t0 = time.perf_counter()
            rng = random.Random(gib)
            write_text_image(img, size, rng)
            console.log(f"reflink {gib} GiB: image written in {time.perf_counter() - t0:.1f}s")
            store = ChunkStore(root / "store")
            stack.callback(store.close)
            cfg = VolumeConfig.model_validate({"name": VOL, "path": str(img), "initial_primary": "site-a",
                                               "block_size": BLOCK_BYTES, "source": {"kind": "reflink"}})
            fcfg = VolumeConfig.model_validate({"name": VOL, "path": str(img), "initial_primary": "site-a",
                                                "block_size": BLOCK_BYTES})
            v = {"gib": gib, "size": size, "img": img, "rng": rng, "store": store, "root": root,
                 "rsrc": make_source(cfg, root), "fsrc": make_source(fcfg, root)}
            v["rpar"] = _reflink_cycle(v, "rsrc", None, 1)[0].result.manifest
            v["fpar"] = _reflink_cycle(v, "fsrc", None, 1)[0].result.manifest
            v["target"] = root / "rsync-target.img"
            subprocess.run(["cp", "--sparse=never", str(img), str(v["target"])], check=True, timeout=args.step_timeout_s)
            vols.append(v)
        hi, lo = max(sizes), min(sizes)
        # rounds: the reflink cycles of all sizes, paired; then the baselines' rounds (their full
        # reads of the largest image would otherwise evict what its next reflink cycle reads);
        # then 1 % of the largest image, reflink against rsync
        if args.reflink_interleave:  # the older order: each round's baselines right after its reflink cycle
            plan = [("same", k, True, True) for k in range(args.runs)]
        else:
            plan = [("same", k, True, False) for k in range(args.runs)] + [("same", k, False, True)
                                                                           for k in range(args.runs)]
        plan.append(("pct", args.runs, True, True))
        for kind, k, reflink_round, base_round in plan:
            turn = [v for v in (vols if k % 2 == 0 else vols[::-1]) if kind == "same" or v["gib"] == hi]
            round_s: dict[int, float] = {}
            for v in turn:
                gib = v["gib"]
                n = change_bytes(v["img"], v["size"] // 100 if kind == "pct" else changed, v["rng"],
                                 f"{gib}-{k}-{int(reflink_round)}{int(base_round)}")
                key = f"reflink.{gib}.{kind}"
                note = ""
                if reflink_round:
                    res.add(f"{key}.extents", extent_count(v["img"]))
                    res.add(f"{key}.load1", os.getloadavg()[0])
                    snap, dt, cpu = _reflink_cycle(v, "rsrc", v["rpar"], v["rpar"].seq + 1)
                    if snap.mode not in ("tracked", "verified"):
                        raise RuntimeError(f"reflink cycle was {snap.mode}, not tracked")
                    v["rpar"] = snap.result.manifest
                    round_s[gib] = dt
                    res.add(f"{key}.reflink.s", dt)
                    res.add(f"{key}.reflink.cpu_s", cpu)
                    res.add(f"{key}.reflink.cpu_per_gib", cpu / (n * BLOCK_BYTES / 2**30))
                    for phase in ("clone_s", "map_s", "diff_s", "build_s", "drop_s"):
                        res.add(f"{key}.reflink.{phase}", v["rsrc"].last.get(phase) or 0.0)
                    note += (f"{res.samples[key + '.extents'][-1]:.0f} extents, load {os.getloadavg()[0]:.1f}: "
                             f"reflink {dt:.3f}s (cpu {cpu:.3f}s)")
                if kind == "same" and base_round:
                    fsnap, fdt, fcpu = _reflink_cycle(v, "fsrc", v["fpar"], v["fpar"].seq + 1)
                    v["fpar"] = fsnap.result.manifest
                    res.add(f"{key}.file.s", fdt)
                    res.add(f"{key}.file.cpu_per_gib", fcpu / (n * BLOCK_BYTES / 2**30))
                    note += f", file {fdt:.3f}s (load {os.getloadavg()[0]:.1f})"
                if base_round:
                    rdt, _ = rsync_to(["--inplace", "--no-whole-file", "--ignore-times"], v["img"],
                                      [str(v["target"])], args.step_timeout_s)
                    res.add(f"{key}.rsync.s", rdt)
                    note += f", rsync {rdt:.2f}s"
                console.log(f"reflink {gib} GiB {kind} round {k} ({n} blocks) {note}")
            if kind == "same" and reflink_round and len(sizes) > 1:
                res.add("reflink.pair_ratio", round_s[hi] / round_s[lo])
    return sizes


def _reflink_cycle(v: dict[str, Any], src: str, parent: Any, seq: int) -> tuple[Any, float, float]:
    """One cycle of ``v[src]`` into ``v["store"]`` and its commit: (snapshot, wall s, CPU s)."""
    c0, t0 = time.process_time(), time.perf_counter()
    snap = asyncio.run(v[src].snapshot(volume=VOL, seq=seq, epoch=1, parent=parent, store=v["store"],
                                       now_ns=time.time_ns()))
    asyncio.run(v[src].committed(snap))
    return snap, time.perf_counter() - t0, time.process_time() - c0


def pg_run(res: Results, args: argparse.Namespace, console: Console) -> None:
    """The PostgreSQL rows (module docstring): one pgbench load with ``--pg-snapshots`` rounds of
    a reflink and a file-source snapshot, one with as many qemu-source snapshots (of the
    ``--pg-sources`` asked), ``--pg-sample`` of each restored and judged. Results:
    ``pg.<kind>.judged`` / ``.started`` / ``.good`` (counts), ``pg.<kind>.snap.s``; the verdicts
    that failed are logged with their reason."""
    from tests import pgcrash

    wanted = [k for k in args.pg_sources.split(",") if k]
    try:
        pgcrash.require()
    except pgcrash.PgUnavailable as err:
        console.log(f"PostgreSQL rows skipped: {err}")
        return
    loads = [tuple(k for k in ("reflink", "file") if k in wanted), ("qemu",) if "qemu" in wanted else ()]
    for kinds in filter(None, loads):
        if kinds == ("qemu",):
            try:
                pgcrash.require_qemu()
            except pgcrash.PgUnavailable as err:
                console.log(f"PostgreSQL qemu row skipped: {err}")
                continue
        pg_load(res, args, console, kinds)


def pg_load(res: Results, args: argparse.Namespace, console: Console, kinds: tuple[str, ...]) -> None:
    """One pgbench load of :func:`pg_run` with snapshots by the sources ``kinds``, then the judging."""
    from tests import pgcrash

    with pgcrash.Scenario(scale=args.pg_scale, image_bytes=args.pg_image_mib * 2**20, clients=4,
                          checkpoint_every_s=1.0) as sc:
        t0 = time.perf_counter()
        camp = sc.run_load(kinds, args.pg_snapshots, interval_s=1.0)
        console.log(f"PostgreSQL ({', '.join(kinds)}): {len(camp.manifests[kinds[0]])} rounds of snapshots in "
                    f"{time.perf_counter() - t0:.0f}s, {camp.transactions} pgbench transactions in {camp.load_s:.0f}s, "
                    f"{camp.checkpoints} checkpoints; modes {dict((k, sorted(set(v))) for k, v in camp.modes.items())}")
        rng = random.Random(7)
        for kind in kinds:
            manifests = camp.manifests[kind]
            for v in camp.seconds[kind]:
                res.add(f"pg.{kind}.snap.s", v)
            picked = pgcrash.sample(len(manifests), args.pg_sample, rng)
            verdicts = [sc.judge(kind, i, manifests[i], camp.stores[kind]) for i in picked]
            res.add(f"pg.{kind}.judged", len(verdicts))
            res.add(f"pg.{kind}.started", sum(v.started for v in verdicts))
            res.add(f"pg.{kind}.good", sum(v.good for v in verdicts))
            for v in verdicts:
                if not v.good:
                    console.log(f"PostgreSQL {kind} snapshot {v.index}: started={v.started} amcheck={v.amcheck} "
                                f"invariant={v.invariant} checksums={v.checksums}: {escape(v.detail)}")
            console.log(f"PostgreSQL {kind}: {sum(v.good for v in verdicts)} of {len(verdicts)} good, "
                        f"{sum(v.started for v in verdicts)} started")


def pg_rows(res: Results, add: Callable[..., None]) -> None:
    """Table rows of :func:`pg_run`."""
    for kind, target in (("reflink", "all good"), ("qemu", "all good"), ("file", "info")):
        n = res.med(f"pg.{kind}.judged")
        if not n:
            continue
        good, started = int(res.med(f"pg.{kind}.good")), int(res.med(f"pg.{kind}.started"))
        add(f"PostgreSQL under pgbench, no hooks, {kind} source: restored snapshots good (started)",
            f"{good} of {int(n)} ({started} started)", f"per snapshot {res.cell(f'pg.{kind}.snap.s', s_fmt)}",
            None, target, (good == n) if target == "all good" else None)


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` in seconds (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def qemu_run(work: Path, res: Results, args: argparse.Namespace, console: Console) -> list[int]:
    """The qemu rows (module docstring): per size, qemu source / file source incremental cycles
    with the same changed bytes. Returns the sizes measured (GiB)."""
    from replicad.config import VolumeConfig
    from replicad.sources.kinds import make_source
    from tests.integration.test_qemu_source import Qsd

    sizes = [int(x) for x in args.qemu_gib.split(",") if x]
    free = shutil.disk_usage(work).free  # raw + qcow2 (the written share of each) + store
    done = []
    changed = int(args.reflink_changed_mib * 2**20)
    for gib in sizes:
        root = work / f"qemu{gib}"
        if gib * args.qemu_fill * 2 + 8 > free / 2**30:
            console.log(f"qemu {gib} GiB: not enough room under {work} ({free / 2**30:.0f} GiB free): skipped")
            continue
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        size = gib * 2**30
        rng = random.Random(100 + gib)
        raw = root / "ehr.raw"
        t0 = time.perf_counter()
        write_text_image(raw, int(size * args.qemu_fill) // BLOCK_BYTES * BLOCK_BYTES, rng)
        os.truncate(raw, size)  # the rest a hole (unallocated in the qcow2 too)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(root / "disk.qcow2")],
                       check=True, timeout=args.step_timeout_s)
        console.log(f"qemu {gib} GiB: raw and qcow2 written in {time.perf_counter() - t0:.1f}s")
        q = Qsd(root, size)
        q.start()
        store = ChunkStore(root / "store")
        try:
            cfg = VolumeConfig.model_validate({"name": VOL, "path": str(q.image), "initial_primary": "site-a",
                                               "block_size": BLOCK_BYTES, "source": {
                                                   "kind": "qemu", "qmp_socket": str(q.qmp), "node": "disk",
                                                   "nbd_socket": str(q.nbd)}})
            fcfg = VolumeConfig.model_validate({"name": VOL, "path": str(raw), "initial_primary": "site-a",
                                                "block_size": BLOCK_BYTES})
            qsrc, fsrc = make_source(cfg, root / "data"), make_source(fcfg, root / "data")
            assert q.proc is not None
            qpid = q.proc.pid

            def cycle(src, parent, seq, with_qsd):
                c0, t0 = time.process_time(), time.perf_counter()
                q0 = _proc_cpu_s(qpid) if with_qsd else 0.0
                snap = asyncio.run(src.snapshot(volume=VOL, seq=seq, epoch=1, parent=parent, store=store,
                                                now_ns=time.time_ns()))
                asyncio.run(src.committed(snap))
                cpu = time.process_time() - c0 + ((_proc_cpu_s(qpid) - q0) if with_qsd else 0.0)
                return snap, time.perf_counter() - t0, cpu

            qpar, _, _ = cycle(qsrc, None, 1, True)
            fpar, _, _ = cycle(fsrc, None, 1, False)
            qpar, fpar = qpar.result.manifest, fpar.result.manifest
            plan = [("same", changed)] * args.runs + ([("pct", size // 100)] if gib == max(sizes) else [])
            for k, (kind, nbytes) in enumerate(plan):
                picked = sorted(rng.sample(range(size // BLOCK_BYTES), max(1, nbytes // BLOCK_BYTES)))
                h = q.guest()
                with open(raw, "r+b") as f:
                    for b in picked:
                        line = f"edit {gib}-{k} block {b} value {rng.randrange(10**9)}: reviewed\n".encode()
                        data = (line * (BLOCK_BYTES // len(line) + 1))[:BLOCK_BYTES]
                        h.pwrite(data, b * BLOCK_BYTES)
                        f.seek(b * BLOCK_BYTES)
                        f.write(data)
                    h.flush()
                    f.flush()
                    os.fsync(f.fileno())
                h.shutdown()
                n = len(picked)
                snap, dt, cpu = cycle(qsrc, qpar, 2 + k, True)
                if snap.mode not in ("tracked", "verified"):
                    raise RuntimeError(f"qemu cycle was {snap.mode}, not tracked")
                qpar = snap.result.manifest
                key = f"qemu.{gib}.{kind}"
                res.add(f"{key}.qemu.s", dt)
                res.add(f"{key}.qemu.cpu_per_gib", cpu / (n * BLOCK_BYTES / 2**30))
                fsnap, fdt, fcpu = cycle(fsrc, fpar, 2 + k, False)
                fpar = fsnap.result.manifest
                if fpar.pages != qpar.pages:
                    raise RuntimeError("the qemu and file sources disagree on the same content")
                res.add(f"{key}.file.s", fdt)
                res.add(f"{key}.file.cpu_per_gib", fcpu / (n * BLOCK_BYTES / 2**30))
                console.log(f"qemu {gib} GiB {kind} ({n} blocks): qemu {dt:.3f}s ({cpu:.3f} CPU s, {snap.info}), "
                            f"file {fdt:.3f}s")
        finally:
            store.close()
            q.stop()
        shutil.rmtree(root, ignore_errors=True)
        done.append(gib)
    return done


def qemu_rows(res: Results, sizes: list[int], add: Callable[..., None]) -> None:
    """Table rows of :func:`qemu_run`."""
    if not sizes:
        return
    for gib in sizes:
        key = f"qemu.{gib}.same"
        add(f"qemu incremental, {gib} GiB qcow2, same changed bytes (qemu | file source)",
            f"{res.cell(key + '.qemu.s', s_fmt)} | {res.cell(key + '.file.s', s_fmt)}", "", None, "info", None)
        add(f"  cycle CPU s per GiB changed, {gib} GiB (qemu incl. QSD | file source)",
            f"{res.cell(key + '.qemu.cpu_per_gib', lambda v: f'{v:.2f}')} | "
            f"{res.cell(key + '.file.cpu_per_gib', lambda v: f'{v:.2f}')}", "", None, "info", None)
    lo, hi = min(sizes), max(sizes)
    if hi != lo:
        for src, target in (("qemu", 1.3), ("file", None)):
            r = ratio(res.med(f"qemu.{hi}.same.{src}.s"), res.med(f"qemu.{lo}.same.{src}.s"))
            add(f"  {hi} GiB / {lo} GiB cycle time, same changed bytes: {src}", "", "", r,
                f"<= {target}" if target else "info", (r is not None and r <= target) if target else None)
            r = ratio(res.med(f"qemu.{hi}.same.{src}.cpu_per_gib"), res.med(f"qemu.{lo}.same.{src}.cpu_per_gib"))
            add(f"  {hi} GiB / {lo} GiB cycle CPU, same changed bytes: {src}", "", "", r, "info", None)
    key = f"qemu.{hi}.pct"
    rsync_s = res.med(f"reflink.{hi}.pct.rsync.s")  # rsync reads the whole image either way: the reflink row's
    r = ratio(rsync_s, res.med(key + ".qemu.s"))
    add(f"qemu incremental, {hi} GiB, 1% changed vs rsync 1 target (the reflink row's, same size)",
        f"{res.cell(key + '.qemu.s', s_fmt)} | file {res.cell(key + '.file.s', s_fmt)}",
        res.cell(f"reflink.{hi}.pct.rsync.s", s_fmt), r, ">= 50x faster", r is not None and r >= 50)


def reflink_rows(res: Results, sizes: list[int], add: Callable[..., None]) -> None:
    """Table rows of :func:`reflink_run`."""
    if not sizes:
        return
    for gib in sizes:
        key = f"reflink.{gib}.same"
        add(f"reflink incremental, {gib} GiB, same changed bytes (reflink | file source)",
            f"{res.cell(key + '.reflink.s', s_fmt)} | {res.cell(key + '.file.s', s_fmt)}",
            f"rsync {res.cell(key + '.rsync.s', s_fmt)}", ratio(res.med(key + ".rsync.s"), res.med(key + ".reflink.s")),
            "info", None)
        add(f"  cycle CPU s per GiB changed, {gib} GiB (reflink | file source)",
            f"{res.cell(key + '.reflink.cpu_per_gib', lambda v: f'{v:.2f}')} | "
            f"{res.cell(key + '.file.cpu_per_gib', lambda v: f'{v:.2f}')}", "", None, "info", None)
        add(f"  image extents before the cycle, {gib} GiB | load", res.cell(key + ".extents", lambda v: f"{v:.0f}"),
            res.cell(key + ".load1", lambda v: f"{v:.1f}"), None, "info", None)
        add(f"  phases, {gib} GiB: clone | maps | compare | build | drop parent",
            " | ".join(res.cell(f"{key}.reflink.{p}", ms_fmt) for p in ("clone_s", "map_s", "diff_s", "build_s", "drop_s")),
            "", None, "info", None)
    lo, hi = min(sizes), max(sizes)
    if hi != lo:
        for src, target in (("reflink", 1.3), ("file", None), ("rsync", None)):
            r = ratio(res.med(f"reflink.{hi}.same.{src}.s"), res.med(f"reflink.{lo}.same.{src}.s"))
            add(f"  {hi} GiB / {lo} GiB cycle time, same changed bytes: {src}", "", "", r,
                f"<= {target}" if target else "info", (r is not None and r <= target) if target else None)
        r = res.med("reflink.pair_ratio")
        add(f"  {hi} GiB / {lo} GiB reflink, median of the rounds' own ratios (paired)",
            res.cell("reflink.pair_ratio", lambda v: f"{v:.2f}x"), "", r, "info", None)
        r = ratio(res.med(f"reflink.{hi}.same.reflink.cpu_s"), res.med(f"reflink.{lo}.same.reflink.cpu_s"))
        add(f"  {hi} GiB / {lo} GiB reflink cycle CPU s", "", "", r, "info", None)
    key = f"reflink.{hi}.pct"
    r = ratio(res.med(key + ".rsync.s"), res.med(key + ".reflink.s"))
    add(f"reflink incremental, {hi} GiB, 1% changed vs rsync 1 target", res.cell(key + ".reflink.s", s_fmt),
        res.cell(key + ".rsync.s", s_fmt), r, ">= 50x faster", r is not None and r >= 50)


# ---------------------------------------------------------------------------- report

def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def build_table(res: Results, args: argparse.Namespace, cold: bool,
                reflink_sizes: list[int] | None = None, qemu_sizes: list[int] | None = None) -> tuple[Table, list[dict]]:
    t = Table(title=escape(f"replicad vs baselines — {args.size_mib} MiB ext4 image, 3 sites, min_copies=2, "
                           f"runs={args.runs} (median [min–max])"), show_lines=False)
    for col in ("row", "replicad", "baseline", "ratio", "target", "met"):
        t.add_column(col, overflow="fold")
    rows: list[dict] = []

    def add(name: str, ours: str, base: str, r: float | None, target: str, ok: bool | None) -> None:
        t.add_row(name, ours, base, "–" if r is None else f"{r:.2f}x", target,
                  "–" if ok is None else ("yes" if ok else "NO"))
        rows.append({"row": name, "replicad": ours, "baseline": base, "ratio": r, "target": target, "met": ok})

    for mode in ["warm"] + (["cold"] if cold else []):
        r1 = ratio(res.med(f"incr.{mode}.rsync1.s"), res.med(f"incr.{mode}.replicad.s"))
        add(f"incremental 1% ({mode}) vs rsync 1 target", res.cell(f"incr.{mode}.replicad.s", s_fmt),
            res.cell(f"incr.{mode}.rsync1.s", s_fmt), r1, ">= 5x faster" if mode == "warm" else "info",
            (r1 is not None and r1 >= 5) if mode == "warm" else None)
        r2 = ratio(res.med(f"incr.{mode}.rsync2.s"), res.med(f"incr.{mode}.replicad.s"))
        add(f"incremental 1% ({mode}) vs rsync 2 targets (parallel)", "(same, 2 replicas)",
            res.cell(f"incr.{mode}.rsync2.s", s_fmt), r2, "info", None)
        add(f"  bytes on the wire ({mode}, 2 replicas | rsync 1 target)",
            res.cell(f"incr.{mode}.replicad.bytes", mb_fmt), res.cell(f"incr.{mode}.rsync1.bytes", mb_fmt),
            ratio(res.med(f"incr.{mode}.replicad.bytes"), res.med(f"incr.{mode}.rsync1.bytes")), "info", None)
    rf = ratio(res.med("full.rsync.s"), res.med("full.replicad.s"))
    add("first full sync vs rsync --fsync (1 target)", res.cell("full.replicad.s", s_fmt),
        res.cell("full.rsync.s", s_fmt), rf, "no slower (>= 1x)", rf is not None and rf >= 1)
    add("  vs rsync --fsync 2 targets (parallel)", "(same, 2 replicas)", res.cell("full.rsync2.s", s_fmt),
        ratio(res.med("full.rsync2.s"), res.med("full.replicad.s")), "info", None)
    add("  vs cp + fsync floor", "", res.cell("full.cp.s", s_fmt),
        ratio(res.med("full.cp.s"), res.med("full.replicad.s")), "info", None)
    rb = ratio(res.med("full.replicad.bytes_per_replica"), res.med("full.rsync.bytes"))
    add("  bytes on the wire per replica (total for 2)",
        f"{res.cell('full.replicad.bytes_per_replica', mb_fmt)} ({res.cell('full.replicad.bytes', mb_fmt)})",
        res.cell("full.rsync.bytes", mb_fmt), rb, "<= 0.5x rsync", rb is not None and rb <= 0.5)
    for mode in ["warm"] + (["cold"] if cold else []):
        rs = ratio(res.med(f"scan.{mode}.full.Bps"), res.med(f"scan.{mode}.floor.Bps"))
        add(f"scan full, fresh store ({mode}) vs read+BLAKE3", res.cell(f"scan.{mode}.full.Bps", gbs_fmt),
            res.cell(f"scan.{mode}.floor.Bps", gbs_fmt), rs, ">= 0.70" if mode == "warm" else "info",
            (rs is not None and rs >= 0.7) if mode == "warm" else None)
        ri = ratio(res.med(f"scan.{mode}.incr.Bps"), res.med(f"scan.{mode}.floor.Bps"))
        add(f"scan incremental 1% ({mode}) vs read+BLAKE3", res.cell(f"scan.{mode}.incr.Bps", gbs_fmt),
            res.cell(f"scan.{mode}.floor.Bps", gbs_fmt), ri, "info", None)
    rl = ratio(res.med("restore.dd.s"), res.med("restore.local.s"))
    add("restore from local store (API, incl. O5 verify) vs dd", res.cell("restore.local.s", s_fmt),
        res.cell("restore.dd.s", s_fmt), rl, ">= 0.70", rl is not None and rl >= 0.7)
    add("  of which ensure (walk, fetch) / write / O5 verify",
        " / ".join(res.cell(f"restore.local.{k}.s", s_fmt) for k in ("fetch", "write", "verify")), "", None,
        "info", None)
    ra = ratio(res.med("restore.dd.s"), res.med("restore.peer.apply.s"))
    add("  restore write phase only (apply_snapshot) vs dd", res.cell("restore.peer.apply.s", s_fmt),
        res.cell("restore.dd.s", s_fmt), ra, "info", None)
    rp = ratio(res.med("restore.dd.s"), res.med("restore.peer.total.s"))
    add("restore from a peer via the local store (fetch, then apply, verify) vs dd", res.cell("restore.peer.total.s", s_fmt),
        res.cell("restore.dd.s", s_fmt), rp, "info", None)
    add("  of which fetch from peer", res.cell("restore.peer.fetch.s", s_fmt), "", None, "info", None)
    r2 = ratio(res.med("restore.dd.s"), res.med("restore.peers2.total.s"))
    add("restore from peers, 2 holders (streamed to the image, O5 checked while writing) vs dd",
        res.cell("restore.peers2.total.s", s_fmt), res.cell("restore.dd.s", s_fmt), r2, ">= 0.70",
        r2 is not None and r2 >= 0.7)
    add("  of which manifest+pages / stream+write+O5",
        " / ".join(res.cell(f"restore.peers2.{k}.s", s_fmt) for k in ("meta", "stream")), "", None,
        "info", None)
    rto = res.med("rto.rto_s")
    add("standby RTO, 1% divergence (promote --force)", res.cell("rto.rto_s", s_fmt),
        f"wall {res.cell('rto.wall.s', s_fmt)}", None, "< 2 s", rto is not None and rto < 2)
    add("  of which ensure / write / O5 verify at the promoted site",
        " / ".join(res.cell(f"rto.{k}.s", s_fmt) for k in ("fetch", "write", "verify")), "", None, "info", None)

    def pct(key: str) -> tuple[float, float] | None:
        vals = sorted(res.samples.get(key, []))
        if not vals:
            return None
        return statistics.median(vals), vals[min(len(vals) - 1, int(round(0.99 * (len(vals) - 1))))]

    raft = pct("commit.raft.s")
    ship_commit = pct("commit.ship_commit.s")
    if raft is not None:
        n = len(res.samples["commit.raft.s"])
        add(f"commit: ship-ack -> Raft commit applied, daemon timer (n={n}) p50 / p99",
            f"{ms_fmt(raft[0])} / {ms_fmt(raft[1])}",
            f"ship+commit p50/p99 {ms_fmt(ship_commit[0])} / {ms_fmt(ship_commit[1])}" if ship_commit else "",
            None, "p99 < 20 ms", raft[1] < 0.020)
    elif ship_commit is not None:
        n = len(res.samples["commit.ship_commit.s"])
        add(f"commit: ship-ack + Raft commit (n={n}) p50 / p99", f"{ms_fmt(ship_commit[0])} / {ms_fmt(ship_commit[1])}",
            f"cycle p50 {ms_fmt(statistics.median(res.samples['commit.cycle.s']))}", None, "p99 < 20 ms",
            ship_commit[1] < 0.020)
    reflink_rows(res, reflink_sizes or [], add)
    qemu_rows(res, qemu_sizes or [], add)
    pg_rows(res, add)
    hwm = [res.med(f"memory.{s}.hwm") for s in ("site-a", "site-b", "site-c")]
    if all(h is not None for h in hwm):
        add(f"peak RSS, {args.sparse_volumes} x {args.sparse_gib} GiB sparse (a | b | c)",
            " | ".join(mb_fmt(h) for h in hwm), f"cycle+apply {res.cell('memory.cycle_all.s', s_fmt)}",
            None, "< 300 MB", max(hwm) < 300e6)
    return t, rows


def rpo_main(work: Path, args: argparse.Namespace, console: Console, header: str) -> int:
    """``--rpo``: the RPO rows alone (:mod:`tests.bench.rpo`), their table and JSON."""
    from tests.bench.rpo import rpo_rows, rpo_run

    t_start = time.perf_counter()
    try:
        results = rpo_run(work, args, lambda msg: console.log(escape(msg)))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    t = Table(title=f"RPO rows: {args.rpo_gib} GiB, {args.rpo_churn_pct:g} % of the blocks per minute, 2 sites")
    for col in ("row", "replicad", "baseline", "ratio", "target", "met"):
        t.add_column(col, overflow="fold")
    rows: list[dict] = []

    def add(name: str, ours: str, base: str, r: float | None, target: str, ok: bool | None) -> None:
        t.add_row(name, ours, base, "–", target, "–")
        rows.append({"row": name, "replicad": ours, "baseline": base, "ratio": r, "target": target, "met": ok})

    rpo_rows(results, add)
    console.print(t)
    console.print(f"total bench time {time.perf_counter() - t_start:.0f}s")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": header,
                                             "rows": rows, "rpo": results}, indent=1))
    return 0


def machine_header() -> str:
    free = subprocess.run(["free", "-m"], capture_output=True, text=True, check=False).stdout.strip()
    rsync_v = subprocess.run(["rsync", "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[0]
    return (f"{platform.node()} {platform.machine()} nproc={os.cpu_count()} python={platform.python_version()} "
            f"{rsync_v}\n{free}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="image size, MiB (default 1024)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions of every measured step (default 3)")
    ap.add_argument("--cycles", type=int, default=1, help="incremental cycles per run and cache mode")
    ap.add_argument("--commits", type=int, default=40, help="tiny-volume snapshots per run for commit latency")
    ap.add_argument("--sparse-volumes", type=int, default=8)
    ap.add_argument("--sparse-gib", type=int, default=64)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: cluster,scan,memory,reflink,qemu,pg; and "
                    "within the cluster run incr,commits,rto (e.g. restore rows alone at a large --size-mib)")
    ap.add_argument("--reflink-gib", default="1,16", help="volume sizes of the reflink rows, GiB (default 1,16)")
    ap.add_argument("--qemu-gib", default="1,4", help="disk sizes of the qemu rows, GiB (default 1,4)")
    ap.add_argument("--qemu-fill", type=float, default=1.0,
                    help="share of each qemu-row disk written before the cycles (default 1.0; the rest a hole)")
    ap.add_argument("--reflink-interleave", action="store_true",
                    help="reflink rows: run each round's file source and rsync right after its reflink cycles "
                         "(the order before the rows were paired) instead of in rounds of their own after them")
    ap.add_argument("--reflink-changed-mib", type=float, default=10.24,
                    help="bytes rewritten before each reflink-row cycle, MiB (default 10.24: 1%% of 1 GiB)")
    ap.add_argument("--pg-snapshots", type=int, default=20,
                    help="PostgreSQL rows: rounds of snapshots (one per source) under pgbench (default 20)")
    ap.add_argument("--pg-sources", default="reflink,file,qemu",
                    help="PostgreSQL rows: sources, comma list (default reflink,file,qemu; qemu gets a load of its own)")
    ap.add_argument("--pg-sample", type=int, default=20,
                    help="PostgreSQL rows: snapshots of each source restored and judged (default 20: all)")
    ap.add_argument("--pg-scale", type=int, default=16,
                    help="PostgreSQL rows: pgbench -i -s (default 16: 1.6 M accounts, ~250 MB)")
    ap.add_argument("--pg-image-mib", type=int, default=2048,
                    help="PostgreSQL rows: size of the protected ext4 image, MiB (default 2048: the file "
                         "source's read of the live image spans checkpoints)")
    ap.add_argument("--no-cold", action="store_true", help="warm page cache only")
    ap.add_argument("--step-timeout-s", type=float, default=900.0)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch dir (default: a new temp dir, removed)")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--rpo", action="store_true",
                    help="only the RPO rows (tests/bench/rpo.py): per source, the shortest interval that keeps up "
                         "with --rpo-churn-pct %% of the volume per minute, on a two-site cluster")
    ap.add_argument("--rpo-gib", type=int, default=16, help="RPO rows: volume size, GiB (default 16)")
    ap.add_argument("--rpo-sources", default="reflink,qemu,file", help="RPO rows: sources (default reflink,qemu,file)")
    ap.add_argument("--rpo-intervals", type=lambda v: [float(x) for x in v.split(",") if x], default=[2, 5, 10, 15, 30, 60],
                    help="RPO rows: snapshot intervals tried, s, ascending (default 2,5,10,15,30,60)")
    ap.add_argument("--rpo-window-s", type=float, default=300.0, help="RPO rows: measured time per interval (default 300)")
    ap.add_argument("--rpo-warmup-s", type=float, default=30.0, help="RPO rows: time per interval not counted (default 30)")
    ap.add_argument("--rpo-churn-pct", type=float, default=1.0, help="RPO rows: %% of the blocks rewritten per minute")
    ap.add_argument("--rpo-all", action="store_true",
                    help="RPO rows: every interval (default: stop at the first, shortest, that keeps up)")
    ap.add_argument("--unsigned", action="store_true",
                    help="sites without identity (unsafe_unsigned): the cost of signed commands, by difference")
    args = ap.parse_args(argv)
    if set(filter(None, args.pg_sources.split(","))) - {"reflink", "file", "qemu"}:
        ap.error(f"--pg-sources {args.pg_sources!r}: the sources are reflink, file, qemu")
    console = Console(width=230)
    if shutil.which("rsync") is None:
        console.print("rsync is not installed (apt-get install -y rsync)")
        return 2
    skip = set(filter(None, args.skip.split(",")))
    args.skip_parts = skip
    cold = not args.no_cold and can_drop_caches()
    header = machine_header()
    console.print(header)
    console.print(f"cold-cache rows: {'yes' if cold else 'no (drop_caches not writable)'}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="replicad-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    if args.rpo:
        return rpo_main(work, args, console, header)
    res = Results()
    reflink_sizes: list[int] = []
    qemu_sizes: list[int] = []
    t_start = time.perf_counter()
    try:
        t0 = time.perf_counter()
        img = build_volume(work / "build", work / "image.img", size_bytes=args.size_mib * 2**20,
                           rng=random.Random(42)).path
        shutil.rmtree(work / "build", ignore_errors=True)
        console.log(f"image built in {time.perf_counter() - t0:.1f}s")
        for run in range(args.runs):
            if "scan" not in skip:
                scan_run(img, work, res, cold, random.Random(run))
            if "cluster" not in skip:
                one_run(run, img, work, res, args, cold, console)
        if "memory" not in skip:
            memory_run(work, res, args, console)
        reflink_sizes = reflink_run(work, res, args, console) if "reflink" not in skip else []
        qemu_sizes = qemu_run(work, res, args, console) if "qemu" not in skip else []
        if "pg" not in skip:
            pg_run(res, args, console)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    table, rows = build_table(res, args, cold, reflink_sizes, qemu_sizes)
    console.print(table)
    console.print(f"total bench time {time.perf_counter() - t_start:.0f}s")
    if args.json_out:
        args.json_out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "machine": header, "cold": cold, "rows": rows,
                                             "samples": res.samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
