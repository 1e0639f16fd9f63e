"""Housekeeping of one site's history: the Raft-agreed retention policy (planned at the
primary, the lock window re-checked at every site with its own clock, O4), the operator's
prune and verdicts, and garbage collection of chunks no kept snapshot references.

Whatever Raft says, a site forgets a local record only outside its own **floor**
(``[floor]`` in its own config, :mod:`replicad.core.floor`), measured with its own clock
and its own store times: a forged or wrong cluster state, or a prune agreed by a
compromised majority, cannot make this site lose a snapshot inside its floor. Each record
the floor keeps against the cluster state is logged at WARNING and counted
(``replicad_floor_kept_total``). The collector's live set is every local record plus
every snapshot Raft lists this site as holding; unreferenced chunks younger than the
floor's ``gc_grace`` are kept. A snapshot an export serves (``pins``, :mod:`replicad.site.exports`)
keeps its local record and its chunks while the export is open, whatever Raft pruned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from replicad.core import floor as local_floor
from replicad.core import retention
from replicad.core.errors import NotFoundError, ReplicadError, RetentionLockedError
from replicad.core.manifest import chunk_digests
from replicad.core.state import (DEFAULT_RETENTION, locally_effective_retention, newest_common, quorum_now_ns,
                                  revoked_sites, suspect_pins)
from replicad.site.cluster import Cluster
from replicad.site.runner import VolumeRunner, load_manifest, runner_of
from replicad.storage.catalog import Catalog
from replicad.storage.chunkstore import ChunkStore
from replicad.telemetry.metrics import SiteMetrics

log = logging.getLogger("replicad.site.housekeeping")

RETENTION_TICK_S = 60.0
GC_EVERY_S = 3600.0  # unreferenced chunks past their grace are collected at least this often


class Housekeeping:
    """Retention, prune, verdicts and GC at one site.

    Args:
        cluster: Raft view and proposals.
        store, catalog: this site's chunk store and snapshot catalog.
        runners: the site's volume runners (their locks; their wake-ups after a verdict).
        repair_step: re-fetches lost chunks; run before retention every ``RETENTION_TICK_S``
            (``Scrub.repair_step``).
        floor: returns this site's floor config (``SiteConfig.floor``; a callable so a reload
            is seen), read at each step.
        metrics: the site's metrics (records the floor kept).
        pins: returns ``{(volume, epoch, seq): root}`` of the snapshots open exports serve
            (``Exports.pinned``): kept here, records and chunks, until the export closes.
    """

    def __init__(self, cluster: Cluster, store: ChunkStore, catalog: Catalog, runners: dict[str, VolumeRunner],
                 repair_step: Callable[[], Awaitable[int]], floor: Callable[[], Any], metrics: SiteMetrics,
                 pins: Callable[[], dict[tuple[str, int, int], bytes]] = dict) -> None:
        self.site_id = cluster.site_id
        self.cluster = cluster
        self.store = store
        self.catalog = catalog
        self.runners = runners
        self.repair_step = repair_step
        self.floor = floor
        self.metrics = metrics
        self.pins = pins  # snapshots open exports serve (issue 16)
        self._weaker_warned: dict[str, tuple] = {}
        self._last_gc = time.monotonic()

    async def retention_loop(self) -> None:
        """Every ``RETENTION_TICK_S``: the repair step, then each volume's retention step
        (under the volume's lock); errors are logged and retried at the next tick."""
        while True:
            await asyncio.sleep(RETENTION_TICK_S)
            try:
                await self.repair_step()
            except ReplicadError as err:
                log.info("repair: %s", err)
            for runner in self.runners.values():
                try:
                    async with runner.lock:
                        await self.retention_step(runner.cfg.name)
                except ReplicadError as err:
                    log.info("retention %s: %s", runner.cfg.name, err)

    async def retention_step(self, volume: str, *, plan: bool = True, force_gc: bool = False) -> dict:
        """Apply the Raft-agreed retention policy of ``volume`` at this site.

        At the primary (only if ``plan``): plan with the pure planner (never the lock window,
        the newest committed/clean snapshot, or the newest snapshot shared with each replica)
        and propose ``prune_snapshots`` (the state machine re-checks the lock, O4). At every
        site: forget local records of snapshots no longer in the catalog — re-checking the
        lock window with this site's own clock, refusing (and logging) otherwise — then
        collect chunks that no kept snapshot references. Divergent records are never touched.
        ``plan=False`` does only the local part (after an operator's explicit prune, which
        must prune nothing more than it named). The collector runs when records were forgotten,
        at least every ``GC_EVERY_S`` (unreferenced chunks a peer sent age out), or with
        ``force_gc`` (an operator's ``retention/run``).
        Records inside this site's floor are kept whatever Raft says (``floor_kept``).
        Returns ``{"pruned": [...], "forgotten": n, "refused": [...], "floor_kept": [...], "gc": {...}}``.
        """
        vs = self.cluster.volume_state(volume)
        if vs is None:
            raise NotFoundError(f"unknown volume {volume}", volume=volume)
        local = locally_effective_retention(self.cluster.view(), volume, time.time_ns(),
                                            int(self.floor().cooling_off_s * 1e9))
        if local != vs["retention"]:  # this site's own longer cooling-off after a weakening request
            log.info("retention of %s: the change approved through Raft is still cooling off at %s (its [floor] "
                     "cooling_off); applying %s here until then", volume, self.site_id, local)
            vs = {**vs, "retention": local}
        runner = runner_of(self.runners, volume, self.site_id)
        report: dict[str, Any] = {"pruned": [], "forgotten": 0, "refused": [], "gc": None}
        if plan and vs["primary"] == self.site_id and runner.acting_epoch == vs["epoch"]:
            # plan with the time a majority of sites reached: the state machine measures the lock so
            quorum_now = quorum_now_ns(self.cluster.view())
            now_plan = min(time.time_ns(), quorum_now) if quorum_now is not None else None
            # the bases of the next delta ship to each replica: the state machine's own rule, so the
            # plan never proposes what it would refuse
            common = set(newest_common(self.cluster.view(), vs))
            # and what one site's suspect opinion pins for a keep-all window (state.suspect_pins)
            revoked = revoked_sites(self.cluster.view())
            pinned = set(suspect_pins(vs, now_plan, revoked)) if now_plan is not None else set()
            plan = retention.plan_prune(vs["snapshots"], vs["retention"], now_plan,
                                        common | pinned) if now_plan is not None else []
            if plan:
                res = await self.cluster.propose("prune_snapshots", volume=volume, seqs=plan)
                report["pruned"] = res.get("pruned", plan)
                log.info("retention pruned %s snapshots %s (planned at %s)", volume, report["pruned"], self.site_id)
                vs = {**(self.cluster.volume_state(volume) or vs), "retention": vs["retention"]}
        live_roots = {s["root"] for s in vs["snapshots"].values()}
        lock_ns = vs["retention"]["lock_s"] * 1e9
        now = time.time_ns()
        # held and committed: the floor's calendar rules count it (one catalog read, in a worker thread)
        await asyncio.to_thread(self._mark_held_committed, volume, vs)
        policy = self.floor().policy()
        self._warn_if_weaker(volume, vs["retention"], policy)
        kept = await asyncio.to_thread(lambda: local_floor.protected(self.catalog.floor_records(volume), policy, now))
        report["floor_kept"] = []
        exported = self.pins()  # snapshots open exports serve: kept until the export closes
        for rec in self.catalog.list(volume):
            stale_received = rec.state == "received" and rec.seq <= vs["last_seq"]
            if rec.root in live_roots or rec.state not in ("committed", "received") or \
                    (rec.state == "received" and not stale_received):
                continue
            # a record's age is measured from the later of its manifest time and the time this site
            # stored it: a peer's timestamp never makes a record older than it is here
            age_ns = now - max(rec.created_at_ns, rec.stored_at_ns or 0)
            if age_ns < lock_ns:  # O4, with this site's own clock
                log.warning("AUDIT refused to delete %s#%d (epoch %d) at %s: inside the lock window", volume,
                            rec.seq, rec.epoch, self.site_id)
                report["refused"].append(rec.seq)
                continue
            if (volume, rec.epoch, rec.seq) in exported:
                log.warning("AUDIT kept %s#%d (epoch %d) at %s: an open export serves it (it is forgotten once the "
                            "export closes)", volume, rec.seq, rec.epoch, self.site_id)
                report.setdefault("exported_kept", []).append(rec.seq)
                continue
            reasons = kept.get((rec.epoch, rec.seq))
            if reasons:  # the site's own floor, whatever the cluster state says
                log.warning("AUDIT kept %s#%d (epoch %d, %s) at %s against the cluster state: inside this site's "
                            "floor (%s)", volume, rec.seq, rec.epoch, rec.state, self.site_id, ", ".join(reasons))
                self.metrics.floor_kept_record(volume, reasons)
                report["floor_kept"].append(rec.seq)
                continue
            await asyncio.to_thread(self.catalog.delete, volume, rec.epoch, rec.seq)
            report["forgotten"] += 1
        if report["forgotten"] or force_gc or time.monotonic() - self._last_gc >= GC_EVERY_S:
            report["gc"] = await asyncio.to_thread(self.gc)
        return report

    def _mark_held_committed(self, volume: str, vs: dict) -> None:
        """Turn this site's ``received`` records of snapshots Raft lists as committed with this
        site as a holder into ``committed`` (a commit applied while the site was down, or whose
        apply callback ran before the record existed). Synchronous."""
        held = {(snap["epoch"], seq, snap["root"]) for seq, snap in vs["snapshots"].items()
                if self.site_id in snap["holders"]}
        for rec in self.catalog.list(volume, "received"):
            if (rec.epoch, rec.seq, rec.root) in held:
                self.catalog.set_state(volume, rec.epoch, rec.seq, "committed")

    def _warn_if_weaker(self, volume: str, raft_policy: dict, policy: local_floor.FloorPolicy) -> None:
        """Once per (policy, floor) pair when the Raft policy of ``volume`` is weaker than this
        site's floor (the floor still wins here): at WARNING when the Raft policy was shortened
        below the default a volume is registered with (:func:`~replicad.core.floor.shorter_than`
        names the keys), else at INFO (the shipped defaults: the default floor keeps more than
        the default Raft policy on purpose, so a default cluster logs no WARNING)."""
        key = (tuple(sorted(raft_policy.items())), policy)
        if self._weaker_warned.get(volume) == key:
            return
        self._weaker_warned[volume] = key
        problems = local_floor.weaker_than_floor(raft_policy, policy)
        if not problems:
            return
        shortened = local_floor.shorter_than(raft_policy, DEFAULT_RETENTION)
        if shortened:
            log.warning("retention of %s agreed in Raft was shortened below the default (%s) and is weaker than the "
                        "floor of %s (the floor is kept here): %s", volume, ", ".join(shortened), self.site_id,
                        "; ".join(problems))
        else:
            log.info("retention of %s agreed in Raft keeps less than the floor of %s, as the defaults do on purpose "
                     "(the floor is kept here; config/README.md [floor]): %s", volume, self.site_id,
                     "; ".join(problems))

    async def prune(self, volume: str, seqs: list[int], reason: str = "") -> dict:
        """Operator request to prune exactly the committed snapshots ``seqs`` now (``reason``: the
        operator's, shown to those asked to approve a request); the state
        machine refuses (``retention_locked``, audited in the Raft log) anything inside the
        lock window, pinned or newest. This site then forgets them and collects their chunks;
        the retention policy does not run here (it runs on its own schedule, or ``retention/run``).
        Snapshots the agreed retention grid keeps become a request instead (``prune_snapshots``,
        approved at other sites, then the cooling-off): one site's word deletes no retained history.

        Returns ``{"volume", "pruned": [seq], "local": <retention_step report, pruned == []>}``, or
        for a request ``{"volume", "pruned": [], "request", "status", "approvals", "needed",
        "kept_by_retention": [seq]}``.
        """
        try:
            res = await self.cluster.propose("prune_snapshots", volume=volume, seqs=list(seqs))
        except RetentionLockedError as err:
            if not (err.evidence or {}).get("kept_by_retention"):
                raise
            # what the agreed retention keeps goes only as a request other sites approve (and
            # after the cooling-off): one site's word deletes no retained history
            req = await self.cluster.propose("request", action="prune_snapshots",
                                             args={"volume": volume, "seqs": list(seqs)},
                                             reason=reason or f"operator prune at {self.site_id}")
            log.warning("AUDIT request %s made at %s: prune %s snapshots %s, kept by the agreed retention",
                        req.get("request"), self.site_id, volume, list(seqs))
            return {"volume": volume, "pruned": [], "request": req.get("request"), "status": req.get("status"),
                    "approvals": req.get("approvals"), "needed": req.get("needed"),
                    "kept_by_retention": err.evidence["kept_by_retention"]}
        log.info("retention pruned %s snapshots %s (operator request at %s)", volume, res.get("pruned", seqs),
                 self.site_id)
        runner = runner_of(self.runners, volume, self.site_id)
        async with runner.lock:
            local = await self.retention_step(volume, plan=False)
        return {"volume": volume, "pruned": res.get("pruned", seqs), "local": local}

    async def set_verdict(self, volume: str, seq: int, verdict: str, reason: str) -> dict:
        """Operator verdict on a committed snapshot through Raft (``mark_verdict`` in this site's
        name). Clearing a ``suspect`` snapshot is refused here (``approval_required``): it is a
        request approved by other sites (the admin API makes it). Marking ``suspect`` is this
        site's suspect vote: it holds this site's standby at once and makes the snapshot suspect
        for every site once the words of ``state.mark_quorum`` sites (three: marks or detector
        opinions) agree, or two sites' detectors judge it suspect; the answer says which
        (``cluster_verdict``, ``suspect_sites``, ``needed``, ``next``). ``clean``
        on a snapshot that is not suspect takes back this site's own mark.

        Returns ``{volume, seq, verdict, ...}``; raises what ``mark_verdict`` refuses (a witness
        site's mark: ConflictError)."""
        args: dict[str, Any] = {"volume": volume, "seq": seq, "verdict": verdict, "reason": reason}
        vs = self.cluster.volume_state(volume)
        newer_suspect = sorted(s for s, snap in (vs or {}).get("snapshots", {}).items()
                               if s > seq and snap["verdict"] == "suspect")
        res = await self.cluster.propose("mark_verdict", **args)
        log.warning("AUDIT snapshot %s#%d marked %s at %s: %s%s", volume, seq, verdict, self.site_id, reason,
                    f"; newer suspect snapshots remain: {newer_suspect}" if verdict == "clean" and newer_suspect
                    else "")
        for runner in self.runners.values():
            runner.wake.set()
        out = {"volume": volume, "seq": seq, "verdict": res.get("verdict", verdict)}
        if verdict == "suspect":
            out.update(marked="suspect", cluster_verdict=res.get("verdict"), suspect_sites=res.get("suspect_sites", []),
                       needed=res.get("needed"), held_here=True)
            if res.get("verdict") == "clean":
                sites = ", ".join(res.get("suspect_sites") or [])
                primary = (vs or {}).get("primary") == self.site_id  # a primary has no standby to hold
                out["held_here"] = not primary
                here = (f"this site is the primary of {volume}: its mark is its vote (and holds a takeover here "
                        f"before #{seq})" if primary else f"this site's standby holds before #{seq}")
                out["next"] = (f"{here}; the cluster's verdict stays clean until "
                               f"{res.get('needed')} sites judge it suspect (now {sites}; or the detectors of "
                               f"{res.get('needed_opinions')}): a site is held only by its own mark, so an operator "
                               f"at each other site marks it there too (replicad verdict {volume} {seq} suspect)")
        if verdict == "clean":
            out["changed"] = bool(res.get("changed", True))
            out["withdrawn"] = out["changed"]  # clean on a clean snapshot: this site's own suspect mark taken back
        if verdict == "clean" and newer_suspect:
            after = self.cluster.volume_state(volume) or vs or {}
            newer_clean = sorted(s for s, snap in after.get("snapshots", {}).items()
                                 if s > seq and snap["verdict"] == "clean")
            out["warning"] = (f"newer suspect snapshots remain ({', '.join(map(str, newer_suspect))})" + (
                f": #{seq} is now the newest clean snapshot, so standbys apply it and failovers restore it"
                if not newer_clean and res.get("verdict", verdict) == "clean" else ""))
        return out

    def gc(self) -> dict:
        """Collect chunks that no snapshot this site keeps references (O4: retained ones stay).

        Live: every snapshot in the local catalog, and every committed snapshot Raft lists
        this site as holding (even if its local record were lost), and every snapshot an open
        export serves. Unreferenced chunks younger than the floor's ``gc_grace`` stay (a snapshot
        still arriving)."""
        roots: set[bytes] = set(self.pins().values())
        for name in self.runners:
            roots |= {rec.root for rec in self.catalog.list(name)}
            vs = self.cluster.volume_state(name) or {}
            roots |= {s["root"] for s in vs.get("snapshots", {}).values() if self.site_id in s.get("holders", ())}
        live: set[bytes] = set()
        for root in roots:
            if self.store.has(root):
                live |= chunk_digests(load_manifest(self.store, root), self.store.get)
        stats = self.store.gc(live, grace_ns=int(self.floor().gc_grace_s * 1e9))
        self._last_gc = time.monotonic()
        log.info("gc: %s", stats)
        return stats
