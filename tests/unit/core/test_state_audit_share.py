"""Rules 4's kept audit (``state.audit_trim``, ``state._with_audit``; attack review R15, F2): cut by
max-min fair shares of signing sites, a flood drops only its own share's records, routine and
refused ones before notable ones; what is attributed to whom (a forged claim in an honest site's
name counts against nobody's share but the unattributed one). Properties over random lists, and the
real state machine with real signatures."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as hs

from replicad.core import state as st
from tests.unit.core.test_state_rules3_frozen import TRUST, founded, forged, run_current, signed

SHARES = ("a", "b", "c", None)


def record(i: int, signer: str | None, ok: bool, op: str) -> dict:
    return {"op": op, "by": signer or "a", "volume": None, "ok": ok, "error": None if ok else "conflict",
            "at_ns": i, "signer": signer, "n": i}


records = hs.lists(hs.tuples(hs.sampled_from(SHARES), hs.booleans(), hs.sampled_from(("request", "vouch", "veto"))),
                   max_size=300)


@settings(max_examples=300, deadline=None)
@given(records, hs.integers(min_value=0, max_value=300))
def test_the_cut_keeps_fair_shares_in_order(spec, target) -> None:
    audit = [record(i, signer, ok, op) for i, (signer, ok, op) in enumerate(spec)]
    kept, dropped = st.audit_trim(audit, target)
    assert len(kept) <= max(target, 0) or len(audit) <= target
    assert kept == [r for r in audit if r in kept]  # order kept, nothing new
    counts = {s: sum(1 for r in audit if st.audit_share(r) == s) for s in {st.audit_share(r) for r in audit}}
    left = {s: sum(1 for r in kept if st.audit_share(r) == s) for s in counts}
    if len(audit) > target:  # the level: the highest L with sum(min(count, L)) <= target; each share min(count, L)
        level = max(L for L in range(0, len(audit) + 1) if sum(min(n, L) for n in counts.values()) <= target)
        assert left == {share: min(n, level) for share, n in counts.items()}, (counts, left, level)
    else:
        assert kept == audit and dropped == {}
    for share, (n, newest) in dropped.items():
        assert counts[share] - left[share] == n
        gone = [r for r in audit if st.audit_share(r) == share and r not in kept]
        assert newest == max(r["n"] for r in gone)
        mine = [r for r in audit if st.audit_share(r) == share]
        if any(st.audit_notable(r) for r in gone):  # notable ones go only once no other one is left
            assert all(st.audit_notable(r) for r in kept if st.audit_share(r) == share)
        assert [r for r in mine if not st.audit_notable(r) and r in kept] == \
            [r for r in mine if not st.audit_notable(r)][len([r for r in gone if not st.audit_notable(r)]):]


def test_a_flood_of_each_kind_pushes_out_only_its_own_share() -> None:
    """c's own signed refused commands, then claims in a's name signed by c (bad_signature): a's and
    b's records stay; the claims count against the unattributed share, never against a's."""
    log = founded(4) + [signed("request", "a", action="remove_volume", args={"volume": "v"}, reason="x"),
                        signed("vouch", "b", n=3, hash=b"h" * 32)]
    state, _ = run_current(log, TRUST, {"members": ["a", "b", "c"]})
    honest = [(r["op"], r["by"]) for r in state["audit"] if r["signer"] in ("a", "b")]
    rng = random.Random(5)
    s = state
    for i in range(3 * st.AUDIT_KEPT_MAX):
        command = signed("veto", "c", request=f"r{10**6 + i}") if rng.random() < 0.7 else \
            forged("approve", "a", request="r1")
        new, result = st.apply(s, command, TRUST)
        assert not result["ok"]
        s = {**new, "applied": s["applied"] + 1}
    assert len(s["audit"]) <= st.AUDIT_KEPT_MAX
    assert [(r["op"], r["by"]) for r in s["audit"] if r["signer"] in ("a", "b")] == honest
    claims = [r for r in s["audit"] if r["by"] == "a" and not r["ok"]]
    assert claims and all(r["signer"] is None and r["error"] == "bad_signature" for r in claims)
    assert set(s[st.AUDIT_DROPPED]) <= {"c", ""} and "c" in s[st.AUDIT_DROPPED]
    assert all(r["n"] <= s["applied"] for r in s["audit"])


def test_rules_3_keep_the_last_audit_max_and_no_share_fields() -> None:
    state, _ = run_current(founded(3), TRUST, {"members": ["a", "b", "c"]})
    s = state
    for i in range(st.AUDIT_MAX + 10):
        s, _ = st.apply(s, signed("veto", "c", request=f"r{10**6 + i}"), TRUST)
    assert len(s["audit"]) == st.AUDIT_MAX and all(r["by"] == "c" for r in s["audit"])
    assert all("signer" not in r for r in s["audit"]) and st.AUDIT_DROPPED not in s
    assert st.audit_kept_since(s, 0) is None
