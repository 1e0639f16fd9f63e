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

from replicad.consensus.raft import OPS_BURST, OPS_PER_S, ROUTINE_OPS
from replicad.core.state import VOLUMES_PER_SITE_MAX
from tests.unit.consensus.test_clock_rate import entry
from tests.unit.consensus.test_depose import ADDR, signed


def add_volume(by: str) -> bytes:
    return entry(signed(by, "add_volume", name="ehr", size_bytes=1 << 30))


def test_the_burst_covers_a_site_registering_all_its_volumes_and_the_rate_forces_no_quick_compaction():
    assert OPS_BURST > VOLUMES_PER_SITE_MAX + 1  # its add_volume commands and its register_site at once
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
