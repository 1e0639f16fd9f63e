"""The Raft channel: who may speak on the Raft port, and how much.

pysyncobj's ``TCPTransport`` (0.3.17) accepts any connection that knows the shared password
and then believes what it says: a connection naming itself ``"readonly"`` becomes an
observer that the leader feeds and that may send any Raft message; one naming *any* member
address replaces that member's connection; a list is a utility command (``status``,
``add``, ``remove``, ``set_version``, ``transfer``) answered to anyone; a connection that
never completes the handshake is never closed (its timeout is only checked when a socket
event arrives); and every frame is ``zlib.decompress``-ed without a bound.

:class:`MemberOnlyTransport` (passed to ``SyncObj`` as ``transportClass``) keeps
pysyncobj's wire format and replaces the acceptance rules:

* **Members only.** After the key exchange an incoming connection must name a configured
  partner, and only one that connects *to* this node by pysyncobj's own rule (the node with
  the greater address dials, ``TCPTransport._shouldConnect``): a partner with a smaller
  address never dials us, so a connection naming it is an impostor. ``"readonly"``,
  unknown addresses, this node's own address and utility commands are refused: the
  connection is closed, a WARNING is logged and ``replicad_raft_refused_total{reason}``
  counted (:class:`RefusalLog`).
* **One connection per member.** A second connection naming a member whose current
  connection delivered a frame within ``connectionTimeout`` is refused; a silent one
  (half-open after a partition or a crash) is closed and replaced.
* **Deadlines and caps.** A connection must complete the handshake within
  :data:`HANDSHAKE_DEADLINE_S`; at most :data:`MAX_PENDING_PER_IP` handshakes per source
  address and :data:`MAX_PENDING` in all are in progress at once (more are closed at once).
  Identified member connections are not closed when idle: between two followers the link
  is legitimately silent; a dead one is found by TCP keepalive (pysyncobj's
  ``tcp_keepalive``) or replaced by the rule above.
* **Bounded decompression.** Every frame is inflated through :func:`bounded_decompress`
  (at most :data:`MAX_DECOMPRESSED_BYTES`), after the compressed size was already bounded
  by ``raft.MAX_FRAME_BYTES`` (see ``raft._BoundedTcpConnection``).

What remains (the shared password is kept as defence in depth, since without it anyone who
reaches the port could try everything below): the password is one secret for all sites, so
a site holding it can still *name itself* as another member whose address sorts above the
target's while that member's connection is down or silent. Binding a connection to one
member cryptographically (a per-site key and a signed handshake) is not done here; it is
what per-site identity (issue "Trust no single site", part 1) adds.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from typing import Any

from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport

log = logging.getLogger(__name__)

MAX_DECOMPRESSED_BYTES = 1024 * 1024
"""Largest inflated frame: a pickled ``append_entries`` batch (64 KiB of entries plus one
command of at most 2 x 40 KiB) or a 64 KiB dump chunk, with room to spare. A frame that
inflates beyond it drops the connection (a 680 KB zlib stream of zeros inflates to 1 GB)."""
HANDSHAKE_DEADLINE_S = 2.0
"""Seconds an incoming connection has to exchange keys and name a member (one round trip)."""
MAX_PENDING_PER_IP = 8
"""Handshakes in progress at once from one source address; more are closed at once."""
MAX_PENDING = 64
"""Handshakes in progress at once in all."""
LOG_EVERY_S = 1.0
"""Per reason, at most one WARNING per this many seconds; the suppressed count goes in the next."""


class DecompressionBombError(ValueError):
    """A frame inflated beyond its bound (internal to the transport: the connection is dropped)."""


def bounded_decompress(data: bytes, limit_bytes: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """``zlib.decompress`` that never produces more than ``limit_bytes``.

    Raises:
        DecompressionBombError: the stream inflates beyond ``limit_bytes``.
        zlib.error: the stream is not valid zlib, or it is truncated.
    """
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, limit_bytes + 1)
    if len(out) > limit_bytes or inflater.unconsumed_tail:
        raise DecompressionBombError(f"frame inflates beyond {limit_bytes} bytes")
    if not inflater.eof:
        raise zlib.error("truncated zlib stream")
    return out


KNOWN_REASONS = ("bad_frame", "decompressed_too_large", "frame_too_large", "handshake_timeout", "malformed",
                 "readonly_node", "snapshot_from_non_leader", "snapshot_regresses", "snapshot_too_large",
                 "term_from_non_leader", "too_many_connections", "unknown_node", "utility_message",
                 "vote_in_lease")
"""Reasons exported at 0 from the start (a counter series exists before its first refusal, so
rules over ``increase()`` see the first one); other reasons appear when first counted."""


class RefusalLog:
    """Counts refused Raft traffic by reason and logs it at WARNING, rate-limited per reason.

    Thread-safe. ``counts()`` is ``{reason: int}`` (monotonic counters, exported as
    ``replicad_raft_refused_total{reason}``). Every refusal is counted; per reason at most one
    line per :data:`LOG_EVERY_S` is written, carrying how many were not logged since.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def refuse(self, reason: str, message: str, *args: Any, level: int = logging.WARNING,
               prefix: str = "raft refused") -> None:
        """Count one refusal of ``reason``; log ``prefix [reason]: message % args`` unless
        logged within the last second."""
        now = time.monotonic()
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1
            if now - self._last_logged.get(reason, float("-inf")) < LOG_EVERY_S:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return
            self._last_logged[reason] = now
            suppressed = self._suppressed.pop(reason, 0)
        more = f" ({suppressed} more refused for this reason since the last line)" if suppressed else ""
        log.log(level, prefix + " [%s]: " + message + more, reason, *args)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


_FALLBACK_REFUSALS = RefusalLog()


def refusals_of(obj: Any) -> RefusalLog:
    """The :class:`RefusalLog` attached to a SyncObj or connection, else a process-wide one."""
    found = getattr(obj, "refusals", None)
    return found if isinstance(found, RefusalLog) else _FALLBACK_REFUSALS


def _peer_ip(conn: Any) -> str:
    try:
        return str(conn._TcpConnection__socket.getpeername()[0])
    except (OSError, AttributeError, TypeError, IndexError):
        return "?"


class MemberOnlyTransport(TCPTransport):
    """pysyncobj ``TCPTransport`` that lets only configured members speak (module docstring).

    Built by ``SyncObj`` as ``transportClass(syncObj, selfNode, otherNodes)``; refusals go to
    ``syncObj.refusals`` (a :class:`RefusalLog`).
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        self._pending: dict[Any, tuple[float, str]] = {}  # conn -> (accepted at, source ip)
        self.refusals = refusals_of(syncObj)
        super().__init__(syncObj, selfNode, otherNodes)

    # -- incoming connections
    def _onNewIncomingConnection(self, conn: Any) -> None:
        ip = _peer_ip(conn)
        conn.refusals = self.refusals
        same_ip = sum(1 for _, (_, other) in self._pending.items() if other == ip)
        if same_ip >= MAX_PENDING_PER_IP or len(self._pending) >= MAX_PENDING:
            self.refusals.refuse("too_many_connections", "%d handshakes in progress from %s (%d in all): "
                                 "closing a new connection", same_ip, ip, len(self._pending))
            conn.disconnect()
            return
        self._pending[conn] = (monotonic_time(), ip)
        super()._onNewIncomingConnection(conn)

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:
        if self._syncObj.encryptor and not conn.sendRandKey:
            if not isinstance(message, bytes) or len(message) != 32:
                self._refuse_conn(conn, "bad_handshake", "a connection from %s sent no 32-byte key first",
                                  self._pending.get(conn, (0, "?"))[1])
                return
            super()._onIncomingMessageReceived(conn, message)  # key exchange
            return
        ip = self._pending.get(conn, (0, "?"))[1]
        if isinstance(message, list):
            name = message[0] if message and isinstance(message[0], str) else "?"
            self._refuse_conn(conn, "utility_message", "utility command %r from %s: pysyncobj's status/"
                              "add/remove/set_version/transfer are not served on the network", name[:32], ip)
            return
        if message == "readonly":
            self._refuse_conn(conn, "readonly_node", "a connection from %s named itself a read-only "
                              "observer: only configured members may connect", ip)
            return
        node = self._nodeAddrToNode.get(message) if isinstance(message, str) else None
        if node is None:
            self._refuse_conn(conn, "unknown_node", "a connection from %s named %r, which is not a "
                              "configured partner", ip, str(message)[:80])
            return
        if self._shouldConnect(node):
            self._refuse_conn(conn, "wrong_direction", "a connection from %s named %s, a member this node "
                              "dials itself (it never connects here): impostor", ip, node.address)
            return
        current = self._connections.get(node)
        if current is not None and current is not conn and current.state == CONNECTION_STATE.CONNECTED:
            last_read = getattr(current, "_TcpConnection__lastReadTime", 0.0)
            if monotonic_time() - last_read < self._syncObj.conf.connectionTimeout:
                self._refuse_conn(conn, "duplicate_connection", "a second connection from %s named %s while "
                                  "its connection is alive", ip, node.address)
                return
            current.setOnDisconnectedCallback(None)
            current.disconnect()
            self._onNodeDisconnected(node)
        self._pending.pop(conn, None)
        super()._onIncomingMessageReceived(conn, message)

    def _onUtilityMessage(self, conn: Any, message: Any) -> bool:  # never reached: refused above
        self._refuse_conn(conn, "utility_message", "utility command from the network")
        return True

    def _refuse_conn(self, conn: Any, reason: str, message: str, *args: Any) -> None:
        self.refusals.refuse(reason, message, *args)
        self._pending.pop(conn, None)
        self._unknownConnections.discard(conn)
        conn.setOnDisconnectedCallback(None)
        conn.disconnect()

    def _onDisconnected(self, conn: Any) -> None:
        self._pending.pop(conn, None)
        super()._onDisconnected(conn)

    # -- outgoing connections: same bounds on what they receive
    def addNode(self, node: Any) -> None:
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None:
            conn.refusals = self.refusals

    # -- deadlines, every tick
    def _onTick(self) -> None:
        super()._onTick()
        if not self._pending:
            return
        now = monotonic_time()
        for conn, (since, ip) in list(self._pending.items()):
            if now - since > HANDSHAKE_DEADLINE_S:
                self._refuse_conn(conn, "handshake_timeout", "a connection from %s did not name a member "
                                  "within %.1fs", ip, HANDSHAKE_DEADLINE_S)

    def destroy(self) -> None:
        for conn in list(self._pending):
            conn.setOnDisconnectedCallback(None)
            conn.disconnect()
        self._pending.clear()
        super().destroy()


__all__ = ["MemberOnlyTransport", "RefusalLog", "bounded_decompress", "DecompressionBombError",
           "MAX_DECOMPRESSED_BYTES", "HANDSHAKE_DEADLINE_S", "MAX_PENDING_PER_IP", "MAX_PENDING",
           "refusals_of"]
