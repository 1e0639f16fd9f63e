"""Retention planner: grid behaviour and, by property, the rules it never breaks (O4)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.core.retention import DAY_NS, HOUR_NS, SECOND_NS, plan_prune

NOW = 1_700_000_000 * SECOND_NS
POLICY = {"keep_all_s": 3600, "hourly_s": 2 * 86400, "daily_s": 7 * 86400, "lock_s": 600}


def snaps(*ages_ns: int, suspect: set[int] = frozenset()) -> dict[int, dict]:
    """Seq i+1 created ages_ns[i] before NOW."""
    return {i + 1: {"created_at_ns": NOW - age, "verdict": "suspect" if i + 1 in suspect else "clean"}
            for i, age in enumerate(ages_ns)}


def test_empty_catalog():
    assert plan_prune({}, POLICY, NOW, set()) == []


def test_keep_all_window_keeps_everything_recent():
    catalog = snaps(*[m * 60 * SECOND_NS for m in range(59, 0, -1)])
    assert plan_prune(catalog, POLICY, NOW, set()) == []


def test_hourly_then_daily_grid_then_expiry():
    hour_start = (NOW - 5 * HOUR_NS) // HOUR_NS * HOUR_NS
    day_start = (NOW - 4 * DAY_NS) // DAY_NS * DAY_NS
    catalog = {
        1: {"created_at_ns": NOW - 30 * DAY_NS, "verdict": "clean"},  # beyond every window
        2: {"created_at_ns": day_start + HOUR_NS, "verdict": "clean"},  # same day as 3, older
        3: {"created_at_ns": day_start + 2 * HOUR_NS, "verdict": "clean"},
        4: {"created_at_ns": hour_start + 60 * SECOND_NS, "verdict": "clean"},  # same hour as 5, older
        5: {"created_at_ns": hour_start + 120 * SECOND_NS, "verdict": "clean"},
        6: {"created_at_ns": NOW - 60 * SECOND_NS, "verdict": "clean"},
    }
    assert plan_prune(catalog, POLICY, NOW, set()) == [1, 2, 4]
    assert plan_prune(catalog, POLICY, NOW, {1, 4}) == [2]


def test_newest_clean_survives_an_incident():
    catalog = snaps(20 * DAY_NS, 19 * DAY_NS, 30 * 60 * SECOND_NS, suspect={3})
    assert plan_prune(catalog, POLICY, NOW, set()) == [1]


def test_the_newest_confirmed_snapshot_survives_hourly_thinning():
    """A confirmed snapshot anchors the slow windows and the rate they learn: hourly thinning kept
    only the newest of its hour and dropped it; the newest confirmed one is kept, older
    confirmed ones are thinned as before."""
    hour_start = (NOW - 5 * HOUR_NS) // HOUR_NS * HOUR_NS
    catalog = {s: {"created_at_ns": hour_start + s * 60 * SECOND_NS, "verdict": "clean"} for s in range(1, 5)}
    catalog[5] = {"created_at_ns": NOW - 60 * SECOND_NS, "verdict": "clean"}
    catalog[1]["confirmed"] = catalog[2]["confirmed"] = True
    assert plan_prune(catalog, POLICY, NOW, set()) == [1, 3]


timestamps = st.integers(NOW - 40 * DAY_NS, NOW + HOUR_NS)
policies = st.fixed_dictionaries({k: st.integers(0, 10 * 86400) for k in POLICY})


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.integers(1, 500), st.tuples(timestamps, st.sampled_from(["clean", "suspect"])),
                       max_size=60),
       policies, st.sets(st.integers(1, 500), max_size=5))
def test_plan_never_breaks_the_rules(raw, policy, protected):
    catalog = {seq: {"created_at_ns": ts, "verdict": v} for seq, (ts, v) in raw.items()}
    plan = plan_prune(catalog, policy, NOW, protected)
    assert plan == sorted(set(plan)) and set(plan) <= set(catalog)
    keep_ns = max(policy["keep_all_s"], policy["lock_s"]) * SECOND_NS
    for seq in plan:
        assert NOW - catalog[seq]["created_at_ns"] >= keep_ns  # O4: never inside lock/keep-all
        assert seq not in protected
    if catalog:
        assert max(catalog) not in plan
        clean = [s for s, snap in catalog.items() if snap["verdict"] == "clean"]
        if clean:
            assert max(clean) not in plan
