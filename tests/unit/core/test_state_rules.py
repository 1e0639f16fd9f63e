"""The state's rules version (``state.rules``): a command log applied to a state under rules 1 gives
the state and results release b976d0a's state machine gives (the same state digest), for every
family of commands whose rules changed since; after the ``rules`` command raised the version the
new rules decide. And the ``rules`` command itself: only upward, at most ``RULES_MAX``, idempotent.

b976d0a's state machine is loaded from the repository's history (``git show
b976d0a:replicad/core/state.py``) into a module of its own, not from the frozen copy the package
carries (:mod:`replicad.core.state_rules1`), whose text is checked against it too.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest

from replicad.consensus.checkpoint import state_digest
from replicad.core import state as st
from replicad.core import state_rules1
from replicad.core import identity
from replicad.core.identity import Trust
from tests.unit.core.frozen import release_state

OLD_RELEASE = "b976d0a"
S = 1_000_000_000
NOW = 1_700_000_000 * S
MIN15 = 15 * 60 * S
GIB = 1 << 30
POLICY = Trust(cluster_id="c", keys=None, membership_cooling_off_ns=MIN15)  # unsigned: the rules, not the keys
RET = {"keep_all_s": 3600, "hourly_s": 86400, "daily_s": 7 * 86400, "lock_s": 0}
M3 = [{"site_id": s, "raft": f"10.0.0.{i}:7000", "kind": "data", "keys": [f"ed25519:{s}"]}
      for i, s in enumerate("abc", 1)]
_ids = itertools.count()


def cmd(op: str, by: str, now_ns: int = NOW, **args) -> dict:
    """One unsigned command of ``by`` stamped ``now_ns``, with a fresh op id."""
    return {"v": 1, "op": op, "op_id": f"{op}-{by}-{next(_ids)}", "by": by, "now_ns": now_ns, **args}


@pytest.fixture(scope="module")
def old():
    """b976d0a's ``replicad.core.state``, from the repository's history, as a module of its own."""
    return release_state(OLD_RELEASE)


FOUNDING = [*(cmd("register_site", site, site_id=site, peer_url=f"http://{site}", kind="data") for site in "abc"),
            *(cmd("found", site, incarnation=site.encode() * 16, members=M3) for site in "ab")]


def founded(apply) -> dict:
    """Three registered data sites a, b, c founded with :data:`M3` (:data:`FOUNDING`, the same
    commands each time), every command applied by ``apply``, from a state without a rules
    version (rules 1)."""
    s = st.initial_state(members=["a", "b", "c"])
    for c in FOUNDING:
        s, res = apply(s, copy.deepcopy(c), POLICY)
        assert res["ok"], res
    assert res["adopted"], res
    return s


def replay(apply, state: dict, log: list[dict]) -> tuple[dict, list[dict]]:
    """``state`` after ``log`` applied by ``apply`` in order, and every result."""
    s, results = copy.deepcopy(state), []
    for c in log:
        s, r = apply(s, copy.deepcopy(c), POLICY)
        results.append(r)
    return s, results


def add_volume(name: str = "vol", by: str = "a", **extra) -> dict:
    return cmd("add_volume", by, volume=name, primary=by, block_size=65536, size_bytes=1 << 20, min_copies=2,
               retention=dict(RET), **extra)


def commit(seq: int = 1, epoch: int = 1, by: str = "a", holders=("a", "b"), stats=None, volume: str = "vol",
           now_ns: int = NOW) -> dict:
    return cmd("commit_snapshot", by, now_ns=now_ns, volume=volume, seq=seq, epoch=epoch, root=bytes([seq]) * 32,
               parent_seq=None if seq == 1 else seq - 1, created_at_ns=now_ns, holders=list(holders),
               stats={"changed_blocks": 1, "total_blocks": 16} if stats is None else stats, verdict="clean",
               size_bytes=1 << 20)


def reports(to: int = st.RULES_MAX, sites: str = "abc", at_ns: int = NOW) -> dict:
    """Unsigned release reports of ``sites``, each running a release applying rules 1..``to``."""
    return {site: [to, at_ns, None] for site in sites}


def raise_to(by: str, to: int = st.RULES_MAX, **kw) -> dict:
    """``by``'s raise to ``to`` with every member's report (:func:`reports`)."""
    return cmd("rules", by, to=to, reports=kw.pop("reports", reports(to)), **kw)


def clocks(ns: int) -> list[dict]:
    """Every site reports ``NOW + ns``: the majority clock moves there."""
    return [cmd("clock", site, now_ns=NOW + ns) for site in "abc"]


def _retentions(n: int) -> list[dict]:
    out = [add_volume()]
    for i in range(n):
        by, ap = ("b", "c") if i % 2 else ("c", "b")
        out.append(cmd("request", by, action="set_retention",
                       args={"volume": "vol", "retention": {**RET, "keep_all_s": 3600 + 60 * (i + 1)}}))
        out.append(cmd("approve", ap, request=f"r{i + 1}"))
    return out


# Each family: the log, and what the new rules decide of it (checked on the state and results after
# the raise). Each log's old and new answers differ, so its digest under the two rules differs too.
FAMILIES = {
    "own veto is a withdrawal": (
        [add_volume(), cmd("request", "b", action="set_retention",
                           args={"volume": "vol", "retention": {**RET, "keep_all_s": 1800}}),
         cmd("veto", "b", request="r1")],
        lambda s, r: r[-1]["status"] == "withdrawn" and "r1" not in s["requests"]),
    "set_max_size past twice the maximum cools off": (
        [add_volume(), cmd("request", "a", action="set_max_size", args={"volume": "vol", "max_size_bytes": 8 * GIB}),
         cmd("approve", "b", request="r1")],
        lambda s, r: r[-1]["status"] == "approved" and s["volumes"]["vol"]["max_size_bytes"] < 8 * GIB),
    "set_max_size at once carries at_once and max_size_base": (
        [add_volume(), cmd("request", "a", action="set_max_size",
                           args={"volume": "vol", "max_size_bytes": GIB + (1 << 21)}),
         cmd("approve", "b", request="r1")],
        lambda s, r: r[-1]["status"] == "applied" and "at_once" in s["requests"]["r1"]["result"]
        and st.MAX_SIZE_BASE in s["volumes"]["vol"]),
    "finished requests bounded per requester": (
        _retentions(70),
        lambda s, r: len(s["requests"]) == 70),
    "one site registers at most 128 volumes": (
        [add_volume(f"v{i}") for i in range(st.VOLUMES_PER_SITE_MAX + 1)],
        lambda s, r: r[-1]["error"] == "conflict" and r[-1]["evidence"]["refusal"] == "volume_quota"),
    "stats of a commit: 384 bytes per record": (
        [add_volume(), commit(stats={"note": "x" * 400})],
        lambda s, r: r[-1]["evidence"].get("refusal") == "stats_bytes"),
    "stats of a commit: the read keys are integers": (
        [add_volume(), commit(stats={"random_changed_blocks": "x", "total_blocks": 16})],
        lambda s, r: r[-1]["error"] == "bad_request" and r[-1]["evidence"].get("refusal") == "stats"),
    "stats of a commit: fewer holders than min_copies (evidence copies_needed)": (
        [add_volume(), commit(holders=("a",))],
        lambda s, r: r[-1]["evidence"].get("copies_needed") == 2),
    "names are printable": (
        [add_volume("vol\nforged line")],
        lambda s, r: r[-1]["evidence"].get("refusal") == "not_printable" and not s["volumes"]),
    "reasons are printable": (
        [add_volume(), cmd("request", "b", action="set_retention", reason="ok\x1b[2Jforged",
                           args={"volume": "vol", "retention": {**RET, "keep_all_s": 1800}})],
        lambda s, r: r[-1]["evidence"].get("refusal") == "not_printable"),
    "an instant recovery turns other sites' forced role changes into requests": (
        [add_volume(), commit(),
         cmd("promote", "b", volume="vol", to="b", expected_epoch=1, force=True, snapshot=1, instant=True),
         cmd("promote", "c", volume="vol", to="c", expected_epoch=2, force=True)],
        lambda s, r: r[-2]["ok"] and r[-1]["error"] == "approval_required"
        and r[-1]["evidence"]["refusal"] == "instant_recovery" and s["volumes"]["vol"]["primary"] == "b"),
    "remove_volume is a new command": (
        [add_volume(), *clocks(10 * S), cmd("remove_volume", "a", volume="vol"),
         cmd("request", "a", action="remove_volume", args={"volume": "vol"})],
        lambda s, r: r[-2]["error"] == "approval_required" and r[-1]["ok"] and r[-1]["status"] == "pending"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_log_under_rules_1_is_decided_as_b976d0a_decided_it(old, family: str) -> None:
    """The log applied to a rules-1 state gives b976d0a's results and state digest; raised to
    rules 2 first, the same log is decided by the new rules (and the digest differs)."""
    log, new_rule = FAMILIES[family]
    s_old, r_old = replay(old.apply, founded(old.apply), log)
    start = founded(st.apply)
    assert st.rules(start) == 1 and st.RULES not in start
    assert state_digest(start) == state_digest(founded(old.apply))
    s1, r1 = replay(st.apply, start, log)
    assert r1 == r_old
    assert state_digest(s1) == state_digest(s_old)
    assert st.rules(s1) == 1 and st.RULES not in s1

    raised, res = st.apply(start, raise_to("c"), POLICY)
    assert res == {"ok": True, "rules": st.RULES_MAX, "previous": 1, "changed": True, "behind": {}}
    s2, r2 = replay(st.apply, raised, log)
    assert new_rule(s2, r2), r2[-1]
    assert state_digest(s2) != state_digest(s_old)


def test_a_raise_in_the_middle_of_a_log(old) -> None:
    """Entries before the raise stay decided by rules 1, entries after it by the new rules: the
    own veto before it is a veto counted against the site, the one after it a withdrawal."""
    veto = [cmd("request", "b", action="set_retention", args={"volume": "vol", "retention": {**RET, "keep_all_s": 1800}}),
            cmd("veto", "b", request="r1")]
    again = [cmd("request", "b", action="set_retention", args={"volume": "vol", "retention": {**RET, "keep_all_s": 1700}}),
             cmd("veto", "b", request="r2")]
    s, r = replay(st.apply, founded(st.apply), [add_volume(), *veto, raise_to("a"), *again])
    assert [x.get("status") for x in r] == [None, "pending", "vetoed", None, "pending", "withdrawn"]
    assert s["requests"]["r1"]["status"] == "vetoed" and "r2" not in s["requests"]
    assert s["vetoes"] == {"b": 1} and st.rules(s) == st.RULES_MAX


def test_the_package_carries_b976d0a_state_machine_unchanged(old) -> None:
    """:mod:`replicad.core.state_rules1` is b976d0a's state.py with a comment header only."""
    text = Path(state_rules1.__file__).read_text(encoding="utf-8")
    header, sep, body = text.partition('"""The replicated cluster state machine')
    assert sep and all(line.startswith("#") for line in header.splitlines())
    assert sep + body == old.SOURCE


def test_rules_raise_only_upward_at_most_rules_max_idempotent(old) -> None:
    """``rules``: 1 -> 2 with every member's report changes the state; 2 again is answered changed
    false and changes only the audit; lower ``conflict`` (``rules_lower``); past RULES_MAX or below
    1 ``out_of_range``. Under rules 1 every ``rules`` command but an accepted raise is decided as
    b976d0a decides it (an unknown op): results and digest equal b976d0a's, rules still 1."""
    s = founded(st.apply)
    refused = [raise_to("a", st.RULES_MAX + 1), raise_to("a", 0), raise_to("a", "2"), raise_to("a", True),
               raise_to("z"), raise_to("a", extra=1), raise_to("a", 1), cmd("rules", "a", to=2)]
    same, res = replay(st.apply, s, refused)
    same_old, res_old = replay(old.apply, founded(old.apply), refused)
    assert res == res_old and all(r["ok"] is False and r["message"] == "unknown op" for r in res), res
    assert state_digest(same) == state_digest(same_old) and st.rules(same) == 1 and st.RULES not in same

    s2, res = st.apply(s, raise_to("a"), POLICY)
    R = st.RULES_MAX
    assert res == {"ok": True, "rules": R, "previous": 1, "changed": True, "behind": {}} and s2[st.RULES] == R
    s3, res = st.apply(s2, cmd("rules", "b", to=R), POLICY)  # the version the state has: no reports needed
    assert res == {"ok": True, "rules": R, "previous": R, "changed": False}
    assert {k: v for k, v in s3.items() if k not in ("audit", "applied_ops", "clocks", "seen")} == \
        {k: v for k, v in s2.items() if k not in ("audit", "applied_ops", "clocks", "seen")}
    s4, res = st.apply(s3, cmd("rules", "c", to=1), POLICY)
    assert res["error"] == "conflict" and res["evidence"]["refusal"] == "rules_lower"
    assert st.rules(s4) == R
    _, res = st.apply(s3, raise_to("a", st.RULES_MAX + 1), POLICY)  # under this code's rules: its refusal
    assert res["error"] == "out_of_range"
    retry = raise_to("a")
    s5, first = st.apply(s, retry, POLICY)
    assert st.apply(s5, retry, POLICY) == (s5, first)  # exactly-once: a retried raise gets its first answer


@pytest.mark.parametrize("case", ["missing", "older", "stale", "malformed", "no reports"])
def test_a_raise_needs_a_majority_of_the_unrevoked_members_reports(old, case: str) -> None:
    """A raise without a report of a release applying the new rules from a majority of the members
    (b and c each missing, running rules 1..1, stamped an hour from the majority clock,
    malformed; or no reports at all) is refused, and under rules 1 decided as b976d0a decides it.
    With one member's report bad the other two are a majority, but without their operators'
    consent to leave it behind the raise is refused too (``rules_no_consent``; b976d0a's answer
    under rules 1); with it the raise is accepted and names that member ``behind`` (one hostile
    member withholding its report cannot hold rules 1). A revoked member is not counted."""
    bad_one = {"missing": {}, "older": [1, NOW, None], "stale": [2, NOW - 3600 * S, None],
               "malformed": [2, None], "no reports": None}[case]

    def with_bad(sites: str) -> dict | None:
        if bad_one is None:
            return None
        good = reports(sites="".join(x for x in "abc" if x not in sites))
        return good if bad_one == {} else {**good, **{x: bad_one for x in sites}}

    two_bad = with_bad("bc")
    command = cmd("rules", "a", to=2, **({} if two_bad is None else {"reports": two_bad}))
    s = founded(st.apply)
    same, res = st.apply(s, copy.deepcopy(command), POLICY)
    same_old, res_old = old.apply(founded(old.apply), copy.deepcopy(command), POLICY)
    assert res == res_old and res["ok"] is False and st.rules(same) == 1
    assert state_digest(same) == state_digest(same_old)
    if two_bad is None:
        return
    assert st.rules_reports_problems(s, two_bad, 2, POLICY).keys() == {"b", "c"}
    _, refused = st._apply_guarded(s, copy.deepcopy(command), POLICY)  # what this code says of it
    assert refused["evidence"]["refusal"] == "rules_unreported", refused
    assert (refused["evidence"]["reported"], refused["evidence"]["needed"]) == (1, 2)
    revoked = {**s, "revoked": {"c": {"keys": []}}}  # a and b: b's report is needed too
    assert st.rules_members(revoked) == ["a", "b"]
    _, res = st.apply(revoked, copy.deepcopy(command), POLICY)
    assert res["ok"] is False
    one_bad = with_bad("c")
    command = cmd("rules", "a", to=2, reports=one_bad)
    same, res = st.apply(s, copy.deepcopy(command), POLICY)
    same_old, res_old = old.apply(founded(old.apply), copy.deepcopy(command), POLICY)
    assert res == res_old and res["ok"] is False and state_digest(same) == state_digest(same_old)
    _, refused = st._apply_guarded(s, copy.deepcopy(command), POLICY)
    assert refused["evidence"]["refusal"] == "rules_no_consent", refused
    consent = {site: [*one_bad[site], ["c"]] for site in "ab"}
    raised, res = st.apply(s, cmd("rules", "a", to=2, reports={**one_bad, **consent}), POLICY)
    assert res["ok"] and res["changed"] and st.rules(raised) == 2, res
    assert list(res["behind"]) == ["c"] and res["consented"] == ["a", "b"]


def test_no_raise_before_the_founding_or_without_a_majority_clock() -> None:
    """Before an agreed membership there is nothing to count reports against, and without a
    majority clock a report's age cannot be judged: both refused (a site alone registered in a
    fresh cluster could otherwise raise with its own report)."""
    s = st.initial_state(members=["a", "b", "c"])
    s, res = st.apply(s, cmd("register_site", "c", site_id="c", peer_url="http://c", kind="data"), POLICY)
    assert res["ok"], res
    _, res = st._apply_guarded(s, cmd("rules", "c", to=2, reports=reports(sites="c")), POLICY)
    assert res["evidence"]["refusal"] == "rules_not_founded", res
    s = founded(st.apply)
    _, res = st._apply_guarded({**s, "clocks": {}}, raise_to("a"), POLICY)
    assert res["evidence"]["refusal"] == "rules_no_clock", res


def test_a_signed_raise_needs_each_member_s_own_signature() -> None:
    """In a signed cluster each report is checked under the key the agreed membership records for
    its member: site a cannot report for b (its own key on b's report is ``bad release report``),
    a report signed by b for another cluster is refused, b's own is accepted."""
    keys = {site: identity.generate_private_key() for site in "abc"}
    members = [{"site_id": site, "raft": f"10.0.0.{i}:7000", "kind": "data",
                "keys": [identity.format_public_key(identity.public_key_raw(keys[site]))]}
               for i, site in enumerate("abc", 1)]
    trust = Trust(cluster_id="c", keys={site: (identity.public_key_raw(k),) for site, k in keys.items()},
                  membership_cooling_off_ns=MIN15)

    def signed(op: str, by: str, **args) -> dict:
        return identity.sign_command(keys[by], {**cmd(op, by, **args), "cluster": "c"})

    s = st.initial_state(members=["a", "b", "c"])
    for c in [*(signed("register_site", site, site_id=site, peer_url=f"http://{site}", kind="data") for site in "abc"),
              *(signed("found", site, incarnation=b"i" * 16, members=members) for site in "ab")]:
        s, res = st.apply(s, c, trust)
        assert res["ok"], res

    def report(site: str, signer: str, cluster: str = "c") -> list:
        return [2, NOW, identity.sign_release_report(keys[signer], cluster, site, 2, NOW)]

    good = {site: report(site, site) for site in "abc"}
    for forged, why in (({**good, "b": report("b", "a")}, "bad release report"),
                        ({**good, "b": report("b", "b", cluster="other")}, "bad release report"),
                        ({**good, "b": [2, NOW, None]}, "missing signature")):
        assert st.rules_reports_problems(s, forged, 2, trust) == {"b": why}
        # a alone with a forged report for b and none of c: no majority
        lone = {k: v for k, v in forged.items() if k != "c"}
        same, res = st.apply(s, signed("rules", "a", to=2, reports=lone), trust)
        assert res["ok"] is False and st.rules(same) == 1
    raised, res = st.apply(s, signed("rules", "a", to=2, reports=good), trust)
    assert res["ok"] and res["changed"] and st.rules(raised) == 2


def test_rules_of_a_state_and_initial_state() -> None:
    """``rules``: absent or malformed is 1; ``initial_state(rules=...)`` only within 1..RULES_MAX."""
    assert st.rules(st.initial_state()) == 1 and st.RULES not in st.initial_state()
    assert st.rules({st.RULES: "2"}) == 1 and st.rules({st.RULES: 0}) == 1 and st.rules(None) == 1
    assert st.initial_state(rules=1) == st.initial_state()
    assert st.rules(st.initial_state(rules=st.RULES_MAX)) == st.RULES_MAX
    for bad in (0, st.RULES_MAX + 1, "2", True):
        with pytest.raises(ValueError):
            st.initial_state(rules=bad)
    assert "rules" in st.OPS and "rules" not in state_rules1.OPS


def consenting(site: str, leave_behind: list[str], at_ns: int = NOW) -> list:
    """``site``'s unsigned report of a release applying rules 2 with its operator's consent."""
    return [2, at_ns, None, leave_behind]


@pytest.mark.parametrize("case", ["hostile consent and a captured report", "consent short of the behind set",
                                  "consent of a member behind", "stale consent", "malformed consent",
                                  "unsorted consent"])
def test_a_raise_leaving_members_behind_needs_a_majority_of_operators(old, case: str) -> None:
    """Option (d) of ARCHITECTURE.md's choice on the rules version: with a member's report
    missing, a raise needs the consent of a majority of the operators, each inside a good report
    whose ``leave_behind`` covers every member without one. Refused: a hostile site's own consent
    beside an honest site's report captured without consent; consents that leave out one of the
    members behind; a consent in the report of a member that is itself behind (it runs rules
    1..1); a consent stamped an hour off the majority clock; a ``leave_behind`` that is not a list
    of site ids, or not sorted. Each refused raise is decided under rules 1 as b976d0a decides it
    (the same results and state digest)."""
    five = [{"site_id": s, "raft": f"10.0.0.{i}:7000", "kind": "data", "keys": [f"ed25519:{s}"]}
            for i, s in enumerate("abcde", 1)]
    reps = {"hostile consent and a captured report": {"a": consenting("a", ["c"]), "b": [2, NOW, None]},
            "consent short of the behind set": {"a": consenting("a", ["c"]), "b": consenting("b", ["c"]),
                                                "d": consenting("d", ["c"])},
            "consent of a member behind": {"a": consenting("a", ["c"]), "b": [1, NOW, None, ["c"]]},
            "stale consent": {"a": consenting("a", ["c"]), "b": consenting("b", ["c"], NOW - 3600 * S)},
            "malformed consent": {"a": consenting("a", ["c"]), "b": [2, NOW, None, "c"]},
            "unsorted consent": {"a": consenting("a", ["c", "b"]), "b": consenting("b", ["c", "b"])}}[case]
    if case == "consent short of the behind set":  # five members: c and e without a report, a b d consent to c only
        log = [*(cmd("register_site", s, site_id=s, peer_url=f"http://{s}", kind="data") for s in "abcde"),
               *(cmd("found", s, incarnation=b"f" * 16, members=five) for s in "abc")]
        s0, s0_old = replay(st.apply, st.initial_state(members=list("abcde")), log)[0], \
            replay(old.apply, st.initial_state(members=list("abcde")), log)[0]
        assert s0.get("incarnation") is not None
        ticks = [cmd("clock", x) for x in "abcde"]
        s0, s0_old = replay(st.apply, s0, ticks)[0], replay(old.apply, s0_old, ticks)[0]
    else:
        s0, s0_old = founded(st.apply), founded(old.apply)
    command = cmd("rules", "a", to=2, reports=reps)
    same, res = st.apply(s0, copy.deepcopy(command), POLICY)
    same_old, res_old = old.apply(s0_old, copy.deepcopy(command), POLICY)
    assert res == res_old and res["ok"] is False and st.rules(same) == 1, res
    assert state_digest(same) == state_digest(same_old)
    _, refused = st._apply_guarded(s0, copy.deepcopy(command), POLICY)
    assert refused["evidence"]["refusal"] in ("rules_no_consent", "rules_unreported"), refused
    if case == "consent short of the behind set":
        assert refused["evidence"]["consented"] == [] and set(refused["evidence"]["problems"]) == {"c", "e"}
        good = {x: consenting(x, ["c", "e"]) for x in "abd"}  # the same three covering both: accepted
        raised, res = st.apply(s0, cmd("rules", "a", to=2, reports=good), POLICY)
        assert res["ok"] and st.rules(raised) == 2 and sorted(res["behind"]) == ["c", "e"], res
        assert res["consented"] == ["a", "b", "d"]


def test_a_consent_covering_more_members_counts_and_every_report_needs_none() -> None:
    """A consent to leave behind c (and b, which reported after all) counts for leaving behind c;
    with every member's good report no consent is needed, and a consent in it changes nothing."""
    s = founded(st.apply)
    raised, res = st.apply(s, cmd("rules", "b", to=2, reports={"a": consenting("a", ["b", "c"]),
                                                               "b": consenting("b", ["c"])}), POLICY)
    assert res["ok"] and res["behind"] == {"c": "not reported"} and res["consented"] == ["a", "b"], res
    raised, res = st.apply(s, cmd("rules", "b", to=2, reports={**reports(), "a": consenting("a", ["c"])}), POLICY)
    assert res == {"ok": True, "rules": 2, "previous": 1, "changed": True, "behind": {}}, res


def test_a_signed_consent_is_covered_by_its_signature() -> None:
    """In a signed cluster a consent is part of the signed report: a ``leave_behind`` added to
    (or changed in) a report signed without it is ``bad release report``; a 3-element report's
    signature does not verify as a consent and the other way round."""
    keys = {site: identity.generate_private_key() for site in "abc"}
    cid = "c"
    plain = identity.sign_release_report(keys["b"], cid, "b", 2, NOW)
    consent = identity.sign_release_report(keys["b"], cid, "b", 2, NOW, ["c"])
    pub = (identity.public_key_raw(keys["b"]),)
    assert identity.release_report_problem(plain, pub, cid, "b", 2, NOW) is None
    assert identity.release_report_problem(consent, pub, cid, "b", 2, NOW, (), ["c"]) is None
    assert identity.release_report_problem(plain, pub, cid, "b", 2, NOW, (), ["c"]) == "bad release report"
    assert identity.release_report_problem(consent, pub, cid, "b", 2, NOW, (), ["a"]) == "bad release report"
    assert identity.release_report_problem(consent, pub, cid, "b", 2, NOW) == "bad release report"
    assert identity.release_report_problem(consent, pub, cid, "b", 2, NOW, (), ["c", "a"]) == "not canonical"


def test_a_rules_command_reusing_an_applied_op_id_is_b976d0a_s_unknown_op(old) -> None:
    """Under rules 1 a ``rules`` command whose op id is an applied command's, whose stored answer is
    ``ok`` and ``changed``, is not a raise: this code would answer the stored result and leave the
    state as it was, b976d0a refuses it as an unknown op and records the refusal (a last reader:
    one site parted the upgraded sites from those still on b976d0a with it)."""
    stored = {"ok": True, "changed": True}
    s = founded(st.apply)
    s = {**s, "applied_ops": {**s["applied_ops"], "taken-op": stored}}
    s_old = founded(old.apply)
    s_old = {**s_old, "applied_ops": {**s_old["applied_ops"], "taken-op": stored}}
    command = {**cmd("rules", "c", to=2, reports={}), "op_id": "taken-op"}
    new, res = st.apply(s, copy.deepcopy(command), POLICY)
    new_old, res_old = old.apply(s_old, copy.deepcopy(command), POLICY)
    assert res == res_old and res["ok"] is False, (res, res_old)
    assert state_digest(new) == state_digest(new_old) and st.rules(new) == 1
