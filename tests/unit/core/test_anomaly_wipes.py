"""The wipe window (issue 14, a slow wiper): the distinct blocks that held data and became zeros
since the last snapshot a person confirmed clean, less those holding data again, judged against
``wipe_max`` (:class:`replicad.core.anomaly.Wipes`, :func:`~replicad.core.anomaly.judge_relative`),
and the daemon's carrying of its state from one evidence file to the next
(:meth:`replicad.site.detection.Detection._history`)."""

from __future__ import annotations

import json
import os
import random
import types
from pathlib import Path

import pytest

from replicad.core.anomaly import (POLICY_DEFAULTS, WIPES, SnapshotSignals, Wipes, compare_block, judge_relative)
from replicad.core.state import PPM
from replicad.site.detection import Detection, wipe_room
from tests.unit.core.test_anomaly_slow import _vs

P = dict(POLICY_DEFAULTS)
BLOCK = 64 * 1024


def _wiped(data_blocks: int, zeroed: set[int] = frozenset(), refilled: set[int] = frozenset(),
           discarded: int = 0, files_lost: float = 0.0) -> SnapshotSignals:
    """Signals of a snapshot against a base of ``data_blocks`` that zeroed ``zeroed`` (their
    indices), wrote non-random data to the zeros ``refilled``, and zeroed ``discarded`` more blocks
    the file system no longer uses, of which ``files_lost`` were deleted data."""
    s = SnapshotSignals(data_blocks=data_blocks, zeroed=set(zeroed), refilled=set(refilled))
    s.wiped = len(zeroed)
    s.discarded, s.files_lost = discarded, files_lost
    s.changed_blocks = len(zeroed) + len(refilled) + discarded
    return s


def _wiper_series(n_data: int = 64, share: float = 0.25, steps: int = 6, seed: int = 1) -> list:
    """The review's demo at the signal level: each snapshot zeroes ``share`` of the blocks still
    holding data (the primary's unmodified code snapshots it); the verdicts, the state carried
    from each clean one as the daemon does."""
    rng = random.Random(seed)
    live = list(range(n_data))
    carried: dict = {}
    out = []
    for seq in range(2, 2 + steps):
        victims = set(rng.sample(live, int(len(live) * share)))
        v = judge_relative(seq, _wiped(len(live), victims), [], [], P, carried=carried)
        out.append((seq, len(victims), len(live), v))
        if v.verdict != "clean":
            break
        live = [b for b in live if b not in victims]
        carried = v.slow
    return out


def test_a_wiper_under_wipe_max_per_snapshot_is_flagged_when_the_total_crosses_it() -> None:
    """64 data blocks, 25 % of what is left zeroed per snapshot: #2 (16 of 64, 25 %) is clean, #3
    (12 more: 28 of 64, 43.8 %) is suspect by the wipe window alone, which names #2 as where the
    wipe began (the restore point is the snapshot before it). Before the window every step was
    clean down to 12 of 64 blocks."""
    series = _wiper_series()
    assert [(s, n, of) for s, n, of, _ in series] == [(2, 16, 64), (3, 12, 48)]
    assert series[0][3].verdict == "clean" and series[0][3].slow[WIPES].total() == pytest.approx(0.25)
    v = series[-1][3]
    assert v.verdict == "suspect" and v.flagged == (WIPES,) and v.first_suspect_seq == 2
    assert v.slow[WIPES].total() == pytest.approx(28 / 64) and v.slow[WIPES].data == 64
    assert len(v.reasons) == 1 and v.reasons[0].startswith("slow drift (wipe window") \
        and "it began at #2" in v.reasons[0] and "above wipe_max 30.0%" in v.reasons[0], v.reasons
    # a slower wiper (5 % of what is left per snapshot) is caught by the snapshot where the
    # total crosses 30 % of the data at the window's start, not later
    series = _wiper_series(n_data=1000, share=0.05, steps=40)
    gone = 0
    for seq, n, _, v in series:
        gone += n
        assert (v.verdict == "suspect") == (gone / 1000 > 0.3), (seq, gone, v.reasons)
    assert series[-1][3].verdict == "suspect" and series[-1][3].first_suspect_seq == 2


def test_a_later_wiped_snapshot_judged_against_the_clean_base_points_back_to_where_the_wipe_began() -> None:
    """After the crossing at #3 the base stays #2 (the last clean one): #4's own measure (#3's and
    #4's zeros, 21 of 48) passes wipe_max on its own, and its evidence names #2 as where the wipe
    began, as #3's did; a wipe passing wipe_max alone with nothing carried names itself."""
    carried = judge_relative(2, _wiped(64, set(range(16))), [], [], P).slow
    v = judge_relative(4, _wiped(48, set(range(16, 37))), [], [], P, carried=carried)
    assert v.verdict == "suspect" and v.first_suspect_seq == 2 and v.flagged == (WIPES,), v
    assert len(v.reasons) == 1 and v.reasons[0].endswith("; the wipe window holds 57.8% since #2"), v.reasons
    v = judge_relative(4, _wiped(64, set(range(30))), [], [], P)
    assert v.verdict == "suspect" and v.first_suspect_seq == 4


def test_blocks_holding_data_again_are_released_and_random_refills_are_not() -> None:
    """A database freeing 10 % of its pages (zeroed) and reusing them next day (data again), for
    60 days, never adds up; a wiper that refills what it zeroed with random bytes (which the
    coverage does not count: written where there were zeros) stays counted."""
    carried: dict = {}
    for seq in range(2, 62):
        hot = set(range((seq % 2) * 100, (seq % 2) * 100 + 100))  # 100 of 1,000: alternate halves
        back = set(range(((seq + 1) % 2) * 100, ((seq + 1) % 2) * 100 + 100)) if seq > 2 else set()
        v = judge_relative(seq, _wiped(1000, hot, back), [], [], P, carried=carried)
        assert v.verdict == "clean" and v.slow[WIPES].total() == pytest.approx(0.1), (seq, v.reasons)
        carried = v.slow
    # the wiper's refill with random bytes: add() counts it fresh_random, not refilled (the
    # judge reads a zero block as None, Detection._read)
    zero, data = None, b"".join(b"row %06d: ward 4, bed 12, pump ok\n" % i for i in range(2000))[:BLOCK]
    s = SnapshotSignals(data_blocks=10)
    s.add(3, compare_block(zero, data))
    s.add(4, compare_block(os.urandom(BLOCK), None))
    s.add(5, compare_block(data, None))
    s.add(6, compare_block(data, zero))
    assert s.zeroed == {3} and s.wiped == 1 and s.refilled == {5, 6} and s.fresh_random == 1, (s.zeroed, s.refilled)


def test_excused_discards_count_as_the_measure_without_indices_and_the_data_is_the_peak() -> None:
    """A snapshot with blocks excused as discarded free space (fstrim after VACUUM FULL) adds its
    measure, ``(wiped + min(discarded, files_lost)) / data``, as a share without indices (never
    released); a volume that grew is measured against its peak data, and a share counted against
    less data is scaled to it."""
    w = Wipes().step(2, 1000, unknown=_wiped(1000, set(range(10)), discarded=500, files_lost=40).destroyed)
    assert w.extra == pytest.approx(0.05) and not w.blocks and w.began == 2 and w.data == 1000
    w = w.step(3, 2000, {5000, 5001}, {1})
    assert w.data == 2000 and w.extra == pytest.approx(0.025) and w.total() == pytest.approx(0.026)
    v = judge_relative(2, _wiped(1000, set(range(10)), discarded=500, files_lost=0.0), [], [], P)
    assert v.verdict == "clean" and v.slow[WIPES].total() == pytest.approx(0.01)
    # nothing zeroed: no window, and what holds nothing names no beginning
    assert Wipes().step(2, 100, set(), {3}) == Wipes(data=100)
    assert Wipes().step(2, 100, {1}).step(3, 100, set(), {1}) == Wipes(data=100)
    # wipe_room: the file-system maps are read once this snapshot's zeros could take the window
    # past half of wipe_max (discarded free space is told apart before it eats the margin)
    assert wipe_room(P, {})["wipe_max"] == 0.15 and wipe_room(P, {WIPES: w})["wipe_max"] == pytest.approx(0.15 - 0.026)
    assert wipe_room(P, {WIPES: Wipes(frozenset(range(20)), 0.0, 2, 100)})["wipe_max"] == 0.0
    assert {k: v for k, v in wipe_room(P, {}).items() if k != "wipe_max"} == {k: v for k, v in P.items() if k != "wipe_max"}


def _discarding(data_blocks: int, discarded: int, files_lost: float, measured: bool = True) -> SnapshotSignals:
    """A snapshot whose zeroed blocks the file system no longer uses (``discarded``, after
    ``fstrim``), ``files_lost`` the net loss of the files' data since the wipe window's anchor
    (``measured``: read from both file systems; else every discarded block counted as lost)."""
    s = _wiped(data_blocks, discarded=discarded, files_lost=files_lost)
    s.lost_since_anchor = measured
    return s


def test_deleted_data_is_charged_once_across_daily_discards() -> None:
    """The never-confirmed cleanup (tests/bench/results/detection-wipes.md): day 1 deletes 20 % of
    the data and trims it; every later day rotates a log (the files' data since the anchor stays
    20 % lower, +-0.5 %) and trims 0.3 % of the data. Charging ``min(discarded, files_lost)`` each day
    passed 30 % on day 35 (on the bench: day 30-31); charged once, the window stays at the net loss
    for a year. A loss not measured since the anchor (the anchor not held) is charged every time."""
    carried: dict = {}
    for day in range(1, 366):
        lost = 200.0 if day == 1 else 200.0 + (5.0 if day % 7 == 0 else -5.0)
        v = judge_relative(day, _discarding(1000, 200 if day == 1 else 3, lost), [], [], P, carried=carried)
        assert v.verdict == "clean", (day, v.reasons)
        assert v.slow[WIPES].total() <= 0.2051, (day, v.slow[WIPES].total())
        carried = v.slow
    assert v.slow[WIPES].lost == pytest.approx(205.0) and v.slow[WIPES].began == 1
    carried = {}
    for day in range(1, 60):
        v = judge_relative(day, _discarding(1000, 200 if day == 1 else 3, 200.0, measured=False), [], [], P,
                           carried=carried)
        if v.verdict != "clean":
            break
        carried = v.slow
    assert v.verdict == "suspect" and day == 35 and v.flagged == (WIPES,), (day, v.reasons)


def test_a_wiper_deleting_over_several_snapshots_is_charged_each_step() -> None:
    """What charging once must not excuse. A wiper deleting a quarter of what is left per snapshot
    (each trimmed) raises the net loss since the anchor each time: #3 is suspect (25 + 18.75 %). An
    erase in two steps (files deleted, nothing zeroed: no maps read; then trimmed) is charged at the
    trim. Junk files written between two deletes offset them by as much as they would in one
    snapshot: the window holds the net loss (as the per-snapshot measure does). Zeroed live blocks
    (``wiped``) count in full whatever was charged."""
    v2 = judge_relative(2, _discarding(1000, 250, 250.0), [], [], P)
    v3 = judge_relative(3, _discarding(750, 188, 438.0), [], [], P, carried=v2.slow)
    assert v2.verdict == "clean" and v3.verdict == "suspect" and v3.flagged == (WIPES,), (v2.reasons, v3.reasons)
    assert v3.first_suspect_seq == 2 and v3.slow[WIPES].total() == pytest.approx(0.438)
    v = judge_relative(3, _discarding(1000, 400, 400.0), [], [], P,
                       carried=judge_relative(2, _wiped(1000), [], [], P).slow)
    assert v.verdict == "suspect", v.reasons
    # 20 % deleted and trimmed, 20 % of junk written (net loss 0), 20 % more deleted: net 20 %,
    # held already (one snapshot deleting 40 % and writing 20 % of junk is charged 20 % too)
    c = judge_relative(2, _discarding(1000, 200, 200.0), [], [], P).slow
    c = judge_relative(3, _wiped(1000), [], [], P, carried=c).slow
    v = judge_relative(4, _discarding(1000, 200, 200.0), [], [], P, carried=c)
    assert v.slow[WIPES].total() == pytest.approx(0.2)
    assert judge_relative(2, _discarding(1000, 400, 200.0), [], [], P).slow[WIPES].total() == pytest.approx(0.2)
    # zeroed live blocks beside the discards: in full every time
    s = _discarding(1000, 3, 200.0)
    s.wiped = 60
    v = judge_relative(3, s, [], [], P, carried=c)
    assert v.slow[WIPES].total() == pytest.approx(0.26) and v.slow[WIPES].lost == pytest.approx(200.0)


def test_wipe_state_round_trip_and_refusals() -> None:
    """The state in an evidence file: the coverage's block encoding plus the denominator;
    anything else (hand-edited, truncated, oversized) is a ValueError."""
    w = Wipes().step(4, 1000, {7, 3, 100_000}).step(5, 900, {9}, {3}, 0.002)
    assert w.blocks == {7, 9, 100_000} and w.began == 4 and w.data == 1000
    assert Wipes.from_doc(w.doc()) == w and Wipes.from_doc(Wipes().doc()) == Wipes()
    good = w.doc()
    for bad in (None, [], {**good, "data": -1}, {**good, "data": True}, {**good, "data": 1 << 40},
                {**good, "data": 0}, {**good, "count": 9}, {**good, "began": None}, {**good, "blocks": "!!"},
                {**good, "extra": -0.1}):
        with pytest.raises(ValueError):
            Wipes.from_doc(bad)
    assert len(json.dumps(Wipes().step(2, 10**6, set(range(0, 2_000_000, 3))).doc())) < 30_000
    # the deleted data charged: carried; a state written before it holds none (charged again)
    w = Wipes().step(2, 1000, unknown=0.2, lost=200.0)
    assert w.lost == 200.0 and Wipes.from_doc(w.doc()) == w
    old = {k: v for k, v in w.doc().items() if k != "lost"}
    assert Wipes.from_doc(old) == Wipes(w.blocks, w.extra, w.began, w.data, 0.0)
    for bad in ({**w.doc(), "lost": -1.0}, {**w.doc(), "lost": True}, {**w.doc(), "lost": "1"},
                {**Wipes().step(2, 1000, {1}).doc(), "lost": 5.0}):
        with pytest.raises(ValueError):
            Wipes.from_doc(bad)


def test_the_daemon_carries_the_wipe_window_and_a_confirmation_resets_it(tmp_path: Path) -> None:
    """Detection._history: the wipe window comes from the newest clean verdict's evidence file;
    a person's confirmation of a snapshot starts it anew after that snapshot (the coverage's
    path); recomputed from the evidence files' signals when the state is lost; an evidence file
    written before the window carries none (it starts there)."""
    det = Detection(types.SimpleNamespace(site_id="a"), None, None, tmp_path, lambda v: {}, None)  # type: ignore[arg-type]
    vs = _vs(9)
    d = tmp_path / "detection" / "v"
    d.mkdir(parents=True)
    live = list(range(1000))

    def step(seq: int, n: int):
        got, window, conserve, elapsed_s, confirmed, anchor, rate = det._history("v", seq, vs)
        victims = set(live[:n])
        sig = _wiped(len(live), victims)
        v = judge_relative(seq, sig, window, confirmed, P, conserve_window=conserve, carried=got,
                           elapsed_s=elapsed_s, wipe_window=det._wipe_items("v", window))
        vs["snapshots"][seq]["opinions"]["a"] = {"verdict": v.verdict, "score_ppm": round(v.score * PPM)}
        (d / f"{seq}.json").write_text(json.dumps({"root": vs["snapshots"][seq]["root"].hex(), "signals": sig.summary(),
                                                   "slow": {"anchor": anchor, **{w: c.doc() for w, c in v.slow.items()}}}))
        if v.verdict == "clean":
            del live[:n]
        return v

    assert step(2, 150).verdict == "clean" and step(3, 100).verdict == "clean"
    got = det._history("v", 4, vs)[0]
    assert got[WIPES].blocks == frozenset(range(250)) and got[WIPES].began == 2 and got[WIPES].data == 1000
    v = step(4, 100)  # 350 of 1,000
    assert v.verdict == "suspect" and v.first_suspect_seq == 2 and v.flagged == (WIPES,)
    # the states lost (#3's file gone, #2's without one): recomputed from the evidence files'
    # signals as shares without indices; a missing file counts nothing
    (d / "3.json").rename(tmp_path / "3.json")
    (d / "2.json").write_text(json.dumps({"root": vs["snapshots"][2]["root"].hex(),
                                          "signals": _wiped(1000, set(range(150))).summary()}))
    got, window, *_ = det._history("v", 4, vs)
    assert WIPES not in got and det._wipe_items("v", window) == [(2, 0.15), (3, 0.0)]
    (tmp_path / "3.json").rename(d / "3.json")
    # a person confirms #3 (the wipe so far was wanted): the window starts after it
    vs["snapshots"][3]["confirmed"] = True
    assert step(4, 100).verdict == "clean" and step(5, 100).verdict == "clean"
    v = step(6, 100)  # 100 + 100 + 100 of 750 at #3: 40 %
    assert v.verdict == "suspect" and v.first_suspect_seq == 4 and v.slow[WIPES].data == 750
    # an evidence file written before the window: it starts there, empty
    doc = json.loads((d / "5.json").read_text())
    del doc["slow"][WIPES]
    (d / "5.json").write_text(json.dumps(doc))
    got = det._history("v", 6, vs)[0]
    assert WIPES not in got and "coverage" in got


def test_the_evidence_view_shows_the_wipe_window() -> None:
    """``replicad evidence``: the wipe window's line, as the coverage's (distinct blocks)."""
    from replicad.ops.evidenceview import evidence_lines
    w = Wipes().step(2, 64, set(range(16))).step(3, 48, set(range(16, 28)))
    here = {"site": "b", "verdict": "suspect", "base_seq": 2, "first_suspect_seq": 2, "restore_seq": 1,
            "slow": {"anchor": 1, WIPES: {**w.doc(), "total": w.total(), "flagged": True, "max": 0.3}}}
    lines = evidence_lines({"here": here})
    assert "  slow window wipes (after #1, the last confirmed or first snapshot): 43.8 % of max 30.0 %, " \
           "began at #2 (28 distinct blocks), FLAGGED" in lines, lines
