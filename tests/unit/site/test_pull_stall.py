"""Pull.fetch_missing with a holder that stalls (the progress rule of
replicad.peer.transport.FetchProgress) or keeps just above it, over real stores and real aiohttp
servers on loopback: a stalling holder's request goes to the honest holder, the stall is logged
under its name and remembered, and the next fetch leaves it out of the parallel pass and asks it
last; a slow holder's slices are taken over at the end of the parallel pass, and a few chunks
asked of a slow holder are asked of the next one too once it takes too long."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from replicad.core import wire
from replicad.lab.localcluster import free_port
from replicad.peer import transport
from replicad.peer.transport import PeerClient
from replicad.site import pull as pull_module
from replicad.site.pull import FETCH_SLICE, Pull
from replicad.storage.chunkstore import ChunkStore

pytestmark = pytest.mark.timeout(60)

VOL = "ehr"


class Holder:
    """A holder's /v1/peer/fetch over a real store: honest, or (``tarpit``) its head and header
    document at once, then one byte every 0.05 s, or (``frame_gap_s``) each frame whole after
    that many seconds. ``served``: frames sent whole."""

    def __init__(self, store: ChunkStore, site_id: str, tarpit: bool = False, frame_gap_s: float = 0.0,
                 bad: str | None = None) -> None:
        self.store, self.site_id, self.tarpit, self.frame_gap_s = store, site_id, tarpit, frame_gap_s
        self.bad = bad  # "loop": its first frame over and over; "garbage": the first frame's payload altered
        self.requests = 0
        self.served = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        doc = wire.decode_doc("fetch", await request.read())
        resp = web.StreamResponse(headers={"Content-Type": wire.CONTENT_TYPE})
        await resp.prepare(request)
        await resp.write(wire.encode_doc("chunks", volume=doc["volume"], epoch=doc["epoch"], **{"from": self.site_id}))
        if self.bad is not None:
            d = doc["digests"][0]
            codec, payload = self.store.get_encoded(d)
            payload = bytes(payload) if self.bad == "loop" else bytes(payload)[:-1] + b"\x00"
            try:
                for _ in range(100 if self.bad == "loop" else 1):
                    await resp.write(wire.encode_frame(d, codec, payload))
                    await asyncio.sleep(0.01)
                await resp.write_eof()
            except ConnectionResetError:
                pass
            return resp
        for d in doc["digests"]:
            frame = wire.encode_frame(d, *self.store.get_encoded(d))
            if not self.tarpit:
                await asyncio.sleep(self.frame_gap_s)
                try:
                    await resp.write(frame)
                except ConnectionResetError:
                    return resp
                self.served += 1
                continue
            for i in range(len(frame)):
                try:
                    await resp.write(frame[i:i + 1])
                except ConnectionResetError:  # the client cut it (the progress rule)
                    return resp
                await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    async def __aenter__(self) -> "Holder":
        app = web.Application()
        app.add_routes([web.post("/v1/peer/fetch", self.fetch)])
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@contextlib.contextmanager
def holding(tmp_path: Path, n: int, seed: int, names: str = "bc"):
    """Real chunk stores: one per holder name (``b``, ``c``, ...), each holding the same ``n``
    random 4 KiB blocks, and ``here``, empty. Yields ``(need, here, *holder stores)``."""
    rng = random.Random(seed)
    blocks = [rng.randbytes(4096) for _ in range(n)]
    with contextlib.ExitStack() as stack:
        stores = [stack.enter_context(ChunkStore(tmp_path / name)) for name in names]
        need = [s.put_blocks(blocks) for s in stores][0]
        yield (need, stack.enter_context(ChunkStore(tmp_path / "here")), *stores)


def pull_from(session: aiohttp.ClientSession, here: ChunkStore, holders: dict[str, str], strict: bool = True) -> Pull:
    """site-a's Pull fetching into ``here`` from real loopback holders (``{site: url}``);
    ``strict``: the test's short progress window (0.5 s, 16 KiB) instead of the daemon's."""
    sites = [SimpleNamespace(site_id=s, peer_url=u) for s, u in holders.items()]
    cluster = SimpleNamespace(site_id="site-a", peer_url=holders.__getitem__, cfg=lambda: SimpleNamespace(sites=sites))
    client = PeerClient(session, "site-a")
    if strict:
        client.progress_s, client.progress_bytes = 0.5, 16384
    return Pull(cluster, here, None, client)


async def test_a_stalling_holders_share_goes_to_the_other_and_it_is_asked_last_afterwards(
        tmp_path: Path, caplog) -> None:
    with holding(tmp_path, 3 * FETCH_SLICE, 12) as (need, here, b, c):
        async with Holder(b, "site-b") as honest, Holder(c, "site-c", tarpit=True) as tarpit:
            async with aiohttp.ClientSession() as session:
                pull = pull_from(session, here, {"site-b": honest.url, "site-c": tarpit.url})
                with caplog.at_level(logging.WARNING, logger="replicad.site.pull"):
                    # the tarpit first, as Raft's order of holders may put it; a few chunks (a
                    # manifest, pages): asked of one holder after the other
                    served = await pull.fetch_missing(VOL, 1, need[:10], ["site-c", "site-b"])
                assert here.missing(need[:10]) == [] and served == ["site-b"]
                assert tarpit.requests == 1 and set(pull.recent_stalls()) == {"site-c"}
                assert any("holder site-c stalled a fetch" in r.getMessage() for r in caplog.records
                           if r.levelno == logging.WARNING)
                assert pull.ranked(["site-c", "site-b"]) == ["site-b", "site-c"]

                # the next fetch, of many: not in the parallel pass, asked last, so not asked at all
                asked_before = tarpit.requests
                served = await pull.fetch_missing(VOL, 1, need, ["site-c", "site-b"])
                assert here.missing(need) == [] and served == ["site-b"]
                assert tarpit.requests == asked_before


async def test_a_holder_just_above_the_rule_loses_its_slices_to_the_faster_one_at_the_end(tmp_path: Path) -> None:
    """The slow holder sends a whole 4 KiB frame every 0.05 s (10 per 0.5 s window: the rule asks
    4; at 0.1 s, 5 per window, under load it was cut with 3): never stalled, but a slice of
    FETCH_SLICE chunks would take it 13 s. Once the queue is
    empty, the honest holder's streams fetch its slices again and the slow copies are cut."""
    with holding(tmp_path, 3 * FETCH_SLICE, 13) as (need, here, b, c):
        async with Holder(b, "site-b") as honest, Holder(c, "site-c", frame_gap_s=0.05) as slow:
            async with aiohttp.ClientSession() as session:
                pull = pull_from(session, here, {"site-b": honest.url, "site-c": slow.url})
                served = await pull.fetch_missing(VOL, 1, need, ["site-c", "site-b"])
                assert here.missing(need) == [] and served == ["site-b"]
                assert pull.recent_stalls() == {}  # it kept to the rule
                assert slow.requests >= 1 and slow.served < FETCH_SLICE  # its slices were taken over and cut


async def test_a_few_chunks_asked_of_a_holder_just_above_the_rule_are_asked_of_the_next_one_too(
        tmp_path: Path, monkeypatch) -> None:
    """A fetch of fewer than FETCH_SLICE chunks (a manifest, pages) goes holder after holder.
    The slow holder sends a whole 4 KiB frame every 0.05 s (10 per 0.5 s window: the rule asks
    4): 200 chunks would take it 10 s. Once it has taken the hedge time (here 0.3 s + 1 ms per chunk), the next
    holder is asked too; it serves them all and the slow fetch is cut, not counted as a stall."""
    monkeypatch.setattr(pull_module, "SMALL_HEDGE_S", 0.3)
    monkeypatch.setattr(pull_module, "SMALL_HEDGE_S_PER_CHUNK", 0.001)
    with holding(tmp_path, 200, 15) as (need, here, b, c):
        async with Holder(b, "site-b") as honest, Holder(c, "site-c", frame_gap_s=0.05) as slow:
            async with aiohttp.ClientSession() as session:
                pull = pull_from(session, here, {"site-b": honest.url, "site-c": slow.url})
                served = await pull.fetch_missing(VOL, 1, need, ["site-c", "site-b"])
                assert here.missing(need) == [] and served == ["site-b"]
                assert slow.requests == 1 and slow.served < 200 and honest.requests == 1
                assert pull.recent_stalls() == {}  # it kept to the rule


async def test_after_one_hedge_the_next_holder_waits_for_the_one_just_asked(tmp_path: Path, monkeypatch) -> None:
    """Three holders, the first slow: once it has taken the hedge time the second is asked, and
    the third only if the second also takes its hedge time. Here the second serves the 200 chunks
    well within it (2.2 s), so the third is never asked (the first hedge's passed deadline used to
    ask every holder left at once)."""
    monkeypatch.setattr(pull_module, "SMALL_HEDGE_S", 2.0)
    monkeypatch.setattr(pull_module, "SMALL_HEDGE_S_PER_CHUNK", 0.001)
    with holding(tmp_path, 200, 16, "bcd") as (need, here, b, c, d):
        async with Holder(c, "site-c", frame_gap_s=0.05) as slow, Holder(d, "site-d") as second, \
                Holder(b, "site-b") as third:
            async with aiohttp.ClientSession() as session:
                pull = pull_from(session, here, {"site-b": third.url, "site-c": slow.url, "site-d": second.url})
                served = await pull.fetch_missing(VOL, 1, need, ["site-c", "site-d", "site-b"])
                assert here.missing(need) == [] and served == ["site-d"]
                assert slow.requests == 1 and second.requests == 1 and third.requests == 0


async def test_a_tarpit_cut_because_the_next_holder_served_first_is_still_named(tmp_path: Path, monkeypatch,
                                                                                 caplog) -> None:
    """The tarpit (a byte per 0.05 s) asked first for a few chunks, under the daemon's rule (1 MiB
    per 10 s): the next holder is asked at the hedge time and serves them before the rule's window
    runs out; the tarpit's fetch, cut then, lagged behind the rule pro rata (nothing in more than
    FETCH_LAG_MIN_S, here 0.2 s): it is named and remembered like a stalled one."""
    monkeypatch.setattr(pull_module, "SMALL_HEDGE_S", 0.3)
    monkeypatch.setattr(pull_module, "SMALL_HEDGE_S_PER_CHUNK", 0.001)
    monkeypatch.setattr(transport, "FETCH_LAG_MIN_S", 0.2)
    with holding(tmp_path, 10, 16) as (need, here, b, c):
        async with Holder(b, "site-b") as honest, Holder(c, "site-c", tarpit=True) as tarpit:
            async with aiohttp.ClientSession() as session:
                pull = pull_from(session, here, {"site-b": honest.url, "site-c": tarpit.url}, strict=False)
                with caplog.at_level(logging.WARNING, logger="replicad.site.pull"):
                    served = await pull.fetch_missing(VOL, 1, need, ["site-c", "site-b"])
                assert here.missing(need) == [] and served == ["site-b"] and tarpit.requests == 1
                assert set(pull.recent_stalls()) == {"site-c"}
                assert "another holder served it first" in pull.recent_stalls()["site-c"]
                assert any("holder site-c stalled a fetch" in r.getMessage() for r in caplog.records
                           if r.levelno == logging.WARNING)


@pytest.mark.parametrize("bad", ["loop", "garbage"])
async def test_a_holder_answering_with_bad_frames_is_treated_like_a_stalled_one(
        tmp_path: Path, caplog, bad: str) -> None:
    """A holder replaying a real frame (or sending one that does not match its digest) is cut
    at once, logged at WARNING under its name, remembered, and asked last afterwards."""
    with holding(tmp_path, 10, 14) as (need, here, b, c):
        async with Holder(b, "site-b") as honest, Holder(c, "site-c", bad=bad) as liar:
            async with aiohttp.ClientSession() as session:
                pull = pull_from(session, here, {"site-b": honest.url, "site-c": liar.url}, strict=False)
                with caplog.at_level(logging.WARNING, logger="replicad.site.pull"):
                    served = await pull.fetch_missing(VOL, 1, need, ["site-c", "site-b"])
                assert here.missing(need) == [] and served == ["site-b"] and liar.requests == 1
                code = "remote_protocol" if bad == "loop" else "integrity"
                assert any(f"holder site-c answered a fetch with bad frames ({code})" in r.getMessage()
                           for r in caplog.records if r.levelno == logging.WARNING)
                assert set(pull.recent_stalls()) == {"site-c"}
                assert pull.ranked(["site-c", "site-b"]) == ["site-b", "site-c"]
