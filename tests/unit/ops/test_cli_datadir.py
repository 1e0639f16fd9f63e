"""``replicad check-config`` and ``replicad run`` with a data_dir that cannot be used, and
``replicad --version``, as an operator runs them (a real subprocess)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.ops.test_cli import run


def test_version_is_the_one_the_metrics_export() -> None:
    from replicad import __version__
    from replicad.core.state import RULES_MAX
    from replicad.release import source_digest

    res = run("--version")
    assert res.returncode == 0 and res.stdout.startswith(
        f"replicad {__version__} (rules 1-{RULES_MAX}, source {source_digest()}"), res.stdout + res.stderr


@pytest.mark.parametrize("data_dir, expected", [
    ("/proc/nonexistent/x", "data_dir: /proc/nonexistent/x cannot be created in /proc:"),
    ("FILE/x", "data_dir: {dir}/a-file/x cannot be created: {dir}/a-file is not a directory"),
    ("FILE", "data_dir: {dir}/a-file exists and is not a directory"),
], ids=["under-proc", "under-a-file", "a-file"])
def test_check_config_and_run_name_a_data_dir_that_cannot_be_used(data_dir: str, expected: str,
                                                                  sample_configs: Path, tmp_path: Path) -> None:
    """check-config said "ok" and run said ``not_found: replicad run: No such file or directory``."""
    for name in ("demo-raft.key", "demo-identity-site-a.key"):
        (tmp_path / name).write_bytes((sample_configs / name).read_bytes())
        (tmp_path / name).chmod(0o600)
    (tmp_path / "a-file").write_text("not a directory\n")
    config = tmp_path / "site-a.toml"
    text = (sample_configs / "site-a.toml").read_text()
    lines = [f'data_dir = "{data_dir.replace("FILE", str(tmp_path / "a-file"))}"' if x.startswith("data_dir =")
             else x for x in text.splitlines()]
    config.write_text("\n".join(lines) + "\n")
    expected = expected.format(dir=tmp_path)
    for command in ("check-config", "run"):
        res = run(command, str(config))
        out = " ".join(res.stderr.split())
        assert res.returncode == 2 and expected in out and "Traceback" not in out, (command, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "demo-identity-site-a.key", "demo-raft.key",
                                                          "site-a.toml"]  # no probe left behind


def test_check_config_probes_a_writable_data_dir_and_leaves_nothing(sample_configs: Path, tmp_path: Path) -> None:
    for name in ("demo-raft.key", "demo-identity-site-a.key"):
        (tmp_path / name).write_bytes((sample_configs / name).read_bytes())
        (tmp_path / name).chmod(0o600)
    config = tmp_path / "site-a.toml"
    config.write_text("\n".join(f'data_dir = "{tmp_path / "new" / "data"}"' if x.startswith("data_dir =") else x
                                for x in (sample_configs / "site-a.toml").read_text().splitlines()) + "\n")
    res = run("check-config", str(config))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
    assert not (tmp_path / "new").exists()  # checked, not created
