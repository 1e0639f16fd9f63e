"""A listener holds a bounded number of connections (``ConnGate``, ``GatedTCPSite``): at most
``per_peer`` of one peer and ``total`` in all (the excess closed at once, before aiohttp sees it),
each with a complete request head within ``head_s``; refusals counted and logged once a minute.
Over a real aiohttp server on 127.0.0.1 with raw connections that never finish their head (without
TLS a peer is its address: 127.0.0.2 and 127.0.0.3 are two peers). With real daemons, mutual TLS
and the descriptors counted: ``tests/security/test_peer_conns.py``."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from aiohttp import web

from replicad.lab.localcluster import free_port
from replicad.peer import conngate
from replicad.peer.conngate import ConnGate, GatedTCPSite

pytestmark = pytest.mark.timeout(60)

HEAD_S = 0.3
BIG = 8 * 2**20  # an answer larger than the socket buffers: the transport's flow control passes through


def test_the_gate_bounds_each_peer_and_all_and_logs_a_refusal_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, str]] = []
    now = [0.0]
    gate = ConnGate("site-b", "peer", lambda *a: seen.append(a), per_peer=2, total=3, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "replicad.peer.conngate")
    assert gate.admit("site-c") is None and gate.admit("site-c") is None
    assert gate.admit("site-c") == "conn_busy_per_peer"
    assert gate.admit("site-c") == "conn_busy_per_peer"  # counted, not logged again this minute
    assert gate.admit("site-a") is None
    assert gate.admit("site-a") == "conn_busy_global"  # site-a holds 1 of its 2, all 3 are taken
    gate.release("site-c")
    assert gate.admit("site-a") is None and dict(gate.open) == {"site-c": 1, "site-a": 2}
    assert seen == [("site-c", "conn_busy_per_peer")] * 2 + [("site-a", "conn_busy_global")]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "AUDIT refused connections of 'site-c' at site-b (peer listener): conn_busy_per_peer" \
        in lines[0], lines
    now[0] = conngate.CONN_LOG_S  # a minute later: logged again, with the one counted meanwhile
    gate.refused("site-c", "conn_busy_per_peer", "again")
    assert len(caplog.records) == 3 and "(2 since the last such line" in caplog.records[-1].getMessage()


def test_a_failing_account_changes_nothing_and_an_address_flood_is_logged_under_one_name(
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(peer: str, reason: str) -> None:
        raise RuntimeError("metrics down")
    gate = ConnGate("site-b", "peer", broken, per_peer=0, total=10)
    caplog.set_level(logging.WARNING, "replicad.peer.conngate")
    for i in range(conngate.CONN_LOG_KEYS + 5):
        assert gate.admit(f"unauthenticated@10.0.{i // 256}.{i % 256}") == "conn_busy_per_peer"
    audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("AUDIT")]
    assert len(audit) == conngate.CONN_LOG_KEYS + 1 and "'*'" in audit[-1]  # the rest of the minute under '*'


async def test_the_honest_client_pool_fits_under_the_bound_of_one_peer() -> None:
    # The daemon's session uses aiohttp's default connector (replicad.site.daemon: SiteDaemon.start):
    # at most `limit` connections in all, idle ones dropped after its keepalive_timeout.
    connector = aiohttp.TCPConnector()
    try:
        assert 0 < connector.limit < conngate.CONN_PER_PEER and connector.limit_per_host == 0
        assert connector._keepalive_timeout < conngate.IDLE_S  # noqa: SLF001 - aiohttp keeps no public reader
    finally:
        await connector.close()
    assert conngate.CONN_PER_PEER * 8 <= conngate.CONN_TOTAL


async def hello(request: web.Request) -> web.StreamResponse:
    if request.query.get("big"):
        return web.Response(body=b"\x00" * BIG)
    return web.Response(text="hello")


class Listener:
    """``hello`` served by a GatedTCPSite on 127.0.0.1 (an async context manager)."""

    def __init__(self, per_peer: int, total: int, head_s: float = HEAD_S, idle_s: float = 30.0) -> None:
        self.seen: list[tuple[str, str]] = []
        self.gate = ConnGate("site-b", "peer", lambda *a: self.seen.append(a), per_peer=per_peer, total=total,
                             head_s=head_s)
        self.port = free_port()
        self.idle_s = idle_s

    async def __aenter__(self) -> "Listener":
        app = web.Application(middlewares=[self.gate.middleware])
        app.add_routes([web.get("/hello", hello)])
        self.runner = web.AppRunner(app, keepalive_timeout=self.idle_s)
        await self.runner.setup()
        await GatedTCPSite(self.runner, "127.0.0.1", self.port, self.gate).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    async def slow(self, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection from ``source`` with the start of a head that never ends."""
        r, w = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))
        w.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        await w.drain()
        return r, w


async def closed(r: asyncio.StreamReader) -> None:
    """Wait until the server closes the connection of ``r``: it must answer nothing (EOF or reset;
    bounded only so that a broken gate fails the test instead of hanging it)."""
    try:
        assert await asyncio.wait_for(r.read(), 20) == b""
    except ConnectionResetError:
        pass


async def until(check, what: str) -> None:
    """Poll ``check()`` until true (bounded: a hang guard, not a timing goal)."""
    for _ in range(400):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def test_the_excess_is_closed_at_once_before_aiohttp_sees_it() -> None:
    async with Listener(per_peer=2, total=3, head_s=60.0) as srv:  # no head deadline within the test
        held = [await srv.slow("127.0.0.3") for _ in range(2)]
        await until(lambda: sum(srv.gate.open.values()) == 2, "two admitted")
        excess = await srv.slow("127.0.0.3")
        await closed(excess[0])  # the third of 127.0.0.3 closed at once ...
        with_other = await srv.slow("127.0.0.2")  # ... while another peer takes the last place of all
        await until(lambda: sum(srv.gate.open.values()) == 3, "three admitted")
        over_all = await srv.slow("127.0.0.2")
        await closed(over_all[0])
        # the held ones are still open (never answered), and only they reached aiohttp
        assert not any(r.at_eof() for r, _ in [*held, with_other])
        assert len(srv.runner.server.connections) == 3
        c, a = "unauthenticated@127.0.0.3", "unauthenticated@127.0.0.2"
        assert dict(srv.gate.open) == {c: 2, a: 1}
        assert srv.seen == [(c, "conn_busy_per_peer"), (a, "conn_busy_global")]
        for _, w in [*held, with_other]:  # closed by the peer: every place given back
            w.transport.abort()
        await until(lambda: not srv.gate.open and not srv.gate._heads, "places given back")  # noqa: SLF001
        async with aiohttp.ClientSession() as session:  # and an honest request passes
            async with session.get(f"http://127.0.0.1:{srv.port}/hello") as resp:
                assert resp.status == 200 and await resp.text() == "hello"
        for _, w in [excess, over_all]:
            w.close()


async def test_a_head_not_finished_in_time_is_closed_and_counted() -> None:
    async with Listener(per_peer=4, total=4) as srv:
        slow = [await srv.slow("127.0.0.3") for _ in range(3)]
        for r, w in slow:
            w.write(b"a")  # bytes keep coming: the deadline counts from the connection's start, not its silence
        for r, w in slow:
            await closed(r)
            w.close()
        await until(lambda: not srv.gate.open, "places given back")
        assert srv.seen == [("unauthenticated@127.0.0.3", "head_timeout")] * 3
        assert not srv.runner.server.connections


async def test_a_keep_alive_connection_outlives_the_head_deadline_and_large_answers_flow() -> None:
    async with Listener(per_peer=1, total=1) as srv:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"http://127.0.0.1:{srv.port}/hello"
            for i in range(3):  # one connection (one place) reused past the head deadline of its first head
                async with session.get(url, params={"big": "1"} if i == 1 else None) as resp:
                    body = await resp.read()
                    assert resp.status == 200 and len(body) == (BIG if i == 1 else 5)
                await asyncio.sleep(HEAD_S * 1.5)
            assert srv.seen == [] and dict(srv.gate.open) == {"unauthenticated@127.0.0.1": 1}


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_deadline() -> None:
    async with Listener(per_peer=1, total=1, idle_s=HEAD_S) as srv:
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        w.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        await w.drain()
        assert (await asyncio.wait_for(r.readuntil(b"hello"), 20)).startswith(b"HTTP/1.1 200")
        await closed(r)  # by aiohttp's keep-alive timer
        w.close()
        assert srv.seen == []  # an idle close is no refusal


async def test_a_site_whose_app_lacks_the_gate_middleware_refuses_to_listen() -> None:
    gate = ConnGate("site-b", "peer")
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        with pytest.raises(RuntimeError, match="middleware"):
            await GatedTCPSite(runner, "127.0.0.1", free_port(), gate).start()
    finally:
        await runner.cleanup()


class _Transport:
    """The little of a transport the gate reads before a handler exists."""

    def __init__(self) -> None:
        self.aborted = False

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.9", 4242) if name == "peername" else None

    def abort(self) -> None:
        self.aborted = True


async def test_a_handler_that_cannot_be_made_gives_its_place_back() -> None:
    """A failing ``server()`` (aiohttp's handler factory) kept the place for ever: the head
    deadline aborted the transport, but ``connection_lost`` saw no handler and released nothing."""
    gate = ConnGate("site-b", "peer", None, per_peer=1, total=4, head_s=HEAD_S)

    def server() -> asyncio.Protocol:
        raise RuntimeError("shutting down")
    proto = gate.protocol_factory(server)()
    transport = _Transport()
    with pytest.raises(RuntimeError):
        proto.connection_made(transport)  # type: ignore[arg-type]
    proto.connection_lost(None)
    assert transport.aborted and dict(gate.open) == {} and not gate._heads
    assert gate.admit("unauthenticated@127.0.0.9") is None  # the peer's one place is free again
