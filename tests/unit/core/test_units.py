"""Tests of replicad.core.units: size and duration parsing and formatting."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad.core.units import format_duration, format_size, parse_duration, parse_size, size_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64KiB", 64 * 1024),
        ("1MiB", 1024**2),
        ("2GiB", 2 * 1024**3),
        ("1TiB", 1024**4),
        ("512", 512),
        ("512B", 512),
        ("0", 0),
        ("4kB", 4000),
        ("3MB", 3_000_000),
        ("1GB", 10**9),
        ("64kib", 64 * 1024),
        ("64KIB", 64 * 1024),
        ("4 KiB", 4096),
        (" 1.5KiB ", 1536),
        ("0.5MiB", 512 * 1024),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size_accepts(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("64KB", "ambiguous size unit 'KB'"),
        ("4K", "ambiguous size unit 'K'"),
        ("4mb", "ambiguous size unit 'mb'"),
        ("1mB", "ambiguous size unit 'mB'"),
        ("4b", "'b' is a bit"),
        ("4XB", "unknown size unit 'XB'"),
        ("1.1B", "not a whole number of bytes"),
        ("0.3KiB", "not a whole number of bytes"),
        ("-3", "must not be negative"),
        ("-3KiB", "must not be negative"),
        (-1, "must not be negative"),
        ("", "invalid size ''"),
        ("KiB", "invalid size 'KiB'"),
        ("1e3", "invalid size '1e3'"),
        ("4 4KiB", "invalid size"),
        (True, "boolean"),
        (1.5, "expected a size"),
        (None, "expected a size"),
    ],
)
def test_parse_size_refuses(text: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)  # type: ignore[arg-type]
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10s", 10.0),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("7d", 7 * 86400.0),
        ("2w", 14 * 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1m1.5s", 61.5),
        ("250us", 250e-6),
        ("250µs", 250e-6),
        ("100ns", 100e-9),
        ("1d2h3m4s5ms", 86400 + 7200 + 180 + 4.005),
        ("10", 10.0),
        ("2.5", 2.5),
        ("0s", 0.0),
        (10, 10.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_accepts(text: str | float, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5M", "units are lower case"),
        ("10S", "units are lower case"),
        ("3y", "unknown duration unit 'y'"),
        ("1m1h", "largest to smallest"),
        ("1h1h", "largest to smallest"),
        ("-1s", "must not be negative"),
        (-1, "must not be negative"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ("", "invalid duration"),
        ("s", "invalid duration"),
        ("10 s x", "invalid duration"),
        ("1h30", "invalid duration"),
        (True, "boolean"),
        (None, "expected a duration"),
    ],
)
def test_parse_duration_refuses(text: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)  # type: ignore[arg-type]
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0B"),
        (999, "999B"),
        (1024, "1KiB"),
        (65536, "64KiB"),
        (3 * 1024**3, "3GiB"),
        (1536, "1.5KiB"),
        (123456789, "117.7MiB"),
        (-2048, "-2KiB"),
    ],
)
def test_format_size(n: int, expected: str) -> None:
    assert format_size(n) == expected


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (0.0015, "1.5ms"),
        (0.0005, "500us"),
        (1e-9, "1ns"),
        (10, "10s"),
        (61.5, "1m1.5s"),
        (5400, "1h30m"),
        (86400, "1d"),
        (7 * 86400, "7d"),
        (90061, "1d1h1m1s"),
        (0.9999999, "1s"),
        (-3, "-3s"),
    ],
)
def test_format_duration(s: float, expected: str) -> None:
    assert format_duration(s) == expected


@pytest.mark.parametrize("bad", [1.5, "3", True, None])
def test_format_size_refuses_non_integers(bad: object) -> None:
    with pytest.raises(ValueError):
        format_size(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, "3s", None])
def test_format_duration_refuses_non_numbers(bad: object) -> None:
    with pytest.raises(ValueError):
        format_duration(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=2**60))
def test_format_size_round_trips_exact_values(n: int) -> None:
    text = format_size(n)
    if n < 1024 or any(n % unit == 0 for unit in (1024, 1024**2, 1024**3, 1024**4, 1024**5)):
        assert parse_size(text) == n
    else:
        assert abs(parse_size_approx(text) - n) <= n * 0.05


def parse_size_approx(text: str) -> float:
    """The rounded form has one decimal; compare within its rounding error."""
    units = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4, "PiB": 1024**5}
    for name, unit in units.items():
        if text.endswith(name):
            return float(text[: -len(name)]) * unit
    return float(text.removesuffix("B"))


@given(st.integers(min_value=0, max_value=400 * 86400 * 1000))
def test_format_duration_round_trips_to_the_millisecond(millis: int) -> None:
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    ("n", "count", "expected"),
    [
        (2 * 1024**3, "rounded", "2GiB"),
        (1536, "rounded", "1.5KiB"),  # parses back exactly: no count
        (999, "rounded", "999B"),
        (0, "rounded", "0B"),
        (1610612737, "rounded", "1.5GiB (1610612737 bytes)"),
        (-1610612737, "rounded", "-1.5GiB (-1610612737 bytes)"),
        (0, "always", "0 bytes"),
        (1, "always", "1 byte"),
        (-5, "always", "-5 bytes"),
        (4096, "always", "4KiB (4096 bytes)"),
        (1610612737, "never", "1.5GiB"),
        (None, "rounded", "None"),
        (True, "always", "True"),
        ("4KiB", "never", "4KiB"),
    ],
)
def test_size_text(n: object, count: str, expected: str) -> None:
    assert size_text(n, count) == expected


def test_size_text_refuses_an_unknown_count() -> None:
    with pytest.raises(ValueError, match="count must be one of"):
        size_text(1, "sometimes")
