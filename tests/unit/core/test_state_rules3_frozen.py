"""Rules 1..3 are decided as release 64af970 (whose RULES_MAX was 3) decided them; only a raise to 4
(or a founding under 4 of a never-founded state) is this code's.

Rules 4 keep the audit per signing site (``state.RULES_AUDIT_BY_SIGNER``, attack review R15, F2:
under rules 3 one site's flood of cheap signed commands pushed every other site's records out of
the last ``AUDIT_MAX``). A cluster still running 64af970 at some sites during a rolling upgrade
must keep one state: the same logs, a refused flood past ``AUDIT_MAX`` among them, a detection
policy change run as a due request once its cooling-off ended, and the ``rules`` and ``found`` commands that a bound of 4 would answer otherwise than 64af970's bound of 3 (rules 4
without or with bad reports, rules 5, a found carrying rules 4 in a founded cluster), run through
this checkout's ``state.apply`` and through 64af970's (its package tree from the repository's
history, in a child process of its own): every result and every state digest must be equal, under
rules 3, and under rules 2 and 1 too. Then the raise to 4, which only this code accepts, and the
same flood after it: the honest sites' records stay. Real signed commands, real state machines."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest

from replicad.consensus.checkpoint import state_digest
from replicad.core.anomaly import POLICY_DEFAULTS
from replicad.core import identity
from replicad.core import state as st
from replicad.core.identity import Trust
from tests.unit.core.frozen import assert_alike, release_tree, run_release

RELEASE = "64af970"  # RULES_MAX 3
S = 1_000_000_000
NOW = 1_700_000_000 * S
SITES = ("a", "b", "c")
KEYS = {s: identity.generate_private_key() for s in SITES}
PUBLIC = {s: (identity.public_key_raw(k),) for s, k in KEYS.items()}
TRUST = Trust(cluster_id="c", keys=PUBLIC)
MEMBERS = [{"site_id": s, "raft": f"127.0.0.1:{7000 + i}", "kind": "data",
            "keys": [identity.format_public_key(PUBLIC[s][0])]} for i, s in enumerate(SITES)]
FLOOD = st.AUDIT_MAX + 150
"""Site c's refused commands: more than rules 1..3 keep records of."""
_ids = itertools.count()
_clock = itertools.count(1)

def signed(op: str, by: str, op_id: str | None = None, **args) -> dict:
    """``by``'s command, signed with its key, stamped a little later than the last one."""
    return identity.sign_command(KEYS[by], {"v": 1, "op": op, "op_id": op_id or f"{op}-{by}-{next(_ids)}", "by": by,
                                            "now_ns": NOW + next(_clock) * 1000, "cluster": "c", **args})


def forged(op: str, victim: str, by: str = "c", **args) -> dict:
    """A command in ``victim``'s name signed with ``by``'s key (``bad_signature``, audited as the claim)."""
    return identity.sign_command(KEYS[by], {"v": 1, "op": op, "op_id": f"{op}-{victim}-{next(_ids)}", "by": victim,
                                            "now_ns": NOW + next(_clock) * 1000, "cluster": "c", **args})


def reports(rules_max: int, sites: str = "abc") -> dict:
    """Release reports of ``sites`` saying "rules 1..rules_max", signed by each."""
    return {s: [rules_max, NOW, identity.sign_release_report(KEYS[s], "c", s, rules_max, NOW)] for s in sites}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """64af970's ``replicad`` package tree, from the repository's history."""
    return release_tree(tmp_path_factory, RELEASE, 3)


def run_previous(tree: Path, log: list[dict], keys: dict | None, initial: dict) -> list[tuple[dict, bytes]]:
    """``log`` applied by 64af970, counted as the Raft node counts: each result and the state digest after it."""
    return run_release(tree, 3, log, keys, initial, counted=True, timeout=300)


def run_current(log: list[dict], trust: Trust | None, initial: dict) -> tuple[dict, list[tuple[dict, bytes]]]:
    """``log`` applied by this checkout, counted as the Raft node counts: the final state, each
    result and the digest after it."""
    s = st.initial_state(**initial)
    out = []
    for command in log:
        new, res = st.apply(s, copy.deepcopy(command), trust)
        s = {**new, "applied": s.get("applied", 0) + 1}
        out.append((res, state_digest(s)))
    return s, out


def founded(rules: int) -> list[dict]:
    """A cluster of a, b, c founded under ``rules`` (each found carrying them; 1: plain founds, as
    b976d0a founds), registered, a volume of a's."""
    carry = {} if rules == 1 else {"rules": rules}
    return [*(signed("found", s, incarnation=b"i" * 16, members=MEMBERS, **carry) for s in SITES),
            *(signed("register_site", s, site_id=s, peer_url=f"http://{s}", kind="data") for s in SITES),
            signed("add_volume", "a", volume="v", primary="a", block_size=4096, size_bytes=1 << 20, min_copies=2,
                   retention=dict(st.DEFAULT_RETENTION))]


def honest_and_flood() -> list[dict]:
    """Honest protected commands (a revocation of c requested by a and approved by b: it cools off; a
    retention change requested by a), then c's flood: vetoes of a request that does not exist
    (signed by c, refused), claims in a's name signed by c (``bad_signature``), replays of a's
    request, and a malformed command; then one more honest request."""
    request = signed("request", "a", action="set_retention", args={"volume": "v", "retention": {
        **st.DEFAULT_RETENTION, "lock_s": st.DEFAULT_RETENTION["lock_s"] + 60}}, reason="longer lock")
    out = [signed("request", "a", op_id="revoke-c", action="revoke_site",
                  args={"site_id": "c", "keys": MEMBERS[2]["keys"]}, reason="compromised"),
           request]
    out += [signed("veto", "c", request=f"r{900000 + i}") for i in range(FLOOD)]
    out += [forged("approve", "a", request="r1") for _ in range(40)]
    out += [request] * 5  # replayed (answered from the exactly-once memory: not audited)
    out += [{"v": 1, "op": "veto", "by": "a", "op_id": "junk", "now_ns": NOW}] * 5  # unsigned
    out += [signed("request", "b", action="remove_volume", args={"volume": "v"}, reason="retired")]
    return out


def rules_commands(to: int) -> list[dict]:
    """The ``rules`` and ``found`` commands a bound of 4 answers otherwise than 64af970's bound of 3
    (``to`` the version a raise would name: 4), as a hostile or honest member may send them."""
    return [
        signed("rules", "c", to=to),
        signed("rules", "c", to=to, reports={}),
        signed("rules", "c", to=to, reports="x"),
        signed("rules", "c", to=to, reports=reports(3)),  # honest reports of 64af970: 1..3
        signed("rules", "c", to=to, reports=reports(4, "c")),  # one report of three
        signed("rules", "c", to=to + 1, reports=reports(to + 1)),
        signed("rules", "b", to=3),
        signed("rules", "b", to=1),
        signed("rules", "b", to="4"),
        signed("found", "c", incarnation=b"j" * 16, members=MEMBERS, rules=4),
        signed("found", "c", incarnation=b"j" * 16, members=MEMBERS, rules=5),
        signed("found", "c", incarnation=b"j" * 16, members=MEMBERS, rules=3),
        signed("found", "b", incarnation=b"j" * 16, members=MEMBERS),
        signed("clock", "c"),
        signed("nonsense", "c"),
    ]


def detection_and_due(log: list[dict]) -> list[dict]:
    """After ``log``: a stricter detection policy requested by a (``set_detection``: it cools off),
    b's approval, then the clocks of a, b and c past the cooling-off (the request runs when the
    majority clock passes it, the other pending requests expire), and a's set_detection to the
    same policy (``changed`` false, no approval needed)."""
    policy = {**POLICY_DEFAULTS, "min_score": POLICY_DEFAULTS["min_score"] / 2}
    ask = signed("request", "a", action="set_detection", args={"volume": "v", "policy": policy}, reason="stricter")
    _, current = run_current(log + [ask], TRUST, {"members": list(SITES)})
    assert current[-1][0]["status"] == "pending", current[-1][0]
    end = NOW + TRUST.cooling_off_ns + S
    return [ask, signed("approve", "b", request=current[-1][0]["request"]),
            *(signed("clock", s, now_ns=end + i) for i, s in enumerate(SITES)),
            signed("set_detection", "a", volume="v", policy=policy, now_ns=end + 10)]


def test_rules_3_decide_as_64af970_through_a_refused_flood(tree) -> None:
    log = founded(3) + honest_and_flood() + rules_commands(4)
    log += detection_and_due(log)
    state, current = run_current(log, TRUST, {"members": list(SITES)})
    assert st.rules(state) == 3 and state.get("incarnation") and "v" in state["volumes"]
    assert len(state["audit"]) == st.AUDIT_MAX and all(r["by"] == "c" or not r["ok"] for r in state["audit"][:-30])
    asked = [r["at_ns"] for r in state["audit"] if r["op"] == "request" and r["by"] == "a"]
    assert asked == [log[-6]["now_ns"]], asked  # a's requests before the flood: pushed out under rules 3
    first = len(log) - len(rules_commands(4)) - 6
    for res, _ in current[first:first + 5]:
        assert (res["error"], res["evidence"]["max_rules"]) == ("out_of_range", 3), res
    found4 = current[first + 9][0]
    assert (found4["error"], found4["evidence"]["max_rules"]) == ("out_of_range", 3), found4
    due = [r for res, _ in current[-4:-1] for r in res.get("requests_applied") or ()]
    assert [(r["action"], r["status"]) for r in due] == [("set_detection", "applied")], current[-4:]
    assert st.detection_policy(state["volumes"]["v"])["min_score"] == POLICY_DEFAULTS["min_score"] / 2
    assert current[-1][0]["ok"] and current[-1][0]["changed"] is False, current[-1][0]
    assert_alike(log, run_previous(tree, log, PUBLIC, {"members": list(SITES)}), current)


@pytest.mark.parametrize("rules", [1, 2])
def test_rules_1_and_2_decide_as_64af970(tree, rules) -> None:
    """Founded under rules 1 (plain founds) or 2 (a lab cluster's founds carrying 2): the same log,
    the same results and digests (a raise to 4 is refused there: no complete reports)."""
    log = founded(rules) + honest_and_flood()[:300] + rules_commands(4)
    state, current = run_current(log, TRUST, {"members": list(SITES)})
    assert st.rules(state) == rules
    assert_alike(log, run_previous(tree, log, PUBLIC, {"members": list(SITES)}), current)


def test_the_raise_to_4_is_this_code_s_and_then_a_flood_pushes_out_only_its_own_records(tree) -> None:
    """Every member reports rules 1..4: the raise is accepted here (64af970 refuses it, out_of_range)
    and the kept records are attributed (accepted ones to their signer); after it, c's flood leaves
    a's and b's records in the state, and the catch-up's view of them."""
    before = founded(3) + [signed("request", "a", op_id="revoke-c", action="revoke_site",
                                  args={"site_id": "c", "keys": MEMBERS[2]["keys"]}, reason="compromised")]
    raise4 = signed("rules", "b", to=4, reports=reports(4))
    log = before + [raise4]
    state, current = run_current(log, TRUST, {"members": list(SITES)})
    previous = run_previous(tree, log, PUBLIC, {"members": list(SITES)})
    assert_alike(log[:-1], previous[:-1], current[:-1])
    assert previous[-1][0]["error"] == "out_of_range"
    assert current[-1][0] == {"ok": True, "rules": 4, "previous": 3, "changed": True, "behind": {}}
    assert st.rules(state) == 4
    kept = {(r["op"], r["by"]): r for r in state["audit"]}
    assert kept[("request", "a")]["signer"] == "a" and kept[("request", "a")]["n"] is None  # from before the raise
    assert kept[("rules", "b")]["signer"] == "b" and kept[("rules", "b")]["n"] == len(log)
    # after the raise: b approves the revocation, c floods (more than the list keeps), a requests again
    flood = [signed("approve", "b", request=current[len(before) - 1][0]["request"])]
    flood += [signed("veto", "c", request=f"r{900000 + i}") for i in range(st.AUDIT_KEPT_MAX + 300)]
    flood += [forged("approve", "a", request="r1") for _ in range(st.AUDIT_KEPT_MAX // 2)]
    flood += [signed("request", "a", action="remove_volume", args={"volume": "v"}, reason="retired")]
    s = state
    for command in flood:
        new, _ = st.apply(s, command, TRUST)
        s = {**new, "applied": s["applied"] + 1}
    audit = s["audit"]
    assert len(audit) <= st.AUDIT_KEPT_MAX
    honest = [(r["op"], r["by"]) for r in audit if r["signer"] in ("a", "b")]
    assert honest == [("found", "a"), ("found", "b"), ("register_site", "a"), ("register_site", "b"),
                      ("add_volume", "a"), ("request", "a"), ("rules", "b"), ("approve", "b"), ("request", "a")], honest
    assert all(r["ok"] for r in audit if r["signer"] in ("a", "b"))  # every accepted record of a and b kept
    dropped = s[st.AUDIT_DROPPED]
    assert "c" in dropped and set(dropped) <= {"c", ""}, dropped  # c's own share, the claims in a's name: no other
    assert dropped["c"][0] >= st.AUDIT_KEPT_MAX // 2 and st.audit_kept_since(s, len(log)) is False
    assert st.audit_kept_since(s, s["applied"]) is True
