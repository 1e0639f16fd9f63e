"""Drill evidence (issue 16, item 5) on three real sites: ``replicad drill`` runs a drill of an
ext4 volume as an operator token, writes the signed HTML report (e2fsck -fn passed, the
application check hook passed, who and when, RPO and RTO) and, with ``--pdf``, its print by
headless Chromium beside it; ``replicad drill verify`` accepts it
against the pinned key and refuses an edited copy; a drill whose check fails is reported
FAILED (exit 1) and does not move ``replicad_drill_last_success_timestamp_seconds``, which
survives a restart of the site."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster

from .conftest import VOL, snapshot

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]  # this checkout's replicad, whatever is installed
TOKENS = {"otto": ("operator", "operator-token-abcdefghijklmnopqrstuvwxyz"),
          "ada": ("admin", "admin-token-abcdefghijklmnopqrstuvwxyz")}


def _mke2fs() -> str:
    path = shutil.which("mke2fs") or ("/usr/sbin/mke2fs" if os.access("/usr/sbin/mke2fs", os.X_OK) else None)
    if path is None:
        pytest.skip("mke2fs is not installed (e2fsprogs)")
    return path


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.timeout(150)
def test_drill_writes_a_signed_report_that_verify_accepts_and_a_failed_check_is_reported(tmp_path: Path) -> None:
    mke2fs = _mke2fs()
    fail_marker = tmp_path / "FAIL"
    # the application check: the image exists and is not empty; fails while the marker file exists
    check = [sys.executable, "-c",
             "import os,sys; print('checked', sys.argv[1]); "
             "sys.exit(3 if os.path.exists(sys.argv[2]) else 0 if os.path.getsize(sys.argv[1]) else 1)",
             "{image}", str(fail_marker)]
    extra = f'[volumes.drill]\ncheck = {json.dumps(check)}\ncheck_timeout = "30s"\n'
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, tokens={"site-a": TOKENS},
                     extra_volume_toml=extra)
    img = c.sites["site-a"].volume_path(VOL)
    subprocess.run([mke2fs, "-q", "-F", "-t", "ext4", "-b", "4096", str(img), "8M"], check=True,
                   capture_output=True)
    token_file = tmp_path / "otto.token"
    token_file.write_text(TOKENS["otto"][1] + "\n")
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "replicad", *args], capture_output=True, text=True, timeout=90,
                              cwd=tmp_path, env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)})

    with c:
        c.start_all()
        c.wait_ready(60)
        assert snapshot(c, "site-a")["committed"]
        admin = ["--admin", c.sites["site-a"].admin_url, "--token-file", str(token_file)]

        report = tmp_path / "drill-ehr.html"
        # a PDF print beside it (--pdf, headless Chromium) when a browser is installed
        pdf = ["--pdf"] if shutil.which("chromium") else []
        run = cli("drill", VOL, "--sandbox", str(sandbox), "--report", str(report), *pdf, *admin)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "PASSED" in run.stdout and str(report) in run.stdout
        if pdf:
            printed = report.with_suffix(".pdf").read_bytes()
            assert printed[:5] == b"%PDF-" and str(report.with_suffix(".pdf")) in run.stdout, run.stdout
            title = re.search(rb"/Title \((replicad drill report: [^)]*)\)", printed)
            assert title and title.group(1).startswith(f"replicad drill report: {VOL} #1 ".encode()), title
            again = cli("drill", VOL, "--sandbox", str(sandbox), "--report", str(tmp_path / "drill-ehr"), "--pdf",
                        *admin)  # its PDF would be drill-ehr.pdf, which exists: refused before the drill
            assert again.returncode == 2 and "never overwritten" in again.stderr, again.stdout + again.stderr
            assert not (tmp_path / "drill-ehr").exists()
        assert not list(sandbox.iterdir())  # the drill image was deleted after the checks

        text = report.read_text()
        ok = cli("drill", "verify", str(report), "--config", str(c.sites["site-b"].config_path), "--json")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        verified = json.loads(ok.stdout)
        assert verified["valid"] and verified["site_id"] == "site-a" and verified["volume"] == VOL
        assert verified["ran_by"] == {"token": "otto", "role": "operator"} and verified["outcome"] == "passed"
        signed = json.loads(re.search(r'<pre id="replicad-signed-report">(.*?)</pre>', text, re.S).group(1)
                            .replace("&quot;", '"'))
        assert signed["fsck"]["checked"] and signed["fsck"]["ok"] and signed["fsck"]["tool"] == "e2fsck -fn"
        assert signed["application_check"]["ok"] and "checked " in signed["application_check"]["output_tail"]
        assert signed["snapshot"]["seq"] == 1 and signed["restore"]["verified"]
        assert signed["rpo"]["measured_s"] >= 0 and signed["rpo"]["within_target"]
        assert signed["rto"]["measured_s"] > 0
        kept = list((c.sites["site-a"].dir / "data" / "drills" / VOL).glob("*.html"))
        assert [p.read_text() for p in kept] == [text]  # the site keeps the same report

        edited = tmp_path / "edited.html"
        edited.write_text(text.replace("PASSED", "PASSED (all good)", 1))
        bad = cli("drill", "verify", str(edited), "--config", str(c.sites["site-b"].config_path))
        assert bad.returncode == 5 and "edited" in bad.stderr, bad.stdout + bad.stderr
        missing = cli("drill", "verify", str(tmp_path / "nope.html"), "--config", str(c.sites["site-b"].config_path))
        assert missing.returncode == 3

        def scrape() -> str:
            with urllib.request.urlopen(c.sites["site-a"].admin_url + "/metrics", timeout=10) as resp:
                return resp.read().decode()

        first = _metric(scrape(), "replicad_drill_last_success_timestamp_seconds", volume=VOL)
        assert first and first > 1.6e9
        assert _metric(scrape(), "replicad_drill_last_success_timestamp_seconds", site="site-b", volume=VOL) is None

        fail_marker.write_text("make the application check fail")
        failed = cli("drill", VOL, "--sandbox", str(sandbox), "--report", str(tmp_path / "failed.html"), *admin)
        assert failed.returncode == 1 and "FAILED" in failed.stdout, failed.stdout + failed.stderr
        assert "FAILED" in (tmp_path / "failed.html").read_text()
        after = scrape()
        assert _metric(after, "replicad_drill_last_success_timestamp_seconds", volume=VOL) == first
        assert _metric(after, "replicad_drill_runs_total", volume=VOL, outcome="failed") == 1
        assert _metric(after, "replicad_drill_runs_total", volume=VOL, outcome="passed") == 1

        # a --report that cannot be written is refused before the drill runs (nothing restored)
        bad_path = cli("drill", VOL, "--sandbox", str(sandbox), "--report", str(tmp_path / "no-dir" / "r.html"), *admin)
        assert bad_path.returncode == 2 and "does not exist" in bad_path.stderr, bad_path.stdout + bad_path.stderr
        assert _metric(scrape(), "replicad_drill_runs_total", volume=VOL, outcome="failed") == 1

        # restoring a snapshot judged suspect is no recovery drill: FAILED, never a last success
        fail_marker.unlink()
        # a site's mark holds its own standby only: the operators of three sites mark it (site-a's turns
        # it; two sites' marks may be one site's and a stolen admin token's: review R7, F2)
        for site in ("site-b", "site-c", "site-a"):
            c.api(site, "POST", f"/v1/volumes/{VOL}/snapshots/1/verdict", {"verdict": "suspect",
                                                                         "reason": "the operator saw ransom notes"})
        bad = cli("drill", VOL, "--sandbox", str(sandbox), "--snapshot", "1", "--report",
                  str(tmp_path / "suspect.html"), *admin)
        assert bad.returncode == 1 and "SUSPECT" in bad.stderr, bad.stdout + bad.stderr
        assert "judged suspect" in (tmp_path / "suspect.html").read_text()
        after = scrape()
        assert _metric(after, "replicad_drill_last_success_timestamp_seconds", volume=VOL) == first
        assert _metric(after, "replicad_drill_runs_total", volume=VOL, outcome="failed") == 2

        c.kill("site-a", signal.SIGTERM)
        c.start("site-a")
        c.wait_ready(60)
        assert _metric(scrape(), "replicad_drill_last_success_timestamp_seconds", volume=VOL) == first
