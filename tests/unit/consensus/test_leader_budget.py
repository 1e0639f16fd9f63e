"""Point 22 of :mod:`replicad.consensus.raft`: what one member can make the others keep in their log.

Attacker review R16 F3: while an honest site is down no checkpoint gets a majority's vouches (the
compromised member withholds its own), so no site compacts its log (point 14); the compromised
member then filled it with large signed commands the state machine refuses later: as the leader at
~6 MB/s (its own entries passed no door), as a follower within its forwarding budget (~1 MB/s).

Three real hardened pysyncobj nodes on loopback, ticked here (the fixture of test_withheld.py), wired
as :class:`~replicad.consensus.raft.RaftNode` wires them (the site of each node, the consumer's applied
entries and its share of the log). The attacker is the leader appending its own commands; the budget
and the share are shortened (1 MiB/s and 128 MiB in the daemon); every wait is bounded generously.
The door's share (signed cluster, agreed membership) is judged on the honest leader fixture.
"""

from __future__ import annotations

import logging
import time
import uuid

import msgpack
import pytest

from replicad.consensus import raft as consensus
from replicad.consensus.raft import LogShare

from tests.unit.consensus.test_depose import door, packed, signed, founded, apply  # noqa: F401
from tests.unit.consensus.test_front_run import wire
from tests.unit.consensus.test_withheld import elect, nodes, tick  # noqa: F401


def wired(nodes) -> dict:
    sites = wire(nodes)
    for n in nodes:
        n.share_over = n.consumer.share_over
    return sites


def own(node, site: str, pad: int) -> None:
    """One command of ``node`` in ``site``'s name carrying ``pad`` bytes (appended when it leads)."""
    node.consumer.apply_command(msgpack.packb({"v": 1, "op": "noop", "op_id": uuid.uuid4().hex, "by": site,
                                               "pad": "x" * pad}), callback=None)


def over_budget(node) -> int:
    return node.refusals.counts().get("leader_over_budget", 0)


def flood_until_deposed(nodes, leader, followers, site: str, pad: int, per_round: int) -> bool:
    def each():
        if leader._isLeader():
            for _ in range(per_round):
                own(leader, site, pad)
    return tick(nodes, lambda: all(over_budget(f) for f in followers), 60.0, each)


def test_a_leader_appending_its_own_commands_beyond_a_members_budget_is_deposed(nodes, monkeypatch, caplog):
    monkeypatch.setattr(consensus, "FORWARD_BYTES_PER_S", 32 * 1024)
    monkeypatch.setattr(consensus, "FORWARD_BURST_S", 1.0)
    sites = wired(nodes)
    leader, followers = elect(nodes)
    site = sites[leader._SyncObj__selfNode.id]
    caplog.set_level(logging.ERROR)
    assert flood_until_deposed(nodes, leader, followers, site, 8 * 1024, 4)
    term = leader._SyncObj__raftCurrentTerm
    for f in followers:
        assert f.holds_deposed(leader._SyncObj__selfNode.id, term)
        assert f.refusals.counts().get("leader_deposed", 0) == 0  # point 18 saw nothing: only this point
    lines = [r.getMessage() for r in caplog.records if "[leader_over_budget]" in r.getMessage()]
    assert len(lines) == 2 and all(f"(site {site})" in line and "rate: " in line for line in lines), lines
    # the honest followers elect one of themselves; the deposed leader leads no more
    assert tick(nodes, lambda: any(f._isLeader() for f in followers) and not leader._isLeader(), 30.0)


def test_an_honest_leader_within_the_budget_and_other_sites_commands_are_not_judged(nodes, monkeypatch):
    monkeypatch.setattr(consensus, "FORWARD_BYTES_PER_S", 32 * 1024)
    monkeypatch.setattr(consensus, "FORWARD_BURST_S", 1.0)
    sites = wired(nodes)
    leader, followers = elect(nodes)
    site = sites[leader._SyncObj__selfNode.id]
    other = sites[followers[0]._SyncObj__selfNode.id]
    sent = {"own": 0, "other": 0, "at": 0.0}

    def each():  # every 50 ms: its own 1 KiB (20 KiB/s, within 32), another site's 8 KiB (160 KiB/s)
        now = time.monotonic()
        if now - sent["at"] >= 0.05:
            sent["at"] = now
            own(leader, site, 1024)
            own(leader, other, 8 * 1024)
            sent["own"] += 1
            sent["other"] += 1
    assert tick(nodes, lambda: sent["own"] >= 150, 60.0, each)
    assert tick(nodes, lambda: all(f._SyncObj__raftLastApplied >= leader._SyncObj__raftLastApplied
                                   for f in followers), 30.0)
    assert leader._isLeader()
    for f in followers:
        assert over_budget(f) == 0 and not f.holds_deposed(leader._SyncObj__selfNode.id)
        # (a tick held up for more than the 1 s burst may count a few; 64 depose)
        assert f._leader_budget.site == site and f._leader_budget.count < consensus.DEPOSE_AFTER
    # the entries of another site were beyond the budget: the watch ignores them (the door judged them)
    assert sent["other"] * 8 * 1024 > 32 * 1024 * 2


def test_a_leader_beyond_its_share_of_a_log_that_does_not_compact_is_deposed(nodes, monkeypatch, caplog):
    monkeypatch.setattr(consensus, "LOG_SHARE_ENTRIES", 40)
    sites = wired(nodes)
    leader, followers = elect(nodes)
    site = sites[leader._SyncObj__selfNode.id]
    caplog.set_level(logging.ERROR)
    assert flood_until_deposed(nodes, leader, followers, site, 256, 2)
    for f in followers:
        assert f.consumer.share.sites[site][0] > 40 * consensus.LOG_SHARE_SLACK
        evidence = f._leader_budget.reasons
        assert evidence.get("share", 0) >= consensus.DEPOSE_AFTER and "rate" not in evidence, evidence
    lines = [r.getMessage() for r in caplog.records if "[leader_over_budget]" in r.getMessage()]
    assert len(lines) == 2 and all("share: " in line for line in lines)


def test_the_door_refuses_a_member_beyond_its_share_until_the_log_compacts(leader, monkeypatch):
    monkeypatch.setattr(consensus, "LOG_SHARE_ENTRIES", 5)
    consumer = leader._consumer
    assert consumer.share.sites["b"][0] == 1  # its found
    assert door(leader, packed(signed("b")), "b") is None
    for _ in range(5):
        apply(consumer, signed("b"))
    assert consumer.share.sites["b"][0] == 6
    assert door(leader, packed(signed("b")), "b") == "forwarded_over_share"
    assert door(leader, packed(signed("c")), "c") is None  # another member's share is its own
    vouch = packed(signed("b", "vouch", n=256, hash=bytes(32)))
    assert door(leader, vouch, "b") is None  # a vouch lets the log compact again: never refused for the share
    padded_vouch = packed(signed("b", "vouch", n=256, hash=bytes(32), pad="x" * 2048))
    assert door(leader, padded_vouch, "b") == "forwarded_over_share"
    apply(consumer, vouch)
    assert consumer.share.sites["b"][0] == 6  # nor counted
    consumer.share.reset()  # compacted (the dump written) or a full state installed
    assert door(leader, packed(signed("b")), "b") is None


def test_the_share_counts_bytes_too_and_names_sites_largest_first(monkeypatch):
    monkeypatch.setattr(consensus, "LOG_SHARE_BYTES", 10_000)
    share = LogShare()
    share.note("c", 9_000)
    share.note("a", 300)
    assert share.over("c") is None
    share.note("c", 1_001)
    assert share.over("c") == (2, 10_001) and share.over("c", 1.25) is None and share.over("a") is None
    assert share.text().startswith("c 2 commands")
    share.note(None, 5)
    assert "?" in share.sites


def test_a_node_refuses_its_own_proposals_beyond_its_share_before_the_leaders_door_would(tmp_path, monkeypatch):
    """A refusal at the door would stay in this site's watch (point 19) and depose an honest leader:
    the node refuses its own command first, at :data:`LOG_SHARE_OWN` of the share; a vouch passes."""
    import asyncio

    from replicad.consensus.raft import RaftNode
    from replicad.core import errors
    from replicad.core.identity import Signer
    from tests.unit.consensus.test_depose import CLUSTER, KEYS, TRUST
    from tests.unit.consensus.test_raft import free_port

    monkeypatch.setattr(consensus, "LOG_SHARE_ENTRIES", 10)
    addrs = {s: f"127.0.0.1:{free_port()}" for s in ("a", "b", "c")}
    node = RaftNode(addrs["a"], [addrs["b"], addrs["c"]], tmp_path, "secret", trust=TRUST,
                    signer=Signer("a", KEYS["a"], CLUSTER), sites={v: k for k, v in addrs.items()})
    node.start()
    try:
        for _ in range(9):
            node._consumer.share.note("a", 200)
        with pytest.raises(errors.NoQuorumError) as raised:  # 9 of 10: within 0.9 x 10, taken (no quorum here)
            asyncio.run(node.propose({"op": "clock"}, timeout_s=0.5))
        assert raised.value.evidence["reason"] == "timeout"
        node._consumer.share.note("a", 200)
        with pytest.raises(errors.NoQuorumError) as raised:  # 10 > 0.9 x 10
            asyncio.run(node.propose({"op": "clock"}, timeout_s=0.5))
        assert raised.value.evidence["reason"] == "log_share" and "share" in str(raised.value)
        with pytest.raises(errors.NoQuorumError) as raised:  # taken (no quorum here: it times out)
            asyncio.run(node.propose({"op": "vouch", "n": 256, "hash": bytes(32)}, timeout_s=0.5))
        assert raised.value.evidence["reason"] == "timeout"
    finally:
        node.close()
