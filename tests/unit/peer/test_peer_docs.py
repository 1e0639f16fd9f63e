"""Peer request documents cost their receiver a bounded memory (``DocGate``, ``DOC_LIMITS``,
``DOC_RECEIVE_S``): each route's document is refused past the largest an honest peer sends (by its
Content-Length before any byte is read, else while reading), at most DOC_PER_SITE of one peer and
DOC_GLOBAL in all are received at once (the excess refused at once, 503 ``peer_busy``), and a body
must arrive within DOC_RECEIVE_S. Over a real aiohttp server on 127.0.0.1 with raw connections
that hold unfinished bodies. With real daemons, TLS and the memory measured:
``tests/security/test_peer_docs.py``."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from replicad.core import wire
from replicad.core.errors import PeerBusyError, RemoteProtocolError
from replicad.lab.localcluster import free_port
from replicad.peer import transport
from replicad.peer.transport import DOC_LIMITS, DocGate, PeerClient, peer_routes
from replicad.storage.chunkstore import ChunkStore
from tests.unit.peer.test_transport import Receiver

NAME = "\U0001F600" * wire.MAX_NAME_CHARS  # the longest name in bytes: 255 four-byte characters


class Host(Receiver):
    """The test host of test_transport, recording refused documents."""

    def __init__(self, store: ChunkStore) -> None:
        super().__init__(store)
        self.docs_refused: list[tuple[str, str, str]] = []

    def doc_refused(self, peer: str, route: str, reason: str) -> None:
        self.docs_refused.append((peer, route, reason))


def test_the_largest_honest_documents_fit_their_limits_and_one_digest_more_does_not() -> None:
    digests = [random.Random(i).randbytes(32) for i in range(wire.MAX_DIGESTS_PER_DOC)]
    for route in ("missing", "fetch"):
        doc = wire.encode_doc(route, volume=NAME, epoch=wire.MAX_COUNTER, digests=digests, **{"from": NAME})
        assert len(doc) <= DOC_LIMITS[route] < len(doc) + 2 * 2**10 + 34  # the envelope's slack: under 4 KiB
    snap = wire.encode_doc("snapshot", volume=NAME, epoch=wire.MAX_COUNTER, seq=wire.MAX_COUNTER, root=bytes(32),
                           **{"from": NAME})
    head = wire.encode_doc("chunks", volume=NAME, epoch=wire.MAX_COUNTER, **{"from": NAME})
    assert len(snap) <= DOC_LIMITS["snapshot"] and len(head) <= DOC_LIMITS["chunks"]
    assert max(DOC_LIMITS.values()) * transport.DOC_GLOBAL < 10 * 2**20  # all bodies in reception: under 10 MiB


class Server:
    """``peer_routes(host)`` served on 127.0.0.1 (an async context manager)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.port = free_port()

    async def __aenter__(self) -> "Server":
        app = web.Application()
        app.add_routes(peer_routes(self.host))
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    async def hold(self, route: str, sender: str, declared: int, send: int,
                   claim: str | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a connection from ``sender``'s address (:data:`SOURCE`: without TLS a peer is its
        address; the X-Replicad-From word it also sends counts for nothing) and send the head of a
        POST to ``route`` declaring ``declared`` body bytes and ``send`` bytes of it."""
        r, w = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(SOURCE[sender], 0))
        w.write(f"POST /v1/peer/{route} HTTP/1.1\r\nHost: x\r\nContent-Type: {wire.CONTENT_TYPE}\r\n"
                f"X-Replicad-From: {claim or sender}\r\nContent-Length: {declared}\r\n\r\n".encode() + b"\x00" * send)
        await w.drain()
        return r, w


SOURCE = {"site-c": "127.0.0.3", "site-a": "127.0.0.2"}
"""The loopback address each raw test sender connects from (PeerClient connects from 127.0.0.1)."""


def unauth(sender: str) -> str:
    """The name a receiver without TLS gives ``sender`` (``transport.peer_identity``)."""
    return f"unauthenticated@{SOURCE.get(sender, sender)}"


async def answer(r: asyncio.StreamReader) -> tuple[int, dict]:
    """The status and JSON body of an HTTP answer on a raw connection."""
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return status, json.loads(await r.readexactly(length))


async def test_a_document_declared_larger_than_any_honest_one_is_refused_before_its_body(tmp_path: Path) -> None:
    with ChunkStore(tmp_path / "store") as store:
        async with Server(Host(store)) as srv:
            for route in ("fetch", "missing", "snapshot", "chunks"):
                r, w = await srv.hold(route, "site-c", DOC_LIMITS[route] + 1 if route != "chunks" else 8 * 2**20, 0)
                if route == "chunks":  # a stream has no declared limit: its head is refused past 4 KiB
                    w.write(b"\x81\xda\xff\xff" + b"a" * DOC_LIMITS["chunks"])  # a map whose first key never ends
                    await w.drain()
                status, body = await answer(r)  # answered with no body byte sent (chunks: 4 KiB + 1)
                w.close()
                assert (status, body["error"], body["evidence"]["reason"]) == (400, "remote_protocol", "doc_too_large")
            assert srv.host.docs_refused == [(unauth("site-c"), route, "doc_too_large")
                                             for route in ("fetch", "missing", "snapshot", "chunks")]
            async with aiohttp.ClientSession() as session:  # a body without Content-Length: refused while read
                async def body():
                    for _ in range(4):
                        yield b"\x00" * 2**16
                async with session.post(f"http://127.0.0.1:{srv.port}/v1/peer/fetch", data=body()) as resp:
                    assert resp.status == 400
                    assert (await resp.json())["evidence"]["reason"] == "doc_too_large"


async def test_one_site_holds_at_most_its_share_of_unfinished_documents_and_others_are_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "DOC_PER_SITE", 4)
    monkeypatch.setattr(transport, "DOC_GLOBAL", 6)
    with ChunkStore(tmp_path / "store") as store:
        (d,) = store.put_blocks([random.Random(1).randbytes(65536)])
        async with Server(Host(store)) as srv:
            size = DOC_LIMITS["fetch"]
            held = [await srv.hold("fetch", "site-c", size, size - 1) for _ in range(4)]
            await asyncio.sleep(0.2)  # the server took their places
            r, w = await srv.hold("fetch", "site-c", size, size - 1, claim="site-a")
            status, body = await answer(r)  # the fifth (naming itself site-a, its word): refused at once
            w.close()
            assert (status, body["error"], body["evidence"]["reason"], body["evidence"]["limit"]) == \
                (503, "peer_busy", "doc_busy", "per_site")
            with pytest.raises(PeerBusyError):  # the client side: the typed error, not a cut connection
                raise transport._error_from(status, json.dumps(body).encode(), "u")
            async with aiohttp.ClientSession() as session:
                client = PeerClient(session, "site-a")  # another site is served meanwhile
                got = [f async for frames in client.fetch_frames(f"http://127.0.0.1:{srv.port}", "v", 1, [d])
                       for f in frames]
                assert [f[0] for f in got] == [d]
                held += [await srv.hold("missing", "site-a", size, 10) for _ in range(2)]
                await asyncio.sleep(0.2)  # 6 in reception: the bound in all
                with pytest.raises(PeerBusyError) as busy:
                    await client.missing(f"http://127.0.0.1:{srv.port}", "v", 1, [d])
                assert busy.value.evidence["limit"] == "global"
                for _, w in held:
                    w.close()
                await asyncio.sleep(0.3)  # their places given back
                assert await client.missing(f"http://127.0.0.1:{srv.port}", "v", 1, [d]) == []
            # the client's refused ask came from 127.0.0.1: without TLS a peer is its address
            assert sorted(set(srv.host.docs_refused)) == [(unauth("127.0.0.1"), "missing", "doc_busy_global"),
                                                           (unauth("site-c"), "fetch", "doc_busy_per_site")]


async def test_a_document_not_finished_within_the_deadline_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "DOC_RECEIVE_S", 0.5)
    with ChunkStore(tmp_path / "store") as store:
        async with Server(Host(store)) as srv:
            for route in ("fetch", "chunks"):
                r, w = await srv.hold(route, "site-c", 1000, 0)
                w.write(b"\x81\xda\x03\xe8" + b"a" * 995)  # 999 of 1000 bytes (a map whose key needs 1000)
                status, body = await answer(r)
                w.close()
                assert (status, body["evidence"]["reason"]) == (400, "doc_too_slow")
            assert srv.host.docs_refused == [(unauth("site-c"), "fetch", "doc_too_slow"),
                                             (unauth("site-c"), "chunks", "doc_too_slow")]


def test_refusals_are_logged_once_a_minute_per_site_route_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    seen: list[tuple[str, str, str]] = []
    gate = DocGate("site-b", lambda *a: seen.append(a), per_site=1, total=10, clock=lambda: now[0])
    gate.acquire("site-c", "fetch")
    caplog.set_level(logging.WARNING, "replicad.peer.transport")
    for _ in range(5):
        with pytest.raises(PeerBusyError):
            gate.acquire("site-c", "fetch")
    with pytest.raises(PeerBusyError):
        gate.acquire("site-c", "missing")
    gate.refused("site-c", "fetch", RemoteProtocolError("x", reason="doc_too_slow"))
    now[0] += 61
    with pytest.raises(PeerBusyError):
        gate.acquire("site-c", "fetch")
    lines = [r.getMessage() for r in caplog.records]
    assert len(seen) == 8 and len(lines) == 4
    assert all("documents of site 'site-c' at site-b" in line for line in lines)
    assert "doc_busy_per_site" in lines[0] and "(1 refused since" in lines[0]
    assert "(5 refused since" in lines[3]  # the four of the minute before and this one
    gate.release("site-c")
    gate.acquire("site-c", "fetch")  # its place given back
    assert gate.receiving == {"site-c": 1}
    caplog.clear()
    for i in range(3 * transport.DOC_LOG_KEYS):  # names claimed without TLS: what is remembered stays bounded
        now[0] += 0.001
        gate.refused(f"claimed-{i}", "fetch", RemoteProtocolError("x", reason="doc_too_slow"))
    assert len(gate._logged) <= transport.DOC_LOG_KEYS + 1
    assert sum("documents of site '*'" in r.getMessage() for r in caplog.records) == 1  # the rest of the minute


def test_the_peer_of_a_tls_request_is_its_certificates_site_before_any_body_byte() -> None:
    from replicad.peer.tls import cert_site
    cert = {"subject": ((("countryName", "CH"),), (("commonName", "site-c"),)),
            "subjectAltName": (("DNS", "b.example"), ("IP Address", "127.0.0.1"))}
    assert cert_site(cert) == "site-c"
    assert cert_site({"subject": (), "subjectAltName": (("DNS", "y"), ("DNS", "x"))}) == "x|y"
    assert cert_site(None) is None  # not over TLS: the peer is its address (peer_identity)


async def test_chunk_streams_are_bounded_per_peer_and_cut_when_idle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review R12 F3: a primary's streams that stop mid-frame held ~12 MiB each for ever. At most
    CHUNK_STREAMS_PER_PEER of one peer at once (the next refused busy at once), and a stream that
    brings no byte for CHUNK_IDLE_S after its head is cut (doc_too_slow); the places come back."""
    monkeypatch.setattr(transport, "CHUNK_STREAMS_PER_PEER", 2)
    monkeypatch.setattr(transport, "CHUNK_IDLE_S", 1.0)
    head = wire.encode_doc("chunks", volume="v", epoch=1, **{"from": "site-c"})
    with ChunkStore(tmp_path / "store") as store:
        async with Server(Host(store)) as srv:
            held = [await srv.hold("chunks", "site-c", 64 * 2**20, 0) for _ in range(2)]
            for _, w in held:
                w.write(head)  # a whole head, then nothing
                await w.drain()
            await asyncio.sleep(0.3)
            r, w = await srv.hold("chunks", "site-c", 64 * 2**20, 0)
            status, body = await answer(r)  # the third of site-c: refused at once
            w.close()
            assert (status, body["error"], body["evidence"]["reason"]) == (503, "peer_busy", "doc_busy")
            for r, w in held:  # the two held ones: cut once idle
                status, body = await answer(r)
                w.close()
                assert (status, body["evidence"]["reason"]) == (400, "doc_too_slow"), body
            r, w = await srv.hold("chunks", "site-c", 64 * 2**20, 0)  # the places are back
            w.write(head)
            await w.drain()
            status, body = await answer(r)
            w.close()
            assert (status, body["evidence"]["reason"]) == (400, "doc_too_slow")
            assert (unauth("site-c"), "chunks", "doc_busy_per_site") in srv.host.docs_refused
