"""pysyncobj's journal replaced by a durable one (O6): point 2 of :mod:`replicad.consensus.raft`.

pysyncobj's ``FileJournal`` appends through an mmap that is never msync'ed, and its meta
file (currentTerm, votedFor) is written without fsync. :func:`_create_journal` (installed as
``pysyncobj.syncobj.createJournal`` by :func:`replicad.consensus.raft.install_hardening`)
builds a :class:`DurableJournal` instead: a plain append-only file of CRC-checked records where
``add()`` writes and ``fdatasync``s before returning.

What the file may look like after a fault, and what opening it does (issue 13):

* **A torn tail** (a crash or a full disk during an append: a bad record followed by no valid
  record): that append never returned, so it was never acknowledged. It is dropped, logged,
  and its bytes are kept aside in ``<journal>.torn-<offset>`` for forensics. If the bad
  record is *complete* (its length fits the file; only its CRC fails) it may be a damaged
  entry this node acknowledged: the node then rejoins as below (votes for nobody until it
  caught up with a leader), since with one more site down the other two may both lack it.
* **Damage before the tail** (a bad record followed by valid ones: a flipped bit, a lost
  sector): dropping the tail there would drop acknowledged entries. Opening raises
  :class:`~replicad.core.errors.JournalDamagedError` naming the file and offset, and changes
  nothing on disk. The operator moves the journal aside (README, "Raft journal damaged").
* **A full disk** (ENOSPC/EDQUOT): a short write is completed or undone (the file is cut back
  to the end of the last acknowledged record and synced), never skipped over, so no torn
  record ever sits in front of a later valid one. The append raises
  :class:`~replicad.core.errors.StoreFullError`; :attr:`DurableJournal.write_error` keeps it
  until an append succeeds again (the hardened node refuses proposals with it and leaves the
  leadership: :mod:`replicad.consensus.raft`). Any other write or sync failure (EIO: after a
  failed fsync the page cache can no longer be trusted) poisons the journal: every further
  mutation raises ``InternalError`` until the site restarts and re-reads the file.
* **A journal moved aside** (or lost) while its meta file or the dump remain: the node lost
  entries it may have acknowledged. It rejoins as a follower that **votes for nobody** (no
  vote, no pre-vote, no candidacy) until it has caught up with a leader's commit index
  (:attr:`DurableJournal.rejoining`, stored in the meta file so a restart keeps it). Without
  this an empty log could give the vote that elects a candidate lacking committed entries.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import blake3
import pysyncobj.journal
from pysyncobj.journal import Journal

from replicad.core import errors
from replicad.storage.durable import fsync_dir, write_durably

log = logging.getLogger("replicad.consensus.raft")  # the journal logs as part of the Raft adapter

JOURNAL_MAGIC = b"REPLICAD-RAFTLOG"
JOURNAL_VERSION = 1
META_VERSION = 2
"""The meta file's format: 2 carries ``sum`` (:func:`meta_sum`); 1 (before) had no checksum."""
META_LEGACY_VERSION = 1
META_DOMAIN = b"replicad-raft-meta-v2\x00"


def meta_sum(meta: dict) -> str:
    """The checksum of a meta document: hex BLAKE3-256 of :data:`META_DOMAIN` + its JSON
    without ``sum`` (keys sorted, ``json.dumps`` defaults). Computed over the parsed *values*:
    any change of a key or value (a flipped bit in ``votedForNodeId`` or ``currentTerm``)
    changes it; a change that parses to the same values changes nothing that is read.

    Raises ``TypeError``/``ValueError`` for a value JSON cannot encode.
    """
    body = {k: v for k, v in meta.items() if k != "sum"}
    return blake3.blake3(META_DOMAIN + json.dumps(body, sort_keys=True).encode()).hexdigest()


def encode_meta(meta: dict) -> bytes:
    """The bytes of the meta file for ``meta`` (format :data:`META_VERSION`, with ``sum``)."""
    doc = {**{k: v for k, v in meta.items() if k != "sum"}, "v": META_VERSION}
    return json.dumps({**doc, "sum": meta_sum(doc)}, sort_keys=True).encode()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """``pwrite`` all of ``data`` at ``offset``; a short write is continued (the next call
    then reports the real error, e.g. ENOSPC). Raises OSError; never returns short."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.ENOSPC, "short write", None)
        done += n


def _truncate_synced(path: Path, size: int) -> None:
    """Cut ``path`` to ``size`` bytes and fsync it. Raises OSError."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


_RECORD_HEAD = struct.Struct("<II")  # payload length, crc32 of the payload
_PAYLOAD_HEAD = struct.Struct("<QQ")  # idx, term
FREE_TO_RESUME_BYTES = 256 * 1024
"""Free space at which a journal that ran full is tried again (a record is at most ~80 KiB)."""
META_LOG_EVERY_S = 300.0
"""A lazy store of the meta file (the commit index, once a second) that keeps failing with the
same error is logged at its first failure, then at most once per this many seconds with how many
failed since; a recovery is logged once."""
DUMP_NAME = "raft.dump"  # RaftNode's dump beside the journal: its presence proves a past life


def _record_at(data: bytes, offset: int) -> tuple[int, int, bytes] | None:
    """The ``(idx, term, command)`` of the well-formed record at byte ``offset``, else None."""
    if offset + 8 > len(data):
        return None
    length, crc = _RECORD_HEAD.unpack_from(data, offset)
    if length < 16 or offset + 8 + length > len(data):
        return None
    payload = data[offset + 8:offset + 8 + length]
    if zlib.crc32(payload) != crc:
        return None
    idx, term = _PAYLOAD_HEAD.unpack_from(payload)
    return idx, term, bytes(payload[16:])


def _valid_run_after(data: bytes, start: int, min_idx: int) -> tuple[int, int, int] | None:
    """The first well-formed record at or after byte ``start`` whose idx is ``>= min_idx``,
    as ``(offset, idx, records in the chain it starts)``; None if there is none (a torn tail).

    Every byte offset is tried (a damaged length field hides where the next record starts);
    a random match needs a plausible length, a CRC-32 hit and an idx beyond the last good one.
    O(file size) Python steps: only run once damage was found.
    """
    end = len(data) - 8 - 16
    for offset in range(start, end + 1):
        (length,) = struct.unpack_from("<I", data, offset)
        if length < 16 or offset + 8 + length > len(data):
            continue
        record = _record_at(data, offset)
        if record is None or record[0] < min_idx:
            continue
        count, at = 0, offset
        while (rec := _record_at(data, at)) is not None:
            count += 1
            at += 8 + 16 + len(rec[2])
        return offset, record[0], count
    return None


class DurableJournal(Journal):
    """pysyncobj ``Journal`` whose every mutation is on disk before it returns (O6).

    File: ``JOURNAL_MAGIC`` + ``<I version``, then records ``<I payload_len`` ``<I crc32``
    ``payload`` with payload ``<QQ idx term`` + command bytes. Meta (``<file>.meta``):
    JSON ``{v: 2, currentTerm, votedForNodeId, raftCommitIndex, rejoin?, sum}`` with ``rejoin``
    ``{reason, commit_index, since_ns}`` while the node rejoins after losing its journal and
    ``sum`` the hex BLAKE3 of the rest (:func:`meta_sum`), written tmp + fsync + rename +
    directory fsync. A meta file of format 1 (no ``sum``, this site's own from before the
    upgrade) is accepted once, logged at WARNING, and rewritten with its checksum.

    Raises (at open):
        errors.RemoteProtocolError: the file carries another magic or version (a meta file
            whose checksum holds but whose version is unknown: written by a newer version).
        errors.JournalDamagedError: a damaged record is followed by valid ones (see the
            module docstring), or the meta file is damaged (not JSON, checksum mismatch,
            format 2 without ``sum``); nothing was changed on disk.
        errors.StoreFullError / errors.InternalError: the directory cannot be written.
    """

    _HEADER = JOURNAL_MAGIC + struct.pack("<I", JOURNAL_VERSION)

    def __init__(self, journal_file: str) -> None:
        self._path = Path(journal_file)
        self._meta_path = self._path.with_name(self._path.name + ".meta")
        for leftover in (self._path, self._meta_path):  # a crash inside write_durably: never renamed, never read
            leftover.with_name(leftover.name + ".tmp").unlink(missing_ok=True)
        self._entries: list[tuple[bytes, int, int]] = []
        self._offsets: list[int] = []
        self._fd = -1
        self._broken: str | None = None
        self.write_error: errors.ReplicadError | None = None
        self._probed_at = float("-inf")
        """The last append/meta write that failed for lack of space (StoreFullError), until one succeeds."""
        self._lazy_failures = 0  # lazy meta stores failed in a row (onOneSecondTimer)
        self._lazy_logged: tuple[float, str, int] | None = None  # (when, text, failures then) of its last line
        meta_missing = not self._meta_path.exists()
        self._meta = self._load_meta()
        self._meta_dirty = False
        if not self._path.exists():
            self._guarded(lambda: self._start_fresh(), "creating the raft journal")
        self._fd = os.open(self._path, os.O_RDWR)
        self._end = self._load_records()
        if meta_missing and self._entries and "rejoin" not in self._meta:
            # The meta file (term, vote) is gone but the log holds entries: this node voted or
            # followed a leader before, and may have voted in the term it would now vote in
            # again. Vote for nobody until caught up (README "Raft journal damaged": a damaged
            # meta file is moved aside).
            last_idx = self._entries[-1][1]
            self._meta["rejoin"] = {"reason": "meta file missing", "commit_index": last_idx,
                                    "since_ns": time.time_ns()}
            log.warning("raft meta file %s is missing but the journal holds entries up to idx %d: its term and "
                        "vote are lost; rejoining as a follower that votes for nobody until it has caught up with "
                        "a leader", self._meta_path, last_idx)
            self._store_meta()

    def _start_fresh(self) -> None:
        past_life = self._meta.get("currentTerm", 0) > 0 or self._path.with_name(DUMP_NAME).exists()
        if past_life and "rejoin" not in self._meta:
            # The journal is gone but this node voted or held state before: it may have
            # acknowledged entries it no longer has. Vote for nobody until caught up.
            self._meta["rejoin"] = {"reason": "journal missing", "commit_index": self._meta.get("raftCommitIndex", 0),
                                    "since_ns": time.time_ns()}
            log.warning("raft journal %s is missing but this node has a past (term %s%s): rejoining as a follower "
                        "that votes for nobody until it has caught up with a leader", self._path,
                        self._meta.get("currentTerm", 0),
                        ", a dump" if self._path.with_name(DUMP_NAME).exists() else "")
            self._store_meta()
        write_durably(self._path, self._HEADER)

    def _meta_damaged(self, why: str, **evidence: Any) -> errors.JournalDamagedError:
        return errors.JournalDamagedError(
            f"raft meta file {self._meta_path} is damaged ({why}): it holds this node's term and vote, and "
            "running from a wrong one could give a second vote in a term. The site refuses to start; nothing was "
            "changed. Keep the file for analysis, move raft.journal.meta aside (keep raft.journal and raft.dump) "
            "and start the site: it rejoins as a follower that votes for nobody until it has caught up from the "
            "majority (README, \"Raft journal damaged\").",
            path=str(self._meta_path), problem=why,
            action="move raft.journal.meta aside and restart: README, Raft journal damaged",
            **evidence)

    def _load_meta(self) -> dict:
        """Read the meta file; see the class docstring. Raises JournalDamagedError,
        RemoteProtocolError (a newer format), InternalError (unreadable)."""
        try:
            data = self._meta_path.read_bytes()
        except FileNotFoundError:
            return {"v": META_VERSION}
        except OSError as exc:
            raise errors.from_os_error(exc, f"reading the raft meta file ({self._meta_path})") from exc
        try:
            meta = json.loads(data)
        except ValueError as exc:  # UnicodeDecodeError included
            raise self._meta_damaged(f"not valid JSON: {str(exc)[:120]}", size_bytes=len(data)) from None
        if not isinstance(meta, dict):
            raise self._meta_damaged(f"a JSON {type(meta).__name__}, not an object", size_bytes=len(data))
        if "sum" in meta:
            try:
                expected = meta_sum(meta)
            except (TypeError, ValueError) as exc:
                raise self._meta_damaged(f"cannot be checksummed: {exc}") from None
            if meta["sum"] != expected:
                raise self._meta_damaged("its checksum does not match its content", recorded=str(meta["sum"])[:16],
                                         computed=expected[:16])
            if meta.get("v") != META_VERSION:
                raise errors.RemoteProtocolError("raft meta file has an unknown version (written by a newer "
                                                 "version of replicad?)", path=str(self._meta_path),
                                                 version=str(meta.get("v"))[:16])
            del meta["sum"]
            return meta
        if meta.get("v") != META_LEGACY_VERSION or isinstance(meta.get("v"), bool):
            raise self._meta_damaged(f"no checksum, and version {str(meta.get('v'))[:16]!r} is not the previous "
                                     f"format ({META_LEGACY_VERSION})")
        log.warning("raft meta file %s has the previous format (%d, no checksum; written before this version): "
                    "accepting it once (term %s, vote %s) and rewriting it with a checksum", self._meta_path,
                    META_LEGACY_VERSION, meta.get("currentTerm"), meta.get("votedForNodeId"))
        meta["v"] = META_VERSION
        try:
            write_durably(self._meta_path, encode_meta(meta))
        except OSError as exc:  # the next term change or commit-index store writes it again
            log.warning("raft meta file %s not rewritten with a checksum yet: %s", self._meta_path, exc)
        return meta

    def _load_records(self) -> int:
        data = self._path.read_bytes()
        if data[:len(self._HEADER)] != self._HEADER:
            raise errors.RemoteProtocolError("raft journal has an unknown format or version",
                                             path=str(self._path), header=data[:len(self._HEADER)])
        offset = len(self._HEADER)
        while (record := _record_at(data, offset)) is not None:
            idx, term, command = record
            self._entries.append((command, idx, term))
            self._offsets.append(offset)
            offset += 8 + 16 + len(command)
        if offset == len(data):
            return offset
        last_idx = self._entries[-1][1] if self._entries else None
        later = _valid_run_after(data, offset + 1, 1 if last_idx is None else last_idx + 1)
        if later is not None:
            next_offset, next_idx, count = later
            raise errors.JournalDamagedError(
                f"raft journal {self._path} is damaged at byte {offset} (record {len(self._entries)}, after idx "
                f"{last_idx}): {count} valid record(s) follow it (from byte {next_offset}, idx {next_idx}), so it "
                "is not a torn tail and dropping it would drop acknowledged entries. The site refuses to start; "
                "nothing was changed. Keep the file for analysis, move it aside (keep raft.journal.meta and "
                "raft.dump) and start the site: it rejoins as a follower that votes for nobody until it has "
                "caught up from the majority (README, \"Raft journal damaged\").",
                path=str(self._path), offset=offset, record=len(self._entries), last_good_idx=last_idx,
                next_valid_offset=next_offset, next_valid_idx=next_idx, valid_records_after=count,
                size_bytes=len(data), action="move the journal aside and restart: README, Raft journal damaged")
        self._drop_torn_tail(data, offset)
        return offset

    def _drop_torn_tail(self, data: bytes, offset: int) -> None:
        """Keep the torn tail's bytes aside (best effort), then cut the file there, synced."""
        tail = data[offset:]
        complete = len(tail) >= 8 and 16 <= _RECORD_HEAD.unpack_from(tail)[0] == len(tail) - 8
        aside = self._path.with_name(f"{self._path.name}.torn-{offset}")
        try:
            write_durably(aside, tail)
        except OSError as exc:
            aside = None
            log.error("raft journal %s: cannot keep the torn tail aside (%s)", self._path, exc)
        # A complete record with a bad CRC is either a write cut by a crash after the file's
        # size reached the disk but before all its data did (never acknowledged), or damage of
        # the last record. Nothing follows it either way: the majority holds it if it was
        # committed. Say which it looks like.
        (log.error if complete else log.warning)(
            "raft journal %s: dropping %d bytes of torn tail at byte %d (%s; kept in %s)", self._path, len(tail),
            offset, "a complete record failing its CRC: a write cut by a crash, or damage of the last record"
            if complete else "an incomplete record: an append cut by a crash or a full disk, never acknowledged",
            aside)
        self._guarded(lambda: _truncate_synced(self._path, offset), "cutting the torn tail")
        if complete and "rejoin" not in self._meta:
            # A complete record may be an entry this node acknowledged (damage, not a cut
            # append). With one more site down, the two left may both lack it: this node must
            # not vote until a leader's commit index shows what the majority holds
            # (chaos/raftjepsen.py, fault journal-tail-minority, lost an acknowledged entry).
            last_idx = self._entries[-1][1] if self._entries else 0
            self._meta["rejoin"] = {"reason": f"damaged last record after idx {last_idx}",
                                    "commit_index": max(self._meta.get("raftCommitIndex", 0), last_idx + 1),
                                    "since_ns": time.time_ns()}
            log.warning("raft journal %s: the dropped record may have been acknowledged: rejoining as a follower "
                        "that votes for nobody until it has caught up with a leader", self._path)
            self._store_meta()

    # -- failures
    def _guarded(self, action: Any, what: str, path: Path | None = None, **evidence: Any) -> Any:
        """Run a mutation of the file ``path`` (default: the journal; the meta file names its
        own); translate OSError into the error tree (ENOSPC → StoreFullError), naming ``path``
        in the message and as evidence ``path``."""
        if self._broken is not None:
            raise errors.InternalError(f"raft journal {self._path} is unusable after a failed write; restart the "
                                       "site (it re-reads the file)", path=str(self._path), detail=self._broken)
        path = self._path if path is None else path
        try:
            result = action()
        except OSError as exc:
            err = errors.from_os_error(exc, f"{what} ({path})", **{"path": str(path), **evidence})
            if isinstance(err, errors.StoreFullError):
                self.write_error = err
            raise err from exc
        return result

    def _append_undoable(self, record: bytes) -> None:
        """Write ``record`` at the end and sync; on any failure cut the file back to the
        last acknowledged record and sync, or poison the journal if even that fails."""
        try:
            _pwrite_all(self._fd, record, self._end)
            os.fdatasync(self._fd)  # O6: durable before pysyncobj acknowledges it
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            try:
                os.ftruncate(self._fd, self._end)
                os.fdatasync(self._fd)
            except OSError as undo:
                full = False
                exc.add_note(f"undo failed: {undo}")
            if not full:
                # EIO & co.: after a failed fsync the page cache is not evidence of the disk.
                self._broken = f"{type(exc).__name__}: {exc}"
                log.error("raft journal %s: append failed (%s); refusing every further write until the site "
                          "restarts", self._path, self._broken)
            raise

    # -- records
    def add(self, command: bytes | str, idx: int, term: int) -> None:
        """Append entry ``(command, idx, term)``, durable (fdatasync) before returning (O6).

        Raises:
            errors.StoreFullError: no space (the file is as before the call; retry later).
            errors.InternalError: another write failure; the journal refuses writes until restart.
        """
        command = command if isinstance(command, bytes) else bytes(command, "utf-8")
        payload = _PAYLOAD_HEAD.pack(idx, term) + command
        record = _RECORD_HEAD.pack(len(payload), zlib.crc32(payload)) + payload
        self._guarded(lambda: self._append_undoable(record), "appending a raft entry", idx=idx, term=term)
        self.write_error = None
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)

    def clear(self) -> None:
        self._rewrite([])

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        end = self._offsets[entryFrom]

        def cut() -> None:
            try:
                os.ftruncate(self._fd, end)
                os.fdatasync(self._fd)
            except OSError as exc:
                self._broken = f"{type(exc).__name__}: {exc}"
                raise
        self._guarded(cut, "truncating the raft journal", entry_from=entryFrom)
        self._end = end
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]

    def deleteEntriesTo(self, entryTo: int) -> None:
        self._rewrite(self._entries[entryTo:])

    def _rewrite(self, entries: list[tuple[bytes, int, int]]) -> None:
        chunks = [self._HEADER]
        offsets = []
        end = len(self._HEADER)
        for command, idx, term in entries:
            payload = _PAYLOAD_HEAD.pack(idx, term) + command
            offsets.append(end)
            chunks.append(_RECORD_HEAD.pack(len(payload), zlib.crc32(payload)) + payload)
            end += len(chunks[-1])

        def rewrite() -> int:
            # Persist any rename done just before (pysyncobj renames the full dump into place
            # and then compacts the log): the dump must be durable before the log shrinks.
            fsync_dir(self._path.parent)
            write_durably(self._path, b"".join(chunks))  # the old file stays whole if this fails
            return os.open(self._path, os.O_RDWR)
        fd = self._guarded(rewrite, "rewriting the raft journal")
        os.close(self._fd)
        self._fd = fd
        self._entries = list(entries)
        self._offsets = offsets
        self._end = end

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def flush(self) -> None:
        self._guarded(lambda: os.fdatasync(self._fd), "syncing the raft journal")

    def _destroy(self) -> None:
        if self._meta_dirty:
            try:
                self._store_meta()
            except errors.ReplicadError as err:  # the commit index is volatile: losing it is harmless
                log.warning("raft journal meta not stored at close: %s", err)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def still_full(self) -> errors.ReplicadError | None:
        """:attr:`write_error` while the journal's file system still has less than
        :data:`FREE_TO_RESUME_BYTES` available, else None (and the error is forgotten).

        Probes ``statvfs`` at most once a second (cheap enough for every proposal).
        """
        err = self.write_error
        if err is None:
            return None
        now = time.monotonic()
        if now - self._probed_at < 1.0:
            return err
        self._probed_at = now
        try:
            st = os.statvfs(self._path.parent)
        except OSError:
            return err
        if st.f_bavail * st.f_frsize >= FREE_TO_RESUME_BYTES:
            log.warning("raft journal %s: space is back (%d bytes available); appending again", self._path,
                        st.f_bavail * st.f_frsize)
            self.write_error = None
            return None
        return err

    # -- rejoin after a lost journal
    @property
    def rejoining(self) -> bool:
        """True while this node lost its journal and has not caught up: it votes for nobody."""
        return "rejoin" in self._meta

    def rejoin_commit_index(self) -> int:
        """The commit index this node knew before it lost its journal (0 if unknown)."""
        value = self._meta.get("rejoin", {}).get("commit_index", 0)
        return value if isinstance(value, int) else 0

    def rejoined(self, commit_index: int) -> None:
        """Caught up (commit index ``commit_index`` applied from a leader): votes again."""
        if "rejoin" not in self._meta:
            return
        since = self._meta.pop("rejoin")
        self._store_meta()
        log.warning("raft journal %s: caught up with the leader at commit index %d after a lost journal (%s): "
                    "this node votes again", self._path, commit_index, since.get("reason"))

    # -- meta
    def _store_meta(self) -> None:
        data = encode_meta(self._meta)  # with its checksum (format 2)
        self._guarded(lambda: write_durably(self._meta_path, data), "writing the raft meta file", self._meta_path)
        self._meta_dirty = False

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if self._meta.get("raftCommitIndex") != raftCommitIndex:
            self._meta["raftCommitIndex"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        return self._meta.get("raftCommitIndex", 1)

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        # Raft §5: currentTerm and votedFor durable before any vote is sent (a failure raises,
        # so pysyncobj never sends the vote or the candidacy that follows this call).
        self._meta["currentTerm"] = term
        self._meta["votedForNodeId"] = None if votedForNodeId is None else str(votedForNodeId)
        self._store_meta()

    def getCurrentTerm(self) -> int:
        return self._meta.get("currentTerm", 0)

    def getVotedForNodeId(self) -> Any:
        return self._meta.get("votedForNodeId")

    def onOneSecondTimer(self) -> None:
        if self._meta_dirty:  # the commit index is volatile in Raft; stored lazily
            try:
                self._store_meta()
            except errors.ReplicadError as err:
                self._lazy_meta_failed(err)
                return
            if self._lazy_failures:
                log.warning("raft meta file %s: the commit index is stored again (after %d failed tries)",
                            self._meta_path, self._lazy_failures)
                self._lazy_failures, self._lazy_logged = 0, None

    def _lazy_meta_failed(self, err: errors.ReplicadError) -> None:
        """A lazy store of the commit index failed (once a second while it lasts): logged at
        WARNING the first time and whenever the error's text changes, else at most once per
        :data:`META_LOG_EVERY_S` with how many tries failed since the last line."""
        self._lazy_failures += 1
        now = time.monotonic()
        text = str(err)
        if self._lazy_logged is not None and self._lazy_logged[1] == text \
                and now - self._lazy_logged[0] < META_LOG_EVERY_S:
            return
        repeated = self._lazy_failures - self._lazy_logged[2] if self._lazy_logged is not None else 0
        log.warning("raft meta file: the commit index is not stored: %s%s", text,
                    f" ({repeated} more failed tries since the last line; tried each second)" if repeated else "")
        self._lazy_logged = (now, text, self._lazy_failures)


def _create_journal(journalFile: str | None = None) -> Journal:
    if journalFile is None:
        return pysyncobj.journal.MemoryJournal()
    return DurableJournal(journalFile)
