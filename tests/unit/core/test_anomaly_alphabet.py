"""Ciphertext written in a narrow alphabet (octal, binary, base-10 big numbers, any <= ~3 bits
per symbol) over structured data: byte entropy *falls* and 4-grams repeat by chance, so only
the narrow-alphabet test (:func:`replicad.core.anomaly.alphabet_stats`, :func:`long_repeats`)
sees it. Real bytes: ``os.urandom`` stands in for the cipher's output, then encoded the way an
attacker would; the benign counterparts are plain text, logs, CSV tables of numbers, hex and
octal dumps that were dumps before, and the one class of benign write that looks the same
(random identifiers, one per line, over freed text) is named."""

from __future__ import annotations

import base64
import os
import random

import pytest

from replicad.core import anomaly
from replicad.core.anomaly import (alphabet_stats, byte_entropy_bits, compare_block, long_repeats, memoryless_long,
                                   narrow_uniform, novel_repeats)
from tests.unit.core.test_anomaly_encoded import csv_floats, lab_lines
from tests.unit.core.test_anomaly_relative import B, db_page_block, text


def octal(raw: bytes) -> bytes:
    return "".join(f"{x:03o}" for x in raw).encode()


def octal_lines(raw: bytes, width: int = 64) -> bytes:
    o = octal(raw)
    return b"\n".join(o[i:i + width] for i in range(0, len(o), width))


def binary(raw: bytes) -> bytes:
    return "".join(f"{x:08b}" for x in raw).encode()


def quaternary(raw: bytes) -> bytes:
    """Two bits per symbol, mapped onto 'ACGT' (a sequence-like alphabet)."""
    return bytes(b"ACGT"[(x >> s) & 3] for x in raw for s in (6, 4, 2, 0))


def ternary_words(raw: bytes) -> bytes:
    """Base-3 digits of the ciphertext as the three symbols 'x', '-', '|'."""
    n = int.from_bytes(raw, "big")
    out = bytearray()
    while n and len(out) < B:
        n, d = divmod(n, 3)
        out.append(b"x-|"[d])
    return bytes(out)


def big_decimal(raw: bytes) -> bytes:
    import sys
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return str(int.from_bytes(raw, "big")).encode()
    finally:
        sys.set_int_max_str_digits(old)


def fit(data: bytes) -> bytes:
    assert len(data) >= B
    return data[:B]


def log_lines(seed: int) -> bytes:
    r = random.Random(seed)
    return fit("".join(f"2026-12-06T{r.randint(0, 23):02}:{r.randint(0, 59):02}:{r.randint(0, 59):02}Z ward7 "
                       f"infusion pump {r.randint(1, 40)} rate {r.randint(1, 500)} ml/h ok\n"
                       for _ in range(2000)).encode())


ENCODERS = {"octal": lambda n: fit(octal(os.urandom(n // 3 + 1))),
            "octal, 64-column lines": lambda n: fit(octal_lines(os.urandom(n // 3 + 1))),
            "binary digits": lambda n: fit(binary(os.urandom(n // 8))),
            "ACGT (2 bits/symbol)": lambda n: fit(quaternary(os.urandom(n // 4))),
            "three symbols": lambda n: fit(ternary_words(os.urandom(n // 5 + 16))),
            "big decimal number": lambda n: fit(big_decimal(os.urandom(n // 2))),
            "hex": lambda n: fit(os.urandom(n // 2).hex().encode()),
            "base32": lambda n: fit(base64.b32encode(os.urandom(n))),
            "base64": lambda n: fit(base64.b64encode(os.urandom(n))),
            "base64 mime lines": lambda n: fit(base64.encodebytes(os.urandom(n)))}
OLD = {"text": text(B, 1), "log": log_lines(2), "csv of numbers": csv_floats(3), "database pages": db_page_block(4),
       "repeated lines": lab_lines(5)}


@pytest.mark.parametrize("old_name", list(OLD))
@pytest.mark.parametrize("enc", list(ENCODERS))
def test_encoded_ciphertext_over_structured_data_turns_the_block_random(old_name: str, enc: str) -> None:
    old = OLD[old_name]
    new = ENCODERS[enc](B)
    f = compare_block(new, old)
    assert f.turned_random and f.random_subs >= len(old) // anomaly.SUB_BLOCK // 4, f


@pytest.mark.parametrize("enc", ["octal", "binary digits", "ACGT (2 bits/symbol)", "three symbols"])
def test_narrow_alphabets_are_seen_by_the_narrow_test_alone(enc: str) -> None:
    """<= 3 bits per symbol: entropy falls below the text's, the 4-gram test is silent."""
    old = text(B, 1)
    new = ENCODERS[enc](B)
    f = compare_block(new, old)
    assert byte_entropy_bits(new) < byte_entropy_bits(old)
    assert f.narrow_alphabet >= 12 and f.structure_lost >= f.narrow_alphabet, f
    assert f.alphabet_after <= 8, f


def test_the_numbers_of_the_narrow_test() -> None:
    o = octal(os.urandom(4096 // 3 + 1))[:4096]
    size, bits, uniformity = alphabet_stats(o)
    # octal of bytes: the first of 3 digits is 0-3, so 2.918 bits/symbol, not 3 (uniformity 0.973)
    assert size == 8 and 2.88 < bits <= 3.0 and uniformity > 0.96 and narrow_uniform(size, bits, uniformity)
    count, observed, expected = long_repeats(o, bits)  # 8-grams of octal digits: 2^24 values
    assert count > 4000 and observed < 0.01 and expected < 0.01 and memoryless_long(count, observed, expected)
    # a newline every 64 digits is a separator, not a symbol of the alphabet
    size, _, uniformity = alphabet_stats(octal_lines(os.urandom(1400))[:4096])
    assert size == 8 and uniformity > 0.96
    # text repeats its long n-grams far more than its histogram predicts; CSV uses digits unevenly
    t = text(4096, 7)
    assert not memoryless_long(*long_repeats(t, byte_entropy_bits(t)))
    # a CSV table of random floats uses its 13 symbols evenly (0.99) but at 3.7 bits/symbol: the
    # 4-gram test judges it (chance rarely repeats its 4-grams), never the narrow test
    assert novel_repeats(csv_floats(8)[:4096], None)[0][2] <= anomaly.MEMORYLESS_EXPECTED_MAX
    assert novel_repeats(octal(os.urandom(1400))[:4096], None)[0][2] > anomaly.MEMORYLESS_EXPECTED_MAX
    assert alphabet_stats(b"") == (0, 0.0, 0.0) and alphabet_stats(b"aaaa")[2] == 0.0
    assert long_repeats(b"0123", 3.0) == (0, 0.0, 0.0) and long_repeats(b"", 0.0) == (0, 0.0, 0.0)


def hexdump(raw: bytes) -> bytes:
    """``xxd``-style lines: offset, 16 bytes in hex, the printable characters."""
    out = []
    for off in range(0, len(raw), 16):
        chunk = raw[off:off + 16]
        printable = "".join(chr(c) if 32 <= c < 127 else "." for c in chunk)
        out.append(f"{off:08x}: {chunk.hex(' ', 2):<39}  {printable}\n")
    return "".join(out).encode()


def od_dump(raw: bytes) -> bytes:
    """``od -b``-style lines: octal offset, 16 bytes as octal numbers."""
    return "".join(f"{off:07o} " + " ".join(f"{c:03o}" for c in raw[off:off + 16]) + "\n"
                   for off in range(0, len(raw), 16)).encode()


def numeric_ids(seed: int) -> bytes:
    r = random.Random(seed)
    return "".join(f"{r.randint(0, 999999):06}\n" for _ in range(12000)).encode()


BENIGN_CLEAN = {
    "text over text": (text(B, 9), text(B, 10)),
    "log lines over log lines": (log_lines(11), log_lines(12)),
    "log lines over text": (log_lines(13), text(B, 14)),
    "csv of numbers over csv of numbers": (csv_floats(15), csv_floats(16)),
    "csv of numbers over text": (csv_floats(17), text(B, 18)),
    "hex of random data over hex of random data (hex before)": (fit(os.urandom(B // 2).hex().encode()),
                                                               fit(os.urandom(B // 2).hex().encode())),
    "octal of random data over octal (octal before)": (ENCODERS["octal"](B), ENCODERS["octal"](B)),
    "hex dump of a database over text": (fit(hexdump(db_page_block(19) * 4)), text(B, 20)),
    "hex dump of text over a hex dump of text": (fit(hexdump(text(4 * B, 21))), fit(hexdump(text(4 * B, 22)))),
    "od dump of text over text": (fit(od_dump(text(B, 23))), text(B, 24)),
    "sequential numbers over text": (fit("".join(f"{i:08}\n" for i in range(10**6, 10**6 + 8000)).encode()),
                                     text(B, 25)),
    "binary digits of text over text": (fit(binary(text(B // 8, 26))), text(B, 27)),
    "octal into free space": (ENCODERS["octal"](B), None),
}
BENIGN_FLAGGED = {  # random data in a small alphabet where structured data was: the same bytes
    "random 6-digit ids, one per line, over freed text": (fit(numeric_ids(28)), text(B, 29)),
    "random binary digits (a bitmap dump) over freed text": (ENCODERS["binary digits"](B), text(B, 30)),
}


@pytest.mark.parametrize("case", list(BENIGN_CLEAN))
def test_benign_rewrites_in_narrow_alphabets_stay_clean(case: str) -> None:
    new, old = BENIGN_CLEAN[case]
    f = compare_block(new, old)
    assert not f.turned_random and f.narrow_alphabet == 0, f


@pytest.mark.parametrize("case", list(BENIGN_FLAGGED))
def test_the_documented_false_alarm_of_the_narrow_test(case: str) -> None:
    """Random data in a small alphabet written where structured data was: per block, the bytes an
    encoding attacker writes (6-digit ids, ~3.4 bits/symbol, are seen by the 4-gram test; binary
    digits by the narrow test)."""
    new, old = BENIGN_FLAGGED[case]
    assert compare_block(new, old).turned_random


def test_false_alarm_rate_of_the_narrow_test_on_benign_blocks() -> None:
    """Over many benign block pairs with fresh seeds (text, logs, CSV, dumps): no block counts."""
    flagged = 0
    pairs = 0
    for seed in range(40):
        for new, old in ((text(B, 100 + seed), text(B, 200 + seed)), (log_lines(300 + seed), text(B, 400 + seed)),
                         (csv_floats(500 + seed), log_lines(600 + seed)),
                         (fit(od_dump(text(B, 700 + seed))), text(B, 800 + seed))):
            pairs += 1
            flagged += compare_block(new, old).narrow_alphabet > 0
    assert pairs == 160 and flagged == 0


def test_versions_of_different_lengths() -> None:
    """A new version shorter or longer than the old one (a volume's last partial block)."""
    old = text(B, 31)
    new = ENCODERS["octal"](B)
    assert compare_block(new[:B - 24], old).turned_random
    assert compare_block(new, old[:B - 24]).turned_random
    assert not compare_block(text(B, 32)[:B - 24], text(B, 33)).turned_random
