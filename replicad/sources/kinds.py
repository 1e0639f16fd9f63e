"""Which :class:`~replicad.sources.base.SnapshotSource` serves a volume (``[volumes.source] kind``)."""

from __future__ import annotations

from pathlib import Path

from replicad.config import VolumeConfig
from replicad.sources.base import FileSource, SnapshotSource
from replicad.sources.qemu import QemuSource
from replicad.sources.reflink import ReflinkSource

KINDS: dict[str, type[SnapshotSource]] = {"file": FileSource, "reflink": ReflinkSource, "qemu": QemuSource}


def make_source(cfg: VolumeConfig, data_dir: Path) -> SnapshotSource:
    """A new source object for volume ``cfg`` (``data_dir``: the site's data directory).

    Raises:
        UsageError: an unknown kind (the config schema admits only the kinds above).
    """
    cls = KINDS.get(cfg.source.kind)
    if cls is None:
        from replicad.core.errors import UsageError

        raise UsageError(f"unknown source kind {cfg.source.kind!r}", volume=cfg.name, kind=cfg.source.kind)
    return cls(cfg, data_dir)
