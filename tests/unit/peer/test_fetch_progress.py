"""The progress rule of a fetch (replicad.peer.transport.FetchProgress) against a real aiohttp
server on loopback that serves real chunk frames (from a real store) at a pace of its choosing:
a holder that trickles its answer, or holds back its head, is cut with PeerStalledError within
the window and reported to ``on_stall``; one that is slow but delivers whole frames within every
window is not; the caller's own time between reads never counts against the holder."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from replicad.core import wire
from replicad.core.errors import PeerStalledError
from replicad.lab.localcluster import free_port
from replicad.peer.transport import PeerClient
from replicad.storage.chunkstore import ChunkStore

WINDOW_S = 0.6
MIN_BYTES = 60_000  # a little under one 64 KiB frame


class Holder:
    """A /v1/peer/fetch answering with the frames of ``digests`` from ``store``: its head after
    ``head_delay_s``, then each frame whole ``frame_gap_s`` apart, or (``trickle_s``) one byte
    at a time."""

    def __init__(self, store: ChunkStore, digests: list[bytes], *, head_delay_s: float = 0.0,
                 frame_gap_s: float = 0.0, trickle_s: float | None = None) -> None:
        found, _, _ = store.get_encoded_many(digests)
        self.frames = [wire.encode_frame(d, codec, bytes(payload)) for d, codec, payload in found]
        self.head_delay_s, self.frame_gap_s, self.trickle_s = head_delay_s, frame_gap_s, trickle_s

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(self.head_delay_s)
        resp = web.StreamResponse(headers={"Content-Type": wire.CONTENT_TYPE})
        await resp.prepare(request)
        await resp.write(wire.encode_doc("chunks", volume="ehr", epoch=1, **{"from": "site-b"}))
        for frame in self.frames:
            if self.trickle_s is not None:
                for i in range(len(frame)):
                    await resp.write(frame[i:i + 1])
                    await asyncio.sleep(self.trickle_s)
            else:
                await asyncio.sleep(self.frame_gap_s)
                await resp.write(frame)
        await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def serving(fetch: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """A real loopback server answering ``/v1/peer/fetch`` with ``fetch``; yields its base URL."""
    app = web.Application()
    app.add_routes([web.post("/v1/peer/fetch", fetch)])
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def strict_client(session: aiohttp.ClientSession, stalls: list) -> PeerClient:
    """site-c's client with the test's short progress window; its stall reports appended to ``stalls``."""
    client = PeerClient(session, "site-c")
    client.progress_s, client.progress_bytes = WINDOW_S, MIN_BYTES
    client.on_stall = lambda u, e: stalls.append((u, e))
    return client


async def _run(tmp_path: Path, holder_kw: dict, consume_s: float = 0.0) -> tuple[int, list, float, BaseException | None]:
    """Fetch 4 chunks from a Holder; returns (frames received, on_stall calls, seconds, error)."""
    rng = random.Random(5)
    with ChunkStore(tmp_path / "holder") as store:
        digests = store.put_blocks([rng.randbytes(65536) for _ in range(4)])
        holder = Holder(store, digests, **holder_kw)
        stalls: list = []
        got, error = 0, None
        t0 = time.monotonic()
        async with serving(holder.fetch) as url, aiohttp.ClientSession() as session:
            client = strict_client(session, stalls)
            try:
                async for frames in client.fetch_frames(url, "ehr", 1, digests):
                    got += len(frames)
                    await asyncio.sleep(consume_s)  # the caller's own work: not the holder's time
            except PeerStalledError as err:
                error = err
        return got, [(u == url, e) for u, e in stalls], time.monotonic() - t0, error


pytestmark = pytest.mark.timeout(60)


async def test_a_holder_trickling_its_frames_is_cut_within_the_window(tmp_path: Path) -> None:
    got, stalls, secs, err = await _run(tmp_path, {"trickle_s": 0.05})
    assert isinstance(err, PeerStalledError) and err.code == "peer_stalled"
    assert got == 0 and err.evidence["frames"] == 0 and err.evidence["got_bytes"] == 0
    assert "stalled a fetch" in err.message and err.evidence["url"].startswith("http://127.0.0.1:")
    assert stalls == [(True, err)]  # reported once, naming the holder's URL


async def test_a_holder_holding_back_its_answer_is_cut(tmp_path: Path) -> None:
    got, stalls, _, err = await _run(tmp_path, {"head_delay_s": 30.0})
    assert isinstance(err, PeerStalledError) and got == 0 and len(stalls) == 1


async def test_a_slow_holder_delivering_whole_frames_in_every_window_is_served_to_the_end(tmp_path: Path) -> None:
    # a frame each 0.4 s: 4 frames take longer than two windows, each window gets one
    got, stalls, secs, err = await _run(tmp_path, {"frame_gap_s": 0.4})
    assert err is None and got == 4 and stalls == []
    assert secs > 2 * WINDOW_S  # the whole answer outlasted the window: only progress counts


async def test_the_callers_own_time_between_reads_does_not_count_against_the_holder(tmp_path: Path) -> None:
    got, stalls, _, err = await _run(tmp_path, {}, consume_s=2 * WINDOW_S)
    assert err is None and got == 4 and stalls == []

