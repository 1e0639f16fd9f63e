"""A site whose Raft view is stale says so (issue 13, item 10), on real daemons.

A site is cut off from the Raft group by a Raft password the others do not share: its
handshakes fail at both ends (the password is the first gate of the Raft channel), so it runs,
answers its admin API and metrics, and reaches nobody's Raft port, while the other two keep
their majority. Either the site restarts with another password (its applied view then starts
empty: pysyncobj applies nothing before a leader tells it the commit index), or the two others
restart with a new one while it keeps running (its view keeps what it had applied, and misses
everything after). The old primary cut off and restarted must not report ``primary`` as fact next
to the real one, must refuse a snapshot request with ``no_quorum`` (503) instead of 200
``committed: false``, and a replica cut off must not report a standby lag of 0 while it misses
a 300-block snapshot.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from replicad.core.errors import NoQuorumError
from replicad.lab.localcluster import LocalCluster

from .conftest import VOL, overwrite_blocks, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

OTHER_PASSWORD = "a-raft-password-no-other-site-knows-0123"


def restart_cut_off(c: LocalCluster, site: str) -> None:
    """Stop ``site`` (SIGKILL, by PID) and start it again with a Raft password the others do not
    share: it runs alone, cut off from every Raft peer."""
    c.kill(site, signal.SIGKILL)
    (c.sites[site].dir / "raft.key").write_text(OTHER_PASSWORD)
    c.start(site)
    c.wait_for(f"{site}'s admin API", lambda: c.status(site)["site_id"] == site, 60)


def restart_with_password(c: LocalCluster, sites: tuple[str, ...], password: str) -> None:
    """Restart ``sites`` (SIGKILL, by PID) with the Raft password ``password``."""
    for site in sites:
        c.kill(site, signal.SIGKILL)
        (c.sites[site].dir / "raft.key").write_text(password)
    for site in sites:
        c.start(site)


def metrics(c: LocalCluster, site: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, labels without site): value}`` of one scrape of ``site``'s /metrics."""
    with urllib.request.urlopen(c.sites[site].admin_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset((k, v) for k, v in s.labels.items() if k != "site")): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def names(smp: dict) -> set[str]:
    return {n for n, _ in smp}


def cli_status(c: LocalCluster, site: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites[site].admin_url, "status"],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="200"))


def test_a_cut_off_restarted_old_primary_says_its_role_is_unconfirmed_and_refuses_snapshots(cluster_factory) -> None:
    c = cluster_factory()
    rng = random.Random(10)
    first = snapshot(c, "site-a")
    assert first["committed"]
    c.kill("site-a", signal.SIGKILL)
    promo = c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True})
    assert promo["epoch"] == 2
    overwrite_blocks(c.sites["site-b"].volume_path(VOL), [3, 4], rng)
    assert snapshot(c, "site-b")["committed"]

    restart_cut_off(c, "site-a")  # the old primary comes back, cut off from the Raft group
    st = c.status("site-a")
    v = st["volumes"][VOL]
    assert v["role"] == "primary" and v["acting_epoch"] == 1  # what it believes (its persisted acting epoch)
    assert v["confirmed"] is False  # ... and says it is not confirmed
    assert st["view"]["current"] is False and st["raft"]["synced"] is False and st["view"]["why"]
    # restarted alone, it has applied nothing yet: no command of its own in its view to date it by
    assert st["view"]["age_s"] is None or st["view"]["age_s"] > 0, st["view"]
    smp = metrics(c, "site-a")
    assert smp[("replicad_raft_view_stale", frozenset())] == 1
    assert smp[("replicad_volume_role_confirmed", frozenset({("volume", VOL)}))] == 0
    assert "replicad_volume_role" not in names(smp) and "replicad_volume_epoch" not in names(smp)
    with pytest.raises(NoQuorumError) as refused:  # 503 no_quorum, not 200 committed: false
        snapshot(c, "site-a")
    assert refused.value.evidence.get("view", {}).get("current") is False, refused.value.evidence
    out = cli_status(c, "site-a")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "primary?" in out.stdout and "NOT CURRENT" in out.stdout, out.stdout

    # the real primary, at the same time: confirmed, current view, the one-hot role exported
    real = c.wait_for("site-b's view current", lambda: (lambda s: s if s["view"]["current"] else None)(
        c.status("site-b")), 30)
    assert real["volumes"][VOL]["role"] == "primary" and real["volumes"][VOL]["confirmed"] is True
    assert real["volumes"][VOL]["epoch"] == 2
    smp = metrics(c, "site-b")
    assert smp[("replicad_raft_view_stale", frozenset())] == 0
    assert smp[("replicad_volume_role", frozenset({("volume", VOL), ("role", "primary")}))] == 1
    assert smp[("replicad_volume_role_confirmed", frozenset({("volume", VOL)}))] == 1
    assert 0 <= smp[("replicad_raft_view_age_seconds", frozenset())] < 60


def test_a_cut_off_replica_does_not_report_a_standby_lag_of_zero(cluster_factory) -> None:
    c = cluster_factory(n_blocks=320)
    rng = random.Random(11)
    first = snapshot(c, "site-a")
    c.wait_for("site-c's standby at the first snapshot", lambda: c.status("site-c")["volumes"][VOL]
               ["standby_seq"] == first["seq"], 60)
    # site-c keeps running with the view it applied; site-a and site-b go on without it
    restart_with_password(c, ("site-a", "site-b"), OTHER_PASSWORD)
    c.wait_for("site-a and site-b current again", lambda: all(c.status(s)["view"]["current"]
                                                               for s in ("site-a", "site-b")), 60)
    overwrite_blocks(c.sites["site-a"].volume_path(VOL), list(range(10, 310)), rng)
    second = c.wait_for("a commit without site-c's Raft vote", lambda: (lambda r: r if r["committed"] else None)(
        snapshot(c, "site-a")), 60, interval_s=1)
    assert second["changed_blocks"] == 300

    st = c.status("site-c")
    v = st["volumes"][VOL]
    assert st["view"]["current"] is False and st["view"]["why"]
    assert st["view"]["age_s"] is not None and st["view"]["age_s"] > 0
    assert v["role"] == "replica" and v["confirmed"] is False
    # its old view: the newest clean snapshot is the one its standby holds, so the lag would read 0
    assert v["standby_seq"] == first["seq"] and v["newest_clean"] == first["seq"]
    assert v["standby_lag_snapshots"] is None
    smp = metrics(c, "site-c")
    assert smp[("replicad_raft_view_stale", frozenset())] == 1
    assert smp[("replicad_raft_view_age_seconds", frozenset())] > 0
    assert not names(smp) & {"replicad_standby_lag_snapshots", "replicad_standby_lag_seconds"}, \
        {k: val for k, val in smp.items() if k[0].startswith("replicad_standby_lag")}

    restart_with_password(c, ("site-c",), OTHER_PASSWORD)  # back in the group: lag served from a current view
    c.wait_for("site-c's standby at the second snapshot", lambda: (lambda v: v["confirmed"] and v["standby_seq"]
               == second["seq"] and v["standby_lag_snapshots"] == 0)(c.status("site-c")["volumes"][VOL]), 90)
    smp = metrics(c, "site-c")
    assert smp[("replicad_raft_view_stale", frozenset())] == 0
    assert smp[("replicad_standby_lag_snapshots", frozenset({("volume", VOL)}))] == 0
    assert json.dumps(c.status("site-c")["view"])  # JSON-clean
