"""The default settings never reach a bound on snapshot records (review R10, F2 (b)): a volume
snapshotted at the default interval under the default retention, pruned every housekeeping tick,
keeps fewer records than ``state.SNAPSHOTS_MAX`` at steady state; and no bound counts records
across volumes, so a site with its whole volume quota busy is bounded per volume alone."""

from __future__ import annotations

import pytest

from replicad.config import RetentionConfig, VolumeConfig
from replicad.core import state as st
from replicad.core.retention import plan_prune
from replicad.site.housekeeping import RETENTION_TICK_S

S = 1_000_000_000


def steady_records(interval_s: float, policy: dict, now_ns: int) -> int:
    """Records of one volume at ``now_ns``: every snapshot taken each ``interval_s`` since before
    the oldest window, minus what the retention plan prunes, plus what one housekeeping tick adds
    before the next prune."""
    span_s = policy["keep_all_s"] + policy["hourly_s"] + policy["daily_s"] + 2 * 86400
    step = int(interval_s * S)
    first = now_ns - span_s * S
    snaps = {i + 1: {"created_at_ns": first + i * step, "verdict": "clean"} for i in range((span_s * S) // step)}
    kept = len(snaps) - len(plan_prune(snaps, policy, now_ns, set()))
    return kept + int(RETENTION_TICK_S // interval_s) + 1


@pytest.mark.parametrize("phase_s", [0, 1800, 43_200 + 59])
def test_the_default_settings_keep_fewer_records_than_the_per_volume_bound(phase_s: int) -> None:
    interval_s = VolumeConfig.model_fields["interval_s"].default
    retention = RetentionConfig()
    policy = {"keep_all_s": int(retention.keep_all_s), "hourly_s": int(retention.hourly_s),
              "daily_s": int(retention.daily_s), "lock_s": int(retention.lock_s)}
    assert policy == st.DEFAULT_RETENTION and interval_s == 10.0
    now_ns = 1_800_000_000 * S + phase_s * S
    records = steady_records(interval_s, policy, now_ns)
    assert 8_800 < records < st.SNAPSHOTS_MAX, records  # ~8,850: 8,640 of the last day, 168 hourly, 30 daily
    # the whole per-site volume quota at the defaults is bounded by the per-volume bound alone
    assert st.VOLUMES_PER_SITE_MAX * records < st.SITE_RECORDS_BOUND
    assert records * st.stats_bytes({"total_blocks": 192, "zero_blocks": 62, "changed_blocks": 10,
                                     "changed_bytes": 655360, "random_changed_blocks": 0, "new_chunks": 11,
                                     "has_parent": 1, st.TAINT_STAT: 41}) < st.SNAPSHOTS_MAX * st.STATS_BYTES_PER_RECORD
