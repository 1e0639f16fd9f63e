"""The checksummed dump file (:mod:`replicad.consensus.dumpfile`, format 3): every single
flipped bit of a signed dump is refused before its content is looked at; this site's own
damaged dump refuses to start (``DumpDamagedError``, exit 5); a damaged dump from the leader is
refused and counted (``dump_damaged``), the file untouched; a dump of the previous format (2,
bare msgpack) is accepted once and rewritten with its checksum."""

from __future__ import annotations

import logging

import msgpack
import pytest

from replicad.consensus import dumpfile
from replicad.consensus.channel import RefusalLog
from replicad.consensus.checkpoint import verify_dump
from replicad.consensus.guard import GuardedSerializer
from replicad.core import errors
from tests.unit.consensus.test_checkpoint import EVERY, TRUST, _good_dump, _node, grown, initial


def _signed_dump_bytes() -> tuple[dict, bytes]:
    doc = grown().dump()
    assert doc["suffix"]  # signed commands in the suffix: a flip there used to be replayed as refused
    return doc, dumpfile.encode(doc)


def test_a_dump_round_trips_and_verifies():
    doc, data = _signed_dump_bytes()
    assert data.startswith(dumpfile.MAGIC)
    decoded, legacy = dumpfile.decode(data)
    assert not legacy and decoded == doc
    verify_dump(decoded, TRUST, initial(), EVERY)


def test_every_single_bit_flip_of_a_dump_is_refused_as_damaged():
    _, data = _signed_dump_bytes()
    accepted = []
    for offset in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[offset] ^= 1 << bit
            try:
                document, legacy = dumpfile.decode(bytes(bad))
            except errors.DumpRefusedError as err:
                assert err.evidence["reason"] == "dump_damaged"
                continue
            # only a flip in the magic can make it look like the previous format: it must not decode
            accepted.append((offset, bit, legacy))
    assert accepted == [], accepted[:5]


def test_a_flip_in_a_suffix_command_of_the_own_dump_refuses_to_start(tmp_path):
    good = dumpfile.frame(_good_dump(tmp_path))
    bad = bytearray(good)
    bad[len(good) - 3] ^= 0x04  # in the body, near its end
    (tmp_path / "raft.dump").write_bytes(bytes(bad))
    node = _node(tmp_path)
    with pytest.raises(errors.DumpDamagedError) as caught:
        node.start()
    err = caught.value
    assert err.exit_code == 5 and err.evidence["reason"] == "dump_damaged" and "checksum" in err.message
    assert "README" in err.evidence["action"]
    assert (tmp_path / "raft.dump").read_bytes() == bytes(bad)  # nothing changed
    assert not (tmp_path / "raft.journal").exists()


def test_an_own_dump_of_the_previous_format_is_accepted_once_and_rewritten(tmp_path, caplog):
    legacy = _good_dump(tmp_path)  # bare msgpack: format 2
    (tmp_path / "raft.dump").write_bytes(legacy)
    node = _node(tmp_path)
    with caplog.at_level(logging.WARNING, logger="replicad.consensus.raft"):
        node.start()
    try:
        assert any("previous file format" in r.getMessage() for r in caplog.records)
        data = (tmp_path / "raft.dump").read_bytes()
        assert data == dumpfile.frame(legacy)
        assert dumpfile.decode(data) == (msgpack.unpackb(legacy, raw=False, strict_map_key=False), False)
    finally:
        node.close()


def test_a_damaged_dump_from_the_leader_is_refused_counted_and_not_written(tmp_path, caplog):
    doc, data = _signed_dump_bytes()
    dump = tmp_path / "raft.dump"
    dump.write_bytes(b"the current dump")
    refusals = RefusalLog()
    checked = []
    guard = GuardedSerializer(object(), str(dump), lambda d: checked.append(d) or [], refusals)
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0x01
    with caplog.at_level(logging.ERROR):
        assert guard.setTransmissionData((bytes(bad[:100]), True, False)) is False
        assert guard.setTransmissionData((bytes(bad[100:]), False, True)) is False
    assert refusals.counts() == {"dump_damaged": 1} and checked == []
    assert dump.read_bytes() == b"the current dump"
    assert any(r.levelno == logging.ERROR and "checksum" in r.getMessage() for r in caplog.records)
    assert guard.setTransmissionData((data, True, True)) is True
    assert dump.read_bytes() == data and checked == [doc]
    # a leader still running the previous format: verified, stored here with the checksum
    legacy = msgpack.packb(doc, use_bin_type=True)
    assert guard.setTransmissionData((legacy, True, True)) is True
    assert dump.read_bytes() == dumpfile.frame(legacy)
