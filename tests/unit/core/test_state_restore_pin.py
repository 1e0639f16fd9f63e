"""A forced promotion that names its restore point (``promote`` with ``snapshot``, issue 14)."""

from __future__ import annotations

from replicad.core.state import RESTORE_PIN, restore_pin
from tests.unit.core.test_state import S, NOW, cmd, commit, ok, refused, tick, with_snaps, cluster  # noqa: F401


def test_a_forced_promotion_records_the_named_snapshot_for_its_epoch(with_snaps):
    state, res = ok(with_snaps, cmd("promote", by="b", volume="vol", to="b", expected_epoch=1, force=True,
                                    snapshot=2))
    vol = state["volumes"]["vol"]
    assert res["snapshot"] == 2 and res["epoch"] == 2
    assert vol[RESTORE_PIN] == {"epoch": 2, "seq": 2} and restore_pin(vol) == 2
    # any later change of epoch drops it: the next primary restores the newest clean one again
    state2, _ = ok(state, cmd("promote", by="c", volume="vol", to="c", expected_epoch=2, force=True))
    assert RESTORE_PIN not in state2["volumes"]["vol"] and restore_pin(state2["volumes"]["vol"]) is None
    state3, _ = ok(state, cmd("demote", by="b", volume="vol", expected_epoch=2))
    assert restore_pin(state3["volumes"]["vol"]) is None
    # a stale pin (another epoch) is never used
    assert restore_pin({**vol, "epoch": 3}) is None


def test_the_named_snapshot_must_be_committed_held_and_clean(with_snaps):
    base = dict(by="b", volume="vol", to="b", expected_epoch=1, force=True)
    res = refused(with_snaps, cmd("promote", snapshot=9, **base), "not_found")
    assert res["evidence"]["reason"] == "not_committed"
    state = with_snaps
    for site in ("a", "b"):
        state, _ = ok(state, cmd("remove_holder", by=site, volume="vol", seq=1, site_id=site))
    res = refused(state, cmd("promote", snapshot=1, **base), "not_found")
    assert res["evidence"]["reason"] == "not_held"
    state, _ = ok(with_snaps, commit(4, verdict="suspect"))
    res = refused(state, cmd("promote", snapshot=4, **base), "snapshot_suspect")
    assert res["evidence"]["seq"] == 4 and res["evidence"]["verdict"] == "suspect"
    refused(with_snaps, cmd("promote", snapshot="2", **base), "bad_request")
    # a planned switchover hands over the newest snapshot: it cannot name one
    refused(with_snaps, cmd("promote", by="a", volume="vol", to="b", expected_epoch=1, snapshot=2), "bad_request")


def test_pruning_keeps_the_snapshot_a_forced_promotion_restores(with_snaps):
    state, _ = ok(with_snaps, cmd("promote", by="b", volume="vol", to="b", expected_epoch=1, force=True,
                                  snapshot=1))
    state, _ = ok(state, commit(4, by="b", epoch=2, created_at_ns=NOW - 5 * 86400 * S))
    state = tick(state, NOW)
    res = refused(state, cmd("prune_snapshots", volume="vol", seqs=[1]), "retention_locked")
    assert "forced promotion" in res["message"]
    state, _ = ok(state, cmd("prune_snapshots", volume="vol", seqs=[2]))
