"""Snapshot records are write-once (replicad.storage.catalog): real SQLite files in tmp_path."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from replicad.core.errors import ConflictError, RecordConflictError, from_dict
from replicad.storage.catalog import SCHEMA_VERSION, STATES, TRANSITIONS, Catalog, SnapshotRecord

STATES = tuple(s for s in STATES if s != "previous")  # previous: only enter_incarnation sets it (test_incarnation.py)

NOW_NS = 1_800_000_000_000_000_000


def root(n: int) -> bytes:
    return n.to_bytes(32, "big")


def rec(seq: int, *, r: int | None = None, epoch: int = 1, state: str = "committed", created: int = NOW_NS,
        volume: str = "pacs") -> SnapshotRecord:
    return SnapshotRecord(volume, epoch, seq, root(seq if r is None else r), state, created)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "catalog.db"


@pytest.fixture
def cat(path: Path):
    c = Catalog(path)
    yield c
    c.close()


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT volume, epoch, seq, root, state, created_at_ns, stored_at_ns FROM snapshots "
                          "ORDER BY volume, epoch, seq").fetchall()


@pytest.mark.parametrize("held", STATES)
@pytest.mark.parametrize("offered", STATES)
def test_another_root_at_the_same_key_is_refused_whatever_the_states(cat: Catalog, path: Path, held: str,
                                                                     offered: str, caplog) -> None:
    assert cat.put(rec(5, state=held), now_ns=NOW_NS) == "inserted"
    before = rows(path)
    with caplog.at_level(logging.WARNING, logger="replicad.storage.catalog"):
        with pytest.raises(RecordConflictError) as info:
            cat.put(rec(5, r=99, state=offered, created=0))
    assert rows(path) == before
    err = info.value
    assert isinstance(err, ConflictError) and err.code == "record_conflict" and err.http_status == 409
    assert err.evidence["held_root"] == root(5) and err.evidence["offered_root"] == root(99)
    assert err.evidence["held_state"] == held and err.evidence["offered_state"] == offered
    body = err.to_dict()
    assert body["evidence"]["held_root"] == root(5).hex()
    assert isinstance(from_dict(body, 409), RecordConflictError)   # a peer sees the same typed error
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning and root(5).hex() in warning[0].getMessage() and root(99).hex() in warning[0].getMessage()


def test_the_same_root_again_is_idempotent(cat: Catalog, path: Path) -> None:
    assert cat.put(rec(1), now_ns=NOW_NS) == "inserted"
    before = rows(path)
    assert cat.put(rec(1, created=0), now_ns=NOW_NS + 10**12) == "unchanged"   # times never rewritten
    assert rows(path) == before
    assert cat.list("pacs")[0].stored_at_ns == NOW_NS


def test_a_received_record_never_displaces_a_committed_one(cat: Catalog) -> None:
    cat.put(rec(3))
    assert cat.put(rec(3, state="received")) == "unchanged"
    assert cat.put(rec(3, state="local")) == "unchanged"
    assert [r.state for r in cat.list("pacs")] == ["committed"]
    with pytest.raises(RecordConflictError):
        cat.set_state("pacs", 1, 3, "received")
    assert [r.state for r in cat.list("pacs")] == ["committed"]


@pytest.mark.parametrize("held", STATES)
@pytest.mark.parametrize("target", STATES)
def test_states_only_move_forward(cat: Catalog, held: str, target: str) -> None:
    cat.put(rec(7, state=held))
    allowed = target == held or target in TRANSITIONS[held]
    if allowed:
        cat.set_state("pacs", 1, 7, target)
        assert cat.list("pacs")[0].state == target
    else:
        with pytest.raises(RecordConflictError):
            cat.set_state("pacs", 1, 7, target)
        assert cat.list("pacs")[0].state == held


@pytest.mark.parametrize("held", STATES)
@pytest.mark.parametrize("offered", STATES)
def test_put_with_the_same_root_advances_or_keeps(cat: Catalog, held: str, offered: str) -> None:
    cat.put(rec(2, state=held))
    outcome = cat.put(rec(2, state=offered))
    if offered != held and offered in TRANSITIONS[held]:
        assert outcome == "advanced" and cat.list("pacs")[0].state == offered
    else:
        assert outcome == "unchanged" and cat.list("pacs")[0].state == held


def test_the_replication_paths_still_work(cat: Catalog) -> None:
    # primary: local -> committed; fenced: local -> divergent; replica: received -> committed
    cat.put(rec(1, state="local"))
    cat.set_state("pacs", 1, 1, "committed")
    cat.put(rec(2, state="local"))
    cat.set_state("pacs", 1, 2, "divergent")
    cat.put(rec(3, state="received"))
    assert cat.put(rec(3, state="committed")) == "advanced"
    cat.put(rec(2, epoch=2, r=202))                       # a newer epoch reuses seq 2: another key
    assert [(r.epoch, r.seq, r.state) for r in cat.list("pacs")] == [
        (1, 1, "committed"), (1, 2, "divergent"), (1, 3, "committed"), (2, 2, "committed")]


def test_a_forgotten_record_may_be_written_again(cat: Catalog) -> None:
    cat.put(rec(4))
    cat.delete("pacs", 1, 4)
    assert cat.put(rec(4, r=44)) == "inserted"            # only what is held is write-once


def test_floor_records_carry_the_local_store_time(cat: Catalog) -> None:
    cat.put(rec(1, created=0), now_ns=NOW_NS)             # a forged manifest time
    cat.put(rec(2, state="received", created=NOW_NS + 5), now_ns=NOW_NS + 1)
    got = cat.floor_records("pacs")
    assert [(r.epoch, r.seq, r.state, r.root, r.created_at_ns, r.stored_at_ns) for r in got] == [
        (1, 1, "committed", root(1), 0, NOW_NS), (1, 2, "received", root(2), NOW_NS + 5, NOW_NS + 1)]
    assert got[0].time_ns == NOW_NS and got[1].time_ns == NOW_NS + 5
    assert cat.floor_records("ris") == []


def test_concurrent_conflicting_puts_keep_exactly_one_root(cat: Catalog) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def writer(r: int) -> None:
        for seq in range(1, 41):
            try:
                cat.put(rec(seq, r=1000 * r + seq, state="received"))
                result = "ok"
            except RecordConflictError:
                result = "conflict"
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 40 and outcomes.count("conflict") == 120
    assert [r.seq for r in cat.list("pacs")] == list(range(1, 41))


def test_a_version_1_catalog_is_upgraded_in_place(path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE snapshots (volume TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
            root BLOB NOT NULL, state TEXT NOT NULL, created_at_ns INTEGER NOT NULL,
            PRIMARY KEY (volume, epoch, seq));
        INSERT INTO meta VALUES ('schema', '1');
    """)
    db.execute("INSERT INTO snapshots VALUES ('pacs', 1, 1, ?, 'committed', 0)", (root(1),))
    db.close()
    c = Catalog(path)
    try:
        [old] = c.list("pacs")
        assert old == rec(1, created=0) and old.stored_at_ns > NOW_NS // 2   # the upgrade time: young
        with pytest.raises(RecordConflictError):
            c.put(rec(1, r=9))
    finally:
        c.close()
    with sqlite3.connect(path) as db2:
        assert db2.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
