"""Defects a new operator found (issue 16, item 6), each against real site daemons: a planned
switchover answers once the new primary serves the volume; a restore refused for permissions
or an unreachable target leaves nothing behind (typed answer, no degraded site, also after a
restart); the reasons a site is degraded are in ``status --json`` and ``/metrics``;
``/readyz`` is 503 in a minority; a member with another Raft key is named in the log; a
``LocalCluster`` under a relative directory starts, and one whose daemons died is never ready."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from replicad.core.errors import UnavailableError
from replicad.lab.localcluster import LocalCluster

from .conftest import VOL, ready_again, snapshot, start_cluster, write_image

pytestmark = pytest.mark.integration

SRC = str(Path(__file__).resolve().parents[2])


def cli(c: LocalCluster, site: str, *args: str) -> subprocess.CompletedProcess:
    """The real ``replicad`` CLI against ``site``'s admin API."""
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites[site].admin_url, *args],
                          capture_output=True, text=True, timeout=300, env=env)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text ``text`` (labels given must match)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One cluster with a committed snapshot for the tests below: each leaves site-a primary (the
    switchover switches back); the last one stops two sites, which :func:`ready_again` restarts."""
    c = start_cluster(tmp_path_factory.mktemp("defects") / "cluster")
    try:
        snapshot(c, "site-a")
        yield c
    finally:
        c.stop_all()


@pytest.fixture
def cluster(shared_cluster: LocalCluster) -> LocalCluster:
    return ready_again(shared_cluster)


def test_planned_switchover_returns_once_the_new_primary_serves_the_volume(cluster: LocalCluster) -> None:
    res = cli(cluster, "site-a", "--json", "promote", VOL, "--to", "site-b")
    assert res.returncode == 0, res.stdout + res.stderr
    answer = json.loads(res.stdout)
    assert answer["ready"] is True and answer["primary"] == "site-b"
    # at the moment the command returned, site-b serves the volume: restored, verified, acting
    vol = cluster.status("site-b")["volumes"][VOL]
    assert vol["role"] == "primary" and vol["acting_epoch"] == answer["epoch"], vol
    human = cli(cluster, "site-b", "promote", VOL, "--to", "site-a")
    assert human.returncode == 0 and "READY: site-a serves ehr" in " ".join(human.stdout.split()), human.stdout
    again = cli(cluster, "site-b", "promote", VOL, "--to", "site-a")  # forwarded to site-a, the primary already
    assert again.returncode == 4 and "site-a is already the primary of ehr" in " ".join(again.stderr.split()), \
        again.stderr  # conflict (exit 4), not a usage error about what --to means


def test_restore_refused_for_permissions_leaves_no_degraded_site(cluster: LocalCluster, tmp_path: Path) -> None:
    target = tmp_path / "passwd-like"
    target.write_text("root:x:0:0:root:/root:/bin/bash\n")
    # immutable: refused for writing even to root (the daemon of a real site is not root, and
    # a file like /etc/passwd is not writable to it)
    subprocess.run(["chattr", "+i", str(target)], check=True)
    try:
        res = cli(cluster, "site-b", "restore", VOL, "--target", str(target), "--overwrite")
        assert res.returncode == 2, res.stdout + res.stderr
        assert "cannot be opened for writing" in " ".join(res.stderr.split()) and "Traceback" not in res.stderr
        assert target.read_text().startswith("root:x:0:0")
        st = cluster.status("site-b")
        assert st["interrupted_restores"] == [] and st["degraded"] is False, st["degraded_reasons"]
        cluster.kill("site-b")
        cluster.start("site-b")
        cluster.wait_ready(60)
        st = cluster.status("site-b")
        assert st["interrupted_restores"] == [] and not [r for r in st["degraded_reasons"]
                                                         if r["reason"] == "restore_interrupted"]
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=False)


def test_restore_target_the_daemon_cannot_reach_is_a_typed_refusal(cluster: LocalCluster, tmp_path: Path) -> None:
    target = tmp_path / ("x" * 300)  # a name longer than the file system allows
    res = cli(cluster, "site-b", "restore", VOL, "--target", str(target))
    assert res.returncode == 2, res.stdout + res.stderr
    text = " ".join(res.stderr.split())
    assert "bad_request" in text and "File name too long" in text and "internal" not in text, text
    assert "Traceback" not in cluster.log_tail("site-b", 200)


def test_degraded_reasons_are_in_status_json_and_metrics(cluster: LocalCluster) -> None:
    url = cluster.sites["site-a"].admin_url
    _, body = http_get(url + "/metrics")
    assert metric(body.decode(), "replicad_site_degraded", site="site-a") == 0
    assert metric(body.decode(), "replicad_site_degraded_reasons", site="site-a", reason="member_unreachable") == 0
    cluster.kill("site-c")

    def down_seen() -> dict | None:
        st = cluster.status("site-a")
        return st if any(r["reason"] == "member_unreachable" for r in st["degraded_reasons"]) else None

    st = cluster.wait_for("site-c seen unreachable", down_seen, 60)
    assert st["degraded"] is True
    assert {"reason": "member_unreachable", "message": "site site-c unreachable", "site": "site-c"} in \
        st["degraded_reasons"]
    res = cli(cluster, "site-a", "--json", "status")
    assert res.returncode == 1 and json.loads(res.stdout)["degraded"] is True
    _, body = http_get(url + "/metrics")
    assert metric(body.decode(), "replicad_site_degraded", site="site-a") == 1
    assert metric(body.decode(), "replicad_site_degraded_reasons", site="site-a", reason="member_unreachable") == 1
    # one site down of three: still a majority, still ready
    assert http_get(url + "/readyz")[0] == 200
    cluster.kill("site-b")  # now site-a is alone: a minority is not ready

    def not_ready() -> bool:
        return http_get(url + "/readyz")[0] == 503

    cluster.wait_for("readyz 503 in a minority", not_ready, 60)
    answer = json.loads(http_get(url + "/readyz")[1])
    assert answer["ready"] is False and answer["why"], answer


def test_a_member_with_another_raft_key_is_named_in_the_log(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    (c.sites["site-c"].dir / "raft.key").write_text("another-raft-key-of-site-c-0123456789\n")
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(3))
    try:
        c.start_all()

        def logged() -> str | None:
            for site in c.sites:
                for line in c.log_tail(site, 400).splitlines():
                    if "wrong_raft_key" in line:
                        return line
            return None

        line = c.wait_for("a wrong_raft_key line", logged, 60)
        assert "ERROR" in line and "did not decrypt with this site's Raft key" in line and \
            "raft.password_file" in line, line
    finally:
        c.stop_all()


def test_local_cluster_under_a_relative_directory_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    c = LocalCluster(Path("demo-state") / "cluster", interval="1h", min_copies=2)
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(5))
    try:
        c.start_all()
        c.wait_ready(60)
        assert c.status("site-a")["raft"]["leader"] is not None
        c.stop_all()  # every daemon gone: never "ready"
        c.start("site-a")
        c.kill("site-a")
        with pytest.raises(UnavailableError, match="exited"):
            c.wait_ready(30)
    finally:
        c.stop_all()
