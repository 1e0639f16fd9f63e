"""A restore never leaves a file under its target's name unless the image verified.

Real site processes on loopback (``cluster_factory``): a restore killed in the middle, a
restore whose every copy of a chunk is bad, targets that are symlinks, and a target whose
file system is full.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from replicad.core.errors import ReplicadError, TargetFullError

from .conftest import VOL, snapshot
from tests.tmpfs import small_tmpfs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _flip_bytes(pack: Path, n: int = 64) -> None:
    size = pack.stat().st_size
    with open(pack, "r+b") as f:
        for i in range(1, n + 1):
            f.seek(size * i // (n + 1))
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())


def test_a_restore_killed_in_the_middle_leaves_no_target_and_its_partial_is_removed(cluster_factory,
                                                                                    tmp_path: Path) -> None:
    c = cluster_factory(n_blocks=1024)  # 64 MiB: the restore takes long enough to be caught
    first = snapshot(c, "site-a")
    assert first["committed"]
    target = tmp_path / "restored.img"
    mine = tmp_path / "restored.img.partial"  # an operator's file that merely looks like a partial
    mine.write_bytes(b"keep me")

    def partials() -> list[Path]:
        return sorted(tmp_path.glob(".restored.img.*.partial"))

    op = c.api("site-b", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target), "wait": False})
    deadline = time.monotonic() + 60
    while not partials():  # the partial image appears when the writing starts
        assert time.monotonic() < deadline, f"the restore never started writing: {op}"
        assert not target.exists(), "the restore finished before it could be interrupted"
        time.sleep(0.001)
    with pytest.raises(ReplicadError) as busy:  # one restore per target at a time
        c.api("site-b", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target)})
    assert busy.value.code == "conflict", busy.value
    c.kill("site-b", signal.SIGKILL)
    assert partials() and not target.exists()  # killed: nothing under the target's name
    c.start("site-b")
    c.wait_for("site-b back", lambda: c.status("site-b")["raft"]["synced"], 60)
    assert not partials() and not target.exists()
    assert "its partial image" in c.sites["site-b"].log_path.read_text()
    rest = c.api("site-b", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target)})
    assert rest["verified"] and not partials()
    assert target.read_bytes() == c.sites["site-a"].volume_path(VOL).read_bytes()
    assert mine.read_bytes() == b"keep me"


def test_a_hard_link_to_the_live_volume_is_refused_as_a_target(cluster_factory, tmp_path: Path) -> None:
    c = cluster_factory()
    assert snapshot(c, "site-a")["committed"]
    live = c.sites["site-a"].volume_path(VOL)
    before = live.read_bytes()
    link = live.with_name("another-name.img")
    os.link(live, link)
    with pytest.raises(ReplicadError) as err:
        c.api("site-a", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(link), "overwrite": True})
    assert err.value.code == "bad_request" and "live image" in str(err.value), err.value
    assert live.read_bytes() == before


def test_when_every_copy_is_bad_the_restore_fails_typed_and_writes_nothing(cluster_factory, tmp_path: Path) -> None:
    c = cluster_factory()
    first = snapshot(c, "site-a")
    assert first["committed"]
    for site in ("site-b", "site-c"):  # the other copies are out of reach
        c.kill(site, signal.SIGKILL)
    for pack in (c.sites["site-a"].dir / "data" / "chunks").rglob("*.pack"):
        _flip_bytes(pack)
    target = tmp_path / "restored.img"
    with pytest.raises(ReplicadError) as err:
        c.api("site-a", "POST", f"/v1/volumes/{VOL}/restore", {"target": str(target)})
    assert err.value.code == "integrity", err.value
    assert not target.exists() and not list(tmp_path.glob(".restored.img.*.partial"))
    assert c.status("site-a")["interrupted_restores"] == []


def test_symlink_targets_and_a_full_target_file_system(cluster_factory, tmp_path: Path) -> None:
    c = cluster_factory()  # 12 MiB volume
    assert snapshot(c, "site-a")["committed"]
    expected = c.sites["site-a"].volume_path(VOL).read_bytes()
    path = f"/v1/volumes/{VOL}/restore"
    # a dangling symlink: publishing the image would replace the link itself; refused, link kept
    dangling = tmp_path / "dangling.img"
    dangling.symlink_to(tmp_path / "gone.img")
    for overwrite in (False, True):
        with pytest.raises(ReplicadError) as err:
            c.api("site-b", "POST", path, {"target": str(dangling), "overwrite": overwrite})
        assert err.value.code == "bad_request" and str(dangling) in str(err.value), err.value
        assert "symlink" in str(err.value) and "does not exist" in str(err.value)
    assert dangling.is_symlink() and not dangling.exists() and not (tmp_path / "gone.img").exists()
    # a symlink to an existing file is that file: refused without overwrite, rewritten in place with it
    real = tmp_path / "real.img"
    real.write_bytes(b"an older image")
    link = tmp_path / "link.img"
    link.symlink_to(real)
    with pytest.raises(ReplicadError) as err:
        c.api("site-b", "POST", path, {"target": str(link)})
    assert err.value.code == "bad_request" and "exists" in str(err.value), err.value
    assert c.api("site-b", "POST", path, {"target": str(link), "overwrite": True})["verified"]
    assert link.is_symlink() and real.read_bytes() == expected
    # the target's file system is full: target_full (HTTP 507), not the chunk store's store_full
    with small_tmpfs(tmp_path / "small", "1m") as small:
        target = small / "restored.img"
        with pytest.raises(ReplicadError) as err:
            c.api("site-b", "POST", path, {"target": str(target)})
        assert isinstance(err.value, TargetFullError) and err.value.http_status == 507, err.value
        assert err.value.code == "target_full" and str(small) in str(err.value) and "free" in str(err.value)
        assert err.value.evidence["free_bytes"] < 2**20 <= err.value.evidence["size_bytes"]
        assert list(small.iterdir()) == []  # the partial image was removed
    assert c.status("site-b")["interrupted_restores"] == []
