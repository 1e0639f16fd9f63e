"""The wipe window on the detection benchmark (issue 14; review R7, F4): the daily series of
:mod:`tests.bench.detection` judged as the daemon judges them (``Detection.judge``: the
file-system maps read as soon as a snapshot's zeros could take the wipe window past
``wipe_max``, :func:`replicad.site.detection.wipe_room`), each progress line with the wipe
window's total, and two slow wipers added to the daily series of both corpora (each daily cycle
followed by ``fstrim``, as the others):

* **zeroed**: 25 % of the data files' bytes still holding data zeroed in place per cycle (whole
  files in random order, the last one from the end of its data; the review's demo on a file
  system: every step under ``wipe_max``);
* **0xFF**: the same, overwritten with ``0xFF`` (a fill: neither zeros nor random);
* **deleted**: the same, deleted (whole files; the last one truncated) per cycle (the discards
  zero them; the files' data shrinks by as much).

Run as root, like :mod:`tests.bench.detection` (same options)::

    python -m tests.bench.detection_wipes --no-cluster --only postgres --ops "pgbench -T 8 daily,slow wiper" \\
        --out tests/bench/results/detection-wipes-postgres.md
"""

from __future__ import annotations

import gzip
import os
import random
import sys
import time
from pathlib import Path

from replicad.core import anomaly
from replicad.site.detection import wipe_room
from tests.bench import detection as bench

SLOW_WIPER_SHARE = 0.25
SLOW_WIPER_CYCLES = 6
CLEANUP_SHARE = 0.1
CLEANUP_DAYS = 42


def judge(self: bench.Judge, seq: int, m, base, window: list, carried: dict | None = None) -> bench.Judged:
    """:meth:`tests.bench.detection.Judge.judge` as ``Detection.judge`` does it: the maps are
    read against ``wipe_max`` less what the carried wipe window holds, and the files' data is
    measured against the wipe window's anchor (never confirmed: the series' first snapshot, the
    base of its first judgement, which carries nothing)."""
    if not carried:
        self.anchor_m = base
    anchor = getattr(self, "anchor_m", base)
    t0 = time.process_time()
    signals = self.det._signals(m, base, None, wipe_room(self.policy, carried or {}), anchor=lambda: anchor)
    v = anomaly.judge_relative(seq, signals, window, [], self.policy, carried=carried)
    cpu = time.process_time() - t0
    j = bench.Judged(v.verdict, v.score, signals.changed_blocks, signals.turned_random, "; ".join(v.reasons)[:110],
                     cpu, v.slow)
    if hasattr(j, "destroyed"):  # the bench's wipe measures (zeroed: before discards were told apart)
        j.zeroed = (signals.wiped + getattr(signals, "discarded", 0)) / signals.data_blocks
        j.destroyed = signals.destroyed
    return j


_wipe_line = getattr(bench, "wipe_line", None)


def wipe_line(j: bench.Judged) -> str:
    """The bench's wipe line and the wipe window's total (distinct blocks) after the verdict."""
    w = j.slow.get(anomaly.WIPES)
    return (_wipe_line(j) if _wipe_line else "") + ("" if w is None else f" wipes {w.total():.4f} ({len(w.blocks)} blocks of {w.data}, "
                                                  f"+{w.extra:.4f})")


_daily_ops = bench.daily_ops


def daily_ops(corpus: str) -> dict:
    """The bench's daily series and the two slow wipers (module docstring)."""
    under = "pg/base" if corpus == "postgres" else ""

    def remaining(state: dict, mnt: Path) -> list[Path]:
        if "files" not in state:
            state["files"] = sorted(bench.data_files(mnt, under))
            state["end"] = {p: p.stat().st_size for p in state["files"]}  # data ends here (zeros after)
            state["total"] = sum(state["end"].values())
        return [p for p in state["files"] if p.exists() and state["end"][p] > 0]

    def victims(live: list[Path], state: dict, r: random.Random) -> list[tuple[Path, int]]:
        """``(file, bytes)`` in random order while the bytes stay within SLOW_WIPER_SHARE of the
        bytes left; the last file gives what is left of the share from the end of its data (a
        database's few large relation files would otherwise stop the wiper)."""
        budget = int(SLOW_WIPER_SHARE * sum(state["end"][p] for p in live))
        out = []
        for p in r.sample(live, len(live)):
            if budget <= 0:
                break
            n = min(state["end"][p], budget)
            budget -= n
            out.append((p, n))
        return out

    def left(state: dict) -> float:
        return 1.0 - sum(state["end"].values()) / state["total"]

    def zero(mnt: Path, r: random.Random, day: int, state: dict, how: str = "zero") -> float:
        for p, n in victims(remaining(state, mnt), state, r):
            end = state["end"][p]
            with open(p, "r+b") as f:
                f.seek(end - n)
                f.write(bench.fill_of(how, n))
            state["end"][p] = end - n
        return left(state)

    def fill(mnt: Path, r: random.Random, day: int, state: dict) -> float:
        return zero(mnt, r, day, state, "0xff")

    def delete(mnt: Path, r: random.Random, day: int, state: dict) -> float:
        for p, n in victims(remaining(state, mnt), state, r):
            if n == state["end"][p]:
                p.unlink()
            else:
                os.truncate(p, state["end"][p] - n)
            state["end"][p] -= n
        return left(state)

    def cleanup_then_rotate(mnt: Path, r: random.Random, day: int, state: dict) -> float:
        """Day 1: a big cleanup, letters deleted (random order) up to CLEANUP_SHARE of the data
        files' bytes; every day: the log rotated with gzip (the bench's daily rotation)."""
        if day == 1:
            files = sorted(bench.data_files(mnt, under))
            budget = CLEANUP_SHARE * sum(p.stat().st_size for p in files)
            letters = [p for p in files if "letters" in p.parts]
            for p in r.sample(letters, len(letters)):
                if budget <= 0:
                    break
                budget -= p.stat().st_size
                p.unlink()
        logs = mnt / "logs"
        log = logs / "pumps.log"
        (logs / f"pumps.log.{day}.gz").write_bytes(gzip.compress(log.read_bytes()))
        log.write_text(bench.log_text(r, 2000))
        (logs / f"pumps.log.{day - 7}.gz").unlink(missing_ok=True)
        return 0.0

    extra = {}
    if corpus == "fileshare":
        extra[f"cleanup ({CLEANUP_SHARE:.0%} of the data files' bytes of letters deleted) on day 1, then log rotation "
              f"with gzip daily for {CLEANUP_DAYS} days, fstrim (wipe window, never confirmed)"] = \
            (False, cleanup_then_rotate, CLEANUP_DAYS)
    if corpus == "postgres":
        busy_db = next(step for label, (_, step, _) in _daily_ops(corpus).items() if "14 days" in label)
        extra["pgbench -T 8 daily, VACUUM FULL weekly, for 35 days, fstrim (wipe window, never confirmed)"] = \
            (False, busy_db, 35)
    return {**_daily_ops(corpus), **extra,
            f"attack: slow wiper, {SLOW_WIPER_SHARE:.0%} of the remaining data bytes zeroed per daily cycle, fstrim":
            (True, zero, SLOW_WIPER_CYCLES),
            f"attack: slow wiper, {SLOW_WIPER_SHARE:.0%} of the remaining data bytes overwritten with 0xFF per daily "
            "cycle, fstrim": (True, fill, SLOW_WIPER_CYCLES),
            f"attack: slow wiper, {SLOW_WIPER_SHARE:.0%} of the remaining data bytes deleted per daily cycle, fstrim":
            (True, delete, SLOW_WIPER_CYCLES)}


def main(argv: list[str] | None = None) -> int:
    bench.Judge.judge = judge
    bench.wipe_line = wipe_line
    bench.daily_ops = daily_ops
    return bench.main(argv)


if __name__ == "__main__":
    sys.exit(main())
