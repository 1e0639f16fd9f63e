"""The ``replicad`` command line as an operator runs it (a real subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[3] / "config"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicad", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["site-a.toml", "site-b.toml", "site-c.toml", "witness.toml"])
def test_check_config_accepts_samples(name: str, sample_configs: Path) -> None:
    res = run("check-config", str(sample_configs / name))
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout


@pytest.mark.parametrize("path", sorted((CONFIG / "invalid").glob("*.toml")), ids=lambda p: p.name)
def test_check_config_rejects_invalid_samples_with_their_message(path: Path, sample_configs: Path) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect:").strip()
    res = run("check-config", str(sample_configs / "invalid" / path.name))
    assert res.returncode == 2
    assert expected in " ".join(res.stderr.split()), res.stderr
    assert "Traceback" not in res.stderr


def test_check_config_refuses_a_raft_key_readable_by_others(sample_configs: Path, tmp_path: Path) -> None:
    key = tmp_path / "demo-raft.key"  # as the sample config names it, beside it
    key.write_bytes((sample_configs / "demo-raft.key").read_bytes())
    site_key = tmp_path / "demo-identity-site-a.key"
    site_key.write_bytes((sample_configs / "demo-identity-site-a.key").read_bytes())
    site_key.chmod(0o600)
    config = tmp_path / "site-a.toml"
    config.write_text((sample_configs / "site-a.toml").read_text())
    for mode in (0o644, 0o640, 0o604):
        key.chmod(mode)
        res = run("check-config", str(config))
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        text = " ".join(res.stderr.split())
        assert f"raft.password_file: {key} is accessible by group or others (mode {mode:04o})" in text, text
        assert f"chmod 600 {key}" in text
    for mode in (0o600, 0o400):
        key.chmod(mode)
        res = run("check-config", str(config))
        assert res.returncode == 0, res.stderr


def test_missing_config_file_is_a_clear_error() -> None:
    res = run("check-config", "/nonexistent/replicad.toml")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "cannot read" in res.stderr


def test_audit_verify_of_a_missing_file_is_not_found_not_intact(tmp_path: Path) -> None:
    res = run("audit", "verify", str(tmp_path / "admin-audit.jsonl"))  # a mistyped path must not pass
    assert res.returncode == 3 and "not_found" in res.stderr and "intact" not in res.stdout + res.stderr
    assert "Traceback" not in res.stderr


def test_status_problems_say_why_a_site_is_degraded() -> None:
    from replicad.cli import status_problems

    healthy = {"raft": {"leader": "127.0.0.1:7101", "has_quorum": True, "synced": True},
               "members": [{"site_id": "site-a", "self": True, "reachable": True},
                           {"site_id": "site-b", "self": False, "reachable": True}],
               "interrupted_restores": [],
               "volumes": {"ehr": {"role": "replica", "last_error": None, "newest_committed": 4, "newest_clean": 4},
                           "pacs": {"role": "primary", "last_error": None, "newest_committed": None,
                                    "newest_clean": None}}}
    assert status_problems(healthy) == []
    sick = {**healthy, "raft": {"leader": None, "has_quorum": False, "synced": False},
            "members": [healthy["members"][0], {"site_id": "site-b", "self": False, "reachable": False}],
            "interrupted_restores": ["/var/lib/replicad/ehr-copy.img"], "store": {"repairs_pending": 2},
            "volumes": {"ehr": {"role": "divergent", "last_error": "peer_unavailable: site-b",
                                "newest_committed": 6, "newest_clean": 4,
                                "last_report": {"peers": {
                                    "site-b": {"ok": False, "error": "peer_unavailable",
                                               "message": "certificate has expired"},
                                    "site-c": {"ok": False, "error": "straggler", "message": "still shipping"},
                                    "site-d": {"ok": True}}}}}}
    assert status_problems(sick) == [
        "no Raft leader", "no Raft quorum", "this site's Raft view is not current", "site site-b unreachable",
        "2 chunks lost here are being re-fetched from the other sites (new snapshots are refused here until then)",
        "a restore into /var/lib/replicad/ehr-copy.img was interrupted", "ehr: last error: peer_unavailable: site-b",
        "ehr: newest snapshot #6 is suspect (newest clean: 4)", "ehr: this site is divergent (resync pending)",
        "ehr: the last snapshot was not stored at site-b: peer_unavailable: certificate has expired"]


def test_identity_show_takes_the_config_before_or_after_the_command(sample_configs: Path) -> None:
    cfg = str(sample_configs / "site-a.toml")
    before, after = run("--json", "--config", cfg, "identity", "show"), run("identity", "show", "--config", cfg, "--json")
    assert before.returncode == 0 and after.returncode == 0, (before.stderr, after.stderr)
    assert before.stdout == after.stdout and '"site_id": "site-a"' in before.stdout
    missing = run("identity", "show")
    assert missing.returncode == 2 and "--config" in missing.stderr and "Traceback" not in missing.stderr


def test_an_unconfirmed_role_is_printed_with_a_question_mark_and_makes_the_site_degraded() -> None:
    from replicad.cli import _role_shown, status_problems

    stale = {"site_id": "site-a", "raft": {"leader": None, "has_quorum": False, "synced": False},
             "view": {"current": False, "age_s": 312.0, "why": "no Raft leader known"},
             "volumes": {"ehr": {"role": "primary", "confirmed": False, "acting_epoch": 1}}}
    assert _role_shown(stale["volumes"]["ehr"]) == "primary?"
    assert _role_shown({"role": "primary", "confirmed": True}) == "primary"
    assert _role_shown({"role": "replica"}) == "replica"  # an older site's status: no flag, no mark
    problems = status_problems(stale)
    assert any("role primary is this site's belief" in p and "no Raft record" in p for p in problems), problems
