"""The local retention floor (replicad.core.floor): calendar helpers, rules, properties."""

from __future__ import annotations

import calendar
import datetime as dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.core import floor
from replicad.core.floor import DAY_NS, DEFAULT_FLOOR, FloorPolicy, FloorRecord, protected, weaker_than_floor

# Wednesday 2027-01-13 12:00 UTC
NOW_NS = calendar.timegm((2027, 1, 13, 12, 0, 0)) * 10**9
HOUR_NS = 3600 * 10**9


def at(y: int, m: int, d: int, h: int = 0) -> int:
    return calendar.timegm((y, m, d, h, 0, 0)) * 10**9


def rec(seq: int, t_ns: int, *, state: str = "committed", epoch: int = 1, stored: int | None = None) -> FloorRecord:
    return FloorRecord(epoch=epoch, seq=seq, created_at_ns=t_ns, state=state, root=seq.to_bytes(32, "big"),
                       stored_at_ns=stored)


# ----------------------------------------------------------------------------- calendar

@given(st.integers(min_value=-(10**19), max_value=10**20))
def test_month_and_week_index_match_the_calendar(t_ns: int) -> None:
    seconds = t_ns // 10**9
    if not -62_135_596_800 <= seconds < 253_402_300_800:    # datetime's range: years 1..9999
        floor.month_index(t_ns)                           # still defined, never raises
        return
    d = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=seconds)
    assert floor.month_index(t_ns) == d.year * 12 + d.month - 1
    monday = (d - dt.timedelta(days=d.weekday())).date()
    assert floor.week_index(t_ns) == ((monday - dt.date(1970, 1, 5)).days // 7) + 1


def test_weeks_start_on_monday_utc() -> None:
    assert floor.week_index(at(2027, 1, 10, 23)) + 1 == floor.week_index(at(2027, 1, 11))  # Sunday -> Monday
    assert floor.week_index(at(2027, 1, 11)) == floor.week_index(at(2027, 1, 17, 23))


# ----------------------------------------------------------------------------- rules

def test_lock_protects_every_state_and_the_future() -> None:
    recs = [rec(1, NOW_NS - 6 * DAY_NS, state=s, epoch=i) for i, s in
            enumerate(("local", "received", "committed", "divergent"))]
    recs.append(rec(9, NOW_NS + 365 * DAY_NS, state="received"))
    got = protected(recs, FloorPolicy(lock_s=7 * 86400, daily=0, weekly=0, monthly=0), NOW_NS)
    assert got == {r.key: ("lock",) for r in recs}
    assert protected([rec(1, NOW_NS - 7 * DAY_NS)], FloorPolicy(lock_s=7 * 86400, daily=0, weekly=0, monthly=0),
                     NOW_NS) == {}


def test_oldest_committed_of_each_week_inside_the_horizon() -> None:
    policy = FloorPolicy(lock_s=0, daily=0, weekly=2, monthly=0)
    recs = [
        rec(1, at(2026, 12, 28, 1)),                 # Monday of the previous week: oldest there
        rec(2, at(2026, 12, 30)),
        rec(3, at(2027, 1, 11, 5), state="received"),  # this week, but not committed
        rec(4, at(2027, 1, 12)),                     # this week's oldest committed
        rec(5, at(2027, 1, 13)),
        rec(6, at(2026, 12, 27)),                    # Sunday three weeks back... outside 2 weeks
    ]
    assert protected(recs, policy, NOW_NS) == {(1, 4): ("weekly",)}
    policy = FloorPolicy(lock_s=0, daily=0, weekly=3, monthly=0)
    assert protected(recs, policy, NOW_NS) == {(1, 4): ("weekly",), (1, 1): ("weekly",)}


def test_reasons_are_combined_and_ordered() -> None:
    r = rec(1, NOW_NS - HOUR_NS)
    assert protected([r], DEFAULT_FLOOR, NOW_NS) == {(1, 1): ("lock", "daily", "weekly", "monthly")}


def test_monthly_buckets_reach_back_calendar_months() -> None:
    recs = [rec(i, at(2026, month, 15)) for i, month in enumerate(range(1, 13), start=1)]
    got = protected(recs, FloorPolicy(lock_s=0, daily=0, weekly=0, monthly=3), NOW_NS)
    # January 2027 (empty), December and November 2026
    assert got == {(1, 12): ("monthly",), (1, 11): ("monthly",)}


def test_forged_old_timestamp_does_not_age_a_fresh_record() -> None:
    forged = rec(5, 0, stored=NOW_NS - HOUR_NS)
    assert forged.time_ns == NOW_NS - HOUR_NS
    assert "lock" in protected([forged], DEFAULT_FLOOR, NOW_NS)[(1, 5)]


def test_duplicate_keys_and_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        protected([rec(1, NOW_NS), rec(1, NOW_NS - 1)], DEFAULT_FLOOR, NOW_NS)
    for bad in (dict(lock_s=-1), dict(lock_s=float("nan")), dict(lock_s=float("inf")), dict(weekly=-1),
                dict(monthly=1.5), dict(daily=True)):
        with pytest.raises(ValueError):
            FloorPolicy(**bad)


def test_default_floor_reaches_past_a_long_dwell_time() -> None:
    # one committed snapshot per hour for 400 days; eight weeks before now must still be covered
    recs = [rec(i, NOW_NS - i * HOUR_NS) for i in range(400 * 24)]
    kept = protected(recs, DEFAULT_FLOOR, NOW_NS)
    times = sorted(NOW_NS - seq * HOUR_NS for _, seq in kept)
    assert min(times) <= NOW_NS - 330 * DAY_NS            # ~11 monthly buckets back
    weekly = [NOW_NS - seq * HOUR_NS for (_, seq), why in kept.items() if "weekly" in why]
    assert len(weekly) == 13 and min(weekly) <= NOW_NS - 12 * 7 * DAY_NS
    assert len(kept) < 7 * 24 + 35 + 13 + 12               # the lock keeps every one of a week, then a few


# ----------------------------------------------------------------------------- weaker

def test_weaker_than_floor() -> None:
    default_raft = {"keep_all_s": 86400, "hourly_s": 7 * 86400, "daily_s": 30 * 86400, "lock_s": 86400}
    got = weaker_than_floor(default_raft, DEFAULT_FLOOR)
    assert [p.split(":")[0] for p in got] == ["lock", "weekly", "monthly"]
    strong = {"keep_all_s": 8 * 86400, "hourly_s": 0, "daily_s": 400 * 86400, "lock_s": 86400}
    assert weaker_than_floor(strong, DEFAULT_FLOOR) == []
    assert weaker_than_floor({"keep_all_s": 0, "hourly_s": 0, "daily_s": 0, "lock_s": 0},
                             FloorPolicy(lock_s=0, daily=0, weekly=0, monthly=0)) == []


# ----------------------------------------------------------------------------- properties

STATES = ("local", "received", "committed", "divergent")
policies = st.builds(FloorPolicy, lock_s=st.integers(0, 20 * 86400).map(float), daily=st.integers(0, 40),
                     weekly=st.integers(0, 20), monthly=st.integers(0, 14))
offsets = st.lists(st.tuples(st.integers(-5 * DAY_NS, 500 * DAY_NS), st.sampled_from(STATES),
                             st.none() | st.integers(-DAY_NS, 10 * DAY_NS)), max_size=60)


def build(items) -> list[FloorRecord]:
    return [rec(i, NOW_NS - age, state=state, stored=None if late is None else NOW_NS - age + late)
            for i, (age, state, late) in enumerate(items, start=1)]


@settings(max_examples=200, deadline=None)
@given(policies, offsets, st.randoms())
def test_deterministic_whatever_the_order(policy: FloorPolicy, items, rnd: random.Random) -> None:
    recs = build(items)
    shuffled = list(recs)
    rnd.shuffle(shuffled)
    assert protected(recs, policy, NOW_NS) == protected(shuffled, policy, NOW_NS)


@settings(max_examples=200, deadline=None)
@given(policies, offsets)
def test_nothing_younger_than_the_lock_is_unprotected(policy: FloorPolicy, items) -> None:
    recs = build(items)
    got = protected(recs, policy, NOW_NS)
    for r in recs:
        young = NOW_NS - r.time_ns < policy.lock_s * 10**9
        assert young == ("lock" in got.get(r.key, ()))


@settings(max_examples=200, deadline=None)
@given(policies, offsets)
def test_every_bucket_inside_the_horizon_keeps_exactly_one(policy: FloorPolicy, items) -> None:
    recs = build(items)
    got = protected(recs, policy, NOW_NS)
    for reason, index in (("daily", floor.day_index), ("weekly", floor.week_index),
                          ("monthly", floor.month_index)):
        count = getattr(policy, reason)
        buckets: dict[int, list[FloorRecord]] = {}
        for r in recs:
            if count > 0 and r.state == "committed" and index(r.time_ns) > index(NOW_NS) - count:
                buckets.setdefault(index(r.time_ns), []).append(r)
        kept = [r for r in recs if reason in got.get(r.key, ())]
        assert sorted(index(r.time_ns) for r in kept) == sorted(buckets)
        for r in kept:
            assert r.state == "committed"
            assert r.time_ns == min(x.time_ns for x in buckets[index(r.time_ns)])


@settings(max_examples=200, deadline=None)
@given(policies, offsets, st.lists(st.tuples(st.integers(0, 30 * DAY_NS), st.sampled_from(STATES)), max_size=20))
def test_adding_newer_records_never_unprotects_one(policy: FloorPolicy, items, newer) -> None:
    recs = build(items)
    before = protected(recs, policy, NOW_NS)
    newest = max((r.time_ns for r in recs), default=NOW_NS - 600 * DAY_NS)
    t = newest
    for i, (step, state) in enumerate(newer, start=len(recs) + 1):
        t += step
        recs.append(rec(i, t, state=state))
        after = protected(recs, policy, NOW_NS)
        for key, why in before.items():
            assert set(why) <= set(after.get(key, ()))
        before = after


def test_the_default_raft_policy_is_weaker_than_the_default_floor_only_by_design() -> None:
    """The shipped defaults differ on purpose (the floor's weekly and monthly tiers): a site
    logs that at INFO; a WARNING needs a policy shortened below the default (housekeeping)."""
    from replicad.config import RetentionConfig
    from replicad.core.floor import shorter_than
    from replicad.core.state import DEFAULT_RETENTION

    shipped = RetentionConfig().model_dump()
    assert {k: shipped[k] for k in DEFAULT_RETENTION} == DEFAULT_RETENTION  # one default, two places
    assert weaker_than_floor(DEFAULT_RETENTION, DEFAULT_FLOOR) and shorter_than(DEFAULT_RETENTION, DEFAULT_RETENTION) == []
    assert shorter_than({**DEFAULT_RETENTION, "lock_s": 3600, "daily_s": 7 * 86400}, DEFAULT_RETENTION) == [
        "daily_s", "lock_s"]
    assert shorter_than({k: v * 2 for k, v in DEFAULT_RETENTION.items()}, DEFAULT_RETENTION) == []
