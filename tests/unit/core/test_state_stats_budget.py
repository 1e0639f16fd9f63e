"""State machine: one snapshot record's stats hold at most ``STATS_BYTES_PER_RECORD`` bytes (a
site's flood of 4 KB stats grew every site's state, review R9, F5); refused with a typed
``bad_request`` past it. The bound is per record: a budget per registering site (or per volume) let
one site's records refuse another's commits (review R10, F2)."""

from __future__ import annotations

from replicad.core import state as st
from tests.unit.core.test_state_bounds import with_volume
from tests.unit.core.test_state_membership import NOW, cmd, refused, run

# the stats of a committed record of a real three-site cluster (LocalCluster, 12 MiB volume)
REAL = {"total_blocks": 192, "zero_blocks": 62, "changed_blocks": 10, "changed_bytes": 655360,
        "random_changed_blocks": 0, "new_chunks": 11, "has_parent": 1}


def commit(seq: int, stats: dict, volume: str = "vol", by: str = "a", holders=("a", "b")) -> dict:
    return cmd("commit_snapshot", by, volume=volume, seq=seq, epoch=1, root=bytes([seq % 256]) * 32,
               parent_seq=None, created_at_ns=NOW, holders=list(holders), stats=stats, verdict="clean")


def test_stats_bytes_counts_keys_text_and_eight_bytes_per_number() -> None:
    assert st.stats_bytes(REAL) == 147  # the measured record: 91 bytes of keys, 7 numbers
    assert st.stats_bytes({"note": "é" * 10, "x": None, "y": True}) == 4 + 20 + 1 + 8 + 1 + 8
    assert st.stats_bytes(None) == 0
    # the bound is above twice what a real record carries, with the taint marker
    assert 2 * st.stats_bytes({**REAL, st.TAINT_STAT: 41}) < st.STATS_BYTES_PER_RECORD


def test_one_records_stats_hold_a_bounded_number_of_bytes() -> None:
    s = with_volume()
    pad = st.STATS_BYTES_PER_RECORD - st.stats_bytes(REAL) - 3  # "pad" + its text: exactly at the bound
    s, res = run(s, commit(1, {**REAL, "pad": "x" * pad}))
    assert res["ok"], res
    res = refused(s, commit(2, {**REAL, "pad": "x" * (pad + 1)}), "bad_request")
    ev = res["evidence"]
    assert ev["refusal"] == "stats_bytes" and ev["stats_bytes"] == st.STATS_BYTES_PER_RECORD + 1, res
    assert ev["max_stats_bytes"] == st.STATS_BYTES_PER_RECORD
    for seq in range(2, 40):  # no budget across records: a volume's own history never refuses a commit
        s, res = run(s, commit(seq, {**REAL, "pad": "x" * pad}))
        assert res["ok"], res
