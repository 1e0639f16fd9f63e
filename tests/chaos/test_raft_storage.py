"""Short versions of the Raft-storage campaigns (issue 13, items 2, 3, 6, 8):

* the daemon campaign ``raft-journal-damage`` (a flipped bit in a replica's Raft journal
  header with one more site down: a typed refusal, the runbook, nothing acknowledged lost,
  a leader within the bound once faults stop) — real daemons in network namespaces;
* the Raft-layer history (:mod:`chaos.raftjepsen`, three real signed RaftNode processes on
  127.0.0.1): a damaged last journal record with one more site down (lost an acknowledged
  entry before the journal's rejoin rule), a damaged middle record, ENOSPC on the leader's
  journal; linearizable log append, every acknowledged command in every final log once;
* a flipped bit in a dump's body: the dump's checksum (:mod:`replicad.consensus.dumpfile`)
  refuses it at start (before it, the node ran from a silently different state).

The daemon campaign needs root and ``ip netns`` (skipped without, unless ``CI`` is set); the
Raft-layer histories need only ``strace`` for the ENOSPC fault (skipped without it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from chaos import raftjepsen
from chaos.checker import check
from chaos.harness import netns_available, read_history
from chaos.scenarios import run_scenario

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def test_daemon_campaign_raft_journal_damage(tmp_path: Path) -> None:
    why = netns_available()
    if why and not os.environ.get("CI"):
        pytest.skip(f"chaos campaigns need root and ip netns: {why}")
    hist, notes = run_scenario("raft-journal-damage", 2, tmp_path / "run", 247)
    events = read_history(hist)
    violations = check(events)
    assert not violations, "\n".join(map(str, violations)) + "\n" + "\n".join(notes)
    assert any(e.get("f") == "start_refused" for e in events)  # the checker judged a refusal
    assert any(e.get("op") == "leader_after_faults" for e in events)


def _history(tmp_path: Path, seed: int, faults: list[str], rounds: int) -> tuple[dict, list]:
    if "enospc-leader" in faults and shutil.which("strace") is None:
        pytest.skip("strace is needed for the ENOSPC fault")
    return raftjepsen.run_seed(tmp_path / f"seed-{seed}", seed, faults, rounds)


def test_raft_history_under_journal_damage_and_enospc(tmp_path: Path) -> None:
    row, violations = _history(tmp_path, 1, ["journal-tail-minority", "journal-middle", "enospc-leader"], 3)
    assert not violations, "\n".join(map(str, violations))
    assert row["ok"] > 50 and row["refused_starts"] >= 1, row  # the checker had work to do


def test_raft_history_dump_body_flip(tmp_path: Path) -> None:
    row, violations = _history(tmp_path, 6, ["dump-body"], 3)
    assert not violations, "\n".join(map(str, violations))
    assert row["refused_starts"] >= 1, row  # the dump's checksum refused the damaged file
