"""One site's key cannot squat a volume name, freeze deletion everywhere, or change a volume
unseen (review R3).

The attacker is site-c: a real process (``squat_attacker.py``) holding site-c's config, the
cluster's Raft password and site-c's own key runs site-c's Raft member in place of its daemon and
signs every command in its own name. Every site configures two volumes whose initial primary is
site-a; site-a starts last, so ``pacs`` is a name nobody registered yet when the attacker acts.

* ``add_volume pacs`` naming site-a primary (min_copies 1, zero retention) is refused
  (``not_self``, counted at every site); in its own name with another block size it is recorded,
  and site-a and site-b each log the registration at ERROR naming site-c, set
  ``replicad_volume_registration_mismatch{volume="pacs"}`` and hold the volume: site-a's live
  ``pacs`` image is never rewritten by site-c's snapshots, and site-a's ``ehr`` registers and
  commits as usual (the bootstrap does not stop).
* ``set_retention`` with a 2**62 s lock is ``bad_request``; a 30-day lock alone is
  ``approval_required``; as a request it stays pending and the honest sites keep their retention.
* Its ``mark_verdict`` suspect (one site may still say suspect) is logged at WARNING at the honest
  sites naming site-c, and its request with the site that made it.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster
from tests.integration.conftest import VOL, overwrite_blocks, snapshot, write_image
from tests.security.test_signed_commands import refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SQUAT = "pacs"
REPO = Path(__file__).parents[2]


def gauge(c: LocalCluster, site: str, name: str, volume: str) -> float:
    text = urllib.request.urlopen(urllib.request.Request(c.sites[site].admin_url + "/metrics"), timeout=10).read()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
              if line.startswith(name + "{") and f'volume="{volume}"' in line]
    assert values, f"{name}{{volume={volume!r}}} is not exported at {site}"
    return max(values)


def test_one_site_cannot_squat_a_volume_or_freeze_retention(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "cluster", volumes=(VOL, SQUAT), interval="1h", min_copies=2)
    for name in (VOL, SQUAT):
        write_image(c.sites["site-a"].volume_path(name), 32, random.Random(name))
    live = hashlib.sha256(c.sites["site-a"].volume_path(SQUAT).read_bytes()).hexdigest()
    attacker = None
    try:
        c.start("site-b")
        c.start("site-c")  # founds the cluster with site-b, then gives its place to the attacker
        c.wait_for("site-c registered", lambda: "site site-c registered in the cluster" in
                   c.sites["site-c"].log_path.read_text(), 90)
        c.kill("site-c")
        attacker = subprocess.Popen(
            [sys.executable, "-m", "tests.security.squat_attacker", "--config", str(c.sites["site-c"].config_path),
             "--work-dir", str(tmp_path / "attacker"), "--squat", SQUAT, "--victim", "site-a", "--volume", VOL],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        squats = [json.loads(attacker.stdout.readline()) for _ in range(2)]
        assert [(r["attempt"], r["error"]) for r in squats] == [("squat_victim", "not_self"), ("squat_own", "ok")]
        c.start("site-a")
        c.wait_for(f"site-a registered {VOL}", lambda: c.status("site-a")["volumes"][VOL].get("epoch") == 1, 90)
        overwrite_blocks(c.sites["site-a"].volume_path(VOL), [1], random.Random(1))
        assert snapshot(c, "site-a")["committed"]  # the squatted name did not stop site-a's other volume
        out, err = attacker.communicate(timeout=120)
        got = {r["attempt"]: r for r in map(json.loads, out.splitlines())}
        assert {k: r["error"] for k, r in got.items()} == {
            "forever": "bad_request", "longer": "approval_required", "longer_request": "ok", "suspect": "ok"}, err
        assert got["longer_request"]["status"] == "pending"
        request = got["longer_request"]["request"]
        for site in ("site-a", "site-b"):
            vols = c.api(site, "GET", "/v1/volumes")["volumes"]
            assert vols[VOL]["retention"]["lock_s"] == 86400, (site, vols[VOL])  # unchanged: pending
            assert vols[SQUAT]["primary"] == "site-c" and vols[SQUAT]["block_size"] == 4096
            pending = [r for r in c.api(site, "GET", "/v1/requests")["requests"] if r["id"] == request]
            assert [(r["status"], r["by"]) for r in pending] == [("pending", "site-c")]
            assert refused(c, site, "not_self") >= 1
            assert gauge(c, site, "replicad_volume_registration_mismatch", SQUAT) == 1
            assert gauge(c, site, "replicad_volume_registration_mismatch", VOL) == 0
        c.wait_for("the audit lines", lambda: all(
            "AUDIT mark_verdict of volume ehr by site-c" in c.sites[s].log_path.read_text() for s in ("site-a", "site-b")),
            30)
        for site in ("site-a", "site-b"):
            log = c.sites[site].log_path.read_text()
            mismatch = [line for line in log.splitlines() if "ERROR" in line and f"AUDIT volume {SQUAT}" in line]
            assert mismatch and "(by site-c)" in mismatch[0] and "HOLDS the volume" in mismatch[0], c.log_tail(site)
            assert f"AUDIT request {request} by site-c: set_retention" in log
        assert "AUDIT add_volume of volume pacs by site-c" in c.sites["site-b"].log_path.read_text()
        # site-a's live pacs volume: never a standby of site-c's registration
        assert hashlib.sha256(c.sites["site-a"].volume_path(SQUAT).read_bytes()).hexdigest() == live
        held = c.status("site-a")["volumes"][SQUAT]
        assert held.get("standby_seq") is None and held["last_error"].startswith("held: "), held
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
            attacker.communicate(timeout=30)
        c.stop_all()
