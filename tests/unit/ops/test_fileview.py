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


def test_path_through_a_file_is_not_found_without_the_mount_path(tmp_path: Path) -> None:
    _tree(tmp_path, {"keep.txt": b"k"})
    with pytest.raises(NotFoundError) as e:
        list_files(tmp_path, "/keep.txt/inner")
    assert "/keep.txt/inner" in e.value.message and str(tmp_path) not in e.value.message


def test_shielded_defers_sigint_until_the_step_is_recorded() -> None:
    import signal

    from replicad.ops.fileview import _shielded

    recorded = []
    with pytest.raises(KeyboardInterrupt):
        with _shielded():
            signal.raise_signal(signal.SIGINT)  # arrives mid-step: the step still finishes and is recorded
            recorded.append("loop")
    assert recorded == ["loop"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupted_line_names_what_is_left() -> None:
    from replicad.ops.fileview import Interrupted

    assert Interrupted().message == "interrupted; nothing left mounted"
    assert Interrupted(["loop device /dev/loop7"]).message == "interrupted; left: loop device /dev/loop7"


def test_ctrl_c_at_any_time_is_one_line_and_exit_130() -> None:
    """A SIGINT while the command still imports (asyncio, rich: the moment the _asyncio extension
    is mapped) and while it runs: never a traceback. (Before Python itself has started, in its
    own site import, no program's code runs yet: not tested.)"""
    import signal
    import subprocess
    import sys
    import time

    for when in ("importing", 0.3, 0.6):
        p = subprocess.Popen([sys.executable, "-m", "replicad", "--admin", "http://127.0.0.1:9", "status"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env=dict(os.environ, REPLICAD_TOKEN="x"))
        try:
            if when == "importing":
                deadline = time.monotonic() + 10
                while "_asyncio" not in Path(f"/proc/{p.pid}/maps").read_text() and time.monotonic() < deadline:
                    time.sleep(0.001)
            else:
                time.sleep(when)
            os.killpg(p.pid, signal.SIGINT)
            out, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        if p.returncode == 130:
            assert "Traceback" not in err and err.strip().splitlines() == ["interrupted"], (when, err)
        else:  # finished before the signal (the admin address refuses at once)
            assert when != "importing" and "Traceback" not in err, (when, p.returncode, err)


def test_teardown_finishes_before_a_ctrl_c_is_taken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import signal

    from replicad.ops import fileview

    done = []

    def teardown_now(rec: fileview.MountRecord) -> list[str]:
        signal.raise_signal(signal.SIGINT)  # Ctrl-C in the middle of the cleanup
        done.append(rec.mountpoint)
        return []
    monkeypatch.setattr(fileview, "_teardown_now", teardown_now)
    rec = fileview.MountRecord(str(tmp_path / "m"), "v", 1, "x1", "", str(tmp_path / "s"), str(tmp_path / "s" / "fuse"))
    with pytest.raises(fileview.Interrupted) as e:
        fileview._teardown(rec)
    assert done == [str(tmp_path / "m")] and e.value.left == []
    assert e.value.message == "interrupted; nothing left mounted"
