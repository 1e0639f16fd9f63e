"""Pull.ensure_snapshot over a snapshot this site holds completely (replicad.site.runner.complete_base),
with real chunk stores, a real catalog and a real holder (aiohttp on loopback): only the blocks that
differ from the base are looked up here, a changed block's chunk is fetched or, if no holder has it,
the snapshot is refused; with no base (no record, or repairs pending) every block is looked up and
an unchanged block's lost chunk is fetched again."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from replicad.core.errors import NotFoundError, PeerUnavailableError
from replicad.core.manifest import Manifest, changed_digests, iter_block_digests
from replicad.peer.transport import PeerClient
from replicad.site.pull import Pull
from replicad.sources.file import take_snapshot
from replicad.storage.catalog import Catalog, SnapshotRecord
from replicad.storage.chunkstore import ChunkStore
from tests.unit.site.test_pull_stall import Holder

pytestmark = pytest.mark.timeout(60)

VOL = "ehr"
BLOCK = 4096
N_BLOCKS = 600  # one manifest page
CHANGED = (5, 300, 599)


@pytest.fixture
def catalog(tmp_path: Path):
    c = Catalog(tmp_path / "catalog.db")
    yield c
    c.close()


class CountingStore(ChunkStore):
    """A real store that counts the digests asked of :meth:`missing` (each one is an index lookup)."""

    looked_up = 0

    def missing(self, digests):
        digests = list(digests)
        self.looked_up += len(digests)
        return super().missing(digests)


async def _two_snapshots(tmp_path: Path, src: ChunkStore) -> tuple[Manifest, Manifest]:
    """#1 of random blocks, #2 with CHANGED rewritten, both stored in ``src``."""
    rng = random.Random(21)
    img = tmp_path / "v.img"
    img.write_bytes(rng.randbytes(N_BLOCKS * BLOCK))
    m1 = (await take_snapshot(img, volume=VOL, seq=1, epoch=1, parent=None, store=src, now_ns=1,
                              block_size=BLOCK)).manifest
    with open(img, "r+b") as fh:
        for i in CHANGED:
            fh.seek(i * BLOCK)
            fh.write(rng.randbytes(BLOCK))
    m2 = (await take_snapshot(img, volume=VOL, seq=2, epoch=1, parent=m1, store=src, now_ns=2,
                              block_size=BLOCK)).manifest
    return m1, m2


def _pull(session: aiohttp.ClientSession, here: ChunkStore, catalog: Catalog, holder_url: str, m2: Manifest) -> Pull:
    vs = {"epoch": 1, "snapshots": {2: {"root": m2.root, "holders": ["site-b"], "epoch": 1, "created_at_ns": 2}}}
    sites = [SimpleNamespace(site_id="site-b", peer_url=holder_url)]
    cluster = SimpleNamespace(site_id="site-a", peer_url={"site-b": holder_url}.__getitem__,
                              cfg=lambda: SimpleNamespace(sites=sites), volume_state=lambda v: vs if v == VOL else None)
    return Pull(cluster, here, catalog, PeerClient(session, "site-a"))


def _hold_base(src: ChunkStore, here: ChunkStore, catalog: Catalog, m1: Manifest) -> None:
    """``here`` holds #1 completely and records it (as a pull or a receive would)."""
    digests = {m1.root, *m1.pages, *iter_block_digests(m1, src.get)}
    here.put_encoded([(d, *src.get_encoded(d)) for d in digests])
    catalog.put(SnapshotRecord(VOL, 1, 1, m1.root, "committed", 1))


async def test_over_a_complete_base_only_the_changed_blocks_are_looked_up_and_fetched(tmp_path: Path,
                                                                                       catalog: Catalog) -> None:
    with ChunkStore(tmp_path / "b") as src, CountingStore(tmp_path / "here") as here:
        m1, m2 = await _two_snapshots(tmp_path, src)
        assert len(changed_digests(m1, m2, src.get)) == len(CHANGED)
        _hold_base(src, here, catalog, m1)
        async with Holder(src, "site-b") as holder, aiohttp.ClientSession() as session:
            pull = _pull(session, here, catalog, holder.url, m2)
            here.looked_up = 0
            assert (await pull.ensure_snapshot(VOL, 2)).root == m2.root
            # the root and the page (before and after their fetch, the check), the changed blocks
            # (need, before and after their fetch, the check): 17 here; without a base >= 1,200
            assert here.looked_up <= 5 * (len(m2.pages) + len(CHANGED)) + 2, here.looked_up
            assert here.missing(iter_block_digests(m2, here.get)) == []  # the changed chunks were fetched
            assert catalog.find_root(VOL, m2.root).state == "committed"


async def test_a_changed_chunk_no_holder_has_is_refused_over_a_base(tmp_path: Path, catalog: Catalog) -> None:
    with ChunkStore(tmp_path / "b") as src, ChunkStore(tmp_path / "here") as here:
        m1, m2 = await _two_snapshots(tmp_path, src)
        _hold_base(src, here, catalog, m1)
        gone = changed_digests(m1, m2, src.get)[1]
        src.delete_corrupt(gone)  # the holder lost it too
        async with Holder(src, "site-b") as holder, aiohttp.ClientSession() as session:
            pull = _pull(session, here, catalog, holder.url, m2)
            with pytest.raises((NotFoundError, PeerUnavailableError)):  # this holder fails the fetch
                await pull.ensure_snapshot(VOL, 2)
            assert catalog.find_root(VOL, m2.root) is None  # not recorded as complete


@pytest.mark.parametrize("why", ["no record", "repairs pending"])
async def test_without_a_complete_base_every_block_is_looked_up(tmp_path: Path, catalog: Catalog, why: str) -> None:
    """No catalog record of #1, or one while the store has repairs pending (an unchanged block's
    chunk was dropped as corrupt here): every block of #2 is looked up, and that chunk is
    fetched again (a base would have trusted it)."""
    with ChunkStore(tmp_path / "b") as src, CountingStore(tmp_path / "here") as here:
        m1, m2 = await _two_snapshots(tmp_path, src)
        _hold_base(src, here, catalog, m1)
        unchanged = next(iter_block_digests(m1, src.get))
        if why == "no record":
            catalog.delete(VOL, 1, 1)
        else:
            here.delete_corrupt(unchanged)
            assert here.repairs_pending == 1
        async with Holder(src, "site-b") as holder, aiohttp.ClientSession() as session:
            pull = _pull(session, here, catalog, holder.url, m2)
            here.looked_up = 0
            assert (await pull.ensure_snapshot(VOL, 2)).root == m2.root
            assert here.looked_up >= 2 * N_BLOCKS, here.looked_up  # the need walk and the completeness check
            assert here.missing(iter_block_digests(m2, here.get)) == []
