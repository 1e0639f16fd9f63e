"""A plain attack must be seen wherever the snapshot boundary falls (issue 14).

An operator's run: 230 letters on a 64 MiB ext4 of 1 KiB blocks, loop-mounted, snapshotted every 10 s
without a freeze, and ``for f in *.txt; do openssl enc -aes-256-ctr ... -in $f -out $f.tmp && cat
$f.tmp > $f && rm $f.tmp; done`` (~1 s) straddling a cycle. Every snapshot was judged clean at all
three sites: the one taken during the loop held the ciphertext as data in free space while the
metadata mapping it (the truncations, the new extents) was not yet committed or not yet written home
from the journal, so the files still started with their letters and nothing was released; the next
one, whose maps showed both, wrote nothing random and conservation across snapshots was not measured.

Two causes, two fixes, both tested here:

* the file-system maps are read as a mount would see them: the committed transactions of the jbd2
  journal replayed over the home locations (:func:`replicad.core.ext4alloc.journal_copies`);
* once random bytes were written since the anchor, conservation across snapshots is measured at every
  snapshot (:attr:`replicad.core.anomaly.Paired.wrote`): the metadata naming a file's new first bytes
  may reach the volume a snapshot later than the bytes.

Real ext4 images (``mkfs.ext4``; ``debugfs``'s journal commands for a journal holding what the home
locations do not; the kernel's own ext4 on a loop device for the operator's loop), real snapshots in a
real chunk store, judged by the daemon's ``Detection._signals`` and :func:`anomaly.judge_relative` with
the windows' state carried as the daemon carries it.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import time
import types
from pathlib import Path

import pytest

from replicad.core import anomaly, ext4alloc
from replicad.site.detection import Detection
from replicad.sources.file import take_snapshot
from replicad.storage.chunkstore import ChunkStore
from tests.bench.detection import letter, make_ext4, mounted

needs_e2fs = pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None
                                or shutil.which("e2fsck") is None, reason="needs e2fsprogs")
needs_mount = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("losetup") is None
                                 or shutil.which("openssl") is None,
                                 reason="loop-mounting ext4 needs root, losetup and openssl")

LOOP = ('for f in "$@"; do openssl enc -aes-256-ctr -pass pass:x -pbkdf2 -in $f -out $f.tmp '
        '&& cat $f.tmp > $f && rm $f.tmp; done')
"""The operator's attack, verbatim but for the file list."""


def _run(argv: list[str]) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, (argv, res.stderr)
    return res.stdout


def _allocation(img: Path) -> ext4alloc.Ext4Allocation:
    with open(img, "rb") as f:
        def read(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)
        alloc = ext4alloc.read_allocation(read, img.stat().st_size)
    assert alloc is not None
    return alloc


def _heads(alloc: ext4alloc.Ext4Allocation) -> set[tuple[int, int, int]]:
    return {tuple(r) for r in alloc.heads.tolist()}


@needs_e2fs
@pytest.mark.parametrize("block_size", [1024, 4096])
def test_the_maps_are_read_with_the_journal_replayed(tmp_path: Path, block_size: int) -> None:
    """A mounted ext4 commits metadata to its journal first and writes it home later: an image read
    in between has the new files' data in place and their inodes, bitmaps and group descriptors
    only in the journal. Built here with ``debugfs``: image B is image A plus 20 new files; image C
    is A with B's data blocks written in place and B's changed metadata blocks written as one
    committed journal transaction (``jo``/``jw``/``jc``: what a mount would replay). C's maps read
    as B's (before: as A's, the new files unseen), and as the image ``e2fsck`` replays."""
    r = random.Random(block_size)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"letter_{i:02d}.txt").write_bytes(letter(r, r.randint(300, 3000)).encode())
    a, b, c = tmp_path / "a.img", tmp_path / "b.img", tmp_path / "c.img"
    with open(a, "wb") as f:
        f.truncate(48 << 20)
    _run(["mkfs.ext4", "-q", "-F", "-b", str(block_size), "-d", str(src), str(a)])
    shutil.copy(a, b)
    cmds = []
    for i in range(20):
        (tmp_path / f"n{i}").write_bytes(b"Salted__" + r.randbytes(r.randint(2000, 30000)))
        cmds.append(f"write {tmp_path / f'n{i}'} new_{i:02d}.bin")
    (tmp_path / "cmds").write_text("".join(x + "\n" for x in cmds))
    _run(["debugfs", "-w", "-f", str(tmp_path / "cmds"), str(b)])
    old, new = a.read_bytes(), b.read_bytes()
    diff = [i for i in range(len(old) // block_size)
            if old[i * block_size:(i + 1) * block_size] != new[i * block_size:(i + 1) * block_size]]
    want = _allocation(b)
    sb_block = 1024 // block_size
    data = [i for i in diff if want.written[i] and i != sb_block]
    meta = [i for i in diff if not want.written[i] and i != sb_block]
    assert data and meta, (data, meta)
    shutil.copy(a, c)
    with open(c, "r+b") as f:
        for i in data:
            f.seek(i * block_size)
            f.write(new[i * block_size:(i + 1) * block_size])
    (tmp_path / "jblocks").write_bytes(b"".join(new[i * block_size:(i + 1) * block_size] for i in meta))
    (tmp_path / "jcmds").write_text(f"jo\njw -b {','.join(map(str, meta))} {tmp_path / 'jblocks'}\njc\n")
    _run(["debugfs", "-w", "-f", str(tmp_path / "jcmds"), str(c)])
    assert "needs_recovery" in _run(["dumpe2fs", "-h", str(c)])

    got = _allocation(c)
    stale = _allocation(a)
    assert _heads(got) == _heads(want) and len(_heads(got) - _heads(stale)) == 20
    assert (got.written == want.written).all() and (got.in_use == want.in_use).all()
    replayed = tmp_path / "replayed.img"
    shutil.copy(c, replayed)
    subprocess.run(["e2fsck", "-fy", str(replayed)], capture_output=True, timeout=120, check=False)
    assert _heads(_allocation(replayed)) == _heads(got)


def _judge_series(work: Path, images: list[Path]) -> list[tuple[int, anomaly.RelativeVerdict, anomaly.SnapshotSignals]]:
    """Snapshot each image in turn into one store (#1 the anchor), judge #2... against the newest
    snapshot judged clean with the windows' state carried from that verdict, as the daemon does."""
    store = ChunkStore(work / "store")
    det = Detection(types.SimpleNamespace(site_id="t"), store, None, work, lambda v: {}, None)  # type: ignore[arg-type]
    ms = []
    for seq, img in enumerate(images, start=1):
        ms.append(asyncio.run(take_snapshot(img, volume="v", seq=seq, epoch=1, parent=ms[-1] if ms else None,
                                            store=store, now_ns=time.time_ns())).manifest)
    anchor = base = ms[0]
    carried: dict = {}
    out = []
    for m in ms[1:]:
        sig = det._signals(m, base, None, anchor=None if base is anchor else (lambda: anchor),
                           paired=carried.get(anomaly.PAIRED) if carried else None, elapsed_s=10.0)
        v = anomaly.judge_relative(m.seq, sig, [], [], dict(anomaly.POLICY_DEFAULTS), carried=carried, elapsed_s=10.0)
        out.append((m.seq, v, sig))
        if v.verdict == "clean":
            base, carried = m, v.slow
    return out


def _letters_intact(img: Path, mnt: Path, letters: dict[str, bytes]) -> list[str]:
    """The letters that do not read back as written, mounting a copy of ``img`` (the kernel replays
    its journal, as a restore's mount would)."""
    copy = img.with_name(img.name + ".check")
    shutil.copy(img, copy)
    try:
        with mounted(copy, mnt):
            return [n for n, data in letters.items() if (mnt / n).read_bytes() != data]
    finally:
        copy.unlink()


@needs_mount
@needs_e2fs
@pytest.mark.timeout(600)
@pytest.mark.parametrize("split", [0.1, 0.5, 0.9])
def test_the_operators_in_place_loop_is_seen_wherever_the_boundary_falls(tmp_path: Path, split: float) -> None:
    """The operator's volume (64 MiB ext4, 1 KiB blocks, 230 letters) and loop, snapshotted while
    mounted and without a freeze: #1 the clean anchor; #2 right after the loop's first ``split`` of
    the files (nothing synced: the data written, the metadata partly in the running transaction);
    #3 right after the last file; #4 after ``sync`` (the journal committed, home locations
    written); #5 after the unmount. Some snapshot is judged suspect and the restore point it names
    (the snapshot before its first suspicious one) mounts with every letter intact. Before the two
    fixes: every snapshot clean in the operator's run; here at the split of 0.5, #2-#5 clean with
    neither the relative window nor conservation across snapshots measured after the maps caught
    up (seen in some runs only by the relative window's 3.3 %, depending on where ext4 put the
    ciphertext)."""
    r = random.Random(int(split * 100))
    img, mnt = tmp_path / "v.img", tmp_path / "mnt"
    make_ext4(img, 64, 1024)
    images: list[Path] = []

    def keep() -> None:  # the snapshot's image as the file source reads it now, kept for the judge
        out = tmp_path / f"s{len(images) + 1}.img"
        _run(["cp", "--sparse=always", str(img), str(out)])
        images.append(out)
    letters: dict[str, bytes] = {}
    with mounted(img, mnt):
        for i in range(230):
            data = letter(r, r.randint(300, 4000)).encode()
            (mnt / f"doc{i:03d}.txt").write_bytes(data)
            letters[f"doc{i:03d}.txt"] = data
        _run(["sync", "-f", str(mnt)])
        keep()
        files = sorted(str(p) for p in mnt.glob("*.txt"))
        k = int(len(files) * split)
        _run(["bash", "-c", LOOP, "loop", *files[:k]])
        keep()
        _run(["bash", "-c", LOOP, "loop", *files[k:]])
        keep()
        _run(["sync", "-f", str(mnt)])
        keep()
        assert all((mnt / n).read_bytes().startswith(b"Salted__") for n in letters)
    keep()
    judged = _judge_series(tmp_path, images)
    suspect = [(seq, v) for seq, v, _ in judged if v.verdict == "suspect"]
    assert suspect, [(seq, v.verdict, s.summary()) for seq, v, s in judged]
    seq, v = suspect[0]
    assert v.first_suspect_seq is not None
    restore = v.first_suspect_seq - 1
    assert restore >= 1
    broken = _letters_intact(images[restore - 1], tmp_path / "check", letters)
    assert not broken, (f"the restore point #{restore} named by #{seq} ({v.reasons}) holds {len(broken)} "
                        f"letters that are not the originals")
    # every snapshot from the first suspicious one on stays suspect (its base is the last clean one)
    assert all(v.verdict == "suspect" for s, v, _ in judged if s >= seq), [(s, v.verdict) for s, v, _ in judged]


@pytest.mark.parametrize("freed, released, says, never", [
    (0.0, 40.0, ("40.0% released by the files and left in place", "the old blocks left in place"), ("discarded",)),
    (40.0, 0.0, ("40.0% became zeros: discarded or zeroed", "the old blocks discarded"), ("left in place",)),
    (10.0, 30.0, ("10.0% became zeros", "30.0% released by the files and left in place",
                  "partly discarded, partly left"), ()),
])
def test_the_conservation_reason_says_what_was_measured(freed: float, released: float, says: tuple,
                                                        never: tuple) -> None:
    """The sentence of a snapshot flagged by conservation names the freed side as measured: blocks
    that became zeros (discarded or zeroed) and blocks the files released and left in place. Before,
    every such verdict ended in "copy-encrypt-delete with freed blocks discarded", also when nothing
    was discarded (the operator's in-place loop: 85.6 % released and left in place, 0 zeros)."""
    s = anomaly.SnapshotSignals(data_blocks=100)
    s.structure_freed, s.structure_released, s.random_filled = freed, released, 38.0
    v = anomaly.judge_relative(2, s, [], [], dict(anomaly.POLICY_DEFAULTS))
    (reason,) = [r for r in v.reasons if r.startswith("conservation:")]
    assert all(x in reason for x in says) and not any(x in reason for x in never), reason


def test_the_conservation_reason_never_says_more_than_all_of_the_data() -> None:
    """Random bytes copied into free space can pass the size of the data before them (a volume
    that held little): said as blocks and ``times the data``, never ``206.3%`` of it."""
    s = anomaly.SnapshotSignals(data_blocks=36)
    s.structure_freed, s.structure_released, s.random_filled = 0.0, 36.0, 74.27
    (reason,) = [r for r in anomaly.judge_relative(2, s, [], [], dict(anomaly.POLICY_DEFAULTS)).reasons
                 if r.startswith("conservation:")]
    assert "74 blocks' worth (2.1 times the data)" in reason and "206" not in reason, reason
    s.random_filled = 18.0
    (reason,) = [r for r in anomaly.judge_relative(2, s, [], [], dict(anomaly.POLICY_DEFAULTS)).reasons
                 if r.startswith("conservation:")]
    assert "18 blocks' worth (50.0% of the data)" in reason, reason
