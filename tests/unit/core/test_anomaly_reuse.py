"""Freed blocks reused in the same snapshot by a file of another kind (the detection benchmark's
package upgrade: its one-snapshot false alarm at 2.6 %). The relative score compares a block
with its previous version whatever file held it; when ext4 reuses the blocks of a deleted text
file for a new file, the new file's bytes are judged against the old file's text.

The benchmark's "binaries" were independent draws from 7 byte values (now slices of real
executables; the last test here): memoryless bytes in a
7-symbol alphabet, which is what ciphertext written in base 7 (or octal) is. Over freed text
they count by the narrow-alphabet test exactly as octal ciphertext does, and no content rule
can tell the two apart; over the previous version of the same kind of file they do not count.
These tests pin both sides on real ext4 images (``mkfs.ext4 -d``, changed by ``debugfs -w``:
``rm`` first, then ``write``, so the new files take the freed blocks, as the benchmark's
writeback between files made them), judged by the daemon's own functions."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.core.test_anomaly_rename import debugfs, signals_between

pytestmark = pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
                                reason="e2fsprogs (mkfs.ext4, debugfs) not installed")

N = 48
SIZE = 49152  # 12 KiB .. 48 KiB files: several files share a 64 KiB block, as in the software tree
OPCODES = (0x48, 0x89, 0xE5, 0x8B, 0x45, 0xC3, 0x0F)  # tests/bench/detection.py software_tree's "binary"


def _source(r: random.Random, n: int) -> bytes:
    """A Python-like module of ``n`` bytes (the benchmark's ``mod_*.py`` and configs)."""
    out = "".join(f"def f{j}(x):\n    return x * {r.randint(1, 99)} + 1\n" for j in range(n // 20))
    return out.encode()[:n]


def _narrow_binary(r: random.Random, n: int) -> bytes:
    """The benchmark's synthetic binary: an ELF magic, then independent draws from 7 values."""
    return b"\x7fELF\x02\x01\x01" + bytes(9) + bytes(r.choice(OPCODES) for _ in range(n - 16))


def _octal_ciphertext(r: random.Random, n: int) -> bytes:
    """Ciphertext (random bytes) written as octal digits: 8 symbols, memoryless."""
    return bytes(0x30 + r.randrange(8) for _ in range(n))


def _image(tmp: Path, files: dict[str, bytes]) -> Path:
    src = tmp / "src"
    src.mkdir(parents=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
    img = tmp / "vol.img"
    with open(img, "wb") as f:
        f.truncate(16 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(src), str(img)], check=True, timeout=60,
                   capture_output=True)
    return img


def _blocks(img: Path, names: list[str]) -> set[int]:
    out: set[int] = set()
    for name in names:
        res = subprocess.run(["debugfs", "-R", f"blocks {name}", str(img)], capture_output=True, text=True,
                             check=True, timeout=60)
        out |= {int(x) for x in res.stdout.split()}
    return out


def _replace(tmp: Path, old: dict[str, bytes], new: dict[str, bytes]):
    """Delete every file of ``old`` named in ``new``, then write ``new``: the signals of that
    snapshot and the share of the new files' blocks that were the deleted files' blocks."""
    img = _image(tmp, old)
    before = img.read_bytes()
    freed = _blocks(img, list(new))
    cmds = [f"rm {n}" for n in new]
    for i, (name, data) in enumerate(new.items()):
        host = tmp / f"h{i}"
        host.write_bytes(data)
        cmds.append(f"write {host} {name}")
    debugfs(img, cmds, tmp)
    reused = len(_blocks(img, list(new)) & freed) / max(1, len(freed))
    return signals_between(before, img.read_bytes()), reused


def _files(kind, r: random.Random) -> dict[str, bytes]:
    return {f"f{i:03}": kind(r, r.randint(SIZE // 4, SIZE)) for i in range(N)}


def test_narrow_binary_over_freed_text_counts_as_octal_ciphertext_does(tmp_path: Path) -> None:
    """The benchmark's false alarm, reduced: half the sources replaced by the synthetic binaries
    in their freed blocks count (narrow alphabet), as many blocks as octal ciphertext in the same
    places does. An honest limit of content detection (memoryless bytes in a 7-symbol alphabet
    are base-7 ciphertext's bytes); a rule excusing the one excuses the other."""
    old = _files(_source, random.Random(1))
    names = sorted(old)[::2]
    benign, reused = _replace(tmp_path / "benign", old, {n: _narrow_binary(random.Random(i), len(old[n]))
                                                         for i, n in enumerate(names)})
    attack, reused_a = _replace(tmp_path / "attack", old, {n: _octal_ciphertext(random.Random(i), len(old[n]))
                                                           for i, n in enumerate(names)})
    assert reused > 0.9 and reused_a > 0.9, (reused, reused_a)  # the new files took the freed blocks
    narrow_b = sum(f.narrow_alphabet for _, f in benign.evidence)
    narrow_a = sum(f.narrow_alphabet for _, f in attack.evidence)
    assert attack.turned_random >= 0.8 * benign.turned_random > 0, (benign.summary(), attack.summary())
    assert narrow_b > 0 and narrow_a > 0, (narrow_b, narrow_a)


def test_narrow_binary_over_its_previous_version_does_not_count(tmp_path: Path) -> None:
    """The upgrade as the benchmark meant it: each binary replaced by its next version in the
    blocks the old version freed. The same encoding over itself does not count (the narrow test
    judges only sub-blocks that were structured), so the false alarm needs cross-kind reuse."""
    old = _files(_narrow_binary, random.Random(2))
    names = sorted(old)[::2]
    sig, reused = _replace(tmp_path, old, {n: _narrow_binary(random.Random(100 + i), len(old[n]))
                                           for i, n in enumerate(names)})
    assert reused > 0.9, reused
    assert sig.changed_blocks > 0 and sig.turned_random == 0, sig.summary()


def _elf_files() -> list[Path]:
    """This machine's ``/usr/bin`` ELF executables of at least 256 KiB (real machine code)."""
    out = []
    for f in sorted(Path("/usr/bin").iterdir()):
        try:
            if f.is_file() and not f.is_symlink() and f.stat().st_size >= 256 << 10:
                with open(f, "rb") as fh:
                    if fh.read(4) == b"\x7fELF":
                        out.append(f)
        except OSError:
            continue
    return out


def _machine_code(r: random.Random, n: int) -> bytes:
    """``n`` bytes of a real executable (code, tables, strings) from a place ``r`` chooses."""
    f = r.choice(_elf_files())
    with open(f, "rb") as fh:
        fh.seek(r.randrange(64, f.stat().st_size - n))
        return fh.read(n)


def _intermittent(r: random.Random, plain: bytes, keep: int = 16) -> bytes:
    """``plain`` with the first ``keep`` bytes of every 32 replaced by random bytes (ciphertext)."""
    out = bytearray(plain)
    for i in range(0, len(out), 32):
        out[i:i + keep] = r.randbytes(len(out[i:i + keep]))
    return bytes(out)


@pytest.mark.skipif(not _elf_files(), reason="no ELF executable of >= 256 KiB in /usr/bin")
def test_real_machine_code_over_freed_text_is_not_ciphertext(tmp_path: Path) -> None:
    """The package upgrade with real binaries: machine code in the blocks deleted sources freed
    raises those sub-blocks' entropy by >= 2 bits (text ~4.5 -> code 5.2-6.6), which alone counted
    them (the entropy jump); their novel bytes repeat far more than independent bytes would
    (:data:`~replicad.core.anomaly.JUMP_STRUCTURED_EXCESS`), so they are judged by the structure
    tests instead and do not count. Intermittent ciphertext of the same sources in the same
    places still counts on nearly every block."""
    old = _files(_source, random.Random(3))
    names = sorted(old)[::2]
    code, reused = _replace(tmp_path / "code", old, {n: _machine_code(random.Random(i), len(old[n]))
                                                     for i, n in enumerate(names)})
    attack, reused_a = _replace(tmp_path / "attack", old, {n: _intermittent(random.Random(i), old[n])
                                                           for i, n in enumerate(names)})
    assert reused > 0.9 and reused_a > 0.9, (reused, reused_a)
    assert code.changed_blocks > 0 and attack.changed_blocks > 0
    assert code.turned_random <= 0.1 * code.changed_blocks, code.summary()
    assert attack.turned_random >= 0.8 * attack.changed_blocks, attack.summary()
