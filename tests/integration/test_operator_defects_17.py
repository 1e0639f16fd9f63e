"""Issue 17 on three real sites, through the real CLI: a demoted volume (no primary) is a
degraded site and 'promote --to' says to run 'promote --force' at the site to promote (item 7);
a restore into a missing directory says so (item 13/14); the first snapshot's judge line says
'first snapshot' (item 13/14); 'replicad evidence' and 'replicad detection' answer (item 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import VOL, snapshot


def cli(c, site: str, *args: str) -> subprocess.CompletedProcess:
    token = c.default_token(site)
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", **({"REPLICAD_TOKEN": token} if token else {})}
    return subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites[site].admin_url, *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parents[2])


def test_a_demoted_volume_is_degraded_and_a_missing_restore_directory_is_named(cluster_factory, tmp_path) -> None:
    c = cluster_factory()
    first = snapshot(c, "site-a")
    c.wait_for("site-a judged the first snapshot", lambda: "first snapshot: the data later ones" in
               c.log_tail("site-a", 400), 60)
    assert "vs #None" not in c.log_tail("site-a", 400)

    res = cli(c, "site-a", "evidence", VOL, str(first["seq"]))
    assert res.returncode == 0 and f"{VOL}#{first['seq']}: clean" in res.stdout, res.stdout + res.stderr
    res = cli(c, "site-a", "detection", VOL)
    assert res.returncode == 0 and "min_score" in res.stdout, res.stdout + res.stderr

    res = cli(c, "site-b", "restore", VOL, "--target", str(tmp_path / "no-such-dir" / "x.img"))
    err = " ".join(res.stderr.split())
    assert res.returncode == 3 and f"the directory {tmp_path / 'no-such-dir'}" in err and "does not exist" in err, err

    res = cli(c, "site-a", "demote", VOL)
    assert res.returncode == 0, res.stderr
    c.wait_for("site-b sees no primary", lambda: c.status("site-b")["volumes"][VOL].get("primary") is None, 60)
    res = cli(c, "site-b", "status")
    err = " ".join(res.stderr.split())
    assert res.returncode == 1 and f"{VOL}: no primary" in err and f"replicad promote {VOL} --force" in err, err
    assert "NONE (demoted)" in res.stdout
    res = cli(c, "site-b", "promote", VOL, "--to", "site-b")
    err = " ".join(res.stderr.split())
    assert res.returncode == 4 and "has no primary" in err and f"'replicad promote {VOL} --force' AT the site" in err, err
    assert "Traceback" not in res.stderr
