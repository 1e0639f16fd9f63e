"""Point 20 of :mod:`replicad.consensus.raft`: a site's own signed commands relayed through the other members.

Three real hardened pysyncobj nodes on loopback, ticked here (the fixture of test_withheld.py, with
point 19's thresholds shortened: resend/relay after 1 s, depose after 2 s). The attacker is the
leader with one patch: it drops what ONE member forwards (attacker review R7 F1: that site's
verdicts and approvals never committed while the other follower kept the leader's lease, so only
the starved site deposed it). A lying member sends relays the honest ones must refuse, count, and
never pass on nor hold against an honest leader.
"""

from __future__ import annotations

import pickle
import time
import uuid

import msgpack
from pysyncobj.config import FAIL_REASON

from replicad.consensus import raft as consensus

from tests.unit.consensus.test_withheld import AFTER_S, elect, nodes, propose, tick, withheld_count  # noqa: F401


def copies(node, op_id: str) -> int:
    """Entries of ``node``'s log carrying the command with ``op_id``."""
    return sum(1 for entry in node._SyncObj__raftLog if op_id.encode() in entry[0])


def node_of(src, dst):
    """``src``'s node object for member ``dst``."""
    return next(n for n in src._SyncObj__otherNodes if n.id == dst._SyncObj__selfNode.id)


def withholding_from(leader, victim, relays: bool):
    """Patch ``leader`` to drop every command ``victim`` forwards and, with ``relays``, every relay
    carrying one of them (as R7's selective leader, extended to relays)."""
    real_dispatch, victim_id, theirs = leader._dispatch_message, victim._SyncObj__selfNode.id, set()

    def dispatch(node, message):
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "apply_command" and node.id == victim_id:
            theirs.add(message.get("command"))
            return
        if relays and kind == "relay_command" and message.get("command") in theirs:
            return
        real_dispatch(node, message)
    leader._dispatch_message = dispatch


def test_a_command_the_leader_withholds_from_one_site_commits_once_through_the_other(nodes):
    leader, (starved, other) = elect(nodes)
    term = leader.raftCurrentTerm
    withholding_from(leader, starved, relays=False)
    results = {}
    op_id = propose(starved, results)
    assert tick(nodes, lambda: results[op_id] is not None and all(copies(n, op_id) for n in nodes), 20 * AFTER_S)
    assert results[op_id] == FAIL_REASON.SUCCESS  # answered by its entry applied here (pysyncobj never replied)
    assert starved.refusals.counts().get("relay_over_budget", 0) == 0
    assert not tick(nodes, lambda: False, 2 * AFTER_S)  # resends and relays come to an end
    assert [copies(n, op_id) for n in nodes] == [1, 1, 1]  # appended once
    assert leader._isLeader() and leader.raftCurrentTerm == term
    assert all(withheld_count(f) == 0 and not f.deposed for f in (starved, other))


def test_a_leader_withholding_one_sites_commands_and_their_relays_is_deposed_by_both(nodes):
    leader, (starved, other) = elect(nodes)
    term = leader.raftCurrentTerm
    withholding_from(leader, starved, relays=True)
    results, others = {}, {}
    op_id = propose(starved, results)
    began = time.monotonic()

    def other_commits():  # the other follower's own commands keep committing meanwhile
        if leader._isLeader() and len(others) < 20:
            propose(other, others)
    assert tick(nodes, lambda: withheld_count(starved) >= 1 and withheld_count(other) >= 1, 20 * AFTER_S,
                each=other_commits), (withheld_count(starved), withheld_count(other))
    assert time.monotonic() - began >= AFTER_S
    assert any(r == FAIL_REASON.SUCCESS for r in others.values())  # it withheld one site's only
    leader_id = leader._SyncObj__selfNode.id
    assert starved.holds_deposed(leader_id) and other.holds_deposed(leader_id)
    # the two elect one of themselves above its term, and the starved site's command commits, once
    assert tick(nodes, lambda: any(f._isLeader() for f in (starved, other)) and copies(starved, op_id)
                and copies(other, op_id), 30.0)
    new_leader = next(f for f in (starved, other) if f._isLeader())
    assert new_leader.raftCurrentTerm > term
    assert not tick(nodes, lambda: False, 2 * AFTER_S)
    assert copies(starved, op_id) == copies(other, op_id) == 1


def test_a_command_arriving_directly_and_relayed_is_appended_once(nodes):
    """An honest leader whose link from one member loses its forward for a while: the relay arrives
    first, the forward (the member's resend, pysyncobj's queue) later; the second copy is not appended
    (it would be refused as replayed in that site's name) and nobody deposes anyone."""
    leader, (slow, other) = elect(nodes)
    term = leader.raftCurrentTerm
    real_dispatch, slow_id, held = leader._dispatch_message, slow._SyncObj__selfNode.id, []

    def late(node, message):  # the member's forwards arrive 2.5 resend periods late
        if isinstance(message, dict) and message.get("type") == "apply_command" and node.id == slow_id:
            held.append((time.monotonic() + 2.5 * consensus.WITHHELD_RESEND_S, node, message))
            return
        real_dispatch(node, message)
    leader._dispatch_message = late

    def release():
        now = time.monotonic()
        for item in [h for h in held if h[0] <= now]:
            held.remove(item)
            real_dispatch(item[1], item[2])

    results = {}
    op_ids = [propose(slow, results) for _ in range(3)]
    assert tick(nodes, lambda: all(r is not None for r in results.values()), 20 * AFTER_S, each=release)
    assert set(results.values()) == {FAIL_REASON.SUCCESS}
    assert not tick(nodes, lambda: False, 2 * AFTER_S, each=release) and not held  # every late forward arrived
    assert [copies(n, op_id) for n in nodes for op_id in op_ids] == [1] * 9
    assert leader._isLeader() and leader.raftCurrentTerm == term
    assert all(withheld_count(f) == 0 and not f.deposed for f in (slow, other))


def test_lying_relays_are_refused_counted_and_never_depose_an_honest_leader(nodes):
    leader, (liar, honest) = elect(nodes)
    term = leader.raftCurrentTerm
    to_honest = node_of(liar, honest)

    def relay(command):
        liar._SyncObj__transport.send(to_honest, {"type": "relay_command", "command": command})

    relay(b"\x00not a pickle")
    relay(b"\x00" + pickle.dumps((99, (b"x",)), protocol=2))  # no method of ours
    relay(b"\x00" + pickle.dumps((0, (b"\xc1",)), protocol=2))  # not msgpack
    relay(b"\x00" + b"x" * (200 * 1024))  # beyond any command
    flood = [b"\x00" + pickle.dumps((0, (msgpack.packb({"v": 1, "op": "noop", "op_id": uuid.uuid4().hex}),)),
                                    protocol=2) for _ in range(int(consensus.RELAY_CMDS_PER_S * consensus.RELAY_BURST_S)
                                                                   + 50)]
    for command in flood:  # well-formed (unsigned cluster): the honest one passes a bounded rate on
        relay(command)
    honest_counts = lambda: honest.refusals.counts()  # noqa: E731
    assert tick(nodes, lambda: honest_counts().get("relay_over_budget", 0) >= 50
                and honest_counts().get("relay_malformed", 0) >= 2 and honest_counts().get("malformed", 0) >= 1,
                10.0), honest_counts()
    assert not tick(nodes, lambda: False, 3 * AFTER_S)  # longer than the honest follower's threshold
    assert leader._isLeader() and leader.raftCurrentTerm == term
    assert withheld_count(honest) == 0 and not honest.deposed
    assert honest._SyncObj__raftLeader is not None and honest._SyncObj__raftLeader.id == leader._SyncObj__selfNode.id
    passed = sum(1 for command in flood if any(command == e[0] for e in leader._SyncObj__raftLog))
    assert 0 < passed <= consensus.RELAY_CMDS_PER_S / 2 * (consensus.RELAY_BURST_S + 10 * AFTER_S)
    assert leader.refusals.counts().get("relay_over_budget", 0) == 0  # the honest follower never overran it


def test_a_signed_clusters_relay_check_passes_on_only_another_members_valid_unapplied_command(leader):
    """What a member may hand on (signed cluster, agreed membership): a command another member's site
    signed and that is not applied yet. Forged, foreign, this site's own, another cluster's: refused
    and named; one applied already: ``known`` (dropped, not counted: an honest site relays a command
    that just committed)."""
    from tests.unit.consensus.test_depose import ADDR, apply, packed, signed

    node = leader  # not started

    def check(command: dict | bytes, sender: str = "b"):
        payload = command if isinstance(command, bytes) else packed(command)
        problem = node._relay_check(b"\x00" + pickle.dumps((0, (payload,)), protocol=2), ADDR[sender])
        return None if problem is None else problem[0]

    valid = signed("c")
    assert check(valid) is None  # site-c's command handed on by site-b
    assert check(valid, sender="c") is None  # or by site-c itself
    assert check(signed("c", key="b")) == "relay_bad_signature"  # forged in c's name
    assert check(signed("c", cluster="other")) == "relay_bad_signature"
    assert check(signed("z")) == "relay_not_member"
    assert check({**signed("c"), "by": ["c"]}) == "relay_not_member"  # not even a name (was a TypeError)
    assert check(signed("a")) == "relay_own_site"  # this site's own: never through others
    assert check(b"\xc1\xc1") == "relay_malformed" and check(packed([1, 2])) == "relay_malformed"
    assert apply(node._consumer, valid)["ok"]
    assert check(valid) == "known"  # applied: a replay would be refused in site-c's name


def test_a_follower_neither_passes_on_nor_watches_its_leaders_own_command_or_one_about_to_expire(leader):
    """Two relays a follower must drop silently (attacker review R8), each of which the leader would
    refuse, so that the follower's watch would depose an honest leader: a command of the leader's own
    site relayed by a third member (the leader refuses ``relay_own_site``), and one stamped within
    RELAY_EXPIRY_MARGIN_NS of the replay window's end (the leader may refuse it as expired before
    the watch runs out). The leader itself applies no margin: it never refuses what a follower a
    little behind it passed on."""
    from types import SimpleNamespace

    from tests.unit.consensus.test_depose import ADDR, TRUST, apply, packed, signed

    from replicad.consensus.raft import RELAY_EXPIRY_MARGIN_NS
    from replicad.core.state import quorum_now_ns

    node = leader
    for site in ("a", "b", "c"):  # registered sites report clocks: the majority clock exists
        assert apply(node._consumer, signed(site, "register_site", site_id=site, peer_url=f"https://{site}",
                                            kind="data"))["ok"]
    # the leadership this node sees (the attributes of pysyncobj's SyncObj the check reads)
    node._syncobj = SimpleNamespace(_SyncObj__raftState=consensus.pysyncobj.syncobj._RAFT_STATE.FOLLOWER,
                                    _SyncObj__raftLeader=SimpleNamespace(id=ADDR["b"]),
                                    _SyncObj__selfNode=SimpleNamespace(id=ADDR["a"]))

    def check(command: dict):
        problem = node._relay_check(b"\x00" + pickle.dumps((0, (packed(command),)), protocol=2), ADDR["c"])
        return None if problem is None else problem[0]

    quorum = quorum_now_ns(node.view())
    assert quorum is not None
    edge = quorum - TRUST.replay_window_ns
    assert check(signed("c")) is None  # another follower's fresh command: passed on and watched
    assert check(signed("b")) == "known"  # the leader's own, relayed by site-c: dropped
    assert check(signed("c", now_ns=edge + RELAY_EXPIRY_MARGIN_NS // 2)) == "known"  # about to expire
    assert check(signed("c", now_ns=edge + 2 * RELAY_EXPIRY_MARGIN_NS)) is None
    node._syncobj._SyncObj__raftState = consensus._RAFT_STATE_LEADER
    assert check(signed("c", now_ns=edge + RELAY_EXPIRY_MARGIN_NS // 2)) is None  # the leader: fresh enough
