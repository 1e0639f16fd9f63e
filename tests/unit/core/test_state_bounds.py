"""One site's share of the replicated state (review R9): bounds one compromised site cannot
pass on its own, each named by the review's finding (F1, F6, F4, F5). The real-process versions
are in tests/security/test_state_share.py."""

from __future__ import annotations

import pytest

from replicad.core import state as st
from replicad.core.identity import Trust
from tests.unit.core.test_state_membership import (MIN15, NOW, POLICY, after, cmd, founded, refused, revoke, run,
                                                   status)

RET = {"keep_all_s": 3600, "hourly_s": 86400, "daily_s": 7 * 86400, "lock_s": 600}
SHORTER = {**RET, "lock_s": 60}
AT_ONCE = Trust(cluster_id="c", keys=None, cooling_off_ns=0, membership_cooling_off_ns=MIN15)


def with_volume(trust: Trust = POLICY, name: str = "vol", by: str = "a", min_copies: int = 2) -> dict:
    s = founded(trust)
    s, _ = run(s, cmd("add_volume", by, volume=name, primary=by, block_size=65536, size_bytes=1 << 20,
                      min_copies=min_copies, retention=dict(RET)), trust)
    return s


def snapshot(seq: int, volume: str = "vol", by: str = "a", holders=("a", "b")) -> dict:
    return cmd("commit_snapshot", by, volume=volume, seq=seq, epoch=1, root=bytes([seq % 256]) * 32, parent_seq=None,
               created_at_ns=NOW, holders=list(holders), stats={"changed_blocks": 1}, verdict="clean")


# --------------------------------------------------------------------------- F1: request records


def test_a_site_cannot_erase_its_approved_revocation_with_requests_it_withdraws() -> None:
    s = with_volume()
    s, req = run(s, cmd("request", "b", action="revoke_site", args=revoke("a")))
    s, done = run(s, cmd("approve", "c", request=req["request"]))
    assert done["status"] == "approved"
    for _ in range(2 * st.REQUESTS_MAX + 8):  # the attack: a no-op request and its own veto, repeated
        s, r = run(s, cmd("request", "a", action="set_retention", args={"volume": "vol", "retention": dict(RET)}))
        s, v = run(s, cmd("veto", "a", request=r["request"]))
        assert v["status"] == "withdrawn" and v["was"] == "pending" and "forgotten" not in r
        assert v["approvals"] == ["a"] and v["needed"] == 2 and "vetoed_by" not in v
    assert set(s["requests"]) == {req["request"]}  # a withdrawal leaves no record and counts as no veto
    assert "vetoes" not in s
    assert status(s, req["request"]) == "approved"
    s, applied = after(s, MIN15)
    assert [a["status"] for a in applied] == ["applied"] and st.is_revoked(s, "a")


def test_a_requester_flood_forgets_only_its_own_finished_records_and_says_which() -> None:
    s = with_volume()
    s, b_req = run(s, cmd("request", "b", action="set_retention", args={"volume": "vol", "retention": SHORTER}))
    s, _ = run(s, cmd("veto", "c", request=b_req["request"]))  # finished: another site's record
    forgotten = []
    firsts = []
    for _ in range(st.REQUESTS_MAX + 10):
        s, r = run(s, cmd("request", "a", action="set_retention", args={"volume": "vol", "retention": dict(RET)}))
        firsts.append(r["request"])
        forgotten += r.get("forgotten") or []
        s, _ = run(s, cmd("veto", "c", request=r["request"]))
    s, r = run(s, cmd("request", "a", action="set_retention", args={"volume": "vol", "retention": dict(RET)}))
    forgotten += r.get("forgotten") or []
    assert [f["request"] for f in forgotten] == firsts[:10]  # oldest first, each named for the logs
    assert {(f["status"], f["action"], f["requested_by"]) for f in forgotten} == {("vetoed", "set_retention", "a")}
    assert status(s, b_req["request"]) == "vetoed"  # never another site's record
    mine = [e for e in s["requests"].values() if e["by"] == "a" and e["status"] != "pending"]
    assert len(mine) == st.REQUESTS_MAX


def test_the_retention_changes_a_local_cooling_off_reads_survive_their_requesters_flood() -> None:
    s = with_volume(AT_ONCE)
    s, r = run(s, cmd("request", "a", action="set_retention", args={"volume": "vol", "retention": SHORTER}), AT_ONCE)
    s, done = run(s, cmd("approve", "b", request=r["request"]), AT_ONCE)
    assert done["status"] == "applied" and s["volumes"]["vol"]["retention"] == SHORTER
    day = 86400 * 10**9
    assert st.locally_effective_retention(s, "vol", NOW + 1, day)["lock_s"] == RET["lock_s"]
    for _ in range(st.REQUESTS_MAX + 10):  # a's own finished records: its applied weakening is the oldest
        s, q = run(s, cmd("request", "a", action="set_retention", args={"volume": "vol", "retention": dict(SHORTER)}),
                   AT_ONCE)
        s, _ = run(s, cmd("veto", "c", request=q["request"]), AT_ONCE)
    assert status(s, r["request"]) == "applied"
    assert st.locally_effective_retention(s, "vol", NOW + 1, day)["lock_s"] == RET["lock_s"]


def test_another_sites_veto_still_vetoes_and_is_counted() -> None:
    s = with_volume()
    s, r = run(s, cmd("request", "a", action="set_retention", args={"volume": "vol", "retention": SHORTER}))
    s, v = run(s, cmd("veto", "b", request=r["request"]))
    assert v["status"] == "vetoed" and s["vetoes"] == {"b": 1} and status(s, r["request"]) == "vetoed"


# --------------------------------------------------------------------------- F6: printable text


@pytest.mark.parametrize("text", ["routine\n2026-12-07 12:00:01,000 WARNING forged", "tab\there", "esc\x1b[31m",
                                  "line\u2028sep", "cr\r", "nul\x00", "zero\u200bwidth"])
def test_names_and_reasons_with_non_printable_characters_are_refused(text: str) -> None:
    s = with_volume()
    res = refused(s, cmd("request", "a", action="set_retention", args={"volume": "vol", "retention": SHORTER},
                         reason=text), "bad_request")
    assert res["evidence"]["refusal"] == "not_printable" and res["evidence"]["value"].isprintable(), res
    res = refused(s, cmd("add_volume", "a", volume=text, primary="a", block_size=65536, size_bytes=0, min_copies=2,
                         retention=dict(RET)), "bad_request")
    assert res["evidence"]["field"] == "volume" and res["evidence"]["value"].isprintable()
    assert all(v.isprintable() for v in s["volumes"])


def test_printable_text_beyond_ascii_is_accepted() -> None:
    s = with_volume()
    s, r = run(s, cmd("request", "a", action="set_retention", args={"volume": "vol", "retention": SHORTER},
                      reason="Zürich: quarterly audit, übertrag"))
    assert r["status"] == "pending"
    run(s, cmd("add_volume", "a", volume="bürgerämter db", primary="a", block_size=65536, size_bytes=0, min_copies=2,
               retention=dict(RET)))


# --------------------------------------------------------------------------- F4: volume quota


def test_one_site_registers_at_most_its_share_of_the_volume_table() -> None:
    s = founded()
    for i in range(st.VOLUMES_PER_SITE_MAX):
        s, _ = run(s, cmd("add_volume", "a", volume=f"junk{i}", primary="a", block_size=65536, size_bytes=0,
                          min_copies=2, retention=dict(RET)))
    res = refused(s, cmd("add_volume", "a", volume="one-more", primary="a", block_size=65536, size_bytes=0,
                         min_copies=2, retention=dict(RET)), "conflict")
    assert res["evidence"]["refusal"] == "volume_quota" and res["evidence"]["registered"] == st.VOLUMES_PER_SITE_MAX
    for i in range(st.VOLUMES_MAX - st.VOLUMES_PER_SITE_MAX):  # the honest sites keep the rest of the table
        s, _ = run(s, cmd("add_volume", "bc"[i % 2], volume=f"ehr{i}", primary="bc"[i % 2], block_size=65536,
                          size_bytes=0, min_copies=2, retention=dict(RET)))
    res = refused(s, cmd("add_volume", "b", volume="full", primary="b", block_size=65536, size_bytes=0, min_copies=2,
                         retention=dict(RET)), "conflict")
    assert res["evidence"]["max_volumes"] == st.VOLUMES_MAX and "refusal" not in res["evidence"]
    # a majority revokes a: its volumes stay on record but no longer count against the table
    s, req = run(s, cmd("request", "b", action="revoke_site", args=revoke("a")))
    s, _ = run(s, cmd("approve", "c", request=req["request"]))
    s, _ = after(s, MIN15)
    assert st.is_revoked(s, "a")
    s, added = run(s, cmd("add_volume", "b", volume="lab", primary="b", block_size=65536, size_bytes=0, min_copies=2,
                          retention=dict(RET)))
    assert added["created"] and "junk0" in s["volumes"]


# --------------------------------------------------------------------------- F5: state growth


def test_min_copies_is_the_operators_choice() -> None:
    """min_copies 1 commits with the primary alone, also with two data sites (a cluster of two
    data sites and a witness keeps committing while the other data site is down); min_copies 2
    needs a second holder (review R10, F2: the forced second holder stopped the surviving site)."""
    s = with_volume(min_copies=1)
    s, res = run(s, snapshot(1, holders=("a",)))
    assert res["ok"], res
    s = with_volume(min_copies=2)
    res = refused(s, snapshot(1, holders=("a",)), "conflict")
    assert res["evidence"]["copies_needed"] == 2 and res["evidence"]["min_copies"] == 2


def test_a_sites_junk_volumes_never_refuse_another_volumes_commit(monkeypatch) -> None:
    """Review R10, F2 (a): site a registered ehr, b is its primary now; a fills volumes of its own
    to the per-volume bound (an honest c acknowledging) and is revoked: b's commits of ehr still
    apply. Every record bound is the volume's own (SNAPSHOTS_MAX, here 5)."""
    monkeypatch.setattr(st, "SNAPSHOTS_MAX", 5)
    s = with_volume(name="ehr")
    for seq in (1, 2):
        s, _ = run(s, snapshot(seq, volume="ehr"))
    s, r = run(s, cmd("promote", "b", volume="ehr", to="b", expected_epoch=1, force=True))
    assert r["ok"] and st.registered_by(s["volumes"]["ehr"]) == "a", r
    for i in range(4):
        s, _ = run(s, cmd("add_volume", "a", volume=f"junk{i}", primary="a", block_size=65536, size_bytes=1 << 20,
                          min_copies=1, retention=dict(RET)))
        for seq in range(1, 6):
            s, res = run(s, snapshot(seq, volume=f"junk{i}", holders=("a", "c")))
            assert res["ok"], res
        res = refused(s, snapshot(6, volume=f"junk{i}", holders=("a", "c")), "conflict")  # its own bound
        assert res["evidence"]["max_snapshots"] == 5
    epoch = s["volumes"]["ehr"]["epoch"]
    s, res = run(s, {**snapshot(3, volume="ehr", by="b", holders=("b", "c")), "epoch": epoch})
    assert res["ok"], res
    s, req = run(s, cmd("request", "b", action="revoke_site", args=revoke("a")))
    s, _ = run(s, cmd("approve", "c", request=req["request"]))
    s, _ = after(s, 10**15)
    assert st.is_revoked(s, "a")
    later = NOW + 10**15
    s, res = run(s, {**snapshot(4, volume="ehr", by="b", holders=("b", "c")), "epoch": epoch, "now_ns": later,
                     "created_at_ns": later})
    assert res["ok"], res
