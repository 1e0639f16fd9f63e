"""The detection policy cannot be turned against the cluster by one site (attacker: site-a, a
real daemon with its own admin token, then a real process holding its key and Raft password).

* Strictest everything (every threshold 0, factor 1, a year's window) from site-a's admin API
  used to apply at once: every snapshot suspect at every site, standbys held, pruning stopped,
  and the undo a weakening with cooling-off. Now it is a request waiting for a second site's
  approval; the honest standbys keep applying clean snapshots.
* A ransom-note pattern that backtracks catastrophically in Python's ``re`` used to freeze every
  site's daemon (the judging thread holding the GIL) on the next changed text block. Now a
  pattern RE2 refuses (look-around) is a typed error at the API, and at Raft apply at every
  honest site when site-a signs it itself; the attack's own pattern ``(?s)(.+)+\\x01Z``, which RE2
  runs in linear time, once approved, is matched on a changed text block at every site while
  every site keeps answering and replicating.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from replicad.core.anomaly import POLICY_DEFAULTS
from replicad.core.errors import UsageError
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, overwrite_blocks, snapshot, write_image
from tests.security.test_detection import opinion, standby_seq
from tests.security.test_signed_commands import attack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HONEST = ("site-b", "site-c")
STRICTEST = {"min_score": 0.0, "cumulative_max": 0.0, "wipe_max": 0.0, "conserve_max": 0.0, "factor": 1.0,
             "rename_min": 1, "magic_min": 1, "window_s": 366 * 86400}
EVIL = "(?s)(.+)+\\x01Z"  # the attack: compiles everywhere, exponential in Python's re on any text
LOOKAROUND = "(?s)(?=(.+)+\\x01Z)"  # the same inside a look-ahead: RE2 cannot run it


def policy(c: LocalCluster, site: str) -> dict:
    return c.api(site, "GET", f"/v1/volumes/{VOL}/detection", timeout_s=10)["detection"]


def applied_clean(c: LocalCluster, seq: int) -> None:
    for s in HONEST:
        c.wait_for(f"{s} judged #{seq} clean and applied it",
                   lambda s=s: opinion(c, s, seq, s) == "clean" and standby_seq(c, s) == seq, 90)


def test_one_site_can_neither_tighten_detection_alone_nor_freeze_the_judges(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, cooling_off="3s")
    try:
        img = c.sites["site-a"].volume_path(VOL)
        write_image(img, 48, random.Random(3))
        c.start_all()
        c.wait_ready(60)
        snapshot(c, "site-a")

        # strictest everything from the attacker's own admin API: a request, nothing applied
        res = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/detection", {"detection": STRICTEST, "reason": "tighter"})
        assert res["status"] == "pending" and res["request"] and res["weakened"] == [], res
        assert "approve" in res["next"], res
        assert {ch["key"] for ch in res["changes"]["changes"]} == set(STRICTEST), res  # the requester sees it too
        listed = next(r for r in c.api("site-b", "GET", "/v1/requests")["requests"] if r["id"] == res["request"])
        assert listed["args"]["policy"]["ransom_notes"] == POLICY_DEFAULTS["ransom_notes"]  # full args kept
        assert {ch["key"]: (ch["old"], ch["new"]) for ch in listed["changes"]["changes"]} == \
            {k: (POLICY_DEFAULTS[k], v) for k, v in STRICTEST.items()}, listed  # what the approver weighs
        for s in ("site-a", *HONEST):
            assert policy(c, s) == POLICY_DEFAULTS, s
        overwrite_blocks(img, [4], random.Random(4))  # a benign edit of text by text
        applied_clean(c, snapshot(c, "site-a")["seq"])  # standbys keep applying

        # a pattern RE2 cannot run: a typed error at the API, nothing recorded
        with pytest.raises(UsageError) as err:
            c.api("site-a", "PUT", f"/v1/volumes/{VOL}/detection",
                  {"detection": {"ransom_notes": [*POLICY_DEFAULTS["ransom_notes"], LOOKAROUND]}})
        assert "RE2" in str(err.value), err.value

        # the attack's pattern: RE2 runs it in linear time; once a second site approved it and the
        # cooling-off ended (any detection change cools off: review R7, F2) every site matches it on
        # the next changed text block and keeps going
        res = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/detection",
                    {"detection": {"ransom_notes": [*POLICY_DEFAULTS["ransom_notes"], EVIL]}})
        assert res["status"] == "pending", res
        assert c.api("site-b", "POST", f"/v1/requests/{res['request']}/approve")["status"] == "approved"
        for s in ("site-a", *HONEST):
            c.wait_for(f"{s} has the pattern", lambda s=s: EVIL in policy(c, s)["ransom_notes"], 60)
        overwrite_blocks(img, [7, 10], random.Random(5))  # text blocks (write_image: b % 3 == 1)
        applied_clean(c, snapshot(c, "site-a")["seq"])
        for s in ("site-a", *HONEST):
            assert c.status(s)["site_id"] == s

        # site-a's daemon down; its key and Raft password sign the same policies into Raft
        c.kill("site-a")
        got = {r["attempt"]: r["error"] for r in attack(c, "policy", tmp_path / "attacker")}
        assert got == {"redos_set": "bad_request", "redos_request": "bad_request", "redos_add_volume": "bad_request",
                       "strict_set": "approval_required", "strict_add_volume": "approval_required"}, got
        for s in HONEST:  # every honest site applied the refusals and answers
            doc = policy(c, s)
            assert LOOKAROUND not in doc["ransom_notes"] and doc["min_score"] == POLICY_DEFAULTS["min_score"], s
            assert set(c.status(s)["volumes"]) == {VOL}, s
        c.start("site-a")
        c.wait_ready(60)
        overwrite_blocks(img, [13], random.Random(6))
        applied_clean(c, snapshot(c, "site-a")["seq"])  # and replication goes on
    finally:
        c.stop_all()
