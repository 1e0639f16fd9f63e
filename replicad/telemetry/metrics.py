"""Prometheus metrics of a site (``GET /metrics`` on the admin port).

Names follow ``replicad_<subsystem>_<name>_<unit>`` in base units (seconds, bytes, ratios),
labelled by ``site`` and, where it applies, ``volume`` and ``peer`` (a site id). Two kinds:

* **Event counters**, updated by the daemon as things happen (:meth:`SiteMetrics.cycle_done`,
  :meth:`~SiteMetrics.cycle_failed`, :meth:`~SiteMetrics.shipped`, :meth:`~SiteMetrics.received`,
  :meth:`~SiteMetrics.verify_done`). The per-volume children of the configured volumes are
  created at zero, so rules such as ``increase(...)`` see a series from the first scrape.
* **State gauges**, computed at scrape time by :class:`StateCollector` from the daemon's
  status (``SiteDaemon.status``), the Raft cluster state (``RaftNode.state``) and the data
  directory's file system: never stale, and a scrape never fails because of them — a part
  that cannot be read sets ``replicad_scrape_error{part}`` to 1 and its gauges are left out.

**A stale Raft view** (issue 13, item 10): while the site's view is not current (status
``view.current`` false: no leader, no majority, or the leader's commits not applied here;
``replicad_raft_view_stale`` 1, ``replicad_raft_view_age_seconds`` how old) the gauges read from
the Raft state that a stale view can only get *better* than the truth are **not served**:
``replicad_volume_epoch``, ``_committed_snapshots``, ``_suspect_snapshots``,
``replicad_snapshot_newest_*``, ``replicad_anomaly_*``, ``replicad_standby_lag_*`` (a replica cut
off knows no newer snapshot: its lag would read 0 however far behind it is),
``replicad_clock_offset_seconds`` and ``replicad_sites_revoked``. ``replicad_volume_role`` is served
only for a role the view confirms (status ``confirmed``), else ``replicad_volume_role_confirmed``
is 0 and no role is exported (a restarted old primary cut off no longer shows ``primary`` next to
the real one). Still served: ``replicad_volume_rpo_seconds``,
``replicad_volume_newest_snapshot_age_seconds`` and the newest committed / clean snapshot timestamps, because a stale view can only hold *older* snapshots than the truth: its
RPO is an upper bound, never a false "healthy" (the rules take the freshest site's figure).

Metric list (``site`` label on every one):

==========================================================  =================  ===========================
name                                                        labels (+site)     source
==========================================================  =================  ===========================
replicad_snapshot_cycles_total                              volume, outcome    event (committed |
                                                                               not_committed | failed)
replicad_snapshot_duration_seconds (histogram)              volume             event (committed cycles)
replicad_snapshot_commit_seconds (histogram)                volume             event (committed cycles):
                                                                               ship acknowledged (O2) to
                                                                               Raft commit applied here
replicad_snapshot_changed_blocks_total                      volume             event (committed cycles)
replicad_snapshot_last_cycle_timestamp_seconds              volume, outcome    event; ``committed`` starts
                                                                               at process start
replicad_ship_sent_bytes_total                              volume, peer       event
replicad_ship_received_bytes_total                          volume, peer       event
replicad_verify_runs_total                                  volume             event
replicad_verify_mismatches_total                            volume             event
replicad_peer_refused_total                                 reason             event: a peer write refused
                                                                               (record_conflict, stale_epoch,
                                                                               revoked: any request..)
replicad_floor_kept_total                                   volume, reason     event: the local floor kept
                                                                               a record Raft dropped
replicad_volume_rpo_seconds                                 volume             age of newest CLEAN committed
replicad_volume_newest_snapshot_age_seconds                 volume             age of newest committed (any)
replicad_volume_rpo_target_seconds                          volume             3 x interval, else 900
replicad_volume_interval_seconds                            volume             config
replicad_volume_last_committed_snapshot_timestamp_seconds   volume             Raft state
replicad_volume_last_clean_snapshot_timestamp_seconds       volume             Raft state
replicad_volume_committed_snapshots                         volume             Raft state
replicad_volume_suspect_snapshots                           volume             Raft state
replicad_volume_divergent_snapshots                         volume             local catalog
replicad_volume_role                                        volume, role       one-hot, this site; only
                                                                               a role its Raft view confirms
replicad_volume_role_confirmed                              volume             1: the Raft view is current
                                                                               and agrees with this site's
                                                                               role; 0: the role is a belief
replicad_volume_epoch                                       volume             Raft (committed epoch)
replicad_volume_acting_epoch                                volume             this site (primary only)
replicad_snapshot_newest_changed_blocks                     volume             newest committed snapshot
replicad_snapshot_newest_changed_bytes                      volume             newest committed snapshot
replicad_anomaly_score_ratio                                volume             newest committed snapshot
replicad_anomaly_newest_suspect                             volume             newest committed snapshot
replicad_standby_lag_snapshots                              volume             replicas: seqs behind
                                                                               the newest clean
replicad_standby_lag_seconds                                volume             replicas: creation-time gap
replicad_store_size_bytes / _chunks / _packs                                   chunk store
replicad_raft_is_leader / _has_leader / _has_quorum                            Raft status (0/1)
replicad_raft_term / _commit_index / _last_applied_index                       Raft status
replicad_raft_view_stale                                                       1 while this site's Raft view
                                                                               is not current (status
                                                                               view.current false)
replicad_raft_view_age_seconds                                                 status view.age_s: since this
                                                                               site's own newest command was
                                                                               applied here (~0-10 s current)
replicad_raft_peer_up                                       peer               Raft partner connected
replicad_raft_peer_revoked                                  peer               1: that partner is revoked
                                                                               (cut off as intended: not
                                                                               an unreachable member)
replicad_raft_refused_total                                 reason             Raft traffic refused (counter)
replicad_raft_synced                                                           Cluster.raft_synced (0/1)
replicad_raft_behind_seconds                                                   since the applied index last
                                                                               reached the leader's commit
replicad_raft_dump_send_failures_total                                         leader: own dump unreadable
                                                                               (counter)
replicad_raft_dump_installs_total                                              full states received from the
                                                                               leader and installed (a catch-up
                                                                               past the compacted log; its
                                                                               AUDIT lines: site.catchup)
replicad_sites_revoked                                                         Raft state: revoked sites
replicad_requests_open                                      action             Raft state: requests waiting
                                                                               for approvals or in their
                                                                               cooling-off (0 per action
                                                                               from the start); not a moot
                                                                               one (its effect in force
                                                                               already: requestdiff)
replicad_rules_version / _rules_max                                            Raft state's rules version /
                                                                               this release's RULES_MAX
replicad_rules_raise_waiting                                                   1 while this site waits for
                                                                               every member's release report
replicad_rules_member_behind                                peer               while waiting: 1 for a member
                                                                               without a report applying them
replicad_site_degraded                                                         status: 1 when replicad status
                                                                               says degraded
replicad_site_degraded_reasons                              reason             status: reasons of each kind
                                                                               (core.health; 0 otherwise)
replicad_clock_offset_seconds                               peer               Raft state: a site's last
                                                                               reported clock minus the
                                                                               majority's clock; > 0 = ahead
                                                                               (< 0 also when it is silent)
replicad_command_refused_total                              reason             commands in the Raft log the
                                                                               state machine refused as forged
                                                                               (bad_signature), replayed,
                                                                               expired or revoked; 0 from
                                                                               the start
replicad_request_vetoes_total                               by                 Raft state: vetoes applied, by
                                                                               vetoing site (counter)
replicad_request_vanished_total                             action             event: approved requests gone
                                                                               from the Raft state without
                                                                               being applied (rules 1's table
                                                                               bound; site.requestwatch)
replicad_request_withdrawn_total                            action, approved   event: requests withdrawn by
                                                                               their requester (its own veto);
                                                                               approved "true": another site
                                                                               had approved it (R16, F1)
replicad_exports_open                                                          event: snapshot exports (NBD)
                                                                               open now (issue 16)
replicad_export_read_bytes_total                            volume             event: bytes served to export reads
replicad_export_written_bytes_total                         volume             event: bytes written to exports'
                                                                               overlays (never the store)
replicad_export_read_errors_total                           volume             event: export reads answered EIO
                                                                               (a chunk failed its digest)
replicad_instant_recovery_phase                             volume, phase      event: one-hot phase of the volume's
                                                                               instant recovery (serving, copying,
                                                                               switching, done, fenced; issue 16)
replicad_instant_recovery_progress_ratio                    volume             event: background copy done / total
replicad_instant_recovery_first_read_seconds                volume             event: promote request to the first
                                                                               read served by the instant export
replicad_source_tracking                                    volume, kind,      status: one-hot tracking state of
                                                            state              the volume's snapshot source
replicad_source_lost_total                                  volume, reason     status: reflink tracking lost
replicad_source_verify_runs_total                           volume             status: reflink verifier scans
replicad_source_verify_mismatches_total                     volume             status: verifier scans that
                                                                               disagreed (full scan shipped)
replicad_standby_damaged                                    volume             status: 1 while this site's
                                                                               standby is damaged or being
                                                                               repaired
replicad_standby_damage_found_total                          volume             event: a standby found not
                                                                               to hold its recorded snapshot
                                                                               (check, verify or promotion)
replicad_standby_checked_bytes_total                        volume             event: standby bytes read
                                                                               back by the standby check
replicad_takeover_full_rewrites_total                       volume, outcome    event: a promotion's restore
                                                                               failed O5 and rewrote every
                                                                               block (verified | failed)
replicad_anomaly_judged_total                               volume, verdict    event: snapshots this site
                                                                               judged itself (issue 14)
replicad_anomaly_judged_changed_bytes_total                 volume             event: changed bytes judged
replicad_anomaly_judge_cpu_seconds_total                    volume             event: CPU of the judge
replicad_drill_last_success_timestamp_seconds               volume             event (drills, issue 16):
                                                                               newest passed drill here
                                                                               (0: never; kept across
                                                                               restarts)
replicad_drill_runs_total                                   volume, outcome    event: drills (passed |
                                                                               failed)
replicad_anomaly_verdict_disagreements                      volume             event gauge: snapshots whose
                                                                               sites' verdicts disagree
replicad_restore_skipped_total                              volume             clean snapshots a takeover
                                                                               could not restore from any
                                                                               holder and skipped (counter)
replicad_fetch_stalled_total                                holder             fetches from a holder that
                                                                               broke the progress rule or
                                                                               sent bad frames (counter)
replicad_fetch_refused_total                                requester, reason  fetches this site refused or
                                                                               cut as a holder (counter)
replicad_peer_doc_refused_total                             peer, route,       peer request documents refused
                                                            reason             before or while read (counter)
replicad_conn_refused_total                                 listener, peer,    connections a listener (peer |
                                                            reason             admin) closed: over its bounds
                                                                               (conn_busy_per_peer | _global)
                                                                               or no request head in time
                                                                               (head_timeout) (counter)
replicad_fetch_served_bytes_total                           requester, volume  chunk bytes this site served
                                                                               as a holder (counter)
replicad_ship_stalled_total                                 peer               ship requests a replica did
                                                                               not answer in time (counter)
replicad_ship_slot_waits_total                              peer, outcome      chunk streams that waited for
                                                                               a place to the peer (got |
                                                                               timed_out) (counter)
replicad_ship_slot_wait_seconds_total                       peer               seconds they waited (counter)
replicad_disk_free_bytes / replicad_disk_size_bytes                            ``shutil.disk_usage``
replicad_build_info                                         version, python,   constant 1
                                                            rules, source,     (replicad.release: the rules
                                                            commit             range, a digest of the sources)
replicad_scrape_error                                       part               1 if that part failed
==========================================================  =================  ===========================

Plus the ``process_*`` metrics of :class:`prometheus_client.ProcessCollector`.

RPO target: ``RPO_TARGET_INTERVALS`` (3) snapshot intervals of the volume when the daemon
passes its configured intervals, else ``DEFAULT_RPO_TARGET_S`` (15 min). The alert rules
(``config/prometheus/alerts.yml``) compare against this gauge, so the target follows the
configuration without editing the rules.
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector, generate_latest)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from replicad import __version__
from replicad.release import identity
from replicad.core.anomaly import score_of
from replicad.core import state as cluster_state
from replicad.core.roles import ROLES
from replicad.core import health
from replicad.core.requestdiff import moot_reason

if TYPE_CHECKING:
    from replicad.config import SiteConfig

log = logging.getLogger("replicad.telemetry.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""Content type of the exposition served at ``/metrics``."""

RPO_TARGET_INTERVALS = 3
"""RPO target in snapshot intervals: one interval is the design RPO (ARCHITECTURE "Problem"),
three leave room for one slow and one failed cycle before anyone is paged."""

DEFAULT_RPO_TARGET_S = 900.0
"""RPO target of a volume whose interval the metrics were not given (15 min)."""

SOURCE_STATES = ("idle", "tracking", "lost", "rescan", "untracked")
"""Tracking states of a snapshot source (replicad.sources.base.TRACKING_STATES)."""
CYCLE_OUTCOMES = ("committed", "not_committed", "failed")
SCRAPE_PARTS = ("status", "state", "disk")
_REPLICA_ROLES = ("replica", "fenced", "divergent")

# name -> (help, extra label names after "site"); every state gauge the collector can emit
STATE_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "replicad_volume_rpo_seconds": ("Recovery point: age of the newest CLEAN committed snapshot (what a restore "
                                    "or failover would lose; suspect snapshots do not count), seconds",
                                    ("volume",)),
    "replicad_volume_newest_snapshot_age_seconds": ("Age of the newest committed snapshot, suspect or clean "
                                                    "(replication liveness; ReplicadRPOAboveTarget), seconds",
                                                    ("volume",)),
    "replicad_volume_rpo_target_seconds": ("RPO target: 3 snapshot intervals, or 900 s when the interval is unknown",
                                           ("volume",)),
    "replicad_volume_interval_seconds": ("Configured snapshot interval", ("volume",)),
    "replicad_volume_last_committed_snapshot_timestamp_seconds": ("Creation time of the newest committed snapshot",
                                                                  ("volume",)),
    "replicad_volume_last_clean_snapshot_timestamp_seconds": ("Creation time of the newest clean committed snapshot",
                                                              ("volume",)),
    "replicad_volume_committed_snapshots": ("Committed snapshots in the Raft catalog", ("volume",)),
    "replicad_volume_suspect_snapshots": ("Committed snapshots judged suspect (ransomware signal)", ("volume",)),
    "replicad_volume_divergent_snapshots": ("Divergent snapshots kept at this site for forensics", ("volume",)),
    "replicad_volume_role": ("Role of this site for the volume (one-hot over the role label); only a role this "
                             "site's current Raft view confirms", ("volume", "role")),
    "replicad_volume_role_confirmed": ("1 if this site's Raft view is current and agrees with its role for the "
                                       "volume; 0: the role is this site's belief only (replicad_volume_role is not "
                                       "exported then)", ("volume",)),
    "replicad_volume_epoch": ("Committed fencing epoch of the volume (Raft)", ("volume",)),
    "replicad_standby_damaged": ("1 while this site's standby image of the volume is damaged or being repaired",
                                 ("volume",)),
    "replicad_volume_acting_epoch": ("Epoch this site acts under as primary", ("volume",)),
    "replicad_source_tracking": ("Change tracking state of the volume's snapshot source at this site, one-hot over "
                                 "state (idle | tracking | lost | rescan | untracked; sources/base.py)",
                                 ("volume", "kind", "state")),
    "replicad_snapshot_newest_changed_blocks": ("Changed blocks of the newest committed snapshot", ("volume",)),
    "replicad_snapshot_newest_changed_bytes": ("Changed bytes of the newest committed snapshot", ("volume",)),
    "replicad_anomaly_score_ratio": ("Anomaly score of the newest committed snapshot (share of data blocks that "
                                     "newly look random, 0..1)", ("volume",)),
    "replicad_anomaly_newest_suspect": ("1 if the newest committed snapshot is suspect", ("volume",)),
    "replicad_standby_lag_snapshots": ("Replica standby: snapshot seqs behind the newest clean snapshot", ("volume",)),
    "replicad_standby_lag_seconds": ("Replica standby: creation-time gap to the newest clean snapshot", ("volume",)),
    "replicad_store_size_bytes": ("Bytes of pack files in the chunk store", ()),
    "replicad_store_chunks": ("Chunks indexed in the chunk store", ()),
    "replicad_store_packs": ("Pack files in the chunk store", ()),
    "replicad_raft_is_leader": ("1 if this site is the Raft leader", ()),
    "replicad_raft_has_leader": ("1 if this site knows a Raft leader", ()),
    "replicad_raft_has_quorum": ("1 if this site's Raft node is in contact with a majority", ()),
    "replicad_sites_revoked": ("sites whose keys a majority revoked through Raft (replicad revoke)", ()),
    "replicad_requests_open": ("Requests (Raft state) still waiting for approvals or in their cooling-off, by "
                               "action: each can still be vetoed (replicad requests / veto); not those whose "
                               "effect is in force already (replicad requests: MOOT)", ("action",)),
    "replicad_clock_offset_seconds": ("A site's last clock report (Raft state) minus the majority's clock "
                                      "(core.state.quorum_now_ns): > 0 = its clock is ahead; < 0 = behind, or "
                                      "the site is silent", ("peer",)),
    "replicad_raft_view_stale": ("1 while this site's Raft view is not current (no leader, no majority, or the "
                                 "leader's commits not applied here): gauges read from it are withheld", ()),
    "replicad_raft_view_age_seconds": ("Seconds since this site's own newest command (its 5 s clock report) was "
                                       "applied here: about 0-10 while current", ()),
    "replicad_raft_term": ("Current Raft term", ()),
    "replicad_raft_commit_index": ("Raft commit index", ()),
    "replicad_raft_last_applied_index": ("Last Raft log index applied here", ()),
    "replicad_raft_peer_up": ("1 if the Raft partner (peer = its site id) is connected", ("peer",)),
    "replicad_raft_peer_revoked": ("1 if the Raft partner (peer = its site id) is revoked through Raft and not "
                                   "rebuilt since: its connections are refused as intended (core.health."
                                   "cut_off_sites)", ("peer",)),
    "replicad_raft_synced": ("1 if this site's applied Raft state is current (a leader, a majority, and "
                             "everything the leader reports committed applied here)", ()),
    "replicad_raft_behind_seconds": ("Seconds since this site last applied everything its Raft leader reports "
                                     "committed (0 when it has; 1e9 when it never has since its start)", ()),
    "replicad_site_degraded": ("1 if this site is degraded, as replicad status says (status degraded); the "
                               "reasons are replicad_site_degraded_reasons", ()),
    "replicad_site_degraded_reasons": ("Reasons this site is degraded now, by kind (core.health.DEGRADED_REASONS; "
                                       "0 for each kind that does not apply)", ("reason",)),
    "replicad_disk_free_bytes": ("Bytes free for this site on the data directory's file system", ()),
    "replicad_disk_size_bytes": ("Size of the data directory's file system", ()),
    "replicad_rules_version": ("The rules version the cluster state is decided under (Raft state, core.state "
                               "rules; the same at every site)", ()),
    "replicad_rules_max": ("The highest rules version this site's release applies (core.state RULES_MAX)", ()),
    "replicad_rules_raise_waiting": ("1 while this site waits for every member to report a release applying its "
                                     "rules before it raises them (a rolling upgrade in progress)", ()),
    "replicad_rules_member_behind": ("1 for a member whose last release report (or its absence: an older release, "
                                     "not reachable) keeps this site from raising the rules, while it waits",
                                     ("peer",)),
    "replicad_build_info": ("Build information (constant 1): the release (replicad.release; the same source at "
                            "every site after an upgrade)", ("version", "python", "rules", "source", "commit")),
    "replicad_scrape_error": ("1 if this part of the state could not be read at this scrape", ("part",)),
}


def _stale(status: dict) -> bool:
    """True when ``status`` says the site's Raft view is not current (``view.current`` False,
    :meth:`replicad.site.cluster.Cluster.view_freshness`); a status without ``view`` counts
    as current."""
    view = status.get("view")
    return isinstance(view, dict) and view.get("current") is False


def _num(value: Any) -> float | None:
    """``value`` as a float if it is a real number (bools count), else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class StateCollector(Collector):
    """Gauges computed at scrape time (see the module docstring for the list).

    Args:
        site_id: value of the ``site`` label.
        status_fn: returns ``SiteDaemon.status()`` (``{"raft", "volumes", "raft_sites", "store", ...}``).
        state_fn: returns the Raft cluster state (:mod:`replicad.core.state` shape), for snapshot
            timestamps, stats and verdicts; without it those come from ``status`` only
            (``rpo_s``) or are left out.
        data_dir: directory whose file system is reported by ``replicad_disk_*``.
        volume_intervals_s: configured snapshot interval per volume, seconds.
        clock_ns: wall clock in ns (``time.time_ns``), for ages.

    :meth:`collect` never raises: a failing part is reported by ``replicad_scrape_error``.
    """

    def __init__(self, site_id: str, status_fn: Callable[[], dict] | None = None, *,
                 state_fn: Callable[[], dict] | None = None, data_dir: str | Path | None = None,
                 volume_intervals_s: Mapping[str, float] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.site_id = site_id
        self.status_fn = status_fn
        self.state_fn = state_fn
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.volume_intervals_s = dict(volume_intervals_s or {})
        self.clock_ns = clock_ns

    def describe(self) -> Iterable[Metric]:
        """Empty families of every state gauge (lets the registry check names without a scrape)."""
        return [GaugeMetricFamily(n, h, labels=["site", *ls]) for n, (h, ls) in STATE_GAUGES.items()]

    def collect(self) -> Iterator[Metric]:
        """One family per state gauge, filled from a fresh read of every source."""
        fams = {n: GaugeMetricFamily(n, h, labels=["site", *ls]) for n, (h, ls) in STATE_GAUGES.items()}

        def put(name: str, value: Any, *labels: str) -> None:
            v = _num(value)
            if v is not None:
                fams[name].add_metric([self.site_id, *labels], v)

        errors = dict.fromkeys(SCRAPE_PARTS, 0)
        status: dict = {}
        state: dict = {}
        if self.status_fn is not None:
            try:
                status = self.status_fn()
                if not isinstance(status, dict):
                    raise TypeError(f"status is a {type(status).__name__}, not a dict")
            except Exception as err:  # noqa: BLE001 — a scrape reports its failure, it never fails
                errors["status"] = 1
                status = {}
                log.warning("metrics: cannot read the site status: %r", err)
        if self.state_fn is not None:
            try:
                state = self.state_fn()
                if not isinstance(state, dict):
                    raise TypeError(f"state is a {type(state).__name__}, not a dict")
            except Exception as err:  # noqa: BLE001
                errors["state"] = 1
                state = {}
                log.warning("metrics: cannot read the Raft state: %r", err)
        refused = CounterMetricFamily("replicad_raft_refused", "Raft connections, frames and messages refused, "
                                      "by reason (consensus.channel / consensus.guard)", labels=["site", "reason"])
        commands = CounterMetricFamily("replicad_command_refused", "Commands in the Raft log the state machine "
                                       "refused: not signed by the site they name (bad_signature), replayed, "
                                       "expired (core.identity), a commit naming a holder without its signed "
                                       "acknowledgement (bad_ack), a seq or size past a bound (out_of_range), a site registering another "
                                       "(not_self), a request before the founding (not_founded), a site's second "
                                       "role change within the hour (epoch_rate), a veto of a role-change request "
                                       "(not_vetoable)", labels=["site", "reason"])
        try:
            for reason, count in sorted(((status.get("raft") or {}).get("refused") or {}).items()):
                if _num(count) is not None:
                    refused.add_metric([self.site_id, str(reason)], _num(count))
            for reason, count in sorted(((status.get("raft") or {}).get("commands_refused") or {}).items()):
                if _num(count) is not None:
                    commands.add_metric([self.site_id, str(reason)], _num(count))
            self._raft(status, put)
            stale = _stale(status)
            if self.state_fn is not None and not stale:
                put("replicad_sites_revoked", len(state.get("revoked") or {}))
                open_requests = dict.fromkeys(cluster_state.REQUEST_ACTIONS, 0)
                for entry in cluster_state.list_requests(state):
                    if entry.get("status") in ("pending", "approved") and entry.get("action") in open_requests \
                            and moot_reason(entry, state) is None:  # a moot one decides nothing: no alert for it
                        open_requests[entry["action"]] += 1
                for action, count in open_requests.items():
                    put("replicad_requests_open", count, action)
                for site, offset_ns in sorted(cluster_state.clock_offsets_ns(state).items()):
                    put("replicad_clock_offset_seconds", offset_ns / 1e9, site)
            self._volumes(status, state, put, stale)
            self._store(status, put)
            self._degraded(status, put)
            self._rules(status, put)
        except Exception as err:  # noqa: BLE001 — a malformed status must not turn /metrics into a 500
            errors["status"] = 1
            log.warning("metrics: malformed status or state: %r", err)
        if self.data_dir is not None:
            try:
                usage = shutil.disk_usage(self.data_dir)
                put("replicad_disk_free_bytes", usage.free)
                put("replicad_disk_size_bytes", usage.total)
            except OSError as err:
                errors["disk"] = 1
                log.warning("metrics: cannot stat the data dir %s: %r", self.data_dir, err)
        release = identity()
        put("replicad_build_info", 1, __version__, platform.python_version(), release["rules"], release["source"],
            release["commit"] or "")
        for part, failed in errors.items():
            put("replicad_scrape_error", failed, part)
        vetoes = CounterMetricFamily("replicad_request_vetoes", "Vetoes applied through Raft, by vetoing site "
                                     "(Raft state, the same at every site): one site vetoing every request blocks "
                                     "every weakening until it is revoked", labels=["site", "by"])
        try:
            for by, count in sorted(((state.get("vetoes") or {}) if self.state_fn is not None else {}).items()):
                if _num(count) is not None:
                    vetoes.add_metric([self.site_id, str(by)], _num(count))
        except Exception as err:  # noqa: BLE001 — a malformed state must not turn /metrics into a 500
            log.warning("metrics: malformed vetoes in the state: %r", err)
        dump_failures = CounterMetricFamily("replicad_raft_dump_send_failures", "Failed reads of this site's own "
                                            "Raft dump to send it to a member behind the log's start (a leader steps "
                                            "down after a few)", labels=["site"])
        if _num((status.get("raft") or {}).get("dump_send_failures")) is not None:
            dump_failures.add_metric([self.site_id], _num(status["raft"]["dump_send_failures"]))
        dump_installs = CounterMetricFamily("replicad_raft_dump_installs", "Full states received from the leader and "
                                            "installed since start: this site was behind the leader's compacted log "
                                            "and caught up without applying the entries one by one (what they "
                                            "changed is logged as AUDIT lines, site.catchup)", labels=["site"])
        if _num((status.get("raft") or {}).get("dump_installs")) is not None:
            dump_installs.add_metric([self.site_id], _num(status["raft"]["dump_installs"]))
        yield from fams.values()
        yield refused
        yield from self._sources(status)
        yield commands
        yield vetoes
        yield dump_failures
        yield dump_installs

    def _degraded(self, status: dict, put: Callable[..., None]) -> None:
        """``replicad_site_degraded`` and one ``replicad_site_degraded_reasons`` series per kind
        (:data:`~replicad.core.health.DEGRADED_REASONS`, 0 when it does not apply), from the
        status' ``degraded_reasons`` (computed here from the status when it has none)."""
        if not status:
            return
        reasons = status.get("degraded_reasons")
        if not isinstance(reasons, list):
            reasons = health.degraded_reasons(status)
        counts = dict.fromkeys(health.DEGRADED_REASONS, 0)
        for r in reasons:
            if isinstance(r, dict):
                code = str(r.get("reason"))
                counts[code] = counts.get(code, 0) + 1
        put("replicad_site_degraded", bool(reasons))
        for code, n in sorted(counts.items()):
            put("replicad_site_degraded_reasons", n, code)

    def _rules(self, status: dict, put: Callable[..., None]) -> None:
        """``replicad_rules_*`` from the status' ``rules`` (:meth:`replicad.site.rules_raise.RulesRaise.status`):
        the state's version, this release's maximum, the wait to raise and, while waiting, each
        member that keeps it (1) or not (0)."""
        entry = status.get("rules")
        if not isinstance(entry, dict):
            return
        put("replicad_rules_version", entry.get("version"))
        put("replicad_rules_max", entry.get("max"))
        put("replicad_rules_raise_waiting", bool(entry.get("waiting")))
        if entry.get("waiting"):
            for site, member in sorted((entry.get("members") or {}).items()):
                put("replicad_rules_member_behind", isinstance(member, dict) and member.get("problem") is not None,
                    str(site))

    def _raft(self, status: dict, put: Callable[..., None]) -> None:
        raft = status.get("raft")
        if not isinstance(raft, dict):
            return
        put("replicad_raft_is_leader", bool(raft.get("is_leader")))
        put("replicad_raft_has_leader", raft.get("leader") is not None)
        put("replicad_raft_has_quorum", bool(raft.get("has_quorum")))
        put("replicad_raft_term", raft.get("term"))
        put("replicad_raft_commit_index", raft.get("commit_index"))
        put("replicad_raft_last_applied_index", raft.get("last_applied"))
        put("replicad_raft_synced", bool(raft.get("synced")))
        put("replicad_raft_behind_seconds", raft.get("behind_s"))
        names = status.get("raft_sites") or {}
        cut_off = health.cut_off_sites(status)
        for addr, connected in sorted((raft.get("partners") or {}).items()):
            peer = str(names.get(addr, addr))
            put("replicad_raft_peer_up", bool(connected), peer)
            put("replicad_raft_peer_revoked", peer in cut_off, peer)
        view = status.get("view")  # how current this view is (issue 13, item 10: not stale)
        if isinstance(view, dict) and isinstance(view.get("current"), bool):
            put("replicad_raft_view_stale", not view["current"])
            put("replicad_raft_view_age_seconds", view.get("age_s"))

    def _volumes(self, status: dict, state: dict, put: Callable[..., None], stale: bool = False) -> None:
        now_ns = self.clock_ns()
        entries: dict = status.get("volumes") or {}
        raft_vols: dict = state.get("volumes") or {}
        for name in sorted(set(entries) | set(self.volume_intervals_s)):
            entry = entries.get(name) or {}
            interval_s = self.volume_intervals_s.get(name)
            put("replicad_volume_interval_seconds", interval_s, name)
            target_s = RPO_TARGET_INTERVALS * interval_s if interval_s else DEFAULT_RPO_TARGET_S
            put("replicad_volume_rpo_target_seconds", target_s, name)
            role = entry.get("role")
            confirmed = entry.get("confirmed", not stale) is True and not stale
            if isinstance(role, str):
                put("replicad_volume_role_confirmed", confirmed, name)
                for r in (*ROLES, *(() if role in ROLES else (role,))) if confirmed else ():
                    put("replicad_volume_role", r == role, name, r)
            if not stale:
                put("replicad_volume_epoch", entry.get("epoch"), name)
            put("replicad_volume_acting_epoch", entry.get("acting_epoch"), name)
            standby = entry.get("standby")  # 0 without a standby: the series exists from the first scrape
            put("replicad_standby_damaged", isinstance(standby, dict) and standby.get("state") in ("damaged", "repairing"),
                name)
            source = entry.get("source")  # one-hot over SOURCE_STATES from the first scrape
            if isinstance(source, dict) and isinstance(source.get("state"), str):
                for state in (*SOURCE_STATES, *(() if source["state"] in SOURCE_STATES else (source["state"],))):
                    put("replicad_source_tracking", state == source["state"], name, str(source.get("kind")), state)
            if isinstance(entry.get("divergent"), list):
                put("replicad_volume_divergent_snapshots", len(entry["divergent"]), name)
            vs = raft_vols.get(name)
            if isinstance(vs, dict):
                self._snapshots(name, entry, vs, now_ns, put, stale)
            elif entry:
                self._snapshots_from_status(name, entry, now_ns, put, stale)

    def _snapshots(self, name: str, entry: dict, vs: dict, now_ns: int, put: Callable[..., None],
                   stale: bool = False) -> None:
        """Per-volume gauges from the Raft entry ``vs``; with ``stale`` only the RPO and the
        newest committed / clean timestamps (module docstring: a stale view's are upper bounds)."""
        snaps: dict = vs.get("snapshots") or {}
        if not stale:
            put("replicad_volume_committed_snapshots", len(snaps), name)
            put("replicad_volume_suspect_snapshots",
                sum(1 for s in snaps.values() if s.get("verdict") == "suspect"), name)
        if not snaps:
            return
        newest = snaps[max(snaps)]
        created_ns = newest.get("created_at_ns")
        if _num(created_ns) is not None:
            put("replicad_volume_last_committed_snapshot_timestamp_seconds", created_ns / 1e9, name)
            put("replicad_volume_newest_snapshot_age_seconds", max(0.0, (now_ns - created_ns) / 1e9), name)
        if not stale:
            stats = newest.get("stats") or {}
            put("replicad_snapshot_newest_changed_blocks", stats.get("changed_blocks"), name)
            put("replicad_snapshot_newest_changed_bytes", stats.get("changed_bytes"), name)
            # a record the judge cannot read (committed before the state checked stats) has no score
            put("replicad_anomaly_score_ratio", score_of(stats) if cluster_state.stats_problem(stats) is None else None, name)
            put("replicad_anomaly_newest_suspect", newest.get("verdict") == "suspect", name)
        clean = [seq for seq, s in snaps.items() if s.get("verdict") == "clean"]
        if not clean:
            return
        newest_clean = max(clean)
        clean_ns = snaps[newest_clean].get("created_at_ns")
        if _num(clean_ns) is not None:
            put("replicad_volume_last_clean_snapshot_timestamp_seconds", clean_ns / 1e9, name)
            put("replicad_volume_rpo_seconds", max(0.0, (now_ns - clean_ns) / 1e9), name)
        if stale or entry.get("role") not in _REPLICA_ROLES:
            return  # a stale view knows no newer clean snapshot: its lag would read 0 however far behind
        standby_seq = entry.get("standby_seq")
        if standby_seq is None and entry.get("standby_applying"):
            return  # being rewritten right now: no lag figure rather than a false spike
        lag = newest_clean - standby_seq if isinstance(standby_seq, int) else newest_clean
        put("replicad_standby_lag_snapshots", max(0, lag), name)
        if lag <= 0:
            put("replicad_standby_lag_seconds", 0, name)
        elif isinstance(standby_seq, int) and standby_seq in snaps and _num(clean_ns) is not None:
            put("replicad_standby_lag_seconds",
                max(0.0, (clean_ns - snaps[standby_seq].get("created_at_ns", clean_ns)) / 1e9), name)

    def _snapshots_from_status(self, name: str, entry: dict, now_ns: int, put: Callable[..., None],
                               stale: bool = False) -> None:
        """Without the Raft state: what ``status`` alone tells (RPO, suspect count, standby lag);
        with ``stale`` the RPO only."""
        rpo_s, age_s = _num(entry.get("rpo_s")), _num(entry.get("newest_age_s"))
        if rpo_s is not None:
            put("replicad_volume_rpo_seconds", rpo_s, name)
        if age_s is not None:
            put("replicad_volume_newest_snapshot_age_seconds", age_s, name)
            put("replicad_volume_last_committed_snapshot_timestamp_seconds", now_ns / 1e9 - age_s, name)
        if stale:
            return
        if isinstance(entry.get("suspect"), list):
            put("replicad_volume_suspect_snapshots", len(entry["suspect"]), name)
            nc = entry.get("newest_committed")
            if isinstance(nc, int):
                put("replicad_anomaly_newest_suspect", nc in entry["suspect"], name)
        newest_clean, standby_seq = entry.get("newest_clean"), entry.get("standby_seq")
        if entry.get("role") in _REPLICA_ROLES and isinstance(newest_clean, int):
            lag = newest_clean - standby_seq if isinstance(standby_seq, int) else newest_clean
            put("replicad_standby_lag_snapshots", max(0, lag), name)

    def _store(self, status: dict, put: Callable[..., None]) -> None:
        store = status.get("store")
        if not isinstance(store, dict):
            return
        put("replicad_store_size_bytes", store.get("stored_bytes"))
        put("replicad_store_chunks", store.get("chunks"))
        put("replicad_store_packs", store.get("packs"))

    def _sources(self, status: dict) -> Iterator[Metric]:
        """Counters of the volumes' snapshot sources (status ``volumes.<v>.source``): tracking
        lost by reason (reflink volumes), verifier runs and mismatches (0 from the first scrape
        of every volume: a ``file`` volume is its own full scan, so its verifier never disagrees,
        and the alert on mismatches has a series to read everywhere)."""
        lost = CounterMetricFamily("replicad_source_lost", "Times the volume's change tracking was lost, by reason "
                                   "(sources/reflink.py)", labels=["site", "volume", "reason"])
        runs = CounterMetricFamily("replicad_source_verify_runs", "Verifier full scans of a tracked volume",
                                   labels=["site", "volume"])
        bad = CounterMetricFamily("replicad_source_verify_mismatches", "Verifier full scans that disagreed with the "
                                  "tracked manifest (the full scan's manifest was shipped)", labels=["site", "volume"])
        for name, entry in sorted((status.get("volumes") or {}).items()):
            src = entry.get("source") if isinstance(entry, dict) else None
            if not isinstance(src, dict) or src.get("kind") not in ("reflink", "qemu"):  # the tracked kinds
                runs.add_metric([self.site_id, name], 0)
                bad.add_metric([self.site_id, name], 0)
                continue
            for reason, n in sorted((src.get("lost_total") or {}).items()):
                if _num(n) is not None:
                    lost.add_metric([self.site_id, name, str(reason)], _num(n))
            verify = src.get("verify") or {}
            if _num(verify.get("runs")) is not None:
                runs.add_metric([self.site_id, name], _num(verify["runs"]))
            if _num(verify.get("mismatches")) is not None:
                bad.add_metric([self.site_id, name], _num(verify["mismatches"]))
        yield from (lost, runs, bad)


PEER_REFUSAL_REASONS = ("record_conflict", "quota_exceeded", "not_primary", "stale_epoch", "forbidden", "integrity", "not_found",
                        "remote_protocol")
"""Error codes of refused peer writes exported at 0 from the start (others appear when first seen)."""

FETCH_REFUSAL_ALERTED = ("not_holder", "other_volume", "duplicate_digests", "client_stalled")
"""Reasons of ``replicad_fetch_refused_total`` exported at 0 for every other data site from the start
(the alert ReplicadPeerFetchRefused then sees the first one as an increase)."""

DOC_REFUSAL_ALERTED = ("doc_busy_per_site", "doc_too_large", "doc_too_slow")
"""Reasons of ``replicad_peer_doc_refused_total`` exported at 0 (route ``fetch``) for every other data
site from the start (the alert ReplicadPeerDocRefused sums over routes and sees the first one as an increase)."""

CONN_REFUSAL_ALERTED = ("conn_busy_per_peer", "conn_busy_global", "head_timeout")
"""Reasons of ``replicad_conn_refused_total`` exported at 0 (listener ``peer``) for every other data site
from the start (the alert ReplicadPeerConnRefused sees the first one as an increase)."""


class SiteMetrics:
    """The metrics registry of one site.

    Args:
        site_id: value of the ``site`` label.
        status_fn: returns the daemon's status dict (``SiteDaemon.status``) at scrape time.
        state_fn: returns the Raft cluster state (``RaftNode.state``) at scrape time.
        data_dir: the site's data directory (``replicad_disk_*``).
        volume_intervals_s: ``{volume: interval_s}`` of the configured volumes: their event
            counters start at zero and their RPO target is 3 intervals.
        clock_ns: wall clock in ns, for ages and event timestamps.
        holders: the other data sites (``replicad_fetch_stalled_total`` and
            ``replicad_ship_stalled_total`` start at zero for each).
    """

    def __init__(self, site_id: str, status_fn: Callable[[], dict] | None = None, *,
                 state_fn: Callable[[], dict] | None = None, data_dir: str | Path | None = None,
                 volume_intervals_s: Mapping[str, float] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns, holders: Iterable[str] = ()) -> None:
        self.site_id = site_id
        self.status_fn = status_fn
        self.clock_ns = clock_ns
        self.registry = CollectorRegistry(auto_describe=True)
        self.cycles = Counter("replicad_snapshot_cycles_total", "Snapshot cycles by outcome",
                              ["site", "volume", "outcome"], registry=self.registry)
        self.cycle_seconds = Histogram("replicad_snapshot_duration_seconds", "Duration of a snapshot cycle",
                                       ["site", "volume"], registry=self.registry,
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.commit_seconds = Histogram(
            "replicad_snapshot_commit_seconds",
            "Time from the ship acknowledgements (min_copies stored, O2) to the snapshot's Raft commit "
            "applied on this site", ["site", "volume"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15))
        self.changed_blocks = Counter("replicad_snapshot_changed_blocks_total",
                                      "Changed blocks of committed snapshots", ["site", "volume"],
                                      registry=self.registry)
        self.last_cycle = Gauge("replicad_snapshot_last_cycle_timestamp_seconds",
                                "Time of the last cycle with this outcome (committed: process start until the "
                                "first commit)", ["site", "volume", "outcome"], registry=self.registry)
        self.shipped_bytes = Counter("replicad_ship_sent_bytes_total", "Chunk bytes sent to peers",
                                     ["site", "volume", "peer"], registry=self.registry)
        self.received_bytes = Counter("replicad_ship_received_bytes_total", "Chunk bytes received from peers",
                                      ["site", "volume", "peer"], registry=self.registry)
        self.verify_runs = Counter("replicad_verify_runs_total", "Verify runs", ["site", "volume"],
                                   registry=self.registry)
        self.verify_mismatches = Counter("replicad_verify_mismatches_total", "Chunks found corrupt by verify",
                                         ["site", "volume"], registry=self.registry)
        self.peer_refusals = Counter("replicad_peer_refused_total",
                                     "Peer write requests (chunks, snapshot), and any request of a revoked "
                                     "site, this site refused, by error code",
                                     ["site", "reason"], registry=self.registry)
        self.restores_skipped = Counter("replicad_restore_skipped_total",
                                       "Clean committed snapshots a takeover could not restore (no holder could "
                                       "supply their chunks after bounded retries) and skipped for an older one",
                                       ["site", "volume"], registry=self.registry)
        self.fetches_stalled = Counter("replicad_fetch_stalled_total",
                                       "Fetches from a holder that broke the progress rule (too few bytes of "
                                       "complete chunk frames within the window) or sent bad frames (a chunk not "
                                       "asked for, sent twice or not matching its digest) and went to another holder",
                                       ["site", "holder"], registry=self.registry)
        self.fetches_refused = Counter("replicad_fetch_refused_total",
                                       "Fetches (/v1/peer/fetch) this site refused or cut as a holder, by requesting "
                                       "site (a site not configured here counts as 'other') and reason (not_holder, "
                                       "other_volume, busy, duplicate_digests, client_stalled, client_gone, ...)",
                                       ["site", "requester", "reason"], registry=self.registry)
        self.peer_docs_refused = Counter(
            "replicad_peer_doc_refused_total",
            "Peer request documents (missing, fetch, snapshot, the head of a chunk stream) this site refused before "
            "or while reading them, by sending peer (its TLS certificate's site; 'other' if not a configured site), "
            "route and reason (doc_busy_per_site, doc_busy_global, doc_too_large, doc_too_slow)",
            ["site", "peer", "route", "reason"], registry=self.registry)
        self.conns_refused = Counter(
            "replicad_conn_refused_total",
            "Connections a listener (peer, admin) of this site closed at once because their peer (its TLS "
            "certificate's site on the peer listener; 'other' if not a configured site, without TLS, and on the admin "
            "listener) held as many as it may or all peers did (conn_busy_per_peer, conn_busy_global), or because no "
            "request head came in time (head_timeout)", ["site", "listener", "peer", "reason"], registry=self.registry)
        self.requests_vanished = Counter(
            "replicad_request_vanished_total", "Approved requests (cooling off) this site saw gone from the Raft "
            "state without a record of their end (applied, failed, vetoed, withdrawn): under rules 1 a site's own "
            "requests push them out of the 64-record request table (replicad.site.requestwatch), by action",
            ["site", "action"], registry=self.registry)
        for action in cluster_state.REQUEST_ACTIONS:  # at zero: the alert sees the first one
            self.requests_vanished.labels(site_id, action)
        self.requests_withdrawn = Counter(
            "replicad_request_withdrawn_total", "Requests withdrawn by their requester (its own veto: the record goes, "
            "no veto is counted) that this site saw as news (live, or committed while it was away), by action; "
            "approved=\"true\" when another site had approved it: its approvals are void (attack review R16, F1)",
            ["site", "action", "approved"], registry=self.registry)
        for action in cluster_state.REQUEST_ACTIONS:
            for approved in ("true", "false"):
                self.requests_withdrawn.labels(site_id, action, approved)
        self.fetch_served_bytes = Counter("replicad_fetch_served_bytes_total",
                                          "Chunk payload bytes this site served to a requesting site's fetches",
                                          ["site", "requester", "volume"], registry=self.registry)
        self.ships_stalled = Counter("replicad_ship_stalled_total",
                                     "Ship requests to a replica (missing, chunks, snapshot) cut because it did not "
                                     "answer within their deadline or took less than the progress rule of its chunk "
                                     "upload", ["site", "peer"], registry=self.registry)
        self.ship_slot_waits = Counter(
            "replicad_ship_slot_waits_total", "Chunk streams of ships that waited for one of this site's places to the "
            "peer (at most CHUNK_SLOTS_PER_PEER open at once), by outcome (got | timed_out: the ship failed "
            "stream_slots_busy)", ["site", "peer", "outcome"], registry=self.registry)
        self.ship_slot_wait_seconds = Counter(
            "replicad_ship_slot_wait_seconds_total", "Seconds chunk streams of ships waited for one of this site's "
            "places to the peer (not the peer's time: not a stall)", ["site", "peer"], registry=self.registry)
        for holder in holders:  # at zero from the start: the first stall is an increase() too
            self.fetches_stalled.labels(site_id, holder)
            self.ships_stalled.labels(site_id, holder)
            self.ship_slot_wait_seconds.labels(site_id, holder)
            for reason in FETCH_REFUSAL_ALERTED:  # and the first refusal of a site's read (ReplicadPeerFetchRefused)
                self.fetches_refused.labels(site_id, holder, reason)
            for reason in DOC_REFUSAL_ALERTED:  # and of its documents (ReplicadPeerDocRefused)
                self.peer_docs_refused.labels(site_id, holder, "fetch", reason)
            for reason in CONN_REFUSAL_ALERTED:  # and of its connections (ReplicadPeerConnRefused)
                self.conns_refused.labels(site_id, "peer", holder, reason)
        self.standby_damaged_events = Counter(
            "replicad_standby_damage_found_total", "Times this site's standby image was found not to hold the snapshot "
            "its standby record names (standby check, verify, or a promotion's O5 check)", ["site", "volume"],
            registry=self.registry)
        self.standby_checked_bytes = Counter("replicad_standby_checked_bytes_total",
                                             "Standby image bytes read back by the standby check (holes excluded)",
                                             ["site", "volume"], registry=self.registry)
        self.takeover_rewrites = Counter("replicad_takeover_full_rewrites_total",
                                         "Promotions whose in-place restore failed O5 and rewrote every block from "
                                         "the store, by outcome (verified | failed)", ["site", "volume", "outcome"],
                                         registry=self.registry)
        self.floor_kept = Counter("replicad_floor_kept_total",
                                  "Local records the cluster state no longer lists that this site's own floor "
                                  "kept, by rule (lock, daily, weekly, monthly)", ["site", "volume", "reason"],
                                  registry=self.registry)
        # issue 14: this site's own verdicts (every data site judges every snapshot)
        self.judged = Counter("replicad_anomaly_judged_total", "Snapshots this site judged itself, by its own "
                              "verdict (clean | suspect)", ["site", "volume", "verdict"], registry=self.registry)
        self.judged_bytes = Counter("replicad_anomaly_judged_changed_bytes_total", "Changed bytes this site's "
                                    "judge compared with their previous version", ["site", "volume"],
                                    registry=self.registry)
        self.judge_cpu = Counter("replicad_anomaly_judge_cpu_seconds_total", "CPU seconds of this site's judge "
                                 "(divide by _judged_changed_bytes_total for the CPU per changed byte)",
                                 ["site", "volume"], registry=self.registry)
        self.disagreements = Gauge("replicad_anomaly_verdict_disagreements", "Committed snapshots on which the "
                                   "sites' verdicts disagree (one site is wrong, broken or lying)",
                                   ["site", "volume"], registry=self.registry)
        self.registration_mismatch = Gauge("replicad_volume_registration_mismatch", "1: the volume's Raft "
                                           "registration (registering site, block size, min_copies) differs from "
                                           "this site's config (site/registration.py; held when acting on it would "
                                           "harm this site's data)", ["site", "volume"], registry=self.registry)
        # issue 16: drill evidence (site/drills.py); 0 = no passed drill at this site
        self.drill_last_success = Gauge("replicad_drill_last_success_timestamp_seconds",
                                        "Unix time of the newest passed recovery drill of the volume at this site "
                                        "(0: none; kept across restarts)", ["site", "volume"],
                                        registry=self.registry)
        self.drill_runs = Counter("replicad_drill_runs_total", "Recovery drills run at this site, by outcome "
                                  "(passed | failed)", ["site", "volume", "outcome"], registry=self.registry)
        # issue 16: snapshot exports over NBD (site/exports.py)
        self.exports_open = Gauge("replicad_exports_open", "Snapshot exports (NBD) open at this site now",
                                  ["site"], registry=self.registry)
        self.export_read_bytes = Counter("replicad_export_read_bytes_total", "Bytes served to NBD reads of snapshot "
                                         "exports (verified chunks, zeros, overlay)", ["site", "volume"],
                                         registry=self.registry)
        self.export_written_bytes = Counter("replicad_export_written_bytes_total", "Bytes written through writable "
                                            "snapshot exports (into their overlays, never the store)",
                                            ["site", "volume"], registry=self.registry)
        self.export_read_errors = Counter("replicad_export_read_errors_total", "NBD reads of snapshot exports "
                                          "answered EIO: a chunk that failed its digest or is missing here",
                                          ["site", "volume"], registry=self.registry)
        self.exports_open.labels(site_id).set(0)
        # issue 16, item 1: instant recovery (site/instant.py)
        self.instant_phase_g = Gauge("replicad_instant_recovery_phase", "Phase of the volume's instant recovery at "
                                     "this site (1 for the current one: serving, copying, switching, done, fenced)",
                                     ["site", "volume", "phase"], registry=self.registry)
        self.instant_progress_g = Gauge("replicad_instant_recovery_progress_ratio", "Blocks of the instant "
                                        "recovery's background copy done / total (1 once done)", ["site", "volume"],
                                        registry=self.registry)
        self.instant_first_read_g = Gauge("replicad_instant_recovery_first_read_seconds", "Seconds from the "
                                          "promote --instant request (or the re-attach after a restart) to the "
                                          "first read the instant export served", ["site", "volume"],
                                          registry=self.registry)
        self.collector = StateCollector(site_id, status_fn, state_fn=state_fn, data_dir=data_dir,
                                        volume_intervals_s=volume_intervals_s, clock_ns=clock_ns)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        start_s = clock_ns() / 1e9
        for volume in volume_intervals_s or {}:
            for outcome in CYCLE_OUTCOMES:
                self.cycles.labels(site_id, volume, outcome)
            self.changed_blocks.labels(site_id, volume)
            self.verify_runs.labels(site_id, volume)
            self.verify_mismatches.labels(site_id, volume)
            self.standby_damaged_events.labels(site_id, volume)
            self.standby_checked_bytes.labels(site_id, volume)
            for outcome in ("verified", "failed"):
                self.takeover_rewrites.labels(site_id, volume, outcome)
            for rule in ("lock", "daily", "weekly", "monthly"):
                self.floor_kept.labels(site_id, volume, rule)
            self.last_cycle.labels(site_id, volume, "committed").set(start_s)
            for verdict in ("clean", "suspect"):
                self.judged.labels(site_id, volume, verdict)
            self.judged_bytes.labels(site_id, volume)
            self.judge_cpu.labels(site_id, volume)
            self.disagreements.labels(site_id, volume).set(0)
            self.registration_mismatch.labels(site_id, volume).set(0)
            self.drill_last_success.labels(site_id, volume).set(0)  # drill evidence: none yet
            for outcome in ("passed", "failed"):  # drill outcomes
                self.drill_runs.labels(site_id, volume, outcome)
            self.export_read_bytes.labels(site_id, volume)  # snapshot exports (issue 16)
            self.export_written_bytes.labels(site_id, volume)
            self.export_read_errors.labels(site_id, volume)
        for reason in PEER_REFUSAL_REASONS:
            self.peer_refusals.labels(site_id, reason)

    @classmethod
    def for_site(cls, cfg: "SiteConfig", status_fn: Callable[[], dict],
                 state_fn: Callable[[], dict] | None = None) -> "SiteMetrics":
        """The metrics of the site configured by ``cfg`` (site id, data dir, volume intervals)."""
        return cls(cfg.site_id, status_fn, state_fn=state_fn, data_dir=cfg.data_dir,
                   volume_intervals_s={v.name: float(v.interval_s) for v in cfg.volumes},
                   holders=[s.site_id for s in cfg.sites if s.site_id != cfg.site_id and s.kind == "data"])

    def cycle_done(self, volume: str, report: dict[str, Any]) -> None:
        """Record one finished cycle (``SiteDaemon.cycle`` report: ``committed``, ``cycle_s``,
        ``commit_s`` (seconds from ship acknowledged to Raft commit applied), ``changed_blocks``)."""
        outcome = "committed" if report.get("committed") else "not_committed"
        self.cycles.labels(self.site_id, volume, outcome).inc()
        self.last_cycle.labels(self.site_id, volume, outcome).set(self.clock_ns() / 1e9)
        if "cycle_s" in report:
            self.cycle_seconds.labels(self.site_id, volume).observe(report["cycle_s"])
        if "commit_s" in report:
            self.commit_seconds.labels(self.site_id, volume).observe(report["commit_s"])
        if report.get("committed") and isinstance(report.get("changed_blocks"), int):
            self.changed_blocks.labels(self.site_id, volume).inc(report["changed_blocks"])

    def judged_snapshot(self, volume: str, verdict: str, changed_bytes: int, cpu_s: float) -> None:
        """Count one snapshot this site judged itself (issue 14): its verdict, the changed bytes
        compared and the judge's CPU seconds."""
        self.judged.labels(self.site_id, volume, verdict).inc()
        self.judged_bytes.labels(self.site_id, volume).inc(max(0, changed_bytes))
        self.judge_cpu.labels(self.site_id, volume).inc(max(0.0, cpu_s))

    def set_disagreements(self, volume: str, count: int) -> None:
        """Set ``replicad_anomaly_verdict_disagreements`` of ``volume``."""
        self.disagreements.labels(self.site_id, volume).set(count)

    def drill_finished(self, volume: str, passed: bool, at_s: float, *, count: bool = True) -> None:
        """Record one drill of ``volume`` (issue 16): counted by outcome (unless ``count`` is
        false: the last success read back at start), and a passed one at unix time ``at_s``
        sets ``replicad_drill_last_success_timestamp_seconds``."""
        if count:
            self.drill_runs.labels(self.site_id, volume, "passed" if passed else "failed").inc()
        if passed:
            self.drill_last_success.labels(self.site_id, volume).set(at_s)

    def restore_skipped(self, volume: str) -> None:
        """Count one snapshot a takeover skipped as unrestorable (``replicad_restore_skipped_total``)."""
        self.restores_skipped.labels(self.site_id, volume).inc()

    def ship_stalled(self, peer: str) -> None:
        """Count one ship request ``peer`` stalled (``replicad_ship_stalled_total``)."""
        self.ships_stalled.labels(self.site_id, peer).inc()

    def ship_slot_waited(self, peer: str, waited_s: float, got: bool) -> None:
        """Count one chunk stream to ``peer`` that waited ``waited_s`` seconds for a place and got
        one (``got``) or gave up (``replicad_ship_slot_waits_total``, ``..._wait_seconds_total``)."""
        self.ship_slot_waits.labels(self.site_id, peer, "got" if got else "timed_out").inc()
        self.ship_slot_wait_seconds.labels(self.site_id, peer).inc(max(0.0, waited_s))

    def request_vanished(self, action: str) -> None:
        """Count one approved request of ``action`` gone from the Raft state unapplied
        (``replicad_request_vanished_total``)."""
        self.requests_vanished.labels(self.site_id, action).inc()

    def request_withdrawn(self, action: str, *, approved: bool) -> None:
        """Count one request of ``action`` withdrawn by its requester, ``approved`` when another site
        had approved it (``replicad_request_withdrawn_total``)."""
        self.requests_withdrawn.labels(self.site_id, action, "true" if approved else "false").inc()

    def fetch_refused(self, requester: str, reason: str) -> None:
        """Count one fetch of ``requester`` refused or cut here (``replicad_fetch_refused_total``)."""
        self.fetches_refused.labels(self.site_id, requester, reason).inc()

    def peer_doc_refused(self, peer: str, route: str, reason: str) -> None:
        """Count one request document of ``peer`` refused on ``route`` (``replicad_peer_doc_refused_total``)."""
        self.peer_docs_refused.labels(self.site_id, peer, route, reason).inc()

    def conn_refused(self, listener: str, peer: str, reason: str) -> None:
        """Count one connection of ``peer`` (a configured site or ``other``) that ``listener``
        (peer, admin) closed for ``reason`` (``replicad_conn_refused_total``)."""
        self.conns_refused.labels(self.site_id, listener, peer, reason).inc()

    def fetch_served(self, requester: str, volume: str, payload_bytes: int) -> None:
        """Count ``payload_bytes`` served to ``requester``'s fetches of ``volume``."""
        self.fetch_served_bytes.labels(self.site_id, requester, volume).inc(payload_bytes)

    def fetch_stalled(self, holder: str) -> None:
        """Count one fetch ``holder`` stalled or answered with bad frames (``replicad_fetch_stalled_total``)."""
        self.fetches_stalled.labels(self.site_id, holder).inc()

    def standby_damaged(self, volume: str) -> None:
        """Count one standby of ``volume`` found damaged (``replicad_standby_damage_found_total``)."""
        self.standby_damaged_events.labels(self.site_id, volume).inc()

    def standby_checked(self, volume: str, bytes_read: int) -> None:
        """Count ``bytes_read`` standby bytes read back by a standby check."""
        self.standby_checked_bytes.labels(self.site_id, volume).inc(bytes_read)

    def takeover_rewrite(self, volume: str, verified: bool) -> None:
        """Count one full rewrite of a promotion whose in-place restore failed O5."""
        self.takeover_rewrites.labels(self.site_id, volume, "verified" if verified else "failed").inc()

    def cycle_failed(self, volume: str) -> None:
        """Record a cycle that raised."""
        self.cycles.labels(self.site_id, volume, "failed").inc()
        self.last_cycle.labels(self.site_id, volume, "failed").set(self.clock_ns() / 1e9)

    def shipped(self, volume: str, peer: str, bytes_sent: int) -> None:
        """Count chunk payload bytes sent to ``peer`` (a site id)."""
        self.shipped_bytes.labels(self.site_id, volume, peer).inc(bytes_sent)

    def received(self, volume: str, peer: str, bytes_received: int) -> None:
        """Count chunk payload bytes received from ``peer`` (a site id)."""
        self.received_bytes.labels(self.site_id, volume, peer).inc(bytes_received)

    def verify_done(self, volume: str, checked: int, mismatched: int) -> None:
        """Record one verify run that checked ``checked`` chunks and found ``mismatched`` corrupt."""
        self.verify_runs.labels(self.site_id, volume).inc()
        if mismatched:
            self.verify_mismatches.labels(self.site_id, volume).inc(mismatched)

    def peer_refused(self, reason: str) -> None:
        """Count one peer write request refused with error code ``reason``."""
        self.peer_refusals.labels(self.site_id, reason).inc()

    def floor_kept_record(self, volume: str, reasons: tuple[str, ...]) -> None:
        """Count one record the local floor kept against the cluster state, once per rule in ``reasons``."""
        for reason in reasons:
            self.floor_kept.labels(self.site_id, volume, reason).inc()

    def export_opened(self, open_now: int) -> None:
        """Set ``replicad_exports_open`` to ``open_now`` (snapshot exports, issue 16)."""
        self.exports_open.labels(self.site_id).set(open_now)

    def export_bytes(self, volume: str, read_bytes: int, written_bytes: int) -> None:
        """Count bytes served by reads and taken by writes of a snapshot export of ``volume``."""
        if read_bytes:
            self.export_read_bytes.labels(self.site_id, volume).inc(read_bytes)
        if written_bytes:
            self.export_written_bytes.labels(self.site_id, volume).inc(written_bytes)

    def instant_phase(self, volume: str, phase: str) -> None:
        """Set ``replicad_instant_recovery_phase{volume}`` one-hot to ``phase`` (issue 16, item 1)."""
        for p in ("serving", "copying", "switching", "done", "fenced"):
            self.instant_phase_g.labels(self.site_id, volume, p).set(1 if p == phase else 0)

    def instant_progress(self, volume: str, ratio: float) -> None:
        """Set ``replicad_instant_recovery_progress_ratio{volume}`` (0..1)."""
        self.instant_progress_g.labels(self.site_id, volume).set(ratio)

    def instant_first_read(self, volume: str, seconds: float) -> None:
        """Set ``replicad_instant_recovery_first_read_seconds{volume}``."""
        self.instant_first_read_g.labels(self.site_id, volume).set(seconds)

    def export_read_error(self, volume: str) -> None:
        """Count one export read of ``volume`` answered EIO (a chunk failed its digest or is missing)."""
        self.export_read_errors.labels(self.site_id, volume).inc()

    def render(self) -> bytes:
        """The text exposition of every metric (never raises because of the daemon's state)."""
        return generate_latest(self.registry)
