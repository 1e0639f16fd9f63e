"""``replicad evidence VOL SEQ`` as text a person reads (issue 16, operator defects).

The evidence document (``GET /v1/volumes/{volume}/snapshots/{seq}/evidence``, built by
``site/detection.py``) carries floats with 17 digits, maps nested two deep and up to 64 block
indices. Here they become lines: shares as percentages with one or two decimals, block indices
as ranges (``3-9, 12``) shortened after :data:`BLOCK_GROUPS_MAX` groups, nested maps as
indented ``key: value`` lines. ``--json`` prints the document itself, untouched.

Pure: :func:`evidence_lines` takes the document and returns the lines (the CLI prints them
without markup: every value may come from a hostile site).
"""

from __future__ import annotations

import datetime
import math
from typing import Any, Iterable, Mapping

BLOCK_GROUPS_MAX = 12
"""Ranges of block indices shown before ``… (N more)``."""

SHARE_KEYS = frozenset({"score", "baseline", "cumulative", "conserved", "conserved_counted"})
"""Keys whose value is a share of the volume (0..1), shown as a percentage."""

UNITS = {"data_blocks": "blocks", "changed_blocks": "blocks", "turned_random": "blocks", "fresh_random": "blocks",
         "wiped": "blocks", "cold_rewritten": "blocks", "ransom_note": "blocks", "sparse_random": "blocks",
         "structure_freed": "blocks' worth", "random_filled": "blocks' worth", "structure_released": "blocks' worth",
         "ciphertext_files": "blocks' worth", "released_since_anchor": "blocks' worth",
         "renamed": "file names",
         "magic_destroyed": "blocks"}
"""The unit of each count of a snapshot's signals (``anomaly.SnapshotSignals.summary``), printed
after it; in a nested map (``magic_destroyed``: per header kind) it applies to every value.
Keys ending in ``_bytes`` are sizes, ``_blocks`` blocks; shares (:data:`SHARE_KEYS`) percentages."""


def _counted(n: Any, noun: str) -> str:
    """``1 snapshot``, ``2 snapshots`` (``? snapshots`` when not a number)."""
    return f"{n} {noun}" if n == 1 else f"{n if isinstance(n, int) else '?'} {noun}s"


def percent(share: Any) -> str:
    """A share (0..1) as a percentage: two decimals below 10 %, one from there; ``<0.01 %`` for a
    tiny non-zero share; ``-`` when not a number. E.g. ``0.0625`` → ``6.25 %``."""
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not math.isfinite(share):
        return "-"
    p = share * 100.0
    if p == 0:
        return "0 %"
    if abs(p) < 0.01:
        return "<0.01 %"
    return f"{p:.2f} %" if abs(p) < 10 else f"{p:.1f} %"


def number(value: Any) -> str:
    """A value as short text: integers as they are, floats to 4 significant digits, booleans
    yes/no, None and the empty string ``-``; other text as :func:`printable`."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return printable(str(value))


def printable(text: Any) -> str:
    """``text`` as it is when every character prints, else double-quoted with each character
    that does not print, and U+FFFD (a byte that did not decode: a file name read from
    ciphertext), escaped as ``\\xNN``/``\\uNNNN`` and `` (not text)`` after it: ``renamed_extension:
    "1\\ufffdea\\ufffdm" (not text)``, not garbage on the terminal."""
    text = str(text)
    if all(c.isprintable() and c != "\ufffd" for c in text):
        return text
    escaped = "".join(c if c.isprintable() and c not in '\ufffd"\\' else
                      ("\\" + c if c in '"\\' else c.encode("unicode_escape").decode("ascii")) for c in text)
    return f'"{escaped}" (not text)'


def size(value: Any) -> str:
    """A byte count as ``0 bytes``, ``4 KiB (4096 bytes)``-style text: the exact count, with the
    binary unit before it from 1 KiB on; other values as :func:`number`."""
    if not isinstance(value, int) or isinstance(value, bool):
        return number(value)
    from replicad.core.units import size_text

    return size_text(value, count="always")


def with_unit(key: str, value: Any, unit: str | None = None) -> str:
    """``value`` of signal ``key`` with its unit (:data:`UNITS`, or ``unit`` from an enclosing
    map): ``12 blocks``, ``2.50 %``, ``1MiB (1048576 bytes)``; a value that is not a number, or
    a key of no known unit, as :func:`number`."""
    if key in SHARE_KEYS:
        return percent(value)
    if key.endswith("_bytes"):
        return size(value)
    unit = UNITS.get(key, unit or ("blocks" if key.endswith("_blocks") else None))
    if unit is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return number(value)
    if unit == "blocks" and value == 1:
        unit = "block"
    return f"{number(value)} {unit}"


def block_ranges(indices: Iterable[Any], groups_max: int = BLOCK_GROUPS_MAX) -> str:
    """Block indices as sorted ranges: ``[7, 3, 4, 5, 9]`` → ``3-5, 7, 9``; more than
    ``groups_max`` groups end in ``… (N more blocks)``. Non-integers are ignored."""
    ints = sorted({i for i in indices if isinstance(i, int) and not isinstance(i, bool)})
    groups: list[tuple[int, int]] = []
    for i in ints:
        if groups and i == groups[-1][1] + 1:
            groups[-1] = (groups[-1][0], i)
        else:
            groups.append((i, i))
    shown = [f"{a}-{b}" if b > a else str(a) for a, b in groups[:groups_max]]
    rest = sum(b - a + 1 for a, b in groups[groups_max:])
    return ", ".join(shown) + (f", … ({rest} more block{'s' if rest != 1 else ''})" if rest else "")


def map_lines(values: Mapping[str, Any], indent: int = 2, unit: str | None = None) -> list[str]:
    """``key: value`` lines of a map, sorted by key; a nested map as ``key:`` and its own lines
    indented two more (its values in the unit of its key); an empty map ``key: none``; a list as
    its items joined; each number with its unit (:func:`with_unit`: shares as percentages,
    counts of blocks, sizes in bytes)."""
    pad = " " * indent
    out: list[str] = []
    for key in sorted(values, key=str):
        value = values[key]
        if isinstance(value, Mapping):
            if value:
                out.append(f"{pad}{key}:")
                out.extend(map_lines(value, indent + 2, UNITS.get(str(key), unit)))
            else:
                out.append(f"{pad}{key}: none")
        elif isinstance(value, (list, tuple)):
            out.append(f"{pad}{key}: " + (", ".join(number(v) for v in value) or "none"))
        else:
            out.append(f"{pad}{key}: {with_unit(str(key), value, unit)}")
    return out


def opinion_cells(o: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(score, cumulative, first suspect, reason) of one site's opinion, as text."""
    first = o.get("first_seq")
    return (percent(o.get("score", 0)), percent(o.get("cumulative", 0)), "-" if first is None else f"#{first}",
            str(o.get("reason") or ""))


def mark_lines(e: Mapping[str, Any]) -> list[str]:
    """Persons' marks on the snapshot (``e["marks"]``: ``{site: {verdict, reason, at_ns,
    recorded_ns}}``) as lines: each is that site's suspect vote, made by a person in its name
    (``replicad verdict``); none: no line. Times in UTC."""
    marks = e.get("marks")
    if not isinstance(marks, Mapping) or not marks:
        return []
    lines = ["persons' marks (each holds its own site's standby; suspect for the cluster on three sites' words, "
             "marks or detectors, or on two sites' detectors):"]
    for site, m in sorted(marks.items(), key=lambda kv: str(kv[0])):
        m = m if isinstance(m, Mapping) else {}
        at = m.get("recorded_ns", m.get("at_ns"))
        when = (datetime.datetime.fromtimestamp(at / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
                if isinstance(at, int) and not isinstance(at, bool) and 0 <= at < 2**62 else "unknown time")
        reason = str(m.get("reason") or "")
        lines.append(f"  {site}: {m.get('verdict')} at {when}" + (f": {reason}" if reason else ""))
    return lines


def evidence_lines(e: Mapping[str, Any]) -> list[str]:
    """What this site saw of the snapshot (``e["here"]``) as lines, after the opinions table.

    Args:
        e: the evidence document (``{volume, seq, verdict, opinions, suspect_before_first?, here: {site, verdict, score,
            baseline, cumulative, base_seq, first_suspect_seq, restore_seq, reasons, signals,
            blocks: [{index, ...}], ransom_notes: [{index, patterns}], cpu_s, judged_at_ns}}``).
    Returns:
        The lines (no trailing newline); one line saying so when this site has not judged it.
    """
    here = e.get("here")
    if not here:
        return ["this site has not judged it (no evidence file here): ask another site with --admin"]
    base = here.get("base_seq")
    lines = [f"here ({here.get('site')}): {here.get('verdict')}, "
             + ("first snapshot (clean by definition)" if base is None else f"judged against #{base}"),
             f"  relative score {percent(here.get('score', 0))} (baseline {percent(here.get('baseline', 0))}, "
             f"cumulative {percent(here.get('cumulative', 0))}), not the primary's commit-time screen"]
    marks = []
    if here.get("first_suspect_seq") is not None:
        before = [x for x in e.get("suspect_before_first") or () if isinstance(x, int)]
        marks.append(f"first suspicious #{here['first_suspect_seq']}" + (
            f" by this site's signals of #{e.get('seq')} (the cluster already calls "
            f"{', '.join(f'#{x}' for x in before)} before it suspect: the incident began at #{min(before)} "
            f"or earlier)" if before else ""))
    if here.get("restore_seq") is not None:
        marks.append(f"restore point #{here['restore_seq']}")
    if marks:
        lines.append("  " + "; ".join(marks))
    slow = here.get("slow")
    if isinstance(slow, Mapping):
        for name in ("relative", "conservation", "coverage", "wipes"):
            w = slow.get(name)
            if not isinstance(w, Mapping):
                continue
            began = w.get("began")
            lines.append(f"  slow window {name} (after #{slow.get('anchor')}, the last confirmed or first snapshot): "
                         f"{percent(w.get('total', 0))} "
                         f"of max {percent(w.get('max', 0))}"
                         + ("" if began is None else f", began at #{began} ("
                            + (_counted(w.get('count'), "distinct block") if name in ("coverage", "wipes")
                               else _counted(w.get('snapshots'), "snapshot")) + ")")
                         + (", FLAGGED" if w.get("flagged") else ""))
    reasons = here.get("reasons") or []
    if reasons:
        lines.append("  reasons:")
        lines.extend(f"    - {printable(r)}" for r in reasons)
    signals = here.get("signals") or {}
    if signals:
        lines.append("  signals:")
        lines.extend(map_lines(signals, 4))
    renamed = here.get("renamed")
    if isinstance(renamed, Mapping) and renamed.get("names"):
        lines.append(f"  renamed: {renamed.get('names')} file names got a new extension (appended, or replacing a document's; most: "
                     f".{printable(renamed.get('extension'))}; e.g. "
                     + ", ".join(printable(n) for n in renamed.get("examples") or []) + ")")
    notes = here.get("ransom_notes") or []
    if notes:
        lines.append(f"  ransom notes in {len(notes)} block(s):")
        for n in notes[:BLOCK_GROUPS_MAX]:
            lines.append(f"    block {n.get('index')}: " + ", ".join(str(p) for p in n.get("patterns") or []))
        if len(notes) > BLOCK_GROUPS_MAX:
            lines.append(f"    … ({len(notes) - BLOCK_GROUPS_MAX} more)")
    blocks = here.get("blocks") or []
    if blocks:
        lines.append(f"  {len(blocks)} block(s) in the evidence: "
                     + block_ranges(b.get("index") for b in blocks if isinstance(b, Mapping))
                     + " (--json for their statistics)")
    judged = here.get("judged_at_ns")
    if isinstance(judged, int) and not isinstance(judged, bool) and judged > 0:
        at = datetime.datetime.fromtimestamp(judged / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        cpu = here.get("cpu_s")
        lines.append(f"  judged {at}" + (f" in {cpu:.2f} CPU-s" if isinstance(cpu, (int, float)) else ""))
    return lines
