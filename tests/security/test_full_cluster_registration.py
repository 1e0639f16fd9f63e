"""A volume refused because the cluster is full registers once there is room (review R13, F1
residual): two sites hold their whole share of volumes each (``state.VOLUMES_PER_SITE_MAX``, 128:
together ``state.VOLUMES_MAX``), an honest site starting with a new volume is refused (``conflict``,
``max_volumes``). It used to be tried once at start: after the hoarding site's revocation (its
volumes stop counting) the volume stayed unregistered, never replicated, until someone restarted
the site. Now the refusal is logged at ERROR once and the registration tried again in the
background with backoff; it registers once the revocation applies. Real daemons (site-a; site-b
and site-c run their own Raft members: ``volume_filler.py``); site-a's backoff is shortened
(``quick_room_site.py``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from replicad.core.state import VOLUMES_MAX, VOLUMES_PER_SITE_MAX
from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, write_image

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NEW = "pacs"


def lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def filler_output(path: Path, step: str) -> dict | None:
    for line in lines(path):
        if line.startswith("{") and json.loads(line).get("step") == step:
            return json.loads(line)
    return None


@pytest.mark.timeout(420)
def test_a_volume_refused_for_a_full_cluster_registers_once_the_hoarder_is_revoked(tmp_path: Path) -> None:
    assert 2 * VOLUMES_PER_SITE_MAX == VOLUMES_MAX  # two sites' shares fill the cluster
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=1)
    write_image(c.sites["site-a"].volume_path(VOL), 16, random.Random(7))
    fillers: dict[str, subprocess.Popen] = {}
    approve = tmp_path / "approve"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    try:
        c.start_all()
        c.wait_ready(90)
        for site in ("site-b", "site-c"):  # their operators' daemons make way for their own Raft members
            c.kill(site, signal.SIGTERM)
        for site, prefix in (("site-b", "b"), ("site-c", "c")):
            s = c.sites[site]
            with open(tmp_path / f"{site}-filler.out", "wb") as log:
                fillers[site] = subprocess.Popen(
                    [sys.executable, "-m", "tests.security.volume_filler", "--config", str(s.config_path),
                     "--work-dir", str(tmp_path / f"{site}-raft"), "--prefix", prefix, "--count",
                     str(VOLUMES_PER_SITE_MAX), *(["--approve-file", str(approve)] if site == "site-b" else [])],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=s.dir)
        filled = c.wait_for("both hoarders filled their shares", lambda: (lambda got: got if all(got) else None)(
            [filler_output(tmp_path / f"{site}-filler.out", "filled") for site in ("site-b", "site-c")]), 180,
            interval_s=1.0)
        assert sum(f["answers"].get("ok", 0) for f in filled) == VOLUMES_MAX - 1, filled  # + ehr: full
        assert len(c.api("site-a", "GET", "/v1/status")["sites"]) == 3

        # site-a starts again with a new volume in its config: refused, the cluster is full
        c.kill("site-a", signal.SIGTERM)
        a = c.sites["site-a"]
        write_image(a.volume_path(NEW), 16, random.Random(8))
        a.config_path.write_text(a.config_path.read_text() + (
            f'\n[[volumes]]\nname = "{NEW}"\npath = "{NEW}.img"\nblock_size = "64KiB"\ninterval = "1h"\n'
            'min_copies = 1\ninitial_primary = "site-a"\napply_delay = "0s"\n'))
        c.start("site-a", module="tests.security.quick_room_site", args=("run",))
        c.wait_for("site-a refused as full", lambda: any(
            f"volume {NEW}: registration refused" in line and "max_volumes" in line for line in lines(a.log_path)), 90)
        c.wait_for("site-a tried again, still full", lambda: sum(
            f"volume {NEW}: the cluster was full at try" in line for line in lines(a.log_path)) >= 3, 60)
        assert (c.status("site-a")["volumes"].get(NEW) or {}).get("primary") is None

        # site-c revoked (site-a asks, site-b approves): its volumes stop counting, there is room
        asked = subprocess.run([sys.executable, "-m", "replicad", "--admin", a.admin_url, "--json", "revoke",
                                "site-c", "--reason", "hoards the cluster's volumes"],
                               capture_output=True, text=True, timeout=120,
                               env={k: v for k, v in os.environ.items() if k != "REPLICAD_TOKEN"})
        assert asked.returncode == 0, asked.stderr
        approve.write_text(json.loads(asked.stdout)["request"])
        c.wait_for("site-b approved", lambda: filler_output(tmp_path / "site-b-filler.out", "approve"), 60)
        assert filler_output(tmp_path / "site-b-filler.out", "approve")["answer"] == "ok"
        c.wait_for(f"{NEW} registered", lambda: any(
            f"volume {NEW} is registered now, after" in line for line in lines(a.log_path)), 90)
        c.wait_for(f"{NEW} in the state", lambda: (c.status("site-a")["volumes"].get(NEW) or {}).get("primary")
                   == "site-a", 30)
        errors = [line for line in lines(a.log_path) if f"volume {NEW}: registration refused" in line]
        assert len(errors) == 1 and " ERROR " in errors[0], errors  # once, at ERROR; the retries at INFO
    finally:
        for proc in fillers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        c.stop_all()
