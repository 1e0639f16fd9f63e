"""Site identities and signed commands: the canonical encoding, signatures checked by the
pure state machine (good, missing, wrong key, ``by`` mismatch, other cluster, replay,
expired), and protection-weakening requests approved by other sites."""

from __future__ import annotations

import copy
import itertools

import msgpack

import pytest

from replicad.core import errors, identity
from replicad.core import state as cluster_state
from replicad.core.identity import Signer, Trust
from replicad.core.state import RULES_MAX, apply, initial_state, list_requests

S = 1_000_000_000
NOW = 1_700_000_000 * S
ROOT = bytes(range(32))
RETENTION = {"keep_all_s": 3600, "hourly_s": 86400, "daily_s": 7 * 86400, "lock_s": 600}
CLUSTER = "test-cluster"
SITES = ("a", "b", "c")
KEYS = {s: identity.generate_private_key() for s in SITES}
SIGNERS = {s: Signer(s, KEYS[s], CLUSTER) for s in SITES}
TRUST = Trust(cluster_id=CLUSTER, keys={s: (identity.public_key_raw(KEYS[s]),) for s in SITES}, cooling_off_ns=0,
              membership_cooling_off_ns=0)  # a lab policy: the cooling-offs have their own tests (COOLING)
COOLING = Trust(cluster_id=CLUSTER, keys=TRUST.keys, cooling_off_ns=3600 * S)  # membership: the 15 min default
_ids = itertools.count()


def cmd(op: str, by: str = "a", now_ns: int = NOW, sign: bool = True, **args) -> dict:
    command = {"v": 1, "op": op, "op_id": f"op-{next(_ids)}", "by": by, "now_ns": now_ns, **args}
    return SIGNERS[by].sign(command) if sign else command


def acks(seq: int, *holders: str, epoch: int = 1, root: bytes = ROOT, volume: str = "vol", size_bytes: int = 0,
         block_size: int = 65536) -> dict:
    """The signed "stored" acknowledgements of ``holders`` for a commit_snapshot of ``size_bytes``
    (the commit must carry that size)."""
    return {h: SIGNERS[h].sign_ack(volume, epoch, seq, root, size_bytes, -(-size_bytes // block_size))
            for h in holders}


def run(state: dict, command: dict, trust: Trust = TRUST) -> tuple[dict, dict]:
    before = copy.deepcopy(state)
    new, result = apply(state, command, trust)
    assert state == before, "apply must never mutate its input"
    again = apply(copy.deepcopy(state), copy.deepcopy(command), trust)
    assert again == (new, result), "apply must be deterministic"
    return new, result


def ok(state: dict, command: dict, trust: Trust = TRUST) -> tuple[dict, dict]:
    new, result = run(state, command, trust)
    assert result["ok"] is True, result
    return new, result


def refused(state: dict, command: dict, code: str, trust: Trust = TRUST) -> dict:
    new, result = run(state, command, trust)
    assert result["ok"] is False and result["error"] == code, result
    assert errors.from_dict(result).code == code
    assert {k: v for k, v in new.items() if k not in ("audit", "applied_ops", "seen")} == \
        {k: v for k, v in state.items() if k not in ("audit", "applied_ops", "seen")}
    assert new["audit"][-1]["error"] == code and new["audit"][-1]["ok"] is False
    return result


NEW_A = identity.generate_private_key()  # site a's key once rebuilt (the membership lists it beside its first one)


def found(state: dict, sites: tuple = SITES, trust: Trust = TRUST) -> dict:
    """``state`` founded by a majority of ``sites`` (data sites keyed as :data:`KEYS`; a also with
    :data:`NEW_A`): requests and approvals are refused before the membership is agreed."""
    members = [{"site_id": s, "raft": f"127.0.0.1:{7000 + i}", "kind": "data",
                "keys": sorted(identity.format_public_key(identity.public_key_raw(k))
                               for k in ((KEYS[s], NEW_A) if s == "a" else (KEYS[s],)))} for i, s in enumerate(sites)]
    for s in sites[:len(sites) // 2 + 1]:
        state, _ = ok(state, cmd("found", by=s, incarnation=s.encode() * 16, members=members), trust)
    assert state["incarnation"]["members"] == members
    return state


@pytest.fixture
def cluster() -> dict:
    state = initial_state(members=SITES, rules=RULES_MAX)
    for s in SITES:
        state, _ = ok(state, cmd("register_site", by=s, site_id=s, peer_url=f"https://{s}:7443", kind="data"))
    state = found(state, SITES)
    state, _ = ok(state, cmd("add_volume", volume="vol", primary="a", block_size=65536, size_bytes=0,
                             min_copies=2, retention=RETENTION))
    for s in SITES:
        state, _ = ok(state, cmd("clock", by=s))
    return state


# --------------------------------------------------------------------------- canonical encoding


def test_canonical_bytes_ignore_key_order_and_the_signature_and_are_domain_separated() -> None:
    a = {"v": 1, "op": "x", "args": {"b": 1, "a": [1, {"z": b"\x00", "y": "s"}]}, "by": "a"}
    b = {"by": "a", "args": {"a": [1, {"y": "s", "z": b"\x00"}], "b": 1}, "op": "x", "v": 1, "sig": b"x" * 64}
    assert identity.canonical_bytes(a) == identity.canonical_bytes(b)
    assert identity.canonical_bytes(a).startswith(b"replicad-command-v1\x00")
    # str and bytes stay distinct; ints and strings as keys sort apart
    assert identity.canonical_bytes({"k": "ab"}) != identity.canonical_bytes({"k": b"ab"})
    assert identity.canonical_bytes({1: "x", "1": "y"}) == identity.canonical_bytes({"1": "y", 1: "x"})
    for bad in ({"k": object()}, {"k": {1.5: 1}}, ["not", "a", "map"]):
        with pytest.raises(identity.CanonicalError):
            identity.canonical_bytes(bad)  # type: ignore[arg-type]


def test_signatures_cover_every_field_and_the_domain() -> None:
    signed = SIGNERS["a"].sign({"v": 1, "op": "clock", "op_id": "o1", "now_ns": NOW})
    assert signed["by"] == "a" and signed["cluster"] == CLUSTER and len(signed["sig"]) == 64
    assert SIGNERS["a"].sign({"v": 1, "op": "clock", "op_id": "o1", "now_ns": NOW}) == signed  # deterministic
    pinned = TRUST.keys["a"]
    assert identity.signature_problem(signed, pinned) is None
    for field, value in (("now_ns", NOW + 1), ("op_id", "o2"), ("cluster", "other"), ("by", "b"), ("op", "x")):
        assert identity.signature_problem({**signed, field: value}, pinned) == "bad signature", field
    assert identity.signature_problem({**signed, "extra": 1}, pinned) == "bad signature"
    assert identity.signature_problem({k: v for k, v in signed.items() if k != "sig"}, pinned) == "missing signature"
    assert identity.signature_problem(signed, ()) == "no pinned key"
    assert identity.signature_problem(signed, TRUST.keys["b"]) == "bad signature"
    # the same bytes signed without the domain prefix are not a command signature
    raw = KEYS["a"].sign(identity.canonical_bytes(signed)[len(identity.DOMAIN):])
    assert identity.signature_problem({**signed, "sig": raw}, pinned) == "bad signature"
    with pytest.raises(ValueError, match="cannot sign a command by 'b'"):
        SIGNERS["a"].sign({"op": "clock", "by": "b"})


def test_public_key_text_form() -> None:
    raw = identity.public_key_raw(KEYS["a"])
    text = identity.format_public_key(raw)
    assert text.startswith("ed25519:") and identity.parse_public_key(text) == raw
    for bad in ("ssh-ed25519 AAAA", "ed25519:!!!", "ed25519:" + "QUJD", raw.hex()):
        with pytest.raises(ValueError):
            identity.parse_public_key(bad)
    key = identity.load_private_key_pem(identity.private_key_pem(KEYS["b"]))
    assert identity.public_key_raw(key) == identity.public_key_raw(KEYS["b"])
    with pytest.raises(ValueError, match="not an unencrypted PEM"):
        identity.load_private_key_pem(b"not a key")


# --------------------------------------------------------------------------- signatures in state.apply


def test_a_signed_command_applies(cluster: dict) -> None:
    state, res = ok(cluster, cmd("commit_snapshot", by="a", volume="vol", seq=1, epoch=1, root=ROOT,
                                 parent_seq=None, created_at_ns=NOW, holders=["a", "b"], size_bytes=0,
                                 acks=acks(1, "b"), stats={},
                                 verdict="clean"))
    assert res["seq"] == 1 and 1 in state["volumes"]["vol"]["snapshots"]


def test_missing_wrong_key_by_mismatch_and_other_cluster_are_bad_signatures(cluster: dict) -> None:
    promote = dict(volume="vol", to="b", expected_epoch=1, force=True)
    # missing signature: a site speaking without its key
    res = refused(cluster, cmd("promote", by="b", sign=False, **promote), "bad_signature")
    assert res["evidence"]["problem"] == "missing signature"
    # a's key, b's name (the attacker holds site-a's key and writes by="b")
    forged = {k: v for k, v in cmd("promote", by="a", **promote).items() if k != "sig"}
    forged["by"] = "b"
    forged["sig"] = KEYS["a"].sign(identity.canonical_bytes(forged))
    res = refused(cluster, forged, "bad_signature")
    assert res["evidence"] == {"by": "b", "op": "promote", "problem": "bad signature"}
    # a signed command whose by was changed afterwards
    changed = {**cmd("promote", by="a", **promote), "by": "b"}
    refused(cluster, changed, "bad_signature")
    # a site no config pins
    stranger = Signer("z", identity.generate_private_key(), CLUSTER)
    res = refused(cluster, stranger.sign({"v": 1, "op": "clock", "op_id": "z1", "now_ns": NOW}), "bad_signature")
    assert res["evidence"]["problem"] == "no pinned key"
    # a command signed for another cluster by a site with the same key
    elsewhere = Signer("b", KEYS["b"], "other-cluster")
    res = refused(cluster, elsewhere.sign({"v": 1, "op": "promote", "op_id": "x1", "now_ns": NOW, **promote}),
                  "bad_signature")
    assert "other-cluster" in res["message"]
    # every one audited; none remembered as an applied op id
    new, _ = run(cluster, changed)
    assert changed["op_id"] not in new["applied_ops"]


def test_a_forged_command_cannot_take_an_honest_op_id(cluster: dict) -> None:
    honest = cmd("promote", by="b", volume="vol", to="b", expected_epoch=1, force=True)
    forged = {**honest, "to": "a"}  # same op id, altered: the signature no longer holds
    state, _ = run(cluster, forged)
    state, res = ok(state, honest)
    assert res["primary"] == "b"


def test_replays_are_refused(cluster: dict) -> None:
    heartbeat = cmd("clock", by="b", now_ns=NOW + 5 * S)
    state, _ = ok(cluster, heartbeat)
    assert state["clocks"]["b"] == NOW + 5 * S
    later = cmd("clock", by="b", now_ns=NOW + 10 * S)
    state, _ = ok(state, later)
    # a captured heartbeat sent again would move b's clock back: refused
    res = refused(state, heartbeat, "replayed")
    assert res["evidence"]["op_id"] == heartbeat["op_id"]
    # a retried (or replayed) command whose result is stored gets its first answer, changing nothing
    promote = cmd("promote", by="b", volume="vol", to="b", expected_epoch=1, force=True)
    state, first = ok(state, promote)
    same, again = run(state, promote)
    assert again == first and same == state
    # once the op id left the applied results, the replay memory still refuses it
    trimmed = {**state, "applied_ops": {}}
    refused(trimmed, promote, "replayed")


def test_commands_older_than_the_window_are_expired(cluster: dict) -> None:
    window = TRUST.replay_window_ns
    old = cmd("promote", by="b", now_ns=NOW - window - S, volume="vol", to="b", expected_epoch=1, force=True)
    res = refused(cluster, old, "expired")
    assert res["evidence"]["quorum_now_ns"] == NOW
    fresh = cmd("promote", by="b", now_ns=NOW - window + S, volume="vol", to="b", expected_epoch=1, force=True)
    ok(cluster, fresh)


def test_the_replay_memory_is_bounded_and_its_floor_refuses_what_it_forgot(cluster: dict) -> None:
    state = cluster
    first = cmd("clock", by="c", now_ns=NOW + 1)
    state, _ = ok(state, first, TRUST)
    for i in range(cluster_state.SEEN_PER_SITE_MAX + 1):
        state, _ = apply(state, cmd("clock", by="c", now_ns=NOW + 2 + i), TRUST)
    seen = state["seen"]["c"]
    assert len(seen["ops"]) <= cluster_state.SEEN_PER_SITE_MAX and first["op_id"] not in seen["ops"]
    assert seen["floor_ns"] >= NOW + 1
    refused(state, first, "replayed")
    # the other sites' memories are untouched by c's flood
    assert len(state["seen"]["a"]["ops"]) < 10


def test_unsigned_lab_mode_checks_replays_but_not_signatures(cluster: dict) -> None:
    lab = Trust(cluster_id=CLUSTER, keys=None)
    heartbeat = cmd("clock", by="b", sign=False, now_ns=NOW + S)
    state, _ = ok(cluster, heartbeat, lab)
    refused(state, heartbeat, "replayed", lab)


def test_identity_refusals_never_raise_on_garbage(cluster: dict) -> None:
    for junk in (None, [], {"v": 1}, {**cmd("clock"), "sig": "text"}, {**cmd("clock"), "sig": b"\x00" * 64},
                 {**cmd("clock"), "cluster": 5}, {**cmd("clock"), "stats": {1.5: object()}}):
        new, res = apply(cluster, junk, TRUST)  # type: ignore[arg-type]
        assert res["ok"] is False and res["error"] in ("bad_request", "bad_signature"), res


# --------------------------------------------------------------------------- requests and approvals


def shorten() -> dict:
    return {"volume": "vol", "retention": {**RETENTION, "lock_s": 1, "keep_all_s": 1}}


def test_a_weakening_change_waits_for_another_site(cluster: dict) -> None:
    refused(cluster, cmd("set_retention", by="a", **shorten()), "approval_required")
    state, res = ok(cluster, cmd("request", by="a", action="set_retention", args=shorten(), reason="disk full"))
    assert res == {"ok": True, "request": "r1", "status": "pending", "approvals": ["a"], "needed": 2,
                   "expires_ns": NOW + TRUST.request_ttl_ns}
    assert state["volumes"]["vol"]["retention"] == RETENTION  # nothing changed
    [listed] = list_requests(state)
    assert listed["status"] == "pending" and listed["reason"] == "disk full"
    # the requester approving again changes nothing; a forged approval in b's name is refused
    state, again = ok(state, cmd("approve", by="a", request="r1"))
    assert again["changed"] is False and again["status"] == "pending"
    forged = {k: v for k, v in cmd("approve", by="a", request="r1").items() if k != "sig"}
    forged["by"] = "b"
    forged["sig"] = KEYS["a"].sign(identity.canonical_bytes(forged))
    refused(state, forged, "bad_signature")
    # b's own signed approval applies it
    state, done = ok(state, cmd("approve", by="b", request="r1"))
    assert done["status"] == "applied" and done["approvals"] == ["a", "b"]
    assert state["volumes"]["vol"]["retention"]["lock_s"] == 1
    assert list_requests(state)[0]["status"] == "applied"
    refused(state, cmd("approve", by="c", request="r1"), "conflict")  # not pending any more
    refused(state, cmd("approve", by="c", request="r9"), "not_found")


def test_clearing_a_suspect_verdict_is_a_request_too(cluster: dict) -> None:
    state, _ = ok(cluster, cmd("commit_snapshot", by="a", volume="vol", seq=1, epoch=1, root=ROOT, parent_seq=None,
                               created_at_ns=NOW, holders=["a", "b"], size_bytes=0,
                               acks=acks(1, "b"), stats={}, verdict="suspect"))
    clear = {"volume": "vol", "seq": 1, "verdict": "clean", "reason": "bulk import"}
    refused(state, cmd("mark_verdict", by="a", **clear), "approval_required")
    refused(state, cmd("mark_verdict", by="a", approved_by=["b"], **clear), "bad_request")
    state, res = ok(state, cmd("request", by="c", action="mark_verdict", args=clear))
    state, done = ok(state, cmd("approve", by="a", request=res["request"]))
    assert done["status"] == "applied" and state["volumes"]["vol"]["snapshots"][1]["verdict"] == "clean"


def test_requests_are_checked_when_made_and_bounded(cluster: dict) -> None:
    refused(cluster, cmd("request", action="promote", args={}), "bad_request")
    refused(cluster, cmd("request", action="set_retention", args={"volume": "vol"}), "bad_request")
    refused(cluster, cmd("request", action="set_retention", args={**shorten(), "approved_by": ["b"]}),
            "bad_request")
    refused(cluster, cmd("request", action="set_retention", args={**shorten(), "volume": "nope"}), "not_found")
    state = cluster
    for _ in range(cluster_state.REQUESTS_PENDING_PER_SITE):
        state, _ = ok(state, cmd("request", by="c", action="set_retention", args=shorten()))
    res = refused(state, cmd("request", by="c", action="set_retention", args=shorten()), "conflict")
    assert "pending requests" in res["message"]
    ok(state, cmd("request", by="b", action="set_retention", args=shorten()))  # c cannot crowd out b


def test_requests_expire_by_the_majority_clock(cluster: dict) -> None:
    state, res = ok(cluster, cmd("request", by="a", action="set_retention", args=shorten()))
    late = NOW + TRUST.request_ttl_ns + S
    for s in ("a", "c"):  # a majority's clocks pass the expiry
        state, _ = ok(state, cmd("clock", by=s, now_ns=late))
    assert list_requests(state)[0]["status"] == "expired"
    res = refused(state, cmd("approve", by="b", request="r1", now_ns=late), "conflict")
    assert "expired" in res["message"]
    assert state["volumes"]["vol"]["retention"] == RETENTION


def test_the_policy_sets_how_many_sites_approve(cluster: dict) -> None:
    three = Trust(cluster_id=CLUSTER, keys=TRUST.keys, approvals=3, cooling_off_ns=0)
    state, res = ok(cluster, cmd("request", by="a", action="set_retention", args=shorten()), three)
    assert res["needed"] == 3
    state, res = ok(state, cmd("approve", by="b", request="r1"), three)
    assert res["status"] == "pending" and state["volumes"]["vol"]["retention"] == RETENTION
    state, res = ok(state, cmd("approve", by="c", request="r1"), three)
    assert res["status"] == "applied"
    assert cluster_state.approvals_needed(cluster, Trust(cluster_id=CLUSTER, approvals=99)) == 3


def test_a_one_site_lab_applies_a_request_at_once() -> None:
    lone = Trust(cluster_id=CLUSTER, keys={"a": TRUST.keys["a"]}, cooling_off_ns=0)
    state = initial_state(members=["a"], rules=RULES_MAX)
    state, _ = ok(state, cmd("register_site", by="a", site_id="a", peer_url="https://a:1", kind="data"), lone)
    state = found(state, ("a",), lone)  # a one-site membership: one approval is a majority
    state, _ = ok(state, cmd("add_volume", volume="vol", primary="a", block_size=65536, size_bytes=0,
                             min_copies=1, retention=RETENTION), lone)
    state, res = ok(state, cmd("request", by="a", action="set_retention", args=shorten()), lone)
    assert res["status"] == "applied" and state["volumes"]["vol"]["retention"]["lock_s"] == 1


# --------------------------------------------------------------------------- cooling-off and veto


def test_an_approved_request_takes_effect_after_the_cooling_off(cluster: dict) -> None:
    state, _ = ok(cluster, cmd("request", by="a", action="set_retention", args=shorten()), COOLING)
    state, res = ok(state, cmd("approve", by="b", request="r1"), COOLING)
    assert res["status"] == "approved" and res["effective_ns"] == NOW + COOLING.cooling_off_ns
    assert state["volumes"]["vol"]["retention"] == RETENTION  # not yet
    # one site's clock running ahead does not end it: the majority clock does
    state, res = ok(state, cmd("clock", by="a", now_ns=NOW + 2 * COOLING.cooling_off_ns), COOLING)
    assert "requests_applied" not in res and state["volumes"]["vol"]["retention"] == RETENTION
    state, res = ok(state, cmd("clock", by="c", now_ns=NOW + COOLING.cooling_off_ns), COOLING)
    assert [(d["request"], d["status"]) for d in res["requests_applied"]] == [("r1", "applied")]
    assert state["volumes"]["vol"]["retention"]["lock_s"] == 1
    [done] = list_requests(state)
    assert done["status"] == "applied" and done["previous"] == RETENTION
    assert done["applied_ns"] == NOW + COOLING.cooling_off_ns
    assert state["audit"][-1]["op"] == "set_retention" and state["audit"][-1]["by"] == "a"
    refused(state, cmd("veto", by="c", request="r1"), "conflict", COOLING)  # too late


def test_any_site_vetoes_a_request_before_it_takes_effect(cluster: dict) -> None:
    state, _ = ok(cluster, cmd("request", by="a", action="set_retention", args=shorten()), COOLING)
    state, _ = ok(state, cmd("approve", by="b", request="r1"), COOLING)
    forged = {k: v for k, v in cmd("veto", by="a", request="r1").items() if k != "sig"}
    forged["by"] = "c"
    forged["sig"] = KEYS["a"].sign(identity.canonical_bytes(forged))
    refused(state, forged, "bad_signature", COOLING)
    state, res = ok(state, cmd("veto", by="c", request="r1"), COOLING)
    assert res["status"] == "vetoed" and res["vetoed_by"] == "c"
    for s in ("a", "b", "c"):
        state, res = ok(state, cmd("clock", by=s, now_ns=NOW + 2 * COOLING.cooling_off_ns), COOLING)
    assert state["volumes"]["vol"]["retention"] == RETENTION and list_requests(state)[0]["status"] == "vetoed"
    refused(state, cmd("approve", by="c", request="r1"), "conflict", COOLING)
    # a pending one can be vetoed too
    state, _ = ok(state, cmd("request", by="b", action="set_retention", args=shorten()), COOLING)
    state, res = ok(state, cmd("veto", by="a", request="r2"), COOLING)
    assert res["status"] == "vetoed"


def test_an_action_that_became_impossible_fails_at_its_time(cluster: dict) -> None:
    state, _ = ok(cluster, cmd("commit_snapshot", by="a", volume="vol", seq=1, epoch=1, root=ROOT, parent_seq=None,
                               created_at_ns=NOW, holders=["a", "b"], size_bytes=0,
                               acks=acks(1, "b"), stats={}, verdict="suspect"),
                  COOLING)
    # a new line (parent None): a child of suspect #1 would be recorded suspect by descent
    state, _ = ok(state, cmd("commit_snapshot", by="a", volume="vol", seq=2, epoch=1, root=ROOT, parent_seq=None,
                             created_at_ns=NOW, holders=["a", "b"], size_bytes=0,
                             acks=acks(2, "b"), stats={}, verdict="clean"), COOLING)
    clear = {"volume": "vol", "seq": 1, "verdict": "clean", "reason": "r"}
    state, _ = ok(state, cmd("request", by="a", action="mark_verdict", args=clear), COOLING)
    state, _ = ok(state, cmd("approve", by="b", request="r1"), COOLING)
    later = NOW + 2 * RETENTION["lock_s"] * S  # past the lock, inside the cooling-off
    # the grid keeps every snapshot for keep_all (as long as the cooling-off here): a volume
    # whose keep_all is the lock, so that #1 (not the newest of its hour) may go
    state["volumes"]["vol"]["retention"] = {**RETENTION, "keep_all_s": RETENTION["lock_s"]}
    for s in ("a", "b", "c"):
        state, _ = ok(state, cmd("clock", by=s, now_ns=later), COOLING)
    state, _ = ok(state, cmd("prune_snapshots", by="a", volume="vol", seqs=[1], now_ns=later), COOLING)
    for s in ("a", "b"):
        state, res = ok(state, cmd("clock", by=s, now_ns=NOW + COOLING.cooling_off_ns), COOLING)
    assert res["requests_applied"][0]["status"] == "failed"
    assert res["requests_applied"][0]["result"]["error"] == "not_found"
    assert list_requests(state)[0]["status"] == "failed"


def test_a_sites_own_longer_cooling_off_keeps_the_stronger_policy(cluster: dict) -> None:
    state, _ = ok(cluster, cmd("request", by="a", action="set_retention", args=shorten()))
    state, _ = ok(state, cmd("approve", by="b", request="r1"))
    assert state["volumes"]["vol"]["retention"]["lock_s"] == 1
    hour = 3600 * S
    local = cluster_state.locally_effective_retention(state, "vol", NOW + hour // 2, hour)
    assert local == {**RETENTION, "hourly_s": RETENTION["hourly_s"], "daily_s": RETENTION["daily_s"]}
    assert cluster_state.locally_effective_retention(state, "vol", NOW + hour, hour)["lock_s"] == 1
    assert cluster_state.locally_effective_retention(state, "vol", NOW, 0)["lock_s"] == 1


# --------------------------------------------------------------------------- revocation


def test_a_majority_revokes_a_sites_key_and_its_commands_are_refused(cluster: dict) -> None:
    refused(cluster, cmd("revoke_site", by="b", **revoking("a")), "approval_required")
    state, _ = ok(cluster, cmd("request", by="a", action="set_retention", args=shorten()), COOLING)
    state, res = ok(state, cmd("request", by="b", action="revoke_site", args=revoking("a")), COOLING)
    assert res["needed"] == 2 and res["status"] == "pending"
    forged = {k: v for k, v in cmd("approve", by="a", request=res["request"]).items() if k != "sig"}
    forged["by"] = "c"
    forged["sig"] = KEYS["a"].sign(identity.canonical_bytes(forged))
    refused(state, forged, "bad_signature", COOLING)
    state, done = ok(state, cmd("approve", by="c", request=res["request"]), COOLING)
    # a revocation cools off (it used to apply at once, which let one site plus one stolen token
    # revoke an honest site): the revoked site cannot veto it, and it applies when it ends
    assert done["status"] == "approved" and done["effective_ns"] == NOW + COOLING.membership_cooling_off_ns
    refused(state, cmd("veto", by="a", request=res["request"]), "conflict", COOLING)
    for s in ("b", "c"):
        state, tick = ok(state, cmd("clock", by=s, now_ns=NOW + COOLING.membership_cooling_off_ns), COOLING)
    assert tick["requests_applied"][0]["status"] == "applied"
    assert state["revoked"]["a"]["keys"] == list(TRUST.keys["a"])
    assert {r["id"]: r["status"] for r in list_requests(state)}["r1"] == "vetoed"  # a's own request cancelled
    res = refused(state, cmd("clock", by="a"), "revoked", COOLING)
    assert res["evidence"]["problem"] == "revoked key"
    refused(state, cmd("promote", by="a", volume="vol", to="a", expected_epoch=1, force=True), "revoked", COOLING)
    ok(state, cmd("clock", by="b"), COOLING)  # the others go on
    # the site, rebuilt with a new key pinned in every config, speaks again; the old key stays refused
    new_key = NEW_A
    rotated = Trust(cluster_id=CLUSTER, keys={**TRUST.keys, "a": (*TRUST.keys["a"], identity.public_key_raw(new_key))},
                    cooling_off_ns=COOLING.cooling_off_ns)
    fresh = Signer("a", new_key, CLUSTER).sign({"v": 1, "op": "clock", "op_id": "new-1", "now_ns": NOW})
    ok(state, fresh, rotated)
    refused(state, cmd("clock", by="a"), "revoked", rotated)


def test_revocation_needs_a_majority_of_all_sites_whatever_the_policy(cluster: dict) -> None:
    one = Trust(cluster_id=CLUSTER, keys=TRUST.keys, approvals=1, cooling_off_ns=0)
    state, res = ok(cluster, cmd("request", by="a", action="revoke_site", args=revoking("b")), one)
    assert res["status"] == "pending" and res["needed"] == 2
    refused(state, cmd("request", by="a", action="revoke_site", args={"site_id": "zz", "keys": []}), "bad_request", one)
    refused(state, cmd("request", by="a", action="revoke_site", args={**revoking("b"), "site_id": "zz"}), "not_found",
            one)


def revoking(site: str, trust: Trust = TRUST) -> dict:
    """The args of a ``revoke_site`` request: the site and the keys ``trust`` pins for it."""
    return {"site_id": site, "keys": sorted(identity.format_public_key(k) for k in trust.keys[site])}


def test_revocation_revokes_the_keys_named_in_the_request_whatever_the_applying_config_pins(cluster: dict) -> None:
    """Replaying the log after the rebuilt site's new key was pinned (or at a site whose
    config differs) revokes exactly the keys the proposer named: the new key speaks."""
    new_key = NEW_A
    rotated = Trust(cluster_id=CLUSTER, keys={**TRUST.keys, "a": (*TRUST.keys["a"], identity.public_key_raw(new_key))},
                    cooling_off_ns=0, membership_cooling_off_ns=0)
    log = [cmd("request", by="b", action="revoke_site", args=revoking("a"))]
    log.append(cmd("approve", by="c", request="r1"))
    states = {}
    for name, trust in (("old config", TRUST), ("new config", rotated)):
        state = cluster
        for command in log:
            state, res = ok(state, command, trust)
        assert res["status"] == "applied", res
        states[name] = state
    assert states["old config"]["revoked"] == states["new config"]["revoked"]
    assert states["new config"]["revoked"]["a"]["keys"] == list(TRUST.keys["a"])
    fresh = Signer("a", new_key, CLUSTER).sign({"v": 1, "op": "clock", "op_id": "new-1", "now_ns": NOW + 1})
    ok(states["new config"], fresh, rotated)
    refused(states["new config"], cmd("clock", by="a", now_ns=NOW + 2), "revoked", rotated)
    # malformed or missing key lists are refused when the request is made
    for keys in ([], ["ed25519:nope"], "ed25519:x", [identity.format_public_key(TRUST.keys["a"][0])] * 2):
        refused(cluster, cmd("request", by="b", action="revoke_site", args={"site_id": "a", "keys": keys}),
                "bad_request")
    refused(cluster, cmd("request", by="b", action="revoke_site", args={"site_id": "a"}), "bad_request")


# --------------------------------------------------------------------------- signed "stored" acknowledgements


def test_stored_acknowledgements_are_domain_separated_and_cover_every_field() -> None:
    msg = identity.ack_bytes(CLUSTER, "vol", 1, 2, ROOT, 4096, 1)
    assert msg.startswith(b"replicad-stored-ack-v2\x00") and not msg.startswith(identity.DOMAIN)
    sig = SIGNERS["b"].sign_ack("vol", 1, 2, ROOT, 4096, 1)
    pinned = TRUST.keys["b"]
    good = (CLUSTER, "vol", 1, 2, ROOT, 4096, 1)
    assert identity.ack_problem(sig, pinned, *good) is None
    for other in ((CLUSTER + "x", "vol", 1, 2, ROOT, 4096, 1), (CLUSTER, "vol2", 1, 2, ROOT, 4096, 1),
                  (CLUSTER, "vol", 2, 2, ROOT, 4096, 1), (CLUSTER, "vol", 1, 3, ROOT, 4096, 1),
                  (CLUSTER, "vol", 1, 2, bytes(32), 4096, 1),
                  (CLUSTER, "vol", 1, 2, ROOT, 2**50, 1), (CLUSTER, "vol", 1, 2, ROOT, 4096, 2)):  # size, blocks
        assert identity.ack_problem(sig, pinned, *other) == "bad acknowledgement"
    assert identity.ack_problem(sig, TRUST.keys["a"], *good) == "bad acknowledgement"
    assert identity.ack_problem(None, pinned, *good) == "missing acknowledgement"
    assert identity.ack_problem(sig, (), *good) == "no pinned key"
    assert identity.ack_problem(sig, pinned, CLUSTER, "vol", 1, 2**64, ROOT, 4096, 1) == "not canonical"
    assert identity.ack_problem(sig, pinned, CLUSTER, "vol", 1, 2, ROOT, None, None) == "not canonical"  # no size
    assert identity.ack_problem(sig, pinned, *good, revoked=set(pinned)) == "revoked key"
    # a version 1 acknowledgement (no size, its own domain) is refused
    v1 = KEYS["b"].sign(b"replicad-stored-ack-v1\x00" + msgpack.packb([CLUSTER, "vol", 1, 2, ROOT], use_bin_type=True))
    assert identity.ack_problem(v1, pinned, *good) == "bad acknowledgement"
    # a command signature is never an acknowledgement, nor the reverse
    command = SIGNERS["b"].sign({"v": 1, "op": "clock", "op_id": "x", "now_ns": NOW})
    assert identity.ack_problem(command["sig"], pinned, *good) == "bad acknowledgement"
    assert identity.signature_problem({**command, "sig": sig}, pinned) == "bad signature"


def test_a_commit_naming_a_holder_without_its_signed_acknowledgement_is_refused(cluster: dict) -> None:
    """The attack: the primary (site a, its own key) names b as holder of a root b never
    stored. Each way of faking b's word is ``bad_ack``, audited, and counted as a security refusal."""
    def commit(**over) -> dict:
        args = dict(volume="vol", seq=1, epoch=1, root=ROOT, parent_seq=None, created_at_ns=NOW,
                    holders=["a", "b"], stats={}, verdict="clean", size_bytes=0)
        args.update(over)
        return cmd("commit_snapshot", by="a", **args)
    assert "bad_ack" in cluster_state.COUNTED_REFUSALS and "bad_ack" not in cluster_state.IDENTITY_REFUSALS
    for bad in ({}, {"b": b"\x00" * 64}, {"b": SIGNERS["a"].sign_ack("vol", 1, 1, ROOT, 0, 0)},   # a's key, b's name
                {"b": SIGNERS["b"].sign_ack("vol", 1, 2, ROOT, 0, 0)},                             # another seq
                {"b": SIGNERS["b"].sign_ack("vol", 1, 1, bytes(32), 0, 0)},                        # another root
                {"b": Signer("b", KEYS["b"], "other").sign_ack("vol", 1, 1, ROOT, 0, 0)}):        # another cluster
        res = refused(cluster, commit(acks=bad), "bad_ack")
        assert res["evidence"]["holder"] == "b" and res["evidence"]["by"] == "a"
        assert isinstance(errors.from_dict(res), errors.BadAckError)
    refused(cluster, commit(acks={"c": SIGNERS["c"].sign_ack("vol", 1, 1, ROOT, 0, 0)}), "bad_request")  # not a holder
    refused(cluster, commit(acks=["b"]), "bad_request")
    # every other holder must vouch; the proposer need not
    refused(cluster, commit(holders=["a", "b", "c"], acks=acks(1, "b")), "bad_ack")
    ok(cluster, commit(holders=["a", "b", "c"], acks=acks(1, "b", "c")))
    ok(cluster, commit(acks=acks(1, "b")))
    # a revoked holder's acknowledgement does not count
    revoked = {**cluster, "revoked": {"b": {"keys": list(TRUST.keys["b"]), "at_ns": NOW, "by": "a"}}}
    assert refused(revoked, commit(acks=acks(1, "b")), "bad_ack")["evidence"]["problem"] == "revoked key"
    # unsigned lab mode: acknowledgements are not checked, like signatures
    unsigned = Trust(cluster_id=CLUSTER, keys=None, cooling_off_ns=0)
    ok(cluster, cmd("commit_snapshot", by="a", sign=False, volume="vol", seq=1, epoch=1, root=ROOT, parent_seq=None,
                    created_at_ns=NOW, holders=["a", "b"], stats={}, verdict="clean"), unsigned)
    # ... but a revoked holder never counts as a copy, signed or not
    refused(revoked, cmd("commit_snapshot", by="a", sign=False, volume="vol", seq=1, epoch=1, root=ROOT,
                         parent_seq=None, created_at_ns=NOW, holders=["a", "b"], stats={}, verdict="clean"),
            "conflict", unsigned)


def _revoked_a(cluster: dict, trust: Trust = TRUST) -> dict:
    """``cluster`` after b and c revoked site a (its request applied at once)."""
    state, res = ok(cluster, cmd("request", by="b", action="revoke_site", args=revoking("a")), trust)
    state, done = ok(state, cmd("approve", by="c", request=res["request"]), trust)
    assert done["status"] == "applied", done
    return state


def test_a_revoked_site_cannot_be_promoted_until_it_rejoins_with_a_new_key(cluster: dict) -> None:
    state, _ = ok(cluster, cmd("promote", by="a", volume="vol", to="b", expected_epoch=1))  # b is the primary
    state = _revoked_a(state)
    assert cluster_state.is_revoked(state, "a") and not cluster_state.is_revoked(state, "b")
    for force in (False, True):
        res = refused(state, cmd("promote", by="b", volume="vol", to="a", expected_epoch=2, force=force), "conflict")
        assert res["evidence"]["revoked"] is True
    # rebuilt with a new key pinned in every config: it registers again and is no longer excluded
    new_key = NEW_A
    rotated = Trust(cluster_id=CLUSTER, keys={**TRUST.keys, "a": (*TRUST.keys["a"], identity.public_key_raw(new_key))},
                    cooling_off_ns=0, membership_cooling_off_ns=0)
    fresh = Signer("a", new_key, CLUSTER).sign({"v": 1, "op": "register_site", "op_id": "re-1", "now_ns": NOW + 1,
                                                 "site_id": "a", "peer_url": "https://a:7443", "kind": "data"})
    state, _ = ok(state, fresh, rotated)
    assert not cluster_state.is_revoked(state, "a") and state["revoked"]["a"]["keys"] == list(TRUST.keys["a"])
    ok(state, cmd("promote", by="b", volume="vol", to="a", expected_epoch=2), rotated)
    refused(state, cmd("clock", by="a", now_ns=NOW + 2), "revoked", rotated)  # the old key stays refused


def test_the_site_being_revoked_may_neither_veto_nor_approve_its_own_revocation(cluster: dict) -> None:
    state, res = ok(cluster, cmd("request", by="b", action="revoke_site", args=revoking("a")), COOLING)
    for op in ("veto", "approve"):
        out = refused(state, cmd(op, by="a", request=res["request"]), "conflict", COOLING)
        assert out["evidence"]["own_revocation"] is True
    # while its revocation is pending it may still veto other requests (that only keeps protection)
    state, other = ok(state, cmd("request", by="c", action="set_retention", args=shorten()), COOLING)
    state, vetoed = ok(state, cmd("veto", by="a", request=other["request"]), COOLING)
    assert vetoed["status"] == "vetoed"
    state, done = ok(state, cmd("approve", by="c", request=res["request"]), COOLING)
    # approved, cooling off (it used to apply at once): still neither vetoable nor approvable by a
    assert done["status"] == "approved" and not cluster_state.is_revoked(state, "a")
    for op in ("veto", "approve"):
        refused(state, cmd(op, by="a", request=res["request"]), "conflict", COOLING)
    for s in ("b", "c"):
        state, _ = ok(state, cmd("clock", by=s, now_ns=NOW + COOLING.membership_cooling_off_ns), COOLING)
    assert cluster_state.is_revoked(state, "a")
