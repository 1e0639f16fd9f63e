"""What a holder's answer to /v1/peer/fetch may carry (replicad.peer.transport.FetchAnswer),
against a real aiohttp server on loopback serving real chunk frames from a real store: only the
digests asked, each once. A holder that replays its real frames, adds a real chunk nobody asked
for, or sends a frame whose payload does not match its digest is cut with a typed error naming
it and reported to ``on_stall``; a fetch ends once every digest asked arrived, even if the
holder holds its answer open; the honest answer is served whole."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from replicad.core import wire
from replicad.core.errors import IntegrityError, RemoteProtocolError, ReplicadError
from replicad.storage.chunkstore import ChunkStore
from tests.unit.peer.test_fetch_progress import serving, strict_client

pytestmark = pytest.mark.timeout(60)


class Holder:
    """A /v1/peer/fetch answering with real frames of what was asked, then as ``mode`` says:
    "honest" (end), "hold_open" (no end for 30 s), "loop" (its first two frames again and again, one
    every 0.05 s: far above the progress rule, the others never), "unasked" (a real frame of a chunk not asked
    first), "garbage" (the second frame's payload altered, its digest kept)."""

    def __init__(self, store: ChunkStore, extra: bytes, mode: str) -> None:
        self.store, self.extra, self.mode = store, extra, mode
        self.sent = 0

    def frame(self, d: bytes) -> bytes:
        codec, payload = self.store.get_encoded(d)
        return wire.encode_frame(d, codec, bytes(payload))

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        doc = wire.decode_doc("fetch", await request.read())
        frames = [self.frame(d) for d in doc["digests"]]
        if self.mode == "loop":
            frames = frames[:2]
        if self.mode == "unasked":
            frames.insert(0, self.frame(self.extra))
        if self.mode == "garbage":
            codec, payload = self.store.get_encoded(doc["digests"][1])
            frames[1] = wire.encode_frame(doc["digests"][1], codec, bytes(payload)[:-1] + b"\x00")
        resp = web.StreamResponse(headers={"Content-Type": wire.CONTENT_TYPE})
        await resp.prepare(request)
        await resp.write(wire.encode_doc("chunks", volume="ehr", epoch=1, **{"from": "site-b"}))
        try:
            while True:
                for frame in frames:
                    await resp.write(frame)
                    self.sent += 1
                    await asyncio.sleep(0.05 if self.mode == "loop" else 0)
                if self.mode != "loop":
                    break
            if self.mode == "hold_open":
                await asyncio.sleep(30)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):  # the client cut it
            pass
        return resp


async def _run(tmp_path: Path, mode: str, into_store: bool = False) -> tuple[int, list, BaseException | None, Holder]:
    """Fetch 4 chunks from a Holder (frames, or ``into_store`` into a store: verified there);
    returns (frames received or chunks stored, on_stall calls as (url is the holder's, error),
    the error, the holder)."""
    rng = random.Random(7)
    with ChunkStore(tmp_path / "holder") as store, ChunkStore(tmp_path / "here") as here:
        *digests, extra = store.put_blocks([rng.randbytes(65536) for _ in range(5)])
        holder = Holder(store, extra, mode)
        stalls: list = []
        got, error = 0, None
        async with serving(holder.fetch) as url, aiohttp.ClientSession() as session:
            client = strict_client(session, stalls)
            try:
                if into_store:
                    got = await client.fetch(url, "ehr", 1, digests, here)
                else:
                    async for frames in client.fetch_frames(url, "ehr", 1, digests + digests[:1], views=True):
                        got += len(frames)
            except ReplicadError as err:
                error = err
            if into_store:
                assert here.missing([extra]) == [extra]  # nothing not asked was stored
        return got, [(u == url, e) for u, e in stalls], error, holder


async def test_the_honest_answer_is_served_whole_and_a_digest_asked_twice_is_asked_once(tmp_path: Path) -> None:
    got, stalls, err, holder = await _run(tmp_path, "honest")
    assert err is None and got == 4 and stalls == [] and holder.sent == 4


async def test_the_fetch_ends_once_everything_asked_arrived_though_the_answer_stays_open(tmp_path: Path) -> None:
    # held open 30 s with nothing more: were it read to its end, the progress rule (0.6 s) would cut it
    got, stalls, err, _ = await _run(tmp_path, "hold_open")
    assert err is None and got == 4 and stalls == []


@pytest.mark.parametrize("into_store", [False, True])
async def test_a_holder_replaying_its_real_frames_is_cut_at_the_first_repeat(tmp_path: Path, into_store: bool) -> None:
    got, stalls, err, holder = await _run(tmp_path, "loop", into_store)
    assert isinstance(err, RemoteProtocolError) and err.evidence["reason"] == "repeated"
    assert err.evidence["url"].startswith("http://127.0.0.1:") and "broke a fetch" in err.message
    assert stalls == [(True, err)]  # reported once, naming the holder's URL
    assert got <= 2 and holder.sent < 20


async def test_a_holder_sending_a_chunk_not_asked_for_is_cut(tmp_path: Path) -> None:
    got, stalls, err, _ = await _run(tmp_path, "unasked", into_store=True)
    assert isinstance(err, RemoteProtocolError) and err.evidence["reason"] == "not_asked"
    assert got == 0 and stalls == [(True, err)]


async def test_a_holder_sending_a_frame_that_does_not_match_its_digest_is_reported(tmp_path: Path) -> None:
    got, stalls, err, _ = await _run(tmp_path, "garbage", into_store=True)
    assert isinstance(err, IntegrityError) and stalls == [(True, err)]
