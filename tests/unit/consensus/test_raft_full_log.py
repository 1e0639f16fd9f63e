"""Point 12's ERROR about a journal that cannot be written for lack of space: logged at the
first failure, then once per journal.META_LOG_EVERY_S with how many failed since (it was a line
every 10 s for as long as the disk stayed full), at once again when its text changes."""

from __future__ import annotations

import logging

from pysyncobj import SyncObjConf

from replicad.consensus import journal as journal_module
from replicad.consensus import raft as consensus
from replicad.core import errors
from tests.unit.consensus.test_raft import PASSWORD, free_port


def test_a_full_journal_is_logged_once_then_every_few_minutes_with_a_count(tmp_path, caplog, monkeypatch) -> None:
    conf = SyncObjConf(password=PASSWORD, journalFile=str(tmp_path / "raft.journal"), autoTick=False,
                       appendEntriesUseBatch=False, dynamicMembershipChange=False)
    obj = consensus._HardenedSyncObj(f"127.0.0.1:{free_port()}", [f"127.0.0.1:{free_port()}"], conf=conf,
                                     consumers=[consensus._StateConsumer(None)])
    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "replicad.consensus.raft"]

    try:
        full = errors.StoreFullError(f"appending a raft entry ({tmp_path / 'raft.journal'}): no space left on device")
        with caplog.at_level(logging.ERROR, logger="replicad.consensus.raft"):
            for _ in range(50):
                obj._journal_full(full)
            assert lines() == [f"raft: {full}; acknowledging nothing until space is back"]
            monkeypatch.setattr(journal_module, "META_LOG_EVERY_S", 0.0)
            obj._journal_full(full)
            assert lines()[-1].endswith("(49 more such failures since the last line)"), lines()
            monkeypatch.setattr(journal_module, "META_LOG_EVERY_S", 300.0)
            other = errors.StoreFullError("writing the raft meta file (x/raft.journal.meta): no space left on device")
            obj._journal_full(other)  # another text: at once
            assert len(lines()) == 3 and "raft.journal.meta" in lines()[-1], lines()
    finally:
        obj.destroy()
