"""Intermittent encryption whose random groups are glued to filler of their own (8 random bytes
and 8 filler bytes per 32 bytes of text): the filler keeps the sub-block's entropy near the
text's (5.3-5.8 bits/byte) and gives the novel bytes repeats, so neither the entropy jump nor the
repeat test saw it (0 of 16 sub-blocks). The islands test (:func:`anomaly.random_islands`)
judges the novel bytes without their filler. Real bytes: text, letters, logs, a real SQLite
file's pages; no mocks."""

from __future__ import annotations

import gzip
import random
import sqlite3
from pathlib import Path

import lz4.block
import pytest

from replicad.core import anomaly
from replicad.core.anomaly import compare_block, island_bytes, moved_share, random_islands
from tests.unit.core.test_anomaly_alphabet import log_lines
from tests.unit.core.test_anomaly_relative import B, text

LETTER = ("Dear Dr. Meyer,\n\nthank you for referring Mrs. Anna Kowalski (born {year}) to our outpatient "
          "clinic. She presented on {day} December with shortness of breath on exertion and ankle swelling "
          "over the last two weeks. Blood pressure was {sys}/{dia} mmHg, heart rate {hr} per minute, oxygen "
          "saturation 95 % on room air. The ECG showed sinus rhythm without acute changes. We started "
          "furosemide 40 mg daily and arranged an echocardiogram for next week. Please check her potassium "
          "and creatinine in five days.\n\nKind regards,\nDr. J. Novak, Cardiology\n\n")


def letters(seed: int) -> bytes:
    r = random.Random(seed)
    out = "".join(LETTER.format(year=r.randint(1930, 2000), day=r.randint(1, 28), sys=r.randint(100, 170),
                                dia=r.randint(60, 100), hr=r.randint(50, 110)) for _ in range(B // 500 + 2))
    return out.encode()[:B]


def sqlite_rows(tmp: Path, rows: int = 3000) -> sqlite3.Connection:
    """A real SQLite file of text rows (name, ward, note); the caller reads the file."""
    c = sqlite3.connect(tmp)
    r = random.Random(1)
    c.execute("create table t(id integer primary key, k blob, name text, ward text, note text)")
    c.executemany("insert into t values(?,?,?,?,?)", [(i, None, f"patient {r.randint(0, 99999)}",
                                                       f"ward {r.randint(1, 12)}", "observation normal, continue "
                                                       "current dose") for i in range(rows)])
    c.commit()
    return c


def striped(old: bytes, period: int, rnd: int, fill: int, filler: str, seed: int) -> bytes:
    """Of every ``period`` bytes, the first ``rnd`` replaced by random bytes and the next
    ``fill`` by filler glued to them; the rest of the old bytes kept."""
    r = random.Random(seed)
    out = bytearray(old)
    for i in range(0, len(out) - period + 1, period):
        out[i:i + rnd] = r.randbytes(rnd)
        out[i + rnd:i + rnd + fill] = FILLERS[filler](r, fill)
    return bytes(out)


FILLERS = {
    "spaces": lambda r, n: b" " * n,
    "a repeated word": lambda r, n: (b"data" * n)[:n],
    "zeros": lambda r, n: bytes(n),
    "printable pseudo-words": lambda r, n: bytes(r.choice(b"etaoinshrdlu") for _ in range(n)),
}
SHAPES = {"8+8 per 32": (32, 8, 8), "16+16 per 64": (64, 16, 16), "4+4 per 16": (16, 4, 4)}


@pytest.fixture(scope="module")
def sqlite_page_block(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    db = tmp_path_factory.mktemp("islands") / "rows.db"
    sqlite_rows(db).close()
    return db.read_bytes()[4096:4096 + B]  # past the header page: 16 table leaf pages


def lz4_ratio(raw: bytes) -> float:
    return len(lz4.block.compress(raw, store_size=False)) / len(raw)


OLD = {"text": lambda: text(B, 1), "letters": lambda: letters(1), "log": lambda: log_lines(2)}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("filler", list(FILLERS))
@pytest.mark.parametrize("old_name", [*OLD, "SQLite pages"])
def test_random_groups_glued_to_filler_turn_the_block_random(old_name: str, filler: str, shape: str,
                                                             sqlite_page_block: bytes) -> None:
    """Every shape and filler over every kind of old block: the block counts, nearly every data
    sub-block with it (the SQLite block's first sub-block holds the page's free space). Before
    the islands test, spaces, a word and zeros counted 0 of 16 sub-blocks, also with real lz4
    ratios (text 0.52 -> 0.62-0.77); printable pseudo-words were seen by the repeat test
    (memoryless: the filler is random too)."""
    old = sqlite_page_block if old_name == "SQLite pages" else OLD[old_name]()
    new = striped(old, *SHAPES[shape], filler, 2)
    f = compare_block(new, old, lz4_ratio(new), lz4_ratio(old))
    assert f.turned_random and f.random_subs >= 15 and f.structure_lost == f.random_subs, f
    assert f.lz4_after < anomaly.LZ4_INCOMPRESSIBLE_MIN  # lost compressibility cannot see it
    if filler != "printable pseudo-words":
        assert f.islands == f.structure_lost, f  # the islands test alone saw it
        assert f.max_rise < anomaly.ENTROPY_JUMP_MIN or old_name == "SQLite pages"


def test_random_groups_without_filler_stay_seen_by_the_entropy_jump() -> None:
    """8 random bytes per 32 and no filler: the entropy jump counts all 16 (as before)."""
    old = text(B, 1)
    out = bytearray(old)
    r = random.Random(3)
    for i in range(0, B, 32):
        out[i:i + 8] = r.randbytes(8)
    f = compare_block(bytes(out), old)
    assert f.random_subs == 16 and f.islands == 0


def test_the_numbers_of_the_islands_test() -> None:
    old = text(B, 1)
    new = striped(old, 32, 8, 8, "spaces", 4)
    novel = anomaly._novel_bytes(new, old, 0, anomaly.SUB_BLOCK)
    left = island_bytes(novel)
    # what is left is the random groups: ~8 of every 32 bytes of the sub-block, near 8 bits/byte
    assert 880 < len(left) < 1030 and anomaly.byte_entropy_bits(left) > 7.7
    assert random_islands(novel)
    # the filler alone, text, its novel bytes after an edit, or too few random bytes: no islands
    assert island_bytes(b" " * 64) == b"" and island_bytes(b"ab") == b"ab"
    assert not random_islands(text(4096, 2)) and not random_islands(log_lines(3)[:4096])
    assert not random_islands(random.Random(5).randbytes(400) + b" " * 400)
    # ciphertext without filler is one island (the entropy jump's), 64 groups of 16 are 64
    assert not random_islands(random.Random(6).randbytes(1024))
    r = random.Random(6)
    assert random_islands(b"".join(r.randbytes(16) + b" " * 16 for _ in range(64)))
    # the share of moved old content: none under ciphertext, most of it when the old text moved
    assert moved_share(new, old, 0) < anomaly.MOVED_SHARE_MIN
    shifted = (b"x" * 100 + old)[:B]
    assert moved_share(shifted, old, 3) > 0.9


def test_the_islands_test_without_numpy_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    old = text(B, 1)
    new = striped(old, 64, 16, 16, "a repeated word", 7)
    novel = anomaly._novel_bytes(new, old, 4096, anomaly.SUB_BLOCK)
    shifted = (b"x" * 100 + old)[:B]
    with_np = (island_bytes(novel), random_islands(novel), moved_share(new, old, 1), moved_share(shifted, old, 3))
    monkeypatch.setattr(anomaly, "_np", None)
    assert (island_bytes(novel), random_islands(novel), moved_share(new, old, 1),
            moved_share(shifted, old, 3)) == with_np


@pytest.mark.parametrize("key_bytes", [8, 16, 32, 64])
def test_a_random_key_added_to_every_row_of_a_real_sqlite_table_stays_clean(tmp_path: Path, key_bytes: int) -> None:
    """A schema change giving every row a random binary key (a UUID, a SHA-256): the rows grow
    and shift, their old text reappears at new offsets (:func:`moved_share` 0.05-0.21), so the
    islands are no news. Without that rule 32-byte keys counted 24 of 24 changed blocks."""
    db = tmp_path / "rows.db"
    c = sqlite_rows(db)
    before = db.read_bytes()
    r = random.Random(key_bytes)
    c.executemany("update t set k=? where id=?", [(r.randbytes(key_bytes), i) for i in range(3000)])
    c.commit()
    c.close()
    after = db.read_bytes()
    changed = counted = 0
    for off in range(0, min(len(before), len(after)) // B * B, B):
        if after[off:off + B] != before[off:off + B]:
            changed += 1
            counted += compare_block(after[off:off + B], before[off:off + B]).islands > 0
    assert changed >= 2 and counted == 0


def test_rows_with_a_random_key_rewritten_stay_clean(tmp_path: Path) -> None:
    """Rows that had a random key each, half deleted and the file vacuumed: the old pages held
    islands of their own (:func:`random_islands` with ``loose``)."""
    db = tmp_path / "keyed.db"
    c = sqlite3.connect(db)
    r = random.Random(9)
    c.execute("create table t(id integer primary key, k blob, name text, note text)")
    c.executemany("insert into t values(?,?,?,?)", [(i, r.randbytes(16), f"patient {r.randint(0, 99999)}",
                                                     "observation normal") for i in range(4000)])
    c.commit()
    before = db.read_bytes()
    c.execute("delete from t where id % 2 = 0")
    c.commit()
    c.execute("vacuum")
    c.close()
    after = db.read_bytes()
    pairs = [(after[off:off + B], before[off:off + B]) for off in range(0, len(after) // B * B, B)]
    assert pairs and all(compare_block(n, o).islands == 0 for n, o in pairs if n != o)


def journal(seed: int, id_first: bool) -> bytes:
    """A journal of 32-byte records: an 8-byte random id and 8 zero bytes (in either order),
    then 16 bytes of text."""
    r = random.Random(seed)
    words = text(B, 100)
    return b"".join((r.randbytes(8) + bytes(8) if id_first else bytes(8) + r.randbytes(8)) + words[j:j + 16]
                    for j in range(0, B // 2, 16))


def test_a_journal_of_records_with_random_ids_rewritten_in_a_new_layout_is_no_news() -> None:
    """Every record rewritten with a new id, the id and its zero padding swapped: random groups
    glued to zeros where the old bytes were ids and zeros (not random alone), nothing moved,
    but the old sub-blocks held such islands themselves (:func:`random_islands` with
    ``loose``)."""
    old, new = journal(1, True), journal(2, False)
    assert random_islands(anomaly._novel_bytes(new, old, 0, anomaly.SUB_BLOCK))
    f = compare_block(new, old)
    assert f.islands == 0 and not f.turned_random, f


def test_islands_over_islands_are_no_news() -> None:
    """The attack's shape rewritten by itself in place (a table of random keys between fixed
    fields, new keys): the old bytes under the changes were random alone
    (:func:`anomaly._changed_was_random`)."""
    base = text(B, 1)
    f = compare_block(striped(base, 32, 8, 8, "spaces", 3), striped(base, 32, 8, 8, "spaces", 2))
    assert f.islands == 0 and not f.turned_random, f


def test_a_random_last_block_before_its_zero_tail_is_one_island() -> None:
    """gzip of a log written over freed log lines, its last sub-block 300-3,000 bytes of gzip
    then zeros: one run of random bytes (and a few bytes of chance), no islands (:data:`anomaly.ISLAND_RUNS_MIN`); the
    sub-blocks full of gzip count as before (uniform). Without the bound the last one counted
    too, and 30 days of log rotation summed to a slow-window false alarm in the benchmark."""
    old = log_lines(1)
    gz = gzip.compress(text(8 * B, 5))
    for tail in (300, 1000, 3000):
        new = gz[:3 * 4096 + tail] + bytes(B - 3 * 4096 - tail)
        f = compare_block(new, old)
        assert f.islands == 0 and f.random_subs == 3, (tail, f)
    novel = anomaly._novel_bytes(new, old, 3 * 4096, 4096)
    assert anomaly._islands(novel)[1] < anomaly.ISLAND_RUNS_MIN and not random_islands(novel)
