"""The ``file`` snapshot source: scan a raw image file or block device into a snapshot.

One sequential pass in large reads (``read_size_bytes``, default 8 MiB). Per batch, in
worker threads (BLAKE3 and lz4 release the GIL): zero check, BLAKE3 of each block, compare
with the parent's digest at the same index, lz4-encode and randomness-test changed non-zero
blocks, store them. Reading batch k+1 overlaps the hashing of batch k. The event loop only
awaits; it never touches a block.

Blocks: ``n_blocks = ceil(size / block_size)``; the last block may be short and its chunk
holds exactly the bytes present (no padding). All-zero blocks get ``ZERO_DIGEST`` and are
never stored. A block is *changed* exactly as :func:`replicad.manifest.diff` defines it, so
``ScanResult.changed_blocks == diff(parent, manifest)``.

Stats written into ``manifest.stats`` (all integers)::

    total_blocks, zero_blocks, changed_blocks, changed_bytes (raw bytes of changed blocks),
    random_changed_blocks (changed non-zero blocks that look random, see replicad.anomaly),
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
import errno
import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from replicad.anomaly import looks_random
from replicad.chunkstore import ChunkStore, digest_of, encode_chunk
from replicad.errors import (
    InternalError,
    ReplicadError,
    ToolError,
    UnavailableError,
    UsageError,
    from_os_error,
)
from replicad.manifest import (
    BLOCK_SIZE_MAX_BYTES,
    DIGEST_SIZE,
    PAGE_ENTRIES,
    ZERO_DIGEST,
    Manifest,
    page_entries,
)

log = logging.getLogger("replicad.scan")

DEFAULT_BLOCK_SIZE_BYTES = 65536
HOOK_STDERR_TAIL_BYTES = 2000
_PAGE_BYTES = PAGE_ENTRIES * DIGEST_SIZE


@dataclass(frozen=True)
class ScanResult:
    """Outcome of :func:`take_snapshot`.

    Attributes:
        manifest: the new snapshot's manifest (stored under ``manifest.root``).
        changed_blocks: sorted block indexes whose digest differs from the parent's.
        new_chunk_count: block and page chunks newly stored (== ``stats["new_chunks"]``).
        scan_seconds: wall time of the whole call, hooks included.
    """

    manifest: Manifest
    changed_blocks: list[int]
    new_chunk_count: int
    scan_seconds: float


@dataclass
class _PartResult:
    digests: bytes
    changed: list[int]
    zero_blocks: int
    changed_bytes: int
    random_blocks: int
    items: list[tuple[bytes, int, bytes]]


@dataclass
class _Totals:
    page_buf: bytearray = field(default_factory=bytearray)
    pages: list[bytes] = field(default_factory=list)  # page digests
    changed: list[int] = field(default_factory=list)
    zero_blocks: int = 0
    changed_bytes: int = 0
    random_blocks: int = 0
    new_chunks: int = 0


def _hash_part(buf: bytes, start: int, end: int, first_index: int, block_size: int,
               parent_digests: bytes) -> _PartResult:
    """Worker-thread work for blocks ``buf[start:end]``; block ``buf[start:]`` has index
    ``first_index``. ``parent_digests`` holds the parent's digests of these blocks
    (shorter when the parent ends earlier)."""
    zero = bytes(block_size)
    digests = bytearray()
    changed: list[int] = []
    items: list[tuple[bytes, int, bytes]] = []
    zero_blocks = changed_bytes = random_blocks = 0
    for rel, off in enumerate(range(start, end, block_size)):
        block = buf[off:off + block_size]
        is_zero = block == zero if len(block) == block_size else not any(block)
        digest = ZERO_DIGEST if is_zero else blake3.blake3(block).digest()
        digests += digest
        zero_blocks += is_zero
        old = parent_digests[rel * DIGEST_SIZE:(rel + 1) * DIGEST_SIZE]
        if (digest != old) if old else not is_zero:
            changed.append(first_index + rel)
            changed_bytes += len(block)
            if not is_zero:
                codec, payload = encode_chunk(block)
                items.append((digest, codec, payload))
                random_blocks += looks_random(block, len(payload))
    return _PartResult(bytes(digests), changed, zero_blocks, changed_bytes, random_blocks, items)


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
        out = bytearray()
        for p in range(first_index // PAGE_ENTRIES, (last - 1) // PAGE_ENTRIES + 1):
            page = self._page(p)
            lo = max(first_index, p * PAGE_ENTRIES) - p * PAGE_ENTRIES
            hi = min(last, (p + 1) * PAGE_ENTRIES) - p * PAGE_ENTRIES
            out += page[lo * DIGEST_SIZE:hi * DIGEST_SIZE]
        return bytes(out)

    def _page(self, p: int) -> bytes:
        page = self.cache.get(p)
        if page is None:
            assert self.parent is not None
            page = self.store.get(self.parent.pages[p])  # verified: blake3(page) == digest
            expected = min(PAGE_ENTRIES, self.parent.n_blocks - p * PAGE_ENTRIES)
            if len(page_entries(page)) != expected:
                raise InternalError("parent manifest page has a wrong number of entries",
                                    page_index=p, seq=self.parent.seq)
            self.cache = {p: page}  # scans go forward: keep only the current page
        return page


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


def _read_exact(fd: int, length: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while length > 0:
        part = os.pread(fd, min(length, 1 << 30), offset)
        if not part:
            break
        parts.append(part)
        length -= len(part)
        offset += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)



HOLE_SPAN_MAX_BLOCKS = 16 * PAGE_ENTRIES  # one hole step: at most 16 pages of digests (2 MiB)


def _read_batch(fd: int, offset: int, read_len: int, size: int, block_size: int,
                regular: bool) -> tuple[int, bytes | None]:
    """``(length, data)`` of the next batch at ``offset``: ``data`` is None when the whole
    span is a hole of a sparse regular file (SEEK_DATA), which then reads as zeros without
    being read; the span is block-aligned, at least ``read_len`` long (or up to ``size``)
    and at most HOLE_SPAN_MAX_BLOCKS blocks."""
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
                return span, None
    return want, _read_exact(fd, want, offset)

STORE_BATCH_BYTES = 4 * 2**20  # bytes gathered before one durable put: fewer fsyncs, bounded memory


class _Storer:
    """Durable puts of scanned chunks, in scan order, one put in flight at a time so that
    storing batch k overlaps hashing batch k+1. Memory: at most ``STORE_BATCH_BYTES`` (plus
    one batch) waiting, and one put in flight."""

    def __init__(self, store: ChunkStore, totals: _Totals) -> None:
        self.store = store
        self.totals = totals
        self.items: list[tuple[bytes, int, bytes]] = []
        self.pages: list[bytes] = []
        self.pending_bytes = 0
        self.inflight: asyncio.Future[tuple[int, list[bytes]]] | None = None

    async def add(self, items: list[tuple[bytes, int, bytes]], pages: list[bytes]) -> None:
        self.items.extend(items)
        self.pages.extend(pages)
        self.pending_bytes += sum(len(p) for _, _, p in items) + len(pages) * _PAGE_BYTES
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

    async def wait(self) -> None:
        """Wait for the put in flight (its error, if any, is raised here)."""
        if self.inflight is None:
            return
        fut, self.inflight = self.inflight, None
        new, page_digests = await fut
        self.totals.new_chunks += new
        self.totals.pages.extend(page_digests)

    async def settle(self) -> None:
        """After a failure or cancellation: let a put in flight finish, ignore its outcome."""
        if self.inflight is not None:
            await asyncio.gather(self.inflight, return_exceptions=True)
            self.inflight = None


async def _scan(source_path: Path, block_size: int, read_size_bytes: int,
                parent: Manifest | None, store: ChunkStore) -> tuple[int, _Totals]:
    """Read, hash and store every block; returns (size_bytes, totals). Pages are cut as they
    fill; the last partial page stays in ``totals.page_buf``. Every block chunk and full page
    is durable when this returns."""
    try:
        fd, size = await asyncio.to_thread(_open_source, source_path)
    except OSError as err:
        raise from_os_error(err, "opening the snapshot source", source=str(source_path)) from err
    totals = _Totals()
    storer = _Storer(store, totals)
    parents = _ParentDigests(parent, store)
    read_len = max(block_size, read_size_bytes // block_size * block_size)
    workers = max(1, min(4, os.cpu_count() or 1))
    regular = stat.S_ISREG(os.fstat(fd).st_mode)
    pending: asyncio.Future[tuple[int, bytes | None]] | None = None
    done = False
    try:
        offset = 0
        if size:
            pending = asyncio.ensure_future(asyncio.to_thread(
                _read_batch, fd, 0, read_len, size, block_size, regular))
        while offset < size:
            assert pending is not None
            try:
                length, buf = await pending
            except OSError as err:
                raise from_os_error(err, "reading the snapshot source",
                                    source=str(source_path), offset=offset) from err
            pending = None
            if buf is not None and len(buf) != length:
                raise UnavailableError("snapshot source shrank during the scan",
                                       path=str(source_path), offset=offset, size=size)
            nxt = offset + length
            if nxt < size:  # overlap: read the next batch while this one is hashed
                pending = asyncio.ensure_future(asyncio.to_thread(
                    _read_batch, fd, nxt, read_len, size, block_size, regular))
            await _process_batch(buf, length, size, offset // block_size, block_size, workers,
                                 parents, storer, totals)
            offset = nxt
        await storer.flush()
        await storer.wait()
        done = True
    finally:
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)
        if not done:
            await storer.settle()
        os.close(fd)
    return size, totals


async def _process_batch(buf: bytes | None, length: int, size: int, first_index: int,
                         block_size: int, workers: int, parents: _ParentDigests,
                         storer: _Storer, totals: _Totals) -> None:
    """Hash ``length`` bytes at block ``first_index`` (``buf`` None: a hole, all zeros) in
    worker threads, cut full pages and hand chunks and pages to ``storer``."""
    n_blocks = -(-length // block_size)
    parent_digests = await asyncio.to_thread(parents.range, first_index, n_blocks)
    if buf is None:
        parts = [await asyncio.to_thread(_hole_part, n_blocks, first_index, block_size, size,
                                         parent_digests)]
    else:
        per_part = -(-n_blocks // workers)
        jobs = []
        for start_block in range(0, n_blocks, per_part):
            end_block = min(n_blocks, start_block + per_part)
            jobs.append(asyncio.to_thread(
                _hash_part, buf, start_block * block_size, min(len(buf), end_block * block_size),
                first_index + start_block, block_size,
                parent_digests[start_block * DIGEST_SIZE:end_block * DIGEST_SIZE]))
        parts = await asyncio.gather(*jobs)
    items: list[tuple[bytes, int, bytes]] = []
    for part in parts:
        totals.page_buf += part.digests
        totals.changed.extend(part.changed)
        totals.zero_blocks += part.zero_blocks
        totals.changed_bytes += part.changed_bytes
        totals.random_blocks += part.random_blocks
        items.extend(part.items)
    full_pages: list[bytes] = []
    while len(totals.page_buf) >= _PAGE_BYTES:
        full_pages.append(bytes(totals.page_buf[:_PAGE_BYTES]))
        del totals.page_buf[:_PAGE_BYTES]
    if items or full_pages:
        await storer.add(items, full_pages)


def _store_batch(store: ChunkStore, items: list[tuple[bytes, int, bytes]],
                 pages: list[bytes]) -> tuple[int, list[bytes]]:
    """Store block items then page chunks in one durable put; (new chunk count, page digests)."""
    page_digests = [digest_of(p) for p in pages]
    page_items = [(d, *encode_chunk(p)) for d, p in zip(page_digests, pages)]
    return store.put_prepared(items + page_items), page_digests


async def take_snapshot(source_path: Path, *, volume: str, seq: int, epoch: int,
                        parent: Manifest | None, store: ChunkStore, now_ns: int,
                        pre_snapshot: Sequence[str] = (), post_snapshot: Sequence[str] = (),
                        read_size_bytes: int = 8 * 2**20, block_size: int | None = None,
                        hook_timeout_s: float = 300.0) -> ScanResult:
    """Snapshot ``source_path`` (regular file or block device) into ``store``.

    Args:
        parent: the previous snapshot's manifest (its block size wins), or None for a full one.
        now_ns: ``created_at_ns`` of the manifest (informational).
        pre_snapshot / post_snapshot: one argv each (no shell), empty to skip.
        block_size: bytes per block when there is no parent (default 65536).
        hook_timeout_s: a hook running longer is killed and fails.

    Returns:
        a :class:`ScanResult`; O1: every chunk and the manifest are durable.

    Raises:
        ToolError: a hook failed (the scan error wins if both failed).
        NotFoundError / StoreFullError / InternalError: source or store I/O failed.
        UnavailableError: the source shrank during the scan.
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
    failed = False
    try:
        if pre_snapshot:
            await run_hook(pre_snapshot, "pre_snapshot", hook_timeout_s)
        size, totals = await _scan(Path(source_path), bs, read_size_bytes, parent, store)
    except BaseException:
        failed = True
        raise
    finally:
        if post_snapshot:
            try:
                await run_hook(post_snapshot, "post_snapshot", hook_timeout_s)
            except ReplicadError as err:
                if not failed:
                    raise
                log.error("post_snapshot hook failed after a failed scan: %s", err)
    if totals.page_buf:
        new, page_digests = await asyncio.to_thread(_store_batch, store, [],
                                                    [bytes(totals.page_buf)])
        totals.new_chunks += new
        totals.pages.extend(page_digests)
    n_blocks = -(-size // bs)
    stats = {"total_blocks": n_blocks, "zero_blocks": totals.zero_blocks,
             "changed_blocks": len(totals.changed), "changed_bytes": totals.changed_bytes,
             "random_changed_blocks": totals.random_blocks, "new_chunks": totals.new_chunks,
             "has_parent": int(parent is not None)}
    manifest = Manifest(volume=volume, seq=seq, epoch=epoch,
                        parent_seq=parent.seq if parent is not None else None,
                        created_at_ns=now_ns, size_bytes=size, block_size=bs,
                        pages=tuple(totals.pages), stats=stats)
    encoded = manifest.encode()
    (root,) = await asyncio.to_thread(store.put_blocks, [encoded])  # O1: manifest durable
    if root != manifest.root:
        raise InternalError("stored manifest digest differs from its root", volume=volume,
                            seq=seq)
    return ScanResult(manifest=manifest, changed_blocks=totals.changed,
                      new_chunk_count=totals.new_chunks,
                      scan_seconds=time.perf_counter() - started)
