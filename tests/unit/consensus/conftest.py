"""Fixtures shared by the consensus unit tests."""

from __future__ import annotations

import pytest

from replicad.consensus.raft import RaftNode
from replicad.core.identity import Signer
from tests.unit.consensus.test_depose import ADDR, CLUSTER, KEYS, SITES, TRUST, founded


@pytest.fixture
def unfounded_leader(tmp_path):
    """An honest leader's RaftNode (site a of test_depose's three-site cluster) before the
    founding, not started: a node without a tick thread judges what members forward (its door,
    point 17, :meth:`RaftNode._door_check`) and relay (point 20, :meth:`RaftNode._relay_check`)
    as a leader would."""
    return RaftNode(ADDR["a"], [ADDR["b"], ADDR["c"]], tmp_path, "secret", trust=TRUST,
                    signer=Signer("a", KEYS["a"], CLUSTER), sites={ADDR[s]: s for s in SITES})


@pytest.fixture
def leader(unfounded_leader):
    """:func:`unfounded_leader` at the founded state (test_depose's ``founded``)."""
    unfounded_leader._consumer = founded()
    return unfounded_leader
