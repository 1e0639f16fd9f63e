"""The replication cycle at a primary: capture + scan, judge, ship to every data peer, commit
once ``min_copies`` sites stored it (O2). Its other half, at a receiver, is
:mod:`replicad.site.receiver`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

from replicad.core import anomaly, identity
from replicad.core.errors import (IntegrityError, NotFoundError, NotPrimaryError, OutOfRangeError, PeerStalledError,
                                  ReplicadError, StaleEpochError)
from replicad.core.manifest import Manifest, changed_digests
from replicad.core.state import (INT_MAX, SEQ_STEP_MAX, TAINT_STAT, default_max_size_bytes, detection_policy,
                                 max_size_at_once, max_size_bytes, newest_committed, stats_problem)
from replicad.peer.transport import CHUNK_SLOT_WAIT_MAX_S, CHUNK_SLOT_WAIT_MIN_S, PeerClient, SharedFrames
from replicad.site.cluster import Cluster
from replicad.site.pull import Pull
from replicad.site.runner import VolumeRunner, load_manifest
from replicad.sources.base import SnapshotSource, SourceSnapshot
from replicad.sources.kinds import make_source
from replicad.storage.catalog import Catalog, SnapshotRecord
from replicad.storage.chunkstore import ChunkStore
from replicad.telemetry.metrics import SiteMetrics

log = logging.getLogger("replicad.site.replication")

STRAGGLER_GRACE_S = 2.0    # after min_copies stored, how long to wait for the other replicas
SHIP_STALL_MEMORY_S = 600.0  # a replica that stalled a ship is not waited for (no grace) this long


class Replication:
    """Produce and ship snapshots (primary).

    Args:
        cluster: Raft view, proposals and members.
        store, catalog: this site's chunk store and snapshot catalog.
        peers: the peer API client.
        pull: re-fetches a chunk found corrupt while shipping.
        metrics: the site's metrics.
        data_dir: the site's data dir (fingerprint caches).
        scan_slots: bounds the scans running at once on the site.
        background: set of the site's background tasks (ships to stragglers), cancelled at stop.
    """

    def __init__(self, cluster: Cluster, store: ChunkStore, catalog: Catalog, peers: PeerClient, pull: Pull,
                 metrics: SiteMetrics, data_dir: Path, scan_slots: asyncio.Semaphore,
                 background: set[asyncio.Task]) -> None:
        self.site_id = cluster.site_id
        self.cluster = cluster
        self.store = store
        self.catalog = catalog
        self.peers = peers
        self.pull = pull
        self.metrics = metrics
        self.data_dir = data_dir
        self._scan_slots = scan_slots
        self._background = background
        # (volume, peer) -> (task, seq) of the ship in flight: one at a time per replica and volume
        self._shipping: dict[tuple[str, str], tuple[asyncio.Task, int]] = {}
        self.ship_stalls: dict[str, tuple[float, str]] = {}  # peer -> (monotonic time, message) of its last stall
        # (volume, seq) of committed clean snapshots whose stats the judge cannot read: logged once each
        self.unreadable_stats: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------ primary
    def source_of(self, runner: VolumeRunner) -> SnapshotSource:
        """The volume's snapshot source (``[volumes.source] kind``), made on first use and again
        when a reload changes its kind or location; it always reads the runner's current config."""
        src = runner.source
        if src is None or not src.matches(runner.cfg):
            src = runner.source = make_source(runner.cfg, self.data_dir)
        src.cfg = runner.cfg
        return src

    async def cycle(self, runner: VolumeRunner) -> dict:
        """One replication cycle (caller holds ``runner.lock``): :meth:`_cycle`, then the source
        keeps the new snapshot's view as the next parent if it committed, or drops it (a
        reflink clone) otherwise — also when the cycle failed or was cancelled."""
        made: list[SourceSnapshot] = []
        try:
            report = await self._cycle(runner, made)
        except BaseException:
            if made:
                await runner.source.abandoned(made[0])
            raise
        if made:
            if report.get("committed"):
                await runner.source.committed(made[0])
            else:
                await runner.source.abandoned(made[0])
        return report

    async def _cycle(self, runner: VolumeRunner, made: list[SourceSnapshot]) -> dict:
        """One replication cycle (caller holds ``runner.lock``). Returns a report dict; the
        source's snapshot goes into ``made``.

        Raises NotPrimaryError / StaleEpochError if fenced meanwhile, NoQuorumError if the
        commit could not reach a majority, OutOfRangeError if the next seq would pass the
        state machine's bound (:func:`next_seq`). Only peers that answered "stored" with a
        valid signed acknowledgement count as holders; their acknowledgements go into
        ``commit_snapshot`` (``acks``).
        """
        cfg = runner.cfg
        epoch = runner.acting_epoch
        vs = self.cluster.volume_state(cfg.name)
        if epoch is None or vs is None or vs["primary"] != self.site_id or vs["epoch"] != epoch:
            raise NotPrimaryError(f"{self.site_id} is not the primary of {cfg.name}", volume=cfg.name)
        runner.last_cycle_at = time.monotonic()
        t0 = time.monotonic()
        # The parent is the snapshot the image descends from. On this primary's own line (the
        # newest committed snapshot is of its epoch) that is the newest committed one, as Raft
        # says: a commit whose reply was lost may have applied, and an older parent may have
        # been pruned since (found by the seeded simulation, GAP_STALE_PARENT). Right after a
        # promotion it is the snapshot restored into the volume — never a newer suspect one
        # the restore skipped (found by a tester: the new line inherited the attack's taint).
        nc = newest_committed(vs)
        if nc is None:
            runner.parent = None
        elif vs["snapshots"][nc]["epoch"] == epoch or runner.parent is None \
                or runner.parent.seq not in vs["snapshots"]:
            if runner.parent is None or runner.parent.root != vs["snapshots"][nc]["root"]:
                runner.parent = load_manifest(self.store, vs["snapshots"][nc]["root"])
        local_max = max((r.seq for r in self.catalog.list(cfg.name, "local") if r.epoch == epoch), default=0)
        seq = next_seq(cfg.name, vs["last_seq"], local_max)
        source = self.source_of(runner)
        async with self._scan_slots:
            snap = await source.snapshot(volume=cfg.name, seq=seq, epoch=epoch, parent=runner.parent,
                                         store=self.store, now_ns=time.time_ns())
        made.append(snap)
        result = snap.result
        m = result.manifest
        limit = max_size_bytes(vs)
        if m.size_bytes > limit:  # every receiver refuses it, and so would the state: ask for a new bound
            # before the catalog record: each refused cycle used to leave one more "local" record
            # (housekeeping never forgets those) and move the next seq on
            await self._request_max_size(cfg.name, m.size_bytes, limit)
            raise OutOfRangeError(f"{cfg.name}: the image is {m.size_bytes} bytes, more than the volume's agreed "
                                  f"maximum {limit}: nothing is shipped until another site approves the set_max_size "
                                  "request (replicad requests; replicad approve REQ)", volume=cfg.name, seq=seq,
                                  size_bytes=m.size_bytes, max_size_bytes=limit)
        await asyncio.to_thread(self.catalog.put, SnapshotRecord(cfg.name, epoch, seq, m.root, "local",
                                                                 m.created_at_ns))
        history = self._clean_history(cfg.name, vs)
        # issue 14: the cluster's policy, which this site's config may only tighten (a primary's
        # min_score = 1.0 makes nothing clean anywhere: every site judges again, and so does this)
        policy = anomaly.stricter(detection_policy(vs), {"min_score": cfg.anomaly.min_score,
                                                         "factor": cfg.anomaly.factor})
        verdict = anomaly.judge(m.stats, history, min_score=policy["min_score"], factor=policy["factor"])
        parent_snap = vs["snapshots"].get(runner.parent.seq) if runner.parent is not None else None
        if verdict.verdict == "clean" and parent_snap is not None and parent_snap["verdict"] == "suspect":
            # A suspect state stays suspect until an operator clears it: the cycle after an attack
            # changes nothing, scores 0, and must not become "the newest clean snapshot".
            verdict = dataclasses.replace(verdict, verdict="suspect", reason=(
                f"descends from suspect snapshot #{runner.parent.seq}; an operator clears it with "
                f"'replicad verdict {cfg.name} {runner.parent.seq} clean' (approved by other sites)"))
            stats = {**m.stats, TAINT_STAT: runner.parent.seq}  # suspect only by descent: cleared with its parent
        else:
            stats = m.stats
        t_scan = time.monotonic() - t0
        if runner.fence_flag.is_set():  # O3
            raise StaleEpochError("fenced during the cycle", volume=cfg.name, acting_epoch=epoch)
        shipped = await self._ship_all(runner, vs, m, slot_wait_s(cfg.interval_s))
        t_acked = time.monotonic()  # O2 acknowledgements in hand: the commit timer starts here
        acks = self._vouched(cfg.name, epoch, seq, m, shipped)
        holders = [self.site_id] + [p for p, r in shipped.items() if r.get("ok") and (p in acks or not self._signs())]
        report = {"seq": seq, "changed_blocks": len(result.changed_blocks), "verdict": verdict.verdict,
                  "verdict_reason": verdict.reason if verdict.verdict == "suspect" else "",
                  "score": verdict.score, "baseline": verdict.baseline, "holders": holders,
                  "bytes_shipped": sum(r.get("bytes", 0) for r in shipped.values()),
                  "scan_s": t_scan, "ship_s": t_acked - t0 - t_scan, "peers": shipped,
                  "source": {"kind": source.kind, **snap.info}}
        if runner.fence_flag.is_set():  # O3: never commit after learning a newer epoch
            raise StaleEpochError("fenced during the cycle", volume=cfg.name, acting_epoch=epoch)
        if len(holders) < cfg.min_copies:  # O2
            report["committed"] = False
            runner.last_report = report
            self.metrics.cycle_done(cfg.name, report)
            log.warning("snapshot %s#%d stored at %d site(s), min_copies=%d: not committed", cfg.name, seq,
                        len(holders), cfg.min_copies)
            return report
        committed = await self.cluster.propose("commit_snapshot", volume=cfg.name, seq=seq, epoch=epoch, root=m.root,
                           parent_seq=runner.parent.seq if runner.parent else None, created_at_ns=m.created_at_ns,
                           holders=holders, stats=stats, verdict=verdict.verdict, size_bytes=m.size_bytes,
                           **({"acks": {p: acks[p] for p in holders if p in acks}} if self._signs() else {}))
        report["commit_s"] = time.monotonic() - t_acked  # ship acknowledged -> Raft commit applied here
        restamped = committed.get("restamped") if isinstance(committed, dict) else None
        if restamped:
            log.warning("snapshot %s#%d: its stamp was moved by %+.0f s to the majority's clock (this site's "
                        "clock is off: check NTP; replicad_clock_offset_seconds shows by how much)",
                        cfg.name, seq, (restamped["to_ns"] - restamped["from_ns"]) / 1e9)
        await asyncio.to_thread(self.catalog.set_state, cfg.name, epoch, seq, "committed")
        runner.parent = m
        report["committed"] = True
        report["cycle_s"] = time.monotonic() - t0
        runner.last_report = report
        self.metrics.cycle_done(cfg.name, report)
        if verdict.verdict == "suspect":
            log.warning("SUSPECT snapshot %s#%d: score %.3f vs baseline %.3f (%s)", cfg.name, seq, verdict.score,
                        verdict.baseline, verdict.reason)
        # the screen is not the verdict: every data site (this one too) judges the snapshot next
        log.info("committed %s#%d epoch %d: %d changed blocks, whole-volume screen %s (each site's own verdict "
                 "follows), held by %s, %.2fs", cfg.name, seq, epoch, len(result.changed_blocks), verdict.verdict,
                 ", ".join(holders), report["cycle_s"])
        return report

    def _clean_history(self, volume: str, vs: dict) -> list[dict]:
        """The stats of the committed clean snapshots of ``vs`` (the volume's Raft entry), oldest
        first: the judge's history (:func:`replicad.core.anomaly.judge`). A record whose stats the
        judge cannot read (:func:`replicad.core.state.stats_problem`: a string where a count
        belongs, committed before the state checked them) is left out, logged once per snapshot at
        WARNING and counted in :attr:`unreadable_stats`: a bad record committed by an earlier
        primary must not stop this one's snapshots (review R10, F1)."""
        history = []
        size = vs.get("size_bytes")
        bs = vs.get("block_size")
        n_blocks = -(-size // bs) if isinstance(size, int) and isinstance(bs, int) and bs > 0 and size > 0 else None
        for seq, snap in sorted(vs["snapshots"].items()):
            if snap.get("verdict") != "clean":
                continue
            problem = stats_problem(snap.get("stats"), n_blocks, bs if n_blocks is not None else None)
            if problem is None:
                history.append(snap["stats"])
            elif (volume, seq) not in self.unreadable_stats:
                self.unreadable_stats.add((volume, seq))
                log.warning("%s: snapshot #%s (epoch %s) has stats the judge cannot read (%s): left out of the "
                            "volume's baseline (%d such snapshot(s) of this volume so far)", volume, seq,
                            snap.get("epoch"), problem, sum(1 for v, _ in self.unreadable_stats if v == volume))
        return history

    async def _request_max_size(self, volume: str, size_bytes: int, limit: int) -> None:
        """The image of ``volume`` grew to ``size_bytes``, past its agreed maximum ``limit``: file
        a ``set_max_size`` request of :func:`~replicad.core.state.default_max_size_bytes` of the
        new size, or of :func:`~replicad.core.state.max_size_at_once` when the new size fits under
        it (another site approves it and it applies at once; a larger one cools off and may be
        vetoed), logged at WARNING with its id;
        nothing when this site already has one pending or cooling off for the volume (the
        request's own expiry, 24 h, lets the next cycle file it again). A failure to propose is
        logged at WARNING (the next cycle tries again); never raises a ReplicadError."""
        view = self.cluster.view()
        requests = (view.get("requests") or {}).values()
        if any(r.get("action") == "set_max_size" and r.get("by") == self.site_id
               and r.get("status") in ("pending", "approved")
               and (r.get("args") or {}).get("volume") == volume for r in requests):
            log.warning("volume %s: the image is %d bytes, past its agreed maximum %d: waiting for another site to "
                        "approve this site's set_max_size request, or for its cooling-off (replicad requests)",
                        volume, size_bytes, limit)
            return
        wanted = default_max_size_bytes(size_bytes)
        vs = (view.get("volumes") or {}).get(volume)
        at_once = max_size_at_once(view, vs) if vs is not None else 0
        if size_bytes <= at_once:  # the most that applies at the approval (a larger one cools off a day)
            wanted = min(wanted, at_once)
        try:
            res = await self.cluster.propose("request", action="set_max_size",
                                             args={"volume": volume, "max_size_bytes": wanted},
                                             reason=f"{volume} grew to {size_bytes} bytes at its primary "
                                                    f"{self.site_id}, past its agreed maximum {limit}")
        except ReplicadError as err:
            log.warning("volume %s: the image is %d bytes, past its agreed maximum %d; the set_max_size request "
                        "could not be made (%s %s): the next cycle tries again", volume, size_bytes, limit, err,
                        err.evidence)
            return
        log.warning("AUDIT volume %s: the image is %d bytes, past its agreed maximum %d: requested a maximum of %d "
                    "bytes as %s; nothing is replicated until an operator of another site approves it "
                    "(replicad approve %s)", volume, size_bytes, limit, wanted, res.get("request"), res.get("request"))

    def _signs(self) -> bool:
        """True unless the cluster runs in unsigned lab mode (acknowledgements unchecked)."""
        return self.cluster.cfg().trust().signed

    def _vouched(self, volume: str, epoch: int, seq: int, m: Manifest, shipped: dict[str, dict]) -> dict[str, bytes]:
        """``{peer: ack}`` of the peers that answered "stored" with an acknowledgement signed by a
        key pinned for them of ``m`` at its size (what ``commit_snapshot`` needs,
        :func:`replicad.core.identity.ack_problem`).
        A peer that said "stored" without a valid one is not counted as a holder (logged at
        WARNING): the state machine would refuse the whole commit (``bad_ack``)."""
        trust = self.cluster.cfg().trust()
        out: dict[str, bytes] = {}
        for peer, rep in shipped.items():
            if not rep.get("ok"):
                continue
            if not trust.signed:
                continue
            problem = identity.ack_problem(rep.get("ack"), trust.keys.get(peer), trust.cluster_id, volume, epoch,
                                           seq, m.root, m.size_bytes, m.n_blocks)
            if problem is None:
                out[peer] = rep["ack"]
            else:
                log.warning("snapshot %s#%d: %s said it stored it without a valid signed acknowledgement (%s): "
                            "not counted as a holder", volume, seq, peer, problem)
        return out

    def recent_ship_stalls(self) -> dict[str, str]:
        """Replica -> message of its last stalled ship request, for those of the last SHIP_STALL_MEMORY_S seconds."""
        now = time.monotonic()
        return {p: m for p, (t, m) in self.ship_stalls.items() if now - t < SHIP_STALL_MEMORY_S}

    def _note_ship_stall(self, peer: str, m: Manifest, err: PeerStalledError) -> None:
        """A ship's request to ``peer`` ran past its deadline or broke the upload's progress rule
        (:data:`~replicad.peer.transport.SHIP_DOC_S`, :class:`~replicad.peer.transport.ShipProgress`):
        WARNING under its name, ``replicad_ship_stalled_total{peer}``, and no cycle waits for it
        (STRAGGLER_GRACE_S) for the next SHIP_STALL_MEMORY_S."""
        self.ship_stalls[peer] = (time.monotonic(), err.message)
        self.metrics.ship_stalled(peer)
        log.warning("replica %s stalled the ship of %s#%d (%s): cut; cycles do not wait for it for the next %.0fs, "
                    "it gets the next snapshot", peer, m.volume, m.seq, err.message, SHIP_STALL_MEMORY_S)

    def _slot_waited(self, peer: str, waited_s: float, got: bool) -> None:
        """A ship's chunk stream to ``peer`` waited ``waited_s`` seconds for one of this site's
        places (:class:`~replicad.peer.transport.StreamSlots`) and got one or gave up: counted
        (``replicad_ship_slot_waits_total``, ``replicad_ship_slot_wait_seconds_total``), never
        as a stall. Never raises."""
        try:
            self.metrics.ship_slot_waited(peer, waited_s, got)
        except Exception as bug:  # noqa: BLE001 - accounting must not fail a ship
            log.error("accounting a wait for a chunk stream to %s failed: %s: %s", peer, type(bug).__name__, bug)

    async def _ship_all(self, runner: VolumeRunner, vs: dict, m: Manifest,
                        wait_s: float = CHUNK_SLOT_WAIT_MIN_S) -> dict[str, dict]:
        """Ship ``m`` to every data peer concurrently; return ``{peer: report}``. A ship whose
        chunk stream waits for one of this site's places to its peer waits up to ``wait_s``
        (:func:`slot_wait_s`), then fails with StreamSlotsBusyError (report ``error``
        "stream_slots_busy"; a local condition: neither a stall nor the peer down).

        Returns once every peer answered, or STRAGGLER_GRACE_S after enough peers stored it
        for ``min_copies`` (O2): one slow or frozen replica must not hold every commit for a
        socket timeout. A straggler's ship keeps running in the background; once the snapshot
        is committed, that replica adds itself as a holder (``_replica_step``). A replica that
        stalled a ship in the last SHIP_STALL_MEMORY_S gets no grace (once min_copies stored,
        the cycle does not wait for it at all).

        At most one ship per replica and volume is in flight: a replica whose ship of an older
        snapshot still runs is not shipped this one (report ``error`` "busy"); the next cycle
        ships it the newest. Every request of a ship has a deadline
        (:meth:`PeerClient.missing`, :meth:`~PeerClient.send_chunks`,
        :meth:`~PeerClient.snapshot_ack`), so a straggler ends in bounded time and a tarpit
        replica holds at most one connection of this site per volume.
        """
        peers = self.cluster.data_peers()
        busy: dict[str, int] = {}
        for p in peers:
            held = self._shipping.get((m.volume, p))
            if held is not None and not held[0].done():
                busy[p] = held[1]
        targets = [p for p in peers if p not in busy]
        shared = SharedFrames(self.store, consumers=len(targets))

        async def one(peer: str) -> tuple[str, dict]:
            try:
                return peer, await self.ship(peer, vs, m, runner.acting_epoch, shared, wait_s)
            except PeerStalledError as err:
                self._note_ship_stall(peer, m, err)
                return peer, {"ok": False, "error": err.code, "message": str(err)}
            except ReplicadError as err:
                if "url" in err.evidence:  # the peer's answer, or the link to it
                    log.warning("ship %s#%d to %s failed: %s", m.volume, m.seq, peer, err)
                else:  # e.g. a chunk to send pruned or corrupt in this site's own store
                    log.warning("ship %s#%d to %s stopped by a local condition at %s: %s: %s %s", m.volume, m.seq,
                                peer, self.site_id, err.code, err, err.evidence)
                return peer, {"ok": False, "error": err.code, "message": str(err)}

        tasks = {asyncio.create_task(one(p), name=f"ship:{m.volume}#{m.seq}:{p}"): p for p in targets}
        for t, p in tasks.items():
            self._shipping[(m.volume, p)] = (t, m.seq)
        results: dict[str, dict] = {p: {"ok": False, "error": "busy", "message": f"the ship of #{seq} to it is "
                                        "still running"} for p, seq in busy.items()}
        slow = self.recent_ship_stalls()
        pending: set[asyncio.Task] = set(tasks)
        grace_until: float | None = None
        while pending:
            if grace_until is not None and all(tasks[t] in slow for t in pending):
                break  # enough stored; the rest stalled lately: not waited for
            timeout = None if grace_until is None else max(0.0, grace_until - time.monotonic())
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for t in done:
                peer, rep = t.result()
                results[peer] = rep
            stored = 1 + sum(1 for r in results.values() if r.get("ok"))
            if grace_until is None and stored >= runner.cfg.min_copies:
                grace_until = time.monotonic() + STRAGGLER_GRACE_S
        for t in pending:
            results[tasks[t]] = {"ok": False, "error": "straggler", "message": "still shipping in the background"}
            self._background.add(t)
            t.add_done_callback(self._background.discard)
        return results

    async def ship(self, peer: str, vs: dict, m: Manifest, epoch: int, shared: SharedFrames | None = None,
                   wait_s: float = CHUNK_SLOT_WAIT_MIN_S) -> dict:
        """Ship snapshot ``m`` to ``peer``: offer only what differs from the newest snapshot both
        hold (delta), stream what it lacks, then get its O2 "stored" acknowledgement. The stream
        waits up to ``wait_s`` for one of this site's places to the peer
        (:meth:`PeerClient.send_chunks`; the wait is counted in ``replicad_ship_slot_wait_*``).
        This ship is one consumer of ``shared``: it takes its batches or leaves it.

        A chunk found corrupt in the local store while reading it for shipping is dropped,
        re-fetched (verified) from another data site that has it, and the ship retried once
        (reading its own batches: ``shared`` may hold the failed one).
        """
        try:
            return await self._ship_once(peer, vs, m, epoch, shared, wait_s)
        except IntegrityError as err:
            bad = err.evidence.get("digest")
            if not isinstance(bad, str) or err.code != "integrity" or "url" in err.evidence:
                raise  # a peer's verdict on what it received (it carries the peer url): not our store
            log.error("corrupt chunk %s in the store of %s while shipping: re-fetching it", bad, self.site_id)
            await asyncio.to_thread(self.store.delete_corrupt, bytes.fromhex(bad))
            await self.pull.fetch_missing(m.volume, epoch, [bytes.fromhex(bad)], self.cluster.data_peers())
            return await self._ship_once(peer, vs, m, epoch, None, wait_s)

    async def _ship_once(self, peer: str, vs: dict, m: Manifest, epoch: int,
                         shared: SharedFrames | None = None, wait_s: float = CHUNK_SLOT_WAIT_MIN_S) -> dict:
        try:
            url = self.cluster.peer_url(peer)
            # the newest snapshot both are said to hold, whose manifest is really here: one whose
            # chunks every holder lost (skipped at the takeover) is no base
            base_seq = next((s for s in sorted(vs["snapshots"], reverse=True)
                             if peer in vs["snapshots"][s]["holders"] and self.site_id in vs["snapshots"][s]["holders"]
                             and self.store.has(vs["snapshots"][s]["root"])), None)
            base = load_manifest(self.store, vs["snapshots"][base_seq]["root"]) if base_seq is not None else None
            offer = await asyncio.to_thread(offer_digests, self.store, m, base)
            lacking = await self.peers.missing(url, m.volume, epoch, offer)
        except BaseException:
            if shared is not None:  # no batch taken: none is kept for this peer
                shared.leave()
            raise
        sent_bytes = 0
        if lacking:
            _, sent_bytes = await self.peers.send_chunks(
                url, m.volume, epoch, self.store, lacking, shared, slot_wait_s=wait_s,
                on_slot_wait=lambda waited_s, got: self._slot_waited(peer, waited_s, got))
            self.metrics.shipped(m.volume, peer, sent_bytes)
        elif shared is not None:
            shared.leave()
        ok, ack = await self.peers.snapshot_ack(url, m.volume, epoch, m.seq, m.root, m.size_bytes)
        return {"ok": ok, "ack": ack, "offered": len(offer), "sent": len(lacking), "bytes": sent_bytes,
                "base_seq": base_seq}


def slot_wait_s(interval_s: float) -> float:
    """How long a ship of a volume snapshotted every ``interval_s`` seconds waits for one of this
    site's places to stream chunks to a peer (:class:`~replicad.peer.transport.StreamSlots`): the
    volume's interval (its next cycle is due by then), at least CHUNK_SLOT_WAIT_MIN_S (a short
    lab interval would give up a place in the queue that comes within seconds) and at most
    CHUNK_SLOT_WAIT_MAX_S (the cycle holds the volume's lock meanwhile: a fence or an operator's
    snapshot waits for it)."""
    return min(max(float(interval_s), CHUNK_SLOT_WAIT_MIN_S), CHUNK_SLOT_WAIT_MAX_S)


def next_seq(volume: str, last_seq: int, local_max: int) -> int:
    """The seq of a volume's next snapshot: one past the newest committed (``last_seq``) and
    this site's own uncommitted ones of its epoch (``local_max``).

    Raises:
        OutOfRangeError: it would pass what the state machine accepts (``last_seq +``
            :data:`~replicad.core.state.SEQ_STEP_MAX`, or 2**63-1): uncommitted local
            snapshots far ahead, or a seq space exhausted by a commit of an older release.
    """
    seq = max(last_seq, local_max) + 1
    limit = min(last_seq + SEQ_STEP_MAX, INT_MAX)
    if seq > limit:
        raise OutOfRangeError(f"{volume}: next seq {seq} would pass the largest the cluster accepts ({limit}: last "
                              f"committed {last_seq} + {SEQ_STEP_MAX}, at most 2**63-1)", volume=volume, seq=seq,
                              last_seq=last_seq, local_max=local_max, limit=limit)
    return seq


def offer_digests(store: ChunkStore, m: Manifest, base: Manifest | None) -> list[bytes]:
    """Digests a peer holding ``base`` may lack to hold ``m``: new pages, changed blocks, the root."""
    base_pages = set(base.pages) if base is not None else set()
    out = dict.fromkeys(pd for pd in m.pages if pd not in base_pages)
    out.update(dict.fromkeys(changed_digests(base, m, store.get)))
    out[m.root] = None
    return list(out)
