"""The serving side of ``/v1/peer/fetch``: reads planned by bytes, places per requesting site and in
all (``FetchGate``), duplicates refused, and the holder's rule on who may read which volume
(``Receiver.check_fetch``) over a real chunk store. The memory bound, the refusals by name and the
cross-volume read with real daemons: ``tests/security/test_fetch_flood.py``."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from replicad.core import wire
from replicad.core.errors import FetchRefusedError, PeerBusyError, RemoteProtocolError
from replicad.core.manifest import Manifest, pages_from_digests
from replicad.peer.transport import FetchGate, PeerClient, peer_routes, plan_fetch_batches
from replicad.site.receiver import Receiver as SiteReceiver
from replicad.storage.chunkstore import ChunkStore
from replicad.lab.localcluster import free_port
from tests.unit.peer.test_transport import Receiver

D = [bytes([i]) * 32 for i in range(10)]


def test_batches_are_cut_by_bytes_and_by_count_and_leave_out_what_is_not_held() -> None:
    lengths = {d: 2**20 for d in D[:6]} | {D[6]: 5 * 2**20, D[7]: 10}
    assert plan_fetch_batches(D, lengths, max_items=64, max_bytes=4 * 2**20) == [D[0:4], D[4:6], [D[6]], [D[7]]]
    assert plan_fetch_batches(D, {d: 1 for d in D}, max_items=3) == [D[0:3], D[3:6], D[6:9], D[9:]]
    assert plan_fetch_batches(D, {}) == []


async def test_a_site_past_its_places_waits_then_is_busy_while_others_are_served() -> None:
    gate = FetchGate(per_site=2, total=3, waiting_per_site=1, wait_s=0.2)
    await gate.acquire("a")
    await gate.acquire("a")
    with pytest.raises(PeerBusyError) as busy:
        await gate.acquire("a")  # waits its 0.2 s, nobody gives a place back
    assert busy.value.evidence["limit"] == "per_site"
    await gate.acquire("b")  # another site is served at once
    waiting = asyncio.ensure_future(gate.acquire("a"))
    await asyncio.sleep(0.01)
    with pytest.raises(PeerBusyError):
        await gate.acquire("a")  # its one waiting place is taken: refused at once
    gate.release("a")
    await waiting  # handed the place given back
    assert gate.serving == {"a": 2, "b": 1}
    with pytest.raises(PeerBusyError) as busy:
        await gate.acquire("c")
    assert busy.value.evidence["limit"] == "global"


async def test_a_fetch_asking_a_digest_twice_is_refused_and_accounted(tmp_path: Path) -> None:
    with ChunkStore(tmp_path / "store") as store:
        (d,) = store.put_blocks([random.Random(1).randbytes(65536)])
        host = Receiver(store)
        app = web.Application()
        app.add_routes(peer_routes(host))
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession() as session:
                body = wire.encode_doc("fetch", volume="v", epoch=1, digests=[d, d], **{"from": "site-a"})
                async with session.post(f"http://127.0.0.1:{port}/v1/peer/fetch", data=body) as resp:
                    assert resp.status == 400
                    assert (await resp.json())["evidence"]["reason"] == "duplicate_digests"
                client = PeerClient(session, "site-a")  # the honest client asks each once
                got = [f async for frames in client.fetch_frames(f"http://127.0.0.1:{port}", "v", 1, [d, d])
                       for f in frames]
                assert [f[0] for f in got] == [d]
        finally:
            await runner.cleanup()
    assert [(f[0], f[4]) for f in host.fetches] == [("site-a", "remote_protocol"), ("site-a", None)]


class View:
    """The Raft view: volumes ``ehr`` (primary a, held by a and b) and ``hr`` (primary b, held by b and c)."""

    site_id = "b"

    def __init__(self, roots: dict[str, bytes]) -> None:
        self.state = {"volumes": {
            "ehr": {"primary": "a", "snapshots": {1: {"root": roots["ehr"], "holders": ["a", "b"]}}},
            "hr": {"primary": "b", "snapshots": {1: {"root": roots["hr"], "holders": ["b", "c"]}}}}}

    def view(self) -> dict:
        return self.state

    def volume_state(self, name: str) -> dict | None:
        return self.state["volumes"].get(name)

    def is_data_site(self, site: str) -> bool:
        return site in ("a", "b", "c")


def _volume(store: ChunkStore, name: str, seed: int) -> tuple[Manifest, bytes]:
    (block,) = store.put_blocks([random.Random(seed).randbytes(4096)])
    pages = tuple(store.put_blocks(pages_from_digests([block])))
    m = Manifest(name, 1, 1, None, 1, 4096, 4096, pages, {})
    store.put_blocks([m.encode()])
    return m, block


def test_a_holder_serves_a_volume_only_to_its_primary_and_holders(tmp_path: Path) -> None:
    with ChunkStore(tmp_path / "store") as store:
        ehr, ehr_block = _volume(store, "ehr", 1)
        hr, hr_block = _volume(store, "hr", 2)
        r = SiteReceiver(View({"ehr": ehr.root, "hr": hr.root}), store, catalog=None, metrics=None, audit=None)
        r.check_fetch("ehr", "a", [ehr.root, *ehr.pages, ehr_block])
        r.check_fetch("hr", "c", [hr.root, *hr.pages, hr_block])
        cases = [("hr", "a", [hr_block], "not_holder"), ("ehr", "c", [ehr_block], "not_holder"),
                 ("ehr", "a", [hr.root], "other_volume"), ("ehr", "a", [hr.pages[0]], "other_volume"),
                 ("loot", "a", [ehr_block], "unknown_volume"), ("ehr", "w", [ehr_block], "not_data_site")]
        for volume, sender, digests, reason in cases:
            with pytest.raises(FetchRefusedError) as refused:
                r.check_fetch(volume, sender, digests)
            assert refused.value.evidence["reason"] == reason, (volume, sender)
        # a block of another volume is not checked (no digest-to-volume index: ARCHITECTURE.md)
        r.check_fetch("ehr", "a", [hr_block])


class Audit:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def append(self, record: dict) -> None:
        self.records.append(record)


class Metrics:
    def __init__(self) -> None:
        self.refused: list[tuple[str, str]] = []
        self.served: list[tuple[str, str, int]] = []

    def fetch_refused(self, requester: str, reason: str) -> None:
        self.refused.append((requester, reason))

    def fetch_served(self, requester: str, volume: str, payload_bytes: int) -> None:
        self.served.append((requester, volume, payload_bytes))


async def test_reads_are_audited_per_site_and_volume_and_a_refusal_once_per_window(tmp_path: Path, caplog) -> None:
    from types import SimpleNamespace
    with ChunkStore(tmp_path / "store") as store:
        ehr, _ = _volume(store, "ehr", 1)
        hr, _ = _volume(store, "hr", 2)
        view = View({"ehr": ehr.root, "hr": hr.root})
        view.sites = lambda: (SimpleNamespace(site_id="a"), SimpleNamespace(site_id="b"), SimpleNamespace(site_id="c"))
        audit, metrics = Audit(), Metrics()
        r = SiteReceiver(view, store, catalog=None, metrics=metrics, audit=audit)
        for _ in range(100):  # a restore's fetches: one record
            r.fetch_done("a", "ehr", 64, 2**20, None)
        for _ in range(50):  # a flood of refusals: one WARNING, one record at once, counted each
            r.fetch_done("a", "hr", 0, 0, FetchRefusedError("no", reason="not_holder"))
        r.fetch_done("mallory", "loot", 0, 0, PeerBusyError("busy"))  # not a site, not a volume: bounded labels
        await r.flush_reads()
    warnings = [m for m in caplog.messages if "AUDIT refused fetch of volume hr by a" in m]
    assert len(warnings) == 1
    assert metrics.refused.count(("a", "not_holder")) == 50 and ("other", "busy") in metrics.refused
    assert sum(n for _, _, n in metrics.served) == 100 * 2**20
    bodies = [(rec["who"], rec["body"]) for rec in audit.records]
    assert ("a", {"volume": "hr", "reason": "not_holder", "chunks": 0, "bytes": 0}) in bodies  # the first, at once
    windows = {(who, b["volume"]): b for who, b in bodies if "window_s" in b}
    assert windows[("a", "ehr")]["requests"] == 100 and windows[("a", "ehr")]["bytes"] == 100 * 2**20
    assert windows[("a", "hr")]["refused"] == {"not_holder": 50}
    assert ("other", "?") in windows
    assert len(audit.records) == 5  # 3 windows + 2 first refusals: not one per request


def test_a_manifest_stored_after_its_root_was_first_seen_has_its_pages_guarded(tmp_path: Path) -> None:
    """hr's snapshot is in Raft's catalog before its manifest reaches this holder: once it is stored
    and the catalog changed, hr's pages are another volume's for a fetch under ehr (the first look
    found only hr's root and must not stay the answer for as long as that root is in the catalog)."""
    with ChunkStore(tmp_path / "store") as store, ChunkStore(tmp_path / "elsewhere") as elsewhere:
        ehr, _ = _volume(store, "ehr", 1)
        hr, _ = _volume(elsewhere, "hr", 2)
        view = View({"ehr": ehr.root, "hr": hr.root})
        r = SiteReceiver(view, store, catalog=None, metrics=None, audit=None)
        r.check_fetch("ehr", "a", [hr.pages[0]])  # hr's manifest not here: its pages are unknown here
        store.put_encoded([(d, *elsewhere.get_encoded(d)) for d in (hr.root, *hr.pages)])
        ehr2, _ = _volume(store, "ehr", 3)
        view.state = {"volumes": {**view.state["volumes"], "ehr": {"primary": "a", "snapshots": {
            1: {"root": ehr.root, "holders": ["a", "b"]}, 2: {"root": ehr2.root, "holders": ["a", "b"]}}}}}
        with pytest.raises(FetchRefusedError) as refused:
            r.check_fetch("ehr", "a", [hr.pages[0]])
        assert refused.value.evidence["reason"] == "other_volume"
