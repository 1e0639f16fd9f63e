"""The Raft meta file (``raft.journal.meta``: term, vote, commit index) carries a checksum
(:func:`replicad.consensus.journal.meta_sum`, format 2): every single flipped bit is refused
at open (``JournalDamagedError``, exit 5, the runbook named, nothing changed); a file of the
previous format (1, no checksum) is accepted once and rewritten with one; a moved-aside meta
file next to a journal with entries makes the node rejoin (it votes for nobody)."""

from __future__ import annotations

import json
import logging

import pytest

from replicad.consensus.journal import META_VERSION, DurableJournal, encode_meta, meta_sum
from replicad.core import errors


def _journal_with_vote(tmp_path, term=7, voted="127.0.0.1:7101", entries=2):
    path = tmp_path / "raft.journal"
    journal = DurableJournal(str(path))
    for idx in range(1, entries + 1):
        journal.add(b"\x01cmd", idx, term)
    journal.setCurrentTerm(term, voted)
    journal.setRaftCommitIndex(entries)
    journal._destroy()
    return path, path.with_name("raft.journal.meta")


def test_the_meta_file_is_written_with_its_checksum_and_read_back(tmp_path):
    path, meta_path = _journal_with_vote(tmp_path)
    doc = json.loads(meta_path.read_bytes())
    assert doc["v"] == META_VERSION == 2 and doc["sum"] == meta_sum(doc)
    journal = DurableJournal(str(path))
    assert (journal.getCurrentTerm(), journal.getVotedForNodeId(), journal.getRaftCommitIndex()) == \
        (7, "127.0.0.1:7101", 2)
    assert not journal.rejoining
    journal._destroy()
    assert not meta_path.with_name("raft.journal.meta.tmp").exists()  # written tmp + rename


def test_every_single_bit_flip_of_the_meta_file_is_refused(tmp_path):
    path, meta_path = _journal_with_vote(tmp_path)
    good = meta_path.read_bytes()
    accepted = []
    for offset in range(len(good)):
        for bit in range(8):
            bad = bytearray(good)
            bad[offset] ^= 1 << bit
            meta_path.write_bytes(bytes(bad))
            try:
                DurableJournal(str(path))._destroy()
                accepted.append((offset, bit, bytes(bad)))
            except errors.JournalDamagedError as err:
                assert err.exit_code == 5 and "README" in err.message and "Raft journal damaged" in err.message
                assert err.evidence["path"] == str(meta_path)
                assert meta_path.read_bytes() == bytes(bad)  # refused: nothing changed
    assert accepted == [], accepted[:3]
    assert len(good) * 8 > 500  # the loop really ran over a whole file


def test_the_flip_the_campaign_found_is_refused(tmp_path):
    path, meta_path = _journal_with_vote(tmp_path)
    meta_path.write_bytes(meta_path.read_bytes().replace(b"votedForNodeId", b"votEdForNodeId"))
    with pytest.raises(errors.JournalDamagedError) as caught:
        DurableJournal(str(path))
    assert "checksum" in caught.value.message


def test_a_meta_file_of_the_previous_format_is_accepted_once_and_rewritten(tmp_path, caplog):
    path, meta_path = _journal_with_vote(tmp_path)
    legacy = {"v": 1, "currentTerm": 9, "votedForNodeId": "127.0.0.1:7102", "raftCommitIndex": 2}
    meta_path.write_bytes(json.dumps(legacy, sort_keys=True).encode())
    with caplog.at_level(logging.WARNING, logger="replicad.consensus.raft"):
        journal = DurableJournal(str(path))
    assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (9, "127.0.0.1:7102")
    journal._destroy()
    assert any("previous format" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    doc = json.loads(meta_path.read_bytes())
    assert doc["v"] == 2 and doc["sum"] == meta_sum(doc) and doc["currentTerm"] == 9
    # once rewritten, a later change without the checksum is damage, not the previous format
    doc["currentTerm"] = 3
    meta_path.write_bytes(json.dumps(doc).encode())
    with pytest.raises(errors.JournalDamagedError):
        DurableJournal(str(path))


def test_a_checksummed_meta_of_an_unknown_version_is_a_newer_format_not_damage(tmp_path):
    path, meta_path = _journal_with_vote(tmp_path)
    doc = {"v": 3, "currentTerm": 7}
    meta_path.write_bytes(json.dumps({**doc, "sum": meta_sum(doc)}).encode())
    with pytest.raises(errors.RemoteProtocolError):
        DurableJournal(str(path))


def test_a_moved_aside_meta_file_makes_the_node_rejoin(tmp_path):
    path, meta_path = _journal_with_vote(tmp_path, entries=3)
    meta_path.rename(meta_path.with_name("raft.journal.meta.damaged"))
    journal = DurableJournal(str(path))
    assert journal.rejoining and journal.rejoin_commit_index() == 3
    journal._destroy()
    assert DurableJournal(str(path)).rejoining  # stored: a restart still votes for nobody


def test_encode_meta_round_trips():
    doc = json.loads(encode_meta({"currentTerm": 4, "votedForNodeId": None, "sum": "stale"}))
    assert doc["sum"] == meta_sum(doc) and doc["v"] == 2 and doc["currentTerm"] == 4
