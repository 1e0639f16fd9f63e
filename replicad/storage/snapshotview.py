"""A committed snapshot read as a byte range, and a copy-on-write overlay on top of it (the
storage side of a snapshot export, :mod:`replicad.site.exports`).

* :class:`SnapshotReader` answers ``read(offset, length)`` from the chunk store through the
  snapshot's manifest: each block's digest comes from its manifest page (a verified
  :meth:`~replicad.storage.chunkstore.ChunkStore.get`, pages kept in a small LRU), each
  non-zero block from :meth:`ChunkStore.get`, which decodes and checks BLAKE3 against the
  digest before the bytes leave the store. ``ZERO_DIGEST`` blocks read as zeros and touch
  nothing. A corrupt or missing chunk raises; no byte of a block that did not verify is
  ever returned.
* :class:`Overlay` keeps the writes made to a writable export: a sparse file of the
  snapshot's size plus a bitmap of the blocks written (one bit per block, LSB first).
  A block once written is read from the overlay, every other block from the snapshot.
  :meth:`Overlay.flush` fsyncs the file and persists the bitmap (tmp + fsync + rename +
  directory fsync), so what a client flushed is durable; the store is never written.

Synchronous, thread-safe; the export runs them in worker threads.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections import OrderedDict
from pathlib import Path

from replicad.core.errors import IntegrityError, NotFoundError, RemoteProtocolError, UsageError, from_os_error
from replicad.core.manifest import DIGEST_SIZE, ZERO_DIGEST, Manifest, page_entries, zero_block
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.durable import fsync_dir

PAGE_CACHE_BYTES = 8 * 2**20  # digests of pages kept: 16 GiB of a 64 KiB-block volume (64 pages of 4096, 512 of 512)


class SnapshotReader:
    """Reads of the snapshot ``manifest`` from ``store`` (every chunk it needs must be here:
    the export fetches missing ones first).

    Attributes:
        size_bytes, block_size: the snapshot's size and block size (bytes).
    """

    def __init__(self, store: ChunkStore, manifest: Manifest) -> None:
        self.store = store
        self.manifest = manifest
        self.size_bytes = manifest.size_bytes
        self.block_size = manifest.block_size
        self._pages: OrderedDict[int, list[bytes]] = OrderedDict()
        self._max_pages = max(1, PAGE_CACHE_BYTES // (manifest.page_entries * DIGEST_SIZE))
        self._lock = threading.Lock()

    def digest(self, index: int) -> bytes:
        """The digest of block ``index`` (``ZERO_DIGEST`` for an all-zero block). Raises
        IntegrityError / NotFoundError of the page's read; RemoteProtocolError for a page of
        the wrong entry count."""
        pe = self.manifest.page_entries
        p = index // pe
        with self._lock:
            entries = self._pages.get(p)
            if entries is not None:
                self._pages.move_to_end(p)
        if entries is None:
            entries = page_entries(self.store.get(self.manifest.pages[p]))
            if len(entries) != self.manifest.page_count(p):
                raise RemoteProtocolError("manifest page has a wrong number of entries", volume=self.manifest.volume,
                                          seq=self.manifest.seq, page_index=p, entries=len(entries),
                                          expected=self.manifest.page_count(p))
            with self._lock:
                self._pages[p] = entries
                while len(self._pages) > self._max_pages:
                    self._pages.popitem(last=False)
        return entries[index % pe]

    def block(self, index: int) -> bytes:
        """The bytes of block ``index`` (the last may be short), verified against its digest.

        Raises:
            IntegrityError: the chunk is corrupt in the store, or of the wrong length (evidence
                ``digest``, ``block``).
            NotFoundError: the chunk is not in the store.
        """
        n = self.manifest.block_len(index)
        d = self.digest(index)
        if d == ZERO_DIGEST:
            return zero_block(n)
        raw = self.store.get(d)
        if len(raw) != n:
            raise IntegrityError(f"chunk {d.hex()} is {len(raw)} bytes, block {index} of "
                                 f"{self.manifest.volume}#{self.manifest.seq} is {n}", digest=d.hex(), block=index)
        return raw

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at byte ``offset`` (the range must lie inside the snapshot).

        Raises UsageError for a range outside the snapshot; IntegrityError / NotFoundError
        like :meth:`block` (nothing is returned then)."""
        _check_range(offset, length, self.size_bytes)
        if length == 0:
            return b""
        bs = self.block_size
        first, last = offset // bs, (offset + length - 1) // bs
        if first == last:
            parts = [self.block(first)]
        else:
            parts = self._blocks(first, last)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        start = offset - first * bs
        return bytes(data[start:start + length])

    def _blocks(self, first: int, last: int) -> list[bytes]:
        """Blocks ``first..last`` with one batched store read (:meth:`ChunkStore.get_encoded_many`
        with ``decoded``: one index query, neighbouring records in one pread, each chunk decoded
        and checked against its digest there, the decoded bytes returned). Raises like :meth:`block`."""
        digests = [self.digest(i) for i in range(first, last + 1)]
        wanted = list({d for d in digests if d != ZERO_DIGEST})
        raw: dict[bytes, bytes] = {}
        if wanted:
            found, missing, corrupt = self.store.get_encoded_many(wanted, decoded=True)
            if corrupt:
                raise corrupt[0][1]
            if missing:
                raise NotFoundError(f"chunk {missing[0].hex()} of {self.manifest.volume}#{self.manifest.seq} is not in "
                                    "the store", digest=missing[0].hex())
            for d, _codec, data in found:
                raw[d] = data  # decoded and verified by get_encoded_many: the bytes that were hashed
        out = []
        for k, d in enumerate(digests):
            n = self.manifest.block_len(first + k)
            b = zero_block(n) if d == ZERO_DIGEST else raw[d]
            if len(b) != n:
                raise IntegrityError(f"chunk {d.hex()} is {len(b)} bytes, block {first + k} of "
                                     f"{self.manifest.volume}#{self.manifest.seq} is {n}", digest=d.hex(),
                                     block=first + k)
            out.append(b)
        return out


def _check_range(offset: int, length: int, size_bytes: int) -> None:
    if offset < 0 or length < 0 or offset + length > size_bytes:
        raise UsageError(f"range [{offset}, {offset + length}) is outside the snapshot ({size_bytes} bytes)",
                         offset=offset, length=length, size_bytes=size_bytes)


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate ``[offset, offset + length)`` of ``fd`` (it reads as zeros, the size stays);
    zeros are written instead where the file system cannot punch holes. Raises OSError."""
    if _LIBC.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise OSError(err, os.strerror(err))
    step = 4 * 2**20
    for at in range(offset, offset + length, step):
        n = min(step, offset + length - at)
        if os.pwrite(fd, zero_block(n), at) != n:
            raise OSError(errno.EIO, "short write")


class Overlay:
    """The copy-on-write overlay of a writable export, in directory ``root`` (created):
    ``overlay.img`` (sparse, ``base.size_bytes``) and ``overlay.bitmap`` (one bit per block of
    ``base``, written at :meth:`flush`).

    Writes are whole blocks in the overlay: a partial first or last block not yet written is
    completed from ``base`` first. ``reopen``: attach the overlay a previous run left in ``root``
    (instant recovery after a restart): the bitmap as last flushed is read back, so every block a
    FLUSH acknowledged reads from the overlay again; a block written but never flushed reads from
    the snapshot (NBD lets unflushed writes be lost). Raises (constructor) a typed OSError
    (from_os_error), IntegrityError when ``reopen`` finds no bitmap or one of the wrong size.
    """

    IMAGE = "overlay.img"
    BITMAP = "overlay.bitmap"

    def __init__(self, root: Path, base: SnapshotReader, *, reopen: bool = False) -> None:
        self.root = Path(root)
        self.base = base
        self.bs = base.block_size
        self.n_blocks = base.manifest.n_blocks
        self._bits = bytearray((self.n_blocks + 7) // 8)
        self._lock = threading.Lock()
        if reopen:
            try:
                bits = (self.root / self.BITMAP).read_bytes()
            except FileNotFoundError:
                raise IntegrityError(f"the overlay {root} has no bitmap: it cannot be re-attached",
                                     path=str(root)) from None
            except OSError as err:
                raise from_os_error(err, f"read the overlay bitmap in {root}", path=str(root)) from None
            if len(bits) != len(self._bits):
                raise IntegrityError(f"the overlay bitmap in {root} is {len(bits)} bytes, {len(self._bits)} expected "
                                     "for this snapshot", path=str(root), size=len(bits), expected=len(self._bits))
            self._bits[:] = bits
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.root / self.IMAGE, os.O_RDWR | os.O_CREAT, 0o600)
            os.ftruncate(self.fd, base.size_bytes)
            if not reopen:
                self._write_bitmap()
        except OSError as err:
            raise from_os_error(err, f"create the export overlay in {root}", path=str(root)) from None

    def written_runs(self) -> list[tuple[int, int]]:
        """``[(first_block, n_blocks), ...]``: the runs of consecutive blocks the overlay holds,
        in order (a snapshot of the bitmap taken under the lock)."""
        with self._lock:
            bits = bytes(self._bits)
        runs: list[tuple[int, int]] = []
        i = 0
        while i < self.n_blocks:
            if not bits[i >> 3]:
                i = (i | 7) + 1  # a whole byte of unwritten blocks
                continue
            if bits[i >> 3] & (1 << (i & 7)):
                j = i
                while j + 1 < self.n_blocks and bits[(j + 1) >> 3] & (1 << ((j + 1) & 7)):
                    j += 1
                runs.append((i, j - i + 1))
                i = j + 1
            else:
                i += 1
        return runs

    def written(self, index: int) -> bool:
        """True once block ``index`` was written through the export."""
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    @property
    def blocks_written(self) -> int:
        """How many blocks the overlay holds."""
        return sum(bin(b).count("1") for b in self._bits)

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``: written blocks from the overlay, the others from the
        snapshot (verified). Raises like :meth:`SnapshotReader.read`; OSError typed."""
        _check_range(offset, length, self.base.size_bytes)
        if length == 0:
            return b""
        bs = self.bs
        first, last = offset // bs, (offset + length - 1) // bs
        out = bytearray()
        i = first
        while i <= last:  # runs of blocks from one side
            mine = self.written(i)
            j = i
            while j + 1 <= last and self.written(j + 1) == mine:
                j += 1
            lo, hi = i * bs, min((j + 1) * bs, self.base.size_bytes)
            if mine:
                try:
                    out += os.pread(self.fd, hi - lo, lo)
                except OSError as err:
                    raise from_os_error(err, "read the export overlay", path=str(self.root)) from None
            else:
                out += self.base.read(lo, hi - lo)
            i = j + 1
        start = offset - first * bs
        return bytes(out[start:start + length])

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` into the overlay (never the store) and mark its blocks.
        Durable only after :meth:`flush`. Raises like :meth:`read`; ENOSPC typed."""
        length = len(data)
        _check_range(offset, length, self.base.size_bytes)
        if length == 0:
            return
        bs = self.bs
        first, last = offset // bs, (offset + length - 1) // bs
        lo, hi = first * bs, min((last + 1) * bs, self.base.size_bytes)
        with self._lock:
            if offset != lo or offset + length != hi:  # partial edge blocks: complete them first
                buf = bytearray(self.read(lo, hi - lo))
                buf[offset - lo:offset - lo + length] = data
                payload: bytes | bytearray | memoryview = buf
            else:
                payload = data
            try:
                view = memoryview(payload)
                done = 0
                while done < len(view):
                    done += os.pwrite(self.fd, view[done:], lo + done)
            except OSError as err:
                raise from_os_error(err, "write the export overlay", path=str(self.root)) from None
            for i in range(first, last + 1):
                self._bits[i >> 3] |= 1 << (i & 7)

    def zero(self, offset: int, length: int) -> None:
        """Make ``[offset, offset + length)`` read as zeros (WRITE_ZEROES). Whole blocks become
        holes of the overlay (``fallocate`` PUNCH_HOLE, no data written: a zeroing of the whole
        device costs no space in the data dir), partial edge blocks are written. Raises like
        :meth:`write`."""
        _check_range(offset, length, self.base.size_bytes)
        bs = self.bs
        lo = -(-offset // bs) * bs                                   # first whole block
        hi = min((offset + length) // bs * bs, self.base.size_bytes)  # end of the last whole block
        if offset + length == self.base.size_bytes:
            hi = self.base.size_bytes                                  # the short last block is whole here
        if hi <= lo:
            self.write(offset, zero_block(length))
            return
        if offset < lo:
            self.write(offset, zero_block(lo - offset))
        if offset + length > hi:
            self.write(hi, zero_block(offset + length - hi))
        with self._lock:
            try:
                _punch_hole(self.fd, lo, hi - lo)
            except OSError as err:
                raise from_os_error(err, "zero the export overlay", path=str(self.root)) from None
            for i in range(lo // bs, -(-hi // bs)):
                self._bits[i >> 3] |= 1 << (i & 7)

    def flush(self) -> None:
        """fsync the overlay, then persist the bitmap (tmp + fsync + rename + directory fsync).
        Raises a typed OSError."""
        try:
            os.fsync(self.fd)
            with self._lock:
                self._write_bitmap()
        except OSError as err:
            raise from_os_error(err, "flush the export overlay", path=str(self.root)) from None

    def _write_bitmap(self) -> None:
        tmp = self.root / (self.BITMAP + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(self._bits))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.root / self.BITMAP)
        fsync_dir(self.root)

    def close(self) -> None:
        """Close the overlay's file (idempotent); the files stay."""
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)
