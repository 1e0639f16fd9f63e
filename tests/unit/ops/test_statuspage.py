"""The status page renderer (issue 16, item 3): every section, and every value escaped."""

from __future__ import annotations

import html.parser

from replicad.ops import statuspage

EVIL = "<script>document.title='owned'</script><img src=x onerror=alert(1)>"


def _status(name: str = "ehr", reason: str = "shorter lock for the migration") -> dict:
    return {
        "site_id": "site-a", "raft": {"leader": "127.0.0.1:1", "term": 3, "has_quorum": True, "synced": True},
        "view": {"current": True, "age_s": 2.0, "why": None},
        "members": [{"site_id": "site-a", "kind": "data", "self": True, "leader": True, "reachable": True,
                     "registered": True},
                    {"site_id": "site-c", "kind": "data", "self": False, "leader": False, "reachable": False,
                     "registered": True}],
        "volumes": {name: {"role": "primary", "confirmed": True, "primary": "site-a", "epoch": 4, "rpo_s": 30.0,
                           "newest_committed": 9, "newest_clean": 8, "suspect": [9], "standby_seq": None,
                           "standby": {"state": "damaged", "damaged_blocks": 3}, "last_error": None},
                    "pacs": {"role": "replica", "confirmed": False, "primary": "site-b", "epoch": 2,
                             "rpo_s": 99999.0, "newest_committed": 1, "newest_clean": 1, "suspect": [],
                             "standby_seq": 1, "standby": {"state": "verified"}, "last_error": "disk <full>"}},
        "identity": {"cluster_id": "lab-1", "unsafe_unsigned": False,
                     "revoked": {"site-c": {"at_ns": 1_700_000_000 * 10**9, "by": "site-a", "keys": 1}}},
        "requests": [{"id": "r1", "action": "set_retention", "by": "site-a", "reason": reason,
                      "approvals": ["site-a"], "needed": 2, "status": "pending", "expires_ns": 2 * 10**18},
                     {"id": "r0", "action": "mark_verdict", "by": "site-b", "reason": "old", "approvals": [],
                      "needed": 2, "status": "applied"}],
        "degraded_reasons": [{"reason": "member_unreachable", "message": "site site-c unreachable"}],
    }


STATE = {"volumes": {"ehr": {"snapshots": {
    8: {"verdict": "clean", "opinions": {"site-a": {"verdict": "clean"}, "site-b": {"verdict": "suspect"}}},
    9: {"verdict": "suspect"}}}}}
OPS = [{"id": "op1", "kind": "drill", "volume": "ehr", "state": "running", "phase": "writing", "done_blocks": 25,
        "total_blocks": 100, "started_at": 990.0},
       {"id": "op0", "kind": "restore", "volume": "ehr", "state": "done", "phase": "verifying",
        "done_blocks": 1, "total_blocks": 1, "started_at": 900.0}]


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        self.attrs += [k for k, _ in attrs]


def test_every_section_is_rendered() -> None:
    page = statuspage.render(_status(), STATE, OPS, {"ehr": 60.0, "pacs": 60.0}, 1000.0)
    for shown in ("site-a", "UNREACHABLE", "REVOKED", "current", "primary", "pacs", "replica? (not confirmed)",
                  "30 s / target 60 s", "#8 (newest #9 suspect)", "suspect snapshot(s) #9",
                  "verdicts disagree on #8", "standby damaged (3 damaged blocks)", "site site-c is revoked",
                  "degraded: site site-c unreachable", "r1", "shorter lock for the migration", "1 of 2",
                  "op1", "25 / 100 blocks (25 %)", "width:25%", "disk &lt;full&gt;", 'http-equiv="refresh"'):
        assert shown in page, shown
    assert "r0" not in page and "op0" not in page  # applied requests, finished operations: not shown
    assert "ATTENTION" in page


def test_every_value_is_escaped() -> None:
    st = _status(name=EVIL, reason=EVIL)
    st["site_id"] = EVIL
    st["members"][1]["site_id"] = EVIL
    st["volumes"]["pacs"]["last_error"] = EVIL
    st["degraded_reasons"] = [{"reason": "x", "message": EVIL}]
    page = statuspage.render(st, {"volumes": {EVIL: {"snapshots": {}}}},
                             [{**OPS[0], "volume": EVIL, "phase": EVIL, "id": EVIL}], {}, 1000.0)
    parser = _Tags()
    parser.feed(page)
    assert "script" not in parser.tags and "img" not in parser.tags
    assert "onerror" not in parser.attrs
    assert page.count("&lt;script&gt;document.title=&#x27;owned&#x27;&lt;/script&gt;") >= 6


def test_a_partial_status_renders() -> None:
    page = statuspage.render({}, {}, [], {}, 0.0)
    assert "no volume at this site" in page and "NOT CURRENT" in page
