"""``replicad snapshots`` at an honest site prints what Raft holds without letting a primary's
text drive the terminal (review R10, F3): a value or key that does not print is escaped and
quoted, wide and narrow; ``--json`` escapes it as JSON."""

from __future__ import annotations

from tests.unit.ops.test_cli import admin_stub, run_env  # noqa: F401 (fixture)

FORGED = "0\x1b[2K\x1b[1A\x1b[2K\r#1 (epoch 1): clean\n\x1b[32mAUDIT site-b approved r7\x1b[0m"


def test_snapshots_escape_text_that_does_not_print(admin_stub) -> None:  # noqa: F811
    url, answers = admin_stub
    snap = {"seq": 1, "epoch": 1, "created_at_ns": 1_800_000_000 * 10**9, "holders": ["site-a", "site-b\x1b[2K"],
            "stats": {"changed_blocks": FORGED}, "root": "ab" * 32, "verdict": "clean"}
    answers["/v1/volumes/ehr/snapshots"] = (200, {
        "volume": "ehr", "epoch": 1, "primary": "site-a", "divergent": [], "previous": [], "kept_locally": [],
        "snapshots": [snap]})
    for columns in ("200", "80"):
        res = run_env({"COLUMNS": columns}, "--admin", url, "snapshots", "ehr")
        assert res.returncode == 0, res.stderr
        assert "\x1b" not in res.stdout and "\r" not in res.stdout, repr(res.stdout)
        assert "AUDIT" not in "".join(line for line in res.stdout.splitlines() if line.startswith("AUDIT")), res.stdout
        text = "".join(res.stdout.replace("│", "").split())
        assert "\\x1b[2K" in text and "(nottext)" in text, repr(res.stdout)
    res = run_env({}, "--admin", url, "--json", "snapshots", "ehr")
    assert res.returncode == 0 and "\x1b" not in res.stdout, repr(res.stdout)
