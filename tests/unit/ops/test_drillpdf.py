"""The PDF print of a drill report (ops/drillpdf.py): real headless Chromium when installed, and
the refusals (no browser, a taken name, a browser that fails, hangs or writes no PDF) with small
stand-in programs run as real processes."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from replicad.core import drillreport
from replicad.core.errors import NotSupportedError, ToolError, UsageError
from replicad.ops import drillpdf

REPORT = {"volume": "ehr <pacs>", "snapshot": {"seq": 7, "epoch": 2, "verdict": "clean", "root": "ab" * 32},
          "outcome": "passed", "started_at": "2026-12-06T21:00:00Z", "finished_at": "2026-12-06T21:00:05Z",
          "site_id": "site-a", "cluster_id": "lab", "rpo": {"measured_s": 30.0, "target_s": 60.0,
                                                             "within_target": True}}


def _program(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_chromium_prints_the_report(tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    html_file = tmp_path / "r.html"
    html_file.write_text(drillreport.render_html(REPORT, None), encoding="utf-8")
    out = drillpdf.print_pdf(html_file, tmp_path / "r.pdf")
    data = out.read_bytes()
    assert data[:5] == b"%PDF-" and b"/Type /Page" in data
    assert re.search(rb"/Title \(replicad drill report: ehr <pacs> #7 ", data)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    with pytest.raises(UsageError, match="never overwritten"):
        drillpdf.print_pdf(html_file, out)


def test_refusals_are_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    html_file = tmp_path / "r.html"
    html_file.write_text("<!DOCTYPE html><title>x</title>", encoding="utf-8")
    sleep = shutil.which("sleep")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(NotSupportedError, match="apt-get install chromium"):
        drillpdf.find_browser()
    (tmp_path / "taken.pdf").write_bytes(b"%PDF-1.4 an earlier report")
    with pytest.raises(UsageError, match="never overwritten"):
        drillpdf.check_free(tmp_path / "taken.pdf")
    failing = _program(tmp_path, "fails", "echo broken >&2; exit 3")
    with pytest.raises(ToolError, match="exit 3") as err:
        drillpdf.print_pdf(html_file, tmp_path / "a.pdf", browser=failing)
    assert "broken" in err.value.evidence["stderr_tail"]
    garbage = _program(tmp_path, "garbage", 'for a in "$@"; do case "$a" in --print-to-pdf=*) '
                                            'echo "<html>" > "${a#--print-to-pdf=}";; esac; done')
    with pytest.raises(ToolError, match="no PDF"):
        drillpdf.print_pdf(html_file, tmp_path / "b.pdf", browser=garbage)
    hangs = _program(tmp_path, "hangs", f"exec {sleep} 60")
    with pytest.raises(ToolError, match="within 1 s"):
        drillpdf.print_pdf(html_file, tmp_path / "c.pdf", browser=hangs, timeout_s=1.0)
    assert not any((tmp_path / n).exists() for n in ("a.pdf", "b.pdf", "c.pdf"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert os.path.exists(html_file)
