"""The conservation signal (security review F1): copy-encrypt-delete keeping the file names, the
freed blocks discarded (zeros), so no block's previous version is scored and no name changes.
Real ext4 images made by ``mkfs.ext4 -d`` and changed by ``debugfs -w`` (no mount, no root); a
discard is the freed blocks overwritten with zeros in the image, as ``mount -o discard`` on a
loop or thin device leaves them. Each change is judged by the daemon's own functions
(``signals_between``: compare_block block by block, SnapshotSignals, judge_relative)."""

from __future__ import annotations

import gzip
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from replicad.core.anomaly import POLICY_DEFAULTS, judge_relative, stricter, weakened_keys
from tests.unit.core.test_anomaly_rename import _letter, debugfs, signals_between

pytestmark = pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
                                reason="e2fsprogs (mkfs.ext4, debugfs) not installed")

N = 160
NAMES = [f"Arztbrief_{i:04}.txt" for i in range(N)]
FOOTER = 8192


def _document(r: random.Random) -> bytes:
    return b"".join(_letter(r) for _ in range(24))[:65536]


def _image(tmp: Path, files: dict[str, bytes]) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    img = tmp / "vol.img"
    with open(img, "wb") as f:
        f.truncate(48 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(src), str(img)], check=True, timeout=60,
                   capture_output=True)
    return img


def _blocks_of(img: Path, names: list[str]) -> list[int]:
    out: list[int] = []
    for name in names:
        res = subprocess.run(["debugfs", "-R", f"blocks {name}", str(img)], capture_output=True, text=True,
                             check=True, timeout=60)
        out += [int(x) for x in res.stdout.split()]
    assert out or not names, names
    return out


def _discard(img: Path, blocks: list[int]) -> None:
    with open(img, "r+b") as f:
        for b in blocks:
            f.seek(b * 4096)
            f.write(bytes(4096))


def _change(tmp: Path, files: dict[str, bytes], deleted: list[str], written: dict[str, bytes],
            discard: bool = True):
    """Write ``written`` (host files copied in by debugfs), unlink ``deleted``, discard their
    freed blocks; the signals and verdict (default policy) of that one snapshot."""
    img = _image(tmp, files)
    before = img.read_bytes()
    freed = _blocks_of(img, deleted)
    cmds = []
    for i, (name, data) in enumerate(written.items()):
        host = tmp / f"h{i}"
        host.write_bytes(data)
        cmds.append(f"write {host} {name}")
    cmds += [f"rm {n}" for n in deleted]
    debugfs(img, cmds, tmp)
    if discard:
        _discard(img, freed)
    sig = signals_between(before, img.read_bytes())
    return sig, judge_relative(2, sig, [], [], dict(POLICY_DEFAULTS))


def _ciphertext(data: bytes, seed: int) -> bytes:
    """The review's attacker: random bytes of the plaintext's size, then an 8 KiB structured
    footer, so no 64 KiB block is random as a whole."""
    footer = (b"KEYBLOB v2 recipient=ops@example.org chunk=%d " % seed) * 200
    return random.Random(seed).randbytes(len(data) - FOOTER) + footer[:FOOTER]


def _documents() -> dict[str, bytes]:
    r = random.Random(7)
    return {n: _document(r) for n in NAMES}


def test_copy_encrypt_delete_keeping_names_with_discard_is_seen(tmp_path: Path) -> None:
    """One batch of 40 of 160 documents: ciphertext written under a temp name into free space,
    the original unlinked, the temp renamed to the old name, the freed blocks discarded. Every
    old signal is silent (nothing turned random against a previous version, no name changed,
    wipes 25 % under wipe_max 30 %); the conservation signal sees 40 documents' structure freed
    and as much random content filled in (the footer hides nothing at 4 KiB)."""
    files = _documents()
    batch = NAMES[:40]
    img = _image(tmp_path, files)
    before = img.read_bytes()
    freed = _blocks_of(img, batch)
    cmds = []
    for i, name in enumerate(batch):
        host = tmp_path / f"c{i}"
        host.write_bytes(_ciphertext(files[name], i))
        cmds.append(f"write {host} t{i:05}")
    for i, name in enumerate(batch):
        cmds += [f"rm {name}", f"ln t{i:05} {name}", f"unlink t{i:05}"]
    debugfs(img, cmds, tmp_path)
    _discard(img, freed)
    sig = signals_between(before, img.read_bytes())
    v = judge_relative(2, sig, [], [], dict(POLICY_DEFAULTS))
    assert sig.turned_random == 0 and sig.renamed()[1] == 0, sig.summary()
    assert sig.wiped / sig.data_blocks < POLICY_DEFAULTS["wipe_max"], sig.summary()
    assert v.verdict == "suspect", sig.summary()
    assert len(v.reasons) == 1 and v.reasons[0].startswith("conservation:"), v.reasons
    assert 0.15 < sig.conserved < 0.3, sig.summary()
    # 40 documents of 52-64 KiB: ~36 blocks' worth freed, the ciphertext less its footer filled
    assert 34 <= sig.structure_freed <= 41 and 0.7 * sig.structure_freed <= sig.random_filled, sig.summary()
    summary = sig.summary()
    assert summary["conserved"] == sig.conserved and "structure_freed" in summary


def test_without_discard_the_freed_structure_stays_and_nothing_is_seen(tmp_path: Path) -> None:
    """The same attack without discard, into never-written zeros: the freed blocks keep their
    plaintext, nothing became zeros, the ciphertext alone is an import (documented: not
    detectable)."""
    files = _documents()
    batch = NAMES[:40]
    written = {f"t{i:05}": _ciphertext(files[n], i) for i, n in enumerate(batch)}
    sig, v = _change(tmp_path, files, batch, written, discard=False)
    assert sig.structure_freed < 1 and sig.random_filled > 25, sig.summary()
    assert v.verdict == "clean", v.reasons


def test_gzip_of_logs_with_discard_is_clean(tmp_path: Path) -> None:
    """``gzip *.log`` on a discard mount: 40 logs' structure freed (24 % of the data), their gzip
    files (random content, about a tenth of the size) written into the freed zeros: the smaller
    side passes conserve_max, but compression writes far less than it frees (CONSERVE_RATIO_MIN)."""
    r = random.Random(3)
    logs = {f"app-{i:03}.log": b"".join(b"2026-12-06T10:%02d:%02d ward=%d dose=%d ok\n" % (
        r.randint(0, 59), r.randint(0, 59), r.randint(1, 40), r.randint(0, 999)) for _ in range(1700))[:65536]
        for i in range(N)}
    batch = sorted(logs)[:40]
    written = {n + ".gz": gzip.compress(logs[n]) for n in batch}
    sig, v = _change(tmp_path, logs, batch, written)
    assert sig.structure_freed > 35 and sig.random_filled < sig.structure_freed / 4, sig.summary()
    assert sig.conserved > POLICY_DEFAULTS["conserve_max"], sig.summary()
    assert v.verdict == "clean", v.reasons


def test_image_import_and_image_turnover_are_clean(tmp_path: Path) -> None:
    """An import of 40 compressed images (random) into free space frees nothing; deleting 40 old
    compressed images while importing 40 new ones frees random, not structured, content."""
    r = random.Random(5)
    images = {f"img_{i:04}.jpg": r.randbytes(65536) for i in range(N)}
    new = {f"new_{i:04}.jpg": r.randbytes(65536) for i in range(40)}
    sig, v = _change(tmp_path, images, [], new)
    assert sig.random_filled > 35 and sig.structure_freed == 0, sig.summary()
    assert v.verdict == "clean", v.reasons
    (tmp_path / "b").mkdir()
    sig, v = _change(tmp_path / "b", images, sorted(images)[:40], new)
    assert sig.random_filled > 35 and sig.structure_freed < 1, sig.summary()
    assert v.verdict == "clean", v.reasons


def test_package_upgrade_is_clean(tmp_path: Path) -> None:
    """An upgrade replacing 40 structured binaries by new structured ones (x86 code and tables:
    5-6 bits/byte), the old ones discarded: structure freed, nothing random filled in."""
    r = random.Random(9)
    ops = [bytes([0x48, 0x89, r.randrange(0xc0, 0xff)]) for _ in range(40)] + [b"\xe8", b"\x00\x00\x00\x00"]

    def binary() -> bytes:
        return b"".join(r.choice(ops) + r.randbytes(1) for _ in range(30000))[:65536]

    bins = {f"lib{i:03}.so.1": binary() for i in range(N)}
    batch = sorted(bins)[:40]
    sig, v = _change(tmp_path, bins, batch, {n.replace(".1", ".2"): binary() for n in batch})
    assert sig.structure_freed > 35 and sig.random_filled < 1, sig.summary()
    assert v.verdict == "clean", v.reasons


def test_conserve_max_is_protected_policy() -> None:
    p = dict(POLICY_DEFAULTS)
    assert weakened_keys(p, {**p, "conserve_max": 0.5}) == ["conserve_max"]
    assert weakened_keys(p, {**p, "conserve_max": 0.01}) == []
    assert stricter(p, {"conserve_max": 0.5})["conserve_max"] == 0.03
    assert stricter(p, {"conserve_max": 0.01})["conserve_max"] == 0.01
    old = {k: v for k, v in p.items() if k != "conserve_max"}  # a policy recorded before the key
    assert weakened_keys(old, p) == [] and weakened_keys(p, {**old, "conserve_max": 1.0}) == ["conserve_max"]


def test_a_replaced_document_extension_en_masse_is_a_rename(tmp_path: Path) -> None:
    """Review F1: ``x.docx`` -> ``x.locked`` (the extension replaced, not appended) was clean.
    A known document extension replaced by an unknown one counts in the rename signal."""
    from tests.unit.core.test_anomaly_rename import host_file, judged
    names = [f"Befund_{i:04}.docx" for i in range(60)]
    cipher = host_file(tmp_path, "c", random.Random(1).randbytes(9000))
    cmds = []
    for n in names[:20]:
        cmds += [f"write {cipher} {n[:-5]}.locked", f"rm {n}"]
    sig, v = judged(tmp_path, names, cmds)
    assert sig.renamed()[:2] == ("locked", 20), sig.renamed()
    assert v.verdict == "suspect" and any(r.startswith("rename: 20 file names") for r in v.reasons), v.reasons


@pytest.mark.parametrize("kind", ["export to pdf", "photo conversion", "sidecars", "csv to parquet", "temp saves"])
def test_benign_replaced_extensions_do_not_alarm(tmp_path: Path, kind: str) -> None:
    from tests.unit.core.test_anomaly_rename import host_file, judged
    names = [f"Befund_{i:04}.docx" for i in range(30)] + [f"IMG_{i:04}.heic" for i in range(30)] + \
        [f"table_{i:03}.csv" for i in range(30)]
    data = host_file(tmp_path, "d", _letter(random.Random(4)))
    cmds = []
    for i in range(24):
        if kind == "export to pdf":
            cmds += [f"write {data} Befund_{i:04}.pdf"]
        elif kind == "photo conversion":
            cmds += [f"write {data} IMG_{i:04}.jpg", f"rm IMG_{i:04}.heic"]
        elif kind == "sidecars":
            cmds += [f"write {data} IMG_{i:04}.aae", f"write {data} IMG_{i:04}.xmp"]
        elif kind == "csv to parquet":
            cmds += [f"write {data} table_{i:03}.parquet", f"rm table_{i:03}.csv"]
        else:  # editors' temporaries and backups beside the document
            cmds += [f"write {data} Befund_{i:04}.tmp", f"write {data} Befund_{i:04}.bak"]
    sig, v = judged(tmp_path, names, cmds)
    assert sig.names_new, "the directory's names were read"
    assert sig.renamed()[1] == 0, sig.renamed()
    assert v.verdict == "clean", v.reasons


def test_small_documents_are_counted_by_their_last_blocks(tmp_path: Path) -> None:
    """The review's same-name variant on 300 letters of 1-6 KiB: most ciphertext ends inside a
    4 KiB sub-block followed by zeros, which as a whole is not random; the bytes before the zeros
    are judged (``_filled_share``), so what is filled matches what was freed."""
    from tests.unit.core.test_anomaly_rename import host_file, make_image
    names = [f"Befund_{i:04}.docx" for i in range(300)]
    img = make_image(tmp_path, names)
    before = img.read_bytes()
    freed = _blocks_of(img, names)
    cmds = []
    for i in range(300):
        r = random.Random(i)
        cmds.append(f"write {host_file(tmp_path, f'c{i}', r.randbytes(r.randint(1000, 6000)))} t{i:05}")
    for i, n in enumerate(names):
        cmds += [f"rm {n}", f"ln t{i:05} {n}", f"unlink t{i:05}"]
    debugfs(img, cmds, tmp_path)
    _discard(img, freed)
    sig = signals_between(before, img.read_bytes())
    v = judge_relative(2, sig, [], [], dict(POLICY_DEFAULTS))
    assert sig.random_filled >= 0.7 * sig.structure_freed, sig.summary()
    assert v.verdict == "suspect" and any(r.startswith("conservation:") for r in v.reasons), v.reasons
