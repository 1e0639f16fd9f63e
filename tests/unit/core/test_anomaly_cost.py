"""Judging cost per changed block without changing any answer.

* :func:`anomaly.ransom_note_matches` runs the strong indicators first and skips a built-in
  pattern whose required literal (or run of base58 characters) is nowhere in ASCII text: checked
  against the matching as it was before (every pattern over every text, kept below as the
  reference) on real notes written over text, in new files, in UTF-16 and with Unicode spaces,
  benign text, logs, database pages, random bytes and random variants of them.
* :func:`anomaly.compare_block` (shared counts, sort instead of hashing, no per-byte-value
  scans, an early exit in :func:`anomaly.dir_names`): every field of its finding on a corpus of
  old/new 64 KiB pairs (text edited in place and rewritten, log appends, database pages,
  compressed over compressed, the RPO benchmark's writer, and ciphertext: whole, intermittent,
  islands glued to spaces, decimal bytes, octal; each pair also reversed) equals the finding
  recorded before the change (``anomaly_cost_findings.json``, written by the code of b44215e;
  ``python3 -m tests.unit.core.test_anomaly_cost --record`` rewrites it with the current code
  when a verdict is meant to change).

Real bytes, no mocks."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import re
import sys
import zlib
from pathlib import Path

import pytest

from replicad.core import anomaly
from replicad.core.anomaly import (POLICY_DEFAULTS, RANSOM_NOTE_STRONG_DEFAULT, RANSOM_NOTES_DEFAULT, compare_block,
                                   compile_notes, note_texts, ransom_note_matches)
from tests.unit.core.test_anomaly_ransom_note import BENIGN, ENCODED, NOTES
from tests.unit.core.test_anomaly_relative import db_page_block, text


def reference_matches(new: bytes | None, old: bytes | None, patterns, minimum: int = 2, strong=None) -> tuple:
    """:func:`anomaly.ransom_note_matches` as it was before the cost work (every pattern run)."""
    strong = list(RANSOM_NOTE_STRONG_DEFAULT if strong is None else strong)
    every = list(patterns) + [p for p in strong if p not in patterns]
    if not new or len(every) < minimum or not strong:
        return ()
    texts = note_texts(new)
    if not texts:
        return ()
    old_texts = note_texts(old) if old else []
    found = []
    for pattern, finditer in zip(every, compile_notes(every)):
        if finditer is None:
            continue
        hits: set[str] = set()
        for h in itertools.islice((h for t in texts for h in finditer(t)), anomaly.NOTE_MATCHES_MAX):
            hits.add(h.lower())
            if len(hits) >= anomaly.NOTE_HITS_MAX:
                break
        if not hits:
            continue
        for h in itertools.islice((h for part in old_texts for h in finditer(part)), anomaly.NOTE_MATCHES_MAX):
            hits.discard(h.lower())
            if not hits:
                break
        if hits:
            found.append(pattern)
    if len(found) < max(1, minimum) or not set(found) & set(strong):
        return ()
    return tuple(found)


SIZE = 16384  # a quarter block: the same sub-block code paths at a quarter of the reference's cost
NOTE_BYTES = list(NOTES.values()) + [v for v in ENCODED.values() if isinstance(v, bytes)]
INDICATORS = [b"lockbitapt2d73krlbewgv27tquljgxr33xbwwsp6rkyieto7u4ncead.onion", b"HOW_TO_DECRYPT.txt",
              b"README_TO_DECRYPT", b"RESTORE_FILES.html", b"how_to_recover.hta", b"help-decrypt.rtf",
              b"HELP_RESTORE_FILES", b"HOW-TO-UNLOCK", b"bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
              b"bc1pxwww0ct9ue7e8tdnlmug5m2tamfn7q06sahstg39ys4c9f3340qqxrdu9k",
              b"1BoatSLRHtKNngkdXEeobR76b53LETtpyT", b"1AGNa6bVxYzZ2k3m4n5p6q7r8s",
              b"44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A",
              b"pay the ransom within 72 hours", b"your files have been encrypted", b"Bitcoin"]
"""Single strong and weak indicators (each alternative of each skipped pattern's literals, base58
runs at both bounds), written alone into text so the skip is tested one literal at a time."""
POLICIES = [(list(RANSOM_NOTES_DEFAULT), 2, None), (list(RANSOM_NOTES_DEFAULT), 1, None),
            (list(RANSOM_NOTES_DEFAULT[:3]), 1, list(RANSOM_NOTE_STRONG_DEFAULT[3:])),
            ([], 1, list(RANSOM_NOTE_STRONG_DEFAULT)), (list(RANSOM_NOTE_STRONG_DEFAULT), 2, None),
            ([r"\bbitcoin\b", r"encrypted"], 2, [r"\bbitcoin\b", r"\.onion"])]


def _variant(r: random.Random) -> tuple[bytes, bytes | None]:
    """A random (new, old) pair: text, a database page or random bytes, with notes or single
    indicators (some in capitals, some already in the old version) written in at random places."""
    old = r.choice([lambda: text(SIZE, r.randrange(1 << 30)), lambda: db_page_block(r.randrange(1 << 30))[:SIZE],
                    lambda: r.randbytes(SIZE), lambda: bytes(SIZE)])()
    new = bytearray(old)
    for _ in range(r.randrange(4)):
        piece = r.choice(NOTE_BYTES + INDICATORS * 2)
        piece = b" " + (piece.upper() if r.random() < 0.2 else piece) + b"\n"
        at = r.randrange(SIZE - len(piece))
        new[at:at + len(piece)] = piece
        if r.random() < 0.2:
            old = old[:at] + piece + old[at + len(piece):]
    return bytes(new), (None if r.random() < 0.15 else old)


def test_the_ransom_note_answer_is_the_reference_answer() -> None:
    """Every pair of the notes and benign blocks, and 150 random variants, under six policies
    (the defaults, ransom_note_min 1, subsets, custom strong patterns): the same tuple of patterns
    as the reference, and notes are found (the comparison is not of empties only)."""
    cases = [(n, None) for n in NOTE_BYTES] + [(n, text(SIZE, 3)) for n in NOTE_BYTES]
    cases += [(b, None) for b in BENIGN.values() if isinstance(b, bytes)]
    r = random.Random(20261207)
    cases += [_variant(r) for _ in range(150)]
    found = 0
    for new, old in cases:
        for patterns, minimum, strong in POLICIES:
            want = reference_matches(new, old, patterns, minimum, strong)
            assert ransom_note_matches(new, old, patterns, minimum, strong) == want, (new[:80], patterns, minimum)
            found += bool(want)
    assert found >= 200


@pytest.mark.parametrize("pattern", list(anomaly._NOTE_LITERALS) + list(anomaly._NOTE_BASE58_RUNS))
def test_every_match_of_a_skipped_pattern_holds_what_the_skip_looks_for(pattern: str) -> None:
    """The skip is exact only while each built-in pattern's matches contain one of its literals (or
    are a long enough base58 run): checked on every match over the notes and indicators, so that
    an edited pattern fails here instead of going unseen."""
    assert pattern in RANSOM_NOTE_STRONG_DEFAULT and pattern in POLICIES_STRONG
    rx = re.compile(pattern.encode(), re.IGNORECASE)
    hay = b"\n".join(NOTE_BYTES + INDICATORS + [i.upper() for i in INDICATORS] + [i.lower() for i in INDICATORS])
    matches = [m.group(0).decode() for m in rx.finditer(hay)]
    assert matches
    for m in matches:
        if pattern in anomaly._NOTE_LITERALS:
            folded, literals = anomaly._NOTE_LITERALS[pattern]
            assert any(x in (m.lower() if folded else m) for x in literals), m
        else:
            run = anomaly._NOTE_BASE58_RUNS[pattern]
            assert b"a" * run in m.encode().translate(anomaly._BASE58_MARK), m


POLICIES_STRONG = set(POLICY_DEFAULTS["ransom_note_strong"])


# ------------------------------------------------------------------ compare_block's findings


BLOCK = 65536
WORDS = ["patient", "record", "blood", "pressure", "the", "and", "of", "lab", "result", "normal", "value", "dose",
         "mg", "daily", "report", "admission", "discharge", "ward", "nurse", "allergy"]
LETTER = ("Dear Dr. Meyer,\n\nthank you for referring Mrs. Anna Kowalski (born {year}) to our outpatient "
          "clinic. She presented on {day} December with shortness of breath on exertion and ankle swelling "
          "over the last two weeks. Blood pressure was {sys}/{dia} mmHg, heart rate {hr} per minute.\n\n")


def _text(r: random.Random, n: int = BLOCK) -> bytes:
    return " ".join(f"{r.choice(WORDS)} {r.randint(0, 9999)}" for _ in range(n // 6 + 10)).encode()[:n]


def _letters(r: random.Random) -> bytes:
    return "".join(LETTER.format(year=r.randint(1930, 2000), day=r.randint(1, 28), sys=r.randint(100, 170),
                                 dia=r.randint(60, 100), hr=r.randint(50, 110))
                   for _ in range(BLOCK // 300 + 2)).encode()[:BLOCK]


def _log(r: random.Random, lines: int) -> bytes:
    return "".join(f"2026-12-06T{r.randint(0, 23):02}:{r.randint(0, 59):02}:{r.randint(0, 59):02}Z ward7 "
                   f"infusion pump {r.randint(1, 40)} rate {r.randint(1, 500)} ml/h ok\n" for _ in range(lines)).encode()


def _pages(r: random.Random) -> bytes:
    out = bytearray()
    for _ in range(BLOCK // 8192):
        page = bytearray(8192)
        page[:8] = r.randbytes(8)
        pos = 8192
        for _ in range(60):
            tup = r.randbytes(8) + bytes(4) + r.randint(0, 10**6).to_bytes(4, "little") + \
                f"{r.randint(0, 99999):>10} ".encode() * 3 + b" " * 20
            pos -= len(tup)
            page[pos:pos + len(tup)] = tup
        out += page
    return bytes(out)


def _compressed(r: random.Random) -> bytes:
    raw = b""
    while len(raw) < BLOCK:
        raw += zlib.compress(_text(r, 4 * BLOCK), 6)
    return raw[:BLOCK]


def _striped(r: random.Random, data: bytes, stripe: int) -> bytes:
    out = bytearray(data)
    for i in range(0, len(out), 2 * stripe):
        out[i:i + stripe] = r.randbytes(len(out[i:i + stripe]))
    return bytes(out)


def _islands(r: random.Random, old: bytes) -> bytes:
    out = bytearray(old)
    for i in range(0, len(out) - 31, 32):
        out[i:i + 8] = r.randbytes(8)
        out[i + 8:i + 16] = b" " * 8
    return bytes(out)


def _edited(r: random.Random, old: bytes) -> bytes:
    out = bytearray(old)
    for _ in range(r.randint(1, 30)):
        s = _text(r, r.randint(5, 200))
        p = r.randrange(0, BLOCK - len(s))
        out[p:p + len(s)] = s
    return bytes(out)


def _rpo(r: random.Random) -> tuple[bytes, bytes]:
    """The RPO benchmark's writer: one line repeated over a block of repeated lines (tests/bench/rpo.py)."""
    line = b"".join(f"ward {i} patient {r.randrange(10**6)} dose {r.randrange(999)} mg stable\n".encode()
                    for i in range(200))
    old = f"block {r.randrange(262144):012d} ".encode() + (line * (BLOCK // len(line) + 1))[19:BLOCK]
    new = f"edit block {r.randrange(262144)} value {r.randrange(10**9)} at {r.randrange(10**5)}: reviewed\n".encode()
    return (new * (BLOCK // len(new) + 1))[:BLOCK], old


def _decimal(r: random.Random, n: int = BLOCK) -> bytes:
    return ",".join(str(x) for x in r.randbytes(n // 3)).encode()[:n]


def _octal(r: random.Random, n: int = BLOCK) -> bytes:
    return "".join(f"{x:03o}" for x in r.randbytes(n // 3 + 1)).encode()[:n]


def pair(kind: str, r: random.Random) -> tuple[bytes, bytes, float, float]:
    """``(new, old, lz4_new, lz4_old)`` of one pair of ``kind`` (:data:`KINDS`)."""
    text_ratio, random_ratio = 0.3, 1.0
    if kind == "text edited":
        old = _text(r)
        return _edited(r, old), old, text_ratio, text_ratio
    if kind == "text rewritten":
        return _letters(r), _letters(r), text_ratio, text_ratio
    if kind == "log append":
        old = _log(r, 800)[:r.randrange(8000, 50000)]
        new = (old + _log(r, 200))[:BLOCK]
        return new + bytes(BLOCK - len(new)), old + bytes(BLOCK - len(old)), 0.2, 0.15
    if kind == "database pages":
        old = _pages(r)
        new = bytearray(old)
        for _ in range(r.randint(3, 40)):
            p = r.randrange(0, BLOCK - 64)
            new[p:p + 8] = r.randbytes(8)
            new[p + 20:p + 30] = f"{r.randint(0, 99999):>10}".encode()
        return bytes(new), old, 0.5, 0.5
    if kind == "compressed over compressed":
        return _compressed(r), _compressed(r), random_ratio, random_ratio
    if kind == "RPO writer":
        new, old = _rpo(r)
        return new, old, 0.05, 0.1
    if kind == "attack full":
        return r.randbytes(BLOCK), _text(r), random_ratio, text_ratio
    if kind == "attack intermittent 16":
        old = _letters(r)
        return _striped(r, old, 16), old, 0.7, text_ratio
    if kind == "attack intermittent 32":
        old = _text(r)
        return _striped(r, old, 32), old, 0.7, text_ratio
    if kind == "attack islands 8+8":
        old = _letters(r)
        return _islands(r, old), old, 0.6, text_ratio
    if kind == "attack decimal bytes":
        return _decimal(r), _text(r), 0.45, text_ratio
    if kind == "attack octal":
        return _octal(r), _log(r, 900)[:BLOCK], 0.45, 0.15
    raise KeyError(kind)


KINDS = ("text edited", "text rewritten", "log append", "database pages", "compressed over compressed", "RPO writer",
         "attack full", "attack intermittent 16", "attack intermittent 32", "attack islands 8+8",
         "attack decimal bytes", "attack octal")
PER_KIND = 12


def pairs():
    """Every ``(kind, index, new, old, lz4_new, lz4_old)`` of the corpus, the reversed pairs too."""
    for kind in KINDS:
        for i in range(PER_KIND):
            new, old, rn, ro = pair(kind, random.Random(f"{kind}-{i}"))
            yield kind, 2 * i, new, old, rn, ro
            yield kind, 2 * i + 1, old, new, ro, rn


FINDINGS = Path(__file__).with_name("anomaly_cost_findings.json")


def _findings() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for kind, _, new, old, rn, ro in pairs():
        out.setdefault(kind, []).append(dataclasses.asdict(compare_block(new, old, rn, ro)))
    return out


def test_compare_block_finds_what_it_found_before_field_by_field() -> None:
    """Every field of every finding of the corpus equals the recorded one (floats to 1e-12: the
    same arithmetic, another machine's numpy may sum in another order); the attacks count, the
    benign pairs do not (so the corpus speaks)."""
    recorded = json.loads(FINDINGS.read_text())
    assert sorted(recorded) == sorted(KINDS)
    for kind, findings in _findings().items():
        assert len(findings) == len(recorded[kind]) == 2 * PER_KIND
        for i, (got, want) in enumerate(zip(findings, recorded[kind])):
            assert sorted(got) == sorted(want), (kind, i)
            for key, value in got.items():
                expected = want[key]
                if isinstance(value, float):
                    assert math.isclose(value, expected, rel_tol=1e-12, abs_tol=1e-12), (kind, i, key, value, expected)
                else:
                    assert (list(value) if isinstance(value, tuple) else value) == expected, (kind, i, key, value)
        counted = sum(f["turned_random"] for f in recorded[kind][0::2])
        assert counted == (PER_KIND if kind.startswith("attack") else 0), (kind, counted)


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    FINDINGS.write_text(json.dumps(_findings(), sort_keys=True, separators=(",", ":")) + "\n")
