"""State machine: a person's ``mark_verdict suspect`` is the marking site's suspect vote (review R3).

One site's mark holds that site's own standby (``marked_suspect``), pins pruning like a lone
opinion and counts toward ``mark_quorum`` with the sites' opinions, one site once; the
cluster's verdict turns on the words of three sites (``MARK_SITES_MIN``) with persons' marks
among them, or on two sites' detector opinions (review R7, F2: site-a's mark and a stolen admin
token's at site-b are two sites' marks). A witness's mark is refused. Fewer marks leave
``confirmed`` alone; an approved confirmation drops the marks made before it."""

from __future__ import annotations

from replicad.core.state import (held_by_marks, mark_quorum, marked_suspect, newest_clean, opinion_voters, suspect_pins,
                                 suspect_quorum, suspect_voters, turns_suspect)
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
    assert res["suspect_sites"] == ["c"] and res["needed"] == 3 and res["needed_opinions"] == 2
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


def test_two_sites_marks_or_a_mark_and_an_opinion_hold_only_the_marking_sites(cluster: dict) -> None:
    """Review R7 (F2): site-a (the attacker: its own marks and opinions) and one stolen admin
    token of site-b (marks in b's name) give two sites' words, every detector but a's saying
    clean. Before, the cluster's verdict turned: site-c's standby rolled back #4 -> #1 and its
    takeover restored #1. Now it stays clean; each mark holds its own site's standby only."""
    state = chain(cluster, 4)
    for seq in (2, 3, 4):
        for site in ("b", "c"):
            state, _ = opinion(state, site, seq, "clean")
        state, _ = opinion(state, "a", seq, "suspect")  # the attacker's own detector lies
        state, res = mark(state, "b", seq, reason="stolen token")
        assert not res["flipped"] and res["verdict"] == "clean" and res["suspect_sites"] == ["a", "b"]
        assert res["opinion_sites"] == ["a"] and (res["needed"], res["needed_opinions"]) == (3, 2)
        state, res = mark(state, "a", seq)
        assert not res["flipped"] and res["suspect_sites"] == ["a", "b"]
    vol = state["volumes"]["vol"]
    assert all(vol["snapshots"][q]["verdict"] == "clean" for q in (1, 2, 3, 4))
    assert held_by_marks(vol, "c") == set() and held_by_marks(vol, "b") == {2, 3, 4}
    assert newest_clean(vol) == 4  # site-c's takeover: the newest snapshot it judged clean
    state, _ = ok(state, commit(5, parent_seq=4, created_at_ns=NOW))  # no descent from a suspect one
    assert state["volumes"]["vol"]["snapshots"][5]["verdict"] == "clean"
    # the other order (the opinion last) turns nothing either
    s2 = chain(cluster, 2)
    s2, _ = mark(s2, "a", 2)
    s2, _ = mark(s2, "b", 2)
    s2, res = opinion(s2, "a", 2, "suspect")
    assert not res["flipped"] and res["suspect_sites"] == ["a", "b"] and res["needed_with_marks"] == 3


def test_three_sites_words_or_two_sites_opinions_turn_the_cluster(cluster: dict) -> None:
    state = chain(cluster, 3)
    # two detectors: as before, whatever the persons say
    s1, _ = opinion(state, "b", 2, "suspect")
    s1, res = opinion(s1, "c", 2, "suspect")
    assert res["flipped"]
    assert s1["volumes"]["vol"]["snapshots"][2]["verdict_reason"].startswith("judged suspect by b, c")
    # two marks and a third site's opinion: three sites, one of them honest whoever lies
    s2, _ = mark(state, "a", 3)
    s2, _ = mark(s2, "b", 3, reason="notes on the share")
    s2, res = opinion(s2, "c", 3, "suspect")
    assert res["flipped"] and res["suspect_sites"] == ["a", "b", "c"]
    # an honest operator at each site: the third mark turns it
    s3, _ = mark(state, "b", 3)
    s3, _ = mark(s3, "c", 3)
    s3, res = mark(s3, "a", 3, reason="notes on the share")
    assert res["flipped"] and s3["volumes"]["vol"]["snapshots"][3]["verdict_reason"] == \
        "judged suspect by a, b, c: notes on the share"
    # one site's opinion and its own person's mark: still one site
    s4, _ = opinion(state, "b", 3, "suspect")
    s4, res = mark(s4, "b", 3)
    assert not res["flipped"] and res["suspect_sites"] == ["b"]
    assert s4["volumes"]["vol"]["snapshots"][3]["verdict"] == "clean"


def test_once_the_attacker_is_revoked_two_honest_operators_marks_turn_the_cluster(cluster: dict) -> None:
    """``mark_quorum`` counts the unrevoked data sites: with site-a revoked (a majority's
    ``revoke_site``) two data sites are left and the marks of both are every data site's word."""
    state = chain(cluster, 2)
    state, _ = mark(state, "b", 2)
    state, _ = mark(state, "c", 2)
    snap = state["volumes"]["vol"]["snapshots"][2]
    assert snap["verdict"] == "clean" and (mark_quorum(state), suspect_quorum(state)) == (3, 2)
    revoked = {**state, "revoked": {"a": {"at_ns": NOW}}}
    assert mark_quorum(revoked) == 2 and turns_suspect(revoked, snap) and not turns_suspect(state, snap)
    assert opinion_voters(revoked, snap) == []
    # the marks made after the revocation count under the smaller quorum
    other = chain(cluster, 2)
    other = {**other, "revoked": {"a": {"at_ns": NOW}}}
    other, _ = mark(other, "b", 2)
    other, res = mark(other, "c", 2)
    assert res["flipped"] and res["needed"] == 2


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
    # the detectors' opinions do not outweigh a person's confirmation; three sites' persons' marks do
    state, res = opinion(state, "b", 3, "suspect")
    assert not res["flipped"] and state["volumes"]["vol"]["snapshots"][3]["confirmed"] is True
    state, res = mark(state, "a", 3)
    assert not res["flipped"] and res["suspect_sites"] == ["a", "c"]  # two marks (b's opinion: confirmed)
    turned, res = mark(state, "b", 3)
    assert res["flipped"] and res["suspect_sites"] == ["a", "b", "c"]
    assert turned["volumes"]["vol"]["snapshots"][3]["verdict"] == "suspect"
    assert turned["volumes"]["vol"]["snapshots"][3]["confirmed"] is False
    # instead: an approved confirmation answers a's and c's marks (dropped), b's opinion stays on record
    state, _ = approved(state, "mark_verdict", by="a", approver="b", volume="vol", seq=3, verdict="clean",
                        reason="checked again")
    snap = state["volumes"]["vol"]["snapshots"][3]
    assert "marks" not in snap and snap["confirmed"] is True and snap["opinions"]["b"]["verdict"] == "suspect"
    state, res = mark(state, "c", 3)
    assert not res["flipped"] and res["suspect_sites"] == ["c"]  # a's old mark no longer counts
    state, res = mark(state, "a", 3)
    assert not res["flipped"] and res["suspect_sites"] == ["a", "c"]
    state, res = mark(state, "b", 3)
    assert res["flipped"]


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
