"""Writing a snapshot into an image (restore, standby apply) and proving it (O5).

Synchronous functions, run in worker threads by the daemon. They work page by page (one
manifest page = 4096 blocks) so memory does not grow with the volume size.

* :func:`apply_snapshot` makes ``target`` equal to a snapshot, rewriting only blocks that
  differ: either by trusting ``base`` (the manifest the target is known to hold, e.g. a
  standby that only replicad writes: only pages whose digests differ are touched), or by
  reading the target and comparing every block (an image of unknown content).
* :func:`verify_image` re-reads the image and recomputes its Merkle root (O5): a restore
  reports success only if it equals the manifest's root.

All chunks needed must be in the local store (the daemon's ``ensure_snapshot`` fetches the
missing ones from peers first).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .chunkstore import ChunkStore, digest_of
from .errors import RestoreVerifyError, from_os_error
from .manifest import PAGE_ENTRIES, ZERO_DIGEST, Manifest, page_entries, pages_from_digests

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ApplyReport:
    """Outcome of :func:`apply_snapshot`: blocks examined / rewritten, bytes written."""

    blocks_total: int
    blocks_written: int
    bytes_written: int


def _pages_to_visit(manifest: Manifest, base: Manifest | None) -> list[int]:
    if base is None or base.block_size != manifest.block_size:
        return list(range(len(manifest.pages)))
    return [i for i, pd in enumerate(manifest.pages) if i >= len(base.pages) or base.pages[i] != pd]


def _block_len(manifest: Manifest, index: int) -> int:
    return min(manifest.block_size, manifest.size_bytes - index * manifest.block_size)


def digest_region(data: bytes, block_size: int) -> list[bytes]:
    """Digests of consecutive blocks of ``data`` (the last may be short); all-zero → ZERO_DIGEST."""
    zeros = bytes(block_size)
    out = []
    for off in range(0, len(data), block_size):
        block = data[off:off + block_size]
        out.append(ZERO_DIGEST if block == zeros[:len(block)] else digest_of(block))
    return out


def apply_snapshot(target: Path, manifest: Manifest, store: ChunkStore, *, base: Manifest | None = None,
                   progress: Progress | None = None) -> ApplyReport:
    """Make the file ``target`` hold exactly the snapshot ``manifest``.

    Args:
        target: image file or block device; created (sparse) if absent, resized to
            ``manifest.size_bytes`` if a regular file.
        base: a manifest the target is *known* to hold (standby record); when given, only
            pages that differ from it are visited and the target is not read.
        progress: called as ``progress(done_blocks, total_blocks)``.
    Returns:
        :class:`ApplyReport`.
    Raises:
        NotFoundError: a needed chunk is not in the store (fetch it first).
        IntegrityError: a stored chunk is corrupt (the caller re-fetches it and retries).
        StoreFullError / InternalError: from the file system.
    """
    bs = manifest.block_size
    total = manifest.n_blocks
    written = bytes_written = 0
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as err:
        raise from_os_error(err, f"open restore target {target}") from err
    try:
        is_regular = os.path.isfile(target)
        if is_regular and os.fstat(fd).st_size != manifest.size_bytes:
            os.ftruncate(fd, manifest.size_bytes)
        pages = _pages_to_visit(manifest, base)
        for i in pages:
            want = page_entries(store.get(manifest.pages[i]))
            first = i * PAGE_ENTRIES
            if base is not None and i < len(base.pages):
                have = page_entries(store.get(base.pages[i]))
            elif base is not None:
                have = []
            else:
                region = os.pread(fd, sum(_block_len(manifest, first + j) for j in range(len(want))), first * bs)
                have = digest_region(region, bs)
            for j, d in enumerate(want):
                if j < len(have) and have[j] == d:
                    continue
                index = first + j
                length = _block_len(manifest, index)
                data = bytes(length) if d == ZERO_DIGEST else store.get(d)
                os.pwrite(fd, data, index * bs)
                written += 1
                bytes_written += length
            if progress is not None:
                progress(min(total, first + len(want)), total)
        os.fsync(fd)
    except OSError as err:
        raise from_os_error(err, f"write restore target {target}") from err
    finally:
        os.close(fd)
    if progress is not None:
        progress(total, total)
    return ApplyReport(blocks_total=total, blocks_written=written, bytes_written=bytes_written)


def image_manifest(path: Path, like: Manifest, *, progress: Progress | None = None) -> Manifest:
    """Re-read ``path`` and build the manifest it would have with ``like``'s header fields.

    Reads ``like.size_bytes`` bytes page region by page region. Raises InternalError /
    NotFoundError on I/O errors.
    """
    bs = like.block_size
    region_bytes = bs * PAGE_ENTRIES
    page_digests: list[bytes] = []
    try:
        with open(path, "rb", buffering=0) as f:
            if f.seek(0, os.SEEK_END) < like.size_bytes:
                raise RestoreVerifyError(f"image {path} is shorter than the snapshot ({like.size_bytes} bytes)",
                                         path=str(path), size_bytes=like.size_bytes)
            f.seek(0)
            done = 0
            while done < like.size_bytes:
                want = min(region_bytes, like.size_bytes - done)
                data = f.read(want)
                if len(data) != want:
                    raise RestoreVerifyError(f"short read of {path} at {done}", path=str(path))
                page_digests.extend(digest_of(p) for p in pages_from_digests(digest_region(data, bs)))
                done += want
                if progress is not None:
                    progress(done // bs, like.n_blocks)
    except OSError as err:
        raise from_os_error(err, f"read image {path}") from err
    return replace(like, pages=tuple(page_digests))


def verify_image(path: Path, manifest: Manifest, *, progress: Progress | None = None) -> bytes:
    """O5: recompute the Merkle root of the image at ``path`` and compare it with the manifest's.

    Returns:
        the root (equal to ``manifest.root``).
    Raises:
        RestoreVerifyError: roots differ (evidence: both roots, first differing page).
    """
    rebuilt = image_manifest(path, manifest, progress=progress)
    if rebuilt.root != manifest.root:
        first_bad = next((i for i, (a, b) in enumerate(zip(rebuilt.pages, manifest.pages)) if a != b), None)
        raise RestoreVerifyError(
            f"restored image {path} does not match snapshot {manifest.volume}#{manifest.seq}",
            volume=manifest.volume, seq=manifest.seq, expected_root=manifest.root.hex(),
            actual_root=rebuilt.root.hex(), first_differing_page=first_bad)
    return rebuilt.root
