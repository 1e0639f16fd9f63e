"""Ransomware signal: does a snapshot turn far more of the volume random than usual?

Pure functions: values in, values out.

Per block (:func:`looks_random`), applied by the scan to *changed* blocks only: lz4 first
(cheap), then byte entropy only for blocks lz4 does not shrink. Field measurements: lz4 alone
flags ~5 % of normal filesystem blocks; byte entropy > 7.9 bits/byte flags ~0.3 % of them but
costs more than lz4, hence the order.

Per snapshot (:func:`judge`)::

    score    = random_changed_blocks / max(1, total_blocks - zero_blocks)
    baseline = median score of the last ``window`` clean, incremental snapshots (history)
    suspect  iff score > max(min_score, factor * baseline)

``score`` is the share of the volume's data that newly became random-looking. Archives,
JPEG/DICOM images and compressed backups look random too: a PACS volume legitimately gains
random blocks every snapshot, so it is judged against its own baseline, never a global one.

Choices:

* **The first snapshot of a volume (no parent) is clean by definition.** Every block of it
  is "changed", so it says nothing about change; it only establishes the data the baseline
  is measured against, so it must be taken of known-good data. Full snapshots are recognised by
  ``stats["has_parent"] == 0`` (written by the scan); a stats dict without that key is
  treated as incremental, the conservative side (an encrypted volume must not slip through
  as "first").
* Full snapshots in ``history`` are skipped for the same reason. The scan therefore does not
  run the per-block test on a full snapshot (its ``random_changed_blocks`` is 0).
* With no usable history the baseline is 0, so the threshold is ``min_score`` (2 % of the
  volume's data turning random in one snapshot).
* Only clean snapshots feed the baseline (the caller's history), so a legitimate jump stays
  ``suspect`` until an operator clears it; the baseline never learns from an attack.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

try:  # numpy is optional: 64 KiB bincount ~50 µs; the fallback uses bytes.count per value
    import numpy as _np
except ImportError:  # pragma: no cover - exercised only where numpy is absent
    _np = None

RANDOM_LZ4_RATIO_MIN = 0.98
RANDOM_ENTROPY_BITS_MIN = 7.9
VERDICT_CLEAN = "clean"
VERDICT_SUSPECT = "suspect"


@dataclass(frozen=True)
class Verdict:
    """Anomaly verdict of one snapshot.

    Attributes:
        verdict: "clean" or "suspect".
        score: share of the volume's non-zero blocks that newly became random-looking (0..1).
        baseline: median score of the clean incremental history (0 if none).
        reason: one operator-readable sentence.
    """

    verdict: str
    score: float
    baseline: float
    reason: str


def byte_entropy_bits(raw: bytes) -> float:
    """Shannon entropy of the byte histogram of ``raw``, in bits per byte (0..8); 0 if empty."""
    n = len(raw)
    if n == 0:
        return 0.0
    if _np is not None:
        counts = _np.bincount(_np.frombuffer(raw, dtype=_np.uint8), minlength=256)
        p = counts[counts > 0] / n
        return float(-(p * _np.log2(p)).sum())
    total = 0.0
    for value in range(256):
        c = raw.count(value)
        if c:
            p = c / n
            total -= p * math.log2(p)
    return total


def looks_random(raw: bytes, encoded_len: int) -> bool:
    """True iff a block looks like ciphertext: lz4 does not shrink it
    (``encoded_len / len(raw) > 0.98``, ``encoded_len`` being the size
    :func:`replicad.storage.chunkstore.encode_chunk` produced) AND its byte entropy is above
    7.9 bits/byte. Empty blocks are not random."""
    if not raw:
        return False
    if encoded_len / len(raw) <= RANDOM_LZ4_RATIO_MIN:
        return False
    return byte_entropy_bits(raw) > RANDOM_ENTROPY_BITS_MIN


def score_of(stats: dict) -> float:
    """``random_changed_blocks / max(1, total_blocks - zero_blocks)`` of a stats dict."""
    data_blocks = int(stats.get("total_blocks", 0)) - int(stats.get("zero_blocks", 0))
    return int(stats.get("random_changed_blocks", 0)) / max(1, data_blocks)


def is_full(stats: dict) -> bool:
    """True for the stats of a snapshot taken without a parent (``has_parent == 0``)."""
    return stats.get("has_parent", 1) == 0


def judge(stats: dict, history: Sequence[dict], *, min_score: float = 0.02,
          factor: float = 4.0, window: int = 64) -> Verdict:
    """Judge a snapshot from its scan stats against the volume's own history.

    Args:
        stats: the snapshot's ``manifest.stats``.
        history: stats of previous CLEAN snapshots of the same volume, newest last; only the
            last ``window`` incremental ones count (``window <= 0``: no baseline).
        min_score: floor of the threshold (share of data blocks).
        factor: how many times the baseline a score may reach before being suspect.

    Returns:
        a :class:`Verdict`; see the module docstring for the rules.
    """
    score = score_of(stats)
    incremental = [score_of(h) for h in history if not is_full(h)]
    incremental = incremental[len(incremental) - window:] if window > 0 else []
    baseline = statistics.median(incremental) if incremental else 0.0
    if is_full(stats):
        return Verdict(VERDICT_CLEAN, score, baseline,
                       "first snapshot of the volume: it establishes the baseline")
    threshold = max(min_score, factor * baseline)
    if score > threshold:
        return Verdict(VERDICT_SUSPECT, score, baseline,
                       f"{score:.1%} of the volume's data newly looks random, above the "
                       f"threshold {threshold:.1%} (max of {min_score:.1%} and {factor:g} x "
                       f"baseline {baseline:.1%})")
    return Verdict(VERDICT_CLEAN, score, baseline,
                   f"{score:.1%} of the volume's data newly looks random, within the threshold "
                   f"{threshold:.1%}")
