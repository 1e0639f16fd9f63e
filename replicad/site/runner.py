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
from replicad.core.backoff import Backoff
from replicad.core.errors import NotFoundError, ReplicadError
from replicad.core.manifest import Manifest
from replicad.storage.catalog import Catalog
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
    # Trust in the standby (site/standby.py): the catalog's standby record says which snapshot the
    # image holds; it is believed only for the root in ``standby_verified_root`` — one a complete
    # read of the image proved (a finished standby check, a compare-every-block apply, an O5
    # re-read), carried forward through replicad's own fsynced applies over it. Never persisted:
    # after a restart every standby is unverified until it is read again.
    standby_verified_root: bytes | None = None
    standby_state: str = "unverified"       # unverified | verified | damaged | repairing
    standby_damaged_blocks: int = 0         # blocks the last check found differing (0 once repaired)
    standby_verified_at_ns: int | None = None
    standby_check_root: bytes | None = None  # the root the bounded check's cursor walks
    standby_check_block: int = 0            # the next block the bounded check reads
    # retries of a failing tick (core/backoff.py): the next try not before ``retry_at`` (monotonic)
    retry: Backoff = field(default_factory=lambda: Backoff(base_s=1.0, max_s=300.0))
    retry_at: float = 0.0
    retry_epoch: int | None = None          # the volume's epoch when the failures began (a new one resets)
    takeover_error: ReplicadError | None = None  # the last takeover failed like this (promote reports it)
    takeover_settled: asyncio.Event = field(default_factory=asyncio.Event)  # set: a takeover finished or failed
    source: Any = None                      # the volume's SnapshotSource (sources/base.py), made by the first cycle

    def trusts_standby(self, root: bytes | None) -> bool:
        """True when the standby image was verified to hold the snapshot ``root``."""
        return root is not None and self.standby_verified_root == root

    def standby_proven(self, root: bytes, now_ns: int) -> None:
        """A complete read (or replicad's own fsynced write over a proven image) showed the
        standby holds ``root``."""
        self.standby_verified_root = root
        self.standby_state = "verified"
        self.standby_damaged_blocks = 0
        self.standby_verified_at_ns = now_ns


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


def complete_base(store: ChunkStore, catalog: Catalog, volume: str) -> Manifest | None:
    """The newest snapshot of ``volume`` in ``catalog`` (records of every state) whose manifest is in ``store``:
    a snapshot this site holds completely, to check a new one against
    (:func:`replicad.core.manifest.changed_digests`: only the blocks that differ are looked up).

    Why a record means complete: a record is only written once its snapshot was complete here
    (produced, received and checked, or fetched and checked), and the collector never removes a
    chunk of a snapshot still recorded (``Housekeeping.gc`` keeps live every catalog record of
    each configured volume, whatever its state, besides Raft's holders and the exports' pins;
    pruning deletes the record first, and only then may its chunks go). None while the store
    has chunks to repair (``ChunkStore.repairs_pending``: a chunk found corrupt or lost was
    dropped, so a recorded snapshot may lack one; every block is looked up instead) or when no
    recorded manifest is here. Used by the ship path
    (``Receiver.complete_base``) and the pull path (``Pull.ensure_snapshot``). Synchronous;
    raises IntegrityError if the base's manifest is corrupt here."""
    if store.repairs_pending:
        return None
    for rec in sorted(catalog.list(volume), key=lambda r: r.seq, reverse=True):
        if store.has(rec.root):
            return load_manifest(store, rec.root)
    return None
