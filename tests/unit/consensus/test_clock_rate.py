"""Attacker review r13, F3: a per-site rate of ``clock`` heartbeats at the leader's door.

One site forwarded 6,000 signed heartbeats in ~17 s (within the command budget of point 17) and so
forced every site to compact its Raft log; a site away then catches up from a full state. The door
(:meth:`RaftNode._door_check`) and the relay check (point 20, :meth:`RaftNode._relay_check`) now
take ``clock`` commands of one site at :data:`guard.CLOCK_PER_S` (bursts of
:data:`guard.CLOCK_BURST`); what is over is refused (counted as ``forwarded_clock_over_rate`` /
``relay_clock_over_rate``) and every other command passes as before.
"""

from __future__ import annotations

import pickle

import pytest

from replicad.consensus.guard import CLOCK_BURST, CLOCK_HONEST_PER_S, CLOCK_PER_S, ClockRate
from replicad.core.state import CLOCK_REPORT_PERIOD_NS
from tests.unit.consensus.test_depose import ADDR, founded, packed, signed


def entry(command: dict) -> bytes:
    return b"\x00" + pickle.dumps((0, (packed(command),)), protocol=2)  # a pysyncobj entry of our one method


def test_the_bound_is_a_multiple_of_the_honest_heartbeat():
    assert CLOCK_HONEST_PER_S == pytest.approx(1e9 / CLOCK_REPORT_PERIOD_NS) == pytest.approx(0.2)
    assert CLOCK_PER_S == pytest.approx(5 * CLOCK_HONEST_PER_S)
    # forcing a compaction of 5,000 entries with heartbeats alone takes over an hour at the bound
    assert (5000 - CLOCK_BURST) / CLOCK_PER_S > 3600


def test_a_bucket_takes_its_burst_then_its_rate_and_charges_no_refusal():
    rate = ClockRate(per_s=1.0, burst=3)
    assert [rate.take("b", 0.0) for _ in range(4)] == [True, True, True, False]
    assert [rate.take("b", 0.5) for _ in range(2)] == [False, False]  # half a token: refused, not charged
    assert rate.take("b", 1.0) and not rate.take("b", 1.0)
    assert rate.take("c", 1.0)  # another key has its own
    assert [rate.take("b", 100.0) for _ in range(4)] == [True, True, True, False]  # refilled to the burst only
    with pytest.raises(ValueError):
        ClockRate(per_s=0)


def test_a_full_table_forgets_refilled_keys_and_never_refuses_a_new_one(monkeypatch):
    monkeypatch.setattr(ClockRate, "KEYS_MAX", 3)
    rate = ClockRate(per_s=1.0, burst=3)
    assert rate.take("a", 0.0) and rate.take("b", 0.0) and rate.take("c", 0.0)
    assert rate.take("c", 0.0) and rate.take("c", 0.0) and not rate.take("c", 0.0)  # c spent its burst
    assert rate.take("d", 0.0)  # full, nothing refilled: the nearest to full (a or b) goes, never c
    assert set(rate._buckets) in ({"b", "c", "d"}, {"a", "c", "d"}) and not rate.take("c", 0.0)
    assert rate.take("e", 1.5)  # a, b and d refilled by now: forgotten, c keeps what it spent
    assert set(rate._buckets) == {"c", "e"} and rate._refilled("c", 1.5) == pytest.approx(1.5)


def test_made_up_sites_relayed_before_the_founding_lock_out_no_one(unfounded_leader, monkeypatch):
    """Attacker review r2, F1: before the founding nothing checks a relayed command's ``by``
    (point 20); site c relayed 4,096 clocks of made-up sites, which filled the leader's table for
    as long as it ran, and every honest site's clock was refused from then on."""
    now = [1000.0]
    monkeypatch.setattr("replicad.consensus.raft.monotonic_time", lambda: now[0])
    node = unfounded_leader
    answers = [node._relay_check(entry({"op": "clock", "by": f"x{i}", "now_ns": 1, "op_id": f"o{i}"}), ADDR["c"])
               for i in range(ClockRate.KEYS_MAX + 10)]
    assert answers[:CLOCK_BURST] == [None] * CLOCK_BURST  # one key for what member c relays unchecked
    assert {a[0] for a in answers[CLOCK_BURST:]} == {"relay_clock_over_rate"}
    assert len(node._clock_rate._buckets) == 1
    node._consumer = founded()
    now[0] += 3600
    assert node._door_check(entry(signed("b")), ADDR["b"]) is None
    assert node._relay_check(entry(signed("b")), ADDR["c"]) is None
    # and made-up keys in a full table (however they came) lock out no one either
    for i in range(ClockRate.KEYS_MAX):
        node._clock_rate.take(f"junk {i}", now[0])
    assert node._door_check(entry(signed("c")), ADDR["c"]) is None
    assert node._relay_check(entry(signed("c")), ADDR["b"]) is None


def test_the_door_refuses_a_clock_flood_of_one_member_only(leader, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("replicad.consensus.raft.monotonic_time", lambda: now[0])
    answers = [leader._door_check(entry(signed("c")), ADDR["c"]) for _ in range(CLOCK_BURST + 20)]
    assert answers[:CLOCK_BURST] == [None] * CLOCK_BURST
    assert {a[0] for a in answers[CLOCK_BURST:]} == {"forwarded_clock_over_rate"}
    assert "site 'c'" in answers[-1][1] and "one every 5 s" in answers[-1][1]
    # site-b's heartbeats and site-c's other commands are not held up by site-c's flood
    assert leader._door_check(entry(signed("b")), ADDR["b"]) is None
    assert leader._door_check(entry(signed("c", op="register_site", site_id="c", peer_url="http://x", kind="data")),
                              ADDR["c"]) is None
    # an honest site's heartbeats (one every 5 s) are never refused, even after its burst is spent
    for _ in range(CLOCK_BURST):
        leader._door_check(entry(signed("b")), ADDR["b"])
    for _ in range(50):
        now[0] += 1 / CLOCK_HONEST_PER_S
        assert leader._door_check(entry(signed("b")), ADDR["b"]) is None
    # a forged heartbeat is refused for what it is and spends nothing of the site's rate
    now[0] += 3600
    for _ in range(CLOCK_BURST + 5):
        problem = leader._door_check(entry(signed("b", key="c")), ADDR["c"])
        assert problem is not None and problem[0] in ("forwarded_not_own", "forwarded_bad_signature")
    assert leader._door_check(entry(signed("c")), ADDR["c"]) is None


def test_relayed_clocks_have_their_own_rate_per_member_and_site(leader, monkeypatch):
    monkeypatch.setattr("replicad.consensus.raft.monotonic_time", lambda: 5000.0)
    answers = [leader._relay_check(entry(signed("c")), ADDR["b"]) for _ in range(CLOCK_BURST + 5)]
    assert answers[:CLOCK_BURST] == [None] * CLOCK_BURST
    assert {a[0] for a in answers[CLOCK_BURST:]} == {"relay_clock_over_rate"}
    assert leader._relay_check(entry(signed("b")), ADDR["c"]) is None  # another site's
    # the door's rate is another bucket: what member c forwards itself is judged on its own
    assert leader._door_check(entry(signed("c")), ADDR["c"]) is None


def test_a_follower_passes_on_at_most_half_of_what_a_leader_takes(leader, monkeypatch):
    monkeypatch.setattr("replicad.consensus.raft.monotonic_time", lambda: 5000.0)

    class Follower:  # the pysyncobj state a relay check reads: not the leader
        _SyncObj__raftState = 0
        _SyncObj__raftLeader = None
        _SyncObj__selfNode = None
    monkeypatch.setattr(leader, "_syncobj", Follower())
    answers = [leader._relay_check(entry(signed("c")), ADDR["b"]) for _ in range(CLOCK_BURST)]
    passed = answers.count(None)
    assert passed == CLOCK_BURST // 2, answers
    assert {a[0] for a in answers if a is not None} == {"relay_clock_over_rate"}
