"""A follower must not be left at a term above its healthy leader's by a pre-vote round that
ended while the leader was heard (raft point 7): three real hardened pysyncobj nodes on loopback,
ticked here, real journals in ``tmp_path``.

A node whose pre-vote was granted while its leader's heartbeat waited in the same poll (or whose
grants arrived after it heard the leader again) kept the win; its next heartbeat gap (a stalled
tick: a slow start, a busy machine) started a real election without a fresh grant. The members
inside their leader's lease refused that vote (``vote_in_lease``), the node stayed one term above
its leader and dropped the leader's lower-term messages: it never caught up again (a site upgraded
next to a leader on the previous release, under load, in an attacker review: 2 runs in 5).
"""

from __future__ import annotations

import time

from pysyncobj import SyncObjConf

from replicad.consensus import raft as consensus

from .test_raft import PASSWORD, free_port


def make_nodes(tmp_path, n: int = 3) -> list:
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(n)]
    nodes = []
    for i, addr in enumerate(addrs):
        conf = SyncObjConf(password=PASSWORD, journalFile=str(tmp_path / f"raft{i}.journal"), autoTick=False,
                           appendEntriesUseBatch=False, dynamicMembershipChange=False, connectionRetryTime=0.2)
        obj = consensus._HardenedSyncObj(addr, [a for a in addrs if a != addr], conf=conf,
                                         consumers=[consensus._StateConsumer(None)])
        nodes.append(obj)
    return nodes


def tick(ticked, done, bound_s: float) -> bool:
    """Tick ``ticked`` round-robin until ``done()`` or ``bound_s`` seconds; whether it was done."""
    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        for n in ticked:
            n.doTick(0.0)
        if done():
            return True
        time.sleep(0.002)
    return False


def node_of(obj, other):
    """``obj``'s TCPNode for the member ``other``."""
    return next(n for n in obj._SyncObj__otherNodes if n.id == other._SyncObj__selfNode.id)


def synced(nodes) -> bool:
    leaders = [n for n in nodes if n._isLeader()]
    return len(leaders) == 1 and all(n.raftCommitIndex == leaders[0].raftCommitIndex
                                     and n._getLeader() is not None for n in nodes)


def settled_cluster(tmp_path):
    """``(nodes, leader, other, follower)``: a leader elected among two nodes, the third synced."""
    nodes = make_nodes(tmp_path)
    assert tick(nodes[1:], lambda: any(n._isLeader() for n in nodes[1:]), 20.0)
    assert tick(nodes, lambda: synced(nodes), 20.0)
    leader = next(n for n in nodes if n._isLeader())
    follower = nodes[0]
    other = next(n for n in nodes if n is not leader and n is not follower)
    return nodes, leader, other, follower


def heartbeat(obj, term: int) -> dict:
    """An ``append_entries`` without entries from a leader at ``term`` whose log is ``obj``'s."""
    return {"type": "append_entries", "term": term, "commit_index": obj.raftCommitIndex, "entries": [],
            "prevLogIdx": obj._SyncObj__getCurrentLogIndex(), "prevLogTerm": obj._SyncObj__getCurrentLogTerm()}


def stall(nodes, stalled, seconds: float) -> None:
    """Tick every node but ``stalled`` for ``seconds`` (its tick thread held up)."""
    tick([n for n in nodes if n is not stalled], lambda: False, seconds)


def test_a_pre_vote_won_while_the_leader_was_heard_starts_no_later_election(tmp_path):
    nodes, leader, other, follower = settled_cluster(tmp_path)
    try:
        term = leader.raftCurrentTerm
        # the follower's deadline passed (a short stall): it asks for pre-votes
        follower._SyncObj__raftElectionDeadline = 0
        follower._pre_vote_gate()
        assert follower._pre_vote_term == term + 1
        # in one poll: the other member's grant (it had not heard the leader for a moment) and the
        # leader's heartbeat, in that order
        follower._SyncObj__onMessageReceived(node_of(follower, other), {
            "type": "pre_vote_response", "term": term + 1, "granted": True, "current_term": term})
        follower._SyncObj__onMessageReceived(node_of(follower, leader), heartbeat(follower, term))
        assert tick(nodes, lambda: False, 1.0) is False  # a second of normal life: it follows the leader
        assert follower.raftCurrentTerm == term and follower._getLeader() is not None
        # later, one heartbeat gap at the follower (its tick thread held up past the election timeout)
        stall(nodes, follower, 1.6)
        tick(nodes, lambda: False, 3.0)
        assert follower.raftCurrentTerm == term, "a real election from a stale pre-vote win"
        assert tick(nodes, lambda: synced(nodes), 10.0)
        assert leader._isLeader() and leader.raftCurrentTerm == term
    finally:
        for n in nodes:
            n._destroy()


def test_late_grants_of_a_round_that_ended_with_the_leader_heard_start_no_election(tmp_path):
    nodes, leader, other, follower = settled_cluster(tmp_path)
    try:
        term = leader.raftCurrentTerm
        follower._SyncObj__raftElectionDeadline = 0
        follower._pre_vote_gate()
        tick(nodes, lambda: False, 0.5)  # the leader is heard again: the round is over
        # a grant of that round arrives late (the granter stalled, then answered its queue)
        follower._SyncObj__onMessageReceived(node_of(follower, other), {
            "type": "pre_vote_response", "term": term + 1, "granted": True, "current_term": term})
        tick(nodes, lambda: False, 3.0)
        assert follower.raftCurrentTerm == term and leader._isLeader() and leader.raftCurrentTerm == term
        assert tick(nodes, lambda: synced(nodes), 10.0)
    finally:
        for n in nodes:
            n._destroy()


def test_a_pre_vote_win_kept_past_a_stalled_tick_is_asked_again(tmp_path):
    """The granters refuse a request_vote inside their leader's lease unless it follows their grant
    within ``raftMaxTimeout``: a win whose tick thread was held up before it could use it asks again."""
    nodes, leader, other, follower = settled_cluster(tmp_path)
    try:
        term = leader.raftCurrentTerm
        follower._SyncObj__raftElectionDeadline = 0
        follower._pre_vote_gate()
        follower._SyncObj__onMessageReceived(node_of(follower, other), {
            "type": "pre_vote_response", "term": term + 1, "granted": True, "current_term": term})
        assert follower._pre_vote_won
        stall(nodes, follower, 1.6)  # held up past raftMaxTimeout before its next tick; heartbeats wait
        tick(nodes, lambda: False, 3.0)
        assert follower.raftCurrentTerm == term and leader._isLeader() and leader.raftCurrentTerm == term
        assert tick(nodes, lambda: synced(nodes), 10.0)
    finally:
        for n in nodes:
            n._destroy()
