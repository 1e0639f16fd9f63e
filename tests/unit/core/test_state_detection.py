"""State machine, issue 14: every data site's own verdict (``site_verdict``), the detection
policy in Raft (``set_detection``: weakening is a protected request), and the child of a
suspect snapshot recorded suspect whatever the primary proposes. Signed commands, real Trust."""

from __future__ import annotations

from replicad.core.anomaly import POLICY_DEFAULTS
from replicad.core.state import detection_policy, disagreement, list_requests
from tests.unit.core.test_identity import ROOT, acks, cluster, cmd, ok, refused  # noqa: F401  (fixture)


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


def test_detection_policy_stricter_at_once_weaker_only_by_approved_request(cluster: dict) -> None:
    assert detection_policy(cluster["volumes"]["vol"]) == POLICY_DEFAULTS
    stricter = {**POLICY_DEFAULTS, "min_score": 0.01}
    state, res = ok(cluster, cmd("set_detection", by="a", volume="vol", policy=stricter))
    assert res["weakened"] == [] and detection_policy(state["volumes"]["vol"])["min_score"] == 0.01
    weaker = {**POLICY_DEFAULTS, "min_score": 1.0}
    refused(state, cmd("set_detection", by="a", volume="vol", policy=weaker), "approval_required")
    refused(state, cmd("set_detection", by="a", volume="vol", policy={**POLICY_DEFAULTS, "min_score": 7}),
            "bad_request")
    state, _ = ok(state, cmd("request", by="a", action="set_detection", args={"volume": "vol", "policy": weaker}))
    assert detection_policy(state["volumes"]["vol"])["min_score"] == 0.01  # pending
    state, _ = ok(state, cmd("approve", by="b", request=list_requests(state)[0]["id"]))
    assert detection_policy(state["volumes"]["vol"])["min_score"] == 1.0


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


def test_one_site_cannot_register_a_volume_with_weaker_detection(cluster: dict) -> None:
    """The ``add_volume`` that creates a volume may carry a policy as strict as the defaults or
    stricter, never a weaker one: a compromised site registered a volume with every threshold
    at 1.0 and encrypted mode on its own signature, and every site then judged ciphertext clean.
    ``[volumes.detection] mode = "encrypted"`` is a weakening (the content signals go): the
    daemon registers with the defaults and requests the mode (approvals, cooling-off)."""
    vol = {"volume": "enc", "primary": "a", "block_size": 65536, "size_bytes": 0, "min_copies": 2,
           "retention": cluster["volumes"]["vol"]["retention"]}
    refused(cluster, cmd("add_volume", by="a", **vol, detection={**POLICY_DEFAULTS, "mode": "luks"}), "bad_request")
    weak = {**POLICY_DEFAULTS, "mode": "encrypted", "cold_max": 1.0, "change_max": 1.0, "wipe_max": 1.0,
            "cumulative_max": 1.0, "rename_min": 10**9}
    for policy in (weak, {**POLICY_DEFAULTS, "mode": "encrypted"}, {**POLICY_DEFAULTS, "min_score": 1.0},
                   {**POLICY_DEFAULTS, "ransom_notes": []}):
        res = refused(cluster, cmd("add_volume", by="a", **vol, detection=policy), "approval_required")
        assert "enc" not in cluster["volumes"], res
    strict = {**POLICY_DEFAULTS, "min_score": POLICY_DEFAULTS["min_score"] / 2}
    state, res = ok(cluster, cmd("add_volume", by="a", **vol, detection=strict))
    assert res["created"] and detection_policy(state["volumes"]["enc"]) == strict
    state, res = ok(state, cmd("add_volume", by="b", **vol, detection=dict(POLICY_DEFAULTS)))
    assert not res["created"] and detection_policy(state["volumes"]["enc"]) == strict  # the first one stands
    refused(state, cmd("set_detection", by="a", volume="enc", policy=dict(POLICY_DEFAULTS)), "approval_required")
    # without the key the volume starts with the defaults, as before
    state, _ = ok(state, cmd("add_volume", by="a", **{**vol, "volume": "plain"}))
    assert detection_policy(state["volumes"]["plain"]) == POLICY_DEFAULTS
