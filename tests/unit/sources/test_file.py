"""The file snapshot source: real files, real hooks, real chunk store."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from replicad.storage.chunkstore import ChunkStore
from replicad.core.errors import NotFoundError, SourceShrunkError, ToolError, UsageError
from replicad.core.manifest import DEFAULT_PAGE_ENTRIES, V1_PAGE_ENTRIES, ZERO_DIGEST, Manifest, diff, iter_block_digests
from replicad.sources.file import ScanResult, take_snapshot

NOW_NS = 1_800_000_000_000_000_000


def text(rng: random.Random, size: int) -> bytes:
    words = [b"select", b"from", b"patients", b"where", b"id", b"=", b"42;", b"\n"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def write_blocks(path: Path, index: int, data: bytes, block_size: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(index * block_size)
        fh.write(data)


def expected_digests(path: Path, block_size: int) -> list[bytes]:
    data = path.read_bytes()
    out = []
    for off in range(0, len(data), block_size):
        block = data[off:off + block_size]
        out.append(ZERO_DIGEST if not any(block) else blake3.blake3(block).digest())
    return out


def rebuild(store: ChunkStore, m: Manifest) -> bytes:
    out = bytearray()
    for i, d in enumerate(iter_block_digests(m, store.get)):
        out += bytes(m.block_len(i)) if d == ZERO_DIGEST else store.get(d)
    return bytes(out)


async def snap(path: Path, store: ChunkStore, seq: int, parent: Manifest | None,
               **kw: object) -> ScanResult:
    return await take_snapshot(path, volume="pacs", seq=seq, epoch=2, parent=parent,
                               store=store, now_ns=NOW_NS + seq, **kw)


@pytest.fixture
def store(tmp_path: Path):
    with ChunkStore(tmp_path / "store") as s:
        yield s


async def test_second_snapshot_reports_exactly_the_changed_blocks(tmp_path: Path,
                                                                  store: ChunkStore) -> None:
    rng = random.Random(1)
    bs = 4096
    img = tmp_path / "vol.img"
    data = bytearray()
    for i in range(300):
        data += bytes(bs) if i % 4 == 0 else text(rng, bs)
    img.write_bytes(bytes(data))
    first = await snap(img, store, 1, None, block_size=bs, read_size_bytes=64 * 1024)
    m1 = first.manifest
    assert m1.n_blocks == 300 and m1.parent_seq is None and m1.block_size == bs
    assert list(iter_block_digests(m1, store.get)) == expected_digests(img, bs)
    assert first.changed_blocks == [i for i in range(300) if i % 4]
    assert m1.stats["zero_blocks"] == 75 and m1.stats["has_parent"] == 0
    assert not store.has(blake3.blake3(bytes(bs)).digest())  # zero blocks never stored
    assert Manifest.decode(store.get(m1.root)) == m1  # stored under its root

    changes = {3: text(rng, bs), 4: text(rng, bs), 17: bytes(bs), 250: rng.randbytes(bs)}
    for i, block in changes.items():
        write_blocks(img, i, block, bs)
    second = await snap(img, store, 2, m1, read_size_bytes=64 * 1024)
    m2 = second.manifest
    assert second.changed_blocks == sorted(changes)
    assert second.changed_blocks == diff(m1, m2, store.get)
    assert m2.parent_seq == 1 and m2.stats["changed_blocks"] == 4
    assert m2.stats["changed_bytes"] == 4 * bs and m2.stats["has_parent"] == 1
    assert m2.stats["random_changed_blocks"] == 1
    assert second.new_chunk_count == m2.stats["new_chunks"] == 3 + 1  # 3 blocks + 1 page
    assert rebuild(store, m2) == img.read_bytes()

    third = await snap(img, store, 3, m2)
    assert third.changed_blocks == [] and third.manifest.pages == m2.pages
    assert third.new_chunk_count == 0


@pytest.mark.parametrize("geometries", [(DEFAULT_PAGE_ENTRIES, DEFAULT_PAGE_ENTRIES),
                                        (V1_PAGE_ENTRIES, V1_PAGE_ENTRIES),
                                        (V1_PAGE_ENTRIES, DEFAULT_PAGE_ENTRIES)], ids=["new", "format1", "upgrade"])
async def test_multi_page_volume_with_small_batches(tmp_path: Path, store: ChunkStore,
                                                    geometries: tuple[int, int]) -> None:
    """Batches that do not align with pages; the parent in the same page geometry or in format
    1's (the first scan after an upgrade reads the parent's digests in its own geometry)."""
    rng = random.Random(2)
    bs = 512
    n = 2 * 4096 + 300
    img = tmp_path / "big.img"
    img.write_bytes(b"".join(text(rng, bs) if i % 3 else bytes(bs) for i in range(n)))
    m1 = (await snap(img, store, 1, None, block_size=bs, read_size_bytes=61 * bs, page_entries=geometries[0])).manifest
    assert len(m1.pages) == -(-n // geometries[0]) and m1.page_entries == geometries[0]
    changed = sorted(rng.sample(range(n), 25))
    for i in changed:
        write_blocks(img, i, rng.randbytes(bs), bs)
    res = await snap(img, store, 2, m1, read_size_bytes=1000 * bs, page_entries=geometries[1])
    assert res.manifest.page_entries == geometries[1]
    assert res.changed_blocks == changed == diff(m1, res.manifest, store.get)
    assert list(iter_block_digests(res.manifest, store.get)) == expected_digests(img, bs)


async def test_grown_file_with_short_last_block(tmp_path: Path, store: ChunkStore) -> None:
    rng = random.Random(3)
    bs = 4096
    img = tmp_path / "grow.img"
    img.write_bytes(text(rng, 10 * bs + 100))
    m1 = (await snap(img, store, 1, None, block_size=bs)).manifest
    assert m1.n_blocks == 11 and m1.size_bytes == 10 * bs + 100
    assert rebuild(store, m1) == img.read_bytes()
    with open(img, "ab") as fh:
        fh.write(text(rng, bs - 100))  # completes block 10
        fh.write(bytes(2 * bs))  # blocks 11, 12: zeros
        fh.write(text(rng, bs))  # block 13
    res = await snap(img, store, 2, m1)
    assert res.manifest.n_blocks == 14
    assert res.changed_blocks == [10, 13] == diff(m1, res.manifest, store.get)
    assert rebuild(store, res.manifest) == img.read_bytes()


async def test_empty_file(tmp_path: Path, store: ChunkStore) -> None:
    img = tmp_path / "empty.img"
    img.write_bytes(b"")
    res = await snap(img, store, 1, None)
    assert res.manifest.n_blocks == 0 and res.manifest.pages == ()
    assert store.has(res.manifest.root)


async def test_hooks_run_around_the_read(tmp_path: Path, store: ChunkStore) -> None:
    img = tmp_path / "v.img"
    img.write_bytes(b"x" * 10_000)
    log = tmp_path / "hooks.log"
    hook = [sys.executable, "-c", f"import sys; open({str(log)!r}, 'a').write(sys.argv[1])"]
    res = await snap(img, store, 1, None, pre_snapshot=hook + ["pre,"],
                     post_snapshot=hook + ["post"])
    assert log.read_text() == "pre,post"
    assert store.has(res.manifest.root)


async def test_failing_pre_hook_raises_tool_error_and_still_runs_post(
        tmp_path: Path, store: ChunkStore) -> None:
    img = tmp_path / "v.img"
    img.write_bytes(b"x" * 10_000)
    thawed = tmp_path / "thawed"
    with pytest.raises(ToolError) as info:
        await snap(img, store, 1, None,
                   pre_snapshot=["sh", "-c", "echo 'fsfreeze: cannot freeze' >&2; exit 3"],
                   post_snapshot=["touch", str(thawed)])
    err = info.value
    assert err.evidence["returncode"] == 3 and err.evidence["hook"] == "pre_snapshot"
    assert "cannot freeze" in err.evidence["stderr_tail"]
    assert err.evidence["command"][0] == "sh"
    assert thawed.exists()
    assert store.stats()["chunks"] == 0


async def test_post_hook_runs_when_the_scan_fails(tmp_path: Path, store: ChunkStore) -> None:
    thawed = tmp_path / "thawed"
    with pytest.raises(NotFoundError):
        await snap(tmp_path / "missing.img", store, 1, None,
                   post_snapshot=["touch", str(thawed)])
    assert thawed.exists()


async def test_failing_post_hook_and_unstartable_hook(tmp_path: Path, store: ChunkStore) -> None:
    img = tmp_path / "v.img"
    img.write_bytes(b"x" * 10_000)
    with pytest.raises(ToolError) as info:
        await snap(img, store, 1, None, post_snapshot=["false"])
    assert info.value.evidence["hook"] == "post_snapshot"
    with pytest.raises(ToolError):
        await snap(img, store, 1, None, pre_snapshot=[str(tmp_path / "no-such-hook")])
    with pytest.raises(UsageError):
        await snap(img, store, 1, None, pre_snapshot="fsfreeze -f /mnt")  # type: ignore[arg-type]


async def test_hook_timeout_kills_the_hook(tmp_path: Path, store: ChunkStore) -> None:
    img = tmp_path / "v.img"
    img.write_bytes(b"x" * 100)
    with pytest.raises(ToolError) as info:
        await snap(img, store, 1, None, pre_snapshot=["sleep", "30"], hook_timeout_s=0.2)
    assert "timed out" in info.value.message


async def test_parent_block_size_wins_and_other_volume_is_refused(
        tmp_path: Path, store: ChunkStore) -> None:
    img = tmp_path / "v.img"
    img.write_bytes(text(random.Random(4), 50_000))
    m1 = (await snap(img, store, 1, None, block_size=8192)).manifest
    m2 = (await snap(img, store, 2, m1, block_size=4096)).manifest
    assert m2.block_size == 8192
    with pytest.raises(UsageError):
        await take_snapshot(img, volume="other", seq=3, epoch=1, parent=m2, store=store,
                            now_ns=NOW_NS)


async def test_event_loop_keeps_running_during_a_64_mib_scan(tmp_path: Path,
                                                             store: ChunkStore) -> None:
    rng = random.Random(5)
    img = tmp_path / "big.img"
    chunk = text(rng, 2**20)
    with open(img, "wb") as fh:
        for i in range(64):
            fh.write(rng.randbytes(2**20) if i % 2 else chunk[i:] + chunk[:i])
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        res = await snap(img, store, 1, None)
    finally:
        done.set()
        await task
    assert res.manifest.n_blocks == 1024
    # 8 batches of 8 MiB: a scan hashing on the loop would let the ticker in a few dozen
    # times at most; hashing in worker threads lets it run continuously.
    assert ticks > 400, ticks


async def test_block_device_size_comes_from_seeking(tmp_path: Path, store: ChunkStore) -> None:
    img = tmp_path / "dev.img"
    img.write_bytes(text(random.Random(6), 1 << 20))
    res = subprocess.run(["losetup", "--find", "--show", str(img)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"no loop device: {res.stderr.strip()}")
    dev = Path(res.stdout.strip())
    try:
        m = (await snap(dev, store, 1, None)).manifest
    finally:
        subprocess.run(["losetup", "-d", str(dev)], check=False)
    assert m.size_bytes == 1 << 20
    assert list(iter_block_digests(m, store.get)) == expected_digests(img, 65536)


async def test_snapshot_is_durable_and_readable_after_reopen(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    img.write_bytes(os.urandom(300_000))
    with ChunkStore(tmp_path / "s") as s:
        m = (await snap(img, s, 1, None)).manifest
    with ChunkStore(tmp_path / "s") as s:
        assert Manifest.decode(s.get(m.root)) == m
        assert rebuild(s, m) == img.read_bytes()


def test_a_part_read_past_the_sources_end_is_a_typed_error(tmp_path: Path) -> None:
    """A source that shrank between the size taken at open and the read of a batch part:
    UnavailableError naming the offset where the data ended, never a short (wrong) digest."""
    from replicad.core.errors import UnavailableError
    from replicad.sources.file import _read_hash_part
    bs = 4096
    src = tmp_path / "shrunk.img"
    src.write_bytes(text(random.Random(3), 10 * bs))
    fd = os.open(src, os.O_RDONLY)
    try:
        buffers: list[bytearray | None] = [None]
        part = _read_hash_part(fd, 6 * bs, 4 * bs, buffers, 0, 4 * bs, 6, bs, b"", b"", 0, False, False)
        assert part.digests == b"".join(blake3.blake3(src.read_bytes()[i * bs:(i + 1) * bs]).digest()
                                        for i in range(6, 10))
        with pytest.raises(UnavailableError) as info:
            _read_hash_part(fd, 8 * bs, 4 * bs, buffers, 0, 4 * bs, 8, bs, b"", b"", 0, False, False)
        assert info.value.evidence["offset"] == 10 * bs
    finally:
        os.close(fd)


@pytest.mark.parametrize("new_size", [0, 4 * 4096 - 1])
async def test_a_source_that_shrank_is_refused_before_anything_is_stored(tmp_path: Path, store: ChunkStore,
                                                                       new_size: int) -> None:
    img = tmp_path / "vol.img"
    img.write_bytes(random.Random(3).randbytes(4 * 4096))
    m1 = (await take_snapshot(img, volume="pacs", seq=1, epoch=2, parent=None, store=store, now_ns=1,
                              block_size=4096)).manifest
    chunks = store.stats()
    os.truncate(img, new_size)  # a truncated image, or a 0-byte one
    with pytest.raises(SourceShrunkError) as err:
        await take_snapshot(img, volume="pacs", seq=2, epoch=2, parent=m1, store=store, now_ns=2)
    assert err.value.evidence["size_bytes"] == new_size and err.value.evidence["parent_size_bytes"] == 4 * 4096
    assert err.value.code == "source_shrunk" and store.stats() == chunks
    m2 = (await take_snapshot(img, volume="pacs", seq=2, epoch=2, parent=m1, store=store, now_ns=2,
                              allow_shrink=True)).manifest  # the operator shrank it on purpose
    assert m2.size_bytes == new_size



def test_remove_partial_takes_only_the_temporary_file(tmp_path: Path) -> None:
    """A site killed mid-scan left ``<data>/fingerprints/VOL.fp.tmp`` (chaos kill-mid-write: it was
    still there after the restart); the daemon's start removes it (``remove_partial``, under the
    data dir's lock) and keeps the cache itself."""
    from replicad.storage import fingerprints

    cache = fingerprints.path_for(tmp_path, "ehr")
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"cache")
    partial = cache.with_name("ehr.fp.tmp")
    partial.write_bytes(b"half written")
    assert fingerprints.remove_partial(tmp_path, "ehr") is True
    assert not partial.exists() and cache.read_bytes() == b"cache"
    assert fingerprints.remove_partial(tmp_path, "ehr") is False


def _cold_image(path: Path, size: int) -> int:
    """Write ``size`` bytes of text at ``path``, make it durable and uncached; an fd on it.
    Skips when this host cannot tell or cannot drop cached pages (no cachestat, a tmpfs)."""
    from replicad.sources.file import cached_pages
    path.write_bytes(text(random.Random(7), size))
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    if cached_pages(fd, 0, 0) != 0:
        os.close(fd)
        pytest.skip("cachestat(2) missing or pages not droppable on this file system")
    return fd


async def test_a_private_scan_leaves_none_of_its_pages_cached(tmp_path: Path, store: ChunkStore) -> None:
    from replicad.sources.file import cached_pages
    img = tmp_path / "clone.img"
    fd = _cold_image(img, 8 * 2**20 + 12345)
    try:
        kept = await snap(img, store, 1, None, block_size=4096, read_size_bytes=2**20)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        private = await snap(img, store, 1, None, block_size=4096, read_size_bytes=2**20, private=True)
        assert cached_pages(fd, 0, 0) == 0
        # the same bytes read: the same blocks, whatever the page cache holds afterwards
        want = expected_digests(img, 4096)
        assert list(iter_block_digests(private.manifest, store.get)) == want
        assert list(iter_block_digests(kept.manifest, store.get)) == want
        assert private.manifest.pages == kept.manifest.pages
        assert rebuild(store, private.manifest) == img.read_bytes()
    finally:
        os.close(fd)


async def test_a_live_scan_drops_only_the_batches_nothing_else_had_cached(tmp_path: Path,
                                                                            store: ChunkStore) -> None:
    from replicad.sources.file import READ_SIZE_BYTES, cached_pages
    img = tmp_path / "live.img"
    batch = READ_SIZE_BYTES  # at least the readahead window of the device (8 MiB here)
    fd = _cold_image(img, 4 * batch)
    try:
        parent = (await snap(img, store, 1, None, block_size=4096)).manifest
        assert cached_pages(fd, 0, 0) == 0  # cold before: every batch dropped
        hot = 2 * batch + 8192
        os.pread(fd, 4096, hot)  # the VM's hot page, in the third batch
        res = await snap(img, store, 2, parent, block_size=4096)
        assert res.changed_blocks == [] and res.manifest.pages == parent.pages
        assert cached_pages(fd, hot, 4096) == 1  # still cached, with the rest of its batch
        assert cached_pages(fd, 0, 2 * batch) == 0
        assert cached_pages(fd, 3 * batch, 0) == 0
    finally:
        os.close(fd)


def test_cachestat_is_called_by_its_number_only_where_that_number_is_451() -> None:
    """cachestat(2) is 451 in the common system call table; on alpha (561), MIPS and ia64 (numbered
    by ABI) 451 is another call or none: there the scan asks nothing and drops nothing."""
    from replicad.sources.file import _cachestat_number
    for machine in ("x86_64", "aarch64", "armv7l", "ppc64le", "s390x", "riscv64", "i686", "loongarch64"):
        assert _cachestat_number(machine) == 451, machine
    for machine in ("alpha", "mips", "mips64", "ia64"):
        assert _cachestat_number(machine) is None, machine
