"""replicad.storage.durable.write_durably: the one atomic write (tmp, fsync, rename, directory fsync)
of the Raft journal and meta, a dump received from the leader, a dump's format upgrade and the
pinned limits. Real files in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replicad.storage.durable import write_durably


def test_replaces_the_file_whole_and_leaves_no_tmp(tmp_path: Path) -> None:
    path = tmp_path / "raft.dump"
    path.write_bytes(b"old")
    write_durably(path, b"new content", ".1.tmp")
    assert path.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raft.dump"]


def test_a_failed_write_leaves_the_old_file_and_removes_the_tmp(tmp_path: Path) -> None:
    path = tmp_path / "raft.limits"
    path.write_bytes(b"old")
    (tmp_path / "raft.limits.tmp").mkdir()  # the tmp name is taken by a directory: open() fails
    with pytest.raises(OSError):
        write_durably(path, b"new")
    assert path.read_bytes() == b"old"
    os.rmdir(tmp_path / "raft.limits.tmp")
    target = tmp_path / "gone" / "file"  # no such directory: nothing is created anywhere
    with pytest.raises(FileNotFoundError):
        write_durably(target, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raft.limits"]
