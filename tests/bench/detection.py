"""The labelled detection benchmark (issue 14): real ext4 volumes, real workloads, real attacks,
judged by replicad's own detection code on real snapshots. Outside CI; run as root::

    python -m tests.bench.detection                      # both corpora, 2 seeds, the cluster rows
    python -m tests.bench.detection --seeds 1 --quick    # smaller volumes, ~5 min
    python -m tests.bench.detection --out /tmp/detection.md --no-cluster

Corpora, each an ext4 file system on a loop-mounted image file (``mkfs.ext4``, ``mount -o loop``):

* **postgres**: a PostgreSQL 15 cluster (``initdb`` as the ``postgres`` user, unix socket only,
  ``max_wal_size`` 64 MB) filled by ``pgbench -i -s SCALE`` and run with ``pgbench -T``.
  PostgreSQL is stopped (``pg_ctl stop -m fast``) and the file system unmounted before every
  snapshot, so each snapshot is a consistent image.
* **fileshare**: letters (text), a SQLite lab database, PNG images (zlib-compressed noisy
  scans; Pillow is not needed), gz and zip archives, application logs, a software install
  (``opt/ward-app``: sources, binaries (slices of this machine's ELF executables), gzipped
  docs, configs).

Operations, each from the same clean base image (a sparse copy) and snapshotted on top of the
base's snapshot:

* benign: ``pgbench`` run, ``VACUUM FULL``, ``VACUUM FULL`` + ``fstrim`` (the old relation files'
  blocks become holes: zeros the file system no longer uses), ``pgbench -i`` (re-initialisation),
  ``e4defrag``;
  editing letters, log rotation with gzip, importing PNG images, importing a zip, copying a
  ``.tar.gz``, SQLite updates + ``VACUUM``, a package upgrade (every file of the software tree
  written as ``name.dpkg-new`` and renamed over ``name``, configs kept as ``.dpkg-old``; and the
  same written out file by file, so new files land in blocks the old ones freed),
  ``gzip`` of 400 letters in place, ``fstrim`` after deleting the zip and a third of the images
  (the report notes how many bytes of the image the discards turned into holes);
* attacks (PostgreSQL stopped first, as ransomware stops database services): every data file
  encrypted in place with AES-256-CTR (``cryptography``) — **full**; **intermittent** (every
  other 16 bytes); **header-only** (the first 4 KiB of each 64 KiB); **octal** and **base64**
  (the ciphertext written as octal digits / MIME base64, truncated to the file's size);
  **ransom note** only (a note file in every directory, nothing encrypted); **copy-encrypt-
  delete** (ciphertext written to new files, originals unlinked: the new blocks land in free
  space); **slow** (1 % of the data bytes encrypted per cycle, one snapshot per cycle, each
  judged against the newest snapshot judged clean, with the slow window, up to ``--slow-cycles``);
  copy-encrypt-delete with a random extension per file, and with ``.gz`` names around level-0
  gzip of the ciphertext (an attacker hiding behind the rename signal's exemptions); **padded**
  (hex of the ciphertext in groups of 4 between ``data:`` filler words); **intermittent 8/32 +
  8 spaces glued** (of every 32 bytes, 8 of the ciphertext and 8 spaces); **wipers** (every file
  zeroed in place, and on PostgreSQL also followed by ``fstrim``; every file deleted + ``fstrim``;
  the image truncated to half after unmount,
  which the file source refuses by default and the sites judge when ``allow_shrink`` lets it
  through); **adaptive slow** (:class:`Calibrated`: the attacker reads the policy and the
  files' extents and encrypts, per cycle, 95 % of ``min_score`` of the data blocks; and 95 % of
  ``cumulative_max`` per 7 days, one cycle a day, which the old 7-day window never summed past
  ``cumulative_max``); **daily** rows (one cycle a day, ``fstrim`` after each, the slow windows'
  state carried from the last clean snapshot as the daemon does): copy-encrypt-delete as ``.gz``
  spread under ``conserve_max`` per day, and benign log rotation with gzip for 30 days.

Judging: the snapshot is taken by :func:`replicad.sources.file.take_snapshot` into a real
:class:`~replicad.storage.chunkstore.ChunkStore`; its signals against its base come from
:meth:`replicad.site.detection.Detection._signals` (the daemon's function: changed blocks from
the manifests, every chunk read verified, :func:`~replicad.core.anomaly.compare_block`, ransom
notes) and the verdict from :func:`replicad.core.anomaly.judge_relative` with the default
policy, as every data site does. The **cluster** rows run a real 3-site
:class:`~replicad.lab.localcluster.LocalCluster` on the fileshare image: site-a's daemon
snapshots and ships, and the verdict is site-b's own opinion recorded in Raft.

Output: a markdown table (confusion matrix per operation: runs, true/false positives and
negatives, score, changed blocks, the reason) on stdout and in ``--out``
(default ``tests/bench/results/detection.md``). Everything it mounts, attaches or starts it
unmounts, detaches or stops (by path and PID) in ``finally`` blocks; every command is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import types
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from replicad.core import anomaly
from replicad.core.errors import SourceShrunkError
from replicad.core.manifest import Manifest
from replicad.site.detection import Detection, _nonzero_blocks
from replicad.sources.file import take_snapshot
from replicad.storage.chunkstore import ChunkStore

CMD_TIMEOUT_S = 600
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None) if Path("/usr/lib/postgresql").exists() \
    else None
WORDS = ("patient", "ward", "dose", "blood", "pressure", "admission", "discharge", "the", "and", "of", "nurse",
         "allergy", "report", "result", "normal", "daily", "mg", "referral", "letter", "doctor", "clinic", "follow-up")
NOTE = (b"!!! YOUR FILES HAVE BEEN ENCRYPTED !!!\n\nAll your documents, databases and backups are encrypted. To "
        b"decrypt them you need our private key and decryption tool.\nPay 1.5 BTC to the Bitcoin wallet below within "
        b"72 hours. Contact: http://ransomxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.onion (Tor "
        b"Browser).\nDo not rename the files.\n")


def run(argv: list[str], *, user: str | None = None, env: dict | None = None, check: bool = True,
        timeout_s: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``argv`` (as ``user`` through runuser), bounded; raise with its stderr on failure."""
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()[-800:]}")
    return res


# --------------------------------------------------------------------------------- volumes
DETACH_WAITS, DETACH_WAIT_S = 60, 0.5
"""How long :func:`mounted` waits for a loop device detached by the mount before to leave the
image (``losetup -d`` returns before the kernel drops the binding when something still holds
the device for a moment: udev's probes under load; seen as a crash of a 14-day series on day 4)."""


@contextlib.contextmanager
def mounted(image: Path, mnt: Path, options: tuple[str, ...] = ()) -> Iterator[Path]:
    """Mount ``image`` (ext4) on ``mnt`` through a loop device of its own (``losetup --find
    --show``); on exit unmount ``mnt`` and detach that device, both by path. Refuses an image
    some loop device still holds (a mount of it would share that device's live file system).
    ``options``: mount options (``("discard",)``: freed blocks become holes of the image)."""
    held = run(["losetup", "-j", str(image)]).stdout.strip()
    for _ in range(DETACH_WAITS):  # the previous mount's device, detached a moment ago, may still be listed
        if not held:
            break
        time.sleep(DETACH_WAIT_S)
        held = run(["losetup", "-j", str(image)]).stdout.strip()
    if held:
        raise RuntimeError(f"{image} is still attached: {held}")
    mnt.mkdir(parents=True, exist_ok=True)
    device = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    try:
        run(["mount", *(["-o", ",".join(options)] if options else []), device, str(mnt)])
        try:
            yield mnt
        finally:
            run(["sync", "-f", str(mnt)], check=False)  # this file system only (os.sync waits for every one)
            res = run(["umount", str(mnt)], check=False)
            if res.returncode != 0:  # busy: say who, then detach lazily so the run can go on
                who = run(["fuser", "-vm", str(mnt)], check=False).stderr if shutil.which("fuser") else ""
                print(f"umount {mnt}: {res.stderr.strip()}; {who}", file=sys.stderr)
                run(["umount", "-l", str(mnt)], check=False)
    finally:
        run(["losetup", "-d", device], check=False)


def make_ext4(image: Path, size_mib: int, block_size: int | None = None) -> None:
    """A sparse ``size_mib`` MiB image file holding a fresh ext4 (``block_size``: ``-b``; by default
    mke2fs picks 1 KiB blocks under 512 MiB, 4 KiB from there)."""
    with open(image, "wb") as f:
        f.truncate(size_mib * 2**20)
    run(["mkfs.ext4", "-q", "-F", *(["-b", str(block_size)] if block_size else []), "-E",
         "lazy_itable_init=0,lazy_journal_init=0", str(image)])


def copy_image(src: Path, dst: Path) -> None:
    run(["cp", "--sparse=always", str(src), str(dst)])


# --------------------------------------------------------------------------------- postgres
class Postgres:
    """A PostgreSQL cluster in ``mnt/pg`` owned by ``postgres``, listening on a unix socket in
    a private directory only; :meth:`stop` by ``pg_ctl``, then by the postmaster's PID."""

    def __init__(self, mnt: Path, sockdir: Path) -> None:
        self.data = mnt / "pg"
        self.sockdir = sockdir
        self.port = 5400 + os.getpid() % 500

    def init(self) -> None:
        self.data.mkdir()
        shutil.chown(self.data, "postgres", "postgres")
        run([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"],
            user="postgres")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"listen_addresses = ''\nunix_socket_directories = '{self.sockdir}'\nport = {self.port}\n"
                    "max_wal_size = 64MB\nmin_wal_size = 32MB\nshared_buffers = 64MB\nfsync = on\n")

    def start(self) -> None:
        run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.sockdir / "pg.log"), "-w", "-t", "120",
             "start"], user="postgres")

    def stop(self) -> None:
        res = run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "120", "stop"],
                  user="postgres", check=False)
        pidfile = self.data / "postmaster.pid"
        if res.returncode != 0 and pidfile.exists():
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)

    def sql(self, statement: str) -> None:
        run([str(PG_BIN / "psql"), "-h", str(self.sockdir), "-p", str(self.port), "-U", "postgres", "-q", "-v",
             "ON_ERROR_STOP=1", "-c", statement], user="postgres")

    def pgbench(self, *args: str) -> None:
        run([str(PG_BIN / "pgbench"), "-h", str(self.sockdir), "-p", str(self.port), "-U", "postgres", *args,
             "postgres"], user="postgres")

    @contextlib.contextmanager
    def running(self) -> Iterator["Postgres"]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


# --------------------------------------------------------------------------------- content
def letter(r: random.Random, n_words: int) -> str:
    lines, line = [], []
    for _ in range(n_words):
        line.append(r.choice(WORDS) if r.random() < 0.8 else str(r.randint(0, 9999)))
        if len(line) > 11:
            lines.append(" ".join(line))
            line = []
    return "Dear colleague,\n\n" + "\n".join(lines) + "\n\nKind regards,\nDr. " + r.choice(WORDS).title() + "\n"


def png(r: random.Random, w: int, h: int) -> bytes:
    """A real PNG (8-bit grey, zlib-compressed IDAT) of a noisy scan-like picture."""
    g = np.random.default_rng(r.getrandbits(64))
    pix = ((np.arange(h)[:, None] * 255 // h + g.integers(-60, 61, (h, w))) & 0xFF).astype(np.uint8)
    rows = np.concatenate([np.zeros((h, 1), dtype=np.uint8), pix], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


def log_text(r: random.Random, n: int) -> str:
    return "".join(f"2026-12-0{r.randint(1, 6)}T{r.randint(0, 23):02}:{r.randint(0, 59):02}:{r.randint(0, 59):02}Z "
                   f"ward{r.randint(1, 9)} pump{r.randint(1, 40)} rate={r.randint(1, 500)}ml/h "
                   f"{r.choice(('ok', 'ok', 'ok', 'occlusion', 'battery low'))}\n" for _ in range(n))


def build_fileshare(mnt: Path, scale: float, r: random.Random) -> None:
    letters = mnt / "letters"
    letters.mkdir()
    for i in range(int(1500 * scale)):
        (letters / f"letter_{i:05}.txt").write_text(letter(r, r.randint(300, 3000)))
    db = sqlite3.connect(mnt / "lab.sqlite")
    db.execute("create table results (id integer primary key, patient text, test text, value real, unit text)")
    db.executemany("insert into results values (?, ?, ?, ?, ?)",
                   [(i, f"P{r.randint(0, 99999):05}", r.choice(("Na", "K", "Hb", "CRP", "Gluc")),
                     round(r.uniform(0, 200), 2), "mmol/L") for i in range(int(120000 * scale))])
    db.commit()
    db.close()
    images = mnt / "images"
    images.mkdir()
    for i in range(int(60 * scale)):
        (images / f"scan_{i:04}.png").write_bytes(png(r, 512, 512))
    arch = mnt / "archive"
    arch.mkdir()
    (arch / "letters_2025.tar.gz").write_bytes(gzip.compress(
        "".join(letter(r, 800) for _ in range(int(600 * scale))).encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(int(100 * scale)):
            z.writestr(f"report_{i}.txt", letter(r, 1500))
    (arch / "reports.zip").write_bytes(buf.getvalue())
    logs = mnt / "logs"
    logs.mkdir()
    (logs / "pumps.log").write_text(log_text(r, int(200000 * scale)))
    software_tree(mnt / "opt" / "ward-app", r, int(300 * scale) + 20, version=1)


_ELF_FILES: list[Path] = []


def machine_code(r: random.Random, size: int) -> bytes:
    """``size`` bytes of real machine code, tables and strings: an ELF header, then a slice of one
    of this machine's ``/usr/bin`` ELF executables of at least 256 KiB (chosen and placed by
    ``r``; the same seed gives the same bytes on the same machine). A synthetic stand-in (bytes
    drawn independently from a few opcode values) is memoryless in a narrow alphabet, which is
    base-N ciphertext by construction, and was judged as such (results/detection.md, "The
    package upgrade's false alarm: cause")."""
    if not _ELF_FILES:
        for f in sorted(Path("/usr/bin").iterdir()):
            try:
                if f.is_file() and not f.is_symlink() and f.stat().st_size >= 256 << 10:
                    with open(f, "rb") as fh:
                        if fh.read(4) == b"\x7fELF":
                            _ELF_FILES.append(f)
            except OSError:
                continue
        if not _ELF_FILES:
            raise SystemExit("no ELF executable of >= 256 KiB in /usr/bin for the software tree")
    f = r.choice(_ELF_FILES)
    with open(f, "rb") as fh:
        fh.seek(r.randrange(64, f.stat().st_size - size))
        return b"\x7fELF\x02\x01\x01" + bytes(9) + fh.read(size)


def software_tree(root: Path, r: random.Random, n: int, version: int) -> list[Path]:
    """A software install of ``n`` files (Python sources, shared-object-like binaries, gzipped
    docs as Debian ships them, configs) at ``version``; the same paths at every version."""
    out = []
    for i in range(n):
        kind = i % 4
        d = root / ("lib", "bin", "share/doc", "etc")[kind] / f"pkg{i % 9}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / (f"mod_{i:04}.py", f"tool_{i:04}", f"notes_{i:04}.txt.gz", f"conf_{i:04}.conf")[kind]
        body = (f"# ward-app {version}.{r.randint(0, 9)} module {i}\n" + "".join(
            f"def f{j}(x):\n    return x * {r.randint(1, 99)} + {version}\n" for j in range(r.randint(20, 200))))
        if kind == 1:  # a binary: real machine code and tables (a slice of one of this machine's ELF files)
            p.write_bytes(machine_code(r, r.randint(4000, 40000)) + body.encode())
        elif kind == 2:
            p.write_bytes(gzip.compress(body.encode()))
        else:
            p.write_text(body)
        out.append(p)
    return out


def data_files(root: Path, under: str = "") -> list[Path]:
    base = root / under if under else root
    out = [p for p in sorted(base.rglob("*")) if p.is_file() and not p.is_symlink() and p.stat().st_size > 0
           and "lost+found" not in p.parts]
    return out


# --------------------------------------------------------------------------------- attacks
def aes(data: bytes, r: random.Random) -> bytes:
    """AES-256-CTR of ``data`` under a random key and nonce (the ciphertext an attacker writes)."""
    enc = Cipher(algorithms.AES(r.randbytes(32)), modes.CTR(r.randbytes(16))).encryptor()
    return enc.update(data) + enc.finalize()


def octal_of(c: bytes, n: int) -> bytes:
    a = np.frombuffer(c[:n // 3 + 1], dtype=np.uint8)
    digits = np.stack([(a >> 6) & 7, (a >> 3) & 7, a & 7], axis=1).ravel().astype(np.uint8) + 48
    return digits.tobytes()[:n]


def transform(data: bytes, how: str, r: random.Random) -> bytes:
    c = aes(data, r)
    if how == "full":
        return c
    if how == "intermittent":
        a = np.frombuffer(data, dtype=np.uint8).copy()
        b = np.frombuffer(c, dtype=np.uint8)
        idx = (np.arange(len(a)) // 16) % 2 == 0
        a[idx] = b[idx]
        return a.tobytes()
    if how == "header":
        out = bytearray(data)
        for off in range(0, len(out), 65536):
            out[off:off + 4096] = c[off:off + 4096]
        return bytes(out)
    if how == "octal":
        return octal_of(c, len(data))
    if how == "base64":
        return base64.encodebytes(c)[:len(data)]
    if how == "islands":  # adaptive: of every 32 bytes, 8 of the ciphertext and 8 spaces glued to them
        a = np.frombuffer(data, dtype=np.uint8).copy()
        pos = np.arange(len(a)) % 32
        a[pos < 8] = np.frombuffer(c, dtype=np.uint8)[pos < 8]
        a[(pos >= 8) & (pos < 16)] = 0x20
        return a.tobytes()
    if how == "padded":  # adaptive: hex in 4s between fixed filler tokens, truncated to the file's size
        h = c[:len(data) // 5 + 4].hex()
        return "".join(f"data: {h[i:i + 4]} " for i in range(0, len(h), 4)).encode()[:len(data)]
    raise ValueError(how)


FILLS = {"zero": b"\0", "0xff": b"\xff", "deadbeef": b"DEADBEEF"}
"""The wipers' patterns (``how`` of :func:`encrypt_in_place`): zeros, and fills that are neither
zeros nor random (:func:`replicad.core.anomaly.fill_period`)."""


def fill_of(how: str, n: int) -> bytes:
    """``n`` bytes of the wiper pattern ``how`` (:data:`FILLS`)."""
    return (FILLS[how] * (n // len(FILLS[how]) + 1))[:n]


def encrypt_in_place(files: list[Path], how: str, r: random.Random) -> int:
    total = 0
    for p in files:
        data = p.read_bytes()
        with open(p, "r+b") as f:
            f.write(transform(data, how, r) if how not in FILLS else fill_of(how, len(data)))
            f.flush()
            os.fsync(f.fileno())
        total += len(data)
    return total


def copy_encrypt_delete(files: list[Path], r: random.Random, ext: str = ".locked", gzip_frame: bool = False,
                        keep_names: bool = False, footer: int = 0, b64: bool = False, octal: bool = False,
                        compress: bool = False, zip_password: bool = False) -> None:
    """Ciphertext into new files ``name + ext`` (into free space), originals unlinked;
    ``gzip_frame``: the ciphertext inside a valid gzip stream (level 0), as an attacker hiding
    behind the ``.gz`` exemption of the rename signal writes it. ``keep_names`` (security review
    F1): every copy is written first (fsynced: its blocks allocated) under a temporary name
    unrelated to the original's (``.~<random hex>.tmp``, as an editor saves), then each original
    is unlinked and its copy renamed to its name, so no name changes and no copy lands in blocks
    an original of the same batch freed (nothing turns random against its previous version in one
    snapshot; ``gzip_frame`` is not used with it); ``b64``: the ciphertext written as MIME base64
    (6 bits/byte: never "random" by entropy, so nothing counts as random filled); ``footer``:
    that many bytes of a structured trailer (a key blob in text) after the ciphertext, as the
    review's attacker wrote. ``octal``: the ciphertext as octal digits (3 per byte, 64 to a line:
    under 3 bits/byte, where the 4-gram test has no power); ``compress``: zlib (level 6) before the
    encryption (a fraction of the plaintext's size); ``zip_password``: each copy a
    password-protected zip (the ``zip -P`` command: ZipCrypto) named ``name.zip``."""
    copies = []
    for p in files:
        if zip_password:
            run(["zip", "-q", "-j", "-P", r.randbytes(8).hex(), str(p) + ".zip", str(p)])
            p.unlink()
            continue
        data = p.read_bytes()
        out = p.with_name(f".~{r.randbytes(6).hex()}.tmp" if keep_names else p.name + ext)
        c = aes(zlib.compress(data, 6) if compress else data, r)
        if b64:
            c = base64.encodebytes(c)
        if octal:
            o = octal_of(c, 3 * len(c))
            c = b"\n".join(o[i:i + 64] for i in range(0, len(o), 64))
        if footer:
            c += ((b"KEYBLOB v2 recipient=ops@example.org file=%s " % p.name.encode()) * (footer // 40 + 1))[:footer]
        if keep_names:  # on disk (blocks allocated) before any original is freed
            with open(out, "wb") as f:
                f.write(c)
                os.fsync(f.fileno())
            copies.append((out, p))
        else:
            out.write_bytes(gzip.compress(c, compresslevel=0) if gzip_frame else c)
            p.unlink()
    for out, p in copies:
        p.unlink()
        os.rename(out, p)


def discards_landed(mnt: Path) -> None:
    """Make sure every block freed on the ``-o discard`` mount ``mnt`` is discarded before it is
    unmounted: ext4's online discard runs in a work queue after the commit, and an unmount soon
    after left 36-92 % of the freed 4 KiB blocks of a batch holding their old bytes in the image
    (kernel 6.18, loop device); a mounted volume gets them all within moments. ``sync -f`` (this
    file system only), then ``fstrim`` of the free space (only free blocks: what the discards
    would have zeroed)."""
    run(["sync", "-f", str(mnt)])
    run(["fstrim", str(mnt)])


def mount_source(mnt: Path) -> tuple[str, Path]:
    """The loop device mounted on ``mnt`` and its backing image file."""
    dev = run(["findmnt", "-no", "SOURCE", str(mnt)]).stdout.strip()
    return dev, Path(run(["losetup", "-nO", "BACK-FILE", dev]).stdout.strip())


FREE_SPACE_DIAGNOSTIC = False  # --free-space: print how many counted blocks lay in the base's free space
NOTES: list[str] = []  # per-run facts the report lists (fstrim: the holes it made in the image)


def fstrim_after_delete(mnt: Path, r: random.Random, wipe: bool = False, under: str = "") -> None:
    """Delete files, then ``fstrim`` the mounted file system; record how much of the image the
    discards turned into holes (allocated bytes of the backing file before and after). ``wipe``:
    delete every file (a wiper; ``under``: only those under that directory); else the import zip
    and a third of the images (benign)."""
    victims = data_files(mnt, under) if wipe else [mnt / "archive" / "reports.zip"] + data_files(mnt, "images")[::3]
    for p in victims:
        p.unlink()
    trim_noted(mnt, f"{'wiper' if wipe else 'benign'} fstrim ({len(victims)} files deleted)")


def trim_noted(mnt: Path, what: str) -> None:
    """``fstrim`` the mounted file system and note how much of its image the discards turned
    into holes (allocated bytes of the backing file before and after)."""
    _, img = mount_source(mnt)
    os.sync()
    before = os.stat(img).st_blocks * 512
    out = run(["fstrim", "-v", str(mnt)]).stdout.strip()
    os.sync()
    after = os.stat(img).st_blocks * 512
    NOTES.append(f"{what}: `{out}`; the image's allocated bytes {before / 2**20:.1f} -> {after / 2**20:.1f} MiB "
                 "(discards punched holes)")


def package_upgrade(mnt: Path, r: random.Random, one_by_one: bool = False) -> None:
    """Upgrade the software tree as dpkg does: every file written as ``name.dpkg-new`` and renamed
    over ``name``; configs kept as ``name.dpkg-old`` first. ``one_by_one``: each new file is
    written out (``fsync``, as dpkg does before its rename) before the next, so ext4 gives the
    new files blocks the upgrade just freed (what writeback between files does under load or
    memory pressure): new files are judged against other, deleted files' bytes."""
    root = mnt / "opt" / "ward-app"
    old = sorted(p for p in root.rglob("*") if p.is_file())
    staging = root.parent / ".upgrade"
    fresh = software_tree(staging, r, len(old), version=2)
    if one_by_one:
        os.sync()
    for src, dst in zip(fresh, old):
        tmp = dst.with_name(dst.name + ".dpkg-new")
        shutil.copyfile(src, tmp)
        if one_by_one:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if dst.suffix == ".conf":
            os.link(dst, dst.with_name(dst.name + ".dpkg-old"))
        os.rename(tmp, dst)
        if one_by_one:
            os.sync()
    shutil.rmtree(staging)


def gzip_letters(mnt: Path, r: random.Random) -> None:
    """``gzip`` 400 letters in place (``letter.txt`` -> ``letter.txt.gz``, the original removed)."""
    letters = data_files(mnt, "letters")
    files = r.sample(letters, min(400, len(letters)))
    run(["gzip", "-6", *map(str, files)])


def drop_notes(root: Path) -> None:
    dirs = {p.parent for p in data_files(root)} | {root}
    for d in dirs:
        (d / "README_TO_DECRYPT.txt").write_bytes(NOTE)


# --------------------------------------------------------------------------------- judging
@dataclass
class Judged:
    verdict: str
    score: float
    changed: int
    turned_random: int
    reason: str
    cpu_s: float
    slow: dict = field(default_factory=dict)  # the slow windows' state after it (Cusum per window)
    zeroed: float = 0.0  # share of the data that became zeros (wiped + discarded: the wipe measure before discards)
    destroyed: float = 0.0  # the wipe measure (anomaly.SnapshotSignals.destroyed)
    paired_cpu_s: float = 0.0  # CPU of conservation across snapshots (Detection._paired), within cpu_s
    wal_recycled: int = 0  # blocks not counted: PostgreSQL's WAL recycled in place (anomaly.wal_recycled)
    moved: tuple[int, int, int] = (0, 0, 0)  # blocks not counted as moved, as stale free space; moved ones lost


class Judge:
    """Snapshots into one real chunk store and the daemon's signal and verdict functions."""

    def __init__(self, workdir: Path) -> None:
        self.store = ChunkStore(workdir / "store")
        cluster = types.SimpleNamespace(site_id="bench")  # _signals never proposes
        self.det = Detection(cluster, self.store, None, workdir, lambda v: {}, None)  # type: ignore[arg-type]
        self.policy = anomaly.with_defaults(dict(anomaly.POLICY_DEFAULTS))

    def snapshot(self, image: Path, seq: int, parent: Manifest | None, allow_shrink: bool = True) -> Manifest:
        res = asyncio.run(take_snapshot(image, volume="bench", seq=seq, epoch=1, parent=parent, store=self.store,
                                        now_ns=time.time_ns(), allow_shrink=allow_shrink))
        return res.manifest

    def judge(self, seq: int, m: Manifest, base: Manifest, window: list[tuple[int, float]],
              carried: dict | None = None, anchor: Manifest | None = None) -> Judged:
        """``carried``: the slow windows' state after the previous clean snapshot (as the daemon
        carries it; one snapshot a day); ``anchor``: the snapshot the windows count from (the
        volume's first here: nobody confirms), None when it is ``base``."""
        t0 = time.process_time()
        sampling: dict = {}
        signals = self.det._signals(m, base, None, self.policy, sampling,
                                    anchor=None if anchor is None or anchor is base else (lambda: anchor),
                                    paired=carried.get(anomaly.PAIRED) if carried else None,
                                    coverage=carried.get(anomaly.COVERAGE) if carried else None)
        v = anomaly.judge_relative(seq, signals, window, [], self.policy, carried=carried)
        cpu = time.process_time() - t0
        if FREE_SPACE_DIAGNOSTIC and (signals.counted or signals.sparse):
            # what the coverage window gained over the base file system's free space (blocks
            # holding stale bytes of deleted files): no file's live data was overwritten there
            alloc = self.det._allocation(base)
            blocks = signals.counted | signals.sparse
            free = sum(alloc.unused(i * m.block_size, m.block_size) for i in blocks) if alloc else -1
            print(f"    counted {len(blocks)} blocks (turned random or sparse random), {free} of them over blocks "
                  f"the base's file system neither allocated nor referenced", flush=True)
        return Judged(v.verdict, v.score, signals.changed_blocks, signals.turned_random,
                      "; ".join(v.reasons)[:110], cpu, v.slow,
                      (signals.wiped + signals.discarded) / signals.data_blocks, signals.destroyed,
                      float(sampling.get("paired_cpu_s", 0.0)), signals.wal_recycled,
                      (len(signals.moved), signals.free_filled, len(signals.moved_lost)))


@dataclass
class Row:
    corpus: str
    op: str
    attack: bool
    runs: list[Judged] = field(default_factory=list)
    cycles: list[int | None] = field(default_factory=list)  # slow attacks: cycle of detection
    share_at_detection: list[float] = field(default_factory=list)
    via: str = "in-process"


# --------------------------------------------------------------------------------- corpora
def pg_ops(pg_scale: int) -> dict[str, tuple[bool, Callable[[Path, random.Random], None]]]:
    def with_pg(fn: Callable[[Postgres], None]) -> Callable[[Path, random.Random], None]:
        def op(mnt: Path, r: random.Random) -> None:
            pg = Postgres(mnt, SOCK)
            with pg.running():
                fn(pg)
        return op

    def attack(how: str) -> Callable[[Path, random.Random], None]:
        return lambda mnt, r: encrypt_in_place(data_files(mnt / "pg", "base"), how, r)

    return {
        "pgbench -T 8 (workload)": (False, with_pg(lambda pg: pg.pgbench("-T", "8", "-c", "2"))),
        "VACUUM FULL": (False, with_pg(lambda pg: pg.sql("VACUUM FULL"))),
        "VACUUM FULL + fstrim": (False, lambda mnt, r: with_pg(lambda pg: pg.sql("VACUUM FULL"))(mnt, r)
                                 or trim_noted(mnt, "benign VACUUM FULL + fstrim")),
        "pgbench -i (re-initialise)": (False, with_pg(lambda pg: pg.pgbench("-i", "-s", str(pg_scale), "-q"))),
        "e4defrag": (False, lambda mnt, r: run(["e4defrag", str(mnt)], check=False) and None),
        # a lab system keeping scans in the database: 40 MB of incompressible bytea (stored out of line,
        # uncompressed: a TOAST relation file of compressed data behind page and tuple headers), then
        # VACUUM FULL (every table written anew, the old files released and left in place)
        "import 40 MB of scans as bytea (TOAST), then VACUUM FULL": (False, with_pg(lambda pg: (
            pg.sql("CREATE TABLE scans (id int PRIMARY KEY, img bytea); "
                   "ALTER TABLE scans ALTER COLUMN img SET STORAGE EXTERNAL"),
            pg.sql("INSERT INTO scans SELECT g, (SELECT string_agg(sha256((g * 10000 + i)::text::bytea), ''::bytea) "
                   "FROM generate_series(1, 3125) i) FROM generate_series(1, 400) g"),
            pg.sql("VACUUM FULL")) and None)),
        "attack: full": (True, attack("full")),
        "attack: intermittent 16/32": (True, attack("intermittent")),
        "attack: header-only 4K/64K": (True, attack("header")),
        "attack: octal-encoded": (True, attack("octal")),
        "attack: base64-encoded": (True, attack("base64")),
        "attack: ransom note only": (True, lambda mnt, r: drop_notes(mnt / "pg")),
        "attack: copy-encrypt-delete": (True, lambda mnt, r: copy_encrypt_delete(data_files(mnt / "pg", "base"), r)),
        "attack: adaptive, padded hex (data: 3f2a …)": (True, attack("padded")),
        "attack: adaptive, intermittent 8/32 + 8 spaces glued": (True, attack("islands")),
        "attack: wiper (every data file zeroed)": (True, attack("zero")),
        "attack: wiper (every data file overwritten with 0xFF)": (True, attack("0xff")),
        "attack: wiper (every data file overwritten with DEADBEEF)": (True, attack("deadbeef")),
        "attack: wiper (every data file zeroed + fstrim)": (True, lambda mnt, r: attack("zero")(mnt, r)
                                                            and trim_noted(mnt, "wiper zeroed + fstrim")),
        "attack: wiper (every data file deleted + fstrim)": (True, lambda mnt, r: fstrim_after_delete(
            mnt, r, wipe=True, under="pg/base")),
        "attack: image truncated to half": (True, lambda mnt, r: TRUNCATE),
    }


def fs_ops(scale: float) -> dict[str, tuple[bool, Callable[[Path, random.Random], None]]]:
    def edit_letters(mnt: Path, r: random.Random) -> None:
        for p in r.sample(data_files(mnt, "letters"), 60):
            p.write_text(letter(r, r.randint(300, 3000)))

    def rotate_logs(mnt: Path, r: random.Random) -> None:
        log = mnt / "logs" / "pumps.log"
        (mnt / "logs" / "pumps.log.1.gz").write_bytes(gzip.compress(log.read_bytes()))
        log.write_text(log_text(r, 2000))

    def import_images(mnt: Path, r: random.Random) -> None:
        d = mnt / "images" / "import"
        d.mkdir()
        for i in range(int(40 * scale) + 5):
            (d / f"new_{i:04}.png").write_bytes(png(r, 512, 512))

    def import_zip(mnt: Path, r: random.Random) -> None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for i in range(int(120 * scale) + 10):
                z.writestr(f"scan_{i}.png", png(r, 256, 256))
                z.writestr(f"note_{i}.txt", letter(r, 800))
        (mnt / "archive" / "import.zip").write_bytes(buf.getvalue())

    def copy_targz(mnt: Path, r: random.Random) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for p in data_files(mnt, "letters")[: int(800 * scale) + 50]:
                t.add(p, arcname=p.name)
        (mnt / "archive" / "backup_copy.tar.gz").write_bytes(buf.getvalue())

    def flash_images(mnt: Path, r: random.Random) -> None:
        """Delete a third of the letters (freed blocks reused), then write 0xFF-padded firmware
        images (each 1 MiB: 64 KiB of code, 0xFF to its end, as a flash dump) of as many bytes
        plus a third: the benign side of a 0xFF wiper. Meant as fills over the deleted letters'
        stale blocks; ext4 puts 1 MiB files into never-used space instead (fresh blocks, not
        counted: tests/bench/results/detection-wipes.md)."""
        gone = 0
        for p in r.sample(data_files(mnt, "letters"), len(data_files(mnt, "letters")) // 3):
            gone += p.stat().st_size
            p.unlink()
        d = mnt / "firmware"
        d.mkdir()
        for i in range(max(2, gone * 4 // 3 // (1 << 20) + 1)):
            (d / f"pump_fw_{i:03}.bin").write_bytes(machine_code(r, 64 << 10) + b"\xff" * ((1 << 20) - (64 << 10)))

    def flash_blobs(mnt: Path, r: random.Random) -> None:
        """Delete a third of the letters, then write as many erased-flash blobs (``0xFF``), each
        the size of a deleted letter, so ext4 puts them into the letters' freed blocks: fills
        over stale data, counted as wiped where the file system allocates them (as files of
        zeros would be)."""
        sizes = []
        for p in r.sample(data_files(mnt, "letters"), len(data_files(mnt, "letters")) // 3):
            sizes.append(p.stat().st_size)
            p.unlink()
        os.sync()
        d = mnt / "nvram"
        d.mkdir()
        for i, n in enumerate(sizes):
            (d / f"blob_{i:05}.bin").write_bytes(b"\xff" * n)

    def sqlite_preallocated(mnt: Path, r: random.Random) -> None:
        """SQLite updates and a 0xFF-preallocated journal file of 8 MiB (a device log preformatted
        as erased flash)."""
        sqlite_updates(mnt, r)
        (mnt / "logs" / "device_ring.bin").write_bytes(b"\xff" * (8 << 20))

    def sqlite_updates(mnt: Path, r: random.Random) -> None:
        db = sqlite3.connect(mnt / "lab.sqlite")
        db.execute("update results set value = value * 1.01 where id % 7 = 0")
        db.execute("delete from results where id % 13 = 0")
        db.commit()
        db.execute("vacuum")
        db.close()

    def attack(how: str) -> Callable[[Path, random.Random], None]:
        return lambda mnt, r: encrypt_in_place(data_files(mnt), how, r)

    return {
        "edit 60 letters": (False, edit_letters),
        "log rotation with gzip": (False, rotate_logs),
        "import PNG images": (False, import_images),
        "import a zip": (False, import_zip),
        "copy a .tar.gz": (False, copy_targz),
        "SQLite updates + VACUUM": (False, sqlite_updates),
        "delete a third of the letters + write 0xFF-padded firmware images": (False, flash_images),
        "SQLite updates + a 0xFF-preallocated 8 MiB ring file": (False, sqlite_preallocated),
        "delete a third of the letters + as many 0xFF blobs of their sizes (fills over stale data)": (False,
                                                                                                  flash_blobs),
        "e4defrag": (False, lambda mnt, r: run(["e4defrag", str(mnt)], check=False) and None),
        "attack: full": (True, attack("full")),
        "attack: intermittent 16/32": (True, attack("intermittent")),
        "attack: header-only 4K/64K": (True, attack("header")),
        "attack: octal-encoded": (True, attack("octal")),
        "attack: base64-encoded": (True, attack("base64")),
        "attack: ransom note only": (True, lambda mnt, r: drop_notes(mnt)),
        "package upgrade (.dpkg-new + rename)": (False, package_upgrade),
        "package upgrade, file by file (fsync each, blocks reused)": (
            False, lambda mnt, r: package_upgrade(mnt, r, one_by_one=True)),
        "gzip 400 letters": (False, gzip_letters),
        "fstrim after deletes": (False, fstrim_after_delete),
        "attack: copy-encrypt-delete": (True, lambda mnt, r: copy_encrypt_delete(data_files(mnt), r)),
        "attack: copy-encrypt-delete, per-file random extension": (
            True, lambda mnt, r: [copy_encrypt_delete([p], r, "." + r.randbytes(3).hex()) for p in data_files(mnt)]
            and None),
        "attack: adaptive, copy-encrypt-delete as .gz (gzip-framed)": (
            True, lambda mnt, r: copy_encrypt_delete(data_files(mnt), r, ".gz", gzip_frame=True)),
        "attack: adaptive, copy-encrypt-delete as .bak, MIME base64 of the ciphertext": (
            True, lambda mnt, r: copy_encrypt_delete(data_files(mnt), r, ".bak", b64=True)),
        "attack: adaptive, copy-encrypt-delete as .bak, octal digits of the ciphertext": (
            True, lambda mnt, r: copy_encrypt_delete(data_files(mnt), r, ".bak", octal=True)),
        "attack: adaptive, copy-encrypt-delete as .gz, compressed before encryption (zlib, AES, gzip level 0)": (
            True, lambda mnt, r: copy_encrypt_delete(data_files(mnt), r, ".gz", gzip_frame=True, compress=True)),
        "attack: copy-encrypt-delete as password-protected zips (zip -P)": (
            True, lambda mnt, r: copy_encrypt_delete(data_files(mnt), r, zip_password=True)),
        "attack: adaptive, padded hex (data: 3f2a …)": (True, attack("padded")),
        "attack: adaptive, intermittent 8/32 + 8 spaces glued": (True, attack("islands")),
        "attack: wiper (every file zeroed)": (True, attack("zero")),
        "attack: wiper (every file overwritten with 0xFF)": (True, attack("0xff")),
        "attack: wiper (every file overwritten with DEADBEEF)": (True, attack("deadbeef")),
        "attack: wiper (every file deleted + fstrim)": (True, lambda mnt, r: fstrim_after_delete(mnt, r, wipe=True)),
        "attack: image truncated to half": (True, lambda mnt, r: TRUNCATE),
    }


TRUNCATE = "truncate"  # an op returning this has the image truncated to half after unmounting


SOCK = Path(tempfile.gettempdir())  # replaced in main by a private directory
OPS: tuple[str, ...] | None = None  # --ops: only the operations naming one of these


def selected(op: str) -> bool:
    return OPS is None or any(x in op for x in OPS)


def bench_corpus(name: str, base_img: Path, ops: dict, seeds: int, judge: Judge, work: Path,
                 slow_under: str, slow_cycles: int) -> list[Row]:
    base_m = judge.snapshot(base_img, 1, None)
    base_blocks = _nonzero_blocks(base_m, judge.store.get)
    rows = []
    img = work / f"{name}.work.img"
    mnt = work / f"{name}.mnt"
    for n, (op, (is_attack, fn)) in enumerate(ops.items()):
        if not selected(op):
            continue
        row = Row(name, op, is_attack)
        for seed in range(seeds):
            img.unlink(missing_ok=True)
            img = work / f"{name}.work-{n}-{seed}.img"  # a new file (inode) for every run
            copy_image(base_img, img)
            with mounted(img, mnt):
                post = fn(mnt, random.Random(1000 * seed + zlib.crc32(op.encode()) % 1000))
            refused = ""
            if post == TRUNCATE:
                os.truncate(img, img.stat().st_size // 2)
                try:  # what the daemon does by default: refuse the shrunk source
                    judge.snapshot(img, 2, base_m, allow_shrink=False)
                except SourceShrunkError:
                    refused = "refused by the source (SourceShrunkError); judged with allow_shrink: "
            m = judge.snapshot(img, 2, base_m)
            row.runs.append(judge.judge(2, m, base_m, []))
            if refused:
                row.runs[-1].reason = (refused + row.runs[-1].reason)[:110]
            print(f"  {name:10} {op:32} seed {seed}: {row.runs[-1].verdict:8} score {row.runs[-1].score:.4f} "
                  f"changed {row.runs[-1].changed} {coverage_line(row.runs[-1], base_blocks)} "
                  f"{wipe_line(row.runs[-1])} {paired_line(row.runs[-1])} cpu {row.runs[-1].cpu_s:.2f} "
                  f"reason {row.runs[-1].reason[:70]}", flush=True)
        rows.append(row)
    for label, (is_attack, step, cycles) in daily_ops(name).items():
        if selected(label):
            img, row = _daily(name, base_img, base_m, seeds, judge, work, img, mnt, label, is_attack, step, cycles)
            rows.append(row)
    # slow: a share of the data bytes per cycle, judged against the newest snapshot judged clean
    policy = anomaly.POLICY_DEFAULTS
    under = 0.95 * policy["cumulative_max"] / 7
    slack = 0.95 * policy["slow_slack"]
    for label, share, cycles, window_cycles, calibrated in (
            ("attack: slow, 1 % of the data per cycle", 0.01, slow_cycles, None, False),
            (f"attack: adaptive slow, 95 % of min_score ({0.95 * policy['min_score']:.1%} of the data blocks) per "
             f"cycle", 0.95 * policy["min_score"], slow_cycles, None, True),
            (f"attack: adaptive slow under the old 7-day window ({under:.2%} of the data blocks per daily cycle: 95 % "
             f"of cumulative_max per 7 days)", under, int(0.05 / under) + 2, None, True),
            (f"attack: adaptive slow under slow_slack ({slack:.3%} of the data blocks per daily cycle: 95 % of "
             f"slow_slack; until flagged or 5 % touched)", slack, int(0.15 / slack), None, True)):
        if not selected(label):
            continue
        img, row = _slow(name, base_img, base_m, seeds, judge, work, img, mnt, slow_under, label, share, cycles,
                         window_cycles, calibrated, stop_at=0.05 if "until flagged" in label else None)
        rows.append(row)
    if selected(KEEP_NAMES) and not slow_under:  # the fileshare: documents, not a database's files
        img, row = _keep_names(name, base_img, base_m, seeds, judge, work, img, mnt, KEEP_NAMES_SHARE,
                               KEEP_NAMES_CYCLES)
        rows.append(row)
    img.unlink(missing_ok=True)
    return rows


def extents(files: list[Path]) -> dict[Path, list[tuple[int, int, int]]]:
    """``{file: [(logical byte offset, physical byte offset, length in bytes)]}`` from ``filefrag
    -e`` (FIEMAP), as an attacker with root on the host reads where a file's bytes lie."""
    out: dict[Path, list[tuple[int, int, int]]] = {}
    for i in range(0, len(files), 200):
        cur = None
        for line in run(["filefrag", "-b4096", "-e", *map(str, files[i:i + 200])]).stdout.splitlines():
            if line.startswith("File size of "):
                cur = Path(line[len("File size of "):].rsplit(" is ", 1)[0])
                out[cur] = []
            elif cur is not None and ".." in line and ":" in line:
                parts = line.replace("..", " ").replace(":", " ").split()
                with contextlib.suppress(ValueError):
                    lo, _, po, _, ln = (int(x) for x in parts[1:6])
                    out[cur].append((lo * 4096, po * 4096, ln * 4096))
    return out


def blocks_touched(ext: list[tuple[int, int, int]], off: int, length: int, bs: int = 65536) -> set[int]:
    """The volume's ``bs`` blocks holding bytes ``[off, off + length)`` of a file (``ext``)."""
    out: set[int] = set()
    for lo, po, ln in ext:
        a, b = max(off, lo), min(off + length, lo + ln)
        if a < b:
            out.update(range((po + a - lo) // bs, (po + b - lo - 1) // bs + 1))
    return out


DAILY_CED_SHARE = 0.02
NO_TRIM = "no fstrim"
"""A daily row whose label holds this runs no ``fstrim`` after its cycles (freed blocks keep their
old bytes, as on a volume that does not discard)."""


def coverage_line(j: "Judged", data_blocks: int) -> str:
    """The coverage window's state after a verdict, for the progress lines."""
    cov = j.slow.get(anomaly.COVERAGE)
    return "coverage -" if cov is None else f"coverage {cov.total(data_blocks):.4f} ({len(cov.blocks)} blocks)"


def paired_line(j: "Judged") -> str:
    """Conservation across snapshots after ``j``: ciphertext-like files / released structure since
    the anchor (shares of the data), and its CPU in this judgement."""
    p = j.slow.get(anomaly.PAIRED)
    return "paired -" if p is None else \
        f"paired {p.filled:.4f}/{p.released:.4f} (cpu {j.paired_cpu_s:.3f})"


def wipe_line(j: "Judged") -> str:
    """The wipe measure after a verdict and the share of the data that became zeros (what the
    measure was before discarded blocks were told apart), for the progress lines."""
    return (f"zeroed {j.zeroed:.4f} destroyed {j.destroyed:.4f} wal recycled {j.wal_recycled} moved/free/lost "
            f"{'/'.join(map(str, j.moved))} judge {j.cpu_s:.2f} CPU-s load {os.getloadavg()[0]:.1f}")


def daily_ops(corpus: str) -> dict[str, tuple[bool, Callable[[Path, random.Random, int, dict], float], int]]:
    """Daily series, one cycle a day with ``fstrim`` after it (the freed blocks read as zeros, as on
    a discarding thin or loop device): ``label -> (is_attack, step(mnt, r, day, state) -> share of
    the data bytes encrypted so far, cycles)``. The file share: the conservation signal's slow
    window; PostgreSQL: a busy database nobody confirms (the coverage window's false alarms)."""
    if corpus == "postgres":
        def busy_db(mnt: Path, r: random.Random, day: int, state: dict) -> float:
            pg = Postgres(mnt, SOCK)
            with pg.running():
                pg.pgbench("-T", "8", "-c", "2")
                if day % 7 == 0:
                    pg.sql("VACUUM FULL")
            return 0.0

        return {"pgbench -T 8 daily, VACUUM FULL weekly, for 14 days, fstrim (coverage window, never confirmed)":
                (False, busy_db, 14),
                f"pgbench -T 8 daily, VACUUM FULL weekly, for 28 days, {NO_TRIM} (coverage window, never confirmed)":
                (False, busy_db, 28)}

    def edit_daily(mnt: Path, r: random.Random, day: int, state: dict) -> float:
        for p in r.sample(data_files(mnt, "letters"), 60):
            p.write_text(letter(r, r.randint(300, 3000)))
        logs = mnt / "logs"
        log = logs / "pumps.log"
        (logs / f"pumps.log.{day}.gz").write_bytes(gzip.compress(log.read_bytes()))
        log.write_text(log_text(r, 2000))
        (logs / f"pumps.log.{day - 7}.gz").unlink(missing_ok=True)
        return 0.0

    def ced_gz(mnt: Path, r: random.Random, day: int, state: dict) -> float:
        files = state.setdefault("files", None) or data_files(mnt)
        if "order" not in state:
            state["files"] = files
            state["total"] = sum(p.stat().st_size for p in files)
            state["order"] = list(range(len(files)))
            random.Random(state["seed"]).shuffle(state["order"])
            state["done"] = state["bytes"] = 0
        batch: list[Path] = []
        size = 0
        while state["done"] < len(files) and size < DAILY_CED_SHARE * state["total"]:
            p = files[state["order"][state["done"]]]
            state["done"] += 1
            size += p.stat().st_size
            batch.append(p)
        copy_encrypt_delete(batch, r, ".gz", gzip_frame=True)
        state["bytes"] += size
        return state["bytes"] / state["total"]

    def ced_gz_split(mnt: Path, r: random.Random, day: int, state: dict, how: str = "gz") -> float:
        """The .gz attacker's two halves in two snapshots: day 1 every data file's ciphertext
        written beside it as ``name.gz`` (gzip level 0), day 2 the originals unlinked. ``how``:
        ``octal`` (the ciphertext as octal digits, 64 to a line, as ``name.bak``), ``compressed``
        (zlib before AES, in gzip level 0 as ``name.gz``)."""
        if day == 1:
            state["files"] = data_files(mnt)
            for p in state["files"]:
                data = p.read_bytes()
                if how == "octal":
                    o = octal_of(aes(data, r), 3 * len(data))
                    p.with_name(p.name + ".bak").write_bytes(b"\n".join(o[i:i + 64] for i in range(0, len(o), 64)))
                else:
                    c = aes(zlib.compress(data, 6) if how == "compressed" else data, r)
                    p.with_name(p.name + ".gz").write_bytes(gzip.compress(c, compresslevel=0))
            return 0.0
        for p in state["files"]:
            p.unlink(missing_ok=True)
        return 1.0

    def rotate_daily(mnt: Path, r: random.Random, day: int, state: dict) -> float:
        logs = mnt / "logs"
        log = logs / "pumps.log"
        (logs / f"pumps.log.{day}.gz").write_bytes(gzip.compress(log.read_bytes()))
        log.write_text(log_text(r, 2000))
        (logs / f"pumps.log.{day - 7}.gz").unlink(missing_ok=True)
        return 0.0

    return {
        f"attack: adaptive copy-encrypt-delete as .gz (gzip-framed), {DAILY_CED_SHARE:.0%} of the data bytes per "
        f"daily cycle (under conserve_max), fstrim": (True, ced_gz, 8),
        "log rotation with gzip, daily for 30 days, fstrim (conservation slow window)": (False, rotate_daily, 30),
        "60 letters rewritten and log rotation with gzip, daily for 30 days, fstrim (coverage window, never "
        "confirmed)": (False, edit_daily, 30),
        # without discard the originals' bytes stay where they were: conservation by what the files released
        f"attack: adaptive copy-encrypt-delete as .gz (gzip-framed), {DAILY_CED_SHARE:.0%} of the data bytes per "
        f"daily cycle (under conserve_max), {NO_TRIM}": (True, ced_gz, 8),
        f"60 letters rewritten and log rotation with gzip, daily for 30 days, {NO_TRIM} (released structure, never "
        "confirmed)": (False, edit_daily, 30),
        f"attack: adaptive copy-encrypt-delete as .gz split in two snapshots (copies, then the originals deleted), "
        f"{NO_TRIM}": (True, ced_gz_split, 2),
        f"attack: adaptive copy-encrypt-delete split in two snapshots, octal digits of the ciphertext as .bak, "
        f"{NO_TRIM}": (True, lambda mnt, r, day, state: ced_gz_split(mnt, r, day, state, "octal"), 2),
        f"attack: adaptive copy-encrypt-delete split in two snapshots, compressed before encryption (zlib, AES, gzip "
        f"level 0) as .gz, {NO_TRIM}": (True, lambda mnt, r, day, state: ced_gz_split(mnt, r, day, state, "compressed"),
                                        2),
    }


def _daily(name: str, base_img: Path, base_m: Manifest, seeds: int, judge: Judge, work: Path, img: Path, mnt: Path,
           label: str, is_attack: bool, step: Callable, cycles: int) -> tuple[Path, Row]:
    """One :func:`daily_ops` row: ``cycles`` daily steps, each followed by ``fstrim`` and a snapshot
    judged against the newest snapshot judged clean with the slow windows' state carried from
    it (as the daemon does), until the first suspect verdict."""
    row = Row(name, label, is_attack)
    for seed in range(seeds):
        img.unlink(missing_ok=True)
        img = work / f"{name}.daily-{zlib.crc32(label.encode())}-{seed}.img"
        copy_image(base_img, img)
        r = random.Random(31 + seed)
        clean_m, seq, carried, detected, share, state, summed = base_m, 1, {}, None, 0.0, {"seed": seed}, 0.0
        j = None
        for day in range(1, cycles + 1):
            with mounted(img, mnt):
                share = step(mnt, r, day, state)
                os.sync()
                if NO_TRIM not in label:
                    run(["fstrim", str(mnt)], check=False)
            seq += 1
            m = judge.snapshot(img, seq, clean_m)
            j = judge.judge(seq, m, clean_m, [], carried, anchor=base_m)
            summed += j.score
            print(f"  {name:10} daily seed {seed} day {day}: {j.verdict} score {j.score:.4f} summed {summed:.4f} "
                  f"{coverage_line(j, _nonzero_blocks(m, judge.store.get))} "
                  f"conservation {j.slow['conservation'].total:.4f} {wipe_line(j)} {paired_line(j)} cpu {j.cpu_s:.2f} "
                  f"reason {j.reason[:60]}", flush=True)
            if j.verdict == "suspect":
                detected = day
                break
            carried, clean_m = j.slow, m
        row.runs.append(j)
        if is_attack:
            row.cycles.append(detected)
            row.share_at_detection.append(share)
    return img, row


class Calibrated:
    """The adaptive attacker of the slow rows: it reads the policy and the files' extents and
    encrypts, per cycle, whole 64 KiB ranges of files (its permutation, continuing where the last
    cycle stopped) as long as the volume blocks they touch stay within ``target`` x the volume's
    data blocks — just under what one snapshot may turn random. A target under one block per cycle
    (95 % of ``slow_slack`` on a small volume) is kept on average: the unused fraction is carried
    to the next cycle."""

    def __init__(self, data_blocks: int, target: float, order_seed: int) -> None:
        self.per_cycle = target * data_blocks
        self.credit = 0.0
        self.order_seed = order_seed
        self.pos = (0, 0)  # (file index in the permutation, byte offset)

    def cycle(self, root: Path, r: random.Random) -> int:
        files = data_files(root)
        random.Random(self.order_seed).shuffle(files)
        ext = extents(files[self.pos[0]:self.pos[0] + 400])
        touched: set[int] = set()
        # never above one cycle's worth, or two blocks (one 64 KiB range may straddle two)
        self.credit = min(self.credit + self.per_cycle, max(2.0, self.per_cycle))
        budget = int(self.credit)
        fi, off = self.pos
        while fi < len(files):
            p = files[fi]
            size = p.stat().st_size
            if off >= size:
                fi, off = fi + 1, 0
                if fi - self.pos[0] >= 400:
                    break
                continue
            take = min(65536, size - off)
            new = blocks_touched(ext.get(p, []), off, take) - touched
            if len(touched) + len(new) > budget:
                break
            touched |= new
            with open(p, "r+b") as f:
                f.seek(off)
                plain = f.read(take)
                f.seek(off)
                f.write(aes(plain, r))
            off += take
        self.pos = (fi, off)
        self.credit -= len(touched)
        os.sync()
        return len(touched)


def _slow(name: str, base_img: Path, base_m: Manifest, seeds: int, judge: Judge, work: Path, img: Path, mnt: Path, slow_under: str,
          label: str, share: float, slow_cycles: int, window_cycles: int | None,
          calibrated: bool = False, stop_at: float | None = None) -> tuple[Path, Row]:
    """The slow attack: ``share`` of the data bytes encrypted per cycle (one snapshot per cycle,
    each judged against the newest snapshot judged clean, with the slow window of this site's
    own scores; ``window_cycles``: the window holds only that many cycles, as ``window_s`` does
    with one snapshot a day)."""
    row = Row(name, label, True)
    for seed in range(seeds):
        img.unlink(missing_ok=True)
        img = work / f"{name}.slow-{zlib.crc32(label.encode())}-{seed}.img"
        copy_image(base_img, img)
        r = random.Random(77 + seed)
        clean_m, seq, window, done, detected, carried = base_m, 1, [], 0, None, {}
        with mounted(img, mnt):
            files = data_files(mnt / slow_under if slow_under else mnt)
            total = sum(p.stat().st_size for p in files)
        step = max(1, int(total * share))
        data_blocks = _nonzero_blocks(base_m, judge.store.get)
        attacker = Calibrated(data_blocks, share, seed) if calibrated else None
        hit = 0
        for cycle in range(1, slow_cycles + 1):
            if attacker is not None:
                with mounted(img, mnt):
                    hit += attacker.cycle(mnt / slow_under if slow_under else mnt, r)
            else:
                with mounted(img, mnt):
                    files = data_files(mnt / slow_under if slow_under else mnt)
                    random.Random(seed).shuffle(files)  # the attacker's order: the same permutation each cycle
                    budget = step
                    for p in files:  # continue where the last cycle stopped: bytes [done, done + step)
                        size = p.stat().st_size
                        if done >= size:
                            done -= size
                            continue
                        take = min(size - done, budget)
                        with open(p, "r+b") as f:
                            f.seek(done)
                            plain = f.read(take)
                            f.seek(done)
                            f.write(aes(plain, r))
                            f.flush()
                            os.fsync(f.fileno())
                        budget -= take
                        done = 0
                        if budget <= 0:
                            break
                    done = cycle * step
            seq += 1
            m = judge.snapshot(img, seq, clean_m)
            # the slow windows' state carried from the newest clean snapshot, as the daemon does
            # (window_cycles: the old time-cut window, folded from scores)
            j = judge.judge(seq, m, clean_m, window[-(window_cycles - 1):], {}) if window_cycles else \
                judge.judge(seq, m, clean_m, [], carried)
            print(f"  {name:10} slow seed {seed} cycle {cycle}: {j.verdict} score {j.score:.4f} "
                  f"touched {hit / data_blocks:.4f} {coverage_line(j, data_blocks)} reason {j.reason[:60]}",
                  flush=True)
            if j.verdict == "suspect":
                detected = cycle
                row.runs.append(j)
                break
            window.append((seq, j.score))
            clean_m, carried = m, j.slow
            if attacker is not None and stop_at is not None and hit / data_blocks >= stop_at:
                break  # the adaptive attacker reached the mark (5 % of the data) unseen: a miss
        if detected is None:
            row.runs.append(j)
        row.cycles.append(detected)
        row.share_at_detection.append(hit / data_blocks if attacker is not None
                                      else (detected or slow_cycles) * step / total)
    return img, row


KEEP_NAMES_SHARE, KEEP_NAMES_CYCLES = 0.15, 6
KEEP_NAMES = (f"attack: copy-encrypt-delete keeping names, 8 KiB footer, on a discarding volume (-o discard; "
              f"{KEEP_NAMES_SHARE:.0%} of the data bytes per cycle)")


def _keep_names(name: str, base_img: Path, base_m: Manifest, seeds: int, judge: Judge, work: Path, img: Path,
                mnt: Path, share: float, cycles: int) -> tuple[Path, Row]:
    """The security review's F1 over several cycles: the volume mounted with ``-o discard``; per
    cycle whole files (the attacker's order), about ``share`` of the data bytes, are encrypted by
    :func:`copy_encrypt_delete` keeping their names with an 8 KiB footer; one snapshot per cycle,
    judged against the newest snapshot judged clean, with the slow window of the earlier clean
    scores, up to ``cycles`` or the first suspect verdict (its cycle is the row's)."""
    row = Row(name, KEEP_NAMES, True)
    for seed in range(seeds):
        img.unlink(missing_ok=True)
        img = work / f"{name}.keep-names-{seed}.img"
        copy_image(base_img, img)
        r = random.Random(91 + seed)
        with mounted(img, mnt):
            sizes = {p: p.stat().st_size for p in data_files(mnt)}
        files = sorted(sizes)
        random.Random(seed).shuffle(files)
        total = sum(sizes.values())
        clean_m, seq, window, done, encrypted, detected = base_m, 1, [], 0, 0, None
        for cycle in range(1, cycles + 1):
            batch: list[Path] = []
            while done < len(files) and sum(map(sizes.get, batch)) < share * total:
                batch.append(files[done])
                done += 1
            with mounted(img, mnt, options=("discard",)):  # the same mount point: the same paths
                copy_encrypt_delete(batch, r, keep_names=True, footer=8192)
                discards_landed(mnt)
            encrypted += sum(map(sizes.get, batch))
            seq += 1
            m = judge.snapshot(img, seq, clean_m)
            j = judge.judge(seq, m, clean_m, window)
            print(f"  {name:10} keep-names seed {seed} cycle {cycle}: {j.verdict} score {j.score:.4f} "
                  f"reason {j.reason[:60]}", flush=True)
            if j.verdict == "suspect":
                detected = cycle
                break
            window.append((seq, j.score))
            clean_m = m
        row.runs.append(j)
        row.cycles.append(detected)
        row.share_at_detection.append(encrypted / total)
    return img, row


def cluster_rows(fs_base: Path, work: Path) -> list[Row]:
    """Two rows through a real 3-site cluster: site-a's daemon snapshots the fileshare image,
    site-b's own opinion is the verdict."""
    from replicad.lab.localcluster import LocalCluster
    c = LocalCluster(work / "cluster", interval="1h", min_copies=2)
    rows = []
    try:
        img = c.sites["site-a"].volume_path("ehr")
        copy_image(fs_base, img)
        c.start_all()
        c.wait_ready(120)
        c.api("site-a", "POST", "/v1/volumes/ehr/snapshot", {})
        mnt = work / "cluster.mnt"
        for op, is_attack, fn in (("log rotation with gzip", False, fs_ops(1.0)["log rotation with gzip"][1]),
                                  ("attack: intermittent 16/32", True, fs_ops(1.0)["attack: intermittent 16/32"][1])):
            with mounted(img, mnt):
                fn(mnt, random.Random(5))
            snap = c.api("site-a", "POST", "/v1/volumes/ehr/snapshot", {}, timeout_s=300)
            seq = snap["seq"]

            def opinion() -> dict | None:
                for s in c.api("site-b", "GET", "/v1/volumes/ehr/snapshots")["snapshots"]:
                    if s["seq"] == seq:
                        return (s.get("opinions") or {}).get("site-b")
                return None
            c.wait_for(f"site-b judged #{seq}", opinion, 300)
            here = c.api("site-b", "GET", f"/v1/volumes/ehr/snapshots/{seq}/evidence")["here"]
            row = Row("fileshare", op, is_attack, via="3-site cluster (site-b's opinion)")
            row.runs.append(Judged(here["verdict"], here["score"], here["signals"]["changed_blocks"],
                                   here["signals"]["turned_random"], "; ".join(here["reasons"])[:110], here["cpu_s"]))
            print(f"  cluster {op}: {here['verdict']} score {here['score']:.4f}", flush=True)
            rows.append(row)
    finally:
        c.stop_all()
    return rows


# --------------------------------------------------------------------------------- report
def table(rows: list[Row]) -> str:
    out = ["| corpus | operation | judged by | runs | TP | FN | FP | TN | score (max) | changed blocks (max) | "
           "reason (first run) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flagged = sum(j.verdict == "suspect" for j in r.runs)
        tp, fn = (flagged, len(r.runs) - flagged) if r.attack else (0, 0)
        fp, tn = (0, 0) if r.attack else (flagged, len(r.runs) - flagged)
        op = r.op
        if r.cycles:
            op += " — detected at cycle " + ", ".join(str(c) if c else "never" for c in r.cycles) + \
                  " (" + ", ".join(f"{s:.0%}" for s in r.share_at_detection) + " of the data encrypted)"
        reason = (r.runs[0].reason or "—").replace("|", "/")
        out.append(f"| {r.corpus} | {op} | {r.via} | {len(r.runs)} | {tp} | {fn} | {fp} | {tn} | "
                   f"{max(j.score for j in r.runs):.4f} | {max(j.changed for j in r.runs)} | {reason} |")
    attacks = [j for r in rows if r.attack for j in r.runs]
    benign = [j for r in rows if not r.attack for j in r.runs]
    tp = sum(j.verdict == "suspect" for j in attacks)
    fp = sum(j.verdict == "suspect" for j in benign)
    out += ["", "| | flagged suspect | judged clean |", "|---|---|---|",
            f"| attack runs ({len(attacks)}) | TP {tp} | FN {len(attacks) - tp} |",
            f"| benign runs ({len(benign)}) | FP {fp} | TN {len(benign) - fp} |"]
    cpu = sum(j.cpu_s for r in rows for j in r.runs)
    changed = sum(j.changed for r in rows for j in r.runs)
    out.append(f"\nJudging CPU: {cpu:.1f} s for {changed} changed 64 KiB blocks "
               f"({cpu / max(1, changed * 65536 / 2**30):.1f} CPU-s per changed GiB).")
    return "\n".join(out)


def _at_least_one(text: str) -> int:
    """argparse type: an integer >= 1 (a slow row of no cycle judges nothing)."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smaller volumes (pgbench scale 2, a quarter of the files)")
    p.add_argument("--slow-cycles", type=_at_least_one, default=8, help="cycles of each slow attack (at least 1)")
    p.add_argument("--no-cluster", action="store_true")
    p.add_argument("--only", choices=("postgres", "fileshare"))
    p.add_argument("--free-space", action="store_true",
                   help="print, per judged snapshot, how many counted blocks lay in the base file system's free space")
    p.add_argument("--ops", help="comma-separated substrings: run only the operations (and slow rows) naming one")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "detection.md")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (loop mounts, runuser postgres)", file=sys.stderr)
        return 2
    global SOCK, OPS, FREE_SPACE_DIAGNOSTIC
    OPS = tuple(x.strip() for x in args.ops.split(",")) if args.ops else None
    FREE_SPACE_DIAGNOSTIC = args.free_space
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="replicad-detbench-", dir="/var/tmp"))
    os.chmod(work, 0o755)  # the postgres user traverses it to its data directory
    SOCK = work / "sock"
    SOCK.mkdir()
    shutil.chown(SOCK, "postgres", "postgres")
    rows: list[Row] = []
    scale = 0.25 if args.quick else 1.0
    pg_scale = 2 if args.quick else 6
    try:
        judge = Judge(work)
        if args.only in (None, "postgres") and PG_BIN is not None:
            pg_img = work / "postgres.img"
            make_ext4(pg_img, 256 if args.quick else 512)
            with mounted(pg_img, work / "build.mnt") as mnt:
                pg = Postgres(mnt, SOCK)
                pg.init()
                with pg.running():
                    pg.pgbench("-i", "-s", str(pg_scale), "-q")
                    pg.pgbench("-T", "5", "-c", "2")
            print(f"postgres corpus built ({time.monotonic() - t0:.0f} s)", flush=True)
            rows += bench_corpus("postgres", pg_img, pg_ops(pg_scale), args.seeds, judge, work, "pg/base",
                                 args.slow_cycles)
        if args.only in (None, "fileshare"):
            fs_img = work / "fileshare.img"
            make_ext4(fs_img, 128 if args.quick else 384)
            with mounted(fs_img, work / "build.mnt") as mnt:
                build_fileshare(mnt, scale, random.Random(1))
            print(f"fileshare corpus built ({time.monotonic() - t0:.0f} s)", flush=True)
            rows += bench_corpus("fileshare", fs_img, fs_ops(scale), args.seeds, judge, work, "",
                                 args.slow_cycles)
            if not args.no_cluster:
                rows += cluster_rows(fs_img, work)
    finally:
        for m in sorted(work.glob("*.mnt")):
            if os.path.ismount(m):
                run(["umount", "-l", str(m)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    report = (f"# Detection benchmark\n\n`python -m tests.bench.detection {' '.join(argv or sys.argv[1:])}` — "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.monotonic() - t0:.0f} s, seeds "
              f"{args.seeds}, {'quick' if args.quick else 'full'} sizes, default detection policy "
              f"(min_score {anomaly.POLICY_DEFAULTS['min_score']}, cumulative_max "
              f"{anomaly.POLICY_DEFAULTS['cumulative_max']}, rename_min {anomaly.POLICY_DEFAULTS['rename_min']})."
              f"\n\n" + table(rows) + "\n" + "".join(f"\n* {n}" for n in NOTES) + "\n")
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(json.dumps({"out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
