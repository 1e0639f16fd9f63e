"""Cluster.propose as the operator meets it after a front-running leader (attacker review r14, A2).

* A ``request`` identical (action, args) to a pending request in the current view is answered with
  that request, not proposed again (an operator's retries after false failures made r1..r8 and used
  up the site's quota of pending requests); ``identical_pending_request`` also finds another
  site's (``by``), which the admin API answers with (operator try-out 2, item 2).
* A proposal not committed by its deadline while this site holds a Raft leader deposed is
  ``commit_unknown`` (:class:`~replicad.core.errors.CommitUnknownError`): the command may have
  committed through another member's relay.

The Raft handle is a stand-in holding the real state machine (``replicad.core.state.apply``
decides every command, as each node's consumer does); what it reports as its status is set by
each test (a current view, or a deposition held).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from replicad.core import errors
from replicad.core import state as cluster_state
from replicad.site.cluster import Cluster

from tests.unit.core.test_state import NOW, RETENTION, cluster, cmd, ok  # noqa: F401

WEAKER = {**RETENTION, "keep_all_s": 60}
TTL_S = 24 * 3600.0  # [policy] request_ttl: the default


class _Raft:
    """The handle Cluster uses: ``propose`` applies the command to the state through the real
    state machine (or raises ``fail``), ``status`` says what a RaftNode's says, ``view`` the state."""

    def __init__(self, state: dict) -> None:
        self.state = state
        self.proposed: list[dict] = []
        self.fail: errors.ReplicadError | None = None
        self.synced = True
        self.deposed: dict = {}

    async def propose(self, command: dict, timeout_s: float = 5.0) -> dict:
        self.proposed.append(command)
        if self.fail is not None:
            raise self.fail
        self.state, result = cluster_state.apply(self.state, {"v": 1, **command})
        if not result.get("ok"):
            raise errors.from_dict(result)
        return result

    def status(self) -> dict:
        return {"leader": "127.0.0.1:1" if self.synced else None, "has_quorum": self.synced, "last_applied": 5,
                "commit_index": 5, "caught_up": self.synced, "deposed": self.deposed}

    def view(self) -> dict:
        return self.state


def _cluster(state: dict, site: str = "a") -> tuple[Cluster, _Raft]:
    raft = _Raft(state)
    return Cluster(site, raft, lambda: SimpleNamespace(sites=(), policy=SimpleNamespace(request_ttl_s=TTL_S))), raft


def _request(c: Cluster, args: dict, action: str = "set_retention", reason: str = "save space") -> dict:
    return asyncio.run(c.propose("request", action=action, args=args, reason=reason, now_ns=NOW))


def test_an_identical_pending_request_of_this_site_is_answered_with_that_request(cluster):
    c, raft = _cluster(cluster)
    args = {"volume": "vol", "retention": dict(WEAKER)}
    first = _request(c, args)
    assert first["status"] == "pending" and len(raft.proposed) == 1
    again = _request(c, args, reason="hostile, again")  # the operator tries again: nothing proposed
    assert again["request"] == first["request"] and again["status"] == "pending" and again["existing"] is True
    assert again["approvals"] == first["approvals"] and again["needed"] == first["needed"]
    assert again["expires_ns"] == first["expires_ns"] and len(raft.proposed) == 1
    assert len(cluster_state.list_requests(raft.state)) == 1

    other = _request(c, {"volume": "vol", "retention": {**WEAKER, "keep_all_s": 120}})  # other args: a new one
    assert other["request"] != first["request"] and len(raft.proposed) == 2
    b, _ = _cluster(raft.state, site="b")  # another site's identical request: found, for the admin API's answer
    b.raft = raft
    found = b.identical_pending_request("set_retention", args)
    assert found is not None and found["request"] == first["request"] and found["by"] == "a", found
    assert found["reason"] == "save space" and found["existing"] is True  # operator try-out 2, item 2
    b_req = _request(b, args)  # Cluster.propose itself answers only with this site's own (daemon tasks)
    assert b_req["request"] not in (first["request"], other["request"]) and "existing" not in b_req
    assert b.identical_pending_request("set_retention", args)["request"] == b_req["request"]  # its own first


def test_another_sites_identical_requests_answer_with_the_oldest_and_list_every_one(cluster):
    """Attack review R16, F1: c filed a copy of a's pending request; b's operator, asking for the
    same, was answered with c's (the newest), approved it, and c withdrew it during the cooling-off.
    The answer is now the oldest (a's), and lists each identical pending request with its approvals."""
    a, raft = _cluster(cluster, site="a")
    args = {"volume": "vol", "retention": dict(WEAKER)}
    first = _request(a, args, reason="tighten after incident")
    c, _ = _cluster(raft.state, site="c")
    c.raft = raft
    copy_ = _request(c, args, reason="site-a's operator asked me to re-file")  # c's own: a new request
    assert copy_["request"] != first["request"] and len(raft.proposed) == 2
    b, _ = _cluster(raft.state, site="b")
    b.raft = raft
    found = b.identical_pending_request("set_retention", args)
    assert found["request"] == first["request"] and found["by"] == "a", found
    assert [(r["request"], r["by"], r["approvals"]) for r in found["identical"]] == [
        (first["request"], "a", ["a"]), (copy_["request"], "c", ["c"])], found
    assert found["identical"][1]["reason"] == "site-a's operator asked me to re-file"
    # each site's own stays its answer (its operator asked again: nothing new proposed)
    assert c.identical_pending_request("set_retention", args)["request"] == copy_["request"]
    assert a.identical_pending_request("set_retention", args)["request"] == first["request"]


def test_a_request_is_proposed_again_once_the_first_is_no_longer_pending(cluster):
    c, raft = _cluster(cluster)
    args = {"volume": "vol", "retention": dict(WEAKER)}
    first = _request(c, args)
    raft.state, res = ok(raft.state, cmd("approve", by="b", request=first["request"], now_ns=NOW))
    assert res["status"] != "pending", res
    second = _request(c, args)
    assert second["request"] != first["request"] and "existing" not in second and len(raft.proposed) == 2
    # an expired pending request is not answered for either
    expired = {**raft.state["requests"][second["request"]], "expires_ns": 0}
    raft.state = {**raft.state, "requests": {**raft.state["requests"], second["request"]: expired}}
    third = _request(c, args)
    assert third["request"] not in (first["request"], second["request"]) and len(raft.proposed) == 3


def test_a_request_about_to_expire_does_not_answer_an_identical_new_one(cluster):
    """Less than a tenth of its lifetime left by the majority clock: the new request is made,
    with its own reason (it would otherwise be answered with one expiring before anyone approves)."""
    c, raft = _cluster(cluster)
    args = {"volume": "vol", "retention": dict(WEAKER)}
    first = _request(c, args)
    now = cluster_state.quorum_now_ns(raft.state)
    assert now is not None
    lifetime = int(TTL_S * 10**9)

    def left(ns: int) -> None:
        moved = {**raft.state["requests"][first["request"]], "expires_ns": now + ns}
        raft.state = {**raft.state, "requests": {**raft.state["requests"], first["request"]: moved}}

    left(lifetime // 10 + 10**9)  # just over a tenth left: still the answer
    assert _request(c, args, reason="again")["request"] == first["request"] and len(raft.proposed) == 1
    left(lifetime // 10 - 10**9)  # just under: a new request, its reason kept
    second = _request(c, args, reason="the first one is about to expire")
    assert second["request"] != first["request"] and "existing" not in second and len(raft.proposed) == 2
    assert raft.state["requests"][second["request"]]["reason"] == "the first one is about to expire"
    assert c.identical_pending_request("set_retention", args)["request"] == second["request"]


def test_a_stale_view_is_not_trusted_for_the_answer(cluster):
    c, raft = _cluster(cluster)
    args = {"volume": "vol", "retention": dict(WEAKER)}
    first = _request(c, args)
    raft.synced = False  # the view may be old: the request may have expired or applied since
    second = _request(c, args)
    assert second["request"] != first["request"] and len(raft.proposed) == 2


def _propose(c: Cluster) -> errors.ReplicadError:
    with pytest.raises(errors.NoQuorumError) as caught:
        asyncio.run(c.propose("clock", deadline_s=0.1))
    return caught.value


def test_a_timeout_while_this_site_deposed_its_leader_is_commit_unknown(cluster):
    c, raft = _cluster(cluster)
    raft.fail = errors.NoQuorumError("raft did not commit the command in time", reason="timeout", op="clock")
    assert type(_propose(c)) is errors.NoQuorumError  # no deposition: the plain answer

    raft.deposed = {"127.0.0.1:7002": {"site": "c", "term": 4, "hold_s": 97.3}}
    err = _propose(c)
    assert isinstance(err, errors.CommitUnknownError) and err.code == "commit_unknown"
    # a retry keeping the op id is safe (transient inside the daemon); never exit 7's "retry later",
    # on which automation would send a new command (r2 L3)
    assert errors.is_transient(err) and err.http_status == 503 and err.exit_code == 9
    assert "NOT known whether" in err.message and "replicad requests" in err.message and "(site c," in err.message
    assert err.evidence["deposed"] == {"127.0.0.1:7002": "c"} and err.evidence["op"] == "clock"
    assert err.evidence["op_id"] == raft.proposed[-1]["op_id"]
    again = errors.from_dict({"error": err.code, "message": err.message, "evidence": err.evidence})
    assert isinstance(again, errors.CommitUnknownError) and again.exit_code == 9  # as the CLI reads the API's answer

    raft.fail = errors.NoQuorumError("the leader refused it", reason="request_denied", op="clock")
    assert type(_propose(c)) is errors.NoQuorumError  # refused at the door: known not committed
