"""The tree comparison of ``replicad diff`` and the listing of ``replicad files`` on real
directories (the mounts themselves are exercised in tests/integration/test_snapshot_export.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replicad.cli import _command_index, _options_first
from replicad.core.errors import NotFoundError, UsageError
from replicad.ops.fileview import diff_trees, list_files


def _tree(root: Path, files: dict[str, bytes], mtime: int = 1_700_000_000) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (mtime, mtime))


def test_diff_reports_exactly_added_removed_changed(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    base = {"same.txt": b"x" * 10, "content.txt": b"abc", "grow.txt": b"1", "gone.txt": b"g", "d/in.txt": b"i"}
    _tree(a, base)
    _tree(b, {**base, "content.txt": b"abd", "grow.txt": b"12", "new/n.txt": b"n"})
    (b / "gone.txt").unlink()
    os.utime(b / "content.txt", (1_700_000_000, 1_700_000_000))  # same size and mtime: only the digest differs
    os.chmod(b / "same.txt", 0o600)
    os.symlink("same.txt", a / "link")
    os.symlink("d/in.txt", b / "link")
    d = diff_trees(a, b)
    assert [e["path"] for e in d["added"]] == ["/new", "/new/n.txt"]
    assert [e["path"] for e in d["removed"]] == ["/gone.txt"]
    assert {e["path"]: e["why"] for e in d["changed"]} == {"/content.txt": ["content"], "/grow.txt": ["size"],
                                                          "/link": ["target"]}
    assert {e["path"]: e["why"] for e in d["metadata"]} == {"/same.txt": ["mode"]}
    quick = diff_trees(a, b, quick=True)  # trusts equal size and mtime: the forged file is missed
    assert {e["path"] for e in quick["changed"]} == {"/grow.txt", "/link"}


def test_list_files(tmp_path: Path) -> None:
    _tree(tmp_path, {"a/b.txt": b"12345", "c.txt": b""})
    top = list_files(tmp_path, "/")
    assert [(e["path"], e["kind"]) for e in top] == [("/a", "dir"), ("/c.txt", "file")]
    assert [e["path"] for e in list_files(tmp_path, "/", recursive=True)] == ["/a", "/a/b.txt", "/c.txt"]
    one = list_files(tmp_path, "a/b.txt")
    assert one[0]["size_bytes"] == 5 and one[0]["mtime_ns"] == 1_700_000_000 * 10**9
    assert one[0]["mode"].startswith("-rw") and one[0]["kind"] == "file"
    with pytest.raises(NotFoundError):
        list_files(tmp_path, "/nope")
    with pytest.raises(UsageError):
        list_files(tmp_path / "a", "../c.txt")


def test_files_options_before_path() -> None:
    argv = ["--admin", "http://127.0.0.1:1", "files", "ehr", "--snapshot", "3", "/scans", "-r", "--json"]
    at = _command_index(argv)
    assert argv[at] == "files"
    assert _options_first(argv, at) == ["--admin", "http://127.0.0.1:1", "files", "--snapshot", "3", "-r", "--json",
                                        "ehr", "/scans"]
    assert _command_index(["verdict", "files", "3", "clean"]) == 0
