"""A Raft leader that front-runs the other sites' commands cancels nothing (state rules 3), is
alerted at each site it front-ran, and under rules 2 is deposed (raft point 21; attacker reviews
r13, F5, and r14, A2 and A4).

The attacker is site-c, the Raft leader: its real daemon runs with one patch
(``front_running_leader.py``): once the trigger file exists, before each ``request`` another site
forwards or relays to it, it appends a command of its own, signed by itself, with the same op id,
then the honest command unchanged. Before, under the state's rules 2 (op ids remembered alone),
site-a's ``revoke site-c`` was answered ``{"request": null}`` (c's stored answer), no request
existed anywhere, nothing was logged and site-c kept leading. Now each honest site whose command
was front-run logs ERROR naming site-c (``replicad_raft_refused_total{reason="leader_front_runs"}``,
alert ``ReplicadRaftLeaderFrontRuns``), and:

* under rules 3 and later (a cluster founded by this release) the front-run entry cannot answer for the
  honest command at all: a's revocation request and b's retention request are applied and
  answered as such the first time; and nobody deposes site-c (a deposition cut site-a off for
  2 minutes while site-b kept following c, r14 A2): a's next requests, front-run again, are
  answered at once, the same revocation asked again is answered with the pending request, and
  a command of a's that c only gets relayed through site-b (c drops a's forward) applies too;
* under rules 2 (a cluster whose sites still report the previous release) the honest command is
  answered ``leader_front_run`` by its own site (never with c's answer), which proposes it again
  as a new command, and deposes c; the two elect one of themselves: the requests exist, by a and
  by b.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from replicad.core.errors import ReplicadError
from replicad.lab.localcluster import LocalCluster
from replicad.core.state import RULES_MAX
from replicad.site.rules_raise import LAB_FOUND_RULES_ENV, LAB_REPORT_RULES_MAX_ENV
from tests.integration.conftest import VOL, write_image
from tests.integration.test_incarnation import _lead
from tests.security.test_signed_commands import raft_refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

SITES = ("site-a", "site-b", "site-c")
HONEST = ("site-a", "site-b")
WEAKER = {"keep_all_s": 3600, "hourly_s": 86400, "daily_s": 86400, "lock_s": 3600}


def raft_of(c: LocalCluster, site: str) -> dict:
    return c.status(site)["raft"]


def lines(c: LocalCluster, site: str, text: str) -> list[str]:
    return [line for line in c.sites[site].log_path.read_text(errors="replace").splitlines() if text in line]


def requests_at(c: LocalCluster, site: str) -> list[dict]:
    return c.api(site, "GET", "/v1/requests")["requests"]


@pytest.mark.parametrize("rules", [2, RULES_MAX])  # RULES_MAX: a cluster this release founds (3 and later)
def test_a_front_running_leader_cancels_nothing_and_is_alerted(tmp_path: Path, monkeypatch, rules: int) -> None:
    if rules == 2:  # founded under rules 2 and every site reports the previous release: no raise
        monkeypatch.setenv(LAB_FOUND_RULES_ENV, "2")
        monkeypatch.setenv(LAB_REPORT_RULES_MAX_ENV, "2")
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, withheld_after="45s")  # (lab = true: the knobs)
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(5))
    trigger = tmp_path / "front-run"
    try:
        c.start_all()
        c.wait_ready(90)
        c.kill("site-c")
        c.start("site-c", module="tests.security.front_running_leader", args=(str(trigger), "run"))
        c.wait_for("site-c back", lambda: raft_of(c, "site-c")["leader"] is not None, 90)
        _lead(c, "site-c", SITES)
        c_addr = raft_of(c, "site-c")["self"]
        versions = {s: c.status(s)["rules"]["version"] for s in SITES}
        assert versions == dict.fromkeys(SITES, rules), versions
        assert all(raft_refused(c, s, "leader_front_runs") == 0 for s in HONEST)

        trigger.touch()
        answers: dict[str, object] = {}

        def call(site: str, method: str, path: str, body: dict) -> None:
            try:
                answers[site] = c.api(site, method, path, body)
            except ReplicadError as err:
                answers[site] = err
        calls = [threading.Thread(target=call, args=("site-a", "POST", "/v1/sites/site-c/revoke",
                                                     {"reason": "hostile"})),
                 threading.Thread(target=call, args=("site-b", "PUT", f"/v1/volumes/{VOL}/retention",
                                                     {"retention": WEAKER, "reason": "save space"}))]
        for t in calls:
            t.start()
        for t in calls:
            t.join(120)
        assert len(lines(c, "site-c", "FRONTRUN apply_command")) >= 2, c.log_tail("site-c")  # the attack ran

        for site, answer in answers.items():
            if isinstance(answer, ReplicadError):  # never c's answer: an error naming why, at worst
                assert rules == 2 and answer.code in ("no_quorum", "commit_unknown", "leader_front_run"), (site, answer)
            else:  # never {"request": null}: the command applied and is answered as such
                assert answer.get("request") and answer.get("status") == "pending", (site, answer)
        if rules >= 3:
            assert not any(isinstance(a, ReplicadError) for a in answers.values()), answers

        for site in HONEST:  # alerted, naming c: under rules 2 deposed, under rules 3 not (below)
            c.wait_for(f"{site} alerts", lambda: raft_refused(c, site, "leader_front_runs") >= 1, 60)
            found = lines(c, site, "raft refused [leader_front_runs]")
            assert found and "ERROR" in found[0] and f"{c_addr} (site site-c)" in found[0], c.log_tail(site)
            assert ("NOT deposed" in found[0]) is (rules >= 3), found[0]
        if rules >= 3:
            _not_cut_off(c, trigger, answers, c_addr)
            return
        leader = c.wait_for("an honest leader", lambda: next((s for s in HONEST if raft_of(c, s)["is_leader"]), None),
                            90)
        assert leader in HONEST

        def retried(site: str, method: str, path: str, body: dict) -> None:
            if isinstance(answers.get(site), ReplicadError):  # (rules 2, past the proposal deadline) the operator again
                answers[site] = c.wait_for(f"{site}'s request", lambda: c.api(site, method, path, body), 90)
        retried("site-a", "POST", "/v1/sites/site-c/revoke", {"reason": "hostile"})
        retried("site-b", "PUT", f"/v1/volumes/{VOL}/retention", {"retention": WEAKER, "reason": "save space"})
        table = c.wait_for("both requests at site-a", lambda: len(requests_at(c, "site-a")) >= 2 and requests_at(
            c, "site-a"), 60)
        by = {(r["by"], r["action"]) for r in table}
        assert ("site-a", "revoke_site") in by and ("site-b", "set_retention") in by, table
        for r in table:
            assert r["status"] == "pending" and r["by"] in HONEST, r
    finally:
        c.stop_all()


def _not_cut_off(c: LocalCluster, trigger: Path, answers: dict, c_addr: str) -> None:
    """Rules 3, after the first front-runs: nobody deposed site-c (it still leads, both follow it),
    and site-a, primary of the volume, keeps committing while c keeps front-running: a new request
    is answered as one at once; the same revocation asked again is answered with the pending
    request (nothing new proposed); and a request c only gets relayed (c drops a's forward, so a
    relays it through site-b and to c, raft point 20) applies, front-run, alerted, nobody deposed."""
    table = requests_at(c, "site-a")
    assert {answers["site-a"]["request"], answers["site-b"]["request"]} == {r["id"] for r in table}  # the first answers
    for site in SITES:
        st = raft_of(c, site)
        assert st["deposed"] == {} and (st["is_leader"] if site == "site-c" else st["leader"] == c_addr), (site, st)
    alerts = raft_refused(c, "site-a", "leader_front_runs")

    again = c.api("site-a", "POST", "/v1/sites/site-c/revoke", {"reason": "hostile, again"})
    assert again["request"] == answers["site-a"]["request"] and again.get("existing") is True, again
    second = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/retention",
                   {"retention": {**WEAKER, "keep_all_s": 1800}, "reason": "second"})
    assert second.get("request") and second["status"] == "pending" and second["request"] not in {a["request"] for a in answers.values()}, second
    c.wait_for("the second front-run alerted", lambda: raft_refused(c, "site-a", "leader_front_runs") > alerts, 30)
    alerts = raft_refused(c, "site-a", "leader_front_runs")

    relayed = trigger.with_suffix(".new")  # from now on a's requests reach c relayed only
    relayed.write_text("relayed")
    relayed.rename(trigger)
    third = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/retention",
                  {"retention": {**WEAKER, "keep_all_s": 2400}, "reason": "relayed"})
    assert third.get("request") and third["status"] == "pending", third  # applied, answered as itself
    assert lines(c, "site-c", "DROPPED apply_command site-a request"), c.log_tail("site-c")
    assert lines(c, "site-c", "FRONTRUN relay_command site-a request"), c.log_tail("site-c")  # the attack ran
    c.wait_for("the relayed front-run alerted", lambda: raft_refused(c, "site-a", "leader_front_runs") > alerts, 30)
    ids = {r["id"]: r for r in requests_at(c, "site-b")}
    for answer in (answers["site-a"], answers["site-b"], second, third):
        assert ids[answer["request"]]["status"] == "pending", (answer, ids)
    assert len(ids) == 4, ids  # nothing made twice
    for site in SITES:
        st = raft_of(c, site)
        assert st["deposed"] == {} and (st["is_leader"] if site == "site-c" else st["leader"] == c_addr), (site, st)
    assert all(raft_refused(c, s, "leader_withholds") == 0 for s in HONEST)
