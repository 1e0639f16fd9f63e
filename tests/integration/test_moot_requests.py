"""Requests that could only stay open (a tryout's finding): a revocation asked for again while
the approved one cools off is answered with it (a second request stayed pending after the first
applied, keeping the critical ReplicadMembershipRequestOpen firing until it expired); a
``members propose`` of the agreed members is refused, nothing to change (real daemons, the real
CLI); a forced promotion at the site being revoked is warned about."""

from __future__ import annotations

import json
import random
import re

import pytest

from replicad.lab.localcluster import LocalCluster

from .conftest import VOL, write_image
from .test_revoke_requests import cli, requests_at

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_cooling_off_revocation_answers_a_repeat_and_a_no_op_membership_is_refused(tmp_path) -> None:
    c = LocalCluster(tmp_path / "c", min_copies=1, membership_cooling_off="10m")
    write_image(c.sites["site-a"].volume_path(VOL), 32, random.Random(1))
    try:
        c.start_all()
        c.wait_ready(60)
        first = cli(c, "site-b", "--json", "revoke", "site-c", "--reason", "host compromised")
        assert first.returncode == 0, first.stderr
        req = json.loads(first.stdout)["request"]
        c.wait_for("site-a sees it", lambda: any(r["id"] == req for r in requests_at(c, "site-a")), 20)
        approved = cli(c, "site-a", "approve", req)
        assert approved.returncode == 0 and "cooling-off" in approved.stdout, approved.stdout
        c.wait_for("approved at site-a", lambda: any(r["id"] == req and r["status"] == "approved"
                                                     for r in requests_at(c, "site-a")), 20)

        again = cli(c, "site-a", "revoke", "site-c", "--reason", "still compromised")
        text = " ".join(again.stdout.split())
        assert again.returncode == 0 and f"request {req} is already approved (revoke_site site-c): nothing " \
            "proposed" in text, (text, again.stderr)
        assert re.search(rf"next: {req} takes effect at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(cooling-off\)", text), \
            text
        assert [r["id"] for r in requests_at(c, "site-a")] == [req]  # nothing new recorded

        same = cli(c, "site-a", "members", "propose", str(c.sites["site-a"].config_path), "--reason", "no-op")
        assert same.returncode == 4 and "nothing to change" in same.stderr and "Traceback" not in same.stderr, \
            (same.stdout, same.stderr)
        assert [r["id"] for r in requests_at(c, "site-a")] == [req]

        # a forced promotion at the site being revoked is warned about (it would need another primary soon)
        assert c.api("site-a", "POST", f"/v1/volumes/{VOL}/snapshot", {})["committed"]
        promoted = cli(c, "site-c", "promote", VOL, "--force")
        text = " ".join((promoted.stdout + promoted.stderr).split())
        assert promoted.returncode == 0 and f"warning: a revocation of site-c is approved, it takes effect at" in text \
            and f"({req}, requested by site-b)" in text and "needs another primary" in text, text
    finally:
        c.stop_all()
