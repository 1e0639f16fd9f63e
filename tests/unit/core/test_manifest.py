"""Manifest: canonical encoding, strict decoding, paged Merkle diff against a naive oracle."""

from __future__ import annotations

import random

import blake3
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.core.errors import IntegrityError, RemoteProtocolError
from replicad.core.manifest import (
    DEFAULT_PAGE_ENTRIES,
    FORMAT_VERSION,
    MANIFEST_MAX_BYTES,
    PAGE_GEOMETRIES,
    V1_PAGE_ENTRIES,
    ZERO_DIGEST,
    Manifest,
    block_range,
    changed_blocks,
    changed_digests,
    changed_rows,
    chunk_digests,
    diff,
    iter_block_digests,
    nonzero_blocks,
    nonzero_delta,
    page_digest,
    page_entries,
    page_entries_for,
    pages_from_digests,
)

PAGE_ENTRIES = DEFAULT_PAGE_ENTRIES  # the geometry of the manifests ``make`` builds by default
GEOMETRY_PAIRS = [(512, 512), (V1_PAGE_ENTRIES, V1_PAGE_ENTRIES), (V1_PAGE_ENTRIES, 512), (512, V1_PAGE_ENTRIES)]
"""(old, new) page geometries: same, and across (a format-1 parent, its format-2 child)."""
ALPHABET = [ZERO_DIGEST] + [blake3.blake3(b"block %d" % i).digest() for i in range(1, 6)]


class PageStore(dict):
    """page digest -> page bytes; records which pages were loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[bytes] = []

    def load(self, digest: bytes) -> bytes:
        self.loaded.append(digest)
        return self[digest]


def make(digests: list[bytes], pages: PageStore, *, seq: int = 1, block_size: int = 4096,
         size_bytes: int | None = None, geometry: int = DEFAULT_PAGE_ENTRIES) -> Manifest:
    page_digests = []
    for page in pages_from_digests(digests, geometry):
        d = page_digest(page)
        pages[d] = page
        page_digests.append(d)
    return Manifest(volume="ehr-db", seq=seq, epoch=3, parent_seq=seq - 1 or None,
                    created_at_ns=1_700_000_000_000_000_000,
                    size_bytes=len(digests) * block_size if size_bytes is None else size_bytes,
                    block_size=block_size, pages=tuple(page_digests),
                    stats={"total_blocks": len(digests), "zero_blocks": 0}, page_entries=geometry)


def naive_diff(old: list[bytes] | None, new: list[bytes]) -> list[int]:
    old = old or []
    return [i for i, d in enumerate(new)
            if (d != old[i] if i < len(old) else d != ZERO_DIGEST)]


# --------------------------------------------------------------------------- encoding


def test_encode_decode_roundtrip_and_root_is_blake3_of_encoding() -> None:
    pages = PageStore()
    m = make([ALPHABET[1]] * 5000, pages)
    data = m.encode()
    assert Manifest.decode(data) == m
    assert m.root == blake3.blake3(data).digest()
    assert m.n_blocks == 5000 and len(m.pages) == m.n_pages == 10 and m.page_entries == 512
    assert msgpack.unpackb(data)["v"] == FORMAT_VERSION == 2
    assert msgpack.unpackb(data)["page_entries"] == 512
    assert list(msgpack.unpackb(data)) == sorted(msgpack.unpackb(data))


def test_format_1_manifest_is_still_decoded_with_its_root_and_geometry() -> None:
    """A manifest written before format 2 (4096 entries per page, no field) decodes to the
    geometry it implies and encodes back to the same bytes: its root, held in stores and in
    Raft, does not change."""
    pages = PageStore()
    v1 = make([ALPHABET[1]] * 5000, pages, geometry=V1_PAGE_ENTRIES)
    data = v1.encode()
    doc = msgpack.unpackb(data)
    assert doc["v"] == 1 and "page_entries" not in doc and len(doc["pages"]) == 2
    legacy = msgpack.packb(dict(sorted(doc.items())), use_bin_type=True)  # as the previous release wrote it
    assert legacy == data
    back = Manifest.decode(legacy)
    assert back.page_entries == V1_PAGE_ENTRIES and back.root == blake3.blake3(legacy).digest()
    assert list(iter_block_digests(back, pages.load)) == [ALPHABET[1]] * 5000
    assert back.page_count(0) == 4096 and back.page_count(1) == 5000 - 4096 and back.page_count(2) == 0


def test_the_same_blocks_in_two_geometries_are_two_manifests() -> None:
    pages = PageStore()
    digests = [ALPHABET[1 + i % 5] for i in range(4097)]
    a = make(digests, pages, geometry=V1_PAGE_ENTRIES)
    b = make(digests, pages, geometry=512)
    assert a.root != b.root and len(a.pages) == 2 and len(b.pages) == 9
    assert list(iter_block_digests(a, pages.load)) == list(iter_block_digests(b, pages.load)) == digests
    assert diff(a, b, pages.load) == diff(b, a, pages.load) == []
    assert block_range(a, 4000, 4200, pages.load) == b"".join(digests[4000:4097])
    assert block_range(b, 4097, 5000, pages.load) == b""


def test_encoding_is_canonical_regardless_of_stats_order() -> None:
    a = Manifest("v", 2, 1, 1, 5, 100, 64, (ALPHABET[1],), {"b": 1, "a": 2})
    b = Manifest("v", 2, 1, 1, 5, 100, 64, (ALPHABET[1],), {"a": 2, "b": 1})
    assert a.encode() == b.encode() and a.root == b.root


def test_n_blocks_rounds_up_and_last_block_is_short() -> None:
    m = Manifest("v", 1, 1, None, 0, 10_000, 4096, (ALPHABET[1],), {})
    assert m.n_blocks == 3 and m.block_len(2) == 10_000 - 8192 and m.block_len(0) == 4096


def _doc(**overrides: object) -> bytes:
    doc = {"v": 1, "volume": "v", "seq": 1, "epoch": 1, "parent_seq": None,
           "created_at_ns": 0, "size_bytes": 10, "block_size": 4096,
           "pages": [ALPHABET[1]], "stats": {}}
    doc.update(overrides)
    doc = {k: v for k, v in doc.items() if v != "DROP"}
    return msgpack.packb(dict(sorted(doc.items())), use_bin_type=True)


def _v2(**overrides: object) -> bytes:
    """A format-2 document of 513 blocks of 4096 bytes in 512-entry pages (two pages)."""
    doc = {"v": 2, "page_entries": 512, "size_bytes": 513 * 4096, "pages": [ALPHABET[1], ALPHABET[2]]}
    doc.update(overrides)
    return _doc(**doc)


def test_format_2_geometry_is_decoded_and_checked() -> None:
    m = Manifest.decode(_v2())
    assert m.page_entries == 512 and m.n_blocks == 513 and m.n_pages == 2
    assert m.encode() == _v2() and m.root == blake3.blake3(_v2()).digest()
    # the same size in format 1 takes one page of 4096 entries
    assert Manifest.decode(_doc(size_bytes=513 * 4096)).page_entries == V1_PAGE_ENTRIES
    assert PAGE_GEOMETRIES == {512, V1_PAGE_ENTRIES}


@pytest.mark.parametrize("data", [
    _v2(page_entries=1), _v2(page_entries=2**30), _v2(page_entries=0), _v2(page_entries=-512),
    _v2(page_entries=1024), _v2(page_entries=True), _v2(page_entries="512"), _v2(page_entries=512.0),
    _v2(page_entries=None), _v2(page_entries="DROP"),
    _v2(page_entries=V1_PAGE_ENTRIES, pages=[ALPHABET[1]]),  # 4096 is format 1's: not canonical as v2
    _v2(pages=[ALPHABET[1]]), _v2(pages=[ALPHABET[1]] * 3),  # page count per geometry
    _v2(v=1),  # format 1 has no page_entries field
    _v2(v=3),
], ids=lambda d: msgpack.unpackb(d).get("page_entries", "none").__repr__()[:12])
def test_decode_refuses_bad_geometries(data: bytes) -> None:
    """A hostile primary or peer cannot choose the page geometry of a reader's walk: only
    PAGE_GEOMETRIES, in its one canonical format, with the page count it implies."""
    with pytest.raises(RemoteProtocolError):
        Manifest.decode(data)


@pytest.mark.parametrize("data", [
    b"", b"\xc1", msgpack.packb([1, 2]), _doc(v=2), _doc(v="DROP"), _doc(extra=1),
    _doc(volume=""), _doc(volume=5), _doc(seq=-1), _doc(seq=True), _doc(epoch=1.5),
    _doc(parent_seq="x"), _doc(block_size=0), _doc(block_size=2**25),
    _doc(pages=[b"short"]), _doc(pages=[ALPHABET[1], ALPHABET[2]]), _doc(pages="x"),
    _doc(stats={"a": "b"}), _doc(stats=[]), _doc(size_bytes="DROP"),
])
def test_decode_rejects_malformed(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        Manifest.decode(data)


def test_decode_rejects_non_canonical_encoding() -> None:
    good = _doc()
    doc = msgpack.unpackb(good)
    reordered = msgpack.packb(dict(reversed(list(doc.items()))), use_bin_type=True)
    assert Manifest.decode(good).encode() == good
    with pytest.raises(RemoteProtocolError):
        Manifest.decode(reordered)


def test_unknown_version_is_named_in_the_error() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        Manifest.decode(_doc(v=9))
    assert "version" in info.value.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decode_parses_or_raises_remote_protocol_error(data: bytes) -> None:
    try:
        m = Manifest.decode(data)
    except RemoteProtocolError:
        return
    assert m.encode() == data


# --------------------------------------------------------------------------- pages


def test_pages_and_entries() -> None:
    digests = [ALPHABET[i % 6] for i in range(PAGE_ENTRIES + 10)]
    pages = pages_from_digests(digests)
    assert [len(p) for p in pages] == [PAGE_ENTRIES * 32, 10 * 32]
    assert page_entries(pages[0]) + page_entries(pages[1]) == digests
    for bad in (b"x" * 33, b"", bytes(32 * (V1_PAGE_ENTRIES + 1))):
        with pytest.raises(RemoteProtocolError):
            page_entries(bad)


def test_iter_block_digests_checks_page_digests_and_counts() -> None:
    pages = PageStore()
    digests = [ALPHABET[i % 6] for i in range(PAGE_ENTRIES + 3)]
    m = make(digests, pages)
    assert list(iter_block_digests(m, pages.load)) == digests
    tampered = dict(pages)
    tampered[m.pages[1]] = pages_from_digests([ALPHABET[1]] * 3)[0]
    with pytest.raises(IntegrityError):
        list(iter_block_digests(m, tampered.__getitem__))
    short = Manifest(m.volume, 1, 1, None, 0, (PAGE_ENTRIES + 4) * 4096, 4096, m.pages, {})
    with pytest.raises(RemoteProtocolError):
        list(iter_block_digests(short, pages.load))


def test_chunk_digests_is_the_live_set() -> None:
    pages = PageStore()
    digests = [ALPHABET[0], ALPHABET[1], ALPHABET[1], ALPHABET[2]]
    m = make(digests, pages)
    assert chunk_digests(m, pages.load) == {m.root, *m.pages, ALPHABET[1], ALPHABET[2]}


# --------------------------------------------------------------------------- diff


def test_diff_without_old_lists_non_zero_blocks() -> None:
    pages = PageStore()
    digests = [ALPHABET[0], ALPHABET[3], ALPHABET[0], ALPHABET[4]]
    assert diff(None, make(digests, pages), pages.load) == [1, 3]


def test_diff_loads_only_pages_whose_digest_differs() -> None:
    pages = PageStore()
    n = 5 * PAGE_ENTRIES
    old_digests = [ALPHABET[1 + i % 5] for i in range(n)]
    new_digests = list(old_digests)
    new_digests[2 * PAGE_ENTRIES + 7] = ALPHABET[0]
    new_digests[4 * PAGE_ENTRIES + 100] = blake3.blake3(b"fresh").digest()
    old, new = make(old_digests, pages, seq=1), make(new_digests, pages, seq=2)
    pages.loaded.clear()
    assert diff(old, new, pages.load) == [2 * PAGE_ENTRIES + 7, 4 * PAGE_ENTRIES + 100]
    assert set(pages.loaded) == {old.pages[2], new.pages[2], old.pages[4], new.pages[4]}
    assert len(pages.loaded) == 4


def test_diff_of_grown_volume_ignores_zero_growth() -> None:
    pages = PageStore()
    old_digests = [ALPHABET[1]] * 3
    new_digests = old_digests + [ALPHABET[0], ALPHABET[2], ALPHABET[0]]
    old, new = make(old_digests, pages), make(new_digests, pages, seq=2)
    assert diff(old, new, pages.load) == [4]


def test_diff_with_other_block_size_compares_as_empty() -> None:
    pages = PageStore()
    digests = [ALPHABET[1], ALPHABET[0]]
    old = make(digests, pages, block_size=4096)
    new = make(digests, pages, seq=2, block_size=8192)
    assert diff(old, new, pages.load) == [0]


@st.composite
def volume_pair(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    rng = random.Random(draw(st.integers(0, 2**32)))
    n_old = draw(st.sampled_from([0, 1, 7, 511, 512, 513, 1029, V1_PAGE_ENTRIES - 1, V1_PAGE_ENTRIES,
                                  V1_PAGE_ENTRIES + 1, 2 * V1_PAGE_ENTRIES + 5, 3 * V1_PAGE_ENTRIES]))
    old = [ALPHABET[rng.randrange(len(ALPHABET))] for _ in range(n_old)]
    n_new = max(0, n_old + draw(st.sampled_from([0, 0, 0, 1, -1, 5, -5, 512, -512, V1_PAGE_ENTRIES,
                                                 -V1_PAGE_ENTRIES])))
    new = (old + [ALPHABET[rng.randrange(len(ALPHABET))] for _ in range(n_new)])[:n_new]
    if n_new > n_old and draw(st.booleans()):
        new[n_old:] = [ZERO_DIGEST] * (n_new - n_old)
    for _ in range(draw(st.integers(0, 6))):
        if new:
            new[rng.randrange(n_new)] = ALPHABET[rng.randrange(len(ALPHABET))]
    return old, new


@settings(max_examples=80, deadline=None)
@given(pair=volume_pair(), has_old=st.booleans(), geometries=st.sampled_from(GEOMETRY_PAIRS))
def test_changed_digests_are_the_non_zero_digests_of_the_diff(pair: tuple[list[bytes], list[bytes]],
                                                               has_old: bool, geometries: tuple[int, int]) -> None:
    """What a holder of ``old`` lacks for ``new`` (sender's offer, receiver's completeness
    check): the non-zero digests at exactly the indexes :func:`diff` reports, each once, in the
    order of its first block."""
    old_digests, new_digests = pair
    pages = PageStore()
    old = make(old_digests, pages, seq=1, geometry=geometries[0]) if has_old else None
    new = make(new_digests, pages, seq=2, geometry=geometries[1])
    expected = [new_digests[i] for i in naive_diff(old_digests if has_old else None, new_digests)
                if new_digests[i] != ZERO_DIGEST]
    assert changed_digests(old, new, pages.load) == list(dict.fromkeys(expected))


@settings(max_examples=80, deadline=None)
@given(pair=volume_pair(), has_old=st.booleans(), geometries=st.sampled_from(GEOMETRY_PAIRS))
def test_diff_equals_naive_block_by_block_oracle(pair: tuple[list[bytes], list[bytes]],
                                                 has_old: bool, geometries: tuple[int, int]) -> None:
    """Also across geometries (a format-1 parent, its format-2 child): block ranges compared."""
    old_digests, new_digests = pair
    pages = PageStore()
    old = make(old_digests, pages, seq=1, geometry=geometries[0]) if has_old else None
    new = make(new_digests, pages, seq=2, geometry=geometries[1])
    pages.loaded.clear()
    assert diff(old, new, pages.load) == naive_diff(old_digests if has_old else None,
                                                    new_digests)
    if geometries[0] != geometries[1] and has_old:
        return  # page digests of different geometries are not comparable: every page is loaded
    old_pages = old.pages if old else ()
    differing = {d for p, d in enumerate(new.pages)
                 if p >= len(old_pages) or old_pages[p] != d}
    differing |= {old_pages[p] for p, d in enumerate(new.pages)
                  if p < len(old_pages) and old_pages[p] != d}
    assert set(pages.loaded) <= differing


@settings(max_examples=80, deadline=None)
@given(pair=volume_pair(), has_old=st.booleans(), geometries=st.sampled_from(GEOMETRY_PAIRS))
def test_changed_blocks_and_nonzero_counts_equal_naive_oracles(pair: tuple[list[bytes], list[bytes]],
                                                               has_old: bool, geometries: tuple[int, int]) -> None:
    """changed_blocks (index, new digest, old digest or None; old blocks past a shrunken end as
    ZERO_DIGEST) and the non-zero counts the judges take: nonzero_blocks of ``new`` is that of
    ``old`` plus nonzero_delta of the changes (grown, shrunk, zeroed, filled)."""
    old_digests, new_digests = pair
    pages = PageStore()
    old = make(old_digests, pages, seq=1, geometry=geometries[0]) if has_old else None
    new = make(new_digests, pages, seq=2, geometry=geometries[1])
    base = old_digests if has_old else []
    expected = [(i, d, base[i] if i < len(base) else None) for i, d in enumerate(new_digests)
                if (d != base[i] if i < len(base) else d != ZERO_DIGEST)]
    expected += [(i, ZERO_DIGEST, o) for i, o in enumerate(base) if i >= len(new_digests) and o != ZERO_DIGEST]
    changes = changed_blocks(old, new, pages.load)
    assert changes == expected
    nonzero_new = sum(d != ZERO_DIGEST for d in new_digests)
    assert nonzero_blocks(new, pages.load) == nonzero_new
    assert (nonzero_blocks(old, pages.load) if old else 0) + nonzero_delta(changes) == nonzero_new
    # changed_rows: the same blocks as arrays page by page (old None as ZERO_DIGEST rows)
    rows = [(int(i), n.tobytes(), o.tobytes()) for idx, nw, od in changed_rows(old, new, pages.load)
            for i, n, o in zip(idx, nw, od)]
    assert rows == [(i, d, ZERO_DIGEST if o is None else o) for i, d, o in expected]


def test_new_manifests_use_512_entry_pages_unless_the_page_list_would_not_fit() -> None:
    """page_entries_for: 512 entries per page while the format-2 page list leaves room in
    MANIFEST_MAX_BYTES (491,520 pages: ~15 TiB of 64 KiB blocks), format 1's 4096 past that, so
    a volume that was replicable before format 2 stays replicable. At the edge the manifest
    encodes within the bound and decodes; 2,048 pages past it (64 KiB of room used up) a
    format-2 manifest of the same blocks is refused, the format-1 one is not."""
    edge = 491_520 * 512
    assert page_entries_for(0) == page_entries_for(1) == page_entries_for(edge) == 512
    assert page_entries_for(edge + 1) == page_entries_for(2**31) == V1_PAGE_ENTRIES
    stats = {"total_blocks": edge, "zero_blocks": 0, "changed_blocks": edge, "changed_bytes": edge * 65536,
             "random_changed_blocks": edge, "new_chunks": edge, "has_parent": 1}
    at_edge = Manifest("pacs-archive-volume", 2**40, 2**40, 2**40, 2**63, edge * 65536, 65536,
                       (ALPHABET[1],) * 491_520, stats)
    data = at_edge.encode()
    assert len(data) <= MANIFEST_MAX_BYTES and Manifest.decode(data) == at_edge
    far = edge + 2048 * 512
    past = Manifest("pacs-archive-volume", 1, 1, None, 0, far * 65536, 65536, (ALPHABET[1],) * -(-far // 512), stats)
    with pytest.raises(RemoteProtocolError):
        Manifest.decode(past.encode())
    bigger = Manifest("pacs-archive-volume", 1, 1, None, 0, far * 65536, 65536,
                      (ALPHABET[1],) * -(-far // V1_PAGE_ENTRIES), stats, page_entries=V1_PAGE_ENTRIES)
    assert Manifest.decode(bigger.encode()) == bigger
