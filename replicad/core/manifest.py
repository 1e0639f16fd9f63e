"""Snapshot manifests: paged block digests under a Merkle root.

A volume of ``n_blocks = ceil(size_bytes / block_size)`` blocks is described by the BLAKE3
digest of each block (the last block may be short: its digest covers exactly the bytes
present). All-zero blocks get the sentinel :data:`ZERO_DIGEST` and are never stored.

The digests are cut into **pages** of up to ``page_entries`` concatenated 32-byte digests
(the manifest's page geometry: :data:`DEFAULT_PAGE_ENTRIES`, 512 = 16 KiB pages, for new
manifests, :func:`page_entries_for`; 4096 = 128 KiB for format 1); each page is stored as a
chunk under ``blake3(page)``. The manifest lists the page digests and is itself stored as a
chunk under its **root** =
``blake3(manifest.encode())``. So the root covers the page digests, which cover the block
digests: one 32-byte value committed through Raft pins the whole image. Unchanged pages keep
their digest, so :func:`diff` loads only the pages whose digests differ.

Wire/disk form: a canonical msgpack map with sorted keys. Format 1 (pages of 4096 entries,
implied)::

    {"block_size", "created_at_ns", "epoch", "pages": [bin32...], "parent_seq": int|nil,
     "seq", "size_bytes", "stats": {str: int}, "v": 1, "volume": str}

Format 2 (:data:`FORMAT_VERSION`) adds ``"page_entries": int`` (one of
:data:`PAGE_GEOMETRIES` other than 4096) and has ``"v": 2``. A manifest of 4096-entry pages
is always written as format 1, so each manifest has exactly one encoding and the manifests
written before format 2 keep their roots (they stay readable and verifiable everywhere:
stores, Raft, pulls, restores). :meth:`Manifest.decode` accepts only that canonical encoding
(it re-encodes and compares), so ``root == blake3(data)`` for every accepted ``data``. Why the
geometry changed: ARCHITECTURE.md, Choices, "Manifest pages under scattered changes".

Every mapping of a block index to a page uses the manifest's own ``page_entries``; between
two manifests of different geometry (a format-1 parent and its format-2 child, once per volume
after an upgrade) :func:`diff` and its kin compare block ranges instead of page digests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import blake3
import msgpack
import numpy as np

from replicad.core.errors import IntegrityError, RemoteProtocolError

FORMAT_VERSION = 2
"""Format of manifests of a geometry other than :data:`V1_PAGE_ENTRIES`."""
V1_PAGE_ENTRIES = 4096
"""Entries per page of a format-1 manifest (no ``page_entries`` field)."""
DEFAULT_PAGE_ENTRIES = 512
"""Entries per page of the manifests this release writes (16 KiB pages: a scattered change
costs 16 KiB of page, not 128 KiB; ARCHITECTURE.md, Choices, "Manifest pages under scattered
changes")."""
PAGE_GEOMETRIES = frozenset({512, V1_PAGE_ENTRIES})
"""The page geometries accepted: a peer or the Raft log cannot make a reader cut a volume into
pages of 1 entry (millions of pages) or 2**30 (one page of 32 GiB)."""
MAX_PAGE_ENTRIES = max(PAGE_GEOMETRIES)
DIGEST_SIZE = 32
ZERO_DIGEST = bytes(DIGEST_SIZE)
BLOCK_SIZE_MAX_BYTES = 16 * 2**20
MANIFEST_MAX_BYTES = 16 * 2**20
MANIFEST_ROOM_BYTES = 64 * 1024
"""What :func:`page_entries_for` leaves of MANIFEST_MAX_BYTES to a manifest's other fields."""


def page_entries_for(n_blocks: int) -> int:
    """The page geometry a new manifest of ``n_blocks`` blocks is written in:
    :data:`DEFAULT_PAGE_ENTRIES`, unless its page list (34 bytes per page: a digest and its
    msgpack header) would not leave MANIFEST_ROOM_BYTES of MANIFEST_MAX_BYTES, i.e. past
    491,520 pages (~15 TiB of 64 KiB blocks); then :data:`V1_PAGE_ENTRIES` (8x fewer pages: up
    to ~120 TiB, as before format 2), so a large volume keeps a manifest its peers accept."""
    pages = -(-n_blocks // DEFAULT_PAGE_ENTRIES)
    if pages * (DIGEST_SIZE + 2) + MANIFEST_ROOM_BYTES <= MANIFEST_MAX_BYTES:
        return DEFAULT_PAGE_ENTRIES
    return V1_PAGE_ENTRIES


_ZERO_BLOCKS: dict[int, bytes] = {}


def zero_block(size: int) -> bytes:
    """``size`` zero bytes, one shared object per size (the content of a ZERO_DIGEST block;
    compared with ``startswith`` as a memcmp zero check, written for zero blocks)."""
    zero = _ZERO_BLOCKS.get(size)
    if zero is None:
        zero = _ZERO_BLOCKS[size] = bytes(size)
    return zero


_KEYS = frozenset({"v", "volume", "seq", "epoch", "parent_seq", "created_at_ns", "size_bytes",
                   "block_size", "pages", "stats"})
_KEYS_V2 = _KEYS | {"page_entries"}


def _sorted_map(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_map(value[k]) for k in sorted(value)}
    return value


@dataclass(frozen=True)
class Manifest:
    """One snapshot's description.

    Attributes:
        volume: volume name. seq: snapshot sequence number (>= 1 is usual, >= 0 accepted).
        epoch: fencing epoch the snapshot was produced under.
        parent_seq: seq of the snapshot this one was diffed against, None for a full one.
        created_at_ns: informational wall-clock time, ns since the Unix epoch.
        size_bytes: image size in bytes. block_size: block size in bytes.
        pages: page digests (32 bytes each), ``ceil(n_blocks / page_entries)`` of them.
        stats: scan statistics, ``{str: int}`` (see :mod:`replicad.sources.file`).
        page_entries: block digests per page (the last page may hold fewer), one of
            :data:`PAGE_GEOMETRIES`; :data:`V1_PAGE_ENTRIES` is written as format 1.
            Not checked here (a test may build a hostile manifest): :meth:`decode` checks it.
    """

    volume: str
    seq: int
    epoch: int
    parent_seq: int | None
    created_at_ns: int
    size_bytes: int
    block_size: int
    pages: tuple[bytes, ...]
    stats: dict = field(default_factory=dict)
    page_entries: int = DEFAULT_PAGE_ENTRIES

    def encode(self) -> bytes:
        """Canonical msgpack bytes (sorted keys at every level, bin type for digests): format 1
        when ``page_entries`` is :data:`V1_PAGE_ENTRIES`, else format 2 with the field."""
        doc = {
            "v": 1, "volume": self.volume, "seq": self.seq, "epoch": self.epoch,
            "parent_seq": self.parent_seq, "created_at_ns": self.created_at_ns,
            "size_bytes": self.size_bytes, "block_size": self.block_size,
            "pages": list(self.pages), "stats": dict(self.stats),
        }
        if self.page_entries != V1_PAGE_ENTRIES:
            doc["v"] = FORMAT_VERSION
            doc["page_entries"] = self.page_entries
        return msgpack.packb(_sorted_map(doc), use_bin_type=True)

    @property
    def root(self) -> bytes:
        """Merkle root: BLAKE3-256 of :meth:`encode`; the manifest is stored under it."""
        return blake3.blake3(self.encode()).digest()

    @property
    def n_blocks(self) -> int:
        """Number of blocks, ``ceil(size_bytes / block_size)``."""
        return -(-self.size_bytes // self.block_size)

    def block_len(self, index: int) -> int:
        """Length in bytes of block ``index`` (the last block may be short)."""
        return min(self.block_size, self.size_bytes - index * self.block_size)

    @property
    def n_pages(self) -> int:
        """Number of pages the geometry gives, ``ceil(n_blocks / page_entries)`` (what
        :meth:`decode` requires ``len(pages)`` to be)."""
        return -(-self.n_blocks // self.page_entries)

    def page_count(self, p: int) -> int:
        """Entries of page ``p`` (``page_entries``, fewer for the last page; 0 past the end)."""
        return max(0, min(self.page_entries, self.n_blocks - p * self.page_entries))

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse a manifest.

        Raises:
            RemoteProtocolError: not msgpack, not a map, missing/unknown/mistyped field,
                unknown version, inconsistent page count, or a non-canonical encoding.
        """
        if not isinstance(data, (bytes, bytearray)) or len(data) > MANIFEST_MAX_BYTES:
            raise RemoteProtocolError("manifest must be bytes of at most 16 MiB")
        try:
            doc = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True,
                                  use_list=True)
        except (ValueError, TypeError, msgpack.UnpackException) as err:
            raise RemoteProtocolError(f"manifest is not valid msgpack: {err}") from err
        if not isinstance(doc, dict):
            raise RemoteProtocolError("manifest is not a map")
        version = doc.get("v")
        if not _is_int(version) or version not in (1, FORMAT_VERSION):
            raise RemoteProtocolError("manifest has an unknown format version",
                                      version=repr(version), supported=[1, FORMAT_VERSION])
        keys = _KEYS if version == 1 else _KEYS_V2
        if set(doc) != keys:
            raise RemoteProtocolError("manifest fields are wrong",
                                      missing=sorted(keys - set(doc)),
                                      unknown=sorted(map(str, set(doc) - keys)))
        geometry = doc.get("page_entries", V1_PAGE_ENTRIES)
        if not _is_int(geometry) or geometry not in PAGE_GEOMETRIES:
            raise RemoteProtocolError("manifest page_entries is not an accepted page geometry",
                                      page_entries=repr(geometry)[:40], accepted=sorted(PAGE_GEOMETRIES))
        volume = doc["volume"]
        if not isinstance(volume, str) or not volume:
            raise RemoteProtocolError("manifest volume must be a non-empty string")
        ints = {k: doc[k] for k in ("seq", "epoch", "created_at_ns", "size_bytes", "block_size")}
        for key, value in ints.items():
            if not _is_uint(value):
                raise RemoteProtocolError(f"manifest {key} must be a non-negative integer",
                                          field=key)
        parent = doc["parent_seq"]
        if parent is not None and not _is_uint(parent):
            raise RemoteProtocolError("manifest parent_seq must be null or an integer")
        if not 0 < ints["block_size"] <= BLOCK_SIZE_MAX_BYTES:
            raise RemoteProtocolError("manifest block_size out of range",
                                      block_size=ints["block_size"])
        pages = doc["pages"]
        if not isinstance(pages, list) or not all(
                isinstance(p, bytes) and len(p) == DIGEST_SIZE for p in pages):
            raise RemoteProtocolError("manifest pages must be a list of 32-byte digests")
        stats = doc["stats"]
        if not isinstance(stats, dict) or not all(
                isinstance(k, str) and _is_int(v) for k, v in stats.items()):
            raise RemoteProtocolError("manifest stats must map strings to integers")
        m = cls(volume=volume, seq=ints["seq"], epoch=ints["epoch"], parent_seq=parent,
                created_at_ns=ints["created_at_ns"], size_bytes=ints["size_bytes"],
                block_size=ints["block_size"], pages=tuple(pages), stats=stats,
                page_entries=geometry)
        if len(m.pages) != m.n_pages:
            raise RemoteProtocolError("manifest page count does not match its size",
                                      pages=len(m.pages), n_blocks=m.n_blocks,
                                      page_entries=m.page_entries)
        if m.encode() != bytes(data):
            raise RemoteProtocolError("manifest is not canonically encoded")
        return m


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_uint(value: object) -> bool:
    return _is_int(value) and value >= 0  # type: ignore[operator]


def page_digest(page: bytes) -> bytes:
    """BLAKE3-256 of a page's bytes: the digest it is stored under."""
    return blake3.blake3(page).digest()


def pages_from_digests(block_digests: Sequence[bytes],
                       page_entries: int = DEFAULT_PAGE_ENTRIES) -> list[bytes]:
    """Cut block digests into page byte strings of up to ``page_entries`` × 32 bytes (the
    geometry of the manifest they are for)."""
    return [b"".join(block_digests[i:i + page_entries])
            for i in range(0, len(block_digests), page_entries)]


def page_entries(page: bytes) -> list[bytes]:
    """Split a page into its 32-byte block digests (the caller checks the count against its
    manifest's geometry: :meth:`Manifest.page_count`).

    Raises:
        RemoteProtocolError: empty, longer than MAX_PAGE_ENTRIES digests, or length not a
            multiple of 32.
    """
    if not page or len(page) % DIGEST_SIZE or len(page) > MAX_PAGE_ENTRIES * DIGEST_SIZE:
        raise RemoteProtocolError("manifest page has a bad length", length=len(page))
    return [page[i:i + DIGEST_SIZE] for i in range(0, len(page), DIGEST_SIZE)]


def _load_checked_raw(m: Manifest, p: int, load_page: Callable[[bytes], bytes]) -> bytes:
    """The bytes of page ``p`` of ``m``, checked against its digest and expected count."""
    page = load_page(m.pages[p])
    if page_digest(page) != m.pages[p]:
        raise IntegrityError(f"manifest page {p} does not match its digest",
                             volume=m.volume, seq=m.seq, page=m.pages[p].hex())
    if not page or len(page) % DIGEST_SIZE or len(page) > m.page_entries * DIGEST_SIZE:
        raise RemoteProtocolError("manifest page has a bad length", length=len(page))
    expected = m.page_count(p)
    if len(page) // DIGEST_SIZE != expected:
        raise RemoteProtocolError("manifest page has a wrong number of entries",
                                  volume=m.volume, seq=m.seq, page_index=p,
                                  entries=len(page) // DIGEST_SIZE, expected=expected)
    return page


def _load_checked(m: Manifest, p: int, load_page: Callable[[bytes], bytes]) -> list[bytes]:
    """Entries of page ``p`` of ``m``, checked against its digest and expected count."""
    return page_entries(_load_checked_raw(m, p, load_page))


def page_rows(page: bytes) -> np.ndarray:
    """A page's entries as a read-only ``(entries, 4)`` ``uint64`` view of its bytes (no copy):
    entry ``i`` differs from entry ``j`` of another page iff a row differs, and is ZERO_DIGEST
    iff its row is all zeros. The caller checked the length (a multiple of 32)."""
    return np.frombuffer(page, dtype=np.uint64).reshape(-1, DIGEST_SIZE // 8)


def nonzero_entries(page: bytes) -> int:
    """How many entries of a page (bytes, a multiple of 32 long) are not ZERO_DIGEST."""
    return int(np.count_nonzero(page_rows(page).any(axis=1)))


def _changed_in_page(new_page: bytes, old_page: bytes) -> np.ndarray:
    """Indexes (sorted) of the entries of ``new_page`` that :func:`diff` calls changed against
    ``old_page`` at the same position: differing where both have one, not ZERO_DIGEST past
    ``old_page``'s end."""
    nw, od = page_rows(new_page), page_rows(old_page)
    k = min(len(nw), len(od))
    both = np.flatnonzero((nw[:k] != od[:k]).any(axis=1))
    grown = np.flatnonzero(nw[k:].any(axis=1)) + k
    return np.concatenate([both, grown]) if grown.size else both


def iter_block_digests(m: Manifest, load_page: Callable[[bytes], bytes]) -> Iterator[bytes]:
    """Yield the ``m.n_blocks`` block digests of ``m`` in order, loading one page at a time.

    ``load_page(page_digest) -> page bytes`` (e.g. ``store.get``). Raises IntegrityError if a
    loaded page does not match its digest, RemoteProtocolError if its length is wrong.
    """
    for p in range(len(m.pages)):
        yield from _load_checked(m, p, load_page)


def _differing_pages(old: Manifest | None, new: Manifest,
                     load_page: Callable[[bytes], bytes]) -> Iterator[tuple[int, bytes, bytes]]:
    """``(first block index, new page bytes, old page bytes)`` of every page of ``new`` whose
    page digest differs from ``old``'s at the same position (old page ``b""`` past old's end),
    both checked (:func:`_load_checked_raw`); ``old`` of another block size compares as None.
    Only those pages are loaded."""
    if old is not None and old.block_size != new.block_size:
        old = None
    if old is not None and old.page_entries != new.page_entries:
        yield from _differing_ranges(old, new, load_page)
        return
    old_pages = old.pages if old is not None else ()
    for p, digest in enumerate(new.pages):
        if p < len(old_pages) and old_pages[p] == digest:
            continue  # same digest: same entries, same count
        old_page = _load_checked_raw(old, p, load_page) if old is not None and p < len(old_pages) else b""
        yield p * new.page_entries, _load_checked_raw(new, p, load_page), old_page


def _differing_ranges(old: Manifest, new: Manifest,
                      load_page: Callable[[bytes], bytes]) -> Iterator[tuple[int, bytes, bytes]]:
    """:func:`_differing_pages` between manifests of different page geometry (a format-1
    parent and its format-2 child: once per volume after an upgrade): page digests cannot be
    compared, so every page of both is loaded and checked (O(volume)) and each page of
    ``new`` is compared with ``old``'s entries of the same block range (:func:`block_range`);
    a page whose entries equal them is not yielded."""
    memo: dict[int, bytes] = {}
    for p in range(len(new.pages)):
        first = p * new.page_entries
        new_page = _load_checked_raw(new, p, load_page)
        old_page = block_range(old, first, first + len(new_page) // DIGEST_SIZE, load_page, memo)
        if new_page != old_page:
            yield first, new_page, old_page


def block_range(m: Manifest, first: int, stop: int, load_page: Callable[[bytes], bytes],
                memo: dict[int, bytes] | None = None) -> bytes:
    """The concatenated digests of blocks ``first .. min(stop, m.n_blocks) - 1`` of ``m``
    (``b""`` from ``m``'s end on), from its pages in its own geometry, each loaded and checked
    (:func:`_load_checked_raw`). ``memo``: a dict kept by a caller walking forward, holding the
    last page loaded (so a page spanning several calls is loaded once). Raises what
    :func:`iter_block_digests` raises."""
    stop = min(stop, m.n_blocks)
    if first >= stop:
        return b""
    pe = m.page_entries
    out = bytearray()
    for p in range(first // pe, (stop - 1) // pe + 1):
        page = memo.get(p) if memo is not None else None
        if page is None:
            page = _load_checked_raw(m, p, load_page)
            if memo is not None:
                memo.clear()
                memo[p] = page
        lo, hi = max(first, p * pe) - p * pe, min(stop, (p + 1) * pe) - p * pe
        out += page[lo * DIGEST_SIZE:hi * DIGEST_SIZE]
    return bytes(out)


def diff(old: Manifest | None, new: Manifest, load_page: Callable[[bytes], bytes]) -> list[int]:
    """Sorted block indexes of ``new`` whose digest differs from ``old``.

    Definition: index ``i < new.n_blocks`` is changed iff ``i < old.n_blocks`` and the digests
    differ, or ``i >= old.n_blocks`` and new's digest is not ZERO_DIGEST (growing a volume
    with zeros changes nothing). Blocks beyond ``new.n_blocks`` (a shrunk volume) are not
    reported. ``old`` None, or an ``old`` with another block size, compares as an empty
    volume. Only pages whose page digests differ are loaded (every page of both when their
    page geometries differ); within a page the entries are compared as rows of a numpy view
    (:func:`page_rows`: no object per entry, ~1 ms per page of 4096 entries).
    """
    changed: list[int] = []
    for base, new_page, old_page in _differing_pages(old, new, load_page):
        changed.extend((_changed_in_page(new_page, old_page) + base).tolist())
    return changed


def changed_digests(old: Manifest | None, new: Manifest, load_page: Callable[[bytes], bytes]) -> list[bytes]:
    """The distinct non-zero digests of the blocks of ``new`` that :func:`diff` reports
    changed against ``old``, in the order of their first block (a digest used by several
    changed blocks appears once: a manifest of millions of blocks repeating a few digests gives
    a list of a few, not an object per block). Whoever holds all of ``old``'s chunks holds
    ``new``'s once it holds these (and ``new``'s pages). Only pages whose page digests differ
    are loaded."""
    out: dict[bytes, None] = {}
    for _, new_page, old_page in _differing_pages(old, new, load_page):
        idx = _changed_in_page(new_page, old_page)
        idx = idx[page_rows(new_page)[idx].any(axis=1)]  # ZERO_DIGEST: nothing to hold
        rows = np.frombuffer(new_page, dtype=np.uint8).reshape(-1, DIGEST_SIZE)[idx]
        _, first = np.unique(rows.view(np.dtype((np.void, DIGEST_SIZE))).ravel(), return_index=True)
        for i in np.sort(first).tolist():  # a page's distinct digests, in block order
            out.setdefault(rows[i].tobytes())
    return list(out)


def changed_blocks(old: Manifest | None, new: Manifest,
                   load_page: Callable[[bytes], bytes]) -> list[tuple[int, bytes, bytes | None]]:
    """``(block index, new digest, old digest or None)`` of every block :func:`diff` reports
    changed, in block order, plus the blocks of ``old`` past a shrunken ``new`` (new digest
    ZERO_DIGEST: they are gone). ``old`` digest None: past ``old``'s end. Only differing pages
    are loaded (and the tail pages of ``old`` when ``new`` shrank)."""
    out: list[tuple[int, bytes, bytes | None]] = []
    for base, new_page, old_page in _differing_pages(old, new, load_page):
        n_old = len(old_page) // DIGEST_SIZE
        for i in _changed_in_page(new_page, old_page).tolist():
            a = i * DIGEST_SIZE
            out.append((base + i, new_page[a:a + DIGEST_SIZE], old_page[a:a + DIGEST_SIZE] if i < n_old else None))
    if old is not None and old.block_size == new.block_size and old.n_blocks > new.n_blocks:
        first_page = new.n_blocks // old.page_entries
        for p in range(first_page, len(old.pages)):
            for i, o in enumerate(_load_checked(old, p, load_page)):
                index = p * old.page_entries + i
                if index >= new.n_blocks and o != ZERO_DIGEST:
                    out.append((index, ZERO_DIGEST, o))
    return out


def changed_rows(old: Manifest | None, new: Manifest,
                 load_page: Callable[[bytes], bytes]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """What :func:`changed_blocks` lists, one differing page at a time and as arrays, so that a
    caller walking millions of changed blocks holds no object per block: ``(indexes, new_rows,
    old_rows)``, ``indexes`` an ``int64`` array of block indexes (sorted within a page),
    ``new_rows``/``old_rows`` ``(k, 32)`` ``uint8`` arrays of the digests (ZERO_DIGEST rows past
    ``old``'s end, where :func:`changed_blocks` says None, and for the blocks gone past a shrunken
    ``new``). Pages are loaded and checked as in :func:`changed_blocks`; a page whose blocks did
    not change yields nothing. Raises what :func:`iter_block_digests` raises."""
    for base, new_page, old_page in _differing_pages(old, new, load_page):
        idx = _changed_in_page(new_page, old_page)
        if not idx.size:
            continue
        nw = np.frombuffer(new_page, dtype=np.uint8).reshape(-1, DIGEST_SIZE)[idx]
        od = np.zeros_like(nw)
        n_old = len(old_page) // DIGEST_SIZE
        inside = idx < n_old
        if n_old:
            od[inside] = np.frombuffer(old_page, dtype=np.uint8).reshape(-1, DIGEST_SIZE)[idx[inside]]
        yield idx.astype(np.int64) + base, nw, od
    if old is not None and old.block_size == new.block_size and old.n_blocks > new.n_blocks:
        for p in range(new.n_blocks // old.page_entries, len(old.pages)):
            od = np.frombuffer(_load_checked_raw(old, p, load_page), dtype=np.uint8).reshape(-1, DIGEST_SIZE)
            index = np.arange(len(od), dtype=np.int64) + p * old.page_entries
            keep = (index >= new.n_blocks) & od.any(axis=1)
            if keep.any():
                yield index[keep], np.zeros((int(keep.sum()), DIGEST_SIZE), dtype=np.uint8), od[keep]


def nonzero_blocks(m: Manifest, load_page: Callable[[bytes], bytes]) -> int:
    """How many blocks of ``m`` are not ZERO_DIGEST (every page loaded and checked: O(volume),
    1 page per ``m.page_entries`` blocks). Raises what :func:`iter_block_digests` raises."""
    return sum(nonzero_entries(_load_checked_raw(m, p, load_page)) for p in range(len(m.pages)))


def nonzero_delta(changes: Iterable[tuple[int, bytes, bytes | None]]) -> int:
    """The change in :func:`nonzero_blocks` from ``old`` to ``new`` given
    ``changed_blocks(old, new, ...)`` (same block size): +1 per block that became non-zero, -1
    per block that became zero or is gone past a shrunken end. Exact: a block not listed has the
    same digest in both, or is zero in both, or is past both ends."""
    return sum((d != ZERO_DIGEST) - (o is not None and o != ZERO_DIGEST) for _, d, o in changes)


def chunk_digests(m: Manifest, load_page: Callable[[bytes], bytes]) -> set[bytes]:
    """The live set of one snapshot: every non-zero block digest, every page digest and the
    root. A chunk store gc must keep the union of these over all retained snapshots (O4)."""
    live: set[bytes] = {m.root}
    live.update(m.pages)
    live.update(d for d in iter_block_digests(m, load_page) if d != ZERO_DIGEST)
    return live
