"""The receiving end of replication: the hooks the peer API calls
(:class:`~replicad.peer.transport.PeerHost`). It fences writes on the Raft epoch (O3),
records snapshots stored here — write-once: a record held here is never replaced by a
peer's word — and keeps this site's own audit of what peers asked of it
(``peer-audit.jsonl``, the same hash-chained format as the admin audit).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Collection
from typing import Any, Callable

from replicad.core.errors import (FetchRefusedError, NotFoundError, NotPrimaryError, QuotaExceededError,
                                  RecordConflictError, RemoteProtocolError, ReplicadError, RevokedError,
                                  StaleEpochError)
from replicad.core.identity import CanonicalError, Signer
from replicad.core.manifest import Manifest
from replicad.core.state import is_revoked, max_size_bytes
from replicad.site.cluster import Cluster
from replicad.site.runner import complete_base, load_manifest
from replicad.storage.audit import AuditLog
from replicad.storage.catalog import Catalog, SnapshotRecord
from replicad.storage.chunkstore import ChunkStore
from replicad.telemetry.metrics import SiteMetrics

log = logging.getLogger("replicad.site.receiver")

EPOCH_CATCH_UP_S = 2.0     # how long a receiver waits to apply an epoch a sender already has
# Quotas against a primary that floods this site (issue: 150 MB of unreferenced chunks in 6 s).
# Chunk bytes accepted for one (volume, epoch, sender) since its last recorded snapshot: a snapshot
# can need at most every block of the volume plus its pages and manifest, so the budget is the
# volume's size (the larger of Raft's and of the newest snapshot held here) with a margin for
# pages, manifests and a ship retried after a cut stream.
CHUNK_BUDGET_FACTOR = 1.25
CHUNK_BUDGET_SLACK_BYTES = 64 * 2**20
# Snapshots announced ahead of the newest committed one and not committed yet: a primary commits
# each snapshot before it takes the next, and ships to a straggler in the background, so more than
# a few in flight is not replication. At the bound a newer announcement evicts the oldest of them
# (Receiver.snapshot_received): a primary whose commits failed for a while (its Raft disk full)
# abandoned those snapshots and must not be refused forever once it can commit again.
MAX_UNCOMMITTED_RECEIVED = 4
UNBOUNDED = 2**62  # the chunk budget of a volume whose size nobody knows yet (before its first commit)
# The peer audit of reads (/v1/peer/fetch) is kept per requesting site and volume in aggregate: one
# record per FETCH_AUDIT_S window in which the site fetched (requests, chunks, bytes, refusals by
# reason), not one per request (a 16 GiB restore asks ~2,000); a refusal or cut is logged at WARNING
# the first time in a window per requester and reason, the others counted in that record.
FETCH_AUDIT_S = 60.0


class Receiver:
    """This site's side of the peer API (implements :class:`replicad.peer.transport.PeerHost`).

    Args:
        cluster: Raft view (epochs, primaries, data sites).
        store, catalog: this site's chunk store and snapshot catalog.
        metrics: the site's metrics (bytes received, refusals).
        audit: the peer audit log (``<data_dir>/peer-audit.jsonl``).
        signer: this site's identity, signing its "stored" acknowledgements; None in unsigned
            lab mode (``unsafe_unsigned``: acknowledgements are then unsigned, like commands).
        configured: ``() -> names`` of the volumes in this site's config (read at each write, so
            a SIGHUP counts); None: every volume Raft knows (tests of the receiver alone).
    """

    def __init__(self, cluster: Cluster, store: ChunkStore, catalog: Catalog, metrics: SiteMetrics,
                 audit: AuditLog, signer: Signer | None = None,
                 configured: Callable[[], Collection[str]] | None = None) -> None:
        self.site_id = cluster.site_id
        self.signer = signer
        self.configured = configured
        self.cluster = cluster
        self.store = store
        self.catalog = catalog
        self.metrics = metrics
        self.audit = audit
        self._pending: set[asyncio.Future] = set()  # background catalog updates
        self._inflight: dict[tuple[str, int, str], int] = {}  # chunk bytes since the last recorded snapshot
        self._budgets: dict[tuple[str, int, str], int] = {}   # their limits (chunk_budget), per stream key
        self._meta_lock = threading.Lock()  # check_fetch runs in worker threads
        self._meta_key: frozenset[tuple[str, bytes]] | None = None
        self._meta_view: dict | None = None                  # the Raft view _meta_owners was checked against
        self._meta_owners: dict[bytes, frozenset[str]] = {}  # manifest root or page digest -> volumes
        self._pages: dict[bytes, tuple[bytes, ...]] = {}      # manifest root -> its page digests
        self._reads: dict[tuple[str, str], dict[str, Any]] = {}  # (requester, volume) -> this window's totals

    @property
    def cluster_id(self) -> str:
        """The ``cluster_id`` this site's config names (the peer hello says it)."""
        return self.cluster.cfg().cluster_id

    def complete_base(self, volume: str) -> Manifest | None:
        """A snapshot of ``volume`` this site holds completely, or None:
        :func:`replicad.site.runner.complete_base` (the rule shared with the pull path)."""
        return complete_base(self.store, self.catalog, volume)

    def stored_ack(self, volume: str, epoch: int, seq: int, root: bytes, size_bytes: int,
                   n_blocks: int) -> bytes | None:
        """This site's signed "stored" acknowledgement (64 bytes,
        :meth:`replicad.core.identity.Signer.sign_ack`) of a snapshot it just checked complete,
        attesting its manifest's ``size_bytes`` and ``n_blocks`` (the commit must carry that
        size); None without a signer. Never raises (a value without a canonical form gives None,
        which the primary's commit cannot use)."""
        if self.signer is None:
            return None
        try:
            return self.signer.sign_ack(volume, epoch, seq, root, size_bytes, n_blocks)
        except CanonicalError:
            return None

    def check_peer(self, sender: str) -> None:
        """Refuse every peer request of a site a majority revoked through Raft (``replicad
        revoke``; :func:`replicad.core.state.is_revoked`: until, rebuilt with a new key, it
        registered again). Raises RevokedError (403 ``revoked``; the route audits it and
        :meth:`peer_audit` counts it in ``replicad_peer_refused_total{reason="revoked"}``)."""
        if is_revoked(self.cluster.view(), sender):
            raise RevokedError(f"{sender!r} was revoked by a majority of sites: its peer requests are refused",
                               sender=sender)

    async def check_write_epoch(self, volume: str, epoch: int, sender: str) -> None:
        """Fencing of peer writes: only the primary named by Raft, at exactly the committed
        epoch, may store snapshots here.

        An epoch newer than this site has applied (its Raft view lags the sender's by a few
        milliseconds after a promotion) is given up to EPOCH_CATCH_UP_S to arrive; it is
        never trusted on the sender's word. Raises NotFoundError (unknown volume or sender, or a
        volume this site's config does not name), StaleEpochError (older epoch, or a newer one
        this site never learns), NotPrimaryError.

        A volume missing from this site's config is refused whatever Raft says (review G1: a
        compromised site registered a volume of its own at up to 1 PiB and, as its primary, filled
        every honest disk within that volume's chunk budget): this site stores only what its
        operator configured it to keep.
        """
        if not self.cluster.is_data_site(sender):
            raise NotFoundError(f"{sender!r} is not a data site of this cluster", sender=sender, volume=volume)
        if self.configured is not None and volume not in self.configured():
            log.warning("AUDIT refused a write of volume %s by %s at %s: this site's config does not name it",
                        volume, sender, self.site_id)
            raise NotFoundError(f"volume {volume} is not configured at {self.site_id}: it stores nothing of it",
                                volume=volume, sender=sender, reason="not_configured")
        deadline = time.monotonic() + EPOCH_CATCH_UP_S
        while True:
            vs = self.cluster.volume_state(volume)
            if vs is None:
                raise NotFoundError(f"unknown volume {volume}", volume=volume)
            if epoch <= vs["epoch"] or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        if epoch != vs["epoch"]:
            raise StaleEpochError(f"{sender} writes {volume} under epoch {epoch}, committed epoch here is "
                                  f"{vs['epoch']}", volume=volume, got_epoch=epoch, committed_epoch=vs["epoch"],
                                  sender=sender)
        if vs["primary"] != sender:
            raise NotPrimaryError(f"{sender} is not the primary of {volume} at epoch {epoch}",
                                  volume=volume, epoch=epoch, sender=sender, primary=vs["primary"])

    def check_fetch(self, volume: str, sender: str, digests: Collection[bytes]) -> None:
        """Serve a fetch only to a site that may hold ``volume``, and only what is not another
        volume's index (issue: any site rebuilt a volume its config does not name from a holder).

        The rule, from the Raft state: ``sender`` is a data site of this cluster, ``volume`` is
        registered, and ``sender`` is its primary or a holder of one of its snapshots in the
        catalog (a replica that never held one gets its first snapshot by the primary's ship,
        not by fetch). And no digest asked is the manifest root or a manifest page of another
        volume's snapshot (Raft's catalog) unless it is also ``volume``'s: without another
        volume's manifest and pages a site cannot learn its block digests. Block digests
        themselves are not checked (no digest-to-volume index here: a site that knows a
        block's content can still learn whether a holder has it). Cost: one pass over Raft's
        catalog per call; the manifests of new roots are read once (cached by root).

        Raises FetchRefusedError (evidence ``sender``, ``volume``, ``reason`` not_data_site,
        unknown_volume, not_holder or other_volume with ``digest``). Synchronous (a worker
        thread)."""
        if not self.cluster.is_data_site(sender):
            raise FetchRefusedError(f"{sender!r} is not a data site of this cluster: it may fetch nothing",
                                    sender=sender, volume=volume, reason="not_data_site")
        view = self.cluster.view()
        vs = view["volumes"].get(volume)
        if vs is None:
            raise FetchRefusedError(f"{sender} fetches under volume {volume!r}, which the cluster does not know",
                                    sender=sender, volume=volume, reason="unknown_volume")
        snapshots = vs.get("snapshots") or {}
        if sender != vs.get("primary") and not any(sender in snap["holders"] for snap in snapshots.values()):
            raise FetchRefusedError(f"{sender} fetches volume {volume}, which it neither is the primary of nor holds "
                                    "a snapshot of in Raft's catalog", sender=sender, volume=volume,
                                    reason="not_holder")
        owners = self._manifest_owners(view)
        for d in digests:
            vols = owners.get(bytes(d))
            if vols is not None and volume not in vols:
                raise FetchRefusedError(f"{sender} fetches under volume {volume} a manifest or page of "
                                        f"{', '.join(sorted(vols))}", sender=sender, volume=volume,
                                        reason="other_volume", digest=bytes(d).hex())

    def _manifest_owners(self, view: dict) -> dict[bytes, frozenset[str]]:
        """``{digest: volumes}`` for every manifest root in Raft's catalog and every page of those
        whose manifest is stored here; rebuilt only when the catalog's roots changed (looked at
        only when the Raft view is another object: views are immutable values). A manifest not
        stored here yet is looked for again at each rebuild (its pages count once it arrives)."""
        if view is self._meta_view:
            return self._meta_owners
        key = frozenset((name, snap["root"]) for name, vs in view["volumes"].items()
                        for snap in (vs.get("snapshots") or {}).values())
        with self._meta_lock:
            if key == self._meta_key:
                self._meta_view = view
                return self._meta_owners
            owners: dict[bytes, set[str]] = {}
            pages: dict[bytes, tuple[bytes, ...]] = {}
            # the roots not read yet that are stored here: one index query, not a failed read per root
            unread = {root for _, root in key if root not in self._pages}
            absent = set(self.store.missing(sorted(unread))) if unread else set()
            for name, root in key:
                got = pages.get(root)
                if got is None:
                    got = self._pages.get(root)
                    if got is None and root in absent:
                        got = ()
                    elif got is None:
                        try:
                            got = pages[root] = tuple(load_manifest(self.store, root).pages)
                        except ReplicadError:  # not stored here (or unreadable) yet: the root alone, for
                            got = ()           # now (read again at the next change of the catalog)
                    else:
                        pages[root] = got
                for d in (root, *got):
                    owners.setdefault(d, set()).add(name)
            self._pages = pages
            self._meta_owners = {d: frozenset(v) for d, v in owners.items()}
            self._meta_key = key
            self._meta_view = view
            return self._meta_owners

    def fetch_done(self, sender: str, volume: str | None, chunks: int, payload_bytes: int,
                   err: ReplicadError | None) -> None:
        """Account one answered fetch of ``sender`` (``PeerHost.fetch_done``): served bytes in
        ``replicad_fetch_served_bytes_total``, a refusal or cut in
        ``replicad_fetch_refused_total{requester,reason}``, logged (WARNING; INFO for a client that
        went away, as a restore's end game cuts the slower holder's fetch) and audited the first
        time per requester and reason in a FETCH_AUDIT_S window; one peer-audit record per
        requester and volume per window (requests, chunks, bytes, refusals by reason; the window
        open at shutdown is written by :meth:`flush_reads`). A requester that is not a configured site is counted as
        ``other`` (the sender's word without TLS). Never raises."""
        try:
            who = sender if any(s.site_id == sender for s in self.cluster.sites()) else "other"
            vol = volume if isinstance(volume, str) and self.cluster.volume_state(volume) is not None else "?"
            key = (who, vol)
            entry = self._reads.get(key)
            if entry is None:
                entry = self._reads[key] = {"requests": 0, "chunks": 0, "bytes": 0, "refused": {}}
                asyncio.get_running_loop().call_later(FETCH_AUDIT_S, self._flush_reads, key)
            entry["requests"] += 1
            entry["chunks"] += chunks
            entry["bytes"] += payload_bytes
            if payload_bytes and vol != "?" and self.metrics is not None:
                self.metrics.fetch_served(who, vol, payload_bytes)
            if err is None:
                return
            reason = str(err.evidence.get("reason") or err.code)
            if reason == "peer_busy":
                reason = "busy"
            if self.metrics is not None:
                self.metrics.fetch_refused(who, reason)
            refused = entry["refused"]
            refused[reason] = refused.get(reason, 0) + 1
            if refused[reason] == 1:  # the first of the window: logged and audited at once
                what = "cut" if reason in ("client_stalled", "client_gone") else "refused"
                (log.info if reason == "client_gone" else log.warning)(
                    "AUDIT %s fetch of volume %s by %s at %s: %s: %s (further ones this minute counted in "
                    "peer-audit.jsonl and replicad_fetch_refused_total)", what, vol,
                    who if who != "other" else f"unknown site {sender[:64]!r}", self.site_id, reason, err)
                self._audit_read(key, {"who": who, "role": "peer", "remote": None, "method": "POST",
                                       "path": "/v1/peer/fetch", "body": {"volume": vol, "reason": reason,
                                                                         "chunks": chunks, "bytes": payload_bytes},
                                       "outcome": what, "status": err.http_status, "error": err.code})
        except Exception as bug:  # noqa: BLE001 - accounting must never fail a fetch
            log.error("accounting a fetch of %s at %s failed: %s: %s", sender[:64], self.site_id,
                      type(bug).__name__, bug)

    def doc_refused(self, peer: str, route: str, reason: str) -> None:
        """Count one request document of ``peer`` (its TLS certificate's site, or its word
        without TLS: :func:`replicad.peer.transport.peer_identity`) refused on ``route`` before
        it was read or while it was (``reason``: doc_busy_per_site, doc_busy_global,
        doc_too_large, doc_too_slow) in ``replicad_peer_doc_refused_total{peer,route,reason}``; a
        peer that is not a configured site counts as ``other``. The DocGate logs it (once a
        minute per peer, route and reason); nothing is audited (no document was read). Never
        raises."""
        try:
            who = peer if any(s.site_id == peer for s in self.cluster.sites()) else "other"
            if self.metrics is not None:
                self.metrics.peer_doc_refused(who, route, reason)
        except Exception as bug:  # noqa: BLE001 - accounting must never change an answer
            log.error("accounting a refused document of %s at %s failed: %s: %s", peer[:64], self.site_id,
                      type(bug).__name__, bug)

    def _flush_reads(self, key: tuple[str, str]) -> None:
        """Write the window's read record of ``key`` (requester, volume) to the peer audit."""
        entry = self._reads.pop(key, None)
        if entry is None:
            return
        record = {"who": key[0], "role": "peer", "remote": None, "method": "POST", "path": "/v1/peer/fetch",
                  "body": {"volume": key[1], "window_s": FETCH_AUDIT_S, **entry},
                  "outcome": "refused" if entry["refused"] and not entry["bytes"] else "ok",
                  "status": 200, "error": ",".join(sorted(entry["refused"])) or None}
        self._audit_read(key, record)

    async def flush_reads(self) -> None:
        """Write the read records of every window still open and wait for the audit writes in
        flight (at shutdown, once the peer server stopped: else the last minute of reads is not
        audited). Never raises."""
        for key in list(self._reads):
            self._flush_reads(key)
        await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _audit_read(self, key: tuple[str, str], record: dict) -> None:
        task = asyncio.ensure_future(self._append_read(key, record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _append_read(self, key: tuple[str, str], record: dict) -> None:
        try:
            await asyncio.to_thread(self.audit.append, record)
        except ReplicadError as audit_err:
            log.error("peer audit record of %s's reads of %s lost at %s: %s", key[0], key[1], self.site_id, audit_err)

    def chunks_received(self, volume: str, sender: str, payload_bytes: int) -> None:
        """Account chunk payload bytes received from ``sender`` (metrics)."""
        self.metrics.received(volume, sender, payload_bytes)

    async def snapshot_received(self, volume: str, epoch: int, seq: int, root: bytes, created_at_ns: int) -> None:
        """Record a snapshot stored completely here (state ``received``) unless already recorded.

        Records are write-once (:meth:`Catalog.put`): a snapshot announced at a ``(volume,
        epoch, seq)`` this site already holds with another root is refused with
        RecordConflictError (the peer gets 409 ``record_conflict``), logged at WARNING and
        counted; the record held here is untouched.

        At most :data:`MAX_UNCOMMITTED_RECEIVED` ``received`` records stay ahead of the
        volume's committed ``last_seq``. At the bound, an announcement newer (by ``(epoch,
        seq)``, at an epoch not older than theirs) than some of them evicts the oldest ones
        (:meth:`_evict_uncommitted`): an honest primary whose commits failed (its Raft disk
        was full) abandoned them, and refusing every new one wedged replication for good. A
        flood stays bounded: the records ahead never exceed the bound, and the chunk bytes one
        sender stores between two commits stay under :meth:`admit_chunk`'s budget (eviction
        does not refund it). An announcement not newer than any of them is refused with
        QuotaExceededError (429 ``quota_exceeded``) as before.
        """
        if self.catalog.find_root(volume, root) is not None:
            return
        vs = self.cluster.volume_state(volume) or {"last_seq": 0}
        await asyncio.to_thread(self._check_manifest, volume, seq, root, vs)  # a manifest load: not on the loop
        ahead = [r for r in await asyncio.to_thread(self.catalog.list, volume, "received")
                 if r.seq > vs["last_seq"]]
        if len(ahead) >= MAX_UNCOMMITTED_RECEIVED:
            older = sorted((r for r in ahead if r.epoch <= epoch and (r.epoch, r.seq) < (epoch, seq)),
                           key=lambda r: (r.epoch, r.seq))
            excess = len(ahead) - MAX_UNCOMMITTED_RECEIVED + 1
            if len(older) < excess:
                raise QuotaExceededError(
                    f"{volume}: {len(ahead)} snapshots announced here are not committed yet (limit "
                    f"{MAX_UNCOMMITTED_RECEIVED}) and #{seq} (epoch {epoch}) is not newer than them; refusing it",
                    volume=volume, epoch=epoch, seq=seq, uncommitted=sorted(r.seq for r in ahead),
                    limit=MAX_UNCOMMITTED_RECEIVED)
            await asyncio.to_thread(self._evict_uncommitted, volume, older[:excess], epoch, seq)
        try:
            await asyncio.to_thread(self.catalog.put, SnapshotRecord(volume, epoch, seq, root, "received",
                                                                     created_at_ns))
        except RecordConflictError as err:
            log.warning("AUDIT refused snapshot %s#%d (epoch %d) announced by the primary at %s: record_conflict, "
                        "this site holds another root for it: %s", volume, seq, epoch, self.site_id, err.evidence)
            raise

    def _evict_uncommitted(self, volume: str, records: list[SnapshotRecord], epoch: int, seq: int) -> None:
        """Forget the ``received`` records ``records`` (never committed, older than the
        announcement ``(epoch, seq)`` that replaces them), logged at WARNING as AUDIT. Their
        chunks are no longer referenced here and the collector takes them one ``gc_grace``
        after their arrival (``Housekeeping.gc``); should Raft still commit one of them with
        this site as a holder, the collector keeps its chunks live from Raft's word.
        Synchronous (a worker thread). Raises what :meth:`Catalog.delete` raises."""
        for rec in records:
            self.catalog.delete(volume, rec.epoch, rec.seq)
            log.warning("AUDIT evicted the uncommitted snapshot %s#%d (epoch %d) at %s: %d snapshots were announced "
                        "here without a commit, and #%d (epoch %d) is newer; the primary abandoned it (its chunks go to "
                        "gc after the grace)", volume, rec.seq, rec.epoch, self.site_id, MAX_UNCOMMITTED_RECEIVED, seq,
                        epoch)

    def check_announced(self, volume: str, seq: int, manifest: Manifest) -> None:
        """Refuse an announced ``manifest`` before any of its pages or blocks is looked up
        (:func:`replicad.peer.transport.snapshot_complete` calls it): :meth:`_refuse_manifest`
        against the volume's state here. Raises RemoteProtocolError."""
        self._refuse_manifest(volume, seq, manifest, self.cluster.volume_state(volume) or {})

    def _check_manifest(self, volume: str, seq: int, root: bytes, vs: dict) -> None:
        """:meth:`_refuse_manifest` of the stored manifest ``root`` (again, when it is recorded)."""
        self._refuse_manifest(volume, seq, load_manifest(self.store, root), vs)

    def _refuse_manifest(self, volume: str, seq: int, m: Manifest, vs: dict) -> None:
        """Refuse (RemoteProtocolError, logged at WARNING as AUDIT; the route counts it in
        ``replicad_peer_refused_total{reason="remote_protocol"}``) an announced manifest whose
        block size is not the volume's (fixed at the volume's creation: a 16 MiB block size
        with a repeated page claimed a 4 TiB snapshot of a 4 MiB volume), or whose size is past
        the volume's agreed maximum (:func:`replicad.core.state.max_size_bytes`: 2000 copies of
        one page claimed 512 GiB, 8.2 million blocks, for a 3 MiB volume, and the walk that
        checked them cost 15 s and 700 MB here before the commit made every site judge it)."""
        if vs:
            limit = max_size_bytes(vs)
            if m.size_bytes > limit:
                log.warning("AUDIT refused snapshot %s#%d announced at %s: it claims %d bytes (%d blocks), more than "
                            "the volume's agreed maximum %d", volume, seq, self.site_id, m.size_bytes, m.n_blocks,
                            limit)
                raise RemoteProtocolError(f"{volume}#{seq}: the manifest claims {m.size_bytes} bytes, more than the "
                                          f"volume's agreed maximum ({limit} bytes; a larger volume is a set_max_size "
                                          "request other sites approve)", volume=volume, seq=seq,
                                          size_bytes=m.size_bytes, max_size_bytes=limit)
        block_size = vs.get("block_size")
        if isinstance(block_size, int) and m.block_size != block_size:
            log.warning("AUDIT refused snapshot %s#%d announced at %s: block size %d, the volume's is %d", volume,
                        seq, self.site_id, m.block_size, block_size)
            raise RemoteProtocolError(f"{volume}#{seq}: manifest block size {m.block_size} is not the volume's "
                                      f"({block_size})", volume=volume, seq=seq, block_size=m.block_size,
                                      volume_block_size=block_size)

    def admit_chunk(self, volume: str, epoch: int, sender: str, payload_bytes: int) -> None:
        """Count a chunk about to be stored; QuotaExceededError past the chunk budget of
        ``(volume, epoch, sender)`` (see CHUNK_BUDGET_FACTOR). The budget restarts with each
        snapshot of the volume committed through Raft (not with an announcement, which the
        sender controls): only writes no committed snapshot ever referenced accumulate. Zero blocks are never shipped, so a
        legitimate sender stays within one volume size of new content per snapshot."""
        key = (volume, epoch, sender)
        used = self._inflight.get(key, 0) + payload_bytes
        limit = self._budgets.get(key)
        if limit is None or used > limit:  # computed once per key, again only before refusing
            limit = self._budgets[key] = self.chunk_budget(volume)
        if used > limit:
            raise QuotaExceededError(
                f"{sender} sent {used} bytes of chunks for {volume} (epoch {epoch}) since its last snapshot here, "
                f"more than a snapshot of this volume can need ({limit} bytes)", volume=volume, epoch=epoch,
                sender=sender, bytes=used, limit=limit)
        self._inflight[key] = used

    def chunk_budget(self, volume: str) -> int:
        """Bytes of chunks one sender may store for ``volume`` between two snapshots recorded
        here: ``CHUNK_BUDGET_FACTOR`` x the volume's size + ``CHUNK_BUDGET_SLACK_BYTES``, the
        size being the larger of the cluster state's (grown by each commit, attested by its
        holders) and the newest snapshot held here, and never above the volume's agreed maximum
        (:func:`replicad.core.state.max_size_bytes`). Before the volume's first commit (the
        first full sync) the size is the agreed maximum: the image may have grown since it was
        registered, within the maximum, and a budget from the registered size would refuse the
        first sync for good (the budget restarts only with a commit). A volume registered
        without a size and never committed has no per-stream bound (:data:`UNBOUNDED`; the
        disk's own limit stands), a gap that closes with its first committed snapshot."""
        vs = self.cluster.volume_state(volume) or {}
        size = int(vs.get("size_bytes") or 0)
        limit = max_size_bytes(vs) if vs else None
        # only snapshots committed here count: a manifest the primary merely announced could claim
        # any size (a 4 TiB manifest of one repeated page raised the budget of a 4 MiB volume)
        for rec in sorted(self.catalog.list(volume, "committed"), key=lambda r: r.seq, reverse=True):
            if self.store.has(rec.root):
                size = max(size, load_manifest(self.store, rec.root).size_bytes)
                break
        first_sync = not vs.get("snapshots") and not vs.get("last_seq")
        if size == 0 and first_sync:
            return UNBOUNDED
        if limit is not None:  # no size above the agreed maximum counts (one committed before the bound)
            size = limit if first_sync else min(size, limit)
        return int(size * CHUNK_BUDGET_FACTOR) + CHUNK_BUDGET_SLACK_BYTES

    async def peer_audit(self, sender: str, path: str, doc: dict[str, Any], err: ReplicadError | None) -> None:
        """Append one answered peer write request to ``peer-audit.jsonl`` (hash-chained,
        fsynced: :class:`~replicad.storage.audit.AuditLog`) and count a refusal in
        ``replicad_peer_refused_total{reason}``. A failing audit write is logged at ERROR
        (the request was already answered); it never raises."""
        if err is not None:
            self.metrics.peer_refused(err.code)
            if not isinstance(err, (RecordConflictError,)):
                log.warning("AUDIT refused peer request %s from %s at %s: %s %s", path, sender, self.site_id,
                            err.code, err)
        record = {"who": sender, "role": "peer", "remote": None, "method": "POST", "path": path, "body": doc,
                  "outcome": "refused" if err is not None else "ok",
                  "status": err.http_status if err is not None else 200,
                  "error": err.code if err is not None else None}
        try:
            await asyncio.to_thread(self.audit.append, record)
        except ReplicadError as audit_err:
            log.error("peer audit record lost at %s (%s from %s): %s", self.site_id, path, sender, audit_err)

    def committed(self, command: dict) -> None:
        """A ``commit_snapshot`` was applied (called on the event loop): if this site is a
        holder, its ``received`` record of that snapshot becomes ``committed`` (in a worker
        thread, in the background)."""
        volume = command.get("volume")
        for key in [k for k in self._inflight if k[0] == volume]:  # a commit: the cluster moved on
            del self._inflight[key]
            self._budgets.pop(key, None)
        if self.site_id not in (command.get("holders") or ()):
            return
        task = asyncio.ensure_future(asyncio.to_thread(
            self.mark_committed, command.get("volume"), command.get("epoch"), command.get("seq"), command.get("root"),
            command.get("created_at_ns")))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def mark_committed(self, volume: Any, epoch: Any, seq: Any, root: Any, created_at_ns: Any = None) -> bool:
        """Turn this site's ``received`` record ``(volume, epoch, seq)`` of ``root`` into
        ``committed``; True if it did. A snapshot this site evicted uncommitted
        (:meth:`_evict_uncommitted`) and Raft commits after all with this site as a holder is
        recorded again as ``committed`` while its manifest is still here (within the gc
        grace), ``created_at_ns`` (the commit's) as its time. Anything else (no such record
        nor manifest, another root, another state) is left alone. Never raises (a failure is
        logged at ERROR). Synchronous."""
        if not isinstance(volume, str) or not isinstance(root, bytes):
            return False
        try:
            rec = self.catalog.find_root(volume, root)
            if rec is None and isinstance(epoch, int) and isinstance(seq, int) and isinstance(created_at_ns, int) \
                    and self.store.has(root):
                self.catalog.put(SnapshotRecord(volume, epoch, seq, root, "committed", created_at_ns))
                log.warning("AUDIT recorded %s#%d (epoch %d) at %s again: Raft committed it with this site as a "
                            "holder after it was evicted uncommitted here; its manifest is still here", volume, seq,
                            epoch, self.site_id)
                return True
            if rec is None or rec.state != "received" or (rec.epoch, rec.seq) != (epoch, seq):
                return False
            self.catalog.set_state(volume, rec.epoch, rec.seq, "committed")
            return True
        except (ReplicadError, sqlite3.Error) as err:
            log.error("could not mark %s#%s committed at %s: %s", volume, seq, self.site_id, err)
            return False

