"""The durable Raft journal (:mod:`replicad.consensus.journal`) on real files and a real tmpfs:
damage before the tail refuses to open (never a truncation), a torn tail is dropped (and kept
aside), and a full disk never leaves a torn record in front of acknowledged ones (issue 13,
items 2 and 3)."""

from __future__ import annotations

import os
import struct

import pytest

from replicad.consensus.journal import JOURNAL_MAGIC, DurableJournal
from replicad.core import errors
from tests.tmpfs import small_tmpfs

HEADER = len(JOURNAL_MAGIC) + 4


def written(path, n, size=40, term=1):
    """A journal at ``path`` holding ``n`` records of ``size``-byte commands; their offsets."""
    journal = DurableJournal(str(path))
    for idx in range(1, n + 1):
        journal.add(b"\x00" + bytes([idx % 256]) * (size - 1), idx, term)
    offsets = list(journal._offsets)
    journal._destroy()
    return offsets


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.parametrize("where", ["payload", "length", "crc", "idx"])
def test_one_flipped_byte_before_valid_records_refuses_to_open_and_truncates_nothing(tmp_path, where):
    path = tmp_path / "raft.journal"
    offsets = written(path, 20)
    bad = offsets[7]
    flip(path, bad + {"payload": 8 + 16 + 5, "length": 0, "crc": 5, "idx": 8}[where])
    before = path.read_bytes()
    with pytest.raises(errors.JournalDamagedError) as info:
        DurableJournal(str(path))
    err = info.value
    assert isinstance(err, errors.IntegrityError) and err.exit_code == 5
    assert err.evidence["path"] == str(path) and err.evidence["offset"] == bad
    assert err.evidence["valid_records_after"] >= 11  # records 9..20 at least (8 may be the flipped one)
    assert str(path) in err.message and str(bad) in err.message and "README" in err.message
    assert path.read_bytes() == before  # refused: not one byte dropped


def test_a_torn_tail_is_dropped_and_kept_aside(tmp_path):
    path = tmp_path / "raft.journal"
    offsets = written(path, 5)
    with open(path, "ab") as f:
        f.write(struct.pack("<II", 64, 0) + b"half a record")  # a crash mid-write: never acknowledged
    journal = DurableJournal(str(path))
    assert [e[1] for e in journal] == [1, 2, 3, 4, 5]
    journal._destroy()
    aside = list(tmp_path.glob("raft.journal.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes().endswith(b"half a record")
    # the last complete record with a flipped byte is a tail too: nothing valid follows it
    flip(path, offsets[4] + 8 + 16 + 1)
    journal = DurableJournal(str(path))
    assert [e[1] for e in journal] == [1, 2, 3, 4]
    journal._destroy()


def test_a_full_disk_never_leaves_a_torn_record_before_acknowledged_ones(tmp_path):
    """ENOSPC on a real tmpfs: a short write is completed or undone, never skipped over; the
    append that failed raises StoreFullError (not acknowledged); once space is back, later
    appends follow the last acknowledged one and a reopen finds every acknowledged entry."""
    with small_tmpfs(tmp_path / "raft", "256k") as raft_dir:
        filler = raft_dir / "filler"
        filler.write_bytes(b"\xff" * 96 * 1024)
        path = raft_dir / "raft.journal"
        journal = DurableJournal(str(path))
        acked: list[int] = []
        failures = []
        idx = 1
        while len(failures) < 3 and idx < 1000:
            try:
                journal.add(b"\x00" + os.urandom(2999), idx, 1)
            except (OSError, errors.ReplicadError) as exc:
                failures.append(exc)
                continue
            acked.append(idx)
            idx += 1
        assert failures, "the tmpfs never filled up"
        assert len(journal) == len(acked)
        filler.unlink()  # the operator frees space
        for _ in range(5):
            journal.add(b"\x00" + os.urandom(2999), idx, 1)
            acked.append(idx)
            idx += 1
        journal._destroy()
        reopened = DurableJournal(str(path))  # a restart
        assert [e[1] for e in reopened] == acked
        assert not list(raft_dir.glob("raft.journal.torn-*"))  # nothing torn, anywhere
        reopened._destroy()
    # typed for the caller: the site answers store_full (507), not a traceback or no_quorum
    assert all(isinstance(exc, errors.StoreFullError) and exc.http_status == 507 for exc in failures), failures


# --------------------------------------------------------------------------- a journal moved aside


def rejoined_node(tmp_path):
    """A hardened node whose journal (term 3, commit index 6) was moved aside by the operator,
    meta kept; its transport records what it sends instead of sending."""
    import json

    from pysyncobj import SyncObjConf
    from pysyncobj.node import TCPNode

    from replicad.consensus import raft as consensus
    from tests.unit.consensus.test_raft import PASSWORD, free_port

    path = tmp_path / "raft.journal"
    journal = DurableJournal(str(path))
    for idx in range(1, 7):
        journal.add(b"\x01", idx, 1 if idx < 4 else 3)
    journal.setCurrentTerm(3, None)
    journal.setRaftCommitIndex(6)
    journal._destroy()
    path.rename(tmp_path / "raft.journal.damaged")  # README: "Raft journal damaged"
    assert json.loads(path.with_name("raft.journal.meta").read_text())["currentTerm"] == 3
    leader, candidate = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    conf = SyncObjConf(password=PASSWORD, journalFile=str(path), autoTick=False, appendEntriesUseBatch=False,
                       dynamicMembershipChange=False)
    obj = consensus._HardenedSyncObj(f"127.0.0.1:{free_port()}", [leader, candidate], conf=conf,
                                     consumers=[consensus._StateConsumer(None)])
    obj.sent = []
    obj._SyncObj__transport.send = lambda node, message: obj.sent.append((node, message))
    obj._SyncObj__connectedToAnyone = lambda: True
    return obj, TCPNode(leader), TCPNode(candidate)


def test_a_node_whose_journal_was_moved_aside_votes_for_nobody_until_it_caught_up(tmp_path):
    """pysyncobj lets an emptied log vote: its log (idx 1, term 0) is behind every candidate's,
    so it grants any vote and could elect a candidate lacking entries it had acknowledged."""
    obj, leader, candidate = rejoined_node(tmp_path)
    try:
        journal = obj._SyncObj__raftLog
        assert len(journal) == 1 and obj.raftCurrentTerm == 3  # an empty log, the term kept
        # a candidate whose log lacks committed entries 5..6 (last idx 4)
        obj._SyncObj__onMessageReceived(candidate, {"type": "request_vote", "term": 4, "last_log_index": 4,
                                                    "last_log_term": 3})
        assert [m for _, m in obj.sent if m.get("type") == "response_vote"] == []
        assert obj._SyncObj__votedForNodeId is None
        assert obj.refusals.counts().get("vote_while_rejoining") == 1
        obj._SyncObj__onMessageReceived(candidate, {"type": "pre_vote", "term": 4, "last_log_index": 4,
                                                    "last_log_term": 3})
        assert [m["granted"] for _, m in obj.sent if m.get("type") == "pre_vote_response"] == [False]
        obj.sent.clear()
        obj._SyncObj__raftElectionDeadline = 0  # no leader heard: it does not run either
        obj._pre_vote_gate()
        assert [m["type"] for _, m in obj.sent] == []
        assert journal.rejoining
        # the leader (term 4) catches it up: entries 2..7, committed up to 7
        obj._SyncObj__onMessageReceived(leader, {"type": "append_entries", "term": 4, "commit_index": 7,
                                                 "prevLogIdx": 1, "prevLogTerm": 0,
                                                 "entries": [(b"\x01", i, 1 if i < 4 else 3) for i in range(2, 7)]
                                                 + [(b"\x01", 7, 4)]})
        assert obj.raftCommitIndex == 7 and not journal.rejoining
        assert "rejoin" not in (tmp_path / "raft.journal.meta").read_text()  # stored: a restart votes too
    finally:
        obj._destroy()


def test_a_lone_node_whose_journal_was_moved_aside_is_not_held_back(tmp_path):
    """Nobody to catch up from: a one-member group keeps electing itself (its log is all there is)."""
    from pysyncobj import SyncObjConf

    from replicad.consensus import raft as consensus
    from tests.unit.consensus.test_raft import PASSWORD, free_port

    path = tmp_path / "raft.journal"
    journal = DurableJournal(str(path))
    journal.setCurrentTerm(2, None)
    journal._destroy()
    path.unlink()
    conf = SyncObjConf(password=PASSWORD, journalFile=str(path), autoTick=False, appendEntriesUseBatch=False,
                       dynamicMembershipChange=False)
    obj = consensus._HardenedSyncObj(f"127.0.0.1:{free_port()}", [], conf=conf,
                                     consumers=[consensus._StateConsumer(None)])
    try:
        assert obj._SyncObj__raftLog.rejoining and not obj._rejoining()
    finally:
        obj._destroy()


def test_a_full_disk_under_the_lazy_meta_store_names_the_meta_file_and_is_not_logged_each_second(
        tmp_path, caplog, monkeypatch):
    """The commit index is stored once a second (onOneSecondTimer): on a full tmpfs the error names
    the file written, raft.journal.meta (not raft.journal), and the same failure is logged once,
    then once per META_LOG_EVERY_S with how many tries failed since; a recovery once."""
    import errno
    import logging

    from replicad.consensus import journal as journal_module

    with small_tmpfs(tmp_path / "raft", "256k") as raft_dir:
        journal = DurableJournal(str(raft_dir / "raft.journal"))
        journal.add(b"\x00" * 40, 1, 1)
        filler = raft_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\xff" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        with pytest.raises(errors.StoreFullError) as caught:
            journal.setCurrentTerm(2, None)  # stored at once (a vote): raised to the caller
        assert f"({raft_dir / 'raft.journal.meta'})" in str(caught.value)
        assert caught.value.evidence["path"] == str(raft_dir / "raft.journal.meta")

        journal.setRaftCommitIndex(1)
        with caplog.at_level(logging.WARNING, logger="replicad.consensus.raft"):
            for _ in range(30):
                journal.onOneSecondTimer()
            lines = [r.getMessage() for r in caplog.records]
            assert len(lines) == 1, lines
            assert "raft.journal.meta" in lines[0] and "no space left on device" in lines[0]
            monkeypatch.setattr(journal_module, "META_LOG_EVERY_S", 0.0)
            journal.onOneSecondTimer()
            assert "(30 more failed tries since the last line" in caplog.records[-1].getMessage()
            filler.unlink()
            journal.onOneSecondTimer()
            journal.onOneSecondTimer()
            assert len(caplog.records) == 3
            assert "stored again (after 31 failed tries)" in caplog.records[-1].getMessage()
        journal._destroy()
