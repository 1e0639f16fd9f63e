"""A forced promotion to a snapshot that is not committed names the committed ones in a bounded
line: their count, range and the newest few, not every sequence number of the volume."""

from __future__ import annotations

from replicad.site.promotion import _seqs_text


def test_many_committed_snapshots_are_shown_as_count_range_and_newest() -> None:
    text = _seqs_text({s: {} for s in range(1, 1001)})
    assert text == "committed: 1000 snapshots, #1 to #1000; the newest #996, #997, #998, #999, #1000"


def test_a_few_are_listed_and_none_is_said() -> None:
    assert _seqs_text([4, 2, 3]) == "committed: #2, #3, #4"
    assert _seqs_text([]) == "no committed snapshot"
