"""Whether a plain forced promotion of a site continues its pending instant recovery
(``instant.continuable``): then the promotion says ``instant`` on the record's snapshot and the
state holds the volume for the site again (``state.instant_recovery``); otherwise it is an ordinary
promotion of the newest clean snapshot and the takeover sets the record aside. States are built by
the real state machine (``core.state.apply``)."""

from __future__ import annotations

import pytest

from replicad.core.state import RULES_MAX, initial_state
from replicad.site.instant import continuable
from tests.unit.core.test_state import NOW, RETENTION, ROOT, S, cmd, commit, found, ok, tick


@pytest.fixture
def b_fenced() -> dict:
    """``vol`` (primary a, epoch 1, clean #1); b's instant recovery of #1 at epoch 2; a demotion
    c requested and a approved (epoch 3, no primary): b's record of epoch 2 is pending."""
    state = initial_state(rules=RULES_MAX)
    for site, kind in (("a", "data"), ("b", "data"), ("c", "data"), ("w", "witness")):
        state, _ = ok(state, cmd("register_site", by=site, site_id=site, now_ns=NOW - 30 * 86400 * S,
                                 peer_url=f"https://{site}:7443", kind=kind))
    state = found(state)
    state, _ = ok(state, cmd("add_volume", volume="vol", primary="a", block_size=65536,
                             size_bytes=1 << 30, min_copies=2, retention=dict(RETENTION)))
    state, _ = ok(state, commit(1, created_at_ns=NOW - 86400 * S))
    state = tick(state, NOW)
    state, res = ok(state, cmd("promote", by="b", volume="vol", to="b", expected_epoch=1, force=True, snapshot=1,
                               instant=True))
    state, res = ok(state, cmd("request", by="c", action="demote",
                               args={"volume": "vol", "expected_epoch": 2, "force": True}))
    state, res = ok(state, cmd("approve", by="a", request=res["request"]))
    assert res["status"] == "applied" and state["volumes"]["vol"]["epoch"] == 3, res
    return state


RECORD = {"version": 1, "volume": "vol", "epoch": 2, "seq": 1, "root": ROOT.hex(), "phase": "copying"}


def test_a_pending_record_with_nobody_else_primary_continues(b_fenced: dict) -> None:
    assert continuable(RECORD, True, b_fenced, "vol", "b") == 1
    # switched over but fenced before its acting epoch was durable: the overlay is still beside it
    assert continuable({**RECORD, "phase": "done"}, True, b_fenced, "vol", "b") == 1
    assert continuable({**RECORD, "phase": "done"}, False, b_fenced, "vol", "b") is None  # nothing pending


def test_another_primary_between_or_now_means_an_ordinary_promotion(b_fenced: dict) -> None:
    state, _ = ok(b_fenced, cmd("promote", by="a", volume="vol", to="a", expected_epoch=3, force=True))
    assert continuable(RECORD, True, state, "vol", "b") is None  # a is primary now (epoch 4)
    state, _ = ok(state, cmd("demote", by="a", volume="vol", expected_epoch=4))
    assert continuable(RECORD, True, state, "vol", "b") is None  # a was primary at epoch 4
    # an epoch the state no longer records counts as another site's (a record of epoch 1: b itself
    # was primary at epoch 2 while the results say so; the current epoch's primary is the state's)
    assert continuable({**RECORD, "epoch": 1}, True, b_fenced, "vol", "b") == 1
    forgotten = {**b_fenced, "applied_ops": {}, "requests": {}}
    assert continuable({**RECORD, "epoch": 1}, True, forgotten, "vol", "b") is None
    assert continuable(RECORD, True, forgotten, "vol", "b") == 1


def test_a_record_of_another_snapshot_or_a_view_behind_is_not_continued(b_fenced: dict) -> None:
    assert continuable({**RECORD, "root": bytes(32).hex()}, True, b_fenced, "vol", "b") is None
    assert continuable({**RECORD, "seq": 9}, True, b_fenced, "vol", "b") is None  # not committed
    assert continuable({**RECORD, "epoch": 7}, True, b_fenced, "vol", "b") is None  # the view is behind the record
    assert continuable({**RECORD, "epoch": "2"}, True, b_fenced, "vol", "b") is None
    assert continuable(RECORD, True, b_fenced, "other", "b") is None
    assert continuable(RECORD, True, {}, "vol", "b") is None
