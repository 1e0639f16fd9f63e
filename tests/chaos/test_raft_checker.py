"""The Raft-layer checker (:func:`chaos.raftjepsen.check`) and the daemon checker's
``typed_refusal`` / ``leader_after_faults`` on hand-made histories: each bad history must be
caught, the good one must pass."""

from __future__ import annotations

from chaos import raftjepsen
from chaos.checker import check_leader_after_faults, check_typed_refusal


def _ap(t: float, type_: str, op_id: str, node: str = "site-a", **kw) -> dict:
    return {"t": t, "type": type_, "op": "append", "op_id": op_id, "node": node, "process": node, **kw}


def _finals(applied: int, digest: str = "d") -> list[dict]:
    return [{"t": 99.0, "type": "info", "op": "final", "node": s, "applied": applied, "digest": digest}
            for s in raftjepsen.SITES] + [{"t": 98.0, "type": "info", "op": "leader", "leader": "site-a",
                                           "elapsed_s": 1.0, "bound_s": 14.0}]


def _line(n: int, op_id: str) -> dict:
    return {"n": n, "op": "clock", "op_id": op_id, "ok": True}


GOOD_EVENTS = [_ap(1, "invoke", "jep-1"), _ap(2, "ok", "jep-1"), _ap(3, "invoke", "jep-2"), _ap(4, "ok", "jep-2"),
               _ap(5, "invoke", "jep-3"), _ap(9, "info", "jep-3")] + _finals(3)
GOOD_LOGS = {s: [_line(1, "jep-1"), _line(2, "jep-2"), _line(3, "jep-3")] for s in raftjepsen.SITES}


def _names(violations) -> set[str]:
    return {v.invariant for v in violations}


def test_a_good_history_passes():
    assert raftjepsen.check(GOOD_EVENTS, GOOD_LOGS) == []


def test_an_acknowledged_command_rewritten_after_a_restart_is_caught():
    logs = {**GOOD_LOGS, "site-a": GOOD_LOGS["site-a"] + [_line(2, "jep-3")]}  # position 2 applied again, differently
    assert {"single_order", "acknowledged_in_final"} <= _names(raftjepsen.check(GOOD_EVENTS, logs))


def test_a_command_twice_in_the_log_is_caught():
    logs = {s: v + [_line(4, "jep-1")] for s, v in GOOD_LOGS.items()}
    assert "exactly_once" in _names(raftjepsen.check(GOOD_EVENTS[:-4] + _finals(4), logs))


def test_real_time_order_and_failed_commands_are_checked():
    logs = {s: [_line(1, "jep-2"), _line(2, "jep-1"), _line(3, "jep-3")] for s in raftjepsen.SITES}
    assert "real_time_order" in _names(raftjepsen.check(GOOD_EVENTS, logs))
    events = [e if e.get("op_id") != "jep-3" or e["type"] == "invoke" else {**e, "type": "fail", "error": "store_full"}
              for e in GOOD_EVENTS]
    assert "failed_not_committed" in _names(raftjepsen.check(events, GOOD_LOGS))


def test_a_lost_acknowledged_command_and_differing_states_are_caught():
    logs = {s: v[:1] for s, v in GOOD_LOGS.items()}
    assert "acknowledged_in_final" in _names(raftjepsen.check(GOOD_EVENTS, logs))
    events = GOOD_EVENTS[:-4] + [{**f, "digest": f["node"]} if f.get("op") == "final" else f for f in _finals(3)]
    assert "acknowledged_in_final" in _names(raftjepsen.check(events, GOOD_LOGS))


def test_refusals_must_be_typed_and_where_the_fault_calls_for_one():
    flip = {"t": 1, "type": "ok", "op": "nemesis", "f": "flip", "site": "site-c", "expected": "refuse"}
    started = {"t": 2, "type": "ok", "op": "nemesis", "f": "start", "site": "site-c"}
    setup = {"t": 0, "type": "info", "op": "setup", "sites": {"site-a": "data", "site-b": "data", "site-c": "data"}}
    assert _names(check_typed_refusal([setup, flip, started])) == {"typed_refusal"}  # started on damage
    refused = {"t": 2, "type": "info", "op": "nemesis", "f": "start_refused", "site": "site-c", "code": "internal",
               "exit": 1, "traceback": True}
    assert _names(check_typed_refusal([setup, flip, refused])) == {"typed_refusal"}  # not a typed damage error
    ok_refusal = {**refused, "code": "journal_damaged", "exit": 5, "traceback": False}
    moved = {"t": 3, "type": "ok", "op": "nemesis", "f": "move_aside", "site": "site-c"}
    assert check_typed_refusal([setup, flip, ok_refusal, moved, {**started, "t": 4}]) == []
    tail = {**flip, "expected": "start"}
    assert _names(check_typed_refusal([setup, tail, ok_refusal])) == {"typed_refusal"}  # must have survived it


def test_no_leader_within_the_bound_is_caught():
    late = {"t": 5, "type": "info", "op": "leader_after_faults", "leader": "site-a", "elapsed_s": 40.0, "bound_s": 28.0}
    assert _names(check_leader_after_faults([late])) == {"leader_after_faults"}
    assert check_leader_after_faults([{**late, "elapsed_s": 2.0}]) == []
    assert _names(check_leader_after_faults([{**late, "leader": None, "elapsed_s": 2.0}])) == {"leader_after_faults"}
