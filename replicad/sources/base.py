"""The snapshot-source interface: how the primary turns a volume into a snapshot.

A source gives the replication cycle (:mod:`replicad.site.replication`) a point-in-time view
of a volume and the ranges that changed since the parent snapshot's view, and builds the new
manifest from them. One object per volume and process (:func:`replicad.sources.kinds.make_source`), chosen by
``[volumes.source] kind``:

* ``file`` (:class:`FileSource`) — the whole live image or block device is read and hashed at
  every cycle (:func:`replicad.sources.file.take_snapshot`, with the fingerprint cache). No
  change tracking; not a point in time unless hooks freeze the file system.
* ``reflink`` (:class:`replicad.sources.reflink.ReflinkSource`) — a reflink clone of the image
  is the point-in-time view; the extent maps of this clone and the previous one give the
  changed ranges; only those are read.
* ``qemu`` (:class:`replicad.sources.qemu.QemuSource`) — a qcow2 disk served by
  qemu-storage-daemon: copy-before-write fleecing is the point-in-time view, a persistent dirty
  bitmap rotated in the same QMP transaction gives the changed ranges; only those are read.

:func:`replicad.sources.kinds.make_source` picks the class.

Lifecycle of one cycle::

    snap = await source.snapshot(volume=..., seq=..., epoch=..., parent=..., store=..., now_ns=...)
    ... judge, ship, commit ...
    await source.committed(snap)   # the snapshot committed: its view becomes the next parent
    # or
    await source.abandoned(snap)   # not committed (short of min_copies, failed, cancelled)

``committed``/``abandoned`` never raise (a failure to tidy up is logged and costs the next
cycle a rescan). ``status()`` is what ``GET /v1/status`` shows under ``volumes.<name>.source``
and what the metrics export (``replicad_source_*``).

Tracking states (``status()["state"]``): ``idle`` (no cycle as primary yet in this process),
``tracking`` (the next cycle reads only what changed), ``lost`` (the change record cannot be
trusted: see :mod:`replicad.sources.reflink` and :mod:`replicad.sources.qemu` for the causes), ``rescan`` (a full scan of the
point-in-time view is under way; back to ``tracking`` once it commits). A ``file`` source is
always ``untracked``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicad.config import VolumeConfig
from replicad.core.manifest import Manifest
from replicad.sources.file import ScanResult, take_snapshot
from replicad.storage import fingerprints
from replicad.storage.chunkstore import ChunkStore

TRACKING_STATES = ("idle", "tracking", "lost", "rescan", "untracked")
"""Every value of a source's ``state`` (one-hot in ``replicad_source_tracking``)."""


@dataclass
class SourceSnapshot:
    """What :meth:`SnapshotSource.snapshot` made.

    Attributes:
        result: the scan result; ``result.manifest`` is stored (O1).
        mode: how it was made — ``full`` (no parent), ``scan`` (file source), ``tracked``
            (only changed ranges read), ``rescan`` (tracking lost: full scan of the view),
            ``verified`` (tracked, and a full scan agreed), ``repaired`` (the full scan
            disagreed and its manifest is the one shipped), ``live`` (reflink impossible: full
            scan of the live image).
        info: figures for the cycle report (``source`` key): timings in seconds, bytes read.
        token: the source's own handle on the view (e.g. the clone's name).
    """

    result: ScanResult
    mode: str
    info: dict[str, Any] = field(default_factory=dict)
    token: Any = None


class SnapshotSource(abc.ABC):
    """One volume's snapshot source (see the module docstring)."""

    kind: str = ""

    def __init__(self, cfg: VolumeConfig, data_dir: Path) -> None:
        self.cfg = cfg
        self.data_dir = Path(data_dir)

    def matches(self, cfg: VolumeConfig) -> bool:
        """True when this object can serve ``cfg`` (same kind and view location); a reload
        that changes them gets a new source (:func:`replicad.sources.kinds.make_source`)."""
        return cfg.source.kind == self.kind and cfg.path == self.cfg.path

    @abc.abstractmethod
    async def snapshot(self, *, volume: str, seq: int, epoch: int, parent: Manifest | None,
                       store: ChunkStore, now_ns: int) -> SourceSnapshot:
        """Make snapshot ``seq`` of the volume from ``parent`` (None: a full one).

        Raises what :func:`replicad.sources.file.take_snapshot` raises, plus the source's
        own typed errors (e.g. CloneCrossDeviceError)."""

    async def committed(self, snap: SourceSnapshot) -> None:
        """``snap`` is committed: keep its view as the next parent. Never raises."""

    async def abandoned(self, snap: SourceSnapshot) -> None:
        """``snap`` will not be committed: drop its view, keep the parent's. Never raises."""

    @abc.abstractmethod
    def status(self) -> dict[str, Any]:
        """``{"kind", "state", ...}`` for the status and the metrics."""


class FileSource(SnapshotSource):
    """``kind = "file"``: :func:`replicad.sources.file.take_snapshot` of the live image or
    device at every cycle, with the hooks, the fingerprint cache and ``allow_shrink``."""

    kind = "file"

    def __init__(self, cfg: VolumeConfig, data_dir: Path) -> None:
        super().__init__(cfg, data_dir)
        self.last_mode: str | None = None

    async def snapshot(self, *, volume: str, seq: int, epoch: int, parent: Manifest | None,
                       store: ChunkStore, now_ns: int) -> SourceSnapshot:
        cfg = self.cfg
        result = await take_snapshot(Path(cfg.path), volume=volume, seq=seq, epoch=epoch, parent=parent,
                                     store=store, now_ns=now_ns,
                                     fingerprints=fingerprints.path_for(self.data_dir, cfg.name),
                                     pre_snapshot=cfg.source.pre_snapshot, post_snapshot=cfg.source.post_snapshot,
                                     block_size=cfg.block_size_bytes, allow_shrink=cfg.source.allow_shrink)
        self.last_mode = "scan" if parent is not None else "full"
        return SourceSnapshot(result, self.last_mode, {"mode": self.last_mode, "scan_s": result.scan_seconds})

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": "untracked", "last_mode": self.last_mode}

