"""Point 21 of :mod:`replicad.consensus.raft`: a leader that front-runs a site's command is deposed
(under rules 1 and 2; alerted only under rules 3).

Three real hardened pysyncobj nodes on loopback, ticked here (the fixture of test_withheld.py), each
wired as :class:`~replicad.consensus.raft.RaftNode` wires it (the consumer's applied entries, a site
per node). The state is the real state machine under rules 1 (op ids remembered alone), unsigned.
The attacker is the leader with one patch: before a member's forwarded command it appends a command
of its own carrying the same op id (attacker review r13, F5). The member's proposal is answered
``leader_front_run`` (never with the leader's stored answer), the member deposes the leader
(``leader_front_runs``), the third node does not; a front-running entry naming another site is
``op_id_taken`` and deposes nobody. Under rules 3 the member's command applies and the member
alerts without deposing; commands relayed through the members (point 20) are judged alike.
"""

from __future__ import annotations

import logging

import msgpack
import pytest
from pysyncobj.config import FAIL_REASON

from replicad.consensus import checkpoint, raft as consensus
from replicad.core import errors
from replicad.core import state as cluster_state

from tests.unit.consensus.test_withheld import elect, nodes, tick  # noqa: F401


def wire(nodes) -> dict:
    """Each node as RaftNode.start wires it: the consumer's applied entries, the site of each node id."""
    sites = {n._SyncObj__selfNode.id: f"site-{i}" for i, n in enumerate(nodes)}
    for n in nodes:
        n.take_applied_entry = n.consumer.take_applied_entry
        n.site_of = sites.get
    return sites


def front_running(leader, signer: str, kinds: tuple = ("apply_command",), withhold_forwards: bool = False) -> list:
    """Patch ``leader``: before each command a member forwards (``apply_command``) or relays
    (``relay_command``, point 20), as ``kinds`` names, append one of its own (in ``signer``'s name)
    with the same op id. ``withhold_forwards``: drop every forwarded command (so that its site
    relays it through the members). Returns the list of op ids front-run (one per front-run)."""
    real_dispatch = leader._dispatch_message
    done: list = []

    def dispatch(node, message):
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "apply_command" and withhold_forwards:
            return
        if kind in kinds:
            entry = consensus.entry_call(message.get("command"))
            cmd = checkpoint.decode_command(entry[1]) if entry is not None else None
            if isinstance(cmd, dict):
                mine = {"v": 1, "op": "noop", "op_id": cmd["op_id"], "by": signer, "n": len(done)}
                leader.consumer.apply_command(msgpack.packb(mine), callback=None)
                done.append(cmd["op_id"])
        real_dispatch(node, message)
    leader._dispatch_message = dispatch
    return done


def propose_as(node, site: str, op_id: str, answers: dict, key: str | None = None, **extra) -> None:
    node.consumer.apply_command(msgpack.packb({"v": 1, "op": "noop", "op_id": op_id, "by": site, **extra}),
                                callback=lambda result, reason: answers.setdefault(key or op_id, (result, reason)))


def test_a_front_run_command_is_refused_typed_and_its_site_deposes_the_leader(nodes):
    sites = wire(nodes)
    leader, (victim, other) = elect(nodes)
    front_running(leader, sites[leader._SyncObj__selfNode.id])
    answers: dict = {}
    propose_as(victim, sites[victim._SyncObj__selfNode.id], "front-run-1", answers)
    assert tick(nodes, lambda: "front-run-1" in answers, 15.0)
    result, reason = answers["front-run-1"]
    assert reason == FAIL_REASON.SUCCESS and result["error"] == "leader_front_run", result
    assert isinstance(errors.from_dict(result), errors.LeaderFrontRunError)
    assert result["evidence"]["signer"] == sites[leader._SyncObj__selfNode.id] == result["evidence"]["leader"]
    assert victim.refusals.counts().get("leader_front_runs") == 1
    assert leader._SyncObj__selfNode.id in victim.deposed
    assert not other.refusals.counts().get("leader_front_runs") and not other.deposed


def test_an_op_id_taken_by_another_site_deposes_nobody(nodes):
    sites = wire(nodes)
    leader, (victim, other) = elect(nodes)
    front_running(leader, sites[other._SyncObj__selfNode.id])  # the entry names the third site
    answers: dict = {}
    propose_as(victim, sites[victim._SyncObj__selfNode.id], "taken-1", answers)
    assert tick(nodes, lambda: "taken-1" in answers, 15.0)
    result, _ = answers["taken-1"]
    assert result["error"] == "leader_front_run" and result["evidence"]["signer"] == sites[other._SyncObj__selfNode.id]
    assert victim.refusals.counts().get("op_id_taken") == 1 and not victim.refusals.counts().get("leader_front_runs")
    assert not victim.deposed and victim._SyncObj__raftLeader is not None


def test_this_site_s_own_retry_with_a_new_stamp_is_no_front_run(nodes):
    """``daemon.request_with_retry`` proposes the same op id again with a new stamp (other bytes,
    same site): the second is answered with the first's answer, nobody is judged or deposed."""
    sites = wire(nodes)
    leader, (victim, other) = elect(nodes)
    site = sites[victim._SyncObj__selfNode.id]
    answers: dict = {}
    propose_as(victim, site, "retry-1", answers, key="first", now_ns=1)
    propose_as(victim, site, "retry-1", answers, key="second", now_ns=2)
    assert tick(nodes, lambda: {"first", "second"} <= set(answers), 15.0)
    assert answers["second"][0] == answers["first"][0] and answers["first"][0]["error"] != "leader_front_run"
    for n in nodes:
        counts = n.refusals.counts()
        assert not counts.get("op_id_taken") and not counts.get("leader_front_runs") and not n.deposed


def under_rules(nodes, rules: int) -> None:
    """Each node's state machine starts from the initial state under ``rules`` (nothing applied yet)."""
    for n in nodes:
        c = n.consumer
        c.initial = c.cluster = cluster_state.initial_state(rules=rules)
        c.checkpoints = checkpoint.CheckpointLog.fresh(c.initial, c.checkpoints.every)


@pytest.mark.parametrize("rules", [1, 2, 3])
def test_a_retry_after_another_site_took_the_op_id_of_an_applied_command_is_no_front_run(nodes, rules):
    """This site's command applied first, then another site signs an entry with its op id, then this
    site retries it (same op id, new stamp, as ``daemon.request_with_retry`` does after a timeout):
    the retry is answered with the first answer, never ``leader_front_run`` (which would make
    ``Cluster.propose`` propose it again as a new command: applied twice). The other site's entry
    is still ``op_id_taken``."""
    under_rules(nodes, rules)
    sites = wire(nodes)
    leader, (victim, other) = elect(nodes)
    site = sites[victim._SyncObj__selfNode.id]
    answers: dict = {}
    propose_as(victim, site, "late-1", answers, key="first", now_ns=1)
    assert tick(nodes, lambda: "first" in answers, 15.0)
    assert answers["first"][0].get("error") != "leader_front_run", answers["first"]
    propose_as(other, sites[other._SyncObj__selfNode.id], "late-1", answers, key="foreign", now_ns=5)
    assert tick(nodes, lambda: "foreign" in answers and victim.refusals.counts().get("op_id_taken") == 1, 15.0)
    propose_as(victim, site, "late-1", answers, key="retry", now_ns=9)
    assert tick(nodes, lambda: "retry" in answers, 15.0)
    result, reason = answers["retry"]
    assert reason == FAIL_REASON.SUCCESS and result.get("error") != "leader_front_run", result
    assert result == answers["first"][0]
    applied = victim.consumer.cluster["applied_ops"]
    assert applied[cluster_state.applied_key(victim.consumer.cluster, site, "late-1")] == answers["first"][0]


def test_under_rules_3_a_front_running_leader_is_alerted_not_deposed_and_the_commands_apply(nodes):
    """Rules 3: the leader's own entry with a member's op id is stored under the leader's site; the
    member's command is decided (its own answer, never ``leader_front_run``). The member logs and
    counts it (``leader_front_runs``) but does NOT depose the leader (attacker review r14, A2: one
    entry cut the member off for 2 minutes while the third site kept following the leader): it
    keeps following it, and its next command, front-run again, applies as promptly."""
    under_rules(nodes, 3)
    sites = wire(nodes)
    leader, (victim, other) = elect(nodes)
    leader_id, site = leader._SyncObj__selfNode.id, sites[victim._SyncObj__selfNode.id]
    front_run = front_running(leader, sites[leader_id])
    answers: dict = {}
    for n, op_id in enumerate(("front-run-3", "front-run-3b"), start=1):
        propose_as(victim, site, op_id, answers)
        assert tick(nodes, lambda: op_id in answers, 15.0)
        result, reason = answers[op_id]
        assert reason == FAIL_REASON.SUCCESS and result.get("error") != "leader_front_run", result
        state = victim.consumer.cluster  # decided (noop is an unknown op) and stored under this site's own key
        assert cluster_state.applied_key(state, site, op_id) in state["applied_ops"]
        assert front_run.count(op_id) >= 1
        assert victim.refusals.counts().get("leader_front_runs") == n  # alerted, each time
        assert not victim.deposed and victim._SyncObj__raftLeader is not None \
            and victim._SyncObj__raftLeader.id == leader_id  # still following it
    assert leader._isLeader() and not other.deposed and not other.refusals.counts().get("leader_front_runs")


def test_under_rules_3_a_repeated_front_run_is_counted_each_time_and_logged_once(nodes, monkeypatch, caplog):
    """Attacker review r2, F3: a leader appending one front-run entry 300 times made the member log
    300 ERROR lines. Every entry is counted; the ERROR is said once per leader and op id, and
    repeats at most once per ``channel.LOG_EVERY_S`` (here set past the test's length)."""
    monkeypatch.setattr("replicad.consensus.channel.LOG_EVERY_S", 1e9)
    under_rules(nodes, 3)
    sites = wire(nodes)
    leader, (victim, _) = elect(nodes)
    lsite, repeats = sites[leader._SyncObj__selfNode.id], {"flood-1": 300, "flood-2": 1}
    real = leader._dispatch_message

    def dispatch(node, message):
        if isinstance(message, dict) and message.get("type") == "apply_command":
            entry = consensus.entry_call(message.get("command"))
            cmd = checkpoint.decode_command(entry[1]) if entry is not None else None
            if isinstance(cmd, dict) and cmd.get("op_id") in repeats:
                for i in range(repeats.pop(cmd["op_id"])):
                    leader.consumer.apply_command(msgpack.packb({"v": 1, "op": "noop", "op_id": cmd["op_id"],
                                                                "by": lsite, "n": i}), callback=None)
        real(node, message)
    monkeypatch.setattr(leader, "_dispatch_message", dispatch)
    caplog.set_level(logging.ERROR)
    answers: dict = {}
    for op_id, total in (("flood-1", 300), ("flood-2", 301)):
        propose_as(victim, sites[victim._SyncObj__selfNode.id], op_id, answers)
        assert tick(nodes, lambda: op_id in answers and victim.refusals.counts().get("leader_front_runs", 0) >= total,
                    60.0), victim.refusals.counts()
        assert answers[op_id][1] == FAIL_REASON.SUCCESS and answers[op_id][0].get("error") != "leader_front_run"
    lines = [r.getMessage() for r in caplog.records if "[leader_front_runs]" in r.getMessage()]
    assert victim.refusals.counts()["leader_front_runs"] == 301 and not victim.deposed
    assert len(lines) == 2 and "flood-1" in lines[0] and "flood-2" in lines[1], lines


@pytest.mark.parametrize("rules", [2, 3])
def test_a_front_run_relayed_command(nodes, rules, monkeypatch):
    """Point 20's relay path (attacker review r14, A4): the leader drops the member's forward, so
    the member relays its command through the members (and to the leader itself), and the leader
    front-runs each relayed copy. The member judges the entries as it judges front-run forwards:
    under rules 3 its command applies and it alerts without deposing; under rules 1 and 2 it
    deposes the leader at once (not after point 19's withholding threshold) and its command is
    answered ``leader_front_run`` when its entry is applied here (then proposed anew by
    ``Cluster.propose``), never with the leader's answer."""
    monkeypatch.setattr(consensus, "WITHHELD_AFTER_S", 30.0)  # the forward's withholding judged long after
    under_rules(nodes, rules)
    sites = wire(nodes)
    leader, (victim, other) = elect(nodes)
    leader_id, site = leader._SyncObj__selfNode.id, sites[victim._SyncObj__selfNode.id]
    front_run = front_running(leader, sites[leader_id], kinds=("relay_command",), withhold_forwards=True)
    answers: dict = {}
    propose_as(victim, site, "relayed-1", answers)
    assert tick(nodes, lambda: victim.refusals.counts().get("leader_front_runs"), 15.0)
    assert "relayed-1" in front_run  # the attack ran on a relayed copy
    if rules == 3:
        assert tick(nodes, lambda: "relayed-1" in answers, 15.0)
        result, reason = answers["relayed-1"]
        assert reason == FAIL_REASON.SUCCESS and result.get("error") != "leader_front_run", result
        state = victim.consumer.cluster
        assert cluster_state.applied_key(state, site, "relayed-1") in state["applied_ops"]
        assert not victim.deposed and victim._SyncObj__raftLeader.id == leader_id
    else:
        assert victim.holds_deposed(leader_id)
        assert victim.refusals.counts().get("leader_withholds") is None  # the front-run, not the withholding
        if "relayed-1" in answers:
            assert answers["relayed-1"][0]["error"] == "leader_front_run", answers
    assert not other.refusals.counts().get("leader_front_runs") and not other.refusals.counts().get("op_id_taken")


@pytest.mark.parametrize("rules, decided, answered", [(3, False, True), (2, True, True), (2, False, False)])
def test_an_own_command_a_full_state_covers_is_answered_with_this_sites_stored_answer(tmp_path, rules, decided,
                                                                                        answered):
    """A leader's dump covers this node's pending command: its entry is never applied here, so it is
    answered from the installed state, with the answer stored as this site's (rules 3: keyed by
    signer; rules 1 and 2: only when the op id is in the site's replay memory, else the answer may
    be another site's that took its op id, and the command stays pending)."""
    import pickle

    from replicad.consensus import dumpfile
    from tests.unit.consensus.test_checkpoint import EVERY, POSITION, _node

    mine = {"v": 1, "op": "noop", "op_id": "covered-1", "by": "site-a", "now_ns": 7}
    stored = {"ok": True, "stored": "as site-a's"}
    state = {**cluster_state.initial_state(rules=rules), "applied": 3}
    state["applied_ops"] = {cluster_state.applied_key(state, "site-a", "covered-1"): stored}
    if decided:
        state["seen"] = {"site-a": {"ops": {"covered-1": 7}, "floor_ns": 0}}
    points = checkpoint.CheckpointLog(EVERY, 3, state, checkpoint.state_digest(state), initial=False)
    (tmp_path / "raft.dump").write_bytes(dumpfile.frame(msgpack.packb(
        checkpoint.dump_document(points, state, None, **POSITION), use_bin_type=True)))
    node = _node(tmp_path)
    node.start()
    try:
        answers: list = []
        full = consensus._REGULAR + pickle.dumps((0, (msgpack.packb(mine),)), protocol=2)
        assert node._syncobj._note_own(full, lambda result, reason: answers.append((result, reason))) is not None
        node._deserialize_dump(str(tmp_path / "raft.dump"))  # as pysyncobj does with a dump it received
        assert answers == ([(stored, FAIL_REASON.SUCCESS)] if answered else [])
        assert (consensus.WithheldWatch.key(full) in node._syncobj._own) is not answered
    finally:
        node.close()
