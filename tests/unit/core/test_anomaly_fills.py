"""Wipers that do not write zeros (issue 14): a block that held data and whose every 4 KiB
sub-block is now zeros or a *fill* (one period of <= 16 bytes, or a divisor of 512, repeated:
``0xFF``, ``0x41``, ``DEADBEEF``, the Gutmann passes, one 512-byte sector) counts as wiped where
zeros count: the snapshot's wipe measure (``wipe_max``) and the wipe window
(:class:`replicad.core.anomaly.Wipes`). Before, such a block was neither zeros nor random and
every such wipe was clean (0xFF over text: ``wiped`` False, ``turned_random`` False)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from replicad.core import ext4alloc
from replicad.core.anomaly import (POLICY_DEFAULTS, WIPES, SnapshotSignals, compare_block, fill_period, holds_no_data,
                                   judge_relative)
from tests.unit.core import test_anomaly_cost as cost
from tests.unit.core.test_anomaly_relative import db_page_block, text

P = dict(POLICY_DEFAULTS)
BLOCK = 64 * 1024
SUB = 4096

FILLS = {
    "0xFF": b"\xff" * BLOCK,
    "0x41": b"A" * BLOCK,
    "DEADBEEF": b"DEADBEEF" * (BLOCK // 8),
    "Gutmann 92 49 24": (b"\x92\x49\x24" * (BLOCK // 3 + 1))[:BLOCK],
    "0x55AA": b"\x55\xaa" * (BLOCK // 2),
    "one random 512-byte sector": random.Random(1).randbytes(512) * (BLOCK // 512),
    "one text sector": (text(BLOCK, 3)[:512]) * (BLOCK // 512),
    "0xFF then the zeros past a file's end": b"\xff" * (BLOCK - 5000) + bytes(5000),
    "0xFF and zeroed sub-blocks": (b"\xff" * SUB + bytes(SUB)) * (BLOCK // SUB // 2),
    "0xFF and files' last 100 bytes": (b"\xff" * SUB + b"\xff" * 100 + bytes(SUB - 100)) * (BLOCK // SUB // 2),
    "0xFF over files of a 1 KiB-block file system (each last block: its bytes, then zeros)":
        (b"\xff" * 300 + bytes(724) + b"DEADBEEF" * 128 + b"\xff" * 700 + bytes(324) + b"\xff" * 1024) * (BLOCK // SUB),
}


def test_fill_period_names_fills_and_not_data() -> None:
    assert fill_period(b"\xff" * SUB) == 1 and fill_period(b"DEADBEEF" * 512) == 8
    assert fill_period(random.Random(2).randbytes(512) * 8) == 512
    assert fill_period(bytes(1000) + b"\x92\x49\x24" * 600 + bytes(1296)) == 3  # zeros either side left out
    # data: text, a database page, a page holding only its header (PostgreSQL after VACUUM: 24
    # bytes, then zeros), random bytes, a line of 67 bytes repeated (the RPO bench's writer, a
    # log repeating a message: no period <= 16 or dividing 512), a body under 256 bytes
    assert fill_period(text(SUB, 4)) == 0 and fill_period(db_page_block(5)[:SUB]) == 0
    assert fill_period(b"\x00\x00\x00\x00\x18\x00\x20\x00" * 3 + bytes(SUB - 24)) == 0
    assert fill_period(os.urandom(SUB)) == 0
    line = b"ward 4 patient 123456 dose 250 mg stable, reviewed by the nurse ok\n"
    assert len(line) == 67 and fill_period((line * 62)[:SUB]) == 0
    assert fill_period(b"\xff" * 200 + bytes(SUB - 200)) == 0
    # crafted to match every shift of the head and tail: bounded work, and no fill
    assert fill_period(b"a" * 2000 + b"b" + b"a" * 2095) == 0 and fill_period(b"a" * 4095 + b"b") == 0
    assert holds_no_data(None) and holds_no_data(b"") and holds_no_data(bytes(BLOCK))
    assert all(holds_no_data(f) for f in FILLS.values())
    assert not holds_no_data(b"\xff" * (BLOCK - SUB) + text(SUB, 5))  # one sub-block of data left


@pytest.mark.parametrize("name", sorted(FILLS))
@pytest.mark.parametrize("old", ["text", "database pages", "random (a JPEG)"])
def test_a_fill_over_data_is_wiped(name: str, old: str) -> None:
    before = {"text": text(BLOCK, 6), "database pages": db_page_block(7), "random (a JPEG)": os.urandom(BLOCK)}[old]
    f = compare_block(FILLS[name], before)
    assert f.wiped and not f.fresh and not f.unfilled, (name, old, f)


def test_what_is_no_wipe() -> None:
    """Data over data, a fill over a fill or over zeros, zeros over a fill (nothing held data), and
    a block with one sub-block of data left (the limit: a wiper sparing one 4 KiB in 64 KiB is not
    counted, as one zeroing 15 of 16 sub-blocks is not)."""
    t = text(BLOCK, 8)
    assert not compare_block(text(BLOCK, 9), t).wiped
    assert not compare_block(FILLS["0xFF"], FILLS["DEADBEEF"]).wiped
    assert not compare_block(FILLS["0xFF"], None).wiped and compare_block(FILLS["0xFF"], None).fresh
    assert not compare_block(None, FILLS["0xFF"]).wiped and compare_block(None, t).wiped
    assert not compare_block(b"\xff" * (BLOCK - SUB) + t[-SUB:], t).wiped
    # pages holding only their header (a table emptied by DELETE and VACUUM): no fill, no wipe
    assert not compare_block((b"\x01\x00\x00\x00\x18\x00\x20\x1f" * 3 + bytes(8192 - 24)) * 8, db_page_block(15)).wiped
    # the benign and attack pairs of the cost corpus (text edits, logs, database pages, the RPO
    # writer's repeated lines, compressed over compressed, encryption): none is a wipe
    assert not [(kind, i) for kind, i, new, old, rn, ro in cost.pairs() if compare_block(new, old, rn, ro).wiped]


def test_the_wipe_window_counts_fills_and_releases_them_when_data_comes_back() -> None:
    t = text(BLOCK, 10)
    s = SnapshotSignals(data_blocks=10)
    s.add(1, compare_block(FILLS["0xFF"], t))  # wiped with 0xFF
    s.add(2, compare_block(text(BLOCK, 11), FILLS["0xFF"]))  # a fill reused for data: released
    s.add(3, compare_block(os.urandom(BLOCK), FILLS["0x41"]))  # random over a fill: not released
    assert s.wiped == 1 and s.zeroed == {1} and s.refilled == {2}, (s.zeroed, s.refilled)
    assert s.destroyed == pytest.approx(0.1)


def _fill_wiped(data: int, victims: set[int], fill: bytes) -> SnapshotSignals:
    """The signals of a snapshot over ``data`` text blocks whose ``victims`` were overwritten with
    ``fill``: compare_block per block, as the judge does."""
    s = SnapshotSignals(data_blocks=data)
    old = text(BLOCK, 12)
    finding = compare_block(fill, old)
    for i in sorted(victims):
        s.add(i, finding)
    return s


def test_a_fill_wiper_is_suspect_at_once_and_a_slow_one_by_the_wipe_window() -> None:
    """40 % of the data overwritten with 0xFF in one snapshot: suspect by ``wipe_max``; 25 % of
    what is left per snapshot with ``DEADBEEF``: clean at #2 (25 %), suspect at #3 by the wipe
    window (43.8 %), which names #2. Before, both were clean at every step."""
    v = judge_relative(2, _fill_wiped(100, set(range(40)), FILLS["0xFF"]), [], [], P)
    assert v.verdict == "suspect" and "became zeros or a fill" in v.reasons[0], v.reasons
    rng = random.Random(3)
    live, carried, verdicts = list(range(64)), {}, []
    for seq in (2, 3):
        victims = set(rng.sample(live, len(live) // 4))
        v = judge_relative(seq, _fill_wiped(len(live), victims, FILLS["DEADBEEF"]), [], [], P, carried=carried)
        verdicts.append(v.verdict)
        live = [b for b in live if b not in victims]
        carried = v.slow
    assert verdicts == ["clean", "suspect"] and v.flagged == (WIPES,) and v.first_suspect_seq == 2, v.reasons


def test_a_fill_weighs_nothing_in_the_files_data() -> None:
    """``ext4alloc.data_weight``: a file written full of a fill holds no data, as one full of zeros
    (a wiper deleting files and writing as many 0xFF files elsewhere makes no deleted data look
    moved)."""
    content = text(SUB, 13) + b"\xff" * SUB + bytes(SUB) + b"DEADBEEF" * 512 + db_page_block(14)[-SUB:]
    assert ext4alloc.data_weight(content, SUB).tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert np.all(ext4alloc.data_weight(FILLS["one random 512-byte sector"], SUB) == 0.0)
