"""A rolling upgrade on real daemons: the rules version is raised only once every member runs a
release that applies it (``replicad.site.rules_raise``).

Three sites, founded under rules 1 as by release b976d0a (the lab knob ``REPLICAD_LAB_FOUND_RULES=1``:
plain ``found`` proposals); site-c plays a site still on an older release (the lab knob
``REPLICAD_LAB_REPORT_RULES_MAX=1``, on a ``lab = true`` config: it reports a release applying
rules 1..1). The other sites do not raise: the rules stay 1, each says whom it waits for (status
``rules``, ``replicad_rules_*`` gauges), snapshots still commit. Once site-c restarts without the
knob (its upgrade) the raise is applied, by one site, and every site's vouched checkpoint digests
after it agree (checkpoints every few commands through ``REPLICAD_LAB_CHECKPOINT_EVERY``), also
once a site restarted after the raise and replayed its log. The same from a cluster founded under
rules 3 (as by 64af970; ``REPLICAD_LAB_FOUND_RULES=3``), raised to 4 on the running cluster: the
kept audit records name their checked signer from then on.

A site that cannot be upgraded soon (or is suspected hostile) is left behind by a majority of
the operators (ARCHITECTURE.md, Choices, "The state's rules version", option (d)): site-c stays on
"the older release"; site-a's operator runs ``replicad raise-rules --leave-behind site-c``, and
with that one consent no site raises; once site-b's operator runs it too, the raise happens and
names site-c behind.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys

import pytest
import requests

from replicad.core.state import RULES_MAX
from replicad.lab.localcluster import LocalCluster
from replicad.site.rules_raise import LAB_FOUND_RULES_ENV, LAB_REPORT_RULES_MAX_ENV

from .conftest import VOL, snapshot, write_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EVERY = 8
SITES = ("site-a", "site-b", "site-c")


def _lab(config: str) -> str:
    return config.replace('log_level = "info"\n', 'log_level = "info"\nlab = true\n', 1)


def _rules(c: LocalCluster, site: str) -> dict:
    return c.status(site)["rules"]


def _metric(c: LocalCluster, site: str, name: str) -> list[str]:
    text = requests.get(c.sites[site].admin_url + "/metrics", timeout=10).text
    return [line for line in text.splitlines() if line.startswith(name + "{")]


class Vouches:
    """The checkpoint digests every site vouched, gathered over polls of site-a's view (the state
    keeps each site's last two vouches only): ``{n: {site: digest}}``."""

    def __init__(self, c: LocalCluster) -> None:
        self.c = c
        self.seen: dict[int, dict[str, str]] = {}

    def agreed_after(self, applied: int) -> dict[int, str] | None:
        """``{n: digest}`` of the checkpoints after ``applied`` every site vouched, all alike; None
        while there is none. Raises AssertionError on two different digests for one ``n``."""
        for site, kept in _rules(self.c, "site-a")["vouches"].items():
            for n, digest in kept.items():
                self.seen.setdefault(int(n), {})[site] = digest
        for n, by_site in self.seen.items():
            assert len(set(by_site.values())) == 1, (n, by_site)
        return {n: next(iter(d.values())) for n, d in sorted(self.seen.items())
                if n > applied and set(d) == set(SITES)} or None


@pytest.fixture
def bench(tmp_path, monkeypatch, request):
    """Three sites founded under rules ``request.param`` (default 1, as by b976d0a and upgraded since;
    3: as by 64af970), site-c reporting a release applying rules 1..that (not yet upgraded)."""
    founded = getattr(request, "param", 1)
    monkeypatch.setenv("REPLICAD_LAB_CHECKPOINT_EVERY", str(EVERY))
    monkeypatch.setenv(LAB_FOUND_RULES_ENV, str(founded))
    c = LocalCluster(tmp_path / "cluster", n_data=3)
    for s in SITES:
        c.sites[s].config_path.write_text(_lab(c.sites[s].config_path.read_text()))
    write_image(c.sites["site-a"].volume_path(VOL), 64, random.Random(1))
    try:
        c.start("site-a")
        c.start("site-b")
        monkeypatch.setenv(LAB_REPORT_RULES_MAX_ENV, str(founded))  # site-c: "an older release"
        c.start("site-c")
        monkeypatch.delenv(LAB_REPORT_RULES_MAX_ENV)
        c.wait_ready(90)
        yield c
    finally:
        c.stop_all()


@pytest.mark.parametrize("bench", [1, 3], indirect=True, ids=["from-rules-1", "from-rules-3"])
def test_the_rules_are_raised_only_once_every_member_reports_the_new_release(bench, request) -> None:
    """From rules 1 (b976d0a's) and from rules 3 (64af970's, whose audit rules 4 keep per signer)."""
    c = bench
    was = request.node.callspec.params["bench"]
    # 1. site-c reports rules 1..was: a and b wait, the rules stay at was, and they say so
    def waiting() -> bool:
        return all(_rules(c, s)["waiting"] and _rules(c, s)["members"].get("site-c", {}).get("problem")
                   for s in ("site-a", "site-b"))
    c.wait_for("a and b waiting for site-c", waiting, 60)
    for s in SITES:
        rules = _rules(c, s)
        assert rules["version"] == was, (s, rules)
    a = _rules(c, "site-a")
    assert a["members"]["site-c"] == {"rules_max": was, "problem": f"runs rules 1..{was}"}, a
    assert a["members"]["site-a"]["problem"] is None and a["members"]["site-b"]["problem"] is None, a
    assert _rules(c, "site-c")["reported_max"] == was
    assert _metric(c, "site-a", "replicad_rules_version") == [f'replicad_rules_version{{site="site-a"}} {was}.0']
    assert _metric(c, "site-a", "replicad_rules_raise_waiting") == \
        ['replicad_rules_raise_waiting{site="site-a"} 1.0']
    assert 'replicad_rules_member_behind{peer="site-c",site="site-a"} 1.0' in \
        _metric(c, "site-a", "replicad_rules_member_behind")
    log_a = c.sites["site-a"].log_path.read_text()
    assert re.search(rf"rules stay at {was} until every member runs a release applying rules {RULES_MAX} .*site-c: "
                     rf"runs rules 1\.\.{was}", log_a), c.log_tail("site-a")

    # 2. commits go on under the rules it was founded under, every site alike
    for _ in range(2):
        assert snapshot(c, "site-a")["committed"]
    applied = _rules(c, "site-a")["applied"]
    vouches = Vouches(c)
    c.wait_for(f"checkpoints agreed under rules {was}", lambda: vouches.agreed_after(0), 120, interval_s=1.0)
    assert all(_rules(c, s)["version"] == was for s in SITES)

    # 3. site-c is "upgraded": restarted without the knob; the raise follows, once
    c.kill("site-c", signal.SIGTERM)
    c.start("site-c")
    c.wait_for("rules raised at every site", lambda: all(_rules(c, s)["version"] == RULES_MAX for s in SITES), 90)
    raised = _rules(c, "site-a")["applied"]
    assert raised > applied
    audits = [s for s in SITES if re.search(rf"AUDIT site \S+: the cluster's rules raised {was} -> {RULES_MAX}",
                                            c.sites[s].log_path.read_text())]
    assert len(audits) == 1, audits  # one site raised; every site logs the raise, naming that site
    c.wait_for("every site logged the raise", lambda: all(
        f"AUDIT the cluster's rules raised {was} -> {RULES_MAX} by {audits[0]} (every member reported the release)"
        in c.sites[s].log_path.read_text() for s in SITES), 30)
    for s in SITES:
        rules = _rules(c, s)
        assert rules["waiting"] is False and rules["reported_max"] == RULES_MAX, (s, rules)
    assert _metric(c, "site-b", "replicad_rules_version") == [f'replicad_rules_version{{site="site-b"}} {RULES_MAX}.0']
    assert _metric(c, "site-b", "replicad_rules_raise_waiting") == \
        ['replicad_rules_raise_waiting{site="site-b"} 0.0']

    kept = c.api("site-a", "GET", "/v1/audit?limit=2000")["audit"]  # rules 4: each record's share
    assert kept and all("signer" in r for r in kept), kept[-3:]
    assert [r for r in kept if r["op"] == "rules" and r["ok"]][-1]["signer"] == audits[0]

    # 4. commits go on under the new rules, and the states after the raise agree at every site
    assert snapshot(c, "site-a")["committed"]

    def agreed() -> dict | None:
        got = vouches.agreed_after(raised)
        if got is None and next(ticks) % 10 == 9:
            snapshot(c, "site-a")  # commands for the checkpoints to cover, beside the clock reports
        return got
    ticks = itertools.count()
    c.wait_for("checkpoints after the raise vouched alike by every site", agreed, 120, interval_s=1.0)

    # 5. a site restarted after the raise replays the log (the raise included) into the same states
    c.kill("site-b", signal.SIGTERM)
    c.start("site-b")
    c.wait_ready(90)
    restarted = _rules(c, "site-b")["applied"]
    ticks = itertools.count()
    c.wait_for("checkpoints after site-b's restart vouched alike by every site", lambda: (
        vouches.agreed_after(restarted) or (next(ticks) % 10 == 9 and snapshot(c, "site-a") and None)), 120,
        interval_s=1.0)
    for s in SITES:
        raft = c.status(s)["raft"]
        assert raft["refused"]["checkpoint_divergent"] == 0, (s, raft["refused"], c.log_tail(s))
    snaps = c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")
    assert snaps, snaps


def _raise_rules(c: LocalCluster, site: str, *args: str) -> subprocess.CompletedProcess:
    """``replicad raise-rules ARGS`` against ``site``'s admin API, as its operator."""
    token = c.default_token(site)
    env = {k: v for k, v in os.environ.items() if k != "REPLICAD_TOKEN"} | ({"REPLICAD_TOKEN": token} if token else {})
    return subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites[site].admin_url, "raise-rules",
                           *args], capture_output=True, text=True, timeout=120, env=env)


def test_a_majority_of_operators_leaves_a_site_behind(bench) -> None:
    c = bench
    c.wait_for("a and b waiting for site-c", lambda: all(
        _rules(c, s)["waiting"] and _rules(c, s)["members"].get("site-c", {}).get("problem") == "runs rules 1..1"
        for s in ("site-a", "site-b")), 60)
    log_a = c.sites["site-a"].log_path.read_text()  # the wait's WARNING (once a minute) names the command
    assert "a majority of the operators can leave it behind: each runs at their own site `replicad raise-rules " \
        "--leave-behind" in log_a, c.log_tail("site-a")

    # 1. site-a's operator consents: one consent, no raise (the other sites see it, and wait)
    refused = _raise_rules(c, "site-a", "--leave-behind", "site-c")  # no reason: refused, nothing kept
    assert refused.returncode != 0 and "--reason is required" in refused.stderr, refused
    done = _raise_rules(c, "site-a", "--leave-behind", "site-c", "--reason", "site-c stays on the old release")
    assert done.returncode == 0 and "leaving behind site-c" in done.stdout, (done.stdout, done.stderr)
    assert _rules(c, "site-a")["consent"]["leave_behind"] == ["site-c"]
    c.wait_for("site-b sees site-a's consent", lambda: _rules(c, "site-b")["consented"] == ["site-a"], 30)
    assert all(_rules(c, s)["version"] == 1 for s in SITES)
    audit = c.api("site-a", "GET", "/v1/audit/admin")
    assert any("/v1/rules/raise" in str(r) for r in audit["records"]), audit

    # 2. site-b's operator consents too: the raise follows, naming site-c behind
    done = _raise_rules(c, "site-b", "--leave-behind", "site-c", "--reason", "site-c stays on the old release")
    assert done.returncode == 0, (done.stdout, done.stderr)
    c.wait_for("rules raised at a and b", lambda: all(_rules(c, s)["version"] == RULES_MAX
                                                       for s in ("site-a", "site-b")), 60)
    raised = [line for s in SITES for line in c.sites[s].log_path.read_text().splitlines()  # site-c runs this
              if re.search(rf"AUDIT site \S+: the cluster's rules raised 1 -> {RULES_MAX}", line)]  # code: it may
    # propose
    assert len(raised) == 1 and "leaving behind site-c: runs rules 1..1" in raised[0], raised
    assert "the operators of site-a, site-b consented" in raised[0], raised
    c.wait_for("a and b logged who raised and whom it leaves behind", lambda: all(
        f"the cluster's rules raised 1 -> {RULES_MAX} by " in c.sites[s].log_path.read_text()
        and "leaving behind site-c=\"runs rules 1..1\" with the consent of the operators of site-a, site-b"
        in c.sites[s].log_path.read_text() for s in ("site-a", "site-b")), 30)
    assert snapshot(c, "site-a")["committed"]
