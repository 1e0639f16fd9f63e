"""Tests of replicad.lab.demo_volume on real ext4 images built with e2fsprogs (no mounting)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from replicad.lab.demo_volume import (
    DATA_FILL_FRACTION,
    VolumeImage,
    build_volume,
    file_extents,
    ordinary_changes,
    ransomware_attack,
    read_file_checksums,
    verify_volume,
)
from replicad.core.errors import ToolError, UsageError

SIZE_BYTES = 32 * 2**20


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> VolumeImage:
    workdir = tmp_path_factory.mktemp("volume")
    return build_volume(workdir, workdir / "vol.img", size_bytes=SIZE_BYTES, rng=random.Random(1))


@pytest.fixture
def volume(built: VolumeImage, tmp_path: Path) -> VolumeImage:
    """A private copy of the built image, free to change."""
    copy = tmp_path / "vol.img"
    shutil.copyfile(built.path, copy)
    return dataclasses.replace(built, path=copy, files=dict(built.files))


def _assert_clean(report: dict, expected: dict[str, str]) -> None:
    assert report["fsck_ok"], report["fsck_output"]
    assert report["fsck_returncode"] == 0
    assert report["files_checked"] == len(expected)
    assert report["mismatched"] == []
    assert report["missing"] == []


def test_built_volume_verifies_and_matches_its_source_tree(built: VolumeImage) -> None:
    _assert_clean(verify_volume(built.path, built.files), built.files)
    assert built.path.stat().st_size == SIZE_BYTES == built.size_bytes
    assert built.block_size_fs == 4096
    tree = built.path.parent / "tree"
    on_disk = {"/" + str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in tree.rglob("*") if p.is_file()}
    assert on_disk == built.files
    data_bytes = sum((tree / p[1:]).stat().st_size for p in built.files)
    assert 0.4 * SIZE_BYTES <= data_bytes <= 0.6 * SIZE_BYTES
    assert data_bytes >= DATA_FILL_FRACTION * SIZE_BYTES


def test_built_volume_holds_each_kind_of_content(built: VolumeImage) -> None:
    tree = built.path.parent / "tree"
    paths = sorted(built.files)
    notes = [p for p in paths if p.startswith("/records/patients/") and p.endswith(".md")]
    csvs = [p for p in paths if p.endswith(".csv")]
    images = [p for p in paths if p.endswith(".dcm")]
    copied = [p for p in paths if p.startswith("/reference/")]
    assert notes and csvs and images and copied
    assert "SYNTHETIC" in (tree / notes[0][1:]).read_text()
    dcm = (tree / images[0][1:]).read_bytes()
    assert dcm[:128] == bytes(128) and dcm[128:132] == b"DICM"
    conn = sqlite3.connect(tree / "lab/lab_results.sqlite")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM lab_results").fetchone()[0] > 1000
    finally:
        conn.close()
    assert (tree / "lab/lab_results.sqlite").stat().st_size >= 2**20


def test_same_seed_gives_same_files(built: VolumeImage, tmp_path: Path) -> None:
    again = build_volume(tmp_path, tmp_path / "again.img", size_bytes=SIZE_BYTES, rng=random.Random(1))
    assert again.files == built.files
    other = build_volume(tmp_path, tmp_path / "other.img", size_bytes=SIZE_BYTES, rng=random.Random(2))
    assert other.files != built.files


@pytest.mark.parametrize("size_bytes", [8 * 2**20, 32 * 2**20 + 100])
def test_bad_sizes_are_refused(tmp_path: Path, size_bytes: int) -> None:
    with pytest.raises(UsageError):
        build_volume(tmp_path, tmp_path / "x.img", size_bytes=size_bytes, rng=random.Random(0))


def test_ordinary_changes_add_records_and_rewrite_the_database(volume: VolumeImage) -> None:
    changed = ordinary_changes(volume, rng=random.Random(5), n_files=5)
    added = set(changed.files) - set(volume.files)
    rewritten = {p for p in volume.files if changed.files[p] != volume.files[p]}
    assert len(added) == 5
    assert all(p.startswith("/records/") and p.endswith((".md", ".csv")) for p in added)
    assert rewritten == {"/lab/lab_results.sqlite"}
    _assert_clean(verify_volume(changed.path, changed.files), changed.files)
    stale = verify_volume(changed.path, volume.files)
    assert stale["fsck_ok"] and stale["mismatched"] == ["/lab/lab_results.sqlite"] and stale["missing"] == []


def test_ransomware_attack_keeps_fsck_clean_but_ruins_contents(volume: VolumeImage, tmp_path: Path) -> None:
    pre_attack = tmp_path / "pre-attack.img"
    shutil.copyfile(volume.path, pre_attack)
    attacked = ransomware_attack(volume, rng=random.Random(9), fraction=1.0)
    with_data = sorted(p for p, (_, ext) in file_extents(volume.path, volume.files).items() if ext)
    assert attacked == with_data and len(attacked) > 100

    report = verify_volume(volume.path, volume.files)
    assert report["fsck_ok"], report["fsck_output"]
    assert report["mismatched"] == attacked
    assert report["missing"] == []

    _, db_extents = file_extents(volume.path, ["/lab/lab_results.sqlite"])["/lab/lab_results.sqlite"]
    first_block = db_extents[0][1] * volume.block_size_fs
    with open(volume.path, "rb") as f, open(pre_attack, "rb") as g:
        f.seek(first_block)
        g.seek(first_block)
        assert g.read(16) == b"SQLite format 3\0"
        assert f.read(16) != b"SQLite format 3\0"

    shutil.copyfile(pre_attack, volume.path)  # a restore: the pre-attack bytes come back
    _assert_clean(verify_volume(volume.path, volume.files), volume.files)


def test_partial_attack_touches_only_the_files_it_names(volume: VolumeImage) -> None:
    changed = ordinary_changes(volume, rng=random.Random(3), n_files=2)
    attacked = ransomware_attack(changed, rng=random.Random(4), fraction=0.25)
    candidates = [p for p, (_, ext) in file_extents(changed.path, changed.files).items() if ext]
    assert len(attacked) == round(0.25 * len(candidates))
    report = verify_volume(changed.path, changed.files)
    assert report["fsck_ok"], report["fsck_output"]
    assert report["mismatched"] == attacked
    untouched = {p: d for p, d in changed.files.items() if p not in attacked}
    _assert_clean(verify_volume(changed.path, untouched), untouched)


def test_attack_on_a_fragmented_file_leaves_its_extent_tree_alone(tmp_path: Path) -> None:
    rng = random.Random(11)
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(400):
        (tree / f"f{i:03d}").write_bytes(rng.randbytes(8192))
    big = tmp_path / "big"
    big.write_bytes(rng.randbytes(1_500_000))
    image_path = tmp_path / "frag.img"
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-b", "4096", "-d", str(tree), "-F", str(image_path), "4096"],
                   check=True, capture_output=True, env=env)
    # Free every other small file, then write a big one: it lands in the holes, needs far
    # more than the 4 extents an inode holds, so its extent tree gets a block of its own.
    cmds = tmp_path / "cmds"
    cmds.write_text("".join(f"rm /f{i:03d}\n" for i in range(0, 400, 2)) + f"write {big} big\n")
    subprocess.run(["debugfs", "-w", "-f", str(cmds), str(image_path)], check=True, capture_output=True, env=env)
    stat = subprocess.run(["debugfs", "-R", "stat /big", str(image_path)], check=True, capture_output=True,
                          env=env, text=True).stdout
    assert "(ETB0)" in stat

    files = {f"/f{i:03d}": hashlib.sha256((tree / f"f{i:03d}").read_bytes()).hexdigest() for i in range(1, 400, 2)}
    files["/big"] = hashlib.sha256(big.read_bytes()).hexdigest()
    image = VolumeImage(path=image_path, size_bytes=image_path.stat().st_size, block_size_fs=4096, files=files)
    _assert_clean(verify_volume(image_path, files), files)
    assert len(file_extents(image_path, ["/big"])["/big"][1]) > 4
    attacked = ransomware_attack(image, rng=rng, fraction=1.0)
    assert "/big" in attacked and len(attacked) == len(files)
    report = verify_volume(image_path, files)
    assert report["fsck_ok"], report["fsck_output"]
    assert report["mismatched"] == attacked and report["missing"] == []


def test_attack_fraction_bounds(volume: VolumeImage) -> None:
    assert ransomware_attack(volume, rng=random.Random(0), fraction=0.0) == []
    assert len(ransomware_attack(volume, rng=random.Random(0), fraction=1e-9)) == 1
    with pytest.raises(UsageError):
        ransomware_attack(volume, rng=random.Random(0), fraction=1.5)


def test_verify_reports_missing_files_and_a_broken_filesystem(volume: VolumeImage) -> None:
    expected = {**volume.files, "/records/no-such-file.md": "0" * 64}
    report = verify_volume(volume.path, expected)
    assert report["fsck_ok"] and report["missing"] == ["/records/no-such-file.md"] and report["mismatched"] == []

    with open(volume.path, "r+b") as f:  # zero the primary superblock (offset 1024, 1 KiB)
        f.seek(1024)
        f.write(bytes(1024))
    broken = verify_volume(volume.path, volume.files)
    assert not broken["fsck_ok"]
    assert broken["fsck_output"]
    assert broken["missing"] == sorted(volume.files)


def test_read_back_of_a_path_not_in_the_image_is_none(volume: VolumeImage) -> None:
    sums = read_file_checksums(volume.path, ["/admin/staff_roster.csv", "/nope"])
    assert sums == {"/admin/staff_roster.csv": volume.files["/admin/staff_roster.csv"], "/nope": None}


def test_writing_into_something_that_is_not_ext4_is_a_tool_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(random.Random(0).randbytes(SIZE_BYTES // 8))
    image = VolumeImage(path=junk, size_bytes=SIZE_BYTES // 8, block_size_fs=4096, files={"/records/a.md": "0" * 64})
    with pytest.raises(ToolError) as caught:
        ordinary_changes(image, rng=random.Random(0), n_files=1)
    assert caught.value.evidence["stderr_tail"]
