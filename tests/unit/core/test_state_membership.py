"""Revocation, membership changes and founding under the threat model (one compromised site,
site ``a`` here, plus one stolen admin token of another, ``b``: a majority of three).

* A revocation or ``set_members`` that a majority approved, but not every unrevoked member,
  cools off (``Trust.membership_cooling_off_ns``) and any site but a revocation's target
  can veto it meanwhile; unanimity applies it at once.
* ``set_members`` never changes a member's Raft address, kind or keys without that member's
  own approval.
* ``found`` adopts a member list only when a majority of the configured sites propose it
  identically; whoever proposes first does not matter.
"""

from __future__ import annotations

import copy
import itertools

import pytest

from replicad.core import state as st
from replicad.core.identity import Trust
from replicad.core.state import RULES_MAX

S = 1_000_000_000
NOW = 1_700_000_000 * S
MIN15 = 15 * 60 * S
POLICY = Trust(cluster_id="c", keys=None, membership_cooling_off_ns=MIN15)  # unsigned: the rules, not the keys
LAB = Trust(cluster_id="c", keys=None, membership_cooling_off_ns=0)
M3 = [{"site_id": s, "raft": f"10.0.0.{i}:7000", "kind": "data", "keys": [f"ed25519:{s}"]}
      for i, s in enumerate("abc", 1)]
_ids = itertools.count()


def cmd(op: str, by: str, now_ns: int = NOW, **args) -> dict:
    return {"v": 1, "op": op, "op_id": f"{op}-{by}-{next(_ids)}", "by": by, "now_ns": now_ns, **args}


def run(state: dict, command: dict, trust: Trust | None = POLICY) -> tuple[dict, dict]:
    """``apply``, checked pure (input untouched) and deterministic, and expected to succeed."""
    before = copy.deepcopy(state)
    new, result = st.apply(state, command, trust)
    assert state == before, "apply must never mutate its input"
    assert st.apply(copy.deepcopy(state), copy.deepcopy(command), trust) == (new, result), "apply is deterministic"
    assert result["ok"] is True, result
    return new, result


def refused(state: dict, command: dict, code: str, trust: Trust | None = POLICY) -> dict:
    new, result = st.apply(state, command, trust)
    assert result["ok"] is False and result["error"] == code, result
    return result


def founded(trust: Trust | None = POLICY) -> dict:
    """Three registered data sites a, b, c, configured as such, founded with :data:`M3`."""
    s = st.initial_state(members=["a", "b", "c"], rules=RULES_MAX)
    for site in "abc":
        s, _ = run(s, cmd("register_site", site, site_id=site, peer_url=f"http://{site}", kind="data"), trust)
    for site in "ab":
        s, res = run(s, cmd("found", site, incarnation=site.encode() * 16, members=M3), trust)
    assert res["adopted"] and s["incarnation"]["members"] == M3
    return s


def after(state: dict, ns: int, trust: Trust | None = POLICY) -> tuple[dict, list]:
    """The majority clock moved to ``NOW + ns`` (b and c report it); the requests it applied."""
    done: list = []
    for site in "bc":
        state, res = run(state, cmd("clock", site, now_ns=NOW + ns), trust)
        done += res.get("requests_applied") or []
    return state, done


def status(state: dict, req: str) -> str:
    return {r["id"]: r["status"] for r in st.list_requests(state)}[req]


def revoke(site: str) -> dict:
    return {"site_id": site, "keys": []}


# --------------------------------------------------------------------------- revocation


def test_one_site_and_a_stolen_token_cannot_revoke_an_honest_site_at_once() -> None:
    s = founded()
    s, req = run(s, cmd("request", "a", action="revoke_site", args=revoke("c")))
    assert req["status"] == "pending" and req["targets"] == ["c"]
    s, done = run(s, cmd("approve", "b", request=req["request"]))  # the stolen token of b
    assert done["status"] == "approved" and done["effective_ns"] == NOW + MIN15
    assert not st.is_revoked(s, "c")
    refused(s, cmd("veto", "c", request=req["request"]), "conflict")  # never its own revocation (nor the attacker's)
    s, vetoed = run(s, cmd("veto", "b", request=req["request"]))  # b's honest operator, in the cooling-off
    assert vetoed["status"] == "vetoed"
    s, applied = after(s, 2 * MIN15)
    assert applied == [] and not st.is_revoked(s, "c") and status(s, req["request"]) == "vetoed"


def test_a_revocation_nobody_vetoes_applies_when_the_cooling_off_ends_and_the_target_cannot_block_it() -> None:
    s = founded()
    s, req = run(s, cmd("request", "b", action="revoke_site", args=revoke("a")))
    s, done = run(s, cmd("approve", "c", request=req["request"]))
    assert done["status"] == "approved"  # a never approves its own revocation: it always cools off
    # the attacker vetoes it with b's stolen token; b's operators rotate that token and ask again
    s, _ = run(s, cmd("veto", "b", request=req["request"]))
    s, again = run(s, cmd("request", "b", action="revoke_site", args=revoke("a")))
    s, _ = run(s, cmd("approve", "c", request=again["request"]))
    for op in ("veto", "approve"):
        refused(s, cmd(op, "a", request=again["request"]), "conflict")
    s, applied = after(s, MIN15 - 1)
    assert applied == [] and not st.is_revoked(s, "a")
    s, applied = after(s, MIN15)
    assert [a["status"] for a in applied] == ["applied"] and st.is_revoked(s, "a")


def test_a_lab_policy_without_membership_cooling_off_applies_a_revocation_at_its_majority() -> None:
    s = founded(LAB)
    s, req = run(s, cmd("request", "b", action="revoke_site", args=revoke("a")), LAB)
    s, done = run(s, cmd("approve", "c", request=req["request"]), LAB)
    assert done["status"] == "applied" and st.is_revoked(s, "a")


# --------------------------------------------------------------------------- set_members


def _with(members: list[dict], site: str, **change) -> list[dict]:
    return [{**m, **change} if m["site_id"] == site else dict(m) for m in members]


def test_the_reviewed_attack_list_cools_off_and_the_dropped_member_vetoes_it() -> None:
    """a + b's stolen token: drop c and move b's Raft address (review finding 2)."""
    evil = [m for m in _with(M3, "b", raft="10.0.0.2:1") if m["site_id"] != "c"]
    s = founded()
    s, req = run(s, cmd("request", "a", action="set_members", args={"members": evil}))
    assert req["targets"] == ["b", "c"] and req["must_approve"] == ["b"] and req["waiting_for"] == ["b"]
    s, done = run(s, cmd("approve", "b", request=req["request"]))
    assert done["status"] == "approved" and s["incarnation"]["members"] == M3
    s, vetoed = run(s, cmd("veto", "c", request=req["request"]))  # a member it removes may veto it
    assert vetoed["status"] == "vetoed"
    s, _ = after(s, 2 * MIN15)
    assert s["incarnation"]["members"] == M3


def test_a_members_address_or_keys_never_change_without_its_own_approval() -> None:
    moved = _with(M3, "c", raft="10.0.0.9:7000")
    s = founded()
    s, req = run(s, cmd("request", "a", action="set_members", args={"members": moved}))
    s, done = run(s, cmd("approve", "b", request=req["request"]))
    assert done["status"] == "pending" and done["waiting_for"] == ["c"]  # a majority, but not c itself
    s, applied = after(s, 2 * MIN15)
    assert applied == [] and s["incarnation"]["members"] == M3 and status(s, req["request"]) == "pending"
    s, done = run(s, cmd("approve", "c", request=req["request"]))  # c moves on purpose: all agree
    assert done["status"] == "applied" and s["incarnation"]["members"] == moved
    # an action run without the member's approval is refused by set_members itself
    rekeyed = _with(moved, "c", keys=["ed25519:other"])
    sub = {**cmd("set_members", "a", members=rekeyed), st._APPROVED: True, st._APPROVALS: ["a", "b"]}
    with pytest.raises(st._Refusal) as refusal:
        st._op_set_members(s, sub)
    assert refusal.value.code == "approval_required" and refusal.value.evidence["waiting_for"] == ["c"]


def test_adding_a_site_cools_off_unless_every_member_approves() -> None:
    m4 = M3 + [{"site_id": "d", "raft": "10.0.0.4:7000", "kind": "witness", "keys": ["ed25519:d"]}]
    s = founded()
    s, req = run(s, cmd("request", "a", action="set_members", args={"members": m4}))
    assert req["targets"] == [] and req["waiting_for"] == []
    s, done = run(s, cmd("approve", "b", request=req["request"]))
    assert done["status"] == "approved"  # c could still veto it
    s, done = run(s, cmd("approve", "c", request=req["request"]))
    assert done["status"] == "applied" and s["incarnation"]["members"] == m4
    # the same change approved by a majority only: applied when the cooling-off ends
    s2 = founded()
    s2, req = run(s2, cmd("request", "a", action="set_members", args={"members": m4}))
    s2, _ = run(s2, cmd("approve", "b", request=req["request"]))
    s2, applied = after(s2, MIN15)
    assert [a["status"] for a in applied] == ["applied"] and s2["incarnation"]["members"] == m4


def test_removing_a_revoked_member_needs_no_approval_of_its_own() -> None:
    s = founded(LAB)
    s, req = run(s, cmd("request", "b", action="revoke_site", args=revoke("a")), LAB)
    s, _ = run(s, cmd("approve", "c", request=req["request"]), LAB)
    without_a = [m for m in M3 if m["site_id"] != "a"]
    s, req = run(s, cmd("request", "b", action="set_members", args={"members": without_a}), POLICY)
    assert req["targets"] == [] and req["voters"] == ["b", "c"]
    s, done = run(s, cmd("approve", "c", request=req["request"]), POLICY)
    assert done["status"] == "applied" and s["incarnation"]["members"] == without_a  # b and c: every voter


# --------------------------------------------------------------------------- found


def _configured() -> dict:
    s = st.initial_state(members=["a", "b", "c"], rules=RULES_MAX)
    return s


def test_the_attacker_proposing_first_does_not_fix_the_membership() -> None:
    """Review finding 3: site a starts first with an extra key pinned for c."""
    evil = _with(M3, "c", keys=["ed25519:c", "ed25519:attacker"])
    s = _configured()
    for n in range(3):  # it keeps proposing
        s, res = run(s, cmd("found", "a", incarnation=bytes([n]) * 16, members=evil))
        assert not res["adopted"] and res["needed"] == 2
    s, res = run(s, cmd("found", "b", incarnation=b"b" * 16, members=M3))
    assert not res["adopted"] and res["agreeing"] == ["b"]
    s, res = run(s, cmd("found", "c", incarnation=b"c" * 16, members=M3))
    assert res["adopted"] and res["members"] == M3 and s["incarnation"]["founders"] == ["b", "c"]
    s, res = run(s, cmd("found", "a", incarnation=b"a" * 16, members=evil))
    assert res["members"] == M3 and not res["created"]


def test_a_list_naming_only_the_attacker_is_no_majority_of_the_configured_sites() -> None:
    alone = [m for m in M3 if m["site_id"] == "a"]
    s = _configured()
    s, res = run(s, cmd("found", "a", incarnation=b"a" * 16, members=alone))
    assert not res["adopted"] and res["needed"] == 2 and "incarnation" not in s
    refused(s, cmd("found", "z", incarnation=b"z" * 16, members=M3 + [{**M3[0], "site_id": "z"}]), "conflict")


def test_honest_sites_that_disagree_found_nothing_until_one_corrects_its_config() -> None:
    typo = _with(M3, "b", raft="10.0.0.2:7001")
    s = _configured()
    s, _ = run(s, cmd("found", "b", incarnation=b"b" * 16, members=M3))
    s, res = run(s, cmd("found", "c", incarnation=b"c" * 16, members=typo))
    assert not res["adopted"] and set(s["founding"]) == {"b", "c"}
    s, res = run(s, cmd("found", "c", incarnation=b"C" * 16, members=M3))  # corrected, proposed again
    assert res["adopted"] and s["incarnation"]["founders"] == ["b", "c"]


# --------------------------------------------------------------------------- registration


RET = {"keep_all_s": 3600, "hourly_s": 86400, "daily_s": 7 * 86400, "lock_s": 600}


def _with_volume(s: dict) -> dict:
    s, _ = run(s, cmd("add_volume", "a", volume="vol", primary="a", block_size=65536, size_bytes=0,
                      min_copies=2, retention=RET))
    s, _ = after(s, 0)
    return s


def test_a_site_registering_another_is_refused_and_counted() -> None:
    """Review R2: site a re-registered b and c as witnesses (a bogus peer address): a's own
    weakening request then needed a's approval only, and b's forced promotion and b's revocation
    of a were refused ("is a witness")."""
    assert "not_self" in st.COUNTED_REFUSALS
    s = _with_volume(founded())
    for victim, kind in (("b", "witness"), ("c", "witness"), ("b", "data")):
        res = refused(s, cmd("register_site", "a", site_id=victim, peer_url="http://127.0.0.1:9", kind=kind), "not_self")
        assert res["evidence"] == {"by": "a", "site_id": victim, "op": "register_site", "kind": kind}
        s, _ = st.apply(s, cmd("register_site", "a", site_id=victim, peer_url="http://127.0.0.1:9", kind=kind), POLICY)
    assert s["sites"] == {site: {"peer_url": f"http://{site}", "kind": "data"} for site in "abc"}
    assert [r["error"] for r in s["audit"][-3:]] == ["not_self"] * 3
    assert st.approvals_needed(s, POLICY) == 2
    s, req = run(s, cmd("request", "a", action="set_retention", args={"volume": "vol", "retention": {**RET, "lock_s": 1}}))
    assert req["status"] == "pending" and req["needed"] == 2
    s, revoke_a = run(s, cmd("request", "b", action="revoke_site", args=revoke("a")))  # b is still a data site
    assert revoke_a["status"] == "pending"
    s, promoted = run(s, cmd("promote", "b", volume="vol", to="b", expected_epoch=1, force=True))
    assert s["volumes"]["vol"]["primary"] == "b" and promoted["epoch"] == 2
    # before any incarnation too (a one-site lab registers itself; nobody registers another)
    bare = st.initial_state(members=["a", "b"], rules=RULES_MAX)
    refused(bare, cmd("register_site", "a", site_id="b", peer_url="http://b", kind="data"), "not_self")


def test_a_signed_registration_naming_another_site_is_refused_after_its_signature_verifies() -> None:
    """The attacker signs with its own key (a valid signature of a member): the identity
    checks pass, the op refuses it."""
    from replicad.core import identity

    keys = {site: identity.generate_private_key() for site in "abc"}
    members = [{"site_id": site, "raft": f"10.0.0.{i}:7000", "kind": "data",
                "keys": [identity.format_public_key(identity.public_key_raw(keys[site]))]}
               for i, site in enumerate("abc", 1)]
    trust = Trust(cluster_id="c", keys={site: (identity.public_key_raw(keys[site]),) for site in "abc"})
    signed = lambda by, op, **args: identity.Signer(by, keys[by], "c").sign(cmd(op, by, **args))  # noqa: E731
    s = st.initial_state(members=["a", "b", "c"], rules=RULES_MAX)
    for site in "abc":
        s, _ = run(s, signed(site, "found", incarnation=site.encode() * 16, members=members), trust)
    for site in "abc":
        s, _ = run(s, signed(site, "register_site", site_id=site, peer_url=f"http://{site}", kind="data"), trust)
    forged = signed("a", "register_site", site_id="b", peer_url="http://127.0.0.1:9", kind="witness")
    res = refused(s, forged, "not_self", trust)
    assert "a site may only register itself" in res["message"]
    new, _ = st.apply(s, forged, trust)
    assert new["sites"] == s["sites"] and forged["op_id"] in new["seen"]["a"]["ops"]  # remembered: no replay


def test_a_members_kind_is_the_agreed_memberships_never_its_own_registration() -> None:
    """A compromised site re-registering ITSELF with another kind changes nothing: kinds (who
    holds, judges, is promoted, and how many approvals a request needs) come from the agreed
    membership; set_members changes them, with the member's own approval."""
    m4 = M3 + [{"site_id": "w", "raft": "10.0.0.4:7000", "kind": "witness", "keys": ["ed25519:w"]}]
    s = st.initial_state(members=["a", "b", "c", "w"], rules=RULES_MAX)
    for site in "abcw":
        s, _ = run(s, cmd("register_site", site, site_id=site, peer_url=f"http://{site}",
                          kind="witness" if site == "w" else "data"))
    for site in "abc":
        s, res = run(s, cmd("found", site, incarnation=site.encode() * 16, members=m4))
    assert res["adopted"]
    s = _with_volume(s)
    res = refused(s, cmd("register_site", "w", site_id="w", peer_url="http://w", kind="data"), "conflict")
    assert res["evidence"]["agreed_kind"] == "witness"
    refused(s, cmd("register_site", "b", site_id="b", peer_url="http://b", kind="witness"), "conflict")
    s, _ = run(s, cmd("register_site", "b", site_id="b", peer_url="http://b2", kind="data"))  # its address: its word
    assert s["sites"]["b"] == {"peer_url": "http://b2", "kind": "data"} and st.site_kind(s, "w") == "witness"
    refused(s, cmd("promote", "w", volume="vol", to="w", expected_epoch=1, force=True), "conflict")
    assert st.approvals_needed(s, POLICY) == 2
    # c becomes a witness through set_members: the registrations follow the agreed membership
    c_witness = _with(m4, "c", kind="witness")
    s, req = run(s, cmd("request", "a", action="set_members", args={"members": c_witness}))
    for site in "bcw":
        s, done = run(s, cmd("approve", site, request=req["request"]))
    assert done["status"] == "applied"
    assert s["sites"]["c"]["kind"] == "witness" and st.site_kind(s, "c") == "witness"
    refused(s, cmd("promote", "c", volume="vol", to="c", expected_epoch=1, force=True), "conflict")
    assert st.approvals_needed(s, POLICY) == 2  # a and b: both
    # a primary never becomes a witness that way
    a_witness = _with(c_witness, "a", kind="witness")
    sub = {**cmd("set_members", "b", members=a_witness), st._APPROVED: True, st._APPROVALS: ["a", "b", "c", "w"]}
    with pytest.raises(st._Refusal) as refusal:
        st._op_set_members(s, sub)
    assert refusal.value.code == "conflict" and refusal.value.evidence["volumes"] == ["vol"]


def test_a_registration_before_the_founding_takes_the_adopted_kind() -> None:
    s = st.initial_state(members=["a", "b", "c"], rules=RULES_MAX)
    for site in "abc":
        s, _ = run(s, cmd("register_site", site, site_id=site, peer_url=f"http://{site}",
                          kind="witness" if site == "c" else "data"))
    for site in "ab":
        s, res = run(s, cmd("found", site, incarnation=site.encode() * 16, members=M3))
    assert res["adopted"] and s["sites"]["c"]["kind"] == "data"
