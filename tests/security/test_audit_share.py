"""One site's flood of signed commands no longer drowns the cluster's kept audit (attack review R15, F2).

Under rules 1..3 the replicated state kept the last 1,000 audit records of every command, accepted
or refused: a compromised site (here the Raft leader, which appends what it likes) signed ~2,600
cheap commands the state machine refuses, and the records of what the honest sites had signed (a
revocation of the attacker requested by site-a, a retention request) were gone from the state at
every site: ``GET /v1/audit`` showed the flood only, and a site that was away and caught up from the
leader's full state listed the flood's count and none of the honest records. Under rules 4
(``state.RULES_AUDIT_BY_SIGNER``, the rules a new cluster is founded under) each record counts
against the share of the site whose signature was checked, and the kept list is cut by shares
(``state.audit_trim``): the flood drops only site-c's own records.

Three real daemons; site-c's is the flooding leader (``flooding_leader.py``: it votes for nobody, so
started first it leads, and once told it appends :data:`FLOOD` signed vetoes of requests that do not
exist, each refused and audited). Site-b is away meanwhile; the compaction threshold and checkpoint
interval are lowered with the lab knobs (``REPLICAD_LAB_COMPACTION_ENTRIES`` /
``REPLICAD_LAB_CHECKPOINT_EVERY``) so that it catches up by installing the leader's full state.
Checked to fail on 64af970 (rules 3: the honest requests are not among the kept records at site-a,
and site-b's catch-up lists none of them)."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from replicad.core.state import RULES_MAX
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, write_image
from tests.integration.test_incarnation import _lead
from tests.security.full_state import leader_compacted, start_from_full_state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

SITES = ("site-a", "site-b", "site-c")
FLOOD = 2600
"""Site-c's signed refused vetoes: more than the 1,000 records rules 1..3 keep, and more than the
2,000 rules 4 keep in all (``state.AUDIT_KEPT_MAX``)."""


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("REPLICAD_LAB_CHECKPOINT_EVERY", "8")
    monkeypatch.setenv("REPLICAD_LAB_COMPACTION_ENTRIES", "24")
    # lab = true (written with withheld_after; production's 45 s) lets the daemons read the knobs
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, withheld_after="45s",
                     membership_cooling_off="600s")
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(11))
    try:
        c.start("site-c", module="tests.security.flooding_leader", args=(str(c.root / "flood"), str(FLOOD), "run"))
        c.start("site-a")
        c.start("site-b")
        c.wait_ready(90)
        yield c
    finally:
        c.stop_all()


def kept(c: LocalCluster, site: str, signer: str) -> list[tuple[str, bool]]:
    """``(op, ok)`` of ``signer``'s records kept in ``site``'s state (``GET /v1/audit?signer=``)."""
    answer = c.api(site, "GET", f"/v1/audit?signer={signer}&limit=2000")
    return [(r["op"], r["ok"]) for r in answer["audit"] if r["by"] == signer]


def test_a_flood_of_one_site_leaves_the_other_sites_records_in_the_state_and_the_catch_up(cluster) -> None:
    c = cluster
    _lead(c, "site-c", SITES)  # it votes for nobody: stopping another leader hands it the lead
    c.wait_ready(90)
    assert all(c.status(s)["rules"]["version"] == RULES_MAX for s in SITES)  # founded under this release's rules
    c.kill("site-b", signal.SIGTERM)  # away: a maintenance stop
    # what the honest site signs while b is away: the attacker's revocation, a longer retention (both pending)
    revoke = c.api("site-a", "POST", "/v1/sites/site-c/revoke", {"reason": "compromised"})
    assert revoke["status"] == "pending", revoke
    longer = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/retention",
                   {"retention": {"keep_all": "2h", "hourly": "7d", "daily": "30d", "lock": "2d"}, "reason": "audit"})
    assert longer["status"] == "pending", longer
    mine = kept(c, "site-a", "site-a")
    assert mine.count(("request", True)) == 2, mine

    start = c.status("site-a")["raft"]["commit_index"]
    (c.root / "flood").touch()
    c.wait_for("site-c's flood handed to Raft", lambda: "FLOOD DONE" in c.sites["site-c"].log_path.read_text(), 120)
    c.wait_for("the flood committed at site-a", lambda: c.status("site-a")["raft"]["commit_index"] - start >= FLOOD,
               120)
    flood_done = time.time()
    vetoes = c.api("site-a", "GET", "/v1/audit?limit=200")["audit"]
    flood = [r for r in vetoes if r["op"] == "veto" and r["by"] == "site-c" and not r["ok"]]
    assert len(flood) >= 150, vetoes  # the newest records are the flood's (and the sites' vouches)

    # the state at site-a still holds what site-a signed, and says what the flood dropped: c's own records
    mine = kept(c, "site-a", "site-a")
    print("site-a's kept records after the flood:", mine)
    assert mine.count(("request", True)) == 2, mine
    answer = c.api("site-a", "GET", "/v1/audit?limit=1")
    assert set(answer.get("dropped") or {}) == {"site-c"}, answer

    leader_compacted(c, flood_done, 120, after=" after the flood")

    # site-b, back, catches up from the leader's full state: its AUDIT lines list site-a's records
    start_from_full_state(c, 120)
    c.wait_ready(90)
    log = c.sites["site-b"].log_path.read_text()
    head = "AUDIT (committed while this site was away; received whole from the leader, commands "
    missed = "\n".join(line for line in log.splitlines() if head in line)
    print("\n".join(line for line in missed.splitlines() if "audit record" in line or "refused:" in line
                    or "the entries were not applied" in line))
    assert missed.count("audit record: command request by site-a: applied") == 2, missed[-4000:]
    assert "command(s) veto signed by site-c (signature checked): refused not_found" in missed, missed[-4000:]
    assert "by share: site-c " in missed, missed[-4000:]  # what the flood dropped: its own share
    assert kept(c, "site-b", "site-a").count(("request", True)) == 2
    assert "Traceback" not in log
