"""Scrub: re-read a held snapshot chunk by chunk (``verify``), heal what is corrupt or missing
from other holders, and re-fetch every minute the chunks this store lost and could not heal
(``repair_step``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from replicad.core.errors import IntegrityError, NotFoundError, PeerUnavailableError, ReplicadError
from replicad.core.manifest import Manifest, page_entries
from replicad.site.cluster import Cluster
from replicad.site.pull import Pull
from replicad.site.runner import VolumeRunner
from replicad.site.standby import StandbyCheck
from replicad.storage.chunkstore import ChunkStore
from replicad.telemetry.metrics import SiteMetrics

log = logging.getLogger("replicad.site.scrub")


class Scrub:
    """Integrity checks and repairs of this site's store.

    Args:
        cluster: Raft view (holders of each snapshot) and members.
        store: this site's chunk store.
        runners: the site's volume runners (the volumes to repair for).
        pull: fetches chunks from other sites.
        metrics: the site's metrics.
        standby: the standby checks (:class:`~replicad.site.standby.StandbyCheck`); ``verify``
            reads the volume's standby image too when given.
    """

    def __init__(self, cluster: Cluster, store: ChunkStore, runners: dict[str, VolumeRunner], pull: Pull,
                 metrics: SiteMetrics, standby: StandbyCheck | None = None) -> None:
        self.site_id = cluster.site_id
        self.cluster = cluster
        self.store = store
        self.runners = runners
        self.pull = pull
        self.metrics = metrics
        self.standby = standby

    async def verify(self, volume: str, seq: int | None = None) -> dict:
        """Re-read and check every chunk (manifest, pages, blocks) of a committed snapshot held
        here (default: the newest this site holds). A corrupt chunk is dropped and re-fetched,
        verified, from another holder ("healed"), and so is one missing here (dropped by an
        earlier check that no holder could heal); one no holder can supply stays "lost" (and
        pending repair, :meth:`repair_step`). Then this site's standby image of the volume (if
        it is a replica with one) is read whole and compared with its standby record's
        snapshot, and repaired from the store if damaged (:meth:`StandbyCheck.verify`).

        Returns ``{volume, seq, checked, corrupt: [digest hex], healed, lost, seconds, standby}``
        (``standby``: None, or ``{seq, state, bad_blocks, repaired, bytes_read, ...}``).
        Raises NotFoundError if this site holds no such snapshot.
        """
        vs = self.cluster.volume_state(volume)
        if vs is None:
            raise NotFoundError(f"unknown volume {volume}", volume=volume)
        held = [s for s, snap in vs["snapshots"].items() if self.site_id in snap["holders"]]
        if seq is None:
            if not held:
                raise NotFoundError(f"{self.site_id} holds no committed snapshot of {volume}", volume=volume)
            seq = max(held)
        if seq not in held:
            raise NotFoundError(f"{self.site_id} does not hold {volume}#{seq}", volume=volume, seq=seq)
        t0 = time.monotonic()
        snap = vs["snapshots"][seq]
        checked, corrupt = await asyncio.to_thread(self._verify_chunks, snap["root"])
        healed = lost = 0
        holders = [h for h in snap["holders"] if h != self.site_id]
        for digest in corrupt:
            try:
                await self.pull.fetch_missing(volume, vs["epoch"], [digest], holders)
                healed += 1
            except (NotFoundError, PeerUnavailableError):  # not healed now; pending repair (repair_step)
                lost += 1
        self.metrics.verify_done(volume, checked, len(corrupt))
        standby = await self.standby.verify(volume) if self.standby is not None and volume in self.runners else None
        report = {"volume": volume, "seq": seq, "checked": checked,
                  "corrupt": [d.hex() for d in corrupt], "healed": healed, "lost": lost,
                  "seconds": time.monotonic() - t0, "standby": standby}
        (log.warning if corrupt else log.info)("verify %s#%d at %s: %d chunks checked, %d corrupt, %d healed, %d lost",
                                               volume, seq, self.site_id, report["checked"], len(corrupt), healed,
                                               lost)
        return report

    def _verify_chunks(self, root: bytes) -> tuple[int, list[bytes]]:
        """Read every chunk of the snapshot ``root`` (verified reads); drop the corrupt ones.

        Returns ``(chunks_checked, corrupt_digests)``."""
        corrupt: list[bytes] = []
        checked = 0

        def check(d: bytes) -> bytes | None:
            nonlocal checked
            checked += 1
            try:
                return self.store.get(d)
            except IntegrityError:
                self.store.delete_corrupt(d)
                corrupt.append(d)
                return None
            except NotFoundError:  # dropped earlier (found corrupt, nobody could supply it): heal it now
                corrupt.append(d)
                return None

        raw = check(root)
        if raw is not None:
            manifest = Manifest.decode(raw)
            seen: set[bytes] = set()
            for pd in manifest.pages:
                page = check(pd)
                if page is None:
                    continue
                for d in page_entries(page):
                    if any(d) and d not in seen:
                        seen.add(d)
                        check(d)
        return checked, corrupt

    def _metadata_owners(self) -> dict[bytes, set[str]]:
        """``{digest: volumes}`` of every manifest root in Raft's catalog and every page of those
        stored here (:meth:`repair_step` asks each under its own volume). Synchronous (a worker
        thread); a manifest not readable here gives its root alone."""
        owners: dict[bytes, set[str]] = {}
        for name, vs in (self.cluster.view().get("volumes") or {}).items():
            for snap in (vs.get("snapshots") or {}).values():
                root = snap["root"]
                owners.setdefault(root, set()).add(name)
                try:
                    pages = Manifest.decode(self.store.get(root)).pages
                except ReplicadError:
                    continue
                for p in pages:
                    owners.setdefault(p, set()).add(name)
        return owners

    async def repair_step(self) -> int:
        """Re-fetch the chunks this store dropped and could not heal (``repairs_pending``:
        corrupt, or lost with a pack tail) from the other data sites, for every volume.
        While any is pending, new snapshots are checked against every block (not a held base),
        so a replica missing a chunk keeps refusing them rather than acknowledging a hole.
        Returns how many are still pending. Found by a break-it pass: a replica whose chunk
        was lost while its peers were down refused every later snapshot until an operator ran
        ``verify`` on the old snapshot."""
        if not self.store.repairs_pending:
            return 0
        wanted = await asyncio.to_thread(self.store.pending_repairs)
        # a holder refuses a whole fetch asking another volume's manifest or page under a volume's name
        # (Receiver.check_fetch, other_volume): those go only under their own volume
        meta = await asyncio.to_thread(self._metadata_owners) if wanted else {}
        for name in self.runners:
            vs = self.cluster.volume_state(name)
            if vs is None or not wanted:
                continue
            ask = [d for d in wanted if name in meta.get(d, (name,))]
            if not ask:
                continue
            try:
                await self.pull.fetch_missing(name, vs["epoch"], ask, self.cluster.data_peers())
            except (NotFoundError, PeerUnavailableError) as err:
                log.info("repair of %d chunks for %s: %s", len(wanted), name, err)
            wanted = await asyncio.to_thread(self.store.pending_repairs)
        if wanted:
            log.warning("%d chunks lost at %s are still not available from any data site", len(wanted), self.site_id)
        else:
            log.info("every chunk lost at %s was re-fetched", self.site_id)
        return len(wanted)
