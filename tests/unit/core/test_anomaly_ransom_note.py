"""Ransom-note signatures in changed blocks (issue 14): the ``ransom_note`` signal, its policy
keys (``ransom_notes``, ``ransom_note_min``) and how they are protected. Real bytes: notes
written from the public descriptions of ransom notes, benign text that mentions one of their
words, and a note that was already there."""

from __future__ import annotations

import os

import pytest

from replicad.core import anomaly
from replicad.core.anomaly import (POLICY_DEFAULTS, RANSOM_NOTE_STRONG_DEFAULT, RANSOM_NOTES_DEFAULT, SnapshotSignals,
                                   judge_relative, note_texts, policy_problems, ransom_note_matches, stricter,
                                   text_spans, weakened_keys, with_defaults)
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
                  b"us. Payment within 48 hours, in Monero (XMR) to 44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3X"
                  b"jrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A.</p></body></html>",
    "german": "ACHTUNG!\nAlle Ihre Dateien wurden verschlüsselt. Um sie wiederherzustellen, brauchen Sie unser "
              "Entschlüsselungsprogramm und den privaten Schlüssel.\nZahlung innerhalb von 72 Stunden an "
              "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq.\nLesen Sie README_TO_DECRYPT.\n".encode(),
}
"""The notes as written from the advisories; each gives an address to pay or contact, or names
its note file (a strong indicator, :data:`RANSOM_NOTE_STRONG_DEFAULT`)."""
README = NOTES["readme-style"].decode()
ENCODED = {  # the same note as a reader shows it, the bytes as an editor or the attacker's tool wrote them
    "UTF-16LE with a byte-order mark": README.encode("utf-16"),
    "UTF-16LE without a byte-order mark": README.encode("utf-16-le"),
    "UTF-16BE with a byte-order mark": b"\xfe\xff" + README.encode("utf-16-be"),
    "non-breaking spaces": README.replace(" ", "\u00a0").encode(),
    "narrow no-break and ideographic spaces": README.replace(" ", "\u202f", 20).replace(" ", "\u3000").encode(),
    "zero-width spaces between words": README.replace(" ", "\u200b").encode(),
    "zero-width characters inside words": README.replace("crypt", "cr\u200bypt").replace("Bitcoin", "Bit\u2060coin")
    .replace(" ", " \u200c").encode(),
    "UTF-16LE with non-breaking spaces": README.replace(" ", "\u00a0").encode("utf-16-le"),
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


@pytest.mark.parametrize("name", list(ENCODED))
def test_a_note_in_utf16_or_with_unicode_spaces_is_found(name: str) -> None:
    got = ransom_note_matches(note_in_new_file(ENCODED[name]), None, RANSOM_NOTES_DEFAULT)
    assert len(got) >= 3 and set(got) & set(RANSOM_NOTE_STRONG_DEFAULT), got


def test_a_german_note_is_found_by_the_german_phrases() -> None:
    got = ransom_note_matches(note_in_new_file(NOTES["german"]), None, RANSOM_NOTES_DEFAULT)
    assert set(RANSOM_NOTES_DEFAULT[-3:]) <= set(got) and set(got) & set(RANSOM_NOTE_STRONG_DEFAULT), got
    # a policy recorded before the German phrases still finds it only by its strong indicators
    old_list = list(RANSOM_NOTES_DEFAULT[:-3])
    assert set(ransom_note_matches(note_in_new_file(NOTES["german"]), None, old_list)) <= set(RANSOM_NOTE_STRONG_DEFAULT)


def test_a_note_without_any_strong_indicator_is_not_seen() -> None:
    """The limit the strong indicator sets: a note that gives no address to pay or contact and
    names no note file reads like the awareness mail below (documented in ARCHITECTURE.md)."""
    bare = (b"<html><body><h1>YOUR NETWORK HAS BEEN LOCKED</h1><p>To get the decryptor software contact "
            b"us. Payment within 48 hours, in Monero (XMR).</p></body></html>")
    assert ransom_note_matches(note_in_new_file(bare), None, RANSOM_NOTES_DEFAULT) == ()


def test_note_texts_decodes_and_normalises() -> None:
    assert note_texts(note_in_new_file(README.encode("utf-16-le")))[0].strip("\x00").startswith("ATTENTION!")
    assert "All your files" in note_texts(note_in_new_file(README.replace(" ", "\u00a0").encode()))[0]
    two = note_texts(note_in_new_file("your\u200bfiles are encr\u200bypted, pay 1 BTC today please, within the "
                                      "next 72 hours".encode()))
    assert any("your files" in t for t in two) and any("encrypted" in t for t in two)
    # an ASCII note padded with zeros is not misread as UTF-16
    assert "ATTENTION!" in note_texts(note_in_new_file(NOTES["readme-style"]))[0]
    assert note_texts(None) == [] and note_texts(bytes(B)) == [] and note_texts(os.urandom(B)) == []


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
    "an IT-awareness mail naming two patterns": (note_in_new_file(
        b"Subject: Security awareness week\n\nDear colleagues, ransomware is on the rise. If a screen tells you "
        b"your files have been encrypted and demands payment in Bitcoin, do not pay: unplug the network cable and "
        b"call the service desk on 4711. Do not try to restore the files yourself.\n"), None),
    "treasury minutes naming two patterns": (note_in_new_file(
        b"Treasury committee, minutes of 3 December\n1. The foundation received a donation of 0.5 BTC; the board "
        b"agreed to convert it. 2. Supplier invoices: payment of the outstanding balance within 30 days, as agreed "
        b"with the auditors. 3. Any other business: none.\n"), None),
    "German invoice and privacy notice naming three German patterns": (note_in_new_file(
        "Rechnung 2026-117\nIhre Daten werden verschlüsselt übertragen und gespeichert. Das Entschlüsselungs"
        "programm der Praxis-Software prüft den Schlüssel.\nZahlung innerhalb von 14 Tagen ohne Abzug.\n".encode()),
        None),
    "a UTF-16 awareness document naming two patterns": (note_in_new_file(
        "Training: when a note says your files have been encrypted and asks for Bitcoin, call IT.".encode(
            "utf-16")), None),
    "a hash list beside a phrase (no wallet inside hex or base64)": (note_in_new_file(
        b"Backups are encrypted; your files were encrypted at rest with the key below.\n"
        b"13f2a9c5d41d8cd98f11b2e4e9811998ecf8427e  backup-1.tar\n"
        b"Zm9vYmFy+1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2/Zm9vYmFy\n"), None),
}


@pytest.mark.parametrize("case", list(BENIGN))
def test_benign_blocks_are_no_ransom_notes(case: str) -> None:
    new, old = BENIGN[case]
    assert ransom_note_matches(new, old, RANSOM_NOTES_DEFAULT) == ()


def test_ransom_note_min_and_custom_patterns() -> None:
    blk = note_in_new_file(b"Contact payments@example.invalid to restore the clinic's records.")
    assert ransom_note_matches(blk, None, RANSOM_NOTES_DEFAULT) == ()
    mine = [*RANSOM_NOTES_DEFAULT, r"restore the clinic"]
    assert ransom_note_matches(blk, None, mine) == ()  # phrases alone: no strong indicator
    strong = [*RANSOM_NOTE_STRONG_DEFAULT, r"payments@example\.invalid"]
    assert ransom_note_matches(blk, None, mine, strong=strong) == (mine[-1], strong[-1])
    one = note_in_new_file(b"The pharmacy accepts no bitcoin; invoices are paid by bank transfer only.")
    assert ransom_note_matches(one, None, RANSOM_NOTES_DEFAULT, minimum=1) == ()  # a phrase alone, even at 1
    wallet = note_in_new_file(b"Send the payment to 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2 before Friday, thanks.")
    assert ransom_note_matches(wallet, None, RANSOM_NOTES_DEFAULT, minimum=1) == (RANSOM_NOTE_STRONG_DEFAULT[3],)
    assert ransom_note_matches(wallet, None, RANSOM_NOTES_DEFAULT) == ()  # a strong indicator alone: min 2
    assert ransom_note_matches(wallet, None, RANSOM_NOTES_DEFAULT, minimum=1, strong=[]) == ()
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
    # the strong indicators: optional (the defaults for a policy recorded before them), checked, protected
    assert with_defaults(old_policy)["ransom_note_strong"] == list(RANSOM_NOTE_STRONG_DEFAULT)
    assert "ransom_note_strong" not in {k for k in old_policy} and policy_problems(old_policy) == []
    assert any("ransom_note_strong[0] is not a regular expression" in p
               for p in policy_problems({**POLICY_DEFAULTS, "ransom_note_strong": ["(x"]}))
    assert policy_problems({**POLICY_DEFAULTS, "ransom_note_strong": "x"})
    fewer_strong = {**POLICY_DEFAULTS, "ransom_note_strong": list(RANSOM_NOTE_STRONG_DEFAULT[1:])}
    assert weakened_keys(POLICY_DEFAULTS, fewer_strong) == ["ransom_note_strong"]
    assert weakened_keys(fewer_strong, POLICY_DEFAULTS) == []
    assert stricter(POLICY_DEFAULTS, {"ransom_note_strong": ["pay@x"]})["ransom_note_strong"] == [
        *RANSOM_NOTE_STRONG_DEFAULT, "pay@x"]
    # a pattern recorded before RE2 judged patterns ((?L): bytes only) is refused now, and where a
    # policy still holds it, it is left out of matching (anomaly.unusable_notes names it)
    assert policy_problems({**POLICY_DEFAULTS, "ransom_notes": [*RANSOM_NOTES_DEFAULT, "(?L)ransom"]})
    blk = note_in_new_file(b"A ransom is due. Contact http://lockbitapt2d73krlbewgv27tquljgxr33xbwwsp6rk.onion now.")
    assert "(?L)ransom" not in ransom_note_matches(blk, None, [*RANSOM_NOTES_DEFAULT, "(?L)ransom"], minimum=1)
    assert "ransom" in ransom_note_matches(blk, None, [*RANSOM_NOTES_DEFAULT, "ransom"], minimum=1)
    assert anomaly.unusable_notes([*RANSOM_NOTES_DEFAULT, "(?L)ransom", "ransom"]) == ["(?L)ransom"]
    assert weakened_keys(POLICY_DEFAULTS, {**POLICY_DEFAULTS, "ransom_note_min": 3}) == ["ransom_note_min"]
    more = {**POLICY_DEFAULTS, "ransom_notes": [*RANSOM_NOTES_DEFAULT, "pay us"], "ransom_note_min": 1}
    assert weakened_keys(POLICY_DEFAULTS, more) == []
    assert weakened_keys(old_policy, POLICY_DEFAULTS) == []
    # a site's local config may only add patterns and lower the minimum
    local = stricter(POLICY_DEFAULTS, {"ransom_notes": ["pay us", RANSOM_NOTES_DEFAULT[0]], "ransom_note_min": 3})
    assert local["ransom_notes"] == [*RANSOM_NOTES_DEFAULT, "pay us"] and local["ransom_note_min"] == 2


def test_false_alarm_count_on_benign_blocks_in_free_space() -> None:
    """14 kinds of benign block written into free space (the strictest case: no old text to
    subtract) x 15 fresh seeds: text, logs, CSV tables, timestamps, a base64 mail, checksum and
    UUID lists, JSON with base64, database pages, random bytes, UTF-16 text, a hex dump: no
    ransom note (ARCHITECTURE.md "Ransomware signal" carries the count)."""
    from tests.unit.core.test_anomaly_alphabet import fit, hexdump, log_lines
    from tests.unit.core.test_anomaly_encoded import checksums, json_thumbnails, mail, uuids
    from tests.unit.core.test_anomaly_tokens import measurements, numeric_log, prices, timestamps
    kinds = [lambda s: text(B, s), log_lines, measurements, prices, numeric_log, timestamps, mail, checksums, uuids,
             json_thumbnails, db_page_block, lambda s: os.urandom(B), lambda s: text(B, s).decode().encode("utf-16"),
             lambda s: fit(hexdump(os.urandom(B)))]
    blocks = found = 0
    for seed in range(15):
        for make in kinds:
            blocks += 1
            found += bool(ransom_note_matches(make(9000 + 31 * seed), None, RANSOM_NOTES_DEFAULT))
    assert blocks == 210 and found == 0


def test_a_broad_approved_pattern_reads_a_bounded_number_of_matches() -> None:
    """An approved pattern like ``(?s).`` matched every character of a 64 KiB block and every
    match was collected (2.2 s per block with 20 such patterns): each pattern now reads at most
    NOTE_MATCHES_MAX matches of each side and keeps NOTE_HITS_MAX distinct ones, what the signal
    needs (one match the old version did not hold). The real compiled patterns, counted."""
    patterns = ["(?s).", "[a-z]"] + [f"(?s).{{{i}}}" for i in range(1, 19)]
    every = patterns + [p for p in RANSOM_NOTE_STRONG_DEFAULT if p not in patterns]
    real = anomaly.compile_notes(every)
    read: dict[tuple[int, int], int] = {}
    calls = iter(range(10**6))

    def counting(i: int, finditer):
        def run(t: str):
            key = (i, next(calls))
            read[key] = 0
            for h in finditer(t):
                read[key] += 1
                yield h
        return run

    block = (README.encode() * (B // len(README) + 1))[:B]
    anomaly._NOTE_CACHE[tuple(every)] = [counting(i, f) for i, f in enumerate(real)]
    try:
        got = ransom_note_matches(block, None, patterns)
        assert "(?s)." in got and "[a-z]" in got and set(got) & set(RANSOM_NOTE_STRONG_DEFAULT), got
        per_pattern: dict[int, int] = {}
        for (i, _), n in read.items():
            per_pattern[i] = per_pattern.get(i, 0) + n
        assert max(per_pattern.values()) <= anomaly.NOTE_MATCHES_MAX, per_pattern
        # the same note already there: nothing new, read as boundedly
        read.clear()
        assert ransom_note_matches(block, block, patterns) == ()
        assert sum(read.values()) <= anomaly.NOTE_BLOCK_MATCHES_MAX, sum(read.values())
        assert max(n for n in read.values()) <= anomaly.NOTE_MATCHES_MAX, read
    finally:
        anomaly._NOTE_CACHE.pop(tuple(every), None)
