"""``demote`` at the primary keeps what the application wrote since the last snapshot
(issue 13, item 1): a final snapshot is committed before the epoch moves, and when it cannot
be committed the live image is kept as a divergent snapshot before anything rewrites it."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster

from .conftest import BLOCK, VOL, overwrite_blocks, snapshot, write_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WRITTEN = list(range(20, 80))  # 60 blocks, as in the field report


def blocks(data: bytes, which: list[int]) -> list[bytes]:
    return [data[b * BLOCK:(b + 1) * BLOCK] for b in which]


def test_demote_at_the_primary_commits_the_writes_since_the_last_snapshot(cluster_factory, tmp_path: Path) -> None:
    c = cluster_factory()
    a_img = c.sites["site-a"].volume_path(VOL)
    first = snapshot(c, "site-a")
    overwrite_blocks(a_img, WRITTEN, random.Random(13))  # acknowledged application writes, no snapshot since
    expected = a_img.read_bytes()
    res = c.api("site-a", "POST", f"/v1/volumes/{VOL}/demote", {})
    assert res["epoch"] == 2
    time.sleep(2.0)  # the replica step ran (it rewrote the image 0.5 s after the demote)
    snaps = {s["seq"]: s for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]}
    final = max(snaps)
    assert final > first["seq"], "no final snapshot was committed"
    assert snaps[final]["epoch"] == 1
    target = tmp_path / "final.img"
    rest = c.api("site-c", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target), "seq": final})
    assert rest["verified"] and rest["seq"] == final
    assert blocks(target.read_bytes(), WRITTEN) == blocks(expected, WRITTEN)
    assert target.read_bytes() == expected  # byte-exact
    assert a_img.read_bytes() == expected  # the demoted site did not rewrite it away
    st = c.status("site-a")["volumes"][VOL]
    assert st["role"] == "replica" and st["acting_epoch"] is None
    # a snapshot asked of the demoted volume says it has no primary and how one is made (a tryout's finding)
    from .test_operator_cli import cli, flat

    res = cli(c, "site-a", "snapshot", VOL)
    assert res.returncode != 0 and f"{VOL} has no primary (demoted at epoch 2)" in flat(res) \
        and f"replicad promote {VOL} --force" in flat(res) and "primary: null" not in flat(res), flat(res)


def test_demote_whose_final_snapshot_cannot_commit_keeps_the_image_as_divergent(tmp_path: Path) -> None:
    """Two data sites and a witness, the other data site down: Raft has a majority (the demote
    commits) but min_copies=2 cannot be met (the final snapshot cannot commit)."""
    c = LocalCluster(tmp_path / "cluster", n_data=2, n_witness=1, min_copies=2)
    try:
        write_image(c.sites["site-a"].volume_path(VOL), 192, random.Random(1))
        c.start_all()
        c.wait_ready(60)
        a_img = c.sites["site-a"].volume_path(VOL)
        snapshot(c, "site-a")
        c.kill("site-b", signal.SIGKILL)
        overwrite_blocks(a_img, WRITTEN, random.Random(14))
        expected = a_img.read_bytes()
        res = c.api("site-a", "POST", f"/v1/volumes/{VOL}/demote", {})
        assert res["epoch"] == 2
        time.sleep(2.0)
        divergent = c.api("site-a", "GET", f"/v1/volumes/{VOL}/snapshots")["divergent"]
        assert divergent and {d["epoch"] for d in divergent} == {1}, divergent
        newest = max(divergent, key=lambda d: d["seq"])
        target = tmp_path / "divergent.img"
        rest = c.api("site-a", "POST", f"/v1/volumes/{VOL}/restore",
                     {"target": str(target), "seq": newest["seq"], "divergent_epoch": 1})
        assert rest["verified"] and rest["verdict"] == "divergent"
        assert target.read_bytes() == expected  # byte-exact: nothing the application wrote is lost
    finally:
        c.stop_all()
