"""The site's status as the admin API (``GET /v1/status``) and the metrics read it."""

from __future__ import annotations

import platform
import time
from typing import Any

from replicad.core.errors import _jsonable
from replicad.core.health import degraded_reasons
from replicad.core.state import list_requests, newest_clean, newest_committed
from replicad.release import identity
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
        signing_key: the public key (``ed25519:...``) this site signs with, None in unsigned
            lab mode or when unknown.
    """

    def __init__(self, cluster: Cluster, catalog: Catalog, store: ChunkStore, runners: dict[str, VolumeRunner],
                 interrupted_restores: list[str], signing_key: str | None = None) -> None:
        self.site_id = cluster.site_id
        self.cluster = cluster
        # the release of the code this process loaded, read now: a pip install over it while it runs
        # must not be reported as what runs (replicad.release caches it for /metrics too)
        self.release = {**identity(), "python": platform.python_version()}
        self.catalog = catalog
        self.store = store
        self.runners = runners
        self.interrupted_restores = interrupted_restores
        self.signing_key = signing_key
        self.instant: Any = None  # issue 16: volume -> instant recovery state or None (set by the daemon)
        self.joined: Any = None  # () -> bool: this site entered the cluster's incarnation (set by the daemon)
        self.rules: Any = None  # () -> dict: the state's rules version and the wait to raise it (set by the daemon)

    def report(self) -> dict:
        """Site status for the admin API and the metrics: Raft view, per-volume
        role/epoch/RPO/last report (``rpo_s``: seconds since the newest CLEAN committed snapshot
        was taken, what a restore would lose, None without one; ``newest_age_s``: seconds since
        the newest committed one, suspect or not, None without any), standby (``standby``: seq, state, verified, damaged_blocks),
        the backoff of a failing tick (``retry``: failures, delay_s, in_s), store figures,
        interrupted restores, ``joined`` (this site entered the cluster's incarnation: before it,
        no volume acts and a snapshot is refused ``not_joined``; None when unknown).

        Staleness (issue 13, item 10): ``view`` is :meth:`Cluster.view_freshness` (``current``,
        ``age_s``, ``why``); ``raft.synced`` is ``view.current``. Per volume, ``confirmed`` is
        True only when the view is current *and* says the same as ``role`` (primary or restoring:
        Raft names this site at its acting epoch; any other role: Raft names another site); a
        role shown with ``confirmed: false`` is what this site believes, not what the cluster
        agreed (``replicad status`` prints it as ``primary?``). ``standby_lag_snapshots`` is the
        replica standby's seqs behind the newest clean snapshot, None when not confirmed (a stale
        view knows no newer snapshot and would read 0), not a replica, or mid-rewrite."""
        st = self.cluster.view()
        view = self.cluster.view_freshness()
        vols = {}
        now = time.time_ns()
        for name, runner in self.runners.items():
            vs = st["volumes"].get(name)
            entry: dict[str, Any] = {"role": runner.role, "acting_epoch": runner.acting_epoch,
                                     "last_error": runner.last_error}
            confirmed = view["current"] and vs is not None and _role_agrees(runner, vs, self.site_id)
            entry["confirmed"] = confirmed
            ncl = None
            if vs is not None:
                nc = newest_committed(vs)
                ncl = newest_clean(vs)
                entry.update(primary=vs["primary"], epoch=vs["epoch"], newest_committed=nc, newest_clean=ncl,
                             suspect=[s for s, snap in sorted(vs["snapshots"].items()) if snap["verdict"] == "suspect"],
                             # the recovery point: what a restore or failover (newest clean) would lose
                             rpo_s=(now - vs["snapshots"][ncl]["created_at_ns"]) / 1e9 if ncl is not None else None,
                             # replication liveness: suspect snapshots count here, not in the RPO
                             newest_age_s=(now - vs["snapshots"][nc]["created_at_ns"]) / 1e9 if nc is not None
                             else None)
            sb = self.catalog.standby(name)
            entry["standby_seq"] = sb.seq if sb else None
            if self.instant is not None and (inst := self.instant(name)) is not None:
                entry["instant"] = inst  # issue 16: phase, progress, socket, time to first read
            lag = None
            if confirmed and runner.role in REPLICA_ROLES and ncl is not None and not runner.standby_applying:
                lag = max(0, ncl - (sb.seq if sb else 0))
            entry["standby_lag_snapshots"] = lag
            entry["standby_applying"] = runner.standby_applying
            entry["standby"] = standby_status(runner, sb)  # state: none|unverified|verified|damaged|repairing
            entry["retry"] = {"failures": runner.retry.failures, "delay_s": runner.retry.delay_s,
                              "in_s": max(0.0, runner.retry_at - time.monotonic())}
            entry["divergent"] = [{"epoch": r.epoch, "seq": r.seq, "root": r.root.hex()}
                                  for r in self.catalog.list(name, "divergent")]
            entry["last_report"] = _jsonable_report(runner.last_report)
            # the sites that hold the last reported snapshot or a newer one since (a replica that
            # failed to store it and has caught up since is no longer a reason to be degraded)
            rep_seq = (runner.last_report or {}).get("seq")
            entry["last_report_caught_up"] = sorted({h for s, snap in vs["snapshots"].items() if s >= rep_seq
                                                     for h in snap.get("holders", ())}) \
                if vs is not None and isinstance(rep_seq, int) else []
            entry["source"] = _source_status(runner)
            vols[name] = entry
        # "synced": false means the figures below may be an old view (restart, no leader, cut off)
        out = {"site_id": self.site_id, "raft": {**self.cluster.raft.status(), "synced": view["current"]},
               "view": view, "volumes": vols, "joined": bool(self.joined()) if self.joined is not None else None,
               "raft_sites": {s.raft: s.site_id for s in self.cluster.sites()},
               "sites": st.get("sites", {}), "store": self.store.stats(),
               "interrupted_restores": list(self.interrupted_restores),
               "identity": self._identity(), "requests": list_requests(st),
               "release": dict(self.release)}
        if self.rules is not None:
            out["rules"] = self.rules()  # rolling upgrades: replicad.site.rules_raise.RulesRaise.status
        reasons = degraded_reasons(out)  # what `replicad status` calls degraded, for scripts and /metrics
        out["degraded"] = bool(reasons)
        out["degraded_reasons"] = reasons
        return out

    def _identity(self) -> dict:
        """``{"cluster_id", "signed", "unsafe_unsigned", "public_key", "signing_key", "keys",
        "revoked": {site: {"at_ns", "by", "keys", "rejoined", "rejoined_ns"}}}``: this site's
        identity and the sites whose keys the cluster revoked. ``public_key`` lists the keys
        pinned for this site (a rebuilt site may still pin its revoked one); ``signing_key`` is
        the one it signs with; ``keys`` marks each pinned key ``{"key", "signs", "revoked"}``.
        A revoked site that registered again with a new key (``rejoined``) is a member again;
        its revoked keys stay refused."""
        from replicad.core.identity import format_public_key

        cfg = self.cluster.cfg()
        own = list(cfg.self_ref().public_key)
        state_revoked = self.cluster.view().get("revoked") or {}
        revoked_keys: set[str] = set()
        for r in state_revoked.values():
            for k in r.get("keys", ()):
                try:
                    revoked_keys.add(format_public_key(k) if isinstance(k, bytes) else str(k))
                except (TypeError, ValueError):
                    continue
        revoked = {site: {"at_ns": r.get("at_ns"), "by": r.get("by"), "keys": len(r.get("keys", ())),
                          "rejoined": "rejoined_ns" in r, "rejoined_ns": r.get("rejoined_ns")}
                   for site, r in state_revoked.items()}
        keys = [{"key": k, "signs": k == self.signing_key, "revoked": k in revoked_keys} for k in own]
        return {"cluster_id": cfg.cluster_id, "signed": bool(self.cluster.raft.status().get("signed")),
                "unsafe_unsigned": cfg.identity.unsafe_unsigned, "public_key": own,
                "signing_key": self.signing_key, "keys": keys, "revoked": revoked}


REPLICA_ROLES = ("replica", "fenced", "divergent")
"""Roles that keep a standby (the rest act as the volume's primary)."""


def _role_agrees(runner: VolumeRunner, vs: dict, site_id: str) -> bool:
    """True if the volume's Raft entry ``vs`` says what ``runner.role`` says: primary → Raft
    names this site at its acting epoch; restoring → Raft names this site (the takeover of the
    granted epoch is running: the acting epoch is made durable only at its end, so it is still
    the previous one); any other role → Raft names another site (a replica granted primary but
    not yet taken over does not agree)."""
    if runner.role in REPLICA_ROLES:
        return vs.get("primary") != site_id
    if runner.role == "restoring":
        return vs.get("primary") == site_id
    return vs.get("primary") == site_id and vs.get("epoch") == runner.acting_epoch


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

