"""Raft append rule, leader nextIndex and frame limits of :mod:`replicad.consensus.raft`.

The append tests drive a real ``_HardenedSyncObj`` (real :class:`DurableJournal` in
``tmp_path``, no auto tick) with ``append_entries`` messages as a pipelining pysyncobj
leader sends them, and record the answers it sends back.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import pytest
from hypothesis import given, settings, strategies as st
from pysyncobj import SyncObjConf
from pysyncobj.node import TCPNode

from replicad.consensus import raft as consensus
from replicad.consensus.journal import DurableJournal
from replicad.consensus.raft import MAX_FRAME_BYTES, MAX_HANDSHAKE_FRAME_BYTES, RaftNode, plan_append_entries
from replicad.lab.localcluster import free_port as lab_free_port

PASSWORD = "unit-secret"


def free_port() -> int:
    """A free loopback port (from this test process's own range: localcluster.LAB_PORTS_ENV)."""
    return lab_free_port()


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


def test_a_member_claiming_isolation_is_refused_inside_the_lease_and_moves_no_term(follower, caplog):
    """Point 7 has no exception to the lease any more (attacker review R7 F1): a member's word that it
    needs a leader and has heard from none (``needs_leader``, ``isolated_s``) won a compromised primary
    the lead at will with its up-to-date log, and with a log claimed behind at a higher term it made
    the follower adopt that term and drop its leader. Neither is granted now, whatever the claim."""
    obj, leader = follower
    append(obj, leader, 1, 0, [(b"\x01", 2, 1), (b"\x02", 3, 1)], commit_index=3)  # in the lease, term 1
    term = obj.raftCurrentTerm
    up_to_date = {"term": term + 1, "last_log_index": 3, "last_log_term": 1}
    stranded = {"term": term + 2, "last_log_index": 2, "last_log_term": 1}
    with caplog.at_level(logging.WARNING, logger=consensus.log.name):
        for ask in (up_to_date, stranded):
            for claim in ({"needs_leader": True, "isolated_s": 1e9}, {"needs_leader": True, "isolated_s": 11.0}, {}):
                assert pre_vote_answers(obj, leader, **ask, **claim) == [False], (ask, claim)
    assert obj.raftCurrentTerm == term and obj._SyncObj__raftLeader == leader and obj._SyncObj__votedForNodeId is None
    assert not [r for r in caplog.records if "granting" in r.getMessage() or "adopting" in r.getMessage()]
    obj._leader_contact -= obj._SyncObj__conf.raftMinTimeout  # the lease ran out: the ordinary rules
    assert pre_vote_answers(obj, leader, **up_to_date) == [True]
    assert pre_vote_answers(obj, leader, **stranded) == [False]  # its log is behind


def test_three_nodes_a_primary_stranded_above_its_leaders_term_commits_through_the_relay(tmp_path, monkeypatch):
    """The 16 GiB RPO run on three real pysyncobj nodes on loopback, ticked here: the primary is left
    at a term above the leader's (as ca18ca9's race left site-a: it drops the leader's lower-term
    appends, its log falls behind, its pre-votes are refused). The follower no longer adopts its term
    on its word (that let a compromised member take the lead, R7 F1); its commands commit through the
    relay (point 20) while the leader leads, and the leader keeps its term."""
    import msgpack

    monkeypatch.setattr(consensus, "WITHHELD_RESEND_S", 1.0)  # 10 s in the daemon
    monkeypatch.setattr(consensus, "WITHHELD_CHECK_S", 0.1)
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

    def propose(node, results):
        op_id = os.urandom(8).hex()
        node.consumer.apply_command(msgpack.packb({"v": 1, "op": "noop", "op_id": op_id}),
                                    callback=lambda result, reason: results.__setitem__(op_id, reason))
        return op_id

    def copies(node, op_id):
        return sum(1 for entry in node._SyncObj__raftLog if op_id.encode() in entry[0])

    try:
        primary = nodes[0]
        primary.needs_leader = lambda: True
        assert tick(nodes[1:], lambda: any(n._isLeader() for n in nodes[1:]), 20.0)  # the leader is not the primary
        leader = next(n for n in nodes[1:] if n._isLeader())
        other = next(n for n in nodes[1:] if n is not leader)
        done = {}
        for _ in range(3):
            propose(leader, done)
        assert tick(nodes, lambda: len(done) == 3 and primary.raftCommitIndex == leader.raftCommitIndex
                    == other.raftCommitIndex, 20.0)
        term = leader.raftCurrentTerm
        primary._SyncObj__setCurrentTerm(term + 1, primary._SyncObj__selfNode.id)  # it voted for itself, refused
        primary._SyncObj__raftLeader = None
        for _ in range(3):
            propose(leader, done)
        mine = propose(primary, {})
        assert tick(nodes, lambda: copies(leader, mine) and copies(other, mine), 20.0)
        assert not tick(nodes, lambda: False, 3.0)  # the relays come to an end
        assert copies(leader, mine) == copies(other, mine) == 1
        assert leader._isLeader() and leader.raftCurrentTerm == term and other.raftCurrentTerm == term
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


def test_a_full_state_before_any_leader_is_followed_is_refused_quietly(follower, caplog):
    """Operator try-out 2, item 6: a restarted node hears its leader's full state (install-snapshot)
    before the first append_entries that names the leader; refused and counted as ever, but at INFO
    (a benign restart logged a WARNING "refused" line the runbook greps), counted as
    ``snapshot_before_leader``, a reason ReplicadRaftTrafficRefused leaves out (it fired at every
    restart). Once the node follows a leader, a full state from another member is a WARNING,
    counted as ``snapshot_from_non_leader``."""
    from replicad.consensus import channel

    obj, leader = follower
    term = obj.raftCurrentTerm
    assert obj._SyncObj__raftLeader is None
    dump = {"type": "append_entries", "term": term, "commit_index": 0, "serialized": (b"x", True, False)}
    with caplog.at_level(logging.INFO, logger=channel.log.name):
        obj._SyncObj__onMessageReceived(leader, dump)
    lines = [r for r in caplog.records if "[snapshot_before_leader]" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.INFO] and "follows no leader yet" in lines[0].getMessage()
    assert obj.refusals.counts() == {"snapshot_before_leader": 1}
    append(obj, leader, 1, 0, [(b"\x01", 2, 1)], commit_index=1)  # now it follows the leader of term 1
    assert obj._SyncObj__raftLeader == leader
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=channel.log.name):
        obj._SyncObj__onMessageReceived(leader, {**dump, "term": obj.raftCurrentTerm - 1})  # not its current term
    lines = [r for r in caplog.records if "[snapshot_from_non_leader]" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING], [r.getMessage() for r in caplog.records]
    assert "follows no leader yet" not in lines[0].getMessage()
    assert obj.refusals.counts() == {"snapshot_before_leader": 1, "snapshot_from_non_leader": 1}
