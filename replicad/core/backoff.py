"""Exponential backoff with jitter: how long a failing step waits before it is tried again.

Pure (randomness comes in as a ``random.Random``; no clock): the site rooms keep one
:class:`Backoff` per retried step, ask :meth:`Backoff.failed` for the delay after a failure
and call :meth:`Backoff.succeeded` when the step works again.

The delay after the n-th consecutive failure (n >= 1) is drawn uniformly from
``[d/2, d]`` with ``d = min(max_s, base_s * 2**(n-1))`` ("equal jitter"): half of it is
certain, so a step that keeps failing slows down for sure (each delay's lower bound is the
previous delay's upper bound), and the random half spreads the retries of several sites
or volumes that failed together. Why not a fixed tick: a resync that failed on every 0.5 s
tick (and on every Raft wake-up in between, ~12 a second) wrote ~340 log lines in 30 s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """The retry state of one step.

    Args:
        base_s: delay bound after the first failure, seconds (> 0).
        max_s: cap of the delay bound, seconds (>= base_s).
        rng: the source of jitter (seed it in tests).

    ``failures`` counts consecutive failures; ``delay_s`` is the last delay drawn (0 when
    the step last succeeded).
    """

    base_s: float = 1.0
    max_s: float = 300.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.max_s >= self.base_s):
            raise ValueError(f"backoff needs 0 < base_s <= max_s (got {self.base_s}, {self.max_s})")

    def bound_s(self, failures: int) -> float:
        """Upper bound of the delay after ``failures`` consecutive failures (0 for none)."""
        if failures <= 0:
            return 0.0
        return min(self.max_s, self.base_s * 2.0 ** min(failures - 1, 62))

    def failed(self) -> float:
        """Record one more failure; return the delay (seconds) to wait before the next try."""
        self.failures += 1
        bound = self.bound_s(self.failures)
        self.delay_s = bound / 2 + self.rng.uniform(0.0, bound / 2)
        return self.delay_s

    def succeeded(self) -> None:
        """The step worked: the next failure starts again from ``base_s``."""
        self.failures = 0
        self.delay_s = 0.0
