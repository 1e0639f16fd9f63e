"""The peer transport (replicad.transport) between two real chunk stores over a real aiohttp
server on loopback: errors say whose fault they are."""

from __future__ import annotations

import random
from pathlib import Path

import aiohttp
from aiohttp import web

from replicad.chunkstore import ChunkStore
from replicad.errors import NotFoundError, PeerUnavailableError
from replicad.localcluster import free_port
from replicad.transport import PeerClient, peer_routes


class Receiver:
    """A site's side of the peer API (the :class:`replicad.transport.PeerHost` protocol) over a
    real store; it accepts every writer (fencing is the daemon's, tested with real daemons)."""

    def __init__(self, store: ChunkStore) -> None:
        self.site_id = "site-b"
        self.store = store

    async def check_write_epoch(self, volume: str, epoch: int, sender: str) -> None:
        return None

    async def snapshot_received(self, volume: str, epoch: int, seq: int, root: bytes, created_at_ns: int) -> None:
        return None

    def chunks_received(self, volume: str, sender: str, payload_bytes: int) -> None:
        return None


async def test_a_chunk_pruned_from_the_local_store_is_a_local_error_not_an_unreachable_peer(tmp_path: Path) -> None:
    rng = random.Random(3)
    blocks = [rng.randbytes(65536) for _ in range(3)]
    with ChunkStore(tmp_path / "sender") as sender, ChunkStore(tmp_path / "receiver") as receiver:
        digests = sender.put_blocks(blocks)
        sender.gc(set(digests[:2]))  # the third is pruned and collected after the ship planned to send it
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
