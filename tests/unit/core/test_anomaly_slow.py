"""The slow windows (issue 14, "slow" and "adaptive"): one-sided CUSUMs from the last snapshot a
person confirmed clean, without a time cut, of the relative score and of the conservation
signal (:class:`replicad.core.anomaly.Cusum`, :func:`~replicad.core.anomaly.judge_relative`), the
coverage window (the distinct blocks turned random since then: :class:`~replicad.core.anomaly.Coverage`),
and the daemon's carrying of their state from one snapshot to the next
(:meth:`replicad.site.detection.Detection._history`). The conservation series run on real ext4
images changed by ``debugfs -w`` (as tests/unit/core/test_anomaly_conservation.py)."""

from __future__ import annotations

import base64
import gzip
import json
import random
import shutil
import types
import zlib
from pathlib import Path

import pytest

from replicad.core.anomaly import (DAY_S, POLICY_DEFAULTS, Coverage, Cusum, SnapshotSignals, compare_block,
                                   judge_relative, policy_problems, stricter, weakened_keys)
from replicad.core.state import PPM
from replicad.site.detection import Detection
from tests.unit.core.test_anomaly_conservation import _blocks_of, _discard, _image
from tests.unit.core.test_anomaly_rename import debugfs, signals_between

P = dict(POLICY_DEFAULTS)


def _turned(share: float, data_blocks: int = 100_000, blocks: set[int] | None = None) -> SnapshotSignals:
    """Signals of a snapshot in which ``share`` of ``data_blocks`` turned random; ``blocks``: which
    (their indices, for the coverage window; without them the count is of unknown blocks)."""
    s = SnapshotSignals(data_blocks=data_blocks)
    if blocks is not None:
        s.counted = set(blocks)
        share = len(blocks) / data_blocks
    s.turned_random = s.changed_blocks = round(share * data_blocks)
    return s


def _series(scores: list, confirmed: list[float] = (), elapsed_s: float = DAY_S,
            policy: dict | None = None, learned_rate: float | None = None) -> tuple[int | None, object]:
    """Judge one snapshot per score (a share of unknown blocks, or a set of block indices of
    100,000), carrying the slow windows' state as the daemon does; the 1-based index of the first
    suspect one (None) and its verdict (or the last one's)."""
    carried: dict = {}
    v = None
    for i, share in enumerate(scores, start=1):
        sig = _turned(0.0, blocks=share) if isinstance(share, (set, frozenset)) else _turned(share)
        v = judge_relative(i + 1, sig, [], list(confirmed), policy or P, carried=carried,
                           elapsed_s=elapsed_s, learned_rate=learned_rate)
        if v.verdict == "suspect":
            return i, v
        carried = v.slow
    return None, v


def test_the_attacker_under_the_old_seven_day_window_is_caught_before_five_percent() -> None:
    """95 % of cumulative_max per window_s (2.85 % per 7 days, one snapshot a day): the old window
    never summed more than 2.85 %, 5.3 % was encrypted after 14 days. The coverage window (the
    distinct blocks turned random since the last confirmed snapshot, no slack) passes
    cumulative_max on day 8, 3.3 % encrypted, naming day 1 as where it began (the CUSUM over
    slow_slack alone: day 10)."""
    daily = 0.95 * P["cumulative_max"] / 7
    first, v = _series([daily] * 60)
    assert first == 8 and first * daily < 0.05, first
    assert v.first_suspect_seq == 2 and v.flagged == ("coverage",), v
    assert v.reasons[0].startswith("slow drift (coverage: distinct blocks") and "began at #2" in v.reasons[0]
    # snapshots every 15 minutes change nothing: the coverage has no rate
    first, _ = _series([daily / 96] * 96 * 20, elapsed_s=900)
    assert first is not None and first * daily / 96 < 0.05, first


def test_a_weekly_rewrite_wandering_over_new_blocks_needs_one_confirmation() -> None:
    """The benchmark's busy database nobody confirms (pgbench daily, VACUUM FULL weekly, no
    discard): ~0.03 % of the blocks a day and 0.25-1.05 % at each VACUUM FULL, over new blocks
    each week: the coverage passed 3 % on day 28 (tests/bench/results/detection.md). Modelled:
    flagged without a confirmation within five weeks; with the distinct rate a confirmation
    vouches for (0.12 %/day) as the allowance, 400 days clean; the 0.41 %/day attacker on top
    still flagged before 5 %. Below that rate on such a volume an attacker is not seen (ARCHITECTURE)."""
    r = random.Random(8)
    nxt = iter(range(10**9))

    def day(i: int) -> set[int]:
        n = 30 if i % 7 else 30 + r.randrange(250, 1050)
        return {next(nxt) for _ in range(n)}

    days = [day(i) for i in range(1, 401)]
    first, v = _series(days)
    assert first is not None and first <= 35 and v.flagged == ("coverage",), (first, v)
    first, v = _series(days, learned_rate=0.0012)
    assert first is None, (first, v)
    daily = round(0.95 * P["cumulative_max"] / 7 * 100_000)
    first, v = _series([x | set(range(10**8 + i * daily, 10**8 + (i + 1) * daily)) for i, x in enumerate(days)],
                       learned_rate=0.0012)
    assert first is not None and first * daily / 100_000 < 0.05 and "confirmed rate 0.12%/day" in v.reasons[0], \
        (first, v)


def test_an_attacker_under_every_rate_is_caught_at_cumulative_max() -> None:
    """The gap of the CUSUM: an attacker at 95 % of slow_slack (0.095 % of the blocks a day, each
    block once) never left zero there (5 % after 53 days, 35 % after a year). The coverage window
    counts the distinct blocks it encrypted: flagged on day 32 (3.04 %), whatever the pace; at
    15-minute snapshots too. The same blocks turned random again add nothing: a block is
    encrypted once."""
    per_day = 95  # of 100,000 blocks: 0.095 %
    days = [set(range(d * per_day, (d + 1) * per_day)) for d in range(60)]
    first, v = _series(days)
    assert first == 32 and v.flagged == ("coverage",) and v.first_suspect_seq == 2, (first, v)
    assert v.slow["relative"].total == 0.0  # the CUSUM over slow_slack never saw it
    fine = [set(range(i * 1, i * 1 + 1)) for i in range(96 * 40)]  # one block per 15 minutes: 0.096 %/day
    first, _ = _series(fine, elapsed_s=900)
    assert first == 3001, first
    first, _ = _series([set(range(1000))] * 400)  # 1 % of the volume's blocks turned random again and again
    assert first is None


def test_the_learned_baseline_cannot_ratchet() -> None:
    """The window's own scores never feed the baseline; confirmed history does, capped at
    baseline_cap (0.5 %): an attacker at 1.9 % per snapshot (under min_score) is caught on the
    second snapshot even after a busy confirmed history."""
    first, v = _series([0.019] * 20, confirmed=[0.03] * 10)
    assert v.baseline == P["baseline_cap"] and first == 2 and v.flagged == ("coverage",), (first, v)
    # a busy volume at its learned rate, its churn turning the same 2 % of blocks random again
    r = random.Random(3)
    first, _ = _series([set(r.sample(range(2000), 400)) for _ in range(400)], confirmed=[0.004] * 10)
    assert first is None


def test_months_of_benign_churn_without_a_confirmation_stay_clean() -> None:
    """400 daily snapshots, nobody confirming any: most change nothing that turns random, some
    import compressed data into reused blocks (the benchmark's benign rows: PNG import 0.12 %,
    VACUUM FULL 0.45 %, a package upgrade 1.4 % once a month). Clean throughout while that churn
    falls on the same blocks (a log area, a software tree, a hot table: 2.5 % of the volume;
    the benchmark's daily series measured it, tests/bench/results/detection.md): the coverage
    counts each once and the CUSUM sums only new blocks; the same at 15-minute snapshots. The
    cost, documented: churn that turns ever new blocks random (here: each day's blocks anywhere
    in the volume) is flagged once the union passes cumulative_max, confirmed or not."""
    r = random.Random(11)

    def day(i: int, region: int) -> set[int]:
        if i % 30 == 29:
            share = r.uniform(0.010, 0.014)  # package upgrade
        else:
            x = r.random()
            share = 0.0 if x < 0.7 else r.uniform(0, 0.0015) if x < 0.92 else r.uniform(0.001, 0.0045)
        return set(r.sample(range(region), round(share * 100_000)))

    hot = [day(i, 2500) for i in range(400)]
    first, v = _series(hot)
    assert first is None and v.cumulative < P["cumulative_max"], (first, v)
    assert 0.02 < v.slow["coverage"].total(100_000) <= 0.025, v.slow
    fine = [set()] * (96 * 400)
    for i, x in enumerate(hot):
        fine[96 * i + r.randrange(96)] = x
    first, v = _series(fine[: 96 * 120], elapsed_s=900)
    assert first is None, first
    first, v = _series([day(i, 100_000) for i in range(400)])  # ever new blocks
    assert first is not None and first < 60 and v.flagged == ("coverage",), (first, v)


def test_a_busy_database_learns_its_daily_rate_from_one_confirmation() -> None:
    """A PostgreSQL volume whose benign daily churn turns 0.1-0.5 % of the blocks random (the
    benchmark: pgbench 0.29 %, pgbench -i 0.32 %): summed above slow_slack it would be a slow
    drift within weeks without a confirmation (documented: confirm one snapshot). The rate a
    confirmation vouches for (learned_rate, capped at baseline_cap per day) keeps 400 days
    clean, also at 15-minute snapshots whose per-snapshot median is 0; the 0.41 %/day attacker
    on top of it is still caught before 5 %."""
    r = random.Random(4)
    days = [r.uniform(0.001, 0.005) for _ in range(400)]
    first, _ = _series(days)
    assert first is not None and first < 60, first  # never confirmed, blocks unknown: flagged
    # the same churn on the same pages (the database's hot 2 %): clean, confirmed or not
    hot = [set(r.sample(range(2000), round(x * 100_000))) for x in days]
    assert _series(hot)[0] is None and _series(hot, learned_rate=0.003)[0] is None
    fine = [set()] * (96 * 100)
    for i, x in enumerate(hot[:100]):
        fine[96 * i + r.randrange(96)] = x
    assert _series(fine, learned_rate=0.003, elapsed_s=900)[0] is None
    # the 0.41 %/day attacker on top, over blocks of its own: flagged by the coverage on day 8 (the
    # daemon's learned rate is the confirmed snapshot's coverage growth: ~0 once the hot pages are in)
    daily = round(0.95 * P["cumulative_max"] / 7 * 100_000)
    first, v = _series([x | set(range(10_000 + i * daily, 10_000 + (i + 1) * daily)) for i, x in enumerate(hot)],
                       learned_rate=0.0001)
    assert first is not None and first * daily / 100_000 < 0.05 and v.flagged == ("coverage",), (first, v)
    # without block indices the CUSUM over the confirmed rate still speaks (items from Raft's scores)
    first, v = _series([x + daily / 100_000 for x in days], learned_rate=0.003)
    assert first is not None and first * daily / 100_000 < 0.05, (first, v)
    first, _ = _series([0.02] * 10, learned_rate=0.5)  # a confirmed rate is capped at baseline_cap
    assert first == 3  # the coverage's allowance capped too: 6 % on the third day above 3 % + 3 x 0.5 %


def test_coverage_state_round_trip_and_refusals() -> None:
    """The coverage state in an evidence file: the indices' gaps, zlib, base64 (~1-2 bytes a
    block); anything else (hand-edited, truncated, oversized, unordered) is a ValueError."""
    c = Coverage().step(4, {7, 3, 100_000}).step(5, {3, 9}, 0.002)
    assert c.blocks == {3, 7, 9, 100_000} and c.began == 4 and abs(c.extra - 0.002) < 1e-12
    assert abs(c.total(1000) - 0.006) < 1e-12 and Coverage().step(1) == Coverage()
    assert Coverage.from_doc(c.doc()) == c and Coverage.from_doc(Coverage().doc()) == Coverage()
    big = Coverage().step(2, set(range(0, 2_000_000, 3)))
    assert Coverage.from_doc(big.doc()) == big and len(big.doc()["blocks"]) < 20_000
    good = c.doc()
    for bad in (None, {**good, "count": 5}, {**good, "count": 3}, {**good, "blocks": "!!"}, {**good, "extra": -1},
                {**good, "began": None}, {**good, "count": True}, {**good, "blocks": 3},
                {**Coverage().doc(), "began": 2}, {**good, "count": 1 << 40},
                {**good, "blocks": base64.b64encode(zlib.compress(b"\x01\0\0\0\0\0\0\0")).decode(), "count": 2}):
        with pytest.raises(ValueError):
            Coverage.from_doc(bad)


def test_the_daemon_carries_the_coverage_blocks(tmp_path: Path) -> None:
    """Detection._history carries the coverage from the newest clean verdict's evidence file: the
    same blocks turned random again count once across snapshots; an evidence file written before
    the coverage window starts it from that file's relative sum (unknown blocks)."""
    det = Detection(types.SimpleNamespace(site_id="a"), None, None, tmp_path, lambda v: {}, None)  # type: ignore[arg-type]
    vs = _vs(8)
    d = tmp_path / "detection" / "v"
    d.mkdir(parents=True)
    for seq in range(2, 8):  # 1.5 % of the blocks, the same ones every day: never more
        got, window, conserve, elapsed_s, confirmed, anchor, rate = det._history("v", seq, vs)
        sig = _turned(0.0, blocks=set(range(1500)))
        v = judge_relative(seq, sig, window, confirmed, P, conserve_window=conserve, carried=got, elapsed_s=elapsed_s)
        assert v.verdict == "clean" and v.slow["coverage"].total(100_000) == 0.015, (seq, v)
        vs["snapshots"][seq]["opinions"]["a"] = {"verdict": v.verdict, "score_ppm": round(v.score * PPM)}
        (d / f"{seq}.json").write_text(json.dumps({"root": vs["snapshots"][seq]["root"].hex(), "slow": {
            "anchor": anchor, **{w: c.doc() for w, c in v.slow.items()}}}))
    got = det._history("v", 8, vs)[0]
    assert got["coverage"].blocks == frozenset(range(1500)) and got["coverage"].began == 2
    # a person confirms #7: the rate it vouches for is its coverage's growth per day (1.5 % over
    # 6 days), not the scores' (1.5 % every day: the same blocks again)
    doc = json.loads((d / "7.json").read_text())
    doc["slow"]["coverage"]["total"] = 0.015
    (d / "7.json").write_text(json.dumps(doc))
    vs["snapshots"][7]["confirmed"] = True
    rate = det._history("v", 8, vs)[6]
    assert rate == pytest.approx(0.015 / 6), rate
    vs["snapshots"][7]["confirmed"] = False
    doc = json.loads((d / "7.json").read_text())
    del doc["slow"]["coverage"]
    doc["slow"]["relative"] = Cusum(0.012, 3, 4).doc()
    (d / "7.json").write_text(json.dumps(doc))
    got = det._history("v", 8, vs)[0]
    assert got["coverage"] == Coverage(extra=0.012, began=3), got


def test_nearly_empty_pages_turned_random_count_in_the_coverage_not_in_the_score() -> None:
    """The PostgreSQL adaptive attacker's uncounted half: free-space-map forks and pages holding a
    few tuples (0.0-0.3 bits/byte per 4 KiB) encrypted. compare_block leaves them out of the score
    (imports into reused space), reports them as sparse_random; the coverage counts them. A
    sub-block that was all zeros stays fresh (random_filled), text stays a counted block."""
    r = random.Random(5)
    page = bytearray(65536)
    for off in range(0, 65536, 8192):  # 8 KiB pages: a header and one short tuple each
        page[off:off + 24] = bytes(r.randrange(256) for _ in range(24))
        page[off + 8000:off + 8060] = b"row %05d pump ward 3 ok " % off + bytes(35)
    sparse = compare_block(r.randbytes(65536), bytes(page))
    assert not sparse.turned_random and sparse.sparse_random == 16, sparse
    zeros = compare_block(r.randbytes(65536), bytes(65536))
    assert zeros.sparse_random == 0 and zeros.random_filled == 1.0 and zeros.fresh is False, zeros
    text = (b"patient admitted to ward 3, blood pressure normal. " * 1400)[:65536]
    assert compare_block(r.randbytes(65536), text).turned_random
    sig = SnapshotSignals(data_blocks=1000)
    sig.add(7, sparse)
    sig.add(8, compare_block(r.randbytes(65536), text))
    assert sig.turned_random == 1 and sig.sparse == {7} and sig.summary()["sparse_random"] == 1
    v = judge_relative(2, sig, [], [], P)
    assert v.score == 0.001 and v.slow["coverage"].blocks == {7, 8}, v


def test_cusum_state_and_slow_slack_policy() -> None:
    c = Cusum().step(5, 0.02, 0.001).step(6, 0.0, 0.001)
    assert c.began == 5 and c.snapshots == 2 and abs(c.total - 0.018) < 1e-12
    assert Cusum.from_doc(c.doc()) == c and Cusum().step(1, 0.0, 0.001) == Cusum()
    for bad in (None, {"total": -1}, {"total": 0.1, "began": None}, {"total": 0.0, "began": 3},
                {"total": True, "began": 1}, {"total": 0.1, "began": 2, "snapshots": -1}):
        with pytest.raises(ValueError):
            Cusum.from_doc(bad)
    assert weakened_keys(P, {**P, "slow_slack": 0.01}) == ["slow_slack"]
    assert weakened_keys(P, {**P, "slow_slack": 0.0}) == []
    assert stricter(P, {"slow_slack": 0.5})["slow_slack"] == P["slow_slack"]
    assert policy_problems({**P, "slow_slack": 2}) == ["slow_slack must be a number in [0, 1]"]
    old = {k: v for k, v in P.items() if k != "slow_slack"}  # recorded before the key existed
    assert policy_problems(old) == [] and weakened_keys(old, P) == []
    with pytest.raises(ValueError):
        judge_relative(2, _turned(0.0), [(1,)], [], P)


# ------------------------------------------------------------------------- conservation, ext4
needs_e2fs = pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
                                reason="e2fsprogs (mkfs.ext4, debugfs) not installed")


def _doc(r: random.Random) -> bytes:
    return b"".join(b"%s %d\n" % (r.choice((b"patient ward dose", b"the referral letter", b"blood pressure")),
                                  r.randint(0, 9999)) for _ in range(4000))[:65536]


def _step(tmp: Path, img: Path, cmds: list[str], freed_names: list[str], after: list[str] = ()) -> SnapshotSignals:
    """One snapshot's change: ``cmds`` (they unlink ``freed_names``), the freed blocks discarded
    (``mount -o discard`` on a loop or thin device), then ``after``; its signals."""
    before = img.read_bytes()
    freed = _blocks_of(img, freed_names)
    debugfs(img, cmds, tmp)
    _discard(img, freed)
    if after:
        debugfs(img, list(after), tmp)
    return signals_between(before, img.read_bytes())


@needs_e2fs
def test_copy_encrypt_delete_as_gz_spread_under_conserve_max_is_caught_by_its_slow_window(tmp_path: Path) -> None:
    """The adaptive copy-encrypt-delete: per daily snapshot 3 of 120 documents (~2.2 % of the
    data, under conserve_max 3 %) copied as AES-like ciphertext framed as level-0 gzip, named
    ``.gz``, into never-used space, the originals unlinked and discarded. No per-snapshot signal
    fires; the conservation window flags the second snapshot (~4.4 % encrypted) and names the
    first."""
    r = random.Random(5)
    names = [f"befund_{i:04}.txt" for i in range(120)]
    img = _image(tmp_path, {n: _doc(r) for n in names})
    carried: dict = {}
    for day in range(1, 5):
        batch = names[3 * (day - 1): 3 * day]
        cmds = []
        for i, n in enumerate(batch):
            host = tmp_path / f"c{day}-{i}"
            host.write_bytes(gzip.compress(random.Random(day * 100 + i).randbytes(65536), compresslevel=0))
            cmds.append(f"write {host} {n}.gz")
        cmds += [f"rm {n}" for n in batch]
        sig = _step(tmp_path, img, cmds, batch)
        v = judge_relative(day + 1, sig, [], [], P, carried=carried)
        assert sig.conserved_counted < P["conserve_max"] and sig.turned_random == 0, sig.summary()
        if v.verdict == "suspect":
            break
        carried = v.slow
    assert day == 2 and v.flagged == ("conservation",), (day, v)
    assert v.first_suspect_seq == 2 and v.reasons[0].startswith("slow drift (conservation"), v.reasons


@needs_e2fs
def test_daily_log_rotation_with_gzip_stays_clean_over_a_long_series(tmp_path: Path) -> None:
    """Benign: every day yesterday's log (~7 % of the data) is gzipped (a tenth of its size,
    random content), the day's new log written, the old log and the oldest ``.gz`` deleted
    (discard). 24 days: the conservation window never leaves zero (compression writes far less
    than it frees: conserved_counted is 0)."""
    r = random.Random(9)

    def log_text() -> bytes:
        return b"".join(b"2026-12-%02d ward=%d pump=%d rate=%d ok\n" % (r.randint(1, 28), r.randint(1, 40),
                                                                         r.randint(1, 99), r.randint(0, 999))
                        for _ in range(22000))[:8 * 65536]

    files = {f"doc_{i:03}.txt": _doc(r) for i in range(90)}
    files["app-0.log"] = log_text()
    img = _image(tmp_path, files)
    carried: dict = {}
    for day in range(1, 13):
        host_gz, host_log = tmp_path / f"g{day}", tmp_path / f"l{day}"
        host_gz.write_bytes(gzip.compress(files[f"app-{day - 1}.log"]))
        files[f"app-{day}.log"] = log_text()
        host_log.write_bytes(files[f"app-{day}.log"])
        # logrotate with dateext: the day's new log, yesterday's gzipped, then it and the
        # oldest .gz unlinked
        cmds = [f"write {host_log} app-{day}.log", f"write {host_gz} app-{day - 1}.log.gz", f"rm app-{day - 1}.log"]
        freed = [f"app-{day - 1}.log"]
        if day > 5:
            cmds.append(f"rm app-{day - 6}.log.gz")
            freed.append(f"app-{day - 6}.log.gz")
        sig = _step(tmp_path, img, cmds, freed)
        v = judge_relative(day + 1, sig, [], [], P, carried=carried)
        assert v.verdict == "clean", (day, v.reasons, sig.summary())
        assert v.slow["conservation"].total == 0.0, (day, sig.summary())
        assert sig.structure_freed > 5 and sig.random_filled > 0.4, sig.summary()  # it did free and fill
        carried = v.slow


# ------------------------------------------------------------------------- the daemon's carrying
def _vs(n: int, confirmed: int | None = None) -> dict:
    return {"snapshots": {s: {"root": bytes([s]) * 32, "created_at_ns": s * DAY_S * 10**9, "verdict": "clean",
                              "confirmed": s == confirmed, "opinions": {}} for s in range(1, n + 1)}}


def test_the_daemon_carries_the_windows_and_recomputes_after_a_confirmation(tmp_path: Path) -> None:
    """Detection._history: the state of the newest snapshot this site judged clean comes from its
    evidence file while the anchor (last confirmed snapshot) is the same; after a new
    confirmation, or with the file gone, the windows are recomputed from the opinions and
    evidence files after the anchor; suspect opinions are left out."""
    det = Detection(types.SimpleNamespace(site_id="a"), None, None, tmp_path, lambda v: {}, None)  # type: ignore[arg-type]
    vs = _vs(6)
    d = tmp_path / "detection" / "v"
    d.mkdir(parents=True)
    carried: dict = {}
    for seq, share in ((2, 0.012), (3, 0.0), (4, 0.5), (5, 0.012)):
        got, window, conserve, elapsed_s, confirmed, anchor, rate = det._history("v", seq, vs)
        assert anchor == 1 and confirmed == [] and rate is None and elapsed_s == DAY_S * (2 if seq == 5 else 1)
        sig = _turned(share)
        v = judge_relative(seq, sig, window, confirmed, P, conserve_window=conserve, carried=got,
                           elapsed_s=elapsed_s)
        if seq != 4:
            assert got == carried and window == [], seq  # carried from the previous file
        vs["snapshots"][seq]["opinions"]["a"] = {"verdict": v.verdict, "score_ppm": round(v.score * PPM)}
        doc = {"root": vs["snapshots"][seq]["root"].hex(), "signals": sig.summary(),
               "slow": {"anchor": anchor, **{w: c.doc() for w, c in v.slow.items()}}}
        (d / f"{seq}.json").write_text(json.dumps(doc))
        if v.verdict == "clean":
            carried = v.slow
    assert vs["snapshots"][4]["opinions"]["a"]["verdict"] == "suspect"
    got, _, _, _, _, _, _ = det._history("v", 6, vs)
    assert abs(got["relative"].total - (0.012 - 0.001 + 0.012 - 0.002)) < 1e-6 and got["relative"].began == 2
    # the evidence of #5 lost: #3's state carried, #5 folded from Raft's opinion (the same sum)
    (d / "5.json").unlink()
    got, window, _, elapsed_s, _, _, _ = det._history("v", 6, vs)
    assert set(got) == {"relative", "conservation", "coverage", "wipes", "paired"} and [s for s, _, _ in window] == [5] \
        and elapsed_s == DAY_S
    v = judge_relative(6, _turned(0.0), window, [], P, carried=got, elapsed_s=elapsed_s)
    assert abs(v.cumulative - (0.012 - 0.001 + 0.012 - 0.002 - 0.001)) < 1e-6
    # every file lost: recomputed from Raft's opinions (the same sum)
    for f in d.iterdir():
        f.unlink()
    got, window, _, elapsed_s, _, _, _ = det._history("v", 6, vs)
    assert got == {} and [s for s, _, _ in window] == [2, 3, 5] and elapsed_s == DAY_S
    v = judge_relative(6, _turned(0.0), window, [], P, carried=got, elapsed_s=elapsed_s)
    assert abs(v.cumulative - (0.012 - 0.001 + 0.012 - 0.002 - 0.001)) < 1e-6
    # a person confirms #3: the windows start after it, the baseline learns #3's score, the
    # rate everything up to #3 (#2 and #3 over the day between them; #1 has no opinion here)
    vs["snapshots"][3]["confirmed"] = True
    got, window, _, _, confirmed, anchor, rate = det._history("v", 6, vs)
    assert anchor == 3 and got == {} and [s for s, _, _ in window] == [5] and confirmed == [0.0]
    assert rate == 0.0  # #3's score (0) over one day; #2's covers the time before the span
    vs["snapshots"][1]["opinions"]["a"] = {"verdict": "clean", "score_ppm": 0}
    assert det._history("v", 6, vs)[6] == pytest.approx(0.012 / 2)


def _judge_and_record(det: Detection, d: Path, vs: dict, seq: int, share: float):
    got, window, conserve, elapsed_s, confirmed, anchor, rate = det._history("v", seq, vs)
    sig = _turned(share)
    v = judge_relative(seq, sig, window, confirmed, P, conserve_window=conserve, carried=got, elapsed_s=elapsed_s,
                       learned_rate=rate)
    vs["snapshots"][seq]["opinions"]["a"] = {"verdict": v.verdict, "score_ppm": round(v.score * PPM)}
    (d / f"{seq}.json").write_text(json.dumps({"root": vs["snapshots"][seq]["root"].hex(), "signals": sig.summary(),
                                               "slow": {"anchor": anchor, **{w: c.doc() for w, c in v.slow.items()}}}))
    return v


def test_pruning_the_anchor_never_lowers_the_slow_window(tmp_path: Path) -> None:
    """Any one site can sign prune_snapshots: an attacker pruning everything older than the lock
    moved the anchor (the first snapshot still in the catalog) and the windows were recomputed
    from there, dropping the drift before it (9 of 128 blocks encrypted over #2-#10 stayed
    clean). The carried state survives the pruning of its anchor; only a confirmation since
    starts the windows anew."""
    det = Detection(types.SimpleNamespace(site_id="a"), None, None, tmp_path, lambda v: {}, None)  # type: ignore[arg-type]
    vs = _vs(12)
    d = tmp_path / "detection" / "v"
    d.mkdir(parents=True)
    daily = 0.95 * P["cumulative_max"] / 7  # flagged on day 8 (#9) without pruning
    verdicts = []
    for seq in range(2, 10):
        if seq >= 4:  # before each judgement the attacker prunes all but the newest two
            for s in [s for s in vs["snapshots"] if s < seq - 2]:
                del vs["snapshots"][s]
        v = _judge_and_record(det, d, vs, seq, daily)
        verdicts.append(v.verdict)
        if seq >= 4:
            assert v.slow["relative"].began == 2 and v.slow["coverage"].began == 2, (seq, v.slow)  # still counted
    assert verdicts.index("suspect") + 2 == 9, verdicts
    # a confirmation since the pruned anchor does start the windows anew
    vs["snapshots"][10]["confirmed"] = True
    got, window, _, _, _, anchor, _ = det._history("v", 12, vs)
    assert anchor == 10 and got == {} and window == [], (anchor, got, window)


def test_a_sawtooth_of_commit_stamps_never_credits_more_slack_than_the_time_that_passed(tmp_path: Path) -> None:
    """A primary stamps its commits +590 s then -5 s (each accepted by commit_snapshot, a
    negative gap clipped to 0): credited from the stamps, 20 snapshots 2 s apart earned 5,970 s
    of slack. Credited from the majority's clock at commit (committed_ns) as its running maximum,
    the series earns the 38 s that passed; with the stamps alone (snapshots committed before
    committed_ns was recorded), the running maximum bounds it to that plus one 590 s lead."""
    real = [1_700_000_000 * 10**9 + 2 * i * 10**9 for i in range(20)]
    for with_clock in (True, False):
        det = Detection(types.SimpleNamespace(site_id="a"), None, None, tmp_path / str(with_clock), lambda v: {},
                        None)  # type: ignore[arg-type]
        d = tmp_path / str(with_clock) / "detection" / "v"
        d.mkdir(parents=True)
        vs = {"snapshots": {}}
        for i, t in enumerate(real, start=1):
            vs["snapshots"][i] = {"root": bytes([i]) * 32, "created_at_ns": t + (590 if i % 2 else -5) * 10**9,
                                  "verdict": "clean", "confirmed": False, "opinions": {}}
            if with_clock:
                vs["snapshots"][i]["committed_ns"] = t
        vs["snapshots"][1]["opinions"]["a"] = {"verdict": "clean", "score_ppm": 0}
        credited = 0.0
        for seq in range(2, 21):
            credited += det._history("v", seq, vs)[3]
            _judge_and_record(det, d, vs, seq, 0.0)
        if with_clock:
            assert credited == pytest.approx(38.0), credited
        else:
            assert 0 < credited <= 38.0 + 590.0, credited


def test_the_evidence_view_says_which_window_flagged_and_where_it_began() -> None:
    from replicad.ops.evidenceview import evidence_lines
    here = {"site": "b", "verdict": "suspect", "base_seq": 9, "first_suspect_seq": 2, "restore_seq": 1,
            "slow": {"anchor": 1, "relative": {"total": 0.0, "began": None, "snapshots": 0, "flagged": False, "max": 0.03},
                     "conservation": {"total": 0.031, "began": 2, "snapshots": 9, "flagged": True, "max": 0.03},
                     "coverage": {**Coverage().step(3, set(range(33))).doc(), "total": 0.033, "flagged": True,
                                  "max": 0.03}}}
    lines = evidence_lines({"here": here})
    assert "  slow window coverage (after #1, the last confirmed or first snapshot): 3.30 % of max 3.00 %, " \
           "began at #3 (33 distinct blocks), FLAGGED" in lines, lines
    assert "  slow window conservation (after #1, the last confirmed or first snapshot): 3.10 % of max 3.00 %, " \
           "began at #2 (9 snapshots), FLAGGED" in lines, lines
    assert any(x.startswith("  slow window relative") and x.endswith("of max 3.00 %") for x in lines), lines


def test_a_snapshot_flagged_on_its_own_is_the_first_suspect_whatever_a_window_carried() -> None:
    """The demo's case: 0.1 % of benign drift over clean #3 and #4 (snapshots seconds apart earn
    no slack) left the relative window above zero since #3; then #5 has 23 % turned random. #5 is
    flagged on its own score: it is the first suspect and #4 the restore point (pointing at #3
    threw a clean snapshot away, although the 23 % also carried the window past cumulative_max).
    Only a window crossing alone points back, to where the window that crossed left zero."""
    carried: dict = {}
    for seq, share in ((2, 0.0), (3, 0.0005), (4, 0.0005)):
        v = judge_relative(seq, _turned(share), [], [], P, carried=carried, elapsed_s=1.0)
        assert v.verdict == "clean", v
        carried = v.slow
    assert carried["relative"].began == 3 and carried["relative"].total > 0
    v = judge_relative(5, _turned(0.23), [], [], P, carried=carried, elapsed_s=1.0)
    assert v.verdict == "suspect" and v.flagged == ("coverage", "relative") and v.first_suspect_seq == 5, v
    assert v.reasons[0].startswith("relative score: 23.0%"), v.reasons
    drift = {"relative": Cusum(0.02, 3, 2), "conservation": Cusum(0.001, 2, 3)}  # only the relative one crosses
    v = judge_relative(5, _turned(0.019), [], [], P, carried=drift, elapsed_s=1.0)  # 1.9 %: under min_score
    assert v.flagged == ("relative",) and v.reasons[0].startswith("slow drift (relative"), v
    assert v.first_suspect_seq == 3, v  # not the conservation window's #2: it did not cross
