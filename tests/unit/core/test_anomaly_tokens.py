"""Ciphertext written in a *separated* encoding (decimal bytes with commas or line breaks, a C
array, binary digits with a space every 8, one of 16 words per nibble, hex or base64 cut into
fixed-width groups): the separators break the 4-gram test and the narrow-alphabet test, so
only the token test (:func:`replicad.core.anomaly.token_random`) or the same tests over the
novel bytes with separators stripped (:func:`stripped_random`) see it. Real bytes: ``os.urandom``
stands in for the cipher's output; the benign counterparts are text, logs with numeric fields,
CSV tables of measurements and prices, timestamps, hex and ``od`` dumps, sequential ids, and
the same encodings over themselves."""

from __future__ import annotations

import base64
import os
import random

import pytest

from replicad.core import anomaly
from replicad.core.anomaly import (compare_block, fixed_width, separated_random, stripped_random, text_like,
                                   token_random, token_stats)
from tests.unit.core.test_anomaly_alphabet import fit, hexdump, log_lines, octal, od_dump
from tests.unit.core.test_anomaly_encoded import csv_floats, lab_lines
from tests.unit.core.test_anomaly_relative import B, db_page_block, text

WORDS16 = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar "
           "papa").split()


def decimal_commas(n: int) -> bytes:
    return fit(",".join(str(x) for x in os.urandom(n)).encode())


def decimal_lines(n: int) -> bytes:
    return fit("\n".join(str(x) for x in os.urandom(n)).encode())


def c_array(n: int) -> bytes:
    """``0x1f, 0xa2, ...`` with a line break every 12 values, as a C source generator writes it."""
    return fit("".join(f"0x{x:02x}, " + ("\n" if i % 12 == 11 else "") for i, x in enumerate(os.urandom(n))).encode())


def binary_octets(n: int) -> bytes:
    return fit(" ".join(f"{x:08b}" for x in os.urandom(n)).encode())


def nibble_words(n: int) -> bytes:
    return fit(" ".join(f"{WORDS16[x >> 4]} {WORDS16[x & 15]}" for x in os.urandom(n)).encode())


def hex_groups(n: int) -> bytes:
    h = os.urandom(n).hex()
    return fit(" ".join(h[i:i + 4] for i in range(0, len(h), 4)).encode())


def base64_groups(n: int) -> bytes:
    b = base64.b64encode(os.urandom(n)).decode()
    return fit(", ".join(b[i:i + 8] for i in range(0, len(b), 8)).encode())


def octal_groups(n: int) -> bytes:
    o = octal(os.urandom(n)).decode()
    return fit(" ".join(o[i:i + 8] for i in range(0, len(o), 8)).encode())


SEPARATED = {"decimal bytes, commas": decimal_commas, "decimal bytes, one per line": decimal_lines,
             "C array": c_array, "binary digits, a space every 8": binary_octets,
             "16 words, one per nibble": nibble_words}
GROUPED = {"hex in groups of 4": hex_groups, "base64 in groups of 8 with commas": base64_groups,
           "octal in groups of 8": octal_groups}


def measurements(seed: int) -> bytes:
    """A sensor CSV: epoch seconds a minute apart, temperature, pressure, humidity."""
    r, t, out = random.Random(seed), 1765000000, []
    for _ in range(4000):
        t += r.randint(55, 65)
        out.append(f"{t},{20 + r.gauss(0, 0.3):.2f},{1013 + r.gauss(0, 2):.1f},{45 + r.gauss(0, 5):.1f}\n")
    return fit("".join(out).encode())


def prices(seed: int) -> bytes:
    """An order table: order id, item, unit price, quantity."""
    r = random.Random(seed)
    return fit("".join(f"{r.randint(1, 5000)},item{r.randint(1, 300)},"
                       f"{r.choice([0.99, 1.49, 2.5, 4.99, 9.99, 19.95, r.randint(1, 200) + r.choice([0, .5, .99])]):.2f},"
                       f"{r.randint(1, 12)}\n" for _ in range(5000)).encode())


def numeric_log(seed: int) -> bytes:
    """Log lines with a timestamp and numeric fields (pid, bytes, milliseconds)."""
    r = random.Random(seed)
    return fit("".join(f"2026-12-06 {r.randint(0, 23):02}:{r.randint(0, 59):02}:{r.randint(0, 59):02}."
                       f"{r.randint(0, 999):03} pid={r.randint(100, 65535)} bytes={r.randint(0, 10**6)} "
                       f"ms={r.random() * 100:.3f}\n" for _ in range(3000)).encode())


def timestamps(seed: int) -> bytes:
    r = random.Random(seed)
    t, out = 1765000000 + r.randint(0, 10**6), []
    for _ in range(4000):
        t += r.randint(0, 30)
        out.append(f"{t}.{r.randint(0, 999999):06} 2026-12-06T{(t // 3600) % 24:02}:{(t // 60) % 60:02}:{t % 60:02}Z\n")
    return fit("".join(out).encode())


def sequential_ids(seed: int) -> bytes:
    start = 10**6 + seed * 10_000
    return fit("".join(f"{i:08}\n" for i in range(start, start + 8000)).encode())


OLD = {"text": lambda: text(B, 1), "log": lambda: log_lines(2), "csv of measurements": lambda: measurements(3),
       "database pages": lambda: db_page_block(4), "repeated lines": lambda: lab_lines(5)}


@pytest.mark.parametrize("old_name", list(OLD))
@pytest.mark.parametrize("enc", list(SEPARATED) + list(GROUPED))
def test_separated_ciphertext_over_structured_data_turns_the_block_random(old_name: str, enc: str) -> None:
    old = OLD[old_name]()
    f = compare_block({**SEPARATED, **GROUPED}[enc](B), old)
    assert f.turned_random and f.random_subs >= 4, f


@pytest.mark.parametrize("enc", list(SEPARATED))
def test_the_separated_encodings_of_the_review_are_seen_by_the_token_test(enc: str) -> None:
    """Over text: every sub-block, by the token test (the byte tests were silent there)."""
    old = text(B, 1)
    f = compare_block(SEPARATED[enc](B), old)
    assert f.separated == B // anomaly.SUB_BLOCK and f.structure_lost >= f.separated, f


def test_the_numbers_of_the_token_test() -> None:
    # 4 KiB of comma-separated decimal bytes: ~1,130 tokens over K ~ 256 kinds, used evenly,
    # distinct tokens as many as independent draws give, no token trigram repeated
    toks = anomaly._tokens(decimal_commas(B)[:4096], None)
    n, kinds, uniformity, excess, count, observed, expected = token_stats(toks)
    assert 1000 < n < 1300 and 200 < kinds < 320 and uniformity > 0.96 and 0.9 < excess < 1.1
    assert n - 3 <= count <= n - 2 and observed < 0.01 and expected < 0.01 and token_random(toks)
    # 16 words per nibble: K ~ 16, n-grams of 6 words
    toks = anomaly._tokens(nibble_words(B)[:4096], None)
    n, kinds, uniformity, excess, count, observed, expected = token_stats(toks)
    assert 13 < kinds < 19 and uniformity > 0.97 and n - 6 <= count <= n - 5 and token_random(toks)
    # text: a few frequent words beside a long tail of rare ones (distinct ~5x the uniform expectation)
    toks = anomaly._tokens(text(4096, 2), None)
    n, kinds, uniformity, excess, *_ = token_stats(toks)
    assert uniformity < 0.9 and excess > 3 and not token_random(toks)
    # ids that never repeat: the collision count cannot speak
    assert token_stats(anomaly._tokens(sequential_ids(1)[:4096], None))[1] == float("inf")
    assert not token_random(anomaly._tokens(sequential_ids(1)[:4096], None))
    assert token_stats([]) == (0, 0.0, 0.0, 0.0, 0, 0.0, 0.0) and not token_random([b"ab"] * 200)
    assert not token_random([b"x" * 40, b"y" * 40] * 200)  # long tokens are no short-token encoding
    # a separator equal to the old byte at its offset still separates; unchanged tokens are not novel
    assert anomaly._tokens(b"12,34,56", b"12,xx,56") == [b"34"]
    # fixed-width groups are judged again without their separators
    assert fixed_width(anomaly._tokens(hex_groups(B)[:4096], None))
    assert not fixed_width(anomaly._tokens(csv_floats(1)[:4096], None))
    assert stripped_random(hex_groups(B)[:4096]) and stripped_random(octal_groups(B)[:4096])
    assert not stripped_random(sequential_ids(2)[:4096])
    assert text_like(b"31,162,7\n") and not text_like(os.urandom(4096)) and not text_like(b"")
    assert not separated_random(os.urandom(4096), None, os.urandom(4096))  # binary: the byte tests' job


BENIGN_CLEAN = {
    "text over text": lambda s: (text(B, s), text(B, s + 1)),
    "log lines over log lines": lambda s: (log_lines(s), log_lines(s + 1)),
    "log with numeric fields over text": lambda s: (numeric_log(s), text(B, s + 1)),
    "csv of measurements over csv of measurements": lambda s: (measurements(s), measurements(s + 1)),
    "csv of measurements over text": lambda s: (measurements(s), text(B, s + 1)),
    "csv of prices over text": lambda s: (prices(s), text(B, s + 1)),
    "csv of prices over csv of prices": lambda s: (prices(s), prices(s + 1)),
    "csv of random floats over log lines": lambda s: (csv_floats(s), log_lines(s + 1)),
    "timestamps over text": lambda s: (timestamps(s), text(B, s + 1)),
    "hex dump of a database over text": lambda s: (fit(hexdump(db_page_block(s) * 4)), text(B, s + 1)),
    "hex dump of text over a hex dump of text": lambda s: (fit(hexdump(text(4 * B, s))), fit(hexdump(text(4 * B, s + 1)))),
    "od dump of text over text": lambda s: (fit(od_dump(text(B, s))), text(B, s + 1)),
    "od dump of random data over an od dump (a dump before)": lambda s: (fit(od_dump(os.urandom(B))),
                                                                          fit(od_dump(os.urandom(B)))),
    "hex dump of random data over a hex dump (a dump before)": lambda s: (fit(hexdump(os.urandom(B))),
                                                                           fit(hexdump(os.urandom(B)))),
    "decimal bytes over decimal bytes (the same encoding before)": lambda s: (decimal_commas(B), decimal_commas(B)),
    "sequential ids over text": lambda s: (sequential_ids(s), text(B, s + 1)),
    "database pages over database pages": lambda s: (db_page_block(s), db_page_block(s + 1)),
}


@pytest.mark.parametrize("case", list(BENIGN_CLEAN))
def test_benign_rewrites_stay_clean(case: str) -> None:
    new, old = BENIGN_CLEAN[case](7)
    f = compare_block(new, old)
    assert f.separated == 0 and not f.turned_random, f


def test_false_alarm_count_of_the_token_test_on_benign_block_pairs() -> None:
    """17 kinds of benign pair x 18 fresh seeds (306 pairs): no block is judged a separated
    encoding (ARCHITECTURE.md "Ransomware signal" carries the count)."""
    pairs = flagged = 0
    for seed in range(18):
        for make in BENIGN_CLEAN.values():
            new, old = make(1000 + 97 * seed)
            pairs += 1
            flagged += compare_block(new, old).separated > 0
    assert pairs == 306 and flagged == 0


def test_the_documented_false_alarm_of_the_token_test() -> None:
    """Random data in a separated encoding written where structured data was: per block, the
    bytes an encoding attacker writes (an ``od -b`` dump or a decimal list of random bytes over
    freed text): the same class as base64 or gzip over freed text."""
    assert compare_block(fit(od_dump(os.urandom(B))), text(B, 3)).turned_random  # the narrow test's
    assert compare_block(decimal_lines(B), text(B, 4)).separated > 0


PADDED = {  # ciphertext in hex groups between fixed filler words: the filler repeats like data
    "data: 3f2a data: 91bc": "data: {} ",
    "<b>3f2a</b> lines": "<b>{}</b>\n",
    "chunk 3f2a of data": "chunk {} of data\n",
    "row,3f2a,ok,v1": "row,{},ok,v1\n",
}


@pytest.mark.parametrize("old_name", list(OLD))
@pytest.mark.parametrize("form", list(PADDED))
def test_ciphertext_padded_with_filler_words_is_seen_without_its_filler(old_name: str, form: str) -> None:
    """The adaptive attacker of the benchmark pads hex of its ciphertext with fixed words; the
    words are filler (:func:`anomaly.without_filler`: a kind >= 10 % of the tokens) and what is
    left is hex in fixed-width groups, memoryless once joined."""
    h = os.urandom(B // 2).hex()
    new = fit("".join(PADDED[form].format(h[i:i + 4]) for i in range(0, len(h), 4)).encode())
    f = compare_block(new, OLD[old_name]())
    assert f.turned_random and f.separated >= 4, f  # database pages: only their data sub-blocks are judged


def test_ciphertext_glued_to_filler_letters_is_not_seen() -> None:
    """Documented limit: filler glued to the groups (``x3f2ay``) makes every token a distinct
    6-character word and the joined bytes repeat their filler letters (ARCHITECTURE.md)."""
    h = os.urandom(B // 2).hex()
    new = fit("".join(f"x{h[i:i + 4]}y " for i in range(0, len(h), 4)).encode())
    assert not compare_block(new, text(B, 1)).turned_random
