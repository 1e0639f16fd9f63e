"""State machine: a person's ``mark_verdict suspect`` is the marking site's suspect vote (review R3).

One site's mark holds that site's own standby (``marked_suspect``), pins pruning like a lone
opinion and counts toward ``suspect_quorum`` with the sites' opinions, one site once; the
cluster's verdict turns only on a second site's word. A witness's mark is refused. A lone mark
leaves ``confirmed`` alone; an approved confirmation drops the marks made before it."""

from __future__ import annotations

from replicad.core.state import held_by_marks, marked_suspect, newest_clean, suspect_pins, suspect_voters
from tests.unit.core.test_state import NOW, S, approved, cluster, cmd, commit, ok, refused, tick  # noqa: F401


def chain(state: dict, upto: int) -> dict:
    for seq in range(1, upto + 1):
        state, _ = ok(state, commit(seq, parent_seq=seq - 1 if seq > 1 else None,
                                    created_at_ns=NOW - (10 - seq) * 86400 * S))
    return tick(state, NOW)


def mark(state: dict, by: str, seq: int, verdict: str = "suspect", **kw) -> tuple[dict, dict]:
    return ok(state, cmd("mark_verdict", by=by, volume="vol", seq=seq, verdict=verdict, reason=kw.get("reason", "x"),
                         now_ns=kw.get("now_ns", NOW)))


def opinion(state: dict, by: str, seq: int, verdict: str) -> tuple[dict, dict]:
    return ok(state, cmd("site_verdict", by=by, volume="vol", seq=seq, verdict=verdict, score_ppm=0,
                         cumulative_ppm=0, first_seq=None, reason="judged"))


def test_one_sites_mark_holds_its_own_standby_only_and_the_descendants_stay_clean(cluster: dict) -> None:
    """The R3 attack: site-c marks #2 suspect. Before, the cluster's verdict flipped at once, the
    primary's later clean commits were suspect by descent and a takeover restored #1."""
    state = chain(cluster, 2)
    state, res = mark(state, "c", 2, reason="ransom note seen here")
    snap = state["volumes"]["vol"]["snapshots"][2]
    assert res["verdict"] == "clean" and not res["flipped"] and res["changed"] is True
    assert res["suspect_sites"] == ["c"] and res["needed"] == 2
    assert snap["verdict"] == "clean" and snap["verdict_reason"] != "ransom note seen here"
    assert marked_suspect(snap, "c") and not marked_suspect(snap, "b") and not marked_suspect(snap, "a")
    assert snap["marks"]["c"]["recorded_ns"] == NOW  # the majority's clock, for the pin
    for seq in (3, 4, 5):  # the primary's later clean commits are no descendants of a suspect one
        state, res = ok(state, commit(seq, parent_seq=seq - 1, created_at_ns=NOW))
        assert state["volumes"]["vol"]["snapshots"][seq]["verdict"] == "clean"
    assert newest_clean(state["volumes"]["vol"]) == 5  # a promotion's default restore point
    # the same mark again changes nothing (no second vote of one site)
    again, res = mark(state, "c", 2)
    assert res["changed"] is False and again["volumes"] == state["volumes"]


def test_a_second_sites_word_turns_the_cluster_whether_mark_or_opinion(cluster: dict) -> None:
    state = chain(cluster, 3)
    # a mark and another site's opinion: two sites
    s1, _ = mark(state, "b", 2)
    s1, res = opinion(s1, "c", 2, "suspect")
    assert res["flipped"] and s1["volumes"]["vol"]["snapshots"][2]["verdict"] == "suspect"
    assert s1["volumes"]["vol"]["snapshots"][2]["verdict_reason"].startswith("judged suspect by b, c")
    # an opinion then another site's mark
    s2, _ = opinion(state, "a", 3, "suspect")
    s2, res = mark(s2, "b", 3, reason="notes on the share")
    assert res["flipped"] and res["suspect_sites"] == ["a", "b"]
    assert s2["volumes"]["vol"]["snapshots"][3]["verdict_reason"] == "judged suspect by a, b: notes on the share"
    # one site's opinion and its own person's mark: still one site
    s3, _ = opinion(state, "b", 3, "suspect")
    s3, res = mark(s3, "b", 3)
    assert not res["flipped"] and res["suspect_sites"] == ["b"]
    assert s3["volumes"]["vol"]["snapshots"][3]["verdict"] == "clean"


def test_a_witness_mark_is_refused_and_a_revoked_sites_counts_for_nothing(cluster: dict) -> None:
    state = chain(cluster, 2)
    result = refused(state, cmd("mark_verdict", by="w", volume="vol", seq=2, verdict="suspect", reason="x"),
                     "conflict")
    assert "witness" in result["message"]
    state, _ = mark(state, "c", 2)
    snap = state["volumes"]["vol"]["snapshots"][2]
    assert suspect_voters(state, snap) == ["c"]
    revoked = {**state, "revoked": {"c": {"at_ns": NOW}}}  # a majority's revoke_site (state.is_revoked)
    assert suspect_voters(revoked, snap) == []


def test_a_lone_mark_leaves_a_confirmation_and_a_confirmation_drops_the_marks(cluster: dict) -> None:
    state = chain(cluster, 3)
    state, _ = approved(state, "mark_verdict", by="a", approver="b", volume="vol", seq=3, verdict="clean",
                        reason="checked by hand")
    assert state["volumes"]["vol"]["snapshots"][3]["confirmed"] is True
    state, res = mark(state, "c", 3)
    snap = state["volumes"]["vol"]["snapshots"][3]
    assert snap["confirmed"] is True and snap["verdict"] == "clean" and marked_suspect(snap, "c")
    assert not res["flipped"]
    # the detectors' opinions do not outweigh a person's confirmation; a second person's mark does
    state, res = opinion(state, "b", 3, "suspect")
    assert not res["flipped"] and state["volumes"]["vol"]["snapshots"][3]["confirmed"] is True
    turned, res = mark(state, "a", 3)
    assert res["flipped"] and res["suspect_sites"] == ["a", "c"]
    assert turned["volumes"]["vol"]["snapshots"][3]["verdict"] == "suspect"
    assert turned["volumes"]["vol"]["snapshots"][3]["confirmed"] is False
    # instead: an approved confirmation answers c's mark (dropped), b's opinion stays on record
    state, _ = approved(state, "mark_verdict", by="a", approver="b", volume="vol", seq=3, verdict="clean",
                        reason="checked again")
    snap = state["volumes"]["vol"]["snapshots"][3]
    assert "marks" not in snap and snap["confirmed"] is True and snap["opinions"]["b"]["verdict"] == "suspect"
    state, res = mark(state, "a", 3)
    assert not res["flipped"] and res["suspect_sites"] == ["a"]  # c's old mark no longer counts


def test_a_site_takes_back_its_own_mark_only(cluster: dict) -> None:
    state = chain(cluster, 2)
    state, _ = mark(state, "b", 2)
    state, _ = mark(state, "c", 1)
    same, res = mark(state, "c", 2, verdict="clean")  # c has no mark on #2: b's stays, nothing changed
    assert marked_suspect(same["volumes"]["vol"]["snapshots"][2], "b")
    assert res["changed"] is False and same["volumes"] == state["volumes"]  # no AUDIT line at the other sites
    state, res = mark(state, "b", 2, verdict="clean", reason="my mistake")
    snap = state["volumes"]["vol"]["snapshots"][2]
    assert res["verdict"] == "clean" and "marks" not in snap and not snap["confirmed"]
    assert marked_suspect(state["volumes"]["vol"]["snapshots"][1], "c")


def test_a_lone_mark_pins_pruning_for_keep_all_by_the_majority_clock(cluster: dict) -> None:
    state = chain(cluster, 4)
    state, _ = mark(state, "b", 3, now_ns=NOW + 365 * 86400 * S)  # its own stamp far ahead: not what counts
    vol = state["volumes"]["vol"]
    assert vol["snapshots"][3]["marks"]["b"]["recorded_ns"] == NOW
    assert set(suspect_pins(vol, NOW)) == {3, 2}  # the marked one and the clean one before it
    res = refused(state, cmd("prune_snapshots", volume="vol", seqs=[3], now_ns=NOW), "retention_locked")
    assert "b" in res["evidence"]["pinned_by"]
    after = NOW + 3601 * S  # keep_all is 3600 s
    state = tick(state, after)
    assert suspect_pins(state["volumes"]["vol"], after) == {}
    state, res = ok(state, cmd("prune_snapshots", volume="vol", seqs=[2, 3], now_ns=after))
    assert res["pruned"] == [2, 3]


def test_a_mark_holds_the_marking_sites_standby_for_its_descendants_too(cluster: dict) -> None:
    """What a person saw in #2 is in #3 and #4 (its children): the marking site's own descent rule
    (the daemon's apply step and takeover skip ``held_by_marks``); other sites hold nothing."""
    state = chain(cluster, 4)
    state, _ = ok(state, commit(5, parent_seq=2, created_at_ns=NOW))  # a branch off #2 (a forced promotion's)
    state, _ = mark(state, "b", 3)
    vol = state["volumes"]["vol"]
    assert held_by_marks(vol, "b") == {3, 4} and held_by_marks(vol, "c") == set()
    state, _ = mark(state, "b", 2)
    assert held_by_marks(state["volumes"]["vol"], "b") == {2, 3, 4, 5}
    state, _ = mark(state, "b", 2, verdict="clean")  # taken back: #3's mark still holds its line
    assert held_by_marks(state["volumes"]["vol"], "b") == {3, 4}
    assert all(s["verdict"] == "clean" for s in state["volumes"]["vol"]["snapshots"].values())
