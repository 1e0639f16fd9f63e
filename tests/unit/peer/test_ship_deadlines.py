"""Deadlines of a ship's requests to a replica (replicad.peer.transport: SHIP_DOC_S for
``/v1/peer/missing``, SHIP_DOC_S + SHIP_CHECK_S_PER_GIB per GiB for ``/v1/peer/snapshot``, the
progress rule of the chunk upload, ShipProgress) against real aiohttp servers on loopback: the
real peer routes over a real store (the honest replica), and a tarpit replica that trickles its
reply documents a byte at a time, holds back its answer, or reads the chunk upload a KiB at a
time. The tarpit is cut with PeerStalledError naming it and the request; the honest replica,
and one whose answer comes late but within a deadline scaled by the volume's size, are not."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from replicad.core import wire
from replicad.core.errors import PeerStalledError
from replicad.lab.localcluster import free_port
from replicad.peer.transport import PeerClient, peer_routes
from replicad.storage.chunkstore import ChunkStore
from tests.unit.peer.test_transport import Receiver

pytestmark = pytest.mark.timeout(60)

DOC_S = 0.5
WINDOW_S = 0.6
MIN_BYTES = 60_000


@contextlib.asynccontextmanager
async def serving(routes: list[web.RouteDef]) -> AsyncIterator[str]:
    """A real loopback server with ``routes``; yields its base URL."""
    app = web.Application(client_max_size=2**30)
    app.add_routes(routes)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def strict_client(session: aiohttp.ClientSession) -> PeerClient:
    """site-a's client with the test's short deadlines and progress window."""
    client = PeerClient(session, "site-a")
    client.ship_doc_s, client.ship_check_s_per_gib = DOC_S, DOC_S
    client.progress_s, client.progress_bytes = WINDOW_S, MIN_BYTES
    return client


def trickling(reply: bytes, trickle_s: float = 0.05):
    """A handler answering ``reply`` (a msgpack document) with its head at once, then one byte per ``trickle_s``."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": wire.CONTENT_TYPE})
        resp.content_length = len(reply)
        await resp.prepare(request)
        for i in range(len(reply)):
            await resp.write(reply[i:i + 1])
            await asyncio.sleep(trickle_s)
        await resp.write_eof()
        return resp
    return handler


def late(reply: bytes, delay_s: float):
    """A handler answering ``reply`` whole after ``delay_s``."""
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay_s)
        return web.Response(body=reply, content_type=wire.CONTENT_TYPE)
    return handler


async def slow_reader(request: web.Request) -> web.Response:
    """A replica reading a chunk upload 1 KiB per 0.1 s (10 KiB/s: under the test's rule of 60 KB per 0.6 s)."""
    while await request.content.read(1024):
        await asyncio.sleep(0.1)
    return web.Response(body=wire.encode_reply(stored=0), content_type=wire.CONTENT_TYPE)


def chunks(tmp_path: Path, n: int) -> tuple[ChunkStore, list[bytes]]:
    rng = random.Random(7)
    store = ChunkStore(tmp_path / "sender")
    return store, store.put_blocks([rng.randbytes(65536) for _ in range(n)])


async def test_a_replica_trickling_its_missing_reply_is_cut_at_the_deadline(tmp_path: Path) -> None:
    store, digests = chunks(tmp_path, 3)
    with store:
        reply = wire.encode_reply(missing=digests)  # ~110 bytes: 5.5 s at one byte per 0.05 s
        async with serving([web.post("/v1/peer/missing", trickling(reply))]) as url, \
                aiohttp.ClientSession() as session:
            with pytest.raises(PeerStalledError) as info:
                await strict_client(session).missing(url, "ehr", 1, digests)
    err = info.value
    assert err.code == "peer_stalled" and err.evidence["request"] == "/v1/peer/missing"
    assert err.evidence["url"] == url + "/v1/peer/missing" and err.evidence["deadline_s"] == DOC_S
    assert "did not answer /v1/peer/missing within" in err.message


async def test_the_snapshot_deadline_grows_with_the_volume_it_may_have_to_check(tmp_path: Path) -> None:
    reply = wire.encode_reply(stored=True, ack=None)
    async with serving([web.post("/v1/peer/snapshot", late(reply, 1.0))]) as url, \
            aiohttp.ClientSession() as session:
        client = strict_client(session)
        with pytest.raises(PeerStalledError) as info:  # a small volume: 0.5 s, the answer comes after 1.0 s
            await client.snapshot_ack(url, "ehr", 1, 2, b"\x01" * 32, size_bytes=2**20)
        assert info.value.evidence["request"] == "/v1/peer/snapshot"
        # 4 GiB: 0.5 s + 4 x 0.5 s = 2.5 s, the same answer is taken
        assert await client.snapshot_ack(url, "ehr", 1, 2, b"\x01" * 32, size_bytes=4 * 2**30) == (True, None)


async def test_a_replica_reading_the_chunk_upload_a_kib_at_a_time_is_cut(tmp_path: Path) -> None:
    store, digests = chunks(tmp_path, 256)  # 16 MiB of random chunks: more than the sockets' buffers hold
    with store:
        async with serving([web.post("/v1/peer/chunks", slow_reader)]) as url, aiohttp.ClientSession() as session:
            with pytest.raises(PeerStalledError) as info:
                await strict_client(session).send_chunks(url, "ehr", 1, store, digests)
    err = info.value
    assert err.evidence["request"] == "/v1/peer/chunks" and err.evidence["got_bytes"] < MIN_BYTES
    assert 0 < err.evidence["sent_bytes"] < 16 * 2**20
    assert "stalled a chunk upload" in err.message and err.evidence["url"] == url + "/v1/peer/chunks"


async def test_an_honest_replica_takes_a_whole_ship_within_the_deadlines(tmp_path: Path) -> None:
    store, digests = chunks(tmp_path, 256)
    with store, ChunkStore(tmp_path / "receiver") as receiver:
        async with serving(peer_routes(Receiver(receiver))) as url, aiohttp.ClientSession() as session:
            client = strict_client(session)
            assert await client.missing(url, "ehr", 1, digests) == digests
            stored, sent = await client.send_chunks(url, "ehr", 1, store, digests)
            assert stored == 256 and sent > 16 * 2**20
            assert receiver.missing(digests) == []
            assert await client.missing(url, "ehr", 1, digests) == []


async def test_the_senders_own_store_time_does_not_count_against_the_replica(tmp_path: Path) -> None:
    class SlowStore(ChunkStore):
        def get_encoded_many(self, digests, **kw):  # a slow local disk: 0.8 s per batch read, > the window
            import time
            time.sleep(0.8)
            return super().get_encoded_many(digests, **kw)

    rng = random.Random(9)
    with SlowStore(tmp_path / "sender") as store, ChunkStore(tmp_path / "receiver") as receiver:
        digests = store.put_blocks([rng.randbytes(65536) for _ in range(65)])  # 2 batches of READ_BATCH
        async with serving(peer_routes(Receiver(receiver))) as url, aiohttp.ClientSession() as session:
            stored, _ = await strict_client(session).send_chunks(url, "ehr", 1, store, digests)
        assert stored == 65 and receiver.missing(digests) == []
