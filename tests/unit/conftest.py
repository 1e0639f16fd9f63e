"""Shared pieces of the unit tests: the sample configs of ``config/`` as an operator installs them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture(scope="session")
def sample_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``config/`` (the sample site configs, ``invalid/``, ``demo-raft.key``, the
    ``demo-identity-*.key`` site keys) whose Raft and site keys are mode 0600, as an operator installs it: git stores files 0644 or 0755 only, and
    config loading refuses a Raft key that group or others can access."""
    root = tmp_path_factory.mktemp("config")
    shutil.copytree(CONFIG_DIR, root, dirs_exist_ok=True)
    (root / "demo-raft.key").chmod(0o600)
    for key in root.glob("demo-identity-*.key"):  # the sample sites' signing keys: 0600 too
        key.chmod(0o600)
    return root
