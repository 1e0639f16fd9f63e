"""Roles of this site per volume: taking a volume over when Raft grants it (restore the newest
clean snapshot, verify its root, O5), fencing when Raft shows a newer epoch (O3: stop
producing, keep uncommitted work as a divergent branch), stepping down, and the operator's
``promote`` / ``demote``. Every role change goes through the one role table
(:func:`~replicad.site.runner.transition`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from replicad.core.backoff import Backoff
from replicad.core.errors import (ApprovalRequiredError, ConflictError, NoQuorumError, NotFoundError,
                                  NotPrimaryError, ReplicadError, RestoreVerifyError, SnapshotSuspectError,
                                  TakeoverRestoreError, UsageError)
from replicad.core.manifest import Manifest
from replicad.core.state import held_by_marks, newest_clean, restore_pin
from replicad.site.cluster import Cluster
from replicad.site.pull import Pull
from replicad.site.replication import Replication
from replicad.site.runner import VolumeRunner, load_manifest, runner_of, transition
from replicad.sources.file import take_snapshot
from replicad.storage.catalog import Catalog, SnapshotRecord
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.image import verify_image
from replicad.telemetry.metrics import SiteMetrics

log = logging.getLogger("replicad.site.promotion")

RESTORE_ATTEMPTS = 3        # tries of one snapshot at a takeover before it is skipped for an older one
RESTORE_BACKOFF_S = 2.0     # bound of the first wait (core/backoff.py: 1-2 s, then 2-4 s)
UNRESTORABLE_FOR_S = 600.0  # a skipped snapshot is not tried again by this site for this long


def held_here(name: str, vs: dict, seq: int, site_id: str, detection: Any,
              marked: set[int] | None = None) -> str | None:
    """Why ``site_id`` holds its own restores and takeovers of ``name#seq`` back from a snapshot
    the cluster may call clean, or None: a person there marked it or an ancestor suspect
    (:func:`~replicad.core.state.held_by_marks`, whatever a confirmation said), or this site's
    own detector judged it suspect (``detection.own_verdict``, also before Raft shows the opinion)
    and no person confirmed it clean. The one rule of the takeover (:meth:`Promotion._restorable`),
    a named or instant restore point (:meth:`Promotion._check_restore_point`) and the default
    restore (:func:`newest_usable_here`, ``Recovery.restore``). ``marked``: ``held_by_marks``
    already computed for ``vs`` (a caller looping over seqs). ``detection`` None (bare tests): the
    marks only. Pure but for ``detection``'s memory."""
    if seq in (marked if marked is not None else held_by_marks(vs, site_id)):
        return f"a person at {site_id} marked it (or a snapshot it descends from) suspect"
    snap = vs["snapshots"].get(seq)
    if detection is not None and snap is not None and not snap.get("confirmed") \
            and detection.own_verdict(name, seq, vs) == "suspect":
        return f"{site_id} judged it suspect itself"
    return None


def newest_usable_here(name: str, vs: dict, site_id: str, detection: Any) -> tuple[int | None, dict[int, str]]:
    """The newest snapshot the cluster calls clean that ``site_id`` does not hold back
    (:func:`held_here`), and the newer clean ones it held back with why: ``(seq | None, {seq:
    why})``. Pure but for ``detection``'s memory."""
    marked = held_by_marks(vs, site_id)
    held: dict[int, str] = {}
    for seq in sorted((q for q, snap in vs["snapshots"].items() if snap.get("verdict") == "clean"), reverse=True):
        why = held_here(name, vs, seq, site_id, detection, marked)
        if why is None:
            return seq, held
        held[seq] = why
    return None, held


class Promotion:
    """Promotion, demotion and fencing of this site's volumes.

    Args:
        cluster: Raft view and proposals.
        store, catalog: this site's chunk store and snapshot catalog.
        runners: the site's volume runners (by volume name).
        pull: fetches and applies the snapshot a new primary restores.
        replication: runs the final cycle of a planned switchover.
        scan_slots: bounds the scans running at once on the site (the fenced image's scan).
        metrics: counts snapshots a takeover skipped (``replicad_restore_skipped_total``).
    """

    def __init__(self, cluster: Cluster, store: ChunkStore, catalog: Catalog, runners: dict[str, VolumeRunner],
                 pull: Pull, replication: Replication, scan_slots: asyncio.Semaphore,
                 metrics: SiteMetrics | None = None) -> None:
        self.site_id = cluster.site_id
        self.cluster = cluster
        self.store = store
        self.catalog = catalog
        self.runners = runners
        self.pull = pull
        self.replication = replication
        self._scan_slots = scan_slots
        self.metrics = metrics
        self._forcing: dict[str, asyncio.Lock] = {}  # volume -> held while a forced promotion checks and proposes
        self._unrestorable: dict[tuple[str, int, int, bytes], float] = {}  # (volume, epoch, seq, root) -> when skipped
        self.detection: Any = None  # issue 14: site.detection.Detection (set by the daemon); None in bare tests
        self.instant: Any = None  # issue 16: site.instant.InstantRecovery (set by the daemon); None in bare tests

    async def _restorable(self, name: str, vs: dict) -> tuple[int, Manifest, list[int]]:
        """The newest clean committed snapshot this site holds completely or can fetch:
        ``(seq, manifest, skipped seqs)``. A snapshot whose chunks no holder supplies
        (NotFoundError from the pull, after its own attempts) is tried :data:`RESTORE_ATTEMPTS`
        times with an exponential backoff with jitter from :data:`RESTORE_BACKOFF_S`, then skipped for the next
        older clean one: logged at ERROR, counted (``replicad_restore_skipped_total``), and not
        tried again for :data:`UNRESTORABLE_FOR_S` (a takeover never wedges on a snapshot nobody
        can supply: its holders lost it, or a primary committed a root nobody stored).

        Raises NotFoundError when no clean snapshot can be restored; PeerUnavailableError,
        IntegrityError ... from the pull as they come (not a reason to skip a snapshot)."""
        clean = sorted((q for q, snap in vs["snapshots"].items() if snap.get("verdict") == "clean"), reverse=True)
        skipped: list[int] = []
        last_err: NotFoundError | None = None
        held = held_by_marks(vs, self.site_id)
        for seq in clean:
            key = (name, vs["epoch"], seq, vs["snapshots"][seq]["root"])
            if time.monotonic() - self._unrestorable.get(key, -UNRESTORABLE_FOR_S) < UNRESTORABLE_FOR_S:
                skipped.append(seq)
                continue
            backoff = Backoff(base_s=RESTORE_BACKOFF_S, max_s=8 * RESTORE_BACKOFF_S)
            confirmed = bool(vs["snapshots"][seq].get("confirmed"))  # a person's approved clean: no own veto
            if held_here(name, vs, seq, self.site_id, self.detection, held) is not None:
                skipped.append(seq)  # marked suspect here, or judged suspect here (issue 14; Raft may not show it yet)
                continue
            judged_suspect = False
            for attempt in range(1, RESTORE_ATTEMPTS + 1):
                try:
                    manifest = await self.pull.ensure_snapshot(name, seq, vs)
                    if self.detection is not None and not confirmed and \
                            self.detection.own_verdict(name, seq, vs) is None:
                        # issue 14: never take over on a snapshot this site has not judged itself
                        judged = await self.detection.judge_pending(name, vs, upto=seq)
                        vs = self.cluster.volume_state(name) or vs
                        if self.detection.own_verdict(name, seq, vs) != "clean":
                            log.warning("volume %s: takeover skips #%d: judged %s here", name, seq,
                                        judged.get(seq, "not yet"))
                            manifest = None
                    if manifest is None:
                        judged_suspect = True
                        break
                    return seq, manifest, skipped
                except NotFoundError as err:
                    last_err = err
                    if attempt < RESTORE_ATTEMPTS:
                        delay = backoff.failed()
                        log.warning("volume %s: restoring clean snapshot #%d failed (try %d of %d): %s; retrying in "
                                    "%.1fs", name, seq, attempt, RESTORE_ATTEMPTS, err, delay)
                        await asyncio.sleep(delay)
            if judged_suspect:
                skipped.append(seq)  # judged suspect here (issue 14): not unrestorable, not retried later
                continue
            self._unrestorable[key] = time.monotonic()
            skipped.append(seq)
            if self.metrics is not None:
                self.metrics.restore_skipped(name)
            log.error("volume %s: SKIPPED clean snapshot #%d (epoch %d, held by %s) at takeover: %s after %d tries "
                      "(%s); falling back to the newest older clean snapshot", name, seq,
                      vs["snapshots"][seq]["epoch"], ", ".join(vs["snapshots"][seq]["holders"]),
                      last_err, RESTORE_ATTEMPTS, last_err.evidence if last_err else {})
        raise NotFoundError(f"volume {name}: no clean committed snapshot can be restored at {self.site_id} "
                            f"(skipped {skipped})", volume=name, skipped=skipped,
                            last_error=str(last_err) if last_err else None)

    async def _check_restore_point(self, name: str, seq: int, vs: dict) -> Manifest:
        """The operator named ``seq`` as the restore point of a forced promotion: make sure this
        site can restore it and calls it clean itself, *before* anything is proposed. Returns
        its manifest, complete in the local store (fetched from its holders if needed).

        Raises NotFoundError (evidence ``reason``: ``not_committed``, ``not_held``, or the
        pull's own when no holder supplies it), SnapshotSuspectError (Raft's verdict, or this
        site's own opinion, is suspect and no person cleared it, or a person here marked it or
        an ancestor suspect: :func:`held_here`), PeerUnavailableError /
        IntegrityError from the pull."""
        snap = vs["snapshots"].get(seq)
        if snap is None:
            raise NotFoundError(f"{name} has no committed snapshot #{seq} ({_seqs_text(vs['snapshots'])}); only a "
                                "committed snapshot can be restored ('replicad snapshots' lists them)",
                                volume=name, seq=seq, reason="not_committed")
        if not snap.get("holders"):
            raise NotFoundError(f"{name}#{seq} is held by no site any more", volume=name, seq=seq, reason="not_held")
        if snap.get("verdict") != "clean":
            why = snap.get("verdict_reason") or "; ".join(
                f"{site}: {o['reason']}" for site, o in sorted((snap.get("opinions") or {}).items())
                if o.get("verdict") == "suspect" and o.get("reason")) or "no reason recorded"
            raise SnapshotSuspectError(
                f"{name}#{seq} is {snap.get('verdict')} ({why[:300]}): clear it first (replicad verdict {name} {seq} "
                f"clean, approved by other sites) or name an older clean snapshot",
                volume=name, seq=seq, verdict=snap.get("verdict"), reason=why[:300])
        why = held_here(name, vs, seq, self.site_id, self.detection)
        if why is not None:
            raise SnapshotSuspectError(
                f"{name}#{seq}: {why}; take the mark back or clear it first (replicad verdict, approved by other "
                "sites), or name an older clean snapshot", volume=name, seq=seq, site=self.site_id, reason=why)
        manifest = await self.pull.ensure_snapshot(name, seq, vs)
        if self.detection is not None and not snap.get("confirmed"):
            if self.detection.own_verdict(name, seq, vs) is None:
                await self.detection.judge_pending(name, vs, upto=seq)
                vs = self.cluster.volume_state(name) or vs
            own = self.detection.own_verdict(name, seq, vs)
            if own != "clean":
                raise SnapshotSuspectError(
                    f"{name}#{seq}: {self.site_id} judged it {own or 'not yet (judging failed)'} itself; clear it "
                    "first (replicad verdict, approved by other sites) or name an older clean snapshot",
                    volume=name, seq=seq, verdict=own, site=self.site_id)
        return manifest

    async def _pinned(self, name: str, seq: int, vs: dict) -> Manifest:
        """The manifest of the snapshot a forced promotion named (:func:`restore_pin`): fetched
        if needed and judged clean here, else the takeover fails with the same typed errors as
        :meth:`_check_restore_point` (no fallback to another snapshot: the operator chose it)."""
        if seq not in vs["snapshots"]:
            raise NotFoundError(f"{name}#{seq}, named by the forced promotion, is no longer committed",
                                volume=name, seq=seq, reason="not_committed")
        return await self._check_restore_point(name, seq, vs)

    async def become_primary(self, runner: VolumeRunner, vs: dict) -> None:
        """Granted primary at ``vs['epoch']``: restore the newest clean snapshot that can be
        restored (O5; one no holder can supply is skipped, :meth:`_restorable`), then act.
        ``runner.last_report``: ``restored_seq``, ``skipped_seqs``, ``standby_trusted``,
        ``full_rewrite``, timings. A failure is kept in ``runner.takeover_error`` (and
        ``takeover_settled`` set) for the waiting ``promote``; the volume loop retries it after
        its backoff. Raises TakeoverRestoreError (:meth:`_restore_in_place`) and the pull's errors."""
        try:
            await self._become_primary(runner, vs)
        except ReplicadError as err:
            runner.takeover_error = err
            runner.takeover_settled.set()
            raise
        runner.takeover_error = None
        runner.takeover_settled.set()

    async def _restore_in_place(self, runner: VolumeRunner, seq: int, manifest: Manifest,
                                report: dict[str, Any], progress: Any = None) -> Any:
        """Make the volume's image hold ``manifest`` and prove it (O5); returns the apply report.

        The standby record is a base (only differing pages rewritten) only if the standby was
        verified to hold it (:meth:`VolumeRunner.trusts_standby`); otherwise every block is read
        and compared. If the O5 re-read then fails (a bit flipped in the image since it was
        verified, a disk that lies), the store is what is trusted: the image is rewritten whole
        from it (:func:`apply_snapshot` ``rewrite_all``) and verified again — once. If that fails
        too: TakeoverRestoreError (logged at ERROR, counted), never a loop of O5 failures."""
        name = runner.cfg.name
        path = Path(runner.cfg.path)
        standby = self.catalog.standby(name)
        trusted = standby is not None and runner.trusts_standby(standby.root) and self.store.has(standby.root)
        base = None
        if trusted:
            base = manifest if standby.root == manifest.root else load_manifest(self.store, standby.root)
        report["standby_trusted"] = trusted
        report["full_rewrite"] = False
        applied = await self.pull.apply_repairing(name, path, manifest, base=base, progress=progress)
        try:
            await asyncio.to_thread(verify_image, path, manifest)  # O5
            return applied
        except RestoreVerifyError as err:
            first_err = err
        runner.standby_verified_root = None
        runner.standby_state = "damaged"
        if self.metrics is not None:
            self.metrics.standby_damaged(name)
        log.warning("volume %s: the restored image failed its O5 check (%s, first differing page %s; standby %s): "
                    "rewriting every block from the store", name, first_err,
                    first_err.evidence.get("first_differing_page"), "trusted" if trusted else "compared")
        await asyncio.to_thread(self.catalog.set_standby, name, None, None)
        t0 = time.monotonic()
        report["full_rewrite"] = True
        try:
            applied = await self.pull.apply_repairing(name, path, manifest, rewrite_all=True)
            await asyncio.to_thread(verify_image, path, manifest)  # O5, again
        except RestoreVerifyError as err:
            if self.metrics is not None:
                self.metrics.takeover_rewrite(name, False)
            log.error("volume %s: TAKEOVER FAILED at %s: snapshot #%d does not verify even after a full rewrite from "
                      "the store (%s); promote another site, or check this site's disk and run replicad verify",
                      name, self.site_id, seq, err)
            raise TakeoverRestoreError(
                f"{name}: snapshot #{seq} written into {path} at {self.site_id} failed its O5 check, and again after "
                "rewriting every block from the store: this site's disk or store cannot be trusted; promote another "
                "site or repair this one", volume=name, seq=seq, path=str(path),
                expected_root=err.evidence.get("expected_root"), actual_root=err.evidence.get("actual_root"),
                first_differing_page=err.evidence.get("first_differing_page")) from None
        if self.metrics is not None:
            self.metrics.takeover_rewrite(name, True)
        report["full_rewrite_s"] = time.monotonic() - t0
        log.warning("volume %s: full rewrite of #%d from the store verified (O5) in %.2fs", name, seq,
                    report["full_rewrite_s"])
        return applied

    async def _become_primary(self, runner: VolumeRunner, vs: dict) -> None:
        """:meth:`become_primary` itself."""
        name = runner.cfg.name
        t0 = time.monotonic()
        pinned = restore_pin(vs)  # the operator named the snapshot (promote --force --snapshot)
        seq = pinned if pinned is not None else newest_clean(vs)
        report: dict[str, Any] = {"epoch": vs["epoch"], "restored_seq": seq, "pinned": pinned is not None}
        inst = None  # issue 16: instant recovery (promote --instant, or one a restart left)
        if runner.role in ("fenced", "divergent"):
            # promoted before its resync finished: the restore below *is* the resync (the
            # divergent snapshots stay listed in the catalog)
            transition(runner, "resynced")
        retry = runner.role == "restoring"  # a previous restore attempt failed: resume it
        if not retry:
            transition(runner, "granted_primary")
        if seq is not None:
            if not retry:
                transition(runner, "restore_started")
            checked = self.instant.checked(name, pinned, vs) if self.instant is not None and pinned is not None \
                else None  # issue 16: promote --instant checked exactly this root moments ago
            if checked is not None:
                manifest, skipped = checked, []
            elif pinned is not None:
                manifest, skipped = await self._pinned(name, pinned, vs), []
            else:
                seq, manifest, skipped = await self._restorable(name, vs)
            report.update(restored_seq=seq, skipped_seqs=skipped)
            t_fetched = time.monotonic()
            if self.instant is not None and await asyncio.to_thread(  # reads, may rewrite (fsync) the record
                    self.instant.wanted, name, vs["epoch"], seq, manifest.root):
                inst = await self.instant.serve(name, vs["epoch"], seq, manifest, Path(runner.cfg.path))
            try:
                if inst is not None and inst.phase == "done":
                    applied = None  # switched over before a restart: the image holds snapshot + writes
                else:
                    if inst is not None:
                        await asyncio.to_thread(self.catalog.set_standby, name, None, None)  # the image is in flux
                        runner.standby_verified_root = None
                    applied = await self._restore_in_place(runner, seq, manifest, report,
                                                           progress=self.instant.progress(inst) if inst else None)
                    if inst is not None:
                        report["instant_overlay_blocks"] = await self.instant.switch_over(inst, Path(runner.cfg.path))
            except Exception as err:
                if inst is not None:
                    self.instant.failed(name, err)  # the export keeps serving; the takeover is retried
                raise
            t_applied = time.monotonic()
            if inst is None or (applied is not None and not report.get("instant_overlay_blocks")):
                await asyncio.to_thread(self.catalog.set_standby, name, seq, manifest.root)
                runner.standby_proven(manifest.root, time.time_ns())  # O5 re-read the whole image
            runner.parent = manifest
            report.update(blocks_written=applied.blocks_written if applied else 0,
                          bytes_written=applied.bytes_written if applied else 0,
                          phases={"fetch_s": t_fetched - t0, "write_s": t_applied - t_fetched,
                                  "verify_s": time.monotonic() - t_applied})
            if inst is not None:
                report["instant"] = inst.to_dict()
        else:
            runner.parent = None
        runner.acting_epoch = vs["epoch"]
        await asyncio.to_thread(self.catalog.set_acting_epoch, name, vs["epoch"])
        if seq is not None and report.get("instant") is not None:
            await self.instant.finish(inst)  # the acting epoch is durable: the record may go
        runner.fence_flag.clear()
        if runner.role == "restoring":
            transition(runner, "restore_done")  # O5: the root matched
        report["rto_s"] = time.monotonic() - t0
        stalled = self.pull.recent_stalls(since=t0)
        if stalled:  # the restore went on without them (the progress rule)
            report["stalled_holders"] = stalled
            log.warning("volume %s: the takeover's restore did without holder(s) %s: they stalled its fetches", name,
                        ", ".join(sorted(stalled)))
        runner.last_report = report
        runner.last_cycle_at = time.monotonic()  # the restored snapshot is committed: next one in an interval
        runner.became_primary.set()
        log.info("site %s is primary of %s at epoch %d (%s)", self.site_id, name, vs["epoch"],
                 f"restored snapshot #{seq}, root verified, in {report['rto_s']:.2f}s" if seq is not None
                 else "no committed snapshot yet: producing from the volume as it is")

    async def fence(self, runner: VolumeRunner, vs: dict) -> None:
        """O3: stop producing, keep uncommitted work as a divergent branch, resync as replica."""
        name = runner.cfg.name
        old_epoch = runner.acting_epoch
        runner.fence_flag.set()
        if self.instant is not None:
            await self.instant.fenced(name)  # issue 16: an instant export stops serving a volume not ours
        if runner.role in ("primary", "restoring"):
            transition(runner, "epoch_advanced_elsewhere")  # O3
        log.warning("site %s fenced for %s: acting epoch %s, committed epoch %d (primary %s)", self.site_id, name,
                    old_epoch, vs["epoch"], vs["primary"])
        committed_roots = {s["root"] for s in vs["snapshots"].values()}
        divergent = []
        for rec in self.catalog.list(name, "local"):
            if rec.root not in committed_roots:
                await asyncio.to_thread(self.catalog.set_state, name, rec.epoch, rec.seq, "divergent")
                divergent.append(rec.seq)
        # Capture what the image holds now, for forensics, if it differs from what is committed.
        if old_epoch is not None and Path(runner.cfg.path).exists():
            parent = runner.parent
            if parent is None:
                ours = [q for q, snap in vs["snapshots"].items() if snap["epoch"] == old_epoch
                        and self.store.has(snap["root"])]
                parent = load_manifest(self.store, vs["snapshots"][max(ours)]["root"]) if ours else None
            seq = max((r.seq for r in self.catalog.list(name) if r.epoch == old_epoch), default=0) + 1
            async with self._scan_slots:
                res = await take_snapshot(Path(runner.cfg.path), volume=name, seq=seq, epoch=old_epoch,
                                          parent=parent, store=self.store, now_ns=time.time_ns(),
                                          block_size=runner.cfg.block_size_bytes,
                                          allow_shrink=True)  # forensics: whatever the image holds
            if res.changed_blocks or parent is None or parent.root not in committed_roots:
                await asyncio.to_thread(self.catalog.put, SnapshotRecord(
                    name, old_epoch, seq, res.manifest.root, "divergent", res.manifest.created_at_ns))
                divergent.append(seq)
            # the image is exactly this now (the scan read every block of it)
            await asyncio.to_thread(self.catalog.set_standby, name, seq, res.manifest.root)
            runner.standby_proven(res.manifest.root, time.time_ns())
        if divergent and runner.role == "fenced":
            transition(runner, "found_uncommitted_snapshots")
            log.warning("volume %s: kept divergent snapshots %s of epoch %s (never shipped)", name, divergent,
                        old_epoch)
        runner.acting_epoch = None
        await asyncio.to_thread(self.catalog.set_acting_epoch, name, None)
        runner.parent = None
        runner.became_primary.clear()
        runner.fence_flag.clear()
        if runner.role == "fenced" and not divergent:
            transition(runner, "resynced")  # nothing diverged: the image is committed content

    async def promote(self, volume: str, to: str | None, force: bool, wait_s: float = 120.0,
                      snapshot: int | None = None, instant: bool = False) -> dict:
        """Planned switchover (``to``, run at the current primary) or forced failover (at ``to``).

        ``snapshot`` (forced only): restore that committed snapshot, not the newest clean one
        (the operator found the newer ones bad). Checked here before anything is proposed
        (:meth:`_check_restore_point`: committed, held, fetched complete, clean in Raft and in
        this site's own opinion unless a person confirmed it) and again by the state machine;
        the promote command carries it, so the takeover restores it even after a restart.
        NotFoundError / SnapshotSuspectError when it cannot be the restore point.

        ``instant`` (forced only, issue 16): the restore point (``snapshot``, else the newest
        clean one this site does not hold back, :func:`newest_usable_here`) is pinned like
        ``snapshot``, and the call returns as soon as the new primary serves it as a writable
        NBD export (:mod:`replicad.site.instant`), with ``instant`` (its state: socket, uri,
        phase) in the answer, while the image is written in the background; UsageError without
        ``force``, NotFoundError without a clean snapshot. The forced promotion says ``instant``
        to the state, which then holds the volume for this site until its first commit at the new
        epoch: another site's forced role change is a request others approve
        (:func:`~replicad.core.state.instant_recovery`). A plain forced promotion of a site that
        left an instant recovery pending (fenced before its switch-over, its overlay kept:
        :meth:`InstantRecovery.pending`) continues it: it is instant on that record's snapshot (an
        operator who wants the snapshot without those writes moves ``<data_dir>/instant/VOL``
        aside first).

        A forced promotion refused by the epoch-change or the instant-recovery rule is filed as a
        request (ApprovalRequiredError naming it, :meth:`_epoch_request`).

        Raises NoQuorumError when this site cannot reach a majority (a minority partition
        cannot promote), StaleEpochError if the epoch moved meanwhile, NotPrimaryError for a
        planned switchover at a non-primary (also when the volume has no primary: its message
        says to run ``replicad promote VOL --force`` at the site to promote), ConflictError
        otherwise.
        """
        runner = runner_of(self.runners, volume, self.site_id)
        await self.cluster.wait_synced()
        vs = self.cluster.volume_state(volume)
        if vs is None:
            raise NotFoundError(f"unknown volume {volume}", volume=volume)
        target = to or self.site_id
        t0 = time.monotonic()
        t0_ns = time.time_ns()  # issue 16: the instant recovery's timings count from here
        named = snapshot is not None  # the operator named the restore point (an instant one picks the newest clean)
        if snapshot is not None and not force:
            raise UsageError("only a forced promotion names the snapshot to restore (--force --snapshot SEQ); a "
                             "planned switchover hands over the newest one", volume=volume, snapshot=snapshot)
        if instant:
            if not force:
                raise UsageError("instant recovery is a forced promotion (--force --instant): a planned switchover "
                                 "hands over a primary whose image is already current", volume=volume)
            if self.instant is None:
                raise UsageError("instant recovery is not available here", volume=volume)
            if snapshot is None:
                snapshot, held = newest_usable_here(volume, vs, self.site_id, self.detection)
                if snapshot is None:
                    raise NotFoundError(f"{volume} has no clean committed snapshot to serve"
                                        f"{f' (held back here: {held})' if held else ''}", volume=volume,
                                        held_here=held)
        continuing = False  # a pending instant recovery of this site that this promotion continues
        if force and not instant and snapshot is None and self.instant is not None:
            pending = await asyncio.to_thread(self.instant.pending, volume, self.cluster.view())
            if pending is not None and pending in vs["snapshots"]:
                snapshot, instant, continuing = pending, True, True
        if force:
            if target != self.site_id:
                raise UsageError("a forced promotion is run at the site to promote (omit --to)", volume=volume)
            # one forced promotion of a volume at a time here: a second one (an operator's retry
            # while the first waits for quorum or restores) waits, then sees the first's grant
            lock = self._forcing.setdefault(volume, asyncio.Lock())
            async with lock:
                vs = self.cluster.volume_state(volume) or vs
                self._refuse_second_takeover(runner, volume, vs)
                res = await self._propose_forced(runner, volume, target, vs, snapshot, instant, t0_ns, named,
                                                 continuing)
                instant = res.get("instant") is True
        else:
            if vs["primary"] is None:  # demoted: nobody hands it over; a forced promotion at the target does
                raise NotPrimaryError(
                    f"{volume} has no primary (demoted, epoch {vs['epoch']}): a planned switchover needs one to hand "
                    f"it over. Run 'replicad promote {volume} --force' AT the site to promote"
                    f"{f' ({to}, e.g. with --admin its admin URL)' if to else ''}: it takes the volume over from "
                    "its newest clean snapshot", volume=volume, primary=None, to=to,
                    hint=f"replicad promote {volume} --force")
            if vs["primary"] != self.site_id:
                raise NotPrimaryError(f"a planned switchover runs at the primary ({vs['primary']})", volume=volume,
                                      primary=vs["primary"])
            if target == self.site_id:  # nothing to hand over: the site named already serves the volume
                raise ConflictError(
                    f"{target} is already the primary of {volume} (epoch {vs['epoch']}): nothing to switch over; "
                    f"to hand it to another site, run 'replicad promote {volume} --to SITE' naming that site",
                    volume=volume, primary=vs["primary"], epoch=vs["epoch"], to=target)
            async with runner.lock:
                final = await self.replication.cycle(runner)  # final snapshot: no data lost
                if not final.get("committed"):
                    raise NoQuorumError("final snapshot could not be committed; switchover aborted", volume=volume)
                if final.get("verdict") == "suspect":
                    # the new primary would serve the newest CLEAN snapshot: everything after it would
                    # leave service silently, so a planned switchover refuses instead
                    vs = self.cluster.volume_state(volume) or vs
                    clean = newest_clean(vs)
                    newer = sorted(s for s in vs["snapshots"] if clean is None or s > clean)
                    raise ConflictError(
                        f"the final snapshot #{final['seq']} of {volume} is suspect: {target} would restore "
                        f"{'#' + str(clean) if clean is not None else 'nothing clean'} and {len(newer)} newer "
                        f"snapshot(s) would not be in service. Review it and clear the verdict (replicad verdict, "
                        f"approved by other sites), or roll back on purpose with 'replicad promote {volume} --force' "
                        f"at {target}", volume=volume, final_seq=final["seq"], newest_clean=clean,
                        newer_suspect=newer)
                res = await self.cluster.propose("promote", volume=volume, to=target, expected_epoch=vs["epoch"],
                                                 force=False)
                await self._step_down(runner)
            return {"volume": volume, "primary": target, "epoch": res.get("epoch"), "final_seq": final["seq"],
                    "elapsed_s": time.monotonic() - t0}
        runner.wake.set()
        if instant:
            return await self._await_instant(runner, volume, target, res, t0, wait_s)
        try:
            await asyncio.wait_for(runner.takeover_settled.wait(), wait_s)
        except asyncio.TimeoutError:
            raise self._not_in_time(runner, volume, t0) from None
        if not runner.became_primary.is_set() and isinstance(runner.takeover_error,
                                                              (TakeoverRestoreError, SnapshotSuspectError)):
            raise runner.takeover_error  # typed, at once: this site cannot serve the volume (or that snapshot)
        if not runner.became_primary.is_set():
            try:  # a transient failure (a holder unreachable ...): the loop retries after its backoff
                await asyncio.wait_for(runner.became_primary.wait(), max(0.0, wait_s - (time.monotonic() - t0)))
            except asyncio.TimeoutError:
                raise self._not_in_time(runner, volume, t0) from None
        return {"volume": volume, "primary": target, "epoch": res.get("epoch"),
                "restored_seq": runner.last_report.get("restored_seq"),
                "rto_s": time.monotonic() - t0, "restore": runner.last_report}

    def _not_in_time(self, runner: VolumeRunner, volume: str, t0: float) -> ConflictError:
        """The ConflictError of a promotion whose restore did not finish within its wait: names
        the holders that stalled a fetch since the promotion began (monotonic ``t0``; the
        progress rule of :class:`~replicad.peer.transport.FetchProgress`) and the takeover's
        last error, also logged at WARNING (the restore goes on in the background)."""
        stalled = self.pull.recent_stalls(since=t0)
        why = "; ".join(f"holder {h} stalled: {m}" for h, m in sorted(stalled.items()))
        msg = "promotion granted but the restore did not finish in time" + (f" ({why})" if why else "") + \
            (f"; last error: {runner.last_error}" if runner.last_error else "")
        log.warning("volume %s: %s; the restore goes on", volume, msg)
        return ConflictError(msg, volume=volume, last_error=runner.last_error, stalled_holders=stalled)

    def _refuse_second_takeover(self, runner: VolumeRunner, volume: str, vs: dict) -> None:
        """A forced promotion of this site while Raft already names it the primary of
        ``volume`` at ``vs['epoch']``: ConflictError when it acts at that epoch, when its
        takeover is under way (no failure recorded: a second grant would fence the first and
        start over — an operator's retried ``promote --force --instant`` tore down the export
        the first had just opened), or when an instant export serves the volume at that epoch.
        A takeover that failed (``runner.takeover_error``) may be forced again, e.g. with
        another ``--snapshot``."""
        if vs["primary"] != self.site_id:
            return
        if runner.acting_epoch == vs["epoch"]:
            raise ConflictError(f"{self.site_id} is already the primary of {volume}", volume=volume)
        inst = self.instant.state(volume) if self.instant is not None else None
        serving = inst is not None and inst.get("epoch") == vs["epoch"] and inst.get("phase") not in ("fenced",
                                                                                                       "released")
        if serving or runner.takeover_error is None:
            what = (f"its instant export serves it ({inst.get('phase')}, {inst.get('socket')})" if serving
                    else "its takeover is under way")
            raise ConflictError(
                f"{self.site_id} is already the primary of {volume} at epoch {vs['epoch']}: {what}; follow it with "
                f"'replicad status'. A second forced promotion would fence the first and start it over",
                volume=volume, epoch=vs["epoch"], instant=inst)

    async def _propose_forced(self, runner: VolumeRunner, volume: str, target: str, vs: dict, snapshot: int | None,
                              instant: bool, t0_ns: int, named: bool, continuing: bool = False) -> dict:
        """Check the restore point (``snapshot``: ``named`` by the operator, or the newest clean
        one an instant recovery serves), register an instant request, propose
        the forced ``promote`` (with ``instant``: the state then holds the volume for this site
        until its first commit at the new epoch, :func:`replicad.core.state.instant_recovery`) and
        return its result; an instant request is withdrawn when the proposal fails. ``continuing``:
        the instant recovery is the pending one of this site's record (:meth:`InstantRecovery.pending`),
        not the operator's choice: a restore point that cannot serve any more makes this an
        ordinary forced promotion (the takeover sets the record aside). Runs under the volume's
        forcing lock (:meth:`promote`)."""
        extra: dict[str, Any] = {}
        checked: Manifest | None = None
        if snapshot is not None:
            try:
                checked = await self._check_restore_point(volume, snapshot, vs)
            except (NotFoundError, SnapshotSuspectError) as err:
                if not continuing:
                    raise
                log.warning("volume %s: the pending instant recovery of #%d at %s cannot continue (%s): an ordinary "
                            "forced promotion; its record is set aside at the takeover", volume, snapshot,
                            self.site_id, err)
                snapshot, instant = None, False
        if snapshot is not None:
            extra["snapshot"] = snapshot
            if instant:
                extra["instant"] = True
            vs = self.cluster.volume_state(volume) or vs
            log.warning("AUDIT volume %s: forced promotion at %s will restore #%d %s (newest clean: #%s)", volume,
                        self.site_id, snapshot, "named by the operator" if named else
                        "continuing its pending instant recovery" if continuing else "for instant recovery",
                        newest_clean(vs))
        runner.became_primary.clear()
        runner.takeover_settled.clear()  # before the proposal: the takeover may run as soon as it applies
        if instant and checked is not None:
            self.instant.request(volume, snapshot, checked, t0_ns)  # the takeover that follows serves it at once
        args = {"volume": volume, "to": target, "expected_epoch": vs["epoch"], "force": True, **extra}
        try:
            try:
                res = await self.cluster.propose("promote", **args)
            except ApprovalRequiredError as err:
                await self._epoch_request("promote", args, err)
        except BaseException:
            if instant:
                self.instant.withdraw(volume)
            raise
        return res

    async def _epoch_request(self, op: str, args: dict, err: ApprovalRequiredError) -> None:
        """``op`` (a forced ``promote`` or ``demote`` with ``args``) was refused by the
        epoch-change rule (evidence ``refusal`` ``epoch_rate``: this site's second forced
        role change of the volume within the hour, :func:`replicad.core.state._check_epoch_rate`)
        or by the instant-recovery rule (``instant_recovery``: the primary serves an instant
        recovery whose writes are at that site only, :func:`replicad.core.state.instant_recovery`):
        file it as a request other sites approve (it applies at the approval, no cooling-off),
        log it at WARNING and raise ApprovalRequiredError naming the request (evidence
        ``refusal``: which rule). Any other ``approval_required`` is raised as it came. Raises what
        proposing the request raises."""
        refusal = (err.evidence or {}).get("refusal")
        if refusal not in ("epoch_rate", "instant_recovery"):
            raise err
        volume = args["volume"]
        if refusal == "instant_recovery":
            why = (f"{err.evidence.get('primary')} serves an instant recovery of {volume} "
                   f"(#{err.evidence.get('seq')}): the application's writes since are in its overlay only, and this "
                   "would take the volume from it")
        else:
            why = f"{self.site_id}'s second role change of the volume within the hour"
        res = await self.cluster.propose("request", action=op, args=args,
                                         reason=f"{op} of {volume} at {self.site_id}: {why} ({err})")
        req = res.get("request")
        rule = "the instant-recovery rule" if refusal == "instant_recovery" else "the epoch-change rule"
        log.warning("AUDIT volume %s: forced %s at %s refused by %s (%s); requested as %s: an operator of another "
                    "site approves it there with: replicad approve %s", volume, op, self.site_id, rule, err, req, req)
        raise ApprovalRequiredError(
            f"{why}: this forced {op} is request {req}; it applies as soon as an operator of another site runs "
            f"'replicad approve {req}' there" + (
                f", and then this site takes {volume} over by itself (restores and verifies its image; no command "
                f"to run again here): start the application only once 'replicad status' here shows {volume} "
                f"primary" if op == "promote" else ""), volume=volume, request=req, status=res.get("status"),
            needed=res.get("needed"), refusal=refusal, hint=f"replicad approve {req} (at another site)")

    async def _await_instant(self, runner: VolumeRunner, volume: str, target: str, res: dict, t0: float,
                             wait_s: float) -> dict:
        """``promote --instant`` after the grant: answer once the instant export serves (or the
        takeover failed before it could: its typed error; or it finished outright). Raises
        ConflictError when neither happened within ``wait_s``."""
        serving = asyncio.ensure_future(self.instant.wait_serving(volume))
        settled = asyncio.ensure_future(runner.takeover_settled.wait())
        try:
            await asyncio.wait({serving, settled}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            serving.cancel()
            settled.cancel()
        st = self.instant.state(volume)
        if st is None or st["epoch"] != res.get("epoch"):
            if runner.takeover_settled.is_set() and runner.takeover_error is not None:
                raise runner.takeover_error
            raise ConflictError("promotion granted but the instant export did not start in time", volume=volume,
                                last_error=runner.last_error)
        return {"volume": volume, "primary": target, "epoch": res.get("epoch"), "restored_seq": st["seq"],
                "rto_s": time.monotonic() - t0, "instant": st, "restore": {"pinned": True}}

    async def _step_down(self, runner: VolumeRunner) -> None:
        """This site gave its epoch up itself (planned switchover, demote): nothing diverged."""
        runner.acting_epoch = None
        await asyncio.to_thread(self.catalog.set_acting_epoch, runner.cfg.name, None)
        runner.parent = None
        runner.became_primary.clear()
        if runner.role in ("primary", "restoring"):
            transition(runner, "demoted")
        runner.fence_flag.clear()

    async def demote(self, volume: str) -> dict:
        """Leave the volume without a primary (epoch + 1). Returns ``{volume, epoch,
        final_seq, final_committed, divergent}``.

        At the primary nothing the application wrote is lost (issue 13): under the volume's
        lock (no tick can rewrite the image meanwhile) it first takes a final snapshot and
        commits it, like a planned switchover. If that snapshot cannot be committed (too few
        copies, a failed ship or scan), the demote still goes ahead, and then the fencing path
        keeps every uncommitted snapshot and the live image itself as divergent snapshots
        (restorable here with ``divergent_epoch``) before the standby apply may rewrite it.
        At another data site it is a forced demote (the primary fences itself when it learns
        the new epoch, O3, and keeps its image the same way).

        Raises NotFoundError (unknown volume), NoQuorumError (the demote itself could not be
        committed: nothing changed, this site stays primary), StaleEpochError (the epoch moved).
        """
        await self.cluster.wait_synced()
        vs = self.cluster.volume_state(volume)
        if vs is None:
            raise NotFoundError(f"unknown volume {volume}", volume=volume)
        runner = self.runners.get(volume)
        if vs["primary"] != self.site_id or runner is None:
            args = {"volume": volume, "expected_epoch": vs["epoch"], "force": True}
            try:
                res = await self.cluster.propose("demote", **args)
            except ApprovalRequiredError as err:
                await self._epoch_request("demote", args, err)
            return {"volume": volume, "epoch": res.get("epoch")}
        async with runner.lock:
            final: dict = {}
            if runner.acting_epoch == vs["epoch"]:
                try:
                    final = await self.replication.cycle(runner)  # final snapshot: no write lost
                except NoQuorumError:
                    raise  # the demote could not commit either: nothing changed, still primary
                except ReplicadError as err:
                    final = {"committed": False, "error": f"{err.code}: {err}"}
                    log.warning("volume %s: the final snapshot before demote failed (%s); the image will be "
                                "kept as a divergent snapshot", volume, err)
            res = await self.cluster.propose("demote", volume=volume, expected_epoch=vs["epoch"])
            divergent: list[int] = []
            if final.get("committed") or runner.acting_epoch is None:
                await self._step_down(runner)
            else:
                # O3 path: uncommitted snapshots and the live image become divergent before any
                # rewrite (the fencing path does exactly this for a primary deposed elsewhere).
                vs_after = self.cluster.volume_state(volume) or vs
                await self.fence(runner, {**vs_after, "primary": vs_after.get("primary"), "epoch": res.get("epoch")})
                divergent = [r.seq for r in self.catalog.list(volume, "divergent") if r.epoch == vs["epoch"]]
                log.warning("volume %s demoted at epoch %d without a committed final snapshot: kept divergent "
                            "snapshots %s of epoch %d (restore with divergent_epoch)", volume, res.get("epoch"),
                            divergent, vs["epoch"])
        return {"volume": volume, "epoch": res.get("epoch"), "final_seq": final.get("seq"),
                "final_committed": bool(final.get("committed")), "divergent": divergent}


def _seqs_text(seqs: Any, newest: int = 5) -> str:
    """Committed sequence numbers for an error message, bounded whatever their number: their
    count and range, and the ``newest`` highest (``committed: 11 snapshots, #1 to #11; the newest
    #7, #8, #9, #10, #11``); ``no committed snapshot`` when there is none."""
    ordered = sorted(seqs)
    if not ordered:
        return "no committed snapshot"
    if len(ordered) <= newest:
        return "committed: " + ", ".join(f"#{s}" for s in ordered)
    return (f"committed: {len(ordered)} snapshots, #{ordered[0]} to #{ordered[-1]}; the newest "
            + ", ".join(f"#{s}" for s in ordered[-newest:]))
