"""A request is shown to the person approving it as what it changes (``key: old -> new``), not as
the whole document its args hold (a detection policy is ~3 KB of ransom-note patterns with the
one weakened threshold buried inside): replicad.core.requestdiff, the CLI's request line and the
status page's requests table."""

from __future__ import annotations

from replicad import cli
from replicad.cli import _render_request_state, _request_line
from replicad.core.anomaly import POLICY_DEFAULTS
from replicad.ops import statuspage
from replicad.core.requestdiff import request_changes, with_changes

RETENTION = {"keep_all_s": 86400, "hourly_s": 7 * 86400, "daily_s": 30 * 86400, "lock_s": 7 * 86400}
MEMBERS = [{"site_id": s, "raft": f"127.0.0.1:{7000 + i}", "kind": "data", "keys": [f"k{i}"]}
           for i, s in enumerate(("site-a", "site-b", "site-c"))]
VIEW = {"volumes": {"ehr": {"primary": "site-a", "epoch": 3, "retention": RETENTION, "max_size_bytes": 2**30,
                            "snapshots": {4: {"seq": 4, "verdict": "suspect"}}}},
        "incarnation": {"members": MEMBERS}}


def _request(action: str, args: dict, status: str = "pending", **extra) -> dict:
    return {"id": "r3", "by": "site-a", "action": action, "args": args, "reason": "bulk imports",
            "approvals": ["site-a"], "needed": 2, "created_ns": 0, "expires_ns": 10**18, "status": status,
            "result": None, **extra}


def test_a_detection_request_is_shown_as_the_threshold_it_changes_not_the_whole_policy() -> None:
    weaker = {**POLICY_DEFAULTS, "min_score": 0.5, "ransom_notes": [*POLICY_DEFAULTS["ransom_notes"], "pay us"]}
    r = with_changes([_request("set_detection", {"volume": "ehr", "policy": weaker})], VIEW)[0]
    assert r["args"]["policy"] == weaker  # the full args stay (--json)
    assert r["changes"] == {"against": "now", "unchanged": len(POLICY_DEFAULTS) - 2, "changes": [
        {"key": "min_score", "old": POLICY_DEFAULTS["min_score"], "new": 0.5},
        {"key": "ransom_notes", "added": ["pay us"], "removed": []}]}
    line = _request_line(r)
    assert f"min_score: {POLICY_DEFAULTS['min_score']} -> 0.5" in line, line
    assert "ransom_notes: added 'pay us'" in line and f"({len(POLICY_DEFAULTS) - 2} other keys as now)" in line
    assert POLICY_DEFAULTS["ransom_notes"][0][:30] not in line and len(line) < 400, line
    page = statuspage.render({"requests": [r]}, VIEW, [], {}, 0.0)
    assert "min_score: 0.02 -&gt; 0.5" in page and POLICY_DEFAULTS["ransom_notes"][0][:30] not in page


def test_retention_max_size_membership_and_role_changes_name_old_and_new() -> None:
    shorter = {**RETENTION, "lock_s": 86400}
    cases = [
        (_request("set_retention", {"volume": "ehr", "retention": shorter}), "lock: 7d -> 1d (3 other keys as now)"),
        (_request("set_retention", {"volume": "ehr", "retention": shorter}, "applied", previous=RETENTION),
         "lock: 7d -> 1d (3 other keys as before)"),
        (_request("set_max_size", {"volume": "ehr", "max_size_bytes": 2**31}), "max_size: 1GiB -> 2GiB"),
        (_request("promote", {"volume": "ehr", "to": "site-b", "expected_epoch": 3}), "primary: site-a -> site-b"),
        (_request("mark_verdict", {"volume": "ehr", "seq": 4, "verdict": "clean"}), "#4 verdict: suspect -> clean"),
        (_request("set_members", {"members": [{**MEMBERS[0], "kind": "witness"}, MEMBERS[1]]}),
         "site-a.kind: data -> witness, site-c: data at 127.0.0.1:7002, 1 key(s) -> none (1 other site as now)"),
    ]
    for r, text in cases:
        line = _request_line(with_changes([r], VIEW)[0])
        assert "; changes " + text in line, (text, line)


def test_without_anything_to_compare_the_args_are_summarised() -> None:
    policy = {**POLICY_DEFAULTS, "min_score": 0.5}
    for r in (_request("set_members", {"members": MEMBERS[:2]}, "applied"),  # the state holds it now
              _request("set_detection", {"volume": "gone", "policy": policy}),
              {**_request("set_members", {"members": "not a list"}), "args": None}):
        assert request_changes(r, VIEW) is None, r
    line = _request_line(_request("set_detection", {"volume": "gone", "policy": policy}, "applied"))
    assert "policy: <18 keys>" in line.replace(str(len(POLICY_DEFAULTS)), "18") and "ransom" not in line, line
    keys = [f"ed25519:{c * 43}=" for c in "ABC"]  # a revocation names the keys pinned: shown whole, not counted
    line = _request_line(_request("revoke_site", {"site_id": "site-c", "keys": keys}))
    assert all(k in line for k in keys), line
    for hostile in ({"volumes": None}, {"volumes": {"ehr": "x"}}, {}):  # another site's word: never raises
        for r in (_request("set_retention", {"volume": "ehr", "retention": RETENTION}),
                  _request("promote", {"volume": "ehr", "to": "site-b"}),
                  _request("mark_verdict", {"volume": "ehr", "seq": 4, "verdict": "clean"})):
            assert request_changes(r, hostile) is None


def test_the_answer_to_a_new_request_says_what_it_changes() -> None:
    diff = request_changes(_request("set_detection", {"volume": "ehr", "policy": {**POLICY_DEFAULTS,
                                                                                  "min_score": 0.5}}), VIEW)
    with cli.console.capture() as cap:
        _render_request_state({"request": "r3", "status": "pending", "approvals": ["site-a"], "needed": 2,
                               "action": "set_detection", "volume": "ehr", "changes": diff})
    assert "request r3 is pending (set_detection ehr)" in cap.get(), cap.get()
    assert f"changes: min_score: {POLICY_DEFAULTS['min_score']} -> 0.5 (" in cap.get(), cap.get()


def test_every_status_shows_changes_not_the_whole_document() -> None:
    # an operator's tryout: `r4 [applied] by site-b: set_detection policy: <18 keys>` (no change shown) and
    # `r2 [vetoed] ... set_retention retention: keep_all 1d, hourly 3d, daily 14d, lock 1d` (the whole map)
    policy = {**POLICY_DEFAULTS, "min_score": 0.05}
    applied = with_changes([_request("set_detection", {"volume": "ehr", "policy": policy}, "applied")], VIEW)[0]
    line = _request_line(applied)
    # its record names no previous policy: compared with the defaults, and it says so
    assert f"; changes compared with the defaults: min_score: {POLICY_DEFAULTS['min_score']} -> 0.05 " \
           f"({len(POLICY_DEFAULTS) - 1} other keys as the defaults)" in line, line
    assert "<" not in line.split("; changes")[0].split("set_detection")[1], line  # no "<18 keys>" beside it
    shorter = {**RETENTION, "daily_s": 14 * 86400}
    for status in ("vetoed", "failed", "withdrawn"):
        r = with_changes([_request("set_retention", {"volume": "ehr", "retention": shorter}, status)], VIEW)[0]
        line = _request_line(r)
        assert "; changes daily: 30d -> 14d (3 other keys as now)" in line, (status, line)
        assert "keep_all" not in line, line  # not the whole map
