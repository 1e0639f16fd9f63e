"""Point 22 of :mod:`replicad.consensus.raft` (attacker review R16, F2): a per-member rate at the
leader's door for ops outside the routine ones.

One member forwarded ~280 accepted no-ops a second (``add_volume`` of an existing volume, answered
``created: false``) from 32 tasks, within the command budget of point 17, and so forced every site
to compact its log (5,000 entries) in 20 s: a site away that long then catches up from a full state.
The door (:meth:`RaftNode._door_check`) and the relay check (:meth:`RaftNode._relay_check`) now take
commands outside :data:`ROUTINE_OPS` of one member at :data:`OPS_PER_S` (bursts of :data:`OPS_BURST`);
what is over is refused (``forwarded_ops_over_rate`` / ``relay_ops_over_rate``), and the routine ops,
other members and other sites pass as before. Real RaftNode door checks on the real state machine.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from replicad.consensus.raft import OPS_BURST, OPS_PER_S, ROUTINE_OPS
from replicad.core import anomaly, errors
from replicad.core.state import DEFAULT_RETENTION, REQUESTS_PENDING_PER_SITE, VOLUMES_PER_SITE_MAX
from replicad.site.daemon import SiteDaemon
from tests.unit.consensus.test_clock_rate import entry
from tests.unit.consensus.test_depose import ADDR, apply, door, packed, signed


def add_volume(by: str) -> bytes:
    return entry(signed(by, "add_volume", name="ehr", size_bytes=1 << 30))


def test_the_burst_covers_a_site_registering_all_its_volumes_and_the_rate_forces_no_quick_compaction():
    # its register_site, its add_volume commands and the requests of their configured policies at once
    # (SiteDaemon._initial_requests files them only while the state takes more pending ones)
    assert OPS_BURST > 1 + VOLUMES_PER_SITE_MAX + REQUESTS_PENDING_PER_SITE
    assert (5000 - OPS_BURST) / OPS_PER_S > 30 * 60  # R16 F2: 20 s before
    assert "clock" in ROUTINE_OPS and "add_volume" not in ROUTINE_OPS
    # every data site proposes its own verdict on every snapshot: 12.8 a second for 128 volumes at 10 s
    assert {"site_verdict", "commit_snapshot", "vouch"} <= ROUTINE_OPS


def test_the_door_refuses_a_no_op_flood_of_one_member_only(leader, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("replicad.consensus.raft.monotonic_time", lambda: now[0])
    answers = [leader._door_check(add_volume("c"), ADDR["c"]) for _ in range(OPS_BURST + 20)]
    assert answers[:OPS_BURST] == [None] * OPS_BURST
    assert {a[0] for a in answers[OPS_BURST:]} == {"forwarded_ops_over_rate"}
    assert "site 'c'" in answers[-1][1] and "'add_volume'" in answers[-1][1]
    # site-b's ops and site-c's routine commands are not held up by site-c's flood
    assert leader._door_check(add_volume("b"), ADDR["b"]) is None
    assert leader._door_check(entry(signed("c", "add_holder", volume="ehr", seq=1, site_id="c")), ADDR["c"]) is None
    assert leader._door_check(entry(signed("c", "vouch", n=256, hash=bytes(32))), ADDR["c"]) is None
    # then the rate: one every 1 / OPS_PER_S seconds
    now[0] += 1 / OPS_PER_S
    assert leader._door_check(add_volume("c"), ADDR["c"]) is None
    assert leader._door_check(add_volume("c"), ADDR["c"])[0] == "forwarded_ops_over_rate"


def test_relayed_ops_have_their_own_rate_per_member_and_site(leader, monkeypatch):
    monkeypatch.setattr("replicad.consensus.raft.monotonic_time", lambda: 5000.0)
    answers = [leader._relay_check(add_volume("c"), ADDR["b"]) for _ in range(OPS_BURST + 5)]
    assert answers[:OPS_BURST] == [None] * OPS_BURST
    assert {a[0] for a in answers[OPS_BURST:]} == {"relay_ops_over_rate"}
    assert leader._relay_check(add_volume("b"), ADDR["c"]) is None  # another site's
    assert leader._door_check(add_volume("c"), ADDR["c"]) is None  # the door's bucket is another


class DoorCluster:
    """Site ``site``'s proposals as a follower forwards them: through the real leader's door (point 17
    and 22), then applied by its real state machine; a door refusal is recorded and fails the test."""

    def __init__(self, leader, site: str) -> None:
        self.leader, self.site, self.ops, self.refused = leader, site, [], []

    def view(self) -> dict:
        return self.leader.view()

    async def propose(self, op: str, **args) -> dict:
        command = signed(self.site, op, **args)
        self.ops.append(op)
        reason = door(self.leader, packed(command), self.site)
        if reason is not None:
            self.refused.append(reason)
            raise AssertionError(f"the door refused {op} #{len(self.ops)}: {reason}")
        result = apply(self.leader._consumer, command)
        if not result.get("ok"):
            raise errors.from_dict(result)
        await asyncio.sleep(0)  # the other volumes' tasks run meanwhile, as at a real start
        return result


def test_a_site_s_first_start_with_every_volume_and_its_policies_stays_within_the_burst(leader, monkeypatch,
                                                                                        caplog):
    """Reader F4: 1 register_site + 128 add_volume + 2 initial requests per volume (detection, retention)
    was 385 commands at once, 85 past the burst: refused, counted, ReplicadRaftTrafficRefused. The
    requests past the state's pending limit are not proposed (logged as refused ones were)."""
    monkeypatch.setattr("replicad.consensus.raft.monotonic_time", lambda: 1000.0)  # no refill: all at once
    caplog.set_level(logging.WARNING)
    cluster = DoorCluster(leader, "c")
    d = object.__new__(SiteDaemon)
    d.site_id, d.cluster, d.fatal = "c", cluster, None
    registered = dict(DEFAULT_RETENTION)
    configured = {**registered, "daily_s": 2 * registered["daily_s"]}  # longer: a request
    detection = {"min_score": 2 * anomaly.POLICY_DEFAULTS["min_score"]}  # another policy: a request

    async def first_start() -> None:
        await cluster.propose("register_site", site_id="c", peer_url="http://c", kind="data")
        volumes = []
        for i in range(VOLUMES_PER_SITE_MAX):
            v = SimpleNamespace(name=f"v{i}", detection=SimpleNamespace(model_dump=lambda: dict(detection)))
            await cluster.propose("add_volume", volume=v.name, primary="c", block_size=65536, size_bytes=1 << 20,
                                  min_copies=2, retention=registered)
            volumes.append(v)
        await asyncio.gather(*(d._initial_requests(v, registered, configured) for v in volumes))

    asyncio.run(asyncio.wait_for(first_start(), 120))
    assert cluster.refused == []
    assert cluster.ops.count("request") == REQUESTS_PENDING_PER_SITE
    assert len(cluster.ops) == 1 + VOLUMES_PER_SITE_MAX + REQUESTS_PENDING_PER_SITE <= OPS_BURST
    pending = [r for r in leader.view()["requests"].values() if r["by"] == "c" and r["status"] == "pending"]
    assert len(pending) == REQUESTS_PENDING_PER_SITE
    skipped = [r.getMessage() for r in caplog.records if "could not be requested (this site has" in r.getMessage()]
    assert len(skipped) == 2 * VOLUMES_PER_SITE_MAX - REQUESTS_PENDING_PER_SITE, skipped[:3]
    assert "the most a site may have: not proposed" in skipped[0]
