"""Point 18 of :mod:`replicad.consensus.raft`: the counting rule a follower uses to depose a leader.

A follower counts an applied entry against its leader's term only when the door of an honest
leader (point 17, :meth:`RaftNode._door_check`) refuses it whoever forwarded it: not a command
map, or (signed cluster, agreed membership) a signature that does not verify under the keys the
state gives the site in ``by``. What an honest leader lets through is never counted: another
cluster's signature, a replay, an expired stamp, a key revoked meanwhile, anything before the
founding, and for :data:`DEPOSE_GRACE_ENTRIES` entries after the membership changed.
"""

from __future__ import annotations

import pickle
import time

import msgpack
import pytest

from replicad.consensus import raft
from replicad.consensus.raft import DEPOSE_AFTER, MisbehaviourCount, RaftNode, _StateConsumer, door_refusal
from replicad.core import identity
from replicad.core.identity import Signer, Trust

CLUSTER = "depose-cluster"
SITES = ("a", "b", "c")
KEYS = {s: identity.generate_private_key() for s in (*SITES, "z")}
ADDR = {s: f"127.0.0.{i + 1}:7000" for i, s in enumerate((*SITES, "z"))}
TRUST = Trust(cluster_id=CLUSTER, keys={s: (identity.public_key_raw(KEYS[s]),) for s in SITES})
MEMBERS = [{"site_id": s, "raft": ADDR[s], "kind": "data", "keys": [Signer(s, KEYS[s], CLUSTER).public_key]}
           for s in SITES]


def signed(by: str, op: str = "clock", key: str | None = None, cluster: str = CLUSTER, now_ns: int | None = None,
           **args) -> dict:
    """``op`` in ``by``'s name signed with ``key``'s key (default: ``by``'s own)."""
    command = {"v": 1, "op": op, "op_id": identity_op_id(), "by": by, "now_ns": now_ns or time.time_ns(),
               "cluster": cluster, **args}
    command["sig"] = KEYS[key or by].sign(identity.canonical_bytes(command))
    return command


_ids = iter(range(10**9))


def identity_op_id() -> str:
    return f"op-{next(_ids):08d}"


def packed(command: dict) -> bytes:
    return msgpack.packb(command, use_bin_type=True)


def founded() -> _StateConsumer:
    """A state machine whose cluster has the agreed membership ``MEMBERS`` (three found proposals)."""
    consumer = _StateConsumer(None, None, TRUST)
    for s in SITES:
        apply(consumer, signed(s, "found", incarnation=bytes(16), members=MEMBERS))
    assert consumer.cluster.get("incarnation") is not None
    return consumer


def apply(consumer: _StateConsumer, command: dict | bytes) -> dict:
    """Apply one payload as every site's Raft node does (pysyncobj's ``_doApply``: the replicated
    method's body, on this thread)."""
    payload = command if isinstance(command, bytes) else packed(command)
    return consumer.apply_command(payload, _doApply=True)


def door(node: RaftNode, payload: bytes, forwarder: str) -> str | None:
    """The reason the door of ``node`` (an honest leader) refuses ``payload`` forwarded by ``forwarder``."""
    full = b"\x00" + pickle.dumps((0, (payload,)), protocol=2)  # a pysyncobj log entry of our one method
    problem = node._door_check(full, ADDR[forwarder])
    return None if problem is None else problem[0]


def test_the_counting_rule_counts_exactly_what_an_honest_leaders_door_refuses(leader, monkeypatch):
    monkeypatch.setattr(raft, "DEPOSE_GRACE_ENTRIES", 0)  # the grace after the founding: tested below
    state = leader.view()
    unsigned = {k: v for k, v in signed("b").items() if k != "sig"}
    cases = {  # payload, the member forwarding it, the counting rule's verdict
        "valid": (packed(signed("b")), "b", None),
        "forged in b's name": (packed(signed("b", key="c")), "c", "bad_signature"),
        "forged, forwarded as b's": (packed(signed("b", key="c")), "b", "bad_signature"),
        "unsigned": (packed(unsigned), "b", "bad_signature"),
        "not a member": (packed(signed("z")), "b", "bad_signature"),
        "not msgpack": (b"\xc1\xc1", "b", "malformed"),
        "not a map": (packed([1, 2, 3]), "b", "malformed"),
        "another cluster's": (packed(signed("b", cluster="other")), "b", None),
        "expired": (packed(signed("b", now_ns=1)), "b", None),
    }
    for name, (payload, forwarder, verdict) in cases.items():
        assert door_refusal(state, payload, TRUST) == verdict, name
        at_door = door(leader, payload, forwarder)
        if verdict is None:
            assert at_door is None, name  # an honest leader appends it: never counted
        else:
            assert at_door in ("forwarded_bad_signature", "forwarded_not_own", "forwarded_malformed"), name
    # applied in the log (the counting rule judges the state before each entry)
    consumer = leader._consumer
    for name, (payload, _forwarder, verdict) in cases.items():
        result = apply(consumer, payload)
        if verdict is not None or name == "another cluster's":
            assert not result["ok"], (name, result)  # (no majority clock in this state: "expired" applies)
        assert consumer.take_door_refusal() == verdict, name
        assert consumer.take_door_refusal() is None  # taken once
    # a replay of the valid command: the door lets it through, the state machine refuses it: not counted
    replay = cases["valid"][0]
    assert door(leader, replay, "b") is None
    assert apply(consumer, replay)["error"] == "replayed"
    assert consumer.take_door_refusal() is None


def test_a_key_revoked_meanwhile_an_unsigned_cluster_and_the_founding_are_not_counted(leader):
    state = leader.view()
    raw_b = identity.public_key_raw(KEYS["b"])
    revoked = {**state, "revoked": {"b": {"keys": [raw_b], "at_ns": time.time_ns(), "by": "a"}}}
    payload = packed(signed("b"))
    assert door(leader, payload, "b") is None
    # the door refuses a revoked key, but a revocation may apply between the door and the entry
    assert door_refusal(revoked, payload, TRUST) is None
    forged = packed(signed("b", key="c"))
    unfounded = _StateConsumer(None, None, TRUST).cluster
    assert door_refusal(unfounded, forged, TRUST) is None  # before the founding the door checks no signature
    assert door_refusal(unfounded, b"\xc1", TRUST) == "malformed"
    assert door_refusal(state, forged, None) is None  # unsigned: the password is the only identity
    assert door_refusal(state, forged, Trust(cluster_id=CLUSTER)) is None
    assert door_refusal(state, b"\xc1", None) == "malformed"


def test_nothing_signed_is_counted_within_the_grace_after_a_membership_change(monkeypatch):
    monkeypatch.setattr(raft, "DEPOSE_GRACE_ENTRIES", 5)
    consumer = founded()  # the adoption of the membership is the change
    seen = []
    for _ in range(6):
        apply(consumer, signed("b", key="c"))
        seen.append(consumer.take_door_refusal())
    assert seen == [None] * 4 + ["bad_signature"] * 2, seen  # the 5 entries after the change: found, 4 forged
    apply(consumer, b"\xc1")
    assert consumer.take_door_refusal() == "malformed"
    # a full state installed from a leader, the first this process sees: no change, no grace
    fresh = _StateConsumer(None, None, TRUST)
    fresh.cluster = consumer.cluster
    fresh.track_membership(consumer.cluster, installed=True)
    apply(fresh, signed("b", key="c"))
    assert fresh.take_door_refusal() == "bad_signature"


def test_a_term_reaches_the_threshold_only_with_its_own_entries():
    count = MisbehaviourCount()
    for i in range(DEPOSE_AFTER - 1):
        count.note(7, 100 + i, "bad_signature" if i % 2 else "malformed")
        count.note(6, 50 + i, "bad_signature")
    assert count.over(7) is None and count.over(6) is None and count.over(8) is None
    count.note(7, 100 + DEPOSE_AFTER - 1, "malformed")
    evidence = count.over(7)
    assert evidence == {"count": DEPOSE_AFTER, "term": 7, "first_idx": 100, "last_idx": 100 + DEPOSE_AFTER - 1,
                        "reasons": {"malformed": DEPOSE_AFTER // 2 + 1, "bad_signature": DEPOSE_AFTER // 2 - 1}}
    assert count.over(6) is None
    for term in range(8, 8 + MisbehaviourCount.TERMS_KEPT):
        count.note(term, 1000 + term, "malformed")
    assert 7 not in count.terms and len(count.terms) == MisbehaviourCount.TERMS_KEPT
