"""``found`` (cluster incarnation + agreed membership) and ``set_members`` (issue 13, items 4 and 9)."""

from __future__ import annotations

import hashlib

from replicad.core import state as st
from replicad.core.state import RULES_MAX

M3 = [{"site_id": s, "raft": f"127.0.0.1:{i}", "kind": "data", "keys": []} for i, s in enumerate("abc", 1)]


def cmd(op: str, by: str, n: int, **args) -> dict:
    return {"v": 1, "op": op, "op_id": f"{op}-{by}-{n}", "by": by, "now_ns": 10**18 + n, **args}


def test_a_list_a_majority_proposes_identically_is_adopted_and_later_ones_answer_it() -> None:
    # (this test used to assert that the FIRST found fixes the membership: that let one site,
    # starting first, choose it; now a majority of the sites must propose the identical list)
    s = st.initial_state(rules=RULES_MAX)
    s, r = st.apply(s, cmd("found", "a", 1, incarnation=b"\x01" * 16, members=list(reversed(M3))))
    assert r["ok"] and not r["adopted"] and r["members"] is None and r["agreeing"] == ["a"] and r["needed"] == 2
    assert "incarnation" not in s
    s, r = st.apply(s, cmd("found", "b", 2, incarnation=b"\x02" * 16, members=M3[:2]))  # another list
    assert r["ok"] and not r["adopted"] and r["agreeing"] == ["b"]
    s, r = st.apply(s, cmd("found", "c", 3, incarnation=b"\x03" * 16, members=M3))
    inc = hashlib.blake2b(b"\x01" * 16 + b"\x03" * 16, digest_size=16).digest()  # no one proposer chose it
    assert r["ok"] and r["created"] and r["adopted"] and r["incarnation"] == inc and r["members"] == M3
    assert s["incarnation"]["founders"] == ["a", "c"] and "founding" not in s
    s2, r2 = st.apply(s, cmd("found", "b", 4, incarnation=b"\x02" * 16, members=M3[:2]))
    assert r2["ok"] and not r2["created"] and r2["incarnation"] == inc and r2["members"] == M3
    assert s2["incarnation"]["id"] == inc
    _, bad = st.apply(st.initial_state(rules=RULES_MAX), cmd("found", "a", 5, incarnation=b"\x01" * 3, members=M3))
    assert bad["error"] == "bad_request"
    _, other = st.apply(st.initial_state(rules=RULES_MAX), cmd("found", "z", 6, incarnation=b"\x01" * 16, members=M3))
    assert other["error"] == "conflict"


def test_set_members_only_as_a_request_a_majority_approves() -> None:
    s = st.initial_state(rules=RULES_MAX)
    for i, site in enumerate("abc"):
        s, _ = st.apply(s, cmd("register_site", site, 10 + i, site_id=site, peer_url=f"http://{site}", kind="data"))
    s, _ = st.apply(s, cmd("found", "a", 1, incarnation=b"\x01" * 16, members=M3))
    s, _ = st.apply(s, cmd("found", "b", 5, incarnation=b"\x02" * 16, members=M3))  # a majority: adopted
    inc = s["incarnation"]["id"]
    m4 = M3 + [{"site_id": "d", "raft": "127.0.0.1:4", "kind": "witness", "keys": []}]
    _, direct = st.apply(s, cmd("set_members", "a", 2, members=m4))
    assert direct["error"] == "approval_required"
    s, req = st.apply(s, cmd("request", "a", 3, action="set_members", args={"members": m4}))
    assert req["ok"] and req["status"] == "pending" and req["needed"] == 2
    s, done = st.apply(s, cmd("approve", "b", 4, request=req["request"]))
    assert done["status"] == "applied"
    assert s["incarnation"]["members"] == m4 and s["incarnation"]["id"] == inc
