"""A primary in an instant recovery keeps the volume (threat model: one site's key).

An honest site that took a volume over with ``promote --force --instant`` serves the restored
snapshot at once; the application's writes go to an overlay at that site until the image is
restored and the overlay merged, and reach other sites only with its first snapshot. Before,
the attacker spent its one forced role change of the hour on promoting itself (or demoting the
site, so that a third site took over): when the honest site was made primary again for the same
snapshot its overlay was set aside (another primary in between), the writes out of service. Now
the forced promotion records the instant recovery (``state.INSTANT``) until the primary's first
commit at its epoch, and meanwhile a forced role change by any other site is
``approval_required`` (evidence ``refusal`` ``instant_recovery``, counted) unless it runs as a
request other sites approve (no cooling-off, no veto). The primary's own role changes stay free."""

from __future__ import annotations

from replicad.core.identity import Trust
from replicad.core.state import EPOCH_WINDOW_NS, INSTANT, apply, counted_reason, instant_recovery
from tests.unit.core.test_state import (NOW, S, cluster, cmd, commit, ok, refused, tick,  # noqa: F401
                                        with_snaps)

TRUST = Trust(cluster_id="c", keys=None, cooling_off_ns=86400 * S, membership_cooling_off_ns=900 * S)


def forced(by: str, op: str, epoch: int, now_ns: int = NOW, **extra) -> dict:
    if op == "promote":
        return cmd("promote", by=by, now_ns=now_ns, volume="vol", to=by, expected_epoch=epoch, force=True, **extra)
    return cmd("demote", by=by, now_ns=now_ns, volume="vol", expected_epoch=epoch, force=True, **extra)


def instant_b(state: dict) -> dict:
    """b takes the live primary a's volume over with an instant recovery of #3 (epoch 2)."""
    state, res = ok(state, forced("b", "promote", 1, snapshot=3, instant=True))
    assert res["primary"] == "b" and res["epoch"] == 2 and res["instant"] is True and res["snapshot"] == 3, res
    assert state["volumes"]["vol"][INSTANT] == {"epoch": 2, "site": "b", "seq": 3, "since_ns": NOW}
    assert instant_recovery(state, state["volumes"]["vol"]) == state["volumes"]["vol"][INSTANT]
    return tick(state, NOW + S)


def held(state: dict, command: dict) -> dict:
    """``command`` refused by the rule: ``approval_required``, counted as ``instant_recovery``."""
    res = refused(state, command, "approval_required")
    assert res["evidence"]["refusal"] == "instant_recovery" and counted_reason(res) == "instant_recovery", res
    assert res["evidence"]["primary"] == "b" and res["evidence"]["seq"] == 3, res
    return res


def test_no_other_site_takes_the_volume_from_an_instant_recovery_on_its_own_word(with_snaps):
    state = instant_b(with_snaps)
    # c has its one forced change of the hour, and it no longer takes the volume from b
    res = held(state, forced("c", "promote", 2, NOW + S))
    assert res["evidence"]["by"] == "c" and res["evidence"]["op"] == "promote"
    held(state, forced("c", "demote", 2, NOW + S))
    held(state, forced("a", "promote", 2, NOW + S))  # nor the primary b took it from
    held(state, forced("c", "promote", 2, NOW + S, snapshot=3, instant=True))  # an instant one of its own neither
    assert "c" not in state["volumes"]["vol"].get("epoch_changes_ns", {})  # refused: nothing spent
    # c's request waits for an approval nobody honest gives; b's overlay stays in service meanwhile
    state, res = apply(state, cmd("request", by="c", now_ns=NOW + S, action="promote",
                                  args={"volume": "vol", "to": "c", "expected_epoch": 2, "force": True}), TRUST)
    assert res["ok"] and res["status"] == "pending" and res["needed"] == 2, res
    assert (state["volumes"]["vol"]["primary"], state["volumes"]["vol"]["epoch"]) == ("b", 2)
    # and nobody can veto it (a role change has no cooling-off to stop): approvals only
    veto = refused(state, cmd("veto", by="b", now_ns=NOW + S, request=res["request"]), "conflict")
    assert veto["evidence"]["refusal"] == "not_vetoable", veto


def test_other_sites_approving_take_it_at_once(with_snaps):
    """b's site died during its instant recovery: c's forced promotion is a request a approves."""
    state = instant_b(with_snaps)
    held(state, forced("c", "promote", 2, NOW + S))
    state, res = apply(state, cmd("request", by="c", now_ns=NOW + S, action="promote",
                                  args={"volume": "vol", "to": "c", "expected_epoch": 2, "force": True}), TRUST)
    state, res = apply(state, cmd("approve", by="a", now_ns=NOW + 2 * S, request=res["request"]), TRUST)
    assert res["ok"] and res["status"] == "applied" and res["result"]["primary"] == "c", res  # no cooling-off
    vol = state["volumes"]["vol"]
    assert vol["epoch"] == 3 and INSTANT not in vol and instant_recovery(state, vol) is None


def test_the_primary_own_changes_stay_free(with_snaps):
    state = instant_b(with_snaps)
    # its planned switchover (its operator's call) ends the instant recovery with the epoch
    state, res = ok(state, cmd("promote", by="b", now_ns=NOW + S, volume="vol", to="c", expected_epoch=2))
    assert res["primary"] == "c" and INSTANT not in state["volumes"]["vol"]
    # its own demotion, and a forced promotion of itself again (another snapshot, an hour later)
    state = instant_b(with_snaps)
    state, res = ok(state, cmd("demote", by="b", now_ns=NOW + S, volume="vol", expected_epoch=2))
    assert res["epoch"] == 3 and INSTANT not in state["volumes"]["vol"]
    state = instant_b(with_snaps)
    later = NOW + EPOCH_WINDOW_NS
    state = tick(state, later)
    state, res = ok(state, forced("b", "promote", 2, later, snapshot=2, instant=True))
    assert state["volumes"]["vol"][INSTANT] == {"epoch": 3, "site": "b", "seq": 2, "since_ns": later}
    state = tick(state, later + EPOCH_WINDOW_NS)  # the hour's rule still counts: an hour on, its forced demote
    state, res = ok(state, forced("b", "demote", 3, later + EPOCH_WINDOW_NS))
    assert res["epoch"] == 4 and INSTANT not in state["volumes"]["vol"]


def test_the_first_commit_at_its_epoch_ends_it(with_snaps):
    state = instant_b(with_snaps)
    state, _ = ok(state, commit(4, epoch=2, by="b", holders=("b", "c"), parent_seq=3, now_ns=NOW + S))
    vol = state["volumes"]["vol"]
    assert INSTANT not in vol and instant_recovery(state, vol) is None
    state, res = ok(state, forced("c", "promote", 2, NOW + 2 * S))  # an ordinary primary again
    assert res["primary"] == "c"
    # a refused commit (a stale epoch) ends nothing
    state = instant_b(with_snaps)
    refused(state, commit(4, epoch=1, by="b", holders=("b", "c"), parent_seq=3, now_ns=NOW + S), "stale_epoch")
    assert instant_recovery(state, state["volumes"]["vol"]) is not None


def test_a_revoked_primary_keeps_nothing(with_snaps):
    state = instant_b(with_snaps)
    state, res = apply(state, cmd("request", by="a", now_ns=NOW + S, action="revoke_site",
                                  args={"site_id": "b", "keys": []}), None)
    req = res["request"]
    for by in ("c", "w"):  # a majority of the four members
        state, res = apply(state, cmd("approve", by=by, now_ns=NOW + S, request=req), None)
    assert res["ok"] and res["status"] == "applied", res
    assert instant_recovery(state, state["volumes"]["vol"]) is None
    state, res = ok(state, forced("c", "promote", 2, NOW + 2 * S))
    assert res["primary"] == "c"


def test_a_takeover_request_may_itself_be_instant_and_is_then_held_too(with_snaps):
    """b fenced by an approved demotion, promoted again through a request carrying ``instant``
    (its second forced change in the hour): its instant recovery is held again at the new epoch."""
    state = instant_b(with_snaps)
    state, res = apply(state, cmd("request", by="c", now_ns=NOW + S, action="demote",
                                  args={"volume": "vol", "expected_epoch": 2, "force": True}), TRUST)
    state, res = apply(state, cmd("approve", by="a", now_ns=NOW + S, request=res["request"]), TRUST)
    assert res["status"] == "applied" and INSTANT not in state["volumes"]["vol"], res
    refused(state, forced("b", "promote", 3, NOW + 2 * S, snapshot=3, instant=True), "approval_required")
    state, res = apply(state, cmd("request", by="b", now_ns=NOW + 2 * S, action="promote",
                                  args={"volume": "vol", "to": "b", "expected_epoch": 3, "force": True,
                                        "snapshot": 3, "instant": True}), TRUST)
    state, res = apply(state, cmd("approve", by="c", now_ns=NOW + 2 * S, request=res["request"]), TRUST)
    assert res["status"] == "applied" and res["result"]["instant"] is True, res
    assert state["volumes"]["vol"][INSTANT]["epoch"] == 4
    held(state, forced("a", "promote", 4, NOW + 3 * S))


def test_instant_is_a_forced_promotion_naming_its_snapshot(with_snaps):
    refused(with_snaps, forced("b", "promote", 1, instant=True), "bad_request")  # no snapshot
    refused(with_snaps, cmd("promote", by="a", volume="vol", to="b", expected_epoch=1, instant=True), "bad_request")
    refused(with_snaps, forced("b", "promote", 1, snapshot=3, instant="yes"), "bad_request")
    state, res = ok(with_snaps, forced("b", "promote", 1, snapshot=3, instant=False))
    assert INSTANT not in state["volumes"]["vol"] and "instant" not in res
