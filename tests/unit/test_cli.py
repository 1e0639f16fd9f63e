"""The ``replicad`` command line as an operator runs it (a real subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[2] / "config"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicad", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["site-a.toml", "site-b.toml", "site-c.toml", "witness.toml"])
def test_check_config_accepts_samples(name: str) -> None:
    res = run("check-config", str(CONFIG / name))
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout


@pytest.mark.parametrize("path", sorted((CONFIG / "invalid").glob("*.toml")), ids=lambda p: p.name)
def test_check_config_rejects_invalid_samples_with_their_message(path: Path) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect:").strip()
    res = run("check-config", str(path))
    assert res.returncode == 2
    assert expected in " ".join(res.stderr.split()), res.stderr
    assert "Traceback" not in res.stderr


def test_missing_config_file_is_a_clear_error() -> None:
    res = run("check-config", "/nonexistent/replicad.toml")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "cannot read" in res.stderr
