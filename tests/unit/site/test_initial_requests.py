"""A registering site's initial requests (``[volumes.detection]``, ``[volumes.retention]``) are
tried again with bounded backoff when they do not commit (``daemon.request_with_retry``); they
gave up after one failure, so a quorum lost for a moment at registration left the volume on the
defaults until an operator noticed. The cluster here is a stand-in with the one method the
function calls (a lost quorum at that exact moment cannot be arranged with real daemons)."""

from __future__ import annotations

import asyncio
import logging
import random

from replicad.core.backoff import Backoff
from replicad.core.errors import ConflictError, NoQuorumError
from replicad.site.daemon import request_with_retry

ARGS = {"volume": "ehr", "retention": {"lock_s": 7 * 86400}}


class FlakyCluster:
    """``propose`` fails with each of ``failures`` in turn, then answers a pending request."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = list(failures)
        self.calls: list[dict] = []

    async def propose(self, op: str, **fields) -> dict:
        self.calls.append({"op": op, **fields})
        if self.failures:
            raise self.failures.pop(0)
        return {"ok": True, "request": "r1", "status": "pending"}


def retry(cluster: FlakyCluster, tries: int = 4) -> dict | None:
    return asyncio.run(request_with_retry(cluster, "volume ehr: [volumes.retention] lock", "set_retention", ARGS,
                                          "config", "the volume keeps the defaults", tries=tries,
                                          backoff=Backoff(0.01, 0.02, random.Random(1))))


def test_a_request_not_committed_is_tried_again_with_the_same_op_id(caplog) -> None:
    cluster = FlakyCluster([NoQuorumError("no leader"), NoQuorumError("no leader")])
    with caplog.at_level(logging.WARNING):
        res = retry(cluster)
    assert res == {"ok": True, "request": "r1", "status": "pending"}
    assert len(cluster.calls) == 3 and len({c["op_id"] for c in cluster.calls}) == 1  # answered once, never made twice
    assert all(c["op"] == "request" and c["action"] == "set_retention" and c["args"] == ARGS for c in cluster.calls)
    tries = [r.getMessage() for r in caplog.records if "was not committed" in r.getMessage()]
    assert len(tries) == 2 and "try 2 of 4" in tries[0] and "try 3 of 4" in tries[1], tries


def test_a_refusal_is_not_retried_and_the_last_try_gives_up_logged(caplog) -> None:
    refused = FlakyCluster([ConflictError("the cluster is not founded yet")])
    with caplog.at_level(logging.WARNING):
        assert retry(refused) is None
    assert len(refused.calls) == 1
    assert any("could not be requested" in r.getMessage() and "try 1 of 4" in r.getMessage()
               and "keeps the defaults" in r.getMessage() for r in caplog.records)
    caplog.clear()
    lost = FlakyCluster([NoQuorumError("no leader")] * 5)
    with caplog.at_level(logging.WARNING):
        assert retry(lost, tries=3) is None
    assert len(lost.calls) == 3
    assert [r.getMessage() for r in caplog.records if "could not be requested" in r.getMessage()][0].count("try 3 of 3")
