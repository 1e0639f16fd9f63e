"""A policy's ransom-note patterns are matched with RE2 (linear time), the built-in ones keep
their behaviour (attack: one site added ``(?s)(.+)+\\x01Z``, Python's ``re`` then backtracked
for ever on the next changed text block and froze every site's daemon). Real bytes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from replicad.core import anomaly
from replicad.core.anomaly import (POLICY_DEFAULTS, RANSOM_NOTE_STRONG_DEFAULT, RANSOM_NOTES_DEFAULT, compile_notes,
                                   note_pattern_problem, policy_problems, ransom_note_matches, weakened_keys)
from tests.unit.core.test_anomaly_ransom_note import NOTES, note_in_new_file

SAMPLES = {  # every built-in pattern: ransom-note text it must find (the advisories' wording)
    RANSOM_NOTES_DEFAULT[0]: "All your files, documents and photos have been encrypted.",
    RANSOM_NOTES_DEFAULT[1]: "Send $980 in Bitcoin to the address below.",
    RANSOM_NOTES_DEFAULT[2]: "Visit http://lockbitapt2d73krlbewgv27tquljgxr33xbwwsp6rk.onion now.",
    RANSOM_NOTES_DEFAULT[3]: "To decrypt your files you need our private key and decrypt tool.",
    RANSOM_NOTES_DEFAULT[4]: "Read HOW_TO_DECRYPT.txt in every folder.",
    RANSOM_NOTES_DEFAULT[5]: "Download and install Tor Browser.",
    RANSOM_NOTES_DEFAULT[6]: "Payment must be made within 48 hours.",
    RANSOM_NOTES_DEFAULT[7]: "Do not try to rename encrypted files.",
    RANSOM_NOTES_DEFAULT[8]: "Alle Ihre Dateien wurden verschlüsselt.",
    RANSOM_NOTES_DEFAULT[9]: "Sie brauchen unser Entschlüsselungsprogramm und den privaten Schlüssel.",
    RANSOM_NOTES_DEFAULT[10]: "Zahlung innerhalb von 72 Stunden.",
    RANSOM_NOTE_STRONG_DEFAULT[2]: "Lesen Sie README_TO_DECRYPT sofort.",
    RANSOM_NOTE_STRONG_DEFAULT[3]: "Pay to 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2 today.",
    RANSOM_NOTE_STRONG_DEFAULT[4]: "Pay to bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq today.",
    RANSOM_NOTE_STRONG_DEFAULT[5]: "XMR to 44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A.",
}
EVIL = "(?s)(.+)+\\x01Z"


def test_every_built_in_pattern_still_finds_its_note_text() -> None:
    assert set(SAMPLES) == set(RANSOM_NOTES_DEFAULT) | set(RANSOM_NOTE_STRONG_DEFAULT)
    for pattern, sample in SAMPLES.items():
        assert note_pattern_problem(pattern) is None
        (finditer,) = compile_notes([pattern])
        assert list(finditer(sample)), (pattern, sample)
        assert not list(finditer("The quarterly report of the radiology department is attached.")), pattern
    for name, note in NOTES.items():  # and whole notes as before, in new files
        assert len(ransom_note_matches(note_in_new_file(note), None, RANSOM_NOTES_DEFAULT)) >= 2, name


@pytest.mark.parametrize("pattern,why", [
    ("(?=(\\w+)+!)x", "look-around"), ("(?<!a)b", "look-around"), ("(\\w+)\\1+!", "backreferences"),
    ("(?L)ransom", "RE2"), ("x{1000}{1000}", "RE2"), ("(?:[a-z]{50}){20}", "too large"), ("(x", "RE2"),
])
def test_a_pattern_re2_cannot_run_or_too_large_is_a_policy_problem(pattern: str, why: str) -> None:
    for key in ("ransom_notes", "ransom_note_strong"):
        problems = policy_problems({**POLICY_DEFAULTS, key: [*POLICY_DEFAULTS[key], pattern]})
        assert len(problems) == 1 and problems[0].startswith(f"{key}[") and why in problems[0], problems


def test_a_policy_pattern_is_matched_by_re2_case_insensitively_and_in_unicode() -> None:
    mine = [*RANSOM_NOTES_DEFAULT, "lösegeld", "pay (?:us|me) now"]
    assert policy_problems({**POLICY_DEFAULTS, "ransom_notes": mine}) == []
    blk = note_in_new_file("DAS LÖSEGELD: PAY US NOW, http://lockbitapt2d73krlbewgv27tquljgxr33xbwwsp6rk.onion "
                           "for the key of every file of the clinic, otherwise nothing comes back.".encode())
    got = ransom_note_matches(blk, None, mine, minimum=3)
    assert "lösegeld" in got and "pay (?:us|me) now" in got and RANSOM_NOTES_DEFAULT[2] in got
    assert weakened_keys(POLICY_DEFAULTS, {**POLICY_DEFAULTS, "ransom_notes": mine}) == []


def test_the_backtracking_pattern_of_the_attack_runs_in_linear_time_on_a_text_block() -> None:
    """RE2 accepts the attack's pattern (it compiles) and runs it without backtracking: a whole
    64 KiB text block is judged. In a child process bounded at 120 s, so that a regression fails
    here instead of hanging the suite (Python's ``re`` needs ~2^n steps on it)."""
    assert note_pattern_problem(EVIL) is None
    code = ("from replicad.core.anomaly import RANSOM_NOTES_DEFAULT, ransom_note_matches\n"
            "text = (b'Minutes of the ward meeting: the new rota starts on Monday. ' * 1200)[:65536]\n"
            f"print(ransom_note_matches(text, None, [*RANSOM_NOTES_DEFAULT, {EVIL!r}], 1))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "()", out.stderr[-2000:]


def test_a_recorded_pattern_re2_refuses_is_left_out_and_named() -> None:
    legacy = [*RANSOM_NOTES_DEFAULT, "(?<=pay )us", "ransom"]
    assert anomaly.unusable_notes(legacy) == ["(?<=pay )us"]
    compiled = compile_notes(legacy)
    assert compiled[-2] is None and compiled[-1] is not None
    blk = note_in_new_file(b"Pay us the ransom: http://lockbitapt2d73krlbewgv27tquljgxr33xbwwsp6rk.onion, every "
                           b"file of the clinic is gone otherwise; nobody else can help you now.")
    assert ransom_note_matches(blk, None, legacy, minimum=2) == (RANSOM_NOTES_DEFAULT[2], "ransom")
