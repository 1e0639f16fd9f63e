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
    FORMAT_VERSION,
    PAGE_ENTRIES,
    ZERO_DIGEST,
    Manifest,
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
    pages_from_digests,
)

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
         size_bytes: int | None = None) -> Manifest:
    page_digests = []
    for page in pages_from_digests(digests):
        d = page_digest(page)
        pages[d] = page
        page_digests.append(d)
    return Manifest(volume="ehr-db", seq=seq, epoch=3, parent_seq=seq - 1 or None,
                    created_at_ns=1_700_000_000_000_000_000,
                    size_bytes=len(digests) * block_size if size_bytes is None else size_bytes,
                    block_size=block_size, pages=tuple(page_digests),
                    stats={"total_blocks": len(digests), "zero_blocks": 0})


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
    assert m.n_blocks == 5000 and len(m.pages) == 2
    assert msgpack.unpackb(data)["v"] == FORMAT_VERSION
    assert list(msgpack.unpackb(data)) == sorted(msgpack.unpackb(data))


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
    for bad in (b"x" * 33, b"", bytes(32 * (PAGE_ENTRIES + 1))):
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
    n_old = draw(st.sampled_from([0, 1, 7, PAGE_ENTRIES - 1, PAGE_ENTRIES, PAGE_ENTRIES + 1,
                                  2 * PAGE_ENTRIES + 5, 3 * PAGE_ENTRIES]))
    old = [ALPHABET[rng.randrange(len(ALPHABET))] for _ in range(n_old)]
    n_new = max(0, n_old + draw(st.sampled_from([0, 0, 0, 1, -1, 5, -5, PAGE_ENTRIES,
                                                 -PAGE_ENTRIES])))
    new = (old + [ALPHABET[rng.randrange(len(ALPHABET))] for _ in range(n_new)])[:n_new]
    if n_new > n_old and draw(st.booleans()):
        new[n_old:] = [ZERO_DIGEST] * (n_new - n_old)
    for _ in range(draw(st.integers(0, 6))):
        if new:
            new[rng.randrange(n_new)] = ALPHABET[rng.randrange(len(ALPHABET))]
    return old, new


@settings(max_examples=60, deadline=None)
@given(pair=volume_pair(), has_old=st.booleans())
def test_changed_digests_are_the_non_zero_digests_of_the_diff(pair: tuple[list[bytes], list[bytes]],
                                                               has_old: bool) -> None:
    """What a holder of ``old`` lacks for ``new`` (sender's offer, receiver's completeness
    check): the non-zero digests at exactly the indexes :func:`diff` reports, each once, in the
    order of its first block."""
    old_digests, new_digests = pair
    pages = PageStore()
    old = make(old_digests, pages, seq=1) if has_old else None
    new = make(new_digests, pages, seq=2)
    expected = [new_digests[i] for i in naive_diff(old_digests if has_old else None, new_digests)
                if new_digests[i] != ZERO_DIGEST]
    assert changed_digests(old, new, pages.load) == list(dict.fromkeys(expected))


@settings(max_examples=60, deadline=None)
@given(pair=volume_pair(), has_old=st.booleans())
def test_diff_equals_naive_block_by_block_oracle(pair: tuple[list[bytes], list[bytes]],
                                                 has_old: bool) -> None:
    old_digests, new_digests = pair
    pages = PageStore()
    old = make(old_digests, pages, seq=1) if has_old else None
    new = make(new_digests, pages, seq=2)
    pages.loaded.clear()
    assert diff(old, new, pages.load) == naive_diff(old_digests if has_old else None,
                                                    new_digests)
    old_pages = old.pages if old else ()
    differing = {d for p, d in enumerate(new.pages)
                 if p >= len(old_pages) or old_pages[p] != d}
    differing |= {old_pages[p] for p, d in enumerate(new.pages)
                  if p < len(old_pages) and old_pages[p] != d}
    assert set(pages.loaded) <= differing


@settings(max_examples=60, deadline=None)
@given(pair=volume_pair(), has_old=st.booleans())
def test_changed_blocks_and_nonzero_counts_equal_naive_oracles(pair: tuple[list[bytes], list[bytes]],
                                                               has_old: bool) -> None:
    """changed_blocks (index, new digest, old digest or None; old blocks past a shrunken end as
    ZERO_DIGEST) and the non-zero counts the judges take: nonzero_blocks of ``new`` is that of
    ``old`` plus nonzero_delta of the changes (grown, shrunk, zeroed, filled)."""
    old_digests, new_digests = pair
    pages = PageStore()
    old = make(old_digests, pages, seq=1) if has_old else None
    new = make(new_digests, pages, seq=2)
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
