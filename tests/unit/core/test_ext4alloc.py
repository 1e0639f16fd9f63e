"""The ext2/3/4 allocation reader and the wipe measure on discarding volumes (issue 14).

Real ext4 images (``mkfs.ext4`` on a file), changed through a real loop mount (root) and
``fstrim`` (the kernel punches holes in the image where the file system's free blocks are: they
read as zeros), snapshotted into a real chunk store by the file source and judged by the daemon's
own :meth:`Detection._signals` and :func:`anomaly.judge_relative`. Every mount and loop device is
undone by path in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import struct
import subprocess
import time
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from replicad.core import anomaly, ext4alloc
from replicad.site.detection import Detection
from replicad.sources.file import take_snapshot
from replicad.storage.chunkstore import ChunkStore

ROOTLESS = os.geteuid() != 0 or shutil.which("losetup") is None or shutil.which("fstrim") is None
needs_root = pytest.mark.skipif(ROOTLESS, reason="loop mounts and fstrim need root")
pytestmark = pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs")
WORDS = ("patient", "ward", "dose", "blood", "pressure", "admission", "discharge", "the", "and", "nurse", "letter")


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


def _mkfs(img: Path, size_mib: int, block_size: int) -> None:
    with open(img, "wb") as f:
        f.truncate(size_mib * 2**20)
    _run(["mkfs.ext4", "-q", "-F", "-b", str(block_size), "-E", "lazy_itable_init=0,lazy_journal_init=0", str(img)])


@contextlib.contextmanager
def _mounted(img: Path, mnt: Path) -> Iterator[Path]:
    mnt.mkdir(exist_ok=True)
    dev = _run(["losetup", "--find", "--show", str(img)]).strip()
    try:
        _run(["mount", dev, str(mnt)])
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False, timeout=60, capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False, timeout=60, capture_output=True)


def _text(r: random.Random, size: int) -> bytes:
    out = " ".join(r.choice(WORDS) + str(r.randint(0, 99)) for _ in range(size // 5)).encode()
    return out[:size]


def _image_reader(img: Path):
    f = open(img, "rb")  # noqa: SIM115 - closed by the caller's ExitStack

    def read(offset: int, length: int) -> bytes:
        f.seek(offset)
        return f.read(length)
    return f, read


def _extents(filefrag: str) -> list[tuple[int, int]]:
    """``(first block, count)`` of each extent in ``filefrag -e`` output."""
    out = []
    for line in filefrag.splitlines():
        parts = line.replace("..", " ").replace(":", " ").split()
        if len(parts) > 5 and parts[0].isdigit():
            out.append((int(parts[3]), int(parts[4]) - int(parts[3]) + 1))
    return out


def _fsck_used(img: Path) -> int:
    out = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True, timeout=120).stdout
    line = [x for x in out.splitlines() if " blocks" in x and "files" in x][-1]
    return int(line.rsplit(",", 1)[1].split("/")[0])


@needs_root
@pytest.mark.parametrize("block_size", [1024, 4096])
def test_allocation_matches_e2fsck_and_files_are_referenced(tmp_path: Path, block_size: int) -> None:
    """The bitmaps read as e2fsck counts them (BLOCK_UNINIT groups' metadata included); every block
    ``filefrag`` places a file at is referenced; a deleted file's blocks are neither, and the
    files' data shrinks by its size."""
    img, mnt = tmp_path / "a.img", tmp_path / "mnt"
    _mkfs(img, 64, block_size)
    r = random.Random(1)
    with _mounted(img, mnt):
        for i in range(12):
            (mnt / f"f{i}.txt").write_bytes(_text(r, 600_000))
        with open(mnt / "fragmented", "wb") as f:  # many extents: a tree deeper than the inode's four
            for i in range(300):
                f.write(r.randbytes(block_size))
                f.flush()
                os.fsync(f.fileno())
                with open(mnt / f"gap{i}", "wb") as gap:
                    gap.write(b"x" * block_size)
                    gap.flush()
                    os.fsync(gap.fileno())
        os.sync()
        where = {p: _run(["filefrag", "-b" + str(block_size), "-e", str(mnt / p)]) for p in ("f3.txt", "fragmented")}
    assert "extents found" in where["fragmented"] and int(where["fragmented"].split()[-3]) > 4
    f, read = _image_reader(img)
    with f:
        a = ext4alloc.read_allocation(read, img.stat().st_size)
    assert a is not None and a.block_size == block_size
    assert int(a.in_use.sum()) == _fsck_used(img)
    assert not (a.referenced.astype(bool) & ~a.in_use.astype(bool)).any()  # referenced implies in use
    for name, text in where.items():
        for start, n in _extents(text):
            assert a.referenced[start:start + n].all(), (name, start, n)
    size_blocks = (600_000 + block_size - 1) // block_size
    with _mounted(img, mnt):
        (mnt / "f3.txt").unlink()
    f, read = _image_reader(img)
    with f:
        b = ext4alloc.read_allocation(read, img.stat().st_size)
    assert b is not None and a.file_blocks - b.file_blocks == size_blocks
    start, n = _extents(where["f3.txt"])[0]
    assert not b.referenced[start:start + n].any() and not b.in_use[start:start + n].any()


def test_what_is_not_ext4_or_malformed_gives_none(tmp_path: Path) -> None:
    """No superblock, random bytes, a superblock with hostile fields, an extent tree that points at
    itself: ``None`` or a bounded answer, never an exception or an unbounded walk."""
    r = random.Random(3)
    blobs = [bytes(1 << 20), r.randbytes(1 << 20)]
    img = tmp_path / "v.img"
    _mkfs(img, 8, 1024)
    good = img.read_bytes()
    for off, fmt, value in ((1024 + 0x4, "<I", 0xFFFFFFFF), (1024 + 0x18, "<I", 40), (1024 + 0x20, "<I", 7),
                            (1024 + 0x28, "<I", 0), (1024 + 0x58, "<H", 100), (1024 + 0x60, "<I", 0x10)):
        bad = bytearray(good)
        struct.pack_into(fmt, bad, off, value)
        blobs.append(bytes(bad))
    for blob in blobs:
        assert ext4alloc.read_allocation(lambda o, n, b=blob: b[o:o + n], len(blob)) is None
    for k in range(40):  # random damage anywhere in the metadata: never raises
        bad = bytearray(good)
        for _ in range(64):
            bad[r.randrange(0, 600 * 1024)] = r.randrange(256)
        ext4alloc.read_allocation(lambda o, n, b=bytes(bad): b[o:o + n].ljust(n, b"\0"), len(bad))
    # an index node pointing at itself: the depth bound ends it
    walker = ext4alloc._Walker(lambda o, n: node, 1024, 8192, np.zeros(8192, dtype=np.uint8))
    node = struct.pack("<HHHH", 0xF30A, 1, 4, 3) + struct.pack("<IIHH", 0, 5, 0, 0) + bytes(1024 - 24)
    assert walker.node(node, ext4alloc.TREE_DEPTH_MAX + 1) is False


class _Vol:
    """A 96 MiB ext4 volume of structured files, snapshotted and judged as a site does."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.img, self.mnt = tmp, tmp / "vol.img", tmp / "mnt"
        self.store = ChunkStore(tmp / "store")
        cluster = types.SimpleNamespace(site_id="t")
        self.det = Detection(cluster, self.store, None, tmp, lambda v: {}, None)  # type: ignore[arg-type]
        _mkfs(self.img, 96, 4096)
        r = random.Random(5)
        with _mounted(self.img, self.mnt) as m:
            (m / "db").mkdir()
            for i in range(40):
                (m / "db" / f"rel{i}").write_bytes(_text(r, 1_000_000))
        self.seq = 1
        self.base = self.snapshot(None)

    def snapshot(self, parent):
        res = asyncio.run(take_snapshot(self.img, volume="v", seq=self.seq, epoch=1, parent=parent,
                                        store=self.store, now_ns=time.time_ns()))
        self.seq += 1
        return res.manifest

    def judge(self):
        m = self.snapshot(self.base)
        sig = self.det._signals(m, self.base, None)
        return sig, anomaly.judge_relative(self.seq, sig, [], [], dict(anomaly.POLICY_DEFAULTS))


@needs_root
def test_moved_and_trimmed_is_clean_wipers_stay_suspect(tmp_path: Path) -> None:
    """VACUUM FULL's shape (every relation rewritten as a new file, the old unlinked, then
    ``fstrim``): most of the data "became zeros" and used to pass ``wipe_max``; now it is
    discarded and the files' data did not shrink: clean. Wipers on the same volume stay suspect:
    files zeroed in place (trimmed or not: still referenced), every file deleted and trimmed (the
    files' data shrank by as much), and live files zeroed with their blocks marked free in a forged
    bitmap (still referenced by their inodes)."""
    vol = _Vol(tmp_path)
    base_img = tmp_path / "base.img"
    subprocess.run(["cp", "--sparse=always", str(vol.img), str(base_img)], check=True, timeout=60)

    def fresh() -> None:
        subprocess.run(["cp", "--sparse=always", str(base_img), str(vol.img)], check=True, timeout=60)

    with _mounted(vol.img, vol.mnt) as m:  # benign: move every relation (new files first), trim
        old = sorted((m / "db").iterdir())
        for p in old:
            shutil.copyfile(p, p.with_name(p.name + ".new"))
        os.sync()
        for p in old:
            p.unlink()
            os.rename(p.with_name(p.name + ".new"), p)
        os.sync()
        _run(["fstrim", str(m)])
    sig, v = vol.judge()
    assert sig.discarded / sig.data_blocks > 0.5 and sig.files_lost == 0, sig.summary()
    assert sig.destroyed < 0.05 and v.verdict == "clean", (v.reasons, sig.summary())
    # the same zeros without the file-system maps (what was counted before): a false alarm
    assert (sig.wiped + sig.discarded) / sig.data_blocks > anomaly.POLICY_DEFAULTS["wipe_max"]

    for trim in (False, True):  # wiper: every file zeroed in place
        fresh()
        with _mounted(vol.img, vol.mnt) as m:
            for p in (m / "db").iterdir():
                with open(p, "r+b") as f:
                    f.write(bytes(p.stat().st_size))
            os.sync()
            if trim:
                _run(["fstrim", str(m)])
        sig, v = vol.judge()
        assert v.verdict == "suspect" and sig.discarded == 0, (trim, sig.summary())
        assert any("became zeros" in x for x in v.reasons)

    fresh()  # wiper: every file deleted, then fstrim
    with _mounted(vol.img, vol.mnt) as m:
        for p in (m / "db").iterdir():
            p.unlink()
        os.sync()
        _run(["fstrim", str(m)])
    sig, v = vol.judge()
    assert sig.discarded / sig.data_blocks > 0.5 and sig.files_lost >= 0.95 * sig.discarded, sig.summary()
    assert v.verdict == "suspect" and any("deleted and discarded" in x for x in v.reasons), v.reasons

    fresh()  # wiper: every file deleted, fstrim, then as many bytes written back as zeros and 1 in 64
    with _mounted(vol.img, vol.mnt) as m:
        sizes = [p.stat().st_size for p in (m / "db").iterdir()]
        for p in (m / "db").iterdir():
            p.unlink()
        os.sync()
        _run(["fstrim", str(m)])
        (m / "zeros").write_bytes(bytes(sum(sizes)))  # a file full of zeros holds no data
        sparse = bytearray(sum(sizes) // 2)
        sparse[::64] = b"x" * len(sparse[::64])  # 1 non-zero byte in 64: 1/8 of a block's data
        (m / "sparse").write_bytes(bytes(sparse))
        os.sync()
        _run(["fstrim", str(m)])
    sig, v = vol.judge()
    assert sig.files_lost >= 0.8 * sig.discarded and v.verdict == "suspect", sig.summary()

    fresh()  # wiper forging the bitmap: files zeroed, their blocks marked free, then fstrim
    with _mounted(vol.img, vol.mnt) as m:
        where = {p.name: _run(["filefrag", "-b4096", "-e", str(p)]) for p in (m / "db").iterdir()}
        for p in (m / "db").iterdir():
            with open(p, "r+b") as f:
                f.write(bytes(p.stat().st_size))
        os.sync()
    ranges = [e for text in where.values() for e in _extents(text)]
    script = tmp_path / "freeb"
    script.write_text("".join(f"freeb {s} {n}\n" for s, n in ranges))
    _run(["debugfs", "-w", "-f", str(script), str(vol.img)])
    f, read = _image_reader(vol.img)
    with f:
        forged = ext4alloc.read_allocation(read, vol.img.stat().st_size)
    assert forged is not None and not forged.in_use[ranges[0][0]] and forged.referenced[ranges[0][0]]
    sig, v = vol.judge()
    assert v.verdict == "suspect" and sig.discarded == 0 and sig.wiped / sig.data_blocks > 0.3, sig.summary()


def test_the_wipe_measure_counts_discards_only_as_far_as_the_files_data_shrank() -> None:
    """``destroyed = (wiped + min(discarded, files_lost)) / data_blocks`` against ``wipe_max``:
    zeroed blocks still used count in full, discarded ones as far as files were deleted."""
    policy = dict(anomaly.POLICY_DEFAULTS)

    def verdict(**counts):
        sig = anomaly.SnapshotSignals(data_blocks=1000, **counts)
        return sig.destroyed, anomaly.judge_relative(2, sig, [], [], policy)

    moved = verdict(discarded=800, files_lost=0.0)  # VACUUM FULL + fstrim
    assert moved[0] == 0 and moved[1].verdict == "clean"
    deleted = verdict(discarded=800, files_lost=790.0)  # every file deleted + fstrim
    assert deleted[0] == 0.79 and deleted[1].verdict == "suspect"
    assert any("deleted and discarded" in r for r in deleted[1].reasons)
    zeroed = verdict(wiped=400, discarded=0)  # files zeroed in place
    assert zeroed[0] == 0.4 and zeroed[1].verdict == "suspect"
    assert not any("deleted" in r for r in zeroed[1].reasons)
    some = verdict(wiped=100, discarded=700, files_lost=150.0)  # a third deleted, the rest moved
    assert some[0] == 0.25 and some[1].verdict == "clean"
    summary = anomaly.SnapshotSignals(data_blocks=10, discarded=3, files_lost=1.5).summary()
    assert summary["discarded"] == 3 and summary["files_lost"] == 1.5


def test_data_weight() -> None:
    """A block's data: its share of non-zero bytes times 8, at most 1; a fill (one short period
    repeated, :func:`replicad.core.anomaly.fill_period`) holds none, as zeros."""
    bs = 1024
    r = random.Random(0)

    def sparse(every: int) -> bytes:  # one non-zero byte every ``every``, no period
        return b"".join(bytes([r.randrange(1, 256)]) + bytes(every - 1) for _ in range(bs // every))

    blocks = bytes(bs) + bytes(r.randrange(1, 256) for _ in range(bs)) + sparse(16) + sparse(8)
    assert ext4alloc.data_weight(blocks, bs).tolist() == [0.0, 1.0, 0.5, 1.0]
    fills = b"x" * bs + (b"x" + bytes(15)) * (bs // 16) + (b"x" + bytes(7)) * (bs // 8)
    assert ext4alloc.data_weight(fills, bs).tolist() == [0.0, 0.0, 0.0]


def test_zeros_on_a_volume_without_ext4_still_count_as_wiped(tmp_path: Path) -> None:
    """A volume the reader does not understand (no superblock: raw data) excuses nothing: its
    zeroed blocks are wiped, as before."""
    store = ChunkStore(tmp_path / "store")
    cluster = types.SimpleNamespace(site_id="t")
    det = Detection(cluster, store, None, tmp_path, lambda v: {}, None)  # type: ignore[arg-type]
    img = tmp_path / "raw.img"
    r = random.Random(9)
    img.write_bytes(b"".join(_text(r, 65536) for _ in range(64)))
    snap = lambda seq, parent: asyncio.run(take_snapshot(  # noqa: E731
        img, volume="v", seq=seq, epoch=1, parent=parent, store=store, now_ns=time.time_ns())).manifest
    base = snap(1, None)
    with open(img, "r+b") as f:
        f.write(bytes(40 * 65536))
    m = snap(2, base)
    sig = det._signals(m, base, None)
    assert sig.wiped == 40 and sig.discarded == 0, sig.summary()
    assert anomaly.judge_relative(2, sig, [], [], dict(anomaly.POLICY_DEFAULTS)).verdict == "suspect"


def test_unused_is_only_free_space_inside_the_file_system() -> None:
    """A range reaching past the file system's end is never free space (data after a smaller file
    system, or a superblock forged smaller, is not excused); inside, free and unreferenced only."""
    n = 64
    in_use, referenced = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    in_use[3], referenced[5] = 1, 1
    a = ext4alloc.Ext4Allocation(4096, n, in_use, referenced, referenced.copy())
    assert a.unused(16 * 4096, 16 * 4096) and not a.unused(0, 16 * 4096)
    assert not a.unused(48 * 4096, 32 * 4096) and not a.unused(n * 4096, 4096)
    assert a.file_blocks == 1 and a.referenced_in(0, 8 * 4096) == 1


def _forge_uninit(img: Path) -> None:
    """``bg_flags |= INODE_UNINIT | BLOCK_UNINIT`` in every group descriptor (4 KiB blocks: the
    table at byte 4096): no inode read, every block free, the files' data left in place."""
    with open(img, "r+b") as f:
        f.seek(1024)
        sb = f.read(1024)
        blocks, per = struct.unpack_from("<I", sb, 4)[0], struct.unpack_from("<I", sb, 0x20)[0]
        incompat, ds = struct.unpack_from("<I", sb, 0x60)[0], struct.unpack_from("<H", sb, 0xFE)[0]
        desc = ds if incompat & 0x80 and ds >= 64 else 32
        for k in range((blocks + per - 1) // per):
            f.seek(4096 + k * desc + 0x12)
            flags = struct.unpack("<H", f.read(2))[0]
            f.seek(4096 + k * desc + 0x12)
            f.write(struct.pack("<H", flags | 0x3))


@pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs debugfs")
@pytest.mark.parametrize("how", ["delete", "forge"])
def test_files_erased_in_one_snapshot_and_zeroed_in_the_next_count_as_destroyed(tmp_path: Path, how: str) -> None:
    """An erase in two snapshots: every file deleted (``debugfs rm``: metadata only) or every group
    descriptor forged free (``forge``), nothing zeroed (#2: clean), then the freed blocks zeroed
    (#3, as ``fstrim`` would). Against the parent #2 the files are already gone and the zeros
    pass as discarded free space; against the wipe window's anchor #1 they are lost files: #3 is
    destroyed past ``wipe_max``. An anchor not held here excuses nothing."""
    store = ChunkStore(tmp_path / "store")
    cluster = types.SimpleNamespace(site_id="t")
    det = Detection(cluster, store, None, tmp_path, lambda v: {}, None)  # type: ignore[arg-type]
    src, img = tmp_path / "src", tmp_path / "a.img"
    src.mkdir()
    r = random.Random(5)
    for i in range(40):  # 10 MiB of records in 40 files
        (src / f"rec{i}.txt").write_bytes(_text(r, 256 * 1024))
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    _run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(src), str(img)])
    f, read = _image_reader(img)
    with f:
        files = np.flatnonzero(ext4alloc.read_allocation(read, 16 << 20).written).tolist()
    assert len(files) >= 2500
    snap = lambda seq, parent: asyncio.run(take_snapshot(  # noqa: E731
        img, volume="v", seq=seq, epoch=1, parent=parent, store=store, now_ns=time.time_ns())).manifest
    m1 = snap(1, None)
    if how == "delete":
        (tmp_path / "rm.cmds").write_text("".join(f"rm /rec{i}.txt\n" for i in range(40)))
        _run(["debugfs", "-w", "-f", str(tmp_path / "rm.cmds"), str(img)])
    else:
        _forge_uninit(img)
    m2 = snap(2, m1)
    policy = dict(anomaly.POLICY_DEFAULTS)
    sig2 = det._signals(m2, m1, None)
    assert sig2.wiped == 0 and sig2.destroyed == 0, sig2.summary()  # nothing zeroed: nothing to see
    with open(img, "r+b") as f:
        for b in files:
            f.seek(b * 4096)
            f.write(bytes(4096))
    m3 = snap(3, m2)
    parent = det._signals(m3, m2, None)  # measured against the parent: the hole
    assert parent.discarded > 100 and parent.destroyed < float(policy["wipe_max"]), parent.summary()
    for anchor in (lambda: m1, lambda: None):  # the anchor held; not held: nothing excused
        sig = det._signals(m3, m2, None, anchor=anchor)
        assert sig.discarded == parent.discarded and sig.files_lost >= 0.95 * sig.discarded, sig.summary()
        # measured from the anchor's file system: the wipe window charges it once (Wipes.charge);
        # the anchor not held: every discarded block counted as lost, charged every time
        assert sig.lost_since_anchor == (anchor() is not None) and parent.lost_since_anchor, sig.summary()
        assert sig.destroyed > 0.9 > float(policy["wipe_max"]), sig.summary()
        v = anomaly.judge_relative(3, sig, [], [], policy)
        assert v.verdict == "suspect" and any("deleted and discarded" in x for x in v.reasons), v.reasons


def test_forged_metadata_is_given_up_within_the_budget_and_excuses_nothing(tmp_path: Path) -> None:
    """A hostile primary's inode tables (every inode a live file of 4 extents, the most the format
    allows per group) or extent trees (leaves of 340 extents) cost at most the budget of a real
    file system of that size (:func:`ext4alloc.parse_budget`): the reader gives up (None, its report
    says so) after walking part of them; the judge then excuses nothing, logs it and counts it."""
    from tests.bench.detection_forged import forge, mkfs

    img = tmp_path / "v.img"
    mkfs(img, 64)
    good = img.read_bytes()
    report: dict = {}
    alloc = ext4alloc.read_allocation(lambda o, n: good[o:o + n], len(good), report)
    assert alloc is not None and not report["exceeded"] and report["limit"] == (1 << 16) + 3 * 16384, report
    assert report["spent"] < 100, report
    for kind, n in (("inodes", 0), ("trees", 400)):
        img.write_bytes(good)
        made = forge(img, kind, n)
        bad = img.read_bytes()
        report = {}
        assert ext4alloc.read_allocation(lambda o, n, b=bad: b[o:o + n], len(bad), report) is None
        # past the budget by at most one slice of a table read as arrays (its inodes and their
        # inline extents), or one tree block's extents
        assert report["exceeded"] and report["spent"] <= report["limit"] + 5 * made["inodes"], (kind, report)
        assert kind == "inodes" or report["nodes"] < made["leaves"], (kind, made, report)
    # the judge: 48 blocks of text written into the free space, then zeroed on the forged image
    store = ChunkStore(tmp_path / "store")
    det = Detection(types.SimpleNamespace(site_id="t"), store, None, tmp_path, lambda v: {}, None)  # type: ignore[arg-type]
    r = random.Random(11)
    base_img = bytearray(good)
    for b in range(400, 448):
        base_img[b * 65536:(b + 1) * 65536] = _text(r, 65536)
    img.write_bytes(bytes(base_img))
    snap = lambda seq, parent: asyncio.run(take_snapshot(  # noqa: E731
        img, volume="v", seq=seq, epoch=1, parent=parent, store=store, now_ns=time.time_ns())).manifest
    base = snap(1, None)
    img.write_bytes(good)
    forge(img, "inodes")
    m = snap(2, base)
    sampling: dict = {}
    sig = det._signals(m, base, None, None, sampling)
    assert sig.wiped >= 48 and sig.discarded == 0, sig.summary()
    assert det.allocations_over_budget == 1 and sampling["allocation_over_budget"] == [2], sampling
