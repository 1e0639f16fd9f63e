"""CLI pieces of issue 14: ``--set ransom_notes=JSON`` and ``promote --snapshot`` without
``--force`` (refused before any request is sent)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from replicad.cli import _policy_value
from replicad.core.errors import UsageError


def test_ransom_notes_are_set_as_a_json_list() -> None:
    assert _policy_value("ransom_notes", '["bitcoin", "\\\\.onion"]') == ["bitcoin", "\\.onion"]
    with pytest.raises(UsageError):
        _policy_value("ransom_notes", "bitcoin")
    with pytest.raises(UsageError):
        _policy_value("ransom_notes", '{"a": 1}')
    assert _policy_value("ransom_note_min", "3") == 3


def test_promote_snapshot_needs_force() -> None:
    res = subprocess.run([sys.executable, "-m", "replicad", "--admin", "http://127.0.0.1:9", "promote", "ehr",
                          "--to", "site-b", "--snapshot", "4"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--force" in res.stderr, res.stderr
