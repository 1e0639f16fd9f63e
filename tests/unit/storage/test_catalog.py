"""Local snapshot catalog: real SQLite files in tmp_path, reopened to prove persistence."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from replicad.storage.catalog import SCHEMA_VERSION, STATES, Catalog, SnapshotRecord, StandbyRecord
from replicad.core.errors import RemoteProtocolError, ReplicadError

NOW_NS = 1_800_000_000_000_000_000


def root(n: int) -> bytes:
    return n.to_bytes(32, "big")


def rec(seq: int, *, epoch: int = 1, state: str = "committed", volume: str = "pacs") -> SnapshotRecord:
    return SnapshotRecord(volume=volume, epoch=epoch, seq=seq, root=root(1000 * epoch + seq), state=state,
                          created_at_ns=NOW_NS + seq)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "catalog.sqlite3"


@pytest.fixture
def cat(path: Path):
    c = Catalog(path)
    yield c
    c.close()


def test_put_list_find_root(cat: Catalog) -> None:
    records = [rec(3), rec(1), rec(2, state="local"), rec(1, volume="ris"), rec(4, state="received")]
    for r in records:
        cat.put(r)
    assert cat.list("pacs") == [rec(1), rec(2, state="local"), rec(3), rec(4, state="received")]
    assert cat.list("pacs", "committed") == [rec(1), rec(3)]
    assert cat.list("pacs", "divergent") == []
    assert cat.list("ris") == [rec(1, volume="ris")]
    assert cat.list("nope") == []
    assert cat.find_root("pacs", root(1003)) == rec(3)
    assert cat.find_root("ris", root(1003)) is None      # roots are looked up per volume
    assert cat.find_root("pacs", root(999)) is None
    assert cat.put(rec(3, state="received")) == "unchanged"  # write-once: committed is never displaced
    assert cat.list("pacs", "committed") == [rec(1), rec(3)]


def test_a_divergent_branch_shares_seqs_with_a_newer_epoch(cat: Catalog) -> None:
    for seq in (1, 2, 3):
        cat.put(rec(seq, epoch=1))
    cat.put(rec(4, epoch=1, state="divergent"))
    cat.put(rec(5, epoch=1, state="divergent"))
    cat.put(rec(4, epoch=2))
    cat.put(rec(5, epoch=2, state="local"))
    assert [(r.epoch, r.seq, r.state) for r in cat.list("pacs")] == [
        (1, 1, "committed"), (1, 2, "committed"), (1, 3, "committed"), (1, 4, "divergent"),
        (1, 5, "divergent"), (2, 4, "committed"), (2, 5, "local")]
    assert cat.find_root("pacs", root(1004)) == rec(4, epoch=1, state="divergent")
    assert cat.find_root("pacs", root(2004)) == rec(4, epoch=2)


def test_set_state_and_delete_never_delete_divergent_rows(cat: Catalog) -> None:
    cat.put(rec(1))
    cat.put(rec(2, state="local"))
    cat.put(rec(3, state="local"))
    cat.set_state("pacs", 1, 2, "committed")
    cat.set_state("pacs", 1, 3, "divergent")
    cat.set_state("pacs", 1, 99, "committed")            # absent: no-op, no row created
    assert [(r.seq, r.state) for r in cat.list("pacs")] == [(1, "committed"), (2, "committed"), (3, "divergent")]
    for seq in (1, 2, 3, 99):
        cat.delete("pacs", 1, seq)
    assert cat.list("pacs") == [rec(3, state="divergent")]
    cat.delete("pacs", 2, 3)                             # another epoch: not this row
    assert cat.list("pacs") == [rec(3, state="divergent")]


def test_unknown_state_is_rejected_by_put(cat: Catalog) -> None:
    for state in ("suspect", "", "COMMITTED", "committed "):
        with pytest.raises((ValueError, ReplicadError)):
            cat.put(rec(1, state=state))
    assert cat.list("pacs") == []
    assert set(STATES) == {"local", "received", "committed", "divergent", "previous"}


def test_unknown_state_is_rejected_by_set_state(cat: Catalog) -> None:
    cat.put(rec(1))
    with pytest.raises((ValueError, ReplicadError)):
        cat.set_state("pacs", 1, 1, "bogus")
    assert cat.list("pacs") == [rec(1)]


def test_standby_record_set_and_clear(cat: Catalog) -> None:
    assert cat.standby("pacs") is None
    cat.set_standby("pacs", 3, root(3))
    cat.set_standby("ris", 9, root(9))
    assert cat.standby("pacs") == StandbyRecord("pacs", 3, root(3))
    cat.set_standby("pacs", 4, root(4))
    assert cat.standby("pacs") == StandbyRecord("pacs", 4, root(4))
    cat.set_standby("pacs", None, None)                  # unknown, e.g. before a rewrite
    assert cat.standby("pacs") is None
    cat.set_standby("ris", 10, None)                     # a half-given record also means unknown
    assert cat.standby("ris") is None
    cat.set_standby("pacs", None, None)                  # clearing twice is fine
    assert cat.standby("pacs") is None


def test_acting_epoch_set_and_clear(cat: Catalog) -> None:
    assert cat.acting_epoch("pacs") is None
    cat.set_acting_epoch("pacs", 7)
    cat.set_acting_epoch("ris", 2**53)
    assert cat.acting_epoch("pacs") == 7 and cat.acting_epoch("ris") == 2**53
    cat.set_acting_epoch("pacs", 8)
    assert cat.acting_epoch("pacs") == 8
    cat.set_acting_epoch("pacs", None)
    assert cat.acting_epoch("pacs") is None and cat.acting_epoch("ris") == 2**53
    cat.set_acting_epoch("schema", 5)                    # a volume named like a meta key stays apart
    assert cat.acting_epoch("schema") == 5


def test_everything_persists_across_close_and_reopen(path: Path) -> None:
    c = Catalog(path)
    c.put(rec(1))
    c.put(rec(2, state="divergent"))
    c.put(rec(3, epoch=2, state="received"))
    c.set_state("pacs", 2, 3, "committed")
    c.set_standby("pacs", 3, root(2003))
    c.set_acting_epoch("pacs", 2)
    c.set_acting_epoch("ris", 4)
    c.set_acting_epoch("ris", None)
    c.close()
    c = Catalog(path)
    try:
        assert c.list("pacs") == [rec(1), rec(2, state="divergent"), rec(3, epoch=2)]
        assert c.standby("pacs") == StandbyRecord("pacs", 3, root(2003))
        assert c.acting_epoch("pacs") == 2 and c.acting_epoch("ris") is None
    finally:
        c.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("stored", [str(SCHEMA_VERSION + 1), "0", "one"])
def test_schema_version_mismatch_is_refused(path: Path, stored: str) -> None:
    Catalog(path).close()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (stored,))
    db.close()
    with pytest.raises(RemoteProtocolError):
        Catalog(path)
    # The refused open changed nothing: the foreign version is still there.
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (stored,)
    finally:
        db.close()


def test_concurrent_puts_from_threads(cat: Catalog) -> None:
    errors: list[BaseException] = []

    def writer(volume: str) -> None:
        try:
            for seq in range(1, 51):
                cat.put(rec(seq, volume=volume))
                cat.set_state(volume, 1, seq, "committed")
                cat.list(volume)
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(f"vol{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i in range(4):
        assert [r.seq for r in cat.list(f"vol{i}")] == list(range(1, 51))
