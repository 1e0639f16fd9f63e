"""Persons' suspect marks of site-a and of one stolen admin token of site-b (review R7, F2).

The threat model grants the attacker everything of ONE site and one stolen admin token of
another. The attacker is site-a, the volume's primary: its daemon down, a real attacker process
with site-a's key and Raft password (``command_attacker.py mark-suspect``) marks #2-#4 suspect in
site-a's name, and site-b's stolen admin token marks the same snapshots at site-b's admin API.
Every detector (a's, b's, c's) judged #1-#4 clean. Before, two sites' marks made the cluster's
verdict suspect: both honest standbys rolled back from #4 to #1, and site-c's forced promotion
restored #1; clearing it was a weakening site-a vetoed.

Now persons' marks turn the cluster's verdict only when the marks and detector opinions of
``state.MARK_SITES_MIN`` (3) data sites agree, more than one site and one stolen token can
speak for (detector opinions alone: two sites, as before). The stolen token still holds
site-b's own standby (its mark there: ``state.held_by_marks``), and nothing else: the cluster's
verdict stays clean, site-c's standby stays at #4 (the bytes of the primary's #4), and site-c's
forced promotion restores #4, the newest snapshot site-c judges clean.

The same pair's second lever: site-a's request for the strictest detection policy, approved
with the stolen token, applied at once (a stricter policy had no cooling-off): every later
snapshot suspect at every site. Now every detection change cools off, and site-c's veto stops it.
"""

from __future__ import annotations

import hashlib
import random
import signal
from pathlib import Path

import pytest

from replicad.core.anomaly import POLICY_DEFAULTS
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, overwrite_blocks, snapshot, write_image
from tests.security.test_detection_policy import STRICTEST, policy
from tests.security.test_signed_commands import attack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOKENS = {s: {f"ops-{s[-1]}": ("admin", f"{s}-admin-token-0123456789abcdef")} for s in ("site-a", "site-b", "site-c")}
STOLEN_B = TOKENS["site-b"]["ops-b"][1]
TOKEN_C = TOKENS["site-c"]["ops-c"][1]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snaps(c: LocalCluster, site: str) -> dict[int, dict]:
    return {s["seq"]: s for s in c.api(site, "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]}


def standby_seq(c: LocalCluster, site: str) -> int | None:
    return c.status(site)["volumes"][VOL].get("standby_seq")


def test_site_a_and_a_stolen_token_of_site_b_hold_no_third_sites_standby_or_takeover(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, tokens=TOKENS, cooling_off="1h")
    try:
        img = c.sites["site-a"].volume_path(VOL)
        write_image(img, 48, random.Random(5))
        c.start_all()
        c.wait_ready(90)
        seqs = []
        for i in range(4):
            overwrite_blocks(img, [3 * i + 1], random.Random(i))  # benign edits of text by text
            seqs.append(snapshot(c, "site-a")["seq"])
        last, image = seqs[-1], sha(img)
        for s in ("site-b", "site-c"):
            c.wait_for(f"{s}: every site judged #{seqs[0]}-#{last} and its standby applied #{last}", lambda s=s: all(
                set((snaps(c, s)[q].get("opinions") or {})) >= {"site-a", "site-b", "site-c"} for q in seqs)
                and standby_seq(c, s) == last, 90)
        assert all(o["verdict"] == "clean" for q in seqs for o in snaps(c, "site-c")[q]["opinions"].values())
        assert sha(c.sites["site-c"].volume_path(VOL)) == image

        # the second lever: site-a's request for the strictest policy, approved with the stolen
        # token, applied at once (every later snapshot suspect everywhere); now it cools off and
        # site-c's operator vetoes it
        req = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/detection", {"detection": STRICTEST, "reason": "tighter"})
        assert req["status"] == "pending", req
        ap = c.api("site-b", "POST", f"/v1/requests/{req['request']}/approve", token=STOLEN_B)
        assert ap["status"] == "approved" and ap["effective_ns"], ap
        assert policy(c, "site-c") == POLICY_DEFAULTS
        assert c.api("site-c", "POST", f"/v1/requests/{req['request']}/veto", {}, token=TOKEN_C)["status"] == "vetoed"
        assert policy(c, "site-c") == POLICY_DEFAULTS

        # the attack: the stolen token's marks at site-b, then site-a's own (a real process, its key)
        for q in seqs[1:]:
            r = c.api("site-b", "POST", f"/v1/volumes/{VOL}/snapshots/{q}/verdict",
                      {"verdict": "suspect", "reason": "ransom note seen here"}, token=STOLEN_B)
            assert r["cluster_verdict"] == "clean" and r["suspect_sites"] == ["site-b"], r
        c.kill("site-a", signal.SIGTERM)
        marks = attack(c, "mark-suspect", tmp_path / "attacker", "--from-seq", str(seqs[1]))
        assert [(m["seq"], m["error"], m["suspect_sites"]) for m in marks] == \
            [(q, "ok", ["site-a", "site-b"]) for q in seqs[1:]], marks

        # site-b's own standby holds before its (stolen) mark: the sign that the marks reached the
        # standbys' apply step; site-c's stays at #4, byte for byte the primary's #4
        c.wait_for("site-b's standby held before its mark (#1)", lambda: standby_seq(c, "site-b") == seqs[0], 60)
        assert standby_seq(c, "site-c") == last
        assert sha(c.sites["site-c"].volume_path(VOL)) == image, "site-c's standby is not the primary's #4"
        assert all(snaps(c, "site-c")[q]["verdict"] == "clean" for q in seqs), snaps(c, "site-c")
        assert not any(m["flipped"] for m in marks) and all(m["verdict"] == "clean" for m in marks), marks

        # site-a is down (say its volume is being encrypted): site-c takes over
        p = c.api("site-c", "POST", f"/v1/volumes/{VOL}/promote", {"force": True, "wait_s": 60}, token=TOKEN_C,
                  timeout_s=90)
        assert p["primary"] == "site-c" and p["restored_seq"] == last, p
        assert sha(c.sites["site-c"].volume_path(VOL)) == image, "site-c's takeover is not the primary's #4"
    finally:
        c.stop_all()
