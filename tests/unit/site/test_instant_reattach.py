"""Who was primary between two epochs, as the replicated state records it (``primaries_between``):
the rule that decides whether a site's instant-recovery overlay continues at its next takeover
(review R7, F3). States are built by the real state machine (``core.state.apply``)."""

from __future__ import annotations

import pytest

from replicad.core.state import APPLIED_OPS_MAX, RULES_MAX, initial_state
from replicad.site.instant import EPOCHS_BETWEEN_MAX, MISSING, primaries_between
from tests.unit.core.test_state import NOW, RETENTION, S, cmd, commit, found, ok, refused, tick


@pytest.fixture
def b_instant() -> dict:
    """Volume ``vol`` (primary a, epoch 1, one clean snapshot); b takes it over by force (epoch 2:
    its instant recovery), every site's clock reported (the epoch-change rule measures by it)."""
    state = initial_state(rules=RULES_MAX)
    for site, kind in (("a", "data"), ("b", "data"), ("c", "data"), ("w", "witness")):
        state, _ = ok(state, cmd("register_site", by=site, site_id=site, now_ns=NOW - 30 * 86400 * S,
                                 peer_url=f"https://{site}:7443", kind=kind))
    state = found(state)
    state, _ = ok(state, cmd("add_volume", volume="vol", primary="a", block_size=65536,
                             size_bytes=1 << 30, min_copies=2, retention=dict(RETENTION)))
    state, _ = ok(state, commit(1, created_at_ns=NOW - 86400 * S))
    state = tick(state, NOW)
    state, res = ok(state, cmd("promote", by="b", volume="vol", to="b", expected_epoch=1, force=True))
    assert res["epoch"] == 2
    return state


def _b_again_through_a_request(state: dict, epoch: int) -> dict:
    """b's second forced promotion within the hour is refused by the epoch-change rule; as a
    request approved by c it applies."""
    refused(state, cmd("promote", by="b", volume="vol", to="b", expected_epoch=epoch, force=True), "approval_required")
    state, res = ok(state, cmd("request", by="b", action="promote",
                               args={"volume": "vol", "to": "b", "expected_epoch": epoch, "force": True}))
    state, res = ok(state, cmd("approve", by="c", request=res["request"]))
    assert res["status"] == "applied" and res["result"]["epoch"] == epoch + 1, res
    return state


def test_a_forced_demote_between_leaves_no_other_primary(b_instant: dict) -> None:
    state, res = ok(b_instant, cmd("demote", by="a", volume="vol", expected_epoch=2, force=True))  # a's one of the hour
    state = _b_again_through_a_request(state, 3)
    assert state["volumes"]["vol"]["epoch"] == 4
    assert primaries_between(state, "vol", 2, 4) == {3: None}
    assert primaries_between(state, "vol", 1, 4) == {2: "b", 3: None}
    assert primaries_between(state, "vol", 3, 4) == {}


def test_another_site_primary_between_is_named(b_instant: dict) -> None:
    state, _ = ok(b_instant, cmd("promote", by="c", volume="vol", to="c", expected_epoch=2, force=True))
    state = _b_again_through_a_request(state, 3)
    assert primaries_between(state, "vol", 2, 4) == {3: "c"}
    assert primaries_between(state, "other", 2, 4) == {3: MISSING}  # another volume's role changes say nothing


def test_an_epoch_the_state_no_longer_records_is_missing(b_instant: dict) -> None:
    state, _ = ok(b_instant, cmd("demote", by="a", volume="vol", expected_epoch=2, force=True))
    state = _b_again_through_a_request(state, 3)
    # the demote's result left applied_ops (its last APPLIED_OPS_MAX results), the request record stays:
    # the request's promote still says who was primary before it (previous_primary: nobody at 3)
    forgotten = {**state, "applied_ops": {}}
    assert primaries_between(forgotten, "vol", 2, 4) == {3: None}
    # with the request forgotten too, epoch 3 is unknown: never taken for "nobody"
    assert primaries_between({**forgotten, "requests": {}}, "vol", 2, 4) == {3: MISSING}
    assert APPLIED_OPS_MAX >= 1000


def test_hostile_shapes_are_skipped_and_the_span_is_bounded() -> None:
    view = {"applied_ops": {"x": {"ok": True, "volume": "vol", "epoch": True, "previous_primary": "a"},
                            "y": {"ok": True, "volume": "vol", "epoch": 3, "previous_primary": 7, "primary": ["b"]},
                            "z": "not a result", "u": {"ok": "yes", "volume": "vol", "epoch": 3, "primary": None,
                                                       "previous_primary": None}},
            "requests": {"r": ["bad"]}}
    assert primaries_between(view, "vol", 2, 4) == {3: MISSING}
    assert primaries_between({}, "vol", 0, EPOCHS_BETWEEN_MAX + 10) == {1: MISSING}
