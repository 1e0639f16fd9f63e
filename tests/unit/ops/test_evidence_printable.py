"""``replicad evidence`` prints text from a snapshot's evidence that does not print (a file
name's extension read from ciphertext, decoded with U+FFFD for its bad bytes; a hostile site's
control characters) escaped, not as garbage on the operator's terminal."""

from __future__ import annotations

from replicad.ops.evidenceview import evidence_lines, printable


def test_undecodable_and_control_characters_are_escaped_and_said_to_be_no_text() -> None:
    assert printable("1\ufffdea\ufffdm") == '"1\\ufffdea\\ufffdm" (not text)'
    assert printable("x\x1b[2Jy\n") == '"x\\x1b[2Jy\\n" (not text)'
    assert printable("locked") == "locked" and printable("dossier-été") == "dossier-été"


def test_the_evidence_lines_show_a_renamed_extension_from_ciphertext_escaped() -> None:
    e = {"here": {"site": "site-b", "verdict": "suspect", "base_seq": 9, "score": 0.0, "baseline": 0.0,
                  "signals": {"renamed": 40, "renamed_extension": "1\ufffdea\ufffdm\ufffdw\ufffd"},
                  "renamed": {"names": 40, "extension": "\ufffd\x01", "examples": ["a.doc.\ufffd\x01"]},
                  "reasons": ["mass rename \x1b[31m"]}}
    text = "\n".join(evidence_lines(e))
    assert "\ufffd" not in text and "\x1b" not in text and "\x01" not in text, text
    assert 'renamed_extension: "1\\ufffdea\\ufffdm\\ufffdw\\ufffd" (not text)' in text, text
    assert '"mass rename \\x1b[31m" (not text)' in text, text


def test_paired_counts_carry_their_unit_and_one_snapshot_is_singular() -> None:
    e = {"here": {"site": "site-b", "verdict": "suspect", "base_seq": 9, "score": 0.0, "baseline": 0.0,
                  "signals": {"ciphertext_files": 36.18, "released_since_anchor": 35.67},
                  "slow": {"anchor": 1, "relative": {"total": 0.04, "max": 0.03, "began": 12, "snapshots": 1},
                           "coverage": {"total": 0.01, "max": 0.03, "began": 12, "count": 1}},
                  "reasons": []}}
    text = "\n".join(evidence_lines(e))
    assert "ciphertext_files: 36.18 blocks' worth" in text and "released_since_anchor: 35.67 blocks' worth" in text, \
        text
    assert "began at #12 (1 snapshot)" in text and "(1 distinct block)" in text and "(1 snapshots)" not in text, text


def test_a_first_suspicious_snapshot_after_suspect_ones_names_them() -> None:
    e = {"volume": "ehr", "seq": 13, "suspect_before_first": [12, 11],
         "here": {"site": "site-b", "verdict": "suspect", "base_seq": 10, "score": 0.2, "baseline": 0.0,
                  "first_suspect_seq": 13, "restore_seq": 10, "reasons": []}}
    text = "\n".join(evidence_lines(e))
    assert "first suspicious #13 by this site's signals of #13 (the cluster already calls #12, #11 before it " \
           "suspect: the incident began at #11 or earlier); restore point #10" in text, text
    e.pop("suspect_before_first")
    assert "first suspicious #13; restore point #10" in "\n".join(evidence_lines(e))
