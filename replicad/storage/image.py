"""Writing a snapshot into an image (restore, standby apply) and proving it (O5).

Synchronous functions, run in worker threads by the daemon. They work page by page (one
manifest page = ``manifest.page_entries`` blocks, 512 or 4096) so memory does not grow with
the volume size.

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
import logging
import mmap
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from replicad.storage.chunkstore import ChunkStore, digest_of
from replicad.storage.durable import preallocate, read_into
from replicad.core.errors import ReplicadError, RestoreVerifyError, TargetFullError, UsageError, from_os_error
from replicad.core.manifest import DIGEST_SIZE, ZERO_DIGEST, Manifest, block_range, page_entries, pages_from_digests, zero_block

Progress = Callable[[int, int], None]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApplyReport:
    """Outcome of :func:`apply_snapshot`: blocks examined / rewritten, bytes written."""

    blocks_total: int
    blocks_written: int
    bytes_written: int


def _pages_to_visit(manifest: Manifest, base: Manifest | None) -> list[int]:
    if base is None or base.block_size != manifest.block_size or base.page_entries != manifest.page_entries:
        return list(range(len(manifest.pages)))  # page digests of another geometry compare nothing
    return [i for i, pd in enumerate(manifest.pages) if i >= len(base.pages) or base.pages[i] != pd]


def _block_len(manifest: Manifest, index: int) -> int:
    return min(manifest.block_size, manifest.size_bytes - index * manifest.block_size)


def digest_region(data: bytes | bytearray | memoryview, block_size: int) -> list[bytes]:
    """Digests of consecutive blocks of ``data`` (the last may be short); all-zero → ZERO_DIGEST.

    Works on views (no copy of a block); the zero check is a memcmp against a zero block."""
    zeros = bytes(block_size)
    view = memoryview(data)
    out = []
    for off in range(0, len(view), block_size):
        block = view[off:off + block_size]
        out.append(ZERO_DIGEST if zeros.startswith(block) else digest_of(block))
    return out


READ_BYTES = 8 * 2**20  # reads of the target/image: bounded memory whatever the block size
DIRECT_ALIGN = 4096       # O_DIRECT offsets, lengths and buffer addresses: multiples of this
WRITE_RUN_BYTES = 8 * 2**20  # one O_DIRECT write: consecutive blocks gathered up to this size


def aligned_buffer(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes (rounded up to DIRECT_ALIGN) at a page-aligned
    address (an anonymous mmap), as O_DIRECT requires."""
    return memoryview(mmap.mmap(-1, -(-size // DIRECT_ALIGN) * DIRECT_ALIGN))


def open_direct(path: Path | str, flags: int, block_size: int) -> int | None:
    """``os.open(path, flags | O_DIRECT)``, or None where direct I/O cannot serve: a block
    size that is not a multiple of DIRECT_ALIGN, or a file system that refuses O_DIRECT
    (EINVAL, e.g. tmpfs). Other OSErrors are raised.

    Why direct I/O for restores (see ARCHITECTURE.md, "Page cache and bulk I/O"): a restore writes and
    re-reads the whole image once. Through the page cache, every page of a new image must be
    allocated; on the reference machine (a VM whose free memory is handed back to the host)
    writing 1 GiB into fresh page-cache memory took 2.5–3.0 s, against 0.22–0.27 s into
    recycled memory, and ``dd oflag=direct`` — the floor — never pays it. The O5 re-read
    through O_DIRECT also proves what is on the disk, not what is in the cache."""
    if block_size % DIRECT_ALIGN:
        return None
    try:
        return os.open(path, flags | os.O_DIRECT)
    except OSError as err:
        if err.errno == errno.EINVAL:
            return None
        raise


def data_spans(fd: int, start: int, end: int, block_size: int) -> list[tuple[int, int]]:
    """Block-aligned spans of ``[start, end)`` (``start`` block-aligned) that may hold data.

    A regular file's holes (``SEEK_DATA``/``SEEK_HOLE``) read as zeros by definition, so the
    blocks wholly inside them need not be read. Why it matters: reading a hole makes the kernel
    allocate and zero fresh page-cache pages, which on the reference machine made the first
    O5 re-read of a restored (half sparse) 1 GiB image take 1.0–1.3 s instead of 0.31–0.37 s.
    Where holes cannot be asked for (a block device, a file system without SEEK_DATA) the
    whole range is one span."""
    spans: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no data at or after pos: the rest is a hole
                break
            return [(start, end)]
        if data >= end:
            break
        try:
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError:
            hole = end
        lo = start + (data - start) // block_size * block_size
        hi = min(end, start + -(-(min(hole, end) - start) // block_size) * block_size)
        if spans and spans[-1][1] >= lo:
            spans[-1] = (spans[-1][0], max(spans[-1][1], hi))
        else:
            spans.append((lo, hi))
        pos = hi
    return spans


def _read_digests(fd: int, offset: int, length: int, block_size: int,
                  bufs: tuple[memoryview, memoryview] | None = None) -> list[bytes]:
    """Digests of the blocks in ``[offset, offset + length)`` of ``fd`` (``offset``
    block-aligned). Blocks inside holes are ZERO_DIGEST without being read (see
    :func:`data_spans`); the rest is read READ_BYTES at a time, double-buffered: the read of
    window k+1 (an I/O thread) overlaps the hashing of window k. ``bufs`` (two buffers from
    :func:`read_buffers`, reused between calls) are aligned, and reads are asked in whole
    DIRECT_ALIGN units, so ``fd`` may be opened with O_DIRECT (the caller falls back to a
    buffered fd on EINVAL). Past the end of a file or device reads as zeros (absent)."""
    step = max(1, READ_BYTES // block_size) * block_size
    if bufs is None or len(bufs[0]) < step + DIRECT_ALIGN:
        bufs = read_buffers(block_size)
    end = offset + length
    plan: list[tuple[int, int]] = []  # (offset, bytes to read) or (hole blocks, -1)
    pos = offset
    for lo, hi in [*data_spans(fd, offset, end, block_size), (end, end)]:
        if lo > pos:
            plan.append((-(-(lo - pos) // block_size), -1))  # a hole: zeros, not read
        pos = lo
        while pos < hi:
            want = min(step, hi - pos)
            plan.append((pos, want))
            pos += want
    reads = [(off, want) for off, want in plan if want >= 0]
    out: list[bytes] = []
    pending: Future[memoryview] | None = None
    k = 0  # index into reads of the next one to start
    if reads:
        pending = _io_pool().submit(_read_window, fd, bufs[0], *reads[0])
        k = 1
    for off, want in plan:
        if want < 0:
            out.extend([ZERO_DIGEST] * off)
            continue
        assert pending is not None
        view = pending.result()
        pending = None
        if k < len(reads):  # start the next read into the other buffer, then hash this one
            pending = _io_pool().submit(_read_window, fd, bufs[k % 2], *reads[k])
            k += 1
        try:
            out.extend(digest_region(view, block_size))
        except BaseException:
            if pending is not None:
                pending.result()
            raise
    return out


def read_buffers(block_size: int) -> tuple[memoryview, memoryview]:
    """The two aligned read buffers :func:`_read_digests` uses for ``block_size``."""
    size = max(1, READ_BYTES // block_size) * block_size + DIRECT_ALIGN
    return aligned_buffer(size), aligned_buffer(size)


def _read_window(fd: int, buf: memoryview, offset: int, want: int) -> memoryview:
    """Read ``want`` bytes at ``offset`` into ``buf`` (I/O thread); the bytes past the end of
    the file or device are zeros. Returns ``buf[:want]``. Raises OSError."""
    got = read_into(fd, buf, want, offset, align=DIRECT_ALIGN)  # O_DIRECT: whole aligned units
    if got < want:
        buf[got:want] = bytes(want - got)
    return buf[:want]


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _io_pool() -> ThreadPoolExecutor:
    """The I/O threads of restores and re-reads (2: a read ahead and a write behind; the
    syscalls release the GIL). Created on first use; restores run in worker threads."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="restore-io")
        return _POOL


def _runs(indexes: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive ``indexes`` (ascending) as half-open ``(start, end)`` pairs."""
    out: list[tuple[int, int]] = []
    for i in indexes:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def target_error(err: OSError, what: str, path: Path, size_bytes: int) -> ReplicadError:
    """Translate an ``OSError`` met while writing the restore image ``path`` (``what``: the step,
    for the message). A full file system there is :class:`TargetFullError` naming the
    directory and its free bytes (the chunk store's ``store_full`` is for the data dir);
    anything else as :func:`replicad.core.errors.from_os_error`."""
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


class _RunWriter:
    """Writes runs of consecutive whole blocks through an O_DIRECT fd, double-buffered: the
    write of one run (an I/O thread, :func:`_io_pool`; the syscall releases the GIL) overlaps the
    decoding of the next run's chunks into the other buffer. Two aligned buffers of
    WRITE_RUN_BYTES. :meth:`drain` waits for the write in flight and re-raises its OSError."""

    def __init__(self, dfd: int, fd: int) -> None:
        self.dfd, self.fd = dfd, fd
        self.bufs = [aligned_buffer(WRITE_RUN_BYTES), aligned_buffer(WRITE_RUN_BYTES)]
        self.cur = 0
        self.inflight: Future[None] | None = None
        self.run_off = self.pos = 0
        self.next_index = -1

    def add(self, index: int, block_size: int, data: bytes) -> None:
        """Append block ``index`` (``block_size`` bytes) to the current run."""
        buf = self.bufs[self.cur]
        if index != self.next_index or self.pos + block_size > len(buf):
            self.flush()
            buf = self.bufs[self.cur]
            self.run_off, self.pos = index * block_size, 0
        buf[self.pos:self.pos + block_size] = data
        self.pos += block_size
        self.next_index = index + 1

    def flush(self) -> None:
        """Start writing the current run and switch buffers (waits for the older write)."""
        if not self.pos:
            return
        self.drain()
        self.inflight = _io_pool().submit(write_direct_run, self.dfd, self.fd, self.bufs[self.cur][:self.pos],
                                         self.run_off)
        self.cur ^= 1
        self.pos = 0
        self.next_index = -1

    def drain(self) -> None:
        if self.inflight is not None:
            fut, self.inflight = self.inflight, None
            fut.result()

    def close(self) -> None:
        self.drain()


def _apply_page(fd: int, dfd: int | None, read_bufs: tuple[memoryview, memoryview], writer: _RunWriter | None,
                manifest: Manifest, store: ChunkStore, base: Manifest | None, i: int,
                want: list[bytes], zero_from: int, regular: bool, rewrite_all: bool = False,
                memo: dict[int, bytes] | None = None) -> tuple[int, int]:
    """Make page ``i`` of the target hold the block digests ``want``; (blocks, bytes) written.

    The target's current digests come from ``base`` (trusted) or a re-read (through ``dfd``
    when given); blocks that differ are preallocated (regular files) and written: through
    ``writer`` (O_DIRECT runs of consecutive whole blocks) when given, else (and the short
    last block always) with buffered pwrites on ``fd``. Every write of the page is finished
    on return. Idempotent: rerunning a page after a failure writes the same bytes. With
    ``rewrite_all`` the target is neither trusted nor read: every block not known to be zero
    (past ``zero_from``) is written. ``memo``: kept by the caller across ascending pages, so a
    ``base`` page of another geometry (one 4096-entry page spans 8 of 512) is loaded once
    (:func:`~replicad.core.manifest.block_range`). Raises OSError (EINVAL: direct I/O refused)."""
    bs = manifest.block_size
    first = i * manifest.page_entries
    if rewrite_all:
        have: list[bytes] = []
    elif base is not None and base.page_entries != manifest.page_entries:
        # a base of another geometry (a format-1 standby record): its digests of the same blocks
        raw = block_range(base, first, first + len(want), store.get, memo)
        have = [raw[k:k + DIGEST_SIZE] for k in range(0, len(raw), DIGEST_SIZE)]
    elif base is not None:
        have = page_entries(store.get(base.pages[i])) if i < len(base.pages) else []
    elif first * bs >= zero_from:
        have = []  # past the target's old end: reads as zeros, nothing to read or compare
    else:
        span = sum(_block_len(manifest, first + j) for j in range(len(want)))
        have = _read_digests(dfd if dfd is not None else fd, first * bs, span, bs, read_bufs)
    todo = [(first + j, d) for j, d in enumerate(want)
            if not ((j < len(have) and have[j] == d) or (d == ZERO_DIGEST and (first + j) * bs >= zero_from))]
    if regular:
        for start, end in _runs([index for index, _ in todo]):
            preallocate(fd, start * bs, min(end * bs, manifest.size_bytes) - start * bs)
    nbytes = 0
    for index, d in todo:
        length = _block_len(manifest, index)
        nbytes += length
        data = zero_block(length) if d == ZERO_DIGEST else store.get(d)
        if writer is None or length != bs:  # the page cache (short last block: always)
            os.pwrite(fd, data, index * bs)
        else:
            writer.add(index, bs, data)
    if writer is not None:
        writer.flush()
        writer.drain()
    return len(todo), nbytes


def write_direct_run(dfd: int, fd: int, data: memoryview, offset: int) -> None:
    """Write ``data`` (whole DIRECT_ALIGN units, aligned buffer) at ``offset`` through the
    O_DIRECT ``dfd``; a short write's unaligned rest goes through the buffered ``fd``."""
    while data:
        n = os.pwrite(dfd, data, offset)
        if n <= 0 or n % DIRECT_ALIGN:
            rest = data[max(0, n):]
            while rest:
                m = os.pwrite(fd, rest, offset + max(0, n))
                rest, n = rest[m:], max(0, n) + m
            return
        data, offset = data[n:], offset + n


def check_target_size(target: Path, manifest: Manifest) -> None:
    """Raise UsageError if ``target`` is a block device smaller than ``manifest`` (a file is
    resized; a missing target is created). Called before a restore writes anything."""
    try:
        fd = os.open(target, os.O_RDONLY)
    except OSError:
        return  # absent or unreadable: the write path reports it, typed
    try:
        if stat.S_ISBLK(os.fstat(fd).st_mode):
            _check_device_size(fd, target, manifest)
    finally:
        os.close(fd)


def _check_device_size(fd: int, target: Path, manifest: Manifest) -> None:
    size = os.lseek(fd, 0, os.SEEK_END)
    if size < manifest.size_bytes:
        raise UsageError(f"restore target {target} is a device of {size} bytes, smaller than the snapshot "
                         f"({manifest.size_bytes} bytes): nothing was written", target=str(target),
                         device_bytes=size, size_bytes=manifest.size_bytes)


def apply_snapshot(target: Path, manifest: Manifest, store: ChunkStore, *, base: Manifest | None = None,
                   progress: Progress | None = None, direct: bool = True, rewrite_all: bool = False) -> ApplyReport:
    """Make the file ``target`` hold exactly the snapshot ``manifest``.

    Args:
        target: image file or block device; created (sparse) if absent, resized to
            ``manifest.size_bytes`` if a regular file.
        base: a manifest the target is *known* to hold (standby record); when given (and of
            the same block size), only pages that differ from it are visited and the target is
            not read. Otherwise the target is read and compared block by block.
        progress: called as ``progress(done_blocks, total_blocks)``.
        direct: read and write the target with O_DIRECT where possible (:func:`open_direct`;
            consecutive blocks go out in writes of up to WRITE_RUN_BYTES); the short last
            block, and everything on a file system that refuses O_DIRECT, goes through the
            page cache. Either way the target is fsynced before this returns.
        rewrite_all: trust nothing the target holds: a regular file is cut to 0 bytes and
            extended again (every block then reads as zeros) and every non-zero block is
            written; on a block device every block, zeros included, is written. ``base`` is
            ignored. The fallback of a promotion whose in-place restore failed O5: only the
            store is trusted.
    Returns:
        :class:`ApplyReport`.
    Raises:
        NotFoundError: a needed chunk is not in the store (fetch it first).
        IntegrityError: a stored chunk is corrupt (the caller re-fetches it and retries).
        TargetFullError: the target's file system is full (:func:`target_error`).
        UsageError: a block device smaller than the snapshot (checked before any write), or
            another error of the target's file system; InternalError.
    """
    bs = manifest.block_size
    total = manifest.n_blocks
    if (base is not None and base.block_size != bs) or rewrite_all:
        base = None  # its page entries describe other blocks (or nothing is trusted): compare or rewrite
    written = bytes_written = 0
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as err:
        raise target_error(err, f"open restore target {target}", target, manifest.size_bytes) from err
    try:
        zero_from = manifest.size_bytes  # offsets at or past this already read as zeros
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if not regular:
            _check_device_size(fd, target, manifest)
        read_bufs = read_buffers(bs)
        if regular:
            old_size = os.fstat(fd).st_size
            if rewrite_all:  # every old block dropped: the file reads as zeros, then the data is written
                os.ftruncate(fd, 0)
                old_size = 0
            if old_size != manifest.size_bytes:
                os.ftruncate(fd, manifest.size_bytes)
            zero_from = min(old_size, manifest.size_bytes)
        dfd = open_direct(target, os.O_RDWR, bs) if direct else None
        writer = _RunWriter(dfd, fd) if dfd is not None else None
        memo: dict[int, bytes] = {}  # block_range's last base page (a base of another geometry)
        try:
            for i in _pages_to_visit(manifest, base):
                want = page_entries(store.get(manifest.pages[i]))
                first = i * manifest.page_entries
                while True:  # once more through the page cache if direct I/O is refused midway
                    try:
                        n, nbytes = _apply_page(fd, dfd, read_bufs, writer, manifest, store, base, i,
                                                want, zero_from, regular, rewrite_all, memo)
                        break
                    except OSError as err:
                        if dfd is None or err.errno != errno.EINVAL:
                            raise
                        log.info("restore target %s: direct I/O refused (%s), using the page cache", target, err)
                        if writer is not None:
                            writer.close()
                        writer = None
                        os.close(dfd)
                        dfd = None
                written += n
                bytes_written += nbytes
                if progress is not None:
                    progress(min(total, first + len(want)), total)
        finally:
            if writer is not None:
                writer.close()
            if dfd is not None:
                os.close(dfd)
        os.fsync(fd)  # the buffered writes, and the metadata (allocation, size) of the direct ones
    except OSError as err:
        raise target_error(err, f"write restore target {target}", target, manifest.size_bytes) from err
    finally:
        os.close(fd)
    if progress is not None:
        progress(total, total)
    return ApplyReport(blocks_total=total, blocks_written=written, bytes_written=bytes_written)


def image_manifest(path: Path, like: Manifest, *, progress: Progress | None = None,
                   direct: bool = True) -> Manifest:
    """Re-read ``path`` and build the manifest it would have with ``like``'s header fields and
    page geometry.

    Reads ``like.size_bytes`` bytes, READ_BYTES at a time (memory does not grow with the
    block size), skipping holes; with ``direct`` through O_DIRECT where the file system
    allows it (:func:`open_direct`: the disk's content, no page-cache allocation), else
    through the page cache. Raises RestoreVerifyError if the image is shorter,
    InternalError / NotFoundError / UsageError on I/O errors.
    """
    try:
        fd = open_direct(path, os.O_RDONLY, like.block_size) if direct else None
        if fd is not None:
            try:
                return _image_manifest_fd(fd, path, like, progress)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                log.info("image %s: direct reads refused (%s), reading through the page cache", path, err)
            finally:
                os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        try:
            return _image_manifest_fd(fd, path, like, progress)
        finally:
            os.close(fd)
    except OSError as err:
        raise from_os_error(err, f"read image {path}") from err


def _image_manifest_fd(fd: int, path: Path, like: Manifest, progress: Progress | None) -> Manifest:
    """:func:`image_manifest` on an open ``fd``; OSErrors are raised as they are."""
    bs = like.block_size
    page_digests: list[bytes] = []
    buf = read_buffers(bs)
    if os.lseek(fd, 0, os.SEEK_END) < like.size_bytes:
        raise RestoreVerifyError(f"image {path} is shorter than the snapshot ({like.size_bytes} bytes)",
                                 path=str(path), size_bytes=like.size_bytes)
    pe = like.page_entries  # the geometry of ``like``: the same pages for the same image
    for i in range(len(like.pages) if like.size_bytes else 0):
        first = i * pe
        span = min(pe * bs, like.size_bytes - first * bs)
        page_digests.extend(digest_of(p) for p in pages_from_digests(_read_digests(fd, first * bs, span, bs, buf), pe))
        if progress is not None:
            progress(min(like.n_blocks, first + pe), like.n_blocks)
    # blocks past the manifest's pages (should not exist) would make the roots differ below
    while len(page_digests) * pe < like.n_blocks:
        first = len(page_digests) * pe
        span = min(pe * bs, like.size_bytes - first * bs)
        extra = pages_from_digests(_read_digests(fd, first * bs, span, bs, buf), pe)
        if not extra:  # nothing read: stop (the roots differ below)
            break
        page_digests.extend(digest_of(p) for p in extra)
    return replace(like, pages=tuple(page_digests))


@dataclass(frozen=True)
class ImageCheck:
    """Outcome of :func:`check_image_range`: the blocks ``[first_block, next_block)`` were read
    (``bytes_read`` bytes, holes excluded); ``bad_blocks`` lists those whose content is not the
    manifest's (ascending block indexes)."""

    first_block: int
    next_block: int
    bad_blocks: tuple[int, ...]
    bytes_read: int


def check_image_range(path: Path, manifest: Manifest, store: ChunkStore, first_block: int, max_bytes: int, *,
                      direct: bool = True) -> ImageCheck:
    """Compare blocks of the image at ``path`` with the snapshot ``manifest``, starting at block
    ``first_block`` and reading at most ``max_bytes`` (at least one block): one bounded step of
    a standby check that goes on where the last one stopped (``next_block``; equal to
    ``manifest.n_blocks`` at the end).

    Reads like :func:`image_manifest` (READ_BYTES windows, holes skipped, O_DIRECT where the file
    system allows it: the disk's content, not the page cache's); the expected digests come from
    the manifest's pages (verified reads of the store). Bytes past the end of the image read as
    zeros, so a truncated image shows its missing non-zero blocks as bad.

    Raises:
        NotFoundError / IntegrityError: a page chunk of the manifest is missing or corrupt here.
        UsageError / InternalError / NotFoundError: the image cannot be read (typed OSError).
    """
    bs = manifest.block_size
    n = manifest.n_blocks
    first = max(0, min(first_block, n))
    end = min(n, first + max(1, max_bytes // bs))
    bad: list[int] = []
    read = 0

    def run(fd: int) -> None:
        nonlocal read
        bufs = read_buffers(bs)
        pos = first
        while pos < end:
            page = pos // manifest.page_entries
            stop = min(end, (page + 1) * manifest.page_entries)
            want = page_entries(store.get(manifest.pages[page]))
            span = sum(_block_len(manifest, j) for j in range(pos, stop))
            have = _read_digests(fd, pos * bs, span, bs, bufs)
            read += sum(_block_len(manifest, pos + k) for k, d in enumerate(have) if d != ZERO_DIGEST)
            bad.extend(pos + k for k, d in enumerate(have) if d != want[pos - page * manifest.page_entries + k])
            pos = stop

    try:
        fd = open_direct(path, os.O_RDONLY, bs) if direct else None
        if fd is not None:
            try:
                run(fd)
                return ImageCheck(first, end, tuple(bad), read)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                bad.clear()
                read = 0
            finally:
                os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        try:
            run(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise from_os_error(err, f"read image {path}") from err
    return ImageCheck(first, end, tuple(bad), read)


def verify_image(path: Path, manifest: Manifest, *, progress: Progress | None = None,
                 direct: bool = True) -> bytes:
    """O5: recompute the Merkle root of the image at ``path`` and compare it with the manifest's.

    Returns:
        the root (equal to ``manifest.root``).
    Raises:
        RestoreVerifyError: roots differ (evidence: both roots, first differing page).
    """
    rebuilt = image_manifest(path, manifest, progress=progress, direct=direct)
    if rebuilt.root != manifest.root:
        first_bad = next((i for i, (a, b) in enumerate(zip(rebuilt.pages, manifest.pages)) if a != b), None)
        raise RestoreVerifyError(
            f"restored image {path} does not match snapshot {manifest.volume}#{manifest.seq}",
            volume=manifest.volume, seq=manifest.seq, expected_root=manifest.root.hex(),
            actual_root=rebuilt.root.hex(), first_differing_page=first_bad)
    return rebuilt.root
