"""Writing an image from chunks as they arrive (a restore from peers), unit by unit.

A restore from peers receives chunks out of order, from several streams at once. This module
is the synchronous part of it, run in worker threads (lz4 and BLAKE3 release the GIL):

* :func:`plan_units` cuts a snapshot into **units**: runs of up to ``UNIT_BYTES`` of
  consecutive blocks (one O_DIRECT write each), keeping only units with a non-zero block. A
  unit knows which distinct chunks it needs and where each goes.
* :class:`ImageAssembler` owns the target file: :meth:`~ImageAssembler.place` decodes frames
  ``(digest, codec, payload)`` (lz4), checks every one against its digest (BLAKE3) and copies
  it into the unit's aligned buffer at each block that references it; once a unit holds all
  its chunks, :meth:`~ImageAssembler.write` writes its runs of non-zero blocks (preallocated,
  O_DIRECT where the file system allows, the short last block through the page cache).
  Nothing reaches the image before it was checked against its digest.
* O5 (the image, read back from the disk, has the snapshot's root, and the restore is done
  only once it is durable) is checked as the image is written rather than by a second pass
  over it: after a unit's writes, :meth:`~ImageAssembler.write` reads every byte it wrote back
  from the disk (O_DIRECT: the disk, not the page cache) and compares it with the unit's
  buffer, whose every block was checked against its digest when placed (a memcmp, not a
  second BLAKE3 of the image); :meth:`~ImageAssembler.finish` fsyncs the image once, then
  proves every other block is a hole or zeros (the file's data map, ``SEEK_DATA``) and
  rebuilds the Merkle root from these digests. The reads of unit k overlap the fetching and
  decoding of the next units, so the proof costs no separate pass (see ARCHITECTURE.md,
  "Restore from peers").

The target is a new file (created empty by the caller): blocks that are zero in the
snapshot are holes and are never written.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from replicad.core.errors import IntegrityError, InternalError, RemoteProtocolError, RestoreVerifyError, UsageError
from replicad.core.manifest import PAGE_ENTRIES, ZERO_DIGEST, Manifest, page_entries, pages_from_digests
from replicad.storage.chunkstore import CODEC_RAW, decode_chunk, digest_of
from replicad.storage.durable import preallocate, read_into
from replicad.storage.image import (DIRECT_ALIGN, WRITE_RUN_BYTES, aligned_buffer, data_spans, open_direct, target_error,
                                    write_direct_run)

UNIT_BYTES = WRITE_RUN_BYTES  # one unit: consecutive blocks written by one O_DIRECT pwrite (8 MiB)

_libc = ctypes.CDLL(None, use_errno=False)
_memcmp = _libc.memcmp
_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_memcmp.restype = ctypes.c_int


def same_bytes(a: memoryview, b: memoryview) -> bool:
    """Whether the byte buffers ``a`` and ``b`` hold the same bytes (lengths included).

    One ``memcmp`` over writable buffers (no copy; ctypes releases the GIL during the call), a
    plain comparison of copies for read-only ones. Why not ``a == b``: a memoryview compares
    element by element (8 MiB: ~9 ms here, against ~0.5 ms for memcmp and ~1.4 ms for BLAKE3)."""
    n = len(a)
    if n != len(b):
        return False
    if n == 0:
        return True
    try:
        ca = (ctypes.c_char * n).from_buffer(a)
        cb = (ctypes.c_char * n).from_buffer(b)
    except TypeError:  # read-only
        return bytes(a) == bytes(b)
    return _memcmp(ca, cb, n) == 0


@dataclass
class Unit:
    """Blocks ``[first_block, first_block + n_blocks)`` of a snapshot (``n_blocks`` blocks, at
    most UNIT_BYTES), with ``places``: each distinct non-zero chunk digest → the block indexes
    (absolute) that hold it. ``pending``: the digests not yet placed in the unit's buffer.
    ``lacking_at``: holders that answered without some of ``pending`` (the scheduler's)."""

    ordinal: int
    first_block: int
    n_blocks: int
    places: dict[bytes, list[int]]
    pending: set[bytes] = field(default_factory=set)
    lacking_at: set[str] = field(default_factory=set)

    @property
    def chunks(self) -> int:
        """Distinct chunks this unit needs."""
        return len(self.places)


def plan_units(manifest: Manifest, page_of, unit_bytes: int = UNIT_BYTES) -> tuple[list[Unit], int]:
    """Cut ``manifest`` into units of at most ``unit_bytes`` (whole blocks, at least one).

    ``page_of(digest) -> bytes`` returns a manifest page (a verified store read). Units whose
    blocks are all zero are left out. Returns ``(units, zero_blocks)``: the units in block
    order and the count of blocks in no unit (all-zero: holes in the new image). Raises what
    ``page_of`` raises."""
    bs = manifest.block_size
    per_unit = max(1, unit_bytes // bs)
    units: list[Unit] = []
    zero_blocks = 0
    cur: Unit | None = None
    for p, page_digest in enumerate(manifest.pages):
        entries = page_entries(page_of(page_digest))
        base = p * PAGE_ENTRIES
        for j, d in enumerate(entries):
            index = base + j
            if index >= manifest.n_blocks:
                break
            if cur is None or index >= cur.first_block + per_unit:
                if cur is not None and cur.places:
                    units.append(cur)
                elif cur is not None:
                    zero_blocks += cur.n_blocks
                cur = Unit(len(units), index, 0, {})
            cur.n_blocks += 1
            if d != ZERO_DIGEST:
                cur.places.setdefault(d, []).append(index)
    if cur is not None:
        if cur.places:
            units.append(cur)
        else:
            zero_blocks += cur.n_blocks
    for u in units:
        u.pending = set(u.places)
    return units, zero_blocks


class ImageAssembler:
    """Writes the units of ``manifest`` into the new, empty file ``target``.

    Opens ``target`` (created if absent), sizes it to ``manifest.size_bytes`` (every block
    reads as zeros until written) and, with ``direct``, opens it a second time with O_DIRECT
    (:func:`~replicad.storage.image.open_direct`; None on a file system that refuses it: then
    the page cache). Buffers come from :meth:`buffer` (aligned, UNIT_BYTES; the caller bounds
    how many are in use). Thread-safe: :meth:`place` and :meth:`write` of different units run
    concurrently in worker threads.

    Raises (constructor): UsageError if ``target`` is not an empty regular file,
    TargetFullError / typed OSError (:func:`~replicad.storage.image.target_error`).
    """

    def __init__(self, target: Path, manifest: Manifest, *, direct: bool = True) -> None:
        self.target = Path(target)
        self.manifest = manifest
        self.bs = manifest.block_size
        self._lock = threading.Lock()
        self._written: dict[int, list[bytes]] = {}  # unit ordinal -> digests written, in block order
        self._scratch: list[memoryview] = []         # read-back buffers not in use
        self.bytes_written = 0
        self.blocks_written = 0
        try:
            self.fd = os.open(self.target, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as err:
            raise target_error(err, f"open restore target {target}", self.target, manifest.size_bytes) from err
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size:
                raise UsageError(f"restore target {target} must be a new, empty file for a restore from peers",
                                 target=str(target))
            os.ftruncate(self.fd, manifest.size_bytes)
            self.dfd = open_direct(self.target, os.O_RDWR, self.bs) if direct else None
        except OSError as err:
            os.close(self.fd)
            raise target_error(err, f"size restore target {target}", self.target, manifest.size_bytes) from err
        except BaseException:
            os.close(self.fd)
            raise

    def buffer(self) -> memoryview:
        """A new aligned buffer for one unit (UNIT_BYTES rounded up to whole blocks)."""
        return aligned_buffer(max(UNIT_BYTES, self.bs))

    def _block_len(self, index: int) -> int:
        return min(self.bs, self.manifest.size_bytes - index * self.bs)

    def place(self, unit: Unit, buf: memoryview, frames: list[tuple[bytes, int, bytes]]) -> int:
        """Decode ``frames`` (lz4; a raw payload, which may be a memoryview of the received
        bytes, is checked where it lies), check each against its digest (BLAKE3) and copy it into
        ``buf`` at every block of ``unit`` that holds it; each placed digest leaves
        ``unit.pending``. Frames of digests the unit does not need (or has already) are
        ignored. Returns the payload bytes placed.

        Raises IntegrityError (a chunk that does not match its digest, or decodes to a length
        other than its block's: the sender's fault; evidence ``digest``) or RemoteProtocolError
        (undecodable). Frames placed before the bad one stay placed."""
        placed = 0
        for digest, codec, payload in frames:
            where = unit.places.get(digest)
            if where is None or digest not in unit.pending:
                continue
            try:
                if codec == CODEC_RAW:  # checked where it lies (a view of the received bytes): no copy
                    if len(payload) > self.bs:
                        raise RemoteProtocolError("chunk larger than allowed", length=len(payload), limit=self.bs)
                    raw = payload
                else:
                    raw = decode_chunk(codec, payload, self.bs)
            except RemoteProtocolError as err:
                raise RemoteProtocolError(f"chunk {digest.hex()}: {err.message}", digest=digest.hex(),
                                          **err.evidence) from err
            if digest_of(raw) != digest:
                raise IntegrityError(f"chunk {digest.hex()} received does not match its digest",
                                     digest=digest.hex())
            view = memoryview(raw)
            for index in where:
                n = self._block_len(index)
                if len(raw) != n:
                    raise IntegrityError(f"chunk {digest.hex()} is {len(raw)} bytes, its block {index} is {n}",
                                         digest=digest.hex(), block=index)
                off = (index - unit.first_block) * self.bs
                buf[off:off + n] = view
            unit.pending.discard(digest)
            placed += len(payload)
        return placed

    def write(self, unit: Unit, buf: memoryview) -> int:
        """Write the non-zero blocks of a complete ``unit`` from ``buf``: each run of consecutive
        non-zero blocks is preallocated and written in one O_DIRECT pwrite (the short last
        block of the image, and everything when direct I/O is refused, through the page cache).
        Then (O5, unit by unit) every byte written is read back from the disk (O_DIRECT where
        allowed) into a scratch buffer and compared with ``buf``, whose blocks were each checked
        against their digest when placed: equal bytes have the snapshot's digests, so nothing
        is hashed a second time. No sync here: :meth:`finish` fsyncs once, before the restore
        counts as done. Returns the bytes written.

        Raises RestoreVerifyError (a block read back differs; evidence ``block``), InternalError
        (the unit still lacks chunks), TargetFullError or a typed OSError
        (:func:`~replicad.storage.image.target_error`)."""
        if unit.pending:
            raise InternalError(f"unit {unit.ordinal} written with {len(unit.pending)} chunks missing")
        digests = [ZERO_DIGEST] * unit.n_blocks
        for d, where in unit.places.items():
            for index in where:
                digests[index - unit.first_block] = d
        runs: list[tuple[int, int]] = []
        for k, d in enumerate(digests):
            if d == ZERO_DIGEST:
                continue
            if runs and runs[-1][1] == k:
                runs[-1] = (runs[-1][0], k + 1)
            else:
                runs.append((k, k + 1))
        nbytes = 0
        spans = []
        scratch = self._take_scratch()
        try:
            for lo, hi in runs:
                offset = (unit.first_block + lo) * self.bs
                end = min((unit.first_block + hi) * self.bs, self.manifest.size_bytes)
                spans.append((lo, hi, offset, end - offset))
                preallocate(self.fd, offset, end - offset)
                whole = (end - offset) // self.bs * self.bs  # the short last block: the page cache
                if whole:
                    self._write(buf[lo * self.bs:lo * self.bs + whole], offset)
                if end - offset > whole:
                    os.pwrite(self.fd, buf[lo * self.bs + whole:lo * self.bs + (end - offset)], offset + whole)
                nbytes += end - offset
            # O5, unit by unit: every byte written read back from the disk (O_DIRECT where allowed: an
            # O_DIRECT write has reached the device when it returns; a direct read of a range first
            # writes back its dirty cached pages) and compared with the verified buffer
            for lo, hi, offset, length in spans:
                dfd = self.dfd
                got = read_into(dfd if dfd is not None else self.fd, scratch[lo * self.bs:], length, offset,
                                align=DIRECT_ALIGN if dfd is not None else 1)
                if got < length:
                    scratch[lo * self.bs + got:lo * self.bs + length] = bytes(length - got)
                a, b = lo * self.bs, lo * self.bs + length
                if not same_bytes(scratch[a:b], buf[a:b]):
                    bad = next(k for k in range(lo, hi)
                               if not same_bytes(scratch[k * self.bs:min((k + 1) * self.bs, b)],
                                                 buf[k * self.bs:min((k + 1) * self.bs, b)]))
                    raise RestoreVerifyError(
                        f"restored image {self.target}: block {unit.first_block + bad} read back after its write "
                        f"does not match snapshot {self.manifest.volume}#{self.manifest.seq}",
                        volume=self.manifest.volume, seq=self.manifest.seq, block=unit.first_block + bad,
                        path=str(self.target))
        except OSError as err:
            raise target_error(err, f"write restore target {self.target}", self.target,
                               self.manifest.size_bytes) from err
        finally:
            self._give_scratch(scratch)
        with self._lock:
            self._written[unit.ordinal] = digests
            self.bytes_written += nbytes
            self.blocks_written += sum(1 for d in digests if d != ZERO_DIGEST)
        return nbytes

    def _take_scratch(self) -> memoryview:
        """A read-back buffer of UNIT_BYTES (one per unit being written at once, so at most as
        many as the caller's unit buffers; kept for reuse until :meth:`close`)."""
        with self._lock:
            if self._scratch:
                return self._scratch.pop()
        return aligned_buffer(max(UNIT_BYTES, self.bs))

    def _give_scratch(self, scratch: memoryview) -> None:
        with self._lock:
            self._scratch.append(scratch)

    def _write(self, data: memoryview, offset: int) -> None:
        dfd = self.dfd
        if dfd is not None:
            try:
                write_direct_run(dfd, self.fd, data, offset)
                return
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                with self._lock:  # direct I/O refused midway: the page cache from now on
                    if self.dfd is not None:
                        os.close(self.dfd)
                        self.dfd = None
        os.pwrite(self.fd, data, offset)

    def finish(self, units: list[Unit]) -> bytes:
        """The O5 check of the whole image once every unit is written: fsync it (the one sync of
        the restore: data and allocation durable before it is reported done); then every block
        must be proven. The blocks of ``units`` were each read back from the disk after their
        write and compared (:meth:`write`); every other block must read as zeros: the
        file's data map (``SEEK_DATA``/``SEEK_HOLE``) is asked where data lies outside the
        blocks written, and those blocks are read and checked. The Merkle root rebuilt from
        these digests must be the manifest's. Returns it.

        Raises RestoreVerifyError (a block not written reads as non-zero, or the root differs),
        InternalError (a unit of ``units`` was never written: a bug of the caller), TargetFullError /
        typed OSError on the fsync or the reads."""
        missing = [u.ordinal for u in units if u.ordinal not in self._written]
        if missing:
            raise InternalError(f"{len(missing)} units of the restore were never written", units=missing[:8])
        bs = self.bs
        digests = [ZERO_DIGEST] * self.manifest.n_blocks
        written = bytearray(self.manifest.n_blocks)  # 1: read back after its write
        for u in units:
            digests[u.first_block:u.first_block + u.n_blocks] = self._written[u.ordinal]
            for k, d in enumerate(self._written[u.ordinal]):
                if d != ZERO_DIGEST:
                    written[u.first_block + k] = 1
        try:
            os.fsync(self.fd)
            for lo, hi in data_spans(self.fd, 0, self.manifest.size_bytes, bs):
                for index in range(lo // bs, -(-hi // bs)):
                    if written[index]:
                        continue
                    n = self._block_len(index)
                    data = os.pread(self.fd, n, index * bs)
                    digests[index] = ZERO_DIGEST if data == bytes(n) else digest_of(data)
        except OSError as err:
            raise target_error(err, f"fsync and check restore target {self.target}", self.target,
                               self.manifest.size_bytes) from err
        pages = tuple(digest_of(p) for p in pages_from_digests(digests))
        if pages != tuple(self.manifest.pages):
            first_bad = next((i for i, (a, b) in enumerate(zip(pages, self.manifest.pages)) if a != b), None)
            raise RestoreVerifyError(
                f"restored image {self.target} does not match snapshot {self.manifest.volume}#{self.manifest.seq}",
                volume=self.manifest.volume, seq=self.manifest.seq, first_differing_page=first_bad,
                path=str(self.target))
        return self.manifest.root

    def close(self) -> None:
        """Close the image's descriptors and drop the read-back buffers (idempotent)."""
        self._scratch.clear()
        for name in ("dfd", "fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                setattr(self, name, None)
                try:
                    os.close(fd)
                except OSError:
                    pass
