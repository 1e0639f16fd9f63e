"""The ``qemu`` snapshot source against a real qemu-storage-daemon (QSD) serving a qcow2 disk:
guests write through QSD's NBD export while the source takes snapshots through a persistent
dirty bitmap and a copy-before-write fleecing view (FUSE and NBD exports of QSD, libnbd).

* the tracked manifest equals a full scan of the disk after random write patterns;
* a writer that updates block 0 then block N during the reads never shows N ahead of 0;
* QSD killed -9 mid-cycle or between cycles, restarted cleanly, and this process "dying"
  mid-cycle all end in ``lost`` → a rescan whose manifest is right → ``tracking``;
* an abandoned cycle loses nothing (the frozen bitmap is merged back).

Every QSD is started by the test and killed by PID; every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from replicad.config import VolumeConfig
from replicad.core.manifest import ZERO_DIGEST, Manifest, page_entries
from replicad.sources.base import SourceSnapshot
from replicad.sources.file import take_snapshot
from replicad.sources.kinds import make_source
from replicad.sources.qemu import QemuSource
from replicad.sources.tracked import same_blocks
from replicad.storage.chunkstore import ChunkStore

nbd = pytest.importorskip("nbd", reason="python3-libnbd (scripts/setup.sh)")

BS = 65536
SIZE = 64 * 2**20  # 1024 blocks
NOW_NS = 1_700_000_000 * 10**9


def spawn_until(log_path: Path, sockets: tuple[Path, ...], argv: list[str], timeout_s: float = 30) -> subprocess.Popen:
    """Start ``argv`` (its output appended to ``log_path``) once its ``sockets`` are removed, and
    wait until it created them all; the log in the assertion if it exits or times out first."""
    for p in sockets:
        p.unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in sockets):
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, f"{argv[0]} did not start"
        time.sleep(0.02)
    return proc


def stop_pid(proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``proc`` (by its PID) if it runs and reap it; SIGKILL after 30 s."""
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)


class Qsd:
    """One qemu-storage-daemon serving ``disk`` (qcow2) as node ``disk`` over NBD export ``disk``."""

    def __init__(self, root: Path, size: int = SIZE) -> None:
        self.root = root
        self.size = size
        self.image = root / "disk.qcow2"
        self.qmp = root / "qmp.sock"
        self.nbd = root / "nbd.sock"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = spawn_until(self.root / "qsd.log", (self.qmp, self.nbd), [
             "qemu-storage-daemon",
             "--blockdev", f"driver=file,node-name=disk-file,filename={self.image}",
             "--blockdev", "driver=qcow2,node-name=disk,file=disk-file",
             "--nbd-server", f"addr.type=unix,addr.path={self.nbd}",
             "--export", "type=nbd,id=guest,node-name=disk,name=disk,writable=on",
             "--chardev", f"socket,path={self.qmp},server=on,wait=off,id=qmp0", "--monitor", "chardev=qmp0"])

    def stop(self, sig: int = signal.SIGKILL) -> None:
        stop_pid(self.proc, sig)
        self.proc = None

    def guest(self) -> "nbd.NBD":
        h = nbd.NBD()
        h.set_export_name("disk")
        h.connect_unix(str(self.nbd))
        return h

    def disk_bytes(self) -> bytes:
        h = self.guest()
        try:
            return b"".join(bytes(h.pread(min(4 * 2**20, self.size - off), off))
                            for off in range(0, self.size, 4 * 2**20))
        finally:
            h.shutdown()


@contextmanager
def running_qsd(root: Path, size: int = SIZE, data_dir: Path | None = None,
                raw: Path | None = None) -> Iterator[Qsd]:
    """A fresh qcow2 of ``size`` bytes served by a QSD; killed by PID on exit, and a FUSE view
    left mounted in ``data_dir`` (default ``root/data``) by a killed QSD unmounted. ``raw``: an
    existing raw disk given a qcow2 metadata sidecar instead (README's recipe: ``qemu-img
    create`` with a data file zeroes it, so against a scratch file, then ``amend``)."""
    qcow2 = root / "disk.qcow2"
    if raw is None:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), str(size)], check=True, timeout=60)
    else:
        scratch = root / "scratch.raw"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={scratch},data_file_raw=on",
                        str(qcow2), str(size)], check=True, timeout=60)
        subprocess.run(["qemu-img", "amend", "-f", "qcow2", "-o", f"data_file={raw},data_file_raw=on", str(qcow2)],
                       check=True, timeout=60)
        scratch.unlink()
    q = Qsd(root, size)
    q.start()
    try:
        yield q
    finally:
        q.stop()
        view = (data_dir or root / "data") / "qemu-source" / "ehr.view"
        subprocess.run(["fusermount3", "-u", "-z", str(view)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=30, check=False)


def guest_write(q: Qsd, blocks: list[int], rng: random.Random) -> None:
    """Rewrite whole blocks through the guest export (text-like), flushed."""
    h = q.guest()
    try:
        for b in blocks:
            h.pwrite((f"edit {b} {rng.random()}\n" * 3000).encode()[:BS], b * BS)
        h.flush()
    finally:
        h.shutdown()


def volume_cfg(q: Qsd, **source: object) -> VolumeConfig:
    return VolumeConfig.model_validate({"name": "ehr", "path": str(q.image), "initial_primary": "site-a",
                                        "block_size": BS, "source": {"kind": "qemu", "qmp_socket": str(q.qmp),
                                                                     "node": "disk", "nbd_socket": str(q.nbd),
                                                                     **source}})


class Driver:
    """Plays the replication cycle around a source: parent = the last committed manifest."""

    def __init__(self, q: Qsd, store: ChunkStore, **source: object) -> None:
        self.q = q
        self.store = store
        self.source = make_source(volume_cfg(q, **source), q.root / "data")
        assert isinstance(self.source, QemuSource)
        self.parent: Manifest | None = None
        self.seq = 0

    def cycle(self, commit: bool = True) -> SourceSnapshot:
        self.seq += 1
        snap = asyncio.run(self.source.snapshot(volume="ehr", seq=self.seq, epoch=1, parent=self.parent,
                                                store=self.store, now_ns=NOW_NS + self.seq))
        if commit:
            asyncio.run(self.source.committed(snap))
            self.parent = snap.result.manifest
        else:
            asyncio.run(self.source.abandoned(snap))
        return snap

    def truth(self, snap: SourceSnapshot, parent: Manifest | None) -> Manifest:
        """A full scan (the file source) of the disk as the guest sees it now, same parent."""
        raw = self.q.root / "truth.raw"
        raw.write_bytes(self.q.disk_bytes())
        try:
            return asyncio.run(take_snapshot(raw, volume="ehr", seq=snap.result.manifest.seq, epoch=1, parent=parent,
                                             store=self.store, now_ns=0, block_size=BS)).manifest
        finally:
            raw.unlink()


def random_writes(q: Qsd, rng: random.Random, n: int) -> set[int]:
    """``n`` writes of random lengths and content (some zeros, some discards) through the guest export."""
    h = q.guest()
    touched: set[int] = set()
    try:
        for _ in range(n):
            off = rng.randrange(0, SIZE - 1)
            length = min(SIZE - off, rng.choice([1, 512, 4096, BS, 3 * BS + 17, 40 * BS]))
            kind = rng.random()
            if kind < 0.15:
                h.zero(length, off)
            elif kind < 0.2 and length >= BS:
                h.trim(length, off)
            else:
                h.pwrite(rng.randbytes(length) if rng.random() < 0.5 else bytes([rng.randrange(1, 256)]) * length, off)
            touched.update(range(off // BS, (off + length - 1) // BS + 1))
        h.flush()
    finally:
        h.shutdown()
    return touched


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    s = ChunkStore(tmp_path / "store")
    yield s
    s.close()


def view_mounted(tmp_path: Path) -> bool:
    view = os.path.realpath(tmp_path / "data" / "qemu-source" / "ehr.view")
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == view for line in f)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tracked_manifest_equals_full_scan_after_random_writes(tmp_path: Path, store: ChunkStore, seed: int) -> None:
    rng = random.Random(seed)
    with running_qsd(tmp_path) as q:
        d = Driver(q, store)
        random_writes(q, rng, 30)
        first = d.cycle()
        assert first.mode == "full" and d.source.status()["state"] == "tracking"
        assert same_blocks(first.result.manifest, d.truth(first, None))
        for _ in range(6):
            parent = d.parent
            touched = random_writes(q, rng, rng.randrange(0, 12))
            snap = d.cycle()
            assert snap.mode == "tracked", snap.info
            assert snap.info["read_blocks"] <= len(touched) + 1, (snap.info, len(touched))
            assert same_blocks(snap.result.manifest, d.truth(snap, parent))
        # every parent page came from the source's page cache, the full scan's too: no store read
        assert d.source._pages.misses == 0 and d.source._pages.hits > 0
        assert not view_mounted(tmp_path)
        names = {b["name"] for n in asyncio.run(_nodes(q)) if n["node-name"] == "disk"
                 for b in n.get("dirty-bitmaps") or [] if "name" in b}
        assert names == {d.source.status()["bitmap"], "replicad-ehr-alive"}


async def _nodes(q: Qsd) -> list[dict]:
    from qemu.qmp import QMPClient

    c = QMPClient("test")
    await asyncio.wait_for(c.connect(str(q.qmp)), 30)
    try:
        return await asyncio.wait_for(c.execute("query-named-block-nodes", {"flat": True}), 30)
    finally:
        await c.disconnect()


def block_of(store: ChunkStore, m: Manifest, index: int) -> bytes:
    digest = page_entries(store.get(m.pages[index // m.page_entries]))[index % m.page_entries]
    return bytes(BS) if digest == ZERO_DIGEST else store.get(digest)


def test_snapshot_is_a_point_in_time_while_the_guest_writes(tmp_path: Path, store: ChunkStore) -> None:
    """A writer updates block 0 then block N with the same generation, endlessly: a snapshot
    showing N at a newer generation than 0 would be a state that never existed."""
    last = SIZE // BS - 1
    with running_qsd(tmp_path) as q:
        d = Driver(q, store)
        stop = threading.Event()
        gens = [0]

        def writer() -> None:
            h = q.guest()
            try:
                g = 0
                while not stop.is_set() and g < 10**6:
                    g += 1
                    for block in (0, last // 2, last):
                        h.pwrite(g.to_bytes(8, "little") * (BS // 8), block * BS)
                    gens[0] = g
            finally:
                h.shutdown()

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        try:
            seen = []
            for _ in range(8):
                snap = d.cycle()
                m = snap.result.manifest
                g0, gmid, glast = (int.from_bytes(block_of(store, m, b)[:8], "little") for b in (0, last // 2, last))
                seen.append((snap.mode, g0, gmid, glast))
                assert g0 >= gmid >= glast >= g0 - 1, seen
        finally:
            stop.set()
            t.join(30)
        assert not t.is_alive()
        assert gens[0] > seen[0][1], "the writer ran during the cycles"
        assert [s[0] for s in seen] == ["full"] + ["tracked"] * 7
        assert len({s[1] for s in seen}) > 1, seen


def test_abandoned_cycle_keeps_its_changes_for_the_next(tmp_path: Path, store: ChunkStore) -> None:
    rng = random.Random(5)
    with running_qsd(tmp_path) as q:
        d = Driver(q, store)
        d.cycle()
        random_writes(q, rng, 8)
        dropped = d.cycle(commit=False)
        assert dropped.mode == "tracked" and dropped.result.changed_blocks
        random_writes(q, rng, 3)
        parent = d.parent
        snap = d.cycle()
        assert snap.mode == "tracked"
        assert set(dropped.result.changed_blocks) <= set(snap.result.changed_blocks) | set(
            i for i in dropped.result.changed_blocks if block_of(store, parent, i) == block_of(store, snap.result.manifest, i))
        assert same_blocks(snap.result.manifest, d.truth(snap, parent))


def test_qsd_killed_or_restarted_loses_tracking_then_rescans(tmp_path: Path, store: ChunkStore) -> None:
    rng = random.Random(7)
    flag = tmp_path / "kill-qsd"
    pidfile = tmp_path / "qsd.pid"
    hook = ["/bin/sh", "-c", f'if [ -e "{flag}" ]; then rm -f "{flag}"; kill -9 "$(cat {pidfile})"; fi']
    with running_qsd(tmp_path) as q:
        d = Driver(q, store, post_snapshot=hook)

        def restart(sig: int) -> None:
            q.stop(sig)
            q.start()
            pidfile.write_text(str(q.proc.pid))

        pidfile.write_text(str(q.proc.pid))
        d.cycle()
        random_writes(q, rng, 10)
        assert d.cycle().mode == "tracked"

        # killed -9 between cycles: the persistent bitmap is gone or inconsistent
        random_writes(q, rng, 10)
        restart(signal.SIGKILL)
        random_writes(q, rng, 5)
        parent = d.parent
        snap = d.cycle()
        lost = d.source.status()["lost_total"]
        # a bitmap added since QSD opened the image is written to the qcow2 only at a clean close:
        # missing; one loaded from the image and marked in-use: inconsistent
        assert snap.mode == "rescan" and lost["bitmap_missing"] + lost["bitmap_inconsistent"] == 1, lost
        assert same_blocks(snap.result.manifest, d.truth(snap, parent))
        assert d.source.status()["state"] == "tracking"

        # stopped cleanly: the bitmap is intact, but nothing recorded writes while it was down
        restart(signal.SIGTERM)
        random_writes(q, rng, 5)
        parent = d.parent
        snap = d.cycle()
        assert snap.mode == "rescan" and d.source.status()["lost_total"]["daemon_restarted"] == 1
        assert same_blocks(snap.result.manifest, d.truth(snap, parent))

        # killed -9 inside a cycle (right after the transaction): the cycle fails, nothing is lost
        random_writes(q, rng, 5)
        flag.touch()
        with pytest.raises(Exception) as failed:
            d.cycle()
        assert getattr(failed.value, "code", None) == "unavailable", failed.value
        assert d.source.status()["state"] in ("tracking", "lost")
        q.proc.wait(30)
        restart(signal.SIGKILL)
        random_writes(q, rng, 5)
        parent = d.parent
        snap = d.cycle()
        assert snap.mode == "rescan", snap.info
        assert same_blocks(snap.result.manifest, d.truth(snap, parent))
        random_writes(q, rng, 5)
        parent = d.parent
        snap = d.cycle()
        assert snap.mode == "tracked" and same_blocks(snap.result.manifest, d.truth(snap, parent))
        assert d.source.status()["state"] == "tracking"


def test_site_dying_mid_cycle_rescans_once(tmp_path: Path, store: ChunkStore) -> None:
    """A new source object on the same data dir plays the restarted site: the record names an
    open cycle, whose view, job and bitmaps are still in QSD; they are removed and one rescan
    follows."""
    rng = random.Random(9)
    with running_qsd(tmp_path) as q:
        d = Driver(q, store)
        d.cycle()
        random_writes(q, rng, 6)
        d.seq += 1
        asyncio.run(d.source.snapshot(volume="ehr", seq=d.seq, epoch=1, parent=d.parent, store=store,
                                      now_ns=NOW_NS + d.seq))  # neither committed nor abandoned: the site died
        assert view_mounted(tmp_path)
        parent = d.parent
        d.source = make_source(volume_cfg(q), tmp_path / "data")
        random_writes(q, rng, 4)
        snap = d.cycle()
        assert snap.mode == "rescan" and d.source.status()["lost_total"]["unclean_restart"] == 1
        assert same_blocks(snap.result.manifest, d.truth(snap, parent))
        assert not view_mounted(tmp_path)
        random_writes(q, rng, 4)
        parent = d.parent
        snap = d.cycle()
        assert snap.mode == "tracked" and same_blocks(snap.result.manifest, d.truth(snap, parent))


def test_verifier_runs_on_schedule(tmp_path: Path, store: ChunkStore) -> None:
    rng = random.Random(4)
    with running_qsd(tmp_path) as q:
        d = Driver(q, store, verify_every=2)
        d.cycle()
        modes = []
        for _ in range(4):
            random_writes(q, rng, 4)
            modes.append(d.cycle().mode)
        assert modes == ["tracked", "verified", "tracked", "verified"]
        st = d.source.status()
        assert st["verify"]["runs"] == 2 and st["verify"]["mismatches"] == 0


def test_node_not_qcow2_or_unknown_is_a_typed_error(tmp_path: Path, store: ChunkStore) -> None:
    from replicad.core.errors import NotFoundError, UnavailableError, UsageError

    with running_qsd(tmp_path) as q:
        for node, err in (("disk-file", UsageError), ("nosuch", NotFoundError)):
            src = make_source(volume_cfg(q, node=node), tmp_path / "data")
            with pytest.raises(err):
                asyncio.run(src.snapshot(volume="ehr", seq=1, epoch=1, parent=None, store=store, now_ns=NOW_NS))
    src = make_source(volume_cfg(q), tmp_path / "data")
    with pytest.raises(UnavailableError):
        asyncio.run(src.snapshot(volume="ehr", seq=1, epoch=1, parent=None, store=store, now_ns=NOW_NS))


def test_qemu_volume_in_a_cluster_survives_a_site_killed_mid_cycle(tmp_path: Path) -> None:
    """Real daemons: a three-site cluster whose primary's volume is a QSD disk. Snapshots replicate
    and restore byte-exact; the primary killed -9 right after the transaction (view up, bitmaps
    rotated, nothing committed) resumes through one rescan (``unclean_restart``) and tracks again."""
    from replicad.lab.localcluster import LocalCluster
    from tests.integration.conftest import VOL, snapshot

    assert VOL == "ehr"
    rng = random.Random(12)
    size = 16 * 2**20
    c = None
    flag = tmp_path / "kill-after-transaction"
    hook = ["/bin/sh", "-c", f'if [ -e "{flag}" ]; then rm -f "{flag}"; kill -9 $PPID; fi']
    qroot = tmp_path / "qsd"
    qroot.mkdir()
    site_data = tmp_path / "cluster" / "site-a" / "data"
    with running_qsd(qroot, size, data_dir=site_data) as q:
        c = LocalCluster(tmp_path / "cluster", interval="3650d", min_copies=2, extra_volume_toml=(
            f'[volumes.source]\nkind = "qemu"\nqmp_socket = "{q.qmp}"\nnode = "disk"\nnbd_socket = "{q.nbd}"\n'
            'post_snapshot = [' + ", ".join(f"'{a}'" for a in hook) + "]\n"))
        vpath = c.sites["site-a"].volume_path(VOL)
        vpath.unlink(missing_ok=True)
        vpath.symlink_to(q.image)

        def restore(site: str, seq: int) -> bytes:
            target = tmp_path / f"r-{site}-{seq}.img"
            c.api(site, "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target), "seq": seq})
            data = target.read_bytes()
            target.unlink()
            return data

        try:
            guest_write(q, list(range(0, size // BS, 3)), rng)
            c.start_all()
            c.wait_ready(60)
            first = snapshot(c, "site-a")
            assert first["committed"] and first["source"]["mode"] == "full", first
            guest_write(q, [3, 100, 200], rng)
            rep = snapshot(c, "site-a")
            assert rep["committed"] and rep["source"]["mode"] == "tracked" and rep["changed_blocks"] == 3, rep
            assert rep["source"]["read_blocks"] == 3
            truth = q.disk_bytes()
            assert restore("site-a", rep["seq"]) == truth
            c.wait_for("site-b holds the snapshot", lambda: c.status("site-b")["volumes"][VOL]["newest_committed"]
                       == rep["seq"], 30)
            assert restore("site-b", rep["seq"]) == truth

            flag.touch()
            guest_write(q, [7, 8], rng)
            try:
                snapshot(c, "site-a")
            except Exception:  # noqa: BLE001 — the site died while answering
                pass
            c.sites["site-a"].proc.wait(30)
            guest_write(q, [9], rng)
            c.start("site-a")
            c.wait_ready(60)
            rep = c.wait_for("a snapshot after the restart", lambda: snapshot(c, "site-a"), 60, 1.0)
            assert rep["committed"] and rep["source"]["mode"] == "rescan", rep
            st = c.status("site-a")["volumes"][VOL]["source"]
            assert st["state"] == "tracking" and st["lost_total"]["unclean_restart"] == 1, st
            assert rep["changed_blocks"] == 3  # 7, 8 (the dead cycle's) and 9
            assert restore("site-a", rep["seq"]) == q.disk_bytes()
            guest_write(q, [12], rng)
            rep = snapshot(c, "site-a")
            assert rep["source"]["mode"] == "tracked" and rep["changed_blocks"] == 1, rep
            truth = q.disk_bytes()
            c.wait_for("site-c holds the snapshot", lambda: c.status("site-c")["volumes"][VOL]["newest_committed"]
                       == rep["seq"], 30)
            assert restore("site-c", rep["seq"]) == truth
            assert c.status("site-b")["volumes"][VOL]["source"]["state"] == "idle"  # replicas do not track
        finally:
            c.stop_all()


def test_raw_disk_through_a_qcow2_sidecar(tmp_path: Path, store: ChunkStore) -> None:
    """A raw disk keeps its bytes (the sidecar recipe does not zero it), stays the guest's disk
    byte for byte (``data_file_raw``), and is tracked through the sidecar's bitmap."""
    rng = random.Random(21)
    raw = tmp_path / "ehr.raw"
    content = rng.randbytes(SIZE // 2) + bytes(SIZE // 4) + b"x" * (SIZE // 4)
    raw.write_bytes(content)
    with running_qsd(tmp_path, raw=raw) as q:
        assert q.disk_bytes() == content
        d = Driver(q, store)
        d.cycle()
        for _ in range(3):
            random_writes(q, rng, 8)
            parent = d.parent
            snap = d.cycle()
            assert snap.mode == "tracked"
            assert same_blocks(snap.result.manifest, d.truth(snap, parent))
        assert raw.read_bytes() == q.disk_bytes()


def test_damaged_record_rescans_once(tmp_path: Path, store: ChunkStore) -> None:
    rng = random.Random(13)
    with running_qsd(tmp_path) as q:
        d = Driver(q, store)
        d.cycle()
        (tmp_path / "data" / "qemu-source" / "ehr.state.json").write_text('{"v": 1, "volume": "ehr", "gen": "x"}')
        d.source = make_source(volume_cfg(q), tmp_path / "data")
        random_writes(q, rng, 4)
        parent = d.parent
        snap = d.cycle()
        assert snap.mode == "rescan" and d.source.status()["lost_total"]["state_damaged"] == 1
        assert same_blocks(snap.result.manifest, d.truth(snap, parent))
        random_writes(q, rng, 4)
        assert d.cycle().mode == "tracked"


def test_qsd_killed_with_the_view_mounted(tmp_path: Path, store: ChunkStore) -> None:
    """QSD dies while its FUSE view is mounted (a dead mount is left): the cycle's end fails and
    says so, the next cycle clears the dead mount and rescans."""
    rng = random.Random(17)
    with running_qsd(tmp_path) as q:
        d = Driver(q, store)
        d.cycle()
        random_writes(q, rng, 5)
        d.seq += 1
        snap = asyncio.run(d.source.snapshot(volume="ehr", seq=d.seq, epoch=1, parent=d.parent, store=store,
                                             now_ns=NOW_NS + d.seq))
        assert view_mounted(tmp_path)
        q.stop(signal.SIGKILL)
        asyncio.run(d.source.abandoned(snap))  # never raises; QSD is gone
        q.start()
        random_writes(q, rng, 5)
        parent = d.parent
        snap = d.cycle()
        assert snap.mode == "rescan", snap.info
        assert same_blocks(snap.result.manifest, d.truth(snap, parent))
        assert not view_mounted(tmp_path)


def test_replicad_starts_the_nbd_server_when_qsd_runs_none(tmp_path: Path, store: ChunkStore) -> None:
    """A QSD with no NBD server (the guest writes through a FUSE export here): the source starts
    one on its own socket in the data dir and tracks."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "disk.qcow2"), str(SIZE)], check=True,
                   timeout=60)
    guest = tmp_path / "guest.img"
    guest.touch()
    qmp = tmp_path / "qmp.sock"
    log = open(tmp_path / "qsd.log", "ab")
    proc = subprocess.Popen(
        ["qemu-storage-daemon",
         "--blockdev", f"driver=file,node-name=disk-file,filename={tmp_path / 'disk.qcow2'}",
         "--blockdev", "driver=qcow2,node-name=disk,file=disk-file",
         "--export", f"type=fuse,id=guest,node-name=disk,mountpoint={guest},writable=on",
         "--chardev", f"socket,path={qmp},server=on,wait=off,id=qmp0", "--monitor", "chardev=qmp0"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    try:
        deadline = time.monotonic() + 30
        while not (qmp.exists() and guest.stat().st_size == SIZE):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "qsd.log").read_text()
            time.sleep(0.02)
        cfg = VolumeConfig.model_validate({"name": "ehr", "path": str(tmp_path / "disk.qcow2"),
                                           "initial_primary": "site-a", "block_size": BS,
                                           "source": {"kind": "qemu", "qmp_socket": str(qmp), "node": "disk"}})
        src = make_source(cfg, tmp_path / "data")
        first = asyncio.run(src.snapshot(volume="ehr", seq=1, epoch=1, parent=None, store=store, now_ns=NOW_NS))
        asyncio.run(src.committed(first))
        fd = os.open(guest, os.O_WRONLY)
        try:
            for b in (5, 700):
                os.pwrite(fd, rng_block(b), b * BS)
            os.fsync(fd)
        finally:
            os.close(fd)
        snap = asyncio.run(src.snapshot(volume="ehr", seq=2, epoch=1, parent=first.result.manifest, store=store,
                                        now_ns=NOW_NS + 1))
        asyncio.run(src.committed(snap))
        assert snap.mode == "tracked" and sorted(snap.result.changed_blocks) == [5, 700]
        assert snap.info["read_blocks"] == 2
        assert list((tmp_path / "data" / "qemu-source").glob("*.nbd"))  # the server replicad started
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        for mnt in (guest, tmp_path / "data" / "qemu-source" / "ehr.view"):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30, check=False)


def rng_block(b: int) -> bytes:
    return (f"block {b} rewritten\n" * (BS // 8))[:BS].encode()


def test_verifier_repairs_a_bitmap_that_missed_writes(tmp_path: Path, store: ChunkStore, caplog) -> None:
    """A record that lies (the recording bitmap is said to track from the first snapshot while it
    tracks from a later one): the bitmap misses the writes in between, the verifier's full scan
    of the same view sees them and its manifest is shipped."""
    import json

    rng = random.Random(19)
    with running_qsd(tmp_path) as q:
        d = Driver(q, store, verify_every=1)
        first = d.cycle()
        guest_write(q, [10, 11, 12], rng)
        assert d.cycle().mode == "verified"
        state = tmp_path / "data" / "qemu-source" / "ehr.state.json"
        rec = json.loads(state.read_text())
        rec["root"] = first.result.manifest.root.hex()
        state.write_text(json.dumps(rec))
        d.source = make_source(volume_cfg(q, verify_every=1), tmp_path / "data")
        d.parent = first.result.manifest
        guest_write(q, [20], rng)
        with caplog.at_level("ERROR", logger="replicad.sources.reflink"):
            snap = d.cycle()
        assert snap.mode == "repaired" and d.source.status()["verify"]["mismatches"] == 1
        assert snap.info["mismatched_blocks"] == 3
        assert "qemu tracked manifest differs from a full scan" in caplog.text
        assert same_blocks(snap.result.manifest, d.truth(snap, first.result.manifest))


def test_dirty_ranges_across_block_status_requests(tmp_path: Path) -> None:
    """A 9 GiB sparse disk is read in three ``block_status`` requests of up to
    BLOCK_STATUS_CHUNK (4 GiB - 64 KiB, the largest 32-bit length): dirty clusters at the first
    and last block, a run across the first border (one range, not two), and a 4 KiB write
    (its whole 64 KiB cluster) come back exactly."""
    from replicad.sources.qemu import BLOCK_STATUS_CHUNK, _Qmp, dirty_ranges

    size = 9 * 2**30
    chunk = BLOCK_STATUS_CHUNK
    assert chunk % BS == 0 and chunk < 2**32 and 2 * chunk < size
    with running_qsd(tmp_path, size) as q:
        async def bitmap(cmd: str, **extra: object) -> None:
            c = _Qmp(q.qmp)
            await c.connect()
            try:
                await c.run(cmd, {"node": "disk", "name": "t", **extra})
            finally:
                await c.close()

        asyncio.run(bitmap("block-dirty-bitmap-add", persistent=False))
        h = q.guest()
        try:
            for off, length in ((0, BS), (chunk - BS, 2 * BS), (2 * chunk + 5 * BS + 4096, 4096), (size - BS, BS)):
                h.pwrite(b"\x5a" * length, off)
            h.flush()
        finally:
            h.shutdown()
        asyncio.run(bitmap("block-dirty-bitmap-disable"))

        async def export() -> None:
            c = _Qmp(q.qmp)
            await c.connect()
            try:
                await c.run("block-export-add", {"type": "nbd", "id": "ro", "node-name": "disk", "name": "ro",
                                                 "writable": False, "bitmaps": ["t"]})
            finally:
                await c.close()

        asyncio.run(export())
        assert dirty_ranges(q.nbd, "ro", "t") == [(0, BS), (chunk - BS, 2 * BS), (2 * chunk + 5 * BS, BS),
                                                   (size - BS, BS)]
