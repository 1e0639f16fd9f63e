"""Restores streamed from every holder at once (replicad.site.peer_restore), with real site
processes on loopback as the holders: one holder killed in the middle of the restore, and a
site whose chunk store is gone restoring through its admin API from the two others."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import aiohttp
import pytest

from replicad.core.manifest import Manifest
from replicad.peer.transport import PeerClient
from replicad.site.peer_restore import restore_from_holders
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.image import verify_image

from .conftest import VOL, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def snapshot_root(c, site: str, seq: int) -> bytes:
    snaps = c.api(site, "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]
    return bytes.fromhex(next(s["root"] for s in snaps if s["seq"] == seq))


class StoppingClient(PeerClient):
    """The peer client, except that once the first piece of ``victim``'s first stream arrived it
    freezes that holder (SIGSTOP): it has served some chunks and its stream is left hanging."""

    def __init__(self, session: aiohttp.ClientSession, c, victim: str, victim_url: str) -> None:
        super().__init__(session, "site-a")
        self.c, self.victim, self.victim_url = c, victim, victim_url
        self.stopped = False

    async def fetch_frames(self, peer_url, volume, epoch, digests, **kw):
        async for frames in super().fetch_frames(peer_url, volume, epoch, digests, **kw):
            yield frames
            if peer_url == self.victim_url and not self.stopped:
                self.stopped = True
                self.c.kill(self.victim, signal.SIGSTOP)


def test_a_holder_killed_mid_restore_leaves_the_rest_to_the_other(cluster_factory, tmp_path: Path) -> None:
    c = cluster_factory(n_blocks=2048)  # 128 MiB: 16 units of 8 MiB
    first = snapshot(c, "site-a")
    assert first["committed"]
    c.wait_for("b and c hold it", lambda: all(c.status(s)["volumes"][VOL]["standby_seq"] == first["seq"]
                                              for s in ("site-b", "site-c")), 60)
    root = snapshot_root(c, "site-a", first["seq"])
    urls = {s: f"http://127.0.0.1:{c.sites[s].peer_port}" for s in ("site-b", "site-c")}
    target = tmp_path / "restored.img"
    killed_at: list[int] = []
    clients: list[StoppingClient] = []

    def progress(done: int, total: int) -> None:
        # site-b froze in the middle of its stream; once site-c wrote half the image, site-b dies
        if clients and clients[0].stopped and not killed_at and done >= total // 2:
            c.kill("site-b", signal.SIGKILL)  # reaped before this returns
            killed_at.append(done)

    async def restore():
        with ChunkStore(tmp_path / "store") as store:  # a site that holds nothing of the snapshot
            async with aiohttp.ClientSession() as session:
                client = StoppingClient(session, c, "site-b", urls["site-b"])
                clients.append(client)
                await client.fetch(urls["site-c"], VOL, 0, [root], store)
                manifest = Manifest.decode(store.get(root))
                await client.fetch(urls["site-c"], VOL, 0, list(manifest.pages), store)
                rep = await restore_from_holders(client, urls, VOL, 0, manifest, store, target, progress=progress,
                                                 streams_per_holder=1)
            return manifest, rep

    manifest, rep = asyncio.run(restore())
    assert killed_at and killed_at[0] < manifest.n_blocks  # site-b died before the restore could end
    assert target.read_bytes() == c.sites["site-a"].volume_path(VOL).read_bytes()
    assert verify_image(target, manifest) == manifest.root  # O5, once more from outside
    b, cc = rep.holders["site-b"], rep.holders["site-c"]
    assert b.chunks > 0 and b.failed is not None and "peer_unavailable" in b.failed, rep
    assert cc.failed is None and cc.chunks > 0, rep
    assert c.sites["site-b"].proc.poll() is not None


def test_a_site_without_its_chunk_store_restores_streamed_from_the_holders(cluster_factory, tmp_path: Path) -> None:
    c = cluster_factory(n_blocks=512)
    first = snapshot(c, "site-a")
    assert first["committed"]
    c.wait_for("standby c", lambda: c.status("site-c")["volumes"][VOL]["standby_seq"] == first["seq"], 60)
    c.kill("site-c", signal.SIGTERM)
    chunks = c.sites["site-c"].dir / "data" / "chunks"
    shutil.rmtree(chunks)  # its disk of chunks was replaced: nothing of the snapshot is here any more
    c.start("site-c")
    c.wait_for("site-c back", lambda: c.status("site-c")["raft"]["synced"], 60)
    expected = c.sites["site-a"].volume_path(VOL).read_bytes()

    target = tmp_path / "restored.img"
    rest = c.api("site-c", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target)})
    assert rest["verified"] and target.read_bytes() == expected
    served = rest["peers"]["holders"]
    assert set(served) == {"site-a", "site-b"} and all(h["chunks"] > 0 and h["failed"] is None
                                                         for h in served.values()), served
    assert rest["peers"]["local_chunks"] == 0

    c.kill("site-b", signal.SIGKILL)  # one holder down before the next restore: the other serves it all
    again = tmp_path / "again.img"
    rest = c.api("site-c", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(again)})
    assert rest["verified"] and again.read_bytes() == expected
    served = rest["peers"]["holders"]
    assert served["site-b"]["failed"] is not None and served["site-b"]["chunks"] == 0, served
    assert served["site-a"]["failed"] is None and served["site-a"]["chunks"] > 0, served
    assert "from 2 holders at once" in c.sites["site-c"].log_path.read_text()
