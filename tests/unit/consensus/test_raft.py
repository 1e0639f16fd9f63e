"""Raft append rule, leader nextIndex and frame limits of :mod:`replicad.consensus.raft`.

The append tests drive a real ``_HardenedSyncObj`` (real :class:`DurableJournal` in
``tmp_path``, no auto tick) with ``append_entries`` messages as a pipelining pysyncobj
leader sends them, and record the answers it sends back.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time

import pytest
from hypothesis import given, settings, strategies as st
from pysyncobj import SyncObjConf
from pysyncobj.node import TCPNode

from replicad.consensus import raft as consensus
from replicad.consensus.journal import DurableJournal
from replicad.consensus.raft import MAX_FRAME_BYTES, MAX_HANDSHAKE_FRAME_BYTES, RaftNode, plan_append_entries

PASSWORD = "unit-secret"


def free_port() -> int:
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, 60000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


# --------------------------------------------------------------------------- the pure rule


def raft_reference(log: list, prev_idx: int, prev_term: int, entries: list) -> list | None:
    """Ongaro & Ousterhout 2014, Figure 2, AppendEntries receiver steps 2-4 (None: reply false)."""
    by_idx = {e[1]: e for e in log}
    if prev_idx not in by_idx or by_idx[prev_idx][2] != prev_term:
        return None
    out = list(log)
    for entry in entries:
        pos = entry[1] - log[0][1]
        if pos < len(out) and out[pos][2] != entry[2]:
            del out[pos:]
        if pos >= len(out):
            out.append(entry)
    return out


def pysyncobj_follower(log: list, prev_idx: int, prev_term: int, entries: list) -> list:
    """What pysyncobj 0.3.17's follower does with an accepted message: cut after prev, append."""
    keep = prev_idx - log[0][1] + 1
    return log[:keep] + list(entries)


def apply_plan(log: list, prev_idx: int, prev_term: int, entries: list) -> tuple[list, int]:
    """The follower log and acknowledged next index with plan_append_entries in front of pysyncobj."""
    plan = plan_append_entries(log, prev_idx, prev_term, entries)
    if plan is None:
        out = pysyncobj_follower(log, prev_idx, prev_term, entries)
        return out, out[-1][1] + 1
    new_prev, new_term, new_entries, ack = plan
    out = pysyncobj_follower(log, new_prev, new_term, new_entries)
    return out, ack if ack is not None else out[-1][1] + 1


def entries_of(terms: list[int], first_idx: int = 1) -> list:
    return [(b"\x00c%d-%d" % (i, t), first_idx + i, t) for i, t in enumerate(terms)]


def test_a_stale_resend_of_present_entries_deletes_nothing_and_acknowledges_only_them():
    log = entries_of([0, 1, 1, 1, 1, 1])  # idx 1..6
    plan = plan_append_entries(log, 3, 1, log[3:5])  # prev 3, entries 4..5: the log goes on to 6
    assert plan == (6, 1, [], 6)  # heartbeat at the log's end, acknowledge up to 5 only


def test_a_conflicting_entry_is_cut_from_there_and_new_ones_follow_the_matching_prefix():
    log = entries_of([0, 1, 1, 2, 2])  # idx 1..5
    leader = entries_of([0, 1, 1, 2, 3, 3])
    assert plan_append_entries(log, 2, 1, leader[2:]) == (4, 2, leader[4:], None)
    assert plan_append_entries(log, 3, 1, leader[3:4]) == (5, 2, [], 5)


def test_messages_pysyncobj_already_handles_right_are_left_alone():
    log = entries_of([0, 1, 1])
    assert plan_append_entries(log, 3, 1, entries_of([1], 4)) is None  # plain append at the end
    assert plan_append_entries(log, 5, 1, []) is None  # prev missing: pysyncobj resets
    assert plan_append_entries(log, 2, 2, log[2:]) is None  # prev term differs: pysyncobj resets
    assert plan_append_entries(log, 1, 0, [(b"x", 3, 1)]) is None  # not consecutive
    assert plan_append_entries(log, 1, 0, ["junk"]) is None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_plan_in_front_of_pysyncobj_is_raft_figure_2(data):
    # A leader log, and a follower log sharing a prefix of it then diverging (older terms).
    leader_terms = sorted(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=12)))
    leader = entries_of([0] + leader_terms)
    shared = data.draw(st.integers(1, len(leader)))
    tail = sorted(data.draw(st.lists(st.integers(1, 4), max_size=6)))
    tail = [t for t in tail if t >= leader[shared - 1][2]]
    follower = leader[:shared] + [(b"\x00old", shared + 1 + i, t) for i, t in enumerate(tail)]
    if any(f[2] == l[2] and f != l for f, l in zip(follower, leader)):
        return  # would break the Log Matching property: not a reachable state
    prev_idx = data.draw(st.integers(1, len(leader)))
    count = data.draw(st.integers(0, len(leader) - prev_idx))
    prev_term = leader[prev_idx - 1][2]
    sent = leader[prev_idx:prev_idx + count]
    expected = raft_reference(follower, prev_idx, prev_term, sent)
    if expected is None:
        assert plan_append_entries(follower, prev_idx, prev_term, sent) is None
        return
    got, ack_next_idx = apply_plan(follower, prev_idx, prev_term, sent)
    assert got == expected
    assert ack_next_idx == prev_idx + count + 1  # only what the message vouched for


# --------------------------------------------------------------------------- a real SyncObj


@pytest.fixture
def follower(tmp_path):
    """A hardened follower (no auto tick) whose next_node_idx answers are recorded in ``answers``."""
    leader_addr = f"127.0.0.1:{free_port()}"
    conf = SyncObjConf(password=PASSWORD, journalFile=str(tmp_path / "raft.journal"), autoTick=False,
                       appendEntriesUseBatch=False, dynamicMembershipChange=False)
    obj = consensus._HardenedSyncObj(f"127.0.0.1:{free_port()}", [leader_addr], conf=conf,
                                     consumers=[consensus._StateConsumer(None)])
    transport = obj._SyncObj__transport
    real_send = transport.send
    obj.answers = []

    def send(node, message):  # the real transport, its answers recorded on the way out
        if message.get("type") == "next_node_idx":
            obj.answers.append((message["next_node_idx"], message["success"], message["reset"]))
        return real_send(node, message)

    transport.send = send
    yield obj, TCPNode(leader_addr)
    obj._destroy()


def append(obj, leader, prev_idx, prev_term, entries, commit_index):
    obj._SyncObj__onMessageReceived(leader, {
        "type": "append_entries", "term": 1, "commit_index": commit_index, "entries": entries,
        "prevLogIdx": prev_idx, "prevLogTerm": prev_term})


def test_a_pipelined_resend_truncates_no_applied_entry(follower, caplog, monkeypatch):
    obj, leader = follower
    deleted: list[int] = []
    real_delete = DurableJournal.deleteEntriesFrom
    monkeypatch.setattr(DurableJournal, "deleteEntriesFrom",
                        lambda self, pos: (deleted.append(len(self) - pos), real_delete(self, pos))[1])
    commands = [(b"\x01", 2, 1)] + [(b"\x01", i, 1) for i in range(3, 7)]
    append(obj, leader, 1, 0, commands, commit_index=6)  # entries 2..6, all committed
    obj._SyncObj__applyLogEntries()
    assert obj.raftLastApplied == 6
    with caplog.at_level(logging.CRITICAL, logger="pysyncobj"):
        append(obj, leader, 3, 1, commands[2:4], commit_index=6)  # a resend of 4..5, in flight before
    assert not [r for r in caplog.records if "truncating" in r.getMessage()]
    assert deleted == []
    journal = obj._SyncObj__raftLog
    assert [(e[1], e[2]) for e in journal] == [(i, 0 if i == 1 else 1) for i in range(1, 7)]
    assert obj.answers[-1] == (6, True, False)  # acknowledges 4..5 only (next index 6)
    assert obj.raftCommitIndex == 6 and obj.raftLastApplied == 6


def test_extra_entries_beyond_a_message_are_not_committed_by_it(follower):
    obj, leader = follower
    append(obj, leader, 1, 0, [(b"\x01", 2, 1), (b"\x00a", 3, 1), (b"\x00b", 4, 1)], commit_index=1)
    append(obj, leader, 1, 0, [(b"\x01", 2, 1)], commit_index=4)  # vouches for 2 only
    assert len(obj._SyncObj__raftLog) == 4  # 3..4 kept (no conflict) ...
    assert obj.raftCommitIndex == 2  # ... but not committed on this message's word
    assert obj.answers[-1] == (3, True, False)


def test_a_conflicting_uncommitted_entry_is_replaced(follower):
    obj, leader = follower
    append(obj, leader, 1, 0, [(b"\x01", 2, 1), (b"\x00old", 3, 1)], commit_index=2)
    obj._SyncObj__onMessageReceived(leader, {
        "type": "append_entries", "term": 2, "commit_index": 3,
        "entries": [(b"\x01", 2, 1), (b"\x00new", 3, 2)], "prevLogIdx": 1, "prevLogTerm": 0})
    assert list(obj._SyncObj__raftLog)[1:] == [(b"\x01", 2, 1), (b"\x00new", 3, 2)]
    assert obj.raftCommitIndex == 3


def pre_vote_answers(obj, leader, **message):
    sent = []
    real_send = obj._SyncObj__transport.send
    obj._SyncObj__transport.send = lambda node, m: sent.append(m) if m.get("type") == "pre_vote_response" \
        else real_send(node, m)
    try:
        obj._SyncObj__onMessageReceived(leader, {"type": "pre_vote", **message})
    finally:
        obj._SyncObj__transport.send = real_send
    return [m["granted"] for m in sent]


def test_pre_vote_is_granted_only_outside_the_leader_lease_to_an_up_to_date_log(follower):
    obj, leader = follower
    term = obj.raftCurrentTerm
    ok = {"term": term + 1, "last_log_index": 1, "last_log_term": 0}
    assert pre_vote_answers(obj, leader, **ok) == [True]  # never heard from a leader
    append(obj, leader, 1, 0, [(b"\x01", 2, 1)], commit_index=1)  # a leader (term 1) speaks
    term = obj.raftCurrentTerm
    fresh = {"term": term + 1, "last_log_index": 2, "last_log_term": 1}
    assert pre_vote_answers(obj, leader, **fresh) == [False]  # inside the lease
    obj._leader_contact -= obj._SyncObj__conf.raftMinTimeout  # the lease ran out
    assert pre_vote_answers(obj, leader, **fresh) == [True]
    assert pre_vote_answers(obj, leader, **{**fresh, "last_log_index": 1}) == [False]  # log behind
    assert pre_vote_answers(obj, leader, **{**fresh, "last_log_term": 0, "last_log_index": 9}) == [False]
    assert pre_vote_answers(obj, leader, **{**fresh, "term": term}) == [False]  # not a newer term
    assert pre_vote_answers(obj, leader, **{**fresh, "term": "x"}) == []  # malformed: no answer
    assert obj.raftCurrentTerm == term and obj._SyncObj__votedForNodeId is None  # nothing changed


def test_a_primary_cut_off_from_the_leader_is_granted_despite_the_lease(follower):
    """chaos one-way: the primary cannot reach the leader but reaches the third site; after
    ISOLATED_AFTER_S without a leader it may take over. Replicas, and stalled nodes that do
    hear their leader now and then, may not."""
    obj, leader = follower
    append(obj, leader, 1, 0, [(b"\x01", 2, 1)], commit_index=1)  # inside the lease from now on
    term = obj.raftCurrentTerm
    ask = {"term": term + 1, "last_log_index": 2, "last_log_term": 1}
    cut = consensus.ISOLATED_AFTER_S
    assert pre_vote_answers(obj, leader, **ask, needs_leader=True, isolated_s=cut + 1) == [True]
    assert pre_vote_answers(obj, leader, **ask, needs_leader=True, isolated_s=cut / 2) == [False]
    assert pre_vote_answers(obj, leader, **ask, needs_leader=False, isolated_s=1e9) == [False]
    assert pre_vote_answers(obj, leader, **ask, needs_leader="yes", isolated_s=1e9) == [False]
    assert pre_vote_answers(obj, leader, **ask, needs_leader=True, isolated_s=True) == [False]
    assert pre_vote_answers(obj, leader, **{**ask, "last_log_index": 1}, needs_leader=True,
                            isolated_s=cut + 1) == [False]  # the log rule still holds


def test_an_isolated_primary_whose_log_is_behind_is_refused_and_the_log_line_says_so(follower, caplog):
    """site-b logged "granting a pre-vote ... despite a live leader" to site-a for 5 min (16 GiB RPO
    run) and refused every one: the line was written before the log rule was checked."""
    obj, leader = follower
    append(obj, leader, 1, 0, [(b"\x01", 2, 1), (b"\x02", 3, 1)], commit_index=3)  # in the lease, term 1
    term = obj.raftCurrentTerm
    cut = consensus.ISOLATED_AFTER_S
    behind = {"term": term + 1, "last_log_index": 2, "last_log_term": 1, "needs_leader": True, "isolated_s": cut}
    with caplog.at_level(logging.WARNING, logger=consensus.log.name):
        assert pre_vote_answers(obj, leader, **behind) == [False]
        assert pre_vote_answers(obj, leader, **behind) == [False]
    lines = [r.getMessage() for r in caplog.records]
    assert not [m for m in lines if "granting" in m], lines
    refused = [m for m in lines if "refusing a pre-vote" in m]
    assert len(refused) == 1 and "behind ours (3 of term 1)" in refused[0], lines  # once per ISOLATED_AFTER_S
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=consensus.log.name):
        assert pre_vote_answers(obj, leader, **{**behind, "last_log_index": 3}) == [True]  # caught up: granted
    assert [r.getMessage() for r in caplog.records if "granting a pre-vote" in r.getMessage()]
    assert obj.raftCurrentTerm == term  # a pre-vote changes nothing here


def test_a_primary_stranded_above_its_leaders_term_makes_the_others_elect_above_it(follower, caplog):
    """16 GiB RPO run: site-a reached term 2 (ca18ca9's race) while site-c led term 1 with site-b.
    site-a dropped site-c's lower-term appends, its log fell behind, site-b refused its pre-votes
    (log) and site-c its votes (lease): no commit from site-a for 5 min. A follower now adopts the
    stranded primary's term and asks for pre-votes, so a newer log is elected above it."""
    obj, leader = follower
    append(obj, leader, 1, 0, [(b"\x01", 2, 1), (b"\x02", 3, 1)], commit_index=3)  # in the lease, term 1
    term = obj.raftCurrentTerm
    cut = consensus.ISOLATED_AFTER_S
    stranded = {"term": term + 2, "last_log_index": 2, "last_log_term": 1, "needs_leader": True, "isolated_s": cut}
    # only under the isolation exception's own conditions: a stalled replica, a short gap, a newer log
    assert pre_vote_answers(obj, leader, **{**stranded, "needs_leader": False}) == [False]
    assert pre_vote_answers(obj, leader, **{**stranded, "isolated_s": cut / 2}) == [False]
    assert obj.raftCurrentTerm == term and obj._SyncObj__raftLeader == leader
    with caplog.at_level(logging.WARNING, logger=consensus.log.name):
        assert pre_vote_answers(obj, leader, **stranded) == [False]  # never a grant: its log is behind
    assert obj.raftCurrentTerm == term + 1 and obj._SyncObj__votedForNodeId is None
    assert obj._SyncObj__raftLeader is None and obj._SyncObj__raftElectionDeadline == 0
    assert [r for r in caplog.records if f"adopting term {term + 1}" in r.getMessage()]
    assert pre_vote_answers(obj, leader, **stranded) == [False] and obj.raftCurrentTerm == term + 1  # not above now
    sent = []
    obj._SyncObj__transport.send = lambda node, m: sent.append(m)
    obj._SyncObj__connectedToAnyone = lambda: True
    obj._pre_vote_gate()  # the next tick: pre-votes above the stranded term, with our newer log
    assert [(m["type"], m["term"], m["last_log_index"]) for m in sent] == [("pre_vote", term + 2, 3)]


def test_the_isolation_exception_counts_only_from_a_volumes_primary(follower, tmp_path, caplog):
    """needs_leader is the asker's own word: a replica or a witness claiming it is neither granted
    despite the lease nor makes anyone adopt its term; the primary in the applied state is."""
    from tests.unit.core.test_state import RETENTION, cmd, initial_state, ok

    obj, leader = follower
    append(obj, leader, 1, 0, [(b"\x01", 2, 1), (b"\x02", 3, 1)], commit_index=3)  # in the lease, term 1
    term = obj.raftCurrentTerm
    cut = consensus.ISOLATED_AFTER_S
    ask = {"term": term + 1, "last_log_index": 3, "last_log_term": 1, "needs_leader": True, "isolated_s": cut}
    stranded = {**ask, "term": term + 2, "last_log_index": 2}
    obj.is_primary_member = lambda node_id: False
    assert pre_vote_answers(obj, leader, **ask) == [False]
    assert pre_vote_answers(obj, leader, **stranded) == [False] and obj.raftCurrentTerm == term
    obj.is_primary_member = lambda node_id: 1 / 0  # a failing check is a no, said aloud
    with caplog.at_level(logging.WARNING, logger="replicad.consensus.raft"):
        assert pre_vote_answers(obj, leader, **ask) == [False]
    assert "cannot tell whether" in caplog.text and "ZeroDivisionError" in caplog.text
    obj.is_primary_member = lambda node_id: node_id == leader.id
    assert pre_vote_answers(obj, leader, **ask) == [True]

    state = initial_state()
    for site in ("a", "b"):
        state, _ = ok(state, cmd("register_site", by=site, site_id=site, peer_url=f"https://{site}:7443", kind="data"))
    addrs = {f"127.0.0.1:{free_port()}": s for s in ("a", "b")}
    by_site = {s: a for a, s in addrs.items()}
    node = RaftNode(by_site["a"], [by_site["b"]], tmp_path / "node", PASSWORD, sites=addrs)  # not started
    node._consumer.cluster = state
    assert not node._is_primary_member(by_site["a"])  # no volume yet: no primary
    state, _ = ok(state, cmd("add_volume", volume="vol", primary="a", block_size=65536, size_bytes=1 << 30,
                             min_copies=2, retention=dict(RETENTION)))
    node._consumer.cluster = state
    assert node._is_primary_member(by_site["a"]) and not node._is_primary_member(by_site["b"])
    assert not node._is_primary_member("127.0.0.1:1")  # not a member


def test_three_nodes_a_primary_stranded_above_its_leaders_term_catches_up(tmp_path, monkeypatch):
    """The 16 GiB RPO run on three real pysyncobj nodes on loopback, ticked here: the leader and the
    other follower commit; the primary is left at a term above the leader's (as ca18ca9's race left
    site-a) and the two commit without it. It must follow a leader again and catch up (it stayed at
    its term, 3 entries behind, for the whole bound before: the leader's lease kept every other
    election away, and its own pre-votes were refused for its log)."""
    import msgpack

    monkeypatch.setattr(consensus, "ISOLATED_AFTER_S", 1.0)  # 10 s in the daemon
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes = []
    for i, addr in enumerate(addrs):
        conf = SyncObjConf(password=PASSWORD, journalFile=str(tmp_path / f"raft{i}.journal"), autoTick=False,
                           appendEntriesUseBatch=False, dynamicMembershipChange=False, connectionRetryTime=0.2)
        consumer = consensus._StateConsumer(None)
        obj = consensus._HardenedSyncObj(addr, [a for a in addrs if a != addr], conf=conf, consumers=[consumer])
        obj.consumer = consumer
        nodes.append(obj)

    def tick(ticked, done, bound_s):
        end = time.monotonic() + bound_s
        while time.monotonic() < end:
            for n in ticked:
                n.doTick(0.0)
            if done():
                return True
        return False

    try:
        primary = nodes[0]
        primary.needs_leader = lambda: True
        assert tick(nodes[1:], lambda: any(n._isLeader() for n in nodes[1:]), 20.0)  # the leader is not the primary
        leader = next(n for n in nodes[1:] if n._isLeader())
        other = next(n for n in nodes[1:] if n is not leader)

        def commit(count):  # distinct commands (the same bytes are the same command: answered once, point 20)
            for _ in range(count):
                leader.consumer.apply_command(msgpack.packb({"v": 1, "op": "noop", "op_id": os.urandom(8).hex()}),
                                              callback=lambda *_: None)

        commit(3)
        assert tick(nodes, lambda: leader.raftCommitIndex >= 4 and primary.raftCommitIndex == leader.raftCommitIndex
                    == other.raftCommitIndex, 20.0)
        term = leader.raftCurrentTerm
        primary._SyncObj__setCurrentTerm(term + 1, primary._SyncObj__selfNode.id)  # it voted for itself, refused
        primary._SyncObj__raftLeader = None
        commit(3)
        target = leader.raftCommitIndex + 3
        assert tick([leader, other], lambda: leader.raftCommitIndex >= target, 20.0)  # committed without it
        assert tick(nodes, lambda: primary.raftCommitIndex >= target and primary._SyncObj__raftLeader is not None
                    and primary.raftCurrentTerm > term + 1, 10.0), \
            ([n.raftCurrentTerm for n in nodes], [n.raftCommitIndex for n in nodes], target)
    finally:
        for n in nodes:
            n._destroy()


def test_an_expired_election_deadline_asks_pre_votes_and_keeps_the_term(follower):
    obj, leader = follower
    sent = []
    obj._SyncObj__transport.send = lambda node, m: sent.append(m)
    obj._SyncObj__connectedToAnyone = lambda: True
    term = obj.raftCurrentTerm
    obj._SyncObj__raftElectionDeadline = 0
    obj._pre_vote_gate()
    assert [m["type"] for m in sent] == ["pre_vote"] and sent[0]["term"] == term + 1
    assert sent[0]["needs_leader"] is False and sent[0]["isolated_s"] >= 0
    assert obj.raftCurrentTerm == term and obj._SyncObj__raftElectionDeadline > 0
    obj._SyncObj__onMessageReceived(leader, {"type": "pre_vote_response", "term": term + 1, "granted": True})
    assert obj._pre_vote_won and obj._SyncObj__raftElectionDeadline == 0  # a majority (2 of 2): elect
    obj._pre_vote_gate()
    assert not obj._pre_vote_won  # handed over to pysyncobj's election in the same tick


def test_a_deadline_passing_between_the_gate_and_pysyncobjs_look_starts_no_election(follower, monkeypatch):
    """The gate saw the deadline ahead; pysyncobj, a moment later, saw it passed (a late heartbeat,
    a descheduled or stopped tick thread): it started a real election without a pre-vote, and the
    node stayed at a term above its healthy leader's (the cluster that never became ready)."""
    import pysyncobj.syncobj

    obj, leader = follower
    obj._onTick(0.0)  # the transport binds
    sent = []
    obj._SyncObj__transport.send = lambda node, m: sent.append(m)
    obj._SyncObj__connectedToAnyone = lambda: True
    term, now = obj.raftCurrentTerm, time.monotonic()
    monkeypatch.setattr(consensus, "monotonic_time", lambda: now)  # the gate's look
    monkeypatch.setattr(pysyncobj.syncobj, "monotonicTime", lambda: now + 1.0)  # pysyncobj's, later
    obj._SyncObj__raftElectionDeadline = now + 0.5
    obj._onTick(0.0)
    assert obj.raftCurrentTerm == term and not [m for m in sent if m["type"] == "request_vote"], sent
    assert obj._SyncObj__raftElectionDeadline == now + 0.5  # the gate asks for pre-votes next tick
    monkeypatch.setattr(consensus, "monotonic_time", lambda: now + 1.0)
    obj._onTick(0.0)
    assert [m["type"] for m in sent] == ["pre_vote"] and obj.raftCurrentTerm == term


def test_a_success_answer_to_an_earlier_message_does_not_move_next_index_back(tmp_path):
    conf = SyncObjConf(password=PASSWORD, journalFile=str(tmp_path / "raft.journal"), autoTick=False,
                       appendEntriesUseBatch=False, dynamicMembershipChange=False)
    partners = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    obj = consensus._HardenedSyncObj(f"127.0.0.1:{free_port()}", partners, conf=conf,
                                     consumers=[consensus._StateConsumer(None)])
    try:
        obj._SyncObj__setCurrentTerm(1, None)
        obj._SyncObj__onBecomeLeader()  # noop at idx 2; nextIndex = 2 for both partners
        peer = TCPNode(partners[0])
        for idx in (3, 4, 5):
            obj._SyncObj__raftLog.add(b"\x00c", idx, 1)
        obj._SyncObj__raftNextIndex[peer] = 6  # 2..5 sent in three pipelined messages
        obj._SyncObj__onMessageReceived(peer, {"type": "next_node_idx", "next_node_idx": 3,
                                               "success": True, "reset": False})
        assert obj._SyncObj__raftMatchIndex[peer] == 2
        assert obj._SyncObj__raftNextIndex[peer] == 6
        obj._SyncObj__onMessageReceived(peer, {"type": "next_node_idx", "next_node_idx": 4,
                                               "success": False, "reset": True})
        assert obj._SyncObj__raftNextIndex[peer] == 4  # a reset still moves it back
    finally:
        obj._destroy()


# --------------------------------------------------------------------------- frame limits


def test_frame_limits_fit_the_largest_legitimate_frame():
    # append_entries: 64 KiB batch + one command (<= 2 * MAX_COMMAND_BYTES), Fernet x 4/3
    largest = (64 * 1024 + 2 * consensus.MAX_COMMAND_BYTES) * 4 // 3 + 1024
    assert largest * 8 < MAX_FRAME_BYTES <= 4 * 1024 * 1024
    assert MAX_HANDSHAKE_FRAME_BYTES >= 1024


def test_a_connection_that_never_authenticated_cannot_announce_a_big_frame(tmp_path):
    addr = f"127.0.0.1:{free_port()}"
    node = RaftNode(addr, [], tmp_path, PASSWORD)
    node.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", int(addr.rsplit(":", 1)[1])), timeout=10)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with sock:
            # well below MAX_FRAME_BYTES, above the handshake limit, body not sent yet:
            # an unpatched connection would wait for (and buffer) the whole frame
            sock.sendall((64 * 1024).to_bytes(4, "little", signed=True) + b"x" * 100)
            try:
                closed = sock.recv(1) == b""
            except ConnectionResetError:
                closed = True
        assert closed
    finally:
        node.close()
