"""Recovery: restore a committed (or this site's divergent) snapshot into an image, verify its
root (O5) and publish it; the recovery drill; cleaning up after restores a crash interrupted.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replicad.config import SiteConfig
from replicad.core.errors import ConflictError, NotFoundError, UsageError, from_os_error
from replicad.core.manifest import Manifest
from replicad.site.cluster import Cluster
from replicad.site.operations import Operation
from replicad.site.peer_restore import PeerRestoreReport
from replicad.site.promotion import newest_usable_here
from replicad.site.pull import Pull
from replicad.site.runner import VolumeRunner, load_manifest, runner_of
from replicad.storage.catalog import Catalog, SnapshotRecord, RestoreRecord
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.durable import fsync_dir
from replicad.storage.image import apply_snapshot, check_target_size, target_error, verify_image

log = logging.getLogger("replicad.site.recovery")

PARTIAL_SUFFIX = ".partial"  # a restore's image until its root verified (then renamed onto the target)


class Recovery:
    """Restores and drills of one site.

    Args:
        cluster: Raft view (committed snapshots).
        cfg: returns the site's current configuration (the protected volumes' paths).
        data_dir: the site's data dir (never a restore target).
        store, catalog: this site's chunk store and snapshot catalog.
        runners: the site's volume runners (a restored volume must be configured here).
        pull: fetches what a restore lacks and heals corrupt chunks.
        interrupted_restores: in-place targets a crash left incomplete (:func:`recover_restores`);
            this room keeps the list current, status reads it.
    """

    def __init__(self, cluster: Cluster, cfg: Callable[[], SiteConfig], data_dir: Path, store: ChunkStore,
                 catalog: Catalog, runners: dict[str, VolumeRunner], pull: Pull,
                 interrupted_restores: list[str]) -> None:
        self.site_id = cluster.site_id
        self.cluster = cluster
        self.cfg = cfg
        self.data_dir = data_dir
        self.store = store
        self.catalog = catalog
        self.runners = runners
        self.pull = pull
        self.interrupted_restores = interrupted_restores
        self._restoring: set[str] = set()  # resolved targets of the restores running now
        self.detection: Any = None  # issue 14: site.detection.Detection (set by the daemon); None in bare tests

    async def restore(self, volume: str, target: Path, seq: int | None, last_clean: bool = True, *,
                      overwrite: bool = False, op: "Operation | None" = None,
                      divergent_epoch: int | None = None) -> dict:
        """Restore committed snapshot ``seq`` (default: the newest clean one this site does not
        hold back, the takeover's filter :func:`~replicad.site.promotion.held_here`: not marked
        suspect by a person here, not judged suspect by this site's detector; the newer ones
        passed over are logged at WARNING and listed in ``held_here``) into ``target``,
        fetching missing chunks from holders and healing corrupt ones, then verify the
        image's root against the manifest's (O5) before reporting success.

        With ``divergent_epoch``, restore this site's *divergent* snapshot ``(epoch, seq)``
        instead (forensics of what an old primary wrote alone; its chunks exist only here).
        A ``seq`` the cluster state no longer lists but this site still holds (its floor kept
        it: :meth:`kept_locally`) is restored from this site alone, verdict ``kept_locally``.

        Raises UsageError (target is the live volume, or exists without ``overwrite``),
        NotFoundError (no such snapshot / no clean one), IntegrityError / RestoreVerifyError.
        """
        vs = self.cluster.volume_state(volume)
        if vs is None:
            raise NotFoundError(f"unknown volume {volume}", volume=volume)
        target = Path(target)
        runner_of(self.runners, volume, self.site_id)
        self.check_restore_target(target, overwrite)
        t0 = time.monotonic()
        missing = 0  # block chunks of the snapshot not in this store
        held: dict[int, str] = {}  # newer clean snapshots the default passed over here, with why
        if divergent_epoch is not None:
            rec = next((r for r in self.catalog.list(volume, "divergent")
                        if r.epoch == divergent_epoch and r.seq == seq), None)
            if rec is None:
                raise NotFoundError(f"no divergent snapshot {volume} epoch {divergent_epoch} #{seq} at "
                                    f"{self.site_id}", volume=volume, epoch=divergent_epoch, seq=seq)
            manifest = load_manifest(self.store, rec.root)
            verdict = "divergent"
        else:
            if seq is None:  # the default, and what --last-clean asks for explicitly: the takeover's filter
                seq, held = newest_usable_here(volume, vs, self.site_id, self.detection)
                for q, why in sorted(held.items(), reverse=True):
                    log.warning("volume %s: the default restore passes over #%d, clean for the cluster: %s", volume,
                                q, why)
            if seq is None:
                why = f" this site does not hold back (held back here: {held})" if held else ""
                raise NotFoundError(f"{volume} has no clean committed snapshot{why}", volume=volume, held_here=held)
            kept = self.kept_locally(volume, seq) if seq not in vs["snapshots"] else None
            if seq not in vs["snapshots"] and kept is None:
                raise NotFoundError(f"no committed snapshot {volume}#{seq}", volume=volume, seq=seq)
            if kept is not None:
                # the cluster state no longer lists it, this site's floor kept it: restore from here alone
                log.warning("AUDIT restoring %s#%d (epoch %d) into %s from this site's own record: the cluster "
                            "state no longer lists it", volume, seq, kept.epoch, target)
                manifest = load_manifest(self.store, kept.root)
                verdict = "kept_locally"
            else:
                log.info("restoring %s#%d into %s", volume, seq, target)
                if op is not None:
                    op.phase = "fetching"
                if target.exists():  # rewritten in place (only differing blocks): every chunk here first
                    manifest = await self.pull.ensure_snapshot(volume, seq, vs)
                else:  # a new file: chunks missing here stream from the holders straight into it
                    manifest, missing = await self.pull.ensure_pages(volume, seq, vs)
                verdict = vs["snapshots"][seq]["verdict"]
        if op is not None:
            op.phase = "writing"
        phases = {"fetch_s": time.monotonic() - t0}
        local_only = divergent_epoch is not None or verdict == "kept_locally"
        rep, root = await self._write_restore(volume, target, manifest, local_only, op, phases,
                                              streamed=missing > 0)
        log.info("restored %s#%d (%s) into %s: root verified, %d blocks written, %.2fs (fetch %.2fs, write %.2fs, "
                 "verify %.2fs)", volume, manifest.seq, verdict, target, rep.blocks_written, time.monotonic() - t0,
                 phases["fetch_s"], phases["write_s"], phases["verify_s"])
        out = {"volume": volume, "seq": manifest.seq, "verdict": verdict, "target": str(target),
               "root": root.hex(), "verified": True,
               "blocks_written": rep.blocks_written, "bytes_written": rep.bytes_written,
               "seconds": time.monotonic() - t0, "phases": phases}
        if held:
            out["held_here"] = held
        if isinstance(rep, PeerRestoreReport):
            out["peers"] = rep.to_dict()  # streamed from the holders: what each supplied
        return out

    def kept_locally(self, volume: str, seq: int) -> SnapshotRecord | None:
        """This site's committed (else received) record of ``volume#seq`` of the newest epoch,
        if the cluster state does not list that seq and its manifest is here; else None."""
        vs = self.cluster.volume_state(volume) or {"snapshots": {}}
        if seq in vs["snapshots"]:
            return None
        recs = [r for r in self.catalog.list(volume) if r.seq == seq and r.state in ("committed", "received")
                and self.store.has(r.root)]
        recs.sort(key=lambda r: (r.state == "committed", r.epoch))
        return recs[-1] if recs else None

    async def drill(self, volume: str, seq: int | None, sandbox: Path, keep: bool = False,
                    op: "Operation | None" = None) -> dict:
        """Recovery drill: restore ``seq`` (default newest clean) into a new image under
        ``sandbox`` while replication goes on, verify its root, report the timings, and
        delete the image unless ``keep``. Raises like :meth:`restore`."""
        sandbox = Path(sandbox)
        if not sandbox.is_dir():
            raise UsageError(f"drill sandbox {sandbox} is not a directory", sandbox=str(sandbox))
        target = sandbox / f"drill-{volume}-{int(time.time())}-{uuid.uuid4().hex[:6]}.img"
        t0 = time.monotonic()
        try:
            rep = await self.restore(volume, target, seq, True, op=op)
        finally:
            if not keep:
                target.unlink(missing_ok=True)
        rep.update(drill=True, kept=keep, rto_s=time.monotonic() - t0)
        log.info("drill %s#%d at %s: restored and verified in %.2fs", volume, rep["seq"], self.site_id, rep["rto_s"])
        return rep

    async def _write_restore(self, volume: str, target: Path, manifest: Manifest, local_only: bool,
                             op: "Operation | None", phases: dict[str, float], *,
                             streamed: bool = False) -> tuple[Any, bytes]:
        """Write ``manifest`` into ``target`` and verify it (O5); ``(apply report, root)``.
        Sets ``phases["write_s"]`` and ``phases["verify_s"]`` (seconds).

        A new target is written as ``.<name>.<random>.partial`` beside it (created
        exclusively: never an existing file) and renamed onto ``target`` only once its root
        verified (then the directory is fsynced): an interrupted or failed restore never
        leaves a file under the target's name. An existing target (``overwrite``, a block
        device) is rewritten in place (only differing blocks). Either way the restore is
        recorded in the catalog while it runs (see :func:`recover_restores`); one restore
        per target at a time (ConflictError). Raises like :meth:`restore`; the partial file
        is removed on any error.

        With ``streamed`` (chunks of the snapshot are missing here) a new target is written by
        :meth:`~replicad.site.pull.Pull.restore_streamed` (from every holder at once, straight
        into the image) instead of fetching into the store first; O5 is then checked as it
        writes (every block read back from the disk after its write, one fsync at the end, the
        root rebuilt), not by a second pass.
        """
        key = str(target.resolve())
        if key in self._restoring:
            raise ConflictError(f"a restore into {target} is already running", target=str(target))
        self._restoring.add(key)
        try:
            return await self._write_restore_locked(volume, target, manifest, local_only, op, phases, streamed)
        finally:
            self._restoring.discard(key)

    async def _write_restore_locked(self, volume: str, target: Path, manifest: Manifest, local_only: bool,
                                    op: "Operation | None", phases: dict[str, float],
                                    streamed: bool = False) -> tuple[Any, bytes]:
        in_place = target.exists()
        if in_place:  # refused before anything is recorded: a target it cannot write was never touched
            await asyncio.to_thread(_check_writable, target)
        await asyncio.to_thread(check_target_size, target, manifest)  # a too-small device: refused, untouched
        progress = op.progress if op else None
        written = target
        if not in_place:  # a name of our own, created exclusively: never someone else's file
            written = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
            try:
                os.close(os.open(written, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
            except OSError as err:
                raise target_error(err, f"create the restore image {written} beside {target}", written,
                                   manifest.size_bytes) from err
        await asyncio.to_thread(self.catalog.begin_restore,
                                RestoreRecord(str(target), str(written), in_place, time.time_ns()))
        t_write = time.monotonic()
        try:
            if local_only:  # a divergent snapshot: only this site holds it, nothing to re-fetch from
                rep = await asyncio.to_thread(apply_snapshot, written, manifest, self.store, progress=progress)
            elif streamed and not in_place:  # chunks missing here: from every holder at once into the image
                rep = await self.pull.restore_streamed(volume, written, manifest, progress=progress)
            elif streamed:  # in place: only differing blocks, so every chunk into the store first
                await self.pull.ensure_snapshot(volume, manifest.seq)
                rep = await self.pull.apply_repairing(volume, written, manifest, progress=progress)
            else:
                rep = await self.pull.apply_repairing(volume, written, manifest, progress=progress)
            phases["write_s"] = time.monotonic() - t_write
            if op is not None:
                op.phase = "verifying"
            if isinstance(rep, PeerRestoreReport):  # O5 checked while writing: every block read back, then one fsync
                root = manifest.root
            else:
                root = await asyncio.to_thread(verify_image, written, manifest, progress=progress)  # O5
            if not in_place:
                await asyncio.to_thread(_publish, written, target, manifest.size_bytes)
            phases["verify_s"] = time.monotonic() - t_write - phases["write_s"]
        except BaseException:
            if not in_place:
                written.unlink(missing_ok=True)
                await asyncio.to_thread(self.catalog.end_restore, str(target))
            elif str(target) not in self.interrupted_restores:
                # an in-place target stays recorded: it is incomplete until a restore into it succeeds
                self.interrupted_restores.append(str(target))
            raise
        await asyncio.to_thread(self.catalog.end_restore, str(target))
        if str(target) in self.interrupted_restores:
            self.interrupted_restores.remove(str(target))
        return rep, root

    def check_restore_target(self, target: Path, overwrite: bool) -> None:
        """Refuse a restore target before anything is written or recorded: one that would
        destroy this site's own state (a protected volume's path: use promote; anything inside
        the data dir), a non-file, an existing file without ``overwrite``, or one this daemon
        cannot reach (a name too long, a directory it may not search) or, existing, cannot open
        for writing (permissions, an immutable or read-only file). A symlink is followed: to an
        existing file it is that file (rewritten in place with ``overwrite``); a dangling one (or
        a loop) is refused, since publishing the new image would replace the link itself.

        Raises UsageError (also for permissions), NotFoundError (also: the target's directory is
        missing), ConflictError (a restore into it is running); never a bare OSError."""
        try:
            self._check_restore_target(target, overwrite)
            if overwrite and target.exists():
                _check_writable(target)
        except OSError as err:
            raise from_os_error(err, f"restore target {target}", target=str(target)) from None

    def _check_restore_target(self, target: Path, overwrite: bool) -> None:
        """:meth:`check_restore_target` without the OSError translation."""
        if target.is_symlink() and not target.exists():
            raise UsageError(f"restore target {target} is a symlink to {os.readlink(target)}, which does not exist; "
                             "give the final path (or remove the link)", target=str(target),
                             link_to=os.readlink(target))
        resolved = target.resolve()
        if any(resolved == Path(v.path).resolve() for v in self.cfg().volumes):
            raise UsageError("restore target is a protected volume's live path at this site; use promote",
                             target=str(target))
        if resolved == self.data_dir.resolve() or self.data_dir.resolve() in resolved.parents:
            raise UsageError(f"restore target is inside the data dir {self.data_dir}", target=str(target))
        if not target.exists() and not target.parent.is_dir():  # said now, not as a failed write later
            raise NotFoundError(f"the directory {target.parent} of restore target {target} does not exist at this "
                                f"site; create it first (mkdir -p {target.parent})", target=str(target),
                                directory=str(target.parent))
        if target.exists():
            st = target.stat()
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                raise UsageError(f"restore target {target} is neither a regular file nor a block device",
                                 target=str(target))
            for v in self.cfg().volumes:  # the same file under another name: a hard link, a bind mount
                try:
                    live = os.stat(v.path)
                except OSError:
                    continue
                if (live.st_dev, live.st_ino) == (st.st_dev, st.st_ino) or \
                        (stat.S_ISBLK(st.st_mode) and stat.S_ISBLK(live.st_mode) and live.st_rdev == st.st_rdev):
                    raise UsageError("restore target is a protected volume's live image at this site (another "
                                     "name for it); use promote", target=str(target), volume=v.name)
            if not overwrite:
                raise UsageError(f"restore target {target} exists; pass --overwrite (API: \"overwrite\": true) to "
                                 "rewrite it", target=str(target))
        if str(resolved) in self._restoring:
            raise ConflictError(f"a restore into {target} is already running", target=str(target))


def recover_restores(catalog: Catalog) -> list[str]:
    """At start: clean up after restores the previous run left in the middle.

    A restore into a new file wrote ``.<target name>.<random>.partial`` beside it: deleted
    (the target never appeared). A restore over an existing target (``overwrite``, a
    block device) wrote in place: that target is incomplete, which is logged at ERROR and
    listed in status (``interrupted_restores``) at every start until a restore into it
    succeeds.

    Returns those in-place targets.
    """
    interrupted: list[str] = []
    for rec in catalog.restores_in_flight():
        if rec.in_place and _unwritable(Path(rec.target)):
            # this daemon cannot open it for writing, so its restore never wrote into it (an earlier
            # version recorded a restore that was then refused for permissions): nothing is incomplete
            log.warning("a restore into %s is recorded as interrupted, but this site cannot write that file "
                        "(permissions, immutable or read-only), so the restore never wrote into it: record "
                        "dropped", rec.target)
            catalog.end_restore(rec.target)
            continue
        if rec.in_place:  # the record stays until a restore into this target succeeds
            log.error("a restore into %s was interrupted or failed: %s is incomplete; restore it again",
                      rec.target, rec.target)
            interrupted.append(rec.target)
            continue
        try:
            Path(rec.written).unlink(missing_ok=True)
        except OSError as exc:
            log.error("cannot remove the partial image %s of an interrupted restore: %s", rec.written, exc)
            continue
        log.warning("a restore into %s was interrupted when this site stopped: its partial image %s "
                    "was removed (the target was never created)", rec.target, rec.written)
        catalog.end_restore(rec.target)
    return interrupted


def _publish(written: Path, target: Path, size_bytes: int) -> None:
    """Rename a verified restore image (of a ``size_bytes`` snapshot) onto its target and fsync
    the directory. Raises the typed error of a failed rename/fsync (the caller removes ``written``)."""
    try:
        os.replace(written, target)
        fsync_dir(target.parent)
    except OSError as err:
        raise target_error(err, f"rename the verified image onto {target}", target, size_bytes) from err


def _check_writable(target: Path) -> None:
    """Open the existing ``target`` for writing (no truncation, nothing written) and close it.
    Raises the typed error of a refusal (permissions, immutable, read-only file system)."""
    try:
        os.close(os.open(target, os.O_WRONLY))
    except OSError as err:
        raise from_os_error(err, f"restore target {target} cannot be opened for writing by this site "
                                 "(nothing was written)", target=str(target)) from None


def _unwritable(target: Path) -> bool:
    """True if ``target`` exists and this process is refused opening it for writing
    (EACCES, EPERM, EROFS); a missing target or another error is not "unwritable"."""
    try:
        os.close(os.open(target, os.O_WRONLY))
    except OSError as err:
        return err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    return False
