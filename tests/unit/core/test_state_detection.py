"""State machine, issue 14: every data site's own verdict (``site_verdict``), the detection
policy in Raft (``set_detection``: any change is an approved request, a weakening also cools off), and the child of a
suspect snapshot recorded suspect whatever the primary proposes. Signed commands, real Trust."""

from __future__ import annotations

from replicad.core.anomaly import POLICY_DEFAULTS
from replicad.core import identity
from replicad.core.state import (RULES_MAX, detection_policy, disagreement, list_requests, newest_clean, suspect_pins,
                                 suspect_quorum, suspect_voters)
from tests.unit.core.test_identity import COOLING, KEYS, NOW, ROOT, S, acks, cluster, cmd, ok, refused  # noqa: F401

KEYS_PUBLIC = {s: identity.format_public_key(identity.public_key_raw(k)) for s, k in KEYS.items()}


def commit(state: dict, seq: int, verdict: str = "clean", parent: int | None = None) -> dict:
    state, _ = ok(state, cmd("commit_snapshot", by="a", volume="vol", seq=seq, epoch=1, root=ROOT, parent_seq=parent,
                             created_at_ns=state["clocks"]["a"], holders=["a", "b"], acks=acks(seq, "b"), stats={},
                             size_bytes=0,
                             verdict=verdict))
    return state


def opinion(state: dict, by: str, seq: int, verdict: str, **kw) -> tuple[dict, dict]:
    args = {"volume": "vol", "seq": seq, "verdict": verdict, "score_ppm": kw.get("score_ppm", 0),
            "cumulative_ppm": 0, "first_seq": kw.get("first_seq"), "reason": kw.get("reason", "")}
    return ok(state, cmd("site_verdict", by=by, **args))


def test_two_replicas_suspect_opinions_override_the_primarys_clean_commit(cluster: dict) -> None:
    """A lying primary (clean commit, clean opinion) is stopped by the two honest replicas."""
    state = commit(cluster, 1)
    state, res = opinion(state, "a", 1, "clean")
    assert res["changed"] and state["volumes"]["vol"]["snapshots"][1]["verdict"] == "clean"
    assert not disagreement(state["volumes"]["vol"]["snapshots"][1])
    state, res = opinion(state, "b", 1, "suspect", score_ppm=500_000, reason="50% turned random")
    snap = state["volumes"]["vol"]["snapshots"][1]
    assert not res["flipped"] and snap["verdict"] == "clean" and res["suspect_sites"] == ["b"] and res["needed"] == 2
    assert disagreement(snap)
    state, res = opinion(state, "c", 1, "suspect", score_ppm=500_000, reason="50% turned random")
    snap = state["volumes"]["vol"]["snapshots"][1]
    assert res["flipped"] and snap["verdict"] == "suspect" and res["suspect_sites"] == ["b", "c"]
    assert snap["verdict_reason"].startswith("judged suspect by b, c: 50% turned random"), snap


def test_one_sites_suspect_opinion_is_its_own_whoever_it_is(cluster: dict) -> None:
    """One site's word, replica or primary, never makes the cluster's verdict suspect: it holds
    only that site's standby (the daemon's own-opinion rule), and a clean opinion after it
    changes nothing either. The snapshot stays a disagreement."""
    for liar, honest in (("a", ("b", "c")), ("b", ("a", "c"))):
        state = commit(cluster, 1)
        state, res = opinion(state, liar, 1, "suspect", reason="everything is suspect")
        assert not res["flipped"] and res["verdict"] == "clean"
        for site in honest:
            state, _ = opinion(state, site, 1, "clean")
        snap = state["volumes"]["vol"]["snapshots"][1]
        assert snap["verdict"] == "clean" and disagreement(snap), liar
        state = commit(state, 2, "clean", parent=1)  # no taint: its parent is clean for the cluster
        assert state["volumes"]["vol"]["snapshots"][2]["verdict"] == "clean"
        assert newest_clean(state["volumes"]["vol"]) == 2  # a promotion's default restore point


def test_a_revoked_sites_opinion_does_not_count_and_two_data_sites_need_both(cluster: dict) -> None:
    state, _ = ok(cluster, cmd("request", by="b", action="revoke_site",
                               args={"site_id": "c", "keys": [KEYS_PUBLIC["c"]]}))
    state, _ = ok(state, cmd("approve", by="a", request=list_requests(state)[-1]["id"]))
    assert suspect_quorum(state) == 2  # a and b left: both
    state = commit(state, 1)
    snap = state["volumes"]["vol"]["snapshots"][1]
    snap = {**snap, "opinions": {"c": {"verdict": "suspect"}, "b": {"verdict": "suspect"}}}
    assert suspect_voters(state, snap) == ["b"]
    state, res = opinion(state, "b", 1, "suspect")
    assert not res["flipped"] and res["suspect_sites"] == ["b"]
    state, res = opinion(state, "a", 1, "suspect")
    assert res["flipped"] and state["volumes"]["vol"]["snapshots"][1]["verdict"] == "suspect"


def test_a_one_data_site_cluster_needs_its_own_word_only() -> None:
    from replicad.core.state import initial_state
    state = initial_state(members=("a", "b", "c"), rules=RULES_MAX)
    state, _ = ok(state, cmd("register_site", by="a", site_id="a", peer_url="https://a:7443", kind="data"))
    for w in ("b", "c"):
        state, _ = ok(state, cmd("register_site", by=w, site_id=w, peer_url=f"https://{w}:7443", kind="witness"))
    assert suspect_quorum(state) == 1


def test_an_opinion_is_written_once(cluster: dict) -> None:
    state = commit(cluster, 1)
    state, _ = opinion(state, "b", 1, "suspect")
    state, res = opinion(state, "b", 1, "suspect")
    assert res["changed"] is False
    refused(state, cmd("site_verdict", by="b", volume="vol", seq=1, verdict="clean", score_ppm=0, cumulative_ppm=0,
                       first_seq=None, reason=""), "conflict")


def test_the_child_of_a_suspect_snapshot_is_suspect_whatever_the_primary_says(cluster: dict) -> None:
    state = commit(cluster, 1)
    state, _ = opinion(state, "b", 1, "suspect")
    state, _ = opinion(state, "c", 1, "suspect")
    state = commit(state, 2, "clean", parent=1)
    snap = state["volumes"]["vol"]["snapshots"][2]
    assert snap["verdict"] == "suspect" and snap["verdict_reason"].startswith("descends from suspect snapshot #1")


def test_a_confirmed_snapshot_stays_clean_and_its_tainted_children_are_cleared(cluster: dict) -> None:
    state = commit(cluster, 1)
    state, _ = opinion(state, "b", 1, "suspect")
    state, _ = opinion(state, "a", 1, "suspect")
    state = commit(state, 2, "clean", parent=1)
    state, _ = ok(state, cmd("request", by="b", action="mark_verdict",
                             args={"volume": "vol", "seq": 1, "verdict": "clean", "reason": "false alarm: import"}))
    state, _ = ok(state, cmd("approve", by="c", request=list_requests(state)[0]["id"]))
    snaps = state["volumes"]["vol"]["snapshots"]
    assert snaps[1]["verdict"] == "clean" and snaps[1]["confirmed"] is True and snaps[2]["verdict"] == "clean"
    state, _ = opinion(state, "c", 1, "suspect")  # a late opinion does not undo a person's confirmation
    assert state["volumes"]["vol"]["snapshots"][1]["verdict"] == "clean"


def test_a_detection_change_applies_only_as_an_approved_request(cluster: dict) -> None:
    """Any change of a volume's detection policy applies everywhere, so it needs the approvals of
    other sites: all-zero thresholds on one site's word would make every snapshot suspect at every
    site (standbys held, pruning stopped) and undoing them is a weakening."""
    assert detection_policy(cluster["volumes"]["vol"]) == POLICY_DEFAULTS
    stricter = {**POLICY_DEFAULTS, "min_score": 0.01}
    res = refused(cluster, cmd("set_detection", by="a", volume="vol", policy=stricter), "approval_required")
    assert res["evidence"]["changed"] == ["min_score"] and res["evidence"]["weakened"] == []
    state, res = ok(cluster, cmd("set_detection", by="a", volume="vol", policy=dict(POLICY_DEFAULTS)))
    assert res["changed"] is False  # the same policy again changes nothing and needs nobody
    state, res = ok(state, cmd("request", by="a", action="set_detection", args={"volume": "vol", "policy": stricter}))
    assert res["status"] == "pending" and detection_policy(state["volumes"]["vol"]) == POLICY_DEFAULTS
    state, res = ok(state, cmd("approve", by="b", request=res["request"]))
    assert res["status"] == "applied" and detection_policy(state["volumes"]["vol"])["min_score"] == 0.01
    weaker = {**POLICY_DEFAULTS, "min_score": 1.0}
    refused(state, cmd("set_detection", by="a", volume="vol", policy=weaker), "approval_required")
    refused(state, cmd("set_detection", by="a", volume="vol", policy={**POLICY_DEFAULTS, "min_score": 7}),
            "bad_request")
    state, _ = ok(state, cmd("request", by="a", action="set_detection", args={"volume": "vol", "policy": weaker}))
    assert detection_policy(state["volumes"]["vol"])["min_score"] == 0.01  # pending
    state, _ = ok(state, cmd("approve", by="b", request=list_requests(state)[0]["id"]))
    assert detection_policy(state["volumes"]["vol"])["min_score"] == 1.0


def test_a_stricter_detection_request_cools_off_too_and_a_third_site_vetoes_it(cluster: dict) -> None:
    """Review R7 (F2): site-a's request for all-zero thresholds approved with a stolen admin token
    of site-b applied at once (a stricter policy had no cooling-off): every later snapshot suspect
    at every site, standbys held, pruning frozen, and the undo a weakening site-a vetoes. Now any
    detection change cools off, and site-c's veto stops it."""
    strict = {**POLICY_DEFAULTS, "min_score": 0.0, "cumulative_max": 0.0, "wipe_max": 0.0, "conserve_max": 0.0,
              "factor": 1.0, "rename_min": 1, "magic_min": 1, "window_s": 366 * 86400}
    state, res = ok(cluster, cmd("request", by="a", action="set_detection", args={"volume": "vol", "policy": strict}),
                    COOLING)
    assert res["status"] == "pending" and detection_policy(state["volumes"]["vol"]) == POLICY_DEFAULTS
    request = res["request"]
    state, res = ok(state, cmd("approve", by="b", request=request), COOLING)  # the stolen token's approval
    assert res["status"] == "approved" and res["effective_ns"] > NOW
    assert detection_policy(state["volumes"]["vol"]) == POLICY_DEFAULTS  # cooling off: nothing applied
    vetoed, res = ok(state, cmd("veto", by="c", request=request), COOLING)
    assert res["status"] == "vetoed"
    end = NOW + COOLING.cooling_off_ns

    def clocks(state: dict) -> dict:
        for site in ("a", "b", "c"):
            state, _ = ok(state, cmd("clock", by=site, now_ns=end), COOLING)
        return state
    assert detection_policy(clocks(vetoed)["volumes"]["vol"]) == POLICY_DEFAULTS
    # unvetoed, it applies once the cooling-off ended (by the majority clock)
    assert detection_policy(clocks(state)["volumes"]["vol"]) == strict


def test_a_ransom_note_pattern_re2_refuses_is_refused_at_apply(cluster: dict) -> None:
    """A backtracking-only pattern (look-around, a backreference) is ``bad_request`` in every op
    that carries a policy, before any approval is counted; a pattern RE2 takes (even one that
    backtracks catastrophically in Python's ``re``) is matched in linear time and is accepted."""
    for evil in (r"(?=(\w+)+!)x", r"(\w+)\1+!", r"(?<!a)b"):
        policy = {**POLICY_DEFAULTS, "ransom_notes": [*POLICY_DEFAULTS["ransom_notes"], evil]}
        for command in (cmd("set_detection", by="a", volume="vol", policy=policy),
                        cmd("request", by="a", action="set_detection", args={"volume": "vol", "policy": policy}),
                        cmd("add_volume", by="a", volume="new", primary="a", block_size=65536, size_bytes=0,
                            min_copies=2, retention=cluster["volumes"]["vol"]["retention"], detection=policy)):
            res = refused(cluster, command, "bad_request")
            assert "RE2" in res["message"], res
    policy = {**POLICY_DEFAULTS, "ransom_notes": [*POLICY_DEFAULTS["ransom_notes"], "(?s)(.+)+\x01Z"]}
    state, res = ok(cluster, cmd("request", by="a", action="set_detection", args={"volume": "vol", "policy": policy}))
    assert res["status"] == "pending"


def test_the_primarys_commit_screen_is_no_opinion_to_disagree_with(cluster: dict) -> None:
    """Issue 17, item 4: an honest primary commits clean (whole-volume screen), then judges the
    snapshot suspect itself (relative judge): every opinion says suspect, nothing disagrees."""
    state = commit(cluster, 1, "clean")
    state, res = opinion(state, "a", 1, "suspect", score_ppm=120_000, reason="text turned random")
    snap = state["volumes"]["vol"]["snapshots"][1]
    assert not res["flipped"] and snap["verdict"] == "clean"  # the primary's opinion is one site's word
    assert not disagreement(snap)
    state, res = opinion(state, "b", 1, "suspect")
    assert res["flipped"] and not disagreement(state["volumes"]["vol"]["snapshots"][1])
    state, _ = opinion(state, "c", 1, "clean")  # a site's own opinion against the others': a disagreement
    assert disagreement(state["volumes"]["vol"]["snapshots"][1])


def test_a_suspect_commit_screen_against_clean_opinions_is_no_disagreement(cluster: dict) -> None:
    state = commit(cluster, 1, "suspect")
    state, _ = opinion(state, "a", 1, "clean")
    state, _ = opinion(state, "b", 1, "clean")
    snap = state["volumes"]["vol"]["snapshots"][1]
    assert snap["verdict"] == "suspect" and not disagreement(snap)  # the screen still makes it suspect


def test_one_site_registers_a_volume_with_the_default_detection_only(cluster: dict) -> None:
    """The ``add_volume`` that creates a volume may carry the default policy only: a compromised
    site registered a volume with every threshold at 1.0 and encrypted mode on its own signature
    (every site then judged ciphertext clean), or could with every threshold at 0 (every snapshot
    suspect everywhere). ``[volumes.detection] mode = "encrypted"``: the daemon registers with the
    defaults and requests the mode (approvals, cooling-off)."""
    vol = {"volume": "enc", "primary": "a", "block_size": 65536, "size_bytes": 0, "min_copies": 2,
           "retention": cluster["volumes"]["vol"]["retention"]}
    refused(cluster, cmd("add_volume", by="a", **vol, detection={**POLICY_DEFAULTS, "mode": "luks"}), "bad_request")
    weak = {**POLICY_DEFAULTS, "mode": "encrypted", "cold_max": 1.0, "change_max": 1.0, "wipe_max": 1.0,
            "cumulative_max": 1.0, "rename_min": 10**9}
    strict = {**POLICY_DEFAULTS, "min_score": 0.0, "cumulative_max": 0.0, "wipe_max": 0.0, "factor": 1.0}
    for policy in (weak, {**POLICY_DEFAULTS, "mode": "encrypted"}, {**POLICY_DEFAULTS, "min_score": 1.0},
                   {**POLICY_DEFAULTS, "ransom_notes": []}, strict,
                   {**POLICY_DEFAULTS, "min_score": POLICY_DEFAULTS["min_score"] / 2}):
        res = refused(cluster, cmd("add_volume", by="a", **vol, detection=policy), "approval_required")
        assert "enc" not in cluster["volumes"] and res["evidence"]["changed"], res
    state, res = ok(cluster, cmd("add_volume", by="a", **vol, detection=dict(POLICY_DEFAULTS)))
    assert res["created"] and detection_policy(state["volumes"]["enc"]) == POLICY_DEFAULTS
    # without the key the volume starts with the defaults, as before
    state, _ = ok(state, cmd("add_volume", by="a", **{**vol, "volume": "plain"}))
    assert detection_policy(state["volumes"]["plain"]) == POLICY_DEFAULTS


def tick(state: dict, now_ns: int) -> dict:
    for site in ("a", "b", "c"):
        state, _ = ok(state, cmd("clock", by=site, now_ns=now_ns))
    return state


def prune(state: dict, seqs: list[int], now_ns: int) -> dict:
    return ok(state, cmd("prune_snapshots", volume="vol", seqs=seqs, now_ns=now_ns))[0]


def test_one_sites_suspect_opinion_pins_pruning_for_the_keep_all_window_only(cluster: dict) -> None:
    """A lone suspect vote keeps the snapshot it names and the clean one it points back to for
    ``keep_all_s`` (3600 s here) after the majority recorded it, by the majority's clock: never
    less (a proposer's clock ahead does not shorten it), never longer (the voter's own stamp far
    ahead does not lengthen it)."""
    state = commit(cluster, 1)
    for seq in (2, 3, 4, 5):
        state = commit(state, seq, parent=seq - 1)
    # past keep_all from their creation: the grid keeps only the newest of their hour (#5)
    voted = NOW + 3601 * S
    state = tick(state, voted)
    assert refused(state, cmd("prune_snapshots", volume="vol", seqs=[5], now_ns=voted), "retention_locked")
    # site b (compromised or strict) calls #4 suspect, first suspicious #3, its clock a year ahead
    state, res = ok(state, cmd("site_verdict", by="b", now_ns=voted + 365 * 86400 * S, volume="vol", seq=4,
                               verdict="suspect", score_ppm=0, cumulative_ppm=0, first_seq=3, reason="says b"))
    assert not res["flipped"]
    vol = state["volumes"]["vol"]
    assert vol["snapshots"][4]["opinions"]["b"]["recorded_ns"] == voted
    assert set(suspect_pins(vol, voted)) == {4, 2}  # the snapshot voted on, the clean one before #3
    later = voted + 1800 * S  # inside keep_all (3600 s) after the vote
    state = tick(state, later)
    for seq in (2, 4):
        res = refused(state, cmd("prune_snapshots", volume="vol", seqs=[seq], now_ns=later + 7200 * S),
                      "retention_locked")
        assert "suspect opinion" in res["message"] and "b" in res["evidence"]["pinned_by"], res
    state = prune(state, [1, 3], later)  # the rest of the history is the grid's
    after = voted + 3601 * S
    state = tick(state, after)
    assert suspect_pins(state["volumes"]["vol"], after) == {}
    state = prune(state, [2, 4], after)
    assert sorted(state["volumes"]["vol"]["snapshots"]) == [5]


def test_a_lone_vote_pins_at_most_two_snapshots_however_far_back_it_points(cluster: dict) -> None:
    """The attacker's lever on the disk: a suspect vote on every new snapshot pointing back to the
    first pins the newest clean one before that, one snapshot, plus the voted ones inside the
    keep-all window they are in anyway."""
    state = commit(cluster, 1)
    for seq in range(2, 9):
        state = commit(state, seq, parent=seq - 1)
        state, _ = opinion(state, "b", seq, "suspect", first_seq=2)
    pins = suspect_pins(state["volumes"]["vol"], NOW)
    assert set(pins) == {1, *range(2, 9)} and all(state["volumes"]["vol"]["snapshots"][s]["verdict"] == "clean"
                                                  for s in range(1, 9))
    assert "points back to" in pins[1]
    after = NOW + 3601 * S
    state = tick(state, after)
    state = prune(state, list(range(1, 8)), after)  # one window later: nothing of it is held
    assert sorted(state["volumes"]["vol"]["snapshots"]) == [8]


def test_two_sites_suspect_opinions_freeze_pruning_until_a_person_clears_it(cluster: dict) -> None:
    state = commit(cluster, 1)
    state = commit(state, 2, parent=1)
    state = commit(state, 3, parent=2)
    state, _ = opinion(state, "b", 3, "suspect")
    state, _ = opinion(state, "c", 3, "suspect")
    later = NOW + 10 * 86400 * S  # long past keep_all: the freeze is no window
    state = tick(state, later)
    res = refused(state, cmd("prune_snapshots", volume="vol", seqs=[1], now_ns=later), "retention_locked")
    assert "frozen" in res["message"], res
    state, _ = ok(state, cmd("request", by="b", now_ns=later, action="mark_verdict",
                             args={"volume": "vol", "seq": 3, "verdict": "clean", "reason": "false alarm"}))
    state, _ = ok(state, cmd("approve", by="c", now_ns=later, request=list_requests(state)[-1]["id"]))
    assert suspect_pins(state["volumes"]["vol"], later) == {}  # a person's confirmation ends the pins too
    state = prune(state, [1, 2], later)
