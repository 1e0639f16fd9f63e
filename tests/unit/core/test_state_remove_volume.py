"""State machine: ``remove_volume``, a request protected like a prune of what the agreed grid
keeps or stronger (approvals, the cooling-off, any site's veto, and never while any snapshot of
the volume is inside its lock window), and easy for a volume a revoked site registered (its
squatted volumes, review R9, F4). Unsigned commands, real Trust policies, the majority clock."""

from __future__ import annotations

from replicad.core import state as st
from replicad.core.identity import DEFAULT_COOLING_OFF_NS
from tests.unit.core.test_state_bounds import RET, snapshot, with_volume
from tests.unit.core.test_state_membership import MIN15, NOW, S, after, cmd, refused, revoke, run, status

LOCK = RET["lock_s"] * S


def removal(volume: str = "vol") -> dict:
    return {"volume": volume}


def stopped(s: dict, seqs=(1, 2)) -> dict:
    """``vol`` with committed snapshots (created at NOW), then the majority clock past its lock."""
    for seq in seqs:
        s, _ = run(s, snapshot(seq))
    s, _ = after(s, LOCK + S)
    return s


def test_a_removal_is_only_a_request() -> None:
    s = stopped(with_volume())
    for by in "abc":  # its registering site and primary too
        res = refused(s, cmd("remove_volume", by, now_ns=NOW + LOCK + S, volume="vol"), "approval_required")
        assert res["evidence"]["volume"] == "vol"
    assert "vol" in s["volumes"]


def test_an_honest_volume_goes_after_approvals_and_the_cooling_off_and_any_site_vetoes_it() -> None:
    s = stopped(with_volume())
    now = NOW + LOCK + S
    s, req = run(s, cmd("request", "b", now_ns=now, action="remove_volume", args=removal(), reason="decommissioned"))
    assert req["status"] == "pending" and req["needed"] == 2
    s, res = run(s, cmd("approve", "c", now_ns=now, request=req["request"]))
    assert res["status"] == "approved" and "vol" in s["volumes"]  # cooling off
    s, applied = after(s, LOCK + S + DEFAULT_COOLING_OFF_NS - 1)
    assert applied == [] and "vol" in s["volumes"]
    s, applied = after(s, LOCK + S + DEFAULT_COOLING_OFF_NS)
    assert [a["status"] for a in applied] == ["applied"] and applied[0]["action"] == "remove_volume"
    assert "vol" not in s["volumes"] and status(s, req["request"]) == "applied"
    assert s[st.REMOVED_VOLUMES]["vol"] == {"epoch": 1, "last_seq": 2, "registered_by": "a",
                                            "removed_ns": NOW + LOCK + S + DEFAULT_COOLING_OFF_NS}


def test_the_registering_site_vetoes_the_removal_of_its_volume() -> None:
    s = stopped(with_volume())
    now = NOW + LOCK + S
    s, req = run(s, cmd("request", "b", now_ns=now, action="remove_volume", args=removal()))
    s, _ = run(s, cmd("approve", "c", now_ns=now, request=req["request"]))
    s, v = run(s, cmd("veto", "a", now_ns=now, request=req["request"]))
    assert v["status"] == "vetoed" and v["action"] == "remove_volume"
    s, applied = after(s, LOCK + S + DEFAULT_COOLING_OFF_NS)
    assert applied == [] and "vol" in s["volumes"]


def test_a_volume_with_a_snapshot_inside_its_lock_window_is_not_removed_now_or_at_the_end_of_the_cooling_off() -> None:
    s = with_volume()
    s, _ = run(s, snapshot(1))
    s, _ = after(s, LOCK - S)  # inside the lock by the majority clock, whatever the requester's clock says
    res = refused(s, cmd("request", "b", now_ns=NOW + 30 * 86400 * S, action="remove_volume", args=removal()),
                  "retention_locked")
    assert res["evidence"]["lock_s"] == RET["lock_s"] and res["evidence"]["unlocks_in_s"] == 1
    s, _ = after(s, LOCK + S)
    s, req = run(s, cmd("request", "b", now_ns=NOW + LOCK + S, action="remove_volume", args=removal()))
    s, _ = run(s, cmd("approve", "c", now_ns=NOW + LOCK + S, request=req["request"]))
    # the primary still replicates: its commit near the end of the cooling-off fails the removal
    end = NOW + LOCK + S + DEFAULT_COOLING_OFF_NS
    s, applied = after(s, end - NOW - 2 * S)
    assert applied == []
    late = cmd("commit_snapshot", "a", now_ns=end - S, volume="vol", seq=2, epoch=1, root=b"\x02" * 32,
               parent_seq=1, created_at_ns=end - S, holders=["a", "b"], stats={"changed_blocks": 1}, verdict="clean")
    s, _ = run(s, late)
    s, applied = after(s, LOCK + S + DEFAULT_COOLING_OFF_NS)
    assert [a["status"] for a in applied] == ["failed"] and applied[0]["result"]["error"] == "retention_locked"
    assert "vol" in s["volumes"] and status(s, req["request"]) == "failed"


def test_a_volume_whose_newest_snapshot_is_suspect_is_not_removed() -> None:
    s = with_volume()
    s, _ = run(s, cmd("commit_snapshot", "a", volume="vol", seq=1, epoch=1, root=b"\x01" * 32, parent_seq=None,
                      created_at_ns=NOW, holders=["a", "b"], stats={"changed_blocks": 1}, verdict="suspect"))
    s, _ = after(s, LOCK + S)
    res = refused(s, cmd("request", "b", now_ns=NOW + LOCK + S, action="remove_volume", args=removal()),
                  "retention_locked")
    assert res["evidence"]["newest_seq"] == 1


def test_a_revoked_sites_volume_goes_at_the_approvals_without_cooling_off_and_its_name_starts_past_it() -> None:
    s = with_volume()
    s, _ = run(s, snapshot(1))
    s, req = run(s, cmd("request", "b", action="revoke_site", args=revoke("a")))
    s, _ = run(s, cmd("approve", "c", request=req["request"]))
    s, _ = after(s, MIN15 + LOCK)
    assert st.is_revoked(s, "a") and st.removal_is_easy(s, s["volumes"]["vol"])
    now = NOW + MIN15 + LOCK
    s, req = run(s, cmd("request", "b", now_ns=now, action="remove_volume", args=removal(), reason="squatted"))
    s, res = run(s, cmd("approve", "c", now_ns=now, request=req["request"]))
    assert res["status"] == "applied" and res["result"]["removed"] is True and res["result"]["snapshots"] == 1
    assert "vol" not in s["volumes"]
    # the name registered again starts past the removed epoch and seq: kept records never collide
    s, added = run(s, cmd("add_volume", "b", now_ns=now, volume="vol", primary="b", block_size=65536,
                          size_bytes=1 << 20, min_copies=2, retention=dict(RET)))
    assert added["created"] and added["epoch"] == 2
    assert s["volumes"]["vol"]["epoch"] == 2 and s["volumes"]["vol"]["last_seq"] == 1
    refused(s, cmd("commit_snapshot", "b", now_ns=now, volume="vol", seq=1, epoch=2, root=b"\x09" * 32,
                   parent_seq=None, created_at_ns=now, holders=["b", "c"], stats={}, verdict="clean"), "conflict")


def test_a_state_dump_without_a_removed_volume_is_accepted_and_without_a_live_one_refused() -> None:
    s = with_volume()
    s, _ = run(s, snapshot(1))
    s, req = run(s, cmd("request", "b", action="revoke_site", args=revoke("a")))
    s, _ = run(s, cmd("approve", "c", request=req["request"]))
    s, _ = after(s, MIN15 + LOCK)
    now = NOW + MIN15 + LOCK
    s2, req = run(s, cmd("request", "b", now_ns=now, action="remove_volume", args=removal()))
    s2, _ = run(s2, cmd("approve", "c", now_ns=now, request=req["request"]))
    assert st.dump_problems(s, s2, now) == []
    forged = {**s2, st.REMOVED_VOLUMES: {}}
    assert st.dump_problems(s, forged, now) == ["volume 'vol' would be forgotten"]
    lower = {**s2, st.REMOVED_VOLUMES: {"vol": {**s2[st.REMOVED_VOLUMES]["vol"], "last_seq": 0}}}
    assert any("last seq" in p for p in st.dump_problems(s, lower, now))
    assert any("lock window" in p for p in st.dump_problems(s, s2, NOW + 1))  # the receiver's own clock


def test_a_weakening_approved_for_a_removed_volume_ends_with_it_and_never_reaches_the_next_volume_of_its_name() -> None:
    s = with_volume()
    s, _ = run(s, snapshot(1))
    s, _ = after(s, LOCK + S)
    t0 = NOW + LOCK + S
    s, rm = run(s, cmd("request", "b", now_ns=t0, action="remove_volume", args=removal()))
    s, _ = run(s, cmd("approve", "c", now_ns=t0, request=rm["request"]))
    s, ret = run(s, cmd("request", "b", now_ns=t0 + 60 * S, action="set_retention",
                        args={"volume": "vol", "retention": {**RET, "keep_all_s": 60}}))
    s, _ = after(s, LOCK + 61 * S)
    s, res = run(s, cmd("approve", "c", now_ns=t0 + 60 * S, request=ret["request"]))
    assert res["status"] == "approved"  # cooling off, a minute behind the removal
    s, applied = after(s, LOCK + S + DEFAULT_COOLING_OFF_NS)
    assert [a["action"] for a in applied] == ["remove_volume"]
    assert applied[0]["result"]["ended_requests"] == [ret["request"]]
    assert status(s, rm["request"]) == "applied" and status(s, ret["request"]) == "failed"
    assert s["requests"][ret["request"]]["result"]["error"] == "not_found"
    s, _ = run(s, cmd("add_volume", "a", now_ns=t0 + DEFAULT_COOLING_OFF_NS + S, volume="vol", primary="a",
                      block_size=65536, size_bytes=1 << 20, min_copies=2, retention=dict(RET)))
    s, applied = after(s, LOCK + 120 * S + DEFAULT_COOLING_OFF_NS)
    assert applied == [] and s["volumes"]["vol"]["retention"] == RET
