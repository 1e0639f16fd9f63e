"""The site's status as the admin API (``GET /v1/status``) and the metrics read it."""

from __future__ import annotations

import time
from typing import Any

from replicad.core.errors import _jsonable
from replicad.core.state import list_requests, newest_clean, newest_committed
from replicad.site.cluster import Cluster
from replicad.site.runner import VolumeRunner
from replicad.site.standby import standby_status
from replicad.storage.catalog import Catalog
from replicad.storage.chunkstore import ChunkStore


class Status:
    """Reads the status of one site; owns nothing.

    Args:
        cluster, catalog, store, runners: the site's.
        interrupted_restores: in-place restore targets a crash left incomplete (kept by the
            recovery room; read here).
    """

    def __init__(self, cluster: Cluster, catalog: Catalog, store: ChunkStore, runners: dict[str, VolumeRunner],
                 interrupted_restores: list[str]) -> None:
        self.site_id = cluster.site_id
        self.cluster = cluster
        self.catalog = catalog
        self.store = store
        self.runners = runners
        self.interrupted_restores = interrupted_restores

    def report(self) -> dict:
        """Site status for the admin API and the metrics: Raft view, per-volume
        role/epoch/RPO/last report, standby (``standby``: seq, state, verified, damaged_blocks),
        the backoff of a failing tick (``retry``: failures, delay_s, in_s), store figures,
        interrupted restores."""
        st = self.cluster.view()
        vols = {}
        now = time.time_ns()
        for name, runner in self.runners.items():
            vs = st["volumes"].get(name)
            entry: dict[str, Any] = {"role": runner.role, "acting_epoch": runner.acting_epoch,
                                     "last_error": runner.last_error}
            if vs is not None:
                nc = newest_committed(vs)
                ncl = newest_clean(vs)
                entry.update(primary=vs["primary"], epoch=vs["epoch"], newest_committed=nc, newest_clean=ncl,
                             suspect=[s for s, snap in sorted(vs["snapshots"].items()) if snap["verdict"] == "suspect"],
                             rpo_s=(now - vs["snapshots"][nc]["created_at_ns"]) / 1e9 if nc is not None else None)
            sb = self.catalog.standby(name)
            entry["standby_seq"] = sb.seq if sb else None
            entry["standby_applying"] = runner.standby_applying
            entry["standby"] = standby_status(runner, sb)  # state: none|unverified|verified|damaged|repairing
            entry["retry"] = {"failures": runner.retry.failures, "delay_s": runner.retry.delay_s,
                              "in_s": max(0.0, runner.retry_at - time.monotonic())}
            entry["divergent"] = [{"epoch": r.epoch, "seq": r.seq, "root": r.root.hex()}
                                  for r in self.catalog.list(name, "divergent")]
            entry["last_report"] = _jsonable_report(runner.last_report)
            entry["source"] = _source_status(runner)
            vols[name] = entry
        # "synced": false means the figures below may be an old view (restart, no leader)
        return {"site_id": self.site_id, "raft": {**self.cluster.raft.status(), "synced": self.cluster.raft_synced()},
                "volumes": vols,
                "raft_sites": {s.raft: s.site_id for s in self.cluster.sites()},
                "sites": st.get("sites", {}), "store": self.store.stats(),
                "interrupted_restores": list(self.interrupted_restores),
                "identity": self._identity(), "requests": list_requests(st)}

    def _identity(self) -> dict:
        """``{"cluster_id", "signed", "unsafe_unsigned", "public_key", "revoked": {site: {"at_ns",
        "by", "keys"}}}``: this site's identity and the sites whose keys the cluster revoked."""
        cfg = self.cluster.cfg()
        own = cfg.self_ref().public_key
        revoked = {site: {"at_ns": r.get("at_ns"), "by": r.get("by"), "keys": len(r.get("keys", ()))}
                   for site, r in (self.cluster.view().get("revoked") or {}).items()}
        return {"cluster_id": cfg.cluster_id, "signed": bool(self.cluster.raft.status().get("signed")),
                "unsafe_unsigned": cfg.identity.unsafe_unsigned, "public_key": list(own), "revoked": revoked}


def _jsonable_report(rep: dict) -> dict:
    return _jsonable(rep)


def _source_status(runner: VolumeRunner) -> dict:
    """The volume's snapshot source (``kind``, tracking ``state``, …; sources/base.py). Its
    state reads ``idle`` while this site is not the volume's primary (the source is not used)."""
    src = runner.source
    if src is None:
        kind = runner.cfg.source.kind
        return {"kind": kind, "state": "untracked" if kind == "file" else "idle"}
    out = src.status()
    if runner.role != "primary" and out.get("state") != "untracked":
        out = {**out, "state": "idle"}
    return _jsonable(out)
