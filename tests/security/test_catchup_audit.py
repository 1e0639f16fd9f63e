"""A full-state catch-up is audited, and one site can no longer force one (attacker review r13, F3).

* A site away longer than the leader's last log compaction catches up by installing the leader's
  full state (``raft`` point 14) and never applies the entries one by one: before, its log had no
  line for what was committed meanwhile (a revocation request, a retention change, a weakening
  applied ...), while the live sites logged each. Now the install logs one summary line naming the
  commands it covered, one line per changed cluster-wide fact and the audit records of those
  commands (``replicad.site.catchup``), and counts it (``replicad_raft_dump_installs_total``).
  Site-c's daemon also vetoes the pending revocation of itself :data:`VETOES` times meanwhile (attack
  review R15, F2: each refused, ``conflict``, and audited): the accepted records are still listed
  (before, the newest 200 records listed were c's refused vetoes alone) and the refused ones are
  counted in one line. Real
  daemons; the compaction threshold and checkpoint interval are lowered with the lab knobs
  ``REPLICAD_LAB_COMPACTION_ENTRIES`` / ``REPLICAD_LAB_CHECKPOINT_EVERY`` (production: 5,000 and
  256) so that the catch-up happens within seconds.
* One site forced every site to compact within seconds with signed ``clock`` heartbeats (6,000 in
  ~17 s, within the command budget). Site-c's real daemon now sends its heartbeats as fast as they
  commit (``fast_clock_site.py``); the leader takes them at ``guard.CLOCK_PER_S`` (bursts of
  ``guard.CLOCK_BURST``), refuses the rest and counts them
  (``replicad_raft_refused_total{reason="forwarded_clock_over_rate"}``).
"""

from __future__ import annotations

import random
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from replicad.consensus.guard import CLOCK_BURST, CLOCK_PER_S
from replicad.core.errors import ReplicadError
from replicad.core.units import format_duration
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, write_image
from tests.integration.test_incarnation import _leader
from tests.security.full_state import leader_compacted, start_from_full_state
from tests.security.test_signed_commands import raft_refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SITES = ("site-a", "site-b", "site-c")
EVERY = 8
"""Checkpoint interval of the bench (REPLICAD_LAB_CHECKPOINT_EVERY)."""
COMPACTION = 24
"""Log entries past which a site compacts (REPLICAD_LAB_COMPACTION_ENTRIES)."""
ROUNDS = 16
"""Retention requests (and their approvals) committed while site-b is away: past COMPACTION."""
VETOES = 210
"""Site-c's vetoes of its own pending revocation while site-b is away: past catchup.RECORDS_MAX."""


def metric(c: LocalCluster, site: str, name: str) -> float:
    """The sum of ``name``'s samples on ``site``'s /metrics (0 when absent)."""
    text = urllib.request.urlopen(c.sites[site].admin_url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def veto_own_revocation(c: LocalCluster, req_id: str) -> str:
    """Site-c vetoes the pending request that revokes it (the state machine refuses it, ``conflict``:
    a veto of an unknown or finished request is answered by the admin API without a command); the
    refusal's code."""
    try:
        c.api("site-c", "POST", f"/v1/requests/{req_id}/veto")
    except ReplicadError as err:
        return str(getattr(err, "code", type(err).__name__))
    return "accepted"


def retention(c: LocalCluster, site: str) -> dict:
    return c.api(site, "GET", f"/v1/volumes/{VOL}/retention")["retention"]


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("REPLICAD_LAB_CHECKPOINT_EVERY", str(EVERY))
    monkeypatch.setenv("REPLICAD_LAB_COMPACTION_ENTRIES", str(COMPACTION))
    # lab = true (written with withheld_after; production's 45 s) lets the daemons read the knobs
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, withheld_after="45s")
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(7))
    try:
        yield c
    finally:
        c.stop_all()


def test_a_site_that_catches_up_from_a_full_state_logs_what_it_missed(cluster: LocalCluster) -> None:
    c = cluster
    c.start_all()
    c.wait_ready(90)
    c.kill("site-b", signal.SIGTERM)  # away: a maintenance stop (its mark is written as it stops)
    before = retention(c, "site-a")
    # while it is away: a revocation request of site-c (pending: site-b's approval is missing) ...
    revoke = c.api("site-a", "POST", "/v1/sites/site-c/revoke", {"reason": "compromised"})
    assert revoke["status"] == "pending", revoke
    # ... a retention weakening of the volume, approved by site-c (cooling-off 0 s: applies at the next clock) ...
    weak = c.api("site-c", "PUT", f"/v1/volumes/{VOL}/retention",
                 {"retention": {"keep_all": "1h", "hourly": "1h", "daily": "1h", "lock": "1h"}, "reason": "space"})
    assert c.api("site-a", "POST", f"/v1/requests/{weak['request']}/approve", {})["status"] in ("approved", "applied")
    c.wait_for("the weakened retention applied", lambda: retention(c, "site-a")["lock_s"] == 3600, 30)
    # ... and enough further commands for the leader to compact its log past site-b's position
    for i in range(ROUNDS):
        longer = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/retention",
                       {"retention": {"keep_all": "1h", "hourly": "1h", "daily": f"{2 + i}h", "lock": "1h"}})
        assert c.api("site-c", "POST", f"/v1/requests/{longer['request']}/approve", {})["status"] == "applied"
    # ... and site-c's flood of refused commands, each audited (R15 F2)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: veto_own_revocation(c, revoke["request"]), range(VETOES)))
    assert answers == ["conflict"] * VETOES, answers
    events_done = time.time()
    leader = leader_compacted(c, events_done, 90, after=" after the changes")
    assert "AUDIT request" in c.log_tail("site-a", 400)  # the live sites logged each change

    start_from_full_state(c, 90)
    c.wait_ready(90)
    log = c.sites["site-b"].log_path.read_text()
    head = "AUDIT (committed while this site was away; received whole from the leader, commands "
    summaries = [line for line in log.splitlines() if head in line and "the entries were not applied" in line]
    print("\n".join(line for line in log.splitlines() if "AUDIT (committed while" in line))
    assert summaries, log[-6000:]
    assert "WARNING" in summaries[0]
    missed = "\n".join(line for line in log.splitlines() if head in line)
    # the revocation request, in the words of the live AUDIT request lines
    assert f"request {revoke['request']} by site-a: revoke_site site_id=site-c" in missed, missed
    assert "reason=compromised -- now pending" in missed, missed
    # the weakening and its approvals, and the volume's retention now
    assert f"request {weak['request']} by site-c: set_retention volume={VOL}" in missed, missed
    lock_before = before["lock_s"]
    # in the CLI's units, only the keys that changed (replicad.core.requestdiff, as `replicad requests`)
    assert f"volume {VOL}: retention changed: " in missed and \
        f"lock: {format_duration(lock_before)} -> 1h" in missed, missed
    assert "audit record: command request by site-a" in missed, missed
    assert "audit record: command approve by site-c" in missed, missed
    refused = [line for line in missed.splitlines() if " refused: " in line]
    # rules 4: site-c's own signed vetoes, their signature checked (a claim in its name would say "claiming")
    assert len(refused) == 1 and f"refused: {VETOES} command(s) veto signed by site-c (signature checked): refused " \
        "conflict" in refused[0], refused
    assert f"{VETOES} refused command(s), counted per command, claimed signer and error" in summaries[0]
    assert metric(c, "site-b", "replicad_raft_dump_installs_total") >= 1
    assert "Traceback" not in log
    # a restart loads that state from site-b's own Raft dump: seen (its mark moved past it), not logged again
    c.kill("site-b", signal.SIGTERM)
    c.start("site-b")
    c.wait_ready(90)
    again = c.sites["site-b"].log_path.read_text()[len(log):]
    assert "AUDIT (replayed: this site's own Raft dump, loaded at start, commands 1.." in again, again[-3000:]
    assert "AUDIT (committed while" not in again, again[-3000:]


def test_the_leader_refuses_a_clock_flood_of_one_site_and_counts_it(cluster: LocalCluster) -> None:
    c = cluster
    c.start("site-a")
    c.start("site-b")
    leader = c.wait_for("a leader among site-a and site-b", lambda: _leader(c, ("site-a", "site-b")), 60)
    # site-c joins as a follower (the leader's lease keeps it from leading) with heartbeats every 20 ms
    c.start("site-c", module="tests.security.fast_clock_site", args=("0.02", "run"))
    c.wait_ready(90)
    assert _leader(c, SITES) == leader
    start = c.status(leader)["raft"]["commit_index"]
    refused_before = raft_refused(c, leader, "forwarded_clock_over_rate")
    flood_s = 20.0
    time.sleep(flood_s)
    assert _leader(c, SITES) == leader, "the flood moved the leadership"
    grown = c.status(leader)["raft"]["commit_index"] - start
    refused = raft_refused(c, leader, "forwarded_clock_over_rate") - refused_before
    print(f"in {flood_s:.0f} s: {grown} entries committed, {refused:.0f} clock heartbeats of site-c refused")
    assert refused > 0
    # site-c's heartbeats within its rate (forwarded, relayed by itself, passed on by site-b at half the
    # rate: guard.CLOCK_REASONS), the two honest sites' (1 per 5 s each), and the vouches (3 per EVERY)
    bound = 2.5 * (CLOCK_BURST + CLOCK_PER_S * (flood_s + 10)) + 2 * (flood_s + 10) / 5
    assert grown <= bound * (1 + 3 / EVERY), (grown, bound)  # before: ~25 a second, as fast as they commit
    assert "forwarded_clock_over_rate" in c.log_tail(leader, 400)
    for site in ("site-a", "site-b"):  # the honest leader was not deposed for what its door refused
        assert raft_refused(c, site, "leader_deposed") == 0, site
