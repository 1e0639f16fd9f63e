"""Sizes and durations as operators write them, and back.

Sizes (:func:`parse_size`, :func:`format_size`) are whole numbers of bytes:

* a bare integer, or a string of digits, is bytes: ``512``, ``"512"``, ``"512B"``;
* binary (IEC) units are powers of 1024: ``KiB MiB GiB TiB PiB``. The ``i`` makes them
  unambiguous, so they are accepted in any letter case (``"64kib"`` is 65536);
* decimal (SI) units are powers of 1000: ``kB MB GB TB PB``, written exactly so — the
  prefix case carries meaning (``m`` is milli, ``b`` is a bit). ``"KB"``, ``"K"``, ``"M"``,
  ``"mb"`` ... are refused as ambiguous, with the two spellings that were probably meant;
* a fraction is allowed when the result is a whole number of bytes: ``"1.5KiB"`` is 1536,
  ``"0.5B"`` is refused; whitespace between number and unit is allowed (``"4 KiB"``).

Durations (:func:`parse_duration`, :func:`format_duration`) are seconds as ``float``:

* a bare int/float, or a string holding only a number, is seconds: ``10``, ``"2.5"``;
* otherwise one or more ``<number><unit>`` parts, largest unit first, each unit at most
  once, optional spaces between parts: ``"500ms"``, ``"10s"``, ``"5m"``, ``"24h"``,
  ``"7d"``, ``"1h30m"``, ``"1m 1.5s"``;
* units (lower case only — ``"5M"`` could mean months): ``ns us µs ms s m h d w``
  (``d`` = 86400 s, ``w`` = 7 d; no months or years, their length varies).

Negative values, NaN and infinity are refused everywhere. Every refusal is a
``ValueError`` whose message quotes the input and says what is accepted; the config loader
turns it into a ``key.path: message`` problem.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["parse_size", "parse_duration", "format_size", "format_duration"]

_IEC_UNITS: dict[str, int] = {
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "pib": 1024**5,
}
_SI_UNITS: dict[str, int] = {
    "kB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "PB": 1000**5,
}
# Prefix letters whose meaning is unclear without the "i" or with the wrong case.
_AMBIGUOUS_PREFIX: dict[str, tuple[str, str]] = {
    "k": ("KiB", "kB"),
    "m": ("MiB", "MB"),
    "g": ("GiB", "GB"),
    "t": ("TiB", "TB"),
    "p": ("PiB", "PB"),
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-zµ]*)\s*$")
_SIZE_HELP = "write bytes as an integer or with a unit: B, KiB, MiB, GiB, TiB, PiB, kB, MB, GB, TB, PB"


def parse_size(text: str | int) -> int:
    """Parse a size into a whole number of bytes (rules in the module docstring).

    Args:
        text: ``int`` (bytes) or a string such as ``"64KiB"``, ``"4kB"``, ``"512"``.

    Returns:
        The size in bytes, ``>= 0``.

    Raises:
        ValueError: bad syntax, unknown or ambiguous unit, negative, or not a whole
            number of bytes. ``bool`` is refused (``true`` is not a size).
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a size, got boolean {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative, got {text}")
        return text
    if not isinstance(text, str):
        raise ValueError(f"expected a size as an integer or a string like '64KiB', got {type(text).__name__}")
    match = _SIZE_RE.match(text)
    if match is None:
        if text.strip().startswith("-"):
            raise ValueError(f"size must not be negative, got {text!r}")
        raise ValueError(f"invalid size {text!r}: {_SIZE_HELP}")
    number, unit = Fraction(match.group(1)), match.group(2)
    multiplier = _size_multiplier(unit, text)
    value = number * multiplier
    if value.denominator != 1:
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(value)


def _size_multiplier(unit: str, text: str) -> int:
    if unit in ("", "B"):
        return 1
    if unit.lower() in _IEC_UNITS:
        return _IEC_UNITS[unit.lower()]
    if unit in _SI_UNITS:
        return _SI_UNITS[unit]
    if unit == "b":
        raise ValueError(f"invalid size {text!r}: 'b' is a bit; write B for bytes")
    prefix = unit[0].lower()
    if prefix in _AMBIGUOUS_PREFIX and unit.lower() in (prefix, prefix + "b"):
        binary, decimal = _AMBIGUOUS_PREFIX[prefix]
        raise ValueError(
            f"ambiguous size unit {unit!r} in {text!r}: write {binary} "
            f"({_IEC_UNITS[binary.lower()]} bytes) or {decimal} ({_SI_UNITS[decimal]} bytes)"
        )
    raise ValueError(f"unknown size unit {unit!r} in {text!r}: {_SIZE_HELP}")


_DURATION_UNITS: dict[str, Fraction] = {
    "w": Fraction(7 * 86400),
    "d": Fraction(86400),
    "h": Fraction(3600),
    "m": Fraction(60),
    "s": Fraction(1),
    "ms": Fraction(1, 1000),
    "us": Fraction(1, 1000**2),
    "µs": Fraction(1, 1000**2),
    "ns": Fraction(1, 1000**3),
}
_DURATION_PART_RE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-zµ]+)\s*")
_NUMBER_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*$")
_DURATION_HELP = "write e.g. '10s', '500ms', '5m', '24h', '7d' or '1h30m' (units: ns, us, ms, s, m, h, d, w)"


def parse_duration(text: str | int | float) -> float:
    """Parse a duration into seconds (rules in the module docstring).

    Args:
        text: ``int``/``float`` seconds, or a string such as ``"10s"``, ``"1h30m"``.

    Returns:
        Seconds as a finite ``float >= 0``.

    Raises:
        ValueError: bad syntax, unknown unit, unit repeated or out of order (``"1m1h"``),
            negative, NaN or infinite. ``bool`` is refused.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration, got boolean {text!r}")
    if isinstance(text, (int, float)):
        if not math.isfinite(text):
            raise ValueError(f"duration must be finite, got {text!r}")
        if text < 0:
            raise ValueError(f"duration must not be negative, got {text!r}")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"expected a duration as a number of seconds or a string like '10s', got {type(text).__name__}")
    if _NUMBER_RE.match(text):
        return float(Fraction(text.strip()))
    if text.strip().startswith("-"):
        raise ValueError(f"duration must not be negative, got {text!r}")
    total = Fraction(0)
    pos = 0
    previous_unit: str | None = None
    order = list(_DURATION_UNITS)
    while pos < len(text):
        match = _DURATION_PART_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"invalid duration {text!r}: {_DURATION_HELP}")
        number, unit = match.group(1), match.group(2)
        if unit not in _DURATION_UNITS:
            hint = " (units are lower case)" if unit.lower() in _DURATION_UNITS else ""
            raise ValueError(f"unknown duration unit {unit!r} in {text!r}{hint}: {_DURATION_HELP}")
        if previous_unit is not None and order.index(unit) <= order.index(previous_unit):
            raise ValueError(f"invalid duration {text!r}: units must go from largest to smallest, each once")
        previous_unit = unit
        total += Fraction(number) * _DURATION_UNITS[unit]
        pos = match.end()
    if previous_unit is None:
        raise ValueError(f"invalid duration {text!r}: {_DURATION_HELP}")
    return float(total)


_FORMAT_SIZE_UNITS: tuple[tuple[str, int], ...] = (
    ("PiB", 1024**5),
    ("TiB", 1024**4),
    ("GiB", 1024**3),
    ("MiB", 1024**2),
    ("KiB", 1024),
)


def format_size(n: int) -> str:
    """Render ``n`` bytes for people.

    An exact multiple of a binary unit is written with the largest such unit
    (``65536`` → ``"64KiB"``, ``3 * 2**30`` → ``"3GiB"``); values under 1 KiB are bytes
    (``"999B"``). Both forms round-trip through :func:`parse_size`. Any other value is
    rounded to one decimal of the largest unit not above it (``1536`` → ``"1.5KiB"``,
    ``123456789`` → ``"117.7MiB"``). Negative values (deltas) keep their sign.

    Raises:
        ValueError: ``n`` is not an integer (``bool`` included).
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"format_size expects an integer number of bytes, got {n!r}")
    if n < 0:
        return "-" + format_size(-n)
    for name, unit in _FORMAT_SIZE_UNITS:
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    for name, unit in _FORMAT_SIZE_UNITS:
        if n >= unit:
            return f"{n / unit:.1f}{name}"
    return f"{n}B"


SIZE_COUNTS = ("rounded", "always", "never")
"""When :func:`size_text` writes the exact count of bytes beside :func:`format_size`'s text."""


def size_text(n: object, count: str = "rounded") -> str:
    """``n`` bytes for people, as the CLI and the evidence view word a byte count (the status
    page's glance, ``1.5 MiB``, is its own). :func:`format_size`'s text, with the exact count
    beside it per ``count``:

    * ``"rounded"``: only when that text does not :func:`parse_size` back to ``n``: ``2GiB``,
      ``1.5KiB``, ``999B``, ``1.5GiB (1610612737 bytes)`` (what an operator confirms);
    * ``"always"``: ``0 bytes``, ``1 byte``, ``4KiB (4096 bytes)`` (evidence, compared by
      count); under 1 KiB the count alone;
    * ``"never"``: ``1.5GiB`` (a summary; ``--json`` has the count).

    Negative values (deltas) keep their sign. Anything that is not an integer (``bool``
    included) as ``str(n)``: an answer from a site is shown as it came, never a traceback.

    Raises:
        ValueError: ``count`` is not one of :data:`SIZE_COUNTS`.
    """
    if count not in SIZE_COUNTS:
        raise ValueError(f"size_text: count must be one of {', '.join(SIZE_COUNTS)}, got {count!r}")
    if isinstance(n, bool) or not isinstance(n, int):
        return str(n)
    if count == "always" and abs(n) < 1024:
        return f"{n} byte{'' if n == 1 else 's'}"
    shown = format_size(n)
    if count == "never":
        return shown
    if count == "rounded":
        try:
            if parse_size(shown.lstrip("-")) == abs(n):
                return shown
        except ValueError:  # a rounded value that is no whole number of bytes
            pass
    return f"{shown} ({n} bytes)"


_FORMAT_DURATION_PARTS: tuple[tuple[str, int], ...] = (("d", 86400), ("h", 3600), ("m", 60))


def format_duration(s: float) -> str:
    """Render ``s`` seconds for people, in the syntax :func:`parse_duration` reads.

    ``0`` → ``"0s"``; under one second the largest of ``ms``/``us``/``ns`` that keeps the
    number at least 1 (``0.5`` → ``"500ms"``, up to 3 decimals); otherwise days, hours,
    minutes and seconds, zero parts left out, seconds rounded to the millisecond
    (``5400`` → ``"1h30m"``, ``61.5`` → ``"1m1.5s"``, ``604800`` → ``"7d"``). Negative
    values keep their sign.

    Raises:
        ValueError: ``s`` is not a finite number.
    """
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
        raise ValueError(f"format_duration expects a finite number of seconds, got {s!r}")
    if s < 0:
        return "-" + format_duration(-s)
    if s == 0:
        return "0s"
    if s < 1:
        for name, scale in (("ms", 1e3), ("us", 1e6), ("ns", 1e9)):
            value = round(s * scale, 3)
            if value >= 1 or name == "ns":
                text = _trim(value)
                if name != "ms" or value < 1000:
                    return f"{text}{name}"
                return "1s"  # 0.9999995 s rounds up to a full second
    millis = round(s * 1000)
    whole, frac_ms = divmod(millis, 1000)
    parts: list[str] = []
    for name, unit in _FORMAT_DURATION_PARTS:
        count, whole = divmod(whole, unit)
        if count:
            parts.append(f"{count}{name}")
    if whole or frac_ms:
        parts.append(f"{_trim(whole + frac_ms / 1000)}s")
    return "".join(parts)


def _trim(value: float) -> str:
    """``1.500`` → ``"1.5"``, ``2.0`` → ``"2"`` (three decimals at most)."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"
