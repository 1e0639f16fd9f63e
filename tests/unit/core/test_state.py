"""The cluster state machine: every op, every refusal, exactly-once, never raises."""

from __future__ import annotations

import copy
import itertools

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.core import errors
from replicad.core import state as state_mod
from replicad.core.identity import Trust
from replicad.core.state import (APPLIED_OPS_MAX, AUDIT_MAX, RULES_MAX, apply, initial_state, newest_clean,
                                 newest_committed, newest_confirmed)

S = 1_000_000_000
NOW = 1_700_000_000 * S
ROOT = bytes(range(32))
RETENTION = {"keep_all_s": 3600, "hourly_s": 86400, "daily_s": 7 * 86400, "lock_s": 600}
_ids = itertools.count()


def cmd(op: str, by: str = "a", now_ns: int = NOW, **args) -> dict:
    return {"v": 1, "op": op, "op_id": f"op-{next(_ids)}", "by": by, "now_ns": now_ns, **args}


def approved(state: dict, action: str, by: str = "a", approver: str = "b", **args) -> tuple[dict, dict]:
    """A protection-weakening ``action`` as a request by ``by``, approved at ``approver``."""
    state, res = ok(state, cmd("request", by=by, action=action, args=args))
    assert res["status"] == "pending" and res["approvals"] == [by], res
    return ok(state, cmd("approve", by=approver, request=res["request"]))


def run(state: dict, command: dict) -> tuple[dict, dict]:
    before = copy.deepcopy(state)
    new, result = apply(state, command)
    assert state == before, "apply must never mutate its input"
    return new, result


def ok(state: dict, command: dict) -> tuple[dict, dict]:
    new, result = run(state, command)
    assert result["ok"] is True, result
    return new, result


def refused(state: dict, command: dict, code: str) -> dict:
    """Apply a command that must be refused with ``code``; data must stay untouched."""
    new, result = run(state, command)
    assert result["ok"] is False and result["error"] == code, result
    assert isinstance(errors.from_dict(result), errors.ReplicadError)
    assert errors.from_dict(result).code == code
    assert _data(new) == _data(state)
    record = new["audit"][-1]
    assert {k: v for k, v in record.items() if k not in ("signer", "n")} == {
        "op": command.get("op"), "by": command.get("by"), "volume": command.get("volume"), "ok": False,
        "error": code, "at_ns": command.get("now_ns")}
    if state_mod.rules(new) >= state_mod.RULES_AUDIT_BY_SIGNER:  # rules 4: the share it counts against, the command's count
        assert record["signer"] in (None, command.get("by")) and record["n"] == new.get("applied", 0) + 1, record
    else:
        assert "signer" not in record and "n" not in record, record
    return result


def _data(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in ("audit", "applied_ops")}


def commit(seq: int, epoch: int = 1, by: str = "a", holders=("a", "b"), verdict: str = "clean",
           created_at_ns: int = NOW - 10 * 86400 * S, parent_seq=None, **extra) -> dict:
    return cmd("commit_snapshot", by=by, volume="vol", seq=seq, epoch=epoch, root=ROOT,
               parent_seq=parent_seq, created_at_ns=created_at_ns, holders=list(holders),
               stats={"changed_blocks": 3, "random_share": 0.01}, verdict=verdict, **extra)


@pytest.fixture
def cluster() -> dict:
    state = initial_state(rules=RULES_MAX)
    for site, kind in (("a", "data"), ("b", "data"), ("c", "data"), ("w", "witness")):
        # registered a month ago: the majority's clock is then in the past, so the fixtures'
        # old snapshots keep their timestamps (commit clamps created_at_ns to a majority's time)
        state, _ = ok(state, cmd("register_site", by=site, site_id=site, now_ns=NOW - 30 * 86400 * S,
                                 peer_url=f"https://{site}:7443", kind=kind))
    state = found(state)
    state, _ = ok(state, cmd("add_volume", volume="vol", primary="a", block_size=65536,
                             size_bytes=1 << 30, min_copies=2, retention=dict(RETENTION)))
    return state


MEMBERS = [{"site_id": s, "raft": f"127.0.0.1:{7000 + i}", "kind": "witness" if s == "w" else "data", "keys": []}
           for i, s in enumerate("abcw")]


def found(state: dict, members: list = MEMBERS, now_ns: int = NOW - 30 * 86400 * S) -> dict:
    """The cluster founded (``found`` by a majority of ``members`` with the identical list): its
    membership agreed, as before any request or approval (they are refused until then)."""
    for m in members[:len(members) // 2 + 1]:
        state, res = ok(state, cmd("found", by=m["site_id"], now_ns=now_ns, incarnation=m["site_id"].encode() * 16,
                                   members=members))
    assert res["adopted"], res
    return state


@pytest.fixture
def with_snaps(cluster) -> dict:
    state = cluster
    for seq in (1, 2, 3):
        state, _ = ok(state, commit(seq, created_at_ns=NOW - (10 - seq) * 86400 * S))
    return tick(state, NOW)


def tick(state: dict, now_ns: int) -> dict:
    """Every site reports its clock at ``now_ns`` (the daemons' heartbeat)."""
    for site in state["sites"]:
        state, _ = ok(state, cmd("clock", by=site, now_ns=now_ns))
    return state


# --------------------------------------------------------------------------- envelope


@pytest.mark.parametrize("command", [
    None, [], "x", {},
    {"v": 2, "op": "register_site", "op_id": "x", "by": "a", "now_ns": 1},
    {"v": True, "op": "register_site", "op_id": "x", "by": "a", "now_ns": 1},
    {"v": 1, "op": "nope", "op_id": "x", "by": "a", "now_ns": 1},
    {"v": 1, "op": "register_site", "op_id": "", "by": "a", "now_ns": 1,
     "site_id": "a", "peer_url": "u", "kind": "data"},
    {"v": 1, "op": "register_site", "op_id": "x", "by": 3, "now_ns": 1,
     "site_id": "a", "peer_url": "u", "kind": "data"},
    {"v": 1, "op": "register_site", "op_id": "x", "by": "a", "now_ns": -1,
     "site_id": "a", "peer_url": "u", "kind": "data"},
    {"v": 1, "op": "register_site", "op_id": "x", "by": "a", "now_ns": 1, "site_id": "a", "kind": "data"},
    {"v": 1, "op": "register_site", "op_id": "x", "by": "a", "now_ns": 1,
     "site_id": "a", "peer_url": "u", "kind": "data", "extra": 1},
])
def test_malformed_commands_are_bad_requests(command):
    state = initial_state(rules=RULES_MAX)
    new, result = run(state, command)
    assert result["ok"] is False and result["error"] == "bad_request"
    assert _data(new) == _data(state)
    assert len(new["audit"]) == 1 and new["audit"][0]["ok"] is False


def test_unknown_state_version_is_refused():
    state = {**initial_state(rules=RULES_MAX), "v": 99}
    new, result = apply(state, cmd("register_site", site_id="a", peer_url="u", kind="data"))
    assert result["error"] == "bad_request" and new is state


def test_broken_state_gives_internal_not_an_exception():
    state = {**initial_state(rules=RULES_MAX), "volumes": None}  # corrupt: volumes must be a map
    new, result = apply(state, cmd("promote", volume="vol", to="a", expected_epoch=1))
    assert result["ok"] is False and result["error"] == "internal"
    assert isinstance(errors.from_dict(result), errors.InternalError)
    assert new["audit"][-1]["error"] == "internal"


# --------------------------------------------------------------------------- idempotency, audit


def test_same_op_id_returns_the_stored_result_and_changes_nothing(cluster):
    command = cmd("add_volume", volume="v2", primary="a", block_size=65536, size_bytes=0, min_copies=2,
                  retention=dict(RETENTION))
    once, first = ok(cluster, command)
    twice, second = run(once, command)
    assert second == first and twice is once
    refusal = cmd("promote", by="b", volume="vol", to="b", expected_epoch=1)
    after, r1 = run(twice, refusal)
    # the refusal is remembered too, even once the command would now pass
    after, _ = ok(after, cmd("promote", by="a", volume="vol", to="c", expected_epoch=1))
    again, r2 = run(after, {**refusal, "expected_epoch": 2})
    assert r2 == r1 and again is after


@pytest.mark.parametrize("rules", [3, RULES_MAX])
def test_audit_and_applied_ops_are_bounded(rules):
    state = initial_state(rules=rules)
    for i in range(max(AUDIT_MAX, APPLIED_OPS_MAX) + 5):
        state, _ = apply(state, cmd("register_site", by=f"s{i % 3}", site_id=f"s{i % 3}", peer_url="u", kind="data"))
    if rules < state_mod.RULES_AUDIT_BY_SIGNER:
        assert len(state["audit"]) == AUDIT_MAX
    else:  # rules 4: cut by shares past AUDIT_KEPT_MAX to AUDIT_KEPT_AFTER_TRIM
        assert state_mod.AUDIT_KEPT_AFTER_TRIM <= len(state["audit"]) <= state_mod.AUDIT_KEPT_MAX
    if rules < state_mod.RULES_AUDIT_BY_SIGNER:
        assert len(state["applied_ops"]) == APPLIED_OPS_MAX
    else:  # rules 4: cut by shares past APPLIED_KEPT_MAX to APPLIED_OPS_MAX
        assert APPLIED_OPS_MAX <= len(state["applied_ops"]) <= state_mod.APPLIED_KEPT_MAX
    assert list(state["applied_ops"])[-1].endswith(f"\x00op-{next(_ids) - 1}")  # rules 3: keyed by signer too


def test_state_survives_a_msgpack_round_trip(with_snaps):
    packed = msgpack.packb(with_snaps, use_bin_type=True)
    assert msgpack.unpackb(packed, raw=False, strict_map_key=False) == with_snaps


# --------------------------------------------------------------------------- sites and volumes


def test_register_site_upserts(cluster):
    state, result = ok(cluster, cmd("register_site", site_id="a", peer_url="https://new", kind="data"))
    assert result["created"] is False and state["sites"]["a"]["peer_url"] == "https://new"
    refused(cluster, cmd("register_site", site_id="b", peer_url="u", kind="tape"), "bad_request")
    refused(cluster, cmd("register_site", site_id="a", peer_url="u", kind="witness"), "conflict")


def test_add_volume(cluster):
    vol = cluster["volumes"]["vol"]
    assert (vol["primary"], vol["epoch"], vol["last_seq"], vol["snapshots"]) == ("a", 1, 0, {})
    same, result = ok(cluster, cmd("add_volume", volume="vol", primary="b", block_size=65536,
                                   size_bytes=1, min_copies=1, retention=dict(RETENTION)))
    assert result["created"] is False and _data(same) == _data(cluster)
    base = dict(size_bytes=1, min_copies=1, retention=dict(RETENTION))
    refused(cluster, cmd("add_volume", volume="vol", primary="a", block_size=4096, **base), "conflict")
    refused(cluster, cmd("add_volume", by="zz", volume="v2", primary="zz", block_size=4096, **base), "not_found")
    refused(cluster, cmd("add_volume", by="w", volume="v2", primary="w", block_size=4096, **base), "conflict")
    refused(cluster, cmd("add_volume", by="a", volume="v2", primary="b", block_size=4096, **base), "not_self")
    refused(cluster, cmd("add_volume", volume="v2", primary="a", block_size=1000, **base), "bad_request")
    refused(cluster, cmd("add_volume", volume="v2", primary="a", block_size=4096, size_bytes=1,
                         min_copies=0, retention=dict(RETENTION)), "bad_request")
    refused(cluster, cmd("add_volume", volume="v2", primary="a", block_size=4096, size_bytes=1,
                         min_copies=1, retention={"keep_all_s": 1}), "bad_request")


# --------------------------------------------------------------------------- commit_snapshot


def test_commit_snapshot(cluster):
    # stamped at the fixture's majority clock (a month ago): a stamp far ahead of it is capped
    state, result = ok(cluster, commit(1, size_bytes=2 << 30, created_at_ns=NOW - 30 * 86400 * S))
    assert result == {"ok": True, "volume": "vol", "seq": 1, "epoch": 1}
    vol = state["volumes"]["vol"]
    assert vol["last_seq"] == 1 and vol["size_bytes"] == 2 << 30
    snap = vol["snapshots"][1]
    assert (snap["root"], snap["holders"], snap["verdict"], snap["parent_seq"]) == (ROOT, ["a", "b"], "clean", None)
    state, _ = ok(state, commit(5, parent_seq=1, size_bytes=1))
    assert state["volumes"]["vol"]["size_bytes"] == 2 << 30  # never shrinks


def test_commit_snapshot_refusals(cluster):
    state, _ = ok(cluster, commit(1))
    result = refused(state, commit(2, epoch=2), "stale_epoch")
    assert result["evidence"]["epoch"] == 2 and result["evidence"]["current_epoch"] == 1
    assert isinstance(errors.from_dict(result), errors.StaleEpochError)
    refused(state, commit(2, by="b"), "not_primary")  # O3
    refused(state, commit(1), "conflict")  # seq must grow
    refused(state, commit(2, holders=["a"]), "conflict")  # O2: min_copies
    refused(state, commit(2, holders=["a", "zz"]), "not_found")
    refused(state, commit(2, holders=["a", "w"]), "conflict")
    refused(state, commit(2, holders=["a", "a"]), "bad_request")
    refused(state, commit(2, parent_seq=9), "not_found")
    refused(state, commit(2, verdict="maybe"), "bad_request")
    refused(state, {**commit(2), "root": b"short"}, "bad_request")
    refused(state, {**commit(2), "root": ROOT.hex()}, "bad_request")
    refused(state, {**commit(2), "stats": {"x": [1]}}, "bad_request")
    refused(state, {**commit(2), "volume": "nope"}, "not_found")


def test_commit_seq_and_size_bounds(cluster):
    """A primary's one signed commit cannot exhaust the seq space (2**63-1 in one step) nor
    claim a size past SIZE_BYTES_MAX: both out_of_range (audited), the catalog unchanged."""
    from replicad.core.state import SEQ_STEP_MAX, SIZE_BYTES_MAX
    refused(cluster, commit(2**63 - 1), "out_of_range")
    refused(cluster, commit(SEQ_STEP_MAX + 1), "out_of_range")
    refused(cluster, commit(1, size_bytes=2**50 + 1), "out_of_range")
    refused(cluster, {**commit(1), "stats": {"size_bytes": SIZE_BYTES_MAX * 2}}, "out_of_range")
    refused(cluster, commit(1, size_bytes=SIZE_BYTES_MAX), "out_of_range")  # past the volume's agreed maximum
    state, _ = ok(cluster, commit(SEQ_STEP_MAX, size_bytes=2 << 30))
    assert state["volumes"]["vol"]["last_seq"] == SEQ_STEP_MAX
    refused(state, commit(2 * SEQ_STEP_MAX + 1), "out_of_range")
    ok(state, commit(2 * SEQ_STEP_MAX))
    refused(cluster, cmd("add_volume", volume="big", primary="a", block_size=4096, size_bytes=SIZE_BYTES_MAX + 1,
                         min_copies=1, retention=RETENTION), "out_of_range")


# --------------------------------------------------------------------------- holders, verdicts


def test_add_and_remove_holder(with_snaps):
    refused(with_snaps, cmd("add_holder", by="a", volume="vol", seq=2, site_id="c"), "conflict")  # only itself
    state, result = ok(with_snaps, cmd("add_holder", by="c", volume="vol", seq=2, site_id="c"))
    assert result["changed"] and state["volumes"]["vol"]["snapshots"][2]["holders"] == ["a", "b", "c"]
    same, result = ok(state, cmd("add_holder", by="c", volume="vol", seq=2, site_id="c"))
    assert result["changed"] is False
    state, result = ok(state, cmd("remove_holder", by="b", volume="vol", seq=2, site_id="b"))
    assert state["volumes"]["vol"]["snapshots"][2]["holders"] == ["a", "c"] and not result["under_replicated"]
    state, result = ok(state, cmd("remove_holder", by="c", volume="vol", seq=2, site_id="c"))
    assert result["under_replicated"] is True
    refused(state, cmd("add_holder", by="c", volume="vol", seq=9, site_id="c"), "not_found")
    refused(state, cmd("add_holder", by="w", volume="vol", seq=2, site_id="w"), "conflict")
    refused(state, cmd("add_holder", by="zz", volume="vol", seq=2, site_id="zz"), "not_found")
    refused(state, cmd("remove_holder", by="b", volume="vol", seq=2, site_id="a"), "conflict")
    refused(state, cmd("remove_holder", by="a", volume="vol", seq=9, site_id="a"), "not_found")


def test_clearing_a_false_alarm_clears_the_snapshots_suspect_only_as_its_descendants(with_snaps):
    """#4 is a false alarm; #5, #6 are suspect only as its descendants (taint, marked by the
    primary); #7 scored suspect on its own and #8 descends from it. Clearing #4 clears #5 and
    #6, keeps #7 and #8 suspect, and a snapshot committed after the clear whose primary still
    saw #6 as suspect is recorded clean (its parent is clean by then)."""
    state = with_snaps

    def snap(seq: int, parent: int, taint: bool) -> dict:
        c = commit(seq, parent_seq=parent, verdict="suspect", created_at_ns=NOW)
        if taint:
            c["stats"] = {**c["stats"], state_mod.TAINT_STAT: parent}
        return c

    state, _ = ok(state, commit(4, parent_seq=3, verdict="suspect", created_at_ns=NOW))
    for seq, parent, taint in ((5, 4, True), (6, 5, True), (7, 6, False), (8, 7, True)):
        state, _ = ok(state, snap(seq, parent, taint))
    branch = commit(9, parent_seq=6, verdict="suspect", created_at_ns=NOW)  # a tainted one off #6 ...
    branch["stats"] = {**branch["stats"], state_mod.TAINT_STAT: 6}
    state, res = approved(state, "mark_verdict", by="b", approver="c", volume="vol", seq=4, verdict="clean",
                          reason="bulk import")
    assert res["result"]["cleared"] == [5, 6], res
    verdicts = {q: s["verdict"] for q, s in state["volumes"]["vol"]["snapshots"].items()}
    assert verdicts == {1: "clean", 2: "clean", 3: "clean", 4: "clean", 5: "clean", 6: "clean", 7: "suspect",
                        8: "suspect"}
    assert "cleared with #4" in state["volumes"]["vol"]["snapshots"][5]["verdict_reason"]
    vol = state["volumes"]["vol"]
    # ... taken while #6 was suspect, committed after the clear: judged against a clean parent
    assert state_mod.settled_verdict(vol, 6, "suspect", branch["stats"]) == "clean"
    assert state_mod.settled_verdict(vol, 7, "suspect", {state_mod.TAINT_STAT: 7}) == "suspect"
    assert state_mod.settled_verdict(vol, 6, "suspect", {}) == "suspect"  # its own score: stays suspect
    # the marker may also come as the primary's verdict_reason
    assert state_mod.tainted_only({"verdict": "suspect", "parent_seq": 4, "stats": {},
                                   "verdict_reason": "descends from suspect snapshot #4; an operator ..."})


def marked_by_three(state: dict, seq: int) -> dict:
    """``vol``#``seq`` marked suspect by persons at three data sites (a, b, c): the cluster's verdict
    turns (``state.MARK_SITES_MIN``: two sites' marks may be one site's and a stolen token's)."""
    for site in ("a", "b", "c"):
        state, _ = ok(state, cmd("mark_verdict", by=site, volume="vol", seq=seq, verdict="suspect", reason="x"))
    assert state["volumes"]["vol"]["snapshots"][seq]["verdict"] == "suspect"
    return state


def test_mark_verdict_and_the_two_party_rule_to_clear_it(with_snaps):
    state, res = ok(with_snaps, cmd("mark_verdict", by="b", volume="vol", seq=3, verdict="suspect",
                                    reason="82% of changed blocks look random"))
    assert res["verdict"] == "clean" and res["suspect_sites"] == ["b"] and res["needed"] == 3  # b's word alone
    state, res = ok(state, cmd("mark_verdict", by="c", volume="vol", seq=3, verdict="suspect", reason="notes"))
    assert res["flipped"] is False and res["suspect_sites"] == ["b", "c"]  # two marks: review R7, F2
    state, res = ok(state, cmd("mark_verdict", by="a", volume="vol", seq=3, verdict="suspect", reason="notes"))
    assert res["flipped"] is True and res["suspect_sites"] == ["a", "b", "c"]
    snap = state["volumes"]["vol"]["snapshots"][3]
    assert snap["verdict"] == "suspect" and snap["verdict_reason"].startswith("judged suspect by a, b, c")
    assert newest_clean(state["volumes"]["vol"]) == 2
    clear = dict(volume="vol", seq=3, verdict="clean", reason="false positive")
    result = refused(state, cmd("mark_verdict", **clear), "approval_required")
    assert "replicad approve REQ" in result["message"]
    result = refused(state, cmd("mark_verdict", approved_by=["b"], **clear), "bad_request")
    assert "approved_by is no longer accepted" in result["message"]
    state, res = ok(state, cmd("request", action="mark_verdict", args=clear))
    assert state["volumes"]["vol"]["snapshots"][3]["verdict"] == "suspect"  # pending: nothing changed yet
    same, again = ok(state, cmd("approve", by="a", request=res["request"]))  # the requester counts once
    assert again["status"] == "pending" and again["changed"] is False and _data(same) == _data(state)
    state, done = ok(state, cmd("approve", by="b", request=res["request"]))
    assert done["status"] == "applied" and done["result"]["verdict"] == "clean"
    assert newest_clean(state["volumes"]["vol"]) == 3
    refused(state, cmd("mark_verdict", volume="vol", seq=9, verdict="clean", reason=""), "not_found")
    refused(state, cmd("mark_verdict", volume="vol", seq=3, verdict="bad", reason=""), "bad_request")


# --------------------------------------------------------------------------- promote, demote


def test_planned_promote_by_the_primary(with_snaps):
    state, result = ok(with_snaps, cmd("promote", by="a", volume="vol", to="b", expected_epoch=1))
    assert (result["epoch"], result["primary"], result["previous_primary"]) == (2, "b", "a")
    vol = state["volumes"]["vol"]
    assert (vol["primary"], vol["epoch"]) == ("b", 2)
    refused(state, commit(4, by="a", epoch=1), "stale_epoch")  # the old primary is fenced
    state, _ = ok(state, commit(4, by="b", epoch=2))


def test_promote_refusals(with_snaps):
    result = refused(with_snaps, cmd("promote", by="a", volume="vol", to="b", expected_epoch=0), "stale_epoch")
    assert result["evidence"]["current_epoch"] == 1
    refused(with_snaps, cmd("promote", by="b", volume="vol", to="b", expected_epoch=1), "not_primary")
    refused(with_snaps, cmd("promote", by="a", volume="vol", to="a", expected_epoch=1), "conflict")
    refused(with_snaps, cmd("promote", by="a", volume="vol", to="w", expected_epoch=1), "conflict")
    refused(with_snaps, cmd("promote", by="a", volume="vol", to="zz", expected_epoch=1), "not_found")
    refused(with_snaps, cmd("promote", by="w", volume="vol", to="b", expected_epoch=1, force=True), "conflict")
    # a forced promotion is for the asking site itself: never another one (whose live image a
    # named snapshot would roll back), the current primary included
    refused(with_snaps, cmd("promote", by="c", volume="vol", to="b", expected_epoch=1, force=True), "conflict")
    refused(with_snaps, cmd("promote", by="c", volume="vol", to="a", expected_epoch=1, force=True, snapshot=1),
            "conflict")
    refused(with_snaps, cmd("promote", by="a", volume="vol", to="b", expected_epoch=1, force="yes"),
            "bad_request")


def test_forced_promote_by_any_data_site_is_a_compare_and_set(with_snaps):
    state, result = ok(with_snaps, cmd("promote", by="b", volume="vol", to="b", expected_epoch=1, force=True))
    assert result["epoch"] == 2 and result["forced"] is True
    # a concurrent forced promotion computed against the old epoch loses
    refused(state, cmd("promote", by="c", volume="vol", to="c", expected_epoch=1, force=True), "stale_epoch")


def test_demote(with_snaps):
    refused(with_snaps, cmd("demote", by="b", volume="vol", expected_epoch=1), "not_primary")
    refused(with_snaps, cmd("demote", by="a", volume="vol", expected_epoch=5), "stale_epoch")
    state, result = ok(with_snaps, cmd("demote", by="a", volume="vol", expected_epoch=1))
    assert result["epoch"] == 2 and state["volumes"]["vol"]["primary"] is None
    refused(state, cmd("promote", by="a", volume="vol", to="b", expected_epoch=2), "not_primary")
    state, _ = ok(state, cmd("promote", by="b", volume="vol", to="b", expected_epoch=2, force=True))
    state, _ = ok(state, cmd("demote", by="c", volume="vol", expected_epoch=3, force=True))
    assert state["volumes"]["vol"]["epoch"] == 4


# --------------------------------------------------------------------------- retention


def test_set_retention_any_change_needs_a_second_site(cluster):
    """One site's ``set_retention`` changes nothing, longer or shorter (tests/unit/core/test_retention_authority.py
    has the directions, the cooling-off and the ceiling)."""
    longer = {**RETENTION, "keep_all_s": 7200, "lock_s": 1200}
    result = refused(cluster, cmd("set_retention", volume="vol", retention=longer), "approval_required")
    assert result["evidence"]["lengthened"] == ["keep_all_s", "lock_s"]
    state, _ = approved(cluster, "set_retention", volume="vol", retention=longer)
    assert state["volumes"]["vol"]["retention"] == longer
    shorter = {**longer, "lock_s": 60}
    result = refused(state, cmd("set_retention", volume="vol", retention=shorter), "approval_required")
    assert result["evidence"]["shortened"] == ["lock_s"]
    refused(state, cmd("set_retention", volume="vol", retention=shorter, approved_by=["b"]), "bad_request")
    state, _ = approved(state, "set_retention", volume="vol", retention=shorter)
    assert state["volumes"]["vol"]["retention"]["lock_s"] == 60
    result = refused(state, cmd("set_retention", volume="vol", retention={**shorter, "hourly_s": 0}), "approval_required")
    assert result["evidence"]["shortened"] == ["hourly_s"]
    _, result = ok(state, cmd("set_retention", volume="vol", retention=shorter))
    assert result["changed"] is False


def test_prune_snapshots(with_snaps):
    state, result = ok(with_snaps, cmd("prune_snapshots", volume="vol", seqs=[1, 2]))
    assert result["pruned"] == [1, 2] and list(state["volumes"]["vol"]["snapshots"]) == [3]


def test_prune_refusals_are_all_or_nothing(with_snaps):
    vol = with_snaps["volumes"]["vol"]
    assert (newest_committed(vol), newest_clean(vol)) == (3, 3)
    refused(with_snaps, cmd("prune_snapshots", volume="vol", seqs=[1, 3]), "retention_locked")
    refused(with_snaps, cmd("prune_snapshots", volume="vol", seqs=[1, 9]), "not_found")
    refused(with_snaps, cmd("prune_snapshots", volume="vol", seqs=[1, 1]), "bad_request")
    refused(with_snaps, cmd("prune_snapshots", volume="vol", seqs=[]), "bad_request")
    # O4: inside the lock window (now is 100 s after seq 1 was created, lock_s is 600)
    young = vol["snapshots"][1]["created_at_ns"] + 100 * S
    res = refused(with_snaps, cmd("prune_snapshots", volume="vol", seqs=[1], now_ns=young), "retention_locked")
    assert res["evidence"]["unlocks_in_s"] == 600 - res["evidence"]["age_s"], res  # when, and in seconds
    assert f"it may go in {res['evidence']['unlocks_in_s']} s" in res["message"], res


def test_prune_keeps_the_newest_clean_and_freezes_while_the_newest_is_suspect(with_snaps):
    state, _ = ok(with_snaps, commit(4, verdict="suspect"))
    refused(state, cmd("prune_snapshots", volume="vol", seqs=[1]), "retention_locked")
    state, _ = ok(state, commit(5, verdict="clean"))
    state = marked_by_three(state, 5)
    state, _ = ok(state, commit(6))
    assert newest_clean(state["volumes"]["vol"]) == 6
    state, _ = ok(state, commit(7, verdict="suspect"))
    refused(state, cmd("prune_snapshots", volume="vol", seqs=[1]), "retention_locked")


def test_a_commit_records_the_majority_clock_not_the_primary_stamp(cluster):
    """commit_snapshot keeps the majority's clock at apply (committed_ns, quorum_now_ns) beside the
    primary's stamp: the slow windows credit their slack by it (a sawtooth of stamps, +590 s then
    -5 s, each accepted, multiplied the slack)."""
    state = tick(cluster, NOW)
    state, _ = ok(state, commit(1, created_at_ns=NOW + 590 * S, now_ns=NOW + 590 * S))
    state, _ = ok(state, commit(2, created_at_ns=NOW - 5 * S, now_ns=NOW - 5 * S))
    snaps = state["volumes"]["vol"]["snapshots"]
    assert (snaps[1]["created_at_ns"], snaps[2]["created_at_ns"]) == (NOW + 590 * S, NOW - 5 * S)
    assert snaps[1]["committed_ns"] == snaps[2]["committed_ns"] == NOW


def test_prune_never_touches_the_newest_confirmed(with_snaps):
    """Any one site can sign prune_snapshots: the newest snapshot a person confirmed clean (the
    slow windows' anchor and the rate they learned) is refused like the newest clean one."""
    state, _ = approved(with_snaps, "mark_verdict", by="b", approver="c", volume="vol", seq=1, verdict="clean",
                        reason="checked")
    assert newest_confirmed(state["volumes"]["vol"]) == 1
    refused(state, cmd("prune_snapshots", volume="vol", seqs=[1]), "retention_locked")
    refused(state, cmd("prune_snapshots", volume="vol", seqs=[1, 2]), "retention_locked")
    state, _ = approved(state, "mark_verdict", by="b", approver="c", volume="vol", seq=2, verdict="clean",
                        reason="checked")
    state, result = ok(state, cmd("prune_snapshots", volume="vol", seqs=[1]))
    assert result["pruned"] == [1]
    refused(state, cmd("prune_snapshots", volume="vol", seqs=[2]), "retention_locked")


def test_prune_never_touches_the_newest_clean(with_snaps):
    state, _ = ok(with_snaps, commit(4, verdict="suspect"))
    state, _ = ok(state, commit(5, verdict="clean"))
    state = marked_by_three(state, 5)
    state, _ = approved(state, "mark_verdict", by="b", approver="c", volume="vol", seq=4, verdict="clean",
                        reason="x")
    state, _ = ok(state, commit(6))
    state = marked_by_three(state, 6)
    # the newest is suspect: frozen; make the newest clean again by committing a clean one
    state, _ = ok(state, commit(7))
    state = marked_by_three(state, 7)
    assert newest_clean(state["volumes"]["vol"]) == 4
    state, _ = ok(state, commit(8))
    assert newest_clean(state["volumes"]["vol"]) == 8
    refused(state, cmd("prune_snapshots", volume="vol", seqs=[8]), "retention_locked")
    later = NOW + 86400 * S  # 4..8 were stamped at the majority's time: let the lock window pass
    state = tick(state, later)
    # #4 was confirmed clean by an approved request: the newest confirmed one stays too
    refused(state, cmd("prune_snapshots", volume="vol", seqs=[1, 2, 3, 4], now_ns=later), "retention_locked")
    state, _ = ok(state, cmd("prune_snapshots", volume="vol", seqs=[1, 2, 3], now_ns=later))


def test_helpers_on_empty_volume(cluster):
    vol = cluster["volumes"]["vol"]
    assert newest_committed(vol) is None and newest_clean(vol) is None


# --------------------------------------------------------------------------- property


SITES = ["a", "b", "c", "w", "zz"]
ints = st.one_of(st.integers(-2, 12), st.just(NOW), st.sampled_from([True, None, "1"]))
sites = st.sampled_from(SITES + [3, None])
retention = st.one_of(st.fixed_dictionaries({k: st.integers(0, 10**6) for k in RETENTION}),
                      st.just({"keep_all_s": 1}), st.none())
args = {
    "register_site": st.fixed_dictionaries({"site_id": sites, "peer_url": st.just("u"),
                                            "kind": st.sampled_from(["data", "witness", "x"])}),
    "add_volume": st.fixed_dictionaries({"volume": st.sampled_from(["vol", "v2"]), "primary": sites,
                                         "block_size": st.sampled_from([4096, 65536, 1000, 0]),
                                         "size_bytes": ints, "min_copies": ints, "retention": retention}),
    "commit_snapshot": st.fixed_dictionaries({
        "volume": st.sampled_from(["vol", "v2"]), "seq": ints, "epoch": ints,
        "root": st.sampled_from([ROOT, b"x", None]), "parent_seq": st.one_of(st.none(), ints),
        "created_at_ns": ints, "holders": st.lists(sites, max_size=3),
        "stats": st.sampled_from([{}, {"n": 1}, {"n": [1]}, None]),
        "verdict": st.sampled_from(["clean", "suspect", "x"])}),
    "add_holder": st.fixed_dictionaries({"volume": st.just("vol"), "seq": ints, "site_id": sites}),
    "remove_holder": st.fixed_dictionaries({"volume": st.just("vol"), "seq": ints, "site_id": sites}),
    "promote": st.fixed_dictionaries({"volume": st.just("vol"), "to": sites, "expected_epoch": ints},
                                     optional={"force": st.sampled_from([True, False, 1])}),
    "demote": st.fixed_dictionaries({"volume": st.just("vol"), "expected_epoch": ints},
                                    optional={"force": st.booleans()}),
    "mark_verdict": st.fixed_dictionaries({"volume": st.just("vol"), "seq": ints,
                                           "verdict": st.sampled_from(["clean", "suspect"]),
                                           "reason": st.just("r")}),
    "set_retention": st.fixed_dictionaries({"volume": st.just("vol"), "retention": retention}),
    "request": st.fixed_dictionaries({"action": st.sampled_from(["set_retention", "mark_verdict"]),
                                      "args": st.one_of(
                                          st.fixed_dictionaries({"volume": st.just("vol"), "retention": retention}),
                                          st.fixed_dictionaries({"volume": st.just("vol"), "seq": ints,
                                                                 "verdict": st.just("clean"),
                                                                 "reason": st.just("r")}))}),
    "approve": st.fixed_dictionaries({"request": st.sampled_from(["r1", "r2", "r3"])}),
    "veto": st.fixed_dictionaries({"request": st.sampled_from(["r1", "r2", "r3"])}),
    "prune_snapshots": st.fixed_dictionaries({"volume": st.just("vol"),
                                              "seqs": st.lists(ints, max_size=3)}),
}
commands = st.one_of(
    *[st.builds(lambda a, op=op, by=None, now=None, v=1: {"v": v, "op": op, "op_id": None, "by": by,
                                                          "now_ns": now, **a},
                a, by=sites, now=st.sampled_from([NOW, NOW + 86400 * S * 30, -1]),
                v=st.sampled_from([1, 1, 1, 2]))
      for op, a in args.items()],
    st.sampled_from([None, {}, {"v": 1, "op": "nope"}, [1, 2]]),
)


@pytest.mark.parametrize("trust", [None, Trust(cluster_id="c", keys=None, cooling_off_ns=3600 * S)],
                         ids=["no-trust", "unsigned-with-replay-checks"])
@settings(max_examples=60, deadline=None)
@given(st.lists(commands, max_size=40), st.data())
def test_random_commands_never_raise_and_refusals_change_nothing(trust, command_list, data):
    state = initial_state(rules=RULES_MAX)
    for i, command in enumerate(command_list):
        if isinstance(command, dict) and "op_id" in command:
            reuse = data.draw(st.booleans()) and i > 0
            command["op_id"] = f"op-{data.draw(st.integers(0, i))}" if reuse else f"op-{i}"
        before = copy.deepcopy(state)
        new, result = apply(state, command, trust)
        assert state == before
        assert isinstance(result, dict) and isinstance(result.get("ok"), bool)
        if not result["ok"]:
            assert result["error"] in ("bad_request", "not_found", "conflict", "stale_epoch",
                                       "not_primary", "retention_locked", "approval_required", "replayed",
                                       "expired", "out_of_range", "bad_ack", "not_self")
            assert {k: v for k, v in _data(new).items() if k != "seen"} == \
                {k: v for k, v in _data(state).items() if k != "seen"}
        for vol in new["volumes"].values():
            assert vol["epoch"] >= 1
            assert all(s <= vol["last_seq"] for s in vol["snapshots"])
        msgpack.packb(new, use_bin_type=True)
        state = new


# --------------------------------------------------------------------------- clocks (O4, DESIGN §9)


def test_lock_window_is_measured_by_a_majority_of_clocks(with_snaps):
    from replicad.core.state import quorum_now_ns

    # the other sites last spoke at NOW; the primary's clock jumps 30 days ahead
    state = with_snaps
    for site in ("b", "c", "w"):
        state, _ = ok(state, cmd("clock", by=site))
    assert quorum_now_ns(state) == NOW
    young = state["volumes"]["vol"]["snapshots"][1]["created_at_ns"] + 100 * S
    for site in ("b", "c", "w"):
        state, _ = ok(state, cmd("clock", by=site, now_ns=young))
    refused(state, cmd("prune_snapshots", volume="vol", seqs=[1], now_ns=young + 30 * 86400 * S),
            "retention_locked")
    # once a majority's clocks are past the lock window, the same prune is accepted
    later = young + 3600 * S
    for site in ("b", "c", "w"):
        state, _ = ok(state, cmd("clock", by=site, now_ns=later))
    ok(state, cmd("prune_snapshots", volume="vol", seqs=[1], now_ns=later))


def test_heartbeats_are_neither_audited_nor_remembered(cluster):
    state, _ = ok(cluster, cmd("clock", by="b", now_ns=NOW + 5))
    assert state["clocks"]["b"] == NOW + 5
    assert state["audit"] == cluster["audit"] and state["applied_ops"] == cluster["applied_ops"]


def test_unregistered_sites_have_no_clock(cluster):
    state, _ = run(cluster, cmd("clock", by="mallory", now_ns=NOW + 10**15))
    assert "mallory" not in state.get("clocks", {})


def test_no_prune_before_a_majority_reported_a_clock():
    from replicad.core.state import quorum_now_ns

    state = initial_state(rules=RULES_MAX)
    for site in ("a", "b", "c"):
        state, _ = ok(state, cmd("register_site", by=site, site_id=site, peer_url=f"https://{site}", kind="data"))
    state = {**state, "clocks": {"a": state["clocks"]["a"]}}  # b and c registered but reported no clock
    assert quorum_now_ns(state) is None  # only "a" has spoken
    state, _ = ok(state, cmd("add_volume", volume="v", primary="a", block_size=65536, size_bytes=1 << 20,
                             min_copies=1, retention={"keep_all_s": 0, "hourly_s": 0, "daily_s": 0, "lock_s": 0}))
    for seq in (1, 2):
        state, _ = ok(state, cmd("commit_snapshot", volume="v", seq=seq, epoch=1, root=bytes([seq]) * 32,
                                 parent_seq=seq - 1 or None, created_at_ns=NOW - 86400 * S, holders=["a", "b"],
                                 stats={}, verdict="clean"))
    refused(state, cmd("prune_snapshots", volume="v", seqs=[1]), "retention_locked")


def test_a_primary_clock_behind_cannot_age_its_snapshots(cluster):
    """chaos clock-step: snapshots stamped by a slow clock would be prunable inside the lock."""
    from replicad.core.state import CLOCK_LAG_MARGIN_NS

    state = cluster
    for site in ("a", "b", "c", "w"):
        state, _ = ok(state, cmd("clock", by=site, now_ns=NOW))
    slow = NOW - 7 * 86400 * S  # the primary's clock is a week behind
    for seq in (1, 2):
        state, _ = ok(state, commit(seq, created_at_ns=slow))
    # clamped to the majority's time plus the lag of its reports (CLOCK_LAG_MARGIN_NS)
    assert state["volumes"]["vol"]["snapshots"][1]["created_at_ns"] == NOW + CLOCK_LAG_MARGIN_NS
    refused(state, cmd("prune_snapshots", volume="vol", seqs=[1], now_ns=NOW + 60 * S), "retention_locked")


def test_a_primary_clock_ahead_cannot_date_snapshots_into_the_future(cluster):
    """Issue "Lose nothing", item 12: a primary whose clock jumped a year ahead stamped its
    snapshots a year out (unprunable for a year, RPO -3.15e7 s). Dated at the majority's
    time plus a margin; the result says so; the clock offsets show which site is ahead."""
    from replicad.core.state import CLOCK_AHEAD_MARGIN_NS, clock_offsets_ns

    state = cluster
    year = 365 * 86400 * S
    state, _ = ok(state, cmd("clock", by="a", now_ns=NOW + year))
    for site in ("b", "c", "w"):
        state, _ = ok(state, cmd("clock", by=site, now_ns=NOW))
    state, result = ok(state, commit(1, created_at_ns=NOW + year, now_ns=NOW + year))
    assert state["volumes"]["vol"]["snapshots"][1]["created_at_ns"] == NOW + CLOCK_AHEAD_MARGIN_NS
    assert result["restamped"] == {"from_ns": NOW + year, "to_ns": NOW + CLOCK_AHEAD_MARGIN_NS}
    # a stamp inside the margin keeps its value and says nothing
    state, result = ok(state, commit(2, created_at_ns=NOW + CLOCK_AHEAD_MARGIN_NS, now_ns=NOW + year))
    assert state["volumes"]["vol"]["snapshots"][2]["created_at_ns"] == NOW + CLOCK_AHEAD_MARGIN_NS
    assert "restamped" not in result
    assert clock_offsets_ns(state) == {"a": year, "b": 0, "c": 0, "w": 0}


def test_lock_window_of_a_clamped_stamp_never_starts_early(cluster):
    """chaos clock-step seed 1: the majority's reported time trails the truth by up to a
    report period; a snapshot stamped behind it was pruned 29 s after it was taken with a
    30 s lock. Dated at the end of the margin, it is kept until the lock has passed for
    every clock of the majority, however late their last reports were."""
    from replicad.core.state import CLOCK_LAG_MARGIN_NS, CLOCK_REPORT_PERIOD_NS

    state = cluster
    state, _ = approved(state, "set_retention", by="a", volume="vol",
                        retention={"keep_all_s": 0, "hourly_s": 0, "daily_s": 0, "lock_s": 30})
    last_report = NOW - CLOCK_REPORT_PERIOD_NS  # true time is NOW; the majority last spoke 5 s ago
    for site in ("a", "b", "c", "w"):
        state, _ = ok(state, cmd("clock", by=site, now_ns=last_report))
    for seq in (1, 2):  # the primary's clock is 50 s behind
        state, _ = ok(state, commit(seq, created_at_ns=NOW - 50 * S, now_ns=NOW - 50 * S))
    assert state["volumes"]["vol"]["snapshots"][1]["created_at_ns"] >= NOW
    # 30 s later by the truth, the majority reports freshly: still inside the lock
    for site in ("b", "c", "w"):
        state, _ = ok(state, cmd("clock", by=site, now_ns=NOW + 30 * S))
    refused(state, cmd("prune_snapshots", volume="vol", seqs=[1], now_ns=NOW + 30 * S), "retention_locked")
    later = NOW + 30 * S + CLOCK_LAG_MARGIN_NS
    for site in ("b", "c", "w"):
        state, _ = ok(state, cmd("clock", by=site, now_ns=later))
    ok(state, cmd("prune_snapshots", volume="vol", seqs=[1], now_ns=later))


def test_a_stamp_a_few_seconds_behind_the_majority_is_kept(cluster):
    """A commit that waited for a straggler is stamped at its scan, before the clocks other
    sites reported meanwhile: it keeps its stamp (dating it ahead made RPO negative)."""
    state = cluster
    for site in ("a", "b", "c", "w"):
        state, _ = ok(state, cmd("clock", by=site, now_ns=NOW))
    state, _ = ok(state, commit(1, created_at_ns=NOW - 3 * S))
    assert state["volumes"]["vol"]["snapshots"][1]["created_at_ns"] == NOW - 3 * S


def test_prune_never_touches_the_newest_common_snapshot_of_the_primary_and_a_replica(with_snaps):
    """chaos retention-race: c fell behind (it holds #1 only); #1 is the base of the next
    incremental ship to c and was pruned by an operator request. Refused, whoever asks."""
    from replicad.core.state import newest_common

    state = with_snaps
    state, _ = ok(state, cmd("add_holder", by="c", volume="vol", seq=1, site_id="c"))
    assert newest_common(state, state["volumes"]["vol"]) == {3: "b", 1: "c"}
    for by in ("a", "b", "c"):
        result = refused(state, cmd("prune_snapshots", by=by, volume="vol", seqs=[1, 2]), "retention_locked")
        assert result["evidence"] == {"volume": "vol", "seq": 1, "primary": "a", "replica": "c"}
    state, _ = ok(state, cmd("prune_snapshots", volume="vol", seqs=[2]))
    # once c holds a newer snapshot, #1 is an ordinary old snapshot again
    state, _ = ok(state, cmd("add_holder", by="c", volume="vol", seq=3, site_id="c"))
    ok(state, cmd("prune_snapshots", volume="vol", seqs=[1]))
