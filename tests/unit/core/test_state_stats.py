"""A snapshot's stats: the keys the daemons read are integers within the volume's size, keys and
text print (review R10, F1, F3); readers of records committed before that check skip a bad one."""

from __future__ import annotations

import logging
import types

import pytest

from replicad.core import anomaly
from replicad.core import state as st
from replicad.site.replication import Replication
from tests.unit.core.test_state import cluster, commit, ok, refused  # noqa: F401 (fixture)

N_BLOCKS = (1 << 30) // 65536  # the fixture's volume: 1 GiB of 64 KiB blocks


def with_stats(seq: int, stats: dict, **extra) -> dict:
    return {**commit(seq, **extra), "stats": stats}


GOOD = {"total_blocks": N_BLOCKS, "zero_blocks": 11, "changed_blocks": 21, "changed_bytes": 21 * 65536,
        "random_changed_blocks": 0, "new_chunks": 30, "has_parent": 1, "random_share": 0.5, "note": "ok text"}


@pytest.mark.parametrize("bad, refusal", [
    ({"random_changed_blocks": "x"}, "stats"),
    ({"random_changed_blocks": None}, "stats"),
    ({"total_blocks": None}, "stats"),
    ({"zero_blocks": "11"}, "stats"),
    ({"zero_blocks": 1.5}, "stats"),
    ({"changed_blocks": True}, "stats"),
    ({"has_parent": 2}, "stats"),
    ({"has_parent": -1}, "stats"),
    ({"changed_blocks": N_BLOCKS + 1}, "stats"),
    ({"random_changed_blocks": -1}, "stats"),
    ({"changed_bytes": N_BLOCKS * 65536 + 1}, "stats"),
    ({"tainted_by": "1"}, "stats"),
    ({"note": "0\x1b[2K\x1b[1A\r#1 clean\nAUDIT"}, "not_printable"),
    ({"note\x1b[2K": 1}, "not_printable"),
    ({"": 1}, "not_printable"),
])
def test_commit_refuses_stats_the_daemons_cannot_read(cluster, bad: dict, refusal: str) -> None:  # noqa: F811
    res = refused(cluster, with_stats(1, {**GOOD, **bad}, size_bytes=1 << 30), "bad_request")
    assert res["evidence"]["field"] == "stats" and res["evidence"]["refusal"] == refusal, res
    ok(cluster, with_stats(1, GOOD, size_bytes=1 << 30))


def test_bounds_follow_the_largest_size_the_volume_had(cluster) -> None:  # noqa: F811
    """A commit naming a small size is bounded by the volume's recorded size (it never shrinks):
    a shrunk image's scan may still count the blocks cut off."""
    state, _ = ok(cluster, with_stats(1, GOOD, size_bytes=1 << 30))
    ok(state, with_stats(2, {**GOOD, "changed_blocks": N_BLOCKS}, size_bytes=65536))
    refused(state, with_stats(2, {**GOOD, "changed_blocks": N_BLOCKS + 1}, size_bytes=65536), "bad_request")


def test_stats_problem_never_raises() -> None:
    for value in (None, [], "x", {1: 2}, {"a": [1]}, {"a": float("nan")}, {"has_parent": b"\0"}, {"k" * 65: 1}):
        assert isinstance(st.stats_problem(value), str), value
    assert st.stats_problem(GOOD, N_BLOCKS, 65536) is None
    assert st.stats_problem({"changed_blocks": N_BLOCKS + 1}) is None  # no size: bounded by 2**63-1 only


def test_the_judge_history_skips_a_record_committed_before_the_check(caplog) -> None:
    """A record already in the state with a string count (committed by an older version) is left
    out of the baseline, logged once and counted; the judge runs on the rest."""
    snaps = {1: {"verdict": "clean", "epoch": 1, "stats": {**GOOD, "has_parent": 0}},
             2: {"verdict": "clean", "epoch": 1, "stats": {**GOOD, "random_changed_blocks": "x"}},
             3: {"verdict": "clean", "epoch": 1, "stats": {**GOOD, "total_blocks": None}},
             4: {"verdict": "suspect", "epoch": 1, "stats": {"random_changed_blocks": "x"}},
             5: {"verdict": "clean", "epoch": 1, "stats": GOOD}}
    vs = {"size_bytes": 1 << 30, "block_size": 65536, "snapshots": snaps}
    holder = types.SimpleNamespace(unreadable_stats=set())
    with caplog.at_level(logging.WARNING, logger="replicad.site.replication"):
        history = Replication._clean_history(holder, "ehr", vs)
        again = Replication._clean_history(holder, "ehr", vs)
    assert history == again == [snaps[1]["stats"], GOOD]
    assert holder.unreadable_stats == {("ehr", 2), ("ehr", 3)}
    warned = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(warned) == 2 and "#2" in warned[0] and "#3" in warned[1], warned
    with pytest.raises(ValueError):  # what the judge did with the raw history
        anomaly.judge(GOOD, [s["stats"] for s in snaps.values() if s["verdict"] == "clean"])
    assert anomaly.judge(GOOD, history).verdict in ("clean", "suspect")
