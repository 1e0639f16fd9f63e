"""Point 19 of :mod:`replicad.consensus.raft`: a leader that withholds a site's commands is deposed.

Three real hardened pysyncobj nodes on loopback, ticked here (as in test_raft.py). The attacker
is the leader with one patch: it drops every ``apply_command`` a member forwards (attacker review
F3: forced promotions, revocations and verdict votes of the two honest sites never committed while
it kept committing its own entries and heartbeating, and nothing named it). The thresholds are
shortened (45 s / 10 s in the daemon); every wait is bounded generously.
"""

from __future__ import annotations

import logging
import time
import uuid

import msgpack
import pytest
from pysyncobj import SyncObjConf
from pysyncobj.config import FAIL_REASON

from replicad.consensus import raft as consensus
from replicad.consensus.raft import WithheldWatch

from tests.unit.consensus.test_raft import PASSWORD, free_port

AFTER_S = 2.0


@pytest.fixture
def nodes(tmp_path, monkeypatch):
    monkeypatch.setattr(consensus, "WITHHELD_AFTER_S", AFTER_S)
    monkeypatch.setattr(consensus, "WITHHELD_RESEND_S", 1.0)
    monkeypatch.setattr(consensus, "WITHHELD_CHECK_S", 0.1)
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    made = []
    for i, addr in enumerate(addrs):
        conf = SyncObjConf(password=PASSWORD, journalFile=str(tmp_path / f"raft{i}.journal"), autoTick=False,
                           appendEntriesUseBatch=False, dynamicMembershipChange=False, connectionRetryTime=0.2)
        consumer = consensus._StateConsumer(None)
        obj = consensus._HardenedSyncObj(addr, [a for a in addrs if a != addr], conf=conf, consumers=[consumer])
        obj.consumer = consumer
        made.append(obj)
    yield made
    for n in made:
        n._destroy()


def tick(nodes, done, bound_s, each=None):
    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        for n in nodes:
            n.doTick(0.0)
        if each is not None:
            each()
        if done():
            return True
    return False


def propose(node, results):
    """One distinct no-op command proposed at ``node``; its outcome lands in ``results[op_id]``."""
    op_id = uuid.uuid4().hex
    results[op_id] = None
    node.consumer.apply_command(msgpack.packb({"v": 1, "op": "noop", "op_id": op_id}),
                                callback=lambda result, reason: results.__setitem__(op_id, reason))
    return op_id


def elect(nodes):
    assert tick(nodes, lambda: sum(n._isLeader() for n in nodes) == 1
                and all(n._SyncObj__raftLeader is not None for n in nodes), 30.0)
    leader = next(n for n in nodes if n._isLeader())
    return leader, [n for n in nodes if n is not leader]


def withheld_count(node):
    return node.refusals.counts().get("leader_withholds", 0)


def test_a_leader_dropping_forwarded_commands_is_deposed_and_the_others_commit(nodes, caplog):
    leader, followers = elect(nodes)
    term = leader.raftCurrentTerm
    real_dispatch = leader._dispatch_message

    def withholding(node, message):  # the attacker's patch: drop what members forward or relay
        if isinstance(message, dict) and message.get("type") in ("apply_command", "relay_command"):
            return
        real_dispatch(node, message)
    leader._dispatch_message = withholding

    own, forwarded = {}, {}
    for f in followers:
        propose(f, forwarded)
    last_own = [time.monotonic()]

    def leader_commits_its_own():  # it keeps committing its own entries meanwhile
        if leader._isLeader() and time.monotonic() - last_own[0] > 0.3:
            last_own[0] = time.monotonic()
            propose(leader, own)

    caplog.set_level(logging.ERROR, logger="replicad.consensus.raft")
    began = time.monotonic()
    assert tick(nodes, lambda: all(withheld_count(f) >= 1 for f in followers), 10 * AFTER_S,
                each=leader_commits_its_own), [withheld_count(f) for f in followers]
    deposed_after_s = time.monotonic() - began
    assert deposed_after_s >= AFTER_S  # never before the threshold
    assert all(forwarded[k] is None for k in forwarded)  # withheld: none committed
    assert sum(1 for r in own.values() if r == FAIL_REASON.SUCCESS) >= 3  # while the leader committed its own
    assert all(f.holds_deposed(leader._SyncObj__selfNode.id) for f in followers)
    lines = [r.getMessage() for r in caplog.records if "[leader_withholds]" in r.getMessage()]
    assert len(lines) == 2 and all(str(leader._SyncObj__selfNode.id) in line and "committed" in line
                                   and "other entries meanwhile" in line for line in lines), lines

    # the honest two elect one of themselves, above the withholding leader's term
    assert tick(nodes, lambda: any(f._isLeader() for f in followers)
                and all(f._SyncObj__raftLeader is not None for f in followers), 30.0)
    new_leader = next(f for f in followers if f._isLeader())
    other = next(f for f in followers if f is not new_leader)
    assert new_leader.raftCurrentTerm > term
    after = {}
    for _ in range(3):
        propose(other, after)  # forwarded to the honest leader now
    propose(new_leader, after)
    assert tick(nodes, lambda: all(r is not None for r in after.values()), 30.0), after
    assert set(after.values()) == {FAIL_REASON.SUCCESS}
    # the deposed site's pre-votes are refused by both (it would have to win one of them)
    for f in followers:
        answers = []
        real_send = f._SyncObj__transport.send
        f._SyncObj__transport.send = lambda node, m, a=answers: a.append(m) if m.get("type") == "pre_vote_response" \
            else None
        try:
            f._SyncObj__onMessageReceived(leader._SyncObj__selfNode, {
                "type": "pre_vote", "term": f.raftCurrentTerm + 1, "last_log_index": 10**6,
                "last_log_term": f.raftCurrentTerm})
        finally:
            f._SyncObj__transport.send = real_send
        assert [m["granted"] for m in answers] == [False]
        assert f.refusals.counts().get("vote_for_deposed", 0) >= 1


def test_an_honest_slow_leader_is_not_deposed(nodes):
    """A leader that appends forwarded commands late (half the threshold), again and again for
    1.5 times the threshold, keeps the lead: every command commits and nobody deposes it."""
    leader, followers = elect(nodes)
    term = leader.raftCurrentTerm
    real_dispatch = leader._dispatch_message
    held: list = []

    def slow(node, message):  # forwarded commands wait half the threshold (a stalled disk, say)
        if isinstance(message, dict) and message.get("type") == "apply_command":
            held.append((time.monotonic() + 0.5 * AFTER_S, node, message))
            return
        real_dispatch(node, message)
    leader._dispatch_message = slow

    def release():
        now = time.monotonic()
        for item in [h for h in held if h[0] <= now]:
            held.remove(item)
            real_dispatch(item[1], item[2])

    results = {}
    end = time.monotonic() + 1.5 * AFTER_S
    while time.monotonic() < end:
        for f in followers:
            propose(f, results)
        assert not tick(nodes, lambda: False, 0.5, each=release)
    assert tick(nodes, lambda: all(r is not None for r in results.values()), 10 * AFTER_S, each=release), results
    assert set(results.values()) == {FAIL_REASON.SUCCESS} and len(results) >= 4
    assert all(withheld_count(f) == 0 and not f.deposed for f in followers)
    assert leader._isLeader() and leader.raftCurrentTerm == term


def test_the_watch_judges_only_commands_resent_while_connected_and_forgets_applied_ones(monkeypatch):
    monkeypatch.setattr(consensus, "WITHHELD_AFTER_S", 45.0)
    monkeypatch.setattr(consensus, "WITHHELD_RESEND_S", 10.0)
    watch = WithheldWatch()
    entry = b"\x00" + b"command-1"
    message = {"type": "apply_command", "command": entry, "request_id": 1}
    watch.sent(message, "L", 3, True, 100, now_s=0.0)
    watch.sent({**message, "request_id": 2}, "L", 3, False, 101, now_s=5.0)  # the daemon's retry: same bytes
    assert len(watch.pending) == 1 and watch.due_resends(12.0) == [] and watch.due_resends(15.0) == [message]
    assert watch.overdue(60.0) is None  # sent once while connected: maybe lost on a dropped connection
    watch.sent(message, "L", 3, True, 120, now_s=50.0)  # the resend
    assert watch.overdue(52.0) is None  # the leader just got it: give it time to answer
    assert watch.overdue(56.0) == {"waiting_s": 56.0, "sends": 2, "waiting": 1, "leader_commit": 100}
    watch.applied(entry)
    assert watch.overdue(56.0) is None and not watch.pending
    watch.sent(message, "L", 3, True, 130, now_s=60.0)
    watch.sent(message, "L", 3, True, 130, now_s=100.0)
    watch.follow("M", 4)  # a new leader: pysyncobj failed the proposals, the daemon retries them
    assert not watch.pending and watch.overdue(200.0) is None
    watch.applied(b"never sent")
    assert watch.key("not bytes") is None


def test_a_full_state_installed_forgets_the_watched_commands(tmp_path):
    """Entries a full state covers are never applied one by one: a follower catching up through
    the leader's dump must not judge it for the commands the dump holds."""
    from replicad.consensus import dumpfile
    from tests.unit.consensus.test_checkpoint import _good_dump, _node

    (tmp_path / "raft.dump").write_bytes(dumpfile.frame(_good_dump(tmp_path)))
    node = _node(tmp_path)
    node.start()
    try:
        node._syncobj._withheld_checked = float("inf")  # the tick thread's check stays out of it
        watch = node._syncobj._withheld
        watch.sent({"type": "apply_command", "command": b"\x00mine", "request_id": 1}, "L", 1, True, 0, now_s=0.0)
        assert watch.pending
        node._deserialize_dump(str(tmp_path / "raft.dump"))  # as pysyncobj does with a dump it received
        assert not watch.pending
    finally:
        node.close()


def test_a_command_the_leader_appended_is_neither_resent_nor_judged(monkeypatch):
    # last read of the change: a command in this node's log whose commit waited > 10 s (a slow
    # disk at a majority) was resent, appended twice, and its second copy refused as replayed in
    # this site's name (ReplicadCommandRefused); past 45 s its leader would have been deposed
    monkeypatch.setattr(consensus, "WITHHELD_AFTER_S", 45.0)
    monkeypatch.setattr(consensus, "WITHHELD_RESEND_S", 10.0)
    watch = WithheldWatch()
    appended, lost = b"\x00" + b"command-1", b"\x00" + b"command-2"
    for i, entry in enumerate((appended, lost)):
        watch.sent({"type": "apply_command", "command": entry, "request_id": i}, "L", 3, True, 100, now_s=0.0)
    watch.in_log(iter([b"\x00" + b"someone else's", appended]))  # in the log, not applied yet
    assert [m["command"] for m in watch.due_resends(15.0)] == [lost]
    watch.sent({"type": "apply_command", "command": lost, "request_id": 1}, "L", 3, True, 100, now_s=15.0)
    assert watch.overdue(60.0)["waiting"] == 1  # only the command the leader never appended
