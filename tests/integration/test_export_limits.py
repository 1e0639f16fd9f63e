"""The idle limit of exports (issue 16: an operator token must not pin snapshots for ever), with
real daemons.

site-b's ``[admin] export_idle_ttl`` is 10 minutes. ``replicad export --ttl 1h`` is refused
(a request may shorten the limit, never lengthen it) and nothing is opened. An export of #1
with ``--ttl 3s`` pins #1 against retention after Raft pruned it (``exported_kept``); once
nobody used it for 3 s, the site closes it by itself (WARNING in its log, gone from
``GET /v1/exports``), and the next retention run forgets #1 (the pin is released). An export
opened without ``--ttl`` carries the site's 10 minutes and is listed with it.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from replicad.lab.localcluster import NO_FLOOR_TOML, LocalCluster

from .conftest import VOL, snapshot, write_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RETENTION = '[volumes.retention]\nkeep_all = "1h"\nhourly = "1h"\ndaily = "1h"\nlock = "1s"\n'


def test_an_idle_export_is_closed_and_its_pin_released() -> None:
    root = Path(tempfile.mkdtemp(prefix="rxl", dir="/tmp"))  # short: unix socket paths stay under 108 bytes
    c = LocalCluster(root / "c", interval="1h", min_copies=2, extra_volume_toml=RETENTION,
                     extra_site_toml=NO_FLOOR_TOML)
    cfg = c.sites["site-b"].config_path
    cfg.write_text(cfg.read_text().replace("[admin]\n", '[admin]\nexport_idle_ttl = "10m"\n', 1))
    write_image(c.sites["site-a"].volume_path(VOL), 24, random.Random(4))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites["site-b"].admin_url, *args],
                              capture_output=True, text=True, timeout=60)

    try:
        with c:
            c.start_all()
            c.wait_ready(60)
            first = snapshot(c, "site-a")
            assert first["committed"] and first["seq"] == 1, first
            # site-b's view may not list #1 yet (it was committed at site-a a moment ago): wait, bounded
            c.wait_for("site-b holds #1", lambda: any(
                s["seq"] == 1 and "site-b" in s["holders"]
                for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]), 60)

            longer = cli("export", VOL, "--snapshot", "1", "--ttl", "1h")
            assert longer.returncode == 2 and "export_idle_ttl" in longer.stderr, longer.stdout + longer.stderr
            assert c.api("site-b", "GET", "/v1/exports")["exports"] == []

            made = cli("--json", "export", VOL, "--snapshot", "1", "--ttl", "3s")
            assert made.returncode == 0, made.stderr
            short = json.loads(made.stdout)
            assert short["idle_ttl_s"] == 3.0 and Path(short["socket"]).exists(), short
            plain = json.loads(cli("--json", "export", VOL, "--snapshot", "1").stdout)
            assert plain["idle_ttl_s"] == 600.0, plain  # the site's limit when none is asked
            listed = json.loads(cli("--json", "export").stdout)["exports"]
            assert {e["export_id"]: e["idle_ttl_s"] for e in listed} == {short["export_id"]: 3.0,
                                                                        plain["export_id"]: 600.0}

            assert snapshot(c, "site-a")["seq"] == 2
            # past its lock, kept by the agreed retention (keep_all 1h): a request site-c approves
            req = c.wait_for("the lock window of #1 to pass", lambda: c.api(
                "site-a", "POST", f"/v1/volumes/{VOL}/prune", {"seqs": [1]}).get("request"), timeout_s=20)
            assert c.api("site-c", "POST", f"/v1/requests/{req}/approve", {})["status"] == "applied"
            c.wait_for("site-b to see #1 pruned", lambda: all(
                s["seq"] != 1 for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")["snapshots"]), 30)
            rep = c.api("site-b", "POST", f"/v1/volumes/{VOL}/retention/run", {})
            assert 1 in rep.get("exported_kept", []), rep  # pinned by the two exports

            c.api("site-b", "DELETE", f"/v1/exports/{plain['export_id']}")
            c.wait_for("the idle export is closed by the site", lambda: c.api("site-b", "GET", "/v1/exports")
                       ["exports"] == [], timeout_s=60)
            assert not Path(short["socket"]).exists()
            log = c.sites["site-b"].log_path.read_text()
            assert f"export {short['export_id']} of {VOL}#1 closed after" in log and "pin is released" in log, \
                c.log_tail("site-b")
            rep = c.api("site-b", "POST", f"/v1/volumes/{VOL}/retention/run", {})
            assert rep["forgotten"] >= 1 and not rep.get("exported_kept"), rep
    finally:
        shutil.rmtree(root, ignore_errors=True)
