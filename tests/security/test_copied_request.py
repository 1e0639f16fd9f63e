"""A copied request withdrawn after an honest approval (attack review R16, F1).

Three real daemons; site-c is the attacker (``copying_requester.py``: its admin API files a copy
of another site's pending request as its own). A weakening request cools off (5 min here), so a
site can withdraw its own request (its own veto: the record goes, no veto is counted) after the
approvals were given.

1. site-a's operator asks for a stricter detection policy (``min_score`` 0.5): r_a, pending with
   site-a's approval.
2. site-c files the identical request: r_c ("site-a's operator asked me to re-file").
3. site-b's operator asks for the same at site-b. Before, the answer was the NEWEST identical
   request of another site, c's r_c ("approve it with replicad approve r_c"), not naming r_a; b
   approved r_c, c withdrew it, and the change of a majority never applied, with no veto counted
   and only a WARNING line. Now the answer is the OLDEST, a's r_a, and it lists every identical
   pending request with its requester and approvals (r_c by site-c too), in the API's answer and
   in ``replicad detection``'s words.
4. site-b approves r_c anyway (an operator following an older message) and site-c withdraws it:
   site-a and site-b each log an ERROR AUDIT line naming the requester and the approval it voids,
   and count it (``replicad_request_withdrawn_total{action="set_detection",approved="true"}``).
5. site-b approves r_a: it is approved by site-a and site-b and cools off (site-c's veto of it
   would be a counted veto, not a withdrawal).

A site that was away when the copy was withdrawn and caught up from the leader's full state (its
log compacted meanwhile: ``REPLICAD_LAB_COMPACTION_ENTRIES``) says it at ERROR too and counts it
(before: "forgotten (finished records are bounded per requester)", at WARNING).
"""

from __future__ import annotations

import contextlib
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, write_image
from tests.security.full_state import leader_compacted, start_from_full_state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

STRICTER = {"detection": {"min_score": 0.5}, "reason": "tighten after incident"}


def _cli(c: LocalCluster, site: str, *args: str) -> subprocess.CompletedProcess:
    token = c.default_token(site)
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", **({"REPLICAD_TOKEN": token} if token else {})}
    return subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites[site].admin_url, *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parents[2])


def _withdrawn(c: LocalCluster, site: str, approved: str) -> float | None:
    """``replicad_request_withdrawn_total{action="set_detection",approved=...}`` of ``site``; None if absent."""
    text = requests.get(c.sites[site].admin_url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("replicad_request_withdrawn_total{") and 'action="set_detection"' in line \
                and f'approved="{approved}"' in line and f'site="{site}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def _vetoes(c: LocalCluster, site: str) -> float:
    text = requests.get(c.sites[site].admin_url + "/metrics", timeout=10).text
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith("replicad_request_vetoes_total{"))


def _pending(c: LocalCluster, site: str, req_id: str) -> bool:
    return any(r["id"] == req_id and r["status"] == "pending" for r in c.api(site, "GET", "/v1/requests")["requests"])


def _lab(config: str) -> str:
    return config.replace('log_level = "info"\n', 'log_level = "info"\nlab = true\n', 1)


@contextlib.contextmanager
def _running(c: LocalCluster):
    """``c`` running (site-a's volume written first): site-a and site-b honest, site-c copying the
    requests it sees (:mod:`tests.security.copying_requester`); every site stopped after."""
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(7))
    try:
        c.start("site-a")
        c.start("site-b")
        c.start("site-c", module="tests.security.copying_requester", args=("run",))
        c.wait_ready(120)
        yield
    finally:
        c.stop_all()


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, cooling_off="300s")
    with _running(c):
        yield c


def test_a_copied_request_does_not_take_the_honest_answer_and_its_withdrawal_is_an_error(cluster) -> None:
    c = cluster
    # 1. site-a asks
    ra = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/detection", STRICTER)
    assert ra["status"] == "pending" and ra["approvals"] == ["site-a"], ra
    r_a = ra["request"]
    c.wait_for("site-c sees a's request", lambda: _pending(c, "site-c", r_a), 30)
    # 2. site-c copies it
    rc = c.api("site-c", "PUT", f"/v1/volumes/{VOL}/detection",
               {**STRICTER, "reason": "tighten after incident (site-a's operator asked me to re-file)"})
    r_c = rc["request"]
    assert r_c != r_a and rc["approvals"] == ["site-c"] and not rc.get("existing"), rc
    c.wait_for("site-b sees both", lambda: _pending(c, "site-b", r_a) and _pending(c, "site-b", r_c), 30)

    # 3. site-b's operator asks the same: answered with a's, the oldest; c's copy listed beside it
    rb = c.api("site-b", "PUT", f"/v1/volumes/{VOL}/detection", STRICTER)
    assert rb["existing"] is True and rb["own"] is False, rb
    assert rb["request"] == r_a and rb["by"] == "site-a", rb
    assert f"approve it with replicad approve {r_a}" in rb["next"], rb
    assert [(r["request"], r["by"], r["approvals"]) for r in rb["identical"]] == [
        (r_a, "site-a", ["site-a"]), (r_c, "site-c", ["site-c"])], rb
    assert f"{r_c} by site-c (approved by site-c)" in rb["next"], rb
    assert _pending(c, "site-b", r_a) and not any(r["approvals"] == ["site-c", "site-b"] for r in
                                                  c.api("site-b", "GET", "/v1/requests")["requests"])
    out = _cli(c, "site-b", "detection", VOL, "--set", "min_score=0.5", "--reason", "tighten after incident")
    said = " ".join(out.stdout.split())
    assert out.returncode == 0 and f"request {r_a} by site-a is already pending" in said, (said, out.stderr)
    assert f"approve it with replicad approve {r_a}" in said, said
    assert f"identical request also pending: {r_c} by site-c (approved by site-c;" in said, said

    # 4. site-b approves c's copy anyway; c withdraws it during the cooling-off
    ap = c.api("site-b", "POST", f"/v1/requests/{r_c}/approve", {})
    assert ap["status"] == "approved" and ap["approvals"] == ["site-c", "site-b"], ap
    for s in ("site-a", "site-b"):
        assert _withdrawn(c, s, "true") == 0  # at zero from the start: the alert sees the first one
    w = c.api("site-c", "POST", f"/v1/requests/{r_c}/veto", {})
    assert w["status"] == "withdrawn", w
    line = re.compile(rf"ERROR .*AUDIT request {r_c} \(set_detection of volume {VOL}, approved when withdrawn\) "
                      r"withdrawn by its requester site-c after site-b approved it: the approval\(s\) of site-b are "
                      r"void and it will not take effect")
    for s in ("site-a", "site-b"):
        c.wait_for(f"{s}'s ERROR", lambda s=s: line.search(c.sites[s].log_path.read_text()), 30)
        assert len(line.findall(c.sites[s].log_path.read_text())) == 1, c.log_tail(s)
        c.wait_for(f"{s} counts it", lambda s=s: _withdrawn(c, s, "true") == 1, 10)
        assert _withdrawn(c, s, "false") == 0
        assert _vetoes(c, s) == 0  # a withdrawal is not a veto: the new count is what says it

    # 5. the honest request is still there to approve, and approving it starts its cooling-off
    ap = c.api("site-b", "POST", f"/v1/requests/{r_a}/approve", {})
    assert ap["status"] == "approved" and ap["approvals"] == ["site-a", "site-b"], ap


@pytest.fixture
def compacting_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICAD_LAB_CHECKPOINT_EVERY", "8")  # a log compacted every 24 entries: site-b, back,
    monkeypatch.setenv("REPLICAD_LAB_COMPACTION_ENTRIES", "24")  # catches up from the leader's full state
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, cooling_off="300s")
    for s in ("site-a", "site-b", "site-c"):
        c.sites[s].config_path.write_text(_lab(c.sites[s].config_path.read_text()))
    with _running(c):
        yield c


def test_a_site_away_when_the_copy_was_withdrawn_says_it_at_error_after_its_catch_up(compacting_cluster) -> None:
    c = compacting_cluster
    r_a = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/detection", STRICTER)["request"]
    c.wait_for("site-c sees a's request", lambda: _pending(c, "site-c", r_a), 30)
    r_c = c.api("site-c", "PUT", f"/v1/volumes/{VOL}/detection", STRICTER)["request"]
    c.wait_for("site-b sees c's copy", lambda: _pending(c, "site-b", r_c), 30)
    assert c.api("site-b", "POST", f"/v1/requests/{r_c}/approve", {})["status"] == "approved"
    c.kill("site-b", signal.SIGTERM)  # it sees the rest when it is back

    assert c.api("site-c", "POST", f"/v1/requests/{r_c}/veto", {})["status"] == "withdrawn"
    for i in range(14):  # c's own requests it withdraws at once: enough entries for the leader to compact
        q = c.api("site-c", "PUT", f"/v1/volumes/{VOL}/detection",
                  {"detection": {"min_score": round(0.3 + i / 100, 2)}, "reason": "x"})
        assert c.api("site-c", "POST", f"/v1/requests/{q['request']}/veto", {})["status"] == "withdrawn"
    c.wait_for("site-a counts the withdrawal live", lambda: _withdrawn(c, "site-a", "true") == 1, 30)
    assert _withdrawn(c, "site-a", "false") == 14
    done = time.time()
    leader_compacted(c, done, 90)

    start_from_full_state(c, 90)
    line = re.compile(rf"ERROR .*AUDIT \(committed while this site was away; received whole from the leader, "
                      rf"commands \d+\.\.\d+\) request {r_c} \(set_detection, approved, requested by site-c\) gone "
                      r"unfinished: withdrawn by its requester after site-b approved it \(their approvals are void\)")
    c.wait_for("site-b's ERROR", lambda: line.search(c.sites["site-b"].log_path.read_text()), 30)
    assert len(line.findall(c.sites["site-b"].log_path.read_text())) == 1
    c.wait_for("site-b counts it", lambda: _withdrawn(c, "site-b", "true") == 1, 30)
    assert "forgotten (finished records are bounded" not in c.sites["site-b"].log_path.read_text()
