"""Ransom-note signatures in changed blocks (issue 14): the ``ransom_note`` signal, its policy
keys (``ransom_notes``, ``ransom_note_min``) and how they are protected. Real bytes: notes
written from the public descriptions of ransom notes, benign text that mentions one of their
words, and a note that was already there."""

from __future__ import annotations

import os

import pytest

from replicad.core import anomaly
from replicad.core.anomaly import (POLICY_DEFAULTS, RANSOM_NOTES_DEFAULT, SnapshotSignals, judge_relative,
                                   policy_problems, ransom_note_matches, stricter, text_spans, weakened_keys,
                                   with_defaults)
from tests.unit.core.test_anomaly_relative import B, db_page_block, text

NOTES = {
    "lockbit-style": b"~~~ You have been attacked by LockBit ~~~\n>>>> Your data are stolen and encrypted\n"
                     b"The data will be published on TOR website http://lockbitapt2d73krlbewgv27tquljgxr33xbwwsp6rkyieto"
                     b"7u4ncead.onion if you do not pay the ransom\n>>>> You need contact us and decrypt one file "
                     b"for free on TOR darknet sites with your personal ID\nDownload and install TOR Browser\n",
    "readme-style": b"ATTENTION!\r\nAll your files, documents, photos, databases and other important files are "
                    b"encrypted.\r\nThe only method of recovering files is to purchase an unique private key and "
                    b"decrypt tool for you.\r\nSend $980 in Bitcoin. Do not rename encrypted files.\r\n"
                    b"Read HOW_TO_DECRYPT.txt\r\n",
    "html-style": b"<html><body><h1>YOUR NETWORK HAS BEEN LOCKED</h1><p>To get the decryptor software contact "
                  b"us. Payment within 48 hours, in Monero (XMR).</p></body></html>",
}


def note_in_new_file(note: bytes, at: int = 8192) -> bytes:
    """A note file written into free space: its 4 KiB file-system block, the rest zeros."""
    return bytes(at) + note + bytes(B - at - len(note))


@pytest.mark.parametrize("name", list(NOTES))
def test_a_ransom_note_in_a_new_file_is_found(name: str) -> None:
    got = ransom_note_matches(note_in_new_file(NOTES[name]), None, RANSOM_NOTES_DEFAULT)
    assert len(got) >= 2, got


@pytest.mark.parametrize("name", list(NOTES))
def test_a_ransom_note_written_over_text_is_found(name: str) -> None:
    old = text(B, 3)
    new = old[:20000] + NOTES[name] + old[20000 + len(NOTES[name]):]
    assert len(ransom_note_matches(new, old, RANSOM_NOTES_DEFAULT)) >= 2


BENIGN = {
    "text rewritten": (text(B, 1), text(B, 2)),
    "database pages": (db_page_block(1), db_page_block(2)),
    "random bytes": (os.urandom(B), os.urandom(B)),
    "finance news mentioning bitcoin once": (
        note_in_new_file(b"Markets: bitcoin rose 3 % on Friday while the ward budget for 2027 was approved."), None),
    "security training that quotes a note, edited elsewhere in the block": (
        NOTES["readme-style"] + text(B - len(NOTES["readme-style"]) - 10, 4) + b"edit 0002\n",
        NOTES["readme-style"] + text(B - len(NOTES["readme-style"]) - 10, 4) + b"edit 0001\n"),
    "a note inside random bytes (not text)": (os.urandom(B // 2) + NOTES["readme-style"][:40] + os.urandom(
        B // 2 - 40), None),
}


@pytest.mark.parametrize("case", list(BENIGN))
def test_benign_blocks_are_no_ransom_notes(case: str) -> None:
    new, old = BENIGN[case]
    assert ransom_note_matches(new, old, RANSOM_NOTES_DEFAULT) == ()


def test_ransom_note_min_and_custom_patterns() -> None:
    blk = note_in_new_file(b"Contact payments@example.invalid to restore the clinic's records.")
    assert ransom_note_matches(blk, None, RANSOM_NOTES_DEFAULT) == ()
    mine = [*RANSOM_NOTES_DEFAULT, r"payments@example\.invalid", r"restore the clinic"]
    assert ransom_note_matches(blk, None, mine) == (mine[-2], mine[-1])
    one = note_in_new_file(b"The pharmacy accepts no bitcoin; invoices are paid by bank transfer only.")
    assert ransom_note_matches(one, None, RANSOM_NOTES_DEFAULT, minimum=1) == (RANSOM_NOTES_DEFAULT[1],)
    assert ransom_note_matches(note_in_new_file(b"bitcoin"), None, RANSOM_NOTES_DEFAULT, minimum=1) == ()  # < 64 B
    assert ransom_note_matches(None, b"x", RANSOM_NOTES_DEFAULT) == ()
    assert ransom_note_matches(blk, None, []) == ()
    assert text_spans(None) == [] and text_spans(bytes(B)) == []
    assert text_spans(text(B, 5)) == [(0, B)]


def test_a_ransom_note_makes_the_snapshot_suspect_with_a_named_signal() -> None:
    sig = SnapshotSignals(data_blocks=10_000, changed_blocks=3)
    sig.add_note(1234, RANSOM_NOTES_DEFAULT[:2])
    v = judge_relative(7, sig, [], [], with_defaults(POLICY_DEFAULTS))
    assert v.verdict == "suspect" and v.reasons[0].startswith("ransom_note: 1 changed block")
    assert v.first_suspect_seq == 7 and "#1234" in v.reasons[0]
    assert sig.summary()["ransom_note"] == 1
    v = judge_relative(7, sig, [], [], {**POLICY_DEFAULTS, "mode": "encrypted"})
    assert v.verdict == "suspect"  # a note is text in both modes
    assert judge_relative(7, SnapshotSignals(data_blocks=10_000), [], [], POLICY_DEFAULTS).verdict == "clean"


def test_the_policy_keys_are_checked_and_protected() -> None:
    assert policy_problems(POLICY_DEFAULTS) == []
    old_policy = {k: v for k, v in POLICY_DEFAULTS.items() if k not in anomaly.OPTIONAL_POLICY_KEYS}
    assert policy_problems(old_policy) == []  # recorded before the keys existed: the defaults
    assert with_defaults(old_policy)["ransom_notes"] == list(RANSOM_NOTES_DEFAULT)
    assert any("not a regular expression" in p for p in policy_problems({**POLICY_DEFAULTS, "ransom_notes": ["(x"]}))
    assert policy_problems({**POLICY_DEFAULTS, "ransom_notes": "bitcoin"})
    assert policy_problems({**POLICY_DEFAULTS, "ransom_notes": ["x"] * 33})
    assert policy_problems({**POLICY_DEFAULTS, "ransom_notes": ["x" * 201]})
    assert policy_problems({**POLICY_DEFAULTS, "ransom_note_min": 0})
    fewer = {**POLICY_DEFAULTS, "ransom_notes": list(RANSOM_NOTES_DEFAULT[1:])}
    assert weakened_keys(POLICY_DEFAULTS, fewer) == ["ransom_notes"]
    assert weakened_keys(POLICY_DEFAULTS, {**POLICY_DEFAULTS, "ransom_note_min": 3}) == ["ransom_note_min"]
    more = {**POLICY_DEFAULTS, "ransom_notes": [*RANSOM_NOTES_DEFAULT, "pay us"], "ransom_note_min": 1}
    assert weakened_keys(POLICY_DEFAULTS, more) == []
    assert weakened_keys(old_policy, POLICY_DEFAULTS) == []
    # a site's local config may only add patterns and lower the minimum
    local = stricter(POLICY_DEFAULTS, {"ransom_notes": ["pay us", RANSOM_NOTES_DEFAULT[0]], "ransom_note_min": 3})
    assert local["ransom_notes"] == [*RANSOM_NOTES_DEFAULT, "pay us"] and local["ransom_note_min"] == 2
