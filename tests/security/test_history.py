"""A compromised site cannot destroy the history held at the honest sites through the peer API.

The attacker is site-a, the volume's primary: a real process (``peer_attacker.py``) holding
site-a's config (and TLS key when set) speaks the peer API in site-a's name. The honest
sites b and c are judged on what they keep: every committed snapshot still verifies there,
their chunk stores did not lose a chunk, each refused attempt left a WARNING line and a
metric, and after the attacker's site is gone the honest pair still fails over and commits.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
import sys
import urllib.request
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, overwrite_blocks, snapshot, write_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

HONEST = ("site-b", "site-c")


@pytest.fixture
def cluster(tmp_path: Path):
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    write_image(c.sites["site-a"].volume_path(VOL), 64, random.Random(7))
    try:
        c.start_all()
        c.wait_ready(60)
        yield c
    finally:
        c.stop_all()


def attack(c: LocalCluster, *args: str) -> list[dict]:
    """Run the attacker process with site-a's config; its JSON lines."""
    out = subprocess.run([sys.executable, "-m", "tests.security.peer_attacker", *args,
                          "--config", str(c.sites["site-a"].config_path)],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def metric(c: LocalCluster, site: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` on ``site``'s /metrics."""
    url = c.sites[site].admin_url + "/metrics"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {c.default_token(site)}"}
                                 if c.default_token(site) else {})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def committed_seqs(c: LocalCluster, site: str) -> dict[int, str]:
    snaps = c.api(site, "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]
    return {s["seq"]: s["root"] for s in snaps}


def test_forged_same_seq_manifests_cannot_erase_history(cluster: LocalCluster, tmp_path: Path) -> None:
    rng = random.Random(11)
    img = cluster.sites["site-a"].volume_path(VOL)
    taken = []
    for i in range(3):
        overwrite_blocks(img, [i + 1, 40 + i], rng)
        taken.append(snapshot(cluster, "site-a"))
    expected_last = img.read_bytes()
    seqs = [t["seq"] for t in taken]
    epoch = cluster.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["epoch"]
    before = {s: cluster.status(s)["store"]["chunks"] for s in HONEST}
    refused_before = {s: metric(cluster, s, "replicad_peer_refused_total") for s in HONEST}

    results = attack(cluster, "forge-manifests", "--volume", VOL, "--epoch", str(epoch),
                     *[a for s in seqs for a in ("--seq", str(s))])
    assert {r["target"] for r in results} == set(HONEST)
    # every forged record was refused: the same (volume, epoch, seq) with another root
    assert all(r.get("error") == "record_conflict" for r in results), results

    for s in HONEST:  # the site's own retention run and GC, after the attempt
        cluster.api(s, "POST", f"/v1/volumes/{VOL}/retention/run", {})
    for s in HONEST:
        assert cluster.status(s)["store"]["chunks"] >= before[s], s
        for seq in seqs:
            rep = cluster.api(s, "POST", f"/v1/volumes/{VOL}/verify", {"seq": seq})
            assert rep["corrupt"] == [] and rep["lost"] == 0, (s, seq, rep)
        assert metric(cluster, s, "replicad_peer_refused_total") >= refused_before[s] + len(seqs), s
        assert "refused" in cluster.log_tail(s, 400) and "record_conflict" in cluster.log_tail(s, 400)

    # the attacker wipes its own site; the honest majority fails over and serves the history
    cluster.kill("site-a", signal.SIGKILL)
    promo = cluster.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True})
    assert promo["restored_seq"] == seqs[-1]
    assert cluster.sites["site-b"].volume_path(VOL).read_bytes() == expected_last
    target = tmp_path / "first.img"
    rest = cluster.api("site-c", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target), "seq": seqs[0],
                                                                        "last_clean": False})
    assert rest["verified"] and rest["seq"] == seqs[0]
    overwrite_blocks(cluster.sites["site-b"].volume_path(VOL), [9], rng)
    nxt = snapshot(cluster, "site-b")
    assert nxt["committed"]


FLOOR_TODAY = ('[floor]\nlock = "0s"\ngc_grace = "0s"\ndaily = 1\nweekly = 0\nmonthly = 0\n'
               'unsafe_allow_short_floor = true\n')
"""A floor that keeps only the oldest committed snapshot of each site's current UTC day (and
collects garbage at once): small enough to see both what a prune removes and what it cannot."""


def test_stolen_admin_token_cannot_prune_below_the_honest_sites_floor(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, extra_site_toml=FLOOR_TODAY)
    rng = random.Random(5)
    img = c.sites["site-a"].volume_path(VOL)
    write_image(img, 48, random.Random(3))
    try:
        c.start_all()
        c.wait_ready(60)
        first = snapshot(c, "site-a")
        first_image = img.read_bytes()
        seqs = [first["seq"]]
        for _ in range(3):
            overwrite_blocks(img, list(range(0, 48, 3)), rng)
            seqs.append(snapshot(c, "site-a")["seq"])
        # the attacker holds site-a's admin token: it asks to shorten the cluster's retention to one
        # second, talks an operator of site-b into approving it there (the worst case of the approval
        # rule: tests/security/test_signed_commands.py shows it pending until then), and runs the policy
        req = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/retention",
                    {"retention": {"keep_all": "1s", "hourly": "1s", "daily": "1s", "lock": "1s"}})
        assert req["status"] == "pending"
        c.api("site-b", "POST", f"/v1/requests/{req['request']}/approve", {})
        pruned = c.wait_for("the attacker's prune through Raft", lambda: c.api(
            "site-a", "POST", f"/v1/volumes/{VOL}/retention/run", {})["pruned"], 40, interval_s=1)
        assert seqs[0] in pruned
        listed = [s["seq"] for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]]
        assert seqs[0] not in listed  # the cluster state forgot it ...
        for s in HONEST:
            rep = c.api(s, "POST", f"/v1/volumes/{VOL}/retention/run", {})
            assert seqs[0] in rep["floor_kept"], (s, rep)
            kept = c.api(s, "GET", f"/v1/volumes/{VOL}/snapshots")["kept_locally"]
            assert seqs[0] in [k["seq"] for k in kept], (s, kept)  # ... each honest site did not
            assert metric(c, s, "replicad_floor_kept_total", reason="daily") >= 1, s
            assert "inside this site's floor" in c.log_tail(s, 400)
        # and the oldest snapshot of the day is restorable, byte-exact, at an honest site alone
        c.kill("site-a", signal.SIGKILL)
        target = tmp_path / "first.img"
        rest = c.api("site-c", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target), "seq": seqs[0],
                                                                       "last_clean": False})
        assert rest["verified"] and rest["verdict"] == "kept_locally"
        assert target.read_bytes() == first_image
    finally:
        c.stop_all()


SHORT_GRACE = '[floor]\ngc_grace = "2s"\nunsafe_allow_short_floor = true\n'


def test_chunk_flood_is_bounded_refused_and_collected(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, extra_site_toml=SHORT_GRACE)
    rng = random.Random(13)
    img = c.sites["site-a"].volume_path(VOL)
    write_image(img, 64, random.Random(2))  # 4 MiB: a snapshot can need at most ~5 MiB + slack
    try:
        c.start_all()
        c.wait_ready(60)
        snapshot(c, "site-a")
        epoch = c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["epoch"]
        before = {s: c.status(s)["store"]["stored_bytes"] for s in HONEST}
        results = attack(c, "chunk-flood", "--volume", VOL, "--epoch", str(epoch), "--mib", "150")
        assert {r["target"] for r in results} == set(HONEST)
        assert all(r.get("error") == "quota_exceeded" for r in results), results
        for s in HONEST:
            grown = c.status(s)["store"]["stored_bytes"] - before[s]
            assert grown <= 80 * 2**20, (s, grown)  # the budget (69 MiB here), not the 150 MiB sent
            assert metric(c, s, "replicad_peer_refused_total", reason="quota_exceeded") >= 1, s
            assert "quota_exceeded" in c.log_tail(s, 400)
        time.sleep(3)  # past gc_grace: nothing references the junk
        for s in HONEST:
            rep = c.api(s, "POST", f"/v1/volumes/{VOL}/retention/run", {})
            assert rep["gc"]["bytes_freed"] >= 60 * 2**20, (s, rep["gc"])
        # the flooding primary stays refused at its budget; the honest pair fails over and its new
        # primary's first snapshots commit (its stream has a budget of its own)
        c.kill("site-a", signal.SIGKILL)
        c.api("site-b", "POST", f"/v1/volumes/{VOL}/promote", {"force": True})
        b_img = c.sites["site-b"].volume_path(VOL)
        for _ in range(2):
            overwrite_blocks(b_img, [3, 30], rng)
            nxt = snapshot(c, "site-b")
            assert nxt["committed"] and set(nxt["holders"]) == set(HONEST), nxt
    finally:
        c.stop_all()


def test_first_full_sync_larger_than_the_quota_slack_commits(tmp_path: Path) -> None:
    """Before a volume's first commit nobody knows its size: the chunk quota must not cut the
    first full sync (72 MiB of incompressible blocks, more than the 64 MiB slack)."""
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    img = c.sites["site-a"].volume_path(VOL)
    rng = random.Random(17)
    with open(img, "wb") as f:
        for _ in range(1152):
            f.write(rng.randbytes(65536))
    try:
        c.start_all()
        c.wait_ready(60)
        first = snapshot(c, "site-a")
        assert first["committed"] and set(first["holders"]) == {"site-a", *HONEST}, first
    finally:
        c.stop_all()


def test_sizes_the_sender_claims_do_not_raise_the_quota(tmp_path: Path) -> None:
    """An announced (never committed) manifest claiming a 64 GiB volume, or a 16 MiB block size,
    does not raise what a 4 MiB volume's primary may store here."""
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    write_image(c.sites["site-a"].volume_path(VOL), 64, random.Random(4))
    try:
        c.start_all()
        c.wait_ready(60)
        first = snapshot(c, "site-a")
        epoch = c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["epoch"]
        before = {s: c.status(s)["store"]["stored_bytes"] for s in HONEST}
        wrong_block = attack(c, "inflate-then-flood", "--volume", VOL, "--epoch", str(epoch),
                             "--seq", str(first["seq"] + 1), "--block-size", str(16 * 2**20), "--claim-gib", "4096",
                             "--mib", "0")
        assert all(r.get("announce_error") == "remote_protocol" for r in wrong_block if "flood" not in r), wrong_block
        results = attack(c, "inflate-then-flood", "--volume", VOL, "--epoch", str(epoch),
                         "--seq", str(first["seq"] + 2), "--claim-gib", "64", "--mib", "150")
        floods = [r for r in results if r.get("flood")]
        assert len(floods) == 2 and all(r.get("error") == "quota_exceeded" for r in floods), results
        for s in HONEST:
            grown = c.status(s)["store"]["stored_bytes"] - before[s]
            assert grown <= 100 * 2**20, (s, grown)
            assert metric(c, s, "replicad_peer_refused_total", reason="quota_exceeded") >= 1, s
            assert metric(c, s, "replicad_peer_refused_total", reason="remote_protocol") >= 1, s
    finally:
        c.stop_all()
