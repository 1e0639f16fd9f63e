"""The primary's fingerprint cache: used only when it describes the parent, rebuilt otherwise,
and never able to make a changed block look unchanged."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import blake3
import pytest

from replicad.storage import fingerprints as fpm
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.fingerprints import FP_SIZE, HEADER_SIZE, FingerprintCache, FingerprintWriter
from replicad.core.manifest import ZERO_DIGEST, Manifest
from replicad.sources.file import ScanResult, _hash_part, take_snapshot

BS = 4096
N_BLOCKS = 300  # more than one 64-block read batch, with zero blocks in between
NOW_NS = 1_800_000_000_000_000_000


def make_image(path: Path, rng: random.Random) -> None:
    data = bytearray()
    for i in range(N_BLOCKS):
        data += bytes(BS) if i % 7 == 3 else rng.randbytes(BS)
    path.write_bytes(bytes(data[:-100]))  # a short last block too


def change(path: Path, indexes: list[int], rng: random.Random) -> None:
    with open(path, "r+b") as fh:
        for i in indexes:
            fh.seek(i * BS)
            fh.write(rng.randbytes(min(BS, path.stat().st_size - i * BS)))


def fresh_digests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [ZERO_DIGEST if not any(data[o:o + BS]) else blake3.blake3(data[o:o + BS]).digest()
            for o in range(0, len(data), BS)]


def manifest_digests(store: ChunkStore, m: Manifest) -> list[bytes]:
    from replicad.core.manifest import iter_block_digests
    return list(iter_block_digests(m, store.get))


@pytest.fixture
def env(tmp_path: Path):
    store = ChunkStore(tmp_path / "store")
    img = tmp_path / "vol.img"
    make_image(img, random.Random(1))
    yield store, img, tmp_path / "fp" / "vol.fp"
    store.close()


def scan(img: Path, store: ChunkStore, seq: int, parent: Manifest | None, fp: Path | None,
         now_ns: int = NOW_NS, **kw: object) -> ScanResult:
    return asyncio.run(take_snapshot(img, volume="vol", seq=seq, epoch=1, parent=parent, store=store,
                                     now_ns=now_ns + seq, fingerprints=fp, read_size_bytes=64 * BS,
                                     block_size=BS, **kw))


def used_cache(caplog: pytest.LogCaptureFixture) -> bool:
    return any("fingerprint cache used" in r.getMessage() for r in caplog.records)


def test_full_snapshot_writes_the_cache_next_scan_uses_it(env, caplog) -> None:
    store, img, fp = env
    r1 = scan(img, store, 1, None, fp)
    assert fp.exists() and not fp.with_name("vol.fp.tmp").exists()
    assert os.stat(fp).st_mode & 0o777 == 0o600
    cache = FingerprintCache.open(fp, root=r1.manifest.root, block_size=BS, now_ns=NOW_NS + 2)
    assert cache is not None and cache.n_blocks == r1.manifest.n_blocks and cache.generation == 0
    cache.close()
    caplog.set_level("DEBUG", logger="replicad.sources.file")
    r2 = scan(img, store, 2, r1.manifest, fp)
    assert used_cache(caplog) and r2.hashed_blocks == 0 and r2.changed_blocks == []


def test_cache_recognises_unchanged_blocks_and_finds_changed_ones(env, caplog) -> None:
    store, img, fp = env
    r1 = scan(img, store, 1, None, fp)
    r2 = scan(img, store, 2, r1.manifest, fp, full_pass_every=0)  # a full pass rewrites the cache
    rng = random.Random(2)
    changed = [0, 5, 64, 65, 150, N_BLOCKS - 1]
    change(img, changed, rng)
    change(img, [3], rng)  # a zero block becomes data
    caplog.set_level("DEBUG", logger="replicad.sources.file")
    r3 = scan(img, store, 3, r2.manifest, fp)
    assert used_cache(caplog)
    assert r3.changed_blocks == sorted(changed + [3])
    assert r3.hashed_blocks == len(changed) + 1  # only the changed blocks got BLAKE3
    assert r2.hashed_blocks == N_BLOCKS - len(range(3, N_BLOCKS, 7))  # full pass: every non-zero block
    assert manifest_digests(store, r3.manifest) == fresh_digests(img)
    # the same scan without a cache gives the same manifest
    other = ChunkStore(img.parent / "store2")
    try:
        o1 = scan(img, other, 1, None, None)
        assert o1.manifest.pages == r3.manifest.pages
    finally:
        other.close()
    # and the rewritten cache serves the next scan
    caplog.clear()
    change(img, [7], rng)
    r4 = scan(img, store, 4, r3.manifest, fp)
    assert used_cache(caplog) and r4.changed_blocks == [7] and r4.hashed_blocks == 1


def test_cache_of_another_snapshot_is_not_used(env, caplog) -> None:
    store, img, fp = env
    r1 = scan(img, store, 1, None, fp)
    r2 = scan(img, store, 2, r1.manifest, fp)  # cache describes #2
    change(img, [10], random.Random(3))
    caplog.set_level("DEBUG", logger="replicad.sources.file")
    r3 = scan(img, store, 3, r1.manifest, fp)  # parent #1 (e.g. #2 never committed)
    assert not used_cache(caplog)
    assert r3.changed_blocks == [10]
    assert FingerprintCache.open(fp, root=r2.manifest.root, block_size=BS, now_ns=NOW_NS) is None
    cache = FingerprintCache.open(fp, root=r3.manifest.root, block_size=BS, now_ns=NOW_NS + 4)
    assert cache is not None
    cache.close()


@pytest.mark.parametrize("damage", ["entries", "header", "torn", "empty", "version"])
def test_corrupt_cache_is_ignored_and_rebuilt(env, caplog, damage: str) -> None:
    store, img, fp = env
    r1 = scan(img, store, 1, None, fp)
    r2 = scan(img, store, 2, r1.manifest, fp)
    data = bytearray(fp.read_bytes())
    if damage == "entries":
        data[HEADER_SIZE + 5 * FP_SIZE] ^= 0xFF
    elif damage == "header":
        data[20] ^= 0x01
    elif damage == "torn":
        del data[HEADER_SIZE + 10:]
    elif damage == "empty":
        data = bytearray()
    else:
        data[8] = 9  # version field (checksum now wrong too; either check refuses it)
    fp.write_bytes(bytes(data))
    assert FingerprintCache.open(fp, root=r2.manifest.root, block_size=BS, now_ns=NOW_NS + 3) is None
    change(img, [1, 200], random.Random(4))
    caplog.set_level("DEBUG", logger="replicad.sources.file")
    r3 = scan(img, store, 3, r2.manifest, fp)
    assert not used_cache(caplog)
    assert r3.changed_blocks == [1, 200]
    assert manifest_digests(store, r3.manifest) == fresh_digests(img)
    cache = FingerprintCache.open(fp, root=r3.manifest.root, block_size=BS, now_ns=NOW_NS + 4)
    assert cache is not None  # rebuilt by the full pass
    cache.close()


def test_periodic_full_pass_by_count_and_age(env, caplog) -> None:
    store, img, fp = env
    parent = scan(img, store, 1, None, fp).manifest  # full pass, generation 0
    parent = scan(img, store, 2, parent, fp).manifest  # generation 1
    parent = scan(img, store, 2, parent, fp, full_pass_every=0).manifest  # full pass, generation 0
    caplog.set_level("DEBUG", logger="replicad.sources.file")
    used = []
    for seq in range(3, 8):
        caplog.clear()
        parent = scan(img, store, seq, parent, fp, full_pass_every=2).manifest
        used.append(used_cache(caplog))
    assert used == [True, True, False, True, True]  # generations 0, 1 used; 2 due: full pass
    r8 = scan(img, store, 8, parent, fp, full_pass_every=10)
    assert r8.hashed_blocks == 0  # every block a cache hit, not a mere read of the file
    parent = r8.manifest
    # age: a scan more than max_age after the last full pass, or with a clock behind it
    for now_ns, expect in ((NOW_NS + 10**12, False), (NOW_NS - 10**12, False)):
        caplog.clear()
        parent = scan(img, store, 20, parent, fp, now_ns=now_ns, full_pass_max_age_ns=10**11).manifest
        assert used_cache(caplog) is expect


def test_block_size_mismatch_refused(env) -> None:
    store, img, fp = env
    r1 = scan(img, store, 1, None, fp)
    r2 = scan(img, store, 2, r1.manifest, fp)
    assert FingerprintCache.open(fp, root=r2.manifest.root, block_size=BS * 2, now_ns=NOW_NS + 3) is None


def test_failed_scan_keeps_previous_cache(env, tmp_path: Path) -> None:
    store, img, fp = env
    r1 = scan(img, store, 1, None, fp)
    r2 = scan(img, store, 2, r1.manifest, fp)
    before = fp.read_bytes()
    with pytest.raises(Exception):
        scan(img, store, 3, r2.manifest, fp, pre_snapshot=["false"])
    assert fp.read_bytes() == before and not fp.with_name("vol.fp.tmp").exists()


def test_entry_is_bound_to_the_digest_it_was_written_for() -> None:
    """An entry computed for content X cannot vouch for the parent's different digest."""
    rng = random.Random(5)
    x, y = rng.randbytes(BS), rng.randbytes(BS)
    dx, dy = blake3.blake3(x).digest(), blake3.blake3(y).digest()
    key = 77
    entry_x = fpm.fingerprint(x, key, dx)
    # current content X, parent says Y, cache entry describes X: must be seen as changed
    part = _hash_part(memoryview(x), 0, BS, dy, entry_x, key, False, True)
    assert part.digests == dx and part.changed == [0] and part.hashed_blocks == 1
    assert part.entries == entry_x
    # the honest case: parent says X and the entry is X's
    part = _hash_part(memoryview(x), 0, BS, dx, entry_x, key, False, True)
    assert part.digests == dx and part.changed == [] and part.hashed_blocks == 0
    # a wrong key (another cache) misses: hashed, not trusted
    part = _hash_part(memoryview(x), 0, BS, dx, entry_x, key + 1, False, False)
    assert part.hashed_blocks == 1 and part.changed == []


def test_writer_refuses_incomplete_and_abort_cleans(tmp_path: Path) -> None:
    fp = tmp_path / "a" / "v.fp"
    w = FingerprintWriter(fp, block_size=BS, size_bytes=3 * BS, now_ns=NOW_NS)
    w.append(bytes(2 * FP_SIZE), 2)
    with pytest.raises(ValueError):
        w.commit(b"r" * 32)
    assert not fp.exists() and not w.tmp.exists()
    w = FingerprintWriter(fp, block_size=BS, size_bytes=3 * BS, now_ns=NOW_NS)
    w.append(None, 3)
    w.commit(b"r" * 32)
    c = FingerprintCache.open(fp, root=b"r" * 32, block_size=BS, now_ns=NOW_NS)
    assert c is not None and c.entries(0, 5) == bytes(3 * FP_SIZE) and c.entries(3, 1) == b""
    c.close()
