"""The ``replicad`` command line as an operator runs it (a real subprocess; the help of each command also
through the same ``main()`` in this process)."""

from __future__ import annotations

import hashlib
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
        "a restore into /var/lib/replicad/ehr-copy.img was interrupted: that file is incomplete (restore into it "
        "again with --overwrite if it is to be used)", "ehr: last error: peer_unavailable: site-b",
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


# --------------------------------------------------------------------------- issue 16, item 6
import json as _json
import os as _os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@pytest.fixture
def admin_stub():
    """A minimal HTTP server answering fixed JSON per path (``answers[path] = (status, body)``),
    for CLI rendering; stopped at teardown."""
    answers: dict[str, tuple[int, object]] = {}
    received: list[tuple[str, str, object]] = []
    answers["__received__"] = received  # type: ignore[assignment]  # (method, path, JSON body) of every request

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            received.append((self.command, self.path, _json.loads(raw) if raw else None))
            status, body = answers.get(self.path, (404, {"error": "not_found", "message": "no", "evidence": {}}))
            data = _json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()


def run_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicad", *args], capture_output=True, text=True, timeout=60,
                          env={**_os.environ, **env})


STATUS = {"site_id": "site-a", "raft": {"leader": "127.0.0.1:7101", "term": 3, "commit_index": 812,
                                        "has_quorum": True, "synced": True},
          "raft_sites": {"127.0.0.1:7101": "site-a"}, "view": {"current": True},
          "members": [{"site_id": "site-a", "self": True, "reachable": True},
                      {"site_id": "site-b", "self": False, "reachable": True}],
          "interrupted_restores": [],
          "volumes": {"radiology-archive": {"role": "replica", "primary": "site-b", "epoch": 12, "confirmed": True,
                                            "newest_committed": 10452, "newest_clean": 10452, "standby_seq": 10450,
                                            "standby_lag_snapshots": 2, "rpo_s": 8.25, "suspect": [977, 978],
                                            "divergent": [{"epoch": 11, "seq": 10433}],
                                            "last_error": "peer_unavailable: site-c admin endpoint unreachable"}}}


def test_status_is_readable_at_80_columns(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/status"] = (200, STATUS)
    res = run_env({"COLUMNS": "80"}, "--admin", url, "status")
    assert res.returncode == 1, res.stderr  # the last error makes it degraded
    lines = res.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    text = res.stdout
    for whole in ("radiology-archive", "replica", "site-b", "10452", "10450 (2 behind)", "977,978", "11:10433",
                  "8.2"):
        assert whole in text, (whole, text)
    assert "…" not in text


def test_snapshot_not_committed_exits_nonzero(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/volumes/ehr/snapshot"] = (200, {"seq": 7, "committed": False, "verdict": "clean", "score": 0.0,
                                                  "changed_blocks": 3, "holders": ["site-a"], "peers": {}})
    res = run_env({}, "--admin", url, "snapshot", "ehr")
    assert res.returncode == 7 and "not committed" in res.stderr, res.stdout + res.stderr
    res = run_env({}, "--admin", url, "--json", "snapshot", "ehr")
    assert res.returncode == 7 and _json.loads(res.stdout)["committed"] is False


def test_a_snapshot_suspect_by_descent_says_so(admin_stub) -> None:
    # operator trial: "#8: committed, suspect (commit-time screen 0.0 %...)" read as a contradiction
    url, answers = admin_stub
    reason = "descends from suspect snapshot #7; an operator clears it with 'replicad verdict ehr 7 clean'"
    answers["/v1/volumes/ehr/snapshot"] = (200, {"seq": 8, "committed": True, "verdict": "suspect", "score": 0.0,
                                                  "verdict_reason": reason, "changed_blocks": 1,
                                                  "holders": ["site-a", "site-b"], "peers": {}})
    res = run_env({}, "--admin", url, "snapshot", "ehr")
    assert res.returncode == 0 and "suspect because: " + reason in " ".join(res.stdout.split()), res.stdout


def test_a_snapshot_clean_at_the_primary_is_not_called_clean_and_the_clusters_verdict_is_shown(admin_stub) -> None:
    """Operator trial: "snapshot #10: committed, clean (commit-time screen 0.0 % ...)", exit 0,
    while all three sites judged #10 suspect (a mass rename) seconds later. The screen's result
    is named as what it is, the cluster's verdict as read when the command returns, and the
    commands that show the verdicts later; the exit code stays 0 for a committed snapshot."""
    url, answers = admin_stub
    answers["/v1/volumes/ehr/snapshot"] = (200, {"seq": 10, "committed": True, "verdict": "clean", "score": 0.0,
                                                  "baseline": 0.0, "changed_blocks": 40,
                                                  "holders": ["site-a", "site-b", "site-c"], "peers": {}})
    res = run_env({}, "--admin", url, "snapshot", "ehr")  # the snapshots list is not answered: "not read"
    out = " ".join(res.stdout.split())
    assert res.returncode == 0 and "snapshot #10: committed, 40 changed blocks" in out, out
    assert "committed, clean" not in out and "the primary's commit-time screen found nothing" in out, out
    assert "that is not the verdict: every site judges #10 itself next" in out, out
    assert "the cluster's verdict was not read; the verdicts later: replicad snapshots ehr" in out, out
    assert "replicad evidence ehr 10" in out, out
    answers["/v1/volumes/ehr/snapshots"] = (200, {"volume": "ehr", "epoch": 1, "primary": "site-a", "snapshots": [
        {"seq": 10, "verdict": "suspect", "holders": ["site-a", "site-b", "site-c"],
         "opinions": {"site-b": {"verdict": "suspect"}, "site-c": {"verdict": "suspect"},
                      "site-a": {"verdict": "clean"}}}]})
    res = run_env({}, "--admin", url, "snapshot", "ehr")
    out = " ".join(res.stdout.split())
    assert res.returncode == 0, out
    assert ("the cluster's verdict now: suspect (the sites' own verdicts so far: suspect at site-b, site-c; "
            "clean at site-a)") in out, out


def test_json_errors_are_json(admin_stub) -> None:
    url, _ = admin_stub
    res = run_env({}, "--admin", url, "--json", "snapshots", "nope")
    assert res.returncode == 3
    assert _json.loads(res.stdout) == {"error": "not_found", "message": "no", "evidence": {}}
    res = run_env({}, "--admin", "http://127.0.0.1:1", "--json", "status")
    assert res.returncode == 7 and _json.loads(res.stdout)["error"] == "peer_unavailable"


def test_requests_are_printed_readably(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/requests"] = (200, {"site_id": "site-a", "requests": [{
        "id": "r3", "by": "site-a", "action": "set_retention", "status": "pending", "approvals": ["site-a"],
        "needed": 2, "reason": "less disk", "expires_ns": 1_900_000_000 * 10**9,
        "args": {"volume": "ehr", "retention": {"keep_all_s": 86400, "hourly_s": 604800, "daily_s": 2592000,
                                                "lock_s": 172800}},
        "previous": {"keep_all_s": 172800, "hourly_s": 604800, "daily_s": 2592000, "lock_s": 604800}}]})
    res = run_env({}, "--admin", url, "requests")
    text = " ".join(res.stdout.split())
    assert res.returncode == 0, res.stderr
    assert "retention: keep_all 1d, hourly 7d, daily 30d, lock 2d" in text, text
    assert "was keep_all 2d" in text and "_s" not in text and "{" not in text, text


def test_request_booleans_are_words_as_in_toml(admin_stub) -> None:
    """Operator trial: ``requests`` showed ``force: True``."""
    url, answers = admin_stub
    answers["/v1/requests"] = (200, {"site_id": "site-a", "requests": [{
        "id": "r4", "by": "site-b", "action": "promote", "status": "pending", "approvals": ["site-b"],
        "needed": 2, "reason": "", "expires_ns": 1_900_000_000 * 10**9,
        "args": {"volume": "ehr", "to": "site-b", "force": True, "instant": False}}]})
    res = run_env({}, "--admin", url, "requests")
    text = " ".join(res.stdout.split())
    assert res.returncode == 0 and "force: true" in text and "instant: false" in text, text
    assert "True" not in text and "False" not in text, text


def test_snapshots_at_80_columns_keep_holders_and_roots_whole(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/volumes/radiology-archive/snapshots"] = (200, {
        "volume": "radiology-archive", "epoch": 3, "primary": "site-a", "divergent": [], "previous": [],
        "snapshots": [{"seq": 10452, "epoch": 3, "verdict": "suspect", "created_at_ns": 1_800_000_000 * 10**9,
                       "holders": ["site-a", "site-b", "site-c"], "stats": {"changed_blocks": 977},
                       "root": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]})
    res = run_env({"COLUMNS": "80"}, "--admin", url, "snapshots", "radiology-archive")
    lines = res.stdout.splitlines()
    assert res.returncode == 0 and all(len(line) <= 80 for line in lines), res.stdout
    text = " ".join(res.stdout.split())
    for whole in ("#10452", "suspect", "site-a, site-b, site-c", "977 changed blocks", "9f86d081884c7d65",
                  "UTC"):
        assert whole in text, (whole, res.stdout)
    assert "…" not in res.stdout


def test_audit_log_has_a_command(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/audit?limit=200"] = (200, {"audit": [{"op": "promote", "by": "site-b", "volume": "ehr", "ok": True,
                                                       "error": None, "at_ns": 1_800_000_000 * 10**9},
                                                      {"op": "prune", "by": "site-a", "volume": "ehr", "ok": False,
                                                       "error": "retention_locked", "at_ns": 1_800_000_100 * 10**9}]})
    res = run_env({}, "--admin", url, "audit", "log")
    assert res.returncode == 0, res.stderr
    assert "promote" in res.stdout and "site-b" in res.stdout and "refused: retention_locked" in res.stdout
    # rules 4: one signing site's share, and what each share dropped (a flood drops only its own)
    answers["/v1/audit?limit=50&signer=site-a"] = (200, {"rules": 4, "dropped": {"site-c": [5210, 9000], "": [3, 80]},
                                                        "audit": [{"op": "request", "by": "site-a", "volume": None,
                                                                   "ok": True, "error": None, "signer": "site-a",
                                                                   "n": 40, "at_ns": 1_800_000_000 * 10**9},
                                                                  {"op": "approve", "by": "site-a", "volume": None,
                                                                   "ok": False, "error": "bad_signature",
                                                                   "signer": None, "n": 41,
                                                                   "at_ns": 1_800_000_001 * 10**9}]})
    res = run_env({"COLUMNS": "200"}, "--admin", url, "audit", "log", "--signer", "site-a", "--limit", "50")
    assert res.returncode == 0, res.stderr
    assert "site-a (unchecked claim)" in res.stdout and "records dropped from the kept audit, by share: " \
        "unattributed 3, site-c 5210" in " ".join(res.stdout.split()), res.stdout


def test_run_and_check_config_take_the_path_positionally_or_as_config(sample_configs: Path) -> None:
    for args in (("check-config", str(sample_configs / "site-b.toml")),
                 ("check-config", "--config", str(sample_configs / "site-b.toml")),
                 ("--config", str(sample_configs / "site-b.toml"), "check-config")):
        res = run(*args)
        assert res.returncode == 0 and "ok" in res.stdout, (args, res.stderr)
    res = run("check-config")
    assert res.returncode == 2 and "--config FILE" in res.stderr and "Traceback" not in res.stderr


def test_every_command_has_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    from replicad.cli import EXAMPLES, main

    res = run("promote", "--help")  # as an operator asks it
    assert res.returncode == 0 and "examples:" in res.stdout and "replicad promote" in res.stdout, res.stdout[-300:]
    for name in EXAMPLES:  # the same main() in this process (argparse prints the help and exits 0)
        with pytest.raises(SystemExit) as exited:
            main([name, "--help"])
        out = capsys.readouterr().out
        assert exited.value.code == 0 and "examples:" in out and "replicad " + name.split()[0] in out, \
            (name, out[-300:])


def test_check_config_lists_cross_field_problems_beside_a_wrong_field(sample_configs: Path, tmp_path: Path) -> None:
    text = (sample_configs / "site-a.toml").read_text()
    for key in ("demo-raft.key", "demo-identity-site-a.key"):
        (tmp_path / key).write_bytes((sample_configs / key).read_bytes())
        (tmp_path / key).chmod(0o600)
    bad = text.replace('interval = "10s"', 'interval = "ten"', 1).replace(
        'initial_primary = "site-a"', 'initial_primary = "site-z"', 1).replace("min_copies = 2", "min_copies = 9", 1)
    assert bad != text
    (tmp_path / "site-a.toml").write_text(bad)
    res = run("check-config", str(tmp_path / "site-a.toml"))
    err = " ".join(res.stderr.split())
    assert res.returncode == 2, err
    assert "volumes[0].interval: invalid duration 'ten'" in err
    assert "volumes[0].initial_primary: 'site-z' is not a site" in err
    assert "volumes[0].min_copies: 9 is more than the 3 data site(s)" in err


# --------------------------------------------------------------------------- issue 17
OFFLINE = ("run", "check-config", "hash-token", "identity init", "audit verify")


@pytest.mark.parametrize("command", OFFLINE)
def test_offline_commands_do_not_offer_admin_or_token(command: str) -> None:
    res = run(*command.split(), "--help")
    assert res.returncode == 0, res.stderr
    assert "--admin" not in res.stdout and "--token" not in res.stdout, res.stdout


def test_help_pages_say_what_each_argument_is() -> None:
    text = lambda *a: " ".join(run(*a, "--help").stdout.split())  # noqa: E731
    promote = text("promote")
    assert "the site you talk to (--admin/--config) takes the volume over" in promote, promote
    assert "run it AT the site to promote" in promote
    restore = text("restore")
    assert "--target PATH file or block device ON THE SITE" in restore and "its directory must exist" in restore
    assert "--snapshot SEQ the committed snapshot to restore" in restore, restore
    assert "seq the snapshot's seq" in text("verdict")
    audit = text("audit", "verify")
    assert "peer-audit.jsonl" in audit and "admin-audit.jsonl" in audit and "not an audit log" in audit, audit
    for command in ("run", "check-config"):
        assert "config the site's config file" in text(command), command


def test_audit_verify_of_another_kind_of_file_says_it_is_no_audit_log(tmp_path: Path) -> None:
    other = tmp_path / "site-a.toml"
    other.write_text('site_id = "site-a"\n[raft]\nlisten = "127.0.0.1:7101"\n')
    res = run("audit", "verify", str(other))
    err = " ".join(res.stderr.split())
    assert res.returncode == 2 and "is not an audit log" in err and "peer-audit.jsonl" in err, err
    assert "BROKEN" not in res.stdout + res.stderr and "Traceback" not in res.stderr
    from replicad.storage.audit import AuditLog

    log = AuditLog(tmp_path / "admin-audit.jsonl")  # a real log, then damaged: still the chain check (exit 5)
    for i in range(3):
        log.append({"who": "ops", "role": "admin", "remote": "127.0.0.1", "method": "POST", "path": f"/v1/x/{i}",
                    "body": {}, "outcome": "ok", "status": 200, "error": None})
    lines = (tmp_path / "admin-audit.jsonl").read_text().splitlines()
    (tmp_path / "admin-audit.jsonl").write_text("\n".join([lines[0], lines[1].replace("/v1/x/1", "/v1/x/9"),
                                                           lines[2]]) + "\n")
    res = run("audit", "verify", str(tmp_path / "admin-audit.jsonl"))
    assert res.returncode == 5 and "chain BROKEN at record 2" in res.stdout, res.stdout + res.stderr


def test_a_bad_admin_url_names_the_default_admin_port() -> None:
    res = run("--admin", "http://[::1", "status")
    assert res.returncode == 2 and "7301" in res.stderr and "7003" not in res.stderr, res.stderr


def test_evidence_prints_every_sites_verdict_and_what_this_site_saw(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/volumes/ehr/snapshots/34/evidence"] = (200, {
        "volume": "ehr", "seq": 34, "verdict": "suspect", "verdict_reason": "judged suspect by site-a: text turned random",
        "confirmed": False, "disagreement": False,
        "opinions": {"site-a": {"verdict": "suspect", "score": 0.0625, "cumulative": 0.07, "first_seq": 34,
                                "reason": "50 data blocks turned random"},
                     "site-b": {"verdict": "suspect", "score": 0.0625, "cumulative": 0.07, "first_seq": 34,
                                "reason": "50 data blocks turned random"}},
        "marks": {"site-c": {"verdict": "suspect", "reason": "a ransom note on the share", "at_ns": 1_796_000_000 * 10**9,
                             "recorded_ns": 1_796_000_001 * 10**9}},
        "policy": {}, "here": {"site": "site-a", "verdict": "suspect", "score": 0.0625, "baseline": 0.0,
                               "cumulative": 0.07, "base_seq": 33, "first_suspect_seq": 34, "restore_seq": 33,
                               "reasons": ["50 data blocks turned random"], "signals": {"turned_random": 50},
                               "blocks": [{"index": 7}, {"index": 9}]}})
    res = run_env({}, "--admin", url, "evidence", "ehr", "34")
    text = " ".join(res.stdout.split())
    assert res.returncode == 0, res.stderr
    for part in ("ehr#34: suspect", "site-a", "site-b", "judged against #33", "restore point #33",
                 "50 data blocks turned random", "turned_random: 50 blocks", "7, 9",
                 "persons' marks", "site-c: suspect at 2026-11-30 00:53:21 UTC: a ransom note on the share"):
        assert part in text, (part, text)
    assert "DISAGREE" not in text


EVIDENCE = {
    "volume": "ehr", "seq": 12, "verdict": "suspect", "verdict_reason": "judged suspect by site-b: structure lost",
    "confirmed": False, "disagreement": False, "policy": {"mode": "content"},
    "opinions": {"site-b": {"verdict": "suspect", "score": 0.07342529296875001, "cumulative": 0.0812345678901234,
                            "first_seq": 12, "reason": "ext4 superblock destroyed"}},
    "here": {"site": "site-b", "verdict": "suspect", "score": 0.07342529296875001, "baseline": 0.000123456789012345,
             "cumulative": 0.0812345678901234, "base_seq": 11, "first_suspect_seq": 12, "restore_seq": 11,
             "reasons": ["7.3 % of the data turned random"],
             "signals": {"data_blocks": 4096, "changed_blocks": 301, "turned_random": 288, "fresh_random": 0,
                         "wiped": 0, "cold_rewritten": 12, "magic_destroyed": {"ext4": 2, "sqlite": 1},
                         "fs_destroyed": True, "shrunk_bytes": 0, "score": 0.07342529296875001, "ransom_note": 0},
             "blocks": [{"index": i, "entropy_after": 7.998} for i in [*range(100, 140), 150, 152, *range(200, 264)]],
             "ransom_notes": [{"index": 9, "patterns": ["how_to_decrypt"]}],
             "cpu_s": 0.123456789, "judged_at_ns": 1_796_000_000 * 10**9}}


def test_evidence_is_human_readable_and_its_json_exact(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/volumes/ehr/snapshots/12/evidence"] = (200, EVIDENCE)
    res = run_env({"COLUMNS": "120"}, "--admin", url, "evidence", "ehr", "12")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    for part in ("score 7.34 % (baseline 0.01 %, cumulative 8.12 %)", "    magic_destroyed:", "      ext4: 2 blocks",
                 "      sqlite: 1 block", "    fs_destroyed: yes", "    score: 7.34 %", "first suspicious #12",
                 "    data_blocks: 4096 blocks", "    changed_blocks: 301 blocks", "    shrunk_bytes: 0 bytes",
                 "restore point #11", "block 9: how_to_decrypt", "106 block(s) in the evidence: 100-139, 150, 152, "
                 "200-263", "in 0.12 CPU-s", "7.34 %"):
        assert part in text, (part, text)
    assert "{" not in text and "0.0734252" not in text and "0.08123" not in text  # no reprs, no 17 digits
    raw = run_env({}, "--admin", url, "--json", "evidence", "ehr", "12")
    assert raw.returncode == 0 and _json.loads(raw.stdout) == EVIDENCE


def test_evidence_and_exports_are_readable_at_80_columns(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/volumes/ehr/snapshots/12/evidence"] = (200, EVIDENCE)
    res = run_env({"COLUMNS": "80"}, "--admin", url, "evidence", "ehr", "12")
    assert res.returncode == 0, res.stderr
    assert "  site-b: suspect, score 7.34 %, cumulative 8.12 %, first suspect #12: ext4 superblock destroyed" \
        in res.stdout, res.stdout
    uri = "nbd+unix:///?socket=/var/lib/replicad/data/nbd/x0a1b2c3d.sock"
    answers["/v1/exports"] = (200, {"site_id": "site-a", "exports": [{
        "export_id": "x0a1b2c3d", "volume": "ehr", "seq": 7, "writable": False, "connections": 1,
        "bytes_read": 65536, "read_errors": 0, "uri": uri, "verdict": "clean", "idle_s": 0.0,
        "idle_ttl_s": 86400.0}]})
    res = run_env({"COLUMNS": "80"}, "--admin", url, "export")
    assert res.returncode == 0, res.stderr
    assert "x0a1b2c3d: ehr#7 (clean), read-only, 1 connection(s), 65536 bytes read, 0 read errors, idle 0s / 1d" \
        in res.stdout and f"  {uri}" in res.stdout and "…" not in res.stdout, res.stdout


def test_evidence_block_lists_are_shortened() -> None:
    from replicad.ops.evidenceview import block_ranges, percent

    assert block_ranges([7, 3, 4, 5, 9]) == "3-5, 7, 9"
    assert block_ranges(range(0, 60, 2), groups_max=3) == "0, 2, 4, … (27 more blocks)"
    assert (percent(0.5), percent(0.0625), percent(0.00001), percent(0), percent(None)) == \
        ("50.0 %", "6.25 %", "<0.01 %", "0 %", "-")


def test_detection_shows_the_policy_and_puts_a_change(admin_stub) -> None:
    url, answers = admin_stub
    policy = {"mode": "content", "min_score": 0.02, "window_s": 604800}
    answers["/v1/volumes/ehr/detection"] = (200, {"volume": "ehr", "detection": policy,
                                                  "effective_here": {**policy, "min_score": 0.01}})
    res = run_env({}, "--admin", url, "detection", "ehr")
    text = " ".join(res.stdout.replace("│", " ").split())
    assert res.returncode == 0 and "min_score 0.02 0.01" in text and "window_s 7d 7d" in text, text
    res = run_env({}, "--admin", url, "detection", "ehr", "--set", "min_score=0.01", "--set", "window_s=14d",
                  "--set", "mode=encrypted", "--reason", "after an incident")
    assert res.returncode == 0, res.stderr
    method, path, body = answers["__received__"][-1]  # type: ignore[index]
    assert (method, path) == ("PUT", "/v1/volumes/ehr/detection")
    assert body == {"detection": {"min_score": 0.01, "window_s": 14 * 86400, "mode": "encrypted"},
                    "reason": "after an incident"}
    res = run_env({}, "--admin", url, "detection", "ehr", "--set", "window_s=soon")
    assert res.returncode == 2 and "window_s=soon" in res.stderr and "Traceback" not in res.stderr


REBUILT = {**STATUS, "identity": {
    "cluster_id": "lab", "signed": True, "unsafe_unsigned": False,
    "public_key": ["ed25519:OLD=", "ed25519:NEW="], "signing_key": "ed25519:NEW=",
    "keys": [{"key": "ed25519:OLD=", "signs": False, "revoked": True},
             {"key": "ed25519:NEW=", "signs": True, "revoked": False}],
    "revoked": {"site-a": {"at_ns": 1, "by": "site-b", "keys": 1, "rejoined": True, "rejoined_ns": 2},
                "site-c": {"at_ns": 1, "by": "site-b", "keys": 1, "rejoined": False, "rejoined_ns": None}}}}


def test_status_shows_a_rejoined_site_and_the_key_it_signs_with(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/status"] = (200, REBUILT)
    res = run_env({"COLUMNS": "160"}, "--admin", url, "status")
    text = " ".join(res.stdout.split())
    assert "ed25519:NEW= [signs with]" in text and "ed25519:OLD= [REVOKED]" in text, text
    assert "rejoined: site-a" in text and "revoked: site-a" not in text, text
    assert "revoked: site-c" in text


def test_a_revoked_site_is_cut_off_as_intended_not_degrading_and_an_honest_unreachable_one_still_is(
        admin_stub) -> None:
    """After a revocation the revoked site is unreachable for good: ``replicad status`` names it
    revoked with what ends that, and exits 0; an unrevoked unreachable member still degrades."""
    from replicad.cli import status_problems

    members = [{"site_id": "site-b", "self": True, "reachable": True},
               {"site_id": "site-c", "self": False, "reachable": False}]
    revoked = {**REBUILT, "raft": {**STATUS.get("raft", {}), "leader": "127.0.0.1:7102", "has_quorum": True,
                                   "synced": True},
               "members": members, "volumes": {}, "interrupted_restores": [], "store": {}}
    assert status_problems(revoked) == []
    honest = {**revoked, "members": [*members, {"site_id": "site-d", "self": False, "reachable": False}]}
    assert status_problems(honest) == ["site site-d unreachable"]
    url, answers = admin_stub
    answers["/v1/status"] = (200, revoked)
    res = run_env({"COLUMNS": "160"}, "--admin", url, "status")
    text = " ".join(res.stdout.split())
    assert res.returncode == 0 and "degraded" not in res.stderr, (res.stdout, res.stderr)
    assert "site-c (revoked)" in text and "UNREACHABLE" not in text, text
    assert "revoked (cut off as intended)" in text and "replicad members propose" in text, text
    answers["/v1/status"] = (200, honest)
    res = run_env({"COLUMNS": "160"}, "--admin", url, "status")
    assert res.returncode == 1 and "site site-d unreachable" in res.stderr, (res.stdout, res.stderr)


def test_status_shows_no_primary_and_both_ages(admin_stub) -> None:
    url, answers = admin_stub
    vol = {**STATUS["volumes"]["radiology-archive"], "primary": None, "last_error": None, "rpo_s": 600.0,
           "newest_age_s": 60.0, "newest_committed": 12, "newest_clean": 10}
    answers["/v1/status"] = (200, {**STATUS, "volumes": {"ehr": vol}})
    res = run_env({"COLUMNS": "200"}, "--admin", url, "status")
    out, err = " ".join(res.stdout.split()), " ".join(res.stderr.split())
    assert res.returncode == 1, err
    assert "NONE (demoted)" in out and "RPO s (clean)" in out and "600.0" in out and "60.0" in out, out
    assert "ehr: no primary" in err and "replicad promote ehr --force" in err, err


def test_data_is_printed_as_it_is_never_read_as_rich_markup(admin_stub) -> None:
    """Names, reasons and patterns come from whoever wrote the volume or runs a site: brackets
    are shown as they are (rich markup would hide ``[bold]`` and turn ``[a-z2-7]`` into nothing)."""
    url, answers = admin_stub
    pattern = r"(?<=[a-z2-7]{16})\.onion\b"
    policy = {"mode": "content", "min_score": 0.02, "ransom_notes": [pattern, "[red]pay :smile:"]}
    answers["/v1/volumes/ehr/detection"] = (200, {"volume": "ehr", "detection": policy, "effective_here": policy})
    res = run_env({}, "--admin", url, "detection", "ehr")
    assert res.returncode == 0 and pattern in res.stdout and "[red]pay :smile:" in res.stdout, res.stdout
    vol = {**STATUS["volumes"]["radiology-archive"], "last_error": "io: [bold]x unreadable",
           "newest_committed": 10453}  # the newest suspect: the styled line of the narrow layout
    status = {**STATUS, "site_id": "[b]site-a", "volumes": {"[red]ehr": vol},
              "interrupted_restores": ["/srv/[bold]x.img"], "view": {"current": False, "why": "[i]no leader"}}
    answers["/v1/status"] = (200, status)
    for columns in ("80", "200"):
        res = run_env({"COLUMNS": columns}, "--admin", url, "status")
        text = " ".join(res.stdout.replace("│", " ").split())
        for shown in ("[b]site-a", "[red]ehr", "[bold]x unreadable", "/srv/[bold]x.img", "[i]no leader"):
            assert shown in text, (columns, shown, text)
    evidence = {**EVIDENCE, "volume": "[red]ehr", "verdict_reason": "judged suspect by [b]site-b",
                "here": {**EVIDENCE["here"], "reasons": ["[bold]notes matched " + pattern]}}
    answers["/v1/volumes/ehr/snapshots/12/evidence"] = (200, evidence)
    res = run_env({}, "--admin", url, "evidence", "ehr", "12")
    text = " ".join(res.stdout.split())
    for shown in ("[red]ehr#12", "judged suspect by [b]site-b", "[bold]notes matched " + pattern):
        assert shown in text, (shown, text)
    answers["/v1/volumes/ehr/snapshot"] = (200, {"seq": 7, "committed": False, "verdict": "clean", "score": 0.0,
                                                  "changed_blocks": 3, "holders": ["[red]site-a"], "peers": {}})
    res = run_env({}, "--admin", url, "snapshot", "ehr")
    assert "held by [red]site-a" in res.stdout and "stored at [red]site-a only" in " ".join(res.stderr.split())
    answers["/v1/volumes/ehr/snapshots"] = (404, {"error": "not_found", "message": "no volume [bold]ehr",
                                                  "evidence": {}})
    res = run_env({}, "--admin", url, "snapshots", "ehr")
    assert res.returncode == 3 and "no volume [bold]ehr" in res.stderr, res.stderr


def test_hints_name_the_primary_the_wrong_service_and_the_config_problems(admin_stub, sample_configs: Path,
                                                                         tmp_path: Path) -> None:
    url, answers = admin_stub
    answers["/v1/volumes/ehr/snapshot"] = (409, {"error": "not_primary", "message": "site-b is not the primary of ehr",
                                                  "evidence": {"volume": "ehr", "primary": "site-a"}})
    res = run_env({}, "--admin", url, "snapshot", "ehr")
    assert res.returncode == 4 and "hint: the primary is site-a" in " ".join(res.stderr.split()), res.stderr
    answers["/v1/status"] = (404, "<html>404: Not Found</html>")  # e.g. the peer port: HTTP, not the admin API
    res = run_env({}, "--admin", url, "status")
    text = " ".join(res.stderr.split())
    assert res.returncode == 7 and "another port or service" in text and "daemon running" not in text, text
    # --config: the CLI needs the admin URL only; a bad key elsewhere is a warning naming the file
    answers["/v1/status"] = (200, STATUS)
    config = tmp_path / "site-a.toml"
    config.write_text((sample_configs / "site-a.toml").read_text().replace('log_level = "info"', 'log_level = "verbos"')
                      .replace('admin_url = "http://127.0.0.1:7301"', f'admin_url = "{url}"'))
    res = run_env({}, "--config", str(config), "status")
    text = " ".join(res.stderr.split())
    assert res.returncode == 1 and "site site-a" in res.stdout, res.stderr  # degraded: the stub's last error
    assert f"warning: {config} has" in text and f"problem(s) ('replicad check-config {config}' lists them)" in text
    assert run_env({}, "check-config", str(config)).returncode == 2  # check-config still refuses it


def test_requests_show_the_reason_once(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/requests"] = (200, {"site_id": "site-a", "requests": [{
        "id": "r4", "by": "site-b", "action": "set_verdict", "status": "pending", "approvals": ["site-b"],
        "needed": 2, "reason": "bulk import of zip archives", "expires_ns": 1_900_000_000 * 10**9,
        "args": {"volume": "ehr", "seq": 42, "verdict": "clean", "reason": "bulk import of zip archives"}}]})
    res = run_env({}, "--admin", url, "requests")
    assert res.returncode == 0 and res.stdout.count("bulk import of zip archives") == 1, res.stdout


def test_a_lone_suspect_mark_says_it_holds_this_sites_standby_not_the_clusters_verdict(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/volumes/ehr/snapshots/5/verdict"] = (200, {
        "volume": "ehr", "seq": 5, "verdict": "clean", "marked": "suspect", "cluster_verdict": "clean",
        "suspect_sites": ["site-b"], "needed": 2, "held_here": True,
        "next": "an operator of another site marks it there too (replicad verdict ehr 5 suspect)"})
    res = run_env({"COLUMNS": "200"}, "--admin", url, "verdict", "ehr", "5", "suspect", "--reason", "notes")
    out = " ".join(res.stdout.split())
    assert res.returncode == 0 and "is now clean" not in out, res.stdout + res.stderr
    assert "marked suspect here" in out and "until 2 sites" in out and "(now: site-b)" in out, out
    assert "replicad verdict ehr 5 suspect" in " ".join(res.stderr.split()), res.stderr
    answers["/v1/volumes/ehr/snapshots/5/verdict"] = (200, {"volume": "ehr", "seq": 5, "verdict": "suspect",
                                                            "marked": "suspect", "suspect_sites": ["site-a", "site-b"],
                                                            "needed": 2})
    res = run_env({}, "--admin", url, "verdict", "ehr", "5", "suspect")
    assert res.returncode == 0 and "ehr#5 is now suspect" in res.stdout, res.stdout + res.stderr


def test_a_retention_value_without_its_unit_is_refused_before_any_request() -> None:
    # operator trial: keep_all=2 (meant 2 days) was filed as a request to shorten keep_all to 2 s
    res = run("--admin", "http://127.0.0.1:9", "retention", "ehr", "--set", "keep_all=2")
    assert res.returncode == 2 and "give the unit (e.g. 2d, 2h or 2s)" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_changes_send_their_reason_and_refuse_a_set_without_a_value(admin_stub) -> None:
    """retention, max-size and prune send the operator's --reason with the change (and none when
    not given); a --set item without KEY=VALUE is refused before any request."""
    url, answers = admin_stub
    for path in ("retention", "max-size", "prune"):
        answers[f"/v1/volumes/ehr/{path}"] = (200, {"volume": "ehr"})  # --json: printed as it came
    received = answers["__received__"]  # type: ignore[index]
    for argv in (("retention", "ehr", "--set", " keep_all = 2d ", "--reason", "audit"), ("max-size", "ehr", "2GiB"),
                 ("prune", "ehr", "3", "--reason", "a deleted record")):
        res = run_env({}, "--admin", url, "--json", *argv)
        assert res.returncode == 0, res.stderr
    assert received == [("PUT", "/v1/volumes/ehr/retention", {"retention": {"keep_all": "2d"}, "reason": "audit"}),
                        ("PUT", "/v1/volumes/ehr/max-size", {"max_size_bytes": "2GiB"}),
                        ("POST", "/v1/volumes/ehr/prune", {"seqs": [3], "reason": "a deleted record"})], received
    for command in ("retention", "detection"):
        res = run_env({}, "--admin", url, command, "ehr", "--set", "keep_all")
        assert res.returncode == 2 and "--set takes KEY=" in res.stderr and "'keep_all'" in res.stderr, res.stderr
    assert len(received) == 3


def test_standby_says_how_far_behind_it_is() -> None:
    from replicad.cli import _standby_shown

    replica = {"role": "replica", "standby_seq": 10450, "standby_lag_snapshots": 2}
    assert _standby_shown(replica) == "10450 (2 behind)"
    assert _standby_shown({**replica, "standby_lag_snapshots": 0}) == "10450 (0 behind)"
    assert _standby_shown({**replica, "standby_seq": None, "standby_lag_snapshots": 3}) == "none (3 behind)"
    assert _standby_shown({**replica, "standby_lag_snapshots": None}) == "10450 (behind: ?)"  # stale view
    assert _standby_shown({**replica, "standby_applying": True}) == "10450 (rewriting)"
    assert _standby_shown({"role": "primary", "standby_seq": 3}) == "-"


def test_times_are_utc_and_say_so() -> None:
    from replicad.cli import _iso_utc, _utc

    assert _utc(1_796_000_000 * 10**9) == "2026-11-30 00:53:20 UTC"
    assert _iso_utc("2026-01-31T12:00:00.123456Z") == "2026-01-31 12:00:00 UTC"
    assert _iso_utc("2026-12-07T03:15:00+00:00") == "2026-12-07 03:15:00 UTC"  # a drill report's started_at
    assert (_utc(None), _iso_utc(None), _iso_utc("yesterday")) == ("-", "-", "yesterday")


def test_an_applied_request_is_one_sentence_never_a_raw_map(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/requests/r5/approve"] = (200, {
        "request": "r5", "status": "applied", "approvals": ["site-a", "site-b"], "needed": 2,
        "action": "set_retention", "volume": "ehr",
        "result": {"ok": True, "volume": "ehr", "retention": {"keep_all_s": 86400, "hourly_s": 604800,
                                                              "daily_s": 2592000, "lock_s": 3600},
                   "weakened": ["lock_s"], "changed": True}})
    res = run_env({}, "--admin", url, "approve", "r5")
    out = " ".join(res.stdout.split())
    assert res.returncode == 0 and "{" not in out and "'ok'" not in out, out
    assert ("request r5 applied (approved by site-a, site-b): ehr retention: keep_all 1d, "
            "hourly 7d, daily 30d, lock 1h (shorter: lock)") in out, out
    answers["/v1/requests/r6/approve"] = (200, {"request": "r6", "status": "pending", "approvals": ["site-a"],
                                                "needed": 2, "action": "set_max_size", "volume": "ehr",
                                                "next": "an operator of another site approves it there"})
    res = run_env({}, "--admin", url, "approve", "r6")  # scripts read the id and the state from the front
    assert "request r6 is pending (set_max_size ehr): 1 of 2 sites approved (site-a)" in res.stdout, res.stdout


def test_volumes_show_the_agreed_maximum_also_at_80_columns(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/volumes"] = (200, {"volumes": {
        "radiology-archive": {"primary": "site-b", "epoch": 12, "block_size": 65536, "size_bytes": 3 * 2**40,
                              "max_size_bytes": 6 * 2**40, "min_copies": 2, "snapshots": 10452, "last_seq": 10452},
        "old": {"primary": "site-a", "epoch": 1, "block_size": 65536, "size_bytes": 2**30, "min_copies": 2,
                "snapshots": 3, "last_seq": 3},  # registered before the bound: the default of its size
        "vm": {"primary": "site-a", "epoch": 1, "block_size": 65536, "size_bytes": 0, "min_copies": 2,
               "snapshots": 0, "last_seq": 0}}})  # registered without a size
    narrow = run_env({"COLUMNS": "80"}, "--admin", url, "volumes")
    assert narrow.returncode == 0 and all(len(x) <= 80 for x in narrow.stdout.splitlines()), narrow.stdout
    text = " ".join(narrow.stdout.split())
    assert "radiology-archive: primary site-b, epoch 12, size 3TiB, max size 6TiB" in text, text
    assert "old: primary site-a, epoch 1, size 1GiB, max size 2GiB (default)" in text, text
    assert "vm: primary site-a, epoch 1, size 0B, max size none yet (set by the first snapshot)" in text, text
    wide = run_env({"COLUMNS": "200"}, "--admin", url, "volumes")
    row = next(x for x in wide.stdout.splitlines() if "radiology-archive" in x)
    assert "max size (agreed)" in wide.stdout and "3TiB" in row and "6TiB" in row, wide.stdout


def test_an_applied_role_change_names_the_new_primary() -> None:
    from replicad.cli import _result_text

    promoted = {"ok": True, "volume": "ehr", "epoch": 5, "primary": "site-b", "previous_primary": "site-a",
                "forced": True}
    assert _result_text("promote", promoted) == "ehr: primary site-b now, epoch 5 (was site-a)"
    demoted = {"ok": True, "volume": "ehr", "epoch": 6, "previous_primary": "site-b"}
    assert _result_text("demote", demoted) == "ehr: no primary now, epoch 6 (was site-b)"



def test_snapshots_and_restore_show_what_this_site_holds_back(admin_stub) -> None:
    """An operator choosing a restore point at site-b: #8 is clean for the cluster but a person at
    site-b marked it, so a restore here takes #7 (``held_here``, ``restore_default_here``)."""
    url, answers = admin_stub
    snap = {"epoch": 1, "created_at_ns": 1_800_000_000 * 10**9, "holders": ["site-a", "site-b"],
            "stats": {"changed_blocks": 3}, "root": "ab" * 32, "verdict": "clean"}
    why = "a person at site-b marked it (or a snapshot it descends from) suspect"
    answers["/v1/volumes/ehr/snapshots"] = (200, {
        "volume": "ehr", "epoch": 1, "primary": "site-a", "divergent": [], "previous": [], "kept_locally": [],
        "snapshots": [{**snap, "seq": 7}, {**snap, "seq": 8, "held_here": why}], "restore_default_here": 7})
    for columns in ("200", "80"):
        res = run_env({"COLUMNS": columns}, "--admin", url, "snapshots", "ehr")
        text = " ".join(res.stdout.replace("│", " ").split())
        assert res.returncode == 0 and "clean, held here" in text, text
        assert f"#8 held here: {why}" in text and "default restore point here: #7" in text, text
    answers["/v1/volumes/ehr/snapshots"][1]["snapshots"][1].pop("held_here")  # type: ignore[index]
    res = run_env({"COLUMNS": "200"}, "--admin", url, "snapshots", "ehr")
    assert res.returncode == 0 and "held here" not in res.stdout and "default restore" not in res.stdout, res.stdout

    from replicad.cli import _render_restore, console
    with console.capture() as out:
        _render_restore({"volume": "ehr", "seq": 7, "verdict": "clean", "target": "/srv/ehr-[copy].img",
                         "root": "ab" * 32, "blocks_written": 3, "seconds": 0.5, "held_here": {"8": why}})
    text = " ".join(out.get().split())
    assert "restored ehr#7 (clean) into /srv/ehr-[copy].img" in text, text
    assert f"passed over #8, clean for the cluster but held back here: {why}" in text, text


def test_status_says_whom_the_rules_raise_waits_for(admin_stub) -> None:
    """A rolling upgrade in progress: ``replicad status`` names the members that keep the rules
    where they are (status ``rules``, waiting); nothing once they are raised."""
    url, answers = admin_stub
    rules = {"version": 1, "max": 2, "reported_max": 2, "waiting": True, "waiting_since": 1.0,
             "members": {"site-a": {"rules_max": 2, "problem": None},
                         "site-c": {"rules_max": None, "problem": "no release report (an older release)"}}}
    answers["/v1/status"] = (200, {**STATUS, "rules": rules})
    text = " ".join(run_env({"COLUMNS": "200"}, "--admin", url, "status").stdout.split())
    assert "rules 1 (this release applies 1..2)" in text, text
    assert "waiting for site-c: no release report (an older release)" in text and "site-a:" not in text, text
    answers["/v1/status"] = (200, {**STATUS, "rules": {**rules, "version": 2, "waiting": False}})
    text = " ".join(run_env({"COLUMNS": "200"}, "--admin", url, "status").stdout.split())
    assert "waiting for" not in text, text


def test_bad_ids_and_site_names_are_refused_before_any_call(admin_stub) -> None:
    """Operator try-out 2, item 9: an empty id or one with '/' reached another path and read as an
    unreachable site (exit 7); refused client-side (bad_request, exit 2), nothing sent."""
    url, answers = admin_stub
    received = answers["__received__"]  # type: ignore[index]
    for argv in (("approve", ""), ("veto", "r6x/../../v1"), ("revoke", ""), ("revoke", ".."), ("approve", "r1\x07")):
        res = run_env({}, "--admin", url, *argv)
        assert res.returncode == 2 and "bad_request" in res.stderr and "Traceback" not in res.stderr, (argv, res)
    assert received == [], received
    answers["/v1/requests/r%20%C3%A9/veto"] = (200, {"request": "r é", "status": "vetoed", "approvals": [],
                                                     "needed": 2, "vetoed_by": "site-a"})
    res = run_env({}, "--admin", url, "veto", "r é", "--reason", "not agreed by phone")  # quoted; veto takes a reason
    assert res.returncode == 0 and "request r é vetoed by site-a" in res.stdout, (res.stdout, res.stderr)
    assert received == [("POST", "/v1/requests/r%20%C3%A9/veto", {"reason": "not agreed by phone"})], received


def test_a_request_asked_again_says_so_in_text(admin_stub) -> None:
    """Operator try-out 2, items 2, 3 and 11: the text of an identical request asked again (this
    site's own, or another site's) and of an approve of an applied request is not the first answer."""
    url, answers = admin_stub
    base = {"request": "r1", "status": "pending", "approvals": ["site-a"], "needed": 2, "action": "set_retention",
            "volume": "ehr", "existing": True, "by": "site-a", "reason": "disk full"}
    answers["/v1/volumes/ehr/retention"] = (202, {**base, "own": True, "next": "an operator of another site"})
    res = run_env({}, "--admin", url, "retention", "ehr", "--set", "daily=14d", "--reason", "other")
    out = " ".join(res.stdout.split())
    assert res.returncode == 0 and ('request r1 is already pending (set_retention ehr) (asked again: nothing new '
                                    'recorded; its reason stays "disk full"') in out, out
    answers["/v1/sites/site-a/revoke"] = (202, {**base, "action": "revoke_site", "volume": None, "own": False})
    res = run_env({}, "--admin", url, "revoke", "site-a")
    out = " ".join(res.stdout.split())
    assert res.returncode == 0 and "request r1 by site-a is already pending" in out, out
    assert "approve it with replicad approve r1" in out, out
    answers["/v1/requests/r1/approve"] = (200, {"request": "r1", "status": "applied", "approvals": ["a", "b"],
                                                "needed": 2, "already": True})
    res = run_env({}, "--admin", url, "approve", "r1")
    assert res.returncode == 0 and "request r1 is already applied: nothing proposed" in res.stdout, res.stdout


@pytest.mark.parametrize("argv", [["hash-token", "--token", "T" * 32], ["--token", "T" * 32, "hash-token"],
                                  ["hash-token", "--token-file", "/nonexistent/x"],
                                  ["hash-token", "--generate", "--token=" + "T" * 32]],
                         ids=["after", "before", "token-file", "with-generate"])
def test_hash_token_refuses_a_token_option_it_would_ignore(argv: list[str]) -> None:
    """``hash-token --token X`` was argparse's "unrecognized arguments", ``--token X hash-token``
    hashed stdin (empty: "length 0") ignoring X (tryout 2, item 10): the token to hash comes from
    stdin, so a --token is refused by name, the token never echoed, nothing hashed."""
    res = subprocess.run([sys.executable, "-m", "replicad", *argv], input="S" * 40 + "\n", capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "reads the token to hash from stdin" in res.stderr and "unrecognized" not in res.stderr, res.stderr
    assert "T" * 32 not in res.stdout + res.stderr and res.stdout == "", res.stdout


def test_hash_token_hashes_stdin_and_generates() -> None:
    res = subprocess.run([sys.executable, "-m", "replicad", "hash-token"], input="S" * 40 + "\n",
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == hashlib.sha256(b"S" * 40).hexdigest(), res
    res = run("hash-token", "--generate", "--json")
    doc = _json.loads(res.stdout)
    assert res.returncode == 0 and doc["sha256"] == hashlib.sha256(doc["token"].encode()).hexdigest(), res
