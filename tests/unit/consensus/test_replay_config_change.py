"""Replaying the Raft log under another local config gives the same state (issue: a rotated key
or an added witness in ``[[sites]]`` made every restarted site compute other checkpoint digests,
``checkpoint_divergent``, because signatures were checked against the config's keys).

The log below is what a three-site cluster writes across a key rotation and the addition and
removal of a witness, each through an approved ``set_members``; it is replayed through
:func:`replicad.consensus.checkpoint.advance` (what the Raft node runs) under the config every
site had before, the configs after each change (a's old key retired among them), and as a site
that joined later (``limits(joining=True)``), each from the limits its Raft node pinned when its
log started: every replay ends in the same state digest, with the same result for every command.
"""

from __future__ import annotations

import msgpack

from replicad.consensus import checkpoint
from replicad.core import identity
from replicad.core import state as st
from replicad.core.identity import Signer, Trust

CLUSTER = "replay-cluster"
NOW = 1_700_000_000 * 10**9
KEYS = {s: identity.generate_private_key() for s in ("a", "b", "c", "w")}
NEW_A = identity.generate_private_key()  # site a's rotated key


def text(key) -> str:
    return Signer("x", key, CLUSTER).public_key


def member(site: str, *keys, kind: str = "data") -> dict:
    return {"site_id": site, "raft": f"10.0.0.{ord(site)}:7000", "kind": kind, "keys": sorted(text(k) for k in keys)}


M3 = [member(s, KEYS[s]) for s in "abc"]
ROTATED = [member("a", KEYS["a"], NEW_A), member("b", KEYS["b"]), member("c", KEYS["c"])]
WITH_W = ROTATED + [member("w", KEYS["w"], kind="witness")]


def trust(members: list[dict]) -> Trust:
    """The Trust a site builds from a config whose ``[[sites]]`` is ``members``."""
    return Trust(cluster_id=CLUSTER, keys={m["site_id"]: tuple(identity.parse_public_key(k) for k in m["keys"])
                                           for m in members},
                 cooling_off_ns=0, membership_cooling_off_ns=0)


class Log:
    """Signed commands, msgpack-encoded as the Raft node proposes them."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.n = 0

    def add(self, site: str, op: str, key=None, **args) -> None:
        self.n += 1
        signer = Signer(site, key or KEYS[site], CLUSTER)
        command = signer.sign({"v": 1, "op": op, "op_id": f"{site}-{self.n}", "now_ns": NOW + self.n * 10**9,
                               **args})
        self.payloads.append(msgpack.packb(command, use_bin_type=True))


def history() -> Log:
    log = Log()
    for s in "abc":
        log.add(s, "found", incarnation=s.encode() * 16, members=M3)
    for s in "abc":
        log.add(s, "register_site", site_id=s, peer_url=f"https://{s}:7443", kind="data")
        log.add(s, "clock")
    # rotation: a's new key pinned through members propose, approved by a (its entry) and c
    log.add("b", "request", action="set_members", args={"members": ROTATED}, reason="rotate a's key")
    log.add("a", "approve", request="r1")
    log.add("c", "approve", request="r1")
    log.add("a", "clock", key=NEW_A)  # a signs with its new key from now on
    # a witness added, joins, speaks
    log.add("a", "request", action="set_members", args={"members": WITH_W}, key=NEW_A, reason="add w")
    log.add("b", "approve", request="r2")
    log.add("c", "approve", request="r2")
    log.add("w", "found", incarnation=b"w" * 16, members=WITH_W)  # a joiner's found: a no-op
    log.add("w", "register_site", site_id="w", peer_url="https://w:7443", kind="witness")
    log.add("w", "clock")
    # and removed again (its own approval is not needed to remove it: every member approves)
    log.add("b", "request", action="set_members", args={"members": ROTATED}, reason="remove w")
    for s in ("a", "c", "w"):
        log.add(s, "approve", request="r3", key=NEW_A if s == "a" else None)
    log.add("w", "clock")  # no longer a member: refused the same way everywhere
    log.add("b", "vouch", n=5, hash=b"\x01" * 32)
    return log


def replay(payloads: list[bytes], limits: dict, config: list[dict]) -> tuple[dict, list[dict]]:
    state = {**st.initial_state(), "limits": limits}
    results = []
    for payload in payloads:
        state, result, _ = checkpoint.advance(state, payload, trust(config))
        results.append(result)
    return state, results


def test_replaying_under_another_config_gives_the_same_state_digest() -> None:
    log = history()
    # the limits the Raft node pinned when the log started (raft.limits): the site ids and, for the
    # founds before the founding, the keys of the config then (state.founding_keys)
    founding = st.limits(["a", "b", "c"], 3, keys=trust(M3).keys)
    base_state, base_results = replay(log.payloads, founding, M3)  # every site's config at the founding
    assert [r["ok"] for r in base_results[:3]] == [True, True, True]
    assert base_state["incarnation"]["founders"] == ["a", "b"] and "limits" not in base_state
    by_op = dict(zip(range(len(base_results)), base_results))
    assert by_op[12]["ok"], by_op[12]  # a's command signed with its new key: accepted
    assert by_op[16]["ok"] and by_op[16]["adopted"] is True  # w's found: a no-op answer
    assert by_op[16]["created"] is False
    assert by_op[17]["ok"] and by_op[18]["ok"], (by_op[17], by_op[18])  # w registers and speaks
    assert by_op[23]["ok"] is False and by_op[23]["error"] == "bad_signature"  # removed: w is no member
    assert base_state["incarnation"]["members"] == ROTATED
    digest = checkpoint.state_digest(base_state)

    for config in (ROTATED, WITH_W, [member("a", NEW_A), *M3[1:]]):  # each site's config later on
        state, results = replay(log.payloads, founding, config)
        assert results == base_results
        assert checkpoint.state_digest(state) == digest
    # a site added later replays the founding as its founders applied it
    state, results = replay(log.payloads, st.limits(joining=True, keys=trust(WITH_W).keys), WITH_W)
    assert results == base_results
    assert checkpoint.state_digest(state) == digest


def test_a_found_is_checked_against_its_own_list_and_a_forged_one_is_refused_everywhere() -> None:
    log = Log()
    impostor = identity.generate_private_key()
    forged = [member("a", impostor), *M3[1:]]
    log.add("a", "found", key=impostor, incarnation=b"x" * 16, members=M3)  # signed by a key its list does not give a
    log.add("a", "found", key=impostor, incarnation=b"y" * 16, members=forged)  # self-consistent, not configured
    log.add("b", "found", incarnation=b"b" * 16, members=M3)
    log.add("c", "found", incarnation=b"c" * 16, members=M3)
    for config in (M3, WITH_W):
        state, results = replay(log.payloads, st.limits(["a", "b", "c"], 3, keys=trust(M3).keys), config)
        assert results[0]["error"] == "bad_signature"
        # self-consistent, but not signed with the key pinned for a when the log started (r14 A1): it
        # used to count as a's vote for another list; it counts for nothing now
        assert results[1]["error"] == "bad_signature" and results[1]["evidence"]["refusal"] == st.FOUND_UNPINNED
        assert results[3]["adopted"] and state["incarnation"]["members"] == M3
        assert state["incarnation"]["founders"] == ["b", "c"]
