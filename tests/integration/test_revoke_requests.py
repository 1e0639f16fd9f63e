"""A revocation as a new operator meets it on real daemons (operator try-out 2, items 1-3 and 11):
a site asking for its own revocation is refused at the proposer (``conflict``, exit 4: its own
approval would count, so one typo and one approval elsewhere revoked an honest site); a second
site asking for the same revocation is pointed to the pending request, not given a parallel one;
asking again says so in text; once applied, a new revocation of the site is ``conflict`` and an
approve again answers what the request is, exit 0, proposing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from replicad.lab.localcluster import LocalCluster

pytestmark = pytest.mark.integration


def cli(c: LocalCluster, site: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REPLICAD_TOKEN"}
    return subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites[site].admin_url, *args],
                          capture_output=True, text=True, timeout=120, env=env)


def requests_at(c: LocalCluster, site: str) -> list[dict]:
    res = cli(c, site, "--json", "requests")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["requests"]


def test_revocation_asked_twice_at_two_sites_and_of_itself(cluster_factory) -> None:
    c = cluster_factory()
    own = cli(c, "site-b", "revoke", "site-b")  # the site's own name, a typo
    assert own.returncode == 4 and "conflict" in own.stderr and "cannot ask for its own revocation" in own.stderr
    assert "Traceback" not in own.stderr and requests_at(c, "site-b") == []
    first = cli(c, "site-b", "--json", "revoke", "site-c", "--reason", "host compromised")
    assert first.returncode == 0, first.stderr
    req = json.loads(first.stdout)["request"]
    c.wait_for("site-a sees the request", lambda: any(r["id"] == req for r in requests_at(c, "site-a")), 20)
    other = cli(c, "site-a", "revoke", "site-c", "--reason", "me too")
    text = " ".join(other.stdout.split())
    assert other.returncode == 0 and f"request {req} by site-b is already pending" in text, (text, other.stderr)
    assert f"approve it with replicad approve {req}" in text, text
    again = cli(c, "site-b", "revoke", "site-c", "--reason", "another reason")
    text = " ".join(again.stdout.split())
    assert again.returncode == 0 and f"request {req} is already pending" in text, text
    assert 'its reason stays "host compromised"' in text, text
    assert [r["id"] for r in requests_at(c, "site-a")] == [req]  # nothing new recorded
    approved = cli(c, "site-a", "approve", req)
    assert approved.returncode == 0 and f"request {req} applied" in approved.stdout, approved.stdout
    c.wait_for("site-b sees it applied", lambda: any(r["id"] == req and r["status"] == "applied"
                                                     for r in requests_at(c, "site-b")), 20)
    revoked = cli(c, "site-b", "revoke", "site-c")
    assert revoked.returncode == 4 and f"already revoked by {req}" in " ".join(revoked.stderr.split()), \
        revoked.stderr
    repeat = cli(c, "site-b", "approve", req)
    assert repeat.returncode == 0 and f"request {req} is already applied" in repeat.stdout, (repeat.stdout,
                                                                                           repeat.stderr)
    assert [r["id"] for r in requests_at(c, "site-b")] == [req]
