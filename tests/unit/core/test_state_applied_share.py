"""Rules 4's exactly-once memory kept per signing site (``state.applied_trim``, ``state._with_applied``;
attack review R16, R-a): one site's flood of remembered commands leaves the other sites' stored
answers in place, so their retries get their first answer instead of ``replayed``; under rules 3 the
flood pushes them out as before. The real state machine, the cut alone, and its determinism."""

from __future__ import annotations

import itertools

import msgpack
import pytest

from replicad.consensus.checkpoint import state_digest
from replicad.core import state as st

NOW = 1_700_000_000_000_000_000
_ids = itertools.count()


def cmd(op: str, by: str, **args) -> dict:
    return {"v": 1, "op": op, "op_id": f"op-{next(_ids)}", "by": by, "now_ns": NOW, **args}


def register(by: str) -> dict:
    return cmd("register_site", by, site_id=by, peer_url="u", kind="data")


def flooded(rules: int) -> tuple[dict, list[tuple[dict, dict]]]:
    """A state under ``rules`` where a and b each had 5 commands remembered, then c 6,000 of its own;
    with a's and b's commands and their first answers."""
    state = st.initial_state(rules=rules)
    honest = []
    for by in ("a", "b", "c"):
        state, result = st.apply(state, register(by))
        assert result["ok"], result
    for _ in range(5):
        for by in ("a", "b"):
            command = register(by)
            state, result = st.apply(state, command)
            assert result["ok"], result
            honest.append((command, result))
    for _ in range(st.APPLIED_KEPT_MAX):
        state, result = st.apply(state, register("c"))
        assert result["ok"], result
    return state, honest


@pytest.mark.parametrize("rules", [3, st.RULES_AUDIT_BY_SIGNER])
def test_one_sites_flood_leaves_the_others_answers_only_under_rules_4(rules) -> None:
    state, honest = flooded(rules)
    keys = [st.applied_key(state, command["by"], command["op_id"]) for command, _ in honest]
    if rules >= st.RULES_AUDIT_BY_SIGNER:
        assert st.APPLIED_OPS_MAX <= len(state["applied_ops"]) <= st.APPLIED_KEPT_MAX
        assert all(key in state["applied_ops"] for key in keys)
        for command, first in honest:  # a retry gets its first answer, the state unchanged
            again, answer = st.apply(state, command)
            assert answer == first and again is state
        mine = [k for k in state["applied_ops"] if k.startswith("c\x00")]
        assert mine[-1].endswith(f"\x00op-{next(_ids) - 1}")  # c lost only its own oldest
    else:
        assert len(state["applied_ops"]) == st.APPLIED_OPS_MAX
        assert not any(key in state["applied_ops"] for key in keys)  # pushed out by c's flood


def test_the_cut_keeps_each_shares_newest_in_order() -> None:
    applied = {f"c\x00{i}": i for i in range(50)}
    applied.update({f"a\x00{i}": i for i in range(3)})
    applied.update({f"b\x00{i}": i for i in range(12)})
    applied["\x00x"] = "unsigned"
    kept = st.applied_trim(applied, 20)
    assert list(kept) == [k for k in applied if k in kept]
    # level 8: a (3) and the empty share (1) keep all; b and c keep their newest 8
    assert [k for k in kept if k.startswith("c\x00")] == [f"c\x00{i}" for i in range(42, 50)]
    assert [k for k in kept if k.startswith("b\x00")] == [f"b\x00{i}" for i in range(4, 12)]
    assert sum(k.startswith("a\x00") for k in kept) == 3 and "\x00x" in kept and len(kept) == 20
    assert st.applied_trim(kept, 20) == kept


def test_the_cut_is_the_same_at_every_site() -> None:
    """The same stream applied to two states, one of them through a msgpack round trip (a dump)
    before each command near the cut: equal digests after it."""
    stream = [register(by) for by in ("a", "b", "c")]
    stream += [register("a"), register("b")] * 3 + [register("c") for _ in range(st.APPLIED_KEPT_MAX + 10)]
    one = two = st.initial_state(rules=st.RULES_AUDIT_BY_SIGNER)
    for i, command in enumerate(stream):
        one, r1 = st.apply(one, command)
        if i > len(stream) - 30:
            two = msgpack.unpackb(msgpack.packb(two, use_bin_type=True), raw=False, strict_map_key=False)
        two, r2 = st.apply(two, command)
        assert r1 == r2
    assert len(one["applied_ops"]) < st.APPLIED_KEPT_MAX  # the cut happened
    assert state_digest(one) == state_digest(two)
