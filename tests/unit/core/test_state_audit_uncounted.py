"""Rules 4's kept audit across the raise (``state.AUDIT_UNCOUNTED``) and the attribution of a
``found`` before the founding (``state.audit_signer``).

The records kept from before the raise to rules 4 carry no command count (``n`` None). A flood
before the raise (c's refused vetoes, unattributed) and honest traffic after it: the first cut
drops only such records, and ``audit_dropped`` must still say of which commands (at most the
raise's bound), or every later catch-up reads "incomplete" and the request watch files every
vanished request as unknown, for ever. A ``found`` is checked against the keys its own member list
gives its proposer: its record is attributed by those, whatever the applying site's ``[[sites]]``
says, so that every site keeps the same state. Real signed commands, the real state machine."""

from __future__ import annotations

import copy

from replicad.core import state as st
from replicad.core.identity import Trust
from replicad.site import catchup
from tests.unit.core.test_state_rules3_frozen import (MEMBERS, PUBLIC, SITES, TRUST, founded, honest_and_flood,
                                                      reports, run_current, signed)


def step(s: dict, command: dict) -> dict:
    """``command`` applied, counted as the Raft node counts."""
    new, _ = st.apply(s, copy.deepcopy(command), TRUST)
    return {**new, "applied": s["applied"] + 1}


def test_records_from_before_the_raise_dropped_first_keep_the_catch_up_complete() -> None:
    log = founded(3) + honest_and_flood()[:1100]
    before, _ = run_current(log, TRUST, {"members": list(SITES)})
    raised = step(before, signed("rules", "b", to=4, reports=reports(4)))
    assert st.rules(raised) == 4 and raised[st.AUDIT_UNCOUNTED] == len(log)
    assert all(r["n"] is None for r in raised["audit"][:-1]) and raised["audit"][-1]["n"] == len(log) + 1
    s = raised
    for i in range(1000):  # routine traffic after the raise: refused vetoes signed by a, b and c
        s = step(s, signed("veto", "abc"[i % 3], request=f"r{800000 + i}"))
    dropped = s[st.AUDIT_DROPPED]
    assert set(dropped) == {""} and dropped[""][1] == len(log), dropped  # only records from before the raise
    assert st.audit_kept_since(s, s["applied"]) is True
    assert st.audit_kept_since(s, len(log)) is True  # a mark at the raise: every later record kept
    assert st.audit_kept_since(s, len(log) - 1) is False  # a dropped one may be of the command after it
    # the catch-up: from the raise's state every later record, complete
    records, complete = catchup.new_audit_records(raised, s)
    assert complete and [r["n"] for r in records] == list(range(len(log) + 2, s["applied"] + 1))
    # from a mark before the raise (rules 3, no counts): the kept old records follow the overlap
    records, complete = catchup.new_audit_records(before, s)
    assert complete and records[0]["op"] == "rules" and len(records) == s["applied"] - len(log)
    earlier, _ = run_current(log[:-300], TRUST, {"members": list(SITES)})
    assert catchup.new_audit_records(earlier, s)[1] is False  # records of commands after it dropped
    for i in range(3000):  # much later: still complete past the newest dropped record
        s = step(s, signed("veto", "abc"[i % 3], request=f"r{700000 + i}"))
    assert s[st.AUDIT_DROPPED][""][1] == len(log)
    newest = max(entry[1] for entry in s[st.AUDIT_DROPPED].values())
    assert st.audit_kept_since(s, newest) is True and st.audit_kept_since(s, newest - 1) is False


def test_a_found_is_attributed_by_its_own_members_keys_whatever_the_local_config() -> None:
    """Two sites, one whose ``[[sites]]`` lists a and one whose does not: a's ``found`` verifies
    under the keys its own list gives a at both, and both attribute its record to a (the second
    refuses it, "not a configured site": the one config-dependent rule of ``found``, which a
    founding reference pinned in ``limits`` makes alike)."""
    partial = Trust(cluster_id="c", keys={s: PUBLIC[s] for s in SITES if s != "a"})
    found = signed("found", "a", incarnation=b"i" * 16, members=MEMBERS)
    states = []
    for trust in (TRUST, partial):
        s, _ = st.apply(st.initial_state(rules=4), copy.deepcopy(found), trust)
        states.append(s)
    assert [(s["audit"][-1]["op"], s["audit"][-1]["signer"]) for s in states] == [("found", "a")] * 2
    assert [s["audit"][-1]["ok"] for s in states] == [True, False]
    # a command other than found before the founding: attributed by the keys the local config pins
    other = signed("register_site", "a", site_id="a", peer_url="http://a", kind="data")
    assert st.audit_signer(st.initial_state(rules=4), other, TRUST) == "a"
    assert st.audit_signer(st.initial_state(rules=4), other, partial) is None
