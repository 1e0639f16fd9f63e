"""pysyncobj's journal replaced by a durable one (O6): point 2 of :mod:`replicad.consensus.raft`.

pysyncobj's ``FileJournal`` appends through an mmap that is never msync'ed, and its meta
file (currentTerm, votedFor) is written without fsync. :func:`_create_journal` (installed as
``pysyncobj.syncobj.createJournal`` by :func:`replicad.consensus.raft.install_hardening`)
builds a :class:`DurableJournal` instead: a plain append-only file of CRC-checked records where
``add()`` writes and ``fdatasync``s before returning.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pysyncobj.journal
from pysyncobj.journal import Journal

from replicad.core import errors
from replicad.storage.durable import fsync_dir

log = logging.getLogger("replicad.consensus.raft")  # the journal logs as part of the Raft adapter

JOURNAL_MAGIC = b"REPLICAD-RAFTLOG"
JOURNAL_VERSION = 1
META_VERSION = 1


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: tmp file, fsync, rename, fsync directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class DurableJournal(Journal):
    """pysyncobj ``Journal`` whose every mutation is on disk before it returns (O6).

    File: ``JOURNAL_MAGIC`` + ``<I version``, then records ``<I payload_len`` ``<I crc32``
    ``payload`` with payload ``<QQ idx term`` + command bytes. Meta (``<file>.meta``):
    JSON ``{v, currentTerm, votedForNodeId, raftCommitIndex}``.

    Raises:
        errors.RemoteProtocolError: the file carries another magic or version.
    """

    _HEADER = JOURNAL_MAGIC + struct.pack("<I", JOURNAL_VERSION)

    def __init__(self, journal_file: str) -> None:
        self._path = Path(journal_file)
        self._meta_path = self._path.with_name(self._path.name + ".meta")
        for leftover in (self._path, self._meta_path):  # a crash inside _write_durably: never renamed, never read
            leftover.with_name(leftover.name + ".tmp").unlink(missing_ok=True)
        self._entries: list[tuple[bytes, int, int]] = []
        self._offsets: list[int] = []
        self._meta = self._load_meta()
        self._meta_dirty = False
        if not self._path.exists():
            _write_durably(self._path, self._HEADER)
        self._fd = os.open(self._path, os.O_RDWR)
        self._end = self._load_records()

    def _load_meta(self) -> dict:
        try:
            meta = json.loads(self._meta_path.read_bytes())
        except FileNotFoundError:
            return {"v": META_VERSION}
        except ValueError as exc:
            raise errors.RemoteProtocolError("raft meta file is not valid JSON",
                                             path=str(self._meta_path), detail=str(exc)) from exc
        if not isinstance(meta, dict) or meta.get("v") != META_VERSION:
            raise errors.RemoteProtocolError("raft meta file has an unknown version",
                                             path=str(self._meta_path))
        return meta

    def _load_records(self) -> int:
        data = self._path.read_bytes()
        if data[:len(self._HEADER)] != self._HEADER:
            raise errors.RemoteProtocolError("raft journal has an unknown format or version",
                                             path=str(self._path), header=data[:len(self._HEADER)])
        offset = len(self._HEADER)
        while offset + 8 <= len(data):
            length, crc = struct.unpack_from("<II", data, offset)
            payload = data[offset + 8:offset + 8 + length]
            if length < 16 or len(payload) != length or zlib.crc32(payload) != crc:
                break  # torn tail: written but never acknowledged (O6)
            idx, term = struct.unpack_from("<QQ", payload)
            self._entries.append((bytes(payload[16:]), idx, term))
            self._offsets.append(offset)
            offset += 8 + length
        if offset != len(data):
            log.warning("raft journal %s: dropping %d bytes of torn tail", self._path, len(data) - offset)
            os.truncate(self._path, offset)
        return offset

    # -- records
    def add(self, command: bytes | str, idx: int, term: int) -> None:
        command = command if isinstance(command, bytes) else bytes(command, "utf-8")
        payload = struct.pack("<QQ", idx, term) + command
        record = struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
        os.pwrite(self._fd, record, self._end)
        os.fdatasync(self._fd)  # O6: durable before pysyncobj acknowledges it
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)

    def clear(self) -> None:
        self._rewrite([])

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom >= len(self._entries):
            return
        self._end = self._offsets[entryFrom]
        os.ftruncate(self._fd, self._end)
        os.fdatasync(self._fd)
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]

    def deleteEntriesTo(self, entryTo: int) -> None:
        self._rewrite(self._entries[entryTo:])

    def _rewrite(self, entries: list[tuple[bytes, int, int]]) -> None:
        # Persist any rename done just before (pysyncobj renames the full dump into place
        # and then compacts the log): the dump must be durable before the log shrinks.
        fsync_dir(self._path.parent)
        chunks = [self._HEADER]
        offsets = []
        end = len(self._HEADER)
        for command, idx, term in entries:
            payload = struct.pack("<QQ", idx, term) + command
            offsets.append(end)
            chunks.append(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)
            end += len(chunks[-1])
        _write_durably(self._path, b"".join(chunks))
        os.close(self._fd)
        self._fd = os.open(self._path, os.O_RDWR)
        self._entries = list(entries)
        self._offsets = offsets
        self._end = end

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def flush(self) -> None:
        os.fdatasync(self._fd)

    def _destroy(self) -> None:
        if self._meta_dirty:
            self._store_meta()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- meta
    def _store_meta(self) -> None:
        _write_durably(self._meta_path, json.dumps(self._meta, sort_keys=True).encode())
        self._meta_dirty = False

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if self._meta.get("raftCommitIndex") != raftCommitIndex:
            self._meta["raftCommitIndex"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        return self._meta.get("raftCommitIndex", 1)

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        # Raft §5: currentTerm and votedFor durable before any vote is sent.
        self._meta["currentTerm"] = term
        self._meta["votedForNodeId"] = None if votedForNodeId is None else str(votedForNodeId)
        self._store_meta()

    def getCurrentTerm(self) -> int:
        return self._meta.get("currentTerm", 0)

    def getVotedForNodeId(self) -> Any:
        return self._meta.get("votedForNodeId")

    def onOneSecondTimer(self) -> None:
        if self._meta_dirty:  # the commit index is volatile in Raft; stored lazily
            self._store_meta()


def _create_journal(journalFile: str | None = None) -> Journal:
    if journalFile is None:
        return pysyncobj.journal.MemoryJournal()
    return DurableJournal(journalFile)
