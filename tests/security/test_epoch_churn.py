"""One site cannot keep a volume's epoch churning or keep the honest sites from restoring
service (the epoch-change rule, ``state._check_epoch_rate``).

The attacker is site-a, the volume's first primary: a real process (``command_attacker.py
churn``) holding site-a's config, the cluster's Raft password and site-a's own key runs site-a's
Raft member in place of its daemon and, in its own name, forces a demotion and a promotion of
itself, round after round. Before, each one committed: every one bumped the epoch and fenced
the primary, so site-b's takeover was fenced again right after it began, until a majority
revoked site-a. Now site-a's first forced demotion of the live primary site-b is its one for
the hour; its promotion of itself right after, its demotions and promotions after that are
refused (``approval_required``, counted as ``epoch_rate`` at every site); site-b, whose
failover was its one forced change of the hour, takes the volume back by a request site-c
approves (the attacker's veto of it refused, counted as ``not_vetoable``: review R6) and commits
with site-c; a second churn changes nothing. Last, an honest site past its own change of the hour is not stuck: its
forced promotion becomes a request that another site's approval applies at once.

One cluster serves the module (the cases run in file order). Vetoes (the attacker still running site-a's member): one site's veto of an
honest request is logged at WARNING at every other site, naming the request, its requester and
the vetoing site, and counted per vetoing site (``replicad_request_vetoes_total{by}``).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from replicad.core.errors import ReplicadError
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, overwrite_blocks, snapshot, write_image
from tests.security.test_history import metric
from tests.security.test_signed_commands import refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).parents[2]
HONEST = ("site-b", "site-c")


def churn(c: LocalCluster, work: Path, rounds: int, mode: str = "churn") -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "tests.security.command_attacker", mode, "--config",
                          str(c.sites["site-a"].config_path), "--work-dir", str(work), "--volume", VOL,
                          "--rounds", str(rounds)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def vol(c: LocalCluster, site: str) -> dict:
    return c.api(site, "GET", "/v1/volumes")["volumes"][VOL]


def counted(c: LocalCluster, site: str, reason: str) -> float:
    """``refused`` that reads 0 while ``site`` exports no count of ``reason`` yet."""
    try:
        return refused(c, site, reason)
    except AssertionError:
        return 0.0


def take_over(c: LocalCluster, site: str) -> dict:
    promo = c.api(site, "POST", f"/v1/volumes/{VOL}/promote", {"force": True})
    assert promo["primary"] == site, promo
    c.wait_for(f"{site} acts as primary", lambda: c.status(site)["volumes"][VOL]["role"] == "primary", 60)
    return promo


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(tmp_path_factory.mktemp("churn") / "cluster", interval="1h", min_copies=2)
    write_image(c.sites["site-a"].volume_path(VOL), 32, random.Random(3))
    try:
        c.start_all()
        c.wait_ready(60)
        yield c
    finally:
        c.stop_all()


def test_one_site_cannot_churn_the_epoch_or_keep_the_honest_sites_out(cluster: LocalCluster, tmp_path: Path) -> None:
    c = cluster
    overwrite_blocks(c.sites["site-a"].volume_path(VOL), [1], random.Random(1))
    assert snapshot(c, "site-a")["committed"]
    c.kill("site-a")  # its daemon is down; the attacker runs its Raft member
    take_over(c, "site-b")  # the honest failover
    epoch_b = vol(c, "site-b")["epoch"]
    lines = churn(c, tmp_path / "attacker", rounds=3)
    assert [(r["op"], r["error"]) for r in lines] == [
        ("demote", "ok"), ("promote", "approval_required"),  # it may not take the role it emptied
        ("demote", "conflict"), ("promote", "approval_required"),  # no primary to demote
        ("demote", "conflict"), ("promote", "approval_required")], lines
    assert lines[0]["epoch"] == epoch_b + 1 and lines[-1]["epoch"] == epoch_b + 1
    assert all(r["primary"] is None for r in lines)
    # site-b spent its change of the hour on the failover: its takeback is a request; the
    # attacker's veto of it is refused and counted at b and c (review R6: it vetoed such a
    # request within the second), site-c's approval applies it at once
    with pytest.raises(ReplicadError) as info:
        c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True})
    assert info.value.code == "approval_required", info.value
    assert "then this site takes ehr over by itself" in info.value.message and "shows ehr primary" in \
        info.value.message, info.value.message  # the requester is told what happens after the approval
    req = info.value.evidence["request"]
    lines = churn(c, tmp_path / "attacker", rounds=0, mode="veto")
    assert (req, "conflict") in [(r["request"], r["error"]) for r in lines], lines
    for site in HONEST:
        c.wait_for(f"{site} counts the refused veto", lambda site=site: counted(c, site, "not_vetoable") >= 1, 30)
    done = c.api("site-c", "POST", f"/v1/requests/{req}/approve", {})
    assert done["status"] == "applied" and done["result"]["epoch"] == epoch_b + 2, done
    c.wait_for("site-b acts as primary", lambda: c.status("site-b")["volumes"][VOL]["role"] == "primary", 60)
    overwrite_blocks(c.sites["site-b"].volume_path(VOL), [2, 3], random.Random(2))
    shot = snapshot(c, "site-b")
    assert shot["committed"] and sorted(shot["holders"]) == list(HONEST), shot
    # the attacker's next rounds change nothing: site-b stays the primary at its epoch
    lines = churn(c, tmp_path / "attacker", rounds=2)
    assert {(r["op"], r["error"]) for r in lines} == {("demote", "approval_required"),
                                                      ("promote", "approval_required")}, lines
    for site in HONEST:
        now = vol(c, site)
        assert (now["primary"], now["epoch"]) == ("site-b", epoch_b + 2), (site, now)
        assert refused(c, site, "epoch_rate") >= 1
        log = c.sites[site].log_path.read_text()
        assert "raft command refused [epoch_rate]" in log, c.log_tail(site)
        assert "AUDIT demote of volume ehr by site-a" in log, c.log_tail(site)
    assert c.status("site-b")["volumes"][VOL]["role"] == "primary"
    # an honest site past its one change of the hour asks the others: site-c takes the volume
    # (its own first), site-b's answer becomes a request that site-c's approval applies at once
    take_over(c, "site-c")
    with pytest.raises(ReplicadError) as info:
        c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True})
    assert info.value.code == "approval_required", info.value
    req = info.value.evidence["request"]
    assert f"AUDIT volume {VOL}: forced promote at site-b refused by the epoch-change rule" in \
        c.sites["site-b"].log_path.read_text()
    done = c.api("site-c", "POST", f"/v1/requests/{req}/approve", {})
    assert done["status"] == "applied" and done["result"]["primary"] == "site-b", done
    c.wait_for("site-b acts as primary again", lambda: c.status("site-b")["volumes"][VOL]["role"] == "primary", 60)
    c.wait_for("site-c fenced", lambda: c.status("site-c")["volumes"][VOL]["role"] != "primary", 30)


def test_a_veto_is_named_and_counted_at_every_site(cluster: LocalCluster, tmp_path: Path) -> None:
    """Site-a's attacker vetoes site-b's request in its own name (one site's veto blocks: ARCHITECTURE,
    Choices): site-b and site-c each log it at WARNING naming the request, its requester and site-a,
    and count it in ``replicad_request_vetoes_total{by="site-a"}``."""
    c = cluster
    req = c.api("site-b", "PUT", f"/v1/volumes/{VOL}/retention", {"retention": {"lock": "1h"}, "reason": "disk full"})
    assert req["status"] == "pending", req
    before = {site: metric(c, site, "replicad_request_vetoes_total", by="site-a") for site in HONEST}
    lines = churn(c, tmp_path / "attacker", rounds=0, mode="veto")
    assert (req["request"], "ok") in [(r["request"], r["error"]) for r in lines], \
        (lines, c.api("site-b", "GET", "/v1/requests")["requests"])
    vetoed = sum(r["error"] == "ok" for r in lines)
    line = (f"AUDIT veto of request {req['request']} (set_retention of volume {VOL}, requested by site-b) by site-a: "
            "it will not take effect")
    for site in HONEST:
        c.wait_for(f"{site} logs the veto", lambda site=site: line in c.sites[site].log_path.read_text(), 30)
        assert [r["status"] for r in c.api(site, "GET", "/v1/requests")["requests"] if r["id"] == req["request"]] \
            == ["vetoed"]
        assert metric(c, site, "replicad_request_vetoes_total", by="site-a") == before[site] + vetoed
        warned = [x for x in c.sites[site].log_path.read_text().splitlines() if line in x]
        assert warned and "WARNING" in warned[0], warned
