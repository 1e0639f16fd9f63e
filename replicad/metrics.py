"""Prometheus metrics of a site (``GET /metrics`` on the admin port).

Names follow ``replicad_<subsystem>_<name>_<unit>`` in base units, labelled by ``site``
and, where it applies, ``volume`` and ``peer``. Event counters are updated by the daemon
as things happen (:meth:`SiteMetrics.cycle_done`, :meth:`shipped`, :meth:`received`,
:meth:`verify_done`); state gauges are read from the daemon's status at scrape time by a
custom collector, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""Content type of the exposition served at ``/metrics``."""


class SiteMetrics:
    """The metrics registry of one site.

    Args:
        site_id: value of the ``site`` label.
        status_fn: returns the daemon's status dict (``SiteDaemon.status``) at scrape time.
    """

    def __init__(self, site_id: str, status_fn: Callable[[], dict] | None = None) -> None:
        self.site_id = site_id
        self.status_fn = status_fn
        self.registry = CollectorRegistry(auto_describe=True)
        self.cycles = Counter("replicad_snapshot_cycles_total", "Snapshot cycles by outcome",
                              ["site", "volume", "outcome"], registry=self.registry)
        self.cycle_seconds = Histogram("replicad_snapshot_duration_seconds", "Duration of a snapshot cycle",
                                       ["site", "volume"], registry=self.registry,
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.shipped_bytes = Counter("replicad_ship_sent_bytes_total", "Chunk bytes sent to peers",
                                     ["site", "volume", "peer"], registry=self.registry)
        self.received_bytes = Counter("replicad_ship_received_bytes_total", "Chunk bytes received from peers",
                                      ["site", "volume", "peer"], registry=self.registry)
        self.verify_runs = Counter("replicad_verify_runs_total", "Verify runs", ["site", "volume"],
                                   registry=self.registry)
        self.verify_mismatches = Counter("replicad_verify_mismatches_total", "Chunks found corrupt by verify",
                                         ["site", "volume"], registry=self.registry)

    def cycle_done(self, volume: str, report: dict[str, Any]) -> None:
        """Record one finished cycle (``SiteDaemon.cycle`` report)."""
        outcome = "committed" if report.get("committed") else "not_committed"
        self.cycles.labels(self.site_id, volume, outcome).inc()
        if "cycle_s" in report:
            self.cycle_seconds.labels(self.site_id, volume).observe(report["cycle_s"])

    def cycle_failed(self, volume: str) -> None:
        """Record a cycle that raised."""
        self.cycles.labels(self.site_id, volume, "failed").inc()

    def shipped(self, volume: str, peer: str, bytes_sent: int) -> None:
        self.shipped_bytes.labels(self.site_id, volume, peer).inc(bytes_sent)

    def received(self, volume: str, peer: str, bytes_received: int) -> None:
        self.received_bytes.labels(self.site_id, volume, peer).inc(bytes_received)

    def verify_done(self, volume: str, checked: int, mismatched: int) -> None:
        self.verify_runs.labels(self.site_id, volume).inc()
        if mismatched:
            self.verify_mismatches.labels(self.site_id, volume).inc(mismatched)

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
