"""Build a snapshot from its parent and the blocks a change-tracking source says changed.

A tracking source (:mod:`replicad.sources.reflink`) knows, for a point-in-time view of a
volume, which blocks may differ from the view its parent snapshot was made from. Here the new
manifest is made from the parent manifest plus those blocks alone: the listed blocks are read
from the view and go through exactly what the ``file`` source does to a block
(:func:`replicad.sources.file._hash_part`: zero check, BLAKE3, comparison with the parent's
digest, lz4, record header, randomness test; no fingerprint cache); every other block keeps
the parent's digest. A manifest page none of whose blocks was read keeps the parent's page
digest without being loaded, so the cost is that of the changed blocks and their pages, not
of the volume (16 GiB: 512 pages of 512 digests).

What stays proportional to the volume is the number of pages touched (a page lists 512
blocks: 32 MiB at 64 KiB blocks; k changes spread over the volume touch min(k, pages) of
them, 16 KiB each). Per
touched page the work is kept to building and storing the new page: the parent's page comes
from a :class:`PageCache` the source keeps between cycles (the pages of the last manifest it
built, verified by construction) instead of two verified store reads, and the ``zero_blocks``
stat is corrected by the changed entries only, not by recounting a page's entries twice.

The new manifest has the page geometry of :func:`~replicad.core.manifest.page_entries_for` (512
entries; format 1's 4096 past ~15 TiB of 64 KiB blocks, where 512 would not fit a manifest); a parent of another geometry (a format-1 manifest written before the upgrade) is read in its own,
and that first cycle builds every page of the new manifest from the parent's block ranges
(O(volume), once per volume).
Measured (XFS, 10 MiB changed, 4 GiB against 1 GiB): see tests/bench/results/bench.md.

The result is the manifest a full scan of the same view with the same parent gives —
the same block digests, pages and stats (``new_chunks`` aside, which depends on what the
store already held) — provided the listed blocks include every block that differs (the
source's promise, checked by the verifier: :func:`same_blocks`). The parent's
``zero_blocks`` stat is carried over and corrected by the pages that changed (a parent
without it costs one pass over its pages).

Durability (O1): block chunks, then pages, then the manifest are durable on return.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from replicad.core.errors import InternalError, UnavailableError, UsageError, from_os_error
from replicad.core.manifest import (DEFAULT_PAGE_ENTRIES, DIGEST_SIZE, PAGE_GEOMETRIES, ZERO_DIGEST, Manifest,
                                    page_entries_for)
from replicad.sources.file import ScanResult, _hash_part, _open_source, _PartResult, _Storer, _Totals, check_size
from replicad.storage.chunkstore import ChunkStore, digest_of, encode_chunk
from replicad.storage.durable import read_into

PIECE_BLOCKS = 64
"""Blocks read and hashed per worker job (4 MiB at 64 KiB blocks)."""

PREFETCH_BYTES = 64 * 2**20
"""Bytes of changed blocks announced to the kernel ahead of the reads (:func:`_advise`)."""

PAGE_CACHE_BYTES = 64 * 2**20
"""Bound of a :class:`PageCache`: 4096 pages of 512 digests, the whole manifest of a volume of
up to 128 GiB at 64 KiB blocks (larger volumes: the pages beyond are read from the store)."""


class PageCache:
    """Manifest pages by digest, kept between the cycles of one source: the pages of the last
    manifest a tracked build made (bytes whose BLAKE3 this process computed, or read through a
    verified store read), so the next cycle does not read its parent's pages back from the
    store. Content-addressed: a stale entry is never wrong, only unused. Bounded by
    ``max_bytes`` (PAGE_CACHE_BYTES); not thread-safe (one cycle at a time per source)."""

    def __init__(self, max_bytes: int = PAGE_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._pages: dict[bytes, bytes] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._pages)

    def get(self, digest: bytes) -> bytes | None:
        """The page of ``digest`` if held (counted as a hit or a miss)."""
        page = self._pages.get(digest)
        if page is None:
            self.misses += 1
        else:
            self.hits += 1
        return page

    def replace(self, digests: Sequence[bytes], known: dict[bytes, bytes]) -> None:
        """Hold the pages of ``digests`` (a manifest's pages, in order) instead of what was held,
        up to ``max_bytes``: each from ``known`` (digest -> page bytes) or, if absent there, kept
        from what this cache held; pages found in neither are left out."""
        kept: dict[bytes, bytes] = {}
        total = 0
        for d in digests:
            page = known.get(d) or self._pages.get(d)
            if page is None or d in kept:
                continue
            if total + len(page) > self.max_bytes:
                break
            kept[d] = page
            total += len(page)
        self._pages = kept


class _CachedPages:
    """What :class:`~replicad.sources.file._ParentDigests` reads pages through: the cache, else
    the store's verified read; remembers the pages it handed out (the build's parent pages, read
    twice: for the parent digests of the blocks read, then to build the new pages) up to the
    cache's bound (none without a cache: then every page is read from the store each time)."""

    def __init__(self, store: ChunkStore, cache: PageCache | None) -> None:
        self.store = store
        self.cache = cache
        self.seen: dict[bytes, bytes] = {}
        self._room = cache.max_bytes if cache is not None else 0

    def get(self, digest: bytes) -> bytes:
        page = self.seen.get(digest)
        if page is not None:
            return page
        if self.cache is not None:
            page = self.cache.get(digest)
        if page is None:
            page = self.store.get(digest)  # verified read: blake3(page) == digest
        if len(page) <= self._room:
            self.seen[digest] = page
            self._room -= len(page)
        return page


@dataclass(frozen=True)
class TrackedResult:
    """:class:`~replicad.sources.file.ScanResult` of a tracked build plus ``read_blocks``
    (blocks read from the view) and ``read_bytes``."""

    scan: ScanResult
    read_blocks: int
    read_bytes: int


def same_blocks(a: Manifest, b: Manifest) -> bool:
    """True when two manifests list the same content: size, block size and page digests (so
    every block digest) in the same page geometry. The verifier's comparison: the manifest
    root also covers ``stats``, whose ``new_chunks`` depends on the store."""
    return (a.size_bytes, a.block_size, a.page_entries, a.pages) == (b.size_bytes, b.block_size, b.page_entries, b.pages)


def _read_piece(fd: int, first: int, count: int, block_size: int, size: int,
                parent_digests: bytes) -> _PartResult:
    """Worker thread: read blocks ``first .. first+count-1`` of the view and hash them."""
    offset = first * block_size
    length = min(count * block_size, size - offset)
    buf = bytearray(length)
    got = read_into(fd, buf, length, offset)
    if got != length:
        raise UnavailableError("the snapshot view shrank while it was read", offset=offset + got)
    return _hash_part(memoryview(buf), first, block_size, parent_digests, b"", 0, True, False)


def _advise(fd: int, pieces: list[tuple[int, int]], start: int, block_size: int, size: int, budget: int) -> int:
    """Worker thread: announce the reads of ``pieces[start:]`` to the kernel
    (``POSIX_FADV_WILLNEED``: it starts reading them at once, many at a time) up to ``budget``
    bytes; returns the index of the first piece not announced (at least ``start + 1``). Why:
    changes spread over a volume are hundreds of one-block pieces; read two at a time each
    waits a disk round trip (4 GiB, 655 scattered blocks, cold: most of a 1.5-2 s cycle)."""
    i, total = start, 0
    while i < len(pieces) and (total < budget or i == start):
        first, count = pieces[i]
        offset = first * block_size
        length = min(count * block_size, size - offset)
        if length > 0:
            try:
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                return len(pieces)  # a hint only: the reads themselves report errors
        total += max(length, 0)
        i += 1
    return i


def _read_group(fd: int, pieces: list[tuple[int, int]], block_size: int, size: int,
                parent_digests: list[bytes]) -> list[_PartResult]:
    """Worker thread: :func:`_read_piece` of each of ``pieces`` (with its parent digests)."""
    return [_read_piece(fd, first, count, block_size, size, d) for (first, count), d in zip(pieces, parent_digests)]


def _groups(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``pieces`` gathered into worker jobs of at most PIECE_BLOCKS blocks, as ``(start, end)``
    index ranges of ``pieces`` (consecutive, covering them all). Why: changes scattered over a
    volume are one-block pieces; one job and two thread hops per block cost more than reading
    and hashing the block (16 GiB, 2,621 scattered blocks: most of a 1.3-2.4 s tracked build)."""
    out: list[tuple[int, int]] = []
    start = blocks = 0
    for i, (_, count) in enumerate(pieces):
        if i > start and blocks + count > PIECE_BLOCKS:
            out.append((start, i))
            start, blocks = i, 0
        blocks += count
    if start < len(pieces):
        out.append((start, len(pieces)))
    return out


def _pieces(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Runs cut into jobs of at most PIECE_BLOCKS blocks."""
    out = []
    for first, count in runs:
        for start in range(first, first + count, PIECE_BLOCKS):
            out.append((start, min(PIECE_BLOCKS, first + count - start)))
    return out


def _with_size_change(runs: list[tuple[int, int]], parent: Manifest, n_new: int, size: int) -> list[tuple[int, int]]:
    """``runs`` plus the blocks a size change touches: the parent's last block when it was
    short or is now cut (its bytes change length), and none of the blocks past the parent's end
    beyond what ``runs`` lists (a hole there reads as zeros: ZERO_DIGEST, not changed)."""
    extra = set()
    if size != parent.size_bytes and parent.n_blocks:
        last_old = parent.n_blocks - 1
        if last_old < n_new:
            extra.add(last_old)
        if n_new and (size % parent.block_size):
            extra.add(n_new - 1)
    if not extra:
        return runs
    blocks = {b for f, c in runs for b in range(f, f + c)} | extra
    out: list[tuple[int, int]] = []
    for b in sorted(blocks):
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out


async def tracked_snapshot(view_path: Path, *, volume: str, seq: int, epoch: int, parent: Manifest,
                           store: ChunkStore, now_ns: int, runs: list[tuple[int, int]],
                           allow_shrink: bool = False, workers: int | None = None,
                           page_cache: PageCache | None = None,
                           page_entries: int | None = None) -> TrackedResult:
    """Snapshot the view ``view_path`` from ``parent`` and the blocks ``runs`` lists.

    Args:
        view_path: a regular file holding the volume at one instant (a reflink clone).
        parent: the manifest of the view the changes were measured against (its block size wins).
        runs: sorted, disjoint ``(first block index, count)`` of the blocks that may differ
            from ``parent`` (block indexes of ``parent.block_size``); indexes past the view's
            end are ignored. Blocks past the parent's end that ``runs`` does not list are
            zeros (a hole).
        allow_shrink: as :func:`replicad.sources.file.take_snapshot`.
        workers: worker threads reading and hashing (default min(4, cores)).
        page_cache: the source's :class:`PageCache`: parent pages are taken from it where held;
            on success it holds the new manifest's pages (those known without a store read).
        page_entries: the new manifest's page geometry (one of PAGE_GEOMETRIES; None, the
            default: :func:`~replicad.core.manifest.page_entries_for` the view's size); a parent
            of another geometry costs one pass over its pages. Given only in tests of upgrades
            and benches (to write format-1 manifests).

    Returns:
        :class:`TrackedResult`; O1: every chunk, page and the manifest are durable.

    Raises:
        SourceShrunkError: the view is smaller than ``parent`` and not ``allow_shrink``.
        UsageError: ``parent`` of another volume.
        UnavailableError: the view shrank while read.
        NotFoundError / StoreFullError / InternalError: view or store I/O failed.
        IntegrityError: a parent page does not match its digest.
    """
    started = time.perf_counter()
    if parent.volume != volume:
        raise UsageError("parent manifest belongs to another volume", volume=volume, parent_volume=parent.volume)
    if page_entries is not None and page_entries not in PAGE_GEOMETRIES:
        raise UsageError("page geometry not accepted", page_entries=page_entries, accepted=sorted(PAGE_GEOMETRIES))
    bs = parent.block_size
    try:
        fd, size = await asyncio.to_thread(_open_source, Path(view_path))
    except OSError as err:
        raise from_os_error(err, "opening the snapshot view", source=str(view_path)) from err
    totals = _Totals()
    storer = _Storer(store, totals)
    read_blocks = read_bytes = 0
    new_digests: dict[int, bytes] = {}
    done = False
    try:
        check_size(parent, size, Path(view_path), allow_shrink)
        n_new = -(-size // bs)
        pe = page_entries or page_entries_for(n_new)
        runs = [(f, min(c, n_new - f)) for f, c in _with_size_change(runs, parent, n_new, size) if f < n_new]
        pager = _CachedPages(store, page_cache)
        nworkers = workers or max(1, min(4, os.cpu_count() or 1))
        pieces = _pieces(runs)
        groups = _groups(pieces)
        advised = refill_at = 0  # pieces announced to the kernel (_advise); announce more from refill_at on
        for w in range(0, len(groups), nworkers):
            window = groups[w:w + nworkers]
            at = window[0][0]  # index in pieces of the window's first piece
            if at >= refill_at and advised < len(pieces):  # keep about PREFETCH_BYTES announced ahead
                start = max(advised, at)
                advised = await asyncio.to_thread(_advise, fd, pieces, start, bs, size, PREFETCH_BYTES // 2
                                                  if start > at else PREFETCH_BYTES)
                refill_at = at + max(1, (advised - at) // 2)
            # the parent's digests in one thread hop per window (the pager is not thread-safe)
            digests = await asyncio.to_thread(
                lambda window=window: [[_parent_range(parent, pager, f, c) for f, c in pieces[a:b]] for a, b in window])
            jobs = [asyncio.to_thread(_read_group, fd, pieces[a:b], bs, size, d) for (a, b), d in zip(window, digests)]
            try:
                parts = [part for group in await asyncio.gather(*jobs) for part in group]
            except OSError as err:
                raise from_os_error(err, "reading the snapshot view", source=str(view_path)) from err
            for (first, count), part in zip(pieces[window[0][0]:window[-1][1]], parts):
                for i in range(count):
                    new_digests[first + i] = part.digests[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]
                read_blocks += count
                read_bytes += min(count * bs, size - first * bs)
                totals.changed.extend(part.changed)
                totals.changed_bytes += part.changed_bytes
                totals.random_blocks += part.random_blocks
                totals.hashed_blocks += part.hashed_blocks
                if part.items:
                    await storer.add(part.items, [])
        await storer.flush()
        await storer.wait()  # O1: blocks durable before the pages that list them
        pages, new_pages, zero_blocks = await asyncio.to_thread(
            _build_pages, parent, pager, new_digests, n_new, pe)
        if new_pages:
            totals.new_chunks += await asyncio.to_thread(_store_pages, store, new_pages)
        done = True
    finally:
        if not done:
            await storer.settle()
        os.close(fd)
    stats = {"total_blocks": n_new, "zero_blocks": zero_blocks, "changed_blocks": len(totals.changed),
             "changed_bytes": totals.changed_bytes, "random_changed_blocks": totals.random_blocks,
             "new_chunks": totals.new_chunks, "has_parent": 1}
    manifest = Manifest(volume=volume, seq=seq, epoch=epoch, parent_seq=parent.seq, created_at_ns=now_ns,
                        size_bytes=size, block_size=bs, pages=tuple(pages), stats=stats, page_entries=pe)
    (root,) = await asyncio.to_thread(store.put_blocks, [manifest.encode()])  # O1: manifest durable
    if root != manifest.root:
        raise InternalError("stored manifest digest differs from its root", volume=volume, seq=seq)
    if page_cache is not None:
        known = {**pager.seen, **new_pages}
        page_cache.replace(manifest.pages, known)
    scan = ScanResult(manifest=manifest, changed_blocks=sorted(totals.changed), new_chunk_count=totals.new_chunks,
                      scan_seconds=time.perf_counter() - started, hashed_blocks=totals.hashed_blocks)
    return TrackedResult(scan, read_blocks, read_bytes)


def _zeros(entries: bytes) -> int:
    return sum(1 for i in range(0, len(entries), DIGEST_SIZE) if entries[i:i + DIGEST_SIZE] == ZERO_DIGEST)


def _parent_page(parent: Manifest, pager: _CachedPages | ChunkStore, p: int) -> bytes:
    """Page ``p`` of ``parent`` (verified read, or a page of the cache: verified by construction).
    InternalError if it holds a wrong number of entries."""
    page = pager.get(parent.pages[p])
    if len(page) != parent.page_count(p) * DIGEST_SIZE:
        raise InternalError("parent manifest page has a wrong number of entries", page_index=p, seq=parent.seq)
    return page


def _parent_range(parent: Manifest, pager: _CachedPages, first_index: int, count: int) -> bytes:
    """Worker thread: the parent's digests of blocks ``first_index .. first_index+count-1``
    (concatenated; those past the parent's end left out), as
    :class:`~replicad.sources.file._ParentDigests` gives them."""
    if first_index >= parent.n_blocks:
        return b""
    last = min(first_index + count, parent.n_blocks)
    pe = parent.page_entries  # the parent's own geometry
    out = bytearray()
    for p in range(first_index // pe, (last - 1) // pe + 1):
        page = _parent_page(parent, pager, p)
        lo = max(first_index, p * pe) - p * pe
        hi = min(last, (p + 1) * pe) - p * pe
        out += page[lo * DIGEST_SIZE:hi * DIGEST_SIZE]
    return bytes(out)


def _store_pages(store: ChunkStore, pages: dict[bytes, bytes]) -> int:
    """Worker thread: store ``{digest: page}`` (digests computed by :func:`_build_pages` from
    these bytes, so not computed again: scattered changes touch min(changes, pages) pages of
    16 KiB); O1: durable on return. Returns the number newly stored."""
    return store.put_prepared([(d, *encode_chunk(page)) for d, page in pages.items()])


def _build_pages(parent: Manifest, pager: _CachedPages | ChunkStore, new_digests: dict[int, bytes],
                 n_new: int, pe: int = DEFAULT_PAGE_ENTRIES) -> tuple[list[bytes], dict[bytes, bytes], int]:
    """Worker thread: ``(page digests of the new manifest, {digest: bytes} of the new pages to
    store, zero blocks)``, pages of ``pe`` entries. A page with no new digest and the parent's entry count keeps the parent's page.
    With the parent's ``zero_blocks`` known, a page of the same entry count corrects it by its
    changed entries only (O(changed), not O(page)). A parent of another geometry: every page is
    built from the parent's block range (:func:`_build_pages_regeometry`)."""
    if parent.page_entries != pe:
        return _build_pages_regeometry(parent, pager, new_digests, n_new, pe)
    by_page: dict[int, list[int]] = {}
    for i in new_digests:
        by_page.setdefault(i // pe, []).append(i)
    n_pages = -(-n_new // pe)
    old_zero = parent.stats.get("zero_blocks")
    exact = not (isinstance(old_zero, int) and not isinstance(old_zero, bool))
    zero = 0 if exact else old_zero
    digests: list[bytes] = []
    to_store: dict[bytes, bytes] = {}
    for p in range(max(n_pages, len(parent.pages))):
        lo = p * pe
        count = min(pe, n_new - lo) if p < n_pages else 0
        old_count = parent.page_count(p) if p < len(parent.pages) else 0
        changed = by_page.get(p, ())
        if not changed and count == old_count:
            digests.append(parent.pages[p])
            if exact:
                zero += _zeros(_parent_page(parent, pager, p))
            continue
        old = _parent_page(parent, pager, p) if old_count else b""
        if count == 0:
            if not exact:
                zero -= _zeros(old)
            continue  # a page past the new end (the volume shrank)
        entries = bytearray(old[:count * DIGEST_SIZE])
        entries += ZERO_DIGEST * (count - len(entries) // DIGEST_SIZE)  # grown: unlisted blocks are holes
        delta = not exact and count == old_count
        for i in changed:
            if i >= lo + count:
                continue
            a = (i - lo) * DIGEST_SIZE
            d = new_digests[i]
            if delta:
                zero += (d == ZERO_DIGEST) - (entries[a:a + DIGEST_SIZE] == ZERO_DIGEST)
            entries[a:a + DIGEST_SIZE] = d
        page = bytes(entries)
        if not delta:
            if not exact:
                zero -= _zeros(old)
            zero += _zeros(page)
        d = digest_of(page)
        digests.append(d)
        to_store[d] = page
    return digests, to_store, zero


class _LastPage:
    """A pager that remembers the last page it handed out: a parent page of another geometry
    spans several new pages (4096 entries: 8 of 512) and is asked for once per new page."""

    def __init__(self, pager: _CachedPages | ChunkStore) -> None:
        self.pager = pager
        self.last: tuple[bytes, bytes] | None = None

    def get(self, digest: bytes) -> bytes:
        if self.last is None or self.last[0] != digest:
            self.last = (digest, self.pager.get(digest))
        return self.last[1]


def _build_pages_regeometry(parent: Manifest, pager: _CachedPages | ChunkStore, new_digests: dict[int, bytes],
                            n_new: int, pe: int) -> tuple[list[bytes], dict[bytes, bytes], int]:
    """Worker thread: :func:`_build_pages` for a parent of another page geometry (the first
    cycle after an upgrade from format-1 manifests): every page of ``pe`` entries is built from
    the parent's digests of its block range (read in the parent's geometry, each parent page
    once), holes past the parent's end as ZERO_DIGEST, ``new_digests`` written over; the zero
    count is recounted (O(volume), once per volume)."""
    last = _LastPage(pager)
    by_page: dict[int, list[int]] = {}
    for i in new_digests:
        if i < n_new:
            by_page.setdefault(i // pe, []).append(i)
    digests: list[bytes] = []
    to_store: dict[bytes, bytes] = {}
    zero = 0
    for lo in range(0, n_new, pe):
        count = min(pe, n_new - lo)
        entries = bytearray(_parent_range(parent, last, lo, count))  # type: ignore[arg-type]
        entries += ZERO_DIGEST * (count - len(entries) // DIGEST_SIZE)
        for i in by_page.get(lo // pe, ()):
            a = (i - lo) * DIGEST_SIZE
            entries[a:a + DIGEST_SIZE] = new_digests[i]
        page = bytes(entries)
        zero += _zeros(page)
        d = digest_of(page)
        digests.append(d)
        to_store[d] = page
    return digests, to_store, zero
