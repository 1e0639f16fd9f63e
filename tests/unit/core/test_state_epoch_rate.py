"""One site cannot keep a volume's epoch churning (threat model: one site's key).

Before, any data site could demote the live primary (``demote`` with ``force``) or promote
itself over it as often as Raft committed the commands: each bumped the epoch and fenced the
primary, so an honest site's takeover (an instant recovery included) was fenced again right
after it began, until a majority revoked the attacker. Now (``state._check_epoch_rate``) each
site has one forced role change per volume per hour by the majority clock, whether the primary
is live or silent (a Raft leader can make one site look silent: review R6); a planned
switchover stays free, and a second forced change is the action of a request other sites
approve (no cooling-off, no veto, at most a majority of the voters needed)."""

from __future__ import annotations

from replicad.core.identity import Trust
from replicad.consensus.raft import WITHHELD_AFTER_S
from replicad.core.state import (DEFAULT_RETENTION, EPOCH_CHANGES, EPOCH_WINDOW_NS, PRIMARY_SILENT_NS, apply, counted_reason,
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
    epoch_rate(state, forced("c", "promote", 2))
    # b restores service at once: its own one change of the hour
    state, res = ok(state, forced("b", "promote", 2))
    assert res["primary"] == "b" and res["epoch"] == 3 and state["volumes"]["vol"][EPOCH_CHANGES] == {"b": NOW, "c": NOW}
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


def test_the_real_failover_counts_and_planned_switchovers_are_free(with_snaps):
    # a falls silent (down or cut off): the others' clocks go on, a's stays
    later = NOW + PRIMARY_SILENT_NS + S
    state = silent(with_snaps, "a", later)
    assert not primary_live(state, state["volumes"]["vol"])
    state, res = ok(state, forced("b", "promote", 1, later))  # the real failover: b's one of the hour
    assert res["primary"] == "b" and state["volumes"]["vol"][EPOCH_CHANGES] == {"b": later}
    # c's takeover of b is its one; b's answer is b's second: a request a approves
    state, _ = ok(state, forced("c", "promote", 2, later))
    state = tick(state, later + S)
    epoch_rate(state, forced("b", "promote", 3, later + S))
    state, res = apply(state, cmd("request", by="b", now_ns=later + S, action="promote",
                                  args={"volume": "vol", "to": "b", "expected_epoch": 3, "force": True}), TRUST)
    state, res = apply(state, cmd("approve", by="a", now_ns=later + S, request=res["request"]), TRUST)
    assert res["status"] == "applied" and res["result"]["epoch"] == 4, res
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


def silent(state: dict, site: str, now_ns: int) -> dict:
    """Every site but ``site`` reports its clock at ``now_ns``: ``site`` is down, or the Raft
    leader drops its forwarded commands (its clock reports among them)."""
    for other in state["sites"]:
        if other != site:
            state, _ = ok(state, cmd("clock", by=other, now_ns=now_ns))
    return state


def test_a_withholding_leader_gets_no_free_takeovers_and_the_honest_sites_always_take_back(with_snaps):
    """Review R6 on a real cluster: c, the Raft leader, dropped a's forwarded commands for ~32 s
    (under point 19's 45 s), took the volume over the "silent" primary for free, again after
    a's takeback, vetoed a's request, then silenced b and took it a third time. On the code
    before, the first takeover left no entry for c and the second one was ok."""
    assert PRIMARY_SILENT_NS > (WITHHELD_AFTER_S + 15) * 10**9  # deposed, elected and reported before it
    t1 = NOW + 32 * S
    state = silent(with_snaps, "a", t1)
    assert primary_live(state, state["volumes"]["vol"])  # 32 s of withholding is not silence
    state, res = ok(state, forced("c", "promote", 1, t1))
    assert res["primary"] == "c" and state["volumes"]["vol"][EPOCH_CHANGES] == {"c": t1}
    state = tick(state, t1 + S)
    state, res = ok(state, forced("a", "promote", 2, t1 + S))  # a takes back: its one
    assert res["primary"] == "a" and state["volumes"]["vol"][EPOCH_CHANGES] == {"a": t1 + S, "c": t1}
    # however long c silences a, its next takeover (or demotion) within the hour is refused
    t2 = t1 + S + PRIMARY_SILENT_NS + S
    state = silent(state, "a", t2)
    assert not primary_live(state, state["volumes"]["vol"])
    res = epoch_rate(state, forced("c", "promote", 3, t2))
    assert res["evidence"]["primary_live"] is False
    epoch_rate(state, forced("c", "demote", 3, t2))
    assert state["volumes"]["vol"]["primary"] == "a"
    # an hour after its first, c has one again, while a's own is still spent
    t3 = t1 + EPOCH_WINDOW_NS
    state = silent(state, "a", t3)
    state, res = ok(state, forced("c", "promote", 3, t3))
    assert res["primary"] == "c"
    state = tick(state, t3)
    epoch_rate(state, forced("a", "promote", 4, t3))
    # a's takeback as a request: c cannot veto it (refused and counted), b's approval applies it
    state, res = apply(state, cmd("request", by="a", now_ns=t3 + S, action="promote",
                                  args={"volume": "vol", "to": "a", "expected_epoch": 4, "force": True}), TRUST)
    assert res["ok"] and res["status"] == "pending", res
    req = res["request"]
    veto = refused(state, cmd("veto", by="c", now_ns=t3 + S, request=req), "conflict")
    assert veto["evidence"]["refusal"] == "not_vetoable" and counted_reason(veto) == "not_vetoable", veto
    assert veto["evidence"]["action"] == "promote" and veto["evidence"]["requested_by"] == "a", veto
    state, res = apply(state, cmd("approve", by="b", now_ns=t3 + 2 * S, request=req), TRUST)
    assert res["ok"] and res["status"] == "applied" and res["result"]["primary"] == "a", res
    # and they keep it: c's next forced change waits an hour; b still has its own change
    state = silent(state, "a", t3 + PRIMARY_SILENT_NS + 3 * S)
    epoch_rate(state, forced("c", "promote", 5, t3 + PRIMARY_SILENT_NS + 3 * S))
    epoch_rate(state, forced("c", "demote", 5, t3 + PRIMARY_SILENT_NS + 3 * S))
    assert "b" not in state["volumes"]["vol"][EPOCH_CHANGES]
    assert (state["volumes"]["vol"]["primary"], state["volumes"]["vol"]["epoch"]) == ("a", 5)


def test_a_role_change_request_needs_at_most_a_majority_of_the_voters(with_snaps):
    """Under ``[policy] approvals`` equal to every voter (a, b, c and the witness w), a weakening
    still needs c's approval, but a role change needs a majority (3): the honest a, b and w."""
    trust = Trust(cluster_id="c", keys=None, cooling_off_ns=86400 * S, membership_cooling_off_ns=900 * S, approvals=4)
    state, _ = ok(with_snaps, forced("c", "promote", 1))
    state, _ = ok(state, forced("a", "promote", 2))
    state = tick(state, NOW + EPOCH_WINDOW_NS)
    state, _ = ok(state, forced("c", "promote", 3, NOW + EPOCH_WINDOW_NS))
    state, res = apply(state, cmd("request", by="a", now_ns=NOW + EPOCH_WINDOW_NS, action="promote",
                                  args={"volume": "vol", "to": "a", "expected_epoch": 4, "force": True}), trust)
    assert res["ok"] and res["needed"] == 3, res
    state, res = apply(state, cmd("approve", by="b", now_ns=NOW + EPOCH_WINDOW_NS, request=res["request"]), trust)
    assert res["ok"] and res["status"] == "pending", res
    state, res = apply(state, cmd("approve", by="w", now_ns=NOW + EPOCH_WINDOW_NS, request=res["request"]), trust)
    assert res["ok"] and res["status"] == "applied" and res["result"]["primary"] == "a", res
    _, res = apply(state, cmd("request", by="a", now_ns=NOW + EPOCH_WINDOW_NS, action="set_retention",
                              args={"volume": "vol", "retention": {**DEFAULT_RETENTION, "lock_s": 3600}}), trust)
    assert res["ok"] and res["needed"] == 4, res
