"""Content-addressed chunk store: append-only pack files and a SQLite index.

Layout under ``root``::

    root/index.sqlite3          digest -> (pack, offset, length, codec, arrived_ns);
                                WAL, synchronous=FULL
    root/packs/00000001.pack    append-only pack files, sealed at ``pack_target_bytes``

Pack format (version 1, little endian)::

    pack header   16 bytes: magic b"RPLPACK\\0" | u32 version | u32 reserved (0)
    record        41-byte header: u32 payload_len | u8 codec | 32-byte digest |
                  u32 crc32(payload_len..digest + payload)
                  then payload_len bytes of payload

The crc32 makes a torn tail (crash in the middle of an append) detectable, and single-chunk
reads (``get``, verify's read) check it too (rot in the crc field itself is damage a collection
would act on); the real integrity check on every read is BLAKE3 of the decoded bytes against the
digest.

Writes (O1: a chunk is "stored" only once durable): records are appended to the active
(highest numbered) pack, the pack is fsynced (and the directory when a pack is created),
then the index rows of the whole batch are committed in one SQLite transaction. Only then
does ``put_*`` return. If anything fails (ENOSPC, EDQUOT, I/O error), the appended bytes are
truncated away and nothing of the batch is indexed.

Recovery at open:

* pack files shorter than a pack header (crash while creating a pack) are removed;
  a pack with a foreign magic or an unknown version raises ``RemoteProtocolError``;
* index rows pointing into missing packs or beyond a pack's end are dropped (logged);
* the active pack is validated from the end of its last indexed record on. Valid records
  there (written and fsynced, but the crash came before the index commit) are
  **re-indexed** after a full check (crc32, decode, BLAKE3 == digest); the first invalid
  record and everything after it is truncated away. (Records of an earlier pack of a batch
  that spanned packs stay unindexed: waste that gc reclaims.)

Arrival times and the gc grace: every index row carries ``arrived_ns``, this site's wall
clock (``time.time_ns()``, or the ``clock`` given to the store) when the chunk was *first*
stored here, written in the same INSERT as the rest of the row (no extra write, no extra
fsync). Storing a chunk that is already present never changes it: a peer that re-sends junk
must not be able to keep it alive forever. Rows re-indexed by recovery get the recovery time.
``gc`` collects a chunk outside its ``live`` set only once ``now_ns - arrived_ns >= grace_ns``:
chunks of a snapshot still being received, or scanned before its manifest is recorded, are
not referenced by any catalog record yet and must survive; unreferenced junk (a peer's
flood) is still collected after a bounded time. Index schema 1 (no ``arrived_ns``) is
upgraded in place at open to schema 2 in one transaction: ``ALTER TABLE ... ADD COLUMN``
with the upgrade time as the column default, so every existing chunk counts as arrived at
the upgrade (errs towards keeping) and the upgrade costs O(1), not a rewrite of the index.

Garbage collection takes the packs that hold dead (or unindexed) records one at a time,
appends their live chunks to the active pack (a fresh one if the active pack is itself being
collected), fsyncs, switches the index rows in one transaction and only then deletes the old
pack: a pack is never edited in place. After a crash either the old rows stand (the copies
are unindexed records at the active pack's tail; recovery's re-index ignores them because
their digests are indexed elsewhere, and the next gc reclaims them) or the new rows stand
(the old pack is unindexed waste, reclaimed by the next gc).

Thread-safety: one internal lock serialises index and pack access; CPU work (decode,
BLAKE3 verification, lz4) runs outside the lock where possible. ``gc`` holds the lock for
its whole run, so concurrent puts and gets wait for it.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import pathlib
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import blake3
import lz4.block
from isal.isal_zlib import crc32  # zlib's CRC-32, ISA-L SIMD: 21 GB/s vs zlib's 4 GB/s here

from replicad.storage.durable import fsync_dir, preallocate, release_cache
from replicad.core.errors import (
    IntegrityError,
    InternalError,
    NotFoundError,
    RemoteProtocolError,
    ReplicadError,
    StoreFullError,
    UsageError,
    from_os_error,
)

log = logging.getLogger("replicad.storage.chunkstore")

DIGEST_SIZE = 32
CODEC_RAW = 0
CODEC_LZ4 = 1
CHUNK_MAX_BYTES = 16 * 2**20

PACK_MAGIC = b"RPLPACK\x00"
PACK_VERSION = 1
_PACK_HEADER = struct.Struct("<8sII")
PACK_HEADER_SIZE = _PACK_HEADER.size  # 16
_REC_HEADER = struct.Struct("<IB32sI")
RECORD_HEADER_SIZE = _REC_HEADER.size  # 41
INDEX_SCHEMA_VERSION = 2  # 1: without chunks.arrived_ns (upgraded in place at open)

# Default gc grace (ns): an unreferenced chunk younger than this, by its first arrival here, is
# kept. It must exceed the longest time a chunk can stay unreferenced legitimately: from its
# arrival to the catalog record of its snapshot. A receiver learns a snapshot's root only at
# /v1/peer/snapshot, after all its chunks, and a primary records its snapshot only after the
# whole scan; so the bound is a whole first full sync or first scan, not one batch. At hospital
# scale that is hours (1 TiB over 1 Gbit/s ~2.4 h, over 100 Mbit/s ~24 h; 4 TiB read at 200 MB/s
# ~6 h), while the benchmark's 1 GiB takes seconds. 24 h covers those with margin. The cost is
# on the flood side only in lifetime: junk lives at most 24 h plus one gc interval, not
# forever. The grace cannot bound how fast a flood fills a disk at any setting (150 MB in 6 s
# is 90 GB per hour); that is the receiver's in-flight budget, not the store's. Sites pass their
# own ``grace_ns`` (shorter under disk pressure, longer for slower links).
DEFAULT_GC_GRACE_NS = 24 * 3600 * 10**9

_PACK_NAME = re.compile(r"^(\d{8})\.pack$")
_SQL_BATCH = 500  # host parameters per IN (...) query, below SQLite's 999 default limit
_LZ4_SIZE_PREFIX = 4  # lz4.block store_size=True prefix: u32 little-endian raw length


def digest_of(raw: bytes) -> bytes:
    """BLAKE3-256 (32 bytes) of the uncompressed bytes ``raw``."""
    return blake3.blake3(raw).digest()


def encode_chunk(raw: bytes) -> tuple[int, bytes]:
    """Compress ``raw`` for storage and shipping.

    Returns ``(CODEC_LZ4, lz4.block.compress(raw, store_size=True))`` if that is strictly
    smaller than ``raw``, else ``(CODEC_RAW, raw)``.
    """
    packed = lz4.block.compress(raw, store_size=True)
    if len(packed) < len(raw):
        return CODEC_LZ4, packed
    return CODEC_RAW, bytes(raw)


def decode_chunk(codec: int, payload: bytes, expected_len_max: int = CHUNK_MAX_BYTES) -> bytes:
    """Inverse of :func:`encode_chunk`: the raw bytes of an encoded chunk.

    Raises:
        RemoteProtocolError: unknown codec, corrupt lz4 data, or a raw length above
            ``expected_len_max`` bytes (checked before decompressing).
    """
    if codec == CODEC_RAW:
        if len(payload) > expected_len_max:
            raise RemoteProtocolError("chunk larger than allowed", length=len(payload),
                                      limit=expected_len_max)
        return bytes(payload)
    if codec == CODEC_LZ4:
        if len(payload) < _LZ4_SIZE_PREFIX:
            raise RemoteProtocolError("lz4 chunk too short", length=len(payload))
        raw_len = int.from_bytes(payload[:_LZ4_SIZE_PREFIX], "little")
        if raw_len > expected_len_max:
            raise RemoteProtocolError("lz4 chunk declares a size above the limit",
                                      length=raw_len, limit=expected_len_max)
        try:
            raw = lz4.block.decompress(payload)
        except (lz4.block.LZ4BlockError, ValueError) as err:
            raise RemoteProtocolError(f"corrupt lz4 chunk: {err}") from err
        if len(raw) != raw_len:
            raise RemoteProtocolError("lz4 chunk decoded to a wrong size", length=len(raw),
                                      declared=raw_len)
        return raw
    raise RemoteProtocolError(f"unknown chunk codec {codec!r}", codec=codec)


def _check_digest(digest: object) -> bytes:
    if not isinstance(digest, (bytes, bytearray)) or len(digest) != DIGEST_SIZE:
        raise RemoteProtocolError("a digest must be 32 bytes", digest=repr(digest)[:80])
    return bytes(digest)


def _record_crc(header_wo_crc: bytes, payload: bytes) -> int:
    return crc32(payload, crc32(header_wo_crc)) & 0xFFFFFFFF


def record_header(digest: bytes, codec: int, payload: bytes) -> bytes:
    """The 41-byte pack record header of a chunk (``payload_len | codec | digest | crc32``,
    format in the module docstring). Pure CPU work (crc32 of the payload, which releases the
    GIL): callers may compute it in worker threads and hand it to :meth:`ChunkStore.put_prepared`
    as the fourth element of an item."""
    head = struct.pack("<IB32s", len(payload), codec, digest)
    return head + struct.pack("<I", _record_crc(head, payload))


_IOV_MAX = 1024  # iovecs per pwritev call (Linux IOV_MAX)
DROP_BEHIND_BYTES = 8 * 2**20       # a sequential pack read drops the pages it has passed, this many at a time
SEQUENTIAL_GAP_BYTES = 1 * 2**20    # a forward jump up to this much still counts as sequential
READ_SPAN_BYTES = 4 * 2**20         # get_encoded_many: records close together in a pack read with one pread of up to this
READ_SPAN_GAP_BYTES = 256 * 2**10   # ... when at most this far apart (the bytes between are read and dropped)
DIRECT_ALIGN = 4096                 # get_encoded_many(direct=True): O_DIRECT offsets, lengths, buffer addresses
ARENA_KEEP_BYTES = 8 * 2**20        # ... its read buffer, kept per thread for the next call up to this size


def _pwritev_all(fd: int, parts: list[bytes], offset: int) -> None:
    """Write ``parts`` back to back at ``offset`` without joining them (no copy)."""
    for i in range(0, len(parts), _IOV_MAX):
        group = parts[i:i + _IOV_MAX]
        want = sum(len(p) for p in group)
        written = os.pwritev(fd, group, offset)
        if written < want:  # short write (rare on regular files): finish the group plainly
            _pwrite_all(fd, b"".join(group)[written:], offset + written)
        offset += want


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while length > 0:
        part = os.pread(fd, length, offset)
        if not part:
            break
        parts.append(part)
        length -= len(part)
        offset += len(part)
    return b"".join(parts)


def _is_full(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, sqlite3.Error):
        return getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return False


def _translate(err: BaseException, what: str, **evidence: object) -> ReplicadError:
    if isinstance(err, ReplicadError):
        return err
    if _is_full(err):
        return StoreFullError(f"{what}: no space left on device", **evidence)
    if isinstance(err, OSError):
        return from_os_error(err, what, **evidence)
    return InternalError(f"{what}: {err}", **evidence)


class ChunkStore:
    """Content-addressed store of chunks (see the module docstring for formats and recovery).

    Args:
        root: data directory; created if absent.
        pack_target_bytes: a pack is sealed once appending would take it past this size
            (a single record larger than it still gets a pack of its own).
        clock: this site's wall clock in ns since the epoch (default ``time.time_ns``); read
            once per put batch for the chunks' arrival times, and by ``gc`` when no
            ``now_ns`` is given. Tests pass a fake one.

    Raises:
        RemoteProtocolError: a pack or the index was written by an unknown format version.
        StoreFullError / InternalError: the directory cannot be prepared.
    """

    def __init__(self, root: pathlib.Path, pack_target_bytes: int = 64 * 2**20,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.root = pathlib.Path(root)
        self._clock = clock
        self.pack_dir = self.root / "packs"
        self.pack_target_bytes = int(pack_target_bytes)
        self._lock = threading.Lock()
        self._read_fds: dict[int, int] = {}
        self._direct_fds: dict[int, int | None] = {}  # pack -> O_DIRECT descriptor, None: the file system refuses it
        self._arenas = threading.local()              # per thread: [aligned read buffer, bytes of it in use]
        self._read_runs: dict[int, list[int]] = {}  # pack -> [start, end) of the current sequential read run
        self._pack_sizes: dict[int, int] = {}
        self._active_id: int | None = None
        self._active_fd: int | None = None
        self._next_pack_id = 1
        self._chunk_count = 0
        self._repairs = 0
        self._closed = False
        try:
            created = not self.pack_dir.exists()
            self.pack_dir.mkdir(parents=True, exist_ok=True)
            if created:
                fsync_dir(self.root)
            self._db = sqlite3.connect(self.root / "index.sqlite3", check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._init_schema()
            self._recover()
        except (OSError, sqlite3.Error) as err:
            raise _translate(err, "opening the chunk store", root=str(self.root)) from err

    # ------------------------------------------------------------------ open / recovery

    def _init_schema(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO meta(key, value) VALUES('schema_version', ?)",
                       (INDEX_SCHEMA_VERSION,))
            db.execute("CREATE TABLE IF NOT EXISTS chunks(digest BLOB PRIMARY KEY, "
                       "pack INTEGER NOT NULL, offset INTEGER NOT NULL, "
                       "length INTEGER NOT NULL, codec INTEGER NOT NULL, "
                       "arrived_ns INTEGER NOT NULL) WITHOUT ROWID")
            db.execute("CREATE INDEX IF NOT EXISTS chunks_by_pack ON chunks(pack, offset)")
            db.execute("COMMIT")
        elif row[0] == 1:
            self._upgrade_from_1()
        elif row[0] != INDEX_SCHEMA_VERSION:
            raise RemoteProtocolError("chunk index has an unknown schema version",
                                      version=row[0], supported=INDEX_SCHEMA_VERSION)
        # chunks dropped as corrupt or lost and not stored again since (see repairs_pending);
        # an additive table: an index written before it existed gains it empty
        db.execute("CREATE TABLE IF NOT EXISTS repairs(digest BLOB PRIMARY KEY) WITHOUT ROWID")
        self._repairs = db.execute("SELECT COUNT(*) FROM repairs").fetchone()[0]

    def _upgrade_from_1(self) -> None:
        """Schema 1 -> 2 in one transaction: add ``chunks.arrived_ns`` with the upgrade time as
        its default, so every existing chunk counts as arrived now (errs towards keeping: the
        oldest of them become collectable one grace period after the upgrade). SQLite stores
        the default in the schema instead of rewriting the rows: O(1) for any index size. Every
        INSERT of this module names the column, so the default serves only the old rows."""
        db = self._db
        now = int(self._clock())
        db.execute("BEGIN IMMEDIATE")
        try:
            columns = [r[1] for r in db.execute("PRAGMA table_info(chunks)")]
            if "arrived_ns" not in columns:
                # an int formatted by us, not outside input: DEFAULT needs a literal
                db.execute(f"ALTER TABLE chunks ADD COLUMN arrived_ns INTEGER NOT NULL "
                           f"DEFAULT {now:d}")
            db.execute("UPDATE meta SET value=? WHERE key='schema_version'",
                       (INDEX_SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        log.warning("chunk index upgraded from schema 1 to %d: existing chunks count as "
                    "arrived at %d ns", INDEX_SCHEMA_VERSION, now)

    def _pack_path(self, pack_id: int) -> pathlib.Path:
        return self.pack_dir / f"{pack_id:08d}.pack"

    def _recover(self) -> None:
        ids = sorted(int(m.group(1)) for name in os.listdir(self.pack_dir)
                     if (m := _PACK_NAME.match(name)))
        for pack_id in ids:
            path = self._pack_path(pack_id)
            size = path.stat().st_size
            with open(path, "rb") as fh:
                head = fh.read(PACK_HEADER_SIZE)
            if len(head) < PACK_HEADER_SIZE:
                log.warning("removing pack %s torn at creation (%d bytes)", path.name, size)
                path.unlink()
                continue
            magic, version, _reserved = _PACK_HEADER.unpack(head)
            if magic != PACK_MAGIC:
                raise RemoteProtocolError("not a replicad pack file", path=str(path))
            if version != PACK_VERSION:
                raise RemoteProtocolError("pack file has an unknown format version",
                                          path=str(path), version=version,
                                          supported=PACK_VERSION)
            self._pack_sizes[pack_id] = size
        if ids:
            self._next_pack_id = ids[-1] + 1
        self._drop_dangling_rows()
        if self._pack_sizes:
            self._active_id = max(self._pack_sizes)
            self._recover_tail(self._active_id)
            self._active_fd = os.open(self._pack_path(self._active_id), os.O_RDWR)
        self._chunk_count = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def _drop_dangling_rows(self) -> None:
        db = self._db
        dropped = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            packs = [r[0] for r in db.execute("SELECT DISTINCT pack FROM chunks")]
            for pack_id in packs:
                if pack_id not in self._pack_sizes:
                    db.execute("INSERT OR IGNORE INTO repairs(digest) SELECT digest FROM chunks WHERE pack=?",
                               (pack_id,))
                    cur = db.execute("DELETE FROM chunks WHERE pack=?", (pack_id,))
                    log.warning("dropped %d index rows pointing into missing pack %d",
                                cur.rowcount, pack_id)
                    dropped += cur.rowcount
                    continue
                db.execute("INSERT OR IGNORE INTO repairs(digest) SELECT digest FROM chunks WHERE pack=? "
                           "AND offset + ? + length > ?", (pack_id, RECORD_HEADER_SIZE, self._pack_sizes[pack_id]))
                cur = db.execute("DELETE FROM chunks WHERE pack=? AND offset + ? + length > ?",
                                 (pack_id, RECORD_HEADER_SIZE, self._pack_sizes[pack_id]))
                if cur.rowcount:
                    log.warning("dropped %d index rows pointing beyond the end of pack %d",
                                cur.rowcount, pack_id)
                    dropped += cur.rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if dropped:
            log.warning("chunk store recovery dropped %d index rows in total", dropped)
        self._repairs = db.execute("SELECT COUNT(*) FROM repairs").fetchone()[0]

    def _recover_tail(self, pack_id: int) -> None:
        """Validate the active pack after its last indexed record: re-index valid records,
        truncate at the first invalid one."""
        path = self._pack_path(pack_id)
        size = self._pack_sizes[pack_id]
        row = self._db.execute("SELECT MAX(offset + ? + length) FROM chunks WHERE pack=?",
                               (RECORD_HEADER_SIZE, pack_id)).fetchone()
        offset = row[0] if row[0] is not None else PACK_HEADER_SIZE
        if offset >= size:
            return
        fd = os.open(path, os.O_RDWR)
        try:
            rows: list[tuple[bytes, int, int, int, int]] = []
            while offset < size:
                rec = self._read_valid_record(fd, offset, size)
                if rec is None:
                    break
                digest, codec, payload_len = rec
                rows.append((digest, pack_id, offset, payload_len, codec))
                offset += RECORD_HEADER_SIZE + payload_len
            if rows:
                now = int(self._clock())  # their first arrival was not recorded: keep them a full grace
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT OR IGNORE INTO chunks(digest, pack, offset, "
                                         "length, codec, arrived_ns) VALUES(?,?,?,?,?,?)",
                                         [r + (now,) for r in rows])
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                log.warning("re-indexed %d records of pack %d written before a crash",
                            len(rows), pack_id)
            if offset < size:
                log.warning("truncating torn tail of pack %d: %d bytes from offset %d",
                            pack_id, size - offset, offset)
                os.ftruncate(fd, offset)
                os.fsync(fd)
                self._pack_sizes[pack_id] = offset
        finally:
            os.close(fd)

    @staticmethod
    def _read_valid_record(fd: int, offset: int, size: int) -> tuple[bytes, int, int] | None:
        """Parse and fully verify the record at ``offset``; None if torn or invalid."""
        if offset + RECORD_HEADER_SIZE > size:
            return None
        head = _pread_exact(fd, RECORD_HEADER_SIZE, offset)
        payload_len, codec, digest, crc = _REC_HEADER.unpack(head)
        if offset + RECORD_HEADER_SIZE + payload_len > size:
            return None
        payload = _pread_exact(fd, payload_len, offset + RECORD_HEADER_SIZE)
        if len(payload) != payload_len or _record_crc(head[:-4], payload) != crc:
            return None
        try:
            raw = decode_chunk(codec, payload)
        except RemoteProtocolError:
            return None
        if digest_of(raw) != digest:
            return None
        return digest, codec, payload_len

    # ------------------------------------------------------------------ queries

    def missing(self, digests: Iterable[bytes]) -> list[bytes]:
        """The digests not present in the store, in input order, duplicates removed.

        Raises:
            RemoteProtocolError: a digest is not 32 bytes.
        """
        wanted: list[bytes] = []
        seen: set[bytes] = set()
        for d in digests:
            d = _check_digest(d)
            if d not in seen:
                seen.add(d)
                wanted.append(d)
        with self._lock:
            present = self._present(wanted)
        return [d for d in wanted if d not in present]

    def has(self, digest: bytes) -> bool:
        """True if a chunk with this digest is indexed."""
        digest = _check_digest(digest)
        with self._lock:
            return bool(self._present([digest]))

    def encoded_lengths(self, digests: Sequence[bytes]) -> dict[bytes, int]:
        """``{digest: payload bytes as stored}`` (compressed size, the frame's payload when
        served) for the digests this store indexes, from the index alone (no pack read): a
        server plans its reads by bytes before it reads (``/v1/peer/fetch``). Digests not
        indexed are left out. Raises RemoteProtocolError (a digest not 32 bytes),
        StoreFullError/InternalError (the index)."""
        wanted = list(dict.fromkeys(_check_digest(d) for d in digests))
        out: dict[bytes, int] = {}
        with self._lock:
            self._check_open()
            try:
                for i in range(0, len(wanted), _SQL_BATCH):
                    part = wanted[i:i + _SQL_BATCH]
                    marks = ",".join("?" * len(part))
                    out.update(self._db.execute(f"SELECT digest, length FROM chunks WHERE digest IN ({marks})",
                                                part))
            except sqlite3.Error as err:
                raise _translate(err, "querying the chunk index") from err
        return out

    def _present(self, digests: Sequence[bytes]) -> set[bytes]:
        self._check_open()
        present: set[bytes] = set()
        try:
            for i in range(0, len(digests), _SQL_BATCH):
                part = digests[i:i + _SQL_BATCH]
                marks = ",".join("?" * len(part))
                present.update(r[0] for r in self._db.execute(
                    f"SELECT digest FROM chunks WHERE digest IN ({marks})", part))
        except sqlite3.Error as err:
            raise _translate(err, "querying the chunk index") from err
        return present

    def _check_open(self) -> None:
        if self._closed:
            raise InternalError("chunk store used after close", root=str(self.root))

    # ------------------------------------------------------------------ writes

    def put_encoded(self, items: Sequence[tuple[bytes, int, bytes]]) -> int:
        """Store chunks received from a peer, as ``(digest, codec, payload)`` triples.

        Every item is verified first (decode, BLAKE3 == digest); if any fails, nothing of the
        batch is stored. Already-present digests are skipped (their arrival time is kept, not
        refreshed); new ones are recorded as arrived now (see :meth:`gc`).

        Returns:
            the number of chunks newly stored. O1: they are durable when this returns.

        Raises:
            IntegrityError: an item's content does not match its digest (evidence: digest).
            RemoteProtocolError: a malformed item (bad digest size, unknown codec, bad lz4).
            StoreFullError: the disk is full; the store is unchanged.
        """
        checked: list[tuple[bytes, int, bytes]] = []
        for item in items:
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                raise RemoteProtocolError("a chunk item must be (digest, codec, payload)")
            digest, codec, payload = item
            digest = _check_digest(digest)
            if not isinstance(codec, int) or isinstance(codec, bool) \
                    or not isinstance(payload, (bytes, bytearray)):
                raise RemoteProtocolError("bad chunk item types", digest=digest.hex())
            try:
                raw = decode_chunk(codec, payload)
            except RemoteProtocolError as err:
                raise RemoteProtocolError(f"chunk {digest.hex()}: {err.message}",
                                          digest=digest.hex(), **err.evidence) from err
            if digest_of(raw) != digest:
                raise IntegrityError(f"chunk content does not match its digest {digest.hex()}",
                                     digest=digest.hex())
            checked.append((digest, codec, bytes(payload)))
        return self._store(checked)

    def put_blocks(self, raws: Sequence[bytes]) -> list[bytes]:
        """Digest, encode and store local raw blocks; returns their digests in input order.

        O1: durable when this returns. Raises StoreFullError on a full disk (store unchanged).
        """
        items: list[tuple[bytes, int, bytes]] = []
        digests: list[bytes] = []
        for raw in raws:
            digest = digest_of(raw)
            codec, payload = encode_chunk(raw)
            items.append((digest, codec, payload))
            digests.append(digest)
        self._store(items)
        return digests

    def put_prepared(self, items: Sequence[tuple]) -> int:
        """Store locally produced ``(digest, codec, payload)`` triples without re-verifying
        them (the caller computed digest and encoding itself from bytes in its own memory, e.g.
        the scan, which needs the lz4 size for its randomness test). An item may carry a fourth
        element, its :func:`record_header` computed by the caller (saves the crc32 pass under
        the store lock). Returns the number newly stored; O1 as ``put_encoded``.
        """
        return self._store([(bytes(it[0]), it[1], bytes(it[2])) + tuple(it[3:4]) for it in items])

    def _store(self, items: Sequence[tuple]) -> int:
        with self._lock:
            self._check_open()
            present = self._present([item[0] for item in items])
            fresh: list[tuple[bytes, int, bytes]] = []
            for item in items:
                if item[0] not in present:
                    present.add(item[0])
                    fresh.append(item)
            if not fresh:
                return 0
            undo: list[tuple[int, int]] = []  # (pack_id, size before this batch)
            try:
                rows = self._append(fresh, undo)
                self._commit_rows(rows, int(self._clock()))
            except (OSError, sqlite3.Error) as err:
                self._undo_append(undo)
                raise _translate(err, "storing chunks", chunks=len(fresh)) from err
            self._chunk_count += len(rows)
            return len(rows)

    def _new_pack(self, undo: list[tuple[int, int]]) -> None:
        """Create the next pack (header fsynced, directory fsynced) and make it active."""
        pack_id = self._next_pack_id
        self._next_pack_id += 1
        path = self._pack_path(pack_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        undo.append((pack_id, -1))  # -1: created by this batch
        self._pack_sizes[pack_id] = 0
        try:
            _pwrite_all(fd, _PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION, 0), 0)
            os.fsync(fd)
            fsync_dir(self.pack_dir)
        except OSError:
            os.close(fd)
            raise
        if self._active_fd is not None:
            os.close(self._active_fd)
        self._active_id, self._active_fd = pack_id, fd
        self._pack_sizes[pack_id] = PACK_HEADER_SIZE

    def _append(self, items: Sequence[tuple[bytes, int, bytes]],
                undo: list[tuple[int, int]]) -> list[tuple[bytes, int, int, int, int]]:
        """Append records to the active pack(s), fsync each touched pack. Returns index rows."""
        rows: list[tuple[bytes, int, int, int, int]] = []
        buf: list[bytes] = []
        buf_start = 0

        def flush() -> None:
            if buf and self._active_fd is not None:
                preallocate(self._active_fd, buf_start, end - buf_start)  # ext4: see durable.preallocate
                _pwritev_all(self._active_fd, buf, buf_start)
                buf.clear()
                os.fsync(self._active_fd)  # O1: pack durable before the index commit
                release_cache(self._active_fd, buf_start, end - buf_start)

        if self._active_id is None:
            self._new_pack(undo)
        assert self._active_id is not None
        undo.append((self._active_id, self._pack_sizes[self._active_id]))
        end = buf_start = self._pack_sizes[self._active_id]
        for item in items:
            digest, codec, payload = item[0], item[1], item[2]
            rec_len = RECORD_HEADER_SIZE + len(payload)
            if end > PACK_HEADER_SIZE and end + rec_len > self.pack_target_bytes:
                flush()
                self._pack_sizes[self._active_id] = end
                self._new_pack(undo)
                end = buf_start = PACK_HEADER_SIZE
            buf.append(item[3] if len(item) > 3 else record_header(digest, codec, payload))
            buf.append(payload)
            rows.append((digest, self._active_id, end, len(payload), codec))
            end += rec_len
        flush()
        self._pack_sizes[self._active_id] = end
        return rows

    def _commit_rows(self, rows: Sequence[tuple[bytes, int, int, int, int]], arrived_ns: int) -> None:
        """Index the rows of one batch, all first arrived at ``arrived_ns`` (the same INSERT:
        no extra statement, no extra fsync)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO chunks(digest, pack, offset, length, codec, arrived_ns) "
                           "VALUES(?,?,?,?,?,?)", [(*r, arrived_ns) for r in rows])
            if self._repairs:
                db.executemany("DELETE FROM repairs WHERE digest=?", [(r[0],) for r in rows])
            db.execute("COMMIT")  # O1: index durable (synchronous=FULL) before "stored"
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if self._repairs:
            self._repairs = db.execute("SELECT COUNT(*) FROM repairs").fetchone()[0]

    def pending_repairs(self, limit: int = 4096) -> list[bytes]:
        """Up to ``limit`` digests of :attr:`repairs_pending` (to fetch them again)."""
        with self._lock:
            self._check_open()
            try:
                return [r[0] for r in self._db.execute("SELECT digest FROM repairs LIMIT ?", (limit,))]
            except sqlite3.Error as err:
                raise _translate(err, "querying the chunk index") from err

    @property
    def repairs_pending(self) -> int:
        """How many chunks this store dropped (found corrupt, or lost with a pack tail at
        recovery) and has not stored again since. While it is non-zero, snapshots recorded
        here may lack chunks, so they must not be trusted as complete (see
        ``transport.snapshot_complete``'s ``base``). Persistent across restarts."""
        return self._repairs

    def _undo_append(self, undo: list[tuple[int, int]]) -> None:
        """Truncate every pack touched by a failed batch back to its previous size."""
        for pack_id, old_size in reversed(undo):
            path = self._pack_path(pack_id)
            try:
                if old_size < 0:
                    if pack_id == self._active_id:
                        if self._active_fd is not None:
                            os.close(self._active_fd)
                        self._active_id, self._active_fd = None, None
                    self._pack_sizes.pop(pack_id, None)
                    path.unlink(missing_ok=True)
                    continue
                fd = os.open(path, os.O_RDWR)
                try:
                    os.ftruncate(fd, old_size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._pack_sizes[pack_id] = old_size
            except OSError as err:  # the tail stays unindexed; recovery truncates it
                log.error("could not truncate pack %d after a failed append: %s", pack_id, err)
        if self._active_id is None and self._pack_sizes:
            self._active_id = max(self._pack_sizes)
            try:
                self._active_fd = os.open(self._pack_path(self._active_id), os.O_RDWR)
            except OSError as err:
                log.error("could not reopen active pack %d: %s", self._active_id, err)
                self._active_id = None
        try:
            fsync_dir(self.pack_dir)
        except OSError as err:
            log.error("could not fsync pack directory after a failed append: %s", err)

    # ------------------------------------------------------------------ reads

    def _read_fd(self, pack_id: int) -> int:
        fd = self._read_fds.get(pack_id)
        if fd is None:
            fd = os.open(self._pack_path(pack_id), os.O_RDONLY)
            self._read_fds[pack_id] = fd
        return fd

    def _direct_fd(self, pack_id: int) -> int | None:
        """An O_DIRECT descriptor of pack ``pack_id`` (kept open like :meth:`_read_fd`), None
        where the file system refuses direct I/O (EINVAL, e.g. tmpfs). Caller holds the lock."""
        if pack_id not in self._direct_fds:
            try:
                self._direct_fds[pack_id] = os.open(self._pack_path(pack_id), os.O_RDONLY | os.O_DIRECT)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                self._direct_fds[pack_id] = None
        return self._direct_fds[pack_id]

    def _close_direct(self, pack_id: int) -> None:
        fd = self._direct_fds.pop(pack_id, None)
        if fd is not None:
            os.close(fd)

    def _arena_take(self, size: int, keep: bool) -> memoryview:
        """``size`` bytes (a multiple of DIRECT_ALIGN) of this thread's page-aligned read buffer,
        after what ``keep`` asks to keep from this call's earlier spans (else from its start). A
        buffer too small is replaced by one as large as this call's spans so far (kept for the
        next call up to ARENA_KEEP_BYTES); the old one lives on in the views taken of it. Why reused: a fresh
        mapping per read cost more in page faults and unmapping than the copies it saved."""
        arena = getattr(self._arenas, "a", None)
        used = arena[1] if arena is not None and keep else 0
        if arena is None or len(arena[0]) - used < size:  # room for all this call took so far: the next fits
            arena = [memoryview(mmap.mmap(-1, max(used + size, 2**20), flags=mmap.MAP_PRIVATE)), 0]
            used = 0
            if len(arena[0]) <= ARENA_KEEP_BYTES:
                self._arenas.a = arena
        arena[1] = used + size
        return arena[0][used:used + size]

    def _read_span(self, pack_id: int, start: int, length: int, direct: bool, keep: bool = False) -> memoryview:
        """``length`` bytes of pack ``pack_id`` from ``start`` (fewer at its end). ``direct``:
        read with O_DIRECT into this thread's aligned read buffer (the aligned range around the
        span; the result is a view of it, overwritten by the thread's next read unless ``keep``
        keeps the earlier spans of the same call): the disk DMAs into it, so no page-cache
        pages are filled, copied out and dropped behind (serving a fetch at disk speed spent
        ~30 % of a holder's CPU in the buffered pread path here), and what is verified is what
        the disk holds. Falls back to the page cache where the file system refuses direct I/O.
        Caller holds the lock. Raises OSError."""
        fd = self._read_fd(pack_id)
        dfd = self._direct_fd(pack_id) if direct else None
        if dfd is not None:
            try:
                return self._read_direct(dfd, pack_id, start, length, keep, fallback=False)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                self._close_direct(pack_id)
                self._direct_fds[pack_id] = None  # refused after all: the page cache for this pack
        data = memoryview(_pread_exact(fd, length, start))
        self._drop_behind(pack_id, fd, start, len(data))
        return data

    def _read_direct(self, dfd: int, pack_id: int, start: int, length: int, keep: bool,
                     fallback: bool = True) -> memoryview:
        """The O_DIRECT read of :meth:`_read_span` on descriptor ``dfd`` (the caller's: the lock
        need not be held). ``fallback``: a read refused with EINVAL (direct I/O refused after
        all) is done again through the page cache under the lock, and the pack is read that way
        from then on. Raises OSError."""
        lo = start - start % DIRECT_ALIGN
        size = -(-(start + length - lo) // DIRECT_ALIGN) * DIRECT_ALIGN
        buf = self._arena_take(size, keep)
        got = 0
        try:
            while got < size:
                n = os.preadv(dfd, [buf[got:]], lo + got)
                if n <= 0 or n % DIRECT_ALIGN:  # the end of the pack (a partial last page)
                    got += max(n, 0)
                    break
                got += n
        except OSError as err:
            if err.errno != errno.EINVAL or not fallback:
                raise
            with self._lock:
                self._check_open()
                self._close_direct(pack_id)
                self._direct_fds[pack_id] = None
                return self._read_span(pack_id, start, length, False, keep)
        return buf[start - lo:max(start - lo, min(got, start - lo + length))]

    def _drop_behind(self, pack_id: int, fd: int, offset: int, length: int) -> None:
        """Drop the page-cache pages behind a sequential read of a pack (restore, catch-up,
        a first ship) once DROP_BEHIND_BYTES were read in one run; a read that jumps back or
        more than SEQUENTIAL_GAP_BYTES ahead starts a new run. Why: reading 529 MB of packs
        cold took 0.52–1.1 s (0.35–0.9 s system CPU) through fresh page-cache memory here and
        0.27–0.30 s (0.07–0.10 s) with the pages dropped behind the reader, which then reuses
        them (see ARCHITECTURE.md, "Page cache and bulk I/O"). Caller holds the lock."""
        end = offset + length
        run = self._read_runs.get(pack_id)
        if run is None or offset < run[1] or offset > run[1] + SEQUENTIAL_GAP_BYTES:
            self._read_runs[pack_id] = [offset, end]
            return
        run[1] = end
        if offset - run[0] >= DROP_BEHIND_BYTES:
            release_cache(fd, run[0], offset - run[0])  # whole pages only: this record's stay
            run[0] = offset

    def _read_record(self, digest: bytes) -> tuple[int, bytes, int, int]:
        """(codec, payload, pack, offset) of an indexed chunk; header and record crc32 checked
        (ISA-L's crc32, ~21 GB/s: a few microseconds per chunk), not hashed."""
        with self._lock:
            self._check_open()
            try:
                row = self._db.execute("SELECT pack, offset, length, codec FROM chunks "
                                       "WHERE digest=?", (digest,)).fetchone()
            except sqlite3.Error as err:
                raise _translate(err, "querying the chunk index") from err
            if row is None:
                raise NotFoundError(f"chunk {digest.hex()} is not in the store",
                                    digest=digest.hex())
            pack_id, offset, length, codec = row
            try:
                fd = self._read_fd(pack_id)
                data = _pread_exact(fd, RECORD_HEADER_SIZE + length, offset)
                self._drop_behind(pack_id, fd, offset, len(data))
            except OSError as err:
                raise IntegrityError(f"chunk {digest.hex()} unreadable: {err}",
                                     digest=digest.hex(), pack=pack_id, offset=offset) from err
        if len(data) != RECORD_HEADER_SIZE + length:
            raise IntegrityError(f"chunk {digest.hex()} truncated in pack {pack_id}",
                                 digest=digest.hex(), pack=pack_id, offset=offset)
        rec_len, rec_codec, rec_digest, crc = _REC_HEADER.unpack_from(data)
        if (rec_len, rec_codec, rec_digest) != (length, codec, digest):
            raise IntegrityError(f"chunk {digest.hex()}: pack record header does not match "
                                 "the index", digest=digest.hex(), pack=pack_id, offset=offset)
        payload = data[RECORD_HEADER_SIZE:]
        if _record_crc(data[:RECORD_HEADER_SIZE - 4], payload) != crc:
            # the payload may still hash right (a flipped bit in the crc field itself), but the
            # record is damaged on disk: a collection (_record_ok) would drop it; verify heals it now
            raise IntegrityError(f"chunk {digest.hex()}: pack record checksum mismatch",
                                 digest=digest.hex(), pack=pack_id, offset=offset)
        return codec, payload, pack_id, offset

    def _verified(self, digest: bytes) -> tuple[int, bytes, bytes]:
        codec, payload, pack_id, offset = self._read_record(digest)
        try:
            raw = decode_chunk(codec, payload)
        except RemoteProtocolError as err:
            raise IntegrityError(f"chunk {digest.hex()} is corrupt: {err.message}",
                                 digest=digest.hex(), pack=pack_id, offset=offset) from err
        if digest_of(raw) != digest:
            raise IntegrityError(f"chunk {digest.hex()} is corrupt (digest mismatch)",
                                 digest=digest.hex(), pack=pack_id, offset=offset)
        return codec, payload, raw

    def get(self, digest: bytes) -> bytes:
        """Raw bytes of a chunk, always verified (BLAKE3 of the decoded bytes == digest).

        Raises:
            NotFoundError: not in the store.
            IntegrityError: corrupt on disk (evidence: digest, pack, offset); see
                :meth:`delete_corrupt`.
        """
        return self._verified(_check_digest(digest))[2]

    def get_encoded(self, digest: bytes) -> tuple[int, bytes]:
        """``(codec, payload)`` of a chunk for shipping, verified like :meth:`get`."""
        codec, payload, _raw = self._verified(_check_digest(digest))
        return codec, payload

    def get_encoded_many(self, digests: Sequence[bytes], *, decoded: bool = False, views: bool = False,
                         direct: bool = False) -> tuple[
            list[tuple[bytes, int, bytes]], list[bytes], list[tuple[bytes, IntegrityError]]]:
        """Many chunks for shipping or serving, each verified like :meth:`get` (decode, BLAKE3).

        Records close together in a pack (at most READ_SPAN_GAP_BYTES apart) are read with one
        ``pread`` of up to READ_SPAN_BYTES: a snapshot's chunks lie in a pack in the order they
        were stored, so a batch of 64 is typically one read instead of 64 (cold packs: the disk
        sees few large reads, and the lock is held for a few syscalls, not one per chunk). The
        verification runs outside the lock.

        Returns ``(found, missing, corrupt)``: ``(digest, codec, payload)`` in the order asked
        (a digest asked twice is returned twice), the digests not indexed, and ``(digest,
        IntegrityError)`` of those unreadable or corrupt (see :meth:`delete_corrupt`).
        ``decoded``: ``payload`` is the chunk's raw bytes, the very ones the check decoded and
        hashed (a reader that serves them saves a second decode).
        ``direct``: the packs are read with O_DIRECT (:meth:`_read_span`) into a buffer of the
        calling thread, reused: for bulk reads of cold packs (serving a restore); the page
        cache where the file system refuses it.
        ``views``: each payload is a read-only ``memoryview`` of the buffer it was read into (no
        copy per chunk), for a caller that copies it once right away (serving a fetch:
        :func:`~replicad.core.wire.encode_frames`). With ``direct`` these views are valid only
        until the same thread calls this method again (its buffer is reused).
        """
        asked = [_check_digest(d) for d in digests]
        records: dict[bytes, tuple[int, bytes, int, int] | IntegrityError] = {}
        spans: list[tuple[list, int, int, int, int]] = []  # (rows, pack, start, end, descriptor) to read directly

        def take_records(group: list, pack_id: int, start: int, data: memoryview) -> None:
            for digest, _p, offset, length, codec in group:
                rec = data[offset - start:offset - start + RECORD_HEADER_SIZE + length]
                if len(rec) != RECORD_HEADER_SIZE + length:
                    records[digest] = IntegrityError(f"chunk {digest.hex()} truncated in pack {pack_id}",
                                                     digest=digest.hex(), pack=pack_id, offset=offset)
                    continue
                rec_len, rec_codec, rec_digest, _crc = _REC_HEADER.unpack_from(rec)
                if (rec_len, rec_codec, rec_digest) != (length, codec, digest):
                    records[digest] = IntegrityError(f"chunk {digest.hex()}: pack record header does not match "
                                                     "the index", digest=digest.hex(), pack=pack_id, offset=offset)
                    continue
                payload = rec[RECORD_HEADER_SIZE:]
                records[digest] = (codec, payload if views else bytes(payload), pack_id, offset)

        with self._lock:
            self._check_open()
            unique = list(dict.fromkeys(asked))
            rows: list[tuple[bytes, int, int, int, int]] = []
            try:
                for i in range(0, len(unique), _SQL_BATCH):
                    part = unique[i:i + _SQL_BATCH]
                    marks = ",".join("?" * len(part))
                    rows.extend(self._db.execute(
                        f"SELECT digest, pack, offset, length, codec FROM chunks WHERE digest IN ({marks})", part))
            except sqlite3.Error as err:
                raise _translate(err, "querying the chunk index") from err
            rows.sort(key=lambda r: (r[1], r[2]))
            i = 0
            while i < len(rows):
                pack_id, start = rows[i][1], rows[i][2]
                end = start + RECORD_HEADER_SIZE + rows[i][3]
                j = i
                while (j + 1 < len(rows) and rows[j + 1][1] == pack_id
                       and rows[j + 1][2] - end <= READ_SPAN_GAP_BYTES
                       and rows[j + 1][2] + RECORD_HEADER_SIZE + rows[j + 1][3] - start <= READ_SPAN_BYTES):
                    j += 1
                    end = max(end, rows[j][2] + RECORD_HEADER_SIZE + rows[j][3])
                group, i = rows[i:j + 1], j + 1
                try:
                    dfd = self._direct_fd(pack_id) if direct else None
                    if dfd is not None:  # read below, outside the lock, on a descriptor of its own
                        try:
                            spans.append((group, pack_id, start, end, os.dup(dfd)))
                            continue
                        except OSError:  # no descriptor to spare: read here through the page cache
                            pass
                    data = self._read_span(pack_id, start, end - start, False)
                except OSError as err:
                    for digest, _p, offset, _l, _c in group:
                        records[digest] = IntegrityError(f"chunk {digest.hex()} unreadable: {err}",
                                                         digest=digest.hex(), pack=pack_id, offset=offset)
                    continue
                take_records(group, pack_id, start, data.toreadonly())
        # Direct reads outside the lock: several readers (a holder's streams) keep several reads in
        # flight (the disk's queue), where a read under the lock made each wait for the one before.
        # A duplicated descriptor keeps its pack readable even if a collection replaces it meanwhile
        # (the offsets are those of the rows read under the lock, in that very file).
        for k, (group, pack_id, start, end, fd) in enumerate(spans):
            try:
                data = self._read_direct(fd, pack_id, start, end - start, keep=views and k > 0)
            except OSError as err:
                for digest, _p, offset, _l, _c in group:
                    records[digest] = IntegrityError(f"chunk {digest.hex()} unreadable: {err}",
                                                     digest=digest.hex(), pack=pack_id, offset=offset)
                continue
            finally:
                os.close(fd)
            take_records(group, pack_id, start, data.toreadonly())
        found: list[tuple[bytes, int, bytes]] = []
        missing: list[bytes] = []
        corrupt: list[tuple[bytes, IntegrityError]] = []
        checked: dict[bytes, IntegrityError | None] = {}
        raws: dict[bytes, bytes] = {}
        for digest in asked:
            rec = records.get(digest)
            if rec is None:
                missing.append(digest)
                continue
            if isinstance(rec, IntegrityError):
                corrupt.append((digest, rec))
                continue
            codec, payload, pack_id, offset = rec
            if digest not in checked:
                try:
                    if codec == CODEC_RAW and len(payload) <= CHUNK_MAX_BYTES:
                        raw = payload  # hashed where it lies: decode_chunk would copy it
                    else:
                        raw = decode_chunk(codec, payload)
                    ok = digest_of(raw) == digest
                    why = "digest mismatch"
                    if ok and decoded:
                        raws[digest] = raw
                except RemoteProtocolError as err:
                    ok, why = False, err.message
                checked[digest] = None if ok else IntegrityError(f"chunk {digest.hex()} is corrupt ({why})",
                                                                 digest=digest.hex(), pack=pack_id, offset=offset)
            bad = checked[digest]
            if bad is not None:
                corrupt.append((digest, bad))
            else:
                found.append((digest, codec, raws[digest] if decoded else payload))
        return found, missing, corrupt

    def get_with_ratio(self, digest: bytes) -> tuple[bytes, float]:
        """``(raw bytes, lz4 ratio)`` of a chunk, verified like :meth:`get`; the ratio is
        ``len(payload) / len(raw)`` when it is stored lz4-compressed, 1.0 when raw (lz4 did not
        shrink it): the compressibility the detection signals compare (issue 14), for free."""
        codec, payload, raw = self._verified(_check_digest(digest))
        return raw, (len(payload) / len(raw) if codec == CODEC_LZ4 and raw else 1.0)

    def delete_corrupt(self, digest: bytes) -> None:
        """Drop the index row of a chunk found corrupt, so that it can be fetched again from a
        peer and re-stored with ``put_encoded``. The bad bytes stay in the pack as waste
        until the next ``gc``. Missing digests are ignored."""
        digest = _check_digest(digest)
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute("DELETE FROM chunks WHERE digest=?", (digest,))
                if cur.rowcount:
                    self._db.execute("INSERT OR IGNORE INTO repairs(digest) VALUES(?)", (digest,))
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise _translate(err, "deleting a corrupt chunk", digest=digest.hex()) from err
            if cur.rowcount:
                self._chunk_count -= cur.rowcount
                self._repairs = self._db.execute("SELECT COUNT(*) FROM repairs").fetchone()[0]
                log.warning("dropped corrupt chunk %s from the index", digest.hex())

    # ------------------------------------------------------------------ gc

    def gc(self, live: set[bytes], min_waste_ratio: float = 0.0, *,
           grace_ns: int = DEFAULT_GC_GRACE_NS, now_ns: int | None = None) -> dict:
        """Remove every chunk whose digest is not in ``live`` and that first arrived here at
        least ``grace_ns`` before ``now_ns`` (O4: the caller passes the union of
        :func:`replicad.core.manifest.chunk_digests` of every retained snapshot).

        The grace protects chunks no catalog record references *yet*: those of a snapshot
        still being received, or scanned before its manifest is recorded. It does not protect
        a chunk that arrived long ago, became unreferenced and is needed again by a snapshot in
        flight that found it present (``missing``/dedup): the caller keeps such chunks in
        ``live`` (the digests of the manifests it has in flight). Arrival times are never
        refreshed by a second put, so junk a peer keeps re-sending is still collected one grace
        after its first arrival. A chunk whose arrival is after ``now_ns`` (the clock went back)
        counts as young.

        Packs holding dead or unindexed bytes above ``min_waste_ratio`` of their size are
        compacted one at a time, least kept data first: their kept (live or young) chunks are
        verified and appended to the active pack (a new pack if the active one is itself
        compacted) with their arrival times unchanged, fsynced, the index rows are switched in
        one transaction, then the old pack is deleted. A pack is never edited in place. Kept
        chunks found corrupt while copying are dropped from the index like
        :meth:`delete_corrupt` (counted in ``chunks_corrupt``).

        Args:
            live: 32-byte digests that must stay whatever their age.
            min_waste_ratio: compact a pack only once its waste is at least this fraction of
                its size (0.0: any waste).
            grace_ns: ns; an unreferenced chunk younger than this by arrival is kept. Default
                :data:`DEFAULT_GC_GRACE_NS` (24 h, why: see there); 0 collects every
                unreferenced chunk at once.
            now_ns: this site's wall clock in ns since the epoch; default the store's clock.

        Returns:
            ``{"packs_removed", "chunks_removed", "bytes_freed", "chunks_corrupt",
            "young_kept", "young_kept_bytes"}``: counts, and bytes of pack files; the last two
            are the unreferenced chunks kept for their grace, after this run, and their record
            bytes on disk (header + payload), for the caller's quota of unreferenced data.

        Raises:
            UsageError: ``grace_ns`` is not a non-negative int.
            InternalError: the store is closed.
            StoreFullError: no room to copy kept chunks (the store stays consistent).
        """
        if isinstance(grace_ns, bool) or not isinstance(grace_ns, int) or grace_ns < 0:
            raise UsageError("gc grace must be a non-negative int of ns", grace_ns=repr(grace_ns))
        with self._lock:
            self._check_open()
            now = int(self._clock()) if now_ns is None else int(now_ns)
            try:
                return self._gc_locked(live, min_waste_ratio, now - grace_ns)
            except (OSError, sqlite3.Error) as err:
                raise _translate(err, "garbage-collecting the chunk store") from err

    def _gc_locked(self, live: set[bytes], min_waste_ratio: float, young_after_ns: int) -> dict:
        """gc under the lock; a chunk outside ``live`` with ``arrived_ns > young_after_ns``
        is young and kept."""
        if self._repairs:  # a chunk no kept snapshot needs any more needs no repair either
            gone = [(r[0],) for r in self._db.execute("SELECT digest FROM repairs") if r[0] not in live]
            if gone:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("DELETE FROM repairs WHERE digest=?", gone)
                self._db.execute("COMMIT")
                self._repairs = self._db.execute("SELECT COUNT(*) FROM repairs").fetchone()[0]
        per_pack: dict[int, list[tuple[bytes, int, int, int]]] = {p: [] for p in self._pack_sizes}
        keep: set[bytes] = set()  # live, or young: what survives this run
        young_kept = young_bytes = 0
        for digest, pack_id, offset, length, codec, arrived_ns in self._db.execute(
                "SELECT digest, pack, offset, length, codec, arrived_ns FROM chunks"):
            per_pack.setdefault(pack_id, []).append((digest, offset, length, codec))
            if digest in live:
                keep.add(digest)
            elif arrived_ns > young_after_ns:
                keep.add(digest)
                young_kept += 1
                young_bytes += RECORD_HEADER_SIZE + length
        victims: list[tuple[int, int]] = []  # (kept bytes, pack id)
        for pack_id, rows in per_pack.items():
            size = self._pack_sizes.get(pack_id, 0)
            kept_bytes = sum(RECORD_HEADER_SIZE + r[2] for r in rows if r[0] in keep)
            waste = size - PACK_HEADER_SIZE - kept_bytes
            if pack_id == self._active_id and waste == 0:
                continue  # the active pack is where appends go
            if (waste > 0 and waste >= min_waste_ratio * size) or not rows:
                victims.append((kept_bytes, pack_id))
        # Packs with the least kept data first: on a full disk, dropping dead packs frees the
        # room needed to copy the kept chunks of the others.
        victims.sort()
        result = {"packs_removed": 0, "chunks_removed": 0, "bytes_freed": 0, "chunks_corrupt": 0,
                  "young_kept": young_kept, "young_kept_bytes": young_bytes}
        bytes_before = sum(self._pack_sizes.values())
        for _kept_bytes, pack_id in victims:
            self._gc_pack(pack_id, sorted(per_pack[pack_id], key=lambda r: r[1]), keep, live, result)
        result["bytes_freed"] = bytes_before - sum(self._pack_sizes.values())
        if victims:
            log.info("gc: %s", result)
        return result

    def _gc_pack(self, pack_id: int, rows: list[tuple[bytes, int, int, int]], kept: set[bytes],
                 live: set[bytes], result: dict) -> None:
        """Copy the kept (live or young), verified chunks of one pack to the active pack,
        switch the index rows in one transaction (arrival times unchanged), then delete the
        pack."""
        fd = self._read_fd(pack_id)
        keep: list[tuple[bytes, int, bytes]] = []
        dropped: list[bytes] = []
        corrupt = 0
        young_corrupt: list[tuple[bytes, int]] = []  # (digest, record bytes)
        for digest, offset, length, codec in rows:
            if digest not in kept:
                dropped.append(digest)
                continue
            record = _pread_exact(fd, RECORD_HEADER_SIZE + length, offset)
            if not self._record_ok(record, digest, codec, length):
                log.warning("gc: kept chunk %s corrupt in pack %d at %d; dropped from the "
                            "index", digest.hex(), pack_id, offset)
                dropped.append(digest)
                corrupt += 1
                if digest not in live:
                    young_corrupt.append((digest, RECORD_HEADER_SIZE + length))
                continue
            keep.append((digest, codec, record[RECORD_HEADER_SIZE:]))
        undo: list[tuple[int, int]] = []
        try:
            moved: list[tuple[bytes, int, int, int, int]] = []
            if keep:
                if pack_id == self._active_id:
                    self._new_pack(undo)  # never append to a pack being removed
                moved = self._append(keep, undo)  # fsynced
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("UPDATE chunks SET pack=?, offset=? WHERE digest=?",
                               [(r[1], r[2], r[0]) for r in moved])
                db.executemany("DELETE FROM chunks WHERE digest=?", [(d,) for d in dropped])
                if corrupt:  # like delete_corrupt: a kept snapshot now lacks them until refetched
                    db.executemany("INSERT OR IGNORE INTO repairs(digest) VALUES(?)",
                                   [(d,) for d in dropped if d in live])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except (OSError, sqlite3.Error):
            self._undo_append(undo)
            raise
        # The index no longer references the pack: removing it now is safe.
        read_fd = self._read_fds.pop(pack_id, None)
        self._close_direct(pack_id)
        self._read_runs.pop(pack_id, None)
        if read_fd is not None:
            os.close(read_fd)
        if pack_id == self._active_id:
            if self._active_fd is not None:
                os.close(self._active_fd)
            self._active_id, self._active_fd = None, None
        self._pack_sizes.pop(pack_id, None)
        self._pack_path(pack_id).unlink(missing_ok=True)
        fsync_dir(self.pack_dir)
        self._chunk_count -= len(dropped)
        if corrupt:
            self._repairs = self._db.execute("SELECT COUNT(*) FROM repairs").fetchone()[0]
        result["packs_removed"] += 1
        result["chunks_removed"] += len(dropped) - corrupt
        result["chunks_corrupt"] += corrupt
        result["young_kept"] -= len(young_corrupt)
        result["young_kept_bytes"] -= sum(n for _d, n in young_corrupt)

    @staticmethod
    def _record_ok(record: bytes, digest: bytes, codec: int, length: int) -> bool:
        if len(record) != RECORD_HEADER_SIZE + length:
            return False
        rec_len, rec_codec, rec_digest, crc = _REC_HEADER.unpack_from(record)
        if (rec_len, rec_codec, rec_digest) != (length, codec, digest):
            return False
        payload = record[RECORD_HEADER_SIZE:]
        if _record_crc(record[:RECORD_HEADER_SIZE - 4], payload) != crc:
            return False
        try:
            return digest_of(decode_chunk(codec, payload)) == digest
        except RemoteProtocolError:
            return False

    # ------------------------------------------------------------------ misc

    def stats(self) -> dict:
        """``{"chunks": indexed chunk count, "stored_bytes": total pack file bytes on disk,
        "packs": pack file count, "repairs_pending": chunks dropped and not stored again}``."""
        with self._lock:
            return {"chunks": self._chunk_count, "stored_bytes": sum(self._pack_sizes.values()),
                    "packs": len(self._pack_sizes), "repairs_pending": self._repairs}

    def close(self) -> None:
        """Close files and the index. Idempotent; the store is unusable afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()
            for fd in self._direct_fds.values():
                if fd is not None:
                    os.close(fd)
            self._direct_fds.clear()
            if self._active_fd is not None:
                os.close(self._active_fd)
                self._active_fd = None
            self._db.close()

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
