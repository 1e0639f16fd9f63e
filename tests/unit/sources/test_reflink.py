"""The reflink source on real loop-mounted XFS (reflink=1) and btrfs made by the tests: FICLONE,
FIEMAP (pagination included), the tracked manifest against a full scan of the same clone after
random write patterns, the tracking states and the verifier."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from pathlib import Path

import blake3
import pytest

from replicad.config import SourceConfig, VolumeConfig
from replicad.core.errors import CloneCrossDeviceError, ReflinkUnsupportedError
from replicad.core.manifest import ZERO_DIGEST, Manifest, iter_block_digests
from replicad.sources.base import SourceSnapshot
from replicad.sources.extents import (FIEMAP_EXTENT_UNWRITTEN, Extent, ExtentArrays, block_runs, changed_ranges,
                                      clone_file, differing_ranges, extent_arrays, extent_map)
from replicad.sources.file import take_snapshot
from replicad.sources.kinds import make_source
from replicad.sources.reflink import ReflinkSource
from replicad.sources.tracked import same_blocks
from replicad.storage.chunkstore import ChunkStore
from tests.loopfs import loop_fs

BS = 65536
NOW_NS = 1_800_000_000_000_000_000
KINDS = ("xfs", "btrfs")


@pytest.fixture(scope="module", params=KINDS)
def fs(request, tmp_path_factory):
    """One mounted file system of each kind for the module (made and removed here)."""
    with loop_fs(tmp_path_factory.mktemp(request.param), request.param) as mnt:
        yield request.param, mnt


@pytest.fixture
def vol(fs, tmp_path):
    """A fresh directory on the mounted file system, removed after the test."""
    kind, mnt = fs
    d = mnt / tmp_path.name
    d.mkdir()
    yield d
    for root, dirs, files in os.walk(d, topdown=False):
        for f in files:
            os.unlink(os.path.join(root, f))
        for x in dirs:
            os.rmdir(os.path.join(root, x))
    d.rmdir()


@pytest.fixture
def store(tmp_path):
    s = ChunkStore(tmp_path / "store")
    yield s
    s.close()


def text_block(rng: random.Random, n: int = BS) -> bytes:
    words = [b"patient", b"ward", b"note", b"stable", b"dose", b"mg", b"\n"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" " + str(rng.randrange(10**6)).encode() + b" "
    return bytes(out[:n])


def volume_cfg(image: Path, **source: object) -> VolumeConfig:
    return VolumeConfig.model_validate({"name": "ehr", "path": str(image), "initial_primary": "site-a",
                                        "block_size": BS, "source": {"kind": "reflink", **source}})


def write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def digests_of(data: bytes) -> list[bytes]:
    out = []
    for off in range(0, len(data), BS):
        block = data[off:off + BS]
        out.append(ZERO_DIGEST if not any(block) else blake3.blake3(block).digest())
    return out


class Driver:
    """Plays the replication cycle around a source: parent = the last committed manifest."""

    def __init__(self, source: ReflinkSource, store: ChunkStore) -> None:
        self.source = source
        self.store = store
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

    def clone_path(self, snap: SourceSnapshot) -> Path:
        return self.source.clone_dir / snap.token

    def full_scan(self, snap: SourceSnapshot, parent: Manifest | None) -> Manifest:
        """A full scan of the very clone ``snap`` was made from, into a separate store."""
        return asyncio.run(take_snapshot(self.clone_path(snap), volume="ehr", seq=snap.result.manifest.seq, epoch=1,
                                         parent=parent, store=self.store, now_ns=0)).manifest


# ---------------------------------------------------------------------------- pure parts

def test_differing_ranges_compares_by_physical_byte_not_by_extent():
    old = [Extent(0, 1000_000, 8192, 0), Extent(8192, 5000_000, 4096, 0)]
    # same bytes as one merged extent, then a split at 4096 (a shared/unshared border), then moved
    new = [Extent(0, 1000_000, 4096, 0), Extent(4096, 1004_096, 4096, 0), Extent(8192, 7000_000, 4096, 0)]
    assert differing_ranges(old, 12288, new, 12288) == [(8192, 4096)]
    # a hole in both is unchanged; a hole that became data and data that became a hole are changes
    assert differing_ranges([Extent(4096, 10, 4096, 0)], 16384, [Extent(8192, 20, 4096, 0)], 16384) == [(4096, 8192)]
    # same address, unwritten -> written: changed; growth past the old end: changed where mapped
    assert differing_ranges([Extent(0, 10, 4096, FIEMAP_EXTENT_UNWRITTEN)], 4096, [Extent(0, 10, 4096, 0)], 4096) \
        == [(0, 4096)]
    assert differing_ranges([Extent(0, 10, 4096, 0)], 4096, [Extent(0, 10, 8192, 0)], 8192) == [(4096, 4096)]
    assert block_runs([(100, 10), (BS - 1, 2), (5 * BS, 1)], BS, 4) == [(0, 2)]
    assert block_runs([(0, 1), (3 * BS, 3 * BS)], BS, 5) == [(0, 1), (3, 2)]


def _random_map(rng: random.Random, size: int, n: int) -> list[Extent]:
    """Sorted extents of 4 KiB multiples with holes, shared physical ranges, the flags that matter
    (unwritten, shared, delalloc: unsafe, last) and some reaching past ``size``."""
    out, pos = [], 0
    while pos < size + 3 * 4096 and len(out) < n:
        pos += rng.choice([0, 0, 4096, 8192 * rng.randrange(1, 4)])
        length = 4096 * rng.randrange(1, 6)
        out.append(Extent(pos, 10**6 + rng.randrange(50) * 4096, length, rng.choice([0, 0, 0, 0, 0x800, 0x2000, 0x4, 0x1])))
        pos += length
    return out


def test_changed_ranges_equals_differing_ranges():
    """The numpy comparison the source uses gives the per-piece reference's answer: 3,000 random
    pairs of maps (a copy with some extents moved, or an unrelated map, overlapping extents
    included, sizes grown and shrunk)."""
    rng = random.Random(3)
    for _ in range(3000):
        old_size, new_size = rng.randrange(0, 200_000), rng.randrange(0, 200_000)
        a = _random_map(rng, old_size, rng.randrange(0, 30))
        if rng.random() < 0.5:
            b = [Extent(e.logical, e.physical if rng.random() < 0.7 else e.physical + 4096, e.length, e.flags) for e in a]
            if rng.random() < 0.3:
                b = sorted(b + _random_map(rng, new_size, 5), key=lambda e: e.logical)  # may overlap
        else:
            b = _random_map(rng, new_size, rng.randrange(0, 30))
        want = differing_ranges(a, old_size, b, new_size)
        assert changed_ranges(ExtentArrays.of(a), old_size, ExtentArrays.of(b), new_size) == want, (a, b)
        assert ExtentArrays.of(a).extents() == a


# ---------------------------------------------------------------------------- ioctls on real file systems

def test_clone_and_fiemap_find_exactly_the_overwritten_ranges(fs, vol):
    kind, _ = fs
    img = vol / "img"
    rng = random.Random(1)
    img.write_bytes(b"".join(text_block(rng) for _ in range(64)))
    os.sync()
    clones = [vol / "c1", vol / "c2"]
    for i, c in enumerate(clones):
        if i == 1:
            write_at(img, 5 * BS + 4096, b"x" * 4096)
            write_at(img, 40 * BS, b"y" * 100)
        s, d = os.open(img, os.O_RDONLY), os.open(c, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            clone_file(s, d, src=str(img), dst=str(c))
        finally:
            os.close(s)
            os.close(d)
    assert clones[0].read_bytes() != clones[1].read_bytes()
    maps = []
    for c in clones:
        fd = os.open(c, os.O_RDONLY)
        try:
            maps.append(extent_map(fd, path=str(c)))
        finally:
            os.close(fd)
    ranges = differing_ranges(maps[0], 64 * BS, maps[1], 64 * BS)
    assert block_runs(ranges, BS, 64) == [(5, 1), (40, 1)], (kind, ranges)
    assert sum(n for _, n in ranges) <= 2 * BS  # a few fs blocks, not whole extents


def test_fiemap_pagination_reads_every_extent(fs, vol):
    img = vol / "frag"
    with open(img, "wb") as f:  # 300 separate 4 KiB extents (holes between them)
        for i in range(300):
            f.seek(i * 3 * 4096)
            f.write(b"z" * 4096)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(img, os.O_RDONLY)
    try:
        whole = extent_map(fd, path=str(img))
        paged = extent_map(fd, path=str(img), per_call=7)
        arrays = [extent_arrays(fd, path=str(img), per_call=n).extents() for n in (1, 7, 300, 16384)]
    finally:
        os.close(fd)
    assert len(whole) >= 300  # XFS may add unwritten (preallocated) extents between them
    assert paged == whole
    assert all(a == whole for a in arrays)  # the numpy records decode the same extents, paged or not
    data = [e for e in paged if not e.flags & FIEMAP_EXTENT_UNWRITTEN]
    covered = {off for e in data for off in range(e.logical, e.logical + e.length, 4096)}
    assert covered == {i * 3 * 4096 for i in range(300)}


def test_clone_on_a_file_system_without_reflink_is_a_typed_error(tmp_path):
    # the test's own tmp dir is on the machine's root file system (ext4/overlay: no FICLONE)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"q" * 8192)
    s, d = os.open(a, os.O_RDONLY), os.open(b, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            clone_file(s, d, src=str(a), dst=str(b))
        except ReflinkUnsupportedError as err:
            assert err.code in ("reflink_unsupported", "reflink_cross_device")
        else:
            pytest.skip("this machine's tmp dir supports reflink: nothing to refuse")
    finally:
        os.close(s)
        os.close(d)


def test_clone_dir_on_another_file_system_is_refused(fs, vol, tmp_path, store):
    img = vol / "img"
    img.write_bytes(text_block(random.Random(2)) * 4)
    src = make_source(volume_cfg(img, clone_dir=str(tmp_path / "elsewhere")), tmp_path)
    with pytest.raises(CloneCrossDeviceError) as exc:
        Driver(src, store).cycle()
    assert exc.value.code == "reflink_cross_device"
    assert src.status()["state"] == "lost" and src.status()["reason"] == "cross_device"
    assert not [p for p in (tmp_path / "elsewhere").iterdir() if p.suffix == ".clone"]


# ---------------------------------------------------------------------------- the tracked manifest is the truth

def random_writes(img: Path, rng: random.Random, size: int) -> None:
    """One random pattern: overwrites, small writes inside blocks, same-block rewrites, holes
    punched, zeros, preallocation (unwritten extents) and writes inside the size."""
    fd = os.open(img, os.O_RDWR)
    try:
        for _ in range(rng.randrange(1, 12)):
            op = rng.choice(["over", "small", "same", "punch", "zero", "falloc", "grow"])
            off = rng.randrange(0, size - BS)
            if op == "over":
                os.pwrite(fd, text_block(rng, rng.randrange(1, 3 * BS)), off)
            elif op == "small":
                os.pwrite(fd, os.urandom(rng.randrange(1, 512)), off)
            elif op == "same":
                b = rng.randrange(size // BS - 1) * BS
                for _ in range(3):
                    os.pwrite(fd, text_block(rng, 4096), b + 8192)
            elif op == "punch":
                _punch(fd, off // 4096 * 4096, rng.randrange(1, 4) * 4096 * 8)
            elif op == "zero":
                os.pwrite(fd, bytes(rng.randrange(1, 2 * BS)), off)
            elif op == "falloc":
                # unwritten extents in a hole past the data written so far
                _punch(fd, off // 4096 * 4096, 4 * 4096)
                os.posix_fallocate(fd, off // 4096 * 4096, 4 * 4096)
            else:
                os.pwrite(fd, text_block(rng, 100), size - 100)
        os.fsync(fd)
    finally:
        os.close(fd)


def _punch(fd: int, offset: int, length: int) -> None:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
    if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, ctypes.c_longlong(offset),
                      ctypes.c_longlong(length)) != 0:
        raise OSError(ctypes.get_errno(), "fallocate punch")


@pytest.mark.parametrize("seed", range(3))
def test_tracked_manifest_equals_full_scan_after_random_writes(fs, vol, store, tmp_path, seed):
    kind, _ = fs
    rng = random.Random(seed * 7919 + len(kind))
    img = vol / "img"
    size = 96 * BS + 1234  # a short last block
    with open(img, "wb") as f:
        f.truncate(size)
        for b in rng.sample(range(96), 60):
            f.seek(b * BS)
            f.write(text_block(rng))
    d = Driver(make_source(volume_cfg(img, verify_every=1000), tmp_path), store)
    first = d.cycle()
    assert first.mode == "full"
    tracked = 0
    for _ in range(12):
        random_writes(img, rng, size)
        parent = d.parent
        snap = d.cycle()
        assert snap.mode == "tracked", snap.info
        tracked += 1
        full = d.full_scan(snap, parent)
        m = snap.result.manifest
        assert same_blocks(m, full), (kind, seed, snap.info)
        assert {k: v for k, v in m.stats.items() if k != "new_chunks"} == \
            {k: v for k, v in full.stats.items() if k != "new_chunks"}
        assert list(iter_block_digests(m, store.get)) == digests_of(d.clone_path(snap).read_bytes())
        assert snap.info["read_blocks"] < m.n_blocks  # only what changed was read
    assert tracked == 12 and d.source.status()["state"] == "tracking"
    assert len([p for p in d.source.clone_dir.iterdir() if p.suffix == ".clone"]) == 1


def test_tracked_over_several_pages_takes_parent_pages_from_the_cache(fs, vol, store, tmp_path):
    """4 KiB blocks: a manifest page lists 2 MiB (512 entries), the image spans 3.5 pages. Writes, zeroed
    blocks and holes land in every page each cycle; the tracked manifest (its ``zero_blocks``
    stat corrected by the changed entries only) equals a full scan of the same clone, and from
    the first tracked cycle on every parent page comes from the source's page cache (no store
    read: the full scan leaves the pages it built there). After an abandoned cycle the parent's
    pages are read from the store again and the manifest is still right."""
    from replicad.core.manifest import DEFAULT_PAGE_ENTRIES as PAGE_ENTRIES

    kind, _ = fs
    rng = random.Random(len(kind))
    bs = 4096
    img = vol / "img"
    size = PAGE_ENTRIES * bs * 7 // 2
    with open(img, "wb") as f:
        f.truncate(size)
        for b in rng.sample(range(size // bs), 600):
            f.seek(b * bs)
            f.write(text_block(rng, bs))
    cfg = VolumeConfig.model_validate({"name": "ehr", "path": str(img), "initial_primary": "site-a",
                                       "block_size": bs, "source": {"kind": "reflink", "verify_every": 1000}})
    d = Driver(make_source(cfg, tmp_path), store)
    assert d.cycle().mode == "full"
    fd = os.open(img, os.O_RDWR)
    try:
        for k in range(6):
            for page in range(4):
                for _ in range(3):
                    b = page * PAGE_ENTRIES + rng.randrange(min(PAGE_ENTRIES, size // bs - page * PAGE_ENTRIES))
                    op = rng.choice(["text", "zero", "punch"])
                    if op == "text":
                        os.pwrite(fd, text_block(rng, bs), b * bs)
                    elif op == "zero":
                        os.pwrite(fd, bytes(bs), b * bs)
                    else:
                        _punch(fd, b * bs, bs)
            os.fsync(fd)
            parent = d.parent
            misses = d.source._pages.misses
            snap = d.cycle(commit=k != 3)
            assert snap.mode == "tracked", snap.info
            if k == 3:
                continue  # abandoned: its clone is gone
            m = snap.result.manifest
            full = d.full_scan(snap, parent)
            assert same_blocks(m, full) and m.n_blocks > 3 * PAGE_ENTRIES
            assert {k: v for k, v in m.stats.items() if k != "new_chunks"} == \
                {k: v for k, v in full.stats.items() if k != "new_chunks"}
            if k in (0, 1, 2, 5):  # the parent is the last manifest built (k=4 follows the abandoned k=3)
                assert d.source._pages.misses == misses, k
            elif k == 4:
                assert d.source._pages.misses > misses
    finally:
        os.close(fd)


def test_tracked_under_concurrent_writer_and_growth(fs, vol, store, tmp_path):
    """A writer keeps writing while the cycles clone: each clone is one instant, and the tracked
    manifest still equals a full scan of that clone; the image also grows between cycles."""
    img = vol / "img"
    rng = random.Random(5)
    img.write_bytes(b"".join(text_block(rng) for _ in range(64)))
    d = Driver(make_source(volume_cfg(img, verify_every=1000), tmp_path), store)
    d.cycle()
    stop = threading.Event()

    def writer() -> None:
        wr = random.Random(6)
        fd = os.open(img, os.O_WRONLY)
        try:
            n = 0
            while not stop.is_set() and n < 20000:
                b = wr.randrange(64)
                gen = f"gen {n:08d} ".encode()
                os.pwrite(fd, gen * (4096 // len(gen)), b * BS + wr.randrange(16) * 4096)
                n += 1
        finally:
            os.close(fd)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        for k in range(8):
            parent = d.parent
            snap = d.cycle()
            assert snap.mode == "tracked"
            assert same_blocks(snap.result.manifest, d.full_scan(snap, parent)), k
    finally:
        stop.set()
        t.join(60)
    with open(img, "ab") as f:  # growth: an append past the old end
        f.write(text_block(rng, BS + 77))
    parent = d.parent
    snap = d.cycle()
    assert snap.result.manifest.size_bytes == 65 * BS + 77
    assert same_blocks(snap.result.manifest, d.full_scan(snap, parent))


# ---------------------------------------------------------------------------- states and crash safety

def test_parent_clone_stays_until_commit_and_uncommitted_clone_is_dropped(fs, vol, store, tmp_path):
    img = vol / "img"
    rng = random.Random(3)
    img.write_bytes(b"".join(text_block(rng) for _ in range(16)))
    d = Driver(make_source(volume_cfg(img), tmp_path), store)
    first = d.cycle()
    write_at(img, 3 * BS, b"a" * BS)
    snap = d.cycle(commit=False)  # e.g. short of min_copies
    assert not d.clone_path(snap).exists() and d.clone_path(first).exists()
    write_at(img, 9 * BS, b"b" * BS)
    snap = asyncio.run(d.source.snapshot(volume="ehr", seq=3, epoch=1, parent=d.parent, store=store, now_ns=NOW_NS))
    assert snap.mode == "tracked" and sorted(snap.result.changed_blocks) == [3, 9]
    # between the clone and the commit both clones exist: the parent's is deleted only by the commit
    assert d.clone_path(first).exists() and d.clone_path(snap).exists()
    asyncio.run(d.source.committed(snap))
    assert not d.clone_path(first).exists() and d.clone_path(snap).exists()


def test_lost_states_then_rescan_then_tracking(fs, vol, store, tmp_path):
    img = vol / "img"
    rng = random.Random(4)
    img.write_bytes(b"".join(text_block(rng) for _ in range(16)))
    cfg = volume_cfg(img)
    d = Driver(make_source(cfg, tmp_path), store)
    snap = d.cycle()
    assert d.cycle().mode == "tracked"
    # 1. the parent clone deleted by hand
    for p in d.source.clone_dir.glob("*.clone"):
        p.unlink()
    write_at(img, BS, b"c" * 10)
    snap = d.cycle()
    assert snap.mode == "rescan" and d.source.lost_total["parent_clone_missing"] == 1
    assert d.source.status()["state"] == "tracking"
    assert d.cycle().mode == "tracked"
    # 2. an unclean restart: a new process finds the record of a cycle that never ended
    asyncio.run(d.source.snapshot(volume="ehr", seq=99, epoch=1, parent=d.parent, store=store, now_ns=NOW_NS))
    # (no committed/abandoned: the process "died" here)
    d.source = make_source(cfg, tmp_path)
    assert d.source.status()["state"] == "idle"
    snap = d.cycle()
    assert snap.mode == "rescan" and d.source.lost_total["unclean_restart"] == 1
    assert not list(d.source.clone_dir.glob("ehr.99-*.clone"))  # the dead cycle's clone was dropped
    assert d.cycle().mode == "tracked"
    # 3. the image replaced by another file at the same path
    data = img.read_bytes()
    img.unlink()
    img.write_bytes(data)
    snap = d.cycle()
    assert snap.mode == "rescan" and d.source.lost_total["image_replaced"] == 1
    assert d.cycle().mode == "tracked"
    # 4. a parent the source never cloned (a promotion's restored snapshot)
    d.parent = snap.result.manifest
    snap = d.cycle()
    assert snap.mode == "rescan" and d.source.lost_total["no_parent_clone"] == 1
    # 5. a damaged record
    d.source.state_path.write_text("{not json")
    d.source = make_source(cfg, tmp_path)
    snap = d.cycle()
    assert snap.mode == "rescan" and d.source.lost_total["state_damaged"] == 1
    assert d.cycle().mode == "tracked"
    st = d.source.status()
    assert st["kind"] == "reflink" and st["state"] == "tracking" and st["reason"] is None


def test_verifier_runs_on_schedule_and_repairs_a_mismatch(fs, vol, store, tmp_path, caplog):
    img = vol / "img"
    rng = random.Random(8)
    img.write_bytes(b"".join(text_block(rng) for _ in range(32)))
    d = Driver(make_source(volume_cfg(img, verify_every=3), tmp_path), store)
    first = d.cycle()
    modes = []
    for k in range(6):
        write_at(img, k * BS, text_block(rng, 4096))
        modes.append(d.cycle().mode)
    assert modes == ["tracked", "tracked", "verified", "tracked", "tracked", "verified"]
    assert d.source.status()["verify"]["runs"] == 2 and d.source.status()["verify"]["mismatches"] == 0
    # a record that lies: the kept clone is said to be the clone of the first snapshot, so the tracked
    # build starts from the wrong parent digests; the extent maps cannot see it, the verifier must
    d.cycle()
    d.cycle()
    rec = json.loads(d.source.state_path.read_text())
    (name,) = rec["clones"]
    rec["clones"] = {name: first.result.manifest.root.hex()}
    d.source.state_path.write_text(json.dumps(rec))
    d.source = make_source(volume_cfg(img, verify_every=3), tmp_path)
    d.parent = first.result.manifest
    write_at(img, 20 * BS, text_block(rng, 4096))
    with caplog.at_level("ERROR", logger="replicad.sources.reflink"):
        snap = d.cycle()
    assert snap.mode == "repaired" and d.source.status()["verify"]["mismatches"] == 1
    assert snap.info["mismatched_blocks"] == 6
    assert "differs from a full scan" in caplog.text
    assert list(iter_block_digests(snap.result.manifest, store.get)) == digests_of(img.read_bytes())


def test_verifier_at_least_daily(fs, vol, store, tmp_path):
    img = vol / "img"
    img.write_bytes(text_block(random.Random(9)) * 8)
    src = make_source(volume_cfg(img, verify_every=1000, verify_max_age="1d"), tmp_path)
    d = Driver(src, store)
    d.cycle()
    assert d.cycle().mode == "tracked"
    d.seq += 1
    late = NOW_NS + 2 + 86400 * 10**9
    snap = asyncio.run(src.snapshot(volume="ehr", seq=d.seq, epoch=1, parent=d.parent, store=store, now_ns=late))
    assert snap.mode == "verified"


def test_not_reflink_capable_scans_the_live_image_and_stays_lost(tmp_path, store):
    img = tmp_path / "img"  # the machine's root file system: no reflink
    img.write_bytes(text_block(random.Random(10)) * 8)
    src = make_source(volume_cfg(img), tmp_path)
    d = Driver(src, store)
    try:
        snap = d.cycle()
    except CloneCrossDeviceError:
        pytest.skip("unexpected: tmp dir and its subdir on different file systems")
    if snap.mode != "live":
        pytest.skip("this machine's tmp dir supports reflink: nothing to fall back from")
    assert src.status()["state"] == "lost" and src.status()["reason"] == "not_reflink_capable"
    assert list(iter_block_digests(snap.result.manifest, store.get)) == digests_of(img.read_bytes())
    assert d.cycle().mode == "live" and src.status()["state"] == "lost"


def test_file_kind_keeps_the_file_source(tmp_path, store):
    img = tmp_path / "img"
    img.write_bytes(text_block(random.Random(11)) * 4)
    cfg = VolumeConfig.model_validate({"name": "ehr", "path": str(img), "initial_primary": "site-a",
                                       "block_size": BS})
    src = make_source(cfg, tmp_path)
    assert src.kind == "file" and src.status() == {"kind": "file", "state": "untracked", "last_mode": None}
    snap = asyncio.run(src.snapshot(volume="ehr", seq=1, epoch=1, parent=None, store=store, now_ns=NOW_NS))
    assert snap.mode == "full" and (tmp_path / "fingerprints" / "ehr.fp").exists()
    assert SourceConfig().kind == "file"
