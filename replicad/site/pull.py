"""Pull: make committed snapshots complete here by fetching what is missing from the sites
that hold them (catch-up after downtime, a promotion's restore, healing bit rot), and apply a
snapshot to an image while re-fetching any chunk found corrupt on the way.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from replicad.core.errors import (IntegrityError, NotFoundError, PeerUnavailableError, RecordConflictError,
                                  ReplicadError)
from replicad.core.manifest import Manifest, iter_block_digests
from replicad.peer.transport import PeerClient, snapshot_complete
from replicad.site.cluster import Cluster
from replicad.site.runner import load_manifest
from replicad.storage.catalog import Catalog, SnapshotRecord
from replicad.storage.chunkstore import ChunkStore
from replicad.storage.image import apply_snapshot

log = logging.getLogger("replicad.site.pull")


class Pull:
    """Fetching chunks of committed snapshots from their holders into this site's store.

    Args:
        cluster: Raft view and members (holders, their peer URLs).
        store, catalog: this site's chunk store and snapshot catalog.
        peers: the peer API client.
    """

    def __init__(self, cluster: Cluster, store: ChunkStore, catalog: Catalog, peers: PeerClient) -> None:
        self.site_id = cluster.site_id
        self.cluster = cluster
        self.store = store
        self.catalog = catalog
        self.peers = peers

    async def ensure_snapshot(self, volume: str, seq: int, vs: dict | None = None) -> Manifest:
        """Make sure committed snapshot ``seq`` is complete in the local store, fetching what is
        missing from its holders; chunks found corrupt locally are dropped and re-fetched.

        Returns its manifest. Raises NotFoundError if unknown, PeerUnavailableError /
        IntegrityError if no holder could supply it.
        """
        vs = vs or self.cluster.volume_state(volume)
        if vs is None or seq not in vs["snapshots"]:
            raise NotFoundError(f"no committed snapshot {volume}#{seq}", volume=volume, seq=seq)
        snap = vs["snapshots"][seq]
        root = snap["root"]
        holders = [h for h in snap["holders"] if h != self.site_id]
        last_err: ReplicadError | None = None
        for attempt in range(3):
            try:
                await self.fetch_missing(volume, vs["epoch"], [root], holders)
                manifest = load_manifest(self.store, root)
                await self.fetch_missing(volume, vs["epoch"], list(manifest.pages), holders)
                need = await asyncio.to_thread(
                    lambda: self.store.missing(d for d in iter_block_digests(manifest, self.store.get) if any(d)))
                await self.fetch_missing(volume, vs["epoch"], need, holders)
                if need:
                    log.info("pulled %s#%d from %s: %d block chunks were missing here", volume, seq,
                             ", ".join(holders), len(need))
                await asyncio.to_thread(snapshot_complete, self.store, volume, snap["epoch"], seq, root)
                if self.catalog.find_root(volume, root) is None:
                    await asyncio.to_thread(self._record_committed, SnapshotRecord(
                        volume, snap["epoch"], seq, root, "committed", snap["created_at_ns"]))
                else:
                    rec = self.catalog.find_root(volume, root)
                    if rec.state in ("local", "received"):
                        await asyncio.to_thread(self.catalog.set_state, volume, rec.epoch, rec.seq, "committed")
                return manifest
            except IntegrityError as err:
                bad = err.evidence.get("digest")
                log.error("corrupt chunk at %s (%s): dropping and re-fetching from a peer", self.site_id,
                          err.evidence)
                if isinstance(bad, str):
                    self.store.delete_corrupt(bytes.fromhex(bad))
                elif isinstance(bad, bytes):
                    self.store.delete_corrupt(bad)
                last_err = err
            except NotFoundError as err:
                last_err = err
        assert last_err is not None
        raise last_err

    def _record_committed(self, rec: SnapshotRecord) -> None:
        """Record committed snapshot ``rec`` here. A ``received`` record at the same ``(volume,
        epoch, seq)`` with another root was never committed: the primary of that epoch announced
        one root and committed another (a forgery, or a snapshot whose commit was refused), so it
        gives way to the committed one, logged at WARNING. A committed record with another root is
        never replaced (RecordConflictError propagates). Synchronous."""
        try:
            self.catalog.put(rec)
        except RecordConflictError:
            held = [r for r in self.catalog.list(rec.volume) if (r.epoch, r.seq) == (rec.epoch, rec.seq)]
            if not held or held[0].state != "received":
                raise
            log.warning("AUDIT %s#%d (epoch %d) at %s: the received root %s was never committed; the committed root "
                        "%s replaces it", rec.volume, rec.seq, rec.epoch, self.site_id, held[0].root.hex(),
                        rec.root.hex())
            self.catalog.delete(rec.volume, rec.epoch, rec.seq)
            self.catalog.put(rec)

    async def apply_repairing(self, volume: str, target: Path, manifest: Manifest, *, base: Manifest | None = None,
                              progress=None, attempts: int = 8):
        """:func:`~replicad.storage.image.apply_snapshot`, healing bit rot on the way: a chunk found
        corrupt in the local store is dropped, re-fetched from another holder (verified) and
        the apply resumed. Raises the IntegrityError if no holder has a good copy."""
        vs = self.cluster.volume_state(volume)
        snap = (vs or {}).get("snapshots", {}).get(manifest.seq, {})
        peers = self.cluster.data_peers()
        holders = [h for h in snap.get("holders", peers) if h != self.site_id] or peers
        for attempt in range(attempts):
            try:
                return await asyncio.to_thread(apply_snapshot, target, manifest, self.store, base=base,
                                               progress=progress)
            except IntegrityError as err:
                bad = err.evidence.get("digest")
                if not isinstance(bad, str) or attempt == attempts - 1:
                    raise
                log.error("corrupt chunk %s in the store of %s: re-fetching it from %s", bad, self.site_id, holders)
                digest = bytes.fromhex(bad)
                await asyncio.to_thread(self.store.delete_corrupt, digest)
                try:
                    await self.fetch_missing(volume, vs["epoch"] if vs else 0, [digest], holders)
                except (NotFoundError, PeerUnavailableError):  # no good copy to be had: the corruption stands
                    raise err from None
        raise AssertionError("unreachable")

    async def fetch_missing(self, volume: str, epoch: int, digests: list[bytes], holders: list[str]) -> None:
        """Fetch the chunks of ``digests`` this store lacks from ``holders`` in turn (verified on
        receipt). Raises NotFoundError if some are still missing after every holder that
        answered lacked them, PeerUnavailableError if no holder could be reached at all (a
        takeover then waits for a holder instead of skipping the snapshot as lost)."""
        need = await asyncio.to_thread(self.store.missing, digests)
        answered: list[str] = []
        for holder in holders:
            if not need:
                return
            try:
                await self.peers.fetch(self.cluster.peer_url(holder), volume, epoch, need, self.store)
                answered.append(holder)
            except ReplicadError as err:
                log.info("fetch from %s failed: %s", holder, err)
            need = await asyncio.to_thread(self.store.missing, need)
        if need and holders and not answered:
            # nobody could be asked: the chunks may well exist (holders down, link cut) — not "lost"
            raise PeerUnavailableError(f"{len(need)} chunks of {volume} missing here and no holder reachable "
                                       f"({', '.join(holders)})", volume=volume, missing=len(need), holders=holders)
        if need:
            raise NotFoundError(f"{len(need)} chunks of {volume} not available from any holder",
                                volume=volume, missing=len(need), holders=holders, answered=answered)
