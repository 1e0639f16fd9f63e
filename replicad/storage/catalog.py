"""Local snapshot catalog of one site: which snapshots this site holds, in which state, and
what its standby image currently contains.

The Raft state is the cluster's truth about *committed* snapshots; this catalog is the
site's own record of what it produced or received, including snapshots that never got
committed (``local``/``received``) and the ``divergent`` branch an old primary keeps after
it was fenced (never shipped, never silently deleted). SQLite (WAL, synchronous=FULL),
one row per ``(volume, epoch, seq)``: a divergent snapshot may share its ``seq`` with a
committed snapshot of a newer epoch.

Records are write-once (:meth:`Catalog.put`): a row is never replaced by another manifest
root (:class:`~replicad.core.errors.RecordConflictError`, logged at WARNING with both
roots), and its state only moves forward along :data:`TRANSITIONS` (a ``received`` record
never displaces a ``committed`` one). Each row also keeps ``stored_at_ns``, this site's
clock when the row was first written, so that the local floor
(:mod:`replicad.core.floor`) never measures age with a peer's timestamp alone.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from replicad.core.errors import OutOfRangeError, RecordConflictError
from replicad.core.floor import FloorRecord

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""2: ``snapshots.stored_at_ns`` added. A version-1 catalog is upgraded in place at open
(existing rows get the upgrade time: the safe direction, younger for the floor)."""

STATES = ("local", "received", "committed", "divergent")

TRANSITIONS: dict[str, frozenset[str]] = {
    "local": frozenset({"committed", "divergent"}),   # committed by Raft, or fenced before it was
    "received": frozenset({"committed"}),             # Raft lists it
    "committed": frozenset(),
    "divergent": frozenset(),
}
"""The state changes a record may take (write-once: never back, never sideways)."""

PutOutcome = Literal["inserted", "unchanged", "advanced"]


@dataclass(frozen=True)
class SnapshotRecord:
    """One row: a snapshot whose manifest (``root``) and chunks this site stores."""

    volume: str
    epoch: int
    seq: int
    root: bytes
    state: str
    created_at_ns: int
    stored_at_ns: int | None = field(default=None, compare=False)
    """This site's clock when the row was first written (set by the catalog, not compared)."""

    def floor_record(self) -> FloorRecord:
        """This record as the local floor reads it."""
        return FloorRecord(epoch=self.epoch, seq=self.seq, created_at_ns=self.created_at_ns, state=self.state,
                           root=self.root, stored_at_ns=self.stored_at_ns)


@dataclass(frozen=True)
class RestoreRecord:
    """A restore in flight: into ``target``, writing ``written`` (``target`` itself when
    ``in_place``, else a partial file renamed onto ``target`` once verified)."""

    target: str
    written: str
    in_place: bool
    started_at_ns: int


@dataclass(frozen=True)
class StandbyRecord:
    """What the standby image of ``volume`` holds: snapshot ``seq`` with manifest ``root``."""

    volume: str
    seq: int
    root: bytes


class Catalog:
    """Thread-safe local catalog in ``path`` (an SQLite file).

    Raises:
        sqlite3.Error only for a corrupt database (reported by the daemon at start).
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS snapshots (
                volume TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
                root BLOB NOT NULL, state TEXT NOT NULL, created_at_ns INTEGER NOT NULL,
                stored_at_ns INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (volume, epoch, seq));
            CREATE TABLE IF NOT EXISTS standby (
                volume TEXT PRIMARY KEY, seq INTEGER NOT NULL, root BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS restores (
                target TEXT PRIMARY KEY, written TEXT NOT NULL, in_place INTEGER NOT NULL,
                started_at_ns INTEGER NOT NULL);
            """
        )
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif row[0] == "1":
            self._upgrade_from_1()
        elif row[0] != str(SCHEMA_VERSION):
            from replicad.core.errors import RemoteProtocolError

            self._db.close()
            raise RemoteProtocolError(f"catalog {path} has schema {row[0]}, this version reads {SCHEMA_VERSION}")

    def _upgrade_from_1(self) -> None:
        now_ns = time.time_ns()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("ALTER TABLE snapshots ADD COLUMN stored_at_ns INTEGER NOT NULL DEFAULT 0")
            self._db.execute("UPDATE snapshots SET stored_at_ns=?", (now_ns,))
            self._db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        log.info("catalog upgraded to schema %d (stored_at_ns of existing records: now)", SCHEMA_VERSION)

    def put(self, rec: SnapshotRecord, *, now_ns: int | None = None) -> PutOutcome:
        """Write one record, write-once (durable when this returns).

        * no row at ``(volume, epoch, seq)``: inserted, ``stored_at_ns = now_ns`` (default:
          this site's clock now) → ``"inserted"``;
        * a row with the same root: its state moves to ``rec.state`` if :data:`TRANSITIONS`
          allows (``received`` → ``committed`` ...) → ``"advanced"``; otherwise, e.g. a
          ``received`` offer for a ``committed`` row, the row is kept as it is →
          ``"unchanged"``. Its ``created_at_ns`` and ``stored_at_ns`` never change.

        Raises:
            ValueError: unknown state.
            RecordConflictError: a row at ``(volume, epoch, seq)`` has another root; nothing
                is written and a WARNING names both roots.
            OutOfRangeError: epoch, seq or a time outside SQLite's INTEGER (signed 64 bits);
                nothing is written.
        """
        if rec.state not in STATES:
            raise ValueError(f"unknown snapshot state {rec.state!r}")
        _in_range(rec.volume, epoch=rec.epoch, seq=rec.seq, created_at_ns=rec.created_at_ns, now_ns=now_ns)
        stored_at = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT root, state FROM snapshots WHERE volume=? AND epoch=? AND seq=?",
                                       (rec.volume, rec.epoch, rec.seq)).fetchone()
                if row is None:
                    self._db.execute("INSERT INTO snapshots VALUES (?,?,?,?,?,?,?)",
                                     (rec.volume, rec.epoch, rec.seq, rec.root, rec.state, rec.created_at_ns,
                                      stored_at))
                    outcome: PutOutcome = "inserted"
                elif bytes(row[0]) != rec.root:
                    self._db.execute("ROLLBACK")
                    log.warning("REFUSED to replace snapshot record %s#%d (epoch %d, %s, root %s) with root %s "
                                "(%s): snapshot records are write-once", rec.volume, rec.seq, rec.epoch, row[1],
                                bytes(row[0]).hex(), rec.root.hex(), rec.state)
                    raise RecordConflictError(
                        f"{rec.volume}#{rec.seq} (epoch {rec.epoch}) is already held here with another manifest "
                        "root; snapshot records are write-once", volume=rec.volume, epoch=rec.epoch, seq=rec.seq,
                        held_root=bytes(row[0]), held_state=row[1], offered_root=rec.root,
                        offered_state=rec.state)
                elif rec.state != row[1] and rec.state in TRANSITIONS[row[1]]:
                    self._db.execute("UPDATE snapshots SET state=? WHERE volume=? AND epoch=? AND seq=?",
                                     (rec.state, rec.volume, rec.epoch, rec.seq))
                    outcome = "advanced"
                else:
                    if rec.state != row[1]:
                        log.info("kept snapshot record %s#%d (epoch %d) %s; offered again as %s", rec.volume,
                                 rec.seq, rec.epoch, row[1], rec.state)
                    outcome = "unchanged"
                self._db.execute("COMMIT")
            except RecordConflictError:
                raise
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return outcome

    def set_state(self, volume: str, epoch: int, seq: int, state: str) -> None:
        """Move one record to ``state`` along :data:`TRANSITIONS` (no-op if absent or already
        in that state).

        Raises:
            ValueError: unknown state.
            RecordConflictError: the change is not a forward transition (e.g. ``committed``
                back to ``received``); the record is left as it is.
        """
        _in_range(volume, epoch=epoch, seq=seq)
        if state not in STATES:
            raise ValueError(f"unknown snapshot state {state!r}")
        with self._lock:
            row = self._db.execute("SELECT state FROM snapshots WHERE volume=? AND epoch=? AND seq=?",
                                   (volume, epoch, seq)).fetchone()
            if row is None or row[0] == state:
                return
            if state not in TRANSITIONS[row[0]]:
                log.warning("REFUSED to move snapshot record %s#%d (epoch %d) from %s to %s", volume, seq, epoch,
                            row[0], state)
                raise RecordConflictError(f"{volume}#{seq} (epoch {epoch}) is {row[0]}; it cannot become {state}",
                                          volume=volume, epoch=epoch, seq=seq, held_state=row[0],
                                          offered_state=state)
            self._db.execute("UPDATE snapshots SET state=? WHERE volume=? AND epoch=? AND seq=? AND state=?",
                             (state, volume, epoch, seq, row[0]))

    def list(self, volume: str, state: str | None = None) -> list[SnapshotRecord]:
        """Records of ``volume`` (optionally of one state), oldest first."""
        q = "SELECT volume, epoch, seq, root, state, created_at_ns, stored_at_ns FROM snapshots WHERE volume=?"
        args: tuple = (volume,)
        if state is not None:
            q += " AND state=?"
            args += (state,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY epoch, seq", args).fetchall()
        return [SnapshotRecord(*r) for r in rows]

    def floor_records(self, volume: str) -> list[FloorRecord]:
        """Every record of ``volume`` (all states) as :func:`replicad.core.floor.protected`
        takes them, oldest first."""
        return [rec.floor_record() for rec in self.list(volume)]

    def find_root(self, volume: str, root: bytes) -> SnapshotRecord | None:
        """The record whose manifest root is ``root``, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT volume, epoch, seq, root, state, created_at_ns, stored_at_ns FROM snapshots "
                "WHERE volume=? AND root=?",
                (volume, root)).fetchone()
        return SnapshotRecord(*row) if row else None

    def delete(self, volume: str, epoch: int, seq: int) -> None:
        """Forget one record (retention pruning only; divergent records are never passed here)."""
        with self._lock:
            self._db.execute("DELETE FROM snapshots WHERE volume=? AND epoch=? AND seq=? AND state!='divergent'",
                             (volume, epoch, seq))

    def standby(self, volume: str) -> StandbyRecord | None:
        """What the standby image of ``volume`` holds, or None if unknown (never applied)."""
        with self._lock:
            row = self._db.execute("SELECT volume, seq, root FROM standby WHERE volume=?", (volume,)).fetchone()
        return StandbyRecord(*row) if row else None

    def set_standby(self, volume: str, seq: int | None, root: bytes | None) -> None:
        """Record the standby content; ``seq=None`` marks it unknown (e.g. before a rewrite)."""
        _in_range(volume, seq=seq)
        with self._lock:
            if seq is None or root is None:
                self._db.execute("DELETE FROM standby WHERE volume=?", (volume,))
            else:
                self._db.execute("INSERT OR REPLACE INTO standby VALUES (?,?,?)", (volume, seq, root))

    def begin_restore(self, rec: RestoreRecord) -> None:
        """Record (durably) that a restore writes ``rec.written``; a crash leaves the row for
        :meth:`restores_in_flight` at the next start."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO restores VALUES (?,?,?,?)",
                             (rec.target, rec.written, int(rec.in_place), rec.started_at_ns))

    def end_restore(self, target: str) -> None:
        """Forget the in-flight record of ``target`` (finished, failed and cleaned, or reported)."""
        with self._lock:
            self._db.execute("DELETE FROM restores WHERE target=?", (target,))

    def restores_in_flight(self) -> list[RestoreRecord]:
        """Restores that began and never ended (the site stopped in the middle), oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT target, written, in_place, started_at_ns FROM restores "
                                    "ORDER BY started_at_ns").fetchall()
        return [RestoreRecord(t, w, bool(i), n) for t, w, i, n in rows]

    def acting_epoch(self, volume: str) -> int | None:
        """The epoch under which this site last acted as primary of ``volume`` (None: not primary)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (f"acting_epoch:{volume}",)).fetchone()
        return int(row[0]) if row else None

    def set_acting_epoch(self, volume: str, epoch: int | None) -> None:
        """Persist (durably) the epoch this site acts under as primary, or None once demoted/fenced."""
        with self._lock:
            if epoch is None:
                self._db.execute("DELETE FROM meta WHERE key=?", (f"acting_epoch:{volume}",))
            else:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"acting_epoch:{volume}", str(epoch)))

    def close(self) -> None:
        with self._lock:
            self._db.close()


SQLITE_INT_MIN, SQLITE_INT_MAX = -2**63, 2**63 - 1


def _in_range(volume: str, **values: int | None) -> None:
    """OutOfRangeError unless every given int fits SQLite's INTEGER (signed 64 bits): a
    typed refusal instead of sqlite3's ``OverflowError``."""
    for name, value in values.items():
        if isinstance(value, int) and not SQLITE_INT_MIN <= value <= SQLITE_INT_MAX:
            raise OutOfRangeError(f"{volume}: {name} {value} does not fit the catalog (signed 64-bit integer)",
                                  volume=volume, field=name, value=value)
