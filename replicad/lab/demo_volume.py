"""Demo volume tooling: build a realistic ext4 image, change it, attack it, verify it.

Everything here works on a raw ext4 image file without mounting it (no loop devices, no
root needed), through e2fsprogs:

* ``mke2fs -t ext4 -d DIR`` builds a populated filesystem from a directory tree;
* ``debugfs`` reads files (``dump``), lists their extents (``stat``), writes new files
  (``-w``: ``write``, ``rm``, ``mkdir``); many commands go through one ``-f cmdfile`` run;
* ``e2fsck -fn`` checks the filesystem read-only (exit code 0 = clean).

The generated content is synthetic hospital data (every person in it is invented and
every record says so), a real SQLite database of lab results, DICOM-like image files
(incompressible bytes behind a ``DICM`` header at offset 128) and a handful of real text
files copied from the machine (``/usr/share/common-licenses``, ``/usr/share/doc``).

``ransomware_attack`` encrypts file contents in place with AES-256-CTR and throws the key
away, touching only data blocks: the filesystem metadata stays consistent, so ``e2fsck``
still passes while every attacked file reads back as ciphertext — the case a replicated
snapshot chain must survive.

All randomness comes from the ``random.Random`` passed in; a given seed gives the same
generated tree (the copied machine files depend on the machine).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import random
import re
import shutil
import sqlite3
import struct
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from replicad.core.errors import (
    IntegrityError,
    NotFoundError,
    ToolError,
    UsageError,
    from_os_error,
)

__all__ = [
    "VolumeImage",
    "build_volume",
    "ordinary_changes",
    "ransomware_attack",
    "verify_volume",
    "read_file_checksums",
    "file_extents",
]

FS_BLOCK_SIZE_BYTES = 4096
"""ext4 block size used for every demo image (``mke2fs -b 4096``)."""

MIN_VOLUME_SIZE_BYTES = 16 * 2**20
"""Smallest image ``build_volume`` accepts: room for the journal and some data."""

DATA_FILL_FRACTION = 0.5
"""Share of the image size filled with file data by ``build_volume`` (brief: 40–60 %)."""

_TOOL_DIRS = ("/usr/sbin", "/sbin")
_TOOL_TIMEOUT_S = 120.0
_STDERR_TAIL_CHARS = 2000
_IO_CHUNK_BYTES = 8 * 2**20
_DEBUGFS_BANNER = re.compile(r"^debugfs \d+\.\d+")
# One entry of debugfs ``stat`` EXTENTS/BLOCKS lists: "(L):P", "(L1-L2):P1-P2", "(L[u]):P".
# Tree blocks "(ETB0):P" and indirect blocks "(IND):P" do not match: they are metadata.
_EXTENT_RE = re.compile(r"\((\d+)(?:-(\d+))?(\[u\])?\):(\d+)(?:-(\d+))?")
_SIZE_RE = re.compile(r"\bSize: (\d+)")
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._+-]")
# Dates of the synthetic records are drawn relative to this fixed day (no clock).
_RECORD_EPOCH = dt.date(2026, 1, 1)


@dataclass(frozen=True)
class VolumeImage:
    """An ext4 image file and what its regular files must contain.

    Attributes:
        path: the raw image file.
        size_bytes: length of the image (the filesystem spans all of it).
        block_size_fs: ext4 block size in bytes (always ``FS_BLOCK_SIZE_BYTES``, 4096).
        files: absolute path inside the filesystem (``"/lab/lab_results.sqlite"``) ->
            lowercase sha256 hex digest of the file's content.
    """

    path: Path
    size_bytes: int
    block_size_fs: int
    files: dict[str, str]


@dataclass(frozen=True)
class _Extent:
    """``length_blocks`` fs blocks of a file: logical block ``logical_block`` onwards lives
    at physical block ``physical_block`` onwards."""

    logical_block: int
    physical_block: int
    length_blocks: int


# ---------------------------------------------------------------------------------------
# running e2fsprogs


def _tool_env() -> dict[str, str]:
    env = dict(os.environ)
    path_dirs = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join([d for d in path_dirs if d] + [d for d in _TOOL_DIRS if d not in path_dirs])
    env["DEBUGFS_PAGER"] = "__none__"
    env["PAGER"] = "cat"
    env["LC_ALL"] = "C"
    return env


def _run_tool(argv: list[str], what: str, *, ok_codes: Iterable[int] = (0,)) -> subprocess.CompletedProcess[bytes]:
    """Run an e2fsprogs tool; return its result when the exit code is in ``ok_codes``.

    Raises:
        ToolError: the tool could not be started, timed out or exited with another code;
            evidence holds the command, exit code and stderr tail.
    """
    try:
        proc = subprocess.run(argv, capture_output=True, env=_tool_env(), timeout=_TOOL_TIMEOUT_S, check=False)
    except FileNotFoundError as err:
        raise ToolError(f"{what}: {argv[0]} not found (install e2fsprogs)", command=argv, stderr_tail=str(err)) from err
    except subprocess.TimeoutExpired as err:
        raise ToolError(f"{what}: {argv[0]} timed out after {_TOOL_TIMEOUT_S:.0f} s", command=argv,
                        stderr_tail=_tail(err.stderr or b"")) from err
    except OSError as err:
        raise ToolError(f"{what}: cannot run {argv[0]}: {err.strerror or err}", command=argv,
                        stderr_tail=str(err)) from err
    if proc.returncode not in tuple(ok_codes):
        raise ToolError(f"{what}: {argv[0]} exited with code {proc.returncode}", command=argv,
                        returncode=proc.returncode, stderr_tail=_tail(proc.stderr or proc.stdout))
    return proc


def _tail(data: bytes | str, limit: int = _STDERR_TAIL_CHARS) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text[-limit:]


def _debugfs_quote(fs_path: str) -> str:
    """Quote one argument for a debugfs command line (its parser knows double quotes only)."""
    if '"' in fs_path or "\n" in fs_path or "\r" in fs_path:
        raise UsageError(f"path not usable with debugfs: {fs_path!r}", path=fs_path)
    return f'"{fs_path}"'


def _debugfs(image_path: Path, commands: list[str], what: str, *, writable: bool = False) -> tuple[str, list[str]]:
    """Run many debugfs commands in one process (``debugfs [-w] -f cmdfile IMAGE``).

    Returns ``(stdout, problems)``: stdout echoes each command as ``"debugfs: CMD"`` followed
    by its output; ``problems`` are the stderr lines other than the version banner (debugfs
    exits 0 even when single commands fail, so callers decide what a problem means).

    Raises:
        ToolError: debugfs could not run or exited non-zero.
    """
    with tempfile.NamedTemporaryFile("w", prefix="debugfs-", suffix=".cmds", delete=False) as cmdfile:
        cmdfile.write("\n".join(commands) + "\n")
    try:
        argv = ["debugfs"] + (["-w"] if writable else []) + ["-f", cmdfile.name, str(image_path)]
        proc = _run_tool(argv, what)
    finally:
        os.unlink(cmdfile.name)
    problems = [line for line in proc.stderr.decode("utf-8", "replace").splitlines()
                if line.strip() and not _DEBUGFS_BANNER.match(line)]
    return proc.stdout.decode("utf-8", "replace"), problems


def _split_command_outputs(stdout: str) -> list[tuple[str, str]]:
    """Cut debugfs ``-f`` stdout into ``(command, its output)`` pairs, in command order."""
    sections: list[tuple[str, str]] = []
    command: str | None = None
    lines: list[str] = []
    for line in stdout.splitlines():
        if line.startswith("debugfs: "):
            if command is not None:
                sections.append((command, "\n".join(lines)))
            command, lines = line[len("debugfs: "):], []
        elif command is not None:
            lines.append(line)
    if command is not None:
        sections.append((command, "\n".join(lines)))
    return sections


# ---------------------------------------------------------------------------------------
# reading the image


def read_file_checksums(image_path: Path, fs_paths: Iterable[str], *, scratch_dir: Path | None = None) -> dict[str, str | None]:
    """sha256 of files as read back from the image by ``debugfs dump`` (one debugfs run).

    Args:
        image_path: the ext4 image.
        fs_paths: absolute paths inside the filesystem.
        scratch_dir: where dumped copies live briefly (default: a fresh temporary dir).

    Returns:
        ``{fs_path: sha256 hex}``, ``None`` for a path debugfs could not dump (missing, or
        the filesystem could not be opened at all).

    Raises:
        ToolError: debugfs could not run.
        NotFoundError: ``image_path`` does not exist.
    """
    if not image_path.is_file():
        raise NotFoundError(f"volume image {image_path} does not exist", path=str(image_path))
    paths = list(dict.fromkeys(fs_paths))
    if not paths:
        return {}
    with tempfile.TemporaryDirectory(prefix="volume-readback-", dir=scratch_dir) as tmp:
        outs = [Path(tmp) / f"{i:06d}" for i in range(len(paths))]
        commands = [f"dump {_debugfs_quote(p)} {_debugfs_quote(str(o))}" for p, o in zip(paths, outs)]
        _debugfs(image_path, commands, f"reading {len(paths)} files back from {image_path}")
        sums: dict[str, str | None] = {}
        for fs_path, out in zip(paths, outs):
            try:
                sums[fs_path] = _sha256_file(out)
            except FileNotFoundError:
                sums[fs_path] = None
            except OSError as err:
                raise from_os_error(err, "reading a dumped file", fs_path=fs_path) from err
            finally:
                out.unlink(missing_ok=True)
    return sums


def file_extents(image_path: Path, fs_paths: Iterable[str]) -> dict[str, tuple[int, list[tuple[int, int, int]]]]:
    """Size and data extents of files, from ``debugfs stat`` (one debugfs run).

    Returns:
        ``{fs_path: (size_bytes, [(logical_block, physical_block, length_blocks), ...])}``
        for every path debugfs found; extents are in logical order, hold data blocks only
        (extent-tree and indirect blocks are metadata and left out) and skip unwritten
        ("uninit") extents, which read as zeros.

    Raises:
        ToolError: debugfs could not run.
    """
    return {p: (size, [dataclasses.astuple(e) for e in extents])
            for p, (size, extents) in _file_extents(image_path, list(fs_paths)).items()}


def _file_extents(image_path: Path, fs_paths: list[str]) -> dict[str, tuple[int, list[_Extent]]]:
    if not fs_paths:
        return {}
    commands = [f"stat {_debugfs_quote(p)}" for p in fs_paths]
    stdout, _ = _debugfs(image_path, commands, f"listing extents of {len(fs_paths)} files in {image_path}")
    sections = _split_command_outputs(stdout)
    if len(sections) != len(fs_paths):
        raise ToolError(f"debugfs answered {len(sections)} of {len(fs_paths)} stat commands",
                        command=["debugfs", "-f", "stat ...", str(image_path)], stderr_tail=_tail(stdout))
    result: dict[str, tuple[int, list[_Extent]]] = {}
    for fs_path, (_, text) in zip(fs_paths, sections):
        size_match = _SIZE_RE.search(text)
        if size_match is None or "Type: regular" not in text:
            continue  # not found, or not a regular file
        size_bytes = int(size_match.group(1))
        marker = max(text.find("EXTENTS:"), text.find("BLOCKS:"))
        extents: list[_Extent] = []
        if marker >= 0:
            for m in _EXTENT_RE.finditer(text[marker:]):
                first, last, uninit, phys = int(m.group(1)), m.group(2), m.group(3), int(m.group(4))
                if uninit:
                    continue
                length = int(last) - first + 1 if last is not None else 1
                extents.append(_Extent(first, phys, length))
        extents.sort(key=lambda e: e.logical_block)
        result[fs_path] = (size_bytes, extents)
    return result


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_IO_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# synthetic hospital content

_FIRST_NAMES = ("Amara", "Bastian", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas",
                "Kaito", "Leila", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tamsin",
                "Ulla", "Vikram", "Wanda", "Xavier", "Yusuf", "Zofia")
_LAST_NAMES = ("Abernathy", "Brightwater", "Castellano", "Dunmore", "Eriksdottir", "Fairweather", "Galloway",
               "Hollinger", "Ivanova", "Jaramillo", "Kowalczyk", "Lindqvist", "Montague", "Nakamura",
               "Okonkwo", "Pemberton", "Quinlan", "Rasmussen", "Sorensen", "Thackeray", "Underhill",
               "Vasquez", "Whitlock", "Yamamoto", "Zielinski")
_DIAGNOSES = (("I10", "Essential (primary) hypertension"), ("E11.9", "Type 2 diabetes mellitus without complications"),
              ("J18.9", "Pneumonia, unspecified organism"), ("N39.0", "Urinary tract infection, site not specified"),
              ("I48.91", "Unspecified atrial fibrillation"), ("K35.80", "Unspecified acute appendicitis"),
              ("S72.001A", "Fracture of unspecified part of neck of right femur"), ("J44.1", "COPD with acute exacerbation"),
              ("I21.4", "Non-ST elevation myocardial infarction"), ("A41.9", "Sepsis, unspecified organism"),
              ("G40.909", "Epilepsy, unspecified, not intractable"), ("N17.9", "Acute kidney failure, unspecified"))
_MEDICATIONS = ("amlodipine 5 mg daily", "metformin 500 mg twice daily", "amoxicillin 500 mg three times daily",
                "apixaban 5 mg twice daily", "paracetamol 1 g as needed", "salbutamol inhaler as needed",
                "atorvastatin 20 mg at night", "levetiracetam 500 mg twice daily", "furosemide 40 mg mornings",
                "enoxaparin 40 mg subcutaneous daily", "ceftriaxone 2 g IV daily", "omeprazole 20 mg daily")
_WARDS = ("Cardiology 3B", "Internal Medicine 2A", "Orthopaedics 4C", "Respiratory 3A", "Surgery 5B", "Neurology 6A",
          "Nephrology 2C", "Intensive Care", "Emergency Department")
_CLINICIANS = ("Dr. A. Ferreira", "Dr. B. Okafor", "Dr. C. Lindgren", "Dr. D. Moreau", "Dr. E. Haddad",
               "Dr. F. Novak", "Nurse G. Petrov", "Nurse H. Tanaka")
_PHRASES = ("Patient alert and oriented.", "Vital signs stable overnight.", "Mobilising with assistance.",
            "Tolerating oral intake.", "Pain controlled on current regimen.", "Family updated by phone.",
            "Awaiting physiotherapy review.", "Wound clean and dry.", "No new complaints this morning.",
            "Observations within normal limits.", "Plan discussed with the patient, who agrees.",
            "Repeat bloods ordered for tomorrow.", "Discharge planning started.", "Fluid balance positive.")
_LAB_TESTS = (("HGB", "Haemoglobin", "g/L", 120.0, 170.0), ("WBC", "White cell count", "10^9/L", 4.0, 11.0),
              ("PLT", "Platelets", "10^9/L", 150.0, 400.0), ("NA", "Sodium", "mmol/L", 135.0, 145.0),
              ("K", "Potassium", "mmol/L", 3.5, 5.1), ("CREA", "Creatinine", "umol/L", 60.0, 110.0),
              ("CRP", "C-reactive protein", "mg/L", 0.0, 5.0), ("GLU", "Glucose (fasting)", "mmol/L", 3.9, 5.6),
              ("HBA1C", "HbA1c", "mmol/mol", 20.0, 42.0), ("TROP", "Troponin T (hs)", "ng/L", 0.0, 14.0),
              ("ALT", "Alanine aminotransferase", "U/L", 7.0, 56.0), ("INR", "INR", "ratio", 0.8, 1.2))
_MODALITIES = ("CT", "MR", "CR", "US")
_SYNTHETIC_NOTE = "SYNTHETIC TEST DATA - every person and record in this file is invented."


@dataclass(frozen=True)
class _Patient:
    mrn: str
    name: str
    birth_date: dt.date


def _draw_patient(rng: random.Random, number: int) -> _Patient:
    return _Patient(mrn=f"SYN{number:07d}",
                    name=f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}",
                    birth_date=_RECORD_EPOCH - dt.timedelta(days=rng.randrange(18 * 365, 95 * 365)))


def _day(rng: random.Random, within_days: int = 730) -> dt.date:
    return _RECORD_EPOCH - dt.timedelta(days=rng.randrange(within_days))


def _patient_note(rng: random.Random, patient: _Patient) -> str:
    code, diagnosis = rng.choice(_DIAGNOSES)
    admitted = _day(rng)
    lines = [f"# Patient record {patient.mrn}", "", f"> {_SYNTHETIC_NOTE}", "",
             f"- **Name:** {patient.name}", f"- **Date of birth:** {patient.birth_date.isoformat()}",
             f"- **Ward:** {rng.choice(_WARDS)}", f"- **Admitted:** {admitted.isoformat()}",
             f"- **Primary diagnosis:** {code} {diagnosis}", "", "## Medication", ""]
    lines += [f"- {m}" for m in rng.sample(_MEDICATIONS, rng.randint(1, 4))]
    lines += ["", "## Progress notes", ""]
    for day in range(rng.randint(3, 12)):
        when = admitted + dt.timedelta(days=day)
        text = " ".join(rng.choice(_PHRASES) for _ in range(rng.randint(2, 6)))
        lines.append(f"**{when.isoformat()} {rng.randrange(6, 22):02d}:{rng.randrange(60):02d}** "
                     f"({rng.choice(_CLINICIANS)}): {text}")
        lines.append("")
    return "\n".join(lines)


def _admissions_csv(rng: random.Random, patients: list[_Patient], rows: int) -> str:
    out = [f"# {_SYNTHETIC_NOTE}", "admission_id,mrn,patient_name,admitted,discharged,ward,icd10,diagnosis"]
    for _ in range(rows):
        p = rng.choice(patients)
        code, diagnosis = rng.choice(_DIAGNOSES)
        admitted = _day(rng)
        discharged = admitted + dt.timedelta(days=rng.randint(0, 21))
        out.append(f"A{rng.randrange(10**8):08d},{p.mrn},{p.name},{admitted.isoformat()},{discharged.isoformat()},"
                   f"{rng.choice(_WARDS)},{code},\"{diagnosis}\"")
    return "\n".join(out) + "\n"


def _discharge_letter(rng: random.Random, patient: _Patient) -> str:
    code, diagnosis = rng.choice(_DIAGNOSES)
    body = " ".join(rng.choice(_PHRASES) for _ in range(rng.randint(6, 20)))
    return (f"{_SYNTHETIC_NOTE}\n\nDISCHARGE SUMMARY\n\nPatient: {patient.name} ({patient.mrn})\n"
            f"Date of birth: {patient.birth_date.isoformat()}\nDischarged: {_day(rng).isoformat()}\n"
            f"Diagnosis: {code} {diagnosis}\n\nCourse: {body}\n\n"
            f"Medication on discharge: {'; '.join(rng.sample(_MEDICATIONS, 2))}\n\n"
            f"Signed: {rng.choice(_CLINICIANS)}\n")


def _lab_rows(rng: random.Random, patient_ids: int, count: int, first_id: int) -> list[tuple]:
    rows = []
    for i in range(count):
        test_code, _, unit, low, high = rng.choice(_LAB_TESTS)
        span = high - low
        value = round(rng.gauss(low + span / 2, span / 2.5), 2)
        flag = "L" if value < low else ("H" if value > high else "")
        collected = dt.datetime.combine(_day(rng), dt.time(rng.randrange(24), rng.randrange(60)))
        rows.append((first_id + i, rng.randrange(1, patient_ids + 1), test_code, collected.isoformat(),
                     value, unit, flag, rng.choice(_CLINICIANS) if flag else None))
    return rows


def _build_lab_database(path: Path, rng: random.Random, patients: list[_Patient], target_bytes: int) -> None:
    """A real SQLite file of lab results, grown until it reaches about ``target_bytes``."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(
            "CREATE TABLE notice (text TEXT NOT NULL);"
            "CREATE TABLE patients (id INTEGER PRIMARY KEY, mrn TEXT UNIQUE NOT NULL, name TEXT NOT NULL,"
            " birth_date TEXT NOT NULL);"
            "CREATE TABLE lab_tests (code TEXT PRIMARY KEY, name TEXT NOT NULL, unit TEXT NOT NULL,"
            " ref_low REAL NOT NULL, ref_high REAL NOT NULL);"
            "CREATE TABLE lab_results (id INTEGER PRIMARY KEY, patient_id INTEGER NOT NULL REFERENCES patients(id),"
            " test_code TEXT NOT NULL REFERENCES lab_tests(code), collected_at TEXT NOT NULL, value REAL NOT NULL,"
            " unit TEXT NOT NULL, flag TEXT NOT NULL, reviewed_by TEXT);"
            "CREATE INDEX lab_results_by_patient ON lab_results(patient_id, collected_at);")
        conn.execute("INSERT INTO notice VALUES (?)", (_SYNTHETIC_NOTE,))
        conn.executemany("INSERT INTO patients VALUES (?, ?, ?, ?)",
                         [(i + 1, p.mrn, p.name, p.birth_date.isoformat()) for i, p in enumerate(patients)])
        conn.executemany("INSERT INTO lab_tests VALUES (?, ?, ?, ?, ?)", _LAB_TESTS)
        next_id = 1
        batch = 5000
        while True:
            conn.executemany("INSERT INTO lab_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             _lab_rows(rng, len(patients), batch, next_id))
            next_id += batch
            conn.commit()
            page_count = conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            if page_count * page_size >= target_bytes:
                break
    finally:
        conn.close()


def _dicom_like(rng: random.Random, patient: _Patient, modality: str, size_bytes: int) -> bytes:
    """Incompressible bytes shaped like a DICOM Part 10 file: a 128-byte zero preamble,
    ``DICM`` at offset 128, a few explicit-VR little-endian elements, then random "pixel
    data" (layout after DICOM PS3.10 §7.1)."""

    def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b" "
        return struct.pack("<HH2sH", group, elem, vr, len(value)) + value

    header = bytearray(b"\0" * 128 + b"DICM")
    header += element(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1")
    header += element(0x0008, 0x0060, b"CS", modality.encode())
    header += element(0x0010, 0x0010, b"PN", patient.name.replace(" ", "^").encode())
    header += element(0x0010, 0x0020, b"LO", patient.mrn.encode())
    header += element(0x0010, 0x4000, b"LT", b"SYNTHETIC TEST DATA")
    pixels_len = max(0, size_bytes - len(header) - 12)
    header += struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, pixels_len)
    return bytes(header) + rng.randbytes(pixels_len)


def _machine_files(rng: random.Random, budget_bytes: int) -> list[tuple[Path, str]]:
    """Real files of this machine to copy: ``[(source, fs relative path)]`` up to ``budget_bytes``.
    Unreadable files, symlinks, empty and large files are skipped."""
    candidates: list[tuple[Path, str]] = []
    for top, prefix, max_bytes in ((Path("/usr/share/common-licenses"), "reference/licenses", 256 * 1024),
                                   (Path("/usr/share/doc"), "reference/doc", 1024 * 1024)):
        if not top.is_dir():
            continue
        for root, dirs, names in os.walk(top, onerror=None):
            dirs.sort()
            for name in sorted(names):
                src = Path(root) / name
                try:
                    st = src.lstat()
                except OSError:
                    continue
                if not src.is_file() or src.is_symlink() or not 0 < st.st_size <= max_bytes:
                    continue
                parts = [_SAFE_NAME_RE.sub("_", part) for part in src.relative_to(top).parts]
                candidates.append((src, "/".join([prefix, *parts])))
    rng.shuffle(candidates)
    chosen: list[tuple[Path, str]] = []
    used = 0
    for src, rel in candidates:
        if used >= budget_bytes:
            break
        try:
            size = src.stat().st_size
        except OSError:
            continue
        if used + size > budget_bytes:
            continue
        chosen.append((src, rel))
        used += size
    return chosen


class _TreeWriter:
    """Writes files under ``root`` and remembers ``{"/fs/path": sha256}`` and bytes written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, str] = {}
        self.total_bytes = 0

    def write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files["/" + rel] = hashlib.sha256(data).hexdigest()
        self.total_bytes += len(data)

    def adopt(self, rel: str) -> None:
        """Record a file already written at ``root/rel`` by someone else."""
        path = self.root / rel
        self.files["/" + rel] = _sha256_file(path)
        self.total_bytes += path.stat().st_size


def _generate_tree(tree: Path, rng: random.Random, data_bytes: int) -> dict[str, str]:
    """Fill ``tree`` with about ``data_bytes`` of hospital-like files; return ``{fs path: sha256}``."""
    out = _TreeWriter(tree)
    n_patients = max(20, min(500, data_bytes // (256 * 1024)))
    patients = [_draw_patient(rng, i + 1) for i in range(n_patients)]
    for p in patients:
        out.write(f"records/patients/{p.mrn}.md", _patient_note(rng, p).encode())
    for p in rng.sample(patients, max(5, n_patients // 3)):
        out.write(f"records/discharge/{p.mrn}-discharge.txt", _discharge_letter(rng, p).encode())
    for month in range(1, 13):
        out.write(f"records/admissions/2025-{month:02d}.csv",
                  _admissions_csv(rng, patients, rng.randint(50, 300)).encode())
    staff = ["staff_id,name,role,ward"] + [
        f"S{i:05d},{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)},{rng.choice(('nurse', 'physician', 'porter', 'pharmacist'))},"
        f"{rng.choice(_WARDS)}" for i in range(200)]
    out.write("admin/staff_roster.csv", ("\n".join(staff) + "\n").encode())

    db_rel = "lab/lab_results.sqlite"
    (tree / "lab").mkdir(parents=True, exist_ok=True)
    _build_lab_database(tree / db_rel, rng, patients, max(2**20, min(8 * 2**20, data_bytes // 25)))
    out.adopt(db_rel)

    for src, rel in _machine_files(rng, min(12 * 2**20, data_bytes // 12)):
        try:
            data = src.read_bytes()
        except OSError:
            continue  # unreadable here: skip, the tree only needs variety
        if "/" + rel not in out.files:
            out.write(rel, data)

    max_image_bytes = max(64 * 1024, min(4 * 2**20, data_bytes // 20))
    study = 0
    while out.total_bytes < data_bytes:
        size = min(rng.randint(max_image_bytes // 4, max_image_bytes), data_bytes - out.total_bytes)
        size = max(size, 1024)
        patient = rng.choice(patients)
        modality = rng.choice(_MODALITIES)
        study += 1
        out.write(f"imaging/{modality}/{patient.mrn}-{study:05d}.dcm", _dicom_like(rng, patient, modality, size))
    return out.files


# ---------------------------------------------------------------------------------------
# public operations


def build_volume(workdir: Path, image_path: Path, *, size_bytes: int = 256 * 2**20, rng: random.Random) -> VolumeImage:
    """Generate a hospital-like directory tree and build an ext4 image of it.

    The tree (``workdir/tree``, replaced if present) holds synthetic patient notes
    (Markdown), discharge letters (text), admission CSVs, a real SQLite database of lab
    results (1–8 MiB), DICOM-like image files (random bytes) and real files copied from
    ``/usr/share``; in all about ``DATA_FILL_FRACTION`` (50 %) of ``size_bytes``. The
    image is then made with ``mke2fs -q -t ext4 -b 4096 -d TREE -F IMAGE BLOCKS`` and every
    file is read back with debugfs and compared with the tree.

    Args:
        workdir: scratch directory for the source tree (created if missing).
        image_path: the image file to create (replaced if present).
        size_bytes: image length; a multiple of 4096, at least ``MIN_VOLUME_SIZE_BYTES``.
        rng: source of all generated content.

    Returns:
        the :class:`VolumeImage` with the sha256 of every regular file.

    Raises:
        UsageError: bad ``size_bytes``.
        ToolError: mke2fs or debugfs failed.
        IntegrityError: a file read back from the image differs from the source tree.
    """
    if size_bytes < MIN_VOLUME_SIZE_BYTES or size_bytes % FS_BLOCK_SIZE_BYTES:
        raise UsageError(f"volume size must be a multiple of {FS_BLOCK_SIZE_BYTES} bytes and at least "
                         f"{MIN_VOLUME_SIZE_BYTES} bytes", size_bytes=size_bytes)
    tree = workdir / "tree"
    try:
        if tree.exists():
            shutil.rmtree(tree)
        tree.mkdir(parents=True)
        files = _generate_tree(tree, rng, int(size_bytes * DATA_FILL_FRACTION))
        image_path.parent.mkdir(parents=True, exist_ok=True)
        image_path.unlink(missing_ok=True)
        with open(image_path, "wb") as f:
            f.truncate(size_bytes)
    except OSError as err:
        raise from_os_error(err, "writing the demo volume tree", workdir=str(workdir)) from err

    fs_uuid = uuid.UUID(int=rng.getrandbits(128), version=4)
    hash_seed = uuid.UUID(int=rng.getrandbits(128), version=4)
    _run_tool(["mke2fs", "-q", "-t", "ext4", "-b", str(FS_BLOCK_SIZE_BYTES), "-U", str(fs_uuid),
               "-E", f"hash_seed={hash_seed},nodiscard", "-d", str(tree), "-F", str(image_path),
               str(size_bytes // FS_BLOCK_SIZE_BYTES)],
              f"building ext4 image {image_path}")
    image = VolumeImage(path=image_path, size_bytes=size_bytes, block_size_fs=FS_BLOCK_SIZE_BYTES, files=files)
    _check_read_back(image, files, "building the volume")
    return image


def _check_read_back(image: VolumeImage, expected: dict[str, str], what: str) -> None:
    got = read_file_checksums(image.path, expected)
    bad = sorted(p for p, digest in expected.items() if got.get(p) != digest)
    if bad:
        raise IntegrityError(f"{what}: {len(bad)} files read back from {image.path} differ from what was written",
                             image=str(image.path), paths=bad[:20])


def ordinary_changes(image: VolumeImage, *, rng: random.Random, n_files: int = 5) -> VolumeImage:
    """A normal working day on the volume, written with ``debugfs -w`` (no mounting).

    Adds ``n_files`` new records (Markdown patient notes and admission CSVs under
    ``/records``) and rewrites one database: the first ``*.sqlite``/``*.db`` file is dumped,
    changed with sqlite3 (new lab results, some reviewed), and replaced (``rm`` + ``write``).
    Every written file is read back and compared.

    Args:
        image: the volume as last known (its ``files`` must match the image).
        rng: source of the new content.
        n_files: number of new record files (>= 0).

    Returns:
        a new :class:`VolumeImage` whose ``files`` include the added and rewritten files.

    Raises:
        UsageError: negative ``n_files``.
        ToolError: debugfs failed or reported a problem while writing.
        IntegrityError: a written file reads back differently.
    """
    if n_files < 0:
        raise UsageError("n_files must be >= 0", n_files=n_files)
    known_dirs = {str(parent) for p in image.files for parent in PurePosixPath(p).parents}
    commands: list[str] = []
    written: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="volume-changes-") as tmp_name:
        tmp = Path(tmp_name)

        def stage(fs_path: str, data: bytes | None = None, local: Path | None = None) -> None:
            if local is None:
                local = tmp / f"new-{len(written):04d}"
                local.write_bytes(data or b"")
            parent = PurePosixPath(fs_path).parent
            for d in sorted((str(a) for a in [parent, *parent.parents]), key=len):
                if d not in known_dirs:
                    commands.append(f"mkdir {_debugfs_quote(d)}")
                    known_dirs.add(d)
            if fs_path in image.files:
                commands.append(f"rm {_debugfs_quote(fs_path)}")
            commands.append(f"cd {_debugfs_quote(str(parent))}")
            # debugfs `write` links the new inode under the name given in the current
            # directory, so it gets the base name, never a path.
            commands.append(f"write {_debugfs_quote(str(local))} {_debugfs_quote(PurePosixPath(fs_path).name)}")
            written[fs_path] = _sha256_file(local)

        day = _RECORD_EPOCH + dt.timedelta(days=rng.randrange(1, 365))
        for i in range(n_files):
            patient = _draw_patient(rng, 9_000_000 + rng.randrange(900_000))
            if i % 2 == 0:
                fs_path = f"/records/patients/{patient.mrn}-{day.isoformat()}-{i}.md"
                data = _patient_note(rng, patient).encode()
            else:
                fs_path = f"/records/admissions/{day.isoformat()}-intake-{i}.csv"
                data = _admissions_csv(rng, [patient], rng.randint(5, 40)).encode()
            if fs_path in image.files or fs_path in written:
                fs_path = fs_path.replace(f"-{i}.", f"-{i}-{rng.randrange(10**6)}.")
            stage(fs_path, data)

        db_paths = sorted(p for p in image.files if p.endswith((".sqlite", ".db")))
        if db_paths:
            db_fs_path = db_paths[0]
            local_db = tmp / "db-copy"
            _debugfs(image.path, [f"dump {_debugfs_quote(db_fs_path)} {_debugfs_quote(str(local_db))}"],
                     f"reading {db_fs_path} from {image.path}")
            if not local_db.is_file():
                raise NotFoundError(f"database {db_fs_path} is not in {image.path}", path=db_fs_path)
            _working_day_on_database(local_db, rng)
            stage(db_fs_path, local=local_db)

        if commands:
            _, problems = _debugfs(image.path, commands, f"writing {len(written)} files into {image.path}",
                                   writable=True)
            if problems:
                raise ToolError(f"debugfs reported problems while writing into {image.path}",
                                command=["debugfs", "-w", "-f", "...", str(image.path)],
                                stderr_tail=_tail("\n".join(problems)))
    updated = VolumeImage(path=image.path, size_bytes=image.size_bytes, block_size_fs=image.block_size_fs,
                          files={**image.files, **written})
    _check_read_back(updated, written, "writing the day's changes")
    return updated


def _working_day_on_database(db_path: Path, rng: random.Random) -> None:
    """New lab results arrive and some flagged ones get reviewed (a real sqlite3 transaction)."""
    conn = sqlite3.connect(db_path)
    try:
        try:
            patient_count = conn.execute("SELECT count(*) FROM patients").fetchone()[0]
            next_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM lab_results").fetchone()[0]
            with conn:
                conn.executemany("INSERT INTO lab_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 _lab_rows(rng, max(1, patient_count), rng.randint(200, 800), next_id))
                conn.execute("UPDATE lab_results SET reviewed_by = ? WHERE id IN "
                             "(SELECT id FROM lab_results WHERE flag != '' AND reviewed_by IS NULL LIMIT 50)",
                             (rng.choice(_CLINICIANS),))
        except sqlite3.DatabaseError:
            # Not our lab schema: still a working day, keep a change log table instead.
            with conn:
                conn.execute("CREATE TABLE IF NOT EXISTS change_log (at TEXT, note TEXT)")
                conn.execute("INSERT INTO change_log VALUES (?, ?)",
                             (_day(rng).isoformat(), rng.choice(_PHRASES)))
    finally:
        conn.close()


def ransomware_attack(image: VolumeImage, *, rng: random.Random, fraction: float = 1.0) -> list[str]:
    """Encrypt, in place inside the image, the contents of ``fraction`` of the regular files.

    Each chosen file's data extents (from ``debugfs stat``; extent-tree blocks excluded) are
    read from the image file, encrypted with AES-256-CTR under a per-file random key and
    nonce that are then dropped, and written back at the same offsets, then fsync'ed. Only
    data blocks change: the metadata stays consistent (``e2fsck -fn`` passes) while the
    contents become ciphertext. Files with no data blocks (empty, all holes) cannot be
    encrypted and are never chosen.

    Args:
        image: the volume; ``files`` says which files exist.
        rng: picks the files, keys and nonces.
        fraction: share of the files with data to encrypt, in [0, 1]; any positive value
            attacks at least one file.

    Returns:
        the attacked fs paths, sorted.

    Raises:
        UsageError: ``fraction`` outside [0, 1].
        ToolError: debugfs failed.
        NotFoundError / InternalError: the image file could not be read or written.
    """
    if not 0.0 <= fraction <= 1.0:
        raise UsageError("fraction must be within [0, 1]", fraction=fraction)
    layout = _file_extents(image.path, sorted(image.files))
    candidates = sorted(p for p, (_, extents) in layout.items() if extents)
    count = round(fraction * len(candidates))
    if fraction > 0 and candidates:
        count = max(1, count)
    chosen = sorted(rng.sample(candidates, count))
    block = image.block_size_fs
    try:
        fd = os.open(image.path, os.O_RDWR)
    except OSError as err:
        raise from_os_error(err, "opening the volume image to attack it", image=str(image.path)) from err
    try:
        for fs_path in chosen:
            key, nonce = rng.randbytes(32), rng.randbytes(16)
            encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
            for extent in layout[fs_path][1]:
                offset = extent.physical_block * block
                end = offset + extent.length_blocks * block
                while offset < end:
                    length = min(_IO_CHUNK_BYTES, end - offset)
                    plain = os.pread(fd, length, offset)
                    if len(plain) != length:
                        raise IntegrityError(f"extent of {fs_path} runs past the end of {image.path}",
                                             image=str(image.path), path=fs_path, offset=offset)
                    os.pwrite(fd, encryptor.update(plain), offset)
                    offset += length
            del key, nonce, encryptor  # the key is thrown away: only a backup brings the data back
        os.fsync(fd)
    except OSError as err:
        raise from_os_error(err, "encrypting files inside the volume image", image=str(image.path)) from err
    finally:
        os.close(fd)
    return chosen


def verify_volume(image_path: Path, expected: dict[str, str]) -> dict:
    """Check an image: filesystem consistency and the content of every expected file.

    Runs ``e2fsck -fn`` (read-only; exit code 0 = clean) and reads every file in
    ``expected`` back with debugfs.

    Args:
        image_path: the ext4 image (e.g. a restored copy).
        expected: fs path -> sha256 hex, e.g. ``VolumeImage.files``.

    Returns:
        ``{"fsck_ok": bool, "fsck_returncode": int, "fsck_output": str (last lines),
        "files_checked": int, "mismatched": [paths], "missing": [paths]}``; paths sorted.

    Raises:
        NotFoundError: the image does not exist.
        ToolError: e2fsck or debugfs could not run (e2fsck usage error, exit code 16/32).
    """
    if not image_path.is_file():
        raise NotFoundError(f"volume image {image_path} does not exist", path=str(image_path))
    # e2fsck exit codes (e2fsck(8)): 0 clean, 1/2 errors corrected, 4 errors left
    # uncorrected, 8 operational error, 16 usage error, 32 cancelled by the user.
    proc = _run_tool(["e2fsck", "-fn", str(image_path)], f"checking {image_path}", ok_codes=(0, 1, 2, 4, 8, 12))
    output = (proc.stderr + proc.stdout).decode("utf-8", "replace")
    sums = read_file_checksums(image_path, expected)
    missing = sorted(p for p in expected if sums.get(p) is None)
    mismatched = sorted(p for p, digest in expected.items() if sums.get(p) is not None and sums[p] != digest)
    return {
        "fsck_ok": proc.returncode == 0,
        "fsck_returncode": proc.returncode,
        "fsck_output": _tail("\n".join(output.strip().splitlines()[-15:])),
        "files_checked": len(expected),
        "mismatched": mismatched,
        "missing": missing,
    }
