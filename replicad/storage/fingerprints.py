"""Per-volume fingerprint cache of the primary: recognise unchanged blocks without BLAKE3.

An incremental scan must learn, for every block, whether it still holds the content whose
BLAKE3 digest the parent manifest lists. Hashing every block with BLAKE3 costs ~19 µs per
64 KiB block (one thread, measured); xxh3-128 costs ~9 µs. The cache stores one 16-byte
xxh3-128 fingerprint per block of the snapshot it describes, so a scan hashes an unchanged
block with xxh3 only, and runs the zero check, BLAKE3, lz4 and the randomness test on
changed blocks alone.

Entry of block ``i`` (16 bytes)::

    entry_i = xxh3_128(content_i, seed = key XOR u64le(digest_i[0:8]))   (ZERO_ENTRY for zero blocks)

``digest_i`` is the BLAKE3 digest the snapshot lists for the block and ``key`` a random
64-bit value drawn at every full pass. Because the seed comes from the digest, an entry is a
self-contained memo "content with this fingerprint has this digest": a scan computes the
fingerprint of the current block with the seed of the *parent's* digest at that index and
takes the parent's digest only on equality. An entry written for other content, another
snapshot or another volume therefore cannot make a block look unchanged (barring an xxh3
collision), whatever the header says; the header checks below are a second, cheaper line.

File ``<data_dir>/fingerprints/<volume>.fp`` (little endian, version 1)::

    header  120 bytes: magic b"RPLFPC\\0\\0" | u32 version | u32 block_size | u64 size_bytes |
            u64 n_blocks | u64 key | u64 generation | u64 full_pass_ns | 32-byte root of the
            snapshot described | 16-byte xxh3_128 of the entries | 8 reserved | u64 xxh3_64 of
            the preceding header bytes
    entries n_blocks x 16 bytes

Use (a cache is only ever an optimisation; every failure means "no cache", a full pass):

* :meth:`FingerprintCache.open` returns None — the scan hashes every block with BLAKE3 and
  writes a fresh cache — when the file is missing, torn or corrupt (header checksum, entries
  checksum, size), of another format version or block size, describes another snapshot than
  the parent (``root != parent.root``: e.g. after an uncommitted snapshot, a restore or a
  promotion of another image), or a periodic full pass is due (``generation`` reached
  ``full_every`` scans, or ``full_pass_ns`` is older than ``max_age_ns`` or in the future).
* :class:`FingerprintWriter` writes a new file beside the old one (``.tmp``), entries in scan
  order, then header, fsync, rename, directory fsync; the scan commits it only after the new
  manifest is durable (O1), so the file on disk always describes a stored snapshot.

Threat analysis: xxh3 is not a cryptographic hash. A change is missed only if the new content
of a block has the same 128-bit fingerprint as the old one under the secret per-pass seed:
~2^-128 per block by accident. Content crafted to collide needs the key (file mode 0600 in
the data dir, readable only by the daemon's user, who could rewrite the store anyway), and a
missed change keeps the *previous* (older, already protected) content in the snapshot; it
cannot inject content. The window is bounded: every ``full_every`` scans (default 64) and at
least every ``max_age_ns`` (default 24 h) a full BLAKE3 pass ignores the cache, and that
snapshot records any difference the cache hid.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
from pathlib import Path

import xxhash

from replicad.storage.durable import fsync_dir

log = logging.getLogger("replicad.storage.fingerprints")

FP_SIZE = 16
ZERO_ENTRY = bytes(FP_SIZE)
MAGIC = b"RPLFPC\x00\x00"
VERSION = 1
_HEAD = struct.Struct("<8sIIQQQQQ32s16s8s")
_HEAD_SUM = struct.Struct("<Q")
HEADER_SIZE = _HEAD.size + _HEAD_SUM.size  # 120
FULL_PASS_EVERY_SCANS = 64
FULL_PASS_MAX_AGE_NS = 24 * 3600 * 10**9
_READ_STEP = 1 << 20


def seed_for(key: int, digest: bytes) -> int:
    """The 64-bit xxh3 seed of an entry: ``key XOR`` the first 8 bytes (little endian) of the
    block's BLAKE3 ``digest``."""
    return key ^ int.from_bytes(digest[:8], "little")


def fingerprint(block: bytes | memoryview, key: int, digest: bytes) -> bytes:
    """Entry (16 bytes) of a non-zero ``block`` whose BLAKE3 digest is ``digest``."""
    return xxhash.xxh3_128_digest(block, seed_for(key, digest))


def path_for(data_dir: Path, volume: str) -> Path:
    """Where the cache of ``volume`` lives under the site's ``data_dir``."""
    return Path(data_dir) / "fingerprints" / f"{volume}.fp"


def remove_partial(data_dir: Path, volume: str) -> bool:
    """Remove the temporary file a :class:`FingerprintWriter` of a previous run of the site
    left (killed mid-scan); call only when no writer of this process can be open for
    ``volume``. Returns whether one was there. Raises OSError when it cannot be removed."""
    tmp = path_for(data_dir, volume).with_name(f"{volume}.fp.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        return False
    return True


def _entries_digest(fd: int, n_entries: int) -> bytes:
    h = xxhash.xxh3_128()
    done, total = 0, n_entries * FP_SIZE
    while done < total:
        part = os.pread(fd, min(_READ_STEP, total - done), HEADER_SIZE + done)
        if not part:
            break
        h.update(part)
        done += len(part)
    return h.digest() if done == total else b""


class FingerprintCache:
    """A validated cache file, open for reading entries by block range (see the module
    docstring). Build with :meth:`open`; :meth:`close` when done."""

    def __init__(self, fd: int, key: int, generation: int, full_pass_ns: int, n_blocks: int) -> None:
        self._fd = fd
        self.key = key
        self.generation = generation
        self.full_pass_ns = full_pass_ns
        self.n_blocks = n_blocks

    @classmethod
    def open(cls, path: Path, *, root: bytes, block_size: int, now_ns: int,
             full_every: int = FULL_PASS_EVERY_SCANS,
             max_age_ns: int = FULL_PASS_MAX_AGE_NS) -> FingerprintCache | None:
        """The cache at ``path`` if it describes the snapshot ``root`` with ``block_size``
        and no full pass is due at ``now_ns``; None otherwise (reason logged at debug or
        warning level). Never raises for a bad file; reads the whole entries region once
        to check its checksum (16 bytes per block)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("fingerprint cache %s unreadable (%s): full pass", path, err)
            return None
        ok = False
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, HEADER_SIZE, 0)
            if len(head) != HEADER_SIZE:
                log.warning("fingerprint cache %s torn (%d bytes): full pass", path, size)
                return None
            (magic, version, bs, _size_bytes, n_blocks, key, generation, full_pass_ns, fp_root,
             entries_sum, _reserved) = _HEAD.unpack_from(head)
            (head_sum,) = _HEAD_SUM.unpack_from(head, _HEAD.size)
            if magic != MAGIC or xxhash.xxh3_64_intdigest(head[:_HEAD.size]) != head_sum:
                log.warning("fingerprint cache %s has a corrupt header: full pass", path)
                return None
            if version != VERSION:
                log.warning("fingerprint cache %s has format version %d (supported %d): full pass",
                            path, version, VERSION)
                return None
            if bs != block_size or fp_root != root:
                log.info("fingerprint cache %s describes another snapshot or block size: full pass", path)
                return None
            if generation >= full_every or not 0 <= now_ns - full_pass_ns <= max_age_ns:
                log.info("fingerprint cache %s: periodic full BLAKE3 pass due (%d scans since the last)",
                         path, generation)
                return None
            if size != HEADER_SIZE + n_blocks * FP_SIZE or _entries_digest(fd, n_blocks) != entries_sum:
                log.warning("fingerprint cache %s has corrupt entries: full pass", path)
                return None
            ok = True
            return cls(fd, key, generation, full_pass_ns, n_blocks)
        except OSError as err:
            log.warning("fingerprint cache %s unreadable (%s): full pass", path, err)
            return None
        finally:
            if not ok:
                os.close(fd)

    def entries(self, first_index: int, count: int) -> bytes:
        """Entries of blocks ``[first_index, first_index + count)`` (shorter past the end of
        the cached snapshot, or if the file cannot be read: then those blocks are hashed)."""
        last = min(first_index + count, self.n_blocks)
        if last <= first_index:
            return b""
        try:
            return os.pread(self._fd, (last - first_index) * FP_SIZE, HEADER_SIZE + first_index * FP_SIZE)
        except OSError as err:
            log.warning("fingerprint cache read failed (%s): hashing those blocks", err)
            return b""

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FingerprintWriter:
    """Writes the cache of a snapshot being scanned: :meth:`append` entries in block order,
    then :meth:`commit` with the snapshot's root once the manifest is durable, or
    :meth:`abort`. The previous cache stays in place until the rename in :meth:`commit`.

    Args:
        path: the cache file (its directory is created).
        block_size / size_bytes: of the snapshot being scanned.
        key / generation / full_pass_ns: ``None`` key = a full pass (fresh random key,
            generation 0, full_pass_ns = ``now_ns``); else carried over from the cache used.

    Raises:
        OSError: the temporary file cannot be created (the caller scans without a cache).
    """

    def __init__(self, path: Path, *, block_size: int, size_bytes: int, now_ns: int,
                 key: int | None = None, generation: int = 0, full_pass_ns: int | None = None) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.block_size = block_size
        self.size_bytes = size_bytes
        self.n_blocks = -(-size_bytes // block_size)
        if key is None:
            self.key, self.generation, self.full_pass_ns = secrets.randbits(64), 0, now_ns
        else:
            self.key, self.generation = key, generation + 1
            self.full_pass_ns = now_ns if full_pass_ns is None else full_pass_ns
        self._written = 0
        self._sum = xxhash.xxh3_128()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(self._fd, HEADER_SIZE + self.n_blocks * FP_SIZE)
        except OSError:
            self.abort()
            raise

    def append(self, entries: bytes | None, count: int) -> None:
        """The next ``count`` entries in block order; ``entries`` None means ``count`` zero
        blocks (nothing written: the file's holes read as zeros)."""
        if entries is None:
            zeros = bytes(min(count * FP_SIZE, _READ_STEP))
            left = count * FP_SIZE
            while left:
                step = min(left, len(zeros))
                self._sum.update(zeros[:step])
                left -= step
        else:
            if len(entries) != count * FP_SIZE:
                raise ValueError("fingerprint entries do not match the block count")
            os.pwrite(self._fd, entries, HEADER_SIZE + self._written * FP_SIZE)
            self._sum.update(entries)
        self._written += count

    def commit(self, root: bytes) -> None:
        """Write the header for snapshot ``root``, fsync, and atomically replace the cache.

        Raises:
            ValueError: not every block's entry was appended.
            OSError: the file system refused; the previous cache is then removed, since it
                no longer describes the newest snapshot (a later scan makes a full pass).
        """
        if self._written != self.n_blocks:
            self.abort()
            raise ValueError("fingerprint cache incomplete", self._written, self.n_blocks)
        head = _HEAD.pack(MAGIC, VERSION, self.block_size, self.size_bytes, self.n_blocks, self.key,
                          self.generation, self.full_pass_ns, root, self._sum.digest(), bytes(8))
        try:
            os.pwrite(self._fd, head + _HEAD_SUM.pack(xxhash.xxh3_64_intdigest(head)), 0)
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self.tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError:
            self.abort()
            self.path.unlink(missing_ok=True)
            raise

    def abort(self) -> None:
        """Drop the temporary file (idempotent; never raises)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            self.tmp.unlink(missing_ok=True)
        except OSError:
            pass
