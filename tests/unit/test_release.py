"""Which release a site runs (replicad.release): ``__version__`` is 0.1.0 on every release, so
``--version``, ``replicad_build_info`` and ``replicad status`` also name the rules range the code
applies and a digest of its sources, the same for a checkout and the package installed from it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from replicad.core.state import RULES_MAX
from replicad.release import PACKAGE_DIR, digest_of, identity, source_digest


def test_the_source_digest_is_the_same_for_a_copy_and_changes_with_any_line(tmp_path: Path) -> None:
    copy = tmp_path / "site-packages" / "replicad"  # what pip install copies: the .py files, their paths
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (copy / "__pycache__").mkdir()  # compiled files are no source
    (copy / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"x")
    assert digest_of(copy) == digest_of(PACKAGE_DIR) and identity()["source"] == source_digest()
    with (copy / "core" / "state.py").open("a") as f:
        f.write("\n# one more line\n")
    changed = digest_of(copy)
    assert changed != digest_of(PACKAGE_DIR) and len(changed) == 12
    (copy / "core" / "state.py").rename(copy / "core" / "state2.py")  # a path is part of the source too
    assert digest_of(copy) not in (changed, digest_of(PACKAGE_DIR))


def test_version_names_the_rules_range_and_the_source() -> None:
    out = subprocess.run([sys.executable, "-m", "replicad", "--version"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.startswith("replicad 0.1.0 (") and f"rules 1-{RULES_MAX}" in out, out
    assert re.search(r"source [0-9a-f]{12}[,;]", out), out  # others may edit the checkout meanwhile: its shape


def test_status_shows_the_release_of_the_site_it_asks() -> None:
    from replicad import cli

    other = {"version": "0.1.0", "rules": "1-3", "rules_max": 3, "source": "0123456789ab", "commit": None,
             "python": "3.12.1"}
    with cli.console.capture() as cap:
        cli._render_status({"site_id": "site-b", "release": other})
    assert "release: 0.1.0 (rules 1-3, source 0123456789ab; Python 3.12.1)" in cap.get(), cap.get()
