"""State machine: a prune in any site's name follows the volume's agreed retention grid
(keep_all, then one per hour, then one per day), not only the lock (review R5: one site pruned
from Raft's catalog every snapshot past the 1-day lock that the grid kept for 38 days). Signed
commands, real Trust, the majority's clock."""

from __future__ import annotations

from replicad.core.state import list_requests
from tests.unit.core.test_identity import COOLING, NOW, S, cluster, cmd, ok, refused  # noqa: F401
from tests.unit.core.test_state_detection import commit, prune, tick

HOUR = 3600 * S


def test_a_prune_of_what_the_agreed_grid_keeps_is_refused_whoever_proposes_it(cluster: dict) -> None:
    # keep_all 1 h, one per hour for a day, one per day for 7 days, lock 600 s; NOW is 800 s into
    # its hour, so #2 (NOW + 1 h) and #3 (NOW + 1.5 h) share an hour and #3 is its newest
    state = cluster
    for seq, at in ((1, NOW), (2, NOW + HOUR), (3, NOW + 3 * HOUR // 2), (4, NOW + 5 * HOUR // 2)):
        state = tick(state, at)
        state = commit(state, seq, parent=seq - 1 if seq > 1 else None)
    now = NOW + 5 * HOUR // 2 + 1200 * S  # #1-#3 past keep_all and the lock
    state = tick(state, now)
    for by in ("a", "b", "c"):  # the primary, a replica, any site's key: the grid is the state's rule
        for seqs in ([1], [3], [1, 2]):
            res = refused(state, cmd("prune_snapshots", by=by, volume="vol", seqs=seqs, now_ns=now + 30 * 86400 * S),
                          "retention_locked")  # the proposer's clock a month ahead changes nothing
            assert res["evidence"]["seqs"] == [s for s in seqs if s != 2], res
            assert "agreed retention" in res["message"], res
    state = prune(state, [2], now)  # not the newest of its hour: the grid lets it go
    assert sorted(state["volumes"]["vol"]["snapshots"]) == [1, 3, 4]


def test_what_the_grid_keeps_goes_as_a_request_other_sites_approve_after_the_cooling_off(cluster: dict) -> None:
    state = cluster
    for seq, at in ((1, NOW), (2, NOW + HOUR)):
        state = tick(state, at)
        state = commit(state, seq, parent=seq - 1 if seq > 1 else None)
    now = NOW + HOUR + 1200 * S  # #1 past the lock, the newest of its hour: the grid keeps it
    state = tick(state, now)
    prune_1 = {"volume": "vol", "seqs": [1]}
    state, res = ok(state, cmd("request", by="a", action="prune_snapshots", args=prune_1, now_ns=now), COOLING)
    assert res["status"] == "pending" and res["needed"] == 2, res
    state, res = ok(state, cmd("approve", by="b", request=res["request"], now_ns=now), COOLING)
    assert res["status"] == "approved" and 1 in state["volumes"]["vol"]["snapshots"], res  # cooling off
    state = tick(state, now + COOLING.cooling_off_ns)
    assert 1 not in state["volumes"]["vol"]["snapshots"]
    assert [r["status"] for r in list_requests(state)] == ["applied"]
