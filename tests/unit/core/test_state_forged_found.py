"""A ``found`` in another site's name must not found a cluster (attacker review r14, A1).

A ``found`` used to be self-certifying: checked against the key its own ``members`` list gives its
proposer. Site c (its own key only) signed a ``found`` "by a" with a key it made, listing that key
for a, and its own ``found`` with the same list: two identical lists of three configured sites,
adopted, with c's key recorded for a. Now a ``found`` before the founding counts only signed with
a key the founding reference pins for its proposer (``state.founding_keys``: the ``[[sites]]``
keys the Raft node pins in the initial state's ``limits`` when its log starts), for the plain
``found`` (which the frozen rules-1 machine decides) and the one carrying rules alike. Real
Ed25519 signatures throughout; honest logs are checked against release b976d0a's state machine
(loaded from the history: :func:`.test_state_rules.old`), which decides them identically.
"""

from __future__ import annotations

import copy

import pytest

from replicad.consensus.checkpoint import state_digest
from replicad.core import identity
from replicad.core import state as st
from replicad.core.identity import Trust

from .test_state_rules import old  # noqa: F401 (a fixture)

SITES = ("a", "b", "c")
KEYS = {s: identity.generate_private_key() for s in SITES}
FAKE_A = identity.generate_private_key()  # made by the attacker at site c
NEW_A = identity.generate_private_key()  # site a's key after a rotation
NOW = 1_700_000_000 * 10**9
PINNED = {s: (identity.public_key_raw(k),) for s, k in KEYS.items()}
TRUST = Trust(cluster_id="c", keys=PINNED)


def fmt(key) -> str:
    return identity.format_public_key(identity.public_key_raw(key))


def members(a_key=None) -> list[dict]:
    keys = {**KEYS, "a": a_key or KEYS["a"]}
    return [{"site_id": s, "raft": f"127.0.0.1:{7000 + i}", "kind": "data", "keys": [fmt(keys[s])]}
            for i, s in enumerate(SITES)]


TRUE, FORGED = members(), members(FAKE_A)
_n = iter(range(1, 10**6))


def found(key, by: str, listed: list[dict], **extra) -> dict:
    n = next(_n)
    return identity.sign_command(key, {"v": 1, "op": "found", "op_id": f"f{n}", "by": by, "now_ns": NOW + n,
                                       "cluster": "c", "incarnation": bytes([n % 256]) * 16, "members": listed,
                                       **extra})


def pinned_start(keys=PINNED) -> dict:
    """The initial state a Raft node of a three-site config builds: limits with the keys pinned."""
    return {**st.initial_state(), "limits": st.limits(list(SITES), 3, keys=keys)}


def replay(apply, state: dict, log: list[dict], trust: Trust = TRUST) -> tuple[dict, list[dict]]:
    s, results = copy.deepcopy(state), []
    for c in log:
        s, r = apply(s, copy.deepcopy(c), trust)
        results.append(r)
    return s, results


def attack(**extra) -> list[dict]:
    """c's forged found in a's name (c's key listed for a, signed with it), then its own."""
    return [found(FAKE_A, "a", FORGED, **extra), found(KEYS["c"], "c", FORGED, **extra)]


def honest(**extra) -> list[dict]:
    return [found(KEYS["a"], "a", TRUE, **extra), found(KEYS["b"], "b", TRUE, **extra)]


def a_keys(state: dict) -> list:
    return [m["keys"] for m in state["incarnation"]["members"] if m["site_id"] == "a"]


@pytest.mark.parametrize("extra", [{}, {"rules": st.RULES_MAX}], ids=["plain", "carrying-rules"])
@pytest.mark.parametrize("start", ["pinned-limits", "config-only"])
def test_a_found_in_another_sites_name_is_refused_and_the_honest_sites_found(extra: dict, start: str) -> None:
    """c leads first and appends both of its founds before any honest one: the forged one is
    refused (bad_signature, refusal found_unpinned: counted with the identity refusals), c's own
    counts once, and a and b found the cluster with their true keys."""
    s0 = pinned_start() if start == "pinned-limits" else st.initial_state()
    s, results = replay(st.apply, s0, attack(**extra))
    forged, own = results
    assert forged["error"] == "bad_signature" and forged["evidence"]["refusal"] == st.FOUND_UNPINNED, forged
    assert forged["evidence"]["by"] == "a" and st.counted_reason(forged) == "bad_signature"
    assert own["ok"] and not own["adopted"] and own["agreeing"] == ["c"], own
    assert s.get("incarnation") is None and set(s.get("founding") or {}) == {"c"}
    assert s["audit"][-2]["op"] == "found" and s["audit"][-2]["error"] == "bad_signature"
    s, results = replay(st.apply, s, honest(**extra))
    assert results[-1]["adopted"] and results[-1]["created"] and results[-1]["members"] == TRUE, results
    assert s["incarnation"]["founders"] == ["a", "b"] and a_keys(s) == [[fmt(KEYS["a"])]]
    if extra:
        assert st.rules(s) == st.RULES_MAX


@pytest.mark.parametrize("extra", [{}, {"rules": st.RULES_MAX}], ids=["plain", "carrying-rules"])
def test_the_forged_found_no_longer_founds_the_cluster_it_did_before(extra: dict) -> None:
    """The finding itself, inverted: without a reference (an older release's log: limits pinned
    with no keys) the two forged founds still found c's list, as they always did there; with the
    keys pinned they found nothing."""
    legacy = {**st.initial_state(), "limits": {**st.limits(list(SITES), 3), st.FOUNDING_KEYS: None}}
    s, results = replay(st.apply, legacy, attack(**extra))
    assert results[-1]["adopted"] and a_keys(s) == [[fmt(FAKE_A)]]  # the old, self-certifying rule
    s, results = replay(st.apply, pinned_start(), attack(**extra))
    assert not results[-1].get("adopted") and s.get("incarnation") is None


def test_b976d0a_founded_the_forged_list_and_decides_honest_founds_as_this_code(old) -> None:  # noqa: F811
    """The frozen rules-1 machine (b976d0a) is self-certifying: it adopts the forged list (why the
    check sits in ``state.apply``, before it). An honest signed founding gives the same results and,
    once adopted (the limits are dropped), the same state digest here and there."""
    s_old, r_old = replay(old.apply, old.initial_state(members=list(SITES)), attack())
    assert r_old[-1]["adopted"] and [m["keys"] for m in s_old["incarnation"]["members"] if m["site_id"] == "a"] \
        == [[fmt(FAKE_A)]]
    log = [*honest(), found(KEYS["c"], "c", TRUE)]
    s_old, r_old = replay(old.apply, old.initial_state(members=list(SITES)), log)
    s_new, r_new = replay(st.apply, pinned_start(), log)
    assert r_new == r_old and r_new[1]["adopted"] and st.rules(s_new) == 1
    assert state_digest(s_new) == state_digest(s_old)


def test_a_replay_after_a_key_rotation_decides_the_founding_as_it_was_decided() -> None:
    """The keys come from the limits pinned when the log started, not from today's config: a site
    replaying its log after a's key was rotated (its config pins only a's new key now) founds the
    same cluster, with the same digest; decided by today's config alone it would not."""
    log = [*attack(rules=st.RULES_MAX), *honest(rules=st.RULES_MAX)]
    rotated = Trust(cluster_id="c", keys={**PINNED, "a": (identity.public_key_raw(NEW_A),)})
    first, _ = replay(st.apply, pinned_start(), log)
    again, results = replay(st.apply, pinned_start(), log, trust=rotated)
    assert results[-1]["adopted"] and state_digest(again) == state_digest(first)
    by_config, results = replay(st.apply, st.initial_state(), log, trust=rotated)
    assert by_config.get("incarnation") is None  # what the pinned reference avoids


def test_a_joining_site_refuses_the_forged_found_and_replays_the_founding_as_the_founders() -> None:
    """A site that joins later (limits joining: no configured site list) replays the founders' log,
    c's forged found included: refused for the key its config pins for a, so it founds what the
    founders founded. A found by a site its config does not pin (a founder removed since) is
    decided as before, by the list it proposes."""
    log = [*attack(), *honest()]
    founders, _ = replay(st.apply, pinned_start(), log)
    joiner, results = replay(st.apply, {**st.initial_state(), "limits": st.limits(joining=True, keys=PINNED)}, log)
    assert results[0]["evidence"]["refusal"] == st.FOUND_UNPINNED
    assert joiner["incarnation"] == founders["incarnation"]
    without_c = {s: k for s, k in PINNED.items() if s != "c"}
    joiner, results = replay(st.apply, {**st.initial_state(), "limits": st.limits(joining=True, keys=without_c)},
                             [found(KEYS["c"], "c", TRUE), found(KEYS["a"], "a", TRUE)])
    assert results[-1]["adopted"] and joiner["incarnation"]["founders"] == ["a", "c"]


def test_after_the_founding_a_found_is_checked_against_the_agreed_membership_only() -> None:
    """Once founded, the agreed membership's keys decide (config-independent): a forged found is
    refused as before, an honest one answered with the recorded incarnation, whatever the config."""
    s, _ = replay(st.apply, pinned_start(), honest())
    rotated = Trust(cluster_id="c", keys={**PINNED, "a": (identity.public_key_raw(NEW_A),)})
    s, res = st.apply(s, found(KEYS["a"], "a", TRUE), rotated)
    assert res["ok"] and not res["created"]
    s, res = st.apply(s, found(FAKE_A, "a", FORGED), TRUST)
    assert res["error"] == "bad_signature" and "refusal" not in res["evidence"]


def test_unsigned_mode_and_malformed_founds_are_decided_as_before() -> None:
    """No keys (unsafe_unsigned): nothing to check. A found without a signature or with no ``by``
    is refused as before (missing signature / bad_request), whoever decides it."""
    unsigned = Trust(cluster_id="c", keys=None)
    s, res = st.apply(pinned_start(), found(FAKE_A, "a", FORGED), unsigned)
    assert res["ok"]
    bare = {k: v for k, v in found(KEYS["a"], "a", TRUE).items() if k != "sig"}
    _, res = st.apply(pinned_start(), bare, TRUST)
    assert res["error"] == "bad_signature" and res["evidence"]["problem"] == "missing signature"
    nobody = {k: v for k, v in bare.items() if k != "by"}
    _, res = st.apply(pinned_start(), nobody, TRUST)
    assert res["error"] == "bad_request", res


def test_limits_keep_the_keys_as_json() -> None:
    lim = st.limits(list(SITES), 3, keys=PINNED)
    assert lim[st.FOUNDING_KEYS] == {s: [fmt(KEYS[s])] for s in SITES}
    assert st.founding_keys({"limits": lim}, TRUST) == PINNED
    assert st.founding_keys({"limits": {**lim, st.FOUNDING_KEYS: None}}, TRUST) is None
    assert st.founding_keys({}, TRUST) == PINNED and st.founding_keys({}, None) is None
