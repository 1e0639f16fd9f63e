"""Restore / standby apply: real image files, a real chunk store, snapshots from the real scanner.

Small block sizes (256 bytes: one manifest page covers 1 MiB) give multi-page manifests from
images of a few MiB, so that page skipping with a known ``base`` can be observed.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.storage.chunkstore import ChunkStore, digest_of
from replicad.core.errors import IntegrityError, NotFoundError, RestoreVerifyError
from replicad.core.manifest import DEFAULT_PAGE_ENTRIES, V1_PAGE_ENTRIES, ZERO_DIGEST, Manifest, pages_from_digests
from replicad.storage.image import (ApplyReport, apply_snapshot, check_image_range, digest_region, image_manifest,
                                    open_direct, verify_image)
from replicad.sources.file import take_snapshot

NOW_NS = 1_800_000_000_000_000_000
BS = 256                      # bytes per block in most tests
PAGE_ENTRIES = DEFAULT_PAGE_ENTRIES  # the page geometry of the manifests take_snapshot writes
PAGE_BYTES = BS * PAGE_ENTRIES  # image bytes covered by one manifest page (128 KiB)


class CountingStore:
    """A real ChunkStore whose ``get`` calls are recorded (digest per call)."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.gets: list[bytes] = []

    def get(self, digest: bytes) -> bytes:
        self.gets.append(digest)
        return self.store.get(digest)


@pytest.fixture
def store(tmp_path: Path):
    with ChunkStore(tmp_path / "store") as s:
        yield s


def make_image(rng: random.Random, size_bytes: int, block_size: int = BS, data_every: int = 7) -> bytearray:
    """Mostly zero image; every ``data_every``-th block holds random bytes."""
    data = bytearray(size_bytes)
    for index, off in enumerate(range(0, size_bytes, block_size)):
        if index % data_every == 0:
            n = min(block_size, size_bytes - off)
            data[off:off + n] = rng.randbytes(n)
    return data


async def snap(path: Path, store: ChunkStore, seq: int, parent: Manifest | None = None,
               block_size: int = BS, page_entries: int = DEFAULT_PAGE_ENTRIES) -> Manifest:
    result = await take_snapshot(path, volume="pacs", seq=seq, epoch=2, parent=parent, store=store,
                                 now_ns=NOW_NS + seq, block_size=block_size, read_size_bytes=2**20,
                                 allow_shrink=True, page_entries=page_entries)  # resizes here are on purpose
    return result.manifest


def differing_blocks(a: bytes, b: bytes, block_size: int = BS) -> set[int]:
    """Indexes of blocks of ``b`` whose bytes differ from ``a`` (``a`` read as zero-extended)."""
    out = set()
    for index, off in enumerate(range(0, len(b), block_size)):
        mine = b[off:off + block_size]
        theirs = a[off:off + block_size].ljust(len(mine), b"\0")
        if mine != theirs:
            out.add(index)
    return out


# ----------------------------------------------------------------------------- apply_snapshot


async def test_apply_into_a_new_file_gives_identical_bytes(tmp_path: Path, store: ChunkStore) -> None:
    rng = random.Random(1)
    size = 2 * PAGE_BYTES + 5 * BS + 100  # three pages, a short last block
    img = tmp_path / "vol.img"
    img.write_bytes(make_image(rng, size))
    m = await snap(img, store, 1)
    assert len(m.pages) == 3
    target = tmp_path / "restored.img"
    progress: list[tuple[int, int]] = []
    report = apply_snapshot(target, m, store, progress=lambda done, total: progress.append((done, total)))
    assert target.read_bytes() == img.read_bytes()
    nonzero = len(differing_blocks(b"", img.read_bytes()))
    assert report == ApplyReport(blocks_total=m.n_blocks, blocks_written=nonzero,
                                 bytes_written=sum(m.block_len(i) for i in differing_blocks(b"", img.read_bytes())))
    assert progress[-1] == (m.n_blocks, m.n_blocks)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert verify_image(target, m) == m.root


async def test_apply_with_a_format_1_base_writes_every_changed_block(tmp_path: Path, store: ChunkStore) -> None:
    """A standby whose record is a format-1 manifest (4096-entry pages, before the upgrade)
    applies its first format-2 snapshot (512-entry pages): the base's page digests say nothing
    about the new pages, its digests of the same blocks do. A page-by-index comparison would
    skip or misplace blocks; the image must come out bit-exact, and only changed blocks written."""
    rng = random.Random(33)
    size = 2 * V1_PAGE_ENTRIES * BS + 700 * BS + 99  # three format-1 pages, 18 format-2 pages
    img = tmp_path / "vol.img"
    data = make_image(rng, size)
    img.write_bytes(data)
    m1 = await snap(img, store, 1, page_entries=V1_PAGE_ENTRIES)
    assert m1.page_entries == V1_PAGE_ENTRIES and len(m1.pages) == 3
    target = tmp_path / "standby.img"
    apply_snapshot(target, m1, store)
    changed = [5, 600, V1_PAGE_ENTRIES + 511, V1_PAGE_ENTRIES + 512, 2 * V1_PAGE_ENTRIES + 699]
    for index in changed:
        data[index * BS:(index + 1) * BS] = rng.randbytes(BS)
    data[-99:] = rng.randbytes(99)  # the short last block too
    img.write_bytes(data)
    m2 = await snap(img, store, 2, parent=m1)
    assert m2.page_entries == DEFAULT_PAGE_ENTRIES and len(m2.pages) == 18
    counting = CountingStore(store)
    report = apply_snapshot(target, m2, counting, base=m1)
    assert target.read_bytes() == bytes(data)
    assert report.blocks_written == len(changed) + 1
    assert [counting.gets.count(p) for p in m1.pages] == [1, 1, 1]  # a base page spanning 8 new ones: read once
    assert verify_image(target, m2) == m2.root


async def test_apply_over_unknown_content_rewrites_exactly_the_differing_blocks(tmp_path: Path,
                                                                               store: ChunkStore) -> None:
    rng = random.Random(2)
    size = PAGE_BYTES + 33 * BS + 17
    img = tmp_path / "vol.img"
    want = make_image(rng, size)
    img.write_bytes(want)
    m = await snap(img, store, 1)
    old = bytearray(want)
    for index in (0, 3, 7, PAGE_ENTRIES - 1, PAGE_ENTRIES, PAGE_ENTRIES + 4, m.n_blocks - 1):  # data, zero, page edges, short last block
        off = index * BS
        old[off + 5] ^= 0xFF
    old[14 * BS: 15 * BS] = bytes(BS)                         # a data block zeroed in the target
    target = tmp_path / "standby.img"
    target.write_bytes(old)
    expected = differing_blocks(old, want)
    assert len(expected) == 8
    report = apply_snapshot(target, m, store)
    assert report.blocks_written == len(expected)
    assert report.bytes_written == sum(m.block_len(i) for i in expected)
    assert target.read_bytes() == bytes(want)
    assert apply_snapshot(target, m, store).blocks_written == 0   # idempotent


async def test_apply_with_known_base_visits_only_differing_pages(tmp_path: Path, store: ChunkStore) -> None:
    rng = random.Random(3)
    size = 3 * PAGE_BYTES
    img = tmp_path / "vol.img"
    data = make_image(rng, size)
    img.write_bytes(data)
    m1 = await snap(img, store, 1)
    target = tmp_path / "standby.img"
    apply_snapshot(target, m1, store)
    # Change two blocks of page 1: one gets new data, one (a data block) becomes zero.
    changed_index = PAGE_ENTRIES + 10
    zeroed_index = PAGE_ENTRIES + 13  # (512 + 13) % 7 == 0: a data block
    assert any(data[zeroed_index * BS:(zeroed_index + 1) * BS])
    data[changed_index * BS:(changed_index + 1) * BS] = rng.randbytes(BS)
    data[zeroed_index * BS:(zeroed_index + 1) * BS] = bytes(BS)
    img.write_bytes(data)
    m2 = await snap(img, store, 2, parent=m1)
    assert [a == b for a, b in zip(m1.pages, m2.pages)] == [True, False, True]
    counting = CountingStore(store)
    report = apply_snapshot(target, m2, counting, base=m1)  # type: ignore[arg-type]
    new_block = digest_of(bytes(data[changed_index * BS:(changed_index + 1) * BS]))
    assert sorted(counting.gets) == sorted([m2.pages[1], m1.pages[1], new_block])
    assert report.blocks_written == 2 and report.bytes_written == 2 * BS
    assert target.read_bytes() == bytes(data)
    # Same snapshot as base: nothing visited, nothing written.
    counting.gets.clear()
    assert apply_snapshot(target, m2, counting, base=m2).blocks_written == 0  # type: ignore[arg-type]
    assert counting.gets == []


@pytest.mark.parametrize("new_size", [
    3 * PAGE_BYTES + 3 * BS + 77,   # grow by a page and a bit, short last block
    PAGE_BYTES + 100 * BS + 1,      # shrink to a page and a bit, one-byte last block
    2 * PAGE_BYTES - 1,             # one byte less than a full size: the last block is short
    2 * PAGE_BYTES + BS,            # one more full block
])
@pytest.mark.parametrize("old_size", [2 * PAGE_BYTES, 2 * PAGE_BYTES - 100])
@pytest.mark.parametrize("with_base", [True, False])
async def test_apply_size_changes(tmp_path: Path, store: ChunkStore, new_size: int, old_size: int,
                                  with_base: bool) -> None:
    rng = random.Random(new_size)
    img = tmp_path / "vol.img"
    old = make_image(rng, old_size, data_every=5)
    img.write_bytes(old)
    m1 = await snap(img, store, 1)
    target = tmp_path / "standby.img"
    apply_snapshot(target, m1, store)
    new = make_image(rng, new_size, data_every=9)
    new[: min(len(old), new_size) // 2] = old[: min(len(old), new_size) // 2]  # keep the first half
    img.write_bytes(new)
    m2 = await snap(img, store, 2, parent=m1)
    report = apply_snapshot(target, m2, store, base=m1 if with_base else None)
    assert target.stat().st_size == new_size
    assert target.read_bytes() == bytes(new)
    assert report.blocks_total == m2.n_blocks
    # Never fewer writes than blocks whose bytes really differ; without a base, exactly those
    # (with a base, zero blocks past the base's end are rewritten although the file already
    # reads as zeros there).
    truly_different = differing_blocks(bytes(old[:new_size]), bytes(new))
    if with_base:
        assert report.blocks_written >= len(truly_different)
    else:
        assert report.blocks_written == len(truly_different)
    assert verify_image(target, m2) == m2.root


async def test_zero_blocks_are_written_as_zeros(tmp_path: Path, store: ChunkStore) -> None:
    img = tmp_path / "vol.img"
    img.write_bytes(bytes(10 * BS + 9))
    m = await snap(img, store, 1)
    assert m.stats["zero_blocks"] == m.n_blocks == 11
    target = tmp_path / "standby.img"
    target.write_bytes(b"\xAA" * (12 * BS))
    report = apply_snapshot(target, m, store)
    assert target.read_bytes() == bytes(10 * BS + 9)
    assert report.blocks_written == 11 and report.bytes_written == 10 * BS + 9


async def test_missing_chunk_is_not_found(tmp_path: Path, store: ChunkStore) -> None:
    img = tmp_path / "vol.img"
    img.write_bytes(make_image(random.Random(5), 20 * BS))
    m = await snap(img, store, 1)
    with ChunkStore(tmp_path / "empty") as empty, pytest.raises(NotFoundError):
        apply_snapshot(tmp_path / "restored.img", m, empty)


async def test_corrupt_chunk_in_pack_raises_integrity_error_with_its_digest(tmp_path: Path,
                                                                          store: ChunkStore) -> None:
    rng = random.Random(6)
    img = tmp_path / "vol.img"
    data = make_image(rng, 40 * BS)
    img.write_bytes(data)
    m = await snap(img, store, 1)
    victim = bytes(data[7 * BS:8 * BS])      # random bytes: stored raw (lz4 does not shrink them)
    packs = sorted((tmp_path / "store" / "packs").glob("*.pack"))
    hits = [(p, p.read_bytes().find(victim)) for p in packs if victim in p.read_bytes()]
    assert len(hits) == 1
    pack, offset = hits[0]
    with open(pack, "r+b") as fh:
        fh.seek(offset + 100)
        byte = fh.read(1)
        fh.seek(offset + 100)
        fh.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(IntegrityError) as info:
        apply_snapshot(tmp_path / "restored.img", m, store)
    assert info.value.evidence["digest"] == digest_of(victim).hex()


async def test_base_with_another_block_size_is_not_trusted_block_by_block(tmp_path: Path,
                                                                         store: ChunkStore) -> None:
    """A standby holding an 8 KiB-block snapshot, re-applied from a 4 KiB-block snapshot."""
    rng = random.Random(7)
    old = rng.randbytes(8192) + bytes(8192)             # 8 KiB blocks: [data, zero]
    img = tmp_path / "vol.img"
    img.write_bytes(old)
    m_old = await snap(img, store, 1, block_size=8192)
    target = tmp_path / "standby.img"
    apply_snapshot(target, m_old, store)
    new = old[:4096] + bytes(12288)                     # 4 KiB blocks: [data, zero, zero, zero]
    img.write_bytes(new)
    m_new = await snap(img, store, 2, block_size=4096)
    try:
        apply_snapshot(target, m_new, store, base=m_old)
    finally:
        result = target.read_bytes()
    assert result == new, "block 1 (bytes 4096..8191) left as the old data"


# ----------------------------------------------------------------------------- verify_image


async def test_verify_image_detects_one_changed_byte(tmp_path: Path, store: ChunkStore) -> None:
    rng = random.Random(8)
    img = tmp_path / "vol.img"
    img.write_bytes(make_image(rng, 3 * PAGE_BYTES + 40))
    m = await snap(img, store, 1)
    target = tmp_path / "restored.img"
    apply_snapshot(target, m, store)
    assert verify_image(target, m) == m.root
    assert image_manifest(target, m) == m
    for offset, page in ((PAGE_BYTES + 12345, 1), (3 * PAGE_BYTES + 39, 3), (0, 0)):
        good = target.read_bytes()
        with open(target, "r+b") as fh:
            fh.seek(offset)
            fh.write(bytes([good[offset] ^ 0x40]))
        with pytest.raises(RestoreVerifyError) as info:
            verify_image(target, m)
        evidence = info.value.evidence
        assert evidence["first_differing_page"] == page
        assert evidence["expected_root"] == m.root.hex() and evidence["actual_root"] != m.root.hex()
        target.write_bytes(good)
    assert verify_image(target, m) == m.root


async def test_verify_image_refuses_a_shorter_image(tmp_path: Path, store: ChunkStore) -> None:
    img = tmp_path / "vol.img"
    img.write_bytes(make_image(random.Random(9), 50 * BS + 3))
    m = await snap(img, store, 1)
    short = tmp_path / "short.img"
    short.write_bytes(img.read_bytes()[:-1])
    with pytest.raises(RestoreVerifyError):
        verify_image(short, m)
    # A longer image (e.g. a bigger device) holds the snapshot in its first size_bytes bytes.
    longer = tmp_path / "longer.img"
    shutil.copyfile(img, longer)
    with open(longer, "ab") as fh:
        fh.write(b"tail")
    assert verify_image(longer, m) == m.root


# ----------------------------------------------------------------------------- digest_region


@st.composite
def zero_run_data(draw: st.DrawFn) -> tuple[bytes, int]:
    block_size = draw(st.sampled_from([4096, 8192, 16384, 32768, 65536]))
    out = bytearray()
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            out += bytes(draw(st.integers(1, 2 * block_size)))
        else:
            seed = draw(st.integers(0, 2**32))
            n = draw(st.integers(1, 2 * block_size))
            out += random.Random(seed).randbytes(n)
        if draw(st.booleans()):  # a lone non-zero byte near a block edge
            out += b"\x01"
    return bytes(out), block_size


@settings(max_examples=80, deadline=None)
@given(zero_run_data())
def test_digest_region_agrees_with_digest_of_block_by_block(case: tuple[bytes, int]) -> None:
    data, block_size = case
    got = digest_region(data, block_size)
    assert len(got) == -(-len(data) // block_size)
    for index, digest in enumerate(got):
        block = data[index * block_size:(index + 1) * block_size]
        expected = ZERO_DIGEST if not any(block) else digest_of(block)
        assert digest == expected
        assert expected == ZERO_DIGEST or expected == blake3.blake3(block).digest()


# ----------------------------------------------------------------------------- holes in the re-read


@st.composite
def sparse_layout(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, bytes]]]:
    """(block size, file size, writes at offsets): data islands at any alignment, holes between."""
    block_size = draw(st.sampled_from([4096, 8192, 65536]))
    size = draw(st.integers(1, 24 * block_size))
    writes = []
    for _ in range(draw(st.integers(0, 6))):
        off = draw(st.integers(0, size - 1))
        n = draw(st.integers(1, min(3 * block_size, size - off)))
        writes.append((off, random.Random(draw(st.integers(0, 2**32))).randbytes(n)))
    return block_size, size, writes


@settings(max_examples=60, deadline=None)
@given(sparse_layout())
def test_the_re_read_skips_holes_and_agrees_with_a_full_read(tmp_path_factory: pytest.TempPathFactory,
                                                             case: tuple[int, int, list[tuple[int, bytes]]]) -> None:
    """image_manifest of a sparse file (holes found by SEEK_DATA/SEEK_HOLE, not read) equals
    the manifest built from every byte of it read as a whole."""
    block_size, size, writes = case
    path = tmp_path_factory.mktemp("sparse") / "img"
    with open(path, "wb") as fh:
        fh.truncate(size)
        for off, data in writes:
            fh.seek(off)
            fh.write(data)
    whole = path.read_bytes()
    assert len(whole) == size
    pages = tuple(digest_of(p) for p in pages_from_digests(digest_region(whole, block_size)))
    like = Manifest(volume="v", seq=1, epoch=1, parent_seq=None, created_at_ns=NOW_NS, size_bytes=size,
                    block_size=block_size, pages=pages)
    assert image_manifest(path, like).pages == pages


# ----------------------------------------------------------------------------- direct I/O


def _direct_case(tmp_path: Path) -> tuple[Path, bytearray, int]:
    """A 4 KiB-block image (O_DIRECT-able) of 6197 blocks (two format-1 pages, 13 of 512) and a
    short last block: runs of data longer than one write run, zero blocks inside runs, and holes."""
    bs = 4096
    rng = random.Random(9)
    size = V1_PAGE_ENTRIES * bs + 2100 * bs + 1234
    data = bytearray(size)
    for start, n in ((0, 2500), (3000, 7), (4094, 5), (5000, 1000), (6195, 1)):  # blocks
        off = start * bs
        data[off:off + n * bs] = rng.randbytes(min(n * bs, size - off))
    data[10 * bs:11 * bs] = bytes(bs)  # a zero block inside a data run
    img = tmp_path / "vol.img"
    with open(img, "wb") as fh:  # sparse: zero spans stay holes
        fh.truncate(size)
        for off in range(0, size, bs):
            block = data[off:off + bs]
            if any(block):
                fh.seek(off)
                fh.write(block)
    return img, data, bs


@pytest.mark.parametrize("direct", [True, False])
async def test_direct_and_buffered_restores_write_the_same_bytes(tmp_path: Path, store: ChunkStore,
                                                                direct: bool) -> None:
    """Into a new file and over a differing one, with and without O_DIRECT: byte-identical
    results and the snapshot's root on the re-read (which also runs both ways)."""
    img, data, bs = _direct_case(tmp_path)
    m = await snap(img, store, 1, block_size=bs)
    fresh = tmp_path / "fresh.img"
    apply_snapshot(fresh, m, store, direct=direct)
    assert fresh.read_bytes() == bytes(data)
    assert verify_image(fresh, m, direct=direct) == m.root
    assert verify_image(fresh, m, direct=not direct) == m.root
    old = bytearray(data)
    for index in (0, 1, 9, 10, 2499, 4095, 4096, 5999, m.n_blocks - 1):
        old[index * bs + 3] ^= 0x5A
    over = tmp_path / "over.img"
    over.write_bytes(old)
    report = apply_snapshot(over, m, store, direct=direct)
    assert report.blocks_written == 9
    assert over.read_bytes() == bytes(data)
    corrupt = bytearray(data)
    corrupt[7 * bs] ^= 1
    over.write_bytes(corrupt)
    with pytest.raises(RestoreVerifyError):
        verify_image(over, m, direct=direct)


def test_direct_io_is_not_tried_for_block_sizes_it_cannot_align(tmp_path: Path) -> None:
    """open_direct: None for a block size that is not a multiple of DIRECT_ALIGN (such
    restores, like every BS=256 test above, go through the page cache); an fd otherwise."""
    path = tmp_path / "f.img"
    path.write_bytes(bytes(8192))
    assert open_direct(path, os.O_RDONLY, 256) is None
    fd = open_direct(path, os.O_RDONLY, 4096)
    assert fd is not None
    os.close(fd)


async def test_a_block_device_smaller_than_the_snapshot_is_refused_before_any_write(tmp_path: Path,
                                                                                 store: ChunkStore) -> None:
    """A loop device of 1 MiB as the target of a 2 MiB snapshot: UsageError naming both sizes,
    and the device's bytes untouched (before, the first MiB was overwritten and the error
    blamed a full /dev)."""
    import subprocess
    from replicad.core.errors import UsageError
    img = tmp_path / "vol.img"
    img.write_bytes(random.Random(21).randbytes(2 * 2**20))
    m = await snap(img, store, 1, block_size=4096)
    backing = tmp_path / "dev.img"
    backing.write_bytes(b"\xa5" * 2**20)
    res = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        pytest.skip(f"no loop device here: {res.stderr.strip()}")
    dev = Path(res.stdout.strip())
    try:
        with pytest.raises(UsageError) as info:
            apply_snapshot(dev, m, store)
        assert "smaller than the snapshot" in str(info.value)
    finally:
        subprocess.run(["losetup", "-d", str(dev)], check=False, timeout=30)
    assert backing.read_bytes() == b"\xa5" * 2**20


async def test_check_image_range_finds_flipped_blocks_in_bounded_steps(tmp_path: Path, store: ChunkStore) -> None:
    rng = random.Random(31)
    src = tmp_path / "src.img"
    src.write_bytes(make_image(rng, 3 * PAGE_BYTES + 5 * BS, data_every=3))
    m = await snap(src, store, 1)
    img = tmp_path / "standby.img"
    shutil.copyfile(src, img)
    data = bytearray(img.read_bytes())
    flipped = [3, PAGE_ENTRIES + 7, 2 * PAGE_ENTRIES + 1]  # data blocks (every 3rd) and a zero block (+1, +7)
    for b in flipped:
        data[b * BS + 17] ^= 0x01
    img.write_bytes(data)
    found: list[int] = []
    pos, steps = 0, 0
    while pos < m.n_blocks:  # 1000 blocks per step: a pass spans several pages
        res = check_image_range(img, m, store, pos, 1000 * BS)
        assert res.first_block == pos and res.next_block - pos <= 1000
        found.extend(res.bad_blocks)
        pos, steps = res.next_block, steps + 1
    assert found == flipped and steps == -(-m.n_blocks // 1000)
    assert check_image_range(src, m, store, 0, m.size_bytes).bad_blocks == ()


async def test_rewrite_all_trusts_nothing_the_target_holds(tmp_path: Path, store: ChunkStore) -> None:
    rng = random.Random(32)
    src = tmp_path / "src.img"
    src.write_bytes(make_image(rng, 2 * PAGE_BYTES, data_every=4))
    m = await snap(src, store, 1)
    img = tmp_path / "standby.img"
    damaged = bytearray(src.read_bytes())
    damaged[4 * BS] ^= 0xFF       # a data block
    damaged[5 * BS + 3] = 0x7F    # a zero block
    img.write_bytes(damaged)
    # a base that claims the target already holds m: the trusting apply writes nothing, O5 fails
    assert apply_snapshot(img, m, store, base=m).blocks_written == 0
    with pytest.raises(RestoreVerifyError):
        verify_image(img, m)
    rep = apply_snapshot(img, m, store, base=m, rewrite_all=True)
    assert rep.blocks_written == sum(1 for i in range(m.n_blocks) if i % 4 == 0)  # every non-zero block
    assert img.read_bytes() == src.read_bytes() and verify_image(img, m) == m.root
