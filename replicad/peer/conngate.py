"""Bounds on the connections a listener (the peer API, the admin API) holds open
(ARCHITECTURE.md, Choices: "A connection costs its listener a bounded number of file descriptors").

aiohttp's server holds every accepted connection until its client closes it or its keep-alive
timer fires (``keepalive_timeout``, 3630 s by default, counted from the connection's start): a
client that never finishes a request head holds a file descriptor and ~40 KiB for an hour, and
nothing bounds their number. Review R13: ~2,000 such connections with site-c's certificate made
site-b grow 91 -> 174 MiB and 2,025 fds (held as long as the attacker wished; at the unit's
LimitNOFILE=65536, ~2.6 GiB before the site runs out of descriptors for its own files).

:class:`ConnGate` puts every connection of a listener under three rules, applied by the protocol
factory of :class:`GatedTCPSite` (a :class:`_GatedProtocol` stands in front of aiohttp's own
protocol, created only once a connection is admitted):

* at most ``per_peer`` connections of one peer and ``total`` in all are open at once; the
  excess is closed at once, as soon as its peer is known (after the TLS handshake: the site its
  certificate names; without TLS its remote address), before aiohttp sees it;
* a connection must bring a complete request head within ``head_s`` of being admitted
  (HEAD_S); else it is closed (``head_timeout``). An idle keep-alive connection is closed after
  IDLE_S (aiohttp's ``keepalive_timeout``, passed by the caller);
* a TLS handshake must finish within HANDSHAKE_S (asyncio's default is 60 s).

Every refused or timed-out connection is handed to ``on_refused(peer, reason)`` (metrics) and
logged at WARNING once per CONN_LOG_S per peer and reason (the others of that minute counted in
the next line). Event loop only.

The numbers (peer listener): an honest site sends every request to its peers through one aiohttp
``ClientSession`` (:meth:`replicad.site.daemon.SiteDaemon.start`: chunk streams, missing,
snapshot, fetches, rules-raise polls), whose ``TCPConnector`` opens at most ``limit`` = 100
connections in all (aiohttp's default) and reuses an idle one to a peer before opening another,
so it never has more than 100 open to one peer. CONN_PER_PEER = 128 leaves 28 for connections it
closed whose end has not reached this side yet. Raft is pysyncobj's own TCP port, not this
listener. An idle connection of that client is dropped by it after 15 s (the connector's
``keepalive_timeout``), before IDLE_S = 30 s here, so it never sends a request on a connection
this side is closing.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from replicad.peer.tls import cert_site

log = logging.getLogger("replicad.peer.conngate")

CONN_PER_PEER = 128      # > 100: the honest client's whole connection pool (module docstring)
CONN_TOTAL = 1024        # 8 peers at their bound; fds and ~40 KiB each: ~40 MiB when all are idle
ADMIN_CONN_TOTAL = 256   # the admin API: operators, the CLI (one connection a command), Prometheus
ADMIN_CONN_PER_ADDRESS = 64  # one address (no TLS there) cannot take the admin API's every place
HEAD_S = 10.0            # an honest client writes its head at once after connecting (milliseconds)
IDLE_S = 30.0            # peer listener keep-alive; 2x the honest client's pool keep-alive (15 s)
HANDSHAKE_S = 10.0       # a TLS handshake (milliseconds on any link a site replicates over)
CONN_LOG_S = 60.0        # a refused connection is logged once per this per peer and reason
CONN_LOG_KEYS = 64       # (peer, reason) remembered for that (a cluster has a few sites)
CONN_REFUSALS = ("conn_busy_per_peer", "conn_busy_global", "head_timeout")
LAB_CONN_HEAD_ENV = "REPLICAD_LAB_CONN_HEAD_S"
"""Environment variable read only with ``lab = true``: the head deadline in seconds (tests);
production always uses HEAD_S."""


class ConnGate:
    """Places for the open connections of one listener: at most ``per_peer`` of one peer and
    ``total`` in all; the head deadline ``head_s``. See the module docstring.

    Args:
        site_id: this site (named in the log).
        listener: ``"peer"`` or ``"admin"`` (named in the log and handed to nobody else).
        on_refused: ``(peer, reason) -> None`` (metrics; ``reason`` one of CONN_REFUSALS); None:
            logged only. Must not raise.
        per_peer, total: the bounds (connections).
        head_s: seconds from admission to a complete request head.
        clock: monotonic seconds (the log's rate).
    """

    def __init__(self, site_id: str, listener: str, on_refused: Callable[[str, str], None] | None = None, *,
                 per_peer: int = CONN_PER_PEER, total: int = CONN_TOTAL, head_s: float = HEAD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.site_id = site_id
        self.listener = listener
        self.on_refused = on_refused
        self.per_peer = per_peer
        self.total = total
        self.head_s = head_s
        self.clock = clock
        self.open: collections.Counter[str] = collections.Counter()
        self._heads: dict[Any, _GatedProtocol] = {}  # transport -> its connection, until its first head
        self._logged: dict[tuple[str, str], list[float | int]] = {}  # -> [last logged at, refused since]

    @staticmethod
    def peer_of(transport: asyncio.BaseTransport) -> str:
        """Who holds ``transport``: the site its verified TLS certificate names
        (:func:`replicad.peer.tls.cert_site`), else ``"unauthenticated@"`` and its remote address."""
        site = cert_site(transport.get_extra_info("peercert"))
        if site is not None:
            return site
        addr = transport.get_extra_info("peername")
        return f"unauthenticated@{addr[0] if isinstance(addr, tuple) and addr else '?'}"

    def admit(self, peer: str) -> str | None:
        """Take a place for one connection of ``peer``: None if taken, else the refusal's reason
        (``conn_busy_per_peer``, ``conn_busy_global``; accounted: :meth:`refused`)."""
        mine, all_ = self.open[peer], sum(self.open.values())
        if mine < self.per_peer and all_ < self.total:
            self.open[peer] += 1
            return None
        reason = "conn_busy_per_peer" if mine >= self.per_peer else "conn_busy_global"
        self.refused(peer, reason, f"{mine} connections of it open and {all_} in all (at most {self.per_peer} "
                                   f"of one peer, {self.total} in all)")
        return reason

    def release(self, peer: str) -> None:
        """Give back a place of ``peer``."""
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]

    def refused(self, peer: str, reason: str, detail: str) -> None:
        """Account one connection of ``peer`` closed for ``reason`` (one of CONN_REFUSALS;
        ``detail``: the log's words). Never raises."""
        if self.on_refused is not None:
            try:
                self.on_refused(peer, reason)
            except Exception:  # noqa: BLE001 - accounting must not change what is closed
                log.exception("accounting a refused connection of %s failed", peer[:64])
        now = self.clock()
        key = (peer, reason)
        if key not in self._logged and len(self._logged) >= CONN_LOG_KEYS:
            # without TLS peers are addresses, as many as an attacker has: forget the quiet ones, else count under "*"
            self._logged = {k: v for k, v in self._logged.items() if now - v[0] < CONN_LOG_S}
            if len(self._logged) >= CONN_LOG_KEYS:
                key = ("*", reason)
        entry = self._logged.setdefault(key, [float("-inf"), 0])
        entry[1] += 1
        if now - entry[0] < CONN_LOG_S:
            return
        what = "closed" if reason == "head_timeout" else "refused"
        log.warning("AUDIT %s connections of %r at %s (%s listener): %s: %s (%d since the last such line; once "
                    "per %.0fs per peer and reason)", what, key[0][:64], self.site_id, self.listener, reason, detail,
                    entry[1], CONN_LOG_S)
        entry[0], entry[1] = now, 0

    def protocol_factory(self, server: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory of a listener serving ``server`` (aiohttp's ``web.Server``: a
        factory of its ``RequestHandler``) under this gate."""
        return lambda: _GatedProtocol(self, server)

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """aiohttp middleware of the gated app: a request's head is complete once its handler
        is called; its connection's head deadline is then cancelled."""
        conn = self._heads.pop(request.transport, None)
        if conn is not None:
            conn.head_done()
        return await handler(request)


class _GatedProtocol(asyncio.Protocol):
    """One connection under a :class:`ConnGate`: admitted (or closed at once) when made, its
    aiohttp protocol created then and handed every event; its head deadline armed until its
    first request's head is complete."""

    def __init__(self, gate: ConnGate, server: Callable[[], asyncio.Protocol]) -> None:
        self.gate = gate
        self.server = server
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.peer = ""
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = ConnGate.peer_of(transport)
        if self.gate.admit(self.peer) is not None:
            transport.abort()  # at once: no close_notify to wait for, the descriptor freed now
            return
        self.transport = transport
        self.gate._heads[transport] = self
        self.deadline = asyncio.get_running_loop().call_later(self.gate.head_s, self._head_late)
        try:
            self.inner = self.server()
        except BaseException:  # no handler for it (aiohttp shutting down): its place given back at once
            self.head_done()
            self.gate._heads.pop(transport, None)
            self.gate.release(self.peer)
            self.transport = None
            transport.abort()
            raise
        self.inner.connection_made(transport)

    def head_done(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _head_late(self) -> None:
        self.deadline = None
        if self.transport is None or self.gate._heads.pop(self.transport, None) is None:
            return
        self.gate.refused(self.peer, "head_timeout", f"no complete request head within {self.gate.head_s:g}s "
                                                     "of connecting")
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is None:  # refused: never admitted
            return
        self.head_done()
        self.gate._heads.pop(self.transport, None)
        self.gate.release(self.peer)
        inner, self.inner, self.transport = self.inner, None, None
        inner.connection_lost(exc)


class GatedTCPSite(web.BaseSite):
    """aiohttp's ``web.TCPSite`` with the protocol factory of a :class:`ConnGate` and a bounded
    TLS handshake (``handshake_s``; asyncio's default is 60 s). Started and stopped by its
    ``web.AppRunner`` like any site; the app must carry ``gate.middleware``."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: ConnGate, *,
                 ssl_context: ssl.SSLContext | None = None, handshake_s: float = HANDSHAKE_S,
                 backlog: int = 128) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port, self._gate, self._handshake_s = host, port, gate, handshake_s

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        """Listen. Raises RuntimeError when the runner's app lacks ``gate.middleware`` (without it
        no head would ever count as complete: every connection would be cut at the deadline)."""
        app = getattr(self._runner, "app", None)
        if app is None or self._gate.middleware not in app.middlewares:
            raise RuntimeError("GatedTCPSite: the app must carry the gate's middleware")
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._gate.protocol_factory(server), self._host, self._port, ssl=self._ssl_context,
            ssl_handshake_timeout=self._handshake_s if self._ssl_context is not None else None,
            backlog=self._backlog)
