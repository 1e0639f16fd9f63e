"""One site cannot keep a volume's epoch churning (threat model: one site's key).

Before, any data site could demote the live primary (``demote`` with ``force``) or promote
itself over it as often as Raft committed the commands: each bumped the epoch and fenced the
primary, so an honest site's takeover (an instant recovery included) was fenced again right
after it began, until a majority revoked the attacker. Now (``state._check_epoch_rate``) each
site has one disruptive role change per volume per hour by the majority clock; the real
failover (a forced promotion while no live primary serves) and a planned switchover stay free,
and a second one is the action of a request other sites approve (no cooling-off)."""

from __future__ import annotations

from replicad.core.identity import Trust
from replicad.core.state import (DEMOTED_BY, EPOCH_CHANGES, EPOCH_WINDOW_NS, PRIMARY_SILENT_NS, apply, counted_reason,
                                 primary_live)
from tests.unit.core.test_state import NOW, S, cluster, cmd, ok, refused, tick, with_snaps  # noqa: F401

TRUST = Trust(cluster_id="c", keys=None, cooling_off_ns=86400 * S, membership_cooling_off_ns=900 * S)


def forced(by: str, op: str, epoch: int, now_ns: int = NOW) -> dict:
    if op == "promote":
        return cmd("promote", by=by, now_ns=now_ns, volume="vol", to=by, expected_epoch=epoch, force=True)
    return cmd("demote", by=by, now_ns=now_ns, volume="vol", expected_epoch=epoch, force=True)


def epoch_rate(state: dict, command: dict) -> dict:
    """``command`` refused by the rule: ``approval_required``, counted as ``epoch_rate``."""
    res = refused(state, command, "approval_required")
    assert res["evidence"]["refusal"] == "epoch_rate" and counted_reason(res) == "epoch_rate", res
    return res


def test_one_site_cannot_keep_the_epoch_churning(with_snaps):
    state = with_snaps  # a is the live primary at epoch 1; c is the attacker
    assert primary_live(state, state["volumes"]["vol"])
    state, res = ok(state, forced("c", "demote", 1))  # its one disruptive change of the hour
    assert res["epoch"] == 2 and state["volumes"]["vol"][EPOCH_CHANGES] == {"c": NOW}
    # a demote of a volume without a primary fences nobody: it would only move the epoch
    res = refused(state, forced("c", "demote", 2), "conflict")
    assert res["evidence"]["primary"] is None
    # nor may c take the role it just emptied
    assert state["volumes"]["vol"][DEMOTED_BY] == "c"
    epoch_rate(state, forced("c", "promote", 2))
    # b restores service at once: another site left the volume without a primary
    state, res = ok(state, forced("b", "promote", 2))
    assert res["primary"] == "b" and res["epoch"] == 3 and "b" not in state["volumes"]["vol"][EPOCH_CHANGES]
    state = tick(state, NOW + 10 * S)
    epoch_rate(state, forced("c", "demote", 3, NOW + 10 * S))
    epoch_rate(state, forced("c", "promote", 3, NOW + 10 * S))
    # its own clock cannot move the window: only the majority's counts
    epoch_rate(state, forced("c", "demote", 3, NOW + 20 * 365 * 86400 * S))
    assert state["volumes"]["vol"]["primary"] == "b" and state["volumes"]["vol"]["epoch"] == 3
    # an hour later by the majority clock, c has one again
    later = NOW + EPOCH_WINDOW_NS
    state = tick(state, later)
    state, res = ok(state, forced("c", "demote", 3, later))
    assert res["epoch"] == 4 and state["volumes"]["vol"][EPOCH_CHANGES] == {"c": later}


def test_a_site_answers_a_takeover_and_the_attacker_cannot_answer_back(with_snaps):
    state, res = ok(with_snaps, forced("c", "promote", 1))  # c takes the live primary's role
    assert res["primary"] == "c" and res["epoch"] == 2
    state = tick(state, NOW + S)
    state, res = ok(state, forced("a", "promote", 2, NOW + S))  # a takes it back: its first of the hour
    assert res["primary"] == "a" and res["epoch"] == 3
    state = tick(state, NOW + 2 * S)
    epoch_rate(state, forced("c", "promote", 3, NOW + 2 * S))
    epoch_rate(state, forced("c", "demote", 3, NOW + 2 * S))


def test_a_second_change_in_the_hour_is_a_request_others_approve_without_cooling_off(with_snaps):
    # b took over from the live primary a (honestly) and is fenced by c's takeover minutes later
    state, _ = ok(with_snaps, forced("b", "promote", 1))
    state = tick(state, NOW + 60 * S)
    state, _ = ok(state, forced("c", "promote", 2, NOW + 60 * S))
    state = tick(state, NOW + 120 * S)
    epoch_rate(state, forced("b", "promote", 3, NOW + 120 * S))
    # b asks; a approves: it applies at once, even under a day's cooling-off for weakenings
    state, res = apply(state, cmd("request", by="b", now_ns=NOW + 120 * S, action="promote",
                                  args={"volume": "vol", "to": "b", "expected_epoch": 3, "force": True}), TRUST)
    assert res["ok"] and res["status"] == "pending" and res["needed"] == 2, res
    state, res = apply(state, cmd("approve", by="a", now_ns=NOW + 121 * S, request=res["request"]), TRUST)
    assert res["ok"] and res["status"] == "applied" and res["result"]["primary"] == "b", res
    assert state["volumes"]["vol"]["primary"] == "b" and state["volumes"]["vol"]["epoch"] == 4
    # c alone cannot: its own request waits for an approval nobody honest gives
    state, res = apply(state, cmd("request", by="c", now_ns=NOW + 122 * S, action="demote",
                                  args={"volume": "vol", "expected_epoch": 4, "force": True}), TRUST)
    assert res["ok"] and res["status"] == "pending", res
    assert state["volumes"]["vol"]["primary"] == "b"


def test_the_real_failover_and_planned_switchovers_are_free(with_snaps):
    # a falls silent (down or cut off): the others' clocks go on, a's stays
    later = NOW + PRIMARY_SILENT_NS + S
    state = with_snaps
    for site in ("b", "c", "w"):
        state, _ = ok(state, cmd("clock", by=site, now_ns=later))
    assert not primary_live(state, state["volumes"]["vol"])
    state, res = ok(state, forced("b", "promote", 1, later))
    assert res["primary"] == "b" and EPOCH_CHANGES not in state["volumes"]["vol"]
    # c's takeover of the live b is its one; b's answer is still b's first of the hour
    state, _ = ok(state, forced("c", "promote", 2, later))
    state = tick(state, later + S)
    state, res = ok(state, forced("b", "promote", 3, later + S))
    assert res["primary"] == "b" and res["epoch"] == 4
    # planned switchovers and a primary's own demotion are never counted
    epoch = 4
    for to, by in (("a", "b"), ("b", "a"), ("a", "b"), ("b", "a")):
        state, res = ok(state, cmd("promote", by=by, now_ns=later + S, volume="vol", to=to, expected_epoch=epoch))
        epoch = res["epoch"]
    state, res = ok(state, cmd("demote", by="b", now_ns=later + S, volume="vol", expected_epoch=epoch))
    assert set(state["volumes"]["vol"][EPOCH_CHANGES]) == {"b", "c"}
    # but taking back the role it just gave away is b's second change of the hour
    epoch_rate(state, forced("b", "promote", res["epoch"], later + S))
    state, res = ok(state, forced("a", "promote", res["epoch"], later + S))
    assert res["primary"] == "a"
