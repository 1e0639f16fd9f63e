"""Scrub.repair_step against a real holder's check_fetch: lost manifest pages of two volumes are each
asked under their own volume (a holder refuses a whole fetch that asks another volume's page)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import aiohttp
from aiohttp import web

from replicad.core.manifest import Manifest, pages_from_digests
from replicad.lab.localcluster import free_port
from replicad.peer.transport import PeerClient, peer_routes
from replicad.site.pull import Pull
from replicad.site.receiver import Receiver as SiteReceiver
from replicad.site.scrub import Scrub
from replicad.storage.chunkstore import ChunkStore
from tests.unit.peer.test_transport import Receiver


def _volume(store: ChunkStore, name: str, seed: int) -> Manifest:
    """A one-block volume ``name``: its block, page and manifest stored in ``store``."""
    (block,) = store.put_blocks([random.Random(seed).randbytes(4096)])
    pages = tuple(store.put_blocks(pages_from_digests([block])))
    m = Manifest(name, 1, 1, None, 1, 4096, 4096, pages, {})
    store.put_blocks([m.encode()])
    return m


class Holder(Receiver):
    """A holder's peer routes over a real store, with the real Receiver.check_fetch over ``cluster``."""

    def __init__(self, store: ChunkStore, cluster: SimpleNamespace) -> None:
        super().__init__(store)
        self.rule = SiteReceiver(cluster, store, catalog=None, metrics=None, audit=None)

    def check_fetch(self, volume: str, sender: str, digests) -> None:
        self.rule.check_fetch(volume, sender, digests)


async def test_lost_pages_of_two_volumes_are_each_repaired_under_their_own_volume(tmp_path: Path) -> None:
    with ChunkStore(tmp_path / "holder") as held, ChunkStore(tmp_path / "here") as here:
        ehr, hr = _volume(held, "ehr", 1), _volume(held, "hr", 2)
        for m in (ehr, hr):
            here.put_encoded([(d, *held.get_encoded(d)) for d in (m.root, *m.pages)])
        state = {"volumes": {name: {"primary": "site-a", "epoch": 1,
                                    "snapshots": {1: {"root": m.root, "holders": ["site-a", "site-b"]}}}
                             for name, m in (("ehr", ehr), ("hr", hr))}}
        view = SimpleNamespace(site_id="site-b", view=lambda: state, volume_state=state["volumes"].get,
                               is_data_site=lambda s: s in ("site-a", "site-b"))
        here.delete_corrupt(ehr.pages[0])
        here.delete_corrupt(hr.pages[0])
        assert here.repairs_pending == 2
        app = web.Application()
        app.add_routes(peer_routes(Holder(held, view)))
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession() as session:
                cluster = SimpleNamespace(site_id="site-a", view=lambda: state, volume_state=state["volumes"].get,
                                          data_peers=lambda: ["site-b"],
                                          peer_url=lambda s: f"http://127.0.0.1:{port}")
                pull = Pull(cluster, here, None, PeerClient(session, "site-a"))
                scrub = Scrub(cluster, here, {"ehr": None, "hr": None}, pull, None)
                left = await scrub.repair_step()
        finally:
            await runner.cleanup()
        assert left == 0 and here.missing([ehr.pages[0], hr.pages[0]]) == []
