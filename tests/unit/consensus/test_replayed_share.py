"""Point 22 of :mod:`replicad.consensus.raft`: a leader's replays of another site's signed entries.

Attacker review R17 F1: a compromised leader kept the bytes of an honest site's applied entries and
appended them again. Every state machine refused the copies as ``replayed`` (no door reason, so point
18 ignored them; not signed by the leader's site, so point 22's budget watch ignored them), while the
share of the log (:class:`~replicad.consensus.raft.LogShare`) charged them to the site they name: the
honest site's own proposals were refused for its share and its "not compacting" ERROR named it.

Now such copies are charged to the site of the leader that appended them, and
:data:`~replicad.consensus.raft.REPLAYED_DEPOSE_AFTER` of them in one term depose it.

Three real hardened pysyncobj nodes on loopback, ticked here (the fixture of test_withheld.py), their
state machines verifying signatures (the keys of test_depose.py), wired as RaftNode wires them.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from replicad.consensus import raft as consensus
from replicad.consensus.raft import REPLAYED_DEPOSE_AFTER

from tests.unit.consensus.test_depose import TRUST, packed, signed
from tests.unit.consensus.test_withheld import elect, nodes, tick  # noqa: F401


def wired(nodes) -> dict:
    """Sites a, b, c (the keys of test_depose.py) on the three nodes, wired as RaftNode.start does."""
    sites = {n._SyncObj__selfNode.id: s for n, s in zip(nodes, ("a", "b", "c"))}
    for n in nodes:
        n.consumer.trust = TRUST
        n.take_applied_entry = n.consumer.take_applied_entry
        n.site_of = sites.get
        n.share_over = n.consumer.share_over
        n.consumer.appender = n.appender_site
    return sites


def charged(node, site: str) -> int:
    return node.consumer.share.sites.get(site, (0, 0))[0]


def synced(nodes, leader) -> bool:
    """Every node applied the leader's whole log and the leader's queue is empty."""
    last = leader._SyncObj__raftLog[-1][1]
    return not leader._SyncObj__commandsQueue._FastQueue__queue and all(n._SyncObj__raftLastApplied >= last for n in nodes)


@pytest.mark.parametrize("op,args", [("clock", {}), ("veto", {"request": "r999"})], ids=["replayed", "remembered"])
def test_a_leaders_replays_of_another_sites_entries_are_charged_to_it_and_depose_it(nodes, caplog, op, args):
    """``clock`` copies are refused ``replayed``; copies of a remembered command (a refused ``veto`` is
    kept in the exactly-once memory) get their first answer and change nothing: both are the leader's."""
    sites = wired(nodes)
    leader, followers = elect(nodes)
    lead_site = sites[leader._SyncObj__selfNode.id]
    victim = sites[followers[0]._SyncObj__selfNode.id]
    # the victim's honest commands, appended once (as forwarded ones are)
    honest = [packed(signed(victim, op, **args)) for _ in range(20)]
    for payload in honest:
        leader.consumer.apply_command(payload, callback=None)
    assert tick(nodes, lambda: synced(nodes, leader) and all(charged(n, victim) >= 20 for n in nodes), 30.0)
    before = {id(n): charged(n, victim) for n in nodes}
    log_ = leader._SyncObj__raftLog
    copies = [e[0] for e in log_ if (consensus._decoded_entry(e[0]) or {}).get("by") == victim]
    assert len(copies) >= 20
    term = leader._SyncObj__raftCurrentTerm
    appended = [0]

    def replay(count: int):  # the attacker's leader: the same bytes again, past _appended_already
        def each():
            for _ in range(min(count - appended[0], 40)):
                consensus.SyncObj._applyCommand(leader, copies[appended[0] % len(copies)], None)
                appended[0] += 1
        return each

    # a few copies (fewer than a term's allowance): charged to the leader's site, nobody deposed
    assert tick(nodes, lambda: appended[0] >= 100 and synced(nodes, leader), 30.0, replay(100))
    for n in nodes:
        assert charged(n, victim) == before[id(n)], n.consumer.share.sites  # not the victim's doing
        assert charged(n, lead_site) >= 100
    for f in followers:
        assert f._replays.terms[term]["count"] >= 100
        assert not f.holds_deposed(leader._SyncObj__selfNode.id)
    # a flood of copies: every follower deposes the leader (point 18's mechanism, its own threshold)
    caplog.set_level(logging.ERROR)
    assert tick(nodes, lambda: all(f.holds_deposed(leader._SyncObj__selfNode.id, term) for f in followers), 60.0,
                replay(10**6))
    for f in followers:
        assert charged(f, victim) == before[id(f)]
        assert charged(f, lead_site) >= REPLAYED_DEPOSE_AFTER
        assert f.refusals.counts().get("leader_deposed", 0) == 1
    lines = [r.getMessage() for r in caplog.records if "[leader_deposed]" in r.getMessage()]
    assert len(lines) == 2 and all(f"(site {lead_site})" in line and "copies of signed entries applied already"
                                   in line and "replayed: " in line for line in lines), lines


def test_a_node_refusing_its_own_proposals_for_the_share_says_so_at_error_once_a_minute(tmp_path, monkeypatch,
                                                                                        caplog):
    from replicad.consensus.raft import RaftNode
    from replicad.core import errors
    from replicad.core.identity import Signer
    from tests.unit.consensus.test_depose import CLUSTER, KEYS
    from tests.unit.consensus.test_raft import free_port

    monkeypatch.setattr(consensus, "LOG_SHARE_ENTRIES", 10)
    addrs = {s: f"127.0.0.1:{free_port()}" for s in ("a", "b", "c")}
    node = RaftNode(addrs["a"], [addrs["b"], addrs["c"]], tmp_path, "secret", trust=TRUST,
                    signer=Signer("a", KEYS["a"], CLUSTER), sites={v: k for k, v in addrs.items()})
    node.start()
    caplog.set_level(logging.ERROR)
    try:
        for _ in range(10):
            node._consumer.share.note("a", 200)
        for _ in range(2):
            with pytest.raises(errors.NoQuorumError) as raised:
                asyncio.run(node.propose({"op": "clock"}, timeout_s=0.5))
            assert raised.value.evidence["reason"] == "log_share"
    finally:
        node.close()
    lines = [r.getMessage() for r in caplog.records if "own commands are refused" in r.getMessage()]
    assert len(lines) == 1, lines  # the second refusal within the minute: not said again
    assert "10 commands" in lines[0] and "not compacting the log" in lines[0] and "a 10 commands" in lines[0]
