"""State machine, issue 14: every data site's own verdict (``site_verdict``), the detection
policy in Raft (``set_detection``: any change is an approved request, a weakening also cools off), and the child of a
suspect snapshot recorded suspect whatever the primary proposes. Signed commands, real Trust."""

from __future__ import annotations

from replicad.core.anomaly import POLICY_DEFAULTS
from replicad.core.state import detection_policy, disagreement, list_requests
from tests.unit.core.test_identity import COOLING, NOW, ROOT, acks, cluster, cmd, ok, refused  # noqa: F401


def commit(state: dict, seq: int, verdict: str = "clean", parent: int | None = None) -> dict:
    state, _ = ok(state, cmd("commit_snapshot", by="a", volume="vol", seq=seq, epoch=1, root=ROOT, parent_seq=parent,
                             created_at_ns=state["clocks"]["a"], holders=["a", "b"], acks=acks(seq, "b"), stats={},
                             verdict=verdict))
    return state


def opinion(state: dict, by: str, seq: int, verdict: str, **kw) -> tuple[dict, dict]:
    args = {"volume": "vol", "seq": seq, "verdict": verdict, "score_ppm": kw.get("score_ppm", 0),
            "cumulative_ppm": 0, "first_seq": kw.get("first_seq"), "reason": kw.get("reason", "")}
    return ok(state, cmd("site_verdict", by=by, **args))


def test_a_replicas_suspect_opinion_overrides_the_primarys_clean_commit(cluster: dict) -> None:
    state = commit(cluster, 1)
    state, res = opinion(state, "a", 1, "clean")
    assert res["changed"] and state["volumes"]["vol"]["snapshots"][1]["verdict"] == "clean"
    assert not disagreement(state["volumes"]["vol"]["snapshots"][1])
    state, res = opinion(state, "b", 1, "suspect", score_ppm=500_000, reason="50% turned random")
    snap = state["volumes"]["vol"]["snapshots"][1]
    assert res["flipped"] and snap["verdict"] == "suspect" and snap["verdict_reason"].startswith("judged suspect by b")
    assert disagreement(snap)
    state, _ = opinion(state, "c", 1, "clean")  # a clean opinion clears nothing
    assert state["volumes"]["vol"]["snapshots"][1]["verdict"] == "suspect"


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
    state = commit(state, 2, "clean", parent=1)
    snap = state["volumes"]["vol"]["snapshots"][2]
    assert snap["verdict"] == "suspect" and snap["verdict_reason"].startswith("descends from suspect snapshot #1")


def test_a_confirmed_snapshot_stays_clean_and_its_tainted_children_are_cleared(cluster: dict) -> None:
    state = commit(cluster, 1)
    state, _ = opinion(state, "b", 1, "suspect")
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


def test_a_stricter_detection_request_skips_the_cooling_off_a_weaker_one_keeps(cluster: dict) -> None:
    strict = {**POLICY_DEFAULTS, "min_score": 0.0, "cumulative_max": 0.0, "wipe_max": 0.0, "conserve_max": 0.0,
              "factor": 1.0, "rename_min": 1, "magic_min": 1, "window_s": 366 * 86400}
    state, res = ok(cluster, cmd("request", by="a", action="set_detection", args={"volume": "vol", "policy": strict}),
                    COOLING)
    assert res["status"] == "pending" and detection_policy(state["volumes"]["vol"]) == POLICY_DEFAULTS
    state, res = ok(state, cmd("approve", by="b", request=res["request"]), COOLING)
    assert res["status"] == "applied" and detection_policy(state["volumes"]["vol"]) == strict
    state, res = ok(state, cmd("request", by="b", action="set_detection",
                               args={"volume": "vol", "policy": dict(POLICY_DEFAULTS)}), COOLING)
    state, res = ok(state, cmd("approve", by="c", request=res["request"]), COOLING)
    assert res["status"] == "approved" and res["effective_ns"] > NOW  # the undo is a weakening: it cools off
    assert detection_policy(state["volumes"]["vol"]) == strict


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
    assert res["flipped"] and snap["verdict"] == "suspect"
    assert not disagreement(snap)
    state, _ = opinion(state, "b", 1, "suspect")
    assert not disagreement(state["volumes"]["vol"]["snapshots"][1])
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
