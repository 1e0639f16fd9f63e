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


def test_a_policy_number_that_does_not_parse_is_said_in_words() -> None:
    res = subprocess.run([sys.executable, "-m", "replicad", "--admin", "http://127.0.0.1:9", "detection", "ehr",
                          "--set", "min_score=abc"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--set min_score=abc: not a number" in res.stderr, res.stderr
    assert "could not convert" not in res.stderr and "Traceback" not in res.stderr, res.stderr
    for bad in ("nan", "inf"):
        with pytest.raises(UsageError, match="not a finite number"):
            _policy_value("min_score", bad)
    assert _policy_value("min_score", "0.05") == 0.05 and _policy_value("window_s", "14d") == 14 * 86400


def test_status_without_a_snapshot_says_none_yet() -> None:
    from replicad.cli import _volume_cells

    cells = _volume_cells({"role": "primary", "newest_committed": None, "newest_clean": None})
    assert cells["newest"] == "none yet" and cells["clean"] == "none yet"
    assert _volume_cells({"newest_committed": 4, "newest_clean": 3})["newest"] == "#4"
