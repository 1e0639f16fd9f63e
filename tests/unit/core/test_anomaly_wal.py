"""PostgreSQL's write-ahead log recycled in place is no ciphertext (issue 14, the coverage window's
false alarm on a busy database nobody confirms): :func:`replicad.core.anomaly.wal_offset`,
:func:`replicad.core.anomaly.wal_recycled` and their use in ``Detection._signals``.

Real bytes: a real PostgreSQL server (``initdb --wal-segsize=1``: 1 MiB segments, so a few MiB
of log recycle them) run as the ``postgres`` user; the log segment files are read by inode
before and after the server renamed and overwrote them (``RemoveXlogFile`` /
``InstallXLogFileSegment``), and the pages of a real table's relation file. The volumes judged
are image files built from those 64 KiB blocks, snapshotted into a real chunk store by the file
source and judged by the daemon's own ``Detection._signals`` and :func:`anomaly.judge_relative`.
Every process started is stopped by its PID; bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import types
from pathlib import Path

import pytest

from replicad.core import anomaly
from replicad.site.detection import Detection
from replicad.sources.file import take_snapshot
from replicad.storage.chunkstore import ChunkStore

BLOCK = 64 * 1024
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None) \
    if Path("/usr/lib/postgresql").exists() else None


def _has_postgres_user() -> bool:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return True


pytestmark = pytest.mark.skipif(PG_BIN is None or os.geteuid() != 0 or not _has_postgres_user()
                                or shutil.which("runuser") is None,
                                reason="needs PostgreSQL's server binaries, root and the postgres user")


def _run(argv: list[str], user: str | None = "postgres") -> str:
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, f"{' '.join(argv)}: {res.stderr[-800:]}"
    return res.stdout


def _wal_by_inode(wal: Path) -> dict[int, bytes]:
    return {p.stat().st_ino: p.read_bytes() for p in sorted(wal.iterdir())
            if p.is_file() and len(p.name) == 24}


@pytest.fixture(scope="module")
def pg_bytes() -> dict:
    """``{"recycled": [(old, new)], "heap": [block], "wal": [block]}``: 64 KiB blocks at the
    same offsets of the same segment files (same inode) before and after the server recycled
    them, the blocks of a real table's relation file (text rows), and WAL blocks as they were."""
    work = Path(tempfile.mkdtemp(prefix="replicad-waltest-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    data, sock = work / "data", work / "sock"
    sock.mkdir()
    shutil.chown(work, "postgres", "postgres")
    shutil.chown(sock, "postgres", "postgres")
    port = 5900 + os.getpid() % 90
    pid = None
    try:
        _run([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
              "--wal-segsize=1"])
        with open(data / "postgresql.conf", "a") as f:
            f.write(f"listen_addresses = ''\nunix_socket_directories = '{sock}'\nport = {port}\n"
                    "min_wal_size = 2MB\nmax_wal_size = 4MB\nshared_buffers = 16MB\n")
        _run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(work / "pg.log"), "-w", "-t", "60", "start"])
        pid = int((data / "postmaster.pid").read_text().split()[0])

        def sql(statement: str) -> str:
            return _run([str(PG_BIN / "psql"), "-h", str(sock), "-p", str(port), "-U", "postgres", "-q", "-At",
                         "-v", "ON_ERROR_STOP=1", "-c", statement, "postgres"])

        # structured log records first: rows of words and numbers, a checkpoint after each batch
        sql("CREATE TABLE notes (id int, ward text, note text)")
        for i in range(6):
            sql(f"INSERT INTO notes SELECT g, 'ward ' || (g % 17), repeat('patient dose normal follow-up ', 3) || g "
                f"FROM generate_series({i * 20000}, {i * 20000 + 19999}) g; CHECKPOINT")
        heap = data / sql("SELECT pg_relation_filepath('notes')").strip()
        before = _wal_by_inode(data / "pg_wal")
        # then incompressible values (a bytea import, as the benchmark's scans): the old segments recycled
        sql("CREATE TABLE scans (id int, img bytea); ALTER TABLE scans ALTER COLUMN img SET STORAGE EXTERNAL")
        for i in range(8):
            sql(f"INSERT INTO scans SELECT g, (SELECT string_agg(sha256((g * 1000 + k)::text::bytea), ''::bytea) "
                f"FROM generate_series(1, 400) k) FROM generate_series({i * 40}, {i * 40 + 39}) g; CHECKPOINT")
        after = _wal_by_inode(data / "pg_wal")
        heap_bytes = heap.read_bytes()
    finally:
        if data.exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(data), "-m",
                            "immediate", "-w", "-t", "60", "stop"], capture_output=True, timeout=90, check=False)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
    recycled = []
    for ino, new in after.items():
        old = before.get(ino)
        if old is None or len(old) != len(new):
            continue
        for at in range(0, len(new) - BLOCK + 1, BLOCK):
            if old[at:at + BLOCK] != new[at:at + BLOCK]:
                recycled.append((old[at:at + BLOCK], new[at:at + BLOCK]))
    heap_blocks = [heap_bytes[at:at + BLOCK] for at in range(0, len(heap_bytes) - BLOCK + 1, BLOCK)]
    wal_blocks = [b[at:at + BLOCK] for b in before.values() for at in range(0, len(b) - BLOCK + 1, BLOCK)]
    return {"recycled": recycled, "heap": heap_blocks, "wal": wal_blocks}


def test_recycled_segments_are_wal_at_the_same_offsets(pg_bytes: dict) -> None:
    """The server's own recycled segments: every changed 64 KiB block is WAL before and after at
    the same offset (the file is overwritten in place), some of them count as turned random
    (the false alarm), and :func:`anomaly.wal_recycled` says so for every one."""
    pairs = pg_bytes["recycled"]
    assert len(pairs) >= 16, "the server recycled no segment: the test measured nothing"
    counted = 0
    for old, new in pairs:
        assert anomaly.wal_offset(old) is not None and anomaly.wal_offset(new) == anomaly.wal_offset(old)
        assert anomaly.wal_recycled(new, old, old)
        f = anomaly.compare_block(new, old)
        counted += bool(f.turned_random or f.sparse_random)
    assert counted >= 4, f"only {counted} of {len(pairs)} recycled blocks count: no false alarm to excuse"


def test_relation_pages_are_not_wal(pg_bytes: dict) -> None:
    """A table's heap pages, zeros, random bytes and a WAL block with one page header destroyed
    or shifted by 4 KiB are not WAL (:func:`anomaly.wal_offset` None)."""
    assert pg_bytes["heap"]
    for block in pg_bytes["heap"]:
        assert anomaly.wal_offset(block) is None
    assert anomaly.wal_offset(bytes(BLOCK)) is None
    assert anomaly.wal_offset(os.urandom(BLOCK)) is None
    assert anomaly.wal_offset(None) is None
    wal = pg_bytes["wal"][3]
    assert anomaly.wal_offset(wal) is not None
    broken = bytearray(wal)
    broken[5 * anomaly.WAL_PAGE:5 * anomaly.WAL_PAGE + 24] = os.urandom(24)
    assert anomaly.wal_offset(bytes(broken)) is None
    assert anomaly.wal_offset(wal[4096:] + wal[:4096]) is None
    # pages out of their places (the second half of the block moved by a page) are not a segment's
    swapped = wal[:4 * anomaly.WAL_PAGE] + wal[5 * anomaly.WAL_PAGE:] + wal[4 * anomaly.WAL_PAGE:5 * anomaly.WAL_PAGE]
    assert anomaly.wal_offset(swapped) is None


def _forged_and_encrypted(heap: bytes, wal: bytes) -> tuple[bytes, bytes]:
    """The attacker of the excuse: a relation file's pages given the WAL page headers of a real
    segment (the 24-byte page header replaced, the tuples kept), then every page's payload
    encrypted under those headers (random bytes stand for AES output)."""
    forged, encrypted = bytearray(heap), bytearray()
    for k in range(0, BLOCK, anomaly.WAL_PAGE):
        forged[k:k + 24] = wal[k:k + 24]
    for k in range(0, BLOCK, anomaly.WAL_PAGE):
        encrypted += forged[k:k + 24] + os.urandom(anomaly.WAL_PAGE - 24)
    return bytes(forged), bytes(encrypted)


def test_wal_headers_over_a_relation_excuse_nothing_against_the_anchor(pg_bytes: dict) -> None:
    """Only a block that was WAL in the anchor is excused: relation pages given WAL headers
    after it, then encrypted under them, still turn random (the anchor holds the heap pages)."""
    heap, wal = pg_bytes["heap"][1], pg_bytes["wal"][2]
    forged, encrypted = _forged_and_encrypted(heap, wal)
    assert anomaly.wal_offset(forged) is not None and anomaly.wal_offset(encrypted) == anomaly.wal_offset(forged)
    assert anomaly.compare_block(encrypted, forged).turned_random
    assert not anomaly.wal_recycled(encrypted, forged, heap)
    # recycled WAL written over another segment's offset, or over a relation, is not recycled in place
    old, new = pg_bytes["recycled"][0]
    assert not anomaly.wal_recycled(new, heap, heap)
    other = next(b for b in pg_bytes["wal"] if anomaly.wal_offset(b) not in (None, anomaly.wal_offset(new)))
    assert not anomaly.wal_recycled(new, other, other)
    assert not anomaly.wal_recycled(new, old, None)


class _Volume:
    """An image file of 64 KiB blocks snapshotted into a real chunk store and judged by the
    daemon's ``Detection._signals``."""

    def __init__(self, tmp_path: Path) -> None:
        self.img = tmp_path / "v.img"
        self.store = ChunkStore(tmp_path / "store")
        self.det = Detection(types.SimpleNamespace(site_id="t"), self.store, None, tmp_path,  # type: ignore[arg-type]
                             lambda v: {}, None)
        self.seq = 0
        self.last = None

    def snapshot(self, blocks: list[bytes]):
        self.img.write_bytes(b"".join(blocks))
        self.seq += 1
        self.last = asyncio.run(take_snapshot(self.img, volume="v", seq=self.seq, epoch=1, parent=self.last,
                                              store=self.store, now_ns=time.time_ns())).manifest
        return self.last

    def judge(self, m, base, anchor=None) -> tuple[anomaly.SnapshotSignals, anomaly.RelativeVerdict]:
        sig = self.det._signals(m, base, None, anchor=anchor)
        return sig, anomaly.judge_relative(m.seq, sig, [], [], dict(anomaly.POLICY_DEFAULTS))


def test_busy_database_wal_recycled_is_clean_and_encryption_is_not(tmp_path: Path, pg_bytes: dict) -> None:
    """A volume of a table's pages and log segments: the log recycled by the server is clean with
    nothing in the coverage window (before: its blocks turned random, the score and the coverage
    counted them); the table encrypted is suspect; the table given WAL headers in one snapshot and
    encrypted under them in the next is counted against the anchor (the volume's first)."""
    heap = pg_bytes["heap"][:12]
    pairs = [(o, n) for o, n in pg_bytes["recycled"]
             if (lambda f: f.turned_random or f.sparse_random)(anomaly.compare_block(n, o))][:8]
    assert len(heap) >= 8 and len(pairs) >= 4
    v = _Volume(tmp_path)
    m1 = v.snapshot(heap + [o for o, _ in pairs])
    m2 = v.snapshot(heap + [n for _, n in pairs])
    sig, verdict = v.judge(m2, m1)
    assert sig.wal_recycled == len(pairs)
    assert sig.turned_random == 0 and not sig.counted and not sig.sparse
    assert verdict.verdict == "clean" and verdict.score == 0.0
    assert sig.summary()["wal_recycled"] == len(pairs)
    # the same recycling judged with an anchor that held relation pages there: counted
    m_heap = v.snapshot(heap + heap[:len(pairs)])
    m_old = v.snapshot(heap + [o for o, _ in pairs])
    m_new = v.snapshot(heap + [n for _, n in pairs])
    sig, _ = v.judge(m_new, m_old, anchor=lambda: m_heap)
    assert sig.wal_recycled == 0 and len(sig.counted | sig.sparse) == len(pairs)
    # no anchor held here: nothing excused
    sig, _ = v.judge(m_new, m_old, anchor=lambda: None)
    assert sig.wal_recycled == 0 and len(sig.counted | sig.sparse) == len(pairs)
    # the attacker: the table's pages given WAL headers (one snapshot), then encrypted under them
    wal = pg_bytes["wal"]
    forged = [_forged_and_encrypted(h, wal[i % len(wal)]) for i, h in enumerate(heap)]
    m_anchor = v.snapshot(heap + [o for o, _ in pairs])
    m_forged = v.snapshot([f for f, _ in forged] + [o for o, _ in pairs])
    m_enc = v.snapshot([e for _, e in forged] + [n for _, n in pairs])
    sig, verdict = v.judge(m_enc, m_forged, anchor=lambda: m_anchor)
    assert sig.turned_random == len(heap) and sig.wal_recycled == len(pairs)
    assert verdict.verdict == "suspect"
