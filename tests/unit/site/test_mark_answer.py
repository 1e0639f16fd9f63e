"""What ``replicad verdict VOL SEQ suspect`` answers (``Housekeeping.set_verdict``) at a volume's
primary and at a replica (operator trial: at the primary it said "this site's standby holds",
but a primary has no standby). The state machine's answer is the real one (``state.apply`` of a
signed-free lab state); only the Raft round trip is a stub."""

from __future__ import annotations

import asyncio

from replicad.core.state import RULES_MAX, apply, initial_state
from replicad.site.housekeeping import Housekeeping

S = 1_000_000_000
NOW = 1_700_000_000 * S


class Cluster:
    """A three-site lab state (unsigned) applied in process: ``propose`` is ``state.apply``."""

    def __init__(self, site_id: str) -> None:
        self.site_id = site_id
        self.state = initial_state(members=("a", "b", "c"), rules=RULES_MAX)
        self.n = 0
        for s in ("a", "b", "c"):
            self.run("register_site", s, site_id=s, peer_url=f"http://{s}", kind="data")
        self.run("add_volume", "a", volume="vol", primary="a", block_size=65536, size_bytes=65536, min_copies=2,
                 retention={"keep_all_s": 3600, "hourly_s": 0, "daily_s": 0, "lock_s": 600})
        for s in ("a", "b", "c"):
            self.run("clock", s)
        self.run("commit_snapshot", "a", volume="vol", seq=1, epoch=1, root=b"\x01" * 32, parent_seq=None,
                 created_at_ns=NOW, holders=["a", "b"], stats={}, verdict="clean", size_bytes=65536)

    def run(self, op: str, by: str, **args) -> dict:
        self.n += 1
        self.state, res = apply(self.state, {"v": 1, "op": op, "op_id": f"o{self.n}", "by": by, "now_ns": NOW, **args})
        return res

    def volume_state(self, volume: str) -> dict | None:
        return self.state["volumes"].get(volume)

    async def propose(self, op: str, **args) -> dict:
        res = self.run(op, self.site_id, **args)
        assert res["ok"], res
        return res


def mark(site: str) -> dict:
    hk = Housekeeping(Cluster(site), None, None, {}, None, None, None)
    return asyncio.run(hk.set_verdict("vol", 1, "suspect", "a ransom note"))


def test_a_mark_at_the_primary_does_not_speak_of_its_standby() -> None:
    at_primary, at_replica = mark("a"), mark("b")
    assert at_primary["cluster_verdict"] == at_replica["cluster_verdict"] == "clean"  # one site's vote
    assert at_primary["held_here"] is False and "is the primary of vol: its mark is its vote" in at_primary["next"]
    assert "standby" not in at_primary["next"], at_primary
    assert at_replica["held_here"] is True and at_replica["next"].startswith("this site's standby holds before #1")
