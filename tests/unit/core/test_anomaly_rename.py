"""The mass-rename signal (issue 14): file names in changed blocks that gained the same appended
extension (``x.docx`` -> ``x.docx.locked``). Real ext4 images made by ``mkfs.ext4 -d`` and changed
by ``debugfs -w`` (no mount, no root); the blocks before and after are read from the image files.
XFS and NTFS entries are built byte by byte after their on-disk layouts."""

from __future__ import annotations

import gzip
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from replicad.core import anomaly
from replicad.core.anomaly import (POLICY_DEFAULTS, SnapshotSignals, appended_extensions, compare_block, dir_names,
                                   judge_relative, stricter, weakened_keys)

B = 65536
pytestmark = pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
                                reason="e2fsprogs (mkfs.ext4, debugfs) not installed")


def _letter(r: random.Random) -> bytes:
    return (" ".join(r.choice(("patient", "ward", "dose", "the", "and", str(r.randint(0, 999))))
                     for _ in range(r.randint(100, 900))) + "\n").encode()


def make_image(tmp: Path, names: list[str], size_mib: int = 48) -> Path:
    """An ext4 image populated from a directory of text files ``names`` (``mkfs.ext4 -d``)."""
    src = tmp / "src"
    src.mkdir()
    r = random.Random(7)
    for n in names:
        (src / n).write_bytes(_letter(r))
    img = tmp / "vol.img"
    with open(img, "wb") as f:
        f.truncate(size_mib * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(src), str(img)], check=True, timeout=60,
                   capture_output=True)
    return img


def debugfs(img: Path, commands: list[str], tmp: Path) -> None:
    script = tmp / "cmds"
    script.write_text("\n".join(commands) + "\n")
    subprocess.run(["debugfs", "-w", "-f", str(script), str(img)], check=True, timeout=120, capture_output=True)
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], timeout=60, capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout  # the change is a consistent file system


def signals_between(old_img: bytes, new_img: bytes) -> SnapshotSignals:
    """The daemon's per-block comparison of two images, 64 KiB block by block."""
    sig = SnapshotSignals(data_blocks=sum(1 for i in range(0, len(old_img), B) if any(old_img[i:i + B])))
    for i in range(0, len(new_img), B):
        new, old = new_img[i:i + B], old_img[i:i + B]
        if new == old:
            continue
        new_v = new if any(new) else None
        old_v = old if any(old) else None
        finding = compare_block(new_v, old_v)
        sig.add(i // B, finding)
        sig.add_names(new_v, old_v, finding)
    return sig


def judged(tmp: Path, names: list[str], commands: list[str], policy: dict | None = None):
    img = make_image(tmp, names)
    before = img.read_bytes()
    debugfs(img, commands, tmp)
    sig = signals_between(before, img.read_bytes())
    return sig, judge_relative(2, sig, [], [], policy or dict(POLICY_DEFAULTS))


def host_file(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def test_copy_encrypt_delete_into_free_space_is_named(tmp_path: Path) -> None:
    names = [f"Befund_{i:04}.docx" for i in range(300)]
    cipher = host_file(tmp_path, "c", random.Random(1).randbytes(9000))
    cmds = []
    for n in names[:120]:
        cmds += [f"write {cipher} {n}.locked", f"rm {n}"]
    sig, v = judged(tmp_path, names, cmds)
    ext, count, examples = sig.renamed()
    assert (ext, count) == ("locked", 120)
    assert examples[0] == "Befund_0000.docx.locked"
    assert v.verdict == "suspect"
    assert any(r.startswith("rename: 120 file names got a new extension in one snapshot (appended, or replacing a "
                              "document's; most: .locked")
               for r in v.reasons)
    assert sig.summary()["renamed"] == 120 and sig.summary()["renamed_extension"] == "locked"


def test_a_plain_mass_rename_is_named_and_rename_min_is_the_line(tmp_path: Path) -> None:
    names = [f"scan_{i:03}.pdf" for i in range(40)]
    cmds = []
    for n in names[:16]:
        cmds += [f"ln {n} {n}.id-8F2A.[mail@example.org].eking", f"unlink {n}"]
    sig, v = judged(tmp_path, names, cmds)
    assert sig.renamed()[:2] == ("id-8f2a.[mail@example.org].eking", 16)
    assert v.verdict == "suspect"
    # one name fewer than rename_min: clean; a site's stricter local rename_min sees it
    sig15 = SnapshotSignals(data_blocks=sig.data_blocks, names_old=sig.names_old,
                            names_new={n for n in sig.names_new if not n.startswith(b"scan_000.pdf.")})
    assert sig15.renamed()[1] == 15
    assert judge_relative(2, sig15, [], [], dict(POLICY_DEFAULTS)).verdict == "clean"
    local = stricter(dict(POLICY_DEFAULTS), {"rename_min": 8})
    assert judge_relative(2, sig15, [], [], local).verdict == "suspect"


def test_a_random_extension_per_file_is_counted_too(tmp_path: Path) -> None:
    names = [f"scan_{i:03}.pdf" for i in range(40)]
    r = random.Random(5)
    cmds = []
    for n in names[:20]:
        cmds += [f"ln {n} {n}.{r.randbytes(3).hex()}", f"unlink {n}"]
    sig, v = judged(tmp_path, names, cmds)
    assert sig.renamed()[1] == 20
    assert v.verdict == "suspect"


@pytest.mark.parametrize("kind", ["log rotation", "gzip", "backups", "dpkg upgrade", "new files"])
def test_benign_renames_do_not_alarm(tmp_path: Path, kind: str) -> None:
    names = [f"app{i:02}.log" for i in range(40)] + [f"letter_{i:03}.txt" for i in range(60)]
    gz = host_file(tmp_path, "g", gzip.compress(random.Random(3).randbytes(6000)))
    new = host_file(tmp_path, "n", _letter(random.Random(4)))
    cmds: list[str] = []
    removed: list[str] = []  # unlinked after every write: ext4 does not reuse a block freed in the same transaction
    for i in range(40):
        log, letter = f"app{i:02}.log", f"letter_{i:03}.txt"
        if kind == "log rotation":  # app.log -> app.log.1 -> app.log.2.gz, a new app.log
            cmds += [f"ln {log} {log}.1", f"unlink {log}", f"write {gz} {log}.2.gz", f"write {new} {log}"]
        elif kind == "gzip":
            cmds += [f"write {gz} {letter}.gz"]
            removed.append(f"rm {letter}")
        elif kind == "backups":
            cmds += [f"write {new} {letter}.bak", f"write {new} {letter}.old", f"write {new} {letter}~"]
        elif kind == "dpkg upgrade":  # write name.dpkg-new, rename it over name; configs kept as .dpkg-old
            cmds += [f"write {new} {letter}.dpkg-new", f"ln {letter} {letter}.dpkg-old", f"unlink {letter}",
                     f"ln {letter}.dpkg-new {letter}", f"unlink {letter}.dpkg-new"]
        else:  # new files with other names: nothing appended
            cmds += [f"write {new} report_{i:03}.txt", f"write {gz} export_{i:03}.csv.gz"]
    sig, v = judged(tmp_path, names, cmds + removed)
    assert sig.names_new, "the directory's names were read"
    assert sig.renamed()[1] == 0
    assert v.verdict == "clean", v.reasons


def test_names_are_read_from_ext4_xfs_and_ntfs_entry_shapes() -> None:
    # ext4_dir_entry_2: inode u32, rec_len u16, name_len u8, file_type u8, name (padded to 4)
    ext4 = b"".join(struct.pack("<IHBB", 12 + i, 8 + (len(n) + 3) // 4 * 4, len(n), 1) + n.ljust((len(n) + 3) // 4 * 4,
                                                                                              b"\0")
                    for i, n in enumerate([b"a.docx", b"Report 2026.pdf.locked", b"x" * 16]))
    assert dir_names(ext4.ljust(4096, b"\0")) == {b"a.docx", b"Report 2026.pdf.locked", b"x" * 16}
    # xfs_dir2_data_entry (v5): inumber u64, namelen u8, name, ftype u8, tag u16, in a block starting XDD3
    xfs = b"XDD3" + bytes(60) + b"".join(struct.pack(">QB", 99, len(n)) + n + b"\x01\x00\x40"
                                         for n in [b"a.docx", b"a.docx.locked"])
    assert {b"a.docx", b"a.docx.locked"} <= dir_names(xfs.ljust(4096, b"\0"))
    # NTFS FILE_NAME in an INDX record: ..., name length (characters) u8, namespace u8, UTF-16LE name
    ntfs = b"INDX" + bytes(60) + b"".join(bytes(64) + bytes([len(n), 1]) + n.encode("utf-16-le")
                                          for n in ["Bericht.docx", "Bericht.docx.crypt"])
    assert dir_names(ntfs.ljust(4096, b"\0")) == {b"Bericht.docx", b"Bericht.docx.crypt"}
    # without their magics, the XFS and NTFS shapes are not read (cost, and no false names)
    assert b"a.docx.locked" not in dir_names(xfs[4:].ljust(4096, b"\0"))
    assert b"Bericht.docx.crypt" not in dir_names(ntfs[4:].ljust(4096, b"\0"))


def test_text_random_and_database_bytes_give_no_rename() -> None:
    r = random.Random(11)
    blocks = [_letter(r) * 40, r.randbytes(B), bytes(B)]
    for seed in range(20):  # fresh random data and text, old and new: nothing gains an extension
        old, new = random.Random(seed).randbytes(B), random.Random(seed + 100).randbytes(B)
        assert appended_extensions(dir_names(old), dir_names(new)) == {}
    for raw in blocks:
        assert not dir_names(raw[:B]) or raw[:B] != blocks[0][:B]


def test_exempt_extensions_and_names() -> None:
    old = {b"app.log", b"x.docx", b"..", b"a"}
    new = old | {b"app.log.1", b"app.log.2.gz", b"x.docx.bak", b"x.docx.dpkg-new", b"x.docx.sha256",
                 b"...locked", b"a.locked", b"x.docx.locked.gz", b"x.docx.LOCKED"}
    groups = appended_extensions(old, new)
    # .locked.gz counts (one piece is neither a number nor exempt), upper case folds
    assert groups == {b"locked.gz": [b"x.docx.locked.gz"], b"locked": [b"x.docx.LOCKED"]}


def test_name_shaped_bytes_of_a_database_are_no_stems() -> None:
    """Names :func:`dir_names` read out of a pgbench database's pages and log (measured over 28 days
    of the benchmark, one day's examples each: negative balances, ``\xff\xff\xff\xff``, before a
    dot) gain no extension: their stems are not UTF-8 (53 such names in one snapshot were a rename
    false alarm). A victim's UTF-8 name gaining any extension, one of non-UTF-8 bytes included,
    still counts."""
    measured = [b"\xff\xff\xff\xff.+Ln", b"\x9a\xff\xff\xff.Y\x9c", b"\x8b\xf0\xff\xff.\xa5", b"\xd0\xf2\xff\xff.\xd0lw",
                b",\xf6\xff\xff.wl", b"\xb8\xf1\xff\xff.?\x90", b"\xb9\xf3\xff\xff.P\x9b", b"\xd7\xf7\xff\xff.\xdc`y"]
    old = {n[:n.rindex(b".")] for n in measured} | {b"letter_007.docx", "befund_m\u00fcller.pdf".encode()}
    new = old | set(measured) | {b"letter_007.docx.\xff\xfe", "befund_m\u00fcller.pdf.locked".encode()}
    assert appended_extensions(old, new) == {b"\xff\xfe": [b"letter_007.docx.\xff\xfe"],
                                             b"locked": ["befund_m\u00fcller.pdf.locked".encode()]}


def test_rename_min_is_protected_policy() -> None:
    assert anomaly.policy_problems({**POLICY_DEFAULTS, "rename_min": 0}) == ["rename_min must be a number in [1, 1e+09]"]
    assert weakened_keys(POLICY_DEFAULTS, {**POLICY_DEFAULTS, "rename_min": 64}) == ["rename_min"]
    assert weakened_keys(POLICY_DEFAULTS, {**POLICY_DEFAULTS, "rename_min": 4}) == []
    old_record = {k: v for k, v in POLICY_DEFAULTS.items() if k not in anomaly.OPTIONAL_POLICY_KEYS}
    assert anomaly.with_defaults(old_record)["rename_min"] == 16  # a policy recorded before the key
    assert stricter(old_record, {"rename_min": 4})["rename_min"] == 4
    assert stricter(dict(POLICY_DEFAULTS), {"rename_min": 64})["rename_min"] == 16  # local cannot weaken
