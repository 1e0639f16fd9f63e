"""The pure checks of the Raft channel and guard: frame inflation, message shapes, full-state installs,
and the bounds of the replicated state."""

from __future__ import annotations

import uuid
import zlib

import pytest

from replicad.consensus.channel import DecompressionBombError, RefusalLog, bounded_decompress
from replicad.consensus.guard import MAX_TERM_STEP, shape_problem
from replicad.core.state import SITES_MAX, apply, dump_problems, initial_state

S = 1_000_000_000
NOW = 1_800_000_000 * S


def test_bounded_decompress_refuses_a_bomb_and_keeps_honest_frames():
    assert bounded_decompress(zlib.compress(b"x" * 1000), 1000) == b"x" * 1000
    with pytest.raises(DecompressionBombError):
        bounded_decompress(zlib.compress(bytes(10 * 1024 * 1024), 9), 1024 * 1024)
    with pytest.raises(zlib.error):
        bounded_decompress(zlib.compress(b"abc" * 100)[:-5], 1000)


def test_refusal_log_counts_every_refusal_and_logs_at_most_one_line_per_second(caplog):
    refusals = RefusalLog()
    for _ in range(5):
        refusals.refuse("readonly_node", "from %s", "127.0.0.9")
    assert refusals.counts() == {"readonly_node": 5}
    assert sum("raft refused [readonly_node]" in r.getMessage() for r in caplog.records) == 1


_MEMBER = {"site_id": "a", "raft": "127.0.0.1:1", "kind": "data", "keys": ["ed25519:x"]}


@pytest.mark.parametrize("message, reason", [
    ("readonly", "malformed"),
    ({"type": "exec"}, "malformed"),
    ({"type": "request_vote", "term": "1", "last_log_index": 1, "last_log_term": 1}, "malformed"),
    ({"type": "request_vote", "term": 5 + MAX_TERM_STEP + 1, "last_log_index": 1, "last_log_term": 1},
     "term_out_of_range"),
    ({"type": "append_entries", "term": 5, "commit_index": 1, "transmission": "start", "data": b""},
     "chunked_entries"),
    ({"type": "append_entries", "term": 5, "commit_index": 1, "prevLogIdx": 3, "prevLogTerm": 5,
      "entries": [(b"\x00", 5, 5)]}, "malformed"),  # not consecutive after prevLogIdx
    ({"type": "append_entries", "term": 5, "commit_index": 1, "prevLogIdx": 3, "prevLogTerm": 5,
      "entries": [(b"\x00", 4, 6)]}, "malformed"),  # an entry from a later term than the message
    ({"type": "append_entries", "term": 5, "commit_index": 1, "serialized": (b"x", "yes", True)}, "malformed"),
    ({"type": "next_node_idx", "next_node_idx": "9", "reset": False, "success": True}, "malformed"),
    ({"type": "membership_report", "report": None}, "malformed"),
    ({"type": "membership_report", "report": {"incarnation": b"x" * 16, "members": [{"site_id": "a"}]}},
     "malformed"),
    ({"type": "membership_report", "report": {"incarnation": b"x" * 16, "members": [_MEMBER] * 65}}, "malformed"),
    ({"type": "membership_report", "report": {"incarnation": b"x" * 16, "members": [{**_MEMBER, "x": 2**70}]}},
     "malformed"),  # an extra value once ended the receiving daemon's bootstrap
])
def test_shape_problem_refuses_malformed_messages(message, reason):
    problem = shape_problem(message, current_term=5)
    assert problem is not None and problem[0] == reason


def test_shape_problem_accepts_what_pysyncobj_sends():
    for message in (
        {"type": "append_entries", "term": 5, "commit_index": 3, "prevLogIdx": 3, "prevLogTerm": 5,
         "entries": [(b"\x00abc", 4, 5), (b"\x01", 5, 5)]},
        {"type": "append_entries", "term": 5, "commit_index": 3, "serialized": (b"chunk", True, False)},
        {"type": "request_vote", "term": 6, "last_log_index": 9, "last_log_term": 5},
        {"type": "next_node_idx", "next_node_idx": 9, "reset": False, "success": True},
        {"type": "apply_command_response", "request_id": 3, "log_idx": 4, "log_term": 5},
        {"type": "pre_vote_response", "term": 6, "granted": False, "current_term": 9},
        {"type": "membership_query"},
        {"type": "membership_report", "report": {"incarnation": b"x" * 16, "members": [_MEMBER]}},
    ):
        assert shape_problem(message, current_term=5) is None, message


def _cmd(op, by="a", now_ns=NOW, **kw):
    return {"v": 1, "op": op, "op_id": uuid.uuid4().hex, "by": by, "now_ns": now_ns, **kw}


def _cluster():
    state = initial_state(["a", "b", "c"], max_sites=3)
    for site in "abc":
        state, res = apply(state, _cmd("register_site", by=site, site_id=site, peer_url=f"http://{site}", kind="data"))
        assert res["ok"]
    retention = {"keep_all_s": 3600, "hourly_s": 0, "daily_s": 0, "lock_s": 600}
    state, res = apply(state, _cmd("add_volume", volume="ehr", primary="a", block_size=65536, size_bytes=0,
                                   min_copies=2, retention=retention))
    assert res["ok"]
    for seq in (1, 2):
        state, res = apply(state, _cmd("commit_snapshot", now_ns=NOW, volume="ehr", seq=seq, epoch=1,
                                       root=bytes([seq]) * 32, parent_seq=None, created_at_ns=NOW - (3 - seq) * 300 * S,
                                       holders=["a", "b"], stats={}, verdict="clean"))
        assert res["ok"], res
    return state


def test_register_site_only_for_configured_members_and_within_the_cap():
    state = _cluster()
    new, res = apply(state, _cmd("register_site", by="forged-1", site_id="forged-1", peer_url="http://x", kind="data"))
    assert res["error"] == "conflict" and "not a configured member" in res["message"]
    assert set(new["sites"]) == {"a", "b", "c"}
    open_state = initial_state(max_sites=2)
    for i, expect in ((0, True), (1, True), (2, False)):
        open_state, res = apply(open_state, _cmd("register_site", by=f"s{i}", site_id=f"s{i}", peer_url="u", kind="data"))
        assert res["ok"] is expect
    assert initial_state(max_sites=10**6)["limits"]["max_sites"] == SITES_MAX
    # re-registering a known site (new URL) stays possible
    _, res = apply(state, _cmd("register_site", by="b", site_id="b", peer_url="http://b2", kind="data"))
    assert res["ok"]


def test_dump_problems_refuses_a_forged_empty_state_and_accepts_a_later_state():
    state = _cluster()
    forged = {"v": 1, "sites": {}, "volumes": {}, "audit": [], "applied_ops": {}, "clocks": {}}
    problems = dump_problems(state, forged, NOW)
    assert any("sites" in p for p in problems) and any("ehr" in p for p in problems)
    later, res = apply(state, _cmd("commit_snapshot", now_ns=NOW, volume="ehr", seq=3, epoch=1, root=b"\x03" * 32,
                                   parent_seq=2, created_at_ns=NOW, holders=["a", "b"], stats={}, verdict="clean"))
    assert res["ok"]
    assert dump_problems(state, later, NOW) == []
    # a record inside the lock window may not disappear; one older than it may (pruned)
    vol = later["volumes"]["ehr"]
    without_2 = {**later, "volumes": {"ehr": {**vol, "snapshots": {s: v for s, v in vol["snapshots"].items() if s != 2}}}}
    assert any("snapshot 2" in p for p in dump_problems(state, without_2, NOW))
    without_1 = {**later, "volumes": {"ehr": {**vol, "snapshots": {s: v for s, v in vol["snapshots"].items() if s != 1}}}}
    assert dump_problems(state, without_1, NOW + 3600 * S) == []
    # a rewritten root, or an epoch going back, is refused
    rooted = {**later, "volumes": {"ehr": {**vol, "snapshots": {**vol["snapshots"],
                                                                1: {**vol["snapshots"][1], "root": b"\xff" * 32}}}}}
    assert any("root" in p for p in dump_problems(state, rooted, NOW))
    back = {**later, "volumes": {"ehr": {**vol, "epoch": 0}}}
    assert any("epoch" in p for p in dump_problems(state, back, NOW))
    assert dump_problems(state, "garbage", NOW) == ["not a cluster state of this version"]


def test_guarded_serializer_writes_only_a_dump_that_keeps_history(tmp_path):
    import msgpack

    from replicad.consensus import dumpfile
    from replicad.consensus.guard import GuardedSerializer

    state = _cluster()
    dump = tmp_path / "raft.dump"
    dump.write_bytes(b"the current dump")
    refusals = RefusalLog()
    guard = GuardedSerializer(object(), str(dump), lambda doc: dump_problems(state, doc["state"], NOW), refusals)
    forged = msgpack.packb({"v": 1, "state": {"v": 1, "sites": {}, "volumes": {}, "audit": [], "applied_ops": {},
                                              "clocks": {}}}, use_bin_type=True)
    assert guard.setTransmissionData((forged[:10], True, False)) is False
    assert guard.setTransmissionData((forged[10:], False, True)) is False
    assert dump.read_bytes() == b"the current dump"
    assert refusals.counts() == {"snapshot_regresses": 1}
    honest = msgpack.packb({"v": 1, "state": state}, use_bin_type=True)
    assert guard.setTransmissionData((honest, True, True)) is True
    assert dump.read_bytes() == dumpfile.frame(honest)  # stored with its checksum (format 3)
    assert guard.setTransmissionData((b"x", False, True)) is False  # a tail without a start
