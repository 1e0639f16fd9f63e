"""The operator's commands on three real sites, through the real CLI (an operator trial's
leftovers): ``replicad prune`` of a snapshot the agreed retention keeps files a request another
site approves; ``approve`` prints what the request did, not a raw map; ``requests`` prints sizes
with their unit and the maximum a ``set_max_size`` replaces; ``volumes`` shows the agreed
maximum; times are UTC and say so; ``evidence`` counts carry their unit; ``status`` says how far a
standby is behind; a snapshot with a replica down says why in plain words; ``remove-volume`` files a
request another site approves."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from replicad.core.state import default_max_size_bytes
from replicad.lab.localcluster import NO_FLOOR_TOML, LocalCluster

from .conftest import VOL, overwrite_blocks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# lock 1 s: a prune is not refused for the lock; keep_all 1 h: the retention keeps every snapshot
RETENTION = '[volumes.retention]\nkeep_all = "1h"\nhourly = "1h"\ndaily = "1h"\nlock = "1s"\n'
UTC_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")
BLOCKS = 96  # 64 KiB blocks: a 6 MiB volume


def cli(c: LocalCluster, site: str, *args: str) -> subprocess.CompletedProcess:
    token = c.default_token(site)
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", **({"REPLICAD_TOKEN": token} if token else {})}
    return subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites[site].admin_url, *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parents[2])


def flat(res: subprocess.CompletedProcess) -> str:
    """stdout and stderr with rich's line wrapping undone."""
    return " ".join((res.stdout + res.stderr).split())


def test_operator_commands_on_a_real_cluster(cluster_factory) -> None:
    c = cluster_factory(RETENTION, n_blocks=BLOCKS, interval="3650d", extra_site_toml=NO_FLOOR_TOML)
    img = c.sites["site-a"].volume_path(VOL)
    rng = random.Random(5)
    for seq in (1, 2, 3):
        if seq > 1:
            overwrite_blocks(img, [seq, 40 + seq], rng)
        res = cli(c, "site-a", "snapshot", VOL)
        assert res.returncode == 0 and f"snapshot #{seq}: committed" in res.stdout, flat(res)
        assert "bytes shipped" not in res.stdout and re.search(r"(\d+(\.\d)?[KMG]iB|\d+B) shipped", flat(res)), flat(res)
        # the primary's screen is not called the verdict; the cluster's, as read on return, is named
        assert "committed, clean" not in flat(res) and "commit-time screen found nothing" in flat(res), flat(res)
        assert re.search(r"the cluster's verdict now: clean \((no site has judged it yet|the sites' own verdicts so "
                         r"far: clean at [a-z, -]+)\); the verdicts later: replicad snapshots ehr", flat(res)), flat(res)

    # the agreed maximum, beside the size (the default rule of the registered size)
    size = BLOCKS * 65536
    res = cli(c, "site-b", "volumes")
    row = next(line for line in res.stdout.splitlines() if f" {VOL} " in line)
    assert res.returncode == 0 and "max size" in res.stdout and "6MiB" in row, res.stdout
    assert f"{default_max_size_bytes(size) // 2**20}MiB" in row, row  # 1030MiB

    # times in UTC, saying so
    res = cli(c, "site-a", "snapshots", VOL)
    assert res.returncode == 0 and len(UTC_TIME.findall(res.stdout)) == 3, res.stdout

    # the standby says how far behind it is, also when it is not behind
    c.wait_for("site-b's standby at #3", lambda: c.status("site-b")["volumes"][VOL].get("standby_lag_snapshots") == 0,
               60)
    res = cli(c, "site-b", "status")
    assert res.returncode == 0 and "standby (snapshots behind)" in res.stdout and "3 (0 behind)" in res.stdout, \
        flat(res)

    # evidence counts carry their unit
    c.wait_for("site-a judged #3", lambda: (c.api("site-a", "GET", f"/v1/volumes/{VOL}/snapshots/3/evidence")
                                            .get("here") or {}).get("signals"), 60)
    res = cli(c, "site-a", "evidence", VOL, "3")
    text = res.stdout
    assert res.returncode == 0 and "changed_blocks: 2 blocks" in text and re.search(r"data_blocks: \d+ blocks", text), \
        text
    assert "shrunk_bytes: 0 bytes" in text and "score: 0 %" in text and "renamed: 0 file names" in text, text

    # prune of a snapshot the retention keeps: a request, approved at another site
    res = c.wait_for("the lock window of #1 to pass", lambda: (lambda r: r if r.returncode == 0 else None)(
        cli(c, "site-a", "prune", VOL, "1", "--reason", "a copy of a deleted record")), 30, 1.0)
    out = flat(res)
    assert "#1 kept by the agreed retention" in out and "is pending (prune_snapshots ehr): 1 of 2 sites approved" in out, \
        out
    req = re.search(r"replicad approve (r\d+)", out).group(1)
    res = cli(c, "site-b", "requests")
    line = next(x for x in res.stdout.splitlines() if x.startswith(f"{req} "))
    assert "prune_snapshots" in line and "(a copy of a deleted record)" in line and UTC_TIME.search(line), line
    res = cli(c, "site-b", "approve", req)
    out = flat(res)
    assert res.returncode == 0 and "{" not in out and "approved by site-a, site-b" in out, out
    assert f"request {req} applied (approved by site-a, site-b): {VOL}: pruned #1" in out or (
        f"request {req} approved by site-a, site-b (prune_snapshots {VOL}): it takes effect at" in out
        and UTC_TIME.search(out)), out

    # a new maximum: the request names the size with its unit and the maximum it replaces
    old_max = default_max_size_bytes(size)
    res = cli(c, "site-a", "max-size", VOL, "2GiB", "--reason", "disk resized")
    req = re.search(r"request (r\d+)", flat(res)).group(1)
    res = cli(c, "site-b", "requests")
    line = next(x for x in res.stdout.splitlines() if x.startswith(f"{req} "))
    assert f"changes max_size: {old_max // 2**20}MiB -> 2GiB" in line and "2147483648" not in line, line
    listed = json.loads(cli(c, "site-b", "--json", "requests").stdout)["requests"]
    assert next(r for r in listed if r["id"] == req)["previous"] == old_max
    res = cli(c, "site-b", "approve", req)
    out = flat(res)
    assert res.returncode == 0 and "{" not in out and "'ok'" not in out, out
    assert f"applied (approved by site-a, site-b): {VOL}: agreed maximum size 2GiB (was {old_max // 2**20}MiB)" \
        in out, out
    res = cli(c, "site-a", "requests")
    line = next(x for x in res.stdout.splitlines() if x.startswith(f"{req} "))
    assert "[applied]" in line and f"changes max_size: {old_max // 2**20}MiB -> 2GiB" in line, line
    assert "2GiB" in next(x for x in cli(c, "site-a", "volumes").stdout.splitlines() if f" {VOL} " in x)

    # a replica down: the snapshot says why in plain words, not the HTTP client's
    c.kill("site-c")
    overwrite_blocks(img, [7], rng)
    res = cli(c, "site-a", "snapshot", VOL)
    out = flat(res)
    assert res.returncode == 0 and "committed" in out, out
    assert "site-c: not stored yet (peer_unavailable): peer http://127.0.0.1:" in out, out
    assert "unreachable: connection refused" in out, out
    for library_text in ("ClientConnectorError", "Cannot connect to host", "ssl:default", "Connect call failed"):
        assert library_text not in out, out

    # a decommissioned volume: a removal request (refused while its newest snapshot is inside the lock
    # window, 1 s), approved at another site (cooling-off 0 s here), then gone from every site's view
    res = c.wait_for("the lock window of the newest snapshot to pass", lambda: (
        lambda r: r if r.returncode == 0 else None)(cli(c, "site-b", "remove-volume", VOL, "--reason",
                                                        "VM decommissioned")), 30, 1.0)
    out = flat(res)
    assert "is pending (remove_volume ehr): 1 of 2 sites approved (site-b)" in out, out
    req = re.search(r"replicad approve (r\d+)", out).group(1)
    line = next(x for x in cli(c, "site-a", "requests").stdout.splitlines() if x.startswith(f"{req} "))
    assert "remove_volume" in line and "(VM decommissioned)" in line, line
    res = cli(c, "site-a", "approve", req)
    out = flat(res)
    assert res.returncode == 0 and "{" not in out, out
    assert re.search(rf"request {req} applied \(approved by site-b, site-a\): {VOL}: removed from the cluster state "
                     r"\(\d snapshot record\(s\), epoch 1, last seq 4\); each site keeps its own copies", out), out
    c.wait_for("site-b to see the removal", lambda: VOL not in (c.api("site-b", "GET", "/v1/volumes").get("volumes")
                                                                  or {}), 30)
    assert f" {VOL} " not in cli(c, "site-b", "volumes").stdout
