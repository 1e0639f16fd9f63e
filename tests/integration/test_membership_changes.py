"""Membership changes on real daemons, the README way ("Adding or removing a site", "Rotate a
site's key"): the change is agreed through ``replicad members propose`` (``POST
/v1/membership``) and approvals first, then the configs are installed and the sites restarted.

* A witness is added to a running three-site cluster: after the restarts, the new site starts
  with an empty data dir, catches up, joins (it is a member of the CURRENT membership, not of
  the founding one it replays first) and votes (with a data site down, a commit needs it);
  then it is removed again.
* Site a's key is rotated: the new key is pinned through ``members propose`` approved by a
  itself; after the restarts a signs with the new key and its commands are accepted.

Throughout, every site replays its log at each restart under a config that differs from the
one the log was written under, and no site computes a checkpoint digest the majority did not
vouch (``checkpoint_divergent``): signatures are checked against the keys the Raft state
records (checkpoints every few commands through ``REPLICAD_LAB_CHECKPOINT_EVERY``).
"""

from __future__ import annotations

import random
import re
import signal
import subprocess

import pytest

from replicad.config import load_config
from replicad.lab.localcluster import LocalCluster, write_site_keys

from .conftest import VOL, snapshot, write_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

EVERY = 8


def _without_site(config: str, site_id: str) -> str:
    """The config text without ``site_id``'s ``[[sites]]`` entry."""
    return re.sub(r'\n\[\[sites\]\]\nsite_id = "' + re.escape(site_id) + r'"\n(?:(?!\n\[).)*', "", config,
                  flags=re.S)


def _lab(config: str) -> str:
    return config.replace('log_level = "info"\n', 'log_level = "info"\nlab = true\n', 1)


def _stop(c: LocalCluster, site: str) -> None:
    proc = c.sites[site].proc
    c.kill(site, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        c.kill(site)


def _restart(c: LocalCluster, site: str) -> None:
    """Stop and start one site (its config was rewritten), then wait until it answers."""
    _stop(c, site)
    c.start(site)
    c.wait_for(f"{site} back", lambda: c.status(site)["raft"]["synced"], 90)


def _snap(c: LocalCluster) -> dict:
    """A snapshot at site-a, once it acts (joined, a quorum)."""
    return c.wait_for("a snapshot at site-a", lambda: snapshot(c, "site-a"), 90)


def _raft(c: LocalCluster, site: str) -> dict:
    return c.status(site)["raft"]


def _change_members(c: LocalCluster, config_text: str, at: str, approvers: tuple[str, ...]) -> None:
    """``replicad members propose`` with ``config_text`` at ``at``, approved at ``approvers``."""
    seen = _seen(c)
    path = c.sites[at].dir / "proposed.toml"  # beside its key files: the config reads them
    path.write_text(config_text)
    members = load_config(path).membership()
    res = c.api(at, "POST", "/v1/membership", {"members": members, "reason": "integration test"})
    for site in approvers:
        if res.get("status") == "applied":
            break
        res = c.api(site, "POST", f"/v1/requests/{res['request']}/approve")
    assert res["status"] == "applied", res
    running = [s for s in c.sites if c.sites[s].proc is not None and c.sites[s].proc.poll() is None]
    # each running site kept the new membership for its next start's check (it logs that its
    # config no longer matches): only then may it restart with the new config
    c.wait_for("every running site applied the membership", lambda: all(
        c.sites[s].log_path.read_text().count(CHANGED) > seen[s] for s in running), 30)


CHANGED = "changed the cluster's agreed membership"


def _seen(c: LocalCluster) -> dict[str, int]:
    return {s: c.sites[s].log_path.read_text().count(CHANGED) if c.sites[s].log_path.exists() else 0
            for s in c.sites}


def _no_divergence(c: LocalCluster, sites: tuple[str, ...], past: dict[str, int]) -> None:
    """Each site made checkpoints past ``past[site]`` and none diverged from the majority's."""
    def advanced() -> bool:
        now = {s: _raft(c, s)["checkpoint"]["n"] for s in sites}
        if all(now[s] >= past[s] + 3 * EVERY for s in sites):
            return True
        snapshot(c, "site-a")  # commands for the checkpoints to cover (not only the 5 s clock heartbeats)
        return False
    c.wait_for("new checkpoints at every site", advanced, 180, interval_s=1.0)
    for s in sites:
        raft = _raft(c, s)
        assert raft["refused"]["checkpoint_divergent"] == 0, (s, raft["refused"], c.log_tail(s))
        assert "checkpoint_divergent" not in c.sites[s].log_path.read_text(), c.log_tail(s)


@pytest.fixture
def bench(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICAD_LAB_CHECKPOINT_EVERY", str(EVERY))
    c = LocalCluster(tmp_path / "cluster", n_data=3, n_witness=1)  # site-d: the witness added later
    full = {s: _lab(c.sites[s].config_path.read_text()) for s in c.sites}
    for s in ("site-a", "site-b", "site-c"):  # the founding: three sites
        c.sites[s].config_path.write_text(_without_site(full[s], "site-d"))
    write_image(c.sites["site-a"].volume_path(VOL), 64, random.Random(1))
    for s in ("site-a", "site-b", "site-c"):
        c.start(s)
    try:
        c.wait_for("three sites registered", lambda: all(
            f"site {s} registered in the cluster" in c.sites[s].log_path.read_text() and _raft(c, s)["synced"]
            for s in ("site-a", "site-b", "site-c")), 90)
        yield c, full
    finally:
        c.stop_all()


def test_a_witness_is_added_joins_with_an_empty_data_dir_votes_and_is_removed_again(bench) -> None:
    c, full = bench
    three = ("site-a", "site-b", "site-c")
    assert _snap(c)["committed"]

    # 1. the membership changes first (a majority approves), 2. configs installed, rolling restarts
    _change_members(c, full["site-a"], "site-a", ("site-b", "site-c"))
    past = {s: _raft(c, s)["checkpoint"]["n"] for s in three}
    for s in three:
        c.sites[s].config_path.write_text(full[s])
        _restart(c, s)
    # 3. the new site: empty data dir, [raft] join (README)
    d = c.sites["site-d"]
    d.config_path.write_text(full["site-d"].replace('password_file = "raft.key"\n',
                                                    'password_file = "raft.key"\njoin = true\n', 1))
    c.start("site-d")
    c.wait_for("site-d joined", lambda: d.proc.poll() is not None or (
        "site site-d registered in the cluster" in d.log_path.read_text() and _raft(c, "site-d")["synced"]), 120)
    assert d.proc.poll() is None, c.log_tail("site-d")
    log = d.log_path.read_text()
    assert "not a member of the cluster" not in log and "bad_signature" not in log, c.log_tail("site-d")
    # it votes: with site-c down, a commit needs three of the four members, site-d among them
    _stop(c, "site-c")
    assert _snap(c)["committed"]
    c.start("site-c")
    c.wait_for("site-c back", lambda: _raft(c, "site-c")["synced"], 90)
    _no_divergence(c, (*three, "site-d"), {**past, "site-d": 0})
    for s in (*three, "site-d"):
        assert _raft(c, s)["commands_refused"].get("bad_signature", 0) == 0, (s, _raft(c, s))

    # removing it again: agreed first, then the witness stops and the others restart without it
    _stop(c, "site-d")
    _change_members(c, _without_site(full["site-a"], "site-d"), "site-a", ("site-b", "site-c"))
    past = {s: _raft(c, s)["checkpoint"]["n"] for s in three}
    for s in three:
        c.sites[s].config_path.write_text(_without_site(full[s], "site-d"))
        _restart(c, s)
    assert _snap(c)["committed"]
    _no_divergence(c, three, past)


def test_a_rotated_key_pinned_through_members_propose_signs_after_the_restart(bench) -> None:
    c, _ = bench
    three = ("site-a", "site-b", "site-c")
    a = c.sites["site-a"]
    old = load_config(a.config_path).self_ref().public_key[0]
    new = write_site_keys({"site-a": a.dir}, name="site.new.key")["site-a"]

    def rotated(text: str) -> str:  # site-a's entry pins both keys (README "Rotate a site's key")
        return text.replace(f'public_key = "{old}"', f'public_key = ["{old}", "{new}"]')

    # the runbook's order: members propose + approvals (site-a's own among them), then configs
    _change_members(c, rotated(c.sites["site-b"].config_path.read_text()), "site-b", ("site-a", "site-c"))
    for s in three:  # the expected path, said calmly: which request, what differs, restart (a tryout's finding)
        line = next(x for x in c.sites[s].log_path.read_text().splitlines() if CHANGED in x)
        assert "(set_members, applied)" in line and f"sites.site-a.public_key: the cluster pins" in line, line
        assert "security incident" not in line and "BEFORE installing" not in line and len(line) < 700, line
    past = {s: _raft(c, s)["checkpoint"]["n"] for s in three}
    for s in three:  # step 4: every file pins both keys
        c.sites[s].config_path.write_text(rotated(c.sites[s].config_path.read_text()))
        _restart(c, s)
    # step 5: site-a signs with the new key (the Raft channel of every site pins it by now)
    a.config_path.write_text(a.config_path.read_text().replace('key_file = "site.key"', 'key_file = "site.new.key"'))
    _restart(c, "site-a")
    assert f"signs its commands as {new}" in a.log_path.read_text()
    assert _snap(c)["committed"]  # commit_snapshot signed by the new key: accepted
    _no_divergence(c, three, past)
    for s in three:
        assert _raft(c, s)["commands_refused"].get("bad_signature", 0) == 0, (s, _raft(c, s))
