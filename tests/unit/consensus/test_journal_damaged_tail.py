"""DurableJournal: a damaged *complete* last record may be an acknowledged entry, so the
node that drops it rejoins (votes for nobody until caught up); an incomplete last record (an
append cut by a crash or a full disk, never acknowledged) is dropped without that. Found by
the chaos Raft-layer history (``chaos/raftjepsen.py``, fault ``journal-tail-minority``: with
one more site down, the two left elected a leader without the entry and rewrote it)."""

from __future__ import annotations

from pathlib import Path

from replicad.consensus.journal import DurableJournal
from chaos.raftdisk import journal_records


def _journal_with(path: Path, n: int) -> None:
    j = DurableJournal(str(path))
    for i in range(1, n + 1):
        j.add(b"command-%d" % i + b"x" * 40, i, 1)
    j.setCurrentTerm(1, None)
    j._destroy()


def test_a_flipped_bit_in_the_last_complete_record_makes_the_node_rejoin(tmp_path):
    path = tmp_path / "raft.journal"
    _journal_with(path, 3)
    offset, size, idx = journal_records(path)[-1]
    data = bytearray(path.read_bytes())
    data[offset + size - 5] ^= 0x10  # inside the payload: the record is complete, its CRC fails
    path.write_bytes(bytes(data))
    j = DurableJournal(str(path))
    assert [e[1] for e in j] == [1, 2] and idx == 3
    assert j.rejoining and j.rejoin_commit_index() >= 3
    j._destroy()
    assert DurableJournal(str(path)).rejoining  # stored in the meta file: a restart keeps it


def test_an_incomplete_last_record_is_dropped_without_rejoining(tmp_path):
    path = tmp_path / "raft.journal"
    _journal_with(path, 3)
    offset, size, _ = journal_records(path)[-1]
    path.write_bytes(path.read_bytes()[:offset + size // 2])  # an append cut short
    j = DurableJournal(str(path))
    assert [e[1] for e in j] == [1, 2]
    assert not j.rejoining
