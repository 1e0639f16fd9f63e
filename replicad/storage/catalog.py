"""Local snapshot catalog of one site: which snapshots this site holds, in which state, and
what its standby image currently contains.

The Raft state is the cluster's truth about *committed* snapshots; this catalog is the
site's own record of what it produced or received, including snapshots that never got
committed (``local``/``received``) and the ``divergent`` branch an old primary keeps after
it was fenced (never shipped, never silently deleted). SQLite (WAL, synchronous=FULL),
one row per ``(volume, epoch, seq)``: a divergent snapshot may share its ``seq`` with a
committed snapshot of a newer epoch.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1

STATES = ("local", "received", "committed", "divergent")


@dataclass(frozen=True)
class SnapshotRecord:
    """One row: a snapshot whose manifest (``root``) and chunks this site stores."""

    volume: str
    epoch: int
    seq: int
    root: bytes
    state: str
    created_at_ns: int


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
        elif row[0] != str(SCHEMA_VERSION):
            from replicad.core.errors import RemoteProtocolError

            self._db.close()
            raise RemoteProtocolError(f"catalog {path} has schema {row[0]}, this version reads {SCHEMA_VERSION}")

    def put(self, rec: SnapshotRecord) -> None:
        """Insert or replace one record (durable when this returns)."""
        if rec.state not in STATES:
            raise ValueError(f"unknown snapshot state {rec.state!r}")
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO snapshots VALUES (?,?,?,?,?,?)",
                (rec.volume, rec.epoch, rec.seq, rec.root, rec.state, rec.created_at_ns),
            )

    def set_state(self, volume: str, epoch: int, seq: int, state: str) -> None:
        """Change the state of one record (no-op if absent); ValueError for an unknown state."""
        if state not in STATES:
            raise ValueError(f"unknown snapshot state {state!r}")
        with self._lock:
            self._db.execute("UPDATE snapshots SET state=? WHERE volume=? AND epoch=? AND seq=?",
                             (state, volume, epoch, seq))

    def list(self, volume: str, state: str | None = None) -> list[SnapshotRecord]:
        """Records of ``volume`` (optionally of one state), oldest first."""
        q = "SELECT volume, epoch, seq, root, state, created_at_ns FROM snapshots WHERE volume=?"
        args: tuple = (volume,)
        if state is not None:
            q += " AND state=?"
            args += (state,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY epoch, seq", args).fetchall()
        return [SnapshotRecord(*r) for r in rows]

    def find_root(self, volume: str, root: bytes) -> SnapshotRecord | None:
        """The record whose manifest root is ``root``, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT volume, epoch, seq, root, state, created_at_ns FROM snapshots WHERE volume=? AND root=?",
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
