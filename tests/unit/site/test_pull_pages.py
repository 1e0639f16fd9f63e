"""Pull.ensure_pages (a restore into a new file): the manifest and its pages fetched, and how much
of the snapshot this store lacks found without looking up every block of the volume when the
store lost its chunks. Real stores, a real catalog, a real holder on loopback."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from replicad.core.manifest import ZERO_DIGEST, Manifest, iter_block_digests
from replicad.peer.transport import PeerClient
from replicad.site.pull import Pull
from replicad.sources.file import take_snapshot
from replicad.storage.assemble import UNIT_BYTES
from replicad.storage.catalog import Catalog
from replicad.storage.chunkstore import ChunkStore
from tests.unit.site.test_pull_base import CountingStore
from tests.unit.site.test_pull_stall import Holder

pytestmark = pytest.mark.timeout(60)

VOL = "ehr"
BLOCK = 4096
PER_UNIT = UNIT_BYTES // BLOCK          # 2048 blocks of 4 KiB per 8 MiB unit
N_BLOCKS = 2 * PER_UNIT + 900           # three units


@pytest.fixture
def catalog(tmp_path: Path):
    c = Catalog(tmp_path / "catalog.db")
    yield c
    c.close()


async def _snapshot(tmp_path: Path, src: ChunkStore) -> Manifest:
    """#1 of random blocks (every one distinct, none zero), stored in ``src``."""
    img = tmp_path / "v.img"
    img.write_bytes(random.Random(31).randbytes(N_BLOCKS * BLOCK))
    return (await take_snapshot(img, volume=VOL, seq=1, epoch=1, parent=None, store=src, now_ns=1,
                                block_size=BLOCK)).manifest


def _pull(session: aiohttp.ClientSession, here: ChunkStore, catalog: Catalog, holder_url: str, m: Manifest) -> Pull:
    vs = {"epoch": 1, "snapshots": {1: {"root": m.root, "holders": ["site-b"], "epoch": 1, "created_at_ns": 1}}}
    sites = [SimpleNamespace(site_id="site-b", peer_url=holder_url)]
    cluster = SimpleNamespace(site_id="site-a", peer_url={"site-b": holder_url}.__getitem__,
                              cfg=lambda: SimpleNamespace(sites=sites), volume_state=lambda v: vs if v == VOL else None)
    return Pull(cluster, here, catalog, PeerClient(session, "site-a"))


def _copy(src: ChunkStore, here: ChunkStore, digests) -> None:
    here.put_encoded([(d, *src.get_encoded(d)) for d in digests])


async def test_a_store_without_the_chunks_is_not_walked_over_the_whole_volume(tmp_path: Path,
                                                                              catalog: Catalog) -> None:
    """A site whose store lost the snapshot's chunks: the first unit lacks them, so the lookup
    stops there (one unit's 2,048 digests, not the volume's 4,996 as before) and the plan is kept
    for the restore."""
    with ChunkStore(tmp_path / "b") as src, CountingStore(tmp_path / "here") as here:
        m = await _snapshot(tmp_path, src)
        async with Holder(src, "site-b") as holder, aiohttp.ClientSession() as session:
            pull = _pull(session, here, catalog, holder.url, m)
            got, missing = await pull.ensure_pages(VOL, 1)
        assert got.root == m.root and here.has(m.root) and all(here.has(p) for p in m.pages)
        assert missing == PER_UNIT  # the first unit's chunks, every one lacking
        block_lookups = here.looked_up - 2 * (1 + len(m.pages))  # the root and pages: before and after their fetch
        assert block_lookups == PER_UNIT, here.looked_up
        assert len(pull._plans[m.root][0]) == 3  # the plan the restore takes
        assert catalog.find_root(VOL, m.root) is None  # not complete here: not recorded


async def test_one_chunk_missing_in_the_last_unit_is_found(tmp_path: Path, catalog: Catalog) -> None:
    """The stop is only at a unit that lacks something: a store lacking one chunk of the last
    unit looks further and reports it (units looked up in groups 1, 2: every one here)."""
    with ChunkStore(tmp_path / "b") as src, CountingStore(tmp_path / "here") as here:
        m = await _snapshot(tmp_path, src)
        blocks = [d for d in iter_block_digests(m, src.get) if d != ZERO_DIGEST]
        _copy(src, here, [m.root, *m.pages, *blocks[:-1]])
        async with Holder(src, "site-b") as holder, aiohttp.ClientSession() as session:
            pull = _pull(session, here, catalog, holder.url, m)
            here.looked_up = 0
            _got, missing = await pull.ensure_pages(VOL, 1)
        assert missing == 1
        assert here.looked_up - (1 + len(m.pages)) == N_BLOCKS  # the root and pages (here already): once
        assert catalog.find_root(VOL, m.root) is None


async def test_a_complete_store_records_the_snapshot_and_reports_nothing_missing(tmp_path: Path,
                                                                                 catalog: Catalog) -> None:
    with ChunkStore(tmp_path / "b") as src, ChunkStore(tmp_path / "here") as here:
        m = await _snapshot(tmp_path, src)
        _copy(src, here, [m.root, *m.pages, *(d for d in iter_block_digests(m, src.get) if d != ZERO_DIGEST)])
        async with Holder(src, "site-b") as holder, aiohttp.ClientSession() as session:
            pull = _pull(session, here, catalog, holder.url, m)
            got, missing = await pull.ensure_pages(VOL, 1)
        assert (got.root, missing) == (m.root, 0)
        assert catalog.find_root(VOL, m.root).state == "committed"
        assert m.root not in pull._plans
