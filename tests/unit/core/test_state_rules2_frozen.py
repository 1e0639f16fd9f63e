"""Rules 2 are decided as the releases whose RULES_MAX was 2 decided them (84f7f0f, and 74f9f08
whose ``found`` also carries ``rules``): during a rolling upgrade from either, one registered site
(a hostile one too) must not be able to make a site of that release and a site of this one store
different answers, and so different checkpoints. The commands that once did: ``rules`` to 4
(answered "1..3" here, "1..2" there), ``rules`` to 3 with no or bad reports (``bad_request`` or
``conflict`` here, ``out_of_range`` there) and a ``found`` carrying ``rules`` in a founded
rules-2 state (adopted here, refused for the unknown key by 84f7f0f). Only a raise this release
accepts (to 3) may differ. The same logs run through this checkout's ``state.apply`` and through
each release's (its package tree, from the repository's history, in a child process of its own):
every result and every state digest must be equal. 84f7f0f refused a ``found`` carrying
``rules`` for an unknown key, 74f9f08 decides it: a state raised to 2 (as 84f7f0f raises it, the
only rules-2 clusters in the field) is decided as 84f7f0f decides it; a state founded under rules
2 (the lab's founding knob: it records ``founded_rules``, which no 84f7f0f state has, and no
84f7f0f site ever joins it) as 74f9f08 decides it, its honest members' founds racing the
founding adopted. Real signed commands, real state machines of all three releases."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest

from replicad.consensus.checkpoint import state_digest
from replicad.core import identity
from replicad.core import state as st
from replicad.core.identity import Trust
from tests.unit.core.frozen import assert_alike, release_tree, run_release

RELEASES = ("84f7f0f", "74f9f08")  # RULES_MAX 2; 74f9f08's found carries rules (the founding under them)
S = 1_000_000_000
NOW = 1_700_000_000 * S
SITES = ("a", "b", "c")
KEYS = {s: identity.generate_private_key() for s in SITES}
PUBLIC = {s: (identity.public_key_raw(k),) for s, k in KEYS.items()}
TRUST = Trust(cluster_id="c", keys=PUBLIC)
MEMBERS = [{"site_id": s, "raft": f"127.0.0.1:{7000 + i}", "kind": "data",
            "keys": [identity.format_public_key(PUBLIC[s][0])]} for i, s in enumerate(SITES)]
_ids = itertools.count()
_clock = itertools.count(1)

def signed(op: str, by: str, op_id: str | None = None, **args) -> dict:
    """``by``'s command, signed with its key, stamped a little later than the last one."""
    return identity.sign_command(KEYS[by], {"v": 1, "op": op, "op_id": op_id or f"{op}-{by}-{next(_ids)}", "by": by,
                                            "now_ns": NOW + next(_clock) * 1000, "cluster": "c", **args})


def unsigned(op: str, by: str, op_id: str | None = None, **args) -> dict:
    """``by``'s command without a signature (a state machine run without trust)."""
    return {"v": 1, "op": op, "op_id": op_id or f"{op}-{by}-{next(_ids)}", "by": by,
            "now_ns": NOW + next(_clock) * 1000, **args}


def reports(rules_max: int, sites: str = "abc") -> dict:
    """Release reports of ``sites`` saying "rules 1..rules_max", signed by each."""
    return {s: [rules_max, NOW, identity.sign_release_report(KEYS[s], "c", s, rules_max, NOW)] for s in sites}


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """Each release's ``replicad`` package tree (:data:`RELEASES`), from the repository's history."""
    return {release: release_tree(tmp_path_factory, release, 2) for release in RELEASES}


def run_previous(tree: Path, log: list[dict], keys: dict | None, initial: dict) -> list[tuple[dict, bytes]]:
    """``log`` applied by the previous release: each result and the state digest after it."""
    return run_release(tree, 2, log, keys, initial, counted=False, timeout=120)


def run_current(log: list[dict], trust: Trust | None, initial: dict,
                unmarked: bool = False) -> tuple[dict, list[tuple[dict, bytes]]]:
    """``log`` applied by this checkout: the final state, each result and the digest after it
    (``unmarked``: the digest of the state without its ``founded_rules``, which 74f9f08 did not
    write)."""
    s = st.initial_state(**initial)
    out = []
    for command in log:
        s, res = st.apply(s, copy.deepcopy(command), trust)
        digested = {k: v for k, v in s.items() if k != st.FOUNDED_RULES} if unmarked else s
        out.append((res, state_digest(digested)))
    return s, out


def founded_under_2_signed() -> list[dict]:
    """A cluster of a, b, c founded as 84f7f0f founds it (plain found: rules 1), registered, then
    raised to rules 2 with every member's report (every release accepts that raise)."""
    return [*(signed("found", s, incarnation=b"i" * 16, members=MEMBERS) for s in SITES),
            *(signed("register_site", s, site_id=s, peer_url=f"http://{s}", kind="data") for s in SITES),
            signed("rules", "a", op_id="raise-2", to=2, reports=reports(2))]


def founded_at_2_signed() -> list[dict]:
    """A cluster of a, b, c founded under rules 2 as 74f9f08 founds it (each found carrying rules
    2: the third one comes after the adoption), registered, then a no-op ``rules`` 2 (the op id a
    later command reuses, as the raise's in :func:`founded_under_2_signed`)."""
    return [*(signed("found", s, incarnation=b"i" * 16, members=MEMBERS, rules=2) for s in SITES),
            *(signed("register_site", s, site_id=s, peer_url=f"http://{s}", kind="data") for s in SITES),
            signed("rules", "a", op_id="raise-2", to=2)]


def rules_commands() -> list[dict]:
    """The ``rules`` commands the reader's reproduction found decided differently, their kin, and
    ordinary rules-2 commands, as a hostile or an honest member may send them."""
    return [
        signed("rules", "c", to=4),
        signed("rules", "c", to=3),
        signed("rules", "c", to=3, reports={}),
        signed("rules", "c", to=3, reports="x"),
        signed("rules", "c", to=3, reports=reports(2)),  # honest reports of the previous release: 1..2
        signed("rules", "c", to=3, reports=reports(3, "c")),  # one report of three
        signed("rules", "c", to=3, reports={"a": [3, NOW, b"x" * 64], "b": [3, NOW, None], "c": "bad"}),
        signed("rules", "b", to=2),  # the version the state has: changed false
        signed("rules", "b", to=1),  # rules_lower
        signed("rules", "b", to=0),
        signed("rules", "b", to="3"),
        signed("rules", "c", op_id="raise-2", to=3, reports=reports(3)),  # another command's op id
        signed("add_volume", "a", volume="v", primary="a", block_size=4096, size_bytes=1 << 20, min_copies=2,
               retention=dict(st.DEFAULT_RETENTION)),
        signed("request", "a", action="set_retention", args={"volume": "v", "retention": dict(st.DEFAULT_RETENTION)},
               reason="tighter"),
        signed("register_site", "b", site_id="b", peer_url="http://b2", kind="data"),
        signed("vouch", "b", n=5, hash=b"h" * 32),
        signed("clock", "c"),
        signed("nonsense", "c"),
    ]


def found_commands() -> list[dict]:
    """``found`` commands in a founded state: carrying rules (3 was adopted here and is
    out_of_range in 74f9f08), and a plain one."""
    return [signed("found", "c", incarnation=b"j" * 16, members=MEMBERS, rules=3),
            signed("found", "c", incarnation=b"j" * 16, members=MEMBERS, rules=2),
            signed("found", "c", incarnation=b"j" * 16, members=MEMBERS, rules=9),
            signed("found", "c", incarnation=b"j" * 16, members=MEMBERS, rules="x"),
            signed("found", "b", incarnation=b"j" * 16, members=MEMBERS),  # plain: adopted
            signed("clock", "a")]


def test_rules_commands_under_rules_2_decided_as_both_releases(trees) -> None:
    base = founded_under_2_signed()
    log = base + rules_commands()
    state, current = run_current(log, TRUST, {"members": list(SITES)})
    assert st.rules(state) == 2 and state.get("incarnation") and "v" in state["volumes"]
    to4, to3 = current[len(base)][0], current[len(base) + 1][0]
    assert (to4["error"], to4["message"], to4["evidence"]["max_rules"]) == \
        ("out_of_range", "rules 4: this code applies rules 1..2", 2)
    assert to3["error"] == "out_of_range"
    for release in RELEASES:
        assert_alike(log, run_previous(trees[release], log, PUBLIC, {"members": list(SITES)}), current)


def test_founds_in_a_cluster_raised_to_2_decided_as_84f7f0f(trees) -> None:
    """A cluster founded and raised to 2 as 84f7f0f does it (no ``founded_rules``): every found,
    with rules or without, decided as 84f7f0f decides it, results and digests (a found carrying
    rules is refused for the key: one hostile member's rules 2 or 3 would otherwise part the
    upgraded sites from those still on 84f7f0f)."""
    base = founded_under_2_signed()
    log = base + rules_commands() + found_commands()
    state, current = run_current(log, TRUST, {"members": list(SITES)})
    assert st.rules(state) == 2 and state.get("incarnation") and st.FOUNDED_RULES not in state
    assert_alike(log, run_previous(trees["84f7f0f"], log, PUBLIC, {"members": list(SITES)}), current)
    first = len(log) - len(found_commands())
    for res, _ in current[first:first + 4]:
        assert (res["error"], res["message"], res["evidence"]) == \
            ("bad_request", "found: unknown keys ['rules'], missing keys []",
             {"op": "found", "unknown": ["rules"], "missing": []}), res
    assert current[first + 4][0]["ok"] and current[first + 4][0]["adopted"]


def test_founds_in_a_cluster_founded_at_2_decided_as_74f9f08(trees) -> None:
    """A lab cluster founded under rules 2 (each found carrying rules 2): it records the founding,
    its honest members' founds carrying rules 2 are adopted, rules 3 is out_of_range, as 74f9f08
    decides them (results; digests but for the record 74f9f08 did not write)."""
    base = founded_at_2_signed()
    log = base + rules_commands() + found_commands()
    state, current = run_current(log, TRUST, {"members": list(SITES)}, unmarked=True)
    assert st.rules(state) == 2 and state.get("incarnation") and state[st.FOUNDED_RULES] == 2
    assert current[0][0]["rules"] == 2 and current[1][0]["adopted"] and current[2][0]["adopted"]
    assert_alike(log, run_previous(trees["74f9f08"], log, PUBLIC, {"members": list(SITES)}), current)
    first = len(log) - len(found_commands())
    to3, to2 = current[first][0], current[first + 1][0]
    assert (to3["error"], to3["evidence"]["max_rules"]) == ("out_of_range", 2), to3
    assert to2["ok"] and to2["adopted"], to2


def test_a_dump_keeps_the_founding_record() -> None:
    """A Raft dump may neither add nor drop ``founded_rules`` in a founded state (it decides how
    later founds are answered under rules 2)."""
    raised, _ = run_current(founded_under_2_signed(), TRUST, {"members": list(SITES)})
    lab, _ = run_current(founded_at_2_signed(), TRUST, {"members": list(SITES)})
    assert st.dump_problems(raised, raised, NOW) == [] and st.dump_problems(lab, lab, NOW) == []
    assert st.dump_problems(raised, {**raised, st.FOUNDED_RULES: 2}, NOW) == ["founded_rules None would become 2"]
    dropped = {k: v for k, v in lab.items() if k != st.FOUNDED_RULES}
    assert st.dump_problems(lab, dropped, NOW) == ["founded_rules 2 would become None"]


def test_rules_2_unsigned_log_decided_as_both_releases(trees) -> None:
    """The reader's reproduction (no identity checks): a state made under rules 2, one site."""
    member = [{"site_id": "a", "raft": "127.0.0.1:1", "kind": "data", "keys": []}]
    log = [unsigned("found", "a", incarnation=b"\x01" * 16, members=member),
           unsigned("register_site", "a", site_id="a", peer_url="https://127.0.0.1:2", kind="data"),
           unsigned("rules", "a", to=4),
           unsigned("rules", "a", to=3),
           unsigned("rules", "z", to=3),  # not registered
           unsigned("found", "a", incarnation=b"\x02" * 16, members=member, rules=3),
           unsigned("rules", "a", to=3, reports={"a": [3, NOW, None]}),  # unsigned: raises here
           unsigned("found", "a", incarnation=b"\x02" * 16, members=member, rules=3),
           unsigned("clock", "a")]
    state, current = run_current(log, None, {"rules": 2})
    for release in RELEASES:
        assert_alike(log[:5], run_previous(trees[release], log[:5], None, {"rules": 2}), current[:5])
    previous = run_previous(trees["84f7f0f"], log, None, {"rules": 2})
    assert_alike(log[:6], previous[:6], current[:6])  # not founded under rules: the found with rules refused
    # a raise this release accepts is the one command that may differ: no release before applies rules 3
    assert previous[6][0]["error"] == "out_of_range"
    assert current[6][0]["ok"] and current[6][0]["changed"] and st.rules(state) == 3
    assert current[7][0]["ok"] and current[7][0]["adopted"]  # under rules 3 a found may carry rules 3


def test_a_raise_to_3_is_this_release_s_under_rules_2(trees) -> None:
    """Every member reports rules 1..3: the raise is accepted here (the upgrade's purpose); the
    releases before, which no member runs any more, would refuse it."""
    log = founded_under_2_signed() + [signed("rules", "b", to=3, reports=reports(3))]
    state, current = run_current(log, TRUST, {"members": list(SITES)})
    for release in RELEASES:
        previous = run_previous(trees[release], log, PUBLIC, {"members": list(SITES)})
        assert_alike(log[:-1], previous[:-1], current[:-1])
        assert previous[-1][0]["error"] == "out_of_range"
    assert current[-1][0] == {"ok": True, "rules": 3, "previous": 2, "changed": True, "behind": {}}
    assert st.rules(state) == 3
