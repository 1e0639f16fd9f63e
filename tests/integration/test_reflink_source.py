"""A real three-site cluster protecting one ``reflink`` volume whose image lives on a loop-mounted
XFS (reflink=1) made by the test: snapshots replicate and restore byte-exact at the primary and
at a replica; a primary killed right after the clone (before the commit) keeps its parent clone
and resumes through one rescan; a deleted parent clone goes ``lost`` and back to ``tracking``."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, overwrite_blocks, snapshot, write_image
from tests.loopfs import loop_fs

N_BLOCKS = 256  # 16 MiB


def restore_bytes(c: LocalCluster, site: str, seq: int, target: Path) -> bytes:
    c.api(site, "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target), "seq": seq})
    data = target.read_bytes()
    target.unlink()
    return data


def source_status(c: LocalCluster, site: str = "site-a") -> dict:
    return c.status(site)["volumes"][VOL]["source"]


def test_reflink_volume_replicates_survives_a_kill_after_the_clone_and_a_lost_parent(tmp_path: Path) -> None:
    rng = random.Random(11)
    with loop_fs(tmp_path, "xfs") as mnt:
        flag = tmp_path / "kill-after-clone"
        hook = ["/bin/sh", "-c", f'if [ -e "{flag}" ]; then rm -f "{flag}"; kill -9 $PPID; fi']
        c = LocalCluster(tmp_path / "cluster", interval="3650d", min_copies=2, extra_volume_toml=(
            '[volumes.source]\nkind = "reflink"\npost_snapshot = [' + ", ".join(f"'{a}'" for a in hook) + "]\n"))
        image = mnt / "ehr.img"  # the primary's image on XFS; the site's config names it through a symlink
        write_image(image, N_BLOCKS, rng)
        c.sites["site-a"].volume_path(VOL).symlink_to(image)
        clone_dir = mnt / ".replicad-clones"
        try:
            c.start_all()
            c.wait_ready(60)
            assert source_status(c)["state"] == "idle"
            first = snapshot(c, "site-a")
            assert first["committed"] and first["source"]["mode"] == "full"
            assert source_status(c)["state"] == "tracking"

            # an incremental cycle reads only what changed, and restores byte-exact at both ends
            overwrite_blocks(image, [3, 100, 200], rng)
            rep = snapshot(c, "site-a")
            assert rep["committed"] and rep["source"]["mode"] == "tracked" and rep["changed_blocks"] == 3
            assert rep["source"]["read_blocks"] <= 6, rep["source"]
            truth = image.read_bytes()
            assert restore_bytes(c, "site-a", rep["seq"], tmp_path / "r-a.img") == truth
            c.wait_for("site-b holds the snapshot", lambda: c.status("site-b")["volumes"][VOL]["newest_committed"]
                       == rep["seq"], 30)
            assert restore_bytes(c, "site-b", rep["seq"], tmp_path / "r-b.img") == truth
            parent_clones = sorted(p.name for p in clone_dir.glob("*.clone"))
            assert len(parent_clones) == 1

            # killed after the clone, before the commit: the parent clone is still there
            flag.touch()
            overwrite_blocks(image, [7, 8], rng)
            try:
                snapshot(c, "site-a")
            except Exception:  # noqa: BLE001 — the site died while answering
                pass
            c.sites["site-a"].proc.wait(30)
            left = sorted(p.name for p in clone_dir.glob("*.clone"))
            assert parent_clones[0] in left and len(left) == 2, left
            c.start("site-a")
            c.wait_ready(60)
            rep = c.wait_for("a snapshot after the restart", lambda: snapshot(c, "site-a"), 60, 1.0)
            assert rep["committed"] and rep["source"]["mode"] == "rescan"
            st = source_status(c)
            assert st["state"] == "tracking" and st["lost_total"]["unclean_restart"] == 1
            assert sorted(p.name for p in clone_dir.glob("*.clone")) == [st["parent_clone"]]
            assert restore_bytes(c, "site-a", rep["seq"], tmp_path / "r-a2.img") == image.read_bytes()
            overwrite_blocks(image, [9], rng)
            assert snapshot(c, "site-a")["source"]["mode"] == "tracked"

            # the parent clone deleted by hand: lost, one rescan, tracking again
            for p in clone_dir.glob("*.clone"):
                p.unlink()
            overwrite_blocks(image, [10, 11], rng)
            rep = snapshot(c, "site-a")
            assert rep["committed"] and rep["source"]["mode"] == "rescan" and rep["changed_blocks"] == 2
            st = source_status(c)
            assert st["lost_total"]["parent_clone_missing"] == 1 and st["state"] == "tracking"
            overwrite_blocks(image, [12], rng)
            rep = snapshot(c, "site-a")
            assert rep["source"]["mode"] == "tracked" and rep["changed_blocks"] == 1
            truth = image.read_bytes()
            c.wait_for("site-c holds the snapshot", lambda: c.status("site-c")["volumes"][VOL]["newest_committed"]
                       == rep["seq"], 30)
            assert restore_bytes(c, "site-c", rep["seq"], tmp_path / "r-c.img") == truth
            assert c.status("site-b")["volumes"][VOL]["source"]["state"] == "idle"  # replicas do not track
        finally:
            c.stop_all()
            shutil.rmtree(clone_dir, ignore_errors=True)
            if image.exists():
                os.unlink(image)
