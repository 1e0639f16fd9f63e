"""The retry delays of :mod:`replicad.core.backoff`: exponential, capped, jittered, reset."""

from __future__ import annotations

import random

import pytest

from replicad.core.backoff import Backoff


def test_delays_double_within_their_jitter_band_and_are_capped() -> None:
    b = Backoff(base_s=0.5, max_s=8.0, rng=random.Random(7))
    delays = [b.failed() for _ in range(10)]
    for n, d in enumerate(delays, start=1):
        bound = min(8.0, 0.5 * 2 ** (n - 1))
        assert bound / 2 <= d <= bound
    # equal jitter: each lower bound is the previous upper bound, so delays never shrink
    uncapped = delays[:5]  # bounds 0.5 .. 8: below the cap
    assert all(later >= earlier for earlier, later in zip(uncapped, uncapped[1:]))
    assert max(delays) <= 8.0 and b.failures == 10


def test_success_resets_and_jitter_spreads_equal_failures() -> None:
    b = Backoff(base_s=1.0, max_s=60.0, rng=random.Random(1))
    for _ in range(5):
        b.failed()
    b.succeeded()
    assert b.failures == 0 and b.delay_s == 0.0
    assert 0.5 <= b.failed() <= 1.0
    spread = {round(Backoff(1.0, 60.0, random.Random(seed)).failed(), 6) for seed in range(20)}
    assert len(spread) > 10  # sites failing together do not retry together


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(base_s=0.0)
    with pytest.raises(ValueError):
        Backoff(base_s=5.0, max_s=1.0)
