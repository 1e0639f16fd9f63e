"""``replicad.site.catchup`` (attacker review r13, F3): what a full-state catch-up covered, told as
AUDIT lines, on states made by the real state machine (``state.apply``): the facts an operator
audits that changed between the state before and the installed one, and the audit records of the
commands it covered past this site's mark. The real-daemon version is
tests/security/test_catchup_audit.py."""

from __future__ import annotations

import copy
import logging

from replicad.core import state as st
from replicad.site import catchup
from replicad.site.catchup import install_report, new_audit_records, state_changes
from tests.unit.core.test_state_membership import LAB, M3, MIN15, NOW, after, cmd, founded, revoke, run

RET = {"keep_all_s": 3600, "hourly_s": 86400, "daily_s": 7 * 86400, "lock_s": 600}
LONGER = {**RET, "lock_s": 7200}


def counted(state: dict, n: int) -> dict:
    """``state`` as the Raft node keeps it: ``applied`` counts the commands (checkpoint.advance)."""
    return {**state, "applied": n}


def base(rules: int = st.RULES_MAX) -> dict:
    s = founded() if rules == st.RULES_MAX else founded_at(rules)
    s, _ = run(s, cmd("add_volume", "a", volume="ehr", primary="a", block_size=65536, size_bytes=1 << 20,
                      min_copies=2, retention=dict(RET)))
    return s


def founded_at(rules: int) -> dict:
    """:func:`founded` under ``rules`` (rules 3: the audit as the last ``st.AUDIT_MAX`` records)."""
    s = st.initial_state(members=["a", "b", "c"], rules=rules)
    for site in "abc":
        s, _ = run(s, cmd("register_site", site, site_id=site, peer_url=f"http://{site}", kind="data"))
    for site in "ab":
        s, res = run(s, cmd("found", site, incarnation=site.encode() * 16, members=M3))
    assert res["adopted"] and st.rules(s) == rules
    return s


def away(s: dict) -> dict:
    """What the live sites committed while site b was away (the attack of r13 F3 and the usual ones)."""
    s, _ = run(s, cmd("add_volume", "c", volume="evil0", primary="c", block_size=65536, size_bytes=0,
                      min_copies=1, retention={k: 3600 for k in RET}))
    s, longer = run(s, cmd("request", "a", action="set_retention", args={"volume": "ehr", "retention": dict(LONGER)}))
    s, done = run(s, cmd("approve", "b", request=longer["request"]))  # longer: applies at its approvals
    assert done["status"] == "applied", done
    s, req = run(s, cmd("request", "a", action="revoke_site", args=revoke("c"), reason="compromised"))
    s, _ = run(s, cmd("approve", "b", request=req["request"]))  # approved: cools off (MIN15)
    s, weak = run(s, cmd("request", "c", action="set_retention", args={"volume": "ehr", "retention": dict(RET)}))
    s, _ = run(s, cmd("veto", "a", request=weak["request"]))
    s, _ = run(s, cmd("demote", "a", volume="ehr", expected_epoch=1))
    for _ in range(30):
        s, _ = run(s, cmd("clock", "c"))
    s, done = after(s, MIN15 + 1)
    assert st.is_revoked(s, "c"), done
    return s


def test_every_audited_change_while_away_is_a_line() -> None:
    before = base()
    lines = state_changes(before, away(before))
    text = "\n".join(lines)
    print(text)
    assert "volume evil0 added (registered by c): primary=c block_size=65536 min_copies=1 " \
           "retention={keep_all_s=3600 hourly_s=3600 daily_s=3600 lock_s=3600} epoch=1" in lines
    # in the CLI's units, only what changed (replicad.core.requestdiff: what `replicad requests` shows)
    assert "volume ehr: retention changed: lock: 10m -> 2h (3 other keys as before)" in lines
    assert "volume ehr: primary a -> none, epoch 1 -> 2" in lines
    assert any(line.startswith("site c revoked by ") for line in lines), text
    # the requests, in the live AUDIT request lines' words (one piece of code: request_words)
    assert any(line.startswith("request r2 by a: revoke_site site_id=c keys=[] reason=compromised -- now applied")
               for line in lines), text
    assert any(line.startswith("request r3 by c: set_retention volume=ehr") and "now vetoed" in line
               and "vetoed by a" in line for line in lines), text
    assert "vetoes by a: 0 -> 1" in lines
    # nothing else: heartbeats change no audited fact
    assert len(lines) == 8, text


def test_an_unchanged_state_has_no_line_and_a_founding_is_told() -> None:
    s = base()
    assert state_changes(s, copy.deepcopy(s)) == []
    lines = state_changes(st.initial_state(members=["a", "b", "c"]), s)
    assert any(line.startswith("the cluster founded: incarnation ") for line in lines), lines
    assert any(line.startswith("member c agreed: kind=data raft=10.0.0.3:7000") for line in lines), lines
    assert any(line.startswith("site a registered:") for line in lines)


def test_rules_membership_keys_snapshots_and_verdicts() -> None:
    s = counted(base(), 10)
    changed = copy.deepcopy(s)
    changed["rules"] = st.RULES_MAX + 1  # only what the comparison reads: a raise
    changed["incarnation"]["members"][2]["keys"] = ["ed25519:other"]
    vol = changed["volumes"]["ehr"]
    vol["snapshots"] = {seq: {"root": bytes(32), "verdict": "suspect" if seq in (3, 4) else "clean",
                              "verdict_reason": "entropy"} for seq in range(1, 16)}
    lines = state_changes(s, changed)
    print("\n".join(lines))
    assert f"the cluster's rules raised {st.rules(s)} -> {st.RULES_MAX + 1}" in lines
    assert any(line.startswith("member c changed: keys [ed25519:c] -> [ed25519:other]") for line in lines)
    assert "volume ehr: 15 snapshot(s) committed, seqs [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... 5 more]" in lines
    assert "volume ehr: 2 snapshot(s) judged suspect, seqs [3, 4] (#3: reason=entropy)" in lines
    unexplained = copy.deepcopy(changed)
    unexplained["volumes"]["ehr"]["snapshots"][3]["verdict_reason"] = ""
    assert "volume ehr: 2 snapshot(s) judged suspect, seqs [3, 4] (#3: no reason recorded)" in \
        state_changes(s, unexplained)
    cleared = copy.deepcopy(changed)
    cleared["volumes"]["ehr"]["snapshots"][3].update(verdict="clean", confirmed=True)
    del cleared["volumes"]["ehr"]["snapshots"][1]
    lines = state_changes(changed, cleared)
    assert lines == ["volume ehr: 1 snapshot record(s) pruned, seqs [1]",
                     "volume ehr: 1 suspect snapshot(s) cleared, seqs [3]",
                     "volume ehr: 1 snapshot(s) confirmed clean by an approved request, seqs [3]"], lines


def test_the_new_audit_records_follow_the_overlap_of_the_kept_window() -> None:
    s = base(rules=3)  # rules 1..3: the last AUDIT_MAX records of every command
    later = away(s)
    records, complete = new_audit_records(s, later)
    assert complete and len(records) == len(later["audit"]) - len(s["audit"])
    assert [r["op"] for r in records[:3]] == ["add_volume", "request", "approve"]
    # more commands than the state keeps: no overlap, every kept record is new, and it says so
    flooded = later
    for _ in range(st.AUDIT_MAX):  # refused (a retention change is a request), audited
        flooded, result = st.apply(flooded, cmd("set_retention", "c", volume="ehr", retention=dict(RET)), LAB)
        assert not result["ok"]
    records, complete = new_audit_records(s, flooded)
    assert not complete and len(records) == st.AUDIT_MAX
    assert new_audit_records({}, {}) == ([], True)


def test_under_rules_4_the_new_records_are_those_past_the_count_and_a_flood_drops_only_its_own() -> None:
    s = counted(base(), 20)
    later = counted(away(s), 60)
    records, complete = new_audit_records(s, later)
    assert complete and records == [r for r in later["audit"] if r["n"] > 20] and len(records) >= 8
    assert [r["op"] for r in records[:3]] == ["add_volume", "request", "approve"]
    assert records[1]["signer"] == "a" and records[2]["signer"] == "b"  # checked signers' shares
    # site b's flood of refused signed commands (a retention change is a request): more than the list keeps
    flooded = later
    for i in range(st.AUDIT_KEPT_MAX + 100):
        flooded, result = st.apply({**flooded, "applied": 60 + i},
                                   cmd("set_retention", "b", volume="ehr", retention=dict(RET)), LAB)
        assert not result["ok"]
    flooded = counted(flooded, 60 + st.AUDIT_KEPT_MAX + 100)
    records, complete = new_audit_records(s, flooded)
    assert not complete  # b's own older records of those commands were dropped
    honest = [r for r in records if r["by"] != "b"]
    assert honest == [r for r in later["audit"] if r["n"] > 20 and r["by"] != "b"]  # every other share kept
    assert new_audit_records(later, flooded)[1] is False and new_audit_records(flooded, flooded) == ([], True)
    report = install_report(s, flooded, at_start=False, mark=20)
    assert "older records of these commands dropped, by share: b " in report[0][1], report[0][1]
    refused = [line for _, line in report if " refused: " in line]
    assert "command(s) set_retention signed by b (signature checked): refused approval_required" in refused[0], \
        refused  # its records carry the share they count against; the replay memory's floor refuses the last
    assert refused[1:] and all("set_retention claiming signer b: refused replayed" in line for line in refused[1:])


def test_the_report_of_an_install_past_the_mark() -> None:
    before = counted(base(), 20)
    installed = counted(away(before), 6083)
    report = install_report(before, installed, at_start=False, mark=20)
    levels = {level for level, _ in report}
    assert levels == {logging.WARNING}
    head = "AUDIT (committed while this site was away; received whole from the leader, commands 21..6083)"
    summary = report[0][1]
    print("\n".join(line for _, line in report))
    assert summary.startswith(head + ": the entries were not applied here one by one; what changed between "
                              "command 20 (this site's state before) and command 6083")
    assert "8 fact(s); 9 audit record(s) of those commands; each follows" in summary  # an applied clock has none
    assert any(line == f"{head} volume evil0 added (registered by c): primary=c block_size=65536 min_copies=1 "
                       "retention={keep_all_s=3600 hourly_s=3600 daily_s=3600 lock_s=3600} epoch=1"
               for _, line in report)
    assert any(line.startswith(f"{head} audit record: command add_volume by c volume=evil0: applied (stamped 2023-")
               for _, line in report)
    assert not any("audit record: command clock" in line for _, line in report)


def test_the_levels_first_start_missing_mark_and_seen_before() -> None:
    before, installed = counted(base(), 20), counted(away(base()), 90)
    first = install_report(before, installed, at_start=False, mark=0, first_start=True)
    assert {lvl for lvl, _ in first} == {logging.INFO}
    assert first[0][1].startswith("AUDIT (committed before this site first joined; received whole from the leader, "
                                  "commands 21..90)")
    missing = install_report(before, installed, at_start=False, mark=None, missing="missing")
    assert missing[0] == (logging.WARNING, missing[0][1]) and "its mark audit.seen was missing" in missing[0][1]
    seen = install_report(before, installed, at_start=False, mark=90)
    # not "all seen live here before": commands received whole earlier were logged as a catch-up, not seen live
    assert seen == [(logging.INFO, "AUDIT (replayed: received whole from the leader, commands 21..90, each logged "
                                   "here before, live or in an earlier catch-up's lines: mark 90) nothing new to "
                                   "audit")]


def test_a_dump_loaded_at_start_past_the_mark_lists_the_facts_and_the_records_past_it() -> None:
    empty = st.initial_state(members=["a", "b", "c"])
    installed = counted(away(base()), 200)
    report = install_report(empty, installed, at_start=True, mark=195)
    summary = report[0][1]
    assert summary.startswith("AUDIT (committed while this site was away; this site's own Raft dump, loaded at start, "
                              "commands 196..200): the entries were not applied here one by one; the state's facts")
    records = [line for _, line in report if "audit record:" in line]
    assert len(records) <= 5  # at most one per command past the mark
    assert any("volume evil0 added" in line for _, line in report)


def test_the_report_is_bounded_and_never_raises(monkeypatch) -> None:
    monkeypatch.setattr(catchup, "FACTS_MAX", 3)
    monkeypatch.setattr(catchup, "VOLUME_FACTS_MAX", 1)
    monkeypatch.setattr(catchup, "RECORDS_MAX", 2)
    before = counted(base(), 1)
    installed = counted(away(before), 500)
    report = install_report(before, installed, at_start=False, mark=1)
    assert sum("audit record:" in line for _, line in report) == 2
    assert any("... and 2 more fact(s) of the rules, membership, sites and requests: see `replicad status`" in line
               for _, line in report)
    assert any("... and 2 more fact(s) of the volumes: see `replicad status`" in line for _, line in report)
    assert any("older audit record(s) in " in line and "line(s) not listed" in line for _, line in report)
    for junk in (None, [], "x", {"volumes": [1]}, {"volumes": {"v": 3}, "requests": {"r": None}, "audit": [1, None],
                                                   "incarnation": {"members": "x"}, "revoked": {"c": 7}}):
        assert install_report(junk, installed, at_start=False, mark=0)
        assert install_report(installed, junk, at_start=True, mark=None, missing="missing")
        state_changes(junk, junk)


def test_a_refusal_flood_is_counted_in_one_line_and_the_accepted_records_stay_listed() -> None:
    # attack review R15, F2: c's vetoes of a request that does not exist, refused and audited, filled
    # the listed records and pushed the accepted ones (add_volume) out of the list (c is revoked by
    # then here: its commands are refused for that)
    before = counted(base(), 20)
    s = away(before)
    for _ in range(600):
        s, result = st.apply(s, cmd("veto", "c", now_ns=NOW + MIN15 + 1, request="r999999"), LAB)
        assert result["error"] == "revoked"
    s, _ = run(s, cmd("add_volume", "a", volume="late", primary="a", block_size=65536, size_bytes=1 << 20,
                      min_copies=2, retention=dict(RET), now_ns=NOW + MIN15 + 1))
    report = install_report(before, counted(s, 700), at_start=False, mark=20)
    lines = [line.split(") ", 1)[1] for _, line in report[1:]]
    assert "600 refused command(s), counted per command, claimed signer and error" in report[0][1]
    refused = [line for line in lines if line.startswith("refused: ")]
    assert refused == [line for line in lines if "refused revoked" in line] and len(refused) == 1
    assert refused[0].startswith("refused: 600 command(s) veto claiming signer c: refused revoked (claimed stamps ")
    listed = [line for line in lines if line.startswith("audit record: ")]
    assert listed[0].startswith("audit record: command add_volume by c volume=evil0: applied")
    assert listed[-1].startswith("audit record: command add_volume by a volume=late: applied")
    assert lines.index(listed[-1]) < lines.index(refused[0])


def test_a_detection_policy_change_is_the_keys_that_changed_from_the_policy_that_applied() -> None:
    # the operator's tryout: `detection policy none -> {mode=content ... ransom_notes=[...]}` (4 KB) for a
    # change of min_score 0.02 -> 0.05; "none" was the defaults applied
    from replicad.core.anomaly import POLICY_DEFAULTS

    before = base()
    s, req = run(before, cmd("request", "a", action="set_detection",
                             args={"volume": "ehr", "policy": {**POLICY_DEFAULTS, "min_score": 0.05}}))
    s, approved = run(s, cmd("approve", "b", request=req["request"]))
    s, _ = after(s, approved["effective_ns"] - NOW + 1)  # a weakening: the cooling-off
    assert s["volumes"]["ehr"].get("detection"), "the request applied"
    lines = state_changes(before, s)
    others = len(POLICY_DEFAULTS) - 1
    assert f"volume ehr: detection policy changed (the defaults applied before): min_score: 0.02 -> 0.05 " \
           f"({others} other keys as before)" in lines, lines
    assert all(len(line) < 600 for line in lines), lines  # never the whole policy (its ransom-note patterns)
    assert not any("ransom_notes=[" in line for line in lines), lines


def test_routine_records_are_counted_per_command_and_signer() -> None:
    before = counted(base(), 20)
    s = away(before)
    # six minutes away: each snapshot's commit and every site's verdict on it (the state machine's
    # own record shape; committing real snapshots needs signed acks: test_identity)
    done = [{**s["audit"][-1], "op": op, "by": by, "volume": "ehr", "at_ns": NOW + i}
            for i, (op, by) in enumerate([("commit_snapshot", "a")] * 31 + [("site_verdict", "b")] * 6
                                         + [("site_verdict", "c")] * 2)]
    s = {**s, "audit": [*s["audit"], *done]}
    report = install_report(before, counted(s, 200), at_start=False, mark=20)
    lines = [line for _, line in report]
    print("\n".join(lines))
    routine = [line for line in lines if "routine audit records" in line]
    assert len(routine) == 1, lines
    assert routine[0].endswith("routine audit records (accepted, counted): 31 commit_snapshot by a, "
                               "6 site_verdict by b, 2 site_verdict by c"), routine
    assert not any("audit record: command commit_snapshot" in line or "audit record: command site_verdict" in line
                   for line in lines)
    assert any("audit record: command add_volume by c volume=evil0" in line for line in lines)  # facts: one each
    assert "39 routine one(s) (commit_snapshot, site_verdict) counted per command and signer" in lines[0], lines[0]


def _volume_flood(s: dict, site: str, n: int) -> dict:
    """``site`` registers ``n`` volumes of its own, each with 12 committed snapshots (the snapshot
    records as the state keeps them; committing real ones needs signed acks: test_identity)."""
    for i in range(n):
        s, _ = st.apply(s, cmd("add_volume", site, volume=f"own{i}", primary=site, block_size=65536, size_bytes=0,
                               min_copies=1, retention={k: 3600 for k in RET}), LAB)
        assert f"own{i}" in s["volumes"], i
    volumes = {name: ({**v, "snapshots": {seq: {"root": bytes(32), "verdict": "clean"} for seq in range(1, 13)}}
                      if name.startswith("own") else v) for name, v in s["volumes"].items()}
    return {**s, "volumes": volumes}


def test_the_governance_facts_have_their_own_budget_listed_before_the_volumes() -> None:
    # attack review R16, R-b: c's own volumes (a registration line and a snapshots line each) took
    # the whole shared budget of 200 fact lines and pushed a's revocation request and the vetoes
    # out into "... and N more"
    before = counted(base(), 20)
    s, rv = run(before, cmd("request", "a", action="revoke_site", args=revoke("c"), reason="compromised"))
    s, weak = run(s, cmd("request", "c", action="set_retention", args={"volume": "ehr", "retention": dict(RET)}))
    s, _ = run(s, cmd("veto", "a", request=weak["request"]))
    s = _volume_flood(s, "c", 120)
    report = install_report(before, counted(s, 400), at_start=False, mark=20)
    lines = [line.split(") ", 1)[1] for _, line in report[1:]]
    print("\n".join(lines[:8]), lines[-3:], sep="\n")
    revocation = next(i for i, line in enumerate(lines)
                      if line.startswith(f"request {rv['request']} by a: revoke_site"))
    vetoed = next(i for i, line in enumerate(lines) if line.startswith(f"request {weak['request']} by c:"))
    vetoes = lines.index("vetoes by a: 0 -> 1")
    first_volume = next(i for i, line in enumerate(lines) if line.startswith("volume own"))
    assert max(revocation, vetoed, vetoes) < first_volume
    volume_lines = [line for line in lines if line.startswith("volume own")]
    assert len(volume_lines) == catchup.VOLUME_FACTS_MAX  # 240 facts of the volumes: cut, counted
    assert "... and 40 more fact(s) of the volumes: see `replicad status`" in lines
    assert not any("more fact(s) of the rules" in line for line in lines)
    assert "243 fact(s)" in report[0][1]


def test_identical_accepted_records_are_one_line_with_their_count() -> None:
    # attack review R16, F2: c's accepted no-op add_volume, 600 of them, filled the 200 listed
    # records and pushed a's revocation request's record out of the listing
    before = counted(base(), 20)
    s, _ = run(before, cmd("add_volume", "c", volume="evil0", primary="c", block_size=65536, size_bytes=0,
                           min_copies=1, retention={k: 3600 for k in RET}))
    s, rv = run(s, cmd("request", "a", action="revoke_site", args=revoke("c"), reason="compromised"))
    for i in range(600):
        s, result = st.apply(s, cmd("add_volume", "c", now_ns=NOW + (1 + i) * 10**6, volume="evil0", primary="c",
                                    block_size=65536, size_bytes=0, min_copies=1,
                                    retention={k: 3600 for k in RET}), LAB)
        assert result["ok"] is True and result.get("created") is False, result
    report = install_report(before, counted(s, 700), at_start=False, mark=20)
    lines = [line.split(") ", 1)[1] for _, line in report[1:]]
    listed = [line for line in lines if line.startswith("audit record: ")]
    print("\n".join(listed))
    assert listed[0].startswith("audit record: command add_volume by c volume=evil0: applied 601 times (stamped "
                                "2023-11-14T22:13:20.000000Z .. 2023-11-14T22:13:20.600000Z)"), listed
    assert listed[1].startswith("audit record: command request by a: applied"), listed
    assert len(listed) == 2
    # up to LISTED_EACH_MAX of one (command, signer, volume): one line each, in their order
    three = [{"op": "request", "by": "a", "ok": True, "at_ns": NOW + i} for i in range(3)]
    mixed = [*three[:2], {"op": "approve", "by": "b", "ok": True, "at_ns": NOW + 5}, three[2]]
    assert catchup.group_listed(mixed) == [(r, 1, r["at_ns"], r["at_ns"]) for r in mixed]
    four = [*mixed, {**three[0], "at_ns": NOW + 9}]
    assert catchup.group_listed(four) == [(three[0], 4, NOW, NOW + 9), (mixed[2], 1, NOW + 5, NOW + 5)]
    assert "602 audit record(s) of those commands (in 2 line(s): identical ones counted per command, signer and " \
           "volume)" in report[0][1]


def test_a_request_withdrawn_after_another_sites_approval_is_named_in_the_catch_up() -> None:
    # attack review R16, F1: the requester's own veto leaves no record; the catch-up said "forgotten
    # (finished records are bounded per requester)" of an approved request c withdrew
    before = base()
    s, req = run(before, cmd("request", "c", action="set_retention",
                             args={"volume": "ehr", "retention": {**RET, "lock_s": 60}}))  # weaker: cools off
    s, approved = run(s, cmd("approve", "b", request=req["request"]))
    was = s
    s, withdrawn = run(s, cmd("veto", "c", request=req["request"]))
    assert withdrawn["status"] == "withdrawn", withdrawn
    lines = state_changes(was, s)
    assert any(line.startswith(f"request {req['request']} (set_retention, {approved['status']}, requested by c) gone "
                               "unfinished: withdrawn by its requester after b approved it (their approvals are void)")
               for line in lines), lines
    assert catchup.withdrawn_after_approval(was, s) == [
        {"request": req["request"], "action": "set_retention", "by": "c", "voided": ["b"]}]
    # proven without the kept answer too: c holds fewer finished records than a forgetting leaves
    assert catchup.withdrawn_after_approval(was, {**s, "applied_ops": {}}) == \
        catchup.withdrawn_after_approval(was, s)
    # the catch-up's line of it is an ERROR, as the live line (site.daemon); the others stay WARNING
    report = install_report(counted(was, 30), counted(s, 31), at_start=False, mark=30)
    loud = [line for level, line in report if level == logging.ERROR]
    assert len(loud) == 1 and f"request {req['request']} (set_retention" in loud[0], report
    assert {level for level, _ in report} == {logging.WARNING, logging.ERROR}
    # a withdrawal nobody else approved: no ERROR, nothing voided
    s2, own = run(before, cmd("request", "c", action="set_retention",
                              args={"volume": "ehr", "retention": {**RET, "lock_s": 60}}))
    s3, _ = run(s2, cmd("veto", "c", request=own["request"]))
    assert catchup.withdrawn_after_approval(s2, s3) == []
    assert {level for level, _ in install_report(counted(s2, 30), counted(s3, 31), at_start=False, mark=30)} == \
        {logging.WARNING}


def test_an_approved_request_that_finished_and_was_forgotten_is_no_withdrawal() -> None:
    # reader F2: a's approved revocation of c applied, then a's 65 later requests pushed its record out
    # (64 finished records kept per requester): the site that was away named a as a withdrawer at ERROR
    s, req = run(base(), cmd("request", "a", action="revoke_site", args=revoke("c"), reason="compromised"))
    s, approved = run(s, cmd("approve", "b", request=req["request"]))
    assert approved["status"] == "approved", approved
    was = s
    s, _ = after(s, MIN15 + 1)
    assert s["requests"][req["request"]]["status"] == "applied"
    for i in range(st.REQUESTS_MAX + 1):
        s, more = run(s, cmd("request", "a", action="set_retention",
                             args={"volume": "ehr", "retention": {**LONGER, "lock_s": LONGER["lock_s"] + i}}))
        s, done = run(s, cmd("approve", "b", request=more["request"]))
        assert done["status"] == "applied", done
    assert req["request"] not in s["requests"]
    assert catchup.withdrawn_after_approval(was, s) == []
    assert catchup.gone_unfinished(was, s) == {req["request"]: "forgotten"}  # a kept answer names it
    forgot = {**s, "applied_ops": {}}  # the answers dropped too (APPLIED_OPS_MAX): the state cannot tell
    assert catchup.gone_unfinished(was, forgot) == {req["request"]: "unknown"}
    assert catchup.withdrawn_after_approval(was, forgot) == []
    for state in (s, forgot):
        report = install_report(counted(was, 30), counted(state, 500), at_start=False, mark=30)
        assert logging.ERROR not in {level for level, _ in report}, report
        named = [line for _, line in report if f"request {req['request']} (revoke_site" in line]
        assert len(named) == 1 and "withdrawn by its requester after" not in named[0], named
    assert any("gone: withdrawn by its requester, or finished and forgotten since" in line
               for _, line in install_report(counted(was, 30), counted(forgot, 500), at_start=False, mark=30))


def test_a_verdicts_reason_is_shown_once() -> None:
    """A verdict request carries its reason both as an argument and as the request's reason: the
    line printed it twice (``reason="c down" reason="c down"``, tryout 2, item 8)."""
    words = catchup.request_words("mark_verdict", {"volume": "ehr", "seq": 7, "verdict": "clean",
                                                   "reason": "c down"}, "c down")
    assert words == 'mark_verdict volume=ehr seq=7 verdict=clean reason="c down"', words
    # a different argument named reason is an argument of its own: both shown
    assert catchup.request_words("x", {"reason": "a"}, "b") == 'x reason=a reason=b'
