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

import bisect
import ctypes
import errno
import os
import stat
import threading
from pathlib import Path

from replicad.core.errors import IntegrityError, InternalError, RemoteProtocolError, RestoreVerifyError, UsageError
from replicad.core.manifest import DIGEST_SIZE, ZERO_DIGEST, Manifest, page_entries
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


class Unit:
    """Blocks ``[first_block, first_block + n_blocks)`` of a snapshot (``n_blocks`` blocks, at
    most UNIT_BYTES), held compactly: ``digests`` is the blocks' digests one after the other
    (``32 × n_blocks`` bytes, ZERO_DIGEST for a zero block), one object per unit. Why: a plan
    of per-block Python objects is ~33 M objects for a 2 TiB volume (several GB, and every
    garbage-collector pass walks them all); this is 2 objects and 4 KiB per 8 MiB unit.

    While a restore works on the unit, :attr:`places` (each distinct non-zero chunk digest →
    the block indexes, absolute, that hold it) and :attr:`pending` (the digests not yet placed
    in its buffer) are built on first use and dropped by :meth:`release` once it is written.
    ``lacking_at``: holders that answered without some of ``pending`` (the scheduler's)."""

    __slots__ = ("ordinal", "first_block", "n_blocks", "digests", "lacking_at", "_places", "_pending")

    def __init__(self, ordinal: int, first_block: int, n_blocks: int, digests: bytes) -> None:
        if len(digests) != n_blocks * DIGEST_SIZE:
            raise InternalError(f"unit of {n_blocks} blocks given {len(digests)} bytes of digests")
        self.ordinal = ordinal
        self.first_block = first_block
        self.n_blocks = n_blocks
        self.digests = digests
        self.lacking_at: frozenset[str] = frozenset()
        self._places: dict[bytes, list[int]] | None = None
        self._pending: set[bytes] | None = None

    def block_digest(self, k: int) -> bytes:
        """The digest of the unit's ``k``-th block (0-based)."""
        return self.digests[k * DIGEST_SIZE:(k + 1) * DIGEST_SIZE]

    def zero_blocks(self) -> list[int]:
        """The positions (0-based) of the unit's zero blocks (a C-speed search of ``digests``)."""
        out: list[int] = []
        d = self.digests
        pos = d.find(ZERO_DIGEST)
        while pos >= 0:
            if pos % DIGEST_SIZE:  # zeros across two digests: search on from the next one
                pos = d.find(ZERO_DIGEST, pos + DIGEST_SIZE - pos % DIGEST_SIZE)
                continue
            out.append(pos // DIGEST_SIZE)
            pos = d.find(ZERO_DIGEST, pos + DIGEST_SIZE)
        return out

    def distinct(self) -> set[bytes]:
        """The distinct non-zero chunk digests of the unit (built afresh: nothing kept)."""
        d = self.digests
        out = {d[i:i + DIGEST_SIZE] for i in range(0, len(d), DIGEST_SIZE)}
        out.discard(ZERO_DIGEST)
        return out

    @property
    def places(self) -> dict[bytes, list[int]]:
        """Each distinct non-zero chunk digest → the block indexes (absolute) that hold it."""
        if self._places is None:
            places: dict[bytes, list[int]] = {}
            d = self.digests
            for k in range(self.n_blocks):
                x = d[k * DIGEST_SIZE:(k + 1) * DIGEST_SIZE]
                if x != ZERO_DIGEST:
                    places.setdefault(x, []).append(self.first_block + k)
            self._places = places
        return self._places

    @property
    def pending(self) -> set[bytes]:
        """The digests not yet placed in the unit's buffer (all of :attr:`places` at first)."""
        if self._pending is None:
            self._pending = set(self.places)
        return self._pending

    def release(self) -> None:
        """Drop :attr:`places` and :attr:`pending` (the unit is written; ``digests`` stays)."""
        self._places = None
        self._pending = set()

    @property
    def chunks(self) -> int:
        """Distinct chunks this unit needs."""
        return len(self.places)


def plan_units(manifest: Manifest, page_of, unit_bytes: int = UNIT_BYTES) -> tuple[list[Unit], int]:
    """Cut ``manifest`` into units of at most ``unit_bytes`` (whole blocks, at least one).

    ``page_of(digest) -> bytes`` returns a manifest page (a verified store read). Units whose
    blocks are all zero are left out. Returns ``(units, zero_blocks)``: the units in block
    order (:class:`Unit`: their digests sliced from the pages, no object per block) and the
    count of blocks in no unit (all-zero: holes in the new image). Raises what ``page_of``
    raises, RemoteProtocolError for a page of the wrong length."""
    bs = manifest.block_size
    per_unit = max(1, unit_bytes // bs)
    n = manifest.n_blocks
    units: list[Unit] = []
    zero_blocks = 0
    parts: list[bytes] = []   # the digests of the unit being cut, from one page or two
    first = 0
    have = 0
    for p, page_digest in enumerate(manifest.pages):
        page = page_of(page_digest)
        base = p * manifest.page_entries
        want = manifest.page_count(p)
        if want <= 0:
            break
        if len(page) != want * DIGEST_SIZE:
            page_entries(page)  # a bad length raises RemoteProtocolError
            raise RemoteProtocolError("manifest page has a bad length", length=len(page), expected=want * DIGEST_SIZE)
        j = 0
        while j < want:
            take = min(per_unit - have, want - j)
            parts.append(page[j * DIGEST_SIZE:(j + take) * DIGEST_SIZE])
            j += take
            have += take
            if have == per_unit or base + j == n:
                digests = parts[0] if len(parts) == 1 else b"".join(parts)
                if digests.count(0) == len(digests):  # every block zero: a hole
                    zero_blocks += have
                else:
                    units.append(Unit(len(units), first, have, digests))
                first += have
                parts, have = [], 0
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
        self._written: set[int] = set()              # ordinals of the units written and read back
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
        runs: list[tuple[int, int]] = []
        nonzero = 0
        for k in range(unit.n_blocks):
            if unit.block_digest(k) == ZERO_DIGEST:
                continue
            nonzero += 1
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
            self._written.add(unit.ordinal)
            self.bytes_written += nbytes
            self.blocks_written += nonzero
        unit.release()
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
        n_blocks = self.manifest.n_blocks
        units = sorted(units, key=lambda u: u.first_block)
        try:
            os.fsync(self.fd)
            # blocks holding data outside the units' non-zero blocks: read and hashed here
            other: dict[int, bytes] = {}
            firsts = [u.first_block for u in units]

            def check(index: int) -> None:
                n = self._block_len(index)
                data = os.pread(self.fd, n, index * bs)
                if data != bytes(n):
                    other[index] = digest_of(data)

            for lo, hi in data_spans(self.fd, 0, self.manifest.size_bytes, bs):
                index, stop_all = lo // bs, -(-hi // bs)
                while index < stop_all:
                    i = bisect.bisect_right(firsts, index) - 1
                    u = units[i] if i >= 0 and index < firsts[i] + units[i].n_blocks else None
                    if u is None:  # between units: no block here was written
                        stop = min(stop_all, firsts[i + 1] if i + 1 < len(units) else stop_all)
                        for x in range(index, stop):
                            check(x)
                    else:  # in a unit: its non-zero blocks were read back after their write (write())
                        stop = min(stop_all, u.first_block + u.n_blocks)
                        for k in u.zero_blocks():
                            if index <= u.first_block + k < stop:
                                check(u.first_block + k)
                    index = stop
        except OSError as err:
            raise target_error(err, f"fsync and check restore target {self.target}", self.target,
                               self.manifest.size_bytes) from err
        # the root rebuilt page by page from the units' digests (zeros between them), no list per block
        pages: list[bytes] = []
        ui = 0
        pe = self.manifest.page_entries  # pages of the manifest's own geometry
        for base in range(0, n_blocks, pe):
            end = min(base + pe, n_blocks)
            page = bytearray((end - base) * DIGEST_SIZE)
            while ui < len(units) and units[ui].first_block + units[ui].n_blocks <= base:
                ui += 1
            k = ui
            while k < len(units) and units[k].first_block < end:
                u = units[k]
                lo, hi = max(u.first_block, base), min(u.first_block + u.n_blocks, end)
                page[(lo - base) * DIGEST_SIZE:(hi - base) * DIGEST_SIZE] = \
                    u.digests[(lo - u.first_block) * DIGEST_SIZE:(hi - u.first_block) * DIGEST_SIZE]
                k += 1
            for index, d in other.items():
                if base <= index < end:
                    page[(index - base) * DIGEST_SIZE:(index - base + 1) * DIGEST_SIZE] = d
            pages.append(digest_of(page))
        if tuple(pages) != tuple(self.manifest.pages):
            first_bad = next((i for i, (a, b) in enumerate(zip(pages, self.manifest.pages)) if a != b),
                             min(len(pages), len(self.manifest.pages)))
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
