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

* **Bound to one site** (:class:`ChannelIdentity`, when the cluster signs: ``Trust.keys``
  set). The handshake is replaced by a signed, mutual one (below): each end proves with its
  pinned Ed25519 site key that it is the site whose Raft address it names, and every frame
  after it is encrypted under a per-connection key from an X25519 exchange. A site holding
  the shared password can no longer name itself as another member, nor read or inject the
  frames of a connection between two other sites. Failures: ``bad_identity`` (no valid
  signature by a key pinned for that address), ``revoked_site`` (only a key revoked through
  Raft verifies, or every key pinned for the site is revoked), ``bad_handshake`` (a
  malformed handshake message). The keys are the local config's (``[[sites]] public_key``),
  not the Raft state's agreed membership, on purpose: the channel must authenticate peers
  before this site has any state (a fresh site catching up, a replay at start), the Raft
  partners themselves come from the config, and a site refuses to start when its config
  differs from the agreed membership (``site/daemon.py``), so both name the same keys whenever
  the site runs. The channel is not part of ``apply``: which keys it uses never changes the
  replicated state (``apply`` checks signatures against the state's membership,
  :func:`replicad.core.state.signing_keys`). Revocations do come from the state (below).
* **Revocation on the network.** Every :data:`REVOCATION_CHECK_S` the transport reads the
  revocations of the applied Raft state (``ChannelIdentity.revoked``): a connection whose
  peer proved itself with a revoked key is dropped (``revoked_site``), a site whose every
  pinned key is revoked is not dialed, and its handshakes are refused. A site rebuilt with
  a new key pinned in every config connects again.

Signed handshake (three frames, the same round trips as pysyncobj's own; every frame is
still Fernet-encrypted with the shared password, the first gate, until the last one):

1. dialer -> acceptor: ``(HELLO, nonce_d, eph_d, dialer_address)``, sent unwrapped; the dialer
   sets ``recvRandKey = nonce_d``.
2. acceptor -> dialer: ``(nonce_a, eph_a, sig_a)``, wrapped with ``nonce_d``
   (``sendRandKey = nonce_d``, ``recvRandKey = nonce_a``); ``sig_a`` is the acceptor's
   signature of :func:`proof_bytes` ``("acceptor", transcript)``.
3. dialer -> acceptor: ``sig_d``, wrapped with ``nonce_a`` (``sendRandKey = nonce_a``): the
   dialer's signature of ``("dialer", transcript)``.

``transcript`` = :func:`transcript` (the cluster id, both addresses, both 32-byte nonces and
both ephemeral X25519 public keys). Nonces are pysyncobj's random keys, so its per-frame
session-key check keeps working. After frame 3 both ends replace ``conn.encryptor`` with a
:class:`SessionCipher` whose keys come from :func:`session_keys` (HKDF-SHA256 over the
X25519 secret, salted with the transcript's SHA-256, one key per direction). Until then no
Raft message is sent on the connection (:meth:`MemberOnlyTransport.send`).

Why the shared password stays: it is the first gate, checked by a cheap HMAC before any
pickle is parsed, any signature checked or any X25519 computed, so someone who only reaches
the port costs each site nothing; and pysyncobj's wire format keeps its encryption for the
three handshake frames. It no longer vouches for anyone: identity comes from the site keys.

Unsigned lab mode (``[identity] unsafe_unsigned``: ``Trust.keys`` None, or no identity
given): pysyncobj's password-only handshake as before (logged at WARNING when the transport
starts); a site revoked through Raft is still dropped and not dialed, by the address it names.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport

from replicad.core.identity import Signer, Trust

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
CONNECT_DEADLINE_S = 3.0
"""A dial of a member that is not connected after this long is closed (pysyncobj redials it
after ``raft.REDIAL_S``). pysyncobj leaves a dial in progress to the kernel, whose SYN
retransmissions back off to 32 s and more: a member dialed while a partition cut it off was
reached only at the next retransmission after the heal (3-25 s after a 50 s partition in the
chaos ``partition-primary`` campaign, the healed old primary unfenced meanwhile)."""
LOG_EVERY_S = 1.0
"""Per reason, at most one WARNING per this many seconds; the suppressed count goes in the next."""
REVOKED_LOG_EVERY_S = 60.0
"""``revoked_site``: at most one WARNING line per revoked site per this many seconds (a revoked
site still running redials every second: once a second per honest site was 3,600 lines an hour;
operator try-out 2, item 8); the count of the refusals not logged goes in the next line."""
WRONG_KEY_LOG_EVERY_S = 60.0
"""``wrong_raft_key``: at most one ERROR line per this many seconds (a member with another key
reconnects every second; the line says the same each time)."""
REVOCATION_CHECK_S = 0.2
"""Seconds between two reads of the revocations in the applied Raft state (on the tick thread)."""
HANDSHAKE_DOMAIN = b"replicad-raft-channel-v1\x00"
"""Prefix of every signed handshake proof (never a command or acknowledgement signature)."""
HELLO = "replicad-raft-hello-v1"
"""First element of a dialer's first frame in the signed handshake."""
KDF_INFO = b"replicad-raft-channel-v1 session keys"
NONCE_BYTES = 32
X25519_BYTES = 32
SIGNATURE_BYTES = 64
DIALER, ACCEPTOR = "dialer", "acceptor"


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


KNOWN_REASONS = ("wrong_raft_key", "bad_frame", "bad_handshake", "bad_identity", "decompressed_too_large", "frame_too_large", "handshake_timeout", "malformed",
                 "readonly_node", "revoked_site", "snapshot_from_non_leader", "snapshot_regresses", "snapshot_too_large",
                 "term_from_non_leader", "too_many_connections", "unknown_node", "utility_message",
                 "vote_in_lease", "snapshot_before_leader", "handshake_unanswered")
"""Reasons exported at 0 from the start (a counter series exists before its first refusal, so
rules over ``increase()`` see the first one); other reasons appear when first counted."""

ROUTINE_REASONS = ("snapshot_before_leader", "handshake_timeout", "handshake_unanswered", "revoked_site")
"""Reasons honest members also cause, which ``ReplicadRaftTrafficRefused`` leaves out (each still
counted and logged). Measured on real daemons (12 restarts, SIGTERM and SIGKILL, past a compacted
log; 5 pauses of 8 s by SIGSTOP, leader and follower; a revoked site left running):
``snapshot_before_leader``: 2-3 at each restarted site (the leader's full state before its first
append_entries names it); ``handshake_unanswered``: ~2 at a member that dialed a paused one;
``handshake_timeout``: an incoming connection that named no member in time (a peer paused
mid-handshake, a port scanner); ``revoked_site``: about one a second at a member while a revoked
site runs. A flood of :data:`ROUTINE_FLOOD_REASONS` still fires the alert; the other two have
alerts of their own (``ReplicadRaftPeerUnreachable``, ``ReplicadSiteRevoked``). Every other
reason had no honest cause: a misconfigured member, or one holding the password and breaking
the rules (tests/unit/telemetry/test_alert_rules.py checks alerts.yml against these lists)."""

ROUTINE_FLOOD_REASONS = ("snapshot_before_leader", "handshake_timeout")
"""Routine reasons that fire ``ReplicadRaftTrafficRefused`` past :data:`ROUTINE_FLOOD` in 15 min."""

ROUTINE_FLOOD = 20
"""Refusals of one routine reason within 15 min past which ``ReplicadRaftTrafficRefused`` fires
(config/prometheus/alerts.yml; ten times the count of one restart or pause)."""


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
        self._bad_identity_at: dict[str, tuple[float, bool]] = {}  # site -> (monotonic time, abandoned only)

    def refuse(self, reason: str, message: str, *args: Any, level: int = logging.WARNING,
               prefix: str = "raft refused", every_s: float = LOG_EVERY_S, about: str | None = None) -> None:
        """Count one refusal of ``reason``; log ``prefix [reason]: message % args`` unless
        this reason (with ``about``, e.g. a site name, when given: one line per reason and
        ``about``) was logged within the last ``every_s`` seconds."""
        now = time.monotonic()
        key = reason if about is None else f"{reason}\x00{about}"
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1
            if now - self._last_logged.get(key, float("-inf")) < every_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last_logged[key] = now
            suppressed = self._suppressed.pop(key, 0)
        more = f" ({suppressed} more refused for this reason since the last line)" if suppressed else ""
        log.log(level, prefix + " [%s]: " + message + more, reason, *args)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def note_bad_identity(self, site: str, *, abandoned: bool = False) -> None:
        """Remember that a handshake with configured site ``site`` just failed: as ``bad_identity``
        here, or (``abandoned``) dropped by that site right after this site's signed answer (what
        the dialer does when this site's proof does not verify there). Read by
        :meth:`bad_identity_sites`: ``replicad.site.clusterid`` then asks that site which cluster it
        belongs to, to tell a ``cluster_id`` typo from a key mismatch or an impostor. At most
        :data:`BAD_IDENTITY_SITES_MAX` sites are kept (configured sites only)."""
        with self._lock:
            if site in self._bad_identity_at or len(self._bad_identity_at) < BAD_IDENTITY_SITES_MAX:
                prior = self._bad_identity_at.get(site, (0.0, True))
                self._bad_identity_at[site] = (time.monotonic(), abandoned and prior[1])

    def bad_identity_sites(self, within_s: float) -> dict[str, bool]:
        """``{site: abandoned}`` of the sites noted by :meth:`note_bad_identity` within the last
        ``within_s`` seconds (``abandoned`` False once a ``bad_identity`` was seen here)."""
        now = time.monotonic()
        with self._lock:
            return {s: ab for s, (at, ab) in sorted(self._bad_identity_at.items()) if now - at <= within_s}


BAD_IDENTITY_SITES_MAX = 256
"""Sites :meth:`RefusalLog.note_bad_identity` remembers (only configured sites are noted)."""

_FALLBACK_REFUSALS = RefusalLog()


def refusals_of(obj: Any) -> RefusalLog:
    """The :class:`RefusalLog` attached to a SyncObj or connection, else a process-wide one."""
    found = getattr(obj, "refusals", None)
    return found if isinstance(found, RefusalLog) else _FALLBACK_REFUSALS


def refuse_undecryptable(conn: Any, exc: Exception) -> bool:
    """If ``exc`` is a frame that did not decrypt with the shared Raft key (Fernet
    ``InvalidToken``), count and log it as ``wrong_raft_key`` — at ERROR, at most once per
    :data:`WRONG_KEY_LOG_EVERY_S`, naming the sender and ``raft.password_file`` — and return
    True; else False (the caller reports it as another refusal)."""
    from cryptography.fernet import InvalidToken

    if not isinstance(exc, InvalidToken):
        return False
    refusals_of(conn).refuse(
        "wrong_raft_key", "a frame from %s did not decrypt with this site's Raft key: that member's "
        "raft.password_file holds another key. Every site of a cluster must use the same key file "
        "(copy one site's key file to the others, mode 0600, and restart them: README 'Rotating the Raft "
        "password')",
        _peer_ip(conn), level=logging.ERROR, every_s=WRONG_KEY_LOG_EVERY_S)
    return True


def _revoked_rate(reason: str, site: str | None) -> dict[str, Any]:
    """The rate limit of a refusal's line: ``revoked_site`` at most once per
    :data:`REVOKED_LOG_EVERY_S` per revoked ``site`` (one key for every path that refuses it, so
    the accepting and the dropping side do not each write a line); any other reason the default
    (once per :data:`LOG_EVERY_S` per reason)."""
    if reason != "revoked_site":
        return {}
    return {"every_s": REVOKED_LOG_EVERY_S, "about": site or "?"}


def _peer_ip(conn: Any) -> str:
    try:
        return str(conn._TcpConnection__socket.getpeername()[0])
    except (OSError, AttributeError, TypeError, IndexError):
        return "?"




# --------------------------------------------------------------------------- signed handshake (pure parts)


def transcript(cluster_id: str, dialer_addr: str, acceptor_addr: str, nonce_d: bytes, nonce_a: bytes,
               eph_d: bytes, eph_a: bytes) -> bytes:
    """The canonical handshake transcript: msgpack of the list ``[cluster_id, dialer_addr,
    acceptor_addr, nonce_d, nonce_a, eph_d, eph_a]`` (nonces: 32 random bytes from each side;
    ``eph_*``: 32-byte raw X25519 ephemeral public keys). Both ends build the same bytes.

    Raises:
        HandshakeError: a field of the wrong type or size.
    """
    if not (isinstance(cluster_id, str) and isinstance(dialer_addr, str) and isinstance(acceptor_addr, str)):
        raise HandshakeError("cluster id and addresses are strings")
    for value, size in ((nonce_d, NONCE_BYTES), (nonce_a, NONCE_BYTES), (eph_d, X25519_BYTES),
                        (eph_a, X25519_BYTES)):
        if not isinstance(value, bytes) or len(value) != size:
            raise HandshakeError(f"a handshake nonce or key is {size} bytes")
    return msgpack.packb([cluster_id, dialer_addr, acceptor_addr, nonce_d, nonce_a, eph_d, eph_a],
                         use_bin_type=True)


def proof_bytes(role: str, transcript_bytes: bytes) -> bytes:
    """What an end signs: :data:`HANDSHAKE_DOMAIN` + msgpack ``[role, transcript]`` with
    ``role`` :data:`DIALER` or :data:`ACCEPTOR` (one end's proof never passes as the other's)."""
    return HANDSHAKE_DOMAIN + msgpack.packb([role, transcript_bytes], use_bin_type=True)


def proof_problem(sig: Any, public_keys: Any, revoked_keys: Any, message: bytes) -> tuple[str | None, bytes | None]:
    """Check a handshake signature against the keys pinned for the site it claims to be.

    Args:
        sig: the received signature (64 bytes expected).
        public_keys: raw 32-byte Ed25519 keys pinned for that site (config), possibly several.
        revoked_keys: raw keys revoked through Raft.
        message: :func:`proof_bytes` of the expected role and transcript.
    Returns:
        ``(None, key)`` with the key that verified; ``("revoked_site", key)`` when only a
        revoked key verifies; ``("bad_identity", None)`` otherwise. Never raises.
    """
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_BYTES:
        return "bad_identity", None
    for raw in public_keys or ():
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(sig, message)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return ("revoked_site", raw) if raw in revoked_keys else (None, raw)
    return "bad_identity", None


def session_keys(private: X25519PrivateKey, peer_public: bytes, transcript_bytes: bytes) -> tuple[bytes, bytes]:
    """The two 32-byte Fernet keys of a connection, ``(dialer -> acceptor, acceptor -> dialer)``:
    HKDF-SHA256 (RFC 5869) of the X25519 shared secret, salt = SHA-256 of the transcript,
    info = :data:`KDF_INFO`.

    Raises:
        HandshakeError: ``peer_public`` is not an X25519 key or gives the all-zero secret.
    """
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except (ValueError, TypeError) as err:
        raise HandshakeError(f"ephemeral key: {err}") from None
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=hashlib.sha256(transcript_bytes).digest(),
               info=KDF_INFO).derive(shared)
    return okm[:32], okm[32:]


def x25519_public_raw(private: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``private``'s public key."""
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class HandshakeError(ValueError):
    """A handshake message of the wrong shape (internal to the transport: the connection is dropped)."""


class SessionCipher:
    """``conn.encryptor`` of an authenticated connection: Fernet with one key per direction.

    pysyncobj calls ``encrypt_at_time`` on what it sends and ``extract_timestamp`` /
    ``decrypt`` on what it receives; ``send_key``/``recv_key`` are 32-byte keys from
    :func:`session_keys`. A frame sent back to its sender (a reflection) does not decrypt.
    Raises ``cryptography.fernet.InvalidToken`` on a frame not made with ``recv_key``.
    """

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send = Fernet(base64.urlsafe_b64encode(send_key))
        self._recv = Fernet(base64.urlsafe_b64encode(recv_key))

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        return self._send.encrypt_at_time(data, current_time)

    def extract_timestamp(self, token: bytes) -> int:
        return self._recv.extract_timestamp(token)

    def decrypt(self, token: bytes, ttl: int | None = None) -> bytes:
        return self._recv.decrypt(token, ttl)


@dataclass(frozen=True)
class Revocations:
    """Revocations in the applied Raft state, as the transport uses them.

    Attributes:
        keys: raw Ed25519 keys revoked through Raft (``state["revoked"][site]["keys"]``).
        sites: site ids with a revocation entry (used in unsigned lab mode, where a site has
            no key and its address is its only name).
    """

    keys: frozenset = frozenset()
    sites: frozenset = frozenset()


def revocations_of(state: Mapping[str, Any] | None) -> Revocations:
    """:class:`Revocations` of a cluster state (``replicad.core.state`` shape). Never raises."""
    entries = (state or {}).get("revoked") or {}
    keys = frozenset(k for e in entries.values() if isinstance(e, dict) for k in e.get("keys", ())
                     if isinstance(k, bytes))
    return Revocations(keys=keys, sites=frozenset(entries))


@dataclass(frozen=True)
class ChannelIdentity:
    """What :class:`MemberOnlyTransport` binds connections with.

    Attributes:
        trust: the pinned keys (``Trust.keys``: ``{site_id: (raw key, ...)}``; None = unsigned
            lab mode: password-only handshake) and the cluster id signed into every handshake.
        signer: this site's identity; required when ``trust.keys`` is set.
        sites_by_addr: ``{raft "host:port": site_id}`` of every member, this one included.
        revoked: returns the current :class:`Revocations` of the applied Raft state; called on
            the tick thread, must be cheap and never raise.
    """

    trust: Trust | None = None
    signer: Signer | None = None
    sites_by_addr: Mapping[str, str] = field(default_factory=dict)
    revoked: Callable[[], Revocations] = Revocations

    @property
    def signed(self) -> bool:
        """True when connections are bound to sites by signatures."""
        return self.trust is not None and self.trust.keys is not None and self.signer is not None

    def keys_of(self, addr: str) -> tuple[bytes, ...]:
        """The raw keys pinned for the site at Raft address ``addr`` (empty if none)."""
        site = self.sites_by_addr.get(addr)
        if site is None or self.trust is None or self.trust.keys is None:
            return ()
        return tuple(self.trust.keys.get(site, ()))


_next_identity = threading.local()


@contextlib.contextmanager
def transport_identity(identity: ChannelIdentity | None) -> Iterator[None]:
    """Give ``identity`` to every :class:`MemberOnlyTransport` built in this thread inside the
    ``with`` (pysyncobj builds the transport itself, inside ``SyncObj.__init__``)."""
    previous = getattr(_next_identity, "value", None)
    _next_identity.value = identity
    try:
        yield
    finally:
        _next_identity.value = previous


@dataclass
class _Handshake:
    """One connection's signed handshake in progress (tick thread only)."""

    role: str
    since: float
    ip: str
    ephemeral: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    nonce_own: bytes = field(default_factory=lambda: os.urandom(NONCE_BYTES))
    node: Any = None          # the member the connection is (claimed to be) with
    peer_addr: str = ""
    peer_nonce: bytes = b""
    peer_eph: bytes = b""


class MemberOnlyTransport(TCPTransport):
    """pysyncobj ``TCPTransport`` that lets only configured members speak and, in a signed
    cluster, binds each connection to one site by a signed handshake (module docstring).

    Built by ``SyncObj`` as ``transportClass(syncObj, selfNode, otherNodes)``; refusals go to
    ``syncObj.refusals`` (a :class:`RefusalLog`); the :class:`ChannelIdentity` comes from
    :func:`transport_identity` (none: unsigned, password-only).
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        self._pending: dict[Any, tuple[float, str]] = {}  # conn -> (accepted at, source ip)
        self._handshakes: dict[Any, _Handshake] = {}  # conn -> signed handshake in progress
        self.refusals = refusals_of(syncObj)
        self.identity: ChannelIdentity = getattr(_next_identity, "value", None) or ChannelIdentity()
        self._revocations = Revocations()
        self._revocations_read = float("-inf")
        self._not_dialed: set[str] = set()  # addresses of revoked sites this node stopped dialing
        if self.identity.trust is not None and self.identity.trust.keys is not None and self.identity.signer is None:
            raise ValueError("a signed cluster's Raft channel needs this site's signer")
        if not self.identity.signed:
            log.warning("UNSAFE: the Raft channel of %s is authenticated by the shared password only (unsigned lab "
                        "mode): any holder of the password can name itself as another member",
                        getattr(selfNode, "address", "?"))
        super().__init__(syncObj, selfNode, otherNodes)

    # -- helpers
    def _self_addr(self) -> str:
        return str(getattr(self._selfNode, "address", ""))

    def _revoked(self) -> Revocations:
        now = monotonic_time()
        if now - self._revocations_read >= REVOCATION_CHECK_S:
            self._revocations_read = now
            try:
                self._revocations = self.identity.revoked()
            except Exception:  # a callable of the owner: never let it break the tick
                log.exception("cannot read the revocations of the Raft state")
        return self._revocations

    def _site_cut_off(self, addr: str, revoked: Revocations) -> bool:
        """True when the site at ``addr`` may not speak at all: signed, every key pinned for
        it is revoked; unsigned, it was revoked."""
        if self.identity.signed:
            keys = self.identity.keys_of(addr)
            return bool(keys) and all(k in revoked.keys for k in keys)
        site = self.identity.sites_by_addr.get(addr)
        return site is not None and site in revoked.sites

    def _peer_revoked(self, conn: Any, addr: str, revoked: Revocations) -> bool:
        """True when an established connection's peer must be dropped."""
        if self.identity.signed:
            peer = getattr(conn, "replicad_peer", None)
            return peer is not None and peer[1] in revoked.keys
        return self._site_cut_off(addr, revoked)

    # -- incoming connections
    def _onNewIncomingConnection(self, conn: Any) -> None:
        ip = _peer_ip(conn)
        conn.refusals = self.refusals
        conn.replicad_peer = None
        same_ip = sum(1 for _, (_, other) in self._pending.items() if other == ip)
        if same_ip >= MAX_PENDING_PER_IP or len(self._pending) >= MAX_PENDING:
            self.refusals.refuse("too_many_connections", "%d handshakes in progress from %s (%d in all): "
                                 "closing a new connection", same_ip, ip, len(self._pending))
            conn.disconnect()
            return
        self._pending[conn] = (monotonic_time(), ip)
        super()._onNewIncomingConnection(conn)

    def _claimed_node(self, conn: Any, message: Any, ip: str) -> Any:
        """The member an incoming connection names, or None after refusing it."""
        if isinstance(message, list):
            name = message[0] if message and isinstance(message[0], str) else "?"
            self._refuse_conn(conn, "utility_message", "utility command %r from %s: pysyncobj's status/"
                              "add/remove/set_version/transfer are not served on the network", name[:32], ip)
            return None
        if message == "readonly":
            self._refuse_conn(conn, "readonly_node", "a connection from %s named itself a read-only "
                              "observer: only configured members may connect", ip)
            return None
        node = self._nodeAddrToNode.get(message) if isinstance(message, str) else None
        if node is None:
            self._refuse_conn(conn, "unknown_node", "a connection from %s named %r, which is not a "
                              "configured partner", ip, str(message)[:80])
            return None
        if self._shouldConnect(node):
            self._refuse_conn(conn, "wrong_direction", "a connection from %s named %s, a member this node "
                              "dials itself (it never connects here): impostor", ip, node.address)
            return None
        if self._site_cut_off(node.address, self._revoked()):
            revoked_site = self.identity.sites_by_addr.get(node.address, "?")
            self._refuse_conn(conn, "revoked_site", "a connection from %s named %s (site %s), revoked through "
                              "Raft", ip, node.address, revoked_site, site=revoked_site)
            return None
        return node

    def _replace_current(self, conn: Any, node: Any, ip: str) -> bool:
        """Close a silent earlier connection of ``node``; False (``conn`` refused) if it is alive."""
        current = self._connections.get(node)
        if current is not None and current is not conn and current.state == CONNECTION_STATE.CONNECTED:
            last_read = getattr(current, "_TcpConnection__lastReadTime", 0.0)
            if monotonic_time() - last_read < self._syncObj.conf.connectionTimeout:
                self._refuse_conn(conn, "duplicate_connection", "a second connection from %s named %s while "
                                  "its connection is alive", ip, node.address)
                return False
            current.setOnDisconnectedCallback(None)
            current.disconnect()
            self._onNodeDisconnected(node)
        return True

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:
        if self.identity.signed:
            self._on_signed_incoming(conn, message)
            return
        if self._syncObj.encryptor and not conn.sendRandKey:
            if not isinstance(message, bytes) or len(message) != 32:
                self._refuse_conn(conn, "bad_handshake", "a connection from %s sent no 32-byte key first",
                                  self._pending.get(conn, (0, "?"))[1])
                return
            super()._onIncomingMessageReceived(conn, message)  # key exchange
            return
        ip = self._pending.get(conn, (0, "?"))[1]
        node = self._claimed_node(conn, message, ip)
        if node is None or not self._replace_current(conn, node, ip):
            return
        self._pending.pop(conn, None)
        super()._onIncomingMessageReceived(conn, message)

    def _on_signed_incoming(self, conn: Any, message: Any) -> None:
        """Acceptor side of the signed handshake: frame 1 (hello), then frame 3 (the dialer's proof)."""
        ip = self._pending.get(conn, (0, "?"))[1]
        hs = self._handshakes.get(conn)
        if hs is None:  # frame 1
            if isinstance(message, list) or message == "readonly":
                self._claimed_node(conn, message, ip)  # refused with its own reason
                return
            if not (isinstance(message, tuple) and len(message) == 4 and message[0] == HELLO
                    and isinstance(message[1], bytes) and len(message[1]) == NONCE_BYTES
                    and isinstance(message[2], bytes) and len(message[2]) == X25519_BYTES):
                self._refuse_conn(conn, "bad_handshake", "a connection from %s did not open with a signed-handshake "
                                  "hello", ip)
                return
            node = self._claimed_node(conn, message[3], ip)
            if node is None:
                return
            hs = _Handshake(ACCEPTOR, monotonic_time(), ip, node=node, peer_addr=node.address,
                            peer_nonce=message[1], peer_eph=message[2])
            try:
                t = transcript(self.identity.signer.cluster_id, hs.peer_addr, self._self_addr(), hs.peer_nonce,
                               hs.nonce_own, hs.peer_eph, x25519_public_raw(hs.ephemeral))
            except HandshakeError as err:
                self._refuse_conn(conn, "bad_handshake", "a connection from %s: %s", ip, err)
                return
            self._handshakes[conn] = hs
            conn.sendRandKey = hs.peer_nonce  # pysyncobj's per-connection keys: our frames carry theirs
            conn.recvRandKey = hs.nonce_own
            conn.send((hs.nonce_own, x25519_public_raw(hs.ephemeral),
                       self.identity.signer.private_key.sign(proof_bytes(ACCEPTOR, t))))
            return
        # frame 3: the dialer's proof
        t = transcript(self.identity.signer.cluster_id, hs.peer_addr, self._self_addr(), hs.peer_nonce,
                       hs.nonce_own, hs.peer_eph, x25519_public_raw(hs.ephemeral))
        problem, key = proof_problem(message, self.identity.keys_of(hs.peer_addr), self._revoked().keys,
                                     proof_bytes(DIALER, t))
        site = self.identity.sites_by_addr.get(hs.peer_addr, "?")
        if problem is not None:
            self._refuse_conn(conn, problem, "a connection from %s named %s (site %s) %s", ip, hs.peer_addr, site,
                              "but proved it only with a key revoked through Raft" if problem == "revoked_site"
                              else "without a valid signature by a key pinned for that site: an impostor, a key not "
                              "pinned here, or a cluster_id that differs (replicad.site.clusterid asks it which)",
                              site=site)
            return
        try:
            to_acceptor, from_acceptor = session_keys(hs.ephemeral, hs.peer_eph, t)
        except HandshakeError as err:
            self._refuse_conn(conn, "bad_handshake", "a connection from %s: %s", ip, err)
            return
        if not self._replace_current(conn, hs.node, ip):
            return
        self._handshakes.pop(conn, None)
        self._pending.pop(conn, None)
        conn.encryptor = SessionCipher(send_key=from_acceptor, recv_key=to_acceptor)
        conn.replicad_peer = (site, key)
        self._unknownConnections.discard(conn)
        self._connections[hs.node] = conn
        conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, hs.node))
        self._onNodeConnected(hs.node)

    def _onUtilityMessage(self, conn: Any, message: Any) -> bool:  # never reached: refused above
        self._refuse_conn(conn, "utility_message", "utility command from the network")
        return True

    def _refuse_conn(self, conn: Any, reason: str, message: str, *args: Any, site: str | None = None) -> None:
        self.refusals.refuse(reason, message, *args, **_revoked_rate(reason, site))
        if reason == "bad_identity" and site and site != "?":
            self.refusals.note_bad_identity(site)
        self._pending.pop(conn, None)
        self._handshakes.pop(conn, None)
        self._unknownConnections.discard(conn)
        conn.setOnDisconnectedCallback(None)
        conn.disconnect()

    def _refuse_outgoing(self, conn: Any, reason: str, message: str, *args: Any, site: str | None = None) -> None:
        """Refuse the node this node dialed: count, log, close (pysyncobj redials it after
        ``connectionRetryTime``; its disconnect callback stays, the connection object is reused)."""
        self.refusals.refuse(reason, message, *args, **_revoked_rate(reason, site))
        if reason == "bad_identity" and site and site != "?":
            self.refusals.note_bad_identity(site)
        self._handshakes.pop(conn, None)
        conn.disconnect()

    def _onDisconnected(self, conn: Any) -> None:
        self._pending.pop(conn, None)
        hs = self._handshakes.pop(conn, None)
        if hs is not None and hs.role == ACCEPTOR:  # the dialer dropped it after our signed answer
            site = self.identity.sites_by_addr.get(hs.peer_addr)
            if site:
                self.refusals.note_bad_identity(site, abandoned=True)
        conn.replicad_peer = None
        super()._onDisconnected(conn)

    # -- outgoing connections: same bounds on what they receive, and the signed handshake
    def addNode(self, node: Any) -> None:
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None:
            conn.refusals = self.refusals
            conn.replicad_peer = None

    def _connectIfNecessarySingle(self, node: Any) -> bool:
        conn = self._connections.get(node)
        if (conn is None or conn.state == CONNECTION_STATE.DISCONNECTED) and self._shouldConnect(node) \
                and self._site_cut_off(node.address, self._revoked()):
            if node.address not in self._not_dialed:
                self._not_dialed.add(node.address)
                log.warning("not dialing %s (site %s): revoked through Raft", node.address,
                            self.identity.sites_by_addr.get(node.address, "?"))
            return False
        return super()._connectIfNecessarySingle(node)

    def _onOutgoingConnected(self, conn: Any) -> None:
        conn.replicad_peer = None
        if not self.identity.signed:
            super()._onOutgoingConnected(conn)
            return
        node = self._connToNode(conn)
        if node is None:
            conn.disconnect()
            return
        conn.encryptor = self._syncObj.encryptor  # the password gate until the handshake ends
        hs = _Handshake(DIALER, monotonic_time(), node.address, node=node, peer_addr=node.address)
        self._handshakes[conn] = hs
        conn.setOnMessageReceivedCallback(functools.partial(self._on_signed_outgoing, conn))
        conn.sendRandKey = None
        conn.recvRandKey = hs.nonce_own  # the acceptor wraps its answer with our nonce
        conn.send((HELLO, hs.nonce_own, x25519_public_raw(hs.ephemeral), self._self_addr()))

    def _on_signed_outgoing(self, conn: Any, message: Any) -> None:
        """Dialer side: frame 2 (the acceptor's nonce, key and proof), then send frame 3."""
        hs = self._handshakes.get(conn)
        if hs is None:
            return
        node = hs.node
        if not (isinstance(message, tuple) and len(message) == 3 and isinstance(message[0], bytes)
                and len(message[0]) == NONCE_BYTES and isinstance(message[1], bytes)
                and len(message[1]) == X25519_BYTES):
            self._refuse_outgoing(conn, "bad_handshake", "%s answered the handshake with a malformed message", node.address)
            return
        nonce_a, eph_a, sig_a = message
        try:
            t = transcript(self.identity.signer.cluster_id, self._self_addr(), node.address, hs.nonce_own, nonce_a,
                           x25519_public_raw(hs.ephemeral), eph_a)
            to_acceptor, from_acceptor = session_keys(hs.ephemeral, eph_a, t)
        except HandshakeError as err:
            self._refuse_outgoing(conn, "bad_handshake", "%s answered the handshake: %s", node.address, err)
            return
        problem, key = proof_problem(sig_a, self.identity.keys_of(node.address), self._revoked().keys,
                                     proof_bytes(ACCEPTOR, t))
        site = self.identity.sites_by_addr.get(node.address, "?")
        if problem is not None:
            self._refuse_outgoing(conn, problem, "the node answering at %s (site %s) %s", node.address, site,
                              "proved it only with a key revoked through Raft" if problem == "revoked_site"
                              else "did not prove it is that site: an impostor, a key not pinned here, or a "
                              "cluster_id that differs (replicad.site.clusterid asks it which)", site=site)
            return
        self._handshakes.pop(conn, None)
        conn.sendRandKey = nonce_a
        conn.send(self.identity.signer.private_key.sign(proof_bytes(DIALER, t)))  # under the password key
        conn.encryptor = SessionCipher(send_key=to_acceptor, recv_key=from_acceptor)
        conn.replicad_peer = (site, key)
        conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
        self._onNodeConnected(node)

    def send(self, node: Any, message: Any) -> bool:
        """pysyncobj's send, refused (False) on a connection whose signed handshake has not ended."""
        if self.identity.signed:
            conn = self._connections.get(node)
            if conn is None or getattr(conn, "replicad_peer", None) is None:
                return False
        return super().send(node, message)

    # -- deadlines and revocations, every tick
    def _onTick(self) -> None:
        super()._onTick()
        now = monotonic_time()
        if self._pending:
            for conn, (since, ip) in list(self._pending.items()):
                if now - since > HANDSHAKE_DEADLINE_S:
                    self._refuse_conn(conn, "handshake_timeout", "a connection from %s did not name a member "
                                      "within %.1fs", ip, HANDSHAKE_DEADLINE_S)
        for conn, hs in list(self._handshakes.items()):
            if hs.role == DIALER and now - hs.since > HANDSHAKE_DEADLINE_S:
                self._handshakes.pop(conn, None)
                # a member this node dialed stalls (paused, overloaded, a link dropping packets): not
                # traffic refused but a peer out of reach (replicad_raft_peer_up 0), so its own reason
                self.refusals.refuse("handshake_unanswered", "%s did not answer the handshake within %.1fs",
                                     hs.peer_addr, HANDSHAKE_DEADLINE_S)
                conn.disconnect()  # pysyncobj redials it after connectionRetryTime
        for node, conn in list(self._connections.items()):  # dials the kernel still retries
            if conn.state == CONNECTION_STATE.CONNECTING and \
                    now - getattr(conn, "_TcpConnection__lastReadTime", now) > CONNECT_DEADLINE_S:
                conn.disconnect()  # (connect() set lastReadTime when it began)
        revoked = self._revoked()
        if not revoked.keys and not revoked.sites:
            return
        for node, conn in list(self._connections.items()):
            if conn.state != CONNECTION_STATE.DISCONNECTED and self._peer_revoked(conn, node.address, revoked):
                revoked_site = self.identity.sites_by_addr.get(node.address, "?")
                self.refusals.refuse("revoked_site", "dropping the Raft connection of %s (site %s): revoked "
                                     "through Raft", node.address, revoked_site,
                                     **_revoked_rate("revoked_site", revoked_site))
                conn.disconnect()

    def destroy(self) -> None:
        for conn in list(self._pending):
            conn.setOnDisconnectedCallback(None)
            conn.disconnect()
        self._pending.clear()
        self._handshakes.clear()
        super().destroy()


__all__ = ["MemberOnlyTransport", "RefusalLog", "bounded_decompress", "DecompressionBombError",
           "MAX_DECOMPRESSED_BYTES", "HANDSHAKE_DEADLINE_S", "MAX_PENDING_PER_IP", "MAX_PENDING",
           "refusals_of", "ChannelIdentity", "Revocations", "revocations_of", "transport_identity",
           "SessionCipher", "transcript", "proof_bytes", "proof_problem", "session_keys", "HandshakeError",
           "x25519_public_raw"]
