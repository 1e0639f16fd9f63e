"""The idle limit of admin-API exports (ops/exportlimits.py): the pure decision and the bounds
of a request's TTL."""

from __future__ import annotations

import pytest

from replicad.core.errors import UsageError
from replicad.ops.exportlimits import Tracked, check_interval_s, idle_step, requested_ttl_s


def _exp(export_id: str, read: int = 0, written: int = 0, connections: int = 0) -> dict:
    return {"export_id": export_id, "bytes_read": read, "bytes_written": written, "connections": connections}


def test_an_export_nobody_uses_is_closed_after_its_ttl_and_use_restarts_the_clock() -> None:
    tracked = {"x1": Tracked(100.0, 0, 0.0), "x2": Tracked(100.0, 0, 0.0), "x3": Tracked(100.0, 0, 0.0)}
    tracked, close = idle_step(tracked, [_exp("x1"), _exp("x2", read=4096), _exp("x3", connections=1)], 60.0)
    assert close == [] and tracked["x2"].last_active_s == 60.0 and tracked["x3"].last_active_s == 60.0
    assert tracked["x1"].last_active_s == 0.0
    tracked, close = idle_step(tracked, [_exp("x1"), _exp("x2", read=4096), _exp("x3")], 100.0)
    assert close == [("x1", 100.0)]  # idle exactly its ttl: closed
    tracked, close = idle_step(tracked, [_exp("x2", read=4096), _exp("x3")], 159.0)
    assert close == [] and set(tracked) == {"x2", "x3"}  # x1 is gone from the list: no longer tracked
    tracked, close = idle_step(tracked, [_exp("x2", read=4096, written=1), _exp("x3")], 160.0)
    assert close == [("x3", 100.0)]  # a write restarted x2's clock; x3's connection ended at 60 s


def test_exports_the_limit_does_not_track_are_left_alone() -> None:
    tracked, close = idle_step({}, [_exp("instant")], 10**9)
    assert (tracked, close) == ({}, [])


def test_a_request_may_shorten_the_limit_never_lengthen_it() -> None:
    assert requested_ttl_s(None, 86400.0) == 86400.0
    assert requested_ttl_s(7200, 86400.0) == 7200.0
    for bad in (0, -1, True, "2h", float("inf"), float("nan")):
        with pytest.raises(UsageError):
            requested_ttl_s(bad, 86400.0)
    with pytest.raises(UsageError, match="export_idle_ttl"):
        requested_ttl_s(86401, 86400.0)


def test_the_check_interval_follows_the_shortest_ttl_within_bounds() -> None:
    assert check_interval_s({}) == 30.0
    assert check_interval_s({"a": Tracked(8.0, 0, 0.0), "b": Tracked(86400.0, 0, 0.0)}) == 2.0
    assert check_interval_s({"a": Tracked(0.1, 0, 0.0)}) == 0.25
