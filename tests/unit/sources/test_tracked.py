"""The tracked build (:func:`replicad.sources.tracked.tracked_snapshot`) from a parent of another
page geometry: a format-1 manifest (4096-entry pages, written before the upgrade) followed by the
first format-2 one (512-entry pages). Real files and a real chunk store; the reference is a full
scan of the same file in the new geometry."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from replicad.core.manifest import DEFAULT_PAGE_ENTRIES, V1_PAGE_ENTRIES, ZERO_DIGEST, iter_block_digests
from replicad.sources.file import take_snapshot
from replicad.sources.tracked import PageCache, same_blocks, tracked_snapshot
from replicad.storage.chunkstore import ChunkStore

BS = 4096
NOW_NS = 1_800_000_000_000_000_000


def _runs(blocks: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for b in sorted(blocks):
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out


@pytest.mark.parametrize("resize", [0, 3000 * BS + 100, -(1500 * BS + 7)], ids=["same", "grown", "shrunk"])
@pytest.mark.parametrize("cached", [False, True], ids=["store", "cache"])
def test_tracked_build_from_a_format_1_parent_equals_a_full_scan(tmp_path: Path, resize: int, cached: bool) -> None:
    """Scattered writes, zeroed blocks, a grown or shrunk end: the first tracked manifest after
    the upgrade has 512-entry pages, lists exactly the digests a full scan of the same file
    gives (same pages, same stats but new_chunks), and the next tracked cycle (same geometry
    now) does too."""
    rng = random.Random(resize + cached)
    img = tmp_path / "vol.img"
    n = 2 * V1_PAGE_ENTRIES + 1234  # three format-1 pages, the last one partial
    data = bytearray(n * BS + 555)  # a short last block
    for b in rng.sample(range(n), 900):
        data[b * BS:(b + 1) * BS] = rng.randbytes(BS)
    img.write_bytes(data)

    async def run() -> None:
        with ChunkStore(tmp_path / "store") as store:
            cache = PageCache() if cached else None
            pages_out: dict[bytes, bytes] = {}
            v1 = (await take_snapshot(img, volume="ehr", seq=1, epoch=1, parent=None, store=store, now_ns=NOW_NS,
                                      block_size=BS, page_entries=V1_PAGE_ENTRIES, pages_out=pages_out)).manifest
            assert v1.page_entries == V1_PAGE_ENTRIES and len(v1.pages) == 3
            if cache is not None:
                cache.replace(v1.pages, pages_out)
            changed = set(rng.sample(range(n), 40)) | {0, 511, 512, V1_PAGE_ENTRIES - 1, V1_PAGE_ENTRIES}
            for b in changed:
                data[b * BS:(b + 1) * BS] = bytes(BS) if b % 3 == 0 else rng.randbytes(BS)
            if resize > 0:
                data.extend(bytes(resize))
                data[-BS:] = rng.randbytes(BS)  # data in the grown part
                changed |= set(range(n, -(-len(data) // BS)))
            elif resize < 0:
                del data[resize:]
            img.write_bytes(data)
            got = (await tracked_snapshot(img, volume="ehr", seq=2, epoch=1, parent=v1, store=store, now_ns=NOW_NS,
                                          runs=_runs(changed), allow_shrink=True, page_cache=cache)).scan.manifest
            full = (await take_snapshot(img, volume="ehr", seq=2, epoch=1, parent=v1, store=store, now_ns=NOW_NS,
                                        allow_shrink=True)).manifest
            assert got.page_entries == full.page_entries == DEFAULT_PAGE_ENTRIES
            assert same_blocks(got, full) and len(got.pages) == -(-got.n_blocks // DEFAULT_PAGE_ENTRIES)
            assert {k: v for k, v in got.stats.items() if k != "new_chunks"} == \
                {k: v for k, v in full.stats.items() if k != "new_chunks"}
            want = [bytes(32) if not any(data[i:i + BS]) else None for i in range(0, len(data), BS)]
            digests = list(iter_block_digests(got, store.get))
            assert [d == ZERO_DIGEST for d in digests] == [w is not None for w in want]
            # the next cycle: both in the new geometry, pages kept where nothing changed
            b = rng.randrange(got.n_blocks - 1)
            data[b * BS:(b + 1) * BS] = rng.randbytes(BS)
            img.write_bytes(data)
            nxt = (await tracked_snapshot(img, volume="ehr", seq=3, epoch=1, parent=got, store=store, now_ns=NOW_NS,
                                          runs=[(b, 1)], page_cache=cache)).scan.manifest
            full3 = (await take_snapshot(img, volume="ehr", seq=3, epoch=1, parent=got, store=store,
                                         now_ns=NOW_NS)).manifest
            assert same_blocks(nxt, full3)
            assert sum(a != c for a, c in zip(nxt.pages, got.pages)) == 1

    asyncio.run(run())


def test_same_blocks_tells_geometries_apart(tmp_path: Path) -> None:
    img = tmp_path / "vol.img"
    img.write_bytes(random.Random(1).randbytes(600 * BS))

    async def run() -> None:
        with ChunkStore(tmp_path / "store") as store:
            a = (await take_snapshot(img, volume="ehr", seq=1, epoch=1, parent=None, store=store, now_ns=1,
                                     block_size=BS, page_entries=V1_PAGE_ENTRIES)).manifest
            b = (await take_snapshot(img, volume="ehr", seq=1, epoch=1, parent=None, store=store, now_ns=1,
                                     block_size=BS)).manifest
            assert list(iter_block_digests(a, store.get)) == list(iter_block_digests(b, store.get))
            assert not same_blocks(a, b) and same_blocks(b, b)

    asyncio.run(run())
