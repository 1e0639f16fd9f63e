"""Per-block owners of an ext2/3/4 file system (:attr:`ext4alloc.Ext4Allocation.owners`, issue 14).

Real ext4 images (``mkfs.ext4`` on a file) changed through a real loop mount (root); the inode
numbers the reader gives each block are checked against e2fsprogs' own ``debugfs icheck``.
Every mount and loop device is undone by path in ``finally`` (the helpers of test_ext4alloc).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from replicad.core import ext4alloc
from tests.unit.core.test_ext4alloc import _image_reader, _mkfs, _mounted, _text, needs_root

pytestmark = pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs e2fsprogs (debugfs)")


def _icheck(img: Path, blocks: list[int]) -> dict[int, int]:
    """``debugfs icheck``: the inode owning each block, 0 where none (``<block not found>``)."""
    out: dict[int, int] = {}
    for i in range(0, len(blocks), 500):
        text = subprocess.run(["debugfs", "-R", "icheck " + " ".join(map(str, blocks[i:i + 500])), str(img)],
                              capture_output=True, text=True, timeout=120, check=True).stdout
        for line in text.splitlines()[1:]:
            block, ino = line.split("\t")[:2]
            out[int(block)] = 0 if "not found" in ino else int(ino)
    return out


def _allocation(img: Path) -> ext4alloc.Ext4Allocation:
    f, read = _image_reader(img)
    with f:
        a = ext4alloc.read_allocation(read, img.stat().st_size)
    assert a is not None
    return a


@needs_root
@pytest.mark.parametrize("block_size", [1024, 4096])
def test_owners_match_debugfs_and_change_when_a_new_file_reuses_the_blocks(tmp_path: Path, block_size: int) -> None:
    """Every block an inode references (a fragmented file's tree blocks and extents included) is
    given the inode ``debugfs icheck`` names; free blocks none. A file deleted and a new one
    written over its blocks: the same blocks now name the new inode (what a table rewritten into
    a new file, or a copy encrypted over a deleted original, looks like), while a file rewritten
    in place keeps its inode."""
    img, mnt = tmp_path / "a.img", tmp_path / "mnt"
    _mkfs(img, 64, block_size)
    r = random.Random(2)
    with _mounted(img, mnt):
        for i in range(10):
            (mnt / f"f{i}.txt").write_bytes(_text(r, 400_000))
        with open(mnt / "fragmented", "wb") as f:  # a tree deeper than the inode's four extents
            for i in range(200):
                f.write(r.randbytes(block_size))
                f.flush()
                os.fsync(f.fileno())
                with open(mnt / f"gap{i}", "wb") as gap:
                    gap.write(b"x" * block_size)
        os.sync()
        inode = {p.name: p.stat().st_ino for p in mnt.iterdir() if p.is_file()}
    a = _allocation(img)
    assert a.owners is not None
    referenced = np.flatnonzero(a.referenced).tolist()
    free = r.sample(np.flatnonzero(a.in_use == 0).tolist(), 300)
    sample = sorted(set(r.sample(referenced, min(3000, len(referenced))) + free))
    want = _icheck(img, sample)
    got = a.owner(np.array(sample))
    assert got is not None
    got = got & 0xFFFFFFFF  # the inode number (the generation above it)
    wrong = [(b, want[b], int(g)) for b, g in zip(sample, got) if want[b] != int(g)]
    # the only blocks debugfs names that the reader does not: extended-attribute blocks (none
    # here) and the ext2-style resize inode (7), which holds no file data
    assert all(w == 7 and g == 0 for _, w, g in wrong), wrong[:10]
    owners = a.owner(np.arange(a.blocks))
    assert {int(x) & 0xFFFFFFFF for x in owners} >= {inode["fragmented"], inode["f3.txt"]}
    assert (a.owner(np.array(free)) == 0).all()
    f3 = np.flatnonzero(owners & 0xFFFFFFFF == inode["f3.txt"])
    f5 = np.flatnonzero(owners & 0xFFFFFFFF == inode["f5.txt"])
    assert len(f3) >= 400_000 // block_size and len(set(owners[f3].tolist())) == 1
    with _mounted(img, mnt):
        (mnt / "f3.txt").unlink()
        os.sync()
        (mnt / "copy.bin").write_bytes(r.randbytes(400_000))  # ext4 hands out the freed blocks again
        with open(mnt / "f5.txt", "r+b") as f:  # in place: the same inode's blocks
            f.write(r.randbytes(400_000))
        os.sync()
        copy = (mnt / "copy.bin").stat().st_ino
    b = _allocation(img)
    after = b.owner(np.arange(b.blocks))
    assert (after[f5] == owners[f5]).all()  # rewritten in place: the same owner
    assert int(owners[f3[0]]) not in set(after.tolist())  # f3's owner is gone, even if copy.bin got its number
    reused = f3[after[f3] != 0]
    assert len(reused) and (after[reused] & 0xFFFFFFFF == copy).all(), (len(reused), set(after[f3].tolist()))


def test_owner_lookup_and_forged_overlaps() -> None:
    """:meth:`Ext4Allocation.owner` on hand-made ranges (before, inside, between, after them);
    two inodes mapping one block (forged: ext4 has no shared extents) keep no owners; more than
    :data:`ext4alloc.OWNER_EXTENTS_MAX` ranges keep none either."""
    z = np.zeros(100, dtype=np.uint8)
    owners = (np.array([10, 20, 50]), np.array([5, 1, 10]), np.array([12, 13, 14]))
    a = ext4alloc.Ext4Allocation(4096, 100, z, z, z, owners=owners)
    assert a.owner(np.array([0, 9, 10, 14, 15, 20, 21, 49, 50, 59, 60, 99])).tolist() == \
        [0, 0, 12, 12, 0, 13, 0, 0, 14, 14, 0, 0]
    assert ext4alloc.Ext4Allocation(4096, 100, z, z, z).owner(np.array([10])) is None
    w = ext4alloc._Walker(lambda o, n: bytes(n), 4096, 100, np.zeros(100, np.uint8))
    w._own(np.array([10, 12]), np.array([5, 1]), np.array([12, 13]))  # block 12 twice
    assert w.owners() is None
    w = ext4alloc._Walker(lambda o, n: bytes(n), 4096, 100, np.zeros(100, np.uint8))
    w._own(np.array([30, 10]), np.array([2, 5]), np.array([7, 6]))
    start, length, ino = w.owners()
    assert start.tolist() == [10, 30] and ino.tolist() == [6, 7]
    w._owned_n = ext4alloc.OWNER_EXTENTS_MAX
    w._own(np.array([50]), np.array([1]), np.array([8]))
    assert w.owners() is None
