"""The exactly-once memory against a leader that front-runs another site's command (attacker review
r13, F5): the Raft leader, site c, appends a command of its own, validly signed by c, with the op id
of a command site a forwarded, then a's command unchanged. Under rules 2 (and 1) the memory is keyed
by op id alone: a's command is answered with c's stored result and never applied; that decision is
pinned against the state machine of the release before rules 3 (loaded from the repository's
history), results and state digests alike, so a site of this release and one of that release decide
a rules-2 log alike. Under rules 3 the memory is keyed by (signing site, op id): a's command applies,
and each site's retry gets its own first answer. A raise 2 -> 3 keys the answers kept from before by
the site whose replay memory holds their op id. Real signed commands, real ``state.apply``."""

from __future__ import annotations

import copy
import itertools

import pytest

from replicad.consensus.checkpoint import state_digest
from replicad.core import identity
from replicad.core import state as st
from replicad.core.identity import Trust
from tests.unit.core.frozen import release_state

PREVIOUS_RELEASE = "74f9f08"  # the last release whose RULES_MAX is 2 (state.py as of 125b4b6)
S = 1_000_000_000
NOW = 1_700_000_000 * S
SITES = ("a", "b", "c")
KEYS = {s: identity.generate_private_key() for s in SITES}
TRUST = Trust(cluster_id="c", keys={s: (identity.public_key_raw(k),) for s, k in KEYS.items()})
MEMBERS = [{"site_id": s, "raft": f"127.0.0.1:{7000 + i}", "kind": "data",
            "keys": [identity.format_public_key(identity.public_key_raw(KEYS[s]))]} for i, s in enumerate(SITES)]
_ids = itertools.count()
_clock = itertools.count(1)


def signed(op: str, by: str, op_id: str | None = None, **args) -> dict:
    """``by``'s command, signed with its key, stamped a little later than the last one."""
    return identity.sign_command(KEYS[by], {"v": 1, "op": op, "op_id": op_id or f"{op}-{by}-{next(_ids)}", "by": by,
                                            "now_ns": NOW + next(_clock) * 1000, "cluster": "c", **args})


@pytest.fixture(scope="module")
def previous():
    """The previous release's ``replicad.core.state`` (RULES_MAX 2), from the repository's history."""
    return release_state(PREVIOUS_RELEASE, rules_max=2)


def founding(rules: int) -> list[dict]:
    """The founding log of sites a, b, c under ``rules`` (found carrying them), then each registers."""
    return [*(signed("found", site, incarnation=b"i" * 16, members=MEMBERS, rules=rules) for site in SITES),
            *(signed("register_site", site, site_id=site, peer_url=f"http://{site}", kind="data") for site in SITES)]


def founded(apply, rules: int, log: list[dict] | None = None) -> dict:
    """The state after ``log`` (default: :func:`founding` under ``rules``) applied by ``apply``."""
    s = st.initial_state(members=list(SITES))
    for command in log or founding(rules):
        s, res = apply(s, copy.deepcopy(command), TRUST)
        assert res["ok"], res
    assert st.rules(s) == rules and s.get("incarnation") and len(s["sites"]) == 3, res
    return s


def front_run(victim: dict) -> list[dict]:
    """What the hostile leader c appends for ``victim`` (a command of another site): its own
    harmless re-registration, signed by c, with the victim's op id, then the victim unchanged."""
    mine = signed("register_site", "c", op_id=victim["op_id"], site_id="c", peer_url="http://c", kind="data")
    return [mine, victim]


def revoke_c() -> dict:
    keys = MEMBERS[2]["keys"]
    return signed("request", "a", action="revoke_site", args={"site_id": "c", "keys": keys}, reason="hostile")


def unmarked(state: dict) -> dict:
    """``state`` without the record of its founding under rules (``state.FOUNDED_RULES``), which
    the previous release did not write."""
    return {k: v for k, v in state.items() if k != st.FOUNDED_RULES}


def replay(apply, state: dict, log: list[dict]) -> tuple[dict, list[dict]]:
    results = []
    for command in log:
        state, res = apply(state, copy.deepcopy(command), TRUST)
        results.append(res)
    return state, results


def test_rules_2_decide_a_front_run_as_the_previous_release_did(previous) -> None:
    """Rules 2, this code and the previous release alike: a's revocation request, front-run by c, is
    answered with c's stored register_site result, no request exists; a retry of a's command gets
    the same; digests equal."""
    revoke = revoke_c()
    log = [*front_run(revoke), revoke]
    base = founding(2)
    s, res = replay(st.apply, founded(st.apply, 2, base), log)
    s_prev, res_prev = replay(previous.apply, founded(previous.apply, 2, base), log)
    assert res == res_prev and state_digest(unmarked(s)) == state_digest(s_prev)
    assert res[0]["ok"] and res[1] is not None and res[1] == res[0] and "request" not in res[1]
    assert not s.get("requests") and st.rules(s) == 2
    assert revoke["op_id"] not in ((s.get("seen") or {}).get("a") or {}).get("ops", {})  # never decided


def test_rules_3_key_the_memory_by_signer_so_the_honest_command_applies() -> None:
    """Rules 3: a's request applies (r1 pending, requested by a) although c's command with its op id
    came first; c's retry gets c's answer, a's retry gets a's, and a third site's command reusing the
    op id is decided on its own."""
    revoke = revoke_c()
    mine, _ = front_run(revoke)
    s, res = replay(st.apply, founded(st.apply, 3), [mine, revoke])
    assert res[0]["ok"] and res[1]["ok"] and res[1]["request"] == "r1" and res[1]["status"] == "pending", res
    assert s["requests"]["r1"]["by"] == "a" and s["requests"]["r1"]["action"] == "revoke_site"
    assert st.applied_key(s, "a", revoke["op_id"]) in s["applied_ops"]
    assert st.applied_key(s, "c", revoke["op_id"]) in s["applied_ops"]
    again, retried = replay(st.apply, s, [revoke, mine])
    assert retried == [res[1], res[0]] and state_digest(again) == state_digest(s)  # exactly-once, each its own answer
    b_reuse = signed("clock", "b", op_id=revoke["op_id"])
    _, (b_res,) = replay(st.apply, s, [b_reuse])
    assert b_res == {"ok": True}


def test_a_veto_front_run_under_rules_3_still_vetoes() -> None:
    """The veto of r13 F5 under rules 3: c's weakening request r1, a's veto front-run by c; a's veto
    applies (r1 vetoed) and b's approval afterwards is refused, the retention unchanged."""
    s = founded(st.apply, 3)
    s, (vol,) = replay(st.apply, s, [signed("add_volume", "a", volume="ehr", primary="a", block_size=65536,
                                            size_bytes=1 << 20, min_copies=2,
                                            retention={"keep_all_s": 86400, "hourly_s": 604800,
                                                       "daily_s": 2592000, "lock_s": 86400})])
    assert vol["ok"], vol
    weaker = {"keep_all_s": 3600, "hourly_s": 86400, "daily_s": 86400, "lock_s": 3600}
    s, (req,) = replay(st.apply, s, [signed("request", "c", action="set_retention",
                                            args={"volume": "ehr", "retention": weaker}, reason="save space")])
    assert req["ok"] and req["status"] == "pending", req
    veto = signed("veto", "a", request=req["request"])
    s, res = replay(st.apply, s, [*front_run(veto), signed("approve", "b", request=req["request"])])
    assert res[1]["ok"] and res[1]["status"] == "vetoed", res
    assert res[2]["ok"] is False and s["volumes"]["ehr"]["retention"]["lock_s"] == 86400, res[2]


def test_a_raise_to_3_keys_the_kept_answers_by_their_signer() -> None:
    """Answers kept under rules 2 stay answers across the raise: a's command applied before it,
    retried after it, gets its first answer; the front-run op id keeps c's answer (c's replay
    memory holds it, a's does not), so a's command answered from it under rules 2 and retried
    after the raise is refused as what it is: decided anew it would apply now, its op id being
    unknown to a; the raise's own answer is kept under its signer."""
    s = founded(st.apply, 2)
    clock = signed("register_site", "a", site_id="a", peer_url="http://a", kind="data")  # (clock is not kept)
    revoke = revoke_c()
    s, res = replay(st.apply, s, [clock, *front_run(revoke)])
    assert res[2] == res[1]  # rules 2: answered with c's
    at = NOW + 10_000
    reports = {site: [3, at, identity.sign_release_report(KEYS[site], "c", site, 3, at)] for site in SITES}
    raise_ = signed("rules", "b", to=3, reports=reports)
    raised, (r,) = replay(st.apply, s, [raise_])
    assert r["ok"] and r["changed"] and st.rules(raised) == 3, r
    assert all("\x00" in key for key in raised["applied_ops"])
    assert raised["applied_ops"][st.applied_key(raised, "a", clock["op_id"])] == res[0]
    assert raised["applied_ops"][st.applied_key(raised, "c", revoke["op_id"])] == res[1]
    assert raised["applied_ops"][st.applied_key(raised, "b", raise_["op_id"])] == r
    after, (clock_again, revoke_again, raise_again) = replay(st.apply, raised, [clock, revoke, raise_])
    assert clock_again == res[0] and raise_again == r
    assert revoke_again["ok"] and revoke_again["request"] == "r1"  # a's op id was never decided: decided now


def test_a_command_refused_for_its_envelope_never_answers_for_the_site_it_names(previous) -> None:
    """An entry claiming to be a's, with a's op id, refused for its envelope (an unknown key: no
    signature was checked): under rules 2 (as the previous release) it is remembered and a's
    command is answered with its refusal; under rules 3 nothing is remembered of it (neither an
    answer nor the replay memory) and a's command applies."""
    revoke = revoke_c()
    forged = {**revoke, "args": {"site_id": "c"}, "junk": 1}  # claims by a; refused before any signature check
    base = founding(2)
    s, res = replay(st.apply, founded(st.apply, 2, base), [forged, revoke])
    s_prev, res_prev = replay(previous.apply, founded(previous.apply, 2, base), [forged, revoke])
    assert res == res_prev and state_digest(unmarked(s)) == state_digest(s_prev)
    assert res[0]["error"] == "bad_request" and res[1] == res[0] and not s.get("requests")
    s, res = replay(st.apply, founded(st.apply, 3), [forged, revoke])
    assert res[0]["error"] == "bad_request" and res[1]["ok"] and res[1]["request"] == "r1", res
