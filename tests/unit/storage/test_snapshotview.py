"""Reading a snapshot from a real chunk store through its manifest, and the copy-on-write
overlay of a writable export (real files)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from replicad.core.errors import IntegrityError, NotFoundError, UsageError
from replicad.sources.file import take_snapshot
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.snapshotview import Overlay, SnapshotReader

BS = 4096


def _image(path: Path, n_blocks: int, tail: int = 100) -> bytes:
    rng = random.Random(7)
    data = bytearray(n_blocks * BS + tail)
    for i in range(n_blocks):
        if i % 3:
            data[i * BS:(i + 1) * BS] = rng.randbytes(BS)
    data[-tail:] = rng.randbytes(tail)  # a short last block
    path.write_bytes(data)
    return bytes(data)


@pytest.fixture
def snap(tmp_path: Path):
    img = tmp_path / "vol.img"
    data = _image(img, 40)
    store = ChunkStore(tmp_path / "chunks")
    res = asyncio.run(take_snapshot(img, volume="v", seq=1, epoch=1, parent=None, store=store, now_ns=1,
                                    block_size=BS))
    yield store, res.manifest, data
    store.close()


def test_reads_equal_the_image_at_any_range(snap) -> None:
    store, manifest, data = snap
    r = SnapshotReader(store, manifest)
    rng = random.Random(3)
    for _ in range(200):
        off = rng.randrange(len(data))
        n = rng.randrange(len(data) - off + 1)
        assert r.read(off, n) == data[off:off + n]
    assert r.read(0, len(data)) == data
    with pytest.raises(UsageError):
        r.read(len(data) - 1, 2)


def test_corrupt_or_missing_chunk_raises_never_returns_data(snap) -> None:
    store, manifest, data = snap
    r = SnapshotReader(store, manifest)
    d = r.digest(1)
    pack, offset, length = store._db.execute("SELECT pack, offset, length FROM chunks WHERE digest=?", (d,)).fetchone()
    path = store.pack_dir / f"{pack:08d}.pack"
    with open(path, "r+b") as f:  # flip one payload byte in place
        f.seek(offset + 41 + length // 2)
        b = f.read(1)
        f.seek(offset + 41 + length // 2)
        f.write(bytes([b[0] ^ 0x40]))
    with pytest.raises(IntegrityError):
        r.read(BS, 10)
    assert r.read(2 * BS, BS) == data[2 * BS:3 * BS]  # the other blocks still read
    store.delete_corrupt(d)
    with pytest.raises(NotFoundError):
        r.read(BS, 10)


def test_overlay_copy_on_write(snap, tmp_path: Path) -> None:
    store, manifest, data = snap
    before = store.stats()
    base = SnapshotReader(store, manifest)
    ov = Overlay(tmp_path / "ov", base)
    expect = bytearray(data)
    for off, n in ((10, 5), (BS - 3, 10), (5 * BS, 3 * BS), (len(data) - 50, 50)):
        chunk = os.urandom(n)
        ov.write(off, chunk)
        expect[off:off + n] = chunk
    ov.zero(20 * BS + 7, BS)
    expect[20 * BS + 7:21 * BS + 7] = bytes(BS)
    ov.zero(30 * BS, 3 * BS)  # whole blocks: holes, nothing written
    expect[30 * BS:33 * BS] = bytes(3 * BS)
    assert ov.read(0, len(data)) == bytes(expect)
    assert base.read(0, len(data)) == data  # the snapshot itself unchanged
    ov.flush()
    bits = (tmp_path / "ov" / Overlay.BITMAP).read_bytes()
    written = {i for i in range(manifest.n_blocks) if bits[i >> 3] & (1 << (i & 7))}
    assert written == {0, 1, 5, 6, 7, 20, 21, 30, 31, 32, manifest.n_blocks - 1}
    allocated = os.stat(tmp_path / "ov" / Overlay.IMAGE).st_blocks * 512
    assert allocated <= 9 * BS  # the 8 blocks written (and a little metadata), not the zeroed ones
    assert ov.blocks_written == len(written)
    assert store.stats() == before  # nothing stored
    ov.close()


def test_overlay_reopened_keeps_what_a_flush_made_durable(snap, tmp_path: Path) -> None:
    """Instant recovery's restart rule: the bitmap as last flushed comes back; a block written
    after the last flush reads from the snapshot again (NBD lets unflushed writes go)."""
    store, manifest, data = snap
    base = SnapshotReader(store, manifest)
    ov = Overlay(tmp_path / "ov", base)
    ov.write(BS * 2, b"\x11" * BS)
    ov.write(BS * 3 + 10, b"\x22" * 100)  # a partial block, completed from the snapshot
    ov.write(BS * 9, b"\x33" * (2 * BS))
    ov.flush()
    ov.write(BS * 20, b"\x44" * BS)  # never flushed
    assert ov.written_runs() == [(2, 2), (9, 2), (20, 1)]
    ov.close()
    again = Overlay(tmp_path / "ov", base, reopen=True)
    assert again.written_runs() == [(2, 2), (9, 2)]
    assert again.read(BS * 2, BS) == b"\x11" * BS
    assert again.read(BS * 3, BS) == data[BS * 3:BS * 3 + 10] + b"\x22" * 100 + data[BS * 3 + 110:BS * 4]
    assert again.read(BS * 20, BS) == data[BS * 20:BS * 21]  # the unflushed write is gone, the snapshot shows
    again.close()
    (tmp_path / "ov" / Overlay.BITMAP).write_bytes(b"\x00")  # a bitmap of another snapshot's size
    with pytest.raises(IntegrityError):
        Overlay(tmp_path / "ov", base, reopen=True)
    with pytest.raises(IntegrityError):
        Overlay(tmp_path / "none", base, reopen=True)  # nothing to re-attach
