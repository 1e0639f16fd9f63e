"""Pull.fetch_missing into a chunk store on a full file system (a small tmpfs mounted for the
test), from real holders over loopback: the error is this site's ``store_full`` naming its chunk
store, raised at once (no other holder asked as if the first had failed), not
``peer_unavailable`` "no holder reachable" naming the holders that served every chunk asked."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import aiohttp
import pytest

from replicad.core.errors import StoreFullError
from replicad.site.pull import FETCH_SLICE
from replicad.storage.chunkstore import ChunkStore
from tests.tmpfs import small_tmpfs
from tests.unit.site.test_pull_stall import VOL, Holder, pull_from

pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def full_here(tmp_path: Path, n: int, seed: int):
    """Two holder stores (``b``, ``c``) holding the same ``n`` random 4 KiB blocks, and ``here``,
    empty, on a 256 KiB tmpfs (``n`` x 4 KiB does not fit). Yields ``(need, here, b, c)``."""
    rng = random.Random(seed)
    blocks = [rng.randbytes(4096) for _ in range(n)]
    with small_tmpfs(tmp_path / "small", "256k") as small, contextlib.ExitStack() as stack:
        stores = [stack.enter_context(ChunkStore(tmp_path / name)) for name in "bc"]
        need = [s.put_blocks(blocks) for s in stores][0]
        yield need, stack.enter_context(ChunkStore(small / "chunks")), *stores


@pytest.mark.parametrize("n", [100, 3 * FETCH_SLICE], ids=["holder-after-holder", "parallel"])
async def test_a_full_disk_here_is_store_full_naming_this_sites_chunk_store(tmp_path: Path, n: int) -> None:
    with full_here(tmp_path, n, 21) as (need, here, b, c):
        async with Holder(b, "site-b") as hb, Holder(c, "site-c") as hc:
            async with aiohttp.ClientSession() as session:
                pull = pull_from(session, here, {"site-b": hb.url, "site-c": hc.url})
                with pytest.raises(StoreFullError) as caught:
                    await pull.fetch_missing(VOL, 1, need, ["site-c", "site-b"])
                err = caught.value
                assert err.code == "store_full"
                assert err.evidence["path"] == str(here.root) and str(here.root) in str(err)
                assert "this site's disk is full" in str(err) and "url" not in err.evidence
                assert 0 < err.evidence["missing"] <= n and err.evidence["holder"] in ("site-b", "site-c")
                if n < FETCH_SLICE:  # one holder at a time: the second is not asked as if the first had failed
                    assert hc.requests == 1 and hb.requests == 0
                assert here.missing(need)  # it did not fit (a batch that failed is undone whole)
