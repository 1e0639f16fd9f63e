"""Conservation on a volume that does not discard (issue 14): copy-encrypt-delete whose originals
are unlinked and left in place (no ``fstrim``, no ``-o discard``: their bytes stay as free space,
nothing becomes zeros) is weighed by what the files released, read from both snapshots' ext4 maps
(:meth:`replicad.site.detection.Detection._released`,
:attr:`replicad.core.anomaly.SnapshotSignals.structure_released`).

Real ext4 images (``mkfs.ext4 -d``, 1 KiB and 4 KiB blocks), changed by ``debugfs -w`` (``write``
allocates a new file in free space as the kernel would; ``rm`` unlinks: metadata only, the bytes
stay), snapshotted into a real chunk store by the file source and judged by the daemon's own
``Detection._signals`` and :func:`anomaly.judge_relative`. No mounts.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import uuid
import random
import shutil
import time
import types
from pathlib import Path

import pytest

from replicad.core import anomaly
from replicad.site.detection import Detection
from replicad.sources.file import take_snapshot
from replicad.storage.chunkstore import ChunkStore
from tests.unit.core.test_ext4alloc import _run, _text

pytestmark = pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
                                reason="needs e2fsprogs")
LETTERS = 120


def _volume(tmp_path: Path, block_size: int) -> tuple[Path, Path, list[bytes]]:
    """A 48 MiB ext4 of 120 letters of 8-40 KiB (text) and 40 scans of 64 KiB (random: already
    compressed), built by ``mkfs.ext4 -d``; returns the image, a host scratch directory and the
    letters' bytes."""
    r = random.Random(block_size)
    src, scratch, img = tmp_path / "src", tmp_path / "scratch", tmp_path / "v.img"
    src.mkdir()
    scratch.mkdir()
    letters = []
    for i in range(LETTERS):
        data = _text(r, r.randint(8, 40) * 1024)
        letters.append(data)
        (src / f"letter_{i:03d}.txt").write_bytes(data)
    for i in range(40):
        (src / f"scan_{i:03d}.jpg").write_bytes(r.randbytes(64 * 1024))
    with open(img, "wb") as f:
        f.truncate(48 << 20)
    _run(["mkfs.ext4", "-q", "-F", "-b", str(block_size), "-d", str(src), str(img)])
    return img, scratch, letters


def _debugfs(img: Path, scratch: Path, cmds: list[str]) -> None:
    (scratch / "cmds").write_text("".join(c + "\n" for c in cmds))
    _run(["debugfs", "-w", "-f", str(scratch / "cmds"), str(img)])


def _judge(tmp_path: Path, img: Path, change) -> tuple[anomaly.SnapshotSignals, anomaly.RelativeVerdict]:
    """Snapshot ``img`` (#1), apply ``change()``, snapshot again (#2) and judge #2 against #1."""
    store = ChunkStore(tmp_path / "store")
    det = Detection(types.SimpleNamespace(site_id="t"), store, None, tmp_path, lambda v: {}, None)  # type: ignore[arg-type]
    snap = lambda seq, parent: asyncio.run(take_snapshot(  # noqa: E731
        img, volume="v", seq=seq, epoch=1, parent=parent, store=store, now_ns=time.time_ns())).manifest
    m1 = snap(1, None)
    change()
    m2 = snap(2, m1)
    sig = det._signals(m2, m1, None)
    return sig, anomaly.judge_relative(2, sig, [], [], dict(anomaly.POLICY_DEFAULTS))


@pytest.mark.parametrize("encoding", ["gz", "base64"])
@pytest.mark.parametrize("block_size", [1024, 4096])
def test_copy_encrypt_delete_as_gz_without_discard_is_conservation(tmp_path: Path, block_size: int,
                                                                   encoding: str) -> None:
    """The bench's ``.gz``-named attacker (gzip level 0 around AES output: a valid gzip stream,
    and ``.gz`` is what ``gzip *`` writes, so the rename signal is silent) on a volume that does
    not discard: every letter's ciphertext written into free space (fresh: never scored), the
    originals unlinked and left in place. Nothing turned random against its previous version and
    nothing became zeros: before the files' maps were read, 0 conserved, clean. Now the letters'
    released text (in place, found nowhere in what was written) is weighed against the random bytes
    filled in: suspect by conservation. The same with the ciphertext as MIME base64 under ``.bak``
    (another exempt name; 6 bits/byte, never random by entropy): its memoryless bytes count as
    random filled (:data:`anomaly.ENCODED_FILL_ENTROPY_MIN`)."""
    img, scratch, letters = _volume(tmp_path, block_size)

    def attack() -> None:
        cmds = []
        for i, data in enumerate(letters):
            host = scratch / f"c{i}"
            c = random.Random(i).randbytes(len(data))
            host.write_bytes(gzip.compress(c, compresslevel=0) if encoding == "gz" else base64.encodebytes(c))
            cmds.append(f"write {host} letter_{i:03d}.txt.{'gz' if encoding == 'gz' else 'bak'}")
        # every copy first, then the originals unlinked: the ciphertext lands in never-used space
        # (written in between, ext4 reuses the freed blocks and the relative score sees it)
        _debugfs(img, scratch, cmds + [f"rm letter_{i:03d}.txt" for i in range(len(letters))])
    sig, v = _judge(tmp_path, img, attack)
    assert sig.score < 0.02 and sig.wiped == 0 and sig.structure_freed == 0, sig.summary()
    assert sig.structure_released / sig.data_blocks > 0.3, sig.summary()
    assert sig.random_filled >= anomaly.CONSERVE_RATIO_MIN * sig.structure_released, sig.summary()
    assert v.verdict == "suspect" and any(r.startswith("conservation:") and "released by the files" in r
                                          for r in v.reasons), v.reasons


@pytest.mark.parametrize("block_size", [1024, 4096])
def test_gzip_moves_and_imports_release_nothing_that_counts(tmp_path: Path, block_size: int) -> None:
    """Benign, on the same volume: ``gzip`` of every letter (the same names; real deflate of text
    fills a fraction of what it releases: under ``CONSERVE_RATIO_MIN``); a move of every letter
    (copied under a new name, then unlinked) beside an import of as many bytes of compressed scans
    in the same snapshot (``e4defrag`` moving text and images: the text's bytes are written
    elsewhere, so nothing is released); deleting the scans (random: nothing structured released)
    beside the import. All clean, no conservation."""
    img, scratch, letters = _volume(tmp_path, block_size)

    def gzip_all() -> None:
        cmds = []
        for i, data in enumerate(letters):
            (scratch / f"g{i}").write_bytes(gzip.compress(data))
            cmds.append(f"write {scratch / f'g{i}'} letter_{i:03d}.txt.gz")
        _debugfs(img, scratch, cmds + [f"rm letter_{i:03d}.txt" for i in range(len(letters))])
    sig, v = _judge(tmp_path, img, gzip_all)
    assert sig.structure_released / sig.data_blocks > 0.3 and sig.conserved_counted == 0, sig.summary()
    assert v.verdict == "clean", v.reasons

    (tmp_path / "b").mkdir()
    img, scratch, letters = _volume(tmp_path / "b", block_size)

    def move_and_import() -> None:
        r = random.Random(7)
        cmds = []
        for i, data in enumerate(letters):
            (scratch / f"m{i}").write_bytes(data)
            (scratch / f"i{i}").write_bytes(r.randbytes(len(data)))
            cmds += [f"write {scratch / f'm{i}'} moved_{i:03d}.txt", f"write {scratch / f'i{i}'} import_{i:03d}.jpg"]
        cmds += [f"rm letter_{i:03d}.txt" for i in range(len(letters))] + [f"rm scan_{i:03d}.jpg" for i in range(40)]
        _debugfs(img, scratch, cmds)
    sig, v = _judge(tmp_path / "b", img, move_and_import)
    assert sig.random_filled / sig.data_blocks > 0.3, sig.summary()
    assert sig.structure_released / sig.data_blocks < 0.01 and sig.conserved < 0.01, sig.summary()
    assert v.verdict == "clean", v.reasons


def test_structured_pieces() -> None:
    """Text and a sparse record (0.81 bit/byte) are structured, zeros and random (1 KiB: ~7.8
    bits/byte) are not, by pieces of the file system's block size."""
    r = random.Random(3)
    raw = _text(r, 4096) + bytes(4096) + r.randbytes(4096) + b"\x01\x00\x00\x00" * 1024
    assert anomaly.structured_pieces(raw, 1024).tolist() == [True] * 4 + [False] * 8 + [True] * 4
    assert anomaly.structured_pieces(raw, 4096).tolist() == [True, False, False, True]
    assert anomaly.structured_pieces(b"", 1024).tolist() == []


def test_encoded_random_written_into_zeros_counts_as_random_filled() -> None:
    """Over zeros (fresh space): base64 and hex of random bytes (and a UUID list: the documented
    class of random data in an encoding) are random filled like ciphertext itself; text, logs and
    CSV are not, and a block lz4 shrank is not asked (the chunk store's ratio)."""
    r = random.Random(9)
    c = os.urandom(64 * 1024)
    block = 64 * 1024
    encoded = {"base64": base64.encodebytes(c)[:block], "hex": c.hex().encode()[:block],
               "uuids": b"\n".join(str(uuid.UUID(int=r.getrandbits(128))).encode() for _ in range(2000))[:block]}
    plain = {"text": _text(r, block),
             "log": b"".join(b"2026-12-07 12:%02d:%02d pump %d ok flow %d\n" % (r.randint(0, 59), r.randint(0, 59),
                                                                               r.randint(1, 40), r.randint(0, 999))
                             for _ in range(3000))[:block],
             "csv": b"".join(b"%d,%.3f,%.3f\n" % (i, r.random(), r.random() * 100) for i in range(4000))[:block]}
    for name, data in encoded.items():
        assert anomaly.compare_block(data, None).random_filled == 1.0, name
        assert anomaly.compare_block(data, None, lz4_new=0.5).random_filled == 0.0, name
    for name, data in plain.items():
        assert anomaly.compare_block(data, None).random_filled == 0.0, name
    assert anomaly.compare_block(c, None).random_filled == 1.0
