"""State machine: the stats of the snapshot records in all the volumes one site registered hold at
most ``STATS_BYTES_PER_SITE`` bytes together (a site's flood of 4 KB stats grew every site's state,
review R9, F5); refused with a typed ``conflict`` past it, another site's volumes never charged,
and a prune gives the budget back."""

from __future__ import annotations

from replicad.core import state as st
from replicad.core.identity import DEFAULT_COOLING_OFF_NS
from tests.unit.core.test_state_bounds import RET, with_volume
from tests.unit.core.test_state_membership import NOW, S, after, cmd, refused, run

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
    # the budget is far above what a real cluster reaches at the record cap
    assert st.SNAPSHOT_RECORDS_PER_SITE * st.stats_bytes(REAL) * 5 < st.STATS_BYTES_PER_SITE


def test_one_sites_volumes_hold_a_bounded_number_of_stats_bytes_and_a_prune_frees_them(monkeypatch) -> None:
    monkeypatch.setattr(st, "STATS_BYTES_PER_SITE", 3 * 147 + 100)
    s = with_volume()
    s, _ = run(s, cmd("add_volume", "a", volume="vol2", primary="a", block_size=65536, size_bytes=1 << 20,
                      min_copies=2, retention=dict(RET)))
    s, _ = run(s, cmd("add_volume", "b", volume="ehr", primary="b", block_size=65536, size_bytes=1 << 20,
                      min_copies=2, retention=dict(RET)))
    for seq in (1, 2):
        s, _ = run(s, commit(seq, REAL))
    s, _ = run(s, commit(1, REAL, volume="vol2"))
    res = refused(s, commit(2, {"pad": "x" * 98}, volume="vol2"), "conflict")  # 101 bytes: 1 past the budget
    ev = res["evidence"]
    assert ev["refusal"] == "site_stats" and ev["registered_by"] == "a" and ev["stats_bytes"] == 3 * 147, res
    assert ev["adding"] == 101 and ev["max_stats_bytes_per_site"] == 3 * 147 + 100
    s, _ = run(s, commit(2, {"pad": "x" * 97}, volume="vol2"))  # exactly at the budget
    refused(s, commit(3, {"n": 0}, volume="vol2"), "conflict")
    s, _ = run(s, commit(3, {}, volume="vol2"))  # an empty map costs nothing
    for seq in (1, 2, 3):  # another site's volumes are not charged for a's
        s, _ = run(s, commit(seq, REAL, volume="ehr", by="b", holders=("b", "c")))
    unlocked = RET["lock_s"] * S + S
    s, _ = after(s, unlocked)
    s, req = run(s, cmd("request", "a", now_ns=NOW + unlocked, action="prune_snapshots",
                        args={"volume": "vol", "seqs": [1]}))
    s, _ = run(s, cmd("approve", "b", now_ns=NOW + unlocked, request=req["request"]))
    s, done = after(s, unlocked + DEFAULT_COOLING_OFF_NS)
    assert [d["status"] for d in done] == ["applied"] and 1 not in s["volumes"]["vol"]["snapshots"]
    later = NOW + unlocked + DEFAULT_COOLING_OFF_NS
    s, _ = run(s, {**commit(4, {"n": 0}, volume="vol2"), "now_ns": later, "created_at_ns": later})  # 147 bytes back
