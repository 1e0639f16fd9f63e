"""The loop of each volume: every tick (``TICK_S``, or when woken) it does what the volume's
role asks — fence if Raft shows a newer epoch (O3), take over when granted primary, run a
replication cycle when due, or, as a replica, hold the newest committed and clean snapshots
and apply the newest clean one to the standby after ``apply_delay`` (never a suspect one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from replicad.core.errors import ConflictError, NotPrimaryError, ReplicadError, is_transient
from replicad.core.state import newest_clean, newest_committed
from replicad.site.cluster import Cluster
from replicad.site.promotion import Promotion
from replicad.site.pull import Pull
from replicad.site.replication import Replication
from replicad.site.runner import VolumeRunner, load_manifest, runner_of, transition
from replicad.storage.catalog import Catalog
from replicad.storage.chunkstore import ChunkStore
from replicad.telemetry.metrics import SiteMetrics

log = logging.getLogger("replicad.site.volumes")

TICK_S = 0.5


class VolumeLoop:
    """Runs each volume's role, one tick at a time; also the operator's "snapshot now".

    Args:
        cluster: Raft view and proposals.
        store, catalog: this site's chunk store and snapshot catalog.
        runners: the site's volume runners (by volume name).
        pull, replication, promotion: the rooms a tick calls.
        metrics: the site's metrics (failed cycles).
    """

    def __init__(self, cluster: Cluster, store: ChunkStore, catalog: Catalog, runners: dict[str, VolumeRunner],
                 pull: Pull, replication: Replication, promotion: Promotion, metrics: SiteMetrics) -> None:
        self.site_id = cluster.site_id
        self.cluster = cluster
        self.store = store
        self.catalog = catalog
        self.runners = runners
        self.pull = pull
        self.replication = replication
        self.promotion = promotion
        self.metrics = metrics

    async def run_volume(self, runner: VolumeRunner) -> None:
        """Run ``runner``'s volume until cancelled; an error is logged, kept in
        ``runner.last_error`` and retried after an exponential backoff with jitter
        (``runner.retry``, :mod:`replicad.core.backoff`: 0.5-1 s, then doubling up to 150-300 s),
        not at the next tick: a runner survives its own bugs without flooding the log. A fence
        to do (O3), a new epoch or an operator's "snapshot now" does not wait for the backoff."""
        name = runner.cfg.name
        while True:
            try:
                if self._due(runner):
                    async with runner.lock:
                        worked = await self._step(runner)
                    if worked:  # an idle tick proves nothing: the last failure stays visible in status
                        runner.last_error = None
                        runner.retry.succeeded()
                        runner.retry_at = 0.0
            except asyncio.CancelledError:
                raise
            except ReplicadError as err:
                runner.last_error = f"{err.code}: {err}"
                if runner.role == "primary":
                    self.metrics.cycle_failed(name)
                delay = self._backoff(runner)
                (log.info if is_transient(err) else log.warning)(
                    "volume %s: %s %s (failure %d in a row; next try in %.1fs)", name, err, err.evidence,
                    runner.retry.failures, delay)
            except Exception as err:  # noqa: BLE001 — a runner must survive its own bugs, loudly
                runner.last_error = f"internal: {err!r}"
                delay = self._backoff(runner)
                log.exception("volume %s: unexpected error (failure %d in a row; next try in %.1fs)", name,
                              runner.retry.failures, delay)
            runner.wake.clear()
            try:
                await asyncio.wait_for(runner.wake.wait(), TICK_S)
            except asyncio.TimeoutError:
                pass

    def _backoff(self, runner: VolumeRunner) -> float:
        """Record a failed tick of ``runner``; returns the seconds until the next try."""
        vs = self.cluster.volume_state(runner.cfg.name)
        runner.retry_epoch = vs["epoch"] if vs else None
        delay = runner.retry.failed()
        runner.retry_at = time.monotonic() + delay
        return delay

    def _due(self, runner: VolumeRunner) -> bool:
        """Whether this tick may run ``runner``'s step: no failure pending, its backoff over, or
        something that must not wait (a fence flag, O3; an epoch other than the failures'; an
        operator's snapshot now) — that also resets the backoff."""
        if not runner.retry.failures or time.monotonic() >= runner.retry_at:
            return True
        vs = self.cluster.volume_state(runner.cfg.name)
        if runner.fence_flag.is_set() or runner.snapshot_now or (vs is not None and vs["epoch"] != runner.retry_epoch):
            runner.retry.succeeded()
            runner.retry_at = 0.0
            return True
        return False

    async def _step(self, runner: VolumeRunner) -> bool:
        """One tick of the volume's role; True if it did work that succeeded (a cycle, a
        fence, a takeover, a replica step), False for an idle tick."""
        vs = self.cluster.volume_state(runner.cfg.name)
        if vs is None:
            return False
        # A stale view (restart, cut off from the majority) can only show an older epoch than the
        # truth: fencing on it is safe, and so is going on producing under the epoch this site
        # already acts under (nothing commits without a majority; uncommitted snapshots become
        # divergent). Taking a role over on it is not.
        if runner.fence_flag.is_set() or (runner.acting_epoch is not None and
                                          (vs["primary"] != self.site_id or vs["epoch"] > runner.acting_epoch)):
            await self.promotion.fence(runner, vs)
            return True
        if vs["primary"] == self.site_id:
            worked = False
            if runner.acting_epoch != vs["epoch"]:
                if not self.cluster.raft_synced():
                    return False  # never become primary on a stale view (chaos crash-all seeds 2, 3)
                await self.promotion.become_primary(runner, vs)
                worked = True
            due = time.monotonic() - runner.last_cycle_at >= runner.cfg.interval_s
            if due or runner.snapshot_now:
                runner.snapshot_now = False
                await self.replication.cycle(runner)
                worked = True
            return worked
        await self._replica_step(runner, vs)
        return True

    async def _replica_step(self, runner: VolumeRunner, vs: dict) -> None:
        """Replica tick: hold the newest committed and newest clean snapshots (and say so
        through Raft, ``add_holder``), then bring the standby to the newest clean one."""
        name = runner.cfg.name
        for seq in {newest_committed(vs), newest_clean(vs)} - {None}:
            snap = vs["snapshots"][seq]
            if self.site_id not in snap["holders"]:
                await self.pull.ensure_snapshot(name, seq, vs)
                try:
                    await self.cluster.propose("add_holder", volume=name, seq=seq, site_id=self.site_id)
                except ConflictError as err:
                    log.info("add_holder %s#%d refused: %s", name, seq, err)
        target = newest_clean(vs)
        if target is None or not runner.cfg.standby:
            return
        snap = vs["snapshots"][target]
        standby = self.catalog.standby(name)
        if standby is not None and standby.root == snap["root"]:
            if runner.role == "divergent":
                transition(runner, "resynced")
            return
        if time.time_ns() - snap["created_at_ns"] < runner.cfg.apply_delay_s * 1e9:
            return
        manifest = await self.pull.ensure_snapshot(name, target, vs)
        # The standby record is believed only as far as it was verified (site/standby.py): an
        # unverified one (after a restart, or one a check found lying) is not a base, so the image
        # is read and compared block by block instead of trusting "the image holds #N".
        trusted = standby is not None and runner.trusts_standby(standby.root) and self.store.has(standby.root)
        base = load_manifest(self.store, standby.root) if trusted else None
        # unknown while rewriting (crash-safe: a restart compares the image block by block)
        await asyncio.to_thread(self.catalog.set_standby, name, None, None)
        runner.standby_verified_root = None
        runner.standby_applying = True
        try:
            rep = await self.pull.apply_repairing(name, Path(runner.cfg.path), manifest, base=base)
            await asyncio.to_thread(self.catalog.set_standby, name, target, manifest.root)
        finally:
            runner.standby_applying = False
        # a verified image plus our own fsynced writes, or every block compared: proven as far as a read goes
        runner.standby_proven(manifest.root, time.time_ns())
        if runner.role == "divergent":
            transition(runner, "resynced")  # resynced from the newest common snapshot
        log.info("standby %s now at #%d (%d blocks rewritten, %s)", name, target, rep.blocks_written,
                 "over a verified standby" if trusted else "every block compared: the standby record was not verified")

    async def snapshot_now(self, volume: str) -> dict:
        """Take, ship and commit a snapshot right now (primary only)."""
        runner = runner_of(self.runners, volume, self.site_id)
        async with runner.lock:
            vs = self.cluster.volume_state(volume)
            if (vs is not None and vs["primary"] == self.site_id and runner.acting_epoch != vs["epoch"]
                    and not runner.fence_flag.is_set() and runner.acting_epoch is None):
                await self.cluster.wait_synced()  # never become primary on a stale view
                vs = self.cluster.volume_state(volume)
                if vs is not None and vs["primary"] == self.site_id and runner.acting_epoch != vs["epoch"]:
                    await self.promotion.become_primary(runner, vs)
            if vs is None or vs["primary"] != self.site_id or runner.acting_epoch != vs["epoch"]:
                raise NotPrimaryError(f"{self.site_id} is not the primary of {volume}", volume=volume,
                                      primary=vs["primary"] if vs else None)
            return await self.replication.cycle(runner)
