"""Disk faults on a Raft directory (``raft.journal``, ``raft.journal.meta``, ``raft.dump``),
shared by the daemon campaign (:mod:`chaos.scenarios`) and the Raft-layer history
(:mod:`chaos.raftjepsen`). The node owning the directory must be stopped for a flip.

Position classes (:data:`FLIP_CLASSES`), each one flipped bit (``byte ^= 1 << k``):

* ``journal-header``: a byte of the 20-byte magic + version header;
* ``journal-middle``: a byte of a record with at least one record after it;
* ``journal-tail``: a byte of the last record;
* ``meta``: a byte of the JSON meta file (term, vote, commit index);
* ``dump-header``: a byte of the first 16 of the msgpack dump (map header, version key);
* ``dump-body``: a byte anywhere after those 16.

Plus :func:`zero_dump` (the file's size kept, every byte 0: issue 13 item 8) and
:func:`unreadable_dump` (the dump replaced by a directory: every read fails with EISDIR,
as an I/O error would; issue 13 item 6).

What a node must do at its next start, per class (:data:`EXPECTED`): ``refuse`` = exit
with a typed damage error (``journal_damaged``, ``dump_damaged``, ``remote_protocol``
for an unknown header/meta), nothing changed on disk; ``start`` = start (a torn tail is
dropped and kept aside) *and lose no acknowledged entry*; ``refuse_or_start`` = either,
judged by the history alone. The meta file and the dump carry a checksum (meta format 2, dump
file format 3): every flipped bit of them is refused (before, a bit of the dump's body could
land in a value the state machine accepts, and a suffix command that failed its signature was
replayed as refused: the node ran from a silently different state).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

from replicad.consensus.journal import JOURNAL_MAGIC, _record_at

JOURNAL_HEADER_BYTES = len(JOURNAL_MAGIC) + 4
FLIP_CLASSES = ("journal-header", "journal-middle", "journal-tail", "meta", "dump-header", "dump-body")
EXPECTED = {"journal-header": "refuse", "journal-middle": "refuse", "journal-tail": "start", "meta": "refuse",
            "dump-header": "refuse", "dump-body": "refuse", "dump-zero": "refuse"}
DAMAGE_CODES = {"journal_damaged", "dump_damaged", "remote_protocol"}
"""Error codes that count as a typed refusal to start on damaged Raft storage."""


def journal_records(path: Path) -> list[tuple[int, int, int]]:
    """``(offset, length in bytes, idx)`` of every well-formed record of a journal, in order,
    up to the first bad one. Raises OSError if unreadable."""
    data = Path(path).read_bytes()
    out, offset = [], JOURNAL_HEADER_BYTES
    while (rec := _record_at(data, offset)) is not None:
        size = 8 + 16 + len(rec[2])
        out.append((offset, size, rec[0]))
        offset += size
    return out


def pick_offset(raft_dir: Path, where: str, rng: random.Random) -> tuple[Path, int]:
    """The file and byte offset of a flip of class ``where`` in ``raft_dir``.

    Raises:
        FileNotFoundError: the file the class needs is absent.
        ValueError: unknown class, or the journal has too few records for it (middle
            needs 2, tail 1).
    """
    raft_dir = Path(raft_dir)
    if where.startswith("journal-"):
        path = raft_dir / "raft.journal"
        if where == "journal-header":
            return path, rng.randrange(JOURNAL_HEADER_BYTES)
        recs = journal_records(path)
        if where == "journal-middle":
            if len(recs) < 2:
                raise ValueError(f"{path}: {len(recs)} record(s), a middle record needs 2")
            off, size, _ = recs[rng.randrange(len(recs) - 1)]
        elif where == "journal-tail":
            if not recs:
                raise ValueError(f"{path}: no record")
            off, size, _ = recs[-1]
        else:
            raise ValueError(f"unknown position class {where!r}")
        return path, off + rng.randrange(size)
    if where == "meta":
        path = raft_dir / "raft.journal.meta"
        return path, rng.randrange(path.stat().st_size)
    if where in ("dump-header", "dump-body"):
        path = raft_dir / "raft.dump"
        size = path.stat().st_size
        if where == "dump-header":
            return path, rng.randrange(min(16, size))
        if size <= 16:
            raise ValueError(f"{path}: {size} bytes, no body")
        return path, rng.randrange(16, size)
    raise ValueError(f"unknown position class {where!r}")


def flip_bit(path: Path, offset: int, bit: int) -> dict:
    """Flip bit ``bit`` (0..7) of byte ``offset`` of ``path`` in place, fsynced.
    Returns ``{path, offset, bit, before, after}`` (byte values). Raises OSError."""
    with open(path, "r+b") as f:
        f.seek(offset)
        before = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([before ^ (1 << bit)]))
        f.flush()
        os.fsync(f.fileno())
    return {"path": str(path), "offset": offset, "bit": bit, "before": before, "after": before ^ (1 << bit)}


def flip(raft_dir: Path, where: str, rng: random.Random) -> dict:
    """One flipped bit of class ``where`` (:func:`pick_offset`) in ``raft_dir``; returns
    :func:`flip_bit`'s record plus ``where``. Raises as :func:`pick_offset`."""
    path, offset = pick_offset(raft_dir, where, rng)
    return {"where": where, **flip_bit(path, offset, rng.randrange(8))}


def zero_dump(raft_dir: Path) -> dict:
    """Overwrite ``raft.dump`` with zeros, size kept. Returns ``{path, size}``. Raises OSError."""
    path = Path(raft_dir) / "raft.dump"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(bytes(size))
        f.flush()
        os.fsync(f.fileno())
    return {"where": "dump-zero", "path": str(path), "size": size}


def unreadable_dump(raft_dir: Path) -> dict:
    """Replace ``raft.dump`` by a directory (kept aside as ``raft.dump.chaos-moved``): every
    read then fails. Undo with :func:`readable_dump`. Returns ``{path}``. Raises OSError."""
    path = Path(raft_dir) / "raft.dump"
    if path.exists() and not path.is_dir():
        path.rename(path.with_name("raft.dump.chaos-moved"))
    path.mkdir(exist_ok=True)
    return {"where": "dump-unreadable", "path": str(path)}


def readable_dump(raft_dir: Path) -> None:
    """Undo :func:`unreadable_dump` (the node has usually written a newer dump since)."""
    path = Path(raft_dir) / "raft.dump"
    if path.is_dir():
        shutil.rmtree(path)
    moved = path.with_name("raft.dump.chaos-moved")
    if moved.exists() and not path.exists():
        moved.rename(path)


def move_aside(raft_dir: Path, names: tuple[str, ...], tag: str) -> list[str]:
    """The README's way out of a damaged journal or dump: rename each of ``names`` present in
    ``raft_dir`` to ``<name>.damaged-<tag>`` (kept for analysis). Returns the new paths."""
    out = []
    for name in names:
        p = Path(raft_dir) / name
        if p.exists():
            q = p.with_name(f"{name}.damaged-{tag}")
            p.rename(q)
            out.append(str(q))
    return out


def refusal_problems(events: list[dict], key: str = "site") -> list[str]:
    """``typed_refusal`` over nemesis events sorted by ``t`` (``key`` names the node field:
    ``site`` in the daemon campaign, ``node`` in :mod:`chaos.raftjepsen`). A refusal to start
    must carry a code of :data:`DAMAGE_CODES` and no traceback, and follow a fault whose class
    calls for one; a node must not start on storage whose class must be refused (unless the
    damaged file was moved aside first). Returns one sentence per problem."""
    out: list[str] = []
    expected: dict[str, str] = {}
    for e in events:
        if e.get("op") != "nemesis":
            continue
        node, f = e.get(key), e.get("f")
        if f == "flip":
            expected[node] = e.get("expected", "start")
        elif f == "start_refused":
            exp = expected.get(node)
            if e.get("code") not in DAMAGE_CODES or e.get("traceback"):
                out.append(f"{node} refused to start with {e.get('code')!r} (exit {e.get('exit')}, traceback "
                           f"{e.get('traceback')}): not a typed damage error")
            elif exp == "start":
                out.append(f"{node} refused to start after a fault it must survive: {str(e.get('message'))[:200]}")
        elif f == "start" and e.get("type") == "ok" and node in expected:
            if expected.pop(node) == "refuse":
                out.append(f"{node} started on damaged Raft storage that must be refused")
        elif f == "move_aside":
            expected.pop(node, None)
    return out


class WriteErrors:
    """``strace -f -p PID -e inject=write,pwrite64:error=ENOSPC`` attached to a running
    process: every write(2)/pwrite64(2) of every thread fails with ENOSPC (``when`` = the
    strace ``when=`` expression, e.g. ``"3+"`` to let two writes through first) until
    :meth:`detach`. The sockets' writes fail too (pysyncobj sends with send(2), not
    write(2), so Raft traffic is unaffected; stdout answers of a test helper are write(2)).

    Raises RuntimeError from :meth:`attach` when strace exits at once (not root, no ptrace).
    """

    def __init__(self, pid: int, when: str = "1+", syscalls: str = "pwrite64") -> None:
        self.pid = pid
        self.when = when
        self.syscalls = syscalls
        self.proc: subprocess.Popen | None = None

    def attach(self) -> None:
        self.proc = subprocess.Popen(["strace", "-f", "-qq", "-p", str(self.pid), "-o", "/dev/null",
                                      "-e", f"trace={self.syscalls}",
                                      "-e", f"inject={self.syscalls}:error=ENOSPC:when={self.when}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"strace exited at once ({self.proc.returncode})")

    def detach(self) -> None:
        """SIGINT the strace by PID (SIGKILL if it lingers), then SIGCONT the tracee."""
        st, self.proc = self.proc, None
        if st is None or st.poll() is not None:
            return
        st.send_signal(signal.SIGINT)
        try:
            st.wait(timeout=15)
        except subprocess.TimeoutExpired:
            st.kill()
            st.wait(timeout=5)
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
