"""The ``file`` snapshot source: scan a raw image file or block device into a snapshot.

One sequential pass in large batches (``read_size_bytes``, default READ_SIZE_BYTES = 16 MiB).
Each batch is split among the worker threads; each worker reads its part with ``preadv``
into its own reused buffer (blocks are memoryview slices, never copied unless stored) and
hashes it, so the page-cache copy runs on every core (BLAKE3, xxh3, lz4 and crc32 release
the GIL too). Per block: for an incremental scan with a valid
fingerprint cache (:mod:`replicad.storage.fingerprints`), an xxh3-128 fingerprint first — a block whose
fingerprint matches the cache keeps the parent's digest; every other block gets the zero check
(memcmp against a zero block), BLAKE3, the comparison with the parent's digest at the same
index, and, if changed and non-zero, lz4, its pack record header (crc32) and the randomness
test. Finding batch k+1 (holes: SEEK_DATA) and loading its parent digests overlap the reading
and hashing of batch k; storing (pack fsync, index commit) overlaps both. Measured in-process
on the reference machine, 1 GiB, 1 % changed: 0.21 s (the previous design — one reader
thread feeding the hashers, 8 MiB batches — 0.30 s). The event loop only awaits; it never
touches a block.

Page cache (``private``): the scan drops the pages it read behind itself
(``posix_fadvise(POSIX_FADV_DONTNEED)`` of each worker's part, 4-16 MiB, right after it is
read), so that a full scan neither fills the page cache with a whole volume (evicting the
host's other hot data) nor leaves a clone's pages for its deletion to evict (measured: 0.3 s
at 16 GiB in the next tracked cycle's ``drop_s``; tests/bench/results/bench.md, "scan drops
the pages it read"). Only pages of the parts it read itself, and:

* ``private=True`` (a reflink clone or a view only this process reads: the full scan and the
  verifier of the tracked sources): every part is dropped after it is read;
* ``private=False`` (a live image or device, e.g. the ``file`` source while the hospital's VM
  uses it through the host's page cache): a batch is dropped only if none of its pages was
  cached before this scan read anything near it, so the VM's hot pages stay (a batch holding
  one cached page is left whole in the cache). Checked by one ``cachestat(2)`` call per batch
  (Linux >= 6.5: a page count, microseconds) rather than a per-page ``mincore`` of a mapping
  (an mmap per batch and a byte per page). The check of batch k+1 is made before batch k is
  read: the kernel's readahead out of batch k would otherwise make batch k+1 look cached
  (exact while the device's readahead window, ``read_ahead_kb``, is at most one batch).
  Readahead stays on (turning it off for an exact check per part, POSIX_FADV_RANDOM, left
  small folios: measured slower to read and to evict). Without ``cachestat`` (older kernel,
  EPERM) nothing is dropped: the page cache behaves as before. A page the VM reads between
  the check and the drop is dropped too (it is read back on its next use: a cost, never a
  wrong byte).

The parts of a batch are read in parallel on one descriptor: the kernel's readahead out of one
part may bring back pages its neighbour already dropped, so each dropped batch is dropped once
more after the next batch is read (the last one after the last store; a private source's
with the hole spans after it, where readahead also brings zero pages). Dropping never changes
what is read: a scan's results are the same either way.

Blocks: ``n_blocks = ceil(size / block_size)``; the last block may be short and its chunk
holds exactly the bytes present (no padding). All-zero blocks get ``ZERO_DIGEST`` and are
never stored. A block is *changed* exactly as :func:`replicad.core.manifest.diff` defines it, so
``ScanResult.changed_blocks == diff(parent, manifest)``.

Stats written into ``manifest.stats`` (all integers)::

    total_blocks, zero_blocks, changed_blocks, changed_bytes (raw bytes of changed blocks),
    random_changed_blocks (changed non-zero blocks that look random, see replicad.core.anomaly;
        measured for incremental snapshots only, 0 in a full one: the first snapshot is clean
        by definition and its score feeds no baseline, so the entropy test — ~100 µs per
        64 KiB block, holding the GIL — would be spent for nothing on every block),
    new_chunks (block and page chunks newly stored; the manifest chunk is not counted),
    has_parent (1 for an incremental snapshot, 0 for a full one)

Durability (O1): changed blocks, then pages, then the manifest (under its root) are durable
in the chunk store before :func:`take_snapshot` returns.

Hooks: ``pre_snapshot`` runs before the first read, ``post_snapshot`` right after the last
block is read and stored (before the last page and the manifest are written) — also when
the pre hook or the scan failed or was cancelled, so that a frozen filesystem is always
thawed.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import platform
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import blake3

from replicad.core.anomaly import looks_random
from xxhash import xxh3_128_digest

from replicad.storage.chunkstore import ChunkStore, digest_of, encode_chunk, record_header
from replicad.storage.durable import read_into
from replicad.core.errors import (
    InternalError,
    ReplicadError,
    SourceShrunkError,
    ToolError,
    UnavailableError,
    UsageError,
    from_os_error,
)
from replicad.storage.fingerprints import (
    FP_SIZE,
    FULL_PASS_EVERY_SCANS,
    FULL_PASS_MAX_AGE_NS,
    ZERO_ENTRY,
    FingerprintCache,
    FingerprintWriter,
)
from replicad.core.manifest import (
    BLOCK_SIZE_MAX_BYTES,
    DEFAULT_PAGE_ENTRIES,
    DIGEST_SIZE,
    PAGE_GEOMETRIES,
    page_entries_for,
    ZERO_DIGEST,
    Manifest,
    page_entries,
    zero_block,
)

log = logging.getLogger("replicad.sources.file")

DEFAULT_BLOCK_SIZE_BYTES = 65536
HOOK_STDERR_TAIL_BYTES = 2000


@dataclass(frozen=True)
class ScanResult:
    """Outcome of :func:`take_snapshot`.

    Attributes:
        manifest: the new snapshot's manifest (stored under ``manifest.root``).
        changed_blocks: sorted block indexes whose digest differs from the parent's.
        new_chunk_count: block and page chunks newly stored (== ``stats["new_chunks"]``).
        scan_seconds: wall time of the whole call, hooks included.
        hashed_blocks: non-zero blocks hashed with BLAKE3 (the others were recognised as
            unchanged by the fingerprint cache).
    """

    manifest: Manifest
    changed_blocks: list[int]
    new_chunk_count: int
    scan_seconds: float
    hashed_blocks: int = 0


@dataclass
class _PartResult:
    digests: bytes
    changed: list[int]
    zero_blocks: int
    changed_bytes: int
    random_blocks: int
    items: list[tuple[bytes, int, bytes, bytes]]  # (digest, codec, payload, record header)
    entries: bytes = b""  # fingerprint entries of these blocks (when a cache is written)
    hashed_blocks: int = 0  # non-zero blocks BLAKE3-hashed (the rest were recognised by fingerprint)


@dataclass
class _Totals:
    page_bytes: int = DEFAULT_PAGE_ENTRIES * DIGEST_SIZE  # one full page of the new manifest
    page_buf: bytearray = field(default_factory=bytearray)
    pages: list[bytes] = field(default_factory=list)  # page digests
    changed: list[int] = field(default_factory=list)
    zero_blocks: int = 0
    changed_bytes: int = 0
    random_blocks: int = 0
    new_chunks: int = 0
    hashed_blocks: int = 0
    # pages_out of take_snapshot: {digest: page bytes} of the pages stored, up to its bound
    kept_pages: dict[bytes, bytes] | None = None
    kept_room: int = 0

    def keep_pages(self, digests: list[bytes], pages: list[bytes]) -> None:
        """Remember the stored ``pages`` (whose digests ``_store_batch`` computed) while room lasts."""
        if self.kept_pages is None:
            return
        for d, page in zip(digests, pages):
            if len(page) > self.kept_room:
                self.kept_pages = None  # incomplete: the caller gets none rather than a part
                return
            self.kept_pages[d] = page
            self.kept_room -= len(page)


def _hash_part(view: memoryview, first_index: int, block_size: int, parent_digests: bytes,
               old_entries: bytes, key: int, test_random: bool, want_entries: bool) -> _PartResult:
    """Worker-thread work for the blocks of ``view`` (block 0 of it has index ``first_index``).

    ``parent_digests`` holds the parent's digests of these blocks (shorter when the parent
    ends earlier); ``old_entries`` the fingerprint cache entries of the parent (empty: no
    cache), with seed key ``key``. A block whose fingerprint, seeded with the parent's digest,
    equals the cached entry keeps the parent's digest (see replicad.storage.fingerprints); every other
    block gets the zero check (a memcmp against a zero block, never hashed) and BLAKE3.
    ``test_random``: run the randomness test on changed blocks (incremental snapshots only).
    ``want_entries``: also return the fingerprint entries of these blocks for the new cache.
    """
    zero = zero_block(block_size)
    digests = bytearray()
    entries = bytearray()
    changed: list[int] = []
    items: list[tuple[bytes, int, bytes, bytes]] = []
    zero_blocks = changed_bytes = random_blocks = hashed = 0
    n_old = len(old_entries) // FP_SIZE
    for rel, off in enumerate(range(0, len(view), block_size)):
        block = view[off:off + block_size]
        old = parent_digests[rel * DIGEST_SIZE:(rel + 1) * DIGEST_SIZE]
        fp = None
        if rel < n_old and old != ZERO_DIGEST and old:
            fp = xxh3_128_digest(block, key ^ int.from_bytes(old[:8], "little"))
            if fp == old_entries[rel * FP_SIZE:(rel + 1) * FP_SIZE]:
                digests += old  # unchanged: same content as the parent's block (fingerprint)
                if want_entries:
                    entries += fp
                continue
        is_zero = zero.startswith(block)  # memcmp; also right for a short last block
        if is_zero:
            digest = ZERO_DIGEST
            zero_blocks += 1
        else:
            digest = blake3.blake3(block).digest()
            hashed += 1
        digests += digest
        if want_entries:
            if is_zero:
                entries += ZERO_ENTRY
            elif fp is not None and digest == old:
                entries += fp  # seeded with this very digest
            else:
                entries += xxh3_128_digest(block, key ^ int.from_bytes(digest[:8], "little"))
        if (digest != old) if old else not is_zero:
            changed.append(first_index + rel)
            changed_bytes += len(block)
            if not is_zero:
                codec, payload = encode_chunk(block)
                items.append((digest, codec, payload, record_header(digest, codec, payload)))
                if test_random:
                    random_blocks += looks_random(block, len(payload))
    return _PartResult(bytes(digests), changed, zero_blocks, changed_bytes, random_blocks, items,
                       bytes(entries), hashed)


def _hole_part(n_blocks: int, first_index: int, block_size: int, size: int,
               parent_digests: bytes) -> _PartResult:
    """:func:`_hash_part` for ``n_blocks`` blocks known to be zeros (a hole): same result,
    nothing read or hashed."""
    changed: list[int] = []
    changed_bytes = 0
    if parent_digests and parent_digests != bytes(len(parent_digests)):
        for rel in range(len(parent_digests) // DIGEST_SIZE):
            if parent_digests[rel * DIGEST_SIZE:(rel + 1) * DIGEST_SIZE] != ZERO_DIGEST:
                index = first_index + rel
                changed.append(index)
                changed_bytes += min(block_size, size - index * block_size)
    return _PartResult(ZERO_DIGEST * n_blocks, changed, n_blocks, changed_bytes, 0, [])


class _ParentDigests:
    """Parent block digests by index range, one verified page load at a time (worker thread)."""

    def __init__(self, parent: Manifest | None, store: ChunkStore) -> None:
        self.parent = parent
        self.store = store
        self.cache: dict[int, bytes] = {}

    def range(self, first_index: int, count: int) -> bytes:
        parent = self.parent
        if parent is None or first_index >= parent.n_blocks:
            return b""
        last = min(first_index + count, parent.n_blocks)
        pe = parent.page_entries  # the parent's geometry (a format-1 parent: 4096)
        out = bytearray()
        for p in range(first_index // pe, (last - 1) // pe + 1):
            page = self._page(p)
            lo = max(first_index, p * pe) - p * pe
            hi = min(last, (p + 1) * pe) - p * pe
            out += page[lo * DIGEST_SIZE:hi * DIGEST_SIZE]
        return bytes(out)

    def _page(self, p: int) -> bytes:
        page = self.cache.get(p)
        if page is None:
            assert self.parent is not None
            page = self.store.get(self.parent.pages[p])  # verified: blake3(page) == digest
            if len(page_entries(page)) != self.parent.page_count(p):
                raise InternalError("parent manifest page has a wrong number of entries",
                                    page_index=p, seq=self.parent.seq)
            self.cache = {p: page}  # scans go forward: keep only the current page
        return page


T = TypeVar("T")


async def run_hook(argv: Sequence[str], name: str, timeout_s: float) -> None:
    """Run one hook command (argv list, no shell) and wait for it.

    Raises:
        ToolError: it could not start, timed out (then it is killed) or exited non-zero;
            evidence: ``command``, ``returncode``, ``stderr_tail``.
        UsageError: ``argv`` is a string or empty.
    """
    if isinstance(argv, (str, bytes)) or not argv:
        raise UsageError(f"{name} hook must be a non-empty argv list", hook=name)
    command = [str(a) for a in argv]
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
    except OSError as err:
        raise ToolError(f"{name} hook {command[0]!r} could not start: {err.strerror or err}",
                        hook=name, command=command, returncode=None,
                        stderr_tail="") from err
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError as err:
        proc.kill()
        await proc.wait()
        raise ToolError(f"{name} hook {command[0]!r} timed out after {timeout_s:g} s",
                        hook=name, command=command, returncode=None, stderr_tail="") from err
    finally:
        if proc.returncode is None:  # cancelled: do not leave the hook running
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        tail = stderr[-HOOK_STDERR_TAIL_BYTES:].decode("utf-8", "replace").strip()
        raise ToolError(f"{name} hook {command[0]!r} exited with {proc.returncode}: {tail}",
                        hook=name, command=command, returncode=proc.returncode,
                        stderr_tail=tail)


async def run_hooked(pre: Sequence[str], post: Sequence[str], action: Callable[[], Awaitable[T]],
                     what: str, timeout_s: float = 300.0) -> T:
    """``pre`` hook, ``await action()``, ``post`` hook — the post hook also after a failure of
    the pre hook or of the action, whose error then wins (the post hook's is logged). Empty
    hooks are skipped. Used by the sources that take their point in time in one step (the
    reflink clone, the qemu transaction) so that a freeze hook holds only that step.

    Raises:
        ToolError: a hook failed (see :func:`run_hook`); whatever ``action`` raises.
    """
    failed = False
    try:
        if pre:
            await run_hook(pre, "pre_snapshot", timeout_s)
        return await action()
    except BaseException:
        failed = True
        raise
    finally:
        if post:
            try:
                await run_hook(post, "post_snapshot", timeout_s)
            except ReplicadError as err:
                if not failed:
                    raise
                log.error("post_snapshot hook failed after a failed %s: %s", what, err)


def _open_source(path: Path) -> tuple[int, int]:
    """(fd, size in bytes): fstat for files, seek to end for block devices."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            size = os.lseek(fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            size = st.st_size
        else:
            raise UsageError("snapshot source must be a regular file or a block device",
                             path=str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def _cachestat_number(machine: str) -> int | None:
    """cachestat(2)'s system call number on ``machine`` (``platform.machine()``): 451 in the
    common table (Linux 6.5: asm-generic/unistd.h, arch/x86/entry/syscalls/syscall_64.tbl and the
    other arch tables); None where the number is another (alpha adds 110; MIPS and ia64 number by
    ABI), so that this module never calls another system call there (nothing is dropped)."""
    return None if machine.lower().startswith(("alpha", "mips", "ia64")) else 451


_CACHESTAT_SYSCALL = _cachestat_number(platform.machine())


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [("nr_cache", ctypes.c_uint64), ("nr_dirty", ctypes.c_uint64), ("nr_writeback", ctypes.c_uint64),
                ("nr_evicted", ctypes.c_uint64), ("nr_recently_evicted", ctypes.c_uint64)]


try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
    _libc.syscall.restype = ctypes.c_long
except (OSError, AttributeError):  # no C library to call syscall() through: never drop a live source
    _libc = None
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cached_pages(fd: int, offset: int, length: int) -> int | None:
    """Pages of ``fd`` in ``[offset, offset + length)`` (bytes) held in the page cache, by
    ``cachestat(2)`` (Linux >= 6.5; include/uapi/linux/mman.h); None when it cannot be asked
    (no such call, EPERM, or any other error). ``length`` 0 means to the end of the file."""
    if _libc is None or _CACHESTAT_SYSCALL is None:
        return None
    rng = _CachestatRange(offset, length)
    cs = _Cachestat()
    if _libc.syscall(ctypes.c_long(_CACHESTAT_SYSCALL), ctypes.c_uint(fd), ctypes.byref(rng), ctypes.byref(cs),
                     ctypes.c_uint(0)) != 0:
        return None
    return int(cs.nr_cache)


def _cold(fd: int, offset: int, length: int) -> bool:
    """True when ``[offset, offset + length)`` of ``fd`` holds no cached page: the pages a scan
    of a live source may drop after reading them. False when unknown (see
    :func:`cached_pages`)."""
    return cached_pages(fd, offset, length) == 0


DROP_ALL, DROP_COLD, DROP_NONE = "all", "cold", "none"


def _drop_mode(fd: int, private: bool) -> str:
    """How a scan of ``fd`` drops the pages it read (module docstring, "Page cache"):
    DROP_ALL for a private source; DROP_COLD for a live one when ``cachestat`` answers, else
    DROP_NONE."""
    if private:
        return DROP_ALL
    return DROP_NONE if cached_pages(fd, 0, 1) is None else DROP_COLD


DROP_ALIGN_BYTES = 2 * 2**20  # a private part's drop starts at this boundary (the largest page-cache folio, PMD size)


def _drop(fd: int, offset: int, end: int, size: int) -> None:
    """Drop the clean pages of ``[offset, end)`` of ``fd`` (``size`` bytes) from the page cache
    (``POSIX_FADV_DONTNEED``; dirty, locked or mapped pages stay). The kernel drops only whole
    folios inside the range: at the end of the source the range runs to the end of the file
    (the partial last page), and a caller whose pages before ``offset`` are its own passes
    ``offset`` rounded down (a large folio across the boundary of two parts). An error is
    ignored: the pages then stay cached, as they did before the scan dropped any."""
    try:
        os.posix_fadvise(fd, offset, 0 if 0 < size <= end else end - offset, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def check_size(parent: Manifest | None, size: int, source_path: Path, allow_shrink: bool) -> None:
    """Refuse a source of ``size`` bytes smaller than ``parent`` unless ``allow_shrink``.

    Raises:
        SourceShrunkError: evidence ``volume``, ``path``, ``size_bytes``, ``parent_size_bytes``,
            ``parent_seq``.
    """
    if parent is not None and size < parent.size_bytes and not allow_shrink:
        raise SourceShrunkError(
            f"the source of {parent.volume} at {source_path} is {size} bytes, smaller than its last snapshot "
            f"#{parent.seq} ({parent.size_bytes} bytes): refused, nothing stored (a truncated image or a "
            "device that came back smaller; if the volume was shrunk on purpose, set [volumes.source] "
            "allow_shrink = true for the next snapshot)", volume=parent.volume, path=str(source_path),
            size_bytes=size, parent_size_bytes=parent.size_bytes, parent_seq=parent.seq)


READ_SIZE_BYTES = 16 * 2**20  # one scan batch, split among the workers (1 GiB, 1 %: 0.21 s vs 0.25 s at 8 MiB)
HOLE_SPAN_MAX_BLOCKS = 65536  # one hole step: at most 2 MiB of digests


def _probe(fd: int, offset: int, read_len: int, size: int, block_size: int,
           regular: bool) -> tuple[int, bool]:
    """``(length, hole)`` of the next batch at ``offset``: ``hole`` when the whole span is a
    hole of a sparse regular file (SEEK_DATA), which then reads as zeros without being read;
    such a span is block-aligned, at least ``read_len`` long (or up to ``size``) and at most
    HOLE_SPAN_MAX_BLOCKS blocks. Otherwise ``min(read_len, size - offset)`` bytes to read."""
    want = min(read_len, size - offset)
    if regular:
        try:
            next_data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as err:
            next_data = size if err.errno == errno.ENXIO else offset  # ENXIO: no data after offset
        if next_data >= offset + want:
            hole_end = size if next_data >= size else next_data // block_size * block_size
            span = min(hole_end - offset, HOLE_SPAN_MAX_BLOCKS * block_size)
            if span >= want:
                return span, True
    return want, False


STORE_BATCH_BYTES = 4 * 2**20  # bytes per durable put: fewer fsyncs, bounded memory (16 MiB: peak RSS 392 MB vs 290 MB for 8 volumes, no faster)


class _Storer:
    """Durable puts of scanned chunks, in scan order, one put in flight at a time so that
    storing batch k overlaps hashing batch k+1. Memory: at most ``STORE_BATCH_BYTES`` (plus
    one batch) waiting, and one put in flight."""

    def __init__(self, store: ChunkStore, totals: _Totals) -> None:
        self.store = store
        self.totals = totals
        self.items: list[tuple[bytes, int, bytes, bytes]] = []
        self.pages: list[bytes] = []
        self.pending_bytes = 0
        self.inflight: asyncio.Future[tuple[int, list[bytes]]] | None = None
        self.inflight_pages: list[bytes] = []

    async def add(self, items: list[tuple[bytes, int, bytes, bytes]], pages: list[bytes]) -> None:
        self.items.extend(items)
        self.pages.extend(pages)
        self.pending_bytes += sum(len(it[2]) for it in items) + sum(map(len, pages))
        if self.pending_bytes >= STORE_BATCH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Start a put of everything gathered (after the previous put finished)."""
        await self.wait()
        if not self.items and not self.pages:
            return
        items, pages = self.items, self.pages
        self.items, self.pages, self.pending_bytes = [], [], 0
        # O1: blocks, then the pages that reference them, are durable in one put; puts run
        # in order, so a page is never stored before its blocks.
        self.inflight = asyncio.ensure_future(asyncio.to_thread(_store_batch, self.store, items, pages))
        self.inflight_pages = pages

    async def wait(self) -> None:
        """Wait for the put in flight (its error, if any, is raised here)."""
        if self.inflight is None:
            return
        fut, self.inflight = self.inflight, None
        new, page_digests = await fut
        self.totals.new_chunks += new
        self.totals.pages.extend(page_digests)
        self.totals.keep_pages(page_digests, self.inflight_pages)

    async def settle(self) -> None:
        """After a failure or cancellation: let a put in flight finish, ignore its outcome."""
        if self.inflight is not None:
            await asyncio.gather(self.inflight, return_exceptions=True)
            self.inflight = None


@dataclass
class _Fingerprints:
    """The fingerprint cache of one scan: ``reader`` the parent's (None: hash every block),
    ``writer`` the one being written for the new snapshot (None: no cache kept)."""

    path: Path | None = None
    now_ns: int = 0
    reader: FingerprintCache | None = None
    writer: FingerprintWriter | None = None

    @property
    def key(self) -> int:
        """Seed key of the entries read and written (the writer's carries the reader's over;
        a full pass draws a new one)."""
        if self.writer is not None:
            return self.writer.key
        return self.reader.key if self.reader is not None else 0

    def start_writer(self, block_size: int, size: int) -> None:
        """Open the new cache file (worker thread); on failure scan on without one."""
        if self.path is None:
            return
        r = self.reader
        try:
            self.writer = FingerprintWriter(
                self.path, block_size=block_size, size_bytes=size, now_ns=self.now_ns,
                key=r.key if r is not None else None,
                generation=r.generation if r is not None else 0,
                full_pass_ns=r.full_pass_ns if r is not None else None)
        except OSError as err:
            log.warning("cannot write fingerprint cache %s (%s): next scan hashes every block",
                        self.path, err)

    def finish(self, root: bytes | None) -> None:
        """Commit the new cache for snapshot ``root`` (None: abort it); close the reader.
        Never raises: a cache failure only costs the next scan a full pass."""
        if self.reader is not None:
            self.reader.close()
        if self.writer is None:
            return
        if root is None:
            self.writer.abort()
            return
        try:
            self.writer.commit(root)
        except (OSError, ValueError) as err:
            log.warning("fingerprint cache %s not written (%s): next scan hashes every block",
                        self.path, err)


async def _scan(source_path: Path, block_size: int, read_size_bytes: int,
                parent: Manifest | None, store: ChunkStore,
                fps: _Fingerprints, allow_shrink: bool = False, kept_pages: dict[bytes, bytes] | None = None,
                kept_max_bytes: int = 0, page_entries: int | None = None,
                private: bool = False) -> tuple[int, _Totals]:
    """Read, hash and store every block; returns (size_bytes, totals). Pages are cut as they
    fill; the last partial page stays in ``totals.page_buf``. Every block chunk and full page
    is durable when this returns. ``kept_pages``: an empty dict the stored pages go into
    (``totals.kept_pages``; None there once they pass ``kept_max_bytes``). ``private``: drop
    every page read (else only cold batches; see the module docstring, "Page cache").

    Pipeline per batch (``read_size_bytes``): one worker-thread step (:func:`_prepare`) finds
    the next batch (a hole or data) and loads its parent digests and cached fingerprints;
    the batch's blocks are then split among ``workers`` threads, each of which reads its
    part into its own reused buffer and hashes it (:func:`_read_hash_part`: preadv and the
    hashes release the GIL, so the reads run on every core, not one). The next batch is
    prepared while this one is read and hashed; stored chunks are written by
    :class:`_Storer` while later batches are scanned."""
    try:
        fd, size = await asyncio.to_thread(_open_source, source_path)
    except OSError as err:
        raise from_os_error(err, "opening the snapshot source", source=str(source_path)) from err
    try:
        check_size(parent, size, source_path, allow_shrink)
    except SourceShrunkError:
        os.close(fd)
        raise
    pe = page_entries or page_entries_for(-(-size // block_size))
    totals = _Totals(page_bytes=pe * DIGEST_SIZE, kept_pages=kept_pages, kept_room=kept_max_bytes)
    storer = _Storer(store, totals)
    parents = _ParentDigests(parent, store)
    drop = _drop_mode(fd, private)
    cold_ahead: dict[int, bool] = {}  # DROP_COLD: {offset: cold} of the batch after the one read
    behind: tuple[int, int] | None = None  # (offset, end) of the last batch dropped: swept again
    await asyncio.to_thread(fps.start_writer, block_size, size)
    read_len = max(block_size, read_size_bytes // block_size * block_size)
    workers = max(1, min(4, os.cpu_count() or 1))
    regular = stat.S_ISREG(os.fstat(fd).st_mode)
    # one reused read buffer per part: allocated on first use (a sparse volume's holes cost none)
    buffers: list[bytearray | None] = [None] * workers
    test_random = parent is not None
    pending: asyncio.Future[_Batch] | None = None
    done = False
    try:
        if size:
            pending = asyncio.ensure_future(asyncio.to_thread(
                _prepare, fd, 0, read_len, size, block_size, regular, parents, fps))
        while pending is not None:
            try:
                batch = await pending
            except OSError as err:
                raise from_os_error(err, "reading the snapshot source", source=str(source_path)) from err
            pending = None
            nxt = batch.offset + batch.length
            if nxt < size:  # prepare the next batch while this one is read and hashed
                pending = asyncio.ensure_future(asyncio.to_thread(
                    _prepare, fd, nxt, read_len, size, block_size, regular, parents, fps))
            if batch.hole is not None:
                parts = [batch.hole]
                if behind is not None and drop == DROP_ALL:  # readahead runs on into a hole (zero pages)
                    behind = (behind[0], batch.offset + batch.length)
            else:
                drop_floor: int | None = 0 if drop == DROP_ALL else None
                if drop == DROP_COLD:  # checked before the batch read before it (its readahead)
                    cold = cold_ahead.pop(batch.offset, None)
                    if cold is None:
                        cold = _cold(fd, batch.offset, batch.length)
                    if nxt < size:
                        cold_ahead = {nxt: _cold(fd, nxt, min(read_len, size - nxt))}
                    drop_floor = batch.offset if cold else None
                try:
                    parts = await asyncio.gather(*_part_jobs(fd, batch, block_size, workers, buffers,
                                                              fps, test_random, drop_floor, size))
                except OSError as err:
                    raise from_os_error(err, "reading the snapshot source", source=str(source_path),
                                        offset=batch.offset) from err
                if behind is not None:  # what a part's readahead brought back after its neighbour dropped it
                    await asyncio.to_thread(_drop, fd, *behind, size)
                behind = (batch.offset, batch.offset + batch.length) if drop_floor is not None else None
            if fps.writer is not None:  # a pwrite of 16 bytes per block: inline
                fps.writer.append(None if batch.hole is not None else b"".join(p.entries for p in parts),
                                  batch.n_blocks)
            await _collect(parts, storer, totals)
        await storer.flush()
        await storer.wait()
        if behind is not None:
            await asyncio.to_thread(_drop, fd, *behind, size)
        done = True
    finally:
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)
        if not done:
            await storer.settle()
        os.close(fd)
    return size, totals


@dataclass
class _Batch:
    """One scan batch: ``length`` bytes at ``offset`` (blocks from ``first_index``), its
    parent digests and cached fingerprint entries; ``hole`` the finished result when the
    span is a hole (nothing to read)."""

    offset: int
    length: int
    first_index: int
    n_blocks: int
    parent_digests: bytes
    old_entries: bytes
    hole: _PartResult | None


def _prepare(fd: int, offset: int, read_len: int, size: int, block_size: int, regular: bool,
             parents: _ParentDigests, fps: _Fingerprints) -> _Batch:
    """Worker-thread step before a batch: probe the batch at ``offset`` (:func:`_probe`) and
    load its parent digests and cached fingerprint entries. A hole is finished here
    (:func:`_hole_part`). Raises OSError from the source or the cache."""
    length, hole = _probe(fd, offset, read_len, size, block_size, regular)
    first_index = offset // block_size
    n_blocks = -(-length // block_size)
    digests = parents.range(first_index, n_blocks)
    if hole:
        return _Batch(offset, length, first_index, n_blocks, digests, b"",
                      _hole_part(n_blocks, first_index, block_size, size, digests))
    entries = fps.reader.entries(first_index, n_blocks) if fps.reader is not None else b""
    return _Batch(offset, length, first_index, n_blocks, digests, entries, None)


def _part_jobs(fd: int, batch: _Batch, block_size: int, workers: int,
               buffers: list[bytearray | None], fps: _Fingerprints,
               test_random: bool, drop_floor: int | None = None,
               size: int = 0) -> list[Awaitable[_PartResult]]:
    """The worker-thread jobs that read and hash ``batch``, one per part (``workers`` parts
    of whole blocks); ``drop_floor`` and ``size`` as :func:`_read_hash_part`."""
    per_part = -(-batch.n_blocks // workers)
    jobs = []
    for slot, start_block in enumerate(range(0, batch.n_blocks, per_part)):
        end_block = min(batch.n_blocks, start_block + per_part)
        length = min(batch.length, end_block * block_size) - start_block * block_size
        jobs.append(asyncio.to_thread(
            _read_hash_part, fd, batch.offset + start_block * block_size, length, buffers, slot,
            per_part * block_size, batch.first_index + start_block, block_size,
            batch.parent_digests[start_block * DIGEST_SIZE:end_block * DIGEST_SIZE],
            batch.old_entries[start_block * FP_SIZE:end_block * FP_SIZE], fps.key, test_random,
            fps.writer is not None, drop_floor, size))
    return jobs


def _read_hash_part(fd: int, offset: int, length: int, buffers: list[bytearray | None], slot: int,
                    buf_len: int, first_index: int, block_size: int, parent_digests: bytes,
                    old_entries: bytes, key: int, test_random: bool,
                    want_entries: bool, drop_floor: int | None = None, size: int = 0) -> _PartResult:
    """Worker thread: read ``length`` bytes at ``offset`` into ``buffers[slot]`` (created
    with ``buf_len`` bytes on first use), drop the pages read from the page cache unless
    ``drop_floor`` is None (from ``offset`` rounded down to DROP_ALIGN_BYTES but not below
    ``drop_floor``: the pages between are this scan's too; ``size``: the source's, see
    :func:`_drop`), and hash them (:func:`_hash_part`). Raises UnavailableError if the
    source shrank during the scan, OSError on a read error."""
    buf = buffers[slot]
    if buf is None:
        buf = buffers[slot] = bytearray(buf_len)
    got = read_into(fd, buf, length, offset)
    if drop_floor is not None:
        _drop(fd, max(drop_floor, offset // DROP_ALIGN_BYTES * DROP_ALIGN_BYTES), offset + got, size)
    if got != length:
        raise UnavailableError("snapshot source shrank during the scan", offset=offset + got)
    return _hash_part(memoryview(buf)[:length], first_index, block_size, parent_digests, old_entries,
                      key, test_random, want_entries)


async def _collect(parts: list[_PartResult], storer: _Storer, totals: _Totals) -> None:
    """Add a batch's part results to ``totals``, cut full pages, hand chunks and pages to
    ``storer``."""
    items: list[tuple[bytes, int, bytes, bytes]] = []
    for part in parts:
        totals.page_buf += part.digests
        totals.changed.extend(part.changed)
        totals.zero_blocks += part.zero_blocks
        totals.changed_bytes += part.changed_bytes
        totals.random_blocks += part.random_blocks
        totals.hashed_blocks += part.hashed_blocks
        items.extend(part.items)
    full_pages: list[bytes] = []
    page_bytes = totals.page_bytes
    while len(totals.page_buf) >= page_bytes:
        full_pages.append(bytes(totals.page_buf[:page_bytes]))
        del totals.page_buf[:page_bytes]
    if items or full_pages:
        await storer.add(items, full_pages)


def _store_batch(store: ChunkStore, items: list[tuple[bytes, int, bytes, bytes]],
                 pages: list[bytes]) -> tuple[int, list[bytes]]:
    """Store block items then page chunks in one durable put; (new chunk count, page digests)."""
    page_digests = [digest_of(p) for p in pages]
    page_items = [(d, *encode_chunk(p)) for d, p in zip(page_digests, pages)]
    return store.put_prepared(items + page_items), page_digests


async def take_snapshot(source_path: Path, *, volume: str, seq: int, epoch: int,
                        parent: Manifest | None, store: ChunkStore, now_ns: int,
                        pre_snapshot: Sequence[str] = (), post_snapshot: Sequence[str] = (),
                        read_size_bytes: int = READ_SIZE_BYTES, block_size: int | None = None,
                        hook_timeout_s: float = 300.0, fingerprints: Path | None = None,
                        full_pass_every: int = FULL_PASS_EVERY_SCANS,
                        full_pass_max_age_ns: int = FULL_PASS_MAX_AGE_NS,
                        allow_shrink: bool = False, pages_out: dict[bytes, bytes] | None = None,
                        pages_out_max_bytes: int = 64 * 2**20,
                        page_entries: int | None = None, private: bool = False) -> ScanResult:
    """Snapshot ``source_path`` (regular file or block device) into ``store``.

    Args:
        parent: the previous snapshot's manifest (its block size wins), or None for a full one.
        now_ns: ``created_at_ns`` of the manifest (informational).
        pre_snapshot / post_snapshot: one argv each (no shell), empty to skip.
        block_size: bytes per block when there is no parent (default 65536).
        hook_timeout_s: a hook running longer is killed and fails.
        fingerprints: path of this volume's fingerprint cache (see replicad.storage.fingerprints),
            or None for none. Used only for an incremental scan whose parent it describes
            and when no full pass is due (every ``full_pass_every`` scans, at least every
            ``full_pass_max_age_ns`` of ``now_ns`` time); rewritten for the new snapshot
            after its manifest is durable (a full snapshot writes one too, at the cost of
            an xxh3 pass over its non-zero blocks, so the next incremental scan uses it).
        allow_shrink: accept a source smaller than ``parent`` (the operator shrank the volume
            on purpose, or a forensic scan that keeps whatever the image holds). Otherwise a
            smaller source — a 0-byte image included — is refused before anything is read.
        pages_out: filled with ``{digest: bytes}`` of every page of the new manifest (bytes this
            scan built and hashed) when they total at most ``pages_out_max_bytes``, else left
            empty; for a tracking source's page cache (the next tracked cycle's parent pages).
        page_entries: the new manifest's page geometry (one of PAGE_GEOMETRIES; the parent's
            may differ: a format-1 parent is read in its own geometry); None (the default):
            :func:`~replicad.core.manifest.page_entries_for` the source's size. Given only to
            write format-1 manifests in tests of upgrades and benches.
        private: the source is a clone or view only this process reads (the tracked sources'
            full scan and verifier): every page the scan read is dropped from the page cache
            behind it. False (the default, a live image): only the batches none of whose pages
            were cached before are dropped (module docstring, "Page cache").

    Returns:
        a :class:`ScanResult`; O1: every chunk and the manifest are durable.

    Raises:
        ToolError: a hook failed (the scan error wins if both failed).
        NotFoundError / StoreFullError / InternalError: source or store I/O failed.
        UnavailableError: the source shrank during the scan.
        SourceShrunkError: the source is smaller than ``parent`` and not ``allow_shrink``
            (checked before the first read; nothing stored).
        UsageError: bad arguments (block size, parent of another volume, hook not a list).
    """
    started = time.perf_counter()
    if parent is not None:
        if parent.volume != volume:
            raise UsageError("parent manifest belongs to another volume", volume=volume,
                             parent_volume=parent.volume)
        bs = parent.block_size
    else:
        bs = block_size or DEFAULT_BLOCK_SIZE_BYTES
    if not 0 < bs <= BLOCK_SIZE_MAX_BYTES:
        raise UsageError("block size out of range", block_size=bs)
    if page_entries is not None and page_entries not in PAGE_GEOMETRIES:
        raise UsageError("page geometry not accepted", page_entries=page_entries, accepted=sorted(PAGE_GEOMETRIES))
    fps = _Fingerprints()
    keep: dict[bytes, bytes] | None = {} if pages_out is not None else None
    if fingerprints is not None:
        fps.path, fps.now_ns = Path(fingerprints), now_ns
    if fingerprints is not None and parent is not None:
        fps.reader = await asyncio.to_thread(
            FingerprintCache.open, fps.path, root=parent.root, block_size=bs, now_ns=now_ns,
            full_every=full_pass_every, max_age_ns=full_pass_max_age_ns)
    failed = False
    try:
        if pre_snapshot:
            await run_hook(pre_snapshot, "pre_snapshot", hook_timeout_s)
        size, totals = await _scan(Path(source_path), bs, read_size_bytes, parent, store, fps, allow_shrink,
                                   keep, pages_out_max_bytes, page_entries, private)
    except BaseException:
        failed = True
        fps.finish(None)  # closes and unlinks only: quick, and safe while being cancelled
        raise
    finally:
        if post_snapshot:
            try:
                await run_hook(post_snapshot, "post_snapshot", hook_timeout_s)
            except ReplicadError as err:
                if not failed:
                    fps.finish(None)
                    raise
                log.error("post_snapshot hook failed after a failed scan: %s", err)
    try:
        manifest = await _finish_manifest(volume, seq, epoch, parent, store, now_ns, bs, size,
                                          totals)
    except BaseException:
        fps.finish(None)
        raise
    if pages_out is not None and totals.kept_pages is not None:
        pages_out.update(totals.kept_pages)
    # the cache now describes a durable snapshot (never one whose manifest may be missing)
    await asyncio.to_thread(fps.finish, manifest.root)
    log.debug("scan %s#%d: %d of %d non-zero blocks BLAKE3-hashed (fingerprint cache %s)",
              volume, seq, totals.hashed_blocks, manifest.n_blocks - totals.zero_blocks,
              "used" if fps.reader is not None else "not used")
    return ScanResult(manifest=manifest, changed_blocks=totals.changed,
                      new_chunk_count=totals.new_chunks,
                      scan_seconds=time.perf_counter() - started,
                      hashed_blocks=totals.hashed_blocks)


async def _finish_manifest(volume: str, seq: int, epoch: int, parent: Manifest | None,
                           store: ChunkStore, now_ns: int, bs: int, size: int,
                           totals: _Totals) -> Manifest:
    """Store the last partial page and the manifest (O1: durable on return)."""
    if totals.page_buf:
        last = [bytes(totals.page_buf)]
        new, page_digests = await asyncio.to_thread(_store_batch, store, [], last)
        totals.new_chunks += new
        totals.pages.extend(page_digests)
        totals.keep_pages(page_digests, last)
    n_blocks = -(-size // bs)
    stats = {"total_blocks": n_blocks, "zero_blocks": totals.zero_blocks,
             "changed_blocks": len(totals.changed), "changed_bytes": totals.changed_bytes,
             "random_changed_blocks": totals.random_blocks, "new_chunks": totals.new_chunks,
             "has_parent": int(parent is not None)}
    manifest = Manifest(volume=volume, seq=seq, epoch=epoch,
                        parent_seq=parent.seq if parent is not None else None,
                        created_at_ns=now_ns, size_bytes=size, block_size=bs,
                        pages=tuple(totals.pages), stats=stats, page_entries=totals.page_bytes // DIGEST_SIZE)
    encoded = manifest.encode()
    (root,) = await asyncio.to_thread(store.put_blocks, [encoded])  # O1: manifest durable
    if root != manifest.root:
        raise InternalError("stored manifest digest differs from its root", volume=volume,
                            seq=seq)
    return manifest
