"""Issue 13, items 4 and 9, with real site processes.

Item 4: every site loses its Raft state (the README forbids it; disks die). The new cluster is a
new *incarnation*: each site keeps every record of the old one (listed as ``previous``), the
new records start beside them without colliding, the former primary snapshots again, and
``readopt`` at the primary makes the newest old snapshot the new cluster's next one.

Item 9: a site whose config's ``[[sites]]`` disagrees with the membership agreed in the Raft
state refuses to start (exit 2, naming the difference); one with an empty state learns the
membership from the cluster and stops.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess

import pytest

from replicad.core.errors import NotPrimaryError
from replicad.lab.localcluster import LocalCluster

from .conftest import BLOCK, VOL, overwrite_blocks, snapshot, write_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

UNIQUE = list(range(100, 130))  # 30 blocks written only under the old cluster's last epoch


def test_all_sites_lose_their_raft_state_history_survives_and_the_newest_old_snapshot_is_readopted(
        cluster_factory, tmp_path) -> None:
    c = cluster_factory()
    a_img = c.sites["site-a"].volume_path(VOL)
    snapshot(c, "site-a")
    # site-a acts under epoch 3 of the old cluster (the former primary of the field report)
    assert c.api("site-a", "POST", f"/v1/volumes/{VOL}/demote", {})["epoch"] == 2
    assert c.api("site-a", "POST", f"/v1/volumes/{VOL}/promote", {"force": True})["epoch"] == 3
    overwrite_blocks(a_img, UNIQUE, random.Random(4))
    old = snapshot(c, "site-a")
    assert old["committed"]
    old_image = a_img.read_bytes()
    c.wait_for("site-a's own verdict on the old snapshot", lambda: c.api(
        "site-a", "GET", f"/v1/volumes/{VOL}/snapshots/{old['seq']}/evidence")["here"], 60)

    c.stop_all()
    for s in c.sites.values():  # every site loses its Raft state
        shutil.rmtree(s.dir / "data" / "raft")
    c.start_all()
    c.wait_ready(60)

    first = c.wait_for("site-a snapshots in the new cluster", lambda: snapshot(c, "site-a"), 60)
    assert first["committed"]
    # every site kept the old records, set aside as a previous incarnation, restorable only here
    for site in ("site-a", "site-b", "site-c"):
        listing = c.api(site, "GET", f"/v1/volumes/{VOL}/snapshots")
        prev = {(p["epoch"], p["seq"]) for p in listing["previous"]}
        assert (3, old["seq"]) in prev, (site, listing["previous"])
        assert {s["seq"] for s in listing["snapshots"]} == {first["seq"]} and listing["epoch"] == 1
        assert len({p["incarnation"] for p in listing["previous"]}) == 1
    assert "illegal role transition" not in c.sites["site-a"].log_path.read_text()
    assert "record_conflict" not in c.sites["site-a"].log_path.read_text()

    # the application goes on writing into the new cluster; then the operator re-adopts the old state
    overwrite_blocks(a_img, UNIQUE, random.Random(5))
    with pytest.raises(NotPrimaryError):  # typed refusal away from the primary (exit 4)
        c.api("site-b", "POST", f"/v1/volumes/{VOL}/readopt", {})
    res = c.api("site-a", "POST", f"/v1/volumes/{VOL}/readopt", {})
    assert res["committed"] and res["readopted"]["epoch"] == 3 and res["epoch"] == 1
    # the newest old record is the live image captured when the reset was met: never judged here;
    # the committed one before it keeps this site's verdict of the old incarnation, set aside
    assert res["readopted"]["prior_state"] == "divergent" and res["readopted"]["judged_here"] is None
    listed = {(p["epoch"], p["seq"]): p for p in c.api("site-a", "GET", f"/v1/volumes/{VOL}/snapshots")["previous"]}
    assert listed[(3, old["seq"])]["judged_here"] == "clean", listed
    assert a_img.read_bytes() == old_image
    target = tmp_path / "readopted.img"
    rest = c.api("site-c", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target), "seq": res["seq"]})
    assert rest["verified"]
    got = target.read_bytes()
    assert [got[b * BLOCK:(b + 1) * BLOCK] for b in UNIQUE] == [old_image[b * BLOCK:(b + 1) * BLOCK] for b in UNIQUE]
    assert got == old_image


def _without_site(config: str, site_id: str) -> str:
    """The config text without ``site_id``'s ``[[sites]]`` entry."""
    return re.sub(r'\n\[\[sites\]\]\nsite_id = "' + re.escape(site_id) + r'"\n(?:(?!\n\[).)*', "", config,
                  flags=re.S)


def _run_to_exit(c: LocalCluster, site_id: str) -> int:
    c.start(site_id)
    proc = c.sites[site_id].proc
    try:
        return proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        c.kill(site_id)
        pytest.fail(f"{site_id} kept running with a config that disagrees with the cluster:\n{c.log_tail(site_id)}")


def test_a_site_whose_config_disagrees_with_the_agreed_membership_refuses_to_start(tmp_path) -> None:
    c = LocalCluster(tmp_path / "cluster", n_data=3, n_witness=1)  # four sites
    try:
        write_image(c.sites["site-a"].volume_path(VOL), 64, random.Random(1))
        c.start_all()
        c.wait_ready(60)
        a = c.sites["site-a"]
        full = a.config_path.read_text()
        c.kill("site-a", __import__("signal").SIGTERM)
        a.config_path.write_text(_without_site(full, "site-d"))  # its old three-site config
        assert _run_to_exit(c, "site-a") == 2
        log = a.log_path.read_text()
        assert "site-d is a member of the cluster" in log, c.log_tail("site-a")
        a.config_path.write_text(full)
        c.start("site-a")
        c.wait_ready(60)  # the agreed config starts as before

        # a site with an empty state learns the membership from the cluster, and stops
        cs = c.sites["site-c"]
        c.kill("site-c", __import__("signal").SIGTERM)
        shutil.rmtree(cs.dir / "data")
        full_c = cs.config_path.read_text()
        cs.config_path.write_text(_without_site(full_c, "site-d"))
        assert _run_to_exit(c, "site-c") == 2
        log = cs.log_path.read_text()
        assert "site-d is a member of the cluster" in log, c.log_tail("site-c")
        assert "is primary of" not in log

        # with the agreed config it joins
        cs.config_path.write_text(full_c)
        shutil.rmtree(cs.dir / "data", ignore_errors=True)
        c.start("site-c")
        c.wait_ready(90)

        # the case that used to wait forever, made certain: the site missing from the config leads
        _lead(c, "site-d", ("site-a", "site-b", "site-c", "site-d"))
        c.kill("site-c", __import__("signal").SIGTERM)
        shutil.rmtree(cs.dir / "data")
        cs.config_path.write_text(_without_site(full_c, "site-d"))
        cs.log_path.write_text("")
        assert _run_to_exit(c, "site-c") == 2
        log = cs.log_path.read_text()
        assert "(site-a, site-b) report the cluster's agreed membership" in log, c.log_tail("site-c")
        assert "site-d is a member of the cluster" in log
        assert "is primary of" not in log
    finally:
        c.stop_all()


def _leader(c: LocalCluster, among: tuple[str, ...]) -> str | None:
    for site in among:
        proc = c.sites[site].proc
        if proc is not None and proc.poll() is None and c.status(site)["raft"]["is_leader"]:
            return site
    return None


def _lead(c: LocalCluster, site_id: str, among: tuple[str, ...]) -> None:
    """Until ``site_id`` leads (at most 8 rounds): stop the leader among ``among``, wait for
    another, start the stopped one again."""
    for _ in range(8):
        leader = c.wait_for("a Raft leader", lambda: _leader(c, among), 60)
        if leader == site_id:
            return
        c.kill(leader, __import__("signal").SIGTERM)
        c.wait_for("a new Raft leader", lambda: _leader(c, tuple(s for s in among if s != leader)), 60)
        c.start(leader)
        c.wait_for(f"{leader} back", lambda: c.status(leader)["raft"]["leader"] is not None, 60)
    pytest.fail(f"{site_id} never led")
