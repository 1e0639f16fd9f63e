"""The receiver against sizes one site claims (review F1, F2): an announced manifest past the
volume's agreed maximum is refused before any of its pages is looked up, and the chunk budget
never counts a size above the maximum. Real :class:`~replicad.storage.catalog.Catalog` and
:class:`~replicad.storage.chunkstore.ChunkStore`; only the Raft view is a stub (a volume state)."""

from __future__ import annotations

import logging

import pytest

from replicad.core.errors import RemoteProtocolError
from replicad.core.manifest import V1_PAGE_ENTRIES as PAGE_ENTRIES, Manifest
from replicad.core.state import default_max_size_bytes
from replicad.peer.transport import snapshot_complete
from replicad.site.receiver import CHUNK_BUDGET_FACTOR, CHUNK_BUDGET_SLACK_BYTES, UNBOUNDED, Receiver
from replicad.storage.catalog import Catalog, SnapshotRecord
from replicad.storage.chunkstore import ChunkStore

VOLUME = "ehr"
BLOCK = 65536
MIB = 2**20


class View:
    """The Raft view the receiver reads: ``ehr``, 4 MiB, committed up to #1 unless changed."""

    site_id = "b"

    def __init__(self) -> None:
        self.vs = {"epoch": 1, "primary": "a", "last_seq": 1, "block_size": BLOCK, "size_bytes": 4 * MIB,
                   "max_size_bytes": default_max_size_bytes(4 * MIB), "snapshots": {1: {}}}

    def volume_state(self, volume: str) -> dict | None:
        return self.vs if volume == VOLUME else None


@pytest.fixture
def receiver(tmp_path):
    catalog = Catalog(tmp_path / "catalog.db")
    store = ChunkStore(tmp_path / "store")
    yield Receiver(View(), store, catalog, metrics=None, audit=None)
    store.close()
    catalog.close()


def repeated(store: ChunkStore, seq: int, pages: int) -> Manifest:
    """A manifest of ``pages`` copies of one page (its pages are NOT stored here: a walk would
    find them missing, so a refusal that names the size proves nothing was looked up); format 1
    (4096 entries per page: still accepted from peers)."""
    m = Manifest(VOLUME, seq, 1, None, 1, pages * PAGE_ENTRIES * BLOCK, BLOCK, (bytes(32),) * pages, {},
                 page_entries=PAGE_ENTRIES)
    store.put_blocks([m.encode()])
    return m


def budget(size_bytes: int) -> int:
    return int(size_bytes * CHUNK_BUDGET_FACTOR) + CHUNK_BUDGET_SLACK_BYTES


def test_a_manifest_past_the_agreed_maximum_is_refused_before_its_pages(receiver, caplog) -> None:
    m = repeated(receiver.store, 2, 2048)  # 512 GiB claimed for a 4 MiB volume
    with caplog.at_level(logging.WARNING, logger="replicad.site.receiver"), \
            pytest.raises(RemoteProtocolError) as info:
        snapshot_complete(receiver.store, VOLUME, 1, 2, m.root, None,
                          lambda manifest: receiver.check_announced(VOLUME, 2, manifest))
    assert info.value.evidence["max_size_bytes"] == 4 * MIB + 2**30 and info.value.evidence["size_bytes"] == 2**39
    assert any("AUDIT refused snapshot ehr#2" in r.getMessage() and "agreed maximum" in r.getMessage()
               for r in caplog.records)
    ok = repeated(receiver.store, 3, 4)  # 1 GiB: within the maximum, then the walk finds its pages missing
    receiver.check_announced(VOLUME, 3, ok)


def test_the_budget_never_counts_a_size_above_the_maximum(receiver) -> None:
    assert receiver.chunk_budget(VOLUME) == budget(4 * MIB)
    receiver.cluster.vs["size_bytes"] = 2**50  # committed before the bound existed (F2)
    assert receiver.chunk_budget(VOLUME) == budget(4 * MIB + 2**30)
    big = repeated(receiver.store, 1, 8192)  # a 2 TiB manifest committed here before the bound
    receiver.catalog.put(SnapshotRecord(VOLUME, 1, 1, big.root, "committed", 1))
    receiver.cluster.vs["size_bytes"] = 4 * MIB
    assert receiver.chunk_budget(VOLUME) == budget(4 * MIB + 2**30)


def test_the_first_sync_may_use_the_whole_maximum(receiver) -> None:
    receiver.cluster.vs.update(last_seq=0, snapshots={})  # registered at 4 MiB, grown since, never committed
    assert receiver.chunk_budget(VOLUME) == budget(4 * MIB + 2**30)
    del receiver.cluster.vs["max_size_bytes"]
    receiver.cluster.vs["size_bytes"] = 0  # registered without a size (qemu): unknown until the first commit
    assert receiver.chunk_budget(VOLUME) == UNBOUNDED
