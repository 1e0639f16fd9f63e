"""The ``qemu`` snapshot source: a VM disk served by ``qemu-storage-daemon``, a persistent dirty
bitmap for what changed, copy-before-write fleecing for the point in time.

For a volume whose disk image is a qcow2 node of a ``qemu-storage-daemon`` (QSD) that the
operator runs (and guests write through, e.g. over its NBD or vhost-user-blk export). The
source talks to QSD's QMP socket (``[volumes.source] qmp_socket``) about one block node
(``node``: the qcow2 format node's ``node-name``). Each cycle (:meth:`QemuSource.snapshot`):

1. Leftovers of an earlier cycle (export, backup job, fleecing node, a dead FUSE mount) are
   removed. A scratch qcow2 (the *fleecing target*, ``<state dir>/<volume>.fleece.qcow2``,
   backing = ``node``) is created and added to QSD.
2. One QMP ``transaction``: ``block-dirty-bitmap-add`` of the next persistent bitmap
   ``replicad-<volume>-<gen>``; ``block-dirty-bitmap-disable`` of the current one (frozen: it
   now lists exactly the clusters written since the parent's view); ``blockdev-backup``
   ``sync: none`` from ``node`` to the fleecing target — QEMU's copy-before-write filter, which
   copies a cluster's old content into the target before a guest write replaces it. The
   target is the volume at the instant of the transaction, whatever the guest writes next:
   a crash-consistent point in time without freezing anything (libvirt's pull-mode backup
   does the same). ``pre_snapshot``/``post_snapshot`` hooks run around the transaction only.
3. The target is exported twice by QSD: over NBD (``nbd_socket``, read-only, with the frozen
   bitmap) and over FUSE on the regular file ``<state dir>/<volume>.view``. The frozen
   bitmap's dirty extents are read with libnbd (meta context ``qemu:dirty-bitmap:NAME``,
   ``block_status``); those blocks are read from the view file and the manifest is built from
   the parent's (:func:`replicad.sources.tracked.tracked_snapshot`). Cost: the changed blocks.
4. After the snapshot commits (:meth:`committed`) the frozen bitmap is removed; if it is not
   committed (:meth:`abandoned`) it is merged into the new bitmap first, so the next cycle
   still reads everything written since the parent. Either way the exports, the job and the
   fleecing node go. The record is written before the transaction (``open``) and after.

Tracking states as the reflink source (``tracking`` → ``lost`` → ``rescan`` → ``tracking``;
a rescan is a full scan of the point-in-time view through the file source). The change record
is *lost* when:

* ``no_parent_bitmap``: no bitmap is recorded for the parent snapshot (first cycle, promotion,
  restore, an abandoned rescan, a commit whose answer was lost);
* ``bitmap_missing``: QSD has no bitmap of that name on ``node`` (removed by hand, another
  image opened);
* ``bitmap_inconsistent``: QSD marks the bitmap inconsistent (it was ``in-use`` in the qcow2
  when QSD died: an unclean stop; such a bitmap can only be removed), or it is not recording;
* ``daemon_restarted``: QSD was restarted (even cleanly: the image may have been written
  while no bitmap recorded). Seen by a non-persistent marker bitmap ``replicad-<volume>-alive``
  (disabled: it costs nothing) that only a running QSD holds;
* ``unclean_restart``: this site died inside a cycle (the record names an open cycle);
* ``state_damaged``: the record file cannot be read.

QSD unreachable, ``node`` unknown or not qcow2, or a failed QMP command fail the cycle with a
typed error (UnavailableError / NotFoundError / UsageError / ToolError); nothing is stored,
and the next cycle sees what became of the daemon.

Verifier: as the reflink source (``verify_every``, ``verify_max_age``): the file source's full
scan of the same view must give the tracked manifest's block digests; a mismatch is logged at
ERROR, counted and repaired by shipping the full scan's manifest.

Files in the state dir ``<data_dir>/qemu-source`` (mode 0700; QSD must be able to create and
open files there): the record ``<volume>.state.json`` (temporary file, fsync, rename, directory
fsync)::

    {"v": 1, "volume": str, "gen": int,
     "bitmap": recording bitmap name | null, "root": manifest root hex it tracks from | null,
     "open": {"old": name | null, "new": name} | null,
     "verify": {"at_ns": int, "cycles": int}}

plus the fleecing target and the view mount point during a cycle. Space: the target holds the
clusters the guest overwrote during the cycle (copy-before-write), freed at the end.

Raw images are not served directly: a persistent bitmap needs qcow2 metadata. A raw disk can
be given a qcow2 metadata sidecar (``data-file``) by the operator (README, "Source kinds").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from replicad.config import VolumeConfig
from replicad.core.errors import (NotFoundError, ReplicadError, ToolError, UnavailableError, UsageError,
                                  from_os_error)
from replicad.core.manifest import Manifest
from replicad.sources.base import SourceSnapshot
from replicad.sources.extents import block_runs
from replicad.sources.file import run_hooked, take_snapshot
from replicad.sources.reflink import ReflinkSource, _unlink
from replicad.sources.tracked import tracked_snapshot
from replicad.storage.chunkstore import ChunkStore

log = logging.getLogger("replicad.sources.qemu")

STATE_VERSION = 1
STATE_DIR_NAME = "qemu-source"
LOST_REASONS = ("no_parent_bitmap", "bitmap_missing", "bitmap_inconsistent", "daemon_restarted",
                "unclean_restart", "state_damaged")
"""Every reason a qemu source loses its change record (``replicad_source_lost_total{reason}``)."""
QMP_TIMEOUT_S = 30.0
"""Bound of one QMP connection or command."""
BLOCK_STATUS_CHUNK = 2**32 - 2**16
"""Bytes asked per NBD ``block_status`` request: the largest 32-bit length (the protocol's)
that is a multiple of 64 KiB. Each request costs QEMU's server a fresh reply array of
128 Ki extents (1 MiB) however few it holds, so the bitmap read grows with the number of
requests: with 1 GiB requests, 163 dirty clusters read in 0.2 ms at 1 GiB, 1.0 ms at 16 GiB,
2.9 ms at 256 GiB, 128 ms at 2 TiB; with this length 0.1, 0.2, 1.2 and 9.3 ms
(tests/bench/results/bench.md, "qemu 16/1 GiB ratio, by phase")."""
_EXPLAIN = {
    "no_parent_bitmap": "no dirty bitmap is recorded for the parent snapshot (first cycle, promotion, restore)",
    "bitmap_missing": "qemu-storage-daemon has no dirty bitmap of the recorded name on the node",
    "bitmap_inconsistent": "the dirty bitmap is inconsistent (qemu-storage-daemon stopped uncleanly) or not recording",
    "daemon_restarted": "qemu-storage-daemon was restarted since the parent snapshot",
    "unclean_restart": "the previous process died during a cycle",
    "state_damaged": "the qemu source record cannot be read",
}


def short_id(volume: str) -> str:
    """A QSD node-name/job-id safe tag of ``volume`` (node names are at most 31 characters)."""
    return "rd" + hashlib.sha256(volume.encode()).hexdigest()[:12]


class QemuSource(ReflinkSource):
    """The ``qemu`` source of one volume (see the module docstring). Shares the reflink source's
    record writing, tracking states and verifier; the view is QSD's fleecing export."""

    kind = "qemu"

    def __init__(self, cfg: VolumeConfig, data_dir: Path) -> None:
        super().__init__(cfg, data_dir)
        src = cfg.source
        self.clone_dir = Path(data_dir) / STATE_DIR_NAME  # the record's directory (see ReflinkSource._save)
        self.lost_total = {r: 0 for r in LOST_REASONS}
        self.qmp_socket = Path(str(src.qmp_socket))
        self.node = str(src.node)
        self.nbd_socket = Path(src.nbd_socket) if src.nbd_socket is not None \
            else self.clone_dir / f"{short_id(cfg.name)}.nbd"
        tag = short_id(cfg.name)
        self.fleece_node, self.job_id = f"{tag}f", f"{tag}j"
        self.export = f"replicad-{cfg.name}"
        self.fuse_id = f"{tag}v"
        self.marker = f"replicad-{cfg.name}-alive"
        self.fleece_path = self.clone_dir / f"{cfg.name}.fleece.qcow2"
        self.view_path = self.clone_dir / f"{cfg.name}.view"
        self._fleece_template: tuple[int, bytes] | None = None  # (size, an empty qcow2 of it): _write_fleece_image

    def matches(self, cfg: VolumeConfig) -> bool:
        s, o = cfg.source, self.cfg.source
        return (cfg.source.kind == self.kind and cfg.path == self.cfg.path
                and (s.qmp_socket, s.node, s.nbd_socket) == (o.qmp_socket, o.node, o.nbd_socket))

    def _bitmap(self, gen: int) -> str:
        return f"replicad-{self.cfg.name}-{gen}"

    # ------------------------------------------------------------------ record
    def _empty_record(self) -> dict[str, Any]:
        return {"v": STATE_VERSION, "volume": self.cfg.name, "gen": 0, "bitmap": None, "root": None, "open": None,
                "verify": {"at_ns": 0, "cycles": 0}}

    def _parse(self, data: Any) -> dict[str, Any]:
        return _parse_record(data, self.cfg.name)

    def _after_load(self) -> None:  # no clone files: the views live in qemu-storage-daemon
        pass

    def _lose(self, reason: str) -> None:
        """Tracking is lost for ``reason``: WARNING, counted."""
        self.lost_total[reason] = self.lost_total.get(reason, 0) + 1
        if self.state != "lost" or self.reason != reason:
            log.warning("volume %s: change tracking lost (%s): %s", self.cfg.name, reason, _EXPLAIN.get(reason, reason))
        self._set("lost", reason)

    # ------------------------------------------------------------------ QMP
    @asynccontextmanager
    async def _qmp(self) -> AsyncIterator["_Qmp"]:
        q = _Qmp(self.qmp_socket)
        await q.connect()
        try:
            yield q
        finally:
            await q.close()

    def _node_info(self, nodes: list[dict[str, Any]]) -> dict[str, Any]:
        """The entry of ``node`` in ``nodes`` (:func:`node_info`)."""
        return node_info(nodes, self.node, self.qmp_socket)

    async def _tidy(self, q: "_Qmp", keep: set[str], nodes: list[dict[str, Any]] | None = None) -> None:
        """Remove this volume's view exports, backup job and fleecing node if present, a dead
        FUSE mount on the view file, and every ``replicad-<volume>-<n>`` bitmap not in ``keep``.
        ``nodes``: QEMU's ``query-named-block-nodes`` answer if the caller has just asked (used
        when nothing had to be removed before the nodes are looked at). Asks only for what is
        there: with nothing left over, three queries."""
        ours = (self.export, self.fuse_id)
        removed = False
        for e in await self._exports(q):
            if e.get("id") in ours:
                await q.run_quiet("block-export-del", {"id": e["id"], "mode": "hard"})
                removed = True
        if any(j.get("device") == self.job_id for j in await q.run("query-block-jobs")):
            await q.run_quiet("block-job-cancel", {"device": self.job_id, "force": True})
            await _wait_until(lambda: self._job_gone(q), "the fleecing job to end")
            removed = True
        if removed:
            await _wait_until(lambda: self._exports_gone(q), "the view exports to close")
        if removed or nodes is None:
            nodes = await q.run("query-named-block-nodes", {"flat": True})
        nodes = {n.get("node-name"): n for n in nodes}
        if self.fleece_node in nodes:
            await q.run("blockdev-del", {"node-name": self.fleece_node})
        await asyncio.to_thread(_unmount_dead, self.view_path)
        pattern = re.compile(re.escape(f"replicad-{self.cfg.name}-") + r"\d+$")
        for bm in (nodes.get(self.node) or {}).get("dirty-bitmaps") or []:
            name = bm.get("name")
            if isinstance(name, str) and pattern.match(name) and name not in keep:
                await q.run("block-dirty-bitmap-remove", {"node": self.node, "name": name})
        await asyncio.to_thread(_unlink, self.fleece_path)

    async def _job_gone(self, q: "_Qmp") -> bool:
        return not any(j.get("device") == self.job_id for j in await q.run("query-block-jobs"))

    async def _exports(self, q: "_Qmp") -> list[dict[str, Any]]:
        try:
            return list(await q.run("query-block-exports"))
        except ToolError:  # a QEMU without the block export API has none of ours
            return []

    async def _exports_gone(self, q: "_Qmp") -> bool:
        return not any(e.get("id") in (self.export, self.fuse_id) for e in await self._exports(q))

    # ------------------------------------------------------------------ cycle
    async def snapshot(self, *, volume: str, seq: int, epoch: int, parent: Manifest | None,
                       store: ChunkStore, now_ns: int) -> SourceSnapshot:
        """One cycle's snapshot (module docstring, steps 1–3).

        Raises:
            UnavailableError: QSD's QMP or NBD socket does not answer (nothing stored).
            NotFoundError: ``node`` is not a node of QSD. UsageError: ``node`` is not qcow2.
            ToolError: a QMP command or ``qemu-img`` failed. SourceShrunkError: the disk is
            smaller than ``parent`` (and not ``allow_shrink``). StoreFullError / InternalError: I/O.
        """
        if self._record is None:
            await asyncio.to_thread(self._load)
        rec = self._record
        assert rec is not None
        t0 = time.perf_counter()
        failed: BaseException | None = None
        async with self._qmp() as q:  # one connection for the view and its exports (QMP serves one client)
            nodes = await q.run("query-named-block-nodes", {"flat": True})
            info = self._node_info(nodes)
            old = self._tracked_bitmap(parent, info)
            await self._tidy(q, {old} if old else set(), nodes)
            if not any(b.get("name") == self.marker for b in info.get("dirty-bitmaps") or []):
                await q.run("block-dirty-bitmap-add", {"node": self.node, "name": self.marker, "persistent": False,
                                                       "disabled": True})
            size = int((info.get("image") or {}).get("virtual-size") or 0)
            await self._write_fleece_image(size)
            await q.run("blockdev-add", {"driver": "qcow2", "node-name": self.fleece_node, "backing": self.node,
                                         "file": {"driver": "file", "filename": str(self.fleece_path)}})
            rec["gen"] += 1
            new = self._bitmap(rec["gen"])
            rec["open"] = {"old": old, "new": new}
            await asyncio.to_thread(self._save)
            actions: list[dict[str, Any]] = [
                {"type": "block-dirty-bitmap-add", "data": {"node": self.node, "name": new, "persistent": True}}]
            if old:
                actions.append({"type": "block-dirty-bitmap-disable", "data": {"node": self.node, "name": old}})
            actions.append({"type": "blockdev-backup", "data": {"device": self.node, "target": self.fleece_node,
                                                                "sync": "none", "job-id": self.job_id,
                                                                "auto-dismiss": True}})
            try:
                await self._transaction_hooked(q, actions)
            except BaseException:
                rec["open"] = None
                self._save()
                raise
            view_s = time.perf_counter() - t0
            try:
                await self._export(q, old)
            except BaseException as err:  # ended below, on a connection of its own
                failed = err
        token = {"old": old, "new": new}
        try:
            if failed is not None:
                raise failed
            snap = await self._build(token, volume, seq, epoch, parent, store, now_ns, size)
            snap.info.update(view_s=view_s)
        except BaseException:
            # cancelled or failed: keep what the old bitmap listed, drop the view (shielded: safe while cancelled)
            await asyncio.shield(self._finish(token, committed=False))
            if self.state == "rescan":
                self._set("lost", self.reason)
            raise
        self.last = dict(snap.info)
        return snap

    async def _transaction_hooked(self, q: "_Qmp", actions: list[dict[str, Any]]) -> None:
        """pre hook, the QMP transaction, post hook (also after a failure; the first error wins)."""
        src = self.cfg.source
        await run_hooked(src.pre_snapshot, src.post_snapshot, lambda: q.run("transaction", {"actions": actions}),
                         "QMP transaction")

    def _tracked_bitmap(self, parent: Manifest | None, info: dict[str, Any]) -> str | None:
        """The recording bitmap that lists every write since ``parent``'s view, or None with the
        state set to ``lost`` (reason) when there is a parent but no usable bitmap."""
        rec = self._record
        assert rec is not None
        if not self._continues_tracking(parent):
            return None
        if rec["bitmap"] is None or rec["root"] != parent.root.hex():
            self._lose("no_parent_bitmap")
            return None
        bitmaps = {b.get("name"): b for b in info.get("dirty-bitmaps") or []}
        bm = bitmaps.get(rec["bitmap"])
        if bm is None:
            self._lose("bitmap_missing")
            return None
        if bm.get("inconsistent") or not bm.get("recording"):
            self._lose("bitmap_inconsistent")
            return None
        if self.marker not in bitmaps:
            self._lose("daemon_restarted")
            return None
        return rec["bitmap"]

    async def _export(self, q: "_Qmp", old: str | None) -> None:
        """Export the fleecing node over NBD (with the frozen bitmap) and over FUSE on the view file."""
        await self._nbd_server(q)
        args: dict[str, Any] = {"type": "nbd", "id": self.export, "node-name": self.fleece_node,
                                "name": self.export, "writable": False}
        if old:
            args["bitmaps"] = [old]
        await q.run("block-export-add", args)
        await asyncio.to_thread(_touch, self.view_path)
        await q.run("block-export-add", {"type": "fuse", "id": self.fuse_id, "node-name": self.fleece_node,
                                         "mountpoint": str(self.view_path), "writable": False})

    async def _write_fleece_image(self, size: int) -> None:
        """Write the fleecing target: an empty qcow2 of ``size`` bytes. ``qemu-img create`` runs
        once per size in this process (a process start per cycle cost 10-50 ms); its bytes are
        kept (a few hundred KiB at most: header, L1 and refcount tables) and written each cycle.
        No fsync: the target is scratch, rewritten at the next cycle. ToolError if ``qemu-img``
        fails; InternalError / StoreFullError if the state dir cannot be written."""
        if self._fleece_template is None or self._fleece_template[0] != size:
            tmp = self.fleece_path.with_name(self.fleece_path.name + ".template")
            await _run_tool(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp), str(size)])
            try:
                data = await asyncio.to_thread(tmp.read_bytes)
            except OSError as err:
                raise from_os_error(err, "reading the fleecing image template", path=str(tmp)) from err
            finally:
                await asyncio.to_thread(_unlink, tmp)
            self._fleece_template = (size, data)
        try:
            await asyncio.to_thread(self.fleece_path.write_bytes, self._fleece_template[1])
        except OSError as err:
            raise from_os_error(err, "writing the fleecing image", path=str(self.fleece_path)) from err

    async def _nbd_server(self, q: "_Qmp") -> None:
        """Start QSD's NBD server on ``nbd_socket`` unless one runs: then it must be the configured
        ``nbd_socket`` or the one an earlier cycle started in the state dir (UsageError otherwise)."""
        try:
            await q.run("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(self.nbd_socket)}}})
        except ToolError as err:
            if "already running" not in str(err.evidence.get("desc", "")):
                raise
            if self.cfg.source.nbd_socket is None and not _is_socket(self.nbd_socket):  # not the one we started
                raise UsageError("qemu-storage-daemon runs an NBD server already: set [volumes.source] nbd_socket to "
                                 "its unix socket", node=self.node) from err

    async def _build(self, token: dict[str, Any], volume: str, seq: int, epoch: int, parent: Manifest | None,
                     store: ChunkStore, now_ns: int, size: int) -> SourceSnapshot:
        """The manifest of the view: tracked from the frozen bitmap, else a full scan."""
        allow_shrink = self.cfg.source.allow_shrink
        old = token["old"]
        if parent is not None and old:
            t0 = time.perf_counter()
            ranges = await asyncio.to_thread(dirty_ranges, self.nbd_socket, self.export, old)
            map_s = time.perf_counter() - t0
            runs = block_runs(ranges, parent.block_size, -(-size // parent.block_size))
            tr = await tracked_snapshot(self.view_path, volume=volume, seq=seq, epoch=epoch, parent=parent,
                                        store=store, now_ns=now_ns, runs=runs, allow_shrink=allow_shrink,
                                        page_cache=self._pages)
            info = {"mode": "tracked", "map_s": map_s, "changed_ranges": len(ranges), "read_blocks": tr.read_blocks,
                    "read_bytes": tr.read_bytes, "scan_s": tr.scan.scan_seconds}
            snap = SourceSnapshot(tr.scan, "tracked", info, token)
            if self._verify_due(now_ns):
                await self._verify(snap, self.view_path, volume, seq, epoch, parent, store, now_ns)
            return snap
        mode = "full" if parent is None else "rescan"
        self._set("rescan", self.reason)
        if mode == "rescan":
            self.rescans += 1
            log.info("volume %s: full rescan of the point-in-time view (tracking %s)", volume, self.reason)
        pages: dict[bytes, bytes] = {}  # what the scan built: the next tracked cycle's parent pages
        result = await take_snapshot(self.view_path, volume=volume, seq=seq, epoch=epoch, parent=parent, store=store,
                                     now_ns=now_ns, block_size=self.cfg.block_size_bytes, fingerprints=None,
                                     allow_shrink=allow_shrink, pages_out=pages,
                                     pages_out_max_bytes=self._pages.max_bytes, private=True)
        self._pages.replace(result.manifest.pages, pages)
        return SourceSnapshot(result, mode, {"mode": mode, "scan_s": result.scan_seconds}, token)

    # ------------------------------------------------------------------ after the cycle
    async def _finish(self, token: dict[str, Any], *, committed: bool, root: str | None = None) -> bool:
        """End the cycle of ``token`` in QSD and in the record. Committed: the new bitmap tracks
        from ``root``, the frozen one is removed. Not committed: the frozen bitmap is merged into
        the new one (which then tracks from the parent again); after a full scan there is none to
        keep. True when QSD did all of it; a failure is logged and leaves the record without a
        bitmap (the next cycle rescans). Never raises."""
        rec = self._record
        assert rec is not None
        old, new = token["old"], token["new"]
        ok = True
        try:
            async with self._qmp() as q:
                await self._tidy(q, {new, old} - {None})  # the view first: it holds the frozen bitmap
                if not committed and old:
                    await q.run("block-dirty-bitmap-merge", {"node": self.node, "target": new, "bitmaps": [old]})
                for name in ([old] if committed or old else [old, new]):
                    if name:
                        await q.run("block-dirty-bitmap-remove", {"node": self.node, "name": name})
        except (ReplicadError, OSError) as err:
            ok = False
            log.warning("volume %s: ending the qemu source cycle failed (%s): the next cycle rescans", self.cfg.name,
                        err)
        if committed:
            rec["bitmap"], rec["root"] = (new, root) if ok else (None, None)
        elif not (ok and old):
            rec["bitmap"], rec["root"] = None, None
        else:
            rec["bitmap"] = new  # root unchanged: the merged bitmap tracks from the parent's view
        rec["open"] = None
        try:
            await asyncio.to_thread(self._save)
        except ReplicadError as err:
            log.warning("volume %s: %s (the next start rescans once)", self.cfg.name, err)
        return ok

    async def committed(self, snap: SourceSnapshot) -> None:
        """The new bitmap tracks from ``snap``'s view; the frozen one and the view go."""
        rec = self._record
        assert rec is not None
        if snap.mode in ("full", "rescan", "verified", "repaired"):
            rec["verify"] = {"at_ns": snap.result.manifest.created_at_ns, "cycles": 0}
        else:
            rec["verify"]["cycles"] += 1
        if await self._finish(snap.token, committed=True, root=snap.result.manifest.root.hex()):
            self._set("tracking")

    async def abandoned(self, snap: SourceSnapshot) -> None:
        """Merge the frozen bitmap back, drop the view. A rescan not committed leaves ``lost``."""
        await self._finish(snap.token, committed=False)
        if self.state == "rescan":
            self._set("lost", self.reason)

    def status(self) -> dict[str, Any]:
        out = super().status()
        for key in ("clone_dir", "parent_clone"):
            out.pop(key, None)
        out.update(qmp_socket=str(self.qmp_socket), node=self.node, bitmap=(self._record or {}).get("bitmap"))
        return out


# ---------------------------------------------------------------------- helpers

def node_info(nodes: list[dict[str, Any]], node: str, qmp_socket: Path) -> dict[str, Any]:
    """The entry of block node ``node`` in ``nodes`` (QEMU's ``query-named-block-nodes`` answer
    of the QSD on ``qmp_socket``). NotFoundError if none, UsageError if it is not a qcow2 node
    (a persistent bitmap needs qcow2 metadata)."""
    for n in nodes:
        if n.get("node-name") == node:
            if n.get("drv") != "qcow2":
                raise UsageError(f"qemu source node {node!r} is a {n.get('drv')!r} node; it must be qcow2 "
                                 "(a raw disk needs a qcow2 metadata sidecar: README)", node=node)
            return n
    raise NotFoundError(f"qemu-storage-daemon has no block node {node!r}", node=node, qmp_socket=str(qmp_socket))


async def disk_size_bytes(cfg: VolumeConfig) -> int:
    """The virtual size in bytes of the disk of the ``qemu`` volume ``cfg``: what its guest sees
    and every snapshot of it holds (``image.virtual-size`` of ``[volumes.source] node`` in
    QEMU's ``query-named-block-nodes``), not the size of its qcow2 file (which grows with the
    clusters written). One QMP connection, each step bounded by :data:`QMP_TIMEOUT_S`.

    Raises:
        UnavailableError: QSD does not answer on ``qmp_socket``.
        NotFoundError: ``node`` is not a node of QSD. UsageError: ``node`` is not qcow2.
        ToolError: QSD refused the query, or its answer names no virtual size.
    """
    qmp_socket, node = Path(str(cfg.source.qmp_socket)), str(cfg.source.node)
    q = _Qmp(qmp_socket)
    await q.connect()
    try:
        info = node_info(await q.run("query-named-block-nodes", {"flat": True}), node, qmp_socket)
    finally:
        await q.close()
    size = (info.get("image") or {}).get("virtual-size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ToolError(f"qemu-storage-daemon names no virtual size of node {node!r}", command="query-named-block-nodes",
                        returncode=None, stderr_tail="", node=node)
    return size


class _Qmp:
    """One QMP connection (``qemu.qmp.QMPClient``) with bounded waits and typed errors."""

    def __init__(self, path: Path) -> None:
        from qemu.qmp import QMPClient

        self.path = path
        self.client = QMPClient("replicad")

    async def connect(self) -> None:
        try:
            await asyncio.wait_for(self.client.connect(str(self.path)), QMP_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError, Exception) as err:  # ConnectError wraps the OSError
            raise UnavailableError(f"qemu-storage-daemon does not answer on its QMP socket {self.path}: {err}",
                                   qmp_socket=str(self.path)) from err

    async def run(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Execute ``cmd``. ToolError with QEMU's ``desc`` if it fails; UnavailableError if the
        connection is lost or the answer takes longer than QMP_TIMEOUT_S."""
        from qemu.qmp import ExecuteError

        try:
            return await asyncio.wait_for(self.client.execute(cmd, args), QMP_TIMEOUT_S)
        except ExecuteError as err:
            desc = str(err)  # QEMU's error description
            raise ToolError(f"qemu-storage-daemon refused {cmd}: {desc}", command=cmd, desc=desc) from err
        except (OSError, asyncio.TimeoutError, EOFError, Exception) as err:
            if isinstance(err, asyncio.CancelledError):
                raise
            raise UnavailableError(f"qemu-storage-daemon stopped answering ({cmd}): {err!r}", command=cmd,
                                   qmp_socket=str(self.path)) from err

    async def run_quiet(self, cmd: str, args: dict[str, Any]) -> None:
        """``run`` whose refusal (e.g. nothing to delete) is ignored."""
        try:
            await self.run(cmd, args)
        except ToolError:
            pass

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.client.disconnect(), QMP_TIMEOUT_S)
        except Exception:  # noqa: BLE001 — a connection that died is closed already
            pass


async def _wait_until(check: Any, what: str, timeout_s: float = QMP_TIMEOUT_S) -> None:
    """Poll ``await check()`` until true, 1 ms after the first try, doubling to every 20 ms
    (a cancelled job or a deleted export is usually gone within a millisecond or two).
    UnavailableError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    pause_s = 0.001
    while not await check():
        if time.monotonic() > deadline:
            raise UnavailableError(f"qemu-storage-daemon: timed out waiting for {what}", timeout_s=timeout_s)
        await asyncio.sleep(pause_s)
        pause_s = min(0.02, pause_s * 2)


async def _run_tool(argv: list[str], timeout_s: float = 60.0) -> None:
    """Run ``argv`` (no shell), bounded; ToolError if it fails or times out."""
    if shutil.which(argv[0]) is None:
        raise ToolError(f"{argv[0]} is not installed (Debian: qemu-utils)", command=argv[0], returncode=None,
                        stderr_tail="")
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise ToolError(f"{argv[0]} failed: {err.decode(errors='replace')[-500:]}", command=argv[0],
                        returncode=proc.returncode, stderr_tail=err.decode(errors="replace")[-500:])


def dirty_ranges(socket: Path, export: str, bitmap: str) -> list[tuple[int, int]]:
    """Worker thread: ``[(offset, length)]`` (bytes, sorted, merged) that dirty bitmap ``bitmap``
    marks in NBD export ``export`` on the unix socket ``socket``, read with libnbd's
    ``block_status`` in the meta context ``qemu:dirty-bitmap:<bitmap>`` (flag 1: dirty; see
    QEMU's docs/interop/nbd.txt).

    Raises:
        UnavailableError: the server cannot be reached or the connection fails.
        ToolError: the export does not offer the bitmap's meta context.
    """
    import nbd  # Debian python3-libnbd (scripts/setup.sh links it into this interpreter)

    context = f"qemu:dirty-bitmap:{bitmap}"
    h = nbd.NBD()
    try:
        try:
            h.add_meta_context(context)
            h.set_export_name(export)
            h.connect_unix(str(socket))
        except nbd.Error as err:
            raise UnavailableError(f"cannot read the dirty bitmap over NBD: {err}", socket=str(socket),
                                   export=export) from err
        if not h.can_meta_context(context):
            raise ToolError(f"the NBD export {export} does not offer {context}", command="block_status",
                            returncode=None, stderr_tail="")
        size = h.get_size()
        out: list[tuple[int, int]] = []
        offset = 0
        while offset < size:
            got: list[int] = []

            def cb(meta: str, start: int, entries: list[int], err: int, got: list[int] = got, base: int = offset) -> int:
                if meta == context:
                    pos = start
                    for i in range(0, len(entries) - 1, 2):
                        length, flags = entries[i], entries[i + 1]
                        if flags & 1 and length:
                            if out and out[-1][0] + out[-1][1] == pos:
                                out[-1] = (out[-1][0], out[-1][1] + length)
                            else:
                                out.append((pos, length))
                        pos += length
                    got.append(pos)
                return 0

            try:
                h.block_status(min(BLOCK_STATUS_CHUNK, size - offset), offset, cb)
            except nbd.Error as err:
                raise UnavailableError(f"reading the dirty bitmap over NBD failed: {err}", socket=str(socket),
                                       export=export, offset=offset) from err
            if not got or got[-1] <= offset:
                raise ToolError("the NBD server answered block_status without progress", command="block_status",
                                returncode=None, stderr_tail="", offset=offset)
            offset = got[-1]
        return out
    finally:
        try:
            h.shutdown()
        except Exception:  # noqa: BLE001 — closing only
            pass


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _touch(path: Path) -> None:
    """The FUSE export's mount point: an existing regular file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    except OSError as err:
        raise from_os_error(err, "creating the view mount point", path=str(path)) from err


def _unmount_dead(path: Path) -> None:
    """Lazily unmount a FUSE mount left on ``path`` by a QSD that died with its export up."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            mounted = any(line.split()[4] == real for line in f if len(line.split()) > 4)
    except OSError:
        return
    if mounted:
        tool = shutil.which("fusermount3") or shutil.which("fusermount")
        argv = [tool, "-u", "-z", real] if tool else ["umount", "-l", real]
        import subprocess

        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=30, check=False)


def _parse_record(data: Any, volume: str) -> dict[str, Any]:
    """The record checked for shape. Raises ValueError when it is not one of ``volume``."""
    if not isinstance(data, dict) or data.get("v") != STATE_VERSION or data.get("volume") != volume:
        raise ValueError("not a version-1 record of this volume")
    if not isinstance(data.get("gen"), int) or data["gen"] < 0:
        raise ValueError("bad gen")
    for key in ("bitmap", "root"):
        if data.get(key) is not None and not isinstance(data.get(key), str):
            raise ValueError(f"bad {key}")
    opened = data.get("open")
    if opened is not None and not (isinstance(opened, dict) and set(opened) == {"old", "new"}):
        raise ValueError("bad open")
    verify = data.get("verify")
    if not (isinstance(verify, dict) and isinstance(verify.get("at_ns"), int) and isinstance(verify.get("cycles"), int)):
        raise ValueError("bad verify")
    return {"v": STATE_VERSION, "volume": volume, "gen": data["gen"], "bitmap": data.get("bitmap"),
            "root": data.get("root"), "open": opened, "verify": {"at_ns": verify["at_ns"], "cycles": verify["cycles"]}}
