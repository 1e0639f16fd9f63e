"""``SeenMark``: how far a site saw the cluster live (real files in a temporary data dir)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from replicad.site.seen import SEEN_FILE, SeenMark


def test_a_first_start_is_before_joining_and_a_log_without_its_mark_is_away(tmp_path: Path, caplog) -> None:
    fresh = SeenMark(tmp_path / "fresh")  # a site's first start: nothing it applies was missed
    assert fresh.mark == 0 and fresh.before_first_join() and not fresh.away(1) and fresh.missing is None
    (tmp_path / "fresh").mkdir()
    fresh.save(7)  # it joined: from now on past the mark is away
    assert not fresh.before_first_join() and fresh.away(8) and not fresh.away(7)
    for name in ("raft.journal", "raft.dump"):  # the mark deleted (or a data dir of a release before it)
        dd = tmp_path / name
        (dd / "raft").mkdir(parents=True)
        (dd / "raft" / name).write_bytes(b"x")
        with caplog.at_level(logging.WARNING):
            mark = SeenMark(dd)
        assert mark.mark is None and mark.missing == "missing" and not mark.before_first_join(), name
        assert mark.away(1) and mark.away(10**9), name
        mark.save(3)
        assert not mark.away(3) and mark.away(4) and mark.missing is None
    assert "missing beside a Raft log" in caplog.text


def test_save_only_moves_forward_and_is_read_back(tmp_path: Path) -> None:
    mark = SeenMark(tmp_path)
    mark.save(40)
    mark.save(12)  # an older count (a racing save): the mark stays
    assert json.loads((tmp_path / SEEN_FILE).read_text()) == {"applied": 40}
    again = SeenMark(tmp_path)
    assert again.mark == 40 and not again.away(40) and again.away(41)


def test_an_unreadable_mark_is_logged_and_everything_replayed_is_away(tmp_path: Path, caplog) -> None:
    (tmp_path / SEEN_FILE).write_text('{"applied": -3}')
    with caplog.at_level(logging.WARNING):
        mark = SeenMark(tmp_path)
    assert mark.mark is None and mark.away(5) and not mark.before_first_join()
    assert mark.missing.startswith("unreadable") and "unreadable" in caplog.text
