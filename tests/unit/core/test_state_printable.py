"""State machine: what a replicated name, reason or stats text may hold is decided by a table the
code carries (``state.NOT_PRINTABLE_RANGES``), never by the Unicode version of the interpreter: two
sites running the same release on Python 3.11 (Unicode 14.0) and 3.12 (15.0) must accept and refuse
the same commands, or their states diverge."""

from __future__ import annotations

import sys
import unicodedata

from replicad.core import state as st
from tests.unit.core.test_state_bounds import RET
from tests.unit.core.test_state_membership import cmd, founded, refused, run

UNICODE_15 = "\U0001fae8"  # SHAKING FACE: unassigned in Unicode 14.0 (Python 3.11), assigned in 15.0 (3.12)
LOG_FORGERS = "\n\r\x0b\x0c\x1b\x1c\x1d\x1e\x85\u2028\u2029\u202e\u2066\u200b\ufeff\x00\x7f\u00a0\ud800"


def add(name: str) -> dict:
    return cmd("add_volume", "a", volume=name, primary="a", block_size=65536, size_bytes=1 << 20, min_copies=2,
               retention=dict(RET))


def test_a_code_point_a_newer_unicode_assigned_is_decided_alike_whatever_the_python() -> None:
    s, res = run(founded(), add(f"vol{UNICODE_15}"))
    assert res["created"] is True
    assert st.printable(UNICODE_15) and st.stats_problem({"note": UNICODE_15}) is None


def test_line_breaks_escapes_and_bidi_overrides_are_refused_in_names_and_stats() -> None:
    s = founded()
    for ch in LOG_FORGERS:
        assert not st.printable(f"a{ch}b"), hex(ord(ch))
        res = refused(s, add(f"vol{ch}x"), "bad_request")
        assert res["evidence"]["refusal"] == "not_printable"
        assert st.stats_problem({"note": f"x{ch}"}) is not None and st.stats_problem({f"k{ch}": 1}) is not None


def test_every_character_the_interpreter_prints_is_printable_and_the_rest_differs_only_by_unassigned_ones() -> None:
    differ = [cp for cp in range(sys.maxunicode + 1) if chr(cp).isprintable() != st.printable(chr(cp))]
    assert all(st.printable(chr(cp)) for cp in differ)  # never refuses what isprintable accepts
    # what isprintable refuses and printable accepts: unassigned in the table's Unicode 14.0
    assert all(unicodedata.category(chr(cp)) in ("Cn", "Cf") for cp in differ)
    if unicodedata.unidata_version == "14.0.0":
        assert {unicodedata.category(chr(cp)) for cp in differ} == {"Cn"}
