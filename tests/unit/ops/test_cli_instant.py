"""CLI pieces of instant recovery (issue 16, item 1): ``promote --instant`` without
``--force`` is refused before any request is sent; what ``promote --instant`` and ``status``
print about it."""

from __future__ import annotations

import subprocess
import sys

from replicad.cli import _instant_line

STATE = {"volume": "ehr", "epoch": 2, "seq": 1, "root": "ab", "phase": "copying", "resumed": False,
         "export_id": "instant-ehr", "socket": "/d/nbd/instant-ehr.sock",
         "uri": "nbd+unix:///?socket=/d/nbd/instant-ehr.sock", "progress": 0.5, "copy_done_blocks": 80,
         "copy_total_blocks": 160, "overlay_blocks": 3, "serving_after_s": 0.1, "first_read_after_s": 0.3,
         "copy_after_s": None, "switched_after_s": None, "last_error": "open restore target: Operation not permitted"}


def test_promote_instant_needs_force() -> None:
    res = subprocess.run([sys.executable, "-m", "replicad", "--admin", "http://127.0.0.1:9", "promote", "ehr",
                          "--to", "site-b", "--instant"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--force" in res.stderr, res.stderr


def test_status_line_of_each_phase() -> None:
    line = _instant_line("ehr", STATE)
    assert "copying, copy 50 % (80/160 blocks)" in line and "/d/nbd/instant-ehr.sock" in line
    assert "last error: open restore target" in line and "first read after 0.30 s" in line
    done = _instant_line("ehr", {**STATE, "phase": "done", "switched_after_s": 4.2})
    assert "switched over after 4.20 s (3 blocks copied in)" in done and "last error" not in done
    assert "export is closed" in _instant_line("ehr", {**STATE, "phase": "fenced"})
    assert "first read after -" in _instant_line("ehr", {**STATE, "first_read_after_s": None})
