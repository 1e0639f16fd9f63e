"""Per-volume state of one site (:class:`VolumeRunner`) and the small helpers every room of
the site shares: the role change through the one role table, the runner of a volume, the
manifest behind a root.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from replicad.config import VolumeConfig
from replicad.core import roles
from replicad.core.errors import NotFoundError
from replicad.core.manifest import Manifest
from replicad.storage.chunkstore import ChunkStore

log = logging.getLogger("replicad.site.runner")


@dataclass
class VolumeRunner:
    """Per-volume state of this site (mutated only on the event loop, except ``fence_flag``)."""

    cfg: VolumeConfig
    role: str = "replica"
    acting_epoch: int | None = None
    parent: Manifest | None = None          # newest committed manifest of our line (primary)
    # monotonic; cycles run one interval apart, the first one interval after start/promotion
    last_cycle_at: float = field(default_factory=time.monotonic)
    fence_flag: threading.Event = field(default_factory=threading.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    became_primary: asyncio.Event = field(default_factory=asyncio.Event)
    last_error: str | None = None
    last_report: dict[str, Any] = field(default_factory=dict)
    snapshot_now: bool = False
    standby_applying: bool = False          # the standby is being rewritten (its record is cleared)


def runner_of(runners: dict[str, VolumeRunner], volume: str, site_id: str) -> VolumeRunner:
    """The runner of ``volume``. Raises NotFoundError if the volume is not configured here."""
    runner = runners.get(volume)
    if runner is None:
        raise NotFoundError(f"volume {volume} is not configured at {site_id}", volume=volume)
    return runner


def transition(runner: VolumeRunner, event: str) -> None:
    """Change the runner's role through the one role table (ConflictError if illegal)."""
    new = roles.next_role(runner.role, event)
    if new != runner.role:
        log.info("volume %s: role %s -> %s (%s)", runner.cfg.name, runner.role, new, event)
    runner.role = new


def load_manifest(store: ChunkStore, root: bytes) -> Manifest:
    """The manifest stored under ``root`` (a verified read). Raises NotFoundError /
    IntegrityError like :meth:`ChunkStore.get`."""
    return Manifest.decode(store.get(root))
