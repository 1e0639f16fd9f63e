"""Seeded simulation of the cluster logic under the faults of DESIGN §9 (see ``simulator.py``).

Environment:

* ``REPLICAD_SIM_SEED=<n>`` — run only seed ``n`` (how a failure is replayed).
* ``REPLICAD_SIM_SEEDS`` (default 200) — how many seeds, from ``REPLICAD_SIM_SEED_BASE`` (0).
* ``REPLICAD_SIM_STEPS`` (default 300) — faulty steps per seed (then 40 quiescent steps).
* ``REPLICAD_SIM_BUG=<name>`` — run the seeds with one deliberate bug of ``simulator.BUGS``
  switched on (expect a failure: that is the point).
"""

from __future__ import annotations

import os

import pytest

from replicad.core.state import apply, initial_state
from tests.sim.simulator import BUGS, InvariantViolation, SimConfig, Simulation, run_seed

STEPS = int(os.environ.get("REPLICAD_SIM_STEPS", "300"))
SEED_BASE = int(os.environ.get("REPLICAD_SIM_SEED_BASE", "0"))
SEED_COUNT = int(os.environ.get("REPLICAD_SIM_SEEDS", "200"))
BUG_SEEDS_MAX = 50


def _seeds() -> list[int]:
    only = os.environ.get("REPLICAD_SIM_SEED")
    if only is not None:
        return [int(only)]
    return list(range(SEED_BASE, SEED_BASE + SEED_COUNT))


def test_every_seed_keeps_every_invariant() -> None:
    """All seeds: safety invariants after every step, convergence after the faults stop.

    One test for all seeds (per-seed items cost more than the simulation); the first failure
    raises with ``REPLICAD_SIM_SEED=<seed>`` at the start of its message.
    """
    totals: dict[str, int] = {}
    for seed in _seeds():
        for key, value in run_seed(seed, STEPS, bug=os.environ.get("REPLICAD_SIM_BUG") or None).items():
            totals[key] = totals.get(key, 0) + value
    if len(_seeds()) >= 50:
        # the faults and operator actions really happened (a simulation that never commits,
        # promotes, fences or prunes would pass vacuously)
        for key in ("commits", "promotions", "fences", "prunes", "standby_applies", "bitrot", "crashes",
                    "stops", "partitions", "ambiguous", "no_quorum"):
            assert totals[key] > 0, (key, totals)


def test_same_seed_same_history() -> None:
    """Determinism: a seed replays to the same event trace and the same final state."""
    a, b = (Simulation(SimConfig.draw(7, 150)) for _ in range(2))
    a.run()
    b.run()
    assert a.trace == b.trace
    assert a.state == b.state


@pytest.mark.parametrize("bug", BUGS)
def test_checker_catches_deliberate_bug(bug: str) -> None:
    """Each deliberate bug is caught within BUG_SEEDS_MAX seeds, with a replayable message."""
    for seed in range(BUG_SEEDS_MAX):
        try:
            run_seed(seed, STEPS, bug=bug)
        except InvariantViolation as err:
            message = str(err)
            assert message.startswith(f"REPLICAD_SIM_SEED={seed} "), message
            assert f"bug={bug}" in message
            with pytest.raises(InvariantViolation) as again:  # the same seed fails the same way
                run_seed(seed, STEPS, bug=bug)
            assert str(again.value) == message
            return
    pytest.fail(f"deliberate bug {bug!r} not caught in {BUG_SEEDS_MAX} seeds")


def test_correct_model_passes_the_seeds_that_catch_the_bugs() -> None:
    """The seeds that catch each bug pass without it: the checker flags the bug, not the seed."""
    for seed in range(5):
        run_seed(seed, STEPS)


# ----------------------------------------------------------------------------- findings


# Two gaps the simulation found in the site daemon (replicad/site/), since fixed there (the daemon now takes
# the parent from Raft's newest committed snapshot, and resumes a failed restore). The
# simulator keeps the old behaviour as ``daemon_gaps=True``: these tests prove the checker
# still catches it, so a regression in the model cannot hide.


def test_checker_catches_the_former_stale_parent_gap() -> None:
    # needs a lost commit reply, then a prune of the stale parent (rarer since prunes wait for a
    # majority's clocks): seed 83 is the first of 0..399 that shows it since the simulation
    # reports every site's clock each step (as the daemon's heartbeat does); it passes without
    # the gap (test_every_seed_keeps_every_invariant runs fewer seeds: checked here)
    with pytest.raises(InvariantViolation, match="convergence"):
        Simulation(SimConfig.draw(83, 300, daemon_gaps=True)).run()
    Simulation(SimConfig.draw(83, 300)).run()


def test_checker_sees_the_former_restore_retry_gap() -> None:
    sim = Simulation(SimConfig.draw(372, 300, daemon_gaps=True))
    sim.run()
    assert sim.stats["illegal_role_transitions"] > 0
    fixed = Simulation(SimConfig.draw(372, 300))
    fixed.run()
    assert fixed.stats["illegal_role_transitions"] == 0


S = 1_000_000_000
NOW = 1_750_000_000 * S
RETENTION = {"keep_all_s": 0, "hourly_s": 0, "daily_s": 0, "lock_s": 3600}


def _cmd(op: str, by: str, now_ns: int, n: list[int], **args) -> dict:
    n[0] += 1
    return {"v": 1, "op": op, "op_id": f"op-{n[0]}", "by": by, "now_ns": now_ns, **args}


# Found by this simulation: the lock window (O4) used to be measured with the proposer's
# now_ns alone, so a forward clock step at the primary pruned inside it by everyone else's
# clock. The state machine now measures it with the time a majority of sites have reached.
def test_prune_inside_lock_window_by_one_site_clock_is_refused() -> None:
    n = [0]
    state = initial_state()
    for sid in ("a", "b", "c"):
        state, res = apply(state, _cmd("register_site", sid, NOW, n, site_id=sid, peer_url=f"http://{sid}",
                                       kind="data"))
    state, res = apply(state, _cmd("add_volume", "a", NOW, n, volume="vol", primary="a", block_size=4096,
                                   size_bytes=4096, min_copies=2, retention=RETENTION))
    for seq in (1, 2, 3):
        state, res = apply(state, _cmd("commit_snapshot", "a", NOW + seq * S, n, volume="vol", seq=seq, epoch=1,
                                       root=bytes([seq]) * 32, parent_seq=seq - 1 or None,
                                       created_at_ns=NOW + seq * S, holders=["a", "b"], stats={},
                                       verdict="clean"))
        assert res["ok"], res
    # the replicas' clocks (their last commands) say the snapshots are seconds old
    state, res = apply(state, _cmd("add_holder", "b", NOW + 10 * S, n, volume="vol", seq=3, site_id="b"))
    assert res["ok"], res
    # the primary's clock jumped two hours ahead: snapshot 1 is 10 s old for everyone else
    state, res = apply(state, _cmd("prune_snapshots", "a", NOW + 7200 * S, n, volume="vol", seqs=[1]))
    assert not res["ok"] and res["error"] == "retention_locked", res
