"""The local retention floor of one site. Pure: the clock comes in as ``now_ns``.

Raft agrees on each volume's retention policy (:mod:`replicad.core.retention`); the floor
is each site's *own* rule, read from its own config (``[floor]``), measured with its own
clock and enforced on its own prune and GC whatever Raft says. Raft's policy may be
stricter than the floor, never weaker: a record the floor protects is not forgotten here
even when the cluster state no longer lists it.

Rules, applied to the site's local records of one volume (:class:`FloorRecord`):

* **lock** — every record, whatever its state, whose time is less than ``lock_s`` before
  ``now_ns`` (or after it) is protected;
* **daily / weekly / monthly** — for each of the last ``daily`` UTC calendar days, the last
  ``weekly`` ISO weeks (Monday 00:00 UTC to Sunday) and the last ``monthly`` UTC calendar
  months, the current one included, the *oldest* ``committed`` record whose time falls
  in that bucket is protected.

A record's time is ``max(created_at_ns, stored_at_ns)``: ``created_at_ns`` comes from the
manifest (the primary's clock), ``stored_at_ns`` is this site's clock when the record was
first written here. Taking the later of the two means a peer's timestamp can make a record
look *younger* (kept longer: a quota matter) but never older than the moment this site
stored it, so a forged ``created_at_ns = 0`` does not make a fresh record deletable.

Calendar buckets as in Proxmox Backup Server's ``keep-daily``/``keep-weekly``/``keep-monthly``
(https://pbs.proxmox.com/docs/maintenance.html: ISO weeks from Monday, one backup per
bucket) and restic's ``forget --keep-weekly``, with two deliberate differences:

* the horizon is calendar time back from ``now_ns`` (the last N weeks), not "the last N
  buckets that hold a snapshot": a flood of new snapshots cannot push old buckets out;
* the **oldest** record of a bucket is kept, where PBS and restic keep the newest. The
  keeper of a bucket is then fixed by its first snapshot and never moves as newer
  snapshots arrive, so adding records never unprotects one (tested), and for a long dwell
  time the earlier point of the week is the better candidate to predate the intrusion.

Default floor (:data:`DEFAULT_FLOOR`) and why: ``lock = 7 days``, ``daily = 35``,
``weekly = 13``, ``monthly = 12``.

* The HSE Ireland attack of 2021 sat in the network from 18 March to the encryption on
  14 May: about eight weeks (HSE "Conti cyber attack on the HSE", PwC post-incident
  review, December 2021). 13 weekly buckets (a quarter, 91 days) reach a clean point
  eight weeks back with five weeks left to detect, investigate and choose it; 12 monthly
  buckets cover the long tail (dwell times of several months are reported) and a year of
  history for the audit.
* 35 daily buckets outlast the default Raft policy (1 day of everything, hourly to 8 days,
  daily to 38 days) nearly to its end, so a shortened Raft policy still leaves one restore
  point per day for five weeks.
* The lock keeps *every* snapshot for a week: the finest restore points just before an
  encryption stay through a weekend or a holiday of slow response. It is not longer
  because it keeps every interval's snapshot (60 480 records per volume per week at the
  10-s default interval) and every version of every rewritten block.

Hard minimum: a floor whose lock is below :data:`MIN_LOCK_S` (1 day, the default Raft
lock) is refused by the config unless ``unsafe_allow_short_floor = true`` (labs, tests).
"""

from __future__ import annotations

from dataclasses import dataclass

SECOND_NS = 1_000_000_000
DAY_NS = 86_400 * SECOND_NS
WEEK_NS = 7 * DAY_NS

MIN_LOCK_S = 86_400
"""Smallest lock a production floor may have (seconds): one day, the default Raft lock."""

REASONS = ("lock", "daily", "weekly", "monthly")
"""The reasons :func:`protected` gives, in this order."""

RecordKey = tuple[int, int]
"""``(epoch, seq)``: a record of one volume (a divergent branch shares seqs with newer epochs)."""


@dataclass(frozen=True)
class FloorPolicy:
    """One site's floor (its own ``[floor]`` config table, never Raft).

    Attributes:
        lock_s: no record younger than this (seconds, >= 0) is ever deleted here.
        daily: keep the oldest committed record of each of the last ``daily`` UTC days (>= 0).
        weekly: same for the last ``weekly`` ISO weeks, Monday 00:00 UTC to Sunday (>= 0).
        monthly: same for the last ``monthly`` UTC calendar months (>= 0).

    Raises:
        ValueError: a negative or non-finite value.
    """

    lock_s: float = 7 * 86_400.0
    daily: int = 35
    weekly: int = 13
    monthly: int = 12

    def __post_init__(self) -> None:
        if not (self.lock_s >= 0 and self.lock_s != float("inf")):
            raise ValueError(f"floor lock_s must be a finite number >= 0, got {self.lock_s!r}")
        for name in ("daily", "weekly", "monthly"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"floor {name} must be an integer >= 0, got {value!r}")


DEFAULT_FLOOR = FloorPolicy()


@dataclass(frozen=True)
class FloorRecord:
    """What the floor needs of one local catalog record of a volume.

    Attributes:
        epoch, seq: the record's key within its volume.
        created_at_ns: manifest time (the producing primary's clock), ns since the epoch.
        state: ``local`` | ``received`` | ``committed`` | ``divergent``.
        root: manifest root digest (carried for reporting; not used by the rules).
        stored_at_ns: this site's clock when it first wrote the record, or None if unknown.
    """

    epoch: int
    seq: int
    created_at_ns: int
    state: str
    root: bytes = b""
    stored_at_ns: int | None = None

    @property
    def key(self) -> RecordKey:
        return (self.epoch, self.seq)

    @property
    def time_ns(self) -> int:
        """The time the floor measures: the later of manifest time and local store time."""
        if self.stored_at_ns is None:
            return self.created_at_ns
        return max(self.created_at_ns, self.stored_at_ns)


def day_index(t_ns: int) -> int:
    """UTC calendar day of ``t_ns`` as days since 1970-01-01 (floor division: negative before)."""
    return t_ns // DAY_NS


def week_index(t_ns: int) -> int:
    """ISO week (Monday 00:00 UTC start) of ``t_ns``, numbered from the week of 1970-01-05.

    1970-01-01 was a Thursday, so day ``d`` belongs to week ``(d + 3) // 7``.
    """
    return (day_index(t_ns) + 3) // 7


def month_index(t_ns: int) -> int:
    """UTC calendar month of ``t_ns`` as ``year * 12 + (month - 1)`` (proleptic Gregorian).

    Integer civil-from-days conversion (H. Hinnant, "chrono-Compatible Low-Level Date
    Algorithms", ``civil_from_days``), valid for any integer day, so no ``datetime`` range
    error can be raised by a forged timestamp.
    """
    z = day_index(t_ns) + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    year = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    if month <= 2:
        year += 1
    return year * 12 + (month - 1)


_BUCKETS = (("daily", day_index), ("weekly", week_index), ("monthly", month_index))


def protected(records: list[FloorRecord] | tuple[FloorRecord, ...], policy: FloorPolicy,
              now_ns: int) -> dict[RecordKey, tuple[str, ...]]:
    """The records of one volume that the floor protects at ``now_ns``, with the reasons.

    Args:
        records: every local record of the volume (any state, any order). Keys must be
            unique (the catalog's primary key guarantees it).
        policy: this site's floor.
        now_ns: this site's clock, nanoseconds since the epoch.

    Returns:
        ``{(epoch, seq): reasons}``, ``reasons`` a non-empty tuple drawn from
        :data:`REASONS` in that order. Records absent from the dict are not protected by
        the floor (Raft's policy and the state machine's own rules still apply).

    Raises:
        ValueError: two records share a key.
    """
    reasons: dict[RecordKey, list[str]] = {}
    seen: set[RecordKey] = set()
    lock_ns = int(policy.lock_s * SECOND_NS)
    for rec in records:
        if rec.key in seen:
            raise ValueError(f"two records share epoch {rec.epoch} seq {rec.seq}")
        seen.add(rec.key)
        if now_ns - rec.time_ns < lock_ns:
            reasons.setdefault(rec.key, []).append("lock")
    committed = [r for r in records if r.state == "committed"]
    for reason, index in _BUCKETS:
        count = getattr(policy, reason)
        if count <= 0:
            continue
        first = index(now_ns) - (count - 1)
        oldest: dict[int, FloorRecord] = {}
        for rec in committed:
            bucket = index(rec.time_ns)
            if bucket < first:
                continue
            best = oldest.get(bucket)
            if best is None or _order(rec) < _order(best):
                oldest[bucket] = rec
        for rec in oldest.values():
            reasons.setdefault(rec.key, []).append(reason)
    return {key: tuple(sorted(found, key=REASONS.index)) for key, found in reasons.items()}


def _order(rec: FloorRecord) -> tuple[int, int, int, bytes]:
    return (rec.time_ns, rec.epoch, rec.seq, rec.root)


def weaker_than_floor(policy: dict, floor: FloorPolicy) -> list[str]:
    """How a Raft retention policy is weaker than this site's floor (empty: it is not).

    Compares horizons only: what Raft keeps everything for (``max(keep_all_s, lock_s)``)
    against the floor's lock, and how far back Raft keeps at least one snapshot per day
    (``keep_all_s + hourly_s + daily_s``, the cumulative windows of
    :func:`replicad.core.retention.plan_prune`) against the floor's daily, weekly and
    monthly horizons (a week as 7 days, a month as 31). Even a policy that is not weaker
    may keep a different snapshot of a bucket than the floor; the floor then refuses that
    prune here, which is expected and logged by the site.

    Args:
        policy: ``{"keep_all_s", "hourly_s", "daily_s", "lock_s"}`` in seconds.
        floor: this site's floor.

    Returns:
        One sentence per weaker rule, e.g. ``"lock: Raft keeps every snapshot 1d, the floor 7d"``.

    Raises:
        KeyError: a policy key is missing.
    """
    problems: list[str] = []
    keep_every_s = max(policy["keep_all_s"], policy["lock_s"])
    if keep_every_s < floor.lock_s:
        problems.append(f"lock: Raft keeps every snapshot {_days(keep_every_s)}, the floor {_days(floor.lock_s)}")
    per_day_s = policy["keep_all_s"] + policy["hourly_s"] + policy["daily_s"]
    for reason, count, unit_s in (("daily", floor.daily, 86_400), ("weekly", floor.weekly, 7 * 86_400),
                                  ("monthly", floor.monthly, 31 * 86_400)):
        if count > 0 and per_day_s < count * unit_s:
            problems.append(f"{reason}: Raft keeps history {_days(per_day_s)}, the floor one per "
                            f"{reason[:-2] if reason != 'daily' else 'day'} for {_days(count * unit_s)}")
    return problems


def shorter_than(policy: dict, default: dict) -> list[str]:
    """The keys of Raft retention ``policy`` shorter than in ``default`` (the retention a volume
    is registered with, :data:`replicad.core.state.DEFAULT_RETENTION`), in ``default``'s order;
    empty when ``policy`` keeps at least as long as the shipped default on every key.

    Why: the default floor keeps more than the default Raft policy on purpose (a 7-day lock, one
    snapshot per ISO week for 13 weeks and per month for 12 months, against a grid of 38 days
    that has no weekly or monthly tier: matching it would keep a daily snapshot for a year at
    every site). :func:`weaker_than_floor` is then a fact of the design, not news; it is news
    (a WARNING at the site) only once the cluster's policy was shortened below the default.

    Raises:
        KeyError: a key of ``default`` is missing from ``policy``.
    """
    return [key for key in default if policy[key] < default[key]]


def _days(seconds: float) -> str:
    days = seconds / 86_400
    return f"{days:g}d" if days >= 1 else f"{seconds:g}s"
