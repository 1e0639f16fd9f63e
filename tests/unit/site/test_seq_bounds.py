"""The primary's next seq and the catalog stay inside the state machine's bounds: a seq
space exhausted by a commit (an older release accepted 2**63-1) is a typed OutOfRangeError,
never sqlite3's OverflowError."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicad.core.errors import OutOfRangeError
from replicad.core.state import INT_MAX, SEQ_STEP_MAX
from replicad.site.replication import next_seq
from replicad.storage.catalog import Catalog, SnapshotRecord


def test_next_seq_is_one_past_committed_and_local_within_the_step() -> None:
    assert next_seq("ehr", 0, 0) == 1
    assert next_seq("ehr", 5, 7) == 8
    assert next_seq("ehr", 5, 5 + SEQ_STEP_MAX - 1) == 5 + SEQ_STEP_MAX
    with pytest.raises(OutOfRangeError) as err:
        next_seq("ehr", 5, 5 + SEQ_STEP_MAX)
    assert err.value.code == "out_of_range" and err.value.evidence["limit"] == 5 + SEQ_STEP_MAX
    with pytest.raises(OutOfRangeError):
        next_seq("ehr", INT_MAX, 0)  # the seq space of a volume exhausted by an old commit


def test_catalog_refuses_ints_sqlite_cannot_hold_with_a_typed_error(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.db")
    try:
        with pytest.raises(OutOfRangeError):
            catalog.put(SnapshotRecord("ehr", 1, 2**63, b"\x01" * 32, "local", 0))
        with pytest.raises(OutOfRangeError):
            catalog.set_state("ehr", 1, 2**63, "committed")
        with pytest.raises(OutOfRangeError):
            catalog.set_standby("ehr", 2**64, b"\x01" * 32)
        assert catalog.list("ehr") == []
        catalog.put(SnapshotRecord("ehr", 1, INT_MAX, b"\x01" * 32, "local", 0))
        assert [r.seq for r in catalog.list("ehr")] == [INT_MAX]
    finally:
        catalog.close()
