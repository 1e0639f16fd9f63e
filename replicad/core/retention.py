"""Retention planner (DESIGN §7). Pure: the clock comes in as ``now_ns``.

Policy ``{"keep_all_s", "hourly_s", "daily_s", "lock_s"}`` (all seconds), applied to a
volume's committed snapshot catalog ``{seq: {"created_at_ns": int, "verdict": str, ...}}``:

* every snapshot younger than ``keep_all_s`` is kept;
* older than that but younger than ``keep_all_s + hourly_s``: the newest snapshot of each
  UTC hour bucket (``created_at_ns // 3600 s``) is kept;
* older than that but younger than ``keep_all_s + hourly_s + daily_s``: the newest of each
  UTC day bucket (``created_at_ns // 86400 s``) is kept;
* older still: pruned.

Whatever the grid says, the plan never contains (O4) a snapshot younger than ``lock_s``,
a seq in ``protected``, the newest committed snapshot, the newest clean one or the newest one
a person confirmed clean (the slow windows' anchor). This is the
classic grandfather-father-son grid (as in restic ``forget --keep-hourly/--keep-daily``),
expressed as age windows rather than counts so that it does not depend on how often
snapshots are taken. The state machine re-checks the lock and the newest ones
(:func:`replicad.core.state.apply`, op ``prune_snapshots``), so a wrong plan is refused, not
executed.
"""

from __future__ import annotations

HOUR_NS = 3600 * 1_000_000_000
DAY_NS = 24 * HOUR_NS
SECOND_NS = 1_000_000_000


def plan_prune(snapshots: dict[int, dict], policy: dict, now_ns: int, protected: set[int]) -> list[int]:
    """The seqs to prune now, ascending.

    Args:
        snapshots: ``{seq: {"created_at_ns": int, "verdict": "clean"|"suspect", ...}}``.
        policy: ``{"keep_all_s": int, "hourly_s": int, "daily_s": int, "lock_s": int}``.
        now_ns: current time, nanoseconds since the epoch.
        protected: seqs that must be kept whatever their age (pinned, being restored ...).

    Returns:
        Sorted list of seqs that may be pruned.
    """
    if not snapshots:
        return []
    keep_all_ns = policy["keep_all_s"] * SECOND_NS
    hourly_end_ns = keep_all_ns + policy["hourly_s"] * SECOND_NS
    daily_end_ns = hourly_end_ns + policy["daily_s"] * SECOND_NS
    lock_ns = policy["lock_s"] * SECOND_NS

    keep = set(protected)
    keep.add(max(snapshots))
    clean = [seq for seq, snap in snapshots.items() if snap.get("verdict") == "clean"]
    if clean:
        keep.add(max(clean))
    confirmed = [seq for seq, snap in snapshots.items() if snap.get("confirmed")]
    if confirmed:  # the slow windows' anchor and the rate they learned (replicad.site.detection)
        keep.add(max(confirmed))

    newest_in_bucket: dict[tuple[str, int], int] = {}
    for seq, snap in snapshots.items():
        created_ns = snap["created_at_ns"]
        age_ns = now_ns - created_ns
        if age_ns < keep_all_ns or age_ns < lock_ns:  # O4: never inside the lock window
            keep.add(seq)
            continue
        if age_ns < hourly_end_ns:
            bucket = ("hour", created_ns // HOUR_NS)
        elif age_ns < daily_end_ns:
            bucket = ("day", created_ns // DAY_NS)
        else:
            continue
        best = newest_in_bucket.get(bucket)
        if best is None or (created_ns, seq) > (snapshots[best]["created_at_ns"], best):
            newest_in_bucket[bucket] = seq
    keep.update(newest_in_bucket.values())
    return sorted(seq for seq in snapshots if seq not in keep)
