"""Small file I/O helpers shared by the bulk readers and writers: directory fsync after a
rename or a new entry, block preallocation before large writes, page-cache release, and
reads into reused buffers."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """fsync the directory ``path`` so that a rename or a new entry in it survives a power loss
    (POSIX: a file's fsync does not persist its directory entry). Raises the OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, tmp_suffix: str = ".tmp") -> None:
    """Write ``data`` to ``path`` atomically: the file ``path`` + ``tmp_suffix`` written and
    fsynced, renamed over ``path``, then the directory fsynced. A reader sees the old file or the
    new one whole, after a crash too (a leftover tmp file is never read).

    Raises OSError as met; the tmp file is removed then, and ``path`` is untouched (unless only
    the directory fsync failed: the rename happened)."""
    tmp = path.with_name(path.name + tmp_suffix)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# errnos of a file system / file type without fallocate support: the write goes ahead unallocated
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENODEV, errno.ESPIPE})


def preallocate(fd: int, offset: int, length: int) -> None:
    """Allocate the disk blocks of ``[offset, offset + length)`` of the regular file ``fd``
    (``posix_fallocate``) just before that range is written.

    Why: on ext4 a buffered write into not-yet-allocated space pays delayed allocation page
    by page. Measured on the reference machine (1 GiB written in 64 KiB pieces, then fsync):
    2.1–5.5 s without, 0.80–0.92 s with a ``posix_fallocate`` of each 4 MiB (or 64 KiB) range
    right before it is written. Already allocated ranges cost a cheap extent lookup. The file
    size grows to ``offset + length`` if it was smaller, so call it only for ranges that are
    written right after (a crash in between leaves zeros, which the writers' recovery treats
    like a torn tail).

    Raises:
        OSError: ENOSPC / EDQUOT (the caller maps them to its "full" error: the write would
            have failed the same way, now before any byte of it is written), or an I/O error.
            A file system or file type without fallocate support is not an error: nothing is
            allocated and the write proceeds as before.
    """
    if length <= 0:
        return
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as err:
        if err.errno not in _NO_FALLOCATE:
            raise


def release_cache(fd: int, offset: int, length: int) -> None:
    """Drop the page-cache pages of ``[offset, offset + length)`` of ``fd`` once they are
    durable (call after fsync; ``POSIX_FADV_DONTNEED`` only drops clean pages).

    Why: bulk writers (chunk-store packs: a first full sync writes the whole volume's chunks
    at the primary and at every replica) otherwise fill the page cache with pages nobody
    reads soon, and each new page must come from free memory. On the reference machine (a VM
    whose free memory is handed back to the host) writing 512 MiB in fsynced 4 MiB batches
    took 1.75–2.5 s (1.3–1.5 s of it system CPU) as is, and 0.36–0.38 s (0.14 s) with the
    pages dropped after each batch, because the dropped pages are reused at once. Readers
    of just-written packs then read from the disk. Advice only: never raises."""
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def read_into(fd: int, buf: memoryview | bytearray, length: int, offset: int, *, align: int = 1) -> int:
    """Fill ``buf[:length]`` from ``offset`` of ``fd`` with ``preadv`` (into a reused buffer:
    no allocation, no fresh page faults per read); each read is asked rounded up to a
    multiple of ``align`` (O_DIRECT needs whole aligned units; ``buf`` must then be that
    long and aligned). Returns the bytes read: less than ``length`` only at the end of the
    file or device. Raises OSError."""
    view = memoryview(buf)
    ask = -(-length // align) * align
    done = 0
    while done < length:
        n = os.preadv(fd, [view[done:ask]], offset + done)
        if n <= 0:
            break
        done += n
    return min(done, length)
