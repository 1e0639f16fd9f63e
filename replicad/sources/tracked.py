"""Build a snapshot from its parent and the blocks a change-tracking source says changed.

A tracking source (:mod:`replicad.sources.reflink`) knows, for a point-in-time view of a
volume, which blocks may differ from the view its parent snapshot was made from. Here the new
manifest is made from the parent manifest plus those blocks alone: the listed blocks are read
from the view and go through exactly what the ``file`` source does to a block
(:func:`replicad.sources.file._hash_part`: zero check, BLAKE3, comparison with the parent's
digest, lz4, record header, randomness test; no fingerprint cache); every other block keeps
the parent's digest. A manifest page none of whose blocks was read keeps the parent's page
digest without being loaded, so the cost is that of the changed blocks and their pages, not
of the volume (16 GiB: 64 pages of 4096 digests).

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
from dataclasses import dataclass
from pathlib import Path

from replicad.core.errors import InternalError, UnavailableError, UsageError, from_os_error
from replicad.core.manifest import DIGEST_SIZE, PAGE_ENTRIES, ZERO_DIGEST, Manifest, page_entries
from replicad.sources.file import (ScanResult, _hash_part, _open_source, _ParentDigests, _PartResult,
                                   _store_batch, _Storer, _Totals, check_size)
from replicad.storage.chunkstore import ChunkStore, digest_of
from replicad.storage.durable import read_into

PIECE_BLOCKS = 64
"""Blocks read and hashed per worker job (4 MiB at 64 KiB blocks)."""


@dataclass(frozen=True)
class TrackedResult:
    """:class:`~replicad.sources.file.ScanResult` of a tracked build plus ``read_blocks``
    (blocks read from the view) and ``read_bytes``."""

    scan: ScanResult
    read_blocks: int
    read_bytes: int


def same_blocks(a: Manifest, b: Manifest) -> bool:
    """True when two manifests list the same content: size, block size and page digests (so
    every block digest). The verifier's comparison: the manifest root also covers ``stats``,
    whose ``new_chunks`` depends on the store."""
    return (a.size_bytes, a.block_size, a.pages) == (b.size_bytes, b.block_size, b.pages)


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
                           allow_shrink: bool = False, workers: int | None = None) -> TrackedResult:
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
        runs = [(f, min(c, n_new - f)) for f, c in _with_size_change(runs, parent, n_new, size) if f < n_new]
        parents = _ParentDigests(parent, store)
        nworkers = workers or max(1, min(4, os.cpu_count() or 1))
        pieces = _pieces(runs)
        for w in range(0, len(pieces), nworkers):
            window = pieces[w:w + nworkers]
            jobs = []
            for first, count in window:
                digests = await asyncio.to_thread(parents.range, first, count)
                jobs.append(asyncio.to_thread(_read_piece, fd, first, count, bs, size, digests))
            try:
                parts = await asyncio.gather(*jobs)
            except OSError as err:
                raise from_os_error(err, "reading the snapshot view", source=str(view_path)) from err
            for (first, count), part in zip(window, parts):
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
        pages, page_bytes, zero_blocks = await asyncio.to_thread(
            _build_pages, parent, store, new_digests, n_new)
        if page_bytes:
            new, _ = await asyncio.to_thread(_store_batch, store, [], page_bytes)
            totals.new_chunks += new
        done = True
    finally:
        if not done:
            await storer.settle()
        os.close(fd)
    stats = {"total_blocks": n_new, "zero_blocks": zero_blocks, "changed_blocks": len(totals.changed),
             "changed_bytes": totals.changed_bytes, "random_changed_blocks": totals.random_blocks,
             "new_chunks": totals.new_chunks, "has_parent": 1}
    manifest = Manifest(volume=volume, seq=seq, epoch=epoch, parent_seq=parent.seq, created_at_ns=now_ns,
                        size_bytes=size, block_size=bs, pages=tuple(pages), stats=stats)
    (root,) = await asyncio.to_thread(store.put_blocks, [manifest.encode()])  # O1: manifest durable
    if root != manifest.root:
        raise InternalError("stored manifest digest differs from its root", volume=volume, seq=seq)
    scan = ScanResult(manifest=manifest, changed_blocks=sorted(totals.changed), new_chunk_count=totals.new_chunks,
                      scan_seconds=time.perf_counter() - started, hashed_blocks=totals.hashed_blocks)
    return TrackedResult(scan, read_blocks, read_bytes)


def _zeros(entries: bytes) -> int:
    return sum(1 for i in range(0, len(entries), DIGEST_SIZE) if entries[i:i + DIGEST_SIZE] == ZERO_DIGEST)


def _parent_page(parent: Manifest, store: ChunkStore, p: int) -> bytes:
    page = store.get(parent.pages[p])  # verified read: blake3(page) == digest
    expected = min(PAGE_ENTRIES, parent.n_blocks - p * PAGE_ENTRIES)
    if len(page_entries(page)) != expected:
        raise InternalError("parent manifest page has a wrong number of entries", page_index=p, seq=parent.seq)
    return page


def _build_pages(parent: Manifest, store: ChunkStore, new_digests: dict[int, bytes],
                 n_new: int) -> tuple[list[bytes], list[bytes], int]:
    """Worker thread: ``(page digests of the new manifest, new page bytes to store, zero
    blocks)``. A page with no new digest and the parent's entry count keeps the parent's page."""
    touched = {i // PAGE_ENTRIES for i in new_digests}
    n_pages = -(-n_new // PAGE_ENTRIES)
    old_zero = parent.stats.get("zero_blocks")
    exact = not (isinstance(old_zero, int) and not isinstance(old_zero, bool))
    zero = 0 if exact else old_zero
    digests: list[bytes] = []
    to_store: list[bytes] = []
    for p in range(max(n_pages, len(parent.pages))):
        lo = p * PAGE_ENTRIES
        count = min(PAGE_ENTRIES, n_new - lo) if p < n_pages else 0
        old_count = min(PAGE_ENTRIES, parent.n_blocks - lo) if p < len(parent.pages) else 0
        if p not in touched and count == old_count:
            digests.append(parent.pages[p])
            if exact:
                zero += _zeros(_parent_page(parent, store, p))
            continue
        old = _parent_page(parent, store, p) if old_count else b""
        if not exact:
            zero -= _zeros(old)
        if count == 0:
            continue  # a page past the new end (the volume shrank)
        entries = bytearray(old[:count * DIGEST_SIZE])
        entries += ZERO_DIGEST * (count - len(entries) // DIGEST_SIZE)  # grown: unlisted blocks are holes
        for i in range(lo, lo + count):
            d = new_digests.get(i)
            if d is not None:
                entries[(i - lo) * DIGEST_SIZE:(i - lo + 1) * DIGEST_SIZE] = d
        page = bytes(entries)
        zero += _zeros(page)
        digests.append(digest_of(page))
        to_store.append(page)
    return digests, to_store, zero
