"""The watch of approved requests (``replicad.site.requestwatch``, review R13, F6), on states made by
the real state machines: under rules 1 (release b976d0a's, frozen) a target's flood of requests it
vetoes itself erases its approved revocation, which the watch reports once, at ERROR, naming the
request and what to do; an applied, vetoed, withdrawn or (under rules 2 and later) kept request is
never reported. The real-daemon version is tests/security/test_vanished_revocation.py."""

from __future__ import annotations

import logging

from prometheus_client import generate_latest

from replicad.core import state as st
from replicad.site.requestwatch import RequestWatch, revocation_warning
from replicad.telemetry.metrics import SiteMetrics
from tests.unit.core.test_state_membership import M3, MIN15, NOW, POLICY, after, cmd, founded, revoke, run

RET = {"keep_all_s": 3600, "hourly_s": 86400, "daily_s": 7 * 86400, "lock_s": 600}
SHORTER = {**RET, "lock_s": 60}
FLOOD = st.REQUESTS_MAX + 6


class Watched:
    """A state and the watch of it, every command applied through :func:`run` and observed."""

    def __init__(self, state: dict, prefix: tuple[int, str] = (logging.WARNING, "AUDIT")) -> None:
        self.counted: list[str] = []
        self.watch = RequestWatch("site-x", counted=self.counted.append, audit_prefix=lambda: prefix)
        self.state, self.count, self.now = state, 0, NOW
        self.reports: list[dict] = []
        self.watch.observe(self.state, self.count)

    def run(self, command: dict) -> dict:
        self.state, result = run(self.state, command)
        self.count += 1
        self.reports += self.watch.observe(self.state, self.count, command, result)
        return result

    def after(self, ns: int) -> list:
        self.state, done = after(self.state, ns)
        self.now = NOW + ns
        self.count += 2
        self.reports += self.watch.observe(self.state, self.count)
        return done


def founded_rules1() -> dict:
    """Three data sites a, b, c founded with plain ``found`` proposals: rules 1 (as by b976d0a)."""
    s = st.initial_state(members=["a", "b", "c"])
    for site in "abc":
        s, _ = run(s, cmd("register_site", site, site_id=site, peer_url=f"http://{site}", kind="data"))
    for site in "ab":
        s, _ = run(s, cmd("found", site, incarnation=site.encode() * 16, members=M3))
    s, _ = run(s, cmd("add_volume", "a", volume="vol", primary="a", block_size=65536, size_bytes=1 << 20,
                      min_copies=2, retention=dict(RET)))
    assert st.rules(s) == 1
    return s


def founded_rules_max() -> dict:
    s = founded()
    s, _ = run(s, cmd("add_volume", "a", volume="vol", primary="a", block_size=65536, size_bytes=1 << 20,
                      min_copies=2, retention=dict(RET)))
    return s


def approved_revocation(w: Watched, target: str = "c", by: str = "a", approver: str = "b") -> str:
    req = w.run(cmd("request", by, action="revoke_site", args=revoke(target)))
    done = w.run(cmd("approve", approver, request=req["request"]))
    assert done["status"] == "approved"
    return req["request"]


def flood(w: Watched, site: str, n: int = FLOOD) -> list[str]:
    """``site`` makes ``n`` requests and vetoes each itself (the attack); their ids."""
    made = []
    for _ in range(n):
        r = w.run(cmd("request", site, now_ns=w.now, action="set_retention",
                      args={"volume": "vol", "retention": dict(RET)}))
        w.run(cmd("veto", site, now_ns=w.now, request=r["request"]))
        made.append(r["request"])
    return made


def test_rules1_the_targets_flood_erases_its_approved_revocation_and_the_watch_reports_it_once(caplog) -> None:
    w = Watched(founded_rules1())
    rid = approved_revocation(w)
    caplog.set_level(logging.INFO, logger="replicad.site.daemon")
    made = flood(w, "c")
    assert rid not in w.state["requests"]  # the state machine (rules 1) forgot it, silently
    assert [r["request"] for r in w.reports] == [rid] and w.counted == ["revoke_site"]
    report = w.reports[0]
    assert report["one_entry"] and report["pushed_out_by_site"] == "c" and report["pushed_out_by_request"] in made
    assert report["pushed_out_by"] == {"c": 1} and report["approvals"] == ["a", "b"] and report["rules"] == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert line.startswith(f"AUDIT request {rid} (revoke_site site_id=c, requested by a, approved by a, b")
    assert "VANISHED" in line and f"request {report['pushed_out_by_request']} of c" in line
    assert "replicad raise-rules --leave-behind c --reason" in line and "replicad revoke c" in line
    assert "rules 1" in line
    w.after(2 * MIN15)  # the cooling-off ends: nothing applies, nothing reported again
    assert not st.is_revoked(w.state, "c") and len(w.reports) == 1


def test_rules1_an_applied_or_vetoed_revocation_pushed_out_later_is_not_reported() -> None:
    w = Watched(founded_rules1())
    vetoed = approved_revocation(w, target="a", by="b", approver="c")
    w.run(cmd("veto", "b", request=vetoed))  # its requester's own veto: vetoed under rules 1
    applied = approved_revocation(w, target="c")
    assert [d["status"] for d in w.after(MIN15)] == ["applied"] and st.is_revoked(w.state, "c")
    flood(w, "b")
    assert applied not in w.state["requests"] and vetoed not in w.state["requests"]
    assert w.reports == [] and w.counted == []


def test_rules_max_keeps_the_approved_revocation_and_a_withdrawal_is_no_vanishing() -> None:
    w = Watched(founded_rules_max())
    rid = approved_revocation(w)
    flood(w, "c")
    assert w.state["requests"][rid]["status"] == "approved" and w.reports == []
    weak = w.run(cmd("request", "a", action="set_retention", args={"volume": "vol", "retention": SHORTER}))
    assert w.run(cmd("approve", "b", request=weak["request"]))["status"] == "approved"
    assert w.run(cmd("veto", "a", request=weak["request"]))["status"] == "withdrawn"  # the record goes
    assert weak["request"] not in w.state["requests"] and w.reports == [] and w.counted == []
    w.after(MIN15)
    assert st.is_revoked(w.state, "c") and w.reports == []


def test_after_a_full_state_the_state_tells_a_vanishing_from_an_end() -> None:
    # vanished while this site was behind: seen approved, then a state many entries later
    w = Watched(founded_rules1())
    rid = approved_revocation(w)
    behind = RequestWatch("site-x", counted=w.counted.append)
    behind.observe(w.state, w.count)
    flood(w, "c")
    gone = behind.observe(w.state, w.count)  # the full state installed: many entries at once
    assert [r["request"] for r in gone] == [rid] and not gone[0]["one_entry"]
    assert gone[0]["pushed_out_by"] == {"c": 64} and gone[0]["pushed_out_by_request"] is None
    # applied, then pushed out while this site was behind: the revoked entry shows it ran
    w2 = Watched(founded_rules1())
    rid2 = approved_revocation(w2)
    behind2 = RequestWatch("site-x", counted=w2.counted.append)
    behind2.observe(w2.state, w2.count)
    w2.after(MIN15)
    flood(w2, "b")
    assert rid2 not in w2.state["requests"] and st.is_revoked(w2.state, "c")
    assert behind2.observe(w2.state, w2.count) == [] and w2.counted == []


def test_after_a_full_state_an_applied_retention_change_is_told_by_the_audit_records() -> None:
    w = Watched(founded_rules1())
    weak = w.run(cmd("request", "a", action="set_retention", args={"volume": "vol", "retention": SHORTER}))
    assert w.run(cmd("approve", "b", request=weak["request"]))["status"] == "approved"
    behind = RequestWatch("site-x")
    behind.observe(w.state, w.count)
    assert weak["request"] in behind.watched
    w.after(POLICY.cooling_off_ns)
    assert w.state["volumes"]["vol"]["retention"] == SHORTER
    flood(w, "b")
    assert weak["request"] not in w.state["requests"]
    assert behind.observe(w.state, w.count) == []


def test_history_replayed_at_start_is_logged_at_info_and_not_counted(caplog) -> None:
    w = Watched(founded_rules1(), prefix=(logging.INFO, "AUDIT (replayed from the Raft log)"))
    rid = approved_revocation(w)
    caplog.set_level(logging.INFO, logger="replicad.site.daemon")
    flood(w, "c")
    assert [r["request"] for r in w.reports] == [rid] and w.counted == []
    lines = [r for r in caplog.records if "VANISHED" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.INFO]
    assert lines[0].getMessage().startswith(f"AUDIT (replayed from the Raft log) request {rid} ")


def test_any_state_shape_is_observed_without_raising() -> None:
    watch = RequestWatch("site-x")
    for state in (None, [], {}, {"requests": None}, {"requests": []}, {"requests": {"r1": None}},
                  {"requests": {"r1": {"status": "approved"}}}, {"requests": {}}, {"requests": {"r2": "x"}},
                  {"requests": {"r1": {"status": "approved", "args": "x", "approvals": None}}, "audit": "x"}):
        watch.observe(state, None)
        watch.observe(state, 3, {"op": "request"}, {"ok": True, "request": 5, "forgotten": [None]})


def test_a_revocation_under_rules_1_warns_and_names_the_raise_first() -> None:
    s1, s3 = founded_rules1(), founded_rules_max()
    text = revocation_warning(s1, "c", ["b", "c", None])
    assert text is not None and text.startswith("the cluster's rules are 1 ")
    assert "replicad raise-rules --leave-behind b,c --reason ..." in text and text.endswith("replicad revoke c")
    assert "replicad raise-rules --leave-behind c --reason" in revocation_warning(s1, "c")
    assert revocation_warning(s3, "c", ["c"]) is None and revocation_warning(None, "c") is not None


def test_the_vanished_counter_starts_at_zero_for_every_request_action() -> None:
    metrics = SiteMetrics("site-x")
    w = Watched(founded_rules1())
    w.watch = RequestWatch("site-x", counted=metrics.request_vanished)
    w.watch.observe(w.state, w.count)
    text = generate_latest(metrics.registry).decode()
    for action in st.REQUEST_ACTIONS:
        assert f'replicad_request_vanished_total{{action="{action}",site="site-x"}} 0.0' in text
    approved_revocation(w)
    flood(w, "c")
    text = generate_latest(metrics.registry).decode()
    assert 'replicad_request_vanished_total{action="revoke_site",site="site-x"} 1.0' in text


def test_a_refused_record_in_the_requesters_name_is_no_proof_it_ran() -> None:
    # attack review R15, F3: the state machine audits a refused command with the op, by and now_ns it
    # claims; one such entry (a leader's forgery) must not pass for the run of a vanished revocation
    w = Watched(founded_rules1())
    rid = approved_revocation(w)
    effective = w.state["requests"][rid]["effective_ns"]
    counted: list[str] = []
    behind = RequestWatch("site-x", counted=counted.append)
    behind.observe(w.state, w.count)
    flood(w, "c")
    for now_ns in (effective, 2**62):
        w.state, result = st.apply(w.state, cmd("revoke_site", "a", now_ns=now_ns, site_id="c"), POLICY)
        assert not result["ok"] and w.state["audit"][-1]["by"] == "a" and w.state["audit"][-1]["op"] == "revoke_site"
    gone = behind.observe(w.state, w.count + 2)
    assert [r["request"] for r in gone] == [rid] and counted == ["revoke_site"]


def test_a_request_whose_records_a_refusal_flood_pushed_out_is_not_known_to_have_run(caplog) -> None:
    # attack review R15, F4: applied, then its table record forgotten and its audit record pushed out
    # by 1,000 refused commands: the returning site cannot tell, says so at WARNING, counts nothing
    w = Watched(founded_rules1())
    weak = w.run(cmd("request", "a", action="set_retention", args={"volume": "vol", "retention": SHORTER}))
    assert w.run(cmd("approve", "b", request=weak["request"]))["status"] == "approved"
    counted: list[str] = []
    behind = RequestWatch("site-x", counted=counted.append)
    behind.observe(w.state, w.count)
    w.after(POLICY.cooling_off_ns)
    assert w.state["volumes"]["vol"]["retention"] == SHORTER
    flood(w, "b")
    for _ in range(st.AUDIT_MAX):
        w.state, result = st.apply(w.state, cmd("veto", "c", now_ns=w.now, request="r999999"), POLICY)
        assert result["error"] == "not_found"
    caplog.set_level(logging.INFO, logger="replicad.site.daemon")
    assert behind.observe(w.state, w.count + st.AUDIT_MAX) == [] and counted == []
    assert [r["request"] for r in behind.unknown] == [weak["request"]]
    lines = [r for r in caplog.records if weak["request"] in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING], [r.getMessage() for r in lines]
    assert "not known whether it ran" in lines[0].getMessage() and "c 1000" in lines[0].getMessage()
