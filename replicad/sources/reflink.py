"""The ``reflink`` snapshot source: a reflink clone per cycle, extent maps for what changed.

For a volume whose image is a regular file on XFS (``mkfs.xfs -m reflink=1``) or btrfs. Each
cycle (:meth:`ReflinkSource.snapshot`):

1. ``pre_snapshot`` hook; ``ioctl(FICLONE)`` of the image into a new clone in ``clone_dir``
   (:func:`replicad.sources.extents.clone_file`: atomic with respect to the image's writers,
   0.3–2.4 ms for 1 GiB measured; a crash-consistent point in time without freezing anything);
   ``post_snapshot`` hook (so a freeze hook holds the file system for the clone only); the
   clone and its directory are fsynced.
2. ``FS_IOC_FIEMAP`` (``FIEMAP_FLAG_SYNC``) of the new clone and of the *parent clone* — the
   clone the parent snapshot was made from — compared by physical address per byte range
   (:func:`replicad.sources.extents.extent_arrays` and ``changed_ranges``: numpy arrays, no
   object per extent); the blocks touched are read from the
   new clone and the manifest built from the parent's and those
   (:func:`replicad.sources.tracked.tracked_snapshot`). Cost: the changed blocks, not the volume.
3. The new clone is recorded with its manifest root; after the snapshot commits
   (:meth:`committed`) it becomes the only clone kept and the parent clone is deleted — never
   before: a site that dies between the clone and the commit still has the parent clone of
   the snapshot Raft holds as committed. A snapshot not committed (:meth:`abandoned`) drops its
   clone and keeps the parent's.

Each tracked cycle's phases, wall seconds, are in ``status()["last"]``: ``clone_s`` (hooks,
FICLONE, fsyncs), ``map_s`` (both maps), ``diff_s`` (comparison and block runs), ``build_s``
(the changed blocks read, the manifest built and stored) and, after the commit, ``drop_s``
(the parent clone deleted); ``extents`` the two maps' lengths. The extent-bound phases are the
kernel's (clone, maps): measured per phase in tests/bench/results/bench.md ("reflink 16/1 GiB,
paired").

Tracking states (``status()["state"]``): ``tracking`` → ``lost`` → ``rescan`` → ``tracking``.
The change record is *lost* when:

* ``no_parent_clone``: no clone is recorded for the parent snapshot (after a promotion, a
  restore, a commit whose answer was lost, or a clone dir emptied by hand);
* ``parent_clone_missing``: the recorded clone file is gone or unreadable;
* ``unclean_restart``: the previous process died inside a cycle (between the clone and the
  commit or the drop: the record names an open cycle) — rather than reason about which step
  it reached, one full rescan;
* ``image_replaced``: the image's inode or device differs from the one the parent clone was
  taken of (a restore by rename, a new file at the path);
* ``state_damaged``: the record file cannot be read;
* ``not_reflink_capable`` / ``extent_map_unsupported``: FICLONE or FIEMAP answered
  EOPNOTSUPP/ENOTTY/EINVAL (ext4, XFS without reflink, a block device). Then the cycle scans
  the *live image* as the ``file`` source does (hooks around that scan; not a point in time)
  and the state stays ``lost`` until the file system can clone: the ``ReplicadSourceTrackingLost``
  alert fires.
* ``cross_device``: the clone dir is on another file system (EXDEV): the cycle is refused
  (:class:`~replicad.core.errors.CloneCrossDeviceError`), nothing is stored.

A lost cycle is a *rescan*: the file source's full scan (BLAKE3 of every block, no
fingerprint cache) of the new clone against the parent; once it commits the state is
``tracking`` again. Every transition to ``lost`` is logged at WARNING and counted
(``lost_total[reason]``, ``replicad_source_lost_total``).

Verifier: every ``verify_every`` tracked cycles and at least every ``verify_max_age`` (both
``[volumes.source]``; counted from the last full scan, persisted across restarts) the tracked
manifest is checked against a full scan of the same clone (same parent): the block digests
must be equal (:func:`replicad.sources.tracked.same_blocks`). A mismatch is logged at ERROR
with the first differing blocks, counted (``verify_mismatches``,
``replicad_source_verify_mismatches_total``: the ``ReplicadSourceVerifyMismatch`` alert) and
repaired: the full scan's manifest is the snapshot shipped (the truth).

Files in ``clone_dir`` (default ``.replicad-clones`` beside the image, symlinks resolved;
mode 0700): clones ``<volume>.<seq>-<epoch>.clone`` and the record ``<volume>.state.json``
(written to a temporary file, fsynced, renamed, directory fsynced)::

    {"v": 1, "volume": str, "image": {"dev": int, "ino": int} | null,
     "clones": {clone name: manifest root hex | null (clone made, manifest not yet stored)},
     "open": clone name of the cycle in progress | null,
     "verify": {"at_ns": int, "cycles": int}}

Space: a clone costs only what the image overwrote since it was taken (copy-on-write), so
the kept clone holds about one interval of churn, two during a cycle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from replicad.config import VolumeConfig
from replicad.core.errors import CloneCrossDeviceError, ReflinkUnsupportedError, ReplicadError, from_os_error
from replicad.core.manifest import Manifest, diff
from replicad.sources.base import SnapshotSource, SourceSnapshot
from replicad.sources.extents import block_runs, changed_ranges, clone_file, extent_arrays
from replicad.sources.file import run_hooked, take_snapshot
from replicad.sources.tracked import PageCache, same_blocks, tracked_snapshot
from replicad.storage import fingerprints
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.durable import fsync_dir

log = logging.getLogger("replicad.sources.reflink")

STATE_VERSION = 1
DEFAULT_CLONE_DIR_NAME = ".replicad-clones"
LOST_REASONS = ("no_parent_clone", "parent_clone_missing", "unclean_restart", "image_replaced", "state_damaged",
                "not_reflink_capable", "extent_map_unsupported", "cross_device")
"""Every reason a reflink source loses its change record (``replicad_source_lost_total{reason}``)."""
MISMATCH_LOG_BLOCKS = 10


def default_clone_dir(image: Path) -> Path:
    """``.replicad-clones`` in the directory of ``image`` (symlinks resolved): always the
    image's own file system, which FICLONE needs."""
    return Path(os.path.realpath(image)).parent / DEFAULT_CLONE_DIR_NAME


class ReflinkSource(SnapshotSource):
    """The ``reflink`` source of one volume (see the module docstring). Event-loop object;
    file work runs in worker threads."""

    kind = "reflink"

    def __init__(self, cfg: VolumeConfig, data_dir: Path) -> None:
        super().__init__(cfg, data_dir)
        self.clone_dir = Path(cfg.source.clone_dir) if cfg.source.clone_dir is not None \
            else default_clone_dir(Path(cfg.path))
        self.state = "idle"
        self.reason: str | None = None
        self.since_ns: int | None = None
        self.lost_total: dict[str, int] = {r: 0 for r in LOST_REASONS}
        self.rescans = 0
        self.verify_runs = 0
        self.verify_mismatches = 0
        self.last: dict[str, Any] = {}
        self._record: dict[str, Any] | None = None
        self._unclean = False
        self._pages = PageCache()  # the last tracked manifest's pages: the next cycle's parent pages

    def matches(self, cfg: VolumeConfig) -> bool:
        return super().matches(cfg) and cfg.source.clone_dir == self.cfg.source.clone_dir

    # ------------------------------------------------------------------ record
    @property
    def state_path(self) -> Path:
        return self.clone_dir / f"{self.cfg.name}.state.json"

    def _clone_path(self, name: str) -> Path:
        return self.clone_dir / name

    def _empty_record(self) -> dict[str, Any]:
        return {"v": STATE_VERSION, "volume": self.cfg.name, "image": None, "clones": {}, "open": None,
                "verify": {"at_ns": 0, "cycles": 0}}

    def _load(self) -> None:
        """Worker thread, first cycle of this process: create the source's directory, read the
        record (:meth:`_parse`; a damaged one loses tracking), note an unclean restart, then
        :meth:`_after_load` (here: delete clone files the record does not keep). Shared with
        :class:`replicad.sources.qemu.QemuSource`, whose record differs."""
        try:
            self.clone_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise from_os_error(err, f"creating the {self.kind} source's directory", path=str(self.clone_dir)) from err
        rec = None
        try:
            rec = self._parse(json.loads(self.state_path.read_bytes()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:
            log.warning("volume %s: the %s source record %s cannot be read (%s): tracking lost, the next cycle "
                        "rescans", self.cfg.name, self.kind, self.state_path, err)
            self._lose("state_damaged")
        if rec is None:
            rec = self._empty_record()
        if rec["open"] is not None:
            self._unclean = True
        self._record = rec
        self._after_load()

    def _parse(self, data: Any) -> dict[str, Any]:
        """The record read from ``data`` (JSON). Raises ValueError when it is not one."""
        return _parse_record(data, self.cfg.name)

    def _after_load(self) -> None:
        self._drop_strays()

    def _drop_strays(self) -> None:
        """Delete clone files of this volume that the record does not keep with a root."""
        assert self._record is not None
        keep = {n for n, root in self._record["clones"].items() if root is not None}
        pattern = re.compile(re.escape(self.cfg.name) + r"\.\d+-\d+\.clone(\.tmp)?$")
        try:
            names = os.listdir(self.clone_dir)
        except OSError:
            return
        for name in names:
            if pattern.match(name) and name not in keep:
                _unlink(self._clone_path(name))

    def _save(self) -> None:
        """Write the record durably (temporary file, fsync, rename, directory fsync)."""
        assert self._record is not None
        tmp = self.state_path.with_suffix(".json.tmp")
        data = json.dumps(self._record, sort_keys=True).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.state_path)
            fsync_dir(self.clone_dir)
        except OSError as err:
            raise from_os_error(err, "writing the reflink record", path=str(self.state_path)) from err

    # ------------------------------------------------------------------ states
    def _set(self, state: str, reason: str | None = None) -> None:
        if state != self.state or reason != self.reason:
            self.since_ns = time.time_ns()
        self.state, self.reason = state, reason

    def _lose(self, reason: str) -> None:
        """Tracking is lost for ``reason``: WARNING, counted."""
        self.lost_total[reason] = self.lost_total.get(reason, 0) + 1
        if self.state != "lost" or self.reason != reason:
            log.warning("volume %s: change tracking lost (%s): %s", self.cfg.name, reason, _EXPLAIN.get(reason, reason))
        self._set("lost", reason)

    # ------------------------------------------------------------------ cycle
    async def snapshot(self, *, volume: str, seq: int, epoch: int, parent: Manifest | None,
                       store: ChunkStore, now_ns: int) -> SourceSnapshot:
        """One cycle's snapshot (module docstring, steps 1–3).

        Raises:
            CloneCrossDeviceError: ``clone_dir`` is on another file system (nothing stored).
            ToolError: a hook failed. SourceShrunkError: the clone is smaller than ``parent``
            (and not ``allow_shrink``). NotFoundError / StoreFullError / InternalError: I/O.
        """
        if self._record is None:
            await asyncio.to_thread(self._load)
        rec = self._record
        assert rec is not None
        image = Path(self.cfg.path)
        try:
            st = await asyncio.to_thread(os.stat, image)
        except OSError as err:
            raise from_os_error(err, "reading the volume image", path=str(image)) from err
        image_id = {"dev": st.st_dev, "ino": st.st_ino}
        parent_clone = await asyncio.to_thread(self._parent_clone, parent, image_id)
        name = f"{volume}.{seq}-{epoch}.clone"
        clone = self._clone_path(name)
        rec["open"] = name
        rec["clones"][name] = None
        await asyncio.to_thread(self._save)
        t0 = time.perf_counter()
        try:
            try:
                await self._clone_hooked(image, clone)
            except CloneCrossDeviceError:
                self._lose("cross_device")
                raise
            except ReflinkUnsupportedError as err:
                await asyncio.to_thread(self._forget, name)
                return await self._live(err, volume, seq, epoch, parent, store, now_ns)
            clone_s = time.perf_counter() - t0
            snap = await self._build(clone, name, volume, seq, epoch, parent, parent_clone, store, now_ns)
            snap.info.update(clone_s=clone_s, image=image_id)
            rec["clones"][name] = snap.result.manifest.root.hex()
            await asyncio.to_thread(self._save)
        except BaseException:
            # cancelled or failed: drop the new clone, keep the parent's (synchronous: safe while cancelled)
            self._forget(name)
            if self.state == "rescan":
                self._set("lost", self.reason)
            raise
        self.last = dict(snap.info)
        return snap

    def _continues_tracking(self, parent: Manifest | None) -> bool:
        """Whether this cycle may build on ``parent``'s change record: False after an unclean
        restart (state ``lost``, reason ``unclean_restart``, once) and without a parent. Shared
        with :class:`replicad.sources.qemu.QemuSource`."""
        if self._unclean:
            self._unclean = False
            self._lose("unclean_restart")
            return False
        return parent is not None

    def _parent_clone(self, parent: Manifest | None, image_id: dict[str, int]) -> str | None:
        """Worker thread: the clone the parent snapshot was made from, or None with the state
        set to ``lost`` (reason) when there is a parent but no usable clone of it."""
        rec = self._record
        assert rec is not None
        if not self._continues_tracking(parent):
            return None
        if rec["image"] is not None and rec["image"] != image_id:
            self._lose("image_replaced")
            return None
        root = parent.root.hex()
        name = next((n for n, r in rec["clones"].items() if r == root), None)
        if name is None:
            self._lose("no_parent_clone")
            return None
        try:
            fd = os.open(self._clone_path(name), os.O_RDONLY)
            os.close(fd)
        except OSError:
            self._lose("parent_clone_missing")
            return None
        return name

    async def _clone_hooked(self, image: Path, clone: Path) -> None:
        """pre hook, FICLONE image -> clone (fsynced), post hook (also after a failure)."""
        src = self.cfg.source
        await run_hooked(src.pre_snapshot, src.post_snapshot, lambda: asyncio.to_thread(self._clone, image, clone),
                         "clone")

    def _clone(self, image: Path, clone: Path) -> None:
        """Worker thread: FICLONE ``image`` into the new file ``clone``; fsync both it and the dir."""
        try:
            src_fd = os.open(image, os.O_RDONLY)
        except OSError as err:
            raise from_os_error(err, "opening the volume image", path=str(image)) from err
        try:
            _unlink(clone)
            try:
                dst_fd = os.open(clone, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as err:
                raise from_os_error(err, "creating the clone", path=str(clone)) from err
            try:
                clone_file(src_fd, dst_fd, src=str(image), dst=str(clone))
                os.fsync(dst_fd)
            except OSError as err:
                raise from_os_error(err, "syncing the clone", path=str(clone)) from err
            finally:
                os.close(dst_fd)
            fsync_dir(self.clone_dir)
        finally:
            os.close(src_fd)

    def _forget(self, name: str) -> None:
        """Drop clone ``name`` (file and record entry) and close the open cycle. Never raises."""
        _unlink(self._clone_path(name))
        rec = self._record
        if rec is None:
            return
        rec["clones"].pop(name, None)
        if rec["open"] == name:
            rec["open"] = None
        try:
            self._save()
        except ReplicadError as err:
            log.warning("volume %s: %s (the next start rescans once)", self.cfg.name, err)

    async def _build(self, clone: Path, name: str, volume: str, seq: int, epoch: int, parent: Manifest | None,
                     parent_clone: str | None, store: ChunkStore, now_ns: int) -> SourceSnapshot:
        """The manifest of ``clone``: tracked from ``parent_clone``, else a full scan."""
        allow_shrink = self.cfg.source.allow_shrink
        if parent is not None and parent_clone is not None:
            t0 = time.perf_counter()
            try:
                old_map, old_size, new_map, new_size = await asyncio.to_thread(
                    _maps, self._clone_path(parent_clone), clone)
            except ReflinkUnsupportedError as err:
                self._lose(str(err.evidence.get("reason", "extent_map_unsupported")))
            else:
                t1 = time.perf_counter()
                ranges = changed_ranges(old_map, old_size, new_map, new_size)
                runs = block_runs(ranges, parent.block_size, -(-new_size // parent.block_size))
                t2 = time.perf_counter()
                tr = await tracked_snapshot(clone, volume=volume, seq=seq, epoch=epoch, parent=parent, store=store,
                                            now_ns=now_ns, runs=runs, allow_shrink=allow_shrink,
                                            page_cache=self._pages)
                info = {"mode": "tracked", "map_s": t1 - t0, "diff_s": t2 - t1, "build_s": time.perf_counter() - t2,
                        "extents": [len(old_map), len(new_map)], "changed_ranges": len(ranges),
                        "read_blocks": tr.read_blocks, "read_bytes": tr.read_bytes, "scan_s": tr.scan.scan_seconds}
                snap = SourceSnapshot(tr.scan, "tracked", info, name)
                if self._verify_due(now_ns):
                    await self._verify(snap, clone, volume, seq, epoch, parent, store, now_ns)
                return snap
        mode = "full" if parent is None else "rescan"
        self._set("rescan", self.reason)
        if mode == "rescan":
            self.rescans += 1
            log.info("volume %s: full rescan of clone %s (tracking %s)", volume, name, self.reason)
        pages: dict[bytes, bytes] = {}  # what the scan built: the next tracked cycle's parent pages
        result = await take_snapshot(clone, volume=volume, seq=seq, epoch=epoch, parent=parent, store=store,
                                     now_ns=now_ns, block_size=self.cfg.block_size_bytes, fingerprints=None,
                                     allow_shrink=allow_shrink, pages_out=pages,
                                     pages_out_max_bytes=self._pages.max_bytes, private=True)
        self._pages.replace(result.manifest.pages, pages)
        return SourceSnapshot(result, mode, {"mode": mode, "scan_s": result.scan_seconds}, name)

    def _verify_due(self, now_ns: int) -> bool:
        v = self._record["verify"] if self._record is not None else {"at_ns": 0, "cycles": 0}
        src = self.cfg.source
        return v["cycles"] + 1 >= src.verify_every or now_ns - v["at_ns"] >= src.verify_max_age_s * 1e9

    async def _verify(self, snap: SourceSnapshot, clone: Path, volume: str, seq: int, epoch: int,
                      parent: Manifest, store: ChunkStore, now_ns: int) -> None:
        """Full scan of the same clone; on a mismatch ship the full scan's manifest (ERROR, counted)."""
        pages: dict[bytes, bytes] = {}
        full = await take_snapshot(clone, volume=volume, seq=seq, epoch=epoch, parent=parent, store=store,
                                   now_ns=now_ns, fingerprints=None, allow_shrink=self.cfg.source.allow_shrink,
                                   pages_out=pages, pages_out_max_bytes=self._pages.max_bytes, private=True)
        self.verify_runs += 1
        snap.info["verify_s"] = full.scan_seconds
        tracked = snap.result.manifest
        if same_blocks(tracked, full.manifest):
            snap.mode = snap.info["mode"] = "verified"
            return
        self.verify_mismatches += 1
        differing = await asyncio.to_thread(diff, tracked, full.manifest, store.get)
        log.error("volume %s#%d: the %s tracked manifest differs from a full scan of the same view in %d "
                  "block(s) (first: %s; size %d vs %d): shipping the full scan's manifest instead (the truth); "
                  "if this repeats, set [volumes.source] kind = \"file\" and report it", volume, seq, self.kind,
                  len(differing), differing[:MISMATCH_LOG_BLOCKS], tracked.size_bytes, full.manifest.size_bytes)
        snap.result = full
        self._pages.replace(full.manifest.pages, pages)  # the parent of the next cycle is the truth
        snap.mode = snap.info["mode"] = "repaired"
        snap.info["mismatched_blocks"] = len(differing)

    async def _live(self, err: ReflinkUnsupportedError, volume: str, seq: int, epoch: int, parent: Manifest | None,
                    store: ChunkStore, now_ns: int) -> SourceSnapshot:
        """FICLONE impossible: scan the live image as the ``file`` source does; stay ``lost``."""
        self._lose(str(err.evidence.get("reason", "not_reflink_capable")))
        log.warning("volume %s: %s: scanning the live image instead (not a point in time)", volume, err)
        cfg = self.cfg
        result = await take_snapshot(Path(cfg.path), volume=volume, seq=seq, epoch=epoch, parent=parent, store=store,
                                     now_ns=now_ns, fingerprints=fingerprints.path_for(self.data_dir, cfg.name),
                                     pre_snapshot=cfg.source.pre_snapshot, post_snapshot=cfg.source.post_snapshot,
                                     block_size=cfg.block_size_bytes, allow_shrink=cfg.source.allow_shrink)
        self.last = {"mode": "live", "scan_s": result.scan_seconds}
        return SourceSnapshot(result, "live", dict(self.last), None)

    # ------------------------------------------------------------------ after the cycle
    async def committed(self, snap: SourceSnapshot) -> None:
        """Keep ``snap``'s clone as the only one (record first, then the older files)."""
        if snap.token is None:  # live scan: nothing kept, still lost
            return
        try:
            await asyncio.to_thread(self._keep, snap)
        except ReplicadError as err:
            log.warning("volume %s: %s (the next cycle rescans if the record is stale)", self.cfg.name, err)
        if snap.mode != "live":
            self._set("tracking")

    def _keep(self, snap: SourceSnapshot) -> None:
        rec = self._record
        assert rec is not None
        name = snap.token
        old = [n for n in rec["clones"] if n != name]
        rec["clones"] = {name: snap.result.manifest.root.hex()}
        rec["open"] = None
        rec["image"] = snap.info.get("image")
        if snap.mode in ("full", "rescan", "verified", "repaired"):
            rec["verify"] = {"at_ns": snap.result.manifest.created_at_ns, "cycles": 0}
        else:
            rec["verify"]["cycles"] += 1
        self._save()
        t0 = time.perf_counter()
        for n in old:  # only now: the parent clone stayed until its child committed
            _unlink(self._clone_path(n))
        self.last["drop_s"] = time.perf_counter() - t0

    async def abandoned(self, snap: SourceSnapshot) -> None:
        """Drop ``snap``'s clone; the parent's stays. A rescan not committed leaves ``lost``."""
        if snap.token is not None:
            await asyncio.to_thread(self._forget, snap.token)
        if self.state == "rescan":
            self._set("lost", self.reason)

    def status(self) -> dict[str, Any]:
        rec = self._record or {}
        verify = rec.get("verify") or {}
        return {"kind": self.kind, "state": self.state, "reason": self.reason, "since_ns": self.since_ns,
                "clone_dir": str(self.clone_dir),
                "parent_clone": next(iter(n for n, r in (rec.get("clones") or {}).items() if r), None)
                if not rec.get("open") else None,
                "lost_total": dict(self.lost_total), "rescans": self.rescans,
                "verify": {"runs": self.verify_runs, "mismatches": self.verify_mismatches,
                           "last_at_ns": verify.get("at_ns") or None, "cycles_since": verify.get("cycles", 0),
                           "every": self.cfg.source.verify_every, "max_age_s": self.cfg.source.verify_max_age_s},
                "last": self.last}


_EXPLAIN = {
    "no_parent_clone": "no clone is recorded for the parent snapshot (promotion, restore, lost commit answer)",
    "parent_clone_missing": "the parent snapshot's clone file is gone or unreadable",
    "unclean_restart": "the previous process died during a cycle",
    "image_replaced": "the image is another file than the one the parent clone was taken of",
    "state_damaged": "the reflink record cannot be read",
    "not_reflink_capable": "the image's file system cannot clone it (needs XFS reflink=1 or btrfs)",
    "extent_map_unsupported": "the file system does not answer FIEMAP",
    "cross_device": "clone_dir is on another file system than the image",
}


def _maps(old: Path, new: Path) -> tuple[Any, int, Any, int]:
    """Worker thread: (extent arrays, size) of both clones (FIEMAP with FIEMAP_FLAG_SYNC,
    :func:`~replicad.sources.extents.extent_arrays`)."""
    out: list[Any] = []
    for path in (old, new):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise from_os_error(err, "opening a clone", path=str(path)) from err
        try:
            out += [extent_arrays(fd, path=str(path)), os.fstat(fd).st_size]
        finally:
            os.close(fd)
    return out[0], out[1], out[2], out[3]


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning("cannot delete %s: %s", path, err)


def _parse_record(data: Any, volume: str) -> dict[str, Any]:
    """The record checked for shape. Raises ValueError when it is not one of ``volume``."""
    if not isinstance(data, dict) or data.get("v") != STATE_VERSION or data.get("volume") != volume:
        raise ValueError("not a version-1 record of this volume")
    clones = data.get("clones")
    if not isinstance(clones, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                               for k, v in clones.items()):
        raise ValueError("bad clones")
    image = data.get("image")
    if image is not None and not (isinstance(image, dict) and set(image) == {"dev", "ino"}
                                  and all(isinstance(v, int) for v in image.values())):
        raise ValueError("bad image")
    verify = data.get("verify")
    if not (isinstance(verify, dict) and isinstance(verify.get("at_ns"), int) and isinstance(verify.get("cycles"), int)):
        raise ValueError("bad verify")
    if data.get("open") is not None and not isinstance(data.get("open"), str):
        raise ValueError("bad open")
    return {"v": STATE_VERSION, "volume": volume, "image": image, "clones": dict(clones), "open": data.get("open"),
            "verify": {"at_ns": verify["at_ns"], "cycles": verify["cycles"]}}

