"""Alerts that fired for nothing, on real daemons scraped by a real Prometheus loading
config/prometheus/alerts.yml (operators learn to ignore alerts that fire for nothing):

* ``ReplicadRaftTrafficRefused`` fired at every restart of an honest site past a compacted Raft
  log: the restarted site hears the leader's full state before it follows that leader and
  refuses it (counted ``snapshot_before_leader`` now, a reason the alert leaves out but for a
  flood; ``consensus.channel.ROUTINE_REASONS``);
* ``ReplicadRaftPeerUnreachable`` fired for ever for a revoked site left running (cut off as
  intended): its partners are marked ``replicad_raft_peer_revoked`` 1, which the alert leaves out,
  and its refused connections (``revoked_site``) do not fire ``ReplicadRaftTrafficRefused``.

Each check also queries the condition the old rule had, so the test fails if the scenario it
needs did not happen. Skipped as tests/integration/test_prometheus.py is (no ``prometheus``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from replicad.lab.localcluster import LocalCluster

from .conftest import VOL, overwrite_blocks, snapshot, write_image
from .test_prometheus import ALERTS, Prom, prometheus_binary

pytestmark = pytest.mark.integration

COMPACTION = 24
"""Log entries past which a site compacts (REPLICAD_LAB_COMPACTION_ENTRIES; production 5,000)."""


def rule(name: str) -> str:
    return next(r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == name)


def cli(c: LocalCluster, site: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REPLICAD_TOKEN"}
    return subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites[site].admin_url, *args],
                          capture_output=True, text=True, timeout=120, env=env)


def series(prom: Prom, expr: str) -> list[dict[str, str]]:
    return [s["metric"] for s in prom.query(expr)]


def commit_past_compaction(c: LocalCluster, rng: random.Random) -> None:
    """Commit snapshots at site-a until the log grew by more than two compactions."""
    start = c.status("site-a")["raft"]["commit_index"]
    deadline = time.monotonic() + 120
    while c.status("site-a")["raft"]["commit_index"] < start + 2 * COMPACTION + 10:
        assert time.monotonic() < deadline, "the log did not grow past the compaction threshold in 120 s"
        overwrite_blocks(c.sites["site-a"].volume_path(VOL), [rng.randrange(16)], rng)
        snapshot(c, "site-a")


@pytest.mark.timeout(420)
def test_restart_and_revoked_site_fire_no_alert(tmp_path: Path, monkeypatch) -> None:
    binary = prometheus_binary()
    monkeypatch.setenv("REPLICAD_LAB_COMPACTION_ENTRIES", str(COMPACTION))
    # lab = true (written with withheld_after; production's 45 s) lets the daemons read the knob
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, withheld_after="45s")
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(7))
    prom = None
    try:
        c.start_all()
        c.wait_ready(90)
        prom = Prom(binary, tmp_path / "prometheus", {s: site.admin_port for s, site in c.sites.items()})
        prom.wait("3 targets up", lambda: len(series(prom, 'up == 1')) == 3)

        # an honest restart past a compacted log: the full state comes before the leader is followed
        c.kill("site-b", signal.SIGTERM)
        commit_past_compaction(c, random.Random(3))
        c.start("site-b")
        c.wait_ready(120)
        counted = c.wait_for("site-b refused the full state sent before it followed the leader", lambda: (
            c.status("site-b")["raft"]["refused"].get("snapshot_before_leader")), 30)
        prom.wait("the refusal scraped", lambda: series(
            prom, f'replicad_raft_refused_total{{site="site-b", reason="snapshot_before_leader"}} == {counted}'))
        assert series(prom, "increase(replicad_raft_refused_total[15m]) > 0"), "the old rule would not have fired"
        fired = series(prom, rule("ReplicadRaftTrafficRefused"))
        assert fired == [], (fired, {s: c.status(s)["raft"]["refused"] for s in c.sites})

        # a revoked site left running: cut off as intended, no alert for it at the honest sites
        asked = cli(c, "site-a", "--json", "revoke", "site-c", "--reason", "host compromised")
        assert asked.returncode == 0, asked.stderr
        approved = cli(c, "site-b", "approve", json.loads(asked.stdout)["request"])
        assert approved.returncode == 0 and "applied" in approved.stdout, (approved.stdout, approved.stderr)
        honest = 'site=~"site-a|site-b", peer="site-c"'
        prom.wait("site-c marked revoked and down at both honest sites", lambda: len(series(
            prom, f"replicad_raft_peer_revoked{{{honest}}} == 1 and replicad_raft_peer_up{{{honest}}} == 0")) == 2)
        prom.wait("site-c's connections refused as revoked", lambda: series(
            prom, 'increase(replicad_raft_refused_total{site=~"site-a|site-b", reason="revoked_site"}[15m]) > 0'))
        assert [s for s in series(prom, rule("ReplicadRaftPeerUnreachable"))
                if s["site"] in ("site-a", "site-b")] == []
        fired = [s for s in series(prom, rule("ReplicadRaftTrafficRefused")) if s["site"] in ("site-a", "site-b")]
        assert fired == [], (fired, {s: c.status(s)["raft"]["refused"] for s in ("site-a", "site-b")})
        # a site that really is down still fires it (what the revoked mark must not hide)
        c.kill("site-b", signal.SIGTERM)
        prom.wait("site-a sees site-b down", lambda: series(
            prom, rule("ReplicadRaftPeerUnreachable") + ' and on (site, peer) replicad_raft_peer_up{site="site-a", '
            'peer="site-b"}'))
    finally:
        if prom is not None:
            prom.stop()
        c.stop_all()
