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

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .chunkstore import ChunkStore, digest_of
from .errors import ReplicadError, RestoreVerifyError, TargetFullError, from_os_error
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


READ_BYTES = 8 * 2**20  # reads of the target/image: bounded memory whatever the block size


def _read_digests(fd: int, offset: int, length: int, block_size: int) -> list[bytes]:
    """Digests of the blocks in ``[offset, offset + length)`` of ``fd``, read READ_BYTES at a time."""
    step = max(1, READ_BYTES // block_size) * block_size
    out: list[bytes] = []
    done = 0
    while done < length:
        want = min(step, length - done)
        data = os.pread(fd, want, offset + done)
        if len(data) != want:
            data += bytes(want - len(data))  # past the end of a device/file reads as absent: zeros
        out.extend(digest_region(data, block_size))
        done += want
    return out


def target_error(err: OSError, what: str, path: Path, size_bytes: int) -> ReplicadError:
    """Translate an ``OSError`` met while writing the restore image ``path`` (``what``: the step,
    for the message). A full file system there is :class:`TargetFullError` naming the
    directory and its free bytes (the chunk store's ``store_full`` is for the data dir);
    anything else as :func:`replicad.errors.from_os_error`."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return from_os_error(err, what)
    directory = Path(path).parent
    try:
        st = os.statvfs(directory)
        free: int | None = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    free_text = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
    return TargetFullError(f"{what}: the file system of the restore target's directory {directory} is full "
                           f"({free_text}; the snapshot is {size_bytes / 2**20:.1f} MiB): free space there or "
                           "choose another target", path=str(path), directory=str(directory), free_bytes=free,
                           size_bytes=size_bytes, errno=err.errno)


def apply_snapshot(target: Path, manifest: Manifest, store: ChunkStore, *, base: Manifest | None = None,
                   progress: Progress | None = None) -> ApplyReport:
    """Make the file ``target`` hold exactly the snapshot ``manifest``.

    Args:
        target: image file or block device; created (sparse) if absent, resized to
            ``manifest.size_bytes`` if a regular file.
        base: a manifest the target is *known* to hold (standby record); when given (and of
            the same block size), only pages that differ from it are visited and the target is
            not read. Otherwise the target is read and compared block by block.
        progress: called as ``progress(done_blocks, total_blocks)``.
    Returns:
        :class:`ApplyReport`.
    Raises:
        NotFoundError: a needed chunk is not in the store (fetch it first).
        IntegrityError: a stored chunk is corrupt (the caller re-fetches it and retries).
        TargetFullError: the target's file system is full (:func:`target_error`).
        UsageError / InternalError: other errors of the target's file system.
    """
    bs = manifest.block_size
    total = manifest.n_blocks
    if base is not None and base.block_size != bs:
        base = None  # its page entries describe other blocks: compare the target itself
    written = bytes_written = 0
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as err:
        raise target_error(err, f"open restore target {target}", target, manifest.size_bytes) from err
    try:
        zero_from = manifest.size_bytes  # offsets at or past this already read as zeros
        if os.path.isfile(target):
            old_size = os.fstat(fd).st_size
            if old_size != manifest.size_bytes:
                os.ftruncate(fd, manifest.size_bytes)
            zero_from = min(old_size, manifest.size_bytes)
        for i in _pages_to_visit(manifest, base):
            want = page_entries(store.get(manifest.pages[i]))
            first = i * PAGE_ENTRIES
            if base is not None:
                have = page_entries(store.get(base.pages[i])) if i < len(base.pages) else []
            elif first * bs >= zero_from:
                have = []  # past the target's old end: reads as zeros, nothing to read or compare
            else:
                span = sum(_block_len(manifest, first + j) for j in range(len(want)))
                have = _read_digests(fd, first * bs, span, bs)
            for j, d in enumerate(want):
                index = first + j
                if (j < len(have) and have[j] == d) or (d == ZERO_DIGEST and index * bs >= zero_from):
                    continue
                length = _block_len(manifest, index)
                data = bytes(length) if d == ZERO_DIGEST else store.get(d)
                os.pwrite(fd, data, index * bs)
                written += 1
                bytes_written += length
            if progress is not None:
                progress(min(total, first + len(want)), total)
        os.fsync(fd)
    except OSError as err:
        raise target_error(err, f"write restore target {target}", target, manifest.size_bytes) from err
    finally:
        os.close(fd)
    if progress is not None:
        progress(total, total)
    return ApplyReport(blocks_total=total, blocks_written=written, bytes_written=bytes_written)


def image_manifest(path: Path, like: Manifest, *, progress: Progress | None = None) -> Manifest:
    """Re-read ``path`` and build the manifest it would have with ``like``'s header fields.

    Reads ``like.size_bytes`` bytes, READ_BYTES at a time (memory does not grow with the
    block size). Raises RestoreVerifyError if the image is shorter, InternalError /
    NotFoundError on I/O errors.
    """
    bs = like.block_size
    page_digests: list[bytes] = []
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise from_os_error(err, f"read image {path}") from err
    try:
        if os.lseek(fd, 0, os.SEEK_END) < like.size_bytes:
            raise RestoreVerifyError(f"image {path} is shorter than the snapshot ({like.size_bytes} bytes)",
                                     path=str(path), size_bytes=like.size_bytes)
        for i in range(len(like.pages) if like.size_bytes else 0):
            first = i * PAGE_ENTRIES
            span = min(PAGE_ENTRIES * bs, like.size_bytes - first * bs)
            page_digests.extend(digest_of(p) for p in pages_from_digests(_read_digests(fd, first * bs, span, bs)))
            if progress is not None:
                progress(min(like.n_blocks, first + PAGE_ENTRIES), like.n_blocks)
        # blocks past the manifest's pages (should not exist) would make the roots differ below
        while len(page_digests) * PAGE_ENTRIES < like.n_blocks:
            first = len(page_digests) * PAGE_ENTRIES
            span = min(PAGE_ENTRIES * bs, like.size_bytes - first * bs)
            page_digests.extend(digest_of(p) for p in pages_from_digests(_read_digests(fd, first * bs, span, bs)))
    except OSError as err:
        raise from_os_error(err, f"read image {path}") from err
    finally:
        os.close(fd)
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
