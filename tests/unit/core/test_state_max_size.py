"""A volume's agreed maximum size (review F1/F2: one commit with ``size_bytes = 2**50`` lifted
every replica's chunk quota for good; a manifest of one repeated page claimed 512 GiB of a 3 MiB
volume). Registered with the volume (at most the default for its size), enforced on every commit,
frozen for volumes registered before it existed, raised only by an approved request; and the
signed acknowledgements attest the size a commit records."""

from __future__ import annotations

import copy

import pytest

from replicad.core.state import (MAX_SIZE_BASE, MAX_SIZE_SLACK_BYTES, MAX_SIZE_WINDOW_NS, RULES_MAX, SIZE_BYTES_MAX,
                                 counted_reason, default_max_size_bytes, max_size_at_once, max_size_bytes)
from replicad.core.state import initial_state
from tests.unit.core.test_identity import COOLING, NOW, RETENTION as SIGNED_RETENTION, SIGNERS, SITES, acks, found
from tests.unit.core.test_identity import cmd as signed_cmd
from tests.unit.core.test_identity import ok as signed_ok
from tests.unit.core.test_identity import refused as signed_refused
from tests.unit.core.test_state import RETENTION, approved, cluster, cmd, commit, ok, refused  # noqa: F401

GIB = 2**30
MIB = 2**20


@pytest.fixture
def signed_cluster() -> dict:
    """Sites a, b, c (signed commands, keys checked), volume ``vol`` of 64 KiB (max 1 GiB + 64 KiB)."""
    state = initial_state(members=SITES, rules=RULES_MAX)
    for s in SITES:
        state, _ = signed_ok(state, signed_cmd("register_site", by=s, site_id=s, peer_url=f"https://{s}:7443",
                                               kind="data"))
    state = found(state, SITES)
    state, _ = signed_ok(state, signed_cmd("add_volume", volume="vol", primary="a", block_size=65536,
                                           size_bytes=65536, min_copies=2, retention=SIGNED_RETENTION))
    for s in SITES:
        state, _ = signed_ok(state, signed_cmd("clock", by=s))
    return state


def test_the_default_bound_is_twice_the_size_or_one_more_gib() -> None:
    assert default_max_size_bytes(0) == GIB
    assert default_max_size_bytes(3 * MIB) == 3 * MIB + GIB
    assert default_max_size_bytes(GIB) == 2 * GIB
    assert default_max_size_bytes(100 * GIB) == 200 * GIB
    assert default_max_size_bytes(SIZE_BYTES_MAX) == SIZE_BYTES_MAX  # never above the state's ceiling
    assert default_max_size_bytes(SIZE_BYTES_MAX - 1) == SIZE_BYTES_MAX


def test_registration_records_the_bound_and_refuses_a_larger_one(cluster: dict) -> None:  # noqa: F811
    assert cluster["volumes"]["vol"]["max_size_bytes"] == 2 * GIB  # registered at 1 GiB
    base = dict(primary="a", block_size=65536, size_bytes=3 * MIB, min_copies=1, retention=dict(RETENTION))
    res = refused(cluster, cmd("add_volume", volume="v2", max_size_bytes=2**50, **base), "approval_required")
    assert res["evidence"]["default_max_size_bytes"] == 3 * MIB + GIB
    refused(cluster, cmd("add_volume", volume="v2", max_size_bytes=MIB, **base), "bad_request")  # below its size
    state, _ = ok(cluster, cmd("add_volume", volume="v2", max_size_bytes=8 * MIB, **base))  # smaller: its choice
    assert max_size_bytes(state["volumes"]["v2"]) == 8 * MIB


def test_a_commit_past_the_agreed_maximum_is_refused_and_counted(cluster: dict) -> None:  # noqa: F811
    res = refused(cluster, commit(1, size_bytes=2 * GIB + 1), "out_of_range")
    assert res["evidence"]["refusal"] == "max_size" and res["evidence"]["max_size_bytes"] == 2 * GIB
    assert counted_reason(res) == "out_of_range"
    refused(cluster, {**commit(1), "stats": {"size_bytes": 2**49}}, "out_of_range")  # the size in stats too
    state, _ = ok(cluster, commit(1, size_bytes=2 * GIB))  # growth within the bound needs nobody
    assert state["volumes"]["vol"]["size_bytes"] == 2 * GIB
    assert state["volumes"]["vol"]["max_size_bytes"] == 2 * GIB  # the bound does not follow the size


def test_a_volume_registered_without_a_size_takes_the_bound_of_its_first_commit(cluster: dict) -> None:  # noqa: F811
    base = dict(primary="a", block_size=65536, min_copies=1, retention=dict(RETENTION))
    state, _ = ok(cluster, cmd("add_volume", volume="v0", size_bytes=0, **base))
    assert "max_size_bytes" not in state["volumes"]["v0"]  # a source whose size its primary cannot read yet
    assert max_size_bytes(state["volumes"]["v0"]) == SIZE_BYTES_MAX
    first = {**commit(1, holders=("a", "b"), size_bytes=3 * GIB), "volume": "v0"}
    state, _ = ok(state, first)
    assert state["volumes"]["v0"]["max_size_bytes"] == 6 * GIB
    refused(state, {**commit(2, holders=("a", "b"), size_bytes=6 * GIB + 1), "volume": "v0"}, "out_of_range")


def test_a_volume_registered_before_the_bound_gets_it_from_its_size_once(cluster: dict) -> None:  # noqa: F811
    old = copy.deepcopy(cluster)
    del old["volumes"]["vol"]["max_size_bytes"]  # as an older release recorded it
    old["volumes"]["vol"]["size_bytes"] = 3 * MIB
    assert max_size_bytes(old["volumes"]["vol"]) == 3 * MIB + GIB
    refused(old, commit(1, size_bytes=3 * MIB + GIB + 1), "out_of_range")
    state, _ = ok(old, commit(1, size_bytes=3 * MIB + GIB))
    # frozen by the commit: the grown size does not lift the bound (no ratchet of 2x per commit)
    assert state["volumes"]["vol"]["max_size_bytes"] == 3 * MIB + GIB
    refused(state, commit(2, size_bytes=2 * (3 * MIB + GIB)), "out_of_range")


def test_a_larger_maximum_is_a_request_another_site_approves(cluster: dict) -> None:  # noqa: F811
    res = refused(cluster, cmd("set_max_size", volume="vol", max_size_bytes=8 * GIB), "approval_required")
    assert res["evidence"]["current"] == 2 * GIB
    state, res = ok(cluster, cmd("request", by="a", action="set_max_size",
                                 args={"volume": "vol", "max_size_bytes": 8 * GIB}))
    assert res["status"] == "pending" and max_size_bytes(state["volumes"]["vol"]) == 2 * GIB
    refused(state, commit(1, size_bytes=4 * GIB), "out_of_range")  # pending: still the old bound
    state, res = ok(state, cmd("approve", by="b", request=res["request"]))
    assert res["status"] == "applied" and res["result"]["max_size_bytes"] == 8 * GIB
    assert max_size_bytes(state["volumes"]["vol"]) == 8 * GIB
    ok(state, commit(1, size_bytes=4 * GIB))
    # below the size, or past the ceiling: refused when requested
    refused(cluster, cmd("request", by="a", action="set_max_size", args={"volume": "vol", "max_size_bytes": MIB}),
            "bad_request")
    refused(cluster, cmd("request", by="a", action="set_max_size",
                         args={"volume": "vol", "max_size_bytes": SIZE_BYTES_MAX + 1}), "out_of_range")


M0 = GIB + 65536  # signed_cluster's agreed maximum: the default of its 64 KiB


def _request(state: dict, wanted: int, by: str = "a") -> tuple[dict, str]:
    state, res = signed_ok(state, signed_cmd("request", by=by, action="set_max_size",
                                             args={"volume": "vol", "max_size_bytes": wanted}), COOLING)
    assert res["status"] == "pending", res
    return state, res["request"]


def _clocks(state: dict, now_ns: int, sites=("a", "b", "c")) -> tuple[dict, dict]:
    res: dict = {}
    for s in sites:
        state, res = signed_ok(state, signed_cmd("clock", by=s, now_ns=now_ns), COOLING)
    return state, res


def test_an_approved_doubling_of_the_maximum_does_not_cool_off(signed_cluster: dict) -> None:
    assert max_size_at_once(signed_cluster, signed_cluster["volumes"]["vol"]) == 2 * M0
    state, req = _request(signed_cluster, 2 * M0)
    state, res = signed_ok(state, signed_cmd("approve", by="b", request=req), COOLING)
    assert res["status"] == "applied", res  # a grown volume replicates nothing until it applies
    assert max_size_bytes(state["volumes"]["vol"]) == 2 * M0
    assert state["volumes"]["vol"][MAX_SIZE_BASE] == {"bytes": M0, "at_ns": NOW}  # the window's base


def test_a_new_maximum_within_the_doubling_cannot_be_vetoed(signed_cluster: dict) -> None:
    # last read of the change: c vetoed each cycle's set_max_size request of a grown volume, which
    # then replicated nothing until c was revoked
    state, req = _request(signed_cluster, 2 * M0)
    refusal = signed_refused(state, signed_cmd("veto", by="c", request=req), "conflict", COOLING)
    assert refusal["evidence"]["refusal"] == "not_vetoable" and counted_reason(refusal) == "not_vetoable", refusal
    state, res = signed_ok(state, signed_cmd("approve", by="b", request=req), COOLING)
    assert res["status"] == "applied" and max_size_bytes(state["volumes"]["vol"]) == 2 * M0, res


def test_one_site_and_a_stolen_token_cannot_lift_the_maximum_at_once(signed_cluster: dict) -> None:
    """The attacker's primary a files, a stolen admin token of b approves: before, 2**50 applied at
    the approval (every replica's chunk quota, and a hostile primary filled their disks). Now past
    twice the maximum it cools off, and c vetoes it; nor do doublings at once ratchet: the second
    one within the day is judged against the maximum before the first."""
    state, req = _request(signed_cluster, 2**50)
    state, res = signed_ok(state, signed_cmd("approve", by="b", request=req), COOLING)
    assert res["status"] == "approved" and res["effective_ns"] == NOW + COOLING.cooling_off_ns, res
    assert max_size_bytes(state["volumes"]["vol"]) == M0  # not yet
    state, res = signed_ok(state, signed_cmd("veto", by="c", request=req), COOLING)
    assert res["status"] == "vetoed", res
    state, _ = _clocks(state, NOW + 2 * COOLING.cooling_off_ns)
    assert max_size_bytes(state["volumes"]["vol"]) == M0  # vetoed: never applied
    # doubling after doubling: the first applies at once, the second (4 x M0) cools off
    now = NOW + 2 * COOLING.cooling_off_ns
    state, req = _request(state, 2 * M0)
    state, res = signed_ok(state, signed_cmd("approve", by="b", request=req, now_ns=now), COOLING)
    assert res["status"] == "applied" and max_size_bytes(state["volumes"]["vol"]) == 2 * M0, res
    assert max_size_at_once(state, state["volumes"]["vol"]) == 2 * M0  # the base is M0 for a day
    state, req = _request(state, 4 * M0)
    state, res = signed_ok(state, signed_cmd("approve", by="b", request=req, now_ns=now), COOLING)
    assert res["status"] == "approved", res
    state, res = signed_ok(state, signed_cmd("veto", by="c", request=req, now_ns=now), COOLING)
    assert res["status"] == "vetoed" and max_size_bytes(state["volumes"]["vol"]) == 2 * M0, res
    # one site's clock running ahead does not end the window; the majority's does
    state, _ = _clocks(state, now + MAX_SIZE_WINDOW_NS, sites=("a",))
    assert max_size_at_once(state, state["volumes"]["vol"]) == 2 * M0
    state, _ = _clocks(state, now + MAX_SIZE_WINDOW_NS, sites=("b",))
    assert max_size_at_once(state, state["volumes"]["vol"]) == 4 * M0


def test_a_large_maximum_applies_after_its_cooling_off_or_with_every_site(signed_cluster: dict) -> None:
    # a real resize of 8x: after the cooling-off, nobody vetoing, it applies and is the next base
    state, req = _request(signed_cluster, 8 * GIB)
    state, res = signed_ok(state, signed_cmd("approve", by="b", request=req), COOLING)
    assert res["status"] == "approved", res
    state, res = _clocks(state, NOW + COOLING.cooling_off_ns, sites=("a", "b"))  # the majority's clock
    assert [(d["request"], d["status"]) for d in res["requests_applied"]] == [(req, "applied")], res
    assert max_size_bytes(state["volumes"]["vol"]) == 8 * GIB and MAX_SIZE_BASE not in state["volumes"]["vol"]
    assert max_size_at_once(state, state["volumes"]["vol"]) == 16 * GIB
    # every site approving skips the cooling-off (the operators of all sites agree on a resize)
    state, req = _request(state, 64 * GIB)
    state, res = signed_ok(state, signed_cmd("approve", by="b", request=req), COOLING)
    assert res["status"] == "approved", res
    state, res = signed_ok(state, signed_cmd("approve", by="a", request=req), COOLING)  # the requester's again
    assert res["changed"] is False and res["status"] == "approved", res
    state, res = signed_ok(state, signed_cmd("approve", by="c", request=req), COOLING)
    assert res["status"] == "applied" and max_size_bytes(state["volumes"]["vol"]) == 64 * GIB, res


def test_a_smaller_maximum_applies_at_the_approval(signed_cluster: dict) -> None:
    state, req = _request(signed_cluster, 2 * M0)
    state, _ = signed_ok(state, signed_cmd("approve", by="b", request=req), COOLING)
    state, req = _request(state, M0 // 2)
    refusal = signed_refused(state, signed_cmd("veto", by="c", request=req), "conflict", COOLING)
    assert refusal["evidence"]["refusal"] == "not_vetoable", refusal
    state, res = signed_ok(state, signed_cmd("approve", by="b", request=req), COOLING)
    assert res["status"] == "applied" and max_size_bytes(state["volumes"]["vol"]) == M0 // 2, res
    # the window's base is the smallest maximum since its first raise: now M0 // 2
    assert max_size_at_once(state, state["volumes"]["vol"]) == M0


def test_the_acknowledgements_attest_the_committed_size(signed_cluster: dict) -> None:
    """F2: b's honest acknowledgement of a 1-block snapshot, committed by the primary with any
    other size (or none) is refused bad_ack, with 2**50 out_of_range (both counted); at the size
    b stored it commits."""
    def commit_(size_bytes, signed_size: int = 65536, **over) -> dict:
        args = dict(volume="vol", seq=1, epoch=1, root=bytes(range(32)),
                    parent_seq=None, created_at_ns=signed_cluster["clocks"]["a"], holders=["a", "b"], stats={},
                    verdict="clean", acks=acks(1, "b", size_bytes=signed_size))
        if size_bytes is not None:
            args["size_bytes"] = size_bytes
        args.update(over)
        return signed_cmd("commit_snapshot", by="a", **args)
    for size in (2 * 65536, 65535, GIB, None):  # within the agreed maximum: not what b stored
        res = signed_refused(signed_cluster, commit_(size), "bad_ack")
        assert res["evidence"]["holder"] == "b" and counted_reason(res) == "bad_ack", res
    res = signed_refused(signed_cluster, commit_(2**50), "out_of_range")  # the exact attack: past the maximum too
    assert res["evidence"]["refusal"] == "max_size" and counted_reason(res) == "out_of_range"
    state, _ = signed_ok(signed_cluster, commit_(65536))
    assert state["volumes"]["vol"]["size_bytes"] == 65536
    # the ack of another block count at the same size (a manifest of another block size) is refused too
    other = {"b": SIGNERS["b"].sign_ack("vol", 1, 1, bytes(range(32)), 65536, 16)}
    signed_refused(signed_cluster, commit_(65536, acks=other), "bad_ack")
    assert MAX_SIZE_SLACK_BYTES == GIB
