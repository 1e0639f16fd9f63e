"""Peer transport between sites over aiohttp: the chunk-shipping protocol, both ends.

Routes (all ``POST``, msgpack bodies from :mod:`replicad.core.wire`, errors as JSON
``{error, message, evidence}`` with the status of the error class):

* ``/v1/peer/missing``  ``{volume, epoch, from, digests}`` → ``{missing}``: which it lacks.
* ``/v1/peer/chunks``   header doc then frames ``[digest, codec, payload]`` → ``{stored}``.
  The receiver verifies every digest, appends in batches and fsyncs each batch before it
  counts it (O1); a stream cut in the middle keeps the batches already stored, so the
  sender's next ``missing`` resumes where it broke.
* ``/v1/peer/snapshot`` ``{volume, epoch, from, seq, root}`` → ``{stored: true, ack}`` only if
  the manifest, all its pages and all its chunks are durable here. This is the "stored"
  acknowledgement that O2 counts; ``ack`` (64 bytes, or None in unsigned lab mode) is the
  receiver's Ed25519 signature of it, attesting the manifest's size
  (:func:`replicad.core.identity.sign_ack`), which the primary hands to the state machine in
  ``commit_snapshot`` (``acks``). A manifest larger than the volume's agreed maximum is refused
  before any walk (:meth:`PeerHost.check_announced`).
* ``/v1/peer/fetch``    ``{volume, epoch, from, digests}`` → a frame stream of those it has
  (read path of restore and catch-up; every chunk verified before it leaves the process).
  Served only to a site that may hold ``volume`` and only what is not another volume's
  manifest or page (:meth:`PeerHost.check_fetch`: FetchRefusedError, 403); a digest asked twice
  is RemoteProtocolError (reason ``duplicate_digests``); past FETCH_PER_SITE fetches of the
  sender or FETCH_GLOBAL in all, PeerBusyError (503) after a bounded wait (:class:`FetchGate`).
  Read in batches bounded by bytes (FETCH_BATCH_BYTES); a client that takes no batch within
  FETCH_SEND_STALL_S is cut. Every answered fetch is handed to :meth:`PeerHost.fetch_done`.

Writes (``chunks``, ``snapshot``) are fenced: the :class:`PeerHost` refuses an epoch older
than the committed one with :class:`~replicad.core.errors.StaleEpochError`. Every write
request, accepted or refused, is handed to :meth:`PeerHost.peer_audit` once it is answered
(who, what, outcome): the receiving site keeps its own record of what peers did to it.

Every request of a site revoked through Raft (``replicad revoke``: :meth:`PeerHost.check_peer`)
is refused on every route with :class:`~replicad.core.errors.RevokedError` (403 ``revoked``)
before anything is read from or written to the store, and audited like a refused write. Over
mutual TLS the sender is the one its certificate names (:func:`replicad.peer.tls.check_sender`);
without ``[tls]`` the ``from`` field is the sender's word.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from replicad.core import wire
from replicad.storage.chunkstore import ChunkStore
from replicad.core.errors import (IntegrityError, NotFoundError, PeerBusyError, PeerStalledError,
                                  PeerUnavailableError, RemoteProtocolError, ReplicadError, RevokedError,
                                  StreamSlotsBusyError, from_dict)
from replicad.core.manifest import Manifest, changed_digests, iter_block_digests
from replicad.peer.netreason import connection_reason, origin, unreachable_detail
from replicad.peer.tls import cert_site, check_sender

log = logging.getLogger("replicad.peer.transport")

BATCH_BYTES = 8 * 2**20        # receiver: store (and fsync) once this much is buffered
BATCH_ITEMS = 512
READ_BATCH = 64                # sender: chunks read from the store per worker-thread call
FETCH_READ_AHEAD = 2           # /v1/peer/fetch: batches read ahead of the one being sent
# The serving side of /v1/peer/fetch (ARCHITECTURE.md, Choices: "A fetch costs its holder a
# bounded memory"). A fetch is read in batches of at most READ_BATCH chunks and at most
# FETCH_BATCH_BYTES of payload (planned from the index before anything is read: 64 chunks of
# 64 KiB as before, 4 chunks of 1 MiB), so one fetch holds at most (1 + FETCH_READ_AHEAD) x
# FETCH_BATCH_BYTES of chunk data (12 MiB: the batch being sent and the two read ahead) whatever
# its block size; at most FETCH_PER_SITE fetches of one requesting site are served at once (a
# restore streams STREAMS_PER_HOLDER = 2 per holder) and FETCH_GLOBAL in all; a fetch past them
# waits up to FETCH_WAIT_S for a place (at most FETCH_WAITING_PER_SITE waiting per site, each
# holding only its request document), else PeerBusyError. Bound on the chunk data all fetches
# hold: FETCH_GLOBAL x 12 MiB = 96 MiB, 24 MiB for one site (before: 3 batches of 64 chunks per
# fetch, no limit: 17 MiB per unread fetch of 64 KiB blocks, 257 MiB of 1 MiB blocks).
FETCH_BATCH_BYTES = 4 * 2**20
FETCH_PER_SITE = 2
FETCH_GLOBAL = 8
FETCH_WAITING_PER_SITE = 4
FETCH_WAIT_S = 5.0             # half the client's progress window, which counts the wait for the answer's head
# The server's progress rule: a client must take each batch it is sent (at most FETCH_BATCH_BYTES)
# within FETCH_SEND_STALL_S (3x the client's own window FETCH_PROGRESS_S), else its connection is
# cut (its place freed, its memory dropped); and its request document must arrive within
# DOC_RECEIVE_S (below). An honest restore takes a 4 MiB batch in well under a second.
FETCH_SEND_STALL_S = 30.0
# Request documents (ARCHITECTURE.md, Choices: "A peer document costs its receiver a bounded
# memory"). Each route's document is refused past what an honest peer can ever send (DOC_LIMITS,
# checked against Content-Length before any byte is read and again while reading): a missing or
# fetch document carries at most wire.MAX_DIGESTS_PER_DOC digests of 34 bytes each as msgpack
# (bin 8: marker, length, 32 bytes) behind a 3-byte array head, plus an envelope (keys, two names
# of at most 255 characters, counters, root) of at most 2,129 bytes (measured: 255 four-byte
# characters in both names, counters at wire.MAX_COUNTER), bounded here by DOC_ENVELOPE_BYTES;
# a snapshot document and the head of a chunk stream are an envelope alone. A document must
# arrive whole within DOC_RECEIVE_S of its request's head (140 KiB in 10 s: a link of at least
# 14 KiB/s, 115 kbit/s; the progress rule of a fetch already asks 100 KiB/s of a holder). At most
# DOC_PER_SITE documents of one peer and DOC_GLOBAL in all are received at once (DocGate: the
# excess refused at once, before its body is read, with PeerBusyError): the bodies all of them
# hold stay under DOC_GLOBAL x 140 KiB = 8.8 MiB, 2.2 MiB for one peer (before: 8 MiB each,
# without a bound on their number, kept up to 30 s: 256 unfinished fetch documents of one site
# held 2 GiB). A peer is its TLS certificate's site (:func:`peer_identity`).
DOC_ENVELOPE_BYTES = 4096
DOC_DIGESTS_BYTES = 3 + wire.MAX_DIGESTS_PER_DOC * (2 + wire.DIGEST_SIZE)
DOC_LIMITS = {"missing": DOC_DIGESTS_BYTES + DOC_ENVELOPE_BYTES, "fetch": DOC_DIGESTS_BYTES + DOC_ENVELOPE_BYTES,
              "snapshot": DOC_ENVELOPE_BYTES, "chunks": DOC_ENVELOPE_BYTES}
DOC_RECEIVE_S = 10.0
DOC_PER_SITE = 16
DOC_GLOBAL = 64
DOC_LOG_S = 60.0               # a refused document is logged once per this per peer, route and reason
DOC_LOG_KEYS = 64              # (peer, route, reason) remembered for that (a cluster has a few sites)
DOC_REFUSALS = ("doc_busy", "doc_too_large", "doc_too_slow")  # evidence reasons of the DocGate's refusals
# A chunk stream (/v1/peer/chunks) holds up to two batches (BATCH_BYTES each) and a frame being
# read (~17 MiB) while it lasts. Review R12 F3: the primary of a volume configured here opened 40
# streams to site-b, each stopping mid-frame after ~12 MiB, and held them (91 -> 604 MiB, kept
# after it left; only the disk quota of admit_chunk bounded them). So at most CHUNK_STREAMS_PER_PEER
# streams of one peer and CHUNK_STREAMS_TOTAL in all are received at once (the excess refused at
# once, 503 peer_busy: a ship retries), and a stream that brings no byte for CHUNK_IDLE_S is cut
# (doc_too_slow). An honest primary ships each volume over one stream at a time (a straggler's
# ship may overlap the next), and its sender is silent only while it reads its next batch from its
# own store (seconds under load) or waits on this site's fsyncs (not counted here).
CHUNK_STREAMS_PER_PEER = 8
CHUNK_STREAMS_TOTAL = 32
CHUNK_IDLE_S = 60.0
# The sending side of that bound (ARCHITECTURE.md, Choices: "A primary keeps within a replica's
# chunk streams"): a site opens at most CHUNK_SLOTS_PER_PEER chunk streams to one peer at once
# (StreamSlots in PeerClient); a ship past them waits for a place, first come first served, for at
# most the wait its caller gives (the ship path: its volume's interval within [CHUNK_SLOT_WAIT_MIN_S,
# CHUNK_SLOT_WAIT_MAX_S], replicad.site.replication.slot_wait_s), else StreamSlotsBusyError and the
# next cycle ships again. Two fewer than the replica allows: the replica gives a stream's place
# back only once its batch in flight is fsynced, after this site saw the stream end (a stream this
# site cut, a reply it did not wait for), and without TLS every site behind one address shares
# that address's places there. Fetches (restore, catch-up) are bounded by FetchGate, not by these.
CHUNK_SLOTS_PER_PEER = CHUNK_STREAMS_PER_PEER - 2
CHUNK_SLOT_WAIT_MIN_S = 30.0
CHUNK_SLOT_WAIT_MAX_S = 300.0
# A client answered PeerBusyError asks the same holder again after FETCH_BUSY_RETRY_S (its share meanwhile
# open to the other holders), up to FETCH_BUSY_RETRIES times in a row; then the holder counts as failed.
FETCH_BUSY_RETRY_S = 1.0
FETCH_BUSY_RETRIES = 10
PEER_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=3, sock_read=30)
# The progress rule of a fetch (ARCHITECTURE.md, Choices: "A holder must make progress"): a
# holder answering /v1/peer/fetch must deliver FETCH_PROGRESS_BYTES of complete chunk frames
# (or end its answer) within every FETCH_PROGRESS_S seconds spent waiting on it, the wait for
# its answer's head included; else the fetch fails with PeerStalledError and goes to another
# holder. Only time spent waiting on the network counts (not the caller's own work between reads).
FETCH_PROGRESS_S = 10.0
FETCH_PROGRESS_BYTES = 2**20
# A fetch the caller cuts because another holder served it first is counted as a stall when the
# holder lagged behind the rule pro rata over at least this much waiting (2x the longest gap
# between an honest holder's frames measured under load, 1.0 s): FetchProgress.lagging.
FETCH_LAG_MIN_S = 2.0
# Deadlines of a ship's requests to a replica (ARCHITECTURE.md, Choices: "A replica must answer a
# ship in time"): /v1/peer/missing (at most wire.MAX_DIGESTS_PER_DOC index lookups there) within
# SHIP_DOC_S; /v1/peer/snapshot (the replica checks the snapshot complete: without a base, every
# block of the volume) within SHIP_DOC_S + SHIP_CHECK_S_PER_GIB per GiB of the volume; the chunk
# upload of /v1/peer/chunks under the progress rule of a fetch (ShipProgress). Else
# PeerStalledError naming the replica (evidence url, request). Measured in-process at load 22:
# missing of 4,096 digests 0.06 s, the check of 1 GiB without a base 0.09-0.28 s.
SHIP_DOC_S = 10.0
SHIP_CHECK_S_PER_GIB = 5.0
UPLOAD_PIECE_BYTES = 2**18     # send_chunks: the stream is written (and its progress credited) in pieces of this


class PeerHost(Protocol):
    """What the peer server needs from its site (implemented by the daemon)."""

    site_id: str
    store: ChunkStore

    async def check_write_epoch(self, volume: str, epoch: int, sender: str) -> None:
        """Raise StaleEpochError / NotPrimaryError / NotFoundError unless ``sender`` may write ``volume`` at ``epoch``."""

    def check_peer(self, sender: str) -> None:
        """Raise RevokedError if a majority revoked ``sender`` through Raft (every route, first)."""

    async def snapshot_received(self, volume: str, epoch: int, seq: int, root: bytes, created_at_ns: int) -> None:
        """Record a fully stored snapshot in the local catalog."""

    def chunks_received(self, volume: str, sender: str, payload_bytes: int) -> None:
        """Account chunk bytes received from ``sender`` (metrics)."""

    def admit_chunk(self, volume: str, epoch: int, sender: str, payload_bytes: int) -> None:
        """Count one chunk of ``payload_bytes`` about to be stored for ``(volume, epoch)`` from
        ``sender``; raise QuotaExceededError (nothing stored) past what a snapshot in flight can
        need. Synchronous and cheap (called per frame)."""

    async def peer_audit(self, sender: str, path: str, doc: dict[str, Any], err: ReplicadError | None) -> None:
        """Record one answered write request from ``sender`` (``path``: the route; ``doc``:
        volume, epoch, seq, root, stored — whatever the request carried; ``err``: the error it
        was refused with, None if accepted). Must not raise."""

    def stored_ack(self, volume: str, epoch: int, seq: int, root: bytes, size_bytes: int,
                   n_blocks: int) -> bytes | None:
        """This site's signed "stored" acknowledgement of the snapshot (64 bytes; it attests the
        manifest's ``size_bytes`` and ``n_blocks``), None when the site does not sign (unsigned lab
        mode)."""

    def check_announced(self, volume: str, seq: int, manifest: Manifest) -> None:
        """Raise RemoteProtocolError (logged, nothing stored) for an announced ``manifest`` this
        site refuses to walk: a block size or a size past what the cluster agreed for ``volume``.
        Called after the manifest's own checks and before any of its pages or blocks is looked
        up. Synchronous and cheap (a worker thread)."""

    def complete_base(self, volume: str) -> Manifest | None:
        """A snapshot of ``volume`` this site holds completely (recorded, its chunks kept
        live by the collector), to check a new snapshot against; None if there is none.
        Synchronous (called in a worker thread)."""

    def check_fetch(self, volume: str, sender: str, digests: Sequence[bytes]) -> None:
        """Raise FetchRefusedError unless ``sender`` may read ``digests`` under ``volume`` (the
        volume's primary or a holder of one of its snapshots in Raft; no manifest or page of
        another volume). Synchronous (called in a worker thread)."""

    def fetch_done(self, sender: str, volume: str | None, chunks: int, payload_bytes: int,
                   err: ReplicadError | None) -> None:
        """Account one answered ``/v1/peer/fetch`` of ``sender``: served (``err`` None) or refused
        or cut (``err``: FetchRefusedError, PeerBusyError, RemoteProtocolError, PeerStalledError
        for a client that did not read, PeerUnavailableError for one that went away), with the
        chunks and payload bytes sent. Logged, counted and audited per requester and volume in
        aggregate (not per request). Synchronous, cheap, never raises."""


def error_response(err: ReplicadError) -> web.Response:
    """JSON error body with the status of the error class."""
    return web.json_response(err.to_dict(), status=err.http_status)


def _msgpack_response(**fields: Any) -> web.Response:
    return web.Response(body=wire.encode_reply(**fields), content_type=wire.CONTENT_TYPE)


async def read_bounded(stream: aiohttp.StreamReader, declared: int | None, limit: int, what: str) -> bytes:
    """Read a whole HTTP body (however the network splits it), refusing more than ``limit`` bytes.

    Raises RemoteProtocolError when the declared or actual size exceeds ``limit``."""
    if declared is not None and declared > limit:
        raise RemoteProtocolError(f"{what} too large", bytes=declared, limit=limit)
    parts: list[bytes] = []
    size = 0
    async for data in stream.iter_chunked(2**16):
        size += len(data)
        if size > limit:
            raise RemoteProtocolError(f"{what} too large", bytes=size, limit=limit)
        parts.append(data)
    return b"".join(parts)


async def refuse_doc(request: web.Request, err: ReplicadError) -> web.StreamResponse:
    """Answer a refused request document (``err``: PeerBusyError, RemoteProtocolError) and close
    its connection at once: the rest of its body is not read (aiohttp would read and drop it for
    up to 10 s, the connection and its TLS buffers open meanwhile)."""
    resp = error_response(err)
    resp.force_close()
    try:
        await resp.prepare(request)
        await resp.write_eof()
    except (ConnectionError, aiohttp.ClientError):  # the peer is gone already
        pass
    request.protocol.force_close()
    return resp


def peer_identity(request: web.Request) -> tuple[str, bool]:
    """Who sends ``request``, known before its body is read: ``(name, certified)``. Over mutual
    TLS the site its certificate names (:func:`replicad.peer.tls.cert_site`; certified True).
    Without ``[tls]`` no sender is authenticated, and a name a peer would give is its word: the
    name is ``"unauthenticated@"`` and its remote address (certified False), so the per-peer
    bounds are per address (a claimed name, read before, let a peer naming itself after several
    sites take each name's places, fill the bound in all, and have the refusals name an honest
    site).
    """
    transport = request.transport
    site = cert_site(transport.get_extra_info("peercert") if transport is not None else None)
    if site is not None:
        return site, True
    return f"unauthenticated@{request.remote or '?'}", False


class DocGate:
    """Places to receive peer request documents: at most ``per_site`` bodies of one peer
    (:func:`peer_identity`) at once and ``total`` in all, taken before the body is read and
    given back once it is read (or refused); the excess is refused at once (PeerBusyError,
    evidence ``reason`` "doc_busy", ``limit`` per_site or global). Every refusal of a document
    (busy, too large, too slow: :meth:`refused`) is handed to ``on_refused(peer, route, reason)``
    and logged at WARNING once per DOC_LOG_S per peer, route and reason (the others of that
    minute counted in the next line; at most DOC_LOG_KEYS peers remembered, the others of a
    minute logged together as ``'*'``: without TLS a peer names itself). Event loop only.

    Args:
        site_id: this site (named in the log).
        on_refused: ``(peer, route, reason) -> None`` (metrics); None: logged only. Must not raise.
        per_site, total: the bounds (defaults DOC_PER_SITE, DOC_GLOBAL).
        clock: monotonic seconds (the log's rate).
    """

    def __init__(self, site_id: str = "?", on_refused: Callable[[str, str, str], None] | None = None,
                 per_site: int | None = None, total: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.site_id = site_id
        self.on_refused = on_refused
        self.per_site = DOC_PER_SITE if per_site is None else per_site
        self.total = DOC_GLOBAL if total is None else total
        self.clock = clock
        self.receiving: collections.Counter[str] = collections.Counter()
        self._logged: dict[tuple[str, str, str], list[float | int]] = {}  # -> [last logged at, refused since]

    def acquire(self, peer: str, route: str) -> None:
        """Take a place for one document of ``peer`` on ``route``. Raises PeerBusyError (and
        accounts it, :meth:`refused`) when ``peer`` or all peers hold every place."""
        mine, all_ = self.receiving[peer], sum(self.receiving.values())
        if mine < self.per_site and all_ < self.total:
            self.receiving[peer] += 1
            return
        limit = "per_site" if mine >= self.per_site else "global"
        err = PeerBusyError(f"{self.site_id} receives {mine} request documents of {peer} and {all_} in all (at most "
                            f"{self.per_site} per site, {self.total} in all): ask later", sender=peer, route=route,
                            reason="doc_busy", limit=limit, receiving=mine)
        self.refused(peer, route, err)
        raise err

    def release(self, peer: str) -> None:
        """Give back a place of ``peer``."""
        self.receiving[peer] -= 1
        if self.receiving[peer] <= 0:
            del self.receiving[peer]

    def refused(self, peer: str, route: str, err: ReplicadError) -> None:
        """Account one document of ``peer`` on ``route`` refused with ``err`` (its evidence
        ``reason``: doc_busy, doc_too_large, doc_too_slow). Never raises."""
        reason = str(err.evidence.get("reason") or err.code)
        if reason == "doc_busy":
            reason = f"doc_busy_{err.evidence.get('limit', 'global')}"
        if self.on_refused is not None:
            try:
                self.on_refused(peer, route, reason)
            except Exception:  # noqa: BLE001 - accounting must not change the answer
                log.exception("accounting a refused document of %s failed", peer[:64])
        now = self.clock()
        key = (peer, route, reason)
        if key not in self._logged and len(self._logged) >= DOC_LOG_KEYS:
            # names are a peer's word without TLS: forget the quiet ones, else count it under "*"
            self._logged = {k: v for k, v in self._logged.items() if now - v[0] < DOC_LOG_S}
            if len(self._logged) >= DOC_LOG_KEYS:
                key = ("*", route, reason)
        entry = self._logged.setdefault(key, [float("-inf"), 0])
        entry[1] += 1
        if now - entry[0] < DOC_LOG_S:
            return
        log.warning("AUDIT refused %s documents of site %r at %s: %s: %s (%d refused since the last such line; "
                    "once per %.0fs per site, route and reason)", route, key[0][:64], self.site_id, reason, err,
                    entry[1], DOC_LOG_S)
        entry[0], entry[1] = now, 0


async def read_doc_body(request: web.Request, route: str) -> bytes:
    """The body of ``request``, a document of ``route`` (a key of DOC_LIMITS), read into one
    buffer of at most its limit: refused before anything is read when its Content-Length is
    larger, and as soon as more arrives than the limit; whole within DOC_RECEIVE_S. Raises
    RemoteProtocolError (evidence ``reason`` doc_too_large or doc_too_slow, ``limit``)."""
    limit = DOC_LIMITS[route]
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RemoteProtocolError(f"{route} document of {declared} bytes is larger than any honest one ({limit})",
                                  route=route, bytes=declared, limit=limit, reason="doc_too_large")
    buf = bytearray()
    try:
        async with asyncio.timeout(DOC_RECEIVE_S):
            while data := await request.content.read(limit + 1 - len(buf)):
                buf += data
                if len(buf) > limit:
                    raise RemoteProtocolError(f"{route} document is larger than any honest one ({limit} bytes)",
                                              route=route, bytes=len(buf), limit=limit, reason="doc_too_large")
    except TimeoutError:
        raise RemoteProtocolError(f"{route} document not received within {DOC_RECEIVE_S:g}s ({len(buf)} bytes came)",
                                  route=route, bytes=len(buf), deadline_s=DOC_RECEIVE_S,
                                  reason="doc_too_slow") from None
    return bytes(buf)


async def receive_doc(request: web.Request, route: str, gate: DocGate) -> dict[str, Any]:
    """Receive and decode the request document of ``route`` under ``gate``: a place of the
    sending peer taken before the body is read (:meth:`DocGate.acquire`), the body read within
    its bounds (:func:`read_doc_body`), the place given back. Raises PeerBusyError,
    RemoteProtocolError (accounted as refused documents when busy, too large or too slow), or
    ForbiddenError (the ``from`` is not the TLS certificate's site)."""
    peer = peer_identity(request)[0]
    gate.acquire(peer, route)
    try:
        body = await read_doc_body(request, route)
    except RemoteProtocolError as err:
        gate.refused(peer, route, err)
        raise
    finally:
        gate.release(peer)
    doc = wire.decode_doc(route, body)
    _check_sender(request, doc["from"])
    return doc


def _sender(reader: wire.FrameReader) -> str:
    """The declared sender of a chunk stream, ``"?"`` before its header arrived."""
    header = getattr(reader, "header", None) or {}
    return str(header.get("from", "?"))


def _audit_fields(doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What a peer write request is recorded with: its volume, epoch, seq and root (hex), and ``extra``."""
    out: dict[str, Any] = {k: doc[k] for k in ("volume", "epoch", "seq") if k in doc}
    if isinstance(doc.get("root"), bytes):
        out["root"] = doc["root"].hex()
    out.update(extra)
    return out


def _check_sender(request: web.Request, sender: object) -> None:
    """Over mutual TLS, the client certificate must name ``sender`` (ForbiddenError)."""
    transport = request.transport
    peercert = transport.get_extra_info("peercert") if transport is not None else None
    check_sender(peercert, sender)


def snapshot_complete(store: ChunkStore, volume: str, epoch: int, seq: int, root: bytes,
                      base: Manifest | None = None,
                      check: Callable[[Manifest], None] | None = None) -> Manifest:
    """Check that the manifest ``root`` and everything it references is in ``store``.

    ``base``: a snapshot of the volume this site holds completely (``PeerHost.complete_base``);
    then only the blocks that differ from it (:func:`replicad.core.manifest.changed_digests`) are
    looked up, not every block of the volume (1 GiB, 1 % changed: ~170 lookups instead of
    ~8,300). ``check``: called with the decoded manifest before any page or block is looked up
    (``PeerHost.check_announced``: a manifest of 8 million blocks claimed for a 3 MiB volume
    was walked for 15 s and 700 MB before anything refused it). Returns the decoded manifest.
    Raises NotFoundError (with the count of missing chunks) or RemoteProtocolError if the
    manifest is not the announced snapshot, or what ``check`` raises. Synchronous.
    """
    if not store.has(root):
        raise NotFoundError("manifest not stored here", volume=volume, seq=seq, root=root.hex())
    manifest = Manifest.decode(store.get(root))
    if (manifest.volume, manifest.seq, manifest.epoch) != (volume, seq, epoch):
        raise RemoteProtocolError("manifest does not describe the announced snapshot", volume=volume, seq=seq,
                                  epoch=epoch, manifest=[manifest.volume, manifest.seq, manifest.epoch])
    if check is not None:
        check(manifest)
    lacking = store.missing(manifest.pages)
    if lacking:
        raise NotFoundError(f"{len(lacking)} manifest pages missing", volume=volume, seq=seq)
    if base is not None and base.volume == volume:
        blocks: Iterable[bytes] = changed_digests(base, manifest, store.get)
    else:
        blocks = (d for d in iter_block_digests(manifest, store.get) if any(d))
    lacking = store.missing(blocks)
    if lacking:
        raise NotFoundError(f"{len(lacking)} chunks missing", volume=volume, seq=seq, missing=len(lacking))
    return manifest


def peer_routes(host: PeerHost) -> list[web.RouteDef]:
    """The peer API of ``host`` as aiohttp route definitions. Every route's document (the
    head of a chunk stream included) is received under one :class:`DocGate`, whose refusals go
    to ``host.doc_refused(peer, route, reason)`` when the host has it (metrics)."""
    docs = DocGate(str(getattr(host, "site_id", "?")), getattr(host, "doc_refused", None))
    streams = DocGate(str(getattr(host, "site_id", "?")), getattr(host, "doc_refused", None),
                      per_site=CHUNK_STREAMS_PER_PEER, total=CHUNK_STREAMS_TOTAL)

    async def refused_read(path: str, doc: dict[str, Any], err: ReplicadError) -> web.Response:
        if isinstance(err, RevokedError):  # reads are audited only when the sender is revoked
            await host.peer_audit(str(doc.get("from", "?")), path, _audit_fields(doc), err)
        return error_response(err)

    async def missing(request: web.Request) -> web.Response:
        doc: dict[str, Any] = {}
        try:
            doc = await receive_doc(request, "missing", docs)
            host.check_peer(doc["from"])
            lacking = await asyncio.to_thread(host.store.missing, doc["digests"])
            return _msgpack_response(missing=lacking)
        except ReplicadError as err:
            if err.evidence.get("reason") in DOC_REFUSALS:  # accounted and logged by the DocGate
                return await refuse_doc(request, err)
            return await refused_read("/v1/peer/missing", doc, err)

    async def chunks(request: web.Request) -> web.Response:
        reader = wire.FrameReader("chunks")
        stored = 0
        batch: list[tuple[bytes, int, bytes]] = []
        batch_bytes = 0
        received_bytes = 0
        # one batch is stored (verified, written, fsynced: O1) while the next is received, so
        # the sender is not stalled by this site's fsyncs; at most two batches in memory
        storing: asyncio.Future[int] | None = None

        async def store(items: list[tuple[bytes, int, bytes]]) -> None:
            nonlocal storing, stored
            if storing is not None:
                stored += await storing
                storing = None
            if items:
                storing = asyncio.ensure_future(asyncio.to_thread(host.store.put_encoded, items))

        async def check(header: dict[str, Any]) -> None:
            # fencing: refuse the stream of a stale primary before storing anything
            _check_sender(request, header["from"])
            host.check_peer(header["from"])
            await host.check_write_epoch(header["volume"], header["epoch"], header["from"])

        async def head() -> list[tuple[bytes, int, bytes]]:
            """Receive the stream's head document under the DocGate (a place of the peer, at most
            DOC_LIMITS["chunks"] bytes before it is whole, within DOC_RECEIVE_S) and fence it;
            return the frames that came with it."""
            peer = peer_identity(request)[0]
            docs.acquire(peer, "chunks")
            try:
                frames: list[tuple[bytes, int, bytes]] = []
                limit, got = DOC_LIMITS["chunks"], 0
                try:
                    async with asyncio.timeout(DOC_RECEIVE_S):
                        while reader.header is None:
                            data = await request.content.read(limit + 1 - got)
                            if not data:
                                break
                            got += len(data)
                            reader.feed(data)
                            frames.extend(reader.frames())
                            if reader.header is None and got > limit:
                                raise RemoteProtocolError(
                                    f"chunks head document is larger than any honest one ({limit} bytes)",
                                    route="chunks", bytes=got, limit=limit, reason="doc_too_large")
                except TimeoutError:
                    raise RemoteProtocolError(f"chunks head document not received within {DOC_RECEIVE_S:g}s "
                                              f"({got} bytes came)", route="chunks", bytes=got,
                                              deadline_s=DOC_RECEIVE_S, reason="doc_too_slow") from None
            except RemoteProtocolError as err:
                if err.evidence.get("reason") in DOC_REFUSALS:
                    docs.refused(peer, "chunks", err)
                raise
            finally:
                docs.release(peer)
            if reader.header is not None:
                await check(reader.header)
            return frames

        def take(frame: tuple[bytes, int, bytes]) -> list[tuple[bytes, int, bytes]] | None:
            """Count ``frame`` in the quota and the batch; the batch to store when it is full."""
            nonlocal batch, batch_bytes, received_bytes
            # quota: never more than a snapshot in flight can need (refused before storing)
            assert reader.header is not None
            host.admit_chunk(reader.header["volume"], reader.header["epoch"], reader.header["from"], len(frame[2]))
            batch.append(frame)
            batch_bytes += len(frame[2])
            received_bytes += len(frame[2])
            if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_ITEMS:
                full, batch, batch_bytes = batch, [], 0
                return full
            return None

        async def body() -> AsyncIterator[bytes]:
            """The stream's bytes after its head; cut (doc_too_slow) when none come for CHUNK_IDLE_S."""
            pieces = request.content.iter_chunked(wire.FEED_MAX_BYTES).__aiter__()
            while True:
                try:
                    async with asyncio.timeout(CHUNK_IDLE_S):
                        data = await pieces.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    err = RemoteProtocolError(f"chunk stream brought no byte for {CHUNK_IDLE_S:g}s "
                                              f"({received_bytes} bytes of chunks came)", route="chunks",
                                              idle_s=CHUNK_IDLE_S, reason="doc_too_slow")
                    streams.refused(stream_peer, "chunks", err)
                    raise err from None
                yield data

        stream_peer = peer_identity(request)[0]
        try:
            streams.acquire(stream_peer, "chunks")
        except PeerBusyError as err:
            return await refuse_doc(request, err)
        try:
            for frame in await head():
                if (full := take(frame)) is not None:
                    await store(full)
            async for data in body():
                reader.feed(data)
                for frame in reader.frames():
                    if (full := take(frame)) is not None:
                        await store(full)
            header = reader.finish()  # a stream without a head document: RemoteProtocolError
            await store(batch)
            await store([])  # O1: every batch durable before the answer
            host.chunks_received(header["volume"], header["from"], received_bytes)
            await host.peer_audit(header["from"], "/v1/peer/chunks", _audit_fields(header, stored=stored,
                                                                                  bytes=received_bytes), None)
            return _msgpack_response(stored=stored)
        except ReplicadError as err:
            if err.evidence.get("reason") in DOC_REFUSALS:  # accounted and logged by the DocGate
                return await refuse_doc(request, err)
            if isinstance(err, IntegrityError):
                log.warning("peer sent a corrupt chunk: %s", err.evidence)
            await host.peer_audit(_sender(reader), "/v1/peer/chunks",
                                  _audit_fields(reader.header or {}, stored=stored, bytes=received_bytes), err)
            return error_response(err)
        except (aiohttp.ClientPayloadError, ConnectionResetError) as err:
            log.info("chunk stream cut after %d stored: %s", stored, err)
            return error_response(PeerUnavailableError("chunk stream cut", stored=stored))
        finally:
            try:
                if storing is not None:  # an error elsewhere: the batch in flight still finishes (or fails) whole
                    await asyncio.gather(storing, return_exceptions=True)
            finally:
                streams.release(stream_peer)  # after its batch: the place bounds the memory it holds

    async def snapshot(request: web.Request) -> web.Response:
        doc: dict[str, Any] = {}
        try:
            doc = await receive_doc(request, "snapshot", docs)
            host.check_peer(doc["from"])
            await host.check_write_epoch(doc["volume"], doc["epoch"], doc["from"])
            base = await asyncio.to_thread(host.complete_base, doc["volume"])
            manifest = await asyncio.to_thread(snapshot_complete, host.store, doc["volume"], doc["epoch"],
                                               doc["seq"], doc["root"], base,
                                               functools.partial(host.check_announced, doc["volume"], doc["seq"]))
            await host.snapshot_received(doc["volume"], doc["epoch"], doc["seq"], doc["root"], manifest.created_at_ns)
            ack = host.stored_ack(doc["volume"], doc["epoch"], doc["seq"], doc["root"], manifest.size_bytes,
                                  manifest.n_blocks)
            await host.peer_audit(doc["from"], "/v1/peer/snapshot", _audit_fields(doc), None)
            return _msgpack_response(stored=True, ack=ack)
        except ReplicadError as err:
            if err.evidence.get("reason") in DOC_REFUSALS:  # accounted and logged by the DocGate
                return await refuse_doc(request, err)
            await host.peer_audit(str(doc.get("from", "?")), "/v1/peer/snapshot", _audit_fields(doc), err)
            return error_response(err)

    gate = FetchGate()

    async def fetch(request: web.Request) -> web.StreamResponse:
        doc: dict[str, Any] = {}
        peer, certified = peer_identity(request)
        sender = peer if certified else "?"  # over TLS its certificate's site, before the document names it
        try:
            try:
                doc = await receive_doc(request, "fetch", docs)
            except ReplicadError as err:
                if err.evidence.get("reason") in DOC_REFUSALS:
                    return await refuse_doc(request, err)  # accounted and logged by the DocGate (not per fetch)
                raise
            sender = str(doc["from"])
            host.check_peer(sender)
            digests: list[bytes] = doc["digests"]
            if len(set(digests)) != len(digests):
                raise RemoteProtocolError(f"fetch by {sender} asks a chunk more than once "
                                          f"({len(digests)} digests, {len(set(digests))} distinct)",
                                          sender=sender, reason="duplicate_digests", asked=len(digests),
                                          distinct=len(set(digests)))
            await asyncio.to_thread(host.check_fetch, doc["volume"], sender, digests)
            await gate.acquire(sender)
        except ReplicadError as err:
            if isinstance(err, RevokedError):
                return await refused_read("/v1/peer/fetch", doc, err)
            host.fetch_done(sender, doc.get("volume"), 0, 0, err)
            return error_response(err)
        except (ConnectionError, aiohttp.ClientError) as err:  # went away before it asked
            host.fetch_done(sender, doc.get("volume"), 0, 0,
                            PeerUnavailableError(f"fetch request cut: {err}", sender=sender))
            return web.Response(status=400)
        try:
            return await _serve_fetch(request, doc, sender)
        finally:
            gate.release(sender)

    async def _serve_fetch(request: web.Request, doc: dict[str, Any], sender: str) -> web.StreamResponse:
        """Stream the frames of ``doc["digests"]`` this store holds, in batches planned by bytes
        (:func:`plan_fetch_batches`), FETCH_READ_AHEAD read (and verified) ahead of the one sent.
        A client that takes no batch within FETCH_SEND_STALL_S, or goes away, is cut and
        accounted (never a traceback)."""
        resp = web.StreamResponse(headers={"Content-Type": wire.CONTENT_TYPE})
        sent_chunks = sent_bytes = 0

        def read(batch: list[bytes]) -> asyncio.Future[list[bytes]]:
            return asyncio.ensure_future(asyncio.to_thread(_read_frames, host.store, batch))

        ahead: collections.deque[asyncio.Future[list[bytes]]] = collections.deque()
        err: ReplicadError | None = None
        try:
            lengths = await asyncio.to_thread(host.store.encoded_lengths, doc["digests"])
            batches = plan_fetch_batches(doc["digests"], lengths)
            # batches k+1 .. k+FETCH_READ_AHEAD are read (and verified) while batch k is sent: direct reads
            # have no page-cache read-ahead, so the disk gets its queue from these
            ahead.extend(read(b) for b in batches[:FETCH_READ_AHEAD])
            await resp.prepare(request)
            await resp.write(wire.encode_doc("chunks", volume=doc["volume"], epoch=doc["epoch"],
                                             **{"from": host.site_id}))
            for k in range(len(batches)):
                frames = await ahead.popleft()
                if k + FETCH_READ_AHEAD < len(batches):
                    ahead.append(read(batches[k + FETCH_READ_AHEAD]))
                if frames:
                    data = b"".join(frames)
                    try:
                        async with asyncio.timeout(FETCH_SEND_STALL_S):
                            await resp.write(data)
                    except TimeoutError:
                        err = PeerStalledError(
                            f"{sender} took no {len(data)}-byte batch of its fetch within {FETCH_SEND_STALL_S:.0f}s: "
                            f"connection cut after {sent_chunks} chunks ({sent_bytes} bytes)", sender=sender,
                            reason="client_stalled", window_s=FETCH_SEND_STALL_S, sent_bytes=sent_bytes)
                        if request.transport is not None:
                            request.transport.abort()  # drops what it buffered for the client at once
                        return resp
                    sent_chunks += len(batches[k])
                    sent_bytes += len(data)
            await resp.write_eof()
            return resp
        except (ConnectionError, aiohttp.ClientError) as cut:
            err = PeerUnavailableError(f"{sender} went away during its fetch after {sent_chunks} chunks "
                                       f"({sent_bytes} bytes): {type(cut).__name__}", sender=sender,
                                       reason="client_gone", sent_bytes=sent_bytes)
            return resp
        except ReplicadError as failed:  # this site's store (its index or a pack) failed the fetch
            err = failed
            log.error("serving a fetch of %s to %s failed here: %s %s", doc.get("volume"), sender, failed.code, failed)
            if not resp.prepared:
                return error_response(failed)
            if request.transport is not None:
                request.transport.abort()  # the client sees a cut answer and asks another holder
            return resp
        finally:
            if ahead:  # cut early: let the reads finish, drop them
                await asyncio.gather(*ahead, return_exceptions=True)
            host.fetch_done(sender, doc.get("volume"), sent_chunks, sent_bytes, err)

    async def hello(request: web.Request) -> web.Response:
        # cluster_id: what this site's config names, said to anyone who reaches the peer port (not a
        # secret: drill reports carry it); a site whose Raft handshakes fail as bad_identity compares
        # it with its own (replicad.site.clusterid) to tell a cluster_id typo from a key mismatch
        return web.json_response({"site_id": host.site_id, "wire_version": wire.WIRE_VERSION,
                                  **({"cluster_id": cid} if isinstance(cid := getattr(host, "cluster_id", None), str)
                                     else {})})

    return [web.post("/v1/peer/missing", missing), web.post("/v1/peer/chunks", chunks),
            web.post("/v1/peer/snapshot", snapshot), web.post("/v1/peer/fetch", fetch),
            web.get("/v1/peer/hello", hello)]


def _read_frames(store: ChunkStore, digests: Sequence[bytes]) -> list[bytes]:
    """The encoded frames of the digests this store holds intact (corrupt ones are dropped from
    the index and logged; missing ones left out), read with :meth:`ChunkStore.get_encoded_many`
    (O_DIRECT: the disk DMAs into the read buffer; each payload verified where it lies there):
    one bytes object holding them all in the order asked (each payload copied once, from the
    read buffer: :func:`~replicad.core.wire.encode_frames`), or an empty list."""
    found, _missing, corrupt = store.get_encoded_many(digests, views=True, direct=True)
    for d, err in corrupt:
        log.error("corrupt chunk %s found while serving a fetch; dropped from the index: %s", d.hex(), err.evidence)
        store.delete_corrupt(d)
    return [wire.encode_frames(found)] if found else []


def plan_fetch_batches(digests: Sequence[bytes], lengths: dict[bytes, int],
                       max_items: int = READ_BATCH, max_bytes: int = FETCH_BATCH_BYTES) -> list[list[bytes]]:
    """The reads of one fetch: ``digests`` this store holds (``lengths``: payload bytes per
    digest, :meth:`ChunkStore.encoded_lengths`; the others are left out), in the order asked,
    cut into batches of at most ``max_items`` chunks and ``max_bytes`` of payload (a chunk
    larger than ``max_bytes`` alone). Pure."""
    out: list[list[bytes]] = []
    batch: list[bytes] = []
    size = 0
    for d in digests:
        n = lengths.get(d)
        if n is None:
            continue
        if batch and (len(batch) >= max_items or size + n > max_bytes):
            out.append(batch)
            batch, size = [], 0
        batch.append(d)
        size += n
    if batch:
        out.append(batch)
    return out


class FetchGate:
    """Places to serve ``/v1/peer/fetch``: at most ``per_site`` at once for one requesting site
    and ``total`` in all. A fetch past them waits for a place, first come first served, up to
    ``wait_s``; at most ``waiting_per_site`` of one site wait (a waiting fetch holds only its
    request document). Else PeerBusyError. Event loop only (no locks).

    Args:
        per_site, total, waiting_per_site, wait_s: the bounds (defaults FETCH_PER_SITE,
            FETCH_GLOBAL, FETCH_WAITING_PER_SITE, FETCH_WAIT_S).
    """

    def __init__(self, per_site: int | None = None, total: int | None = None,
                 waiting_per_site: int | None = None, wait_s: float | None = None) -> None:
        self.per_site = FETCH_PER_SITE if per_site is None else per_site
        self.total = FETCH_GLOBAL if total is None else total
        self.waiting_per_site = FETCH_WAITING_PER_SITE if waiting_per_site is None else waiting_per_site
        self.wait_s = FETCH_WAIT_S if wait_s is None else wait_s
        self.serving: collections.Counter[str] = collections.Counter()
        self.waiting: collections.Counter[str] = collections.Counter()
        self._queue: collections.deque[tuple[str, asyncio.Future[None]]] = collections.deque()

    def _fits(self, sender: str) -> bool:
        return self.serving[sender] < self.per_site and sum(self.serving.values()) < self.total

    def _busy(self, sender: str, waited_s: float) -> PeerBusyError:
        limit = "per_site" if self.serving[sender] >= self.per_site else "global"
        return PeerBusyError(
            f"this site serves {self.serving[sender]} fetches of {sender} and {sum(self.serving.values())} in all "
            f"(at most {self.per_site} per site, {self.total} in all): ask later or another holder",
            sender=sender, limit=limit, serving=self.serving[sender], waited_s=round(waited_s, 3))

    async def acquire(self, sender: str) -> None:
        """Take a place for a fetch of ``sender`` (waiting up to ``wait_s``). Raises PeerBusyError."""
        if self._fits(sender):  # a fetch waits only while it does not fit: none that fits is passed over
            self.serving[sender] += 1
            return
        if self.waiting[sender] >= self.waiting_per_site:
            raise self._busy(sender, 0.0)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (sender, fut)
        self._queue.append(entry)
        self.waiting[sender] += 1
        t0 = time.monotonic()
        try:
            await asyncio.wait({fut}, timeout=self.wait_s)
        except BaseException:
            if fut.done():  # given a place just as this fetch was cancelled: give it back
                self.release(sender)
            raise
        finally:
            self.waiting[sender] -= 1
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._queue.remove(entry)
        if fut.cancelled():
            raise self._busy(sender, time.monotonic() - t0)

    def release(self, sender: str) -> None:
        """Give back a place of ``sender`` and hand free places to the fetches waiting, in order."""
        self.serving[sender] -= 1
        if self.serving[sender] <= 0:
            del self.serving[sender]
        passed: collections.deque[tuple[str, asyncio.Future[None]]] = collections.deque()
        while self._queue:
            who, fut = self._queue.popleft()
            if fut.done():
                continue
            if self._fits(who):
                self.serving[who] += 1
                fut.set_result(None)
            else:
                passed.append((who, fut))
        self._queue = passed


class StreamSlots:
    """Places for the chunk streams (``/v1/peer/chunks``) this site opens to each peer: at most
    ``per_peer`` to one peer at once (the sending side of the replica's CHUNK_STREAMS_PER_PEER).
    A stream past them waits for a place, first come first served (none that would fit passes a
    waiting one), up to the wait its caller gives; a waiting stream holds nothing but its place in
    the queue. Peers are keys (the peer's origin, :func:`replicad.peer.netreason.origin`); event
    loop only (no locks).

    Args:
        per_peer: the bound (default CHUNK_SLOTS_PER_PEER).
    """

    def __init__(self, per_peer: int | None = None) -> None:
        self.per_peer = CHUNK_SLOTS_PER_PEER if per_peer is None else per_peer
        self.open: collections.Counter[str] = collections.Counter()  # places taken, per peer
        self._queues: dict[str, collections.deque[asyncio.Future[None]]] = {}

    def waiting(self, peer: str) -> int:
        """Streams to ``peer`` waiting for a place."""
        return sum(1 for fut in self._queues.get(peer, ()) if not fut.done())

    def free(self, peer: str) -> bool:
        """True when a stream to ``peer`` would get a place at once."""
        return self.open[peer] < self.per_peer and not self.waiting(peer)

    async def acquire(self, peer: str, wait_s: float) -> float:
        """Take a place for one stream to ``peer``, waiting up to ``wait_s`` seconds; returns the
        seconds waited (0.0 when one was free). Raises StreamSlotsBusyError (evidence ``peer``,
        ``streams``, ``limit``, ``waiting``, ``waited_s``) when none was given in time. A caller
        cancelled while waiting leaves the queue (a place given to it meanwhile is given on)."""
        if self.free(peer):
            self.open[peer] += 1
            return 0.0
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(peer, collections.deque()).append(fut)
        t0 = time.monotonic()
        try:
            await asyncio.wait({fut}, timeout=max(0.0, wait_s))
        except BaseException:
            if fut.done() and not fut.cancelled():  # given a place just as this stream was cancelled
                self.release(peer)
            self._leave_queue(peer, fut)
            raise
        waited = time.monotonic() - t0
        if fut.done() and not fut.cancelled():
            return waited
        self._leave_queue(peer, fut)
        raise StreamSlotsBusyError(
            f"no place for a chunk stream to {peer} within {wait_s:.0f}s: this site has {self.open[peer]} open to it "
            f"(at most {self.per_peer} at once, {self.waiting(peer)} other ship(s) waiting); the next cycle ships "
            "again", peer=peer, streams=self.open[peer], limit=self.per_peer, waiting=self.waiting(peer),
            waited_s=round(waited, 3))

    def _leave_queue(self, peer: str, fut: asyncio.Future[None]) -> None:
        if not fut.done():
            fut.cancel()
        queue = self._queues.get(peer)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(fut)
            if not queue:
                del self._queues[peer]

    def release(self, peer: str) -> None:
        """Give back a place of ``peer``: to the first stream waiting for one, else free."""
        queue = self._queues.get(peer)
        while queue:
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(None)  # the place passes on: open[peer] stays
                if not queue:
                    del self._queues[peer]
                return
        self._queues.pop(peer, None)
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]


class PeerClient:
    """Client side of the peer API, one per site, sharing one aiohttp session. It opens at
    most CHUNK_SLOTS_PER_PEER chunk streams to one peer at once (:attr:`chunk_slots`,
    :meth:`send_chunks`).

    Every method raises PeerUnavailableError when the peer cannot be reached, or the peer's
    own error (rebuilt from its JSON body: StaleEpochError, IntegrityError, ...).
    """

    def __init__(self, session: aiohttp.ClientSession, site_id: str) -> None:
        self.session = session
        self.site_id = site_id
        # called with (peer_url, error) when a fetch breaks the progress rule (PeerStalledError) or
        # the holder's answer is bad (RemoteProtocolError: a frame not asked or sent twice, a
        # malformed stream; IntegrityError: a chunk that does not match its digest), before the
        # error is raised (the daemon logs it under the holder's name, counts it, asks it last):
        # see holder_fault
        self.on_stall: Callable[[str, ReplicadError], None] | None = None
        self.progress_s = FETCH_PROGRESS_S         # the progress rule of fetch_frames (FetchProgress)
        self.progress_bytes = FETCH_PROGRESS_BYTES  # and of send_chunks (ShipProgress)
        self.ship_doc_s = SHIP_DOC_S                # deadlines of missing and snapshot_ack
        self.ship_check_s_per_gib = SHIP_CHECK_S_PER_GIB
        self.chunk_slots = StreamSlots()            # chunk streams open to each peer (send_chunks)
        self._headers = {"Content-Type": wire.CONTENT_TYPE}

    def holder_fault(self, peer_url: str, err: ReplicadError) -> None:
        """Hand ``err`` (the holder at ``peer_url`` stalled a fetch or answered it with bad
        frames) to :attr:`on_stall`, once per error object (a caller that verifies what
        :meth:`fetch_frames` yielded reports a digest mismatch here; errors of the stream itself
        are reported by :meth:`fetch_frames`). Never raises."""
        if self.on_stall is None or getattr(err, "_holder_fault_noted", False):
            return
        err._holder_fault_noted = True  # type: ignore[attr-defined]
        try:
            self.on_stall(peer_url, err)
        except Exception:  # noqa: BLE001 - a hook must not hide the fetch's own error
            log.exception("on_stall hook failed for %s", peer_url)

    async def _post(self, url: str, body: Any, *, timeout: aiohttp.ClientTimeout = PEER_TIMEOUT,
                    deadline_s: float | None = None) -> dict[str, Any]:
        """POST ``body`` to ``url``, return its msgpack reply document. ``deadline_s``: the whole
        request (connection, body, the reply's head and every byte of it) must end within it,
        else PeerStalledError (evidence ``url``, ``request`` path, ``deadline_s``); None: only
        ``timeout``. Raises PeerUnavailableError, the peer's error, RemoteProtocolError."""
        try:
            async with asyncio.timeout(deadline_s):
                return await self._post_once(url, body, timeout)
        except TimeoutError:  # the deadline (aiohttp's own timeouts are PeerUnavailableError by then)
            path = url[url.find("/v1/"):] if "/v1/" in url else url
            raise PeerStalledError(f"peer {url} did not answer {path} within {deadline_s:.0f}s", url=url,
                                   request=path, deadline_s=deadline_s) from None

    async def _post_once(self, url: str, body: Any, timeout: aiohttp.ClientTimeout) -> dict[str, Any]:
        try:
            async with self.session.post(url, data=body, timeout=timeout,
                                         headers=self._headers) as resp:
                data = await read_bounded(resp.content, resp.content_length, wire.MAX_DOC_BYTES, "peer reply")
                if resp.status != 200:
                    raise _error_from(resp.status, data, url)
                return wire.decode_reply(data)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            raise PeerUnavailableError(f"peer {origin(url)} unreachable: {connection_reason(err)}", url=url,
                                       detail=unreachable_detail(err)) from None

    async def hello(self, peer_url: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """The peer's ``GET /v1/peer/hello`` answer: ``{"site_id", "wire_version"[, "cluster_id"]}``
        (a JSON object of at most 64 KiB, within ``timeout_s`` seconds). Raises
        PeerUnavailableError (unreachable, not JSON, not an object, or an HTTP error)."""
        url = peer_url.rstrip("/") + "/v1/peer/hello"
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                data = await read_bounded(resp.content, resp.content_length, 64 * 1024, "peer hello")
                if resp.status != 200:
                    raise PeerUnavailableError(f"peer {origin(url)} answered its hello with HTTP {resp.status}",
                                               url=url, status=resp.status)
                doc = json.loads(data)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            raise PeerUnavailableError(f"peer {origin(url)} unreachable: {connection_reason(err)}", url=url,
                                       detail=unreachable_detail(err)) from None
        except ValueError:
            raise PeerUnavailableError(f"peer {origin(url)} answered its hello with no JSON", url=url) from None
        if not isinstance(doc, dict):
            raise PeerUnavailableError(f"peer {origin(url)} answered its hello with no JSON object", url=url)
        return doc

    async def missing(self, peer_url: str, volume: str, epoch: int, digests: Sequence[bytes]) -> list[bytes]:
        """Which of ``digests`` the peer lacks (asked in batches of at most wire.MAX_DIGESTS_PER_DOC,
        each answered within SHIP_DOC_S, else PeerStalledError)."""
        out: list[bytes] = []
        for i in range(0, len(digests), wire.MAX_DIGESTS_PER_DOC):
            body = wire.encode_doc("missing", volume=volume, epoch=epoch, digests=list(digests[i:i + wire.MAX_DIGESTS_PER_DOC]),
                                   **{"from": self.site_id})
            reply = await self._post(peer_url + "/v1/peer/missing", body, deadline_s=self.ship_doc_s)
            lacking = reply.get("missing")
            if not isinstance(lacking, list) or not all(isinstance(d, bytes) and len(d) == 32 for d in lacking):
                raise RemoteProtocolError("missing reply malformed", url=peer_url)
            out.extend(lacking)
        return out

    async def send_chunks(self, peer_url: str, volume: str, epoch: int, store: ChunkStore,
                          digests: Sequence[bytes], shared: SharedFrames | None = None, *,
                          slot_wait_s: float = CHUNK_SLOT_WAIT_MIN_S,
                          on_slot_wait: Callable[[float, bool], None] | None = None) -> tuple[int, int]:
        """Stream ``digests`` (read verified from ``store``, already compressed) to the peer.

        Returns ``(newly_stored_count, bytes_sent)``. The stream is read from the store in
        batches of READ_BATCH in a worker thread as aiohttp sends it (bounded memory), or
        through ``shared`` (one read for all the peers of a ship, :class:`SharedFrames`).

        The stream first takes one of this site's places to the peer (:attr:`chunk_slots`, at
        most CHUNK_SLOTS_PER_PEER at once), waiting up to ``slot_wait_s`` seconds, else
        StreamSlotsBusyError (nothing sent). The wait is not the peer's time: the progress rule
        starts once the place is taken. ``on_slot_wait(seconds, got)`` is called after a wait
        (not when a place was free at once); it must not raise. A sender that has to wait
        leaves ``shared`` (:meth:`SharedFrames.leave`) and reads its own batches once it streams:
        the other peers' senders go on, and nothing is kept for it meanwhile. This call owns the
        sender's share of ``shared``: it takes batches of it or leaves it.

        The upload obeys the progress rule of a fetch (:class:`ShipProgress`): the peer must take
        ``progress_bytes`` of the stream per ``progress_s`` spent waiting on it (its reply
        included), else PeerStalledError (evidence ``url``, ``request``, ``sent_bytes``).

        Raises, besides the peer's errors: NotFoundError (a chunk to send is no longer in the
        local store, e.g. pruned meanwhile) or IntegrityError (one is corrupt here) — local
        conditions, raised as such even though aiohttp met them while sending (it reports any
        failure of a request body as a connection error).
        """
        slot = origin(peer_url)
        if shared is not None and not self.chunk_slots.free(slot):
            shared.leave()  # it waits: the others' batches are not kept for it
            shared = None
        try:
            waited = await self.chunk_slots.acquire(slot, slot_wait_s)
        except StreamSlotsBusyError as err:
            if on_slot_wait is not None:
                on_slot_wait(float(err.evidence.get("waited_s", slot_wait_s)), False)
            raise
        except BaseException:
            if shared is not None:  # cancelled at once (it took no batch)
                shared.leave()
            raise
        if waited and on_slot_wait is not None:
            on_slot_wait(waited, True)
        try:
            return await self._send_chunks(peer_url, volume, epoch, store, digests, shared)
        finally:
            self.chunk_slots.release(slot)

    async def _send_chunks(self, peer_url: str, volume: str, epoch: int, store: ChunkStore,
                           digests: Sequence[bytes], shared: SharedFrames | None) -> tuple[int, int]:
        """:meth:`send_chunks` once its place is taken."""
        header = wire.encode_doc("chunks", volume=volume, epoch=epoch, **{"from": self.site_id})

        sent = 0
        local_error: ReplicadError | None = None
        progress = ShipProgress(peer_url + "/v1/peer/chunks", self.progress_s, self.progress_bytes)
        took = False  # a batch of ``shared`` asked for (else the share is left at the end)

        def read(i: int) -> asyncio.Future[list[bytes]]:
            nonlocal took
            batch = digests[i:i + READ_BATCH]
            took = took or shared is not None
            return asyncio.ensure_future(shared.read(batch) if shared is not None
                                         else asyncio.to_thread(_read_frames_strict, store, batch))

        async def body() -> AsyncIterator[bytes | memoryview]:
            nonlocal sent, local_error
            yield header
            starts = range(0, len(digests), READ_BATCH)
            ahead = read(starts[0]) if starts else None  # batch k+1 is read while batch k is sent
            try:
                for k in range(len(starts)):
                    assert ahead is not None
                    try:
                        with progress.local():  # our own store's time: not the peer's
                            frames = await ahead
                    except ReplicadError as err:
                        local_error = err
                        raise
                    ahead = read(starts[k + 1]) if k + 1 < len(starts) else None
                    data = memoryview(b"".join(frames))
                    for i in range(0, len(data), UPLOAD_PIECE_BYTES):  # credited piece by piece
                        piece = data[i:i + UPLOAD_PIECE_BYTES]
                        sent += len(piece)
                        yield piece
                        progress.sent(len(piece))  # resumed: aiohttp wrote it and drained the socket's buffer
                progress.restart()  # the reply: a whole window for the peer's last batch and fsync
            finally:
                if ahead is not None:  # the stream ended early: let the read finish, drop it
                    await asyncio.gather(ahead, return_exceptions=True)

        try:
            async with progress.deadline:
                reply = await self._post(peer_url + "/v1/peer/chunks", body())
        except TimeoutError:
            raise progress.stalled(sent + len(header)) from None
        except ReplicadError:
            if local_error is not None:  # our store failed the stream, not the peer or the link
                raise local_error from None
            raise
        finally:
            if shared is not None and not took:  # the stream ended before its first batch
                shared.leave()
        stored = reply.get("stored")
        if not isinstance(stored, int):
            raise RemoteProtocolError("chunks reply malformed", url=peer_url)
        return stored, sent + len(header)

    async def snapshot_stored(self, peer_url: str, volume: str, epoch: int, seq: int, root: bytes,
                              size_bytes: int = 0) -> bool:
        """Ask the peer to confirm the whole snapshot is durable there (the O2 acknowledgement)."""
        return (await self.snapshot_ack(peer_url, volume, epoch, seq, root, size_bytes))[0]

    async def snapshot_ack(self, peer_url: str, volume: str, epoch: int, seq: int,
                           root: bytes, size_bytes: int = 0) -> tuple[bool, bytes | None]:
        """Like :meth:`snapshot_stored`; returns ``(stored, ack)``: ``ack`` is the peer's signed
        acknowledgement (64 bytes; None when it sent none, as in unsigned lab mode). Not
        verified here (the caller checks it against the peer's pinned keys). The peer must
        answer within SHIP_DOC_S + SHIP_CHECK_S_PER_GIB per GiB of ``size_bytes`` (the
        volume's size: what it may have to check), else PeerStalledError. Raises
        PeerUnavailableError, or the peer's refusal (NotFoundError, StaleEpochError, ...)."""
        body = wire.encode_doc("snapshot", volume=volume, epoch=epoch, seq=seq, root=root, **{"from": self.site_id})
        deadline_s = self.ship_doc_s + self.ship_check_s_per_gib * max(0, size_bytes) / 2**30
        reply = await self._post(peer_url + "/v1/peer/snapshot", body, deadline_s=deadline_s)
        ack = reply.get("ack")
        return reply.get("stored") is True, ack if isinstance(ack, bytes) else None

    async def fetch(self, peer_url: str, volume: str, epoch: int, digests: Sequence[bytes],
                    store: ChunkStore) -> int:
        """Fetch ``digests`` from the peer into ``store`` (each verified, fsynced per batch).

        Returns how many were newly stored; digests the peer does not have are simply not
        stored (the caller checks what is still missing and asks another holder). The next
        batch is received while the previous one is stored (at most two batches of
        BATCH_BYTES in memory). Raises PeerUnavailableError, the peer's error, or the store's
        (IntegrityError for a chunk that does not match its digest, RemoteProtocolError for a
        malformed one: both reported as the holder's fault to :meth:`holder_fault`; StoreFullError).
        """
        async def put(frames: list[tuple[bytes, int, bytes]]) -> int:
            try:
                return await asyncio.to_thread(store.put_encoded, frames)
            except (IntegrityError, RemoteProtocolError) as err:  # a frame that is not its digest's chunk
                self.holder_fault(peer_url, err)
                raise

        stored = 0
        storing: asyncio.Future[int] | None = None
        batch: list[tuple[bytes, int, bytes]] = []
        batch_bytes = 0
        try:
            async for frames in self.fetch_frames(peer_url, volume, epoch, digests):
                for frame in frames:
                    batch.append(frame)
                    batch_bytes += len(frame[2])
                    if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_ITEMS:
                        if storing is not None:
                            stored += await storing
                        storing = asyncio.ensure_future(put(batch))
                        batch, batch_bytes = [], 0
            if storing is not None:
                stored += await storing
                storing = None
            if batch:
                stored += await put(batch)
        finally:
            if storing is not None:  # an error while receiving: the batch in flight finishes whole
                await asyncio.gather(storing, return_exceptions=True)
        return stored

    async def fetch_frames(self, peer_url: str, volume: str, epoch: int, digests: Sequence[bytes], *,
                           views: bool = False) -> AsyncIterator[list[tuple[bytes, int, Any]]]:
        """Stream ``digests`` from the peer's ``/v1/peer/fetch`` without storing them: yields
        lists of ``(digest, codec, payload)`` frames as they arrive (at most one network read
        of wire.FEED_MAX_BYTES each), in the order asked, leaving out those the peer lacks.
        Payloads are not verified here (the caller decodes and checks each digest, and reports
        a mismatch to :meth:`holder_fault`). Asked in requests of at most
        wire.MAX_DIGESTS_PER_DOC distinct digests (a digest asked twice is asked once).

        An answer may carry only digests asked in its request, each at most once: a frame of a
        digest not asked, or a second frame of one, is a RemoteProtocolError naming the peer
        (evidence ``url``, ``digest``, ``reason`` "not_asked" or "repeated"), raised before that
        frame is yielded. A request ends as soon as every digest asked arrived (the rest of the
        stream is not read), or when the peer ends its answer (those not sent: it lacks them).
        So a holder can neither replay real frames nor send chunks nobody asked for to keep a
        fetch alive.

        ``views``: payloads are ``memoryview``/``bytearray`` read by :class:`wire.FrameSplitter`
        from the pieces as aiohttp hands them over (no join of pieces, no msgpack buffer: a
        payload is copied at most once, where it spans two pieces); else ``bytes``
        (:class:`wire.FrameReader`).

        The progress rule (:class:`FetchProgress`) holds for every request: PeerStalledError
        when the peer delivers too little too slowly. PeerStalledError and RemoteProtocolError
        are handed to :meth:`holder_fault` (:attr:`on_stall`) before they are raised.

        Raises PeerUnavailableError (unreachable, reset or cut mid-stream: the frames yielded
        before stay good), PeerStalledError, the peer's own error, RemoteProtocolError (a
        malformed stream)."""
        digests = list(dict.fromkeys(bytes(d) for d in digests))
        for i in range(0, len(digests), wire.MAX_DIGESTS_PER_DOC):
            asked = digests[i:i + wire.MAX_DIGESTS_PER_DOC]
            body = wire.encode_doc("fetch", volume=volume, epoch=epoch, digests=asked, **{"from": self.site_id})
            progress = FetchProgress(peer_url, self.progress_s, self.progress_bytes)
            answer = FetchAnswer(peer_url, asked)
            refusal: ReplicadError | None = None
            try:
                resp = await progress.run(self.session.post(peer_url + "/v1/peer/fetch", data=body,
                                                            timeout=PEER_TIMEOUT,
                                                            headers=self._headers))
                async with resp:
                    if resp.status != 200:  # the peer's refusal: its word, not a bad answer
                        refusal = _error_from(resp.status, await progress.run(read_bounded(
                            resp.content, resp.content_length, wire.MAX_DOC_BYTES, "peer error")), peer_url)
                        raise refusal
                    if views:
                        splitter = wire.FrameSplitter("chunks")
                        pieces = resp.content.iter_chunks()
                        while (piece := await progress.run(anext(pieces, None))) is not None:
                            frames = splitter.feed(piece[0])
                            if frames:
                                answer.check(frames)
                                progress.delivered(frames)
                                yield frames
                                if answer.complete:
                                    break
                        else:
                            splitter.finish()
                        continue
                    reader = wire.FrameReader("chunks")
                    chunked = resp.content.iter_chunked(wire.FEED_MAX_BYTES)
                    while (data := await progress.run(anext(chunked, None))) is not None:
                        reader.feed(data)
                        frames = list(reader.frames())
                        if frames:
                            answer.check(frames)
                            progress.delivered(frames)
                            yield frames
                            if answer.complete:
                                break
                    else:
                        reader.finish()
            except (PeerStalledError, RemoteProtocolError) as err:
                if err is not refusal:
                    err.evidence.setdefault("url", peer_url)
                    self.holder_fault(peer_url, err)
                raise
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
                raise PeerUnavailableError(f"peer {origin(peer_url)} unreachable: {connection_reason(err)}",
                                           url=peer_url, detail=unreachable_detail(err)) from None
            except asyncio.CancelledError:  # cut by the caller (a faster holder served it): named if it lagged
                lagged = progress.lagging()
                if lagged is not None:
                    self.holder_fault(peer_url, lagged)
                raise


class FetchProgress:
    """The progress rule of one ``/v1/peer/fetch`` request: within every FETCH_PROGRESS_S
    seconds spent waiting on the peer (:meth:`run`), it must deliver FETCH_PROGRESS_BYTES of
    payload in complete chunk frames (:meth:`delivered`) or end its answer; each time it does,
    a new window begins. Time outside :meth:`run` (the caller storing or decoding what came)
    does not count. A sock_read timeout alone never catches a peer that trickles a byte now
    and then: one frame may take forever while every read returns something.

    Args:
        url: the peer's URL (named in the error).
        window_s, min_bytes: the rule (defaults FETCH_PROGRESS_S, FETCH_PROGRESS_BYTES).
    """

    def __init__(self, url: str, window_s: float = FETCH_PROGRESS_S, min_bytes: int = FETCH_PROGRESS_BYTES) -> None:
        self.url = url
        self.window_s = window_s
        self.min_bytes = min_bytes
        self.waited = 0.0      # seconds spent waiting on the peer in this window
        self.got = 0           # payload bytes of complete frames in this window
        self.frames = 0        # frames received in all

    async def run(self, aw: Any) -> Any:
        """Await ``aw`` (a read from the peer) within what is left of the window. Raises
        PeerStalledError when the window runs out first (``aw`` is cancelled)."""
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, self.window_s - self.waited)):
                return await aw
        except TimeoutError:
            raise PeerStalledError(
                f"peer {self.url} stalled a fetch: {self.got} bytes of complete chunk frames in {self.window_s:.0f}s "
                f"waiting on it (the progress rule asks {self.min_bytes} bytes per {self.window_s:.0f}s); "
                f"{self.frames} frames received before", url=self.url, window_s=self.window_s,
                got_bytes=self.got, frames=self.frames) from None
        finally:
            self.waited += time.monotonic() - t0

    def lagging(self) -> PeerStalledError | None:
        """For a request cut by the caller before the window ran out (another holder served it
        first): the error naming the peer if it lagged behind the rule, pro rata, over at least
        FETCH_LAG_MIN_S of this window (fewer than ``min_bytes`` x waited / ``window_s`` bytes);
        None if it kept up (or too little time passed to tell)."""
        if self.waited < FETCH_LAG_MIN_S or self.got * self.window_s >= self.min_bytes * self.waited:
            return None
        return PeerStalledError(
            f"peer {self.url} stalled a fetch: {self.got} bytes of complete chunk frames in {self.waited:.1f}s waiting "
            f"on it when another holder served it first (the progress rule asks {self.min_bytes} bytes per "
            f"{self.window_s:.0f}s); {self.frames} frames received before", url=self.url, window_s=self.window_s,
            got_bytes=self.got, frames=self.frames, waited_s=round(self.waited, 3))

    def delivered(self, frames: list[tuple[bytes, int, Any]]) -> None:
        """Credit complete ``frames`` (digest, codec, payload) to the window."""
        self.frames += len(frames)
        self.got += sum(len(f[2]) for f in frames)
        if self.got >= self.min_bytes:
            self.got, self.waited = 0, 0.0


class ShipProgress:
    """The progress rule of one ``/v1/peer/chunks`` upload (a ship's chunks to a replica), as
    :class:`FetchProgress` for a fetch: within every ``window_s`` seconds spent waiting on the
    peer (aiohttp writing the stream into the socket, the peer's reply), it must take
    ``min_bytes`` of the stream; each time it does, a new window begins. The time this site's
    own store takes to read the next batch (:meth:`local`) does not count.
    Use: ``async with progress.deadline:`` around the request; a ``TimeoutError`` out of it
    means the window ran out (:meth:`stalled` makes the error).

    Args:
        url: the request's URL (named in the error).
        window_s, min_bytes: the rule (defaults FETCH_PROGRESS_S, FETCH_PROGRESS_BYTES).
    """

    def __init__(self, url: str, window_s: float = FETCH_PROGRESS_S, min_bytes: int = FETCH_PROGRESS_BYTES) -> None:
        self.url = url
        self.window_s = window_s
        self.min_bytes = min_bytes
        self.got = 0  # bytes taken by the peer in this window
        self.deadline = asyncio.timeout(window_s)  # an asyncio.Timeout (needs a running loop)

    def _move(self, when: float | None) -> None:
        try:
            self.deadline.reschedule(when)
        except RuntimeError:  # not entered yet, or already expired or left: nothing to move
            pass

    @contextlib.contextmanager
    def local(self) -> Iterator[None]:
        """This site's own work (reading the next batch from its store): the deadline is held
        while it runs and moves on by as long as it took."""
        when = self.deadline.when()
        now = asyncio.get_running_loop().time()
        self._move(None)
        try:
            yield
        finally:
            if when is not None:
                self._move(asyncio.get_running_loop().time() + max(0.0, when - now))

    def sent(self, nbytes: int) -> None:
        """The peer took ``nbytes`` more of the stream; a new window once it took ``min_bytes``."""
        self.got += nbytes
        if self.got >= self.min_bytes:
            self.restart()

    def restart(self) -> None:
        """Begin a new window now."""
        self.got = 0
        self._move(asyncio.get_running_loop().time() + self.window_s)

    def stalled(self, sent_bytes: int) -> PeerStalledError:
        """The error for a window that ran out (``sent_bytes``: the stream's bytes written in all)."""
        return PeerStalledError(
            f"peer {self.url} stalled a chunk upload: it took {self.got} bytes in {self.window_s:.0f}s waiting on it "
            f"(the progress rule asks {self.min_bytes} bytes per {self.window_s:.0f}s); {sent_bytes} bytes sent before",
            url=self.url, request="/v1/peer/chunks", window_s=self.window_s, got_bytes=self.got,
            sent_bytes=sent_bytes)


class FetchAnswer:
    """What one ``/v1/peer/fetch`` answer may still carry: each digest asked, at most once.

    Args:
        url: the peer's URL (named in the error).
        asked: the distinct digests of the request (32 bytes each).
    """

    def __init__(self, url: str, asked: Sequence[bytes]) -> None:
        self.url = url
        self.asked = frozenset(asked)
        self.pending = set(self.asked)

    @property
    def complete(self) -> bool:
        """Every digest asked has arrived."""
        return not self.pending

    def check(self, frames: Sequence[tuple[bytes, int, Any]]) -> None:
        """Take the digests of ``frames`` off the pending set. Raises RemoteProtocolError
        (evidence ``url``, ``digest`` hex, ``reason`` "not_asked" or "repeated") for a frame of a
        digest not asked or already received: the peer's fault, the rest of its answer unread."""
        for frame in frames:
            d = frame[0]
            if d in self.pending:
                self.pending.discard(d)
                continue
            reason = "repeated" if d in self.asked else "not_asked"
            what = "sent again" if reason == "repeated" else "not asked for"
            raise RemoteProtocolError(
                f"peer {self.url} broke a fetch: chunk {bytes(d).hex()} {what} "
                f"({len(self.asked) - len(self.pending)} of {len(self.asked)} asked received before)",
                url=self.url, digest=bytes(d).hex(), reason=reason)


class SharedFrames:
    """Verified frames of chunk batches, read from the store once for all the peers one
    snapshot is shipped to concurrently (a first full sync offers every peer the same
    chunks in the same order, so their senders ask for the same batches).

    Each batch is read and verified in a worker thread by the first sender that asks; the
    others await the same result. A batch is dropped once ``consumers`` senders took it, and
    the oldest batches are dropped beyond ``max_batches`` (a sender that falls that far
    behind reads its own; at most ``max_batches`` × READ_BATCH chunks are held (of
    64 KiB blocks: 32 MiB). Measured (1 GiB first full sync to 2 replicas): the sender's
    store reads and BLAKE3 verification were ~1.3 s of CPU, half of it for the second peer.
    An error (a chunk missing or corrupt here) reaches every sender of that batch.

    Each of the ``consumers`` either takes batches (:meth:`read`) or, before it took any, leaves
    (:meth:`leave`, once): a sender that waits for a place to stream to its peer, has nothing
    to send, or failed before its first batch. Then no batch is kept for it.
    """

    def __init__(self, store: ChunkStore, consumers: int, max_batches: int = 8) -> None:
        self.store = store
        self.consumers = consumers
        self.max_batches = max_batches
        self._batches: dict[tuple[bytes, ...], list[Any]] = {}  # key -> [future, takers]

    async def read(self, digests: Sequence[bytes]) -> list[bytes]:
        """Frames of ``digests`` (as :func:`_read_frames_strict`)."""
        key = tuple(digests)
        entry = self._batches.get(key)
        if entry is None:
            fut = asyncio.ensure_future(asyncio.to_thread(_read_frames_strict, self.store, key))
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if every taker left
            entry = self._batches[key] = [fut, 0]
            while len(self._batches) > self.max_batches:
                del self._batches[next(iter(self._batches))]
        entry[1] += 1
        if entry[1] >= self.consumers:
            self._batches.pop(key, None)
        return await asyncio.shield(entry[0])

    def leave(self) -> None:
        """One consumer that took no batch will take none: it is not counted any more, and the
        batches every remaining consumer took are dropped."""
        self.consumers = max(0, self.consumers - 1)
        for key in [k for k, entry in self._batches.items() if entry[1] >= self.consumers]:
            del self._batches[key]


def _read_frames_strict(store: ChunkStore, digests: Sequence[bytes]) -> list[bytes]:
    """Frames for shipping: every digest must be present and intact here (read with
    :meth:`ChunkStore.get_encoded_many`).

    Raises NotFoundError (evidence ``digest``, ``local: True``) for a chunk this store no
    longer holds, IntegrityError for a corrupt one."""
    found, missing, corrupt = store.get_encoded_many(digests)
    if missing:
        d = missing[0]
        raise NotFoundError(f"chunk {d.hex()} to ship is no longer in this site's store (pruned or collected "
                            "since the ship began): a local condition, not the peer's", digest=d.hex(),
                            local=True)
    if corrupt:
        raise corrupt[0][1]
    return [wire.encode_frame(d, codec, payload) for d, codec, payload in found]


def _error_from(status: int, data: bytes, url: str) -> ReplicadError:
    try:
        body = json.loads(data)
        if isinstance(body, dict) and "error" in body:
            err = from_dict(body, status)
            err.evidence.setdefault("url", url)
            return err
    except ValueError:
        pass
    return PeerUnavailableError(f"peer {url} answered HTTP {status}", url=url, status=status)
