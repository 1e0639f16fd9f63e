"""``SeenMark``: how far a site saw the cluster live (real files in a temporary data dir)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from replicad.site.seen import SEEN_FILE, SeenMark


def test_a_new_data_dir_calls_everything_new_and_an_upgraded_one_nothing(tmp_path: Path) -> None:
    fresh = SeenMark(tmp_path / "fresh")
    assert fresh.mark == 0 and fresh.away(1)
    upgraded = tmp_path / "upgraded"
    (upgraded / "raft").mkdir(parents=True)
    (upgraded / "raft" / "raft.journal").write_bytes(b"x")  # a log written before the mark existed
    mark = SeenMark(upgraded)
    assert mark.mark is None and not mark.away(10**9)


def test_save_only_moves_forward_and_is_read_back(tmp_path: Path) -> None:
    mark = SeenMark(tmp_path)
    mark.save(40)
    mark.save(12)  # an older count (a racing save): the mark stays
    assert json.loads((tmp_path / SEEN_FILE).read_text()) == {"applied": 40}
    again = SeenMark(tmp_path)
    assert again.mark == 40 and not again.away(40) and again.away(41)


def test_an_unreadable_mark_is_logged_and_unknown(tmp_path: Path, caplog) -> None:
    (tmp_path / SEEN_FILE).write_text('{"applied": -3}')
    with caplog.at_level(logging.WARNING):
        mark = SeenMark(tmp_path)
    assert mark.mark is None and not mark.away(5)
    assert "unreadable" in caplog.text
