"""Standby checks: a replica's standby image is read back and compared with the snapshot its
standby record names — in bounded steps on a schedule (``[scrub] standby_every`` /
``standby_bytes``), and whole on ``replicad verify``. A damaged standby is reported (status
``standby.state``, ``replicad_standby_damage_found_total``, WARNING) and repaired from this site's
store (every block compared and the differing ones rewritten, then the O5 re-read).

Why: the chunk checks of ``verify`` never read the standby, and the standby apply and an
in-place promotion trust the standby record ("the image holds snapshot N") to skip unchanged
pages. A flipped bit in the image was seen by nobody until a promotion failed its O5 check.
The trust rule lives on the runner (:meth:`~replicad.site.runner.VolumeRunner.trusts_standby`):
a record is believed only for a root a complete read proved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replicad.config import ScrubConfig
from replicad.core.errors import ReplicadError
from replicad.core.manifest import Manifest
from replicad.site.cluster import Cluster
from replicad.site.pull import Pull
from replicad.site.runner import VolumeRunner, load_manifest, runner_of
from replicad.storage.catalog import Catalog
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.image import check_image_range, verify_image
from replicad.telemetry.metrics import SiteMetrics

log = logging.getLogger("replicad.site.standby")

_REPLICA_ROLES = ("replica", "fenced", "divergent")  # roles in which the volume path is a standby


class StandbyCheck:
    """Checks and repairs of this site's standby images.

    Args:
        cluster: the site's Raft handle (site id).
        store, catalog: this site's chunk store and catalog (the standby record).
        runners: the site's volume runners (their locks and standby trust).
        pull: rewrites a damaged standby, healing corrupt chunks on the way.
        scrub: returns the ``[scrub]`` config (a callable: a reload is seen).
        metrics: the site's metrics.
    """

    def __init__(self, cluster: Cluster, store: ChunkStore, catalog: Catalog, runners: dict[str, VolumeRunner],
                 pull: Pull, scrub: Callable[[], ScrubConfig], metrics: SiteMetrics) -> None:
        self.site_id = cluster.site_id
        self.store = store
        self.catalog = catalog
        self.runners = runners
        self.pull = pull
        self.scrub = scrub
        self.metrics = metrics

    async def loop(self) -> None:
        """Every ``standby_every``: one bounded step (:meth:`step`) per volume; a failed step is
        logged at WARNING and the volume tried again at the next pass. ``standby_every = 0``:
        the loop only waits (re-reading the config each minute)."""
        while True:
            every_s = self.scrub().standby_every_s
            await asyncio.sleep(every_s if every_s > 0 else 60.0)
            if every_s <= 0:
                continue
            for runner in list(self.runners.values()):
                try:
                    await self.step(runner)
                except ReplicadError as err:
                    log.warning("standby check of %s at %s failed: %s %s", runner.cfg.name, self.site_id, err,
                                err.evidence)

    def _standby_of(self, runner: VolumeRunner) -> tuple[Any, Manifest] | None:
        """``(standby record, its manifest)`` when the volume path is a standby with a known
        snapshot here; else None (primary, standby off, applying, unknown record)."""
        if not runner.cfg.standby or runner.role not in _REPLICA_ROLES or runner.standby_applying:
            return None
        rec = self.catalog.standby(runner.cfg.name)
        if rec is None or rec.seq is None or not self.store.has(rec.root):
            return None
        return rec, load_manifest(self.store, rec.root)

    async def step(self, runner: VolumeRunner, max_bytes: int | None = None) -> dict | None:
        """Read the next ``max_bytes`` (default ``standby_bytes``) of ``runner``'s standby, under
        the volume's lock, from where the last step stopped; a new standby root starts over
        at block 0. When a step ends the image, the standby is verified (trusted again).

        Returns ``{volume, seq, first_block, next_block, blocks, bytes_read, bad_blocks,
        state, repaired}`` or None when there is no standby to check. Raises the typed errors
        of the read (UsageError, NotFoundError ...) and of a failed repair."""
        async with runner.lock:
            found = self._standby_of(runner)
            if found is None:
                return None
            rec, manifest = found
            if runner.standby_check_root != rec.root:
                runner.standby_check_root, runner.standby_check_block = rec.root, 0
            budget = max_bytes if max_bytes is not None else self.scrub().standby_bytes
            t0 = time.monotonic()
            res = await asyncio.to_thread(check_image_range, Path(runner.cfg.path), manifest, self.store,
                                          runner.standby_check_block, budget)
            self.metrics.standby_checked(runner.cfg.name, res.bytes_read)
            report: dict[str, Any] = {"volume": runner.cfg.name, "seq": rec.seq, "first_block": res.first_block,
                                      "next_block": res.next_block, "blocks": manifest.n_blocks,
                                      "bytes_read": res.bytes_read, "bad_blocks": len(res.bad_blocks),
                                      "seconds": time.monotonic() - t0, "repaired": False}
            if res.bad_blocks:
                runner.standby_check_block = 0
                report.update(await self._damaged(runner, rec.seq, manifest, list(res.bad_blocks), "check"))
            elif res.next_block >= manifest.n_blocks:
                runner.standby_check_block = 0
                runner.standby_proven(rec.root, time.time_ns())
                log.info("standby %s at %s verified: #%d, every block read back", runner.cfg.name, self.site_id,
                         rec.seq)
            else:
                runner.standby_check_block = res.next_block
            report["state"] = runner.standby_state
            return report

    async def verify(self, volume: str) -> dict | None:
        """Read the whole standby of ``volume`` (``replicad verify``) and repair it if damaged.
        Returns the :meth:`step` report, or None when this site has no standby of it.
        Raises NotFoundError (volume not configured here) and like :meth:`step`."""
        runner = runner_of(self.runners, volume, self.site_id)
        return await self.step(runner, max_bytes=2**62)

    async def _damaged(self, runner: VolumeRunner, seq: int, manifest: Manifest, bad: list[int],
                       found_by: str) -> dict:
        """The standby of ``runner`` (snapshot ``seq``) differs in the blocks ``bad``: report it
        and repair it from the store (the caller holds the volume's lock). Returns
        ``{"repaired": bool, "repair_error": str | None, "damaged_blocks": [first 16]}``."""
        name = runner.cfg.name
        runner.standby_verified_root = None  # the record lies: nothing of it is trusted any more
        runner.standby_state = "damaged"
        runner.standby_damaged_blocks = len(bad)
        self.metrics.standby_damaged(name)
        log.warning("STANDBY DAMAGED: %s at %s holds %d block(s) that are not snapshot #%d (first %s; found by %s); "
                    "rewriting them from the store", name, self.site_id, len(bad), seq, bad[:8], found_by)
        out: dict[str, Any] = {"repaired": False, "repair_error": None, "damaged_blocks": bad[:16]}
        await asyncio.to_thread(self.catalog.set_standby, name, None, None)  # unknown until proven again
        runner.standby_state = "repairing"
        runner.standby_applying = True
        try:
            rep = await self.pull.apply_repairing(name, Path(runner.cfg.path), manifest, base=None)
            await asyncio.to_thread(verify_image, Path(runner.cfg.path), manifest)  # O5
        except ReplicadError as err:
            runner.standby_state = "damaged"
            out["repair_error"] = f"{err.code}: {err}"
            log.error("standby %s at %s could not be repaired: %s %s (the next check tries again; promoting this "
                      "site rewrites the whole image from the store)", name, self.site_id, err, err.evidence)
            return out
        finally:
            runner.standby_applying = False
        await asyncio.to_thread(self.catalog.set_standby, name, seq, manifest.root)
        runner.standby_proven(manifest.root, time.time_ns())
        runner.standby_damaged_blocks = len(bad)  # shown until the next clean check
        out["repaired"] = True
        log.warning("standby %s at %s repaired: %d block(s) rewritten from the store, root verified (O5)", name,
                    self.site_id, rep.blocks_written)
        return out


def standby_status(runner: VolumeRunner, record: Any) -> dict:
    """The ``standby`` entry of a volume's status: ``{seq, state, verified, verified_at_ns,
    damaged_blocks, check_block}`` (``state`` ``none`` when the catalog names no snapshot)."""
    seq = record.seq if record is not None else None
    state = runner.standby_state
    if seq is None and state not in ("damaged", "repairing"):
        state = "none"
    elif seq is not None and state == "verified" and not runner.trusts_standby(record.root):
        state = "unverified"  # applied since: the scheduled check proves it again
    return {"seq": seq, "state": state, "verified": seq is not None and runner.trusts_standby(record.root),
            "verified_at_ns": runner.standby_verified_at_ns, "damaged_blocks": runner.standby_damaged_blocks,
            "check_block": runner.standby_check_block}



