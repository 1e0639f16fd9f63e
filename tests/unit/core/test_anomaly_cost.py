"""Judging cost per changed block without changing any answer: :func:`anomaly.ransom_note_matches`
runs the strong indicators first and skips a built-in pattern whose required literal (or run of
base58 characters) is nowhere in ASCII text. Checked here against the matching as it was before
(every pattern over every text, kept below as the reference), on real notes written over text,
in new files, in UTF-16 and with Unicode spaces, benign text, logs, database pages and random
bytes, and random variants of them. Real bytes, no mocks."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from replicad.core import anomaly
from replicad.core.anomaly import (POLICY_DEFAULTS, RANSOM_NOTE_STRONG_DEFAULT, RANSOM_NOTES_DEFAULT,
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
    pairs = [(n, None) for n in NOTE_BYTES] + [(n, text(SIZE, 3)) for n in NOTE_BYTES]
    pairs += [(b, None) for b in BENIGN.values() if isinstance(b, bytes)]
    r = random.Random(20261207)
    pairs += [_variant(r) for _ in range(150)]
    found = 0
    for new, old in pairs:
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
