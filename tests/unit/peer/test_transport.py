"""The peer transport (replicad.peer.transport) between two real chunk stores over a real aiohttp
server on loopback: errors say whose fault they are."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from replicad.storage.chunkstore import ChunkStore
from replicad.core.errors import NotFoundError, PeerUnavailableError, RevokedError
from replicad.lab.localcluster import free_port
from replicad.core.manifest import iter_block_digests
from replicad.peer.transport import PeerClient, SharedFrames, peer_routes


class Receiver:
    """A site's side of the peer API (the :class:`replicad.peer.transport.PeerHost` protocol) over a
    real store; it accepts every writer (fencing is the daemon's, tested with real daemons)."""

    def __init__(self, store: ChunkStore) -> None:
        self.site_id = "site-b"
        self.store = store
        self.audited: list[tuple] = []
        self.revoked: set[str] = set()
        self.fetches: list[tuple] = []

    async def check_write_epoch(self, volume: str, epoch: int, sender: str) -> None:
        return None

    def check_peer(self, sender: str) -> None:
        if sender in self.revoked:
            raise RevokedError(f"{sender} revoked", sender=sender)

    async def snapshot_received(self, volume: str, epoch: int, seq: int, root: bytes, created_at_ns: int) -> None:
        return None

    def complete_base(self, volume: str):
        return None

    def chunks_received(self, volume: str, sender: str, payload_bytes: int) -> None:
        return None

    def admit_chunk(self, volume: str, epoch: int, sender: str, payload_bytes: int) -> None:
        return None

    async def peer_audit(self, sender: str, path: str, doc: dict, err) -> None:
        self.audited.append((sender, path, doc, err.code if err is not None else None))

    def check_fetch(self, volume: str, sender: str, digests) -> None:
        return None

    def fetch_done(self, sender: str, volume, chunks: int, payload_bytes: int, err) -> None:
        self.fetches.append((sender, volume, chunks, payload_bytes, err.code if err is not None else None))


async def test_a_chunk_pruned_from_the_local_store_is_a_local_error_not_an_unreachable_peer(tmp_path: Path) -> None:
    rng = random.Random(3)
    blocks = [rng.randbytes(65536) for _ in range(3)]
    with ChunkStore(tmp_path / "sender") as sender, ChunkStore(tmp_path / "receiver") as receiver:
        digests = sender.put_blocks(blocks)
        sender.gc(set(digests[:2]), grace_ns=0)  # the third is pruned and collected after the ship planned to send it
        assert sender.missing(digests) == [digests[2]]
        app = web.Application()
        app.add_routes(peer_routes(Receiver(receiver)))
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                client = PeerClient(session, "site-a")
                try:
                    await client.send_chunks(url, "ehr", 1, sender, digests)
                except PeerUnavailableError as err:
                    raise AssertionError(f"a local missing chunk was blamed on the peer: {err}") from None
                except NotFoundError as err:
                    assert err.code == "not_found" and err.evidence["digest"] == digests[2].hex()
                    assert err.evidence.get("local") is True and "url" not in err.evidence
                    assert "no longer in this site's store" in err.message and "not the peer's" in err.message
                else:
                    raise AssertionError("sending a chunk the store no longer holds succeeded")
                # the peer was fine all along: the chunks still held ship to it
                await client.send_chunks(url, "ehr", 1, sender, digests[:2])
                assert receiver.missing(digests[:2]) == []
        finally:
            await runner.cleanup()


class CountingStore(ChunkStore):
    """A real chunk store that counts the chunks read out of it."""

    reads = 0

    def get_encoded(self, digest: bytes) -> tuple[int, bytes]:
        type(self).reads += 1
        return super().get_encoded(digest)

    def get_encoded_many(self, digests):
        type(self).reads += len(digests)
        return super().get_encoded_many(digests)


async def test_shared_frames_read_each_batch_once_for_all_peers(tmp_path: Path) -> None:
    """Two senders of one ship ask for the same batches: one store read (and verification)
    per chunk; a sender that falls more than max_batches behind reads its own; a chunk
    missing here fails every sender of its batch with the local NotFoundError."""
    rng = random.Random(5)
    with CountingStore(tmp_path / "a") as store:
        digests = store.put_blocks([rng.randbytes(4096) for _ in range(12)])
        batches = [digests[i:i + 3] for i in range(0, 12, 3)]
        shared = SharedFrames(store, consumers=2, max_batches=2)
        CountingStore.reads = 0
        first, second = await asyncio.gather(shared.read(batches[0]), shared.read(batches[0]))
        assert first == second and len(first) == 3
        assert CountingStore.reads == 3
        for b in batches[1:]:  # one sender runs 3 batches ahead: batch 1 is dropped (max 2 held)
            await shared.read(b)
        assert CountingStore.reads == 12
        await shared.read(batches[3])        # still held: no read
        assert CountingStore.reads == 12
        await shared.read(batches[1])        # dropped: read again
        assert CountingStore.reads == 15
        gone = [bytes(32)]
        shared = SharedFrames(store, consumers=2)
        results = await asyncio.gather(shared.read(gone), shared.read(gone), return_exceptions=True)
        assert all(isinstance(r, NotFoundError) and r.evidence.get("local") for r in results)
        with pytest.raises(NotFoundError):
            await shared.read(gone)


async def test_completeness_against_a_held_base_looks_up_only_the_changed_blocks(tmp_path: Path) -> None:
    """snapshot_complete with ``base`` (a snapshot the receiver holds completely): a changed
    block's chunk missing is refused; unchanged blocks are trusted to the base (a chunk of
    theirs missing is only seen without a base — why complete_base refuses to name a base
    while the store has repairs pending)."""
    from replicad.sources.file import take_snapshot
    from replicad.peer.transport import snapshot_complete
    rng = random.Random(8)
    img = tmp_path / "v.img"
    img.write_bytes(rng.randbytes(16 * 4096))
    with ChunkStore(tmp_path / "primary") as src, ChunkStore(tmp_path / "replica") as dst:
        m1 = (await take_snapshot(img, volume="v", seq=1, epoch=1, parent=None, store=src, now_ns=1,
                                  block_size=4096)).manifest
        with open(img, "r+b") as fh:
            fh.seek(5 * 4096)
            fh.write(rng.randbytes(4096))
        m2 = (await take_snapshot(img, volume="v", seq=2, epoch=1, parent=m1, store=src, now_ns=2,
                                  block_size=4096)).manifest
        everything = {d for m in (m1, m2) for d in (m.root, *m.pages, *iter_block_digests(m, src.get))}
        changed = next(d for d in iter_block_digests(m2, src.get) if d not in set(iter_block_digests(m1, src.get)))
        dst.put_encoded([(d, *src.get_encoded(d)) for d in everything if d != changed])
        with pytest.raises(NotFoundError) as info:
            snapshot_complete(dst, "v", 1, 2, m2.root, base=m1)
        assert info.value.evidence["missing"] == 1
        dst.put_encoded([(changed, *src.get_encoded(changed))])
        assert snapshot_complete(dst, "v", 1, 2, m2.root, base=m1).root == m2.root
        unchanged = next(iter_block_digests(m1, src.get))
        dst.delete_corrupt(unchanged)
        assert snapshot_complete(dst, "v", 1, 2, m2.root, base=m1).root == m2.root  # trusted to the base
        with pytest.raises(NotFoundError):
            snapshot_complete(dst, "v", 1, 2, m2.root)
        assert dst.repairs_pending == 1


async def test_every_route_refuses_a_revoked_sender_and_audits_it(tmp_path: Path) -> None:
    blocks = [random.Random(7).randbytes(65536)]
    with ChunkStore(tmp_path / "sender") as sender, ChunkStore(tmp_path / "receiver") as store:
        digests = sender.put_blocks(blocks)
        host = Receiver(store)
        host.revoked.add("site-a")
        app = web.Application()
        app.add_routes(peer_routes(host))
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                client = PeerClient(session, "site-a")
                calls = {"/v1/peer/missing": client.missing(url, "ehr", 1, digests),
                         "/v1/peer/chunks": client.send_chunks(url, "ehr", 1, sender, digests),
                         "/v1/peer/snapshot": client.snapshot_stored(url, "ehr", 1, 1, digests[0]),
                         "/v1/peer/fetch": client.fetch(url, "ehr", 1, digests, store)}
                for path, call in calls.items():
                    with pytest.raises(RevokedError) as info:
                        await call
                    assert info.value.code == "revoked" and info.value.evidence["sender"] == "site-a", path
                assert store.missing(digests) == digests  # nothing stored
                assert [(a[0], a[1], a[3]) for a in host.audited] == [("site-a", p, "revoked") for p in calls]
                # another sender is served as before
                assert await PeerClient(session, "site-c").missing(url, "ehr", 1, digests) == digests
        finally:
            await runner.cleanup()
