"""The primary's bound on its chunk streams to one peer (replicad.peer.transport.StreamSlots in
PeerClient.send_chunks): at most CHUNK_SLOTS_PER_PEER open at once, the rest queued first come
first served for a bounded wait (StreamSlotsBusyError), a waiting sender leaving the ship's
SharedFrames. The queue alone, then real senders against the real peer routes on loopback."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from replicad.core.errors import StreamSlotsBusyError
from replicad.peer.netreason import origin
from replicad.peer.transport import (CHUNK_SLOT_WAIT_MAX_S, CHUNK_SLOT_WAIT_MIN_S, CHUNK_SLOTS_PER_PEER,
                                     CHUNK_STREAMS_PER_PEER, PeerClient, SharedFrames, StreamSlots, peer_routes)
from replicad.site.replication import slot_wait_s
from replicad.storage.chunkstore import ChunkStore
from tests.unit.peer.test_ship_deadlines import serving
from tests.unit.peer.test_transport import Receiver

pytestmark = pytest.mark.timeout(60)


async def test_places_per_peer_are_bounded_and_given_on_first_come_first_served() -> None:
    slots = StreamSlots(per_peer=2)
    assert [await slots.acquire("b", 1.0) for _ in range(2)] == [0.0, 0.0]
    assert await slots.acquire("c", 1.0) == 0.0  # another peer's places are its own
    assert not slots.free("b") and slots.free("c")
    order: list[str] = []

    async def waiter(name: str) -> float:
        waited = await slots.acquire("b", 5.0)
        order.append(name)
        return waited

    first = asyncio.create_task(waiter("first"))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(waiter("second"))
    await asyncio.sleep(0.05)
    assert slots.waiting("b") == 2 and slots.open["b"] == 2
    slots.release("b")  # handed to the first waiter, not freed: a newcomer cannot pass it
    assert not slots.free("b")
    assert await first > 0.0 and order == ["first"]
    slots.release("b")
    assert await second > 0.0 and order == ["first", "second"]
    assert slots.open["b"] == 2 and slots.waiting("b") == 0
    slots.release("b")
    slots.release("b")
    slots.release("c")
    assert slots.free("b") and not slots.open and not slots._queues


async def test_a_wait_is_bounded_and_a_cancelled_waiter_gives_its_place_on() -> None:
    slots = StreamSlots(per_peer=1)
    await slots.acquire("b", 1.0)
    t0 = time.monotonic()
    with pytest.raises(StreamSlotsBusyError) as info:
        await slots.acquire("b", 0.2)
    assert time.monotonic() - t0 >= 0.2
    err = info.value
    assert err.code == "stream_slots_busy" and err.transient and "url" not in err.evidence
    assert err.evidence["peer"] == "b" and err.evidence["streams"] == 1 and err.evidence["limit"] == 1
    assert err.evidence["waited_s"] >= 0.2 and "the next cycle ships again" in err.message
    assert slots.waiting("b") == 0 and slots.open["b"] == 1  # the timed-out one left the queue

    cancelled = asyncio.create_task(slots.acquire("b", 5.0))
    behind = asyncio.create_task(slots.acquire("b", 5.0))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert slots.waiting("b") == 1
    slots.release("b")
    assert await behind > 0.0 and slots.open["b"] == 1

    # given a place in the same loop step as it was cancelled: the place goes on, not lost
    granted = asyncio.create_task(slots.acquire("b", 5.0))
    last = asyncio.create_task(slots.acquire("b", 5.0))
    await asyncio.sleep(0.05)
    slots.release("b")        # granted's future is set ...
    granted.cancel()          # ... and it is cancelled before it ran again
    with pytest.raises(asyncio.CancelledError):
        await granted
    assert await last > 0.0 and slots.open["b"] == 1 and slots.waiting("b") == 0
    slots.release("b")
    assert not slots.open


def test_the_client_keeps_two_places_of_the_replicas_bound_and_waits_about_an_interval() -> None:
    assert CHUNK_SLOTS_PER_PEER == CHUNK_STREAMS_PER_PEER - 2 > 0
    assert slot_wait_s(2.0) == CHUNK_SLOT_WAIT_MIN_S
    assert slot_wait_s(120.0) == 120.0
    assert slot_wait_s(3600.0) == CHUNK_SLOT_WAIT_MAX_S


async def test_a_consumer_that_leaves_before_its_first_batch_keeps_nothing_held(tmp_path: Path) -> None:
    rng = random.Random(4)
    with ChunkStore(tmp_path / "a") as store:
        digests = store.put_blocks([rng.randbytes(4096) for _ in range(6)])
        shared = SharedFrames(store, consumers=3)
        await shared.read(digests[:3])
        await shared.read(digests[:3])
        assert len(shared._batches) == 1  # two of three took it: held for the third
        shared.leave()                    # the third will take none (it waits for a place)
        assert not shared._batches and shared.consumers == 2
        await shared.read(digests[3:])
        assert len(shared._batches) == 1
        await shared.read(digests[3:])
        assert not shared._batches


class SlowStore(ChunkStore):
    """A replica's real store whose batches take ``delay_s`` each to store (a slow disk), counting
    the batches being stored at once (each stream of the test stores one batch)."""

    delay_s = 0.3
    lock = threading.Lock()
    storing = 0
    most = 0

    def put_encoded(self, items):
        cls = type(self)
        with cls.lock:
            cls.storing += 1
            cls.most = max(cls.most, cls.storing)
        try:
            time.sleep(cls.delay_s)
            return super().put_encoded(items)
        finally:
            with cls.lock:
                cls.storing -= 1


class CountingReceiver(Receiver):
    """The test receiver, recording the request documents (chunk streams) it refused."""

    def __init__(self, store: ChunkStore) -> None:
        super().__init__(store)
        self.refused: list[tuple[str, str, str]] = []

    def doc_refused(self, peer: str, route: str, reason: str) -> None:
        self.refused.append((peer, route, reason))


async def test_more_ships_than_the_replica_takes_at_once_queue_here_and_none_is_refused(tmp_path: Path) -> None:
    """12 volumes ship to one replica at once, each a stream of its own: at most
    CHUNK_SLOTS_PER_PEER reach it at once, the others wait here (counted), every chunk is stored
    and the replica refuses none (without the bound: 12 streams against its 8 places)."""
    rng = random.Random(11)
    n = CHUNK_STREAMS_PER_PEER + 4
    SlowStore.storing = SlowStore.most = 0
    with ChunkStore(tmp_path / "sender") as store, SlowStore(tmp_path / "receiver") as replica:
        volumes = [store.put_blocks([rng.randbytes(65536) for _ in range(4)]) for _ in range(n)]
        receiver = CountingReceiver(replica)
        waits: list[tuple[float, bool]] = []
        async with serving(peer_routes(receiver)) as url, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            client = PeerClient(session, "site-a")
            results = await asyncio.gather(*(
                client.send_chunks(url, f"v{i}", 1, store, digests, slot_wait_s=30.0,
                                   on_slot_wait=lambda s, got: waits.append((s, got)))
                for i, digests in enumerate(volumes)))
        assert [stored for stored, _ in results] == [4] * n
        assert all(replica.missing(d) == [] for d in volumes)
        assert receiver.refused == []
        assert 0 < SlowStore.most <= CHUNK_SLOTS_PER_PEER
        assert len(waits) == n - CHUNK_SLOTS_PER_PEER and all(got and s > 0 for s, got in waits)
        assert not client.chunk_slots.open and not client.chunk_slots._queues


async def test_a_sender_waiting_for_its_place_leaves_the_shared_batches_and_stalls_no_other_peer(
        tmp_path: Path) -> None:
    rng = random.Random(12)
    with ChunkStore(tmp_path / "sender") as store, ChunkStore(tmp_path / "b") as b_store, \
            ChunkStore(tmp_path / "c") as c_store:
        digests = store.put_blocks([rng.randbytes(65536) for _ in range(200)])  # 4 batches of READ_BATCH
        async with serving(peer_routes(Receiver(b_store))) as b_url, serving(peer_routes(Receiver(c_store))) as c_url, \
                aiohttp.ClientSession() as session:
            client = PeerClient(session, "site-a")
            for _ in range(CHUNK_SLOTS_PER_PEER):  # every place to site-b taken (other volumes' streams)
                await client.chunk_slots.acquire(origin(b_url), 1.0)
            waits: list[tuple[float, bool]] = []

            # site-b's sender gives up after 0.3 s: nothing sent, typed, counted as a wait, not as a stall
            shared = SharedFrames(store, consumers=2)
            to_b = asyncio.create_task(client.send_chunks(b_url, "ehr", 1, store, digests, shared, slot_wait_s=0.3,
                                                          on_slot_wait=lambda s, got: waits.append((s, got))))
            stored, _ = await client.send_chunks(c_url, "ehr", 1, store, digests, shared)
            assert stored == 200 and c_store.missing(digests) == []
            assert not shared._batches and shared.consumers == 1  # nothing kept for site-b's sender
            with pytest.raises(StreamSlotsBusyError) as info:
                await to_b
            assert info.value.evidence["peer"] == origin(b_url) and "url" not in info.value.evidence
            assert b_store.missing(digests) == digests
            assert len(waits) == 1 and waits[0][1] is False and waits[0][0] >= 0.3

            # with a place freed while it waits, it streams reading its own batches
            shared = SharedFrames(store, consumers=2)
            to_b = asyncio.create_task(client.send_chunks(b_url, "ehr", 1, store, digests, shared, slot_wait_s=30.0,
                                                          on_slot_wait=lambda s, got: waits.append((s, got))))
            await asyncio.sleep(0.2)
            assert shared.consumers == 1  # it left at once
            await client.send_chunks(c_url, "ehr", 1, store, digests[:1], shared)
            client.chunk_slots.release(origin(b_url))
            stored, _ = await to_b
            assert stored == 200 and b_store.missing(digests) == []
            assert waits[1][1] is True and waits[1][0] >= 0.2
            for _ in range(CHUNK_SLOTS_PER_PEER - 1):
                client.chunk_slots.release(origin(b_url))
            assert not client.chunk_slots.open
