"""A compromised Raft LEADER cannot install a forged state on a follower through a full dump
(issue 11, part 4).

The attacker is site-a: a real process holding site-a's key, the cluster's Raft password and
site-a's data dir, running the RaftNode with code of its own (``signed_raft_helper`` with
``attacker``): it campaigns first, so it leads, and every dump it writes, hence ships to a
follower behind its compacted log, is its own state with volume ``ehr`` made primary at
site-a at epoch + 100 and every revocation dropped. The honest sites b and c run the real
RaftNode, signed. Site-c was down while site-a compacted; when it returns, site-a ships it the
forged dump: site-c refuses it (``dump_not_vouched``, an ERROR line, the counter), keeps its
state, and once site-a is gone catches up from site-b through an honest, vouched dump.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.test_checkpoints import EVERY, clocks, last_vouch, make_signed_cluster, propose_ok, register_all
from tests.integration.test_consensus import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RETENTION = {"keep_all_s": 3600, "hourly_s": 86400, "daily_s": 7 * 86400, "lock_s": 600}


@pytest.fixture
def nodes(tmp_path):
    made = make_signed_cluster(tmp_path, compaction=20, attacker="site-a")
    yield made
    for node in made:
        node.kill()


def make_the_attacker_lead(nodes) -> None:
    """Until site-a leads (at most 5 rounds): stop the honest leader, let site-a (which
    campaigns at once) take over, start the stopped site again."""
    a = nodes[0]
    for _ in range(5):
        leader = wait_for(lambda: next((n for n in nodes if n.status()["is_leader"]), None), "a leader", 30)
        if leader is a:
            return
        leader.kill()
        wait_for(lambda: a.status()["is_leader"] or any(n.status()["is_leader"] for n in nodes
                                                        if n is not leader and n is not a), "a new leader", 30)
        leader.start()
    raise AssertionError("site-a never led")


def test_a_forged_dump_from_the_leader_is_refused_and_the_follower_keeps_its_state(nodes):
    a, b, c = nodes
    a.start()
    b.start()
    c.start()
    make_the_attacker_lead(nodes)
    register_all(nodes)
    propose_ok(b, {"op": "add_volume", "volume": "ehr", "primary": "site-b", "block_size": 4096,  # by its primary
                   "size_bytes": 1 << 20, "min_copies": 1, "retention": RETENTION})
    wait_for(lambda: "ehr" in c.state()["volumes"], "the volume at site-c")
    before = c.state()
    behind_at = c.status()["last_applied"]
    c.kill()
    clocks(a, 4 * EVERY)
    clocks(b, 2 * EVERY)
    wait_for(lambda: a.call("journal")["result"]["entries"][0][0] > behind_at + 1, "the attacker compacted")
    assert a.status()["is_leader"]

    c.start()
    assert c.start_error is None, c.start_error
    wait_for(lambda: c.status()["refused"].get("dump_not_vouched", 0) >= 1, "site-c refuses the forged dump", 60)
    log = c.stderr()
    assert any(line.startswith("ERROR") and "raft refused [dump_not_vouched]" in line
               for line in log.splitlines()), log[-3000:]
    after = c.state()
    assert after["volumes"]["ehr"] == before["volumes"]["ehr"]  # primary site-b, epoch 1: not the forgery
    assert after["volumes"]["ehr"]["primary"] == "site-b" and after["volumes"]["ehr"]["epoch"] == 1
    assert after["applied"] <= before["applied"] + 1  # nothing installed
    assert b.state()["volumes"]["ehr"]["primary"] == "site-b"

    # once the attacker is gone, the honest pair elects and site-c catches up through site-b's vouched dump
    a.kill()
    wait_for(lambda: b.status()["is_leader"] or c.status()["is_leader"], "an honest leader", 60)
    # site-b's vouch for the second checkpoint: the attacker, while it led, may have dropped it;
    # site-b proposes it again (every VOUCH_RETRY_S) until its state shows it
    wait_for(lambda: last_vouch(b) >= 2 * EVERY, "site-b's vouch for checkpoint 2", 30)
    propose_ok(b, {"op": "clock"})
    wait_for(lambda: c.state().get("applied", 0) >= b.state()["applied"], "site-c caught up", 60)
    wait_for(lambda: c.state() == b.state(), "equal states", 30)
    assert c.state()["volumes"]["ehr"]["primary"] == "site-b"
    assert c.status()["refused"].get("checkpoint_divergent", 0) == 0
    time.sleep(0)  # every wait above is bounded
