"""A restore streamed from several holders (replicad.site.peer_restore) with real chunk stores
behind real peer servers on loopback: the split across holders, the bounded window, a holder that
dies in the middle of a stream, a chunk no holder has, and chunks this site still holds."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from replicad.core import wire
from replicad.core.errors import NotFoundError, PeerUnavailableError, ReplicadError
from replicad.core.manifest import ZERO_DIGEST, Manifest, iter_block_digests
from replicad.lab.localcluster import free_port
from replicad.peer.transport import PeerClient, peer_routes
from replicad.site import peer_restore
from replicad.sources.file import take_snapshot
from replicad.storage import assemble
from replicad.storage.chunkstore import RECORD_HEADER_SIZE, ChunkStore
from replicad.storage.image import verify_image

from tests.unit.peer.test_transport import Receiver

BLOCK = 65536
VOL = "ehr"


def write_image(path: Path, n_blocks: int, rng: random.Random) -> None:
    """Zero blocks, text-like blocks, random blocks, a block repeated far apart, a short tail."""
    with open(path, "wb") as f:
        for i in range(n_blocks):
            if i % 5 == 0:
                f.write(bytes(BLOCK))
            elif i % 97 == 1:
                f.write(b"the same block at several places\n" * (BLOCK // 33) + bytes(BLOCK % 33))
            elif i % 2:
                f.write((f"patient {i} record {rng.random()}\n" * 3000).encode()[:BLOCK])
            else:
                f.write(rng.randbytes(BLOCK))
        f.write(b"short tail")


async def snapshot_into(image: Path, *stores: ChunkStore) -> Manifest:
    manifest = None
    for store in stores:
        manifest = (await take_snapshot(image, volume=VOL, seq=1, epoch=1, parent=None, store=store,
                                        now_ns=1)).manifest
    assert manifest is not None
    return manifest


def copy_chunks(src: ChunkStore, dst: ChunkStore, digests) -> None:
    dst.put_encoded([(d, *src.get_encoded(d)) for d in digests])


class Server:
    """One holder: the real peer routes over ``store``; with ``die_after`` frames served in all,
    it writes half a frame, cuts the connection, and cuts every later request at once (a holder
    that died in the middle of a stream)."""

    def __init__(self, store: ChunkStore, site_id: str, die_after: int | None = None) -> None:
        self.store, self.site_id, self.die_after = store, site_id, die_after
        self.served = 0

    async def dying_fetch(self, request: web.Request) -> web.StreamResponse:
        doc = wire.decode_doc("fetch", await request.read())
        resp = web.StreamResponse(headers={"Content-Type": wire.CONTENT_TYPE})
        await resp.prepare(request)
        await resp.write(wire.encode_doc("chunks", volume=doc["volume"], epoch=doc["epoch"],
                                         **{"from": self.site_id}))
        for d in doc["digests"]:
            frame = wire.encode_frame(d, *self.store.get_encoded(d))
            if self.served >= self.die_after:
                await resp.write(frame[:len(frame) // 2])
                request.transport.abort()
                return resp
            await resp.write(frame)
            self.served += 1
        await resp.write_eof()
        return resp

    async def slow_fetch(self, request: web.Request) -> web.StreamResponse:
        """A holder just above the progress rule: every frame whole, ``self.gap_s`` apart."""
        doc = wire.decode_doc("fetch", await request.read())
        resp = web.StreamResponse(headers={"Content-Type": wire.CONTENT_TYPE})
        await resp.prepare(request)
        await resp.write(wire.encode_doc("chunks", volume=doc["volume"], epoch=doc["epoch"],
                                         **{"from": self.site_id}))
        for d in doc["digests"]:
            await asyncio.sleep(self.gap_s)
            await resp.write(wire.encode_frame(d, *self.store.get_encoded(d)))
            self.served += 1
        await resp.write_eof()
        return resp

    async def hostile_fetch(self, request: web.Request) -> web.StreamResponse:
        """A compromised holder: answers every fetch with frames broken the way ``self.mangle``
        says (see test_a_hostile_holder_is_dropped_and_nothing_it_sent_is_written)."""
        doc = wire.decode_doc("fetch", await request.read())
        resp = web.StreamResponse(headers={"Content-Type": wire.CONTENT_TYPE})
        await resp.prepare(request)
        await resp.write(wire.encode_doc("chunks", volume=doc["volume"], epoch=doc["epoch"],
                                         **{"from": self.site_id}))
        for d in doc["digests"]:
            codec, payload = self.store.get_encoded(d)
            mode = self.mangle
            if mode == "flip":  # one byte of every payload changed: lz4 garbage or a digest mismatch
                payload = payload[:-1] + bytes([payload[-1] ^ 1])
                frame = wire.encode_frame(d, codec, payload)
            elif mode == "oversize":  # a raw chunk longer than any block, under the frame bound
                frame = wire.encode_frame(d, 0, payload + bytes(BLOCK + 1 - len(payload)))
            elif mode == "noncanonical":  # the codec as uint 8: valid msgpack, not what any sender writes
                frame = b"\x93\xc4\x20" + d + b"\xcc" + bytes([codec]) + wire.frame_head(d, codec, len(payload))[36:] \
                    + payload
            else:  # garbage after the header
                frame = random.Random(len(d)).randbytes(3000)
            self.served += 1
            await resp.write(frame)
        await resp.write_eof()
        return resp

    async def __aenter__(self) -> str:
        host = Receiver(self.store)
        host.site_id = self.site_id
        app = web.Application()
        if getattr(self, "mangle", None) is not None:
            app.add_routes([web.post("/v1/peer/fetch", self.hostile_fetch)])
        elif getattr(self, "gap_s", None) is not None:
            app.add_routes([web.post("/v1/peer/fetch", self.slow_fetch)])
        elif self.die_after is None:
            app.add_routes(peer_routes(host))
        else:
            app.add_routes([web.post("/v1/peer/fetch", self.dying_fetch)])
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


@pytest.fixture
def stores(tmp_path: Path):
    made = [ChunkStore(tmp_path / name) for name in ("holder-b", "holder-c", "here")]
    try:
        yield made
    finally:
        for s in made:
            s.close()


async def test_the_chunks_are_split_across_both_holders_within_the_window_and_local_ones_are_read_here(
        tmp_path: Path, stores, monkeypatch) -> None:
    b, c, here = stores
    image = tmp_path / "volume.img"
    write_image(image, 640, random.Random(5))  # 40 MiB and a short tail: 6 units of up to 8 MiB
    manifest = await snapshot_into(image, b, c)
    copy_chunks(b, here, [manifest.root, *manifest.pages])
    blocks = [d for d in dict.fromkeys(iter_block_digests(manifest, b.get)) if d != ZERO_DIGEST]
    copy_chunks(b, here, blocks[:10])  # this site still holds a few
    allocated = []
    real_buffer = assemble.ImageAssembler.buffer
    monkeypatch.setattr(assemble.ImageAssembler, "buffer", lambda self: allocated.append(1) or real_buffer(self))
    progress: list[tuple[int, int]] = []
    target = tmp_path / "restored.img"
    async with Server(b, "site-b") as url_b, Server(c, "site-c") as url_c:
        async with aiohttp.ClientSession() as session:
            rep = await peer_restore.restore_from_holders(
                PeerClient(session, "site-a"), {"site-b": url_b, "site-c": url_c}, VOL, 1, manifest, here, target,
                progress=lambda d, t: progress.append((d, t)), window_bytes=2 * assemble.UNIT_BYTES)
    assert target.read_bytes() == image.read_bytes()
    assert verify_image(target, manifest) == manifest.root  # O5
    assert rep.units == 6 and rep.local_chunks >= 10  # a repeated chunk is placed in each unit that has it
    served = {h: r.chunks for h, r in rep.holders.items()}
    assert served["site-b"] > 0 and served["site-c"] > 0, served  # both holders worked
    assert all(r.failed is None for r in rep.holders.values())
    assert len(allocated) <= 2  # never more buffers than the window holds
    assert progress[-1] == (manifest.n_blocks, manifest.n_blocks)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert not b.missing(blocks) and here.missing(blocks[10:]) == blocks[10:]  # nothing stored here


async def test_a_holder_that_dies_mid_stream_leaves_its_share_to_the_other(tmp_path: Path, stores) -> None:
    b, c, here = stores
    image = tmp_path / "volume.img"
    write_image(image, 512, random.Random(6))
    manifest = await snapshot_into(image, b, c)
    copy_chunks(b, here, [manifest.root, *manifest.pages])
    target = tmp_path / "restored.img"
    dying = Server(c, "site-c", die_after=70)  # inside its first or second unit's stream
    async with Server(b, "site-b") as url_b, dying as url_c:
        async with aiohttp.ClientSession() as session:
            rep = await peer_restore.restore_from_holders(
                PeerClient(session, "site-a"), {"site-b": url_b, "site-c": url_c}, VOL, 1, manifest, here, target)
    assert target.read_bytes() == image.read_bytes()
    assert verify_image(target, manifest) == manifest.root
    assert dying.served == 70 and 0 < rep.holders["site-c"].chunks <= 70  # the last ones sent may be lost in the cut
    assert rep.holders["site-c"].failed is not None and "peer_unavailable" in rep.holders["site-c"].failed
    assert rep.holders["site-b"].failed is None and rep.holders["site-b"].chunks > 0


async def test_a_unit_at_a_holder_just_above_the_rule_is_taken_over_by_the_faster_one(tmp_path: Path,
                                                                                       stores) -> None:
    """The end game: site-b sends every frame whole 0.1 s apart (640 KiB/s, 6x the progress
    rule: never cut by it; ~13 s per 8 MiB unit). It takes the first unit of each of its two
    streams; once site-c's streams find nothing left to take, they take over site-b's units
    (in flight longer than 3x site-c's own units took): the restore does not wait for them."""
    b, c, here = stores
    image = tmp_path / "volume.img"
    write_image(image, 640, random.Random(12))  # 40 MiB: 6 units
    manifest = await snapshot_into(image, b, c)
    copy_chunks(b, here, [manifest.root, *manifest.pages])
    target = tmp_path / "restored.img"
    slow = Server(b, "site-b")
    slow.gap_s = 0.1
    async with slow as url_b, Server(c, "site-c") as url_c:
        async with aiohttp.ClientSession() as session:
            rep = await peer_restore.restore_from_holders(
                PeerClient(session, "site-a"), {"site-b": url_b, "site-c": url_c}, VOL, 1, manifest, here, target)
    assert target.read_bytes() == image.read_bytes()
    assert verify_image(target, manifest) == manifest.root
    assert rep.holders["site-b"].taken_over >= 1 and rep.holders["site-b"].failed is None, rep.to_dict()
    assert rep.holders["site-c"].taken_over == 0
    assert rep.to_dict()["holders"]["site-b"]["taken_over"] == rep.holders["site-b"].taken_over


@pytest.mark.parametrize("mangle", ["flip", "oversize", "noncanonical", "garbage"])
async def test_a_hostile_holder_is_dropped_and_nothing_it_sent_is_written(tmp_path: Path, stores, mangle) -> None:
    """A compromised holder sends payloads that do not match their digests, a raw chunk longer
    than a block, a frame in a msgpack form no sender writes, or garbage: it is dropped with a
    typed error, reported against it (``on_stall``), and the other holder supplies everything;
    alone, it fails the restore."""
    b, c, here = stores
    image = tmp_path / "volume.img"
    write_image(image, 200, random.Random(10))
    manifest = await snapshot_into(image, b, c)
    copy_chunks(b, here, [manifest.root, *manifest.pages])
    hostile = Server(c, "site-c")
    hostile.mangle = mangle
    target = tmp_path / "restored.img"
    async with Server(b, "site-b") as url_b, hostile as url_c:
        async with aiohttp.ClientSession() as session:
            client = PeerClient(session, "site-a")
            faults: list[str] = []
            client.on_stall = lambda url, err: faults.append(url)  # Pull.note_stall: warned, ranked last
            rep = await peer_restore.restore_from_holders(client, {"site-c": url_c, "site-b": url_b}, VOL, 1,
                                                          manifest, here, target)
            assert faults and set(faults) == {url_c}  # its bad frames were reported against it
            assert target.read_bytes() == image.read_bytes()
            assert verify_image(target, manifest) == manifest.root
            assert hostile.served > 0 and rep.holders["site-c"].failed is not None, rep.holders
            assert rep.holders["site-b"].failed is None
            alone = tmp_path / "alone.img"
            with pytest.raises(ReplicadError) as err:
                await peer_restore.restore_from_holders(client, {"site-c": url_c}, VOL, 1, manifest, here, alone)
    assert isinstance(err.value, PeerUnavailableError), err.value
    assert err.value.evidence["failed"]["site-c"].split(":")[0] in ("integrity", "remote_protocol"), err.value.evidence


async def test_a_chunk_no_holder_has_fails_the_restore_as_not_found(tmp_path: Path, stores) -> None:
    b, c, here = stores
    image = tmp_path / "volume.img"
    write_image(image, 64, random.Random(7))
    manifest = await snapshot_into(image, b, c)
    copy_chunks(b, here, [manifest.root, *manifest.pages])
    lost = next(d for d in iter_block_digests(manifest, b.get) if d != ZERO_DIGEST)
    b.delete_corrupt(lost)
    c.delete_corrupt(lost)
    async with Server(b, "site-b") as url_b, Server(c, "site-c") as url_c:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(NotFoundError) as err:
                await peer_restore.restore_from_holders(
                    PeerClient(session, "site-a"), {"site-b": url_b, "site-c": url_c}, VOL, 1, manifest, here,
                    tmp_path / "restored.img")
    assert err.value.evidence["missing"] == 1


async def test_a_fetch_into_the_store_is_split_across_holders_and_survives_one_dying(tmp_path: Path, stores) -> None:
    """Pull.fetch_missing of more than FETCH_SLICE chunks from two holders: both asked at once, the
    one cut mid-stream dropped and its slice fetched from the other; every chunk stored here."""
    from types import SimpleNamespace

    from replicad.site.pull import FETCH_SLICE, Pull

    b, c, here = stores
    image = tmp_path / "volume.img"
    write_image(image, 1200, random.Random(8))
    manifest = await snapshot_into(image, b, c)
    need = [d for d in dict.fromkeys(iter_block_digests(manifest, b.get)) if d != ZERO_DIGEST]
    assert len(need) > 2 * FETCH_SLICE
    dying = Server(c, "site-c", die_after=FETCH_SLICE // 2)
    async with Server(b, "site-b") as url_b, dying as url_c:
        urls = {"site-b": url_b, "site-c": url_c}
        async with aiohttp.ClientSession() as session:
            cluster = SimpleNamespace(site_id="site-a", peer_url=urls.__getitem__)
            pull = Pull(cluster, here, None, PeerClient(session, "site-a"))
            await pull.fetch_missing(VOL, 1, need, ["site-b", "site-c"])
    assert here.missing(need) == []
    assert FETCH_SLICE // 2 <= dying.served < len(need)  # site-c served part of its slices, then died


async def test_a_plan_made_by_the_caller_is_used_and_the_pages_are_not_read_again(tmp_path: Path, stores) -> None:
    """Pull.ensure_pages reads the manifest's pages once to find what is missing here and hands
    that plan to the restore: one pass over the pages, not two."""
    b, c, here = stores
    image = tmp_path / "volume.img"
    write_image(image, 300, random.Random(9))
    manifest = await snapshot_into(image, b, c)
    copy_chunks(b, here, [manifest.root, *manifest.pages])
    plan = assemble.plan_units(manifest, here.get)
    pages_read = []
    real_get = here.get

    def counting_get(d: bytes) -> bytes:
        if d in manifest.pages:
            pages_read.append(d)
        return real_get(d)

    here.get = counting_get  # type: ignore[method-assign]
    target = tmp_path / "restored.img"
    try:
        async with Server(b, "site-b") as url_b, Server(c, "site-c") as url_c:
            async with aiohttp.ClientSession() as session:
                rep = await peer_restore.restore_from_holders(
                    PeerClient(session, "site-a"), {"site-b": url_b, "site-c": url_c}, VOL, 1, manifest, here,
                    target, plan=plan)
    finally:
        del here.get
    assert pages_read == []
    assert rep.units == len(plan[0])
    assert target.read_bytes() == image.read_bytes()


async def test_a_chunk_rotten_on_a_holders_disk_is_not_sent_and_comes_from_the_other(tmp_path: Path, stores) -> None:
    """A holder serves with O_DIRECT reads and verifies every chunk before it leaves: a byte
    flipped on its disk (in the pack, under a chunk of the snapshot) makes it drop that chunk
    from its index and answer without it; the unit is taken again by the other holder, which
    supplies the chunk; the image is byte-exact and nothing was written unverified."""
    b, c, here = stores
    image = tmp_path / "volume.img"
    write_image(image, 300, random.Random(12))
    manifest = await snapshot_into(image, b, c)
    copy_chunks(b, here, [manifest.root, *manifest.pages])
    victim = [d for d in iter_block_digests(manifest, c.get) if d != ZERO_DIGEST][40]
    pack, offset = c._db.execute("SELECT pack, offset FROM chunks WHERE digest=?", (victim,)).fetchone()
    with open(c._pack_path(pack), "r+b") as f:
        f.seek(offset + RECORD_HEADER_SIZE + 10)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    target = tmp_path / "restored.img"
    async with Server(b, "site-b") as url_b, Server(c, "site-c") as url_c:
        async with aiohttp.ClientSession() as session:
            rep = await peer_restore.restore_from_holders(
                PeerClient(session, "site-a"), {"site-c": url_c, "site-b": url_b}, VOL, 1, manifest, here, target,
                streams_per_holder=1)
    assert target.read_bytes() == image.read_bytes()
    assert verify_image(target, manifest) == manifest.root
    assert c.missing([victim]) == [victim]  # the rotten chunk left the holder's index
    assert rep.holders["site-c"].failed is None and rep.holders["site-c"].chunks > 0
    assert rep.holders["site-b"].chunks > 0


async def test_a_holder_that_answers_busy_is_asked_again_later_not_dropped(tmp_path: Path, stores,
                                                                           monkeypatch) -> None:
    from replicad.peer import transport
    b, c, here = stores
    image = tmp_path / "volume.img"
    write_image(image, 640, random.Random(8))
    manifest = await snapshot_into(image, b, c)
    copy_chunks(b, here, [manifest.root, *manifest.pages])
    # each holder serves one fetch of a site at a time and lets none wait: the second stream of
    # each holder is answered peer_busy
    monkeypatch.setattr(transport, "FETCH_PER_SITE", 1)
    monkeypatch.setattr(transport, "FETCH_WAITING_PER_SITE", 0)
    monkeypatch.setattr(transport, "FETCH_BUSY_RETRY_S", 0.05)
    monkeypatch.setattr(peer_restore, "FETCH_BUSY_RETRY_S", 0.05)
    target = tmp_path / "restored.img"
    async with Server(b, "site-b") as url_b, Server(c, "site-c") as url_c:
        async with aiohttp.ClientSession() as session:
            rep = await peer_restore.restore_from_holders(
                PeerClient(session, "site-a"), {"site-b": url_b, "site-c": url_c}, VOL, 1, manifest, here, target)
    assert target.read_bytes() == image.read_bytes()
    assert all(r.failed is None for r in rep.holders.values()), rep.to_dict()
    assert all(r.chunks > 0 for r in rep.holders.values()), rep.to_dict()


async def test_a_fetch_into_the_store_asks_a_busy_holder_again_later(tmp_path: Path, stores, monkeypatch) -> None:
    """Pull.fetch_missing's two streams per holder against holders that serve one fetch of a site
    at a time: the second stream's slices are answered peer_busy, asked again, all stored, and
    neither holder is dropped (both served)."""
    from types import SimpleNamespace

    from replicad.peer import transport
    from replicad.site import pull as pull_mod

    b, c, here = stores
    image = tmp_path / "volume.img"
    write_image(image, 1200, random.Random(9))
    manifest = await snapshot_into(image, b, c)
    need = [d for d in dict.fromkeys(iter_block_digests(manifest, b.get)) if d != ZERO_DIGEST]
    monkeypatch.setattr(transport, "FETCH_PER_SITE", 1)
    monkeypatch.setattr(transport, "FETCH_WAITING_PER_SITE", 0)
    monkeypatch.setattr(pull_mod, "FETCH_BUSY_RETRY_S", 0.05)
    async with Server(b, "site-b") as url_b, Server(c, "site-c") as url_c:
        urls = {"site-b": url_b, "site-c": url_c}
        async with aiohttp.ClientSession() as session:
            cluster = SimpleNamespace(site_id="site-a", peer_url=urls.__getitem__)
            pull = pull_mod.Pull(cluster, here, None, PeerClient(session, "site-a"))
            answered, failed = await pull._fetch_parallel(VOL, 1, need, ["site-b", "site-c"])
    assert here.missing(need) == []
    assert failed == set() and sorted(answered) == ["site-b", "site-c"]


async def test_a_small_fetch_asks_a_busy_holder_again_instead_of_calling_the_chunk_lost(tmp_path: Path,
                                                                                        stores, monkeypatch) -> None:
    """Pull.fetch_missing of a few chunks (the one-holder-at-a-time path): site-c lacks one chunk
    and site-b, which has it, answers its first fetch peer_busy: site-b is asked again later and
    the chunk is stored (a busy holder is not one that lacked it: a NotFoundError here makes a
    takeover skip a clean snapshot as lost)."""
    from types import SimpleNamespace

    from replicad.core.errors import PeerBusyError
    from replicad.peer.transport import error_response
    from replicad.site import pull as pull_mod

    b, c, here = stores
    image = tmp_path / "volume.img"
    write_image(image, 40, random.Random(10))
    manifest = await snapshot_into(image, b, c)
    need = [d for d in dict.fromkeys(iter_block_digests(manifest, b.get)) if d != ZERO_DIGEST]
    assert len(need) < pull_mod.FETCH_SLICE
    lost = need[3]
    c.delete_corrupt(lost)
    monkeypatch.setattr(pull_mod, "FETCH_BUSY_RETRY_S", 0.05)
    host = Receiver(b)
    host.site_id = "site-b"
    serve = next(r.handler for r in peer_routes(host) if r.path == "/v1/peer/fetch")
    asked = []

    async def busy_once(request: web.Request) -> web.StreamResponse:
        asked.append(1)
        if len(asked) == 1:
            await request.read()
            return error_response(PeerBusyError("serving its limit", sender="site-a", limit="per_site"))
        return await serve(request)

    app = web.Application()
    app.add_routes([web.post("/v1/peer/fetch", busy_once)])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with Server(c, "site-c") as url_c:
            urls = {"site-b": f"http://127.0.0.1:{port}", "site-c": url_c}
            async with aiohttp.ClientSession() as session:
                cluster = SimpleNamespace(site_id="site-a", peer_url=urls.__getitem__)
                pull = pull_mod.Pull(cluster, here, None, PeerClient(session, "site-a"))
                served = await pull.fetch_missing(VOL, 1, need, ["site-b", "site-c"])
    finally:
        await runner.cleanup()
    assert here.missing(need) == []
    assert len(asked) == 2 and "site-b" in served


async def test_a_fetch_every_holder_refuses_says_refused_not_unreachable(tmp_path: Path, stores) -> None:
    """Pull.fetch_missing when every holder answers fetch_refused (this site neither is the volume's
    primary nor holds it in Raft): PeerUnavailableError as before (callers wait), but saying the
    holders refused (evidence reason fetch_refused, the holders' reason), not 'no holder reachable'."""
    from types import SimpleNamespace

    from replicad.core.errors import FetchRefusedError
    from replicad.peer.transport import error_response
    from replicad.site import pull as pull_mod

    b, _, here = stores
    image = tmp_path / "volume.img"
    write_image(image, 20, random.Random(11))
    manifest = await snapshot_into(image, b)
    need = [d for d in dict.fromkeys(iter_block_digests(manifest, b.get)) if d != ZERO_DIGEST]

    async def refuse(request: web.Request) -> web.StreamResponse:
        await request.read()
        return error_response(FetchRefusedError("site-a may not read ehr", sender="site-a", volume=VOL,
                                                reason="not_holder"))

    runners, urls = [], {}
    try:
        for name in ("site-b", "site-c"):
            app = web.Application()
            app.add_routes([web.post("/v1/peer/fetch", refuse)])
            runner = web.AppRunner(app)
            await runner.setup()
            runners.append(runner)
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            urls[name] = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            cluster = SimpleNamespace(site_id="site-a", peer_url=urls.__getitem__)
            pull = pull_mod.Pull(cluster, here, None, PeerClient(session, "site-a"))
            with pytest.raises(PeerUnavailableError) as err:
                await pull.fetch_missing(VOL, 1, need, ["site-b", "site-c"])
    finally:
        for runner in runners:
            await runner.cleanup()
    assert err.value.evidence.get("reason") == "fetch_refused", err.value.evidence
    assert err.value.evidence.get("refusal") == "not_holder" and "refused" in err.value.message
