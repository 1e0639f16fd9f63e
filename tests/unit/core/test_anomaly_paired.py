"""Conservation across snapshots (issue 14): copy-encrypt-delete split over two snapshots (the
ciphertext copies written in one, the originals deleted in the next) on a volume that does not
discard. Per snapshot the halves never meet (the first fills random bytes and releases nothing,
the second releases and fills nothing); against the anchor both are there. Only new files whose
first bytes read as ciphertext count on the filled side (:mod:`replicad.core.filehead`), so a
share that imports scans and archives and deletes letters pairs nothing.

Real ext4 images (``mkfs.ext4 -d``, 1 KiB and 4 KiB blocks) changed by ``debugfs -w`` (``write``
allocates like the kernel, ``rm`` unlinks and leaves the bytes), snapshotted into a real chunk
store by the file source and judged by the daemon's own ``Detection._signals`` and
:func:`anomaly.judge_relative`, the windows' state carried as the daemon carries it. No mounts.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import lzma
import random
import shutil
import struct
import tarfile
import time
import types
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from replicad.core import anomaly, ext4alloc, filehead
from replicad.site.detection import Detection
from replicad.sources.file import take_snapshot
from replicad.storage.chunkstore import ChunkStore
from tests.unit.core.test_ext4alloc import _run, _text

needs_e2fs = pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
                                reason="needs e2fsprogs")


def _aes(data: bytes, seed: int) -> bytes:
    r = random.Random(seed)
    enc = Cipher(algorithms.AES(r.randbytes(32)), modes.CTR(r.randbytes(16))).encryptor()
    return enc.update(data) + enc.finalize()


def _png(r: random.Random, w: int = 256, h: int = 256) -> bytes:
    """A real PNG (grey, zlib IDAT) of a noisy scan, as the benchmark writes."""
    g = np.random.default_rng(r.getrandbits(64))
    pix = ((np.arange(h)[:, None] * 255 // h + g.integers(-60, 61, (h, w))) & 0xFF).astype(np.uint8)
    rows = np.concatenate([np.zeros((h, 1), dtype=np.uint8), pix], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


def _zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _targz(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_file_starts_that_read_as_ciphertext() -> None:
    """Ciphertext as a new file, in the forms an attacker writes it: raw, inside gzip (level 0, the
    bench's ``.gz`` attacker, and level 9), xz, a stored zip entry, behind an encryption format's
    header, behind 200 bytes of its own header, behind a PNG, JPEG or bzip2 signature whose
    structure does not check out (and DICOM, PDF, MP4 and RIFF signatures without their first
    structures), as octal, binary or hex digits, compressed before encryption.
    All read as ciphertext."""
    r = random.Random(3)
    text = _text(r, 20000)
    c = _aes(text, 1)
    jpeg_head = (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
                 b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00")
    octal = "".join(f"{b:03o}" for b in c).encode()
    attacks = {
        "raw": c, "gzip level 0": gzip.compress(c, compresslevel=0), "gzip level 9": gzip.compress(c),
        "octal digits": b"\n".join(octal[i:i + 64] for i in range(0, len(octal), 64)),
        "binary digits": "".join(f"{b:08b}" for b in c[:2000]).encode(), "hex": c.hex().encode(),
        "compressed, then encrypted": _aes(zlib.compress(text * 4), 2),
        "xz": lzma.compress(c), "zip stored": _zip({"a.bin": c}, zipfile.ZIP_STORED),
        "openssl enc": b"Salted__" + c, "own header": b"LOCKEDv2" * 25 + c,
        "fake png": b"\x89PNG\r\n\x1a\n" + c, "fake jpeg": jpeg_head + c, "fake bzip2": b"BZh9" + c,
        "fake dicom": bytes(128) + b"DICM" + c, "fake pdf": b"%PDF-1.7\n" + c,
        "fake mp4": b"\x00\x00\x00\x18ftypisom" + c, "fake riff": b"RIFF\x00\x10\x00\x00" + c,
    }
    for name, data in attacks.items():
        assert filehead.ciphertext_like(data[:4096]) is not None, name


def _toast_page(r: random.Random) -> bytes:
    """A PostgreSQL TOAST page (``bufpage.h`` layout 4, 8 KiB): the page header, four line pointers
    and four chunks of 1,996 bytes of already-compressed data (an image ``bytea``) from the end."""
    page = bytearray(8192)
    upper = 8192
    for i in range(4):
        t = bytes(24) + struct.pack("<IIi", 16384 + i, i, 2000 << 2) + r.randbytes(1996)
        upper -= (len(t) + 7) // 8 * 8
        page[upper:upper + len(t)] = t
        struct.pack_into("<I", page, 24 + 4 * i, upper | (1 << 15) | (len(t) << 17))
    struct.pack_into("<QHHHHHHI", page, 0, 0x1234, 0, 0, 24 + 16, upper, 8192, 0x2004, 0)
    return bytes(page)


def test_file_starts_of_benign_imports_do_not() -> None:
    """What a file share imports and writes: letters, real PNG scans, gzip of text (log rotation),
    a ``.tar.gz`` of letters and of PNG scans, zip archives (deflated text and PNG, and PNG
    stored), xz and bzip2 of text, gzip of a PNG, SQLite, ELF and MATLAB headers before
    random-looking bytes, DICOM with compressed pixel data, a PDF and an MP4 whose bodies are
    compressed, a PostgreSQL TOAST file of image ``bytea`` values (compressed data behind page and
    tuple headers), an ODF document (a stored ``mimetype`` entry before deflated ones), a
    CSV of measurements, a file shorter than ``HEAD_MIN``. None reads as ciphertext."""
    r = random.Random(5)
    text = _text(r, 20000)
    scan = _png(r)
    benign = {
        "letter": text, "png": scan, "gzip of text": gzip.compress(text), "tar.gz of letters": _targz({"l.txt": text}),
        "tar.gz of scans": _targz({"s.png": scan}), "zip": _zip({"s.png": scan, "n.txt": text}),
        "zip of a stored png": _zip({"s.png": scan}, zipfile.ZIP_STORED), "xz of text": lzma.compress(text),
        "bzip2 of text": bz2.compress(text), "gzip of a png": gzip.compress(scan),
        "sqlite": b"SQLite format 3\x00" + r.randbytes(8000), "elf": b"\x7fELF" + r.randbytes(8000),
        "short": r.randbytes(filehead.HEAD_MIN - 1),
        "odf (stored mimetype first)": _zip({"mimetype": b"application/vnd.oasis.opendocument.text"},
                                            zipfile.ZIP_STORED)[:-22] + _zip({"content.xml": text * 3})[:-22],
        "csv of measurements": "".join(f"{i},{r.uniform(0, 200):.2f},{r.choice(('Na', 'K', 'Hb'))}\n"
                                       for i in range(400)).encode(),
        "matlab": b"MATLAB 5.0 MAT-file, Platform: GLNXA64".ljust(128, b" ") + zlib.compress(r.randbytes(6000)),
        "dicom, compressed pixels": bytes(128) + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\xc8\x00\x00\x00"
        + b"\x02\x00\x10\x00UI\x16\x001.2.840.10008.1.2.4.90" + r.randbytes(6000),
        "pdf": b"%PDF-1.5\n%\xd0\xd4\xc5\xd8\n1 0 obj\n<< /Length 6000 /Filter /FlateDecode >>\nstream\n"
        + zlib.compress(r.randbytes(6000)),
        "mp4": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2\x00\x01\x00\x00mdat" + r.randbytes(6000),
        "postgresql toast of images": _toast_page(r) * 2,
    }
    for name, data in benign.items():
        assert filehead.ciphertext_like(data[:4096]) is None, name


def _volume(tmp_path: Path, block_size: int, letters: int = 120) -> tuple[Path, Path, list[bytes]]:
    """A 48 MiB ext4 of ``letters`` letters of 8-40 KiB and 20 real PNG scans (the anchor's data)."""
    r = random.Random(block_size)
    src, scratch, img = tmp_path / "src", tmp_path / "scratch", tmp_path / "v.img"
    src.mkdir()
    scratch.mkdir()
    out = []
    for i in range(letters):
        data = _text(r, r.randint(8, 40) * 1024)
        out.append(data)
        (src / f"letter_{i:03d}.txt").write_bytes(data)
    for i in range(20):
        (src / f"scan_{i:03d}.png").write_bytes(_png(r))
    with open(img, "wb") as f:
        f.truncate(48 << 20)
    _run(["mkfs.ext4", "-q", "-F", "-b", str(block_size), "-d", str(src), str(img)])
    return img, scratch, out


def _debugfs(img: Path, scratch: Path, cmds: list[str]) -> None:
    (scratch / "cmds").write_text("".join(c + "\n" for c in cmds))
    _run(["debugfs", "-w", "-f", str(scratch / "cmds"), str(img)])


def _series(tmp_path: Path, img: Path, steps: list) -> list[tuple[anomaly.SnapshotSignals, anomaly.RelativeVerdict]]:
    """Snapshot ``img`` (#1, the anchor), then per step apply it and snapshot (#2, #3, ...), each
    judged against the newest snapshot judged clean, with the anchor #1 and the windows' state
    carried from that clean verdict, as the daemon does."""
    store = ChunkStore(tmp_path / "store")
    det = Detection(types.SimpleNamespace(site_id="t"), store, None, tmp_path, lambda v: {}, None)  # type: ignore[arg-type]
    snap = lambda seq, parent: asyncio.run(take_snapshot(  # noqa: E731
        img, volume="v", seq=seq, epoch=1, parent=parent, store=store, now_ns=time.time_ns())).manifest
    anchor = base = snap(1, None)
    carried: dict = {}
    out = []
    for k, step in enumerate(steps, start=2):
        step()
        m = snap(k, base)
        sig = det._signals(m, base, None, anchor=None if base is anchor else (lambda: anchor),
                           paired=carried.get(anomaly.PAIRED) if carried else None)
        v = anomaly.judge_relative(k, sig, [], [], dict(anomaly.POLICY_DEFAULTS), carried=carried)
        out.append((sig, v))
        if v.verdict == "clean":
            base, carried = m, v.slow
    return out


@needs_e2fs
@pytest.mark.parametrize("block_size", [1024, 4096])
def test_copy_then_delete_in_the_next_snapshot_is_paired(tmp_path: Path, block_size: int) -> None:
    """The bench's split attacker: #2 writes every letter's ciphertext beside it as ``name.gz``
    (gzip level 0 around AES output) into never-used space, #3 unlinks the originals. #2 fills
    random bytes and releases nothing, #3 releases and fills nothing: each clean by every signal
    of one snapshot (before this signal: both clean, the standby applied #3). Against the anchor
    #3 holds both: suspect, by conservation across snapshots, its drift beginning at #2."""
    img, scratch, letters = _volume(tmp_path, block_size)

    def copies() -> None:
        cmds = []
        for i, data in enumerate(letters):
            (scratch / f"c{i}").write_bytes(gzip.compress(_aes(data, i), compresslevel=0))
            cmds.append(f"write {scratch / f'c{i}'} letter_{i:03d}.txt.gz")
        _debugfs(img, scratch, cmds)

    def deletes() -> None:
        _debugfs(img, scratch, [f"rm letter_{i:03d}.txt" for i in range(len(letters))])
    (s2, v2), (s3, v3) = _series(tmp_path, img, [copies, deletes])
    assert v2.verdict == "clean", v2.reasons
    assert s2.paired_measured and s2.ciphertext_files / s2.data_blocks > 0.3, s2.summary()
    assert s2.conserved_counted == 0 and s3.conserved_counted == 0, (s2.summary(), s3.summary())
    assert s3.released_since_anchor / s3.data_blocks > 0.3, s3.summary()
    assert v3.verdict == "suspect" and anomaly.PAIRED in v3.flagged, v3.reasons
    assert any(r.startswith("slow drift (conservation across snapshots") for r in v3.reasons), v3.reasons
    assert v3.first_suspect_seq == 2 and v3.slow[anomaly.PAIRED].began == 2


@needs_e2fs
@pytest.mark.parametrize("block_size", [1024, 4096])
def test_imports_then_deletes_pair_nothing(tmp_path: Path, block_size: int) -> None:
    """Benign over three snapshots: #2 imports as many bytes as the letters hold as real PNG scans,
    a zip of scans and letters, a ``.tar.gz`` and gzip-rotated logs (every file starts with its
    format's signature); #3 deletes every letter. Released structure since the anchor is large,
    ciphertext-like files none: clean. And ciphertext-like files alone (an encrypted backup
    copied in, nothing deleted): clean, nothing released."""
    img, scratch, letters = _volume(tmp_path, block_size)
    r = random.Random(9)

    def imports() -> None:
        cmds = []
        for i, data in enumerate(letters):
            kind = i % 4
            blob = (_png(r, 256, 64 + len(data) // 512) if kind == 0 else _zip({"s.png": _png(r), "n.txt": data})
                    if kind == 1 else _targz({"l.txt": data, "s.png": _png(r)}) if kind == 2
                    else gzip.compress(data + _text(r, len(data))))
            (scratch / f"i{i}").write_bytes(blob)
            cmds.append(f"write {scratch / f'i{i}'} import_{i:03d}.{('png', 'zip', 'tar.gz', 'log.gz')[kind]}")
        _debugfs(img, scratch, cmds)

    def deletes() -> None:
        _debugfs(img, scratch, [f"rm letter_{i:03d}.txt" for i in range(len(letters))])
    (s2, v2), (s3, v3) = _series(tmp_path, img, [imports, deletes])
    assert v2.verdict == "clean" and v3.verdict == "clean", (v2.reasons, v3.reasons)
    assert s2.ciphertext_files == 0 and s3.ciphertext_files == 0, (s2.ciphertext_examples, s3.ciphertext_examples)

    (tmp_path / "b").mkdir()
    img, scratch, letters = _volume(tmp_path / "b", block_size)

    def backup() -> None:
        (scratch / "bk").write_bytes(b"Salted__" + _aes(b"".join(letters), 1))
        _debugfs(img, scratch, [f"write {scratch / 'bk'} backup.enc"])
    ((s2, v2),) = _series(tmp_path / "b", img, [backup])
    assert s2.ciphertext_files / s2.data_blocks > 0.3 and s2.released_since_anchor == 0, s2.summary()
    assert v2.verdict == "clean", v2.reasons


@needs_e2fs
@pytest.mark.parametrize("block_size", [1024, 4096])
def test_heads_are_each_files_first_block(tmp_path: Path, block_size: int) -> None:
    """``Ext4Allocation.heads``: every regular file's first file-system block and size, as
    ``debugfs``'s ``bmap FILE 0`` and ``stat`` give them (files of 1 byte to 3 MiB)."""
    r = random.Random(1)
    src = tmp_path / "src"
    src.mkdir()
    sizes = {f"f{i}": r.choice((1, 700, 5000, 70000, 3 << 20)) for i in range(40)}
    for name, n in sizes.items():
        (src / name).write_bytes(r.randbytes(n))
    img = tmp_path / "v.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    _run(["mkfs.ext4", "-q", "-F", "-b", str(block_size), "-d", str(src), str(img)])
    with open(img, "rb") as f:
        def read(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)
        alloc = ext4alloc.read_allocation(read, 64 << 20)
    assert alloc is not None
    got = {(int(b), int(s)) for b, _, s in alloc.heads.tolist()}
    want = set()
    for name, n in sizes.items():
        first = int(_run(["debugfs", "-R", f"bmap {name} 0", str(img)]).strip())
        want.add((first, n))
    assert want <= got, sorted(want - got)


def test_paired_state_round_trips_and_refuses_garbage() -> None:
    """The window's state in an evidence file: what :meth:`Paired.doc` wrote reads back equal;
    a hand-edited one (a negative share, a ``began`` without ciphertext-like files, a string) is
    refused (the daemon then carries the state before it)."""
    p = anomaly.Paired().step(4, 0.05, 0.0).step(5, 0.06, 0.04)
    assert p.began == 4 and p.measured == 5 and p.total() == 0.04
    assert anomaly.Paired.from_doc(p.doc()) == p
    for bad in ({"filled": -1.0, "released": 0.0}, {"filled": 0.0, "released": 0.0, "began": 3},
                {"filled": "x", "released": 0.0}, [], {"filled": 0.1, "released": 0.0}):
        with pytest.raises(ValueError):
            anomaly.Paired.from_doc(bad)
    assert anomaly.Paired().step(6, 0.0, 0.5).began is None  # deletes alone: nothing ciphertext-like


@needs_e2fs
def test_one_judgement_reads_each_map_once_and_keeps_at_most_two(tmp_path: Path) -> None:
    """Within one ``_signals`` call the file-system maps of a snapshot are read once (the wipe
    measure, what the files released and conservation across snapshots all ask for them), and at
    most ``ALLOCATIONS_KEPT`` (2) are kept: three bytes per file-system block each."""
    from collections import OrderedDict

    from replicad.site import detection
    img, scratch, letters = _volume(tmp_path, 4096, letters=10)
    store = ChunkStore(tmp_path / "store")
    det = Detection(types.SimpleNamespace(site_id="t"), store, None, tmp_path, lambda v: {}, None)  # type: ignore[arg-type]
    ms = []
    for seq in (1, 2, 3):
        _debugfs(img, scratch, [f"rm letter_{seq:03d}.txt"])
        ms.append(asyncio.run(take_snapshot(img, volume="v", seq=seq, epoch=1, parent=ms[-1] if ms else None,
                                            store=store, now_ns=time.time_ns())).manifest)
    calls = []
    real = ext4alloc.read_allocation

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    ext4alloc.read_allocation, saved = counting, ext4alloc.read_allocation
    try:
        det._judging.allocations = OrderedDict()
        first = det._allocation(ms[0])
        assert det._allocation(ms[0]) is first and len(calls) == 1
        det._allocation(ms[1])
        det._allocation(ms[2])
        assert list(det._judging.allocations) == [ms[1].root, ms[2].root] and len(calls) == 3
        assert detection.ALLOCATIONS_KEPT == 2
        det._judging.allocations = None
        det._allocation(ms[2])
        det._allocation(ms[2])
        assert len(calls) == 5  # outside a judgement: not kept
    finally:
        ext4alloc.read_allocation = saved


@needs_e2fs
def test_file_starts_are_sampled_past_their_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A volume of many small files costs a bounded walk and a bounded judgement: past
    ``ext4alloc.HEADS_MAX`` rows the reader keeps a uniform sample (``heads_share`` halving), and
    past ``HEADS_JUDGED_MAX`` starts the judge reads a uniform sample, each scaled back: the
    estimate of the ciphertext-like files stays near the count over all of them."""
    from replicad.site import detection
    img, scratch, letters = _volume(tmp_path, 4096, letters=40)
    store = ChunkStore(tmp_path / "store")
    det = Detection(types.SimpleNamespace(site_id="t"), store, None, tmp_path, lambda v: {}, None,  # type: ignore[arg-type]
                    rng_seed=5)
    m1 = asyncio.run(take_snapshot(img, volume="v", seq=1, epoch=1, parent=None, store=store,
                                   now_ns=time.time_ns())).manifest
    cmds = []
    for i, data in enumerate(letters):
        (scratch / f"c{i}").write_bytes(_aes(data, i))
        cmds.append(f"write {scratch / f'c{i}'} letter_{i:03d}.txt.locked")
    _debugfs(img, scratch, cmds)
    m2 = asyncio.run(take_snapshot(img, volume="v", seq=2, epoch=1, parent=m1, store=store,
                                   now_ns=time.time_ns())).manifest
    changed = np.concatenate([idx for idx, _, _ in detection.changed_rows(m1, m2, detection._PageCache(store.get))])
    full = det._ciphertext_files(m2, m1, changed)
    assert full == pytest.approx(sum(len(d) for d in letters) / m2.block_size)
    whole = det._allocation(m2)
    assert whole.heads_share == 1.0 and len(whole.heads) >= 80  # 40 letters, 20 scans, 40 copies

    monkeypatch.setattr(ext4alloc, "HEADS_MAX", 16)
    thin = det._allocation(m2)
    assert len(thin.heads) <= 16 and thin.heads_share <= 0.25, (len(thin.heads), thin.heads_share)
    assert {tuple(r) for r in thin.heads.tolist()} <= {tuple(r) for r in whole.heads.tolist()}
    monkeypatch.setattr(ext4alloc, "HEADS_MAX", 1 << 20)

    monkeypatch.setattr(detection, "HEADS_JUDGED_MAX", 20)
    sampling: dict = {}
    part = det._ciphertext_files(m2, m1, changed, sampling=sampling)
    assert sampling["heads_sampled"][1] == 20 and sampling["heads_sampled"][0] > 20, sampling
    assert 0.3 * full < part < 3.0 * full, (part, full)
