"""How many approvals a request needs: ``[policy] approvals`` is capped at the sites that can
approve, the agreed membership's unrevoked sites, witnesses included (a witness's operator may
approve and veto; it may not request)."""

from __future__ import annotations

from replicad.core.identity import Trust
from replicad.core.state import apply, approvals_needed
from tests.unit.core.test_state import NOW, RETENTION, cluster, cmd, tick  # noqa: F401

SHORTER = {**RETENTION, "lock_s": 60}


def trust(approvals: int | None) -> Trust:
    return Trust(cluster_id="c", keys=None, approvals=approvals, cooling_off_ns=0, membership_cooling_off_ns=0)


def revoked(state: dict, *sites: str) -> dict:
    return {**state, "revoked": {s: {"keys": [], "at_ns": NOW, "by": "a"} for s in sites}}


def test_configured_approvals_are_capped_at_the_sites_that_can_approve(cluster):
    # the membership: data a, b, c and witness w
    assert approvals_needed(cluster, trust(None)) == 2  # a majority of the three data sites
    assert approvals_needed(cluster, trust(4)) == 4  # the witness can approve: four sites can
    assert approvals_needed(cluster, trust(9)) == 4
    assert approvals_needed(revoked(cluster, "c"), trust(4)) == 3  # a revoked site signs nothing
    assert approvals_needed(revoked(cluster, "c"), trust(None)) == 2


def test_a_witness_approval_counts_and_a_witness_cannot_request(cluster):
    cluster = tick(cluster, NOW)
    state, res = apply(cluster, cmd("request", by="w", action="set_retention",
                                    args={"volume": "vol", "retention": SHORTER}), trust(4))
    assert res["ok"] is False and res["error"] == "conflict", res
    state, res = apply(cluster, cmd("request", by="a", action="set_retention",
                                    args={"volume": "vol", "retention": SHORTER}), trust(4))
    assert res["needed"] == 4, res
    for approver in ("b", "c", "w"):
        state, res = apply(state, cmd("approve", by=approver, request=res["request"]), trust(4))
        assert res["ok"], res
    assert res["status"] == "applied" and state["volumes"]["vol"]["retention"] == SHORTER, res
