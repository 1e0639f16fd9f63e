"""Content that moved (a table rewritten into a new file, its old blocks reused) against content
encrypted where it lay (issue 14: the ``bytea`` + ``VACUUM FULL`` false alarm).

Pure tests of the near-copy windows and the coverage window's moved blocks, and real ext4 images
(``mkfs.ext4`` on a file, changed through a real loop mount as root, snapshotted into a real chunk
store, judged by the daemon's own :meth:`Detection._signals` and :func:`anomaly.judge_relative`):
a file system filled so that a new file must take the blocks a deleted one freed.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import types
from pathlib import Path

import numpy as np
import pytest

from replicad.core import anomaly
from replicad.core.manifest import changed_rows
from replicad.site.detection import Detection
from replicad.sources.file import take_snapshot
from replicad.storage.chunkstore import ChunkStore
from tests.unit.core.test_ext4alloc import _mkfs, _mounted, needs_root

WORDS = (b"patient", b"ward", b"dose", b"blood", b"pressure", b"admission", b"discharge", b"nurse", b"letter")


def _rows(r: random.Random, n: int, first: int = 0) -> bytes:
    """``n`` 128-byte rows like a pgbench table's, keys from ``first``: a 24-byte header (ids, a
    visibility word), an id, a balance, a name, blank filler."""
    out = bytearray()
    for i in range(first, first + n):
        head = i.to_bytes(8, "little") + r.getrandbits(32).to_bytes(4, "little") + bytes(12)
        body = i.to_bytes(4, "little") + r.randint(-99999, 99999).to_bytes(4, "little", signed=True)
        body += b" ".join(r.choice(WORDS) for _ in range(3))[:40].ljust(40, b"_") + bytes(8)
        out += (head + body).ljust(128, b" ")
    return bytes(out)


def _vacuumed(rows: bytes) -> bytes:
    """What ``VACUUM FULL`` writes of ``rows``: every row's header gets a new visibility byte and
    position (bytes 8-15), the rows themselves shift by 8 bytes (a new page header's size)."""
    out = bytearray(bytes(8) + rows)
    for at in range(8, len(out) - 128 + 1, 128):
        out[at + 8:at + 16] = (at // 128).to_bytes(8, "little")
    return bytes(out[:len(rows)])


def test_near_copies_found_after_new_headers_and_shifts_not_in_other_data() -> None:
    """A block's rows found nearly whole after new headers and an 8-byte shift; not in random
    bytes, not in other rows of the same shape, and zeros or filler are never judged."""
    r = random.Random(1)
    old = _rows(r, 512)
    key = anomaly.near_key()

    def index(*blocks: bytes, at: int = 100) -> anomaly.NearIndex:
        return anomaly.NearIndex([(anomaly.near_windows(b, key=key), at + 7 * i) for i, b in enumerate(blocks)], key)

    vac = _vacuumed(old)
    # a full copy keeps ~75 % of the windows here (the rest hold a changed header word)
    assert anomaly.near_copied(old, anomaly.NearIndex([(anomaly.near_windows(vac[:57344], key=key), 50),
                                                       (anomaly.near_windows(vac[57344:], key=key), 51)], key))
    assert anomaly.near_copied(old, index(vac))
    assert not anomaly.near_copied(old, index(*[_rows(random.Random(s), 512, 10_000 * s) for s in (2, 3)],
                                              os.urandom(1 << 16)))
    assert not anomaly.near_copied(bytes(1 << 16), index(vac))
    assert not anomaly.near_copied(b" " * (1 << 16), index(b" " * (1 << 16)))
    assert not anomaly.near_copied(old, anomaly.NearIndex())
    # most rows copied: still moved; a quarter: not
    assert anomaly.near_copied(old, index(vac[:56 * 1024]))
    assert not anomaly.near_copied(old, index(vac[:16 * 1024]))
    # the copy scattered in pieces over many files: not one copy
    pieces = [vac[i:i + 4096] for i in range(0, len(vac), 4096)]
    assert not anomaly.near_copied(old, index(*pieces))
    # windows found in more than NEAR_COMMON_MAX places are not evidence: nothing left to judge
    assert not anomaly.near_copied(old, index(*[vac] * (anomaly.NEAR_COMMON_MAX + 1)))
    # a template's common windows left out, the rest of a copy judged
    assert anomaly.near_copied(old, index(vac, *[vac[:8192]] * anomaly.NEAR_COMMON_MAX))
    # a decoy of the windows one key chooses (an eighth of the bytes) is no copy under another key
    h, at = anomaly.near_windows(old, positions=True, key=(0, 0))
    decoy = bytearray(len(old))
    for a in at.tolist():
        decoy[a:a + anomaly.NEAR_WINDOW] = old[a:a + anomaly.NEAR_WINDOW]
    assert anomaly.near_copied(old, anomaly.NearIndex([(anomaly.near_windows(bytes(decoy)), 9)]))  # the known key
    assert not anomaly.near_copied(old, index(bytes(decoy)))


def test_coverage_keeps_moved_blocks_counts_them_when_lost_and_round_trips() -> None:
    """Moved blocks are kept apart from the counted ones, a block counted later leaves them, and
    the state survives its document (an older document without them reads as none)."""
    c = anomaly.Coverage().step(2, {1, 2}, moved={10, 11, 12})
    assert c.total(100) == 0.02 and c.moved == {10, 11, 12}
    c = c.step(3, {10})  # its copy was lost: counted now
    assert c.moved == {11, 12} and c.blocks == {1, 2, 10}
    back = anomaly.Coverage.from_doc(c.doc())
    assert back == c
    doc = c.doc()
    del doc["moved"], doc["moved_count"]
    assert anomaly.Coverage.from_doc(doc).moved == frozenset()
    for bad in ({**c.doc(), "moved_count": -1}, {**c.doc(), "moved_count": 5}, {**c.doc(), "moved": 7}):
        with pytest.raises(ValueError):
            anomaly.Coverage.from_doc(bad)


TABLE = 8 << 20


def _volume(tmp_path: Path):
    """A 64 MiB ext4 (4 KiB blocks) holding an 8 MiB table, letters and rows filling all but the
    table's size and 1 MiB (root may use the reserved blocks: ``f_bfree``)."""
    img, mnt = tmp_path / "a.img", tmp_path / "mnt"
    _mkfs(img, 64, 4096)
    r = random.Random(7)
    with _mounted(img, mnt):
        (mnt / "table").write_bytes(_rows(r, TABLE // 128))
        for i in range(20):
            (mnt / f"letter{i}.txt").write_bytes(b" ".join(r.choice(WORDS) + str(r.randint(0, 9999)).encode()
                                                           for _ in range(45_000))[:500_000])
        os.sync()
        free = os.statvfs(mnt).f_bfree * 4096
        (mnt / "rest").write_bytes(_rows(r, (free - (TABLE + (3 << 20))) // 128))
        os.sync()
    return img, mnt


def _judge(det: Detection, m, base, carried=None, anchor=None):
    sampling: dict = {}
    sig = det._signals(m, base, None, None, sampling, anchor=anchor, coverage=(carried or {}).get(anomaly.COVERAGE))
    sig.sampling = sampling  # type: ignore[attr-defined]
    return sig, anomaly.judge_relative(0, sig, [], [], anomaly.POLICY_DEFAULTS, carried=carried)


@needs_root
def test_a_table_rewritten_into_a_new_file_is_clean_encryption_is_not(tmp_path: Path) -> None:
    """``VACUUM FULL`` then an import over the freed blocks (the table's rows copied with new
    headers into a new file, the old file deleted, random bytes written: the file system has no
    other free blocks): clean, its old blocks moved. Not excused: the same without the copy
    (copy-encrypt-delete over the freed blocks), the table encrypted in place while a copy
    exists (it keeps its owner), and the copy deleted in a later snapshot (the moved blocks
    counted by the coverage window then)."""
    store = ChunkStore(tmp_path / "store")
    det = Detection(types.SimpleNamespace(site_id="t"), store, None, tmp_path, lambda v: {}, None)  # type: ignore[arg-type]
    img, mnt = _volume(tmp_path)
    pristine = tmp_path / "pristine.img"
    os.system(f"cp --sparse=always {img} {pristine}")  # noqa: S605 - fixed paths of this test
    seq = iter(range(1, 100))
    snap = lambda parent: asyncio.run(take_snapshot(  # noqa: E731
        img, volume="v", seq=next(seq), epoch=1, parent=parent, store=store, now_ns=time.time_ns())).manifest
    m1 = snap(None)

    def fresh() -> None:
        os.system(f"cp --sparse=always {pristine} {img}")  # noqa: S605

    def rewrite(copy: bool, in_place: bool = False) -> None:
        with _mounted(img, mnt):
            rows = (mnt / "table").read_bytes()
            if copy:
                (mnt / "table.new").write_bytes(_vacuumed(rows))
                os.sync()
            if in_place:
                with open(mnt / "table", "r+b") as f:
                    f.write(os.urandom(len(rows)))
            else:
                (mnt / "table").unlink()
                os.sync()
                time.sleep(0.2)
                (mnt / "scans").write_bytes(os.urandom(TABLE))
            os.sync()

    rewrite(copy=True)
    m2 = snap(m1)
    sig, v = _judge(det, m2, m1)
    assert v.verdict == "clean", (v.reasons, sig.sampling, sig.summary())
    assert len(sig.moved) >= 40 and sig.turned_random <= 4, sig.summary()
    assert sig.random_filled >= 40, sig.summary()  # the import's random bytes, weighed by conservation
    # the chain: the copy deleted the next snapshot, its blocks left in place: the moved blocks lose
    # their copy and are counted (coverage window, carried as the daemon carries it)
    with _mounted(img, mnt):
        (mnt / "table.new").unlink()
        os.sync()
    m3 = snap(m2)
    sig3, v3 = _judge(det, m3, m2, carried=v.slow, anchor=lambda: m1)
    assert len(sig3.moved_lost) == len(sig.moved), sig3.summary()
    assert v3.verdict == "suspect" and any("coverage" in x for x in v3.reasons), v3.reasons
    # kept: still excused a snapshot later
    fresh()
    m1b = snap(None)
    rewrite(copy=True)
    m2b = snap(m1b)
    sig, v = _judge(det, m2b, m1b)
    with _mounted(img, mnt):
        (mnt / "other.txt").write_bytes(b"a new letter " * 1000)
        os.sync()
    m3b = snap(m2b)
    sig3, v3 = _judge(det, m3b, m2b, carried=v.slow, anchor=lambda: m1b)
    assert v3.verdict == "clean" and not sig3.moved_lost, (v3.reasons, sig3.summary())
    # no copy: the old rows are gone; whether ext4 gave their blocks to the new file (counted as
    # turned random) or not (left in place: conservation), suspect and nothing moved
    fresh()
    m1c = snap(None)
    rewrite(copy=False)
    sig, v = _judge(det, snap(m1c), m1c)
    assert v.verdict == "suspect" and not sig.moved, (v.reasons, sig.summary())
    # the old table released and left in place beside its copy (no import): its pieces moved, not
    # released (conservation's released side; no piece of the copy is byte-identical)
    fresh()
    m1e = snap(None)
    with _mounted(img, mnt):
        (mnt / "table.new").write_bytes(_vacuumed((mnt / "table").read_bytes()))
        (mnt / "table").unlink()
        os.sync()
    m2e = snap(m1e)
    changed = np.concatenate([i for i, _, _ in changed_rows(m1e, m2e, store.get)])
    assert det._released(m2e, m1e, changed) <= 0.1 * TABLE / 65536  # of the 128 blocks the table held
    # in place (the same inode) while a copy exists: counted
    fresh()
    m1d = snap(None)
    rewrite(copy=True, in_place=True)
    sig, v = _judge(det, snap(m1d), m1d)
    assert v.verdict == "suspect" and not sig.moved and sig.turned_random >= 40, sig.summary()
