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

**Cluster incarnations** (issue 13, item 4). Every row also names the cluster incarnation it
belongs to (the 16-byte id the Raft state's first ``found`` command fixed, see
:mod:`replicad.core.state`); the key is ``(volume, incarnation, epoch, seq)``. A cluster whose
every site lost its Raft state starts a new incarnation whose epochs and seqs restart at 1:
:meth:`Catalog.enter_incarnation` then sets every record of the old one aside as
``previous`` (its former state kept in ``prior_state``) — never shipped, never replaced,
never pruned by the new cluster's retention, still live for GC and restorable here — and the
new incarnation's records start beside them without colliding. :meth:`put`, :meth:`set_state`,
:meth:`delete` and :meth:`find_root` act on the current incarnation only; :meth:`list` returns
every record (``previous`` ones in their own state). Until the catalog knows its incarnation
(a catalog never joined to one) :meth:`put` refuses with ``UnavailableError``: a record written
before the site knows which cluster it belongs to could be filed under the wrong one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from replicad.core.errors import ConflictError, NotFoundError, OutOfRangeError, RecordConflictError, UnavailableError
from replicad.core.floor import FloorRecord

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
"""2: ``snapshots.stored_at_ns`` added. A version-1 catalog is upgraded in place at open
(existing rows get the upgrade time: the safe direction, younger for the floor).
3: ``snapshots.incarnation`` (part of the key) and ``prior_state``; rows of an older catalog get
the empty incarnation ``b""`` ("before incarnations were recorded") until
:meth:`Catalog.enter_incarnation` adopts or sets them aside."""

LEGACY_INCARNATION = b""
"""The incarnation of rows written before catalogs recorded one (schema < 3)."""

STATES = ("local", "received", "committed", "divergent", "previous")

TRANSITIONS: dict[str, frozenset[str]] = {
    "local": frozenset({"committed", "divergent"}),   # committed by Raft, or fenced before it was
    "received": frozenset({"committed"}),             # Raft lists it
    "committed": frozenset(),
    "divergent": frozenset(),
    "previous": frozenset(),   # a previous cluster incarnation's record (set aside by enter_incarnation only)
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
    incarnation: bytes = field(default=b"", compare=False)
    """The cluster incarnation of the record (set by the catalog from its current one)."""
    prior_state: str | None = field(default=None, compare=False)
    """For a ``previous`` record: the state it had in its own incarnation."""

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

    Args:
        path: the SQLite file (created if absent).
        require_incarnation: refuse :meth:`put` (``UnavailableError``) while the catalog has
            not entered a cluster incarnation (:meth:`enter_incarnation`); the daemon sets it.
            Without it, records of a catalog that never entered one are filed under
            :data:`LEGACY_INCARNATION`.

    Raises:
        sqlite3.Error only for a corrupt database (reported by the daemon at start).
    """

    def __init__(self, path: Path, *, require_incarnation: bool = False) -> None:
        self._require_incarnation = require_incarnation
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
                incarnation BLOB NOT NULL DEFAULT x'', prior_state TEXT,
                PRIMARY KEY (volume, incarnation, epoch, seq));
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
            self._upgrade_from_2()
        elif row[0] == "2":
            self._upgrade_from_2()
        elif row[0] != str(SCHEMA_VERSION):
            from replicad.core.errors import RemoteProtocolError

            self._db.close()
            raise RemoteProtocolError(f"catalog {path} has schema {row[0]}, this version reads {SCHEMA_VERSION}")
        inc = self._db.execute("SELECT value FROM meta WHERE key='incarnation'").fetchone()
        self._incarnation: bytes | None = bytes.fromhex(inc[0]) if inc else None

    def _upgrade_from_2(self) -> None:
        """Schema 2 -> 3: the key gains ``incarnation`` (a table rebuild; rows keep every value,
        incarnation :data:`LEGACY_INCARNATION`)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("ALTER TABLE snapshots RENAME TO snapshots_v2")
            self._db.execute("""CREATE TABLE snapshots (
                volume TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
                root BLOB NOT NULL, state TEXT NOT NULL, created_at_ns INTEGER NOT NULL,
                stored_at_ns INTEGER NOT NULL DEFAULT 0,
                incarnation BLOB NOT NULL DEFAULT x'', prior_state TEXT,
                PRIMARY KEY (volume, incarnation, epoch, seq))""")
            self._db.execute("INSERT INTO snapshots (volume, epoch, seq, root, state, created_at_ns, stored_at_ns) "
                             "SELECT volume, epoch, seq, root, state, created_at_ns, stored_at_ns FROM snapshots_v2")
            self._db.execute("DROP TABLE snapshots_v2")
            self._db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        log.info("catalog upgraded to schema %d (records keyed by cluster incarnation)", SCHEMA_VERSION)

    def _upgrade_from_1(self) -> None:
        now_ns = time.time_ns()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("ALTER TABLE snapshots ADD COLUMN stored_at_ns INTEGER NOT NULL DEFAULT 0")
            self._db.execute("UPDATE snapshots SET stored_at_ns=?", (now_ns,))
            self._db.execute("UPDATE meta SET value='2' WHERE key='schema'")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        log.info("catalog upgraded to schema 2 (stored_at_ns of existing records: now)")

    def put(self, rec: SnapshotRecord, *, now_ns: int | None = None, incarnation: bytes | None = None) -> PutOutcome:
        """Write one record, write-once (durable when this returns), under the current
        incarnation, or under ``incarnation`` when given (the capture of a live image a site
        takes as it leaves that incarnation, before :meth:`enter_incarnation`).

        * no row at ``(volume, epoch, seq)``: inserted, ``stored_at_ns = now_ns`` (default:
          this site's clock now) → ``"inserted"``;
        * a row with the same root: its state moves to ``rec.state`` if :data:`TRANSITIONS`
          allows (``received`` → ``committed`` ...) → ``"advanced"``; otherwise, e.g. a
          ``received`` offer for a ``committed`` row, the row is kept as it is →
          ``"unchanged"``. Its ``created_at_ns`` and ``stored_at_ns`` never change.

        Raises:
            ValueError: unknown state (or ``previous``), an incarnation that is not 16 bytes.
            UnavailableError: the catalog requires an incarnation and has entered none.
            RecordConflictError: a row at ``(volume, epoch, seq)`` has another root; nothing
                is written and a WARNING names both roots.
            OutOfRangeError: epoch, seq or a time outside SQLite's INTEGER (signed 64 bits);
                nothing is written.
        """
        if rec.state not in STATES or rec.state == "previous":
            raise ValueError(f"unknown snapshot state {rec.state!r} (previous: only enter_incarnation sets it)")
        if incarnation is not None and incarnation != LEGACY_INCARNATION and len(incarnation) != 16:
            raise ValueError("a cluster incarnation is 16 bytes")
        _in_range(rec.volume, epoch=rec.epoch, seq=rec.seq, created_at_ns=rec.created_at_ns, now_ns=now_ns)
        stored_at = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            inc = self._current() if incarnation is None else incarnation
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT root, state FROM snapshots WHERE volume=? AND incarnation=? AND "
                                       "epoch=? AND seq=?", (rec.volume, inc, rec.epoch, rec.seq)).fetchone()
                if row is None:
                    self._db.execute("INSERT INTO snapshots (volume, epoch, seq, root, state, created_at_ns, "
                                     "stored_at_ns, incarnation) VALUES (?,?,?,?,?,?,?,?)",
                                     (rec.volume, rec.epoch, rec.seq, rec.root, rec.state, rec.created_at_ns,
                                      stored_at, inc))
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
                    self._db.execute("UPDATE snapshots SET state=? WHERE volume=? AND incarnation=? AND epoch=? AND "
                                     "seq=?", (rec.state, rec.volume, inc, rec.epoch, rec.seq))
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
        if state == "previous":
            raise ValueError("previous: only enter_incarnation sets it")
        with self._lock:
            inc = self._incarnation or LEGACY_INCARNATION
            row = self._db.execute("SELECT state FROM snapshots WHERE volume=? AND incarnation=? AND epoch=? AND seq=?",
                                   (volume, inc, epoch, seq)).fetchone()
            if row is None or row[0] == state:
                return
            if state not in TRANSITIONS[row[0]]:
                log.warning("REFUSED to move snapshot record %s#%d (epoch %d) from %s to %s", volume, seq, epoch,
                            row[0], state)
                raise RecordConflictError(f"{volume}#{seq} (epoch {epoch}) is {row[0]}; it cannot become {state}",
                                          volume=volume, epoch=epoch, seq=seq, held_state=row[0],
                                          offered_state=state)
            self._db.execute("UPDATE snapshots SET state=? WHERE volume=? AND incarnation=? AND epoch=? AND seq=? "
                             "AND state=?", (state, volume, inc, epoch, seq, row[0]))

    def list(self, volume: str, state: str | None = None) -> list[SnapshotRecord]:
        """Records of ``volume`` (optionally of one state), every incarnation's (the
        ``previous`` ones in that state), oldest first: previous incarnations before the current
        one (by the time this site set them aside), then by epoch and seq."""
        q = (f"SELECT {_COLUMNS} FROM snapshots LEFT JOIN meta ON meta.key = 'set_aside:' || hex(incarnation) "
             "WHERE volume=?")
        args: tuple = (volume,)
        if state is not None:
            q += " AND state=?"
            args += (state,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY state != 'previous', CAST(meta.value AS INTEGER), epoch, seq",
                                    args).fetchall()
        return [SnapshotRecord(*r) for r in rows]

    def floor_records(self, volume: str) -> list[FloorRecord]:
        """Every record of ``volume`` (all states) as :func:`replicad.core.floor.protected`
        takes them, oldest first."""
        return [rec.floor_record() for rec in self.list(volume)]

    def find_root(self, volume: str, root: bytes) -> SnapshotRecord | None:
        """The current incarnation's record whose manifest root is ``root``, if any."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE volume=? AND root=? AND incarnation=? "
                                   "AND state != 'previous'",
                                   (volume, root, self._incarnation or LEGACY_INCARNATION)).fetchone()
        return SnapshotRecord(*row) if row else None

    def delete(self, volume: str, epoch: int, seq: int) -> None:
        """Forget one record of the current incarnation (retention pruning only; divergent and
        previous records are never deleted here)."""
        with self._lock:
            self._db.execute("DELETE FROM snapshots WHERE volume=? AND incarnation=? AND epoch=? AND seq=? "
                             "AND state NOT IN ('divergent', 'previous')",
                             (volume, self._incarnation or LEGACY_INCARNATION, epoch, seq))

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

    # ------------------------------------------------------------------ incarnations
    def _current(self) -> bytes:
        """The incarnation new records are filed under (lock held). UnavailableError while a
        catalog that requires one has not entered any."""
        if self._incarnation is None:
            if self._require_incarnation:
                raise UnavailableError("this site has not yet learned which cluster incarnation it belongs to (the "
                                       "Raft state's found command): no snapshot record is written before",
                                       reason="incarnation_unknown")
            return LEGACY_INCARNATION
        return self._incarnation

    def incarnation(self) -> bytes | None:
        """The cluster incarnation this catalog's current records belong to (None: never entered one)."""
        with self._lock:
            return self._incarnation

    def legacy_records(self) -> list[SnapshotRecord]:
        """Records filed before this catalog knew any incarnation (:data:`LEGACY_INCARNATION`)
        that are not yet set aside, every volume, oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE incarnation=x'' AND state != 'previous' "
                                    "ORDER BY volume, epoch, seq").fetchall()
        return [SnapshotRecord(*r) for r in rows]

    def enter_incarnation(self, incarnation: bytes, *, adopt_legacy: bool = False,
                          now_ns: int | None = None) -> dict[str, int]:
        """Make ``incarnation`` (16 bytes, the Raft state's) the current one, durably, in one
        transaction. Every record of another incarnation that is not yet ``previous`` becomes
        ``previous`` (``prior_state`` keeps what it was), and every acting epoch is forgotten
        (they were epochs of the other incarnation). Records filed before any incarnation
        (:data:`LEGACY_INCARNATION`) are taken into ``incarnation`` instead when
        ``adopt_legacy`` (the caller checked they agree with the Raft state: an upgrade, not a
        reset). Entering the current incarnation again changes nothing.

        Returns ``{volume: records set aside}`` (empty when nothing was).

        Raises:
            ValueError: ``incarnation`` is not 16 bytes.
        """
        if not isinstance(incarnation, bytes) or len(incarnation) != 16:
            raise ValueError("a cluster incarnation is 16 bytes")
        stamp = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            if self._incarnation == incarnation:
                return {}
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if adopt_legacy:
                    self._db.execute("UPDATE snapshots SET incarnation=? WHERE incarnation=x'' AND state!='previous'",
                                     (incarnation,))
                rows = self._db.execute("SELECT volume, hex(incarnation), count(*) FROM snapshots WHERE incarnation!=? "
                                        "AND state!='previous' GROUP BY volume, incarnation",
                                        (incarnation,)).fetchall()
                for _, inc_hex, _ in rows:
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (f"set_aside:{inc_hex}", str(stamp)))
                self._db.execute("UPDATE snapshots SET prior_state=state, state='previous' WHERE incarnation!=? AND "
                                 "state!='previous'", (incarnation,))
                if self._incarnation is not None or not adopt_legacy:
                    self._db.execute("DELETE FROM meta WHERE key LIKE 'acting_epoch:%'")
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('incarnation', ?)", (incarnation.hex(),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._incarnation = incarnation
        set_aside: dict[str, int] = {}
        for volume, _, n in rows:
            set_aside[volume] = set_aside.get(volume, 0) + n
        return set_aside

    def previous(self, volume: str, incarnation: str | None = None, epoch: int | None = None,
                 seq: int | None = None) -> list[SnapshotRecord]:
        """``volume``'s records of previous cluster incarnations, oldest first (incarnations in
        the order this site set them aside), optionally narrowed to incarnations whose hex id
        starts with ``incarnation`` and to ``epoch``/``seq``."""
        out = [r for r in self.list(volume, "previous")
               if (incarnation is None or r.incarnation.hex().startswith(incarnation.lower()))
               and (epoch is None or r.epoch == epoch) and (seq is None or r.seq == seq)]
        return out

    def find_previous(self, volume: str, incarnation: str | None = None, epoch: int | None = None,
                      seq: int | None = None) -> SnapshotRecord:
        """The one previous-incarnation record of ``volume`` these arguments name; without
        ``epoch`` and ``seq``, the newest (highest epoch, then seq) of the one incarnation that
        matches: the newest old snapshot, which may be a capture of the live image this site
        took when it left that incarnation as its primary.

        Raises:
            NotFoundError: no such record here.
            ConflictError: the arguments name records of several incarnations (name one with
                ``incarnation``, a prefix of its hex id as ``snapshots`` lists it) or several
                records (name ``epoch`` and ``seq``); evidence lists the candidates.
        """
        recs = self.previous(volume, incarnation, epoch, seq)
        if not recs:
            raise NotFoundError(f"no record of a previous cluster incarnation of {volume} matches (incarnation "
                                f"{incarnation or 'any'}, epoch {epoch if epoch is not None else 'any'}, seq "
                                f"{seq if seq is not None else 'any'}) at this site", volume=volume,
                                incarnation=incarnation, epoch=epoch, seq=seq)
        incs = list(dict.fromkeys(r.incarnation.hex() for r in recs))
        if len(incs) > 1:
            raise ConflictError(f"{volume}: records of {len(incs)} previous cluster incarnations match; name one with "
                                "--incarnation (a prefix of its id, as 'replicad snapshots' lists it)", volume=volume,
                                incarnations=incs)
        if (epoch is None) != (seq is None) and len(recs) > 1:
            raise ConflictError(f"{volume}: {len(recs)} previous records match; name both epoch and seq",
                                volume=volume, candidates=[f"{r.epoch}:{r.seq}" for r in recs][-20:])
        return max(recs, key=lambda r: (r.epoch, r.seq))

    def membership(self) -> list[dict] | None:
        """The cluster membership this site last saw agreed in its Raft state (a copy the daemon
        keeps, :meth:`set_membership`), or None if it never saw one."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='membership'").fetchone()
        return json.loads(row[0]) if row else None

    def set_membership(self, members: list[dict]) -> None:
        """Keep (durably) a copy of the membership agreed in the Raft state: ``[{"site_id",
        "raft", "kind", "keys"}]``."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('membership', ?)",
                             (json.dumps(members, sort_keys=True),))

    def close(self) -> None:
        with self._lock:
            self._db.close()


_COLUMNS = ("snapshots.volume, epoch, seq, root, state, created_at_ns, stored_at_ns, incarnation, prior_state")


SQLITE_INT_MIN, SQLITE_INT_MAX = -2**63, 2**63 - 1


def _in_range(volume: str, **values: int | None) -> None:
    """OutOfRangeError unless every given int fits SQLite's INTEGER (signed 64 bits): a
    typed refusal instead of sqlite3's ``OverflowError``."""
    for name, value in values.items():
        if isinstance(value, int) and not SQLITE_INT_MIN <= value <= SQLITE_INT_MAX:
            raise OutOfRangeError(f"{volume}: {name} {value} does not fit the catalog (signed 64-bit integer)",
                                  volume=volume, field=name, value=value)
