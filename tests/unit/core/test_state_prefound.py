"""Requests before the founding, approvals counted from the agreed membership, and a suspect
mark's pin that taking it back and marking again never renews (threat model: one site's key).

The attack these close: before the other sites had started, the initial primary's own Raft
member registered itself and its volume, then requested ten years of retention for every key
(applied at once: one registered data site, ``needed`` 1) and a detection policy that judges
nothing (approved by itself alone, applied after the cooling-off); the honest standbys later
applied its ciphertext, judged clean under that policy. And one site alternating ``mark_verdict
clean`` and ``suspect`` on a snapshot pinned it and its clean parent on every site's disk for
ever."""

from __future__ import annotations

from replicad.core import errors
from replicad.core.identity import Trust
from replicad.core.state import RULES_MAX, apply, initial_state, revoked_sites, suspect_pins
from tests.unit.core.test_state import (NOW, RETENTION, S, cluster, cmd, ok, refused, tick,  # noqa: F401
                                        with_snaps)
from tests.unit.core.test_state_verdict_marks import chain, mark

LAB = Trust(cluster_id="c", keys=None, cooling_off_ns=0, membership_cooling_off_ns=0)  # unsigned: the rules only
LONGER = {**RETENTION, "keep_all_s": 10 * 365 * 86400, "lock_s": 10 * 365 * 86400}
M3 = [{"site_id": s, "raft": f"127.0.0.1:{7000 + i}", "kind": "data", "keys": []} for i, s in enumerate("abc")]


def lone_primary() -> dict:
    """Only site a registered, with its volume: the state the attacker built before the others started."""
    state = initial_state(rules=RULES_MAX)
    state, _ = ok(state, cmd("register_site", by="a", site_id="a", peer_url="https://a:7443", kind="data"))
    state, _ = ok(state, cmd("add_volume", volume="vol", primary="a", block_size=65536, size_bytes=0, min_copies=2,
                             retention=dict(RETENTION)))
    return state


def founded(state: dict, members: list = M3) -> dict:
    for m in members[:len(members) // 2 + 1]:
        state, res = ok(state, cmd("found", by=m["site_id"], incarnation=m["site_id"].encode() * 16, members=members))
    assert res["adopted"], res
    return state


def request(state: dict, by: str = "a", trust: Trust | None = LAB, **retention) -> tuple[dict, dict]:
    new, res = apply(state, cmd("request", by=by, action="set_retention",
                                args={"volume": "vol", "retention": {**LONGER, **retention}}), trust)
    return new, res


def test_no_request_and_no_approval_before_the_membership_is_agreed() -> None:
    state = lone_primary()
    for trust in (None, LAB):
        new, res = request(state, trust=trust)
        assert res["ok"] is False and res["error"] == "conflict" and res["evidence"] == {"founded": False, "refusal": "not_founded"}, res
        assert isinstance(errors.from_dict(res), errors.ConflictError) and "not founded" in res["message"]
        assert new["volumes"] == state["volumes"] and not new.get("requests")
        assert new["audit"][-1]["op"] == "request" and new["audit"][-1]["error"] == "conflict"
    policy = {"volume": "vol", "policy": {"mode": "encrypted"}}
    refused(state, cmd("request", by="a", action="set_detection", args=policy), "conflict")
    refused(state, cmd("approve", by="a", request="r1"), "conflict")
    # the founding itself (and the other ops the attacker used) are unchanged; once founded, the
    # same request waits for a second data site of the agreed three
    state, _ = ok(state, cmd("found", by="a", incarnation=b"a" * 16, members=M3))
    refused(state, cmd("request", by="a", action="set_retention", args={"volume": "vol", "retention": LONGER}),
            "conflict")  # one proposal founds nothing
    state = founded(state)
    state, res = request(state)
    assert res["ok"] and res["status"] == "pending" and res["needed"] == 2, res
    assert state["volumes"]["vol"]["retention"] == RETENTION


def test_the_approvals_needed_come_from_the_membership_not_from_who_registered() -> None:
    state = founded(lone_primary())  # b and c are members, not registered yet
    state, res = request(state)
    assert res["ok"] and res["status"] == "pending" and res["needed"] == 2
    # a configured [policy] approvals is never clamped by the registered count (it was to 1 here)
    three = Trust(cluster_id="c", keys=None, approvals=3, cooling_off_ns=0)
    _, res = request(state, trust=three, hourly_s=2 * 86400)
    assert res["ok"] and res["status"] == "pending" and res["needed"] == 3
    # ... but never more than the membership's sites: a request could never apply
    _, res = request(state, trust=Trust(cluster_id="c", keys=None, approvals=9, cooling_off_ns=0), daily_s=86400 * 9)
    assert res["ok"] and res["needed"] == 3
    # a one-data-site membership legitimately needs one (the lab)
    lone = founded(lone_primary(), M3[:1])
    lone, res = request(lone)
    assert res["ok"] and res["status"] == "applied" and res["needed"] == 1
    assert lone["volumes"]["vol"]["retention"]["keep_all_s"] == LONGER["keep_all_s"]


def test_an_approval_counts_against_the_membership_now(cluster: dict) -> None:
    """A request made under a smaller membership needs what the membership needs when it is
    approved (its stored ``needed`` is never lowered)."""
    state, res = request(tick(cluster, NOW))
    assert res["needed"] == 2 and res["status"] == "pending"
    five = sorted([*cluster["incarnation"]["members"],
                   *({"site_id": s, "raft": f"127.0.0.1:{7100 + i}", "kind": "data", "keys": []}
                     for i, s in enumerate("de"))], key=lambda m: m["site_id"])
    state, grow = ok(state, cmd("request", by="b", action="set_members", args={"members": five}))
    assert grow["needed"] == 3  # a majority of the 4 members
    for site in ("a", "c"):
        state, done = apply(state, cmd("approve", by=site, request=grow["request"]), LAB)
        assert done["ok"], done
    assert done["status"] == "applied" and len(state["incarnation"]["members"]) == 6
    state, res = apply(state, cmd("approve", by="b", request="r1"), LAB)  # 2 of the 3 data sites needed 2
    assert res["ok"] and res["status"] == "pending" and res["needed"] == 3, res  # 3 of 5 now
    assert [r for r in state["requests"].values() if r["id"] == "r1"][0]["needed"] == 3
    state, res = apply(state, cmd("approve", by="c", request="r1"), LAB)
    assert res["status"] == "applied" and state["volumes"]["vol"]["retention"]["keep_all_s"] == LONGER["keep_all_s"]


def test_taking_a_mark_back_and_marking_again_keeps_the_first_marks_time(cluster: dict) -> None:
    """The R4 lead: c alternates clean (its take-back) and suspect on #3 every 3000 s; its pin
    ends one keep-all window (3600 s) after its first mark, and the verdict's reason stays."""
    state = chain(cluster, 4)
    reason = state["volumes"]["vol"]["snapshots"][3].get("verdict_reason")
    state, _ = mark(state, "c", 3)
    first = state["volumes"]["vol"]["snapshots"][3]["marks"]["c"]["recorded_ns"]
    t = NOW
    for _ in range(3):
        t += 3000 * S
        state = tick(state, t)
        state, _ = mark(state, "c", 3, verdict="clean", now_ns=t, reason="take-back")
        assert state["volumes"]["vol"]["snapshots"][3].get("verdict_reason") == reason
        state, _ = mark(state, "c", 3, now_ns=t)
        assert state["volumes"]["vol"]["snapshots"][3]["marks"]["c"]["recorded_ns"] == first
    vol = state["volumes"]["vol"]
    assert set(suspect_pins(vol, first + 3599 * S)) == {2, 3}
    assert suspect_pins(vol, first + 3600 * S) == {}
    state, res = ok(state, cmd("prune_snapshots", volume="vol", seqs=[3], now_ns=t))
    assert res["pruned"] == [3]


def test_a_revoked_sites_marks_and_opinions_pin_nothing(cluster: dict) -> None:
    state = chain(cluster, 4)
    state, _ = mark(state, "c", 3)
    state, _ = ok(state, cmd("site_verdict", by="c", volume="vol", seq=2, verdict="suspect", score_ppm=900_000,
                             cumulative_ppm=900_000, first_seq=None, reason="judged"))
    assert set(suspect_pins(state["volumes"]["vol"], NOW)) == {1, 2, 3}
    revoked = {**state, "revoked": {"c": {"keys": [], "at_ns": NOW, "by": "a"}}}
    assert revoked_sites(revoked) == {"c"}
    assert suspect_pins(revoked["volumes"]["vol"], NOW, revoked_sites(revoked)) == {}
    refused(state, cmd("prune_snapshots", volume="vol", seqs=[2]), "retention_locked")
    _, res = ok(revoked, cmd("prune_snapshots", volume="vol", seqs=[2]))
    assert res["pruned"] == [2]
