"""Chunk store arrival times and the gc grace: chunks no record references yet survive gc for a
bounded time, junk does not survive forever, and an index of schema 1 is upgraded in place."""

from __future__ import annotations

import importlib.util
import logging
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from replicad.core.errors import RemoteProtocolError, UsageError
from replicad.storage.chunkstore import (
    DEFAULT_GC_GRACE_NS,
    INDEX_SCHEMA_VERSION,
    RECORD_HEADER_SIZE,
    ChunkStore,
    digest_of,
    encode_chunk,
    record_header,
)

REPO = Path(__file__).resolve().parents[3]
SCHEMA_1_COMMIT = "292d470"  # the last commit whose chunkstore.py writes index schema 1
HOUR = 3600 * 10**9
T0 = 1_700_000_000 * 10**9


class Clock:
    """A wall clock in ns that moves only when told."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def blocks(seed: int, n: int, size: int = 4096) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(n)]


def arrivals(root: Path) -> dict[bytes, int]:
    db = sqlite3.connect(root / "index.sqlite3")
    try:
        return dict(db.execute("SELECT digest, arrived_ns FROM chunks").fetchall())
    finally:
        db.close()


def schema_version(root: Path) -> int:
    db = sqlite3.connect(root / "index.sqlite3")
    try:
        return db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    finally:
        db.close()


# --------------------------------------------------------------------------- arrival times


def test_every_put_path_records_the_first_arrival_time(tmp_path: Path) -> None:
    clock = Clock()
    a, b, c = blocks(1, 3)
    with ChunkStore(tmp_path, clock=clock) as store:
        (da,) = store.put_blocks([a])
        clock.now += 5
        db = digest_of(b)
        assert store.put_encoded([(db, *encode_chunk(b))]) == 1
        clock.now += 5
        dc = digest_of(c)
        codec, payload = encode_chunk(c)
        assert store.put_prepared([(dc, codec, payload, record_header(dc, codec, payload))]) == 1
    assert arrivals(tmp_path) == {da: T0, db: T0 + 5, dc: T0 + 10}


def test_a_second_put_never_refreshes_the_arrival_time(tmp_path: Path) -> None:
    """Refreshing would let a peer keep junk alive forever by re-sending it."""
    clock = Clock()
    (raw,) = blocks(2, 1)
    d = digest_of(raw)
    codec, payload = encode_chunk(raw)
    with ChunkStore(tmp_path, clock=clock) as store:
        store.put_encoded([(d, codec, payload)])
        for _ in range(3):
            clock.now += HOUR // 2
            assert store.put_encoded([(d, codec, payload)]) == 0
            assert store.put_blocks([raw]) == [d]
            assert store.put_prepared([(d, codec, payload)]) == 0
        assert arrivals(tmp_path) == {d: T0}
        # 1.5 h after its first arrival, though re-sent 1 s ago: collected
        assert store.gc(set(), grace_ns=HOUR)["chunks_removed"] == 1
        assert store.missing([d]) == [d]


def test_the_arrival_time_survives_a_reopen(tmp_path: Path) -> None:
    clock = Clock()
    with ChunkStore(tmp_path, clock=clock) as store:
        digests = store.put_blocks(blocks(3, 4))
    clock.now += 10 * HOUR
    with ChunkStore(tmp_path, clock=clock) as store:
        assert arrivals(tmp_path) == dict.fromkeys(digests, T0)
        assert store.gc(set(digests[:1]), grace_ns=HOUR)["chunks_removed"] == 3
    assert arrivals(tmp_path) == {digests[0]: T0}


def test_records_reindexed_by_recovery_count_as_arrived_at_recovery(tmp_path: Path) -> None:
    clock = Clock()
    with ChunkStore(tmp_path, clock=clock) as store:
        digests = store.put_blocks(blocks(4, 3))
    db = sqlite3.connect(tmp_path / "index.sqlite3")  # as if the crash came before the commit
    db.execute("DELETE FROM chunks WHERE digest=?", (digests[2],))
    db.commit()
    db.close()
    clock.now += 7 * HOUR
    with ChunkStore(tmp_path, clock=clock) as store:
        assert store.missing(digests) == []
        result = store.gc(set(), grace_ns=HOUR)
        assert result["chunks_removed"] == 2 and result["young_kept"] == 1
    assert arrivals(tmp_path) == {digests[2]: T0 + 7 * HOUR}


# --------------------------------------------------------------------------- gc grace


def test_young_unreferenced_chunks_survive_gc_and_are_counted(tmp_path: Path) -> None:
    clock = Clock()
    with ChunkStore(tmp_path, clock=clock) as store:
        old = store.put_blocks(blocks(5, 4, 3000))
        clock.now += 2 * HOUR
        young = store.put_blocks(blocks(6, 3, 5000))  # e.g. a snapshot still being received
        young_bytes = sum(RECORD_HEADER_SIZE + r for r in (5000, 5000, 5000))  # random: stays raw
        clock.now += HOUR - 1
        result = store.gc({old[0]}, grace_ns=HOUR, now_ns=clock.now)
        assert result["chunks_removed"] == 3 and result["chunks_corrupt"] == 0
        assert result["young_kept"] == 3 and result["young_kept_bytes"] == young_bytes
        assert store.missing(old + young) == old[1:]
        assert [digest_of(store.get(d)) for d in young] == young
        again = store.gc({old[0]}, grace_ns=HOUR, now_ns=clock.now)
        assert again["packs_removed"] == 0 and again["young_kept"] == 3  # no recompaction
        # exactly one grace after their arrival they are collected; the referenced one stays
        result = store.gc({old[0]}, grace_ns=HOUR, now_ns=T0 + 3 * HOUR)
        assert result["chunks_removed"] == 3 and result["young_kept"] == 0
        assert result["young_kept_bytes"] == 0 and result["bytes_freed"] > 0
        assert store.missing(old + young) == old[1:] + young
        assert store.get(old[0]) == blocks(5, 4, 3000)[0]


def test_referenced_chunks_survive_whatever_their_age(tmp_path: Path) -> None:
    clock = Clock()
    with ChunkStore(tmp_path, clock=clock) as store:
        digests = store.put_blocks(blocks(7, 5))
        clock.now += 1000 * HOUR
        result = store.gc(set(digests), grace_ns=0)
        assert result["chunks_removed"] == 0 and result["young_kept"] == 0
        assert store.missing(digests) == []


def test_compaction_moves_young_chunks_with_their_arrival_time(tmp_path: Path) -> None:
    clock = Clock()
    with ChunkStore(tmp_path, pack_target_bytes=30_000, clock=clock) as store:
        dead = store.put_blocks(blocks(8, 2, 6000))
        clock.now += HOUR
        young = store.put_blocks(blocks(9, 2, 6000))  # same pack as the dead ones
        clock.now += HOUR // 2
        before = arrivals(tmp_path)
        result = store.gc(set(), grace_ns=HOUR)
        assert result["chunks_removed"] == 2 and result["packs_removed"] == 1
        assert result["young_kept"] == 2
        assert arrivals(tmp_path) == {d: before[d] for d in young}
        assert [digest_of(store.get(d)) for d in young] == young
        assert store.missing(dead) == dead
    with ChunkStore(tmp_path, clock=clock) as store:
        assert store.missing(young) == []


def test_the_old_call_form_uses_the_default_grace_and_the_store_clock(tmp_path: Path) -> None:
    assert DEFAULT_GC_GRACE_NS == 24 * HOUR
    clock = Clock()
    with ChunkStore(tmp_path, clock=clock) as store:
        digests = store.put_blocks(blocks(10, 3))
        clock.now += 24 * HOUR - 1
        result = store.gc(set(digests[:1]))
        assert result["chunks_removed"] == 0 and result["young_kept"] == 2
        clock.now += 1
        assert store.gc(set(digests[:1]))["chunks_removed"] == 2
        assert store.missing(digests) == digests[1:]


def test_a_chunk_that_arrived_after_now_counts_as_young(tmp_path: Path) -> None:
    """The clock went back (e.g. corrected by NTP): err towards keeping."""
    clock = Clock()
    with ChunkStore(tmp_path, clock=clock) as store:
        digests = store.put_blocks(blocks(11, 2))
        result = store.gc(set(), grace_ns=0, now_ns=T0 - HOUR)
        assert result["chunks_removed"] == 0 and result["young_kept"] == 2
        assert store.gc(set(), grace_ns=0, now_ns=T0)["chunks_removed"] == 2


def test_a_flood_of_unreferenced_chunks_is_reclaimed_after_the_grace(tmp_path: Path) -> None:
    clock = Clock()
    with ChunkStore(tmp_path, pack_target_bytes=200_000, clock=clock) as store:
        kept = store.put_blocks(blocks(12, 4, 8192))
        junk = [(digest_of(r), *encode_chunk(r)) for r in blocks(13, 60, 8192)]
        for i in range(0, len(junk), 10):
            store.put_encoded(junk[i:i + 10])
            clock.now += 10**8  # 60 chunks within 0.6 s
        junk_bytes = store.gc(set(kept), grace_ns=HOUR)["young_kept_bytes"]
        assert junk_bytes == 60 * (RECORD_HEADER_SIZE + 8192)
        clock.now += HOUR // 2
        store.put_encoded(junk)  # re-sent: refreshes nothing
        clock.now += HOUR // 2
        result = store.gc(set(kept), grace_ns=HOUR)
        assert result["chunks_removed"] == 60 and result["young_kept"] == 0
        assert store.stats()["chunks"] == 4
        assert store.stats()["stored_bytes"] < 4 * (RECORD_HEADER_SIZE + 8192) + 200_000


def test_gc_refuses_a_negative_or_non_int_grace(tmp_path: Path) -> None:
    with ChunkStore(tmp_path) as store:
        for bad in (-1, 1.5, True, "3600"):
            with pytest.raises(UsageError):
                store.gc(set(), grace_ns=bad)  # type: ignore[arg-type]


def test_a_live_chunk_found_corrupt_by_gc_becomes_a_pending_repair(tmp_path: Path) -> None:
    clock = Clock()
    with ChunkStore(tmp_path, clock=clock) as store:
        live, dead = store.put_blocks(blocks(14, 2))
        row = sqlite3.connect(tmp_path / "index.sqlite3").execute(
            "SELECT pack, offset FROM chunks WHERE digest=?", (live,)).fetchone()
    pack = tmp_path / "packs" / f"{row[0]:08d}.pack"
    data = bytearray(pack.read_bytes())
    data[row[1] + RECORD_HEADER_SIZE + 7] ^= 1
    pack.write_bytes(bytes(data))
    clock.now += 2 * HOUR
    with ChunkStore(tmp_path, clock=clock) as store:
        result = store.gc({live}, grace_ns=HOUR)
        assert result["chunks_corrupt"] == 1 and result["chunks_removed"] == 1
        assert store.pending_repairs() == [live] and store.repairs_pending == 1
        assert store.missing([live, dead]) == [live, dead]


# --------------------------------------------------------------------------- schema upgrade

SCHEMA_1_DDL = (  # exactly what chunkstore.py wrote up to SCHEMA_1_COMMIT
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT INTO meta(key, value) VALUES('schema_version', 1)",
    "CREATE TABLE IF NOT EXISTS chunks(digest BLOB PRIMARY KEY, pack INTEGER NOT NULL, "
    "offset INTEGER NOT NULL, length INTEGER NOT NULL, codec INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS chunks_by_pack ON chunks(pack, offset)",
    "CREATE TABLE IF NOT EXISTS repairs(digest BLOB PRIMARY KEY) WITHOUT ROWID",
)


def downgrade_to_schema_1(root: Path) -> None:
    """Rebuild the index of a store as schema 1 wrote it (same rows, no arrival times)."""
    path = root / "index.sqlite3"
    db = sqlite3.connect(path)
    rows = db.execute("SELECT digest, pack, offset, length, codec FROM chunks").fetchall()
    repairs = db.execute("SELECT digest FROM repairs").fetchall()
    db.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    for stmt in SCHEMA_1_DDL:
        db.execute(stmt)
    db.executemany("INSERT INTO chunks VALUES(?,?,?,?,?)", rows)
    db.executemany("INSERT INTO repairs VALUES(?)", repairs)
    db.commit()
    db.close()


def old_chunkstore_module(tmp_path: Path) -> ModuleType:
    """chunkstore.py as of SCHEMA_1_COMMIT, imported by path (skips without the git history)."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{SCHEMA_1_COMMIT}:replicad/storage/chunkstore.py"],
            check=True, capture_output=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"git history with {SCHEMA_1_COMMIT} not available")
    path = tmp_path / "chunkstore_schema1.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("chunkstore_schema1", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.INDEX_SCHEMA_VERSION == 1
    return module


def check_upgraded(root: Path, digests: list[bytes], raws: list[bytes], clock: Clock) -> None:
    upgrade_at = clock.now
    with ChunkStore(root, clock=clock) as store:
        assert schema_version(root) == INDEX_SCHEMA_VERSION == 2
        assert arrivals(root) == dict.fromkeys(digests, upgrade_at)
        assert [store.get(d) for d in digests] == raws
        clock.now += 5
        (new,) = store.put_blocks([b"stored after the upgrade" * 50])
        assert arrivals(root)[new] == upgrade_at + 5
        # existing chunks count as arrived at the upgrade: kept one grace, then collected
        result = store.gc({digests[0]}, grace_ns=HOUR, now_ns=upgrade_at + HOUR - 1)
        assert result["chunks_removed"] == 0 and result["young_kept"] == len(digests)
    clock.now += 3 * HOUR
    with ChunkStore(root, clock=clock) as store:  # reopened: not upgraded again
        assert arrivals(root)[digests[1]] == upgrade_at
        assert store.gc({digests[0]}, grace_ns=HOUR)["chunks_removed"] == len(digests)
        assert store.missing(digests) == digests[1:]
        assert store.get(digests[0]) == raws[0]


def test_a_store_written_by_schema_1_code_is_upgraded_in_place(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = old_chunkstore_module(tmp_path)
    raws = blocks(20, 5)
    with old.ChunkStore(tmp_path / "s") as store:
        digests = store.put_blocks(raws)
    assert schema_version(tmp_path / "s") == 1
    clock = Clock(T0 + 123)
    with caplog.at_level(logging.WARNING, logger="replicad.storage.chunkstore"):
        check_upgraded(tmp_path / "s", digests, raws, clock)
    assert sum("upgraded from schema 1" in r.getMessage() for r in caplog.records) == 1


def test_a_hand_built_schema_1_index_with_pending_repairs_is_upgraded(tmp_path: Path) -> None:
    raws = blocks(21, 4)
    root = tmp_path / "s"
    with ChunkStore(root) as store:
        (lost,) = store.put_blocks([b"dropped as corrupt" * 100])  # not the pack's tail record
        digests = store.put_blocks(raws)
        store.delete_corrupt(lost)
    downgrade_to_schema_1(root)
    assert schema_version(root) == 1
    clock = Clock(T0 + 999)
    with ChunkStore(root, clock=clock) as store:  # upgrades; check_upgraded reopens at the same time
        assert store.pending_repairs() == [lost] and store.repairs_pending == 1
    check_upgraded(root, digests, raws, clock)


def test_an_index_of_an_unknown_newer_schema_is_refused(tmp_path: Path) -> None:
    with ChunkStore(tmp_path):
        pass
    db = sqlite3.connect(tmp_path / "index.sqlite3")
    db.execute("UPDATE meta SET value=3 WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(RemoteProtocolError):
        ChunkStore(tmp_path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
