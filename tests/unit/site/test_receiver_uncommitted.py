"""The receiver's bound on snapshots announced here and not committed (``MAX_UNCOMMITTED_RECEIVED``)
must not wedge a primary whose commits failed for a while (chaos ``raft-leader-full``: while its
Raft disk was full the primary shipped snapshots it could never commit; once space was back the
replicas refused every new snapshot). A newer announcement evicts the oldest uncommitted one;
the records ahead of the committed seq never exceed the bound; an announcement that is not newer
is refused; a snapshot evicted here that Raft commits after all is recorded again.

Real :class:`~replicad.storage.catalog.Catalog` and :class:`~replicad.storage.chunkstore.ChunkStore`;
only the Raft view is a stub (a fixed volume state)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from replicad.core.errors import QuotaExceededError
from replicad.core.manifest import Manifest
from replicad.site.receiver import MAX_UNCOMMITTED_RECEIVED, Receiver
from replicad.storage.catalog import Catalog
from replicad.storage.chunkstore import ChunkStore

NOW = 1_700_000_000 * 10**9
VOLUME = "ehr"


class View:
    """The Raft view the receiver reads: volume ``ehr`` at epoch 2, primary ``a``, committed up to #3."""

    site_id = "b"

    def __init__(self) -> None:
        self.vs = {"epoch": 2, "primary": "a", "last_seq": 3, "block_size": 4096, "size_bytes": 16384,
                   "snapshots": {}}

    def volume_state(self, volume: str) -> dict | None:
        return self.vs if volume == VOLUME else None


@pytest.fixture
def receiver(tmp_path):
    catalog = Catalog(tmp_path / "catalog.db")
    store = ChunkStore(tmp_path / "store")
    yield Receiver(View(), store, catalog, metrics=None, audit=None)
    store.close()
    catalog.close()


def announce(receiver: Receiver, seq: int, epoch: int = 2, variant: int = 0) -> bytes:
    """Store a manifest of ``#seq`` and announce it; returns its root."""
    m = Manifest(VOLUME, seq, epoch, 3, NOW + seq, 16384, 4096, (bytes([seq % 256, variant]) * 16,), {})
    (root,) = receiver.store.put_blocks([m.encode()])
    assert root == m.root
    asyncio.run(receiver.snapshot_received(VOLUME, epoch, seq, root, m.created_at_ns))
    return root


def ahead(receiver: Receiver) -> list[int]:
    return [r.seq for r in receiver.catalog.list(VOLUME, "received") if r.seq > 3]


def test_a_newer_announcement_evicts_the_oldest_uncommitted_one(receiver, caplog):
    roots = {seq: announce(receiver, seq) for seq in range(4, 4 + MAX_UNCOMMITTED_RECEIVED)}  # commits failed
    assert ahead(receiver) == [4, 5, 6, 7]
    with caplog.at_level(logging.WARNING, logger="replicad.site.receiver"):
        announce(receiver, 8)  # the primary can commit again: its next snapshot is stored here
    assert ahead(receiver) == [5, 6, 7, 8]
    assert any("AUDIT evicted the uncommitted snapshot ehr#4" in r.getMessage() for r in caplog.records)
    assert receiver.store.has(roots[4])  # its chunks stay until gc, one grace after their arrival


def test_a_flood_of_announcements_stays_bounded(receiver):
    for seq in range(4, 40):
        announce(receiver, seq)
        assert len(ahead(receiver)) <= MAX_UNCOMMITTED_RECEIVED
    assert ahead(receiver) == [36, 37, 38, 39]


def test_an_announcement_that_is_not_newer_is_refused(receiver):
    for seq in range(10, 10 + MAX_UNCOMMITTED_RECEIVED):
        announce(receiver, seq)
    with pytest.raises(QuotaExceededError) as caught:
        announce(receiver, 5)  # older than every uncommitted one: no progress, no eviction
    assert caught.value.evidence["limit"] == MAX_UNCOMMITTED_RECEIVED
    assert ahead(receiver) == [10, 11, 12, 13]


def test_a_snapshot_evicted_here_that_raft_commits_after_all_is_recorded_again(receiver):
    root4 = announce(receiver, 4)
    for seq in range(5, 6 + MAX_UNCOMMITTED_RECEIVED):
        announce(receiver, seq)
    assert receiver.catalog.find_root(VOLUME, root4) is None  # evicted
    assert receiver.mark_committed(VOLUME, 2, 4, root4, NOW + 4)
    rec = receiver.catalog.find_root(VOLUME, root4)
    assert (rec.state, rec.epoch, rec.seq) == ("committed", 2, 4)
