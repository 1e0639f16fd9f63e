"""The local admin audit log: an append-only, hash-chained JSON-lines file.

One line per admin API call that changes something, and per refused call (401, 403, any
4xx/5xx), written to ``<data_dir>/admin-audit.jsonl`` and fsynced before the answer is
sent. Record::

    {"seq": int (1, 2, ...), "at": "2026-01-31T12:00:00.123456Z", "who": token name | "anonymous",
     "role": str | null, "remote": str | null, "method": str, "path": str, "body": any (secrets
     removed), "outcome": "ok" | "accepted" | "refused" | "failed", "status": int,
     "error": code | null, "prev": hex, "hash": hex}

``hash = SHA-256(bytes.fromhex(prev) + canonical(record without "hash"))`` where
``canonical`` is JSON with sorted keys, no spaces, ASCII only; ``prev`` of the first
record is 64 zeros. Editing, deleting, inserting or reordering any record breaks the chain
from there on (:func:`verify_chain`). Truncating the *tail* cannot be seen from the file
alone: the admin server also logs every record's ``seq`` and ``hash`` to the daemon log
(journald), an anchor outside the file.

A line without its final newline is a write torn by a crash; :class:`AuditLog` moves it
aside to ``admin-audit.jsonl.torn`` on open (never silently dropped) and continues the
chain after the last whole record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import threading
from pathlib import Path
from typing import Any

from replicad.core.errors import IntegrityError, from_os_error

GENESIS_HASH = "0" * 64
BODY_MAX_CHARS = 4096               # bodies longer than this (as JSON) are recorded truncated
TAIL_READ_BYTES = 1 << 20           # how far back the last record is looked for on open
_SECRET_KEYS = ("token", "password", "secret", "authorization", "key")
FIELDS = ("seq", "at", "who", "role", "remote", "method", "path", "body", "outcome", "status", "error", "prev",
          "hash")


def canonical(record: dict) -> bytes:
    """Canonical JSON encoding of ``record`` (sorted keys, no whitespace, ASCII)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def record_hash(prev_hex: str, record: dict) -> str:
    """Hex SHA-256 of ``prev`` (32 bytes) + the canonical record without its ``hash`` key."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(bytes.fromhex(prev_hex) + canonical(body)).hexdigest()


def redact(body: Any, depth: int = 0) -> Any:
    """``body`` with the value of every key that looks secret (token, password, secret,
    authorization, key) replaced by ``"***"``; bounded depth; JSON-safe."""
    if depth > 8:
        return "…"
    if isinstance(body, dict):
        return {str(k): "***" if any(s in str(k).lower() for s in _SECRET_KEYS) else redact(v, depth + 1)
                for k, v in body.items()}
    if isinstance(body, list):
        return [redact(v, depth + 1) for v in body]
    if body is None or isinstance(body, (bool, int, str)):
        return body
    if isinstance(body, float):
        return body if body == body and abs(body) != float("inf") else str(body)
    return str(body)


def make_record(seq: int, prev_hex: str, at: str, fields: dict) -> dict:
    """A chained record: ``fields`` (the keys of FIELDS but seq/at/prev/hash) + seq, at,
    prev and hash. Pure. A body longer than BODY_MAX_CHARS (as JSON) becomes
    ``{"truncated": true, "json_prefix": "..."}``."""
    rec = {key: fields.get(key) for key in FIELDS if key not in ("seq", "at", "prev", "hash")}
    body = redact(rec.get("body"))
    text = json.dumps(body, sort_keys=True)
    if len(text) > BODY_MAX_CHARS:
        body = {"truncated": True, "json_prefix": text[:BODY_MAX_CHARS]}
    rec.update(seq=seq, at=at, body=body, prev=prev_hex)
    rec["hash"] = record_hash(prev_hex, rec)
    return rec


def utc_now_iso() -> str:
    """The current time as ISO 8601 UTC with microseconds and a ``Z`` suffix."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def verify_chain(path: Path | str) -> tuple[bool, int, int | None]:
    """Check the whole chain of the audit file at ``path``.

    Returns ``(ok, n_records, first_bad_seq)``: ``n_records`` counts the lines read;
    ``first_bad_seq`` is the ``seq`` the first bad line should have had (1-based
    position in the chain), ``None`` when ok. A line is bad when it is not a JSON object
    with exactly the record keys, its ``seq`` is not the next one, its ``prev`` is not the
    previous record's ``hash``, or its ``hash`` does not match its content. A missing file
    is an empty, valid chain.

    Raises:
        ReplicadError (from_os_error) if the file exists but cannot be read.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return True, 0, None
    except OSError as err:
        raise from_os_error(err, f"reading audit log {path}") from None
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    if not torn:
        lines = lines[:-1]
    prev = GENESIS_HASH
    for index, line in enumerate(lines):
        expected_seq = index + 1
        if torn and index == len(lines) - 1:
            return False, len(lines), expected_seq
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return False, len(lines), expected_seq
        if not isinstance(rec, dict) or set(rec) != set(FIELDS) or rec.get("seq") != expected_seq \
                or rec.get("prev") != prev or not isinstance(rec.get("hash"), str):
            return False, len(lines), expected_seq
        try:
            good = hmac_equal(record_hash(prev, rec), rec["hash"])
        except (ValueError, TypeError):
            good = False
        if not good:
            return False, len(lines), expected_seq
        prev = rec["hash"]
    return True, len(lines), None


def hmac_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two hex strings."""
    return hmac.compare_digest(a.encode(), b.encode())


class AuditLog:
    """Appender of one audit file; thread-safe (one lock), each record fsynced.

    Args:
        path: the JSONL file (created with mode 0600 if missing).

    Raises (on open):
        IntegrityError: the last whole line is not a record (evidence: path).
        ReplicadError (from_os_error): the file cannot be read or created.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._seq, self._prev = self._open_tail()
        except OSError as err:
            raise from_os_error(err, f"opening audit log {self.path}") from None

    @property
    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest record (``(0, GENESIS_HASH)`` when empty)."""
        return self._seq, self._prev

    def _open_tail(self) -> tuple[int, str]:
        if not self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.close(fd)
            return 0, GENESIS_HASH
        with open(self.path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_READ_BYTES))
            tail = f.read()
        if tail and not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n") + 1
            whole_size = size - (len(tail) - cut)
            with open(self.path.with_name(self.path.name + ".torn"), "ab") as torn:
                torn.write(tail[cut:] + b"\n")
                torn.flush()
                os.fsync(torn.fileno())
            os.truncate(self.path, whole_size)
            tail = tail[:cut]
        lines = [line for line in tail.split(b"\n") if line]
        if not lines:
            return 0, GENESIS_HASH
        try:
            last = json.loads(lines[-1])
            return int(last["seq"]), str(last["hash"])
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"the last line of audit log {self.path} is not a record",
                                 path=str(self.path)) from None

    def append(self, fields: dict, at: str | None = None) -> dict:
        """Chain, write and fsync one record; returns it (with seq, prev, hash).

        ``fields``: who, role, remote, method, path, body, outcome, status, error.
        ``at``: ISO UTC time (default: now).

        Raises ReplicadError (from_os_error: StoreFullError when the disk is full).
        """
        with self._lock:
            rec = make_record(self._seq + 1, self._prev, at or utc_now_iso(), fields)
            line = canonical(rec) + b"\n"
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    written = os.write(fd, line)
                    if written != len(line):
                        raise OSError(28, "short write to audit log")
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as err:
                raise from_os_error(err, f"appending to audit log {self.path}") from None
            self._seq, self._prev = rec["seq"], rec["hash"]
            return rec

    def read(self, limit: int = 200) -> list[dict]:
        """The newest ``limit`` records (parsed lines; unparseable lines are skipped)."""
        out: list[dict] = []
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - TAIL_READ_BYTES))
                lines = f.read().split(b"\n")
        except OSError as err:
            raise from_os_error(err, f"reading audit log {self.path}") from None
        for line in lines[-(limit + 1):]:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out[-limit:]
