"""replicad.core.errors.facts_text: facts (evidence, a command's arguments or result) in words,
``key=value`` as in TOML, never a Python repr."""

from __future__ import annotations

from replicad.core.errors import facts_text


def test_facts_are_key_value_words_with_toml_booleans() -> None:
    assert facts_text({"ok": True, "volume": "ehr", "force": False, "seq": 11}) == "ok=true volume=ehr force=false seq=11"


def test_lists_nested_mappings_none_bytes_and_quoted_strings() -> None:
    text = facts_text({"seqs": [1, 2], "local": {"gc": None}, "root": b"\x01\xff", "reason": "mass rename",
                       "empty": ""})
    assert text == 'seqs=[1, 2] local={gc=none} root=01ff reason="mass rename" empty=""'
    assert "{'" not in text and "True" not in text


def test_control_characters_and_quotes_are_escaped() -> None:
    assert facts_text({"name": 'a"b\x00\n'}) == r'name="a\"b\x00\n"'
    assert facts_text("plain") == "plain"
