"""replicad.storage.audit: the hash-chained admin audit file — appends, tamper detection, torn tails."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from replicad.storage.audit import GENESIS_HASH, AuditLog, canonical, make_record, record_hash, redact, verify_chain
from replicad.core.errors import IntegrityError


def _fields(i: int) -> dict:
    return {"who": "ada", "role": "admin", "remote": "127.0.0.1", "method": "POST",
            "path": f"/v1/volumes/ehr/snapshot?i={i}", "body": {"n": i}, "outcome": "ok", "status": 200,
            "error": None}


def _write(path: Path, n: int) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.append(_fields(i), at=f"2026-01-01T00:00:{i:02d}.000000Z")
    return log


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_records_chain_from_genesis(tmp_path: Path) -> None:
    path = tmp_path / "admin-audit.jsonl"
    log = _write(path, 5)
    recs = [json.loads(line) for line in _lines(path)]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0]["prev"] == GENESIS_HASH
    assert all(b["prev"] == a["hash"] for a, b in zip(recs, recs[1:]))
    assert all(r["hash"] == record_hash(r["prev"], r) for r in recs)
    assert log.head == (5, recs[-1]["hash"])
    assert verify_chain(path) == (True, 5, None)
    assert path.stat().st_mode & 0o077 == 0


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    _write(path, 3)
    log = AuditLog(path)
    assert log.head[0] == 3
    log.append(_fields(9))
    assert verify_chain(path) == (True, 4, None)


def test_missing_and_empty_files_are_valid_empty_chains(tmp_path: Path) -> None:
    assert verify_chain(tmp_path / "none.jsonl") == (True, 0, None)
    AuditLog(tmp_path / "empty.jsonl")
    assert verify_chain(tmp_path / "empty.jsonl") == (True, 0, None)


@pytest.mark.parametrize("victim", [0, 3, 6])
def test_tampering_one_record_is_detected_at_that_record(tmp_path: Path, victim: int) -> None:
    path = tmp_path / "a.jsonl"
    _write(path, 7)
    lines = _lines(path)
    rec = json.loads(lines[victim])
    rec["who"] = "mallory"
    lines[victim] = canonical(rec) + b"\n"
    path.write_bytes(b"".join(lines))
    assert verify_chain(path) == (False, 7, victim + 1)


def test_tampering_with_a_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    _write(path, 5)
    lines = _lines(path)
    rec = json.loads(lines[1])
    rec["status"] = 403
    rec["hash"] = record_hash(rec["prev"], rec)
    lines[1] = canonical(rec) + b"\n"
    path.write_bytes(b"".join(lines))
    assert verify_chain(path) == (False, 5, 3)


@pytest.mark.parametrize("victim", [0, 2, 4])
def test_deleting_one_record_is_detected(tmp_path: Path, victim: int) -> None:
    path = tmp_path / "a.jsonl"
    _write(path, 6)
    lines = _lines(path)
    del lines[victim]
    path.write_bytes(b"".join(lines))
    assert verify_chain(path) == (False, 5, victim + 1)


def test_reordering_two_records_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    _write(path, 6)
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"".join(lines))
    assert verify_chain(path) == (False, 6, 3)


def test_garbage_and_extra_keys_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    _write(path, 3)
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:1] + [b"not json\n"] + lines[2:]))
    assert verify_chain(path) == (False, 3, 2)
    rec = json.loads(lines[0])
    rec["extra"] = 1
    path.write_bytes(canonical(rec) + b"\n" + b"".join(lines[1:]))
    assert verify_chain(path) == (False, 3, 1)


def test_torn_tail_fails_verify_and_is_moved_aside_on_open(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    _write(path, 3)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"seq":4,"at":"2026')
    assert verify_chain(path) == (False, 4, 4)
    log = AuditLog(path)
    assert path.read_bytes() == whole and log.head[0] == 3
    assert (tmp_path / "a.jsonl.torn").read_bytes() == b'{"seq":4,"at":"2026\n'
    log.append(_fields(4))
    assert verify_chain(path) == (True, 4, None)


def test_unparseable_last_line_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"garbage\n")
    with pytest.raises(IntegrityError):
        AuditLog(path)


def test_secrets_are_redacted_and_big_bodies_truncated() -> None:
    body = {"target": "/x", "token": "t0p", "nested": {"Password": "p", "api_key": "k"}, "list": [{"secret": 1}]}
    assert redact(body) == {"target": "/x", "token": "***", "nested": {"Password": "***", "api_key": "***"},
                            "list": [{"secret": "***"}]}
    rec = make_record(1, GENESIS_HASH, "t", {"body": {"seqs": list(range(5000))}})
    assert rec["body"]["truncated"] is True and len(rec["body"]["json_prefix"]) <= 4096


def test_concurrent_appends_from_threads_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    log = AuditLog(path)
    threads = [threading.Thread(target=lambda k=k: [log.append(_fields(k * 100 + i)) for i in range(10)])
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify_chain(path) == (True, 40, None)


def test_cli_audit_verify_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    _write(path, 4)
    run = [sys.executable, "-m", "replicad", "audit", "verify", str(path)]
    ok = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"file": str(path), "ok": True, "n_records": 4,
                                                            "first_bad_seq": None}
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:1] + lines[2:]))
    bad = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 5 and "broken at record 2" in bad.stderr and "Traceback" not in bad.stderr
