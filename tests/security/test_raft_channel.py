"""A compromised site cannot take over the honest sites through the Raft port.

The attacker is site-a: a real process (``raft_attacker.py``) holding site-a's config, the
cluster's shared Raft password and site-a's data dir, speaking pysyncobj's wire format with
code of its own (while site-a's daemon runs, then in its place). The honest sites b and c
are judged: their committed catalog and chunk counts do not change, every refused attempt
leaves a WARNING/ERROR line and a ``replicad_raft_refused_total{reason}`` sample (a connection
naming another member, signed with site-a's own key or not at all: ``bad_identity``), and once
the attacker's site is gone they elect a leader, fail over and commit a snapshot.

One cluster serves the whole module (the cases run in file order; each is bounded in time).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from replicad.consensus.channel import HANDSHAKE_DEADLINE_S
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, overwrite_blocks, snapshot, write_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HONEST = ("site-b", "site-c")
REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = LocalCluster(tmp_path_factory.mktemp("raft") / "cluster", interval="1h", min_copies=2)
    write_image(c.sites["site-a"].volume_path(VOL), 48, random.Random(5))
    try:
        c.start_all()
        c.wait_ready(60)
        img = c.sites["site-a"].volume_path(VOL)
        for i in range(2):
            overwrite_blocks(img, [i + 1], random.Random(i))
            snapshot(c, "site-a")
        yield c
    finally:
        c.stop_all()


@pytest.fixture(scope="module")
def baseline(cluster: LocalCluster) -> dict:
    """What the honest sites hold before any attack: committed seqs/roots and chunk counts."""
    return {s: {"catalog": catalog(cluster, s), "chunks": cluster.status(s)["store"]["chunks"]} for s in HONEST}


def attack(c: LocalCluster, mode: str, *args: str, timeout_s: float = 90) -> dict:
    """Run the attacker with site-a's config; its last JSON line."""
    out = subprocess.run([sys.executable, "-m", "tests.security.raft_attacker", mode, "--config",
                          str(c.sites["site-a"].config_path), *args],
                         capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert lines, out.stderr[-3000:]
    return lines[-1]


def raft_addr(c: LocalCluster, site: str) -> str:
    return f"127.0.0.1:{c.sites[site].raft_port}"


def refused(c: LocalCluster, site: str, reason: str) -> float:
    """``replicad_raft_refused_total{reason=...}`` on ``site``'s /metrics (0 when absent)."""
    token = c.default_token(site)
    req = urllib.request.Request(c.sites[site].admin_url + "/metrics",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("replicad_raft_refused_total{") and f'reason="{reason}"' in line)


def catalog(c: LocalCluster, site: str) -> dict[int, str]:
    snaps = c.api(site, "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]
    return {s["seq"]: s["root"] for s in snaps}


def assert_history_kept(c: LocalCluster, baseline: dict) -> None:
    for s in HONEST:
        now = catalog(c, s)
        assert {seq: root for seq, root in now.items() if seq in baseline[s]["catalog"]} == baseline[s]["catalog"], s
        assert c.status(s)["store"]["chunks"] >= baseline[s]["chunks"], s


def logged(c: LocalCluster, site: str, reason: str) -> bool:
    return f"raft refused [{reason}]" in c.log_tail(site, 2000)


def wait_refused(c: LocalCluster, site: str, *reasons: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(refused(c, site, r) >= 1 and logged(c, site, r) for r in reasons):
            return
        time.sleep(0.2)
    raise AssertionError(f"{site}: not refused/logged: {[(r, refused(c, site, r), logged(c, site, r)) for r in reasons]}")


def honest_leader(c: LocalCluster) -> str | None:
    """The honest site both honest sites follow, or None."""
    leaders = set()
    for s in HONEST:
        try:
            leaders.add(c.status(s)["raft"].get("leader"))
        except Exception:  # noqa: BLE001 — not answering yet counts as no leader
            return None
    honest = {raft_addr(c, s): s for s in HONEST}
    return honest.get(leaders.pop()) if len(leaders) == 1 else None


# --------------------------------------------------------------------------- while site-a's daemon runs


def test_utility_messages_and_read_only_observers_are_refused(cluster: LocalCluster, baseline: dict) -> None:
    target = raft_addr(cluster, "site-b")
    assert attack(cluster, "utility", "--target", target)["answered"] is False
    forged = attack(cluster, "install-snapshot", "--target", target, "--as", "readonly", "--term-add", "1000")
    assert forged["closed"] is True
    impostor = attack(cluster, "install-snapshot", "--target", target, "--as", "127.0.0.1:1", "--term-add", "1000")
    assert impostor["closed"] is True
    wait_refused(cluster, "site-b", "utility_message", "readonly_node", "unknown_node")
    assert_history_kept(cluster, baseline)
    assert cluster.status("site-b")["raft"]["term"] < 1000


def test_decompression_bomb_drops_the_connection_without_inflating(cluster: LocalCluster, baseline: dict) -> None:
    target = min(HONEST, key=lambda s: raft_addr(cluster, s))  # a member dials it: the hello names that member
    pid = cluster.sites[target].proc.pid
    peak_before = _peak_rss_kib(pid)
    result = attack(cluster, "bomb", "--target", raft_addr(cluster, target), "--mib", "1024")
    assert result["handshake"] and result["closed"], result
    assert result["compressed_bytes"] < 2 * 1024 * 1024
    wait_refused(cluster, target, "decompressed_too_large")
    assert _peak_rss_kib(pid) - peak_before < 100 * 1024  # far below the 1 GiB it would inflate to
    assert_history_kept(cluster, baseline)


@pytest.mark.parametrize("proof", ["own", "none"])
def test_a_connection_naming_another_member_is_refused(cluster: LocalCluster, baseline: dict, proof: str) -> None:
    """Site-a holds the shared password and its own key, and names site-x (an honest member
    that dials the target), proving it with its own key or with no valid signature at all."""
    target, named = sorted(HONEST, key=lambda s: raft_addr(cluster, s))  # named's address sorts above: it dials
    leader = cluster.status(target)["raft"]["leader"]
    before = refused(cluster, target, "bad_identity")
    result = attack(cluster, "impersonate", "--target", raft_addr(cluster, target), "--as", raft_addr(cluster, named),
                    "--proof", proof, "--term-add", "1000000")
    assert result["answered"] and result["closed"], result  # the target proved itself, then closed on our proof
    cluster.wait_for("bad_identity counted", lambda: refused(cluster, target, "bad_identity") > before, 10)
    assert logged(cluster, target, "bad_identity") and "WARNING" in cluster.log_tail(target, 2000)
    for s in HONEST:  # the real member's connection and the leader are untouched; nothing of it was read
        st = cluster.status(s)["raft"]
        assert st["leader"] == leader and st["term"] < 1000000, s
    assert cluster.status(target)["raft"]["partners"][raft_addr(cluster, named)] is True
    assert_history_kept(cluster, baseline)


def test_connection_flood_and_silent_connections_are_closed(cluster: LocalCluster, baseline: dict) -> None:
    result = attack(cluster, "flood", "--target", raft_addr(cluster, "site-b"), "--count", "40",
                    "--hold-s", str(HANDSHAKE_DEADLINE_S + 10))
    # every connection closed (pysyncobj accepts one per poll event: the last ones later)
    assert result["still_open"] == 0, result
    assert result["max_closed_after_s"] is not None and result["max_closed_after_s"] < HANDSHAKE_DEADLINE_S + 8
    wait_refused(cluster, "site-b", "handshake_timeout", "too_many_connections")
    # the members' own connections were never disturbed: a snapshot commits
    overwrite_blocks(cluster.sites["site-a"].volume_path(VOL), [7], random.Random(70))
    assert snapshot(cluster, "site-a")["committed"]
    baseline_now = {s: {"catalog": catalog(cluster, s), "chunks": cluster.status(s)["store"]["chunks"]}
                    for s in HONEST}
    baseline.update(baseline_now)


# --------------------------------------------------------------------------- site-a's daemon replaced by the attacker


def test_forged_state_and_term_inflation_from_the_attacker_site_are_refused(cluster: LocalCluster,
                                                                             baseline: dict) -> None:
    cluster.kill("site-a")  # the attacker replaces its site's daemon with its own code
    cluster.wait_for("an honest leader", lambda: honest_leader(cluster), 30)
    leader = honest_leader(cluster)
    follower = next(s for s in HONEST if s != leader)
    term_before = cluster.status(follower)["raft"]["term"]

    forged = attack(cluster, "install-snapshot", "--target", raft_addr(cluster, follower), "--term-add", "1000")
    assert forged["handshake"], forged
    inflated = attack(cluster, "term", "--target", raft_addr(cluster, follower), "--term-add", "1000000",
                      "--count", "3", "--interval-s", "0.2")
    assert inflated["handshake"], inflated
    # pysyncobj reads a member's messages only on the connection the member opened, and a member
    # opens connections only to addresses that sort below its own: when site-a's sorts below the
    # follower's, the follower never reads a connection claiming to be site-a (nothing to refuse);
    # otherwise it reads the forged messages and must refuse them
    if raft_addr(cluster, "site-a") > raft_addr(cluster, follower):
        wait_refused(cluster, follower, "term_from_non_leader", "vote_in_lease")
        assert refused(cluster, follower, "term_from_non_leader") + refused(cluster, follower,
                                                                             "snapshot_from_non_leader") >= 2
    else:
        time.sleep(2)  # the forged frames had their chance to be read
    st = cluster.status(follower)
    assert st["raft"]["term"] < term_before + 1000
    assert st["raft"]["leader"] == raft_addr(cluster, leader)
    assert sorted(st["sites"]) == ["site-a", "site-b", "site-c"]
    assert_history_kept(cluster, baseline)


def test_register_site_bloat_is_refused(cluster: LocalCluster, baseline: dict, tmp_path: Path) -> None:
    result = attack(cluster, "bloat", "--count", "200", "--wait-s", "40", "--work-dir", str(tmp_path / "a-raft"))
    assert result["accepted"] == 0, result
    assert result["refused"] > 0, result
    for s in HONEST:
        st = cluster.status(s)
        assert sorted(st["sites"]) == ["site-a", "site-b", "site-c"], s
    assert_history_kept(cluster, baseline)


def test_the_honest_pair_elects_fails_over_and_commits_once_the_attacker_is_gone(cluster: LocalCluster,
                                                                                 baseline: dict) -> None:
    started = time.monotonic()
    cluster.wait_for("an honest leader", lambda: honest_leader(cluster), 15)
    assert time.monotonic() - started < 15
    promo = cluster.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True})
    assert promo["restored_seq"] == max(baseline["site-b"]["catalog"])
    overwrite_blocks(cluster.sites["site-b"].volume_path(VOL), [3], random.Random(33))
    assert snapshot(cluster, "site-b")["committed"]
    assert_history_kept(cluster, baseline)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
