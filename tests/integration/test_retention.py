"""Retention on real daemons: the lock window is enforced (O4), pruning frees space by
garbage collection, and the newest snapshot shared with each replica survives."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from replicad.core.errors import RetentionLockedError
from replicad.lab.localcluster import NO_FLOOR_TOML, LocalCluster

from .conftest import VOL, overwrite_blocks, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SHORT = '[volumes.retention]\nkeep_all = "1s"\nhourly = "1s"\ndaily = "1s"\nlock = "3s"\n'


@pytest.fixture
def cluster(cluster_factory):
    return cluster_factory(SHORT, n_blocks=96, extra_site_toml=NO_FLOOR_TOML)


def store_bytes(c: LocalCluster, site: str) -> int:
    return sum(p.stat().st_size for p in (c.sites[site].dir / "data" / "chunks").rglob("*.pack"))


def test_lock_window_refuses_and_gc_frees_space(cluster: LocalCluster, tmp_path: Path) -> None:
    rng = random.Random(9)
    img = cluster.sites["site-a"].volume_path(VOL)
    seqs = [snapshot(cluster, "site-a")["seq"]]
    for _ in range(3):  # every snapshot rewrites most of the volume: old chunks become garbage
        overwrite_blocks(img, list(range(0, 96, 2)), rng)
        seqs.append(snapshot(cluster, "site-a")["seq"])
    with pytest.raises(RetentionLockedError):  # O4: inside the 3 s lock window
        cluster.api("site-c", "POST", f"/v1/volumes/{VOL}/prune", {"seqs": [seqs[0]]})
    audit = cluster.api("site-b", "GET", "/v1/audit")["audit"]
    assert any(a["op"] == "prune_snapshots" and a["error"] == "retention_locked" for a in audit)
    with pytest.raises(RetentionLockedError):  # the newest snapshot is never pruned
        cluster.api("site-a", "POST", f"/v1/volumes/{VOL}/prune", {"seqs": [seqs[-1]]})

    before = {s: store_bytes(cluster, s) for s in ("site-a", "site-b")}
    # the lock (3 s) is measured by a majority of the sites' clocks, reported every few seconds
    asked = cluster.wait_for("the lock window to pass on a majority of clocks", lambda: cluster.api(
        "site-a", "POST", f"/v1/volumes/{VOL}/prune", {"seqs": [seqs[-2]]}), 40, interval_s=1)
    # an explicit prune prunes what it names and nothing else, although the policy would now prune
    # the older ones too (their lock passed before that of the one named)
    assert asked["pruned"] == [seqs[-2]] and asked["local"]["pruned"] == [], asked
    assert asked["local"]["forgotten"] == 1
    kept = [s["seq"] for s in cluster.api("site-a", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]]
    assert kept == [*seqs[:-2], seqs[-1]]
    rep = cluster.api("site-a", "POST", f"/v1/volumes/{VOL}/retention/run", {})
    assert rep["pruned"] == seqs[:-2]
    kept = [s["seq"] for s in cluster.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]]
    assert kept == [seqs[-1]]
    rep_b = cluster.api("site-b", "POST", f"/v1/volumes/{VOL}/retention/run", {})
    assert rep_b["forgotten"] == 3 and rep_b["gc"]["bytes_freed"] > 0
    assert store_bytes(cluster, "site-a") < before["site-a"]
    assert store_bytes(cluster, "site-b") < before["site-b"]
    # what is retained is intact: restore the newest at site-b, verified (O5)
    target = tmp_path / "after-gc.img"
    rest = cluster.api("site-b", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target)})
    assert rest["verified"] and target.read_bytes() == img.read_bytes()
    # and the next delta ship still finds its base at every replica
    overwrite_blocks(img, [1], rng)
    nxt = snapshot(cluster, "site-a")
    assert nxt["committed"] and all(p["base_seq"] == seqs[-1] and p["sent"] <= 3 for p in nxt["peers"].values())
