"""Pull: make committed snapshots complete here by fetching what is missing from the sites
that hold them (catch-up after downtime, a promotion's restore, healing bit rot), and apply a
snapshot to an image while re-fetching any chunk found corrupt on the way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any

from replicad.core.errors import (FetchRefusedError, IntegrityError, NotFoundError, PeerBusyError, PeerStalledError,
                                  PeerUnavailableError, RecordConflictError, ReplicadError, StoreFullError)
from replicad.core.manifest import Manifest, changed_digests, iter_block_digests
from replicad.peer.transport import FETCH_BUSY_RETRIES, FETCH_BUSY_RETRY_S, PeerClient, snapshot_complete
from replicad.site.cluster import Cluster
from replicad.site.peer_restore import STREAMS_PER_HOLDER, PeerRestoreReport, restore_from_holders
from replicad.site.runner import complete_base, load_manifest
from replicad.storage.catalog import Catalog, SnapshotRecord
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.assemble import Unit, plan_units
from replicad.storage.image import apply_snapshot

log = logging.getLogger("replicad.site.pull")

FETCH_SLICE = 256  # digests per request when a fetch into the store is split across holders (16 MiB of 64 KiB blocks)
STALL_MEMORY_S = 600.0  # a holder that stalled a fetch is asked last for this long (Pull.ranked)
HEDGE_FACTOR = 3.0  # a slice in flight this many times longer than a stream's own slices took is fetched again
HEDGE_POLL_S = 0.2  # how often an idle stream of the parallel pass looks for such a slice
# A fetch asked of one holder after the other (few chunks: a manifest, pages) asks the next
# holder too once the first has taken SMALL_HEDGE_S + SMALL_HEDGE_S_PER_CHUNK per chunk asked:
# an honest holder under load (2 cores, load 10-15 and busy loops) sent its first frame within
# 1.0 s and at >= 1.7 MB/s (tests/bench/fetch_progress), so 2x that first frame plus 64 KiB per
# 1.5 MB/s (a whole FETCH_SLICE: 13 s) leaves an honest holder alone, and a holder just above
# the progress rule (16 MiB of FETCH_SLICE chunks: ~160 s) no longer holds the fetch that long.
SMALL_HEDGE_S = 2.0
SMALL_HEDGE_S_PER_CHUNK = 2**16 / 1.5e6


class Pull:
    """Fetching chunks of committed snapshots from their holders into this site's store.

    Args:
        cluster: Raft view and members (holders, their peer URLs).
        store, catalog: this site's chunk store and snapshot catalog.
        peers: the peer API client; its stalls (the progress rule of
            :class:`~replicad.peer.transport.FetchProgress`) are reported to :meth:`note_stall`.
        metrics: counts stalls (``replicad_fetch_stalled_total``); None in bare tests.
    """

    def __init__(self, cluster: Cluster, store: ChunkStore, catalog: Catalog, peers: PeerClient,
                 metrics: Any = None) -> None:
        self.site_id = cluster.site_id
        self.cluster = cluster
        self.store = store
        self.catalog = catalog
        self.peers = peers
        self.metrics = metrics
        self.stalls: dict[str, tuple[float, str]] = {}  # holder -> (monotonic time, message) of its last stall
        peers.on_stall = self.note_stall
        # root -> plan_units of a snapshot whose pages ensure_pages just read, for the restore that
        # follows (one pass over the manifest's pages, not two); taken by restore_streamed
        self._plans: dict[bytes, tuple[list[Unit], int]] = {}

    def note_stall(self, url: str, err: ReplicadError) -> None:
        """A fetch from the holder at ``url`` broke the progress rule (PeerStalledError) or was
        answered with bad frames (RemoteProtocolError: a chunk not asked for, one sent twice, a
        malformed stream; IntegrityError: a chunk not matching its digest): logged at WARNING
        under the holder's name, counted (``replicad_fetch_stalled_total{holder}``: bad frames
        count as a stall, the holder withheld what was asked), and remembered for
        :meth:`ranked` and :meth:`recent_stalls`. Never raises."""
        holder = next((s.site_id for s in self.cluster.cfg().sites if s.peer_url == url), url)
        self.stalls[holder] = (time.monotonic(), err.message)
        if self.metrics is not None:
            self.metrics.fetch_stalled(holder)
        what = ("stalled a fetch" if isinstance(err, PeerStalledError)
                else f"answered a fetch with bad frames ({err.code})")
        log.warning("holder %s %s (%s): it is asked last for the next %.0fs; its share goes to the "
                    "other holders", holder, what, err.message, STALL_MEMORY_S)

    def ranked(self, holders: list[str]) -> list[str]:
        """``holders`` in the order to ask them: those that stalled a fetch in the last
        STALL_MEMORY_S seconds last (the oldest stall first), the others in the order given."""
        now = time.monotonic()
        recent = {h: t for h, (t, _) in self.stalls.items() if now - t < STALL_MEMORY_S}
        return [h for h in holders if h not in recent] + sorted((h for h in holders if h in recent),
                                                                 key=recent.__getitem__)

    def recent_stalls(self, since: float | None = None) -> dict[str, str]:
        """Holder -> message of its last stall, for stalls at or after monotonic time ``since``
        (default: the last STALL_MEMORY_S seconds)."""
        since = time.monotonic() - STALL_MEMORY_S if since is None else since
        return {h: m for h, (t, m) in self.stalls.items() if t >= since}

    async def ensure_snapshot(self, volume: str, seq: int, vs: dict | None = None) -> Manifest:
        """Make sure committed snapshot ``seq`` is complete in the local store, fetching what is
        missing from its holders (:meth:`fetch_missing`: a holder that stalls loses its share to
        the others); chunks found corrupt locally (the manifest, a page) are dropped
        and re-fetched, verified by digest, whatever their number — each digest once: one found
        corrupt again after its re-fetch stops the pull (the store here is failing).

        Over a snapshot this site holds completely (:func:`~replicad.site.runner.complete_base`:
        a catalog record whose manifest is here, no repairs pending; the collector keeps every
        recorded snapshot's chunks) only the blocks that differ from it are looked up and
        checked (:func:`~replicad.core.manifest.changed_digests`), not every block of the volume
        (16 GiB: 262,144 lookups); with no such base, every block.

        Returns its manifest. Raises NotFoundError if unknown or not supplied by any holder that
        answered, PeerUnavailableError if no holder could be reached, IntegrityError if a chunk
        stays corrupt.
        """
        vs = vs or self.cluster.volume_state(volume)
        if vs is None or seq not in vs["snapshots"]:
            raise NotFoundError(f"no committed snapshot {volume}#{seq}", volume=volume, seq=seq)
        snap = vs["snapshots"][seq]
        root = snap["root"]
        holders = [h for h in snap["holders"] if h != self.site_id]
        healed: set[bytes] = set()
        not_found = 0
        while True:
            try:
                await self.fetch_missing(volume, vs["epoch"], [root], holders)
                manifest = load_manifest(self.store, root)
                await self.fetch_missing(volume, vs["epoch"], list(manifest.pages), holders)
                base = await asyncio.to_thread(complete_base, self.store, self.catalog, volume)
                need = await asyncio.to_thread(self._need, manifest, base)
                served = await self.fetch_missing(volume, vs["epoch"], need, holders)
                if need:
                    log.info("pulled %s#%d from %s: %d block chunks were missing here", volume, seq,
                             ", ".join(served), len(need))
                await asyncio.to_thread(snapshot_complete, self.store, volume, snap["epoch"], seq, root, base)
                if self.catalog.find_root(volume, root) is None:
                    await asyncio.to_thread(self._record_committed, SnapshotRecord(
                        volume, snap["epoch"], seq, root, "committed", snap["created_at_ns"]))
                else:
                    rec = self.catalog.find_root(volume, root)
                    if rec.state in ("local", "received"):
                        await asyncio.to_thread(self.catalog.set_state, volume, rec.epoch, rec.seq, "committed")
                return manifest
            except IntegrityError as err:
                bad = _digest_of(err)
                if bad is None or bad in healed:
                    raise
                healed.add(bad)
                log.error("corrupt chunk at %s (%s): dropping and re-fetching from a peer", self.site_id,
                          err.evidence)
                await asyncio.to_thread(self.store.delete_corrupt, bad)
            except NotFoundError:
                not_found += 1  # a holder still catching up may answer on a second look
                if not_found >= 3:
                    raise

    def _need(self, manifest: Manifest, base: Manifest | None) -> list[bytes]:
        """The distinct block digests of ``manifest`` this store lacks. With ``base`` (a snapshot
        held completely here, :func:`~replicad.site.runner.complete_base`) only the blocks that
        differ from it are looked up (:func:`~replicad.core.manifest.changed_digests`: the pages
        with differing digests are decoded); without, every block of the volume. Synchronous."""
        if base is not None and base.volume == manifest.volume:
            return self.store.missing(changed_digests(base, manifest, self.store.get))
        return self.store.missing(d for d in iter_block_digests(manifest, self.store.get) if any(d))

    async def ensure_pages(self, volume: str, seq: int, vs: dict | None = None) -> tuple[Manifest, int]:
        """Make sure the manifest and the pages of committed snapshot ``seq`` are here (fetched from
        its holders, verified), not its block chunks. Returns ``(manifest, missing)``: 0 if this
        store holds every block chunk of it, else how many it lacks among the units looked at
        (:func:`_lacking`: the walk stops at the first group of units with a chunk missing, so a
        site whose store was lost is not walked over the whole volume; the restore that follows
        looks each unit up anyway). A snapshot that is complete here is recorded as
        :meth:`ensure_snapshot` does. Raises like :meth:`ensure_snapshot`."""
        vs = vs or self.cluster.volume_state(volume)
        if vs is None or seq not in vs["snapshots"]:
            raise NotFoundError(f"no committed snapshot {volume}#{seq}", volume=volume, seq=seq)
        snap = vs["snapshots"][seq]
        holders = [h for h in snap["holders"] if h != self.site_id]
        try:
            await self.fetch_missing(volume, vs["epoch"], [snap["root"]], holders)
            manifest = load_manifest(self.store, snap["root"])
            await self.fetch_missing(volume, vs["epoch"], list(manifest.pages), holders)
            plan = await asyncio.to_thread(plan_units, manifest, self.store.get)  # the one pass over the pages
            missing = await asyncio.to_thread(_lacking, self.store, plan[0])
        except IntegrityError:  # a corrupt manifest or page here: the healing path
            return await self.ensure_snapshot(volume, seq, vs), 0
        if not missing:
            return await self.ensure_snapshot(volume, seq, vs), 0  # complete: recorded here as ever
        self._plans.clear()  # at most one kept: the restore that asked for it follows at once
        self._plans[manifest.root] = plan
        return manifest, missing

    async def restore_streamed(self, volume: str, target: Path, manifest: Manifest, *,
                               progress=None) -> PeerRestoreReport:
        """Write ``manifest`` into the new, empty file ``target`` from this store where it holds a
        chunk and from every holder of the snapshot at once for the rest
        (:func:`~replicad.site.peer_restore.restore_from_holders`: several streams per holder,
        decode and writes overlapped, bounded memory; nothing is stored here); fsynced and O5
        checked as it is written (every block read back from the disk after its write, one fsync, the root
        rebuilt). Raises like ``restore_from_holders`` (RestoreVerifyError included)."""
        vs = self.cluster.volume_state(volume) or {}
        snap = vs.get("snapshots", {}).get(manifest.seq, {})
        peers = self.cluster.data_peers()
        holders = [h for h in snap.get("holders", peers) if h != self.site_id and h in peers] or peers
        urls = {h: self.cluster.peer_url(h) for h in self.ranked(holders)}  # a holder that stalled lately: last
        rep = await restore_from_holders(self.peers, urls, volume, vs.get("epoch", 0), manifest, self.store, target,
                                         progress=progress, plan=self._plans.pop(manifest.root, None))
        log.info("restored %s#%d into %s from %d holders at once: %s; %d chunks from this store", volume,
                 manifest.seq, target, len(urls), ", ".join(f"{h} {r.chunks} chunks" + (f" (failed: {r.failed})"
                                                              if r.failed else "") for h, r in rep.holders.items()),
                 rep.local_chunks)
        return rep

    def _record_committed(self, rec: SnapshotRecord) -> None:
        """Record committed snapshot ``rec`` here. A ``received`` record at the same ``(volume,
        epoch, seq)`` with another root was never committed: the primary of that epoch announced
        one root and committed another (a forgery, or a snapshot whose commit was refused), so it
        gives way to the committed one, logged at WARNING. A committed record with another root is
        never replaced (RecordConflictError propagates). Synchronous."""
        try:
            self.catalog.put(rec)
        except RecordConflictError:
            held = [r for r in self.catalog.list(rec.volume) if (r.epoch, r.seq) == (rec.epoch, rec.seq)]
            if not held or held[0].state != "received":
                raise
            log.warning("AUDIT %s#%d (epoch %d) at %s: the received root %s was never committed; the committed root "
                        "%s replaces it", rec.volume, rec.seq, rec.epoch, self.site_id, held[0].root.hex(),
                        rec.root.hex())
            self.catalog.delete(rec.volume, rec.epoch, rec.seq)
            self.catalog.put(rec)

    async def apply_repairing(self, volume: str, target: Path, manifest: Manifest, *, base: Manifest | None = None,
                              progress=None, rewrite_all: bool = False):
        """:func:`~replicad.storage.image.apply_snapshot` (``base``, ``progress``, ``rewrite_all``
        as there), healing bit rot on the way, whatever the number of corrupt chunks: when the
        apply meets a corrupt chunk, every chunk of ``manifest`` is re-read (verified), each one
        corrupt or missing is dropped and fetched from the snapshot's holders (verified by digest
        on receipt), and the apply resumes (rewriting a page is idempotent). Each round must heal
        chunks not healed before: a chunk found corrupt again after its re-fetch, or one no
        holder supplies, ends it with the IntegrityError (nothing loops).

        Returns the :class:`~replicad.storage.image.ApplyReport`. Raises IntegrityError (no good
        copy to be had), and what ``apply_snapshot`` raises.
        """
        vs = self.cluster.volume_state(volume)
        snap = (vs or {}).get("snapshots", {}).get(manifest.seq, {})
        peers = self.cluster.data_peers()
        holders = [h for h in snap.get("holders", peers) if h != self.site_id] or peers
        healed: set[bytes] = set()
        while True:
            try:
                return await asyncio.to_thread(apply_snapshot, target, manifest, self.store, base=base,
                                               progress=progress, rewrite_all=rewrite_all)
            except IntegrityError as err:
                first = _digest_of(err)
                if first is None or first in healed:
                    raise
                bad = await asyncio.to_thread(self._sweep, manifest, first)
                log.error("%d corrupt or missing chunks of %s#%d in the store of %s: re-fetching them from %s",
                          len(bad), volume, manifest.seq, self.site_id, ", ".join(holders))
                try:
                    await self.fetch_missing(volume, vs["epoch"] if vs else 0, bad, holders)
                except (NotFoundError, PeerUnavailableError):  # no good copy to be had: the corruption stands
                    raise err from None
                healed.update(bad)
                log.warning("healed %d chunks of %s#%d at %s from its holders", len(bad), volume, manifest.seq,
                            self.site_id)

    def _sweep(self, manifest: Manifest, first: bytes) -> list[bytes]:
        """Re-read (verified) every chunk of ``manifest`` once; drop the corrupt ones. Returns
        the digests to fetch: ``first`` (found corrupt by the caller), every corrupt one and
        every missing one. Synchronous (a worker thread)."""
        bad = {first}
        self.store.delete_corrupt(first)

        def check(d: bytes) -> None:
            try:
                self.store.get(d)
            except IntegrityError:
                self.store.delete_corrupt(d)
                bad.add(d)
            except NotFoundError:
                bad.add(d)

        for d in {manifest.root, *manifest.pages} - bad:
            check(d)
        if bad - {first}:  # a page (or the manifest) first: its blocks are read once it is back
            return sorted(bad)
        for d in set(iter_block_digests(manifest, self.store.get)) - bad:
            if any(d):
                check(d)
        return sorted(bad)

    async def fetch_missing(self, volume: str, epoch: int, digests: list[bytes], holders: list[str]) -> list[str]:
        """Fetch the chunks of ``digests`` this store lacks from ``holders`` (verified on receipt,
        durable per batch): more than FETCH_SLICE from several holders are split across all of
        them at once (:meth:`_fetch_parallel`), then what is still missing is asked of each
        holder not dropped, in turn, in :meth:`ranked` order, the next one also asked when the
        one before takes too long (:meth:`_fetch_staggered`). Every request obeys the
        progress rule (:class:`~replicad.peer.transport.FetchProgress`): a holder that stalls
        fails like an unreachable one (PeerStalledError, logged and counted by
        :meth:`note_stall`) and the next holder is asked. Returns the holders that served it
        (none when nothing was missing). Raises NotFoundError if some are still missing after every holder that
        answered lacked them, PeerUnavailableError if no holder could be reached at all (a
        takeover then waits for a holder instead of skipping the snapshot as lost; evidence
        ``reason`` ``fetch_refused`` when every holder refused this site the volume), StoreFullError
        naming this site's chunk store when its disk is full (:meth:`_own_store_full`: at once,
        no other holder is asked; not a holder's fault)."""
        need = await asyncio.to_thread(self.store.missing, digests)
        holders = self.ranked(holders)
        answered: list[str] = []
        failed: set[str] = set()
        refused: dict[str, FetchRefusedError] = {}  # holders that refused this site the volume (check_fetch)
        # a holder that stalled lately is not in the parallel pass (it would hold up a slice for
        # a window again) unless nobody else is left; it is still asked last for what remains
        fresh = [h for h in holders if h not in self.recent_stalls()] or holders
        if len(fresh) > 1 and len(need) > FETCH_SLICE:
            answered, failed = await self._fetch_parallel(volume, epoch, need, fresh, refused)
            need = await asyncio.to_thread(self.store.missing, need)
        if need:
            need = await self._fetch_staggered(volume, epoch, need, [h for h in holders if h not in failed], answered,
                                               refused)
        if not need:
            return answered
        if need and holders and not answered and set(refused) >= set(holders):
            # every holder refused this site the volume (check_fetch: not its primary nor a holder in Raft): said
            # so, not "no holder reachable" (the type stays: callers wait and retry as for unreachable holders)
            first = refused[holders[0]]
            raise PeerUnavailableError(f"{len(need)} chunks of {volume} missing here and every holder refused this "
                                       f"site's read ({', '.join(holders)}): {first.message}", volume=volume,
                                       missing=len(need), holders=holders, reason="fetch_refused",
                                       refusal=first.evidence.get("reason"))
        if need and holders and not answered:
            # nobody could be asked: the chunks may well exist (holders down, link cut) — not "lost"
            raise PeerUnavailableError(f"{len(need)} chunks of {volume} missing here and no holder reachable "
                                       f"({', '.join(holders)})", volume=volume, missing=len(need), holders=holders)
        if need:
            raise NotFoundError(f"{len(need)} chunks of {volume} not available from any holder",
                                volume=volume, missing=len(need), holders=holders, answered=answered)
        return answered

    async def _fetch_staggered(self, volume: str, epoch: int, need: list[bytes], holders: list[str],
                               answered: list[str],
                               refused: dict[str, FetchRefusedError] | None = None) -> list[bytes]:
        """Ask ``holders`` for ``need`` one after the other, in that order: the next one when the
        one asked ended (served, lacked some, failed), or, while it still runs, once it has taken
        SMALL_HEDGE_S + SMALL_HEDGE_S_PER_CHUNK per chunk asked (a hedged request: "The Tail at
        Scale", Dean and Barroso 2013); each asked for what is still missing then. Whichever
        leaves nothing missing ends the others (cancelled; their batches in flight are stored
        whole). A holder that answers PeerBusyError is asked again after FETCH_BUSY_RETRY_S, up to
        FETCH_BUSY_RETRIES times (as in :meth:`_fetch_parallel`: busy is not lacking). Holders
        that answered are appended to ``answered``; failures logged at INFO. Returns what is
        still missing."""
        queue = list(holders)
        running: dict[asyncio.Future, tuple[str, float]] = {}  # fetch -> (holder, its deadline to hedge)
        busy: dict[str, int] = {}        # holder -> PeerBusyError answers so far
        ask_after: dict[str, float] = {}  # a busy holder -> monotonic time it may be asked again

        def ask() -> None:
            holder = queue.pop(0)
            ask_after.pop(holder, None)
            fut = asyncio.ensure_future(self.peers.fetch(self.cluster.peer_url(holder), volume, epoch, need, self.store))
            running[fut] = (holder, time.monotonic() + SMALL_HEDGE_S + SMALL_HEDGE_S_PER_CHUNK * len(need))

        try:
            while need and (queue or running):
                if not running:
                    wait_s = ask_after.get(queue[0], 0.0) - time.monotonic()
                    if wait_s > 0:
                        await asyncio.sleep(wait_s)
                    ask()
                hedge_at = min(t for _, t in running.values())
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED,
                                             timeout=max(0.0, hedge_at - time.monotonic())
                                             if queue and hedge_at != math.inf else None)
                for fut in done:
                    holder, _ = running.pop(fut)
                    err = fut.exception()
                    if err is None:
                        if holder not in answered:
                            answered.append(holder)
                    elif self._own_store_full(err):
                        raise self._store_full(err, volume, len(need), holder) from err
                    elif isinstance(err, PeerBusyError) and busy.get(holder, 0) < FETCH_BUSY_RETRIES:
                        busy[holder] = busy.get(holder, 0) + 1
                        ask_after[holder] = time.monotonic() + FETCH_BUSY_RETRY_S
                        queue.append(holder)  # asked again later, after the others
                        log.info("fetch from %s: busy (%d); asking it again in %.1fs", holder, busy[holder],
                                 FETCH_BUSY_RETRY_S)
                    elif isinstance(err, ReplicadError):
                        if isinstance(err, FetchRefusedError) and refused is not None:
                            refused[holder] = err
                        log.info("fetch from %s failed: %s", holder, err)
                    else:
                        raise err
                need = await asyncio.to_thread(self.store.missing, need)
                if need and queue and (not done and time.monotonic() >= hedge_at):
                    now = time.monotonic()
                    late = [fut for fut, (_, t) in running.items() if t <= now]
                    log.info("fetch of %d chunks of %s still running at %s: asking %s too", len(need), volume,
                             ", ".join(running[fut][0] for fut in late), queue[0])
                    for fut in late:  # hedged once: the next holder waits on the deadline of the one asked now
                        running[fut] = (running[fut][0], math.inf)
                    ask()
        finally:
            for fut in running:
                fut.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        return need

    async def _fetch_parallel(self, volume: str, epoch: int, need: list[bytes], holders: list[str],
                              refused: dict[str, FetchRefusedError] | None = None) -> tuple[list[str], set[str]]:
        """Fetch ``need`` into the store from every holder at once: slices of FETCH_SLICE digests
        in one queue, STREAMS_PER_HOLDER streams per holder each taking the next slice (a faster
        holder takes more). A holder that fails is dropped and its slice goes back to the queue
        for the others. Once the queue is empty, a stream whose holder has served slices takes
        over a slice in flight at another holder for HEDGE_FACTOR times longer than its own
        slices took (the median), fetching it again; whichever copy ends first cancels the other
        (the end game of BitTorrent's piece selection, Cohen 2003): a holder that keeps just above
        the progress rule cannot hold the pass up for the time its slice would take at that rate.
        Returns ``(answered, failed)``: holders that served every slice they took, holders
        dropped. What a holder lacked is left to the caller. Never raises a peer's error (logged
        at INFO)."""
        queue = [(k, need[i:i + FETCH_SLICE]) for k, i in enumerate(range(0, len(need), FETCH_SLICE))]
        queue.reverse()  # popped from the end: in order
        answered: list[str] = []
        failed: set[str] = set()
        inflight: dict[int, dict[str, Any]] = {}  # slice -> {part, started, hedged, futs: {future: holder}}
        full: list[StoreFullError] = []  # this site's own disk is full: every stream stops

        async def straggler(holder: str, took: list[float]) -> tuple[int, list[bytes]] | None:
            while not queue and inflight and took:
                limit = HEDGE_FACTOR * sorted(took)[len(took) // 2]
                now = time.monotonic()
                late = [k for k, e in inflight.items() if not e["hedged"] and holder not in e["futs"].values()
                        and now - e["started"] > limit]
                if late:
                    k = min(late, key=lambda k: inflight[k]["started"])
                    inflight[k]["hedged"] = True
                    log.info("slice %d of %s still in flight at %s after %.1fs (%s's slices took %.1fs): asking %s "
                             "too", k, volume, ", ".join(inflight[k]["futs"].values()), now - inflight[k]["started"],
                             holder, limit / HEDGE_FACTOR, holder)
                    return k, inflight[k]["part"]
                await asyncio.sleep(HEDGE_POLL_S)
            return queue.pop() if queue else None

        async def stream(holder: str) -> None:
            took: list[float] = []
            busy = 0  # PeerBusyError answers in a row: the holder serves its limit of fetches
            while holder not in failed and not full:
                job = queue.pop() if queue else await straggler(holder, took)
                if job is None:
                    return
                k, part = job
                entry = inflight.setdefault(k, {"part": part, "started": time.monotonic(), "hedged": False,
                                                "futs": {}})
                fut = asyncio.ensure_future(
                    self.peers.fetch(self.cluster.peer_url(holder), volume, epoch, part, self.store))
                entry["futs"][fut] = holder
                t0 = time.monotonic()
                try:
                    await asyncio.wait({fut})
                finally:
                    entry["futs"].pop(fut, None)
                    if not fut.done():  # this pass itself was cancelled
                        fut.cancel()
                if fut.cancelled():  # the other copy of this slice ended first
                    continue
                err = fut.exception()
                if err is not None and not isinstance(err, ReplicadError):
                    raise err
                if err is not None and self._own_store_full(err):
                    if not full:
                        full.append(self._store_full(err, volume, len(need), holder))
                    queue.clear()
                    return
                if err is not None:
                    if not entry["futs"]:  # nobody else fetching it: back to the queue
                        inflight.pop(k, None)
                        queue.append((k, part))
                    if isinstance(err, PeerBusyError) and busy < FETCH_BUSY_RETRIES:  # later, same holder
                        busy += 1
                        await asyncio.sleep(FETCH_BUSY_RETRY_S)
                        continue
                    if isinstance(err, FetchRefusedError) and refused is not None:
                        refused[holder] = err
                    if holder not in failed:
                        failed.add(holder)
                        log.info("fetch from %s failed: %s; its share goes to the other holders", holder, err)
                    return
                busy = 0
                took.append(time.monotonic() - t0)
                inflight.pop(k, None)
                for other in list(entry["futs"]):  # the slower copy is not needed any more
                    other.cancel()
                if holder not in answered:
                    answered.append(holder)

        await asyncio.gather(*[stream(h) for _ in range(STREAMS_PER_HOLDER) for h in holders])
        if full:
            raise full[0]
        return [h for h in answered if h not in failed], failed

    @staticmethod
    def _own_store_full(err: BaseException) -> bool:
        """True for this site's own chunk store refusing chunks for lack of space (a
        StoreFullError raised by ``store.put_encoded``), not a holder's ``store_full`` answer
        (those carry the holder's ``url``, :func:`~replicad.peer.transport._error_from`)."""
        return isinstance(err, StoreFullError) and "url" not in err.evidence

    def _store_full(self, err: StoreFullError, volume: str, missing: int, holder: str) -> StoreFullError:
        """The StoreFullError an operator reads for this site's full disk (the caller logs it:
        a volume's runner at ERROR, :meth:`~replicad.site.volumes.Volumes.run_volume`): it names
        the chunk store's directory (under ``data_dir``) and the holder whose chunks could not be
        stored. Evidence: ``path``, ``volume``, ``missing`` (chunks still wanted),
        ``holder``, and the store's own facts."""
        path = str(self.store.root)
        full = StoreFullError(f"this site's disk is full: chunks of {volume} fetched from {holder} cannot be stored in "
                              f"{path} (the data_dir's chunk store): no space left on device; {missing} chunks still "
                              f"missing here: free space there or grow that file system",
                              **{**err.evidence, "path": path, "volume": volume, "missing": missing, "holder": holder})
        return full


def _lacking(store: ChunkStore, units: list[Unit]) -> int:
    """How many distinct block chunks of ``units`` (in block order) ``store`` lacks, looked up in
    groups of 1, 2, 4 ... units and stopping after the first group with any missing: 0 means
    ``store`` holds every one (all looked up, in O(log units) index queries), n > 0 the count in
    the units looked at so far. Why stop: a restore from peers needs only to know that chunks
    are missing (it looks every unit up as it writes); a site whose store was lost would
    otherwise look up every digest of the volume first (2 TiB: millions), holding them all in
    one set. Synchronous (a worker thread); raises what ``store.missing`` raises."""
    i, group = 0, 1
    while i < len(units):
        wanted: set[bytes] = set()
        for u in units[i:i + group]:
            wanted |= u.distinct()
        lacking = len(store.missing(list(wanted)))
        if lacking:
            return lacking
        i, group = i + group, group * 2
    return 0


def _digest_of(err: IntegrityError) -> bytes | None:
    """The digest an IntegrityError names (``evidence["digest"]``, hex or bytes), else None."""
    bad = err.evidence.get("digest")
    if isinstance(bad, bytes):
        return bad
    if isinstance(bad, str):
        try:
            return bytes.fromhex(bad)
        except ValueError:
            return None
    return None
