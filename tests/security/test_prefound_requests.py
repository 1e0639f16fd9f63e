"""One site cannot make the cluster's requests its own before the cluster is founded (review R4).

The attacker is site-a, the volume's configured initial primary: a real process
(``squat_attacker.py --prefound``) holding site-a's config, the cluster's Raft password and
site-a's own key runs site-a's Raft member while only site-b's daemon runs (one ``found``
proposal of three configured sites: no membership agreed). In its own name it registers itself
and the volume (allowed: a site registers itself, the volume's primary registers it), then
requests ten years of retention for every key and a detection policy that judges nothing, and
approves the first request. Before, the first request applied at once (needed 1: one registered
data site) and the second was approved by site-a alone; now both requests and the approval are
refused (``conflict``: the cluster is not founded yet; counted at site-b as
``replicad_command_refused_total{reason="not_founded"}`` and logged at WARNING) and site-b holds
no request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL
from tests.security.test_signed_commands import refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).parents[2]


def test_no_request_passes_before_the_cluster_is_founded(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2)
    attacker = None
    try:
        c.start("site-b")
        attacker = subprocess.Popen(
            [sys.executable, "-m", "tests.security.squat_attacker", "--config", str(c.sites["site-a"].config_path),
             "--work-dir", str(tmp_path / "attacker"), "--volume", VOL, "--prefound", "--wait-s", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        out, err = attacker.communicate(timeout=90)
        got = {r["attempt"]: r for r in map(json.loads, out.splitlines())}
        assert {k: r["error"] for k, r in got.items()} == {
            "register": "ok", "add_volume": "ok", "retention_request": "conflict", "detection_request": "conflict",
            "approve": "conflict"}, err[-2000:]
        assert not any(r["founded"] for r in got.values())
        # site-b's replica of the state: the volume as registered, no request
        c.wait_for("site-b applied the registration", lambda: VOL in c.api("site-b", "GET", "/v1/volumes")["volumes"],
                   30)
        assert c.api("site-b", "GET", "/v1/requests")["requests"] == []
        vol = c.api("site-b", "GET", "/v1/volumes")["volumes"][VOL]
        assert vol["retention"]["lock_s"] == 86400 and vol["primary"] == "site-a"
        # each refusal is counted and logged like the other refusals of one site's commands
        assert refused(c, "site-b", "not_founded") == 3
        assert "raft command refused [not_founded]" in c.sites["site-b"].log_path.read_text(), c.log_tail("site-b")
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
            attacker.communicate(timeout=30)
        c.stop_all()
