"""A Raft leader that front-runs the other sites' commands is deposed, and the honest commands apply
(raft point 21, state rules 3; attacker review r13, F5).

The attacker is site-c, the Raft leader: its real daemon runs with one patch
(``front_running_leader.py``): once the trigger file exists, before each ``request`` another site
forwards, it appends a command of its own, signed by itself, with the same op id, then the honest
command unchanged. Before, under the state's rules 2 (op ids remembered alone), site-a's
``revoke site-c`` was answered ``{"request": null}`` (c's stored answer), no request existed
anywhere, nothing was logged and site-c kept leading. Now each honest site whose command was
front-run logs ERROR naming site-c (``replicad_raft_refused_total{reason="leader_front_runs"}``)
and deposes it, the two elect one of themselves, and:

* under rules 3 (a cluster founded by this release) the front-run entry cannot answer for the
  honest command at all: a's revocation request and b's retention request are applied and
  answered as such the first time;
* under rules 2 (a cluster whose sites still report the previous release) the honest command is
  answered ``leader_front_run`` by its own site (never with c's answer), which proposes it again
  as a new command: the requests exist, by a and by b.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from replicad.core.errors import ReplicadError
from replicad.lab.localcluster import LocalCluster
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


@pytest.mark.parametrize("rules", [2, 3])
def test_a_front_running_leader_is_deposed_and_the_honest_commands_apply(tmp_path: Path, monkeypatch,
                                                                          rules: int) -> None:
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
        assert len(lines(c, "site-c", "FRONTRUN")) >= 2, c.log_tail("site-c")  # the attack ran

        for site, answer in answers.items():
            if isinstance(answer, ReplicadError):  # never c's answer: an error naming why, at worst
                assert rules == 2 and answer.code in ("no_quorum", "leader_front_run"), (site, answer)
            else:  # never {"request": null}: the command applied and is answered as such
                assert answer.get("request") and answer.get("status") == "pending", (site, answer)
        if rules == 3:
            assert not any(isinstance(a, ReplicadError) for a in answers.values()), answers

        for site in HONEST:
            c.wait_for(f"{site} deposes site-c", lambda: raft_refused(c, site, "leader_front_runs") >= 1, 60)
            found = lines(c, site, "raft refused [leader_front_runs]")
            assert found and "ERROR" in found[0] and f"{c_addr} (site site-c)" in found[0], c.log_tail(site)
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
        if rules == 3:  # the first answers were the requests themselves
            assert {answers["site-a"]["request"], answers["site-b"]["request"]} == {r["id"] for r in table}
    finally:
        c.stop_all()
