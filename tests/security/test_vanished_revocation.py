"""An approved revocation erased under rules 1 is said, not lost unseen (review R13, F6).

Three real daemons founded under rules 1, as by release b976d0a (the lab knob
``REPLICAD_LAB_FOUND_RULES=1``); site-c, the attacker, reports rules 1..1 (``REPLICAD_LAB_REPORT_RULES_MAX=1``:
it withholds its release report), so the rules stay 1 (rules 1 are b976d0a's frozen machine,
``core/state_rules1.py``, whose request table keeps 64 finished records in all, approved ones among
them). site-a's operator runs ``replicad revoke site-c``: the CLI warns that under rules 1 the
revocation can be erased and names ``replicad raise-rules --leave-behind site-c`` first, and site-a's
log says it at WARNING. site-b approves (it cools off: site-c never approves its own revocation;
the approval's answer carries the warning too) and stops. Then site-c's own daemon, through its admin API, makes 70 requests and vetoes each
itself (a and c commit them): the approved revocation is pushed out of the table. site-a's log
carries the ERROR naming the vanished request and whose request pushed it out, seen live; site-b's
once it started again and caught up from the leader's full state (its log compacted meanwhile:
``REPLICAD_LAB_COMPACTION_ENTRIES``; ``AUDIT (committed while this site was away)``, "gone while
this site caught up from a full state"); and ``replicad_request_vanished_total{action="revoke_site"}``
counts it at both (before: nothing at all, R13 F6).

Site-c's daemon is the forging leader (``forging_record_leader.py``, started first: it votes for
nobody, so it leads): once the revocation is erased it appends one entry of its own making, a
``revoke_site`` in site-a's name signed with its own key, refused and audited as site-a's claim.
Before (attack review R15, F3), that refused record passed for the revocation's run at site-b and
silenced its report; only an accepted record counts now.

The cooling-off is long (10 min): the flood ends well inside it, and the test never waits for it.
"""

from __future__ import annotations

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
from replicad.site.rules_raise import LAB_FOUND_RULES_ENV, LAB_REPORT_RULES_MAX_ENV
from tests.integration.conftest import VOL, write_image
from tests.security.full_state import leader_compacted, start_from_full_state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SITES = ("site-a", "site-b", "site-c")
FLOOD = 70  # more than the 64 records rules 1 keep in all


def _lab(config: str) -> str:
    return config.replace('log_level = "info"\n', 'log_level = "info"\nlab = true\n', 1)


def _cli(c: LocalCluster, site: str, *args: str) -> subprocess.CompletedProcess:
    token = c.default_token(site)
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", **({"REPLICAD_TOKEN": token} if token else {})}
    return subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites[site].admin_url, *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parents[2])


def _vanished(c: LocalCluster, site: str) -> float | None:
    """``replicad_request_vanished_total{action="revoke_site"}`` of ``site`` (created at 0); None if absent."""
    text = requests.get(c.sites[site].admin_url + "/metrics", timeout=10).text
    line = f'replicad_request_vanished_total{{action="revoke_site",site="{site}"}} '
    return next((float(x[len(line):]) for x in text.splitlines() if x.startswith(line)), None)


def _metric_sum(c: LocalCluster, site: str, name: str) -> float:
    text = requests.get(c.sites[site].admin_url + "/metrics", timeout=10).text
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(name + "{"))


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.setenv(LAB_FOUND_RULES_ENV, "1")  # founded under rules 1, as by b976d0a
    monkeypatch.setenv("REPLICAD_LAB_CHECKPOINT_EVERY", "8")  # a log compacted every 24 entries: site-b, back,
    monkeypatch.setenv("REPLICAD_LAB_COMPACTION_ENTRIES", "24")  # catches up from the leader's full state
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, membership_cooling_off="600s")
    for s in SITES:
        c.sites[s].config_path.write_text(_lab(c.sites[s].config_path.read_text()))
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(13))
    try:
        monkeypatch.setenv(LAB_REPORT_RULES_MAX_ENV, "1")  # site-c withholds: the rules stay 1
        c.start("site-c", module="tests.security.forging_record_leader", args=(str(c.root / "forge"), "run"))
        monkeypatch.delenv(LAB_REPORT_RULES_MAX_ENV)
        c.start("site-a")
        c.start("site-b")
        c.wait_ready(90)
        yield c
    finally:
        c.stop_all()


def test_a_revocation_erased_by_its_targets_flood_is_announced_and_reported(cluster: LocalCluster) -> None:
    c = cluster
    assert all(c.status(s)["rules"]["version"] == 1 for s in SITES)

    # 1. the revocation is made, and says that rules 1 can erase it and what to run first
    out = _cli(c, "site-a", "revoke", "site-c", "--reason", "compromised")
    assert out.returncode == 0, out.stderr
    said = " ".join((out.stdout + out.stderr).split())
    rid = re.search(r"request (r\d+) is pending", said).group(1)
    assert "warning: the cluster's rules are 1" in said, said
    assert "replicad raise-rules --leave-behind site-c --reason" in said and "replicad revoke site-c" in said, said
    c.wait_for("site-a's WARNING", lambda: re.search(
        r"WARNING .*AUDIT revocation of site-c requested at site-a under rules 1: .*replicad raise-rules "
        r"--leave-behind site-c", c.sites["site-a"].log_path.read_text()), 10)
    approved = c.api("site-b", "POST", f"/v1/requests/{rid}/approve")  # it cools off: the API answer says so too
    assert approved["status"] == "approved" and "replicad raise-rules --leave-behind site-c" in approved["warning"]
    c.kill("site-b", signal.SIGTERM)  # it sees the rest when it is back

    # 2. site-c's own daemon: requests it vetoes itself, until the approved revocation is gone
    for i in range(FLOOD):
        q = c.api("site-c", "PUT", f"/v1/volumes/{VOL}/retention",
                  {"retention": {"keep_all_s": 7200 + i, "hourly_s": 604800, "daily_s": 2592000, "lock_s": 86400},
                   "reason": "x"})
        assert c.api("site-c", "POST", f"/v1/requests/{q['request']}/veto")["status"] == "vetoed"
    assert rid not in {r["id"] for r in c.api("site-a", "GET", "/v1/requests")["requests"]}  # erased (rules 1)
    # the leader's one forged entry: a refused revoke_site in site-a's name, audited as its claim
    (c.root / "forge").touch()
    c.wait_for("site-c's forged entry", lambda: "FORGED RECORD appended" in c.sites["site-c"].log_path.read_text(), 30)

    flood_done = time.time()
    leader_compacted(c, flood_done, 90, after=" after the flood")

    # 3. a and b say so, at ERROR, naming the request and the site whose request pushed it out, and count it
    start_from_full_state(c, 90)
    line = re.compile(rf"ERROR .*AUDIT (?:\(committed while this site was away\) )?request {rid} \(revoke_site "
                      rf"site_id=site-c, requested by site-a, approved by site-a, site-b, .*VANISHED .*(pushed out of "
                      r"the request table by request r\d+ of site-c|gone while this site caught up from a full "
                      r"state).*replicad raise-rules --leave-behind site-c")
    for s in ("site-a", "site-b"):
        c.wait_for(f"{s}'s ERROR", lambda s=s: line.search(c.sites[s].log_path.read_text()), 30)
        assert len(line.findall(c.sites[s].log_path.read_text())) == 1, c.log_tail(s)
        assert _vanished(c, s) == 1
    live = line.search(c.sites["site-a"].log_path.read_text()).group(0)
    assert "AUDIT request" in live and "pushed out of the request table by request" in live, live
    away = line.search(c.sites["site-b"].log_path.read_text()).group(0)
    assert "AUDIT (committed while this site was away) request" in away, away
    assert "gone while this site caught up from a full state" in away and "by site: site-c " in away, away
    assert _metric_sum(c, "site-b", "replicad_raft_dump_installs_total") >= 1
