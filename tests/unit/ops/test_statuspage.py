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


# --------------------------------------------------------------------------- issue 16: operator defects
def _healthy(volume: dict) -> dict:
    st = _status()
    st["members"][1]["reachable"] = True
    st["identity"]["revoked"] = {}
    st["degraded_reasons"] = []
    st["requests"] = []
    st["volumes"] = {"ehr": {"role": "primary", "confirmed": True, "primary": "site-a", "epoch": 5, "rpo_s": 5.0,
                             "standby_seq": 3, "standby": {"state": "verified"}, "last_error": None, **volume}}
    return st


def test_a_suspect_superseded_by_a_newer_clean_snapshot_is_kept_not_alerted() -> None:
    # #4 suspect, then a forced promotion restored #3 and the new line's #5 is clean: #4 is kept
    kept = _healthy({"newest_committed": 5, "newest_clean": 5, "suspect": [4]})
    page = statuspage.render(kept, {"volumes": {}}, [], {"ehr": 60.0}, 1000.0)
    assert "replicad site-a: ok</title>" in page and "ATTENTION" not in page
    assert statuspage.alerts(kept, {}) == []
    assert "#4 kept for forensics, superseded by clean #5" in page
    assert statuspage.split_suspects(kept["volumes"]["ehr"]) == ([], [4])
    # the newest snapshot suspect (nothing resolved it): red, whatever older ones are kept
    current = _healthy({"newest_committed": 7, "newest_clean": 5, "suspect": [4, 6, 7]})
    page = statuspage.render(current, {"volumes": {}}, [], {"ehr": 60.0}, 1000.0)
    assert "ATTENTION" in page and "suspect snapshot(s) #6, #7 (newest clean: 5)" in page
    assert "#4 kept for forensics" in page
    assert statuspage.split_suspects({"suspect": [1], "newest_clean": None}) == ([1], [])


def test_a_persons_suspect_mark_is_shown_with_the_site_it_speaks_for() -> None:
    # review R3: a lone mark is that site's vote (the cluster's verdict stays clean), so only the
    # page can tell the operator that one site's standby holds on a person's word
    status = _healthy({"newest_committed": 5, "newest_clean": 5, "suspect": []})
    state = {"volumes": {"ehr": {"snapshots": {
        3: {"verdict": "clean", "marks": {"site-c": {"verdict": "suspect", "reason": "<b>note</b>", "at_ns": 1}}},
        4: {"verdict": "clean"},
        5: {"verdict": "clean", "marks": {"site-c": {"verdict": "suspect", "at_ns": 2}}}}}}}
    assert statuspage.alerts(status, state) == [
        ("warn", "ehr: a person marked #3, #5 suspect in site-c's name (that site's vote: its standby holds; "
                 "replicad evidence)")]
    page = statuspage.render(status, state, [], {"ehr": 60.0}, 1000.0)
    assert "a person marked #3, #5 suspect in site-c&#x27;s name" in page and "<b>note" not in page
    state["volumes"]["ehr"]["primary"] = "site-c"  # a primary has no standby to hold
    assert "(that site's vote: a takeover there holds; replicad evidence)" in statuspage.alerts(status, state)[0][1]


def test_a_volume_whose_primary_is_this_site_shows_no_standby() -> None:
    # the catalog still names the standby this site had as a replica (#3): it is the volume now
    page = statuspage.render(_healthy({"newest_committed": 5, "newest_clean": 5, "suspect": []}),
                             {"volumes": {}}, [], {}, 1000.0)
    assert "— (primary here)" in page and "#3 verified" not in page
    replica = _healthy({"newest_committed": 5, "newest_clean": 5, "suspect": []})
    replica["volumes"]["ehr"].update(role="replica", primary="site-b")
    assert "#3 verified" in statuspage.render(replica, {"volumes": {}}, [], {}, 1000.0)


def test_open_exports_are_listed_with_their_idle_limit() -> None:
    exports = [{"export_id": "x0a1b2c3d", "volume": "ehr", "seq": 7, "writable": True, "connections": 2,
                "created_at_ns": 400 * 10**9, "bytes_read": 3 * 1024 * 1024 + 512, "verdict": "suspect",
                "idle_s": 0.0, "idle_ttl_s": 86400.0},
               {"export_id": EVIL, "volume": EVIL, "seq": 8, "writable": False, "connections": 0,
                "created_at_ns": 990 * 10**9, "bytes_read": 0, "verdict": "clean", "idle_s": None,
                "idle_ttl_s": None}]
    page = statuspage.render(_healthy({"newest_committed": 5, "newest_clean": 5, "suspect": []}),
                             {"volumes": {}}, [], {}, 1000.0, exports=exports)
    for shown in ('id="exports"', "x0a1b2c3d", "ehr#7", "SUSPECT", "10 min", "3.0 MiB", "0 s / 24.0 h",
                  "no limit", "10 s", "0 B"):
        assert shown in page, shown
    parser = _Tags()
    parser.feed(page)
    assert "script" not in parser.tags and "img" not in parser.tags
    empty = statuspage.render(_healthy({"newest_committed": 5, "newest_clean": 5, "suspect": []}),
                              {"volumes": {}}, [], {}, 1000.0)
    assert "no export open" in empty


INSTANT = {"volume": "ehr", "epoch": 3, "seq": 7, "phase": "copying", "export_id": "instant-ehr",
           "socket": "/d/nbd/instant-ehr.sock", "progress": 0.25, "copy_done_blocks": 40, "copy_total_blocks": 160,
           "overlay_blocks": 3, "first_read_after_s": 0.9, "switched_after_s": None}


def test_the_instant_recovery_shows_its_phase_progress_and_what_the_export_serves() -> None:
    status = _healthy({"newest_committed": 7, "newest_clean": 7, "suspect": []})
    status["volumes"]["ehr"]["instant"] = dict(INSTANT, socket=EVIL)
    exports = [{"export_id": "instant-ehr", "volume": "ehr", "seq": 7, "writable": True, "connections": 1,
                "created_at_ns": 990 * 10**9, "bytes_read": 0, "verdict": "clean", "instant": True,
                "serves": "snapshot+overlay", "idle_s": None, "idle_ttl_s": None}]
    page = statuspage.render(status, {"volumes": {}}, [], {}, 1000.0, exports=exports)
    for shown in ('id="instant"', "#7 (epoch 3)", "copying", "40 / 160 blocks copied (25 %)",
                  "3 blocks written by the application", "switch-over pending", "0.90 s",
                  "ehr#7 + overlay (instant recovery, switch-over pending)"):
        assert shown in page, shown
    parser = _Tags()
    parser.feed(page)
    assert "script" not in parser.tags and "img" not in parser.tags
    # after the switch-over the export serves the live image: never labelled as the snapshot
    status["volumes"]["ehr"]["instant"] = dict(INSTANT, phase="done", switched_after_s=12.5)
    exports[0]["serves"] = "image"
    page = statuspage.render(status, {"volumes": {}}, [], {}, 1000.0, exports=exports)
    assert "switched over after 12.5 s, 3 blocks copied in" in page
    assert "disk until released (replicad export --close instant-ehr)" in page
    assert "ehr: the live image (instant recovery from #7)" in page and ">ehr#7<" not in page
    # no instant recovery: no section
    assert 'id="instant"' not in statuspage.render(_healthy({"newest_committed": 7, "newest_clean": 7,
                                                             "suspect": []}), {"volumes": {}}, [], {}, 1000.0)


def test_a_replicas_standby_says_how_far_behind_it_is() -> None:
    replica = _healthy({"newest_committed": 5, "newest_clean": 5, "suspect": [], "standby_lag_snapshots": 2})
    replica["volumes"]["ehr"].update(role="replica", primary="site-b")
    assert "#3 verified, 2 behind" in statuspage.render(replica, {"volumes": {}}, [], {}, 1000.0)
    replica["volumes"]["ehr"].update(standby_lag_snapshots=None, standby_applying=True)
    assert "#3 verified, rewriting" in statuspage.render(replica, {"volumes": {}}, [], {}, 1000.0)


def test_an_approved_request_says_when_it_takes_effect_and_what_it_changes() -> None:
    status = _status()
    status["requests"] = [{"id": "r4", "action": "revoke_site", "by": "site-b", "reason": "stolen disk",
                           "args": {"site_id": "site-a", "keys": ["ed25519:" + "A" * 43 + "="]},
                           "approvals": ["site-b", "site-c", "site-a"], "needed": 2, "status": "approved",
                           "expires_ns": 2 * 10**18, "effective_ns": 1_800_000_000 * 10**9}]
    page = statuspage.render(status, STATE, OPS, {"ehr": 60.0, "pacs": 60.0}, 1000.0)
    row = page[page.index("<td>r4</td>"):]
    row = row[:row.index("</tr>")]
    assert "takes effect 2027-01-15 08:00:00 UTC unless vetoed" in row and "expires" not in row, row
    assert "site_id: site-a" in row and "keys: &#x27;ed25519:AAAA" in row and "requests --json" not in row, row
    assert "3 (2 needed)" in row and "3 of 2" not in row, row


def test_a_moot_request_carries_the_same_mark_as_replicad_requests() -> None:
    """A waiting request whose effect is in force already showed as plain ``pending`` on the page
    while ``replicad requests``/``status`` marked it ``MOOT:`` (tryout 2, item 3)."""
    status = _status()
    status["requests"] = [{"id": "r5", "action": "remove_volume", "by": "site-b", "reason": "gone",
                           "args": {"volume": "pacs"}, "approvals": ["site-b"], "needed": 2,
                           "status": "pending", "expires_ns": 2 * 10**18},
                          {"id": "r6", "action": "remove_volume", "by": "site-b", "reason": "still here",
                           "args": {"volume": "ehr"}, "approvals": ["site-b"], "needed": 2,
                           "status": "pending", "expires_ns": 2 * 10**18}]
    page = statuspage.render(status, STATE, OPS, {"ehr": 60.0, "pacs": 60.0}, 1000.0)

    def row(rid: str) -> str:
        r = page[page.index(f"<td>{rid}</td>"):]
        return r[:r.index("</tr>")]

    assert "pending; <span class=\"muted\">MOOT: volume pacs is no longer in the cluster state: applied, it would " \
           "change nothing</span>" in row("r5"), row("r5")
    assert "MOOT" not in row("r6") and "<td>pending</td>" in row("r6"), row("r6")
