"""The ``vouch`` op of :mod:`replicad.core.state`: bounds and what it records (the
checkpoints that use it: ``tests/unit/consensus/test_checkpoint.py``)."""

from __future__ import annotations

from replicad.core.state import RULES_MAX, VOUCHES_PER_SITE, apply, initial_state
from tests.unit.core.test_identity import TRUST, cmd, ok, refused

DIGEST = bytes(range(32))


def registered(applied: int = 10) -> dict:
    state = initial_state(rules=RULES_MAX)
    for s in ("a", "b", "c"):
        state, _ = ok(state, cmd("register_site", by=s, site_id=s, peer_url=f"https://{s}", kind="data"))
    return {**state, "applied": applied}


def test_a_vouch_is_recorded_per_site_and_only_the_last_ones_are_kept():
    state = registered(applied=100)
    for n in (4, 8, 12):
        state, result = ok(state, cmd("vouch", by="b", n=n, hash=DIGEST))
        assert result["n"] == n
    assert state["vouches"]["b"] == [[8, DIGEST], [12, DIGEST]][-VOUCHES_PER_SITE:]
    assert "a" not in state["vouches"]


def test_a_vouch_for_a_state_not_reached_or_not_newer_is_refused():
    state = registered(applied=10)
    refused(state, cmd("vouch", by="b", n=11, hash=DIGEST), "conflict")
    state, _ = ok(state, cmd("vouch", by="b", n=8, hash=DIGEST))
    refused(state, cmd("vouch", by="b", n=8, hash=bytes(32)), "conflict")  # a rewrite of its own vouch
    refused(state, cmd("vouch", by="b", n=4, hash=DIGEST), "conflict")  # going back
    refused(state, cmd("vouch", by="b", n=0, hash=DIGEST), "bad_request")
    refused(state, cmd("vouch", by="b", n=8 + 4, hash=b"short"), "bad_request")


def test_a_vouch_needs_a_registered_site_and_its_signature():
    state = {**initial_state(rules=RULES_MAX), "applied": 10}
    refused(state, cmd("vouch", by="a", n=4, hash=DIGEST), "not_found")
    state = registered()
    forged = {**cmd("vouch", by="a", n=4, hash=DIGEST), "by": "b"}
    new, result = apply(state, forged, TRUST)
    assert result["error"] == "bad_signature" and "vouches" not in new
