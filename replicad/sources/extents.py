"""Reflink clones and extent maps of regular files: ``ioctl(FICLONE)`` and ``ioctl(FS_IOC_FIEMAP)``.

Used by the ``reflink`` snapshot source (:mod:`replicad.sources.reflink`) on XFS (``mkfs.xfs -m
reflink=1``) and btrfs. Both ioctls are called through :func:`fcntl.ioctl` with the layouts of
the kernel's UAPI headers (packed with :mod:`struct`):

* ``FICLONE = _IOW(0x94, 9, int) = 0x40049409`` (``include/uapi/linux/fs.h``): make the
  destination file share every extent of the source; atomic with respect to writes of the
  source (the file system takes both inodes' locks and flushes the source's dirty pages
  first), so a clone is a crash-consistent point-in-time copy, made without copying data.
  Errors: ``EOPNOTSUPP`` (the file system cannot share extents: ext4, XFS without reflink,
  tmpfs), ``EXDEV`` (source and destination on different file systems), ``EINVAL`` (not a
  regular file, e.g. a block device), ``ENOSPC`` (metadata space).
* ``FS_IOC_FIEMAP = _IOWR('f', 11, struct fiemap) = 0xC020660B`` (``include/uapi/linux/fs.h``;
  ``struct fiemap`` and the ``FIEMAP_*`` flags in ``include/uapi/linux/fiemap.h``; semantics in
  the kernel's ``Documentation/filesystems/fiemap.rst``): the file's extents as
  ``(fe_logical, fe_physical, fe_length, fe_flags)``. ``FIEMAP_FLAG_SYNC`` writes the file's
  dirty data back first, so delayed allocations get their physical place. The caller gives a
  buffer for ``fm_extent_count`` extents; a file with more is read in pages
  (:func:`extent_map` restarts after the last extent returned until one carries
  ``FIEMAP_EXTENT_LAST`` or none is returned).

Layouts (little endian on the machines replicad runs on; ``struct`` native order is used)::

    struct fiemap        { u64 fm_start; u64 fm_length; u32 fm_flags; u32 fm_mapped_extents;
                           u32 fm_extent_count; u32 fm_reserved; struct fiemap_extent fm_extents[]; }  32 bytes
    struct fiemap_extent { u64 fe_logical; u64 fe_physical; u64 fe_length; u64 fe_reserved64[2];
                           u32 fe_flags; u32 fe_reserved[3]; }                                          56 bytes

Comparing two clones (:func:`differing_ranges`): a byte range is *unchanged* between the
previous clone and the new one when both map it to the same physical bytes (or both leave
it a hole). While the previous clone exists, every extent it shares with the live image is
copy-on-write: a write to the image moves that range to new physical blocks, which the new
clone then shares — so equal physical offsets mean equal content. Pitfalls (measured on
loop-mounted XFS and btrfs, ../shared/design/FIELD-NOTES.md): extents split at the borders of
shared and unshared parts (the comparison is per byte range, not per extent, so splits do not
matter); relocation or defragmentation moves extents and only *over*-reports (safe: the
range is read and found equal). Extents whose physical address does not identify their
content byte for byte — ``UNKNOWN``, ``DELALLOC``, ``ENCODED`` (btrfs compression: the
address is the compressed extent's), ``DATA_INLINE``, ``DATA_TAIL``, ``NOT_ALIGNED``,
``DATA_ENCRYPTED`` — always count as changed. ``UNWRITTEN`` extents (preallocated, read as
zeros) compare by flag as well as by address.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

import numpy as np

from replicad.core.errors import CloneCrossDeviceError, ReflinkUnsupportedError, from_os_error

FICLONE = 0x40049409
"""``_IOW(0x94, 9, int)``, include/uapi/linux/fs.h."""
FS_IOC_FIEMAP = 0xC020660B
"""``_IOWR('f', 11, struct fiemap)``, include/uapi/linux/fs.h."""

FIEMAP_FLAG_SYNC = 0x00000001          # sync the file before mapping (fiemap.h)
FIEMAP_EXTENT_LAST = 0x00000001        # last extent in the file
FIEMAP_EXTENT_UNKNOWN = 0x00000002     # data location unknown
FIEMAP_EXTENT_DELALLOC = 0x00000004    # location still pending (sets UNKNOWN)
FIEMAP_EXTENT_ENCODED = 0x00000008     # data cannot be read while the fs is unmounted (compressed)
FIEMAP_EXTENT_DATA_ENCRYPTED = 0x00000080
FIEMAP_EXTENT_NOT_ALIGNED = 0x00000100
FIEMAP_EXTENT_DATA_INLINE = 0x00000200
FIEMAP_EXTENT_DATA_TAIL = 0x00000400
FIEMAP_EXTENT_UNWRITTEN = 0x00000800   # allocated, not written: reads as zeros
FIEMAP_EXTENT_MERGED = 0x00001000
FIEMAP_EXTENT_SHARED = 0x00002000      # shared with another file (a clone)

UNSAFE_FLAGS = (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_ENCODED
                | FIEMAP_EXTENT_DATA_ENCRYPTED | FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DATA_INLINE
                | FIEMAP_EXTENT_DATA_TAIL)
"""Extent flags under which the physical address does not identify the bytes: always changed."""

_FIEMAP_HEAD = struct.Struct("=QQIIII")            # 32 bytes
_FIEMAP_EXTENT = struct.Struct("=QQQ16xI12x")      # 56 bytes
FIEMAP_MAX_U64 = 2**64 - 1
EXTENTS_PER_CALL = 512
"""Extents asked per FIEMAP call by :func:`extent_map` (a 28 KiB buffer); more are read in further calls."""
ARRAY_EXTENTS_PER_CALL = 16384
"""Extents asked per FIEMAP call by :func:`extent_arrays` (a 896 KiB buffer). The kernel's cost
is per extent, not per call (tests/bench/fiemap_cost.py, 45,429 extents on XFS: the ioctls
alone 0.23 s with 512 per call, 0.21 s with 16,384); the larger buffer saves the Python
round trips of the smaller one."""
_EXTENT_DTYPE = np.dtype({"names": ["logical", "physical", "length", "flags"],
                          "formats": ["=u8", "=u8", "=u8", "=u4"],
                          "offsets": [0, 8, 16, 40], "itemsize": _FIEMAP_EXTENT.size})
"""``struct fiemap_extent`` as a numpy record (native order, the reserved fields skipped)."""

_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS, errno.EBADF)


@dataclass(frozen=True)
class Extent:
    """One extent of a file: ``length`` bytes at byte ``logical`` of the file stored at byte
    ``physical`` of the device (btrfs: of its logical address space), with FIEMAP ``flags``."""

    logical: int
    physical: int
    length: int
    flags: int


def clone_file(src_fd: int, dst_fd: int, *, src: str = "", dst: str = "") -> None:
    """``ioctl(dst_fd, FICLONE, src_fd)``: make the open file ``dst_fd`` (empty, writable) share
    every extent of ``src_fd``; its size becomes the source's. Blocking: run in a worker thread.

    Raises:
        CloneCrossDeviceError: EXDEV, the two files are on different file systems.
        ReflinkUnsupportedError: EOPNOTSUPP/ENOTTY/EINVAL, the file system or file kind cannot
            share extents (evidence ``reason = "not_reflink_capable"``).
        StoreFullError / UsageError / InternalError: other OSErrors (:func:`from_os_error`).
    """
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as err:
        if err.errno == errno.EXDEV:
            raise CloneCrossDeviceError(
                f"cannot clone {src} into {dst}: they are on different file systems (a reflink clone must live "
                "on the image's own file system: set [volumes.source] clone_dir to a directory there)",
                source=src, clone=dst, errno=err.errno) from err
        if err.errno in _UNSUPPORTED:
            raise ReflinkUnsupportedError(
                f"cannot clone {src}: {err.strerror} (the file system does not share extents: the reflink "
                "source needs XFS made with reflink=1 or btrfs, and a regular image file)",
                source=src, clone=dst, errno=err.errno, reason="not_reflink_capable") from err
        raise from_os_error(err, "cloning the volume image", source=src, clone=dst) from err


def _fiemap_call(fd: int, path: str, buf: bytearray, start: int, flags: int, per_call: int) -> None:
    """One ``FS_IOC_FIEMAP`` call into ``buf`` (header + ``per_call`` extent records) for the
    extents from byte ``start`` to the end of the file; the answer is read from ``buf``.

    Raises:
        ReflinkUnsupportedError: EOPNOTSUPP/ENOTTY/EINVAL (``reason = "extent_map_unsupported"``).
        InternalError / UsageError: other OSErrors (:func:`from_os_error`).
    """
    _FIEMAP_HEAD.pack_into(buf, 0, start, FIEMAP_MAX_U64 - start, flags, 0, per_call, 0)
    try:
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
    except OSError as err:
        if err.errno in _UNSUPPORTED:
            raise ReflinkUnsupportedError(
                f"cannot read the extent map of {path}: {err.strerror}", path=path, errno=err.errno,
                reason="extent_map_unsupported") from err
        raise from_os_error(err, "reading an extent map (FIEMAP)", path=path) from err

def extent_map(fd: int, *, path: str = "", sync: bool = True,
               per_call: int = EXTENTS_PER_CALL) -> list[Extent]:
    """Every extent of the open regular file ``fd``, sorted by logical offset, through
    ``FS_IOC_FIEMAP`` over ``[0, 2**64-1)`` (with ``FIEMAP_FLAG_SYNC`` when ``sync``).

    Paginated: each call returns at most ``per_call`` extents; the next call starts at the
    end of the last extent returned, until an extent carries ``FIEMAP_EXTENT_LAST`` or a call
    returns none. Holes are absent from the list. Blocking: run in a worker thread.

    Raises:
        ReflinkUnsupportedError: EOPNOTSUPP/ENOTTY/EINVAL (``reason = "extent_map_unsupported"``).
        InternalError / UsageError: other OSErrors (:func:`from_os_error`).
    """
    if per_call < 1:
        raise ValueError("per_call must be >= 1")
    out: list[Extent] = []
    start = 0
    flags = FIEMAP_FLAG_SYNC if sync else 0
    buf = bytearray(_FIEMAP_HEAD.size + per_call * _FIEMAP_EXTENT.size)
    while True:
        _fiemap_call(fd, path, buf, start, flags, per_call)
        mapped = _FIEMAP_HEAD.unpack_from(buf, 0)[3]
        if mapped == 0:
            return out
        last = False
        for i in range(min(mapped, per_call)):
            logical, physical, length, fe_flags = _FIEMAP_EXTENT.unpack_from(
                buf, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size)
            out.append(Extent(logical, physical, length, fe_flags))
            last = bool(fe_flags & FIEMAP_EXTENT_LAST)
        if last:
            return out
        nxt = out[-1].logical + out[-1].length
        if nxt <= start:  # a file system that returns no progress: stop rather than loop
            return out
        start = nxt


@dataclass(frozen=True, eq=False)
class ExtentArrays:
    """A file's extent map as parallel numpy arrays of equal length, in FIEMAP's order (by
    logical offset): ``logical``, ``physical``, ``length`` (``uint64``, bytes) and ``flags``
    (``uint32``, ``FIEMAP_EXTENT_*``). What :func:`extent_arrays` reads and
    :func:`changed_ranges` compares: no Python object per extent (50,000 extents of a
    fragmented image are 4 arrays, not 50,000 :class:`Extent`)."""

    logical: np.ndarray
    physical: np.ndarray
    length: np.ndarray
    flags: np.ndarray

    def __len__(self) -> int:
        return int(self.logical.shape[0])

    @classmethod
    def of(cls, extents: list[Extent]) -> ExtentArrays:
        """The arrays of a list of :class:`Extent` (same order)."""
        return cls(np.array([e.logical for e in extents], dtype=np.uint64),
                   np.array([e.physical for e in extents], dtype=np.uint64),
                   np.array([e.length for e in extents], dtype=np.uint64),
                   np.array([e.flags for e in extents], dtype=np.uint32))

    def extents(self) -> list[Extent]:
        """The same map as a list of :class:`Extent`."""
        return [Extent(*t) for t in zip(self.logical.tolist(), self.physical.tolist(), self.length.tolist(),
                                        self.flags.tolist())]


def extent_arrays(fd: int, *, path: str = "", sync: bool = True,
                  per_call: int = ARRAY_EXTENTS_PER_CALL) -> ExtentArrays:
    """:func:`extent_map` of the open regular file ``fd`` as :class:`ExtentArrays`: the same
    ioctls and pagination (``per_call`` extents per call, restart after the last one returned,
    stop at ``FIEMAP_EXTENT_LAST`` or an empty answer or no progress), each call's buffer
    decoded at once as a numpy record array of ``struct fiemap_extent``. Blocking: run in a
    worker thread.

    Raises:
        ValueError: ``per_call`` < 1.
        ReflinkUnsupportedError: EOPNOTSUPP/ENOTTY/EINVAL (``reason = "extent_map_unsupported"``).
        InternalError / UsageError: other OSErrors (:func:`from_os_error`).
    """
    if per_call < 1:
        raise ValueError("per_call must be >= 1")
    parts: list[np.ndarray] = []
    start = 0
    flags = FIEMAP_FLAG_SYNC if sync else 0
    buf = bytearray(_FIEMAP_HEAD.size + per_call * _FIEMAP_EXTENT.size)
    while True:
        _fiemap_call(fd, path, buf, start, flags, per_call)
        mapped = min(_FIEMAP_HEAD.unpack_from(buf, 0)[3], per_call)
        if mapped == 0:
            break
        rec = np.frombuffer(buf, dtype=_EXTENT_DTYPE, count=mapped, offset=_FIEMAP_HEAD.size).copy()  # buf is reused
        parts.append(rec)
        if int(rec["flags"][-1]) & FIEMAP_EXTENT_LAST:
            break
        nxt = int(rec["logical"][-1]) + int(rec["length"][-1])
        if nxt <= start:  # a file system that returns no progress: stop rather than loop
            break
        start = nxt
    rec = np.concatenate(parts) if parts else np.zeros(0, dtype=_EXTENT_DTYPE)
    return ExtentArrays(np.ascontiguousarray(rec["logical"]), np.ascontiguousarray(rec["physical"]),
                        np.ascontiguousarray(rec["length"]), np.ascontiguousarray(rec["flags"]))


def _clip_arrays(x: ExtentArrays, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_clip` on arrays: ``(logical, physical, length, flags)`` cut to ``[0, size)``,
    sorted by logical offset (stable, like :func:`_clip`)."""
    keep = (x.logical < np.uint64(size)) & (x.length > 0)
    lo, ph, ln, fl = x.logical[keep], x.physical[keep], x.length[keep], x.flags[keep]
    ln = np.minimum(ln, np.uint64(size) - lo)
    if lo.size > 1 and np.any(lo[1:] < lo[:-1]):
        order = np.argsort(lo, kind="stable")
        lo, ph, ln, fl = lo[order], ph[order], ln[order], fl[order]
    return lo, ph, ln, fl


def _covering(lo: np.ndarray, ln: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each offset of ``s``: (the index of the extent of sorted, non-overlapping ``lo``/``ln``
    that covers it, clipped to a valid index; whether one does)."""
    if lo.size == 0:
        return np.zeros(s.shape, dtype=np.intp), np.zeros(s.shape, dtype=bool)
    i = np.searchsorted(lo, s, side="right").astype(np.intp) - 1
    valid = i >= 0
    i = np.maximum(i, 0)
    return i, valid & (lo[i] + ln[i] > s)


def changed_ranges(old: ExtentArrays, old_size: int, new: ExtentArrays, new_size: int) -> list[tuple[int, int]]:
    """:func:`differing_ranges` of two :class:`ExtentArrays`, the same answer computed with
    numpy over the cut points (a ``searchsorted`` per map instead of a Python step per piece).
    Maps whose extents overlap each other (no file system returns that) go through
    :func:`differing_ranges` itself. Pure."""
    a = _clip_arrays(old, old_size)
    b = _clip_arrays(new, new_size)
    for lo, _, ln, _ in (a, b):
        if lo.size > 1 and np.any(lo[1:] < lo[:-1] + ln[:-1]):
            return differing_ranges(old.extents(), old_size, new.extents(), new_size)
    if new_size <= 0:
        return []
    top = np.uint64(new_size)
    cuts = np.concatenate([a[0], a[0] + a[2], b[0], b[0] + b[2]])
    cuts = cuts[(cuts > 0) & (cuts < top)]
    points = np.unique(np.concatenate([np.array([0, new_size], dtype=np.uint64), cuts]))
    s, e = points[:-1], points[1:]
    ia, cov_a = _covering(a[0], a[2], s)
    ib, cov_b = _covering(b[0], b[2], s)
    same = np.zeros(s.shape, dtype=bool)
    if a[0].size and b[0].size:
        fa, fb = a[3][ia], b[3][ib]
        same = (cov_a & cov_b & (((fa | fb) & np.uint32(UNSAFE_FLAGS)) == 0)
                & ((fa & np.uint32(FIEMAP_EXTENT_UNWRITTEN)) == (fb & np.uint32(FIEMAP_EXTENT_UNWRITTEN)))
                & (a[1][ia] + (s - a[0][ia]) == b[1][ib] + (s - b[0][ib])))  # uint64: wraps only where masked
    idx = np.flatnonzero((cov_a | cov_b) & ~same)
    if idx.size == 0:
        return []
    brk = np.flatnonzero(np.diff(idx) != 1)
    first = idx[np.concatenate([[0], brk + 1])]
    last = idx[np.concatenate([brk, [idx.size - 1]])]
    return list(zip(s[first].tolist(), (e[last] - s[first]).tolist()))


def _clip(extents: list[Extent], size: int) -> list[Extent]:
    """``extents`` cut to ``[0, size)`` (extents past the end of file, e.g. preallocation)."""
    out = []
    for e in extents:
        if e.logical >= size or e.length <= 0:
            continue
        out.append(Extent(e.logical, e.physical, min(e.length, size - e.logical), e.flags) if e.logical + e.length > size
                   else e)
    return sorted(out, key=lambda e: e.logical)


def _mapping_at(extents: list[Extent], i: int, pos: int) -> tuple[int, Extent | None]:
    """Advance index ``i`` in sorted ``extents`` to the extent covering ``pos``; (i, extent or None)."""
    while i < len(extents) and extents[i].logical + extents[i].length <= pos:
        i += 1
    if i < len(extents) and extents[i].logical <= pos:
        return i, extents[i]
    return i, None


def differing_ranges(old: list[Extent], old_size: int, new: list[Extent], new_size: int) -> list[tuple[int, int]]:
    """Byte ranges ``(offset, length)`` of ``[0, new_size)`` whose content may differ between
    the file mapped by ``old`` (``old_size`` bytes) and the one mapped by ``new``, sorted,
    merged. Pure.

    A range is the same when both leave it a hole (a hole past ``old_size`` included), or both
    map it to the same physical bytes with the same ``UNWRITTEN`` flag and none of
    :data:`UNSAFE_FLAGS`; everything else is reported (over-reporting is safe: the reader finds
    the content equal). The caller adds what a size change touches (the old last block).
    """
    a = _clip(old, old_size)
    b = _clip(new, new_size)
    cuts = {0, new_size}
    for e in a + b:
        for p in (e.logical, e.logical + e.length):
            if 0 < p < new_size:
                cuts.add(p)
    points = sorted(cuts)
    out: list[tuple[int, int]] = []
    ia = ib = 0
    for s, end in zip(points, points[1:]):
        ia, ea = _mapping_at(a, ia, s)
        ib, eb = _mapping_at(b, ib, s)
        if ea is None and eb is None:
            continue
        if ea is not None and eb is not None and not ((ea.flags | eb.flags) & UNSAFE_FLAGS) \
                and (ea.flags & FIEMAP_EXTENT_UNWRITTEN) == (eb.flags & FIEMAP_EXTENT_UNWRITTEN) \
                and ea.physical + (s - ea.logical) == eb.physical + (s - eb.logical):
            continue
        if out and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((s, end - s))
    return out


def block_runs(ranges: list[tuple[int, int]], block_size: int, n_blocks: int) -> list[tuple[int, int]]:
    """The blocks ``(first index, count)`` touched by byte ``ranges`` (sorted), merged and
    limited to ``n_blocks``. Pure."""
    runs: list[tuple[int, int]] = []
    for off, length in ranges:
        if length <= 0:
            continue
        first = off // block_size
        last = min(n_blocks - 1, (off + length - 1) // block_size)
        if first > last:
            continue
        if runs and runs[-1][0] + runs[-1][1] >= first:
            end = max(runs[-1][0] + runs[-1][1], last + 1)
            runs[-1] = (runs[-1][0], end - runs[-1][0])
        else:
            runs.append((first, last - first + 1))
    return runs


def same_file(st_a: os.stat_result, st_b: os.stat_result) -> bool:
    """True when two ``stat`` results name the same inode on the same device."""
    return (st_a.st_dev, st_a.st_ino) == (st_b.st_dev, st_b.st_ino)
